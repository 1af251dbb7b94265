"""Profile the engine's decode steps on a random Mistral-7B-shape model (where does a step go?).

    python benchmarks/profile_step.py [--batch 600] [--steps 24]
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from transferlab.bench import make_workload  # noqa: E402
from transferlab.models.random import build_random  # noqa: E402


def timed(model, targets, sources, plans, steps, bs):
    torch.cuda.synchronize()
    t = time.perf_counter()
    model.generate(targets, sources=sources, plan=plans, max_new_tokens=steps, stop_at_eos=False, batch_size=bs)
    torch.cuda.synchronize()
    return time.perf_counter() - t


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1200)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    m = build_random("mistral-7b", device="cuda")
    src, tgt = make_workload(a.batch, 32000)
    res = {}
    srcs = src[: a.batch // 4] * 4
    tg = tgt[: a.batch // 4] * 4
    plans = ["", "kv:all + v_proj@27:decode", "noise:v_proj@27:decode", "kv:all + v_proj@5:decode"]
    plans = [p for p in plans for _ in range(a.batch // 4)]
    sr = [s if p else None for s, p in zip(srcs, plans)]
    timed(m, tg[:8], sr[:8], plans[:8], 4, 8)
    for name, pl, sx in [("unpatched", "", None), ("w300_mix", plans, sr)]:
        short = timed(m, tg, sx, pl, 2, a.batch)
        long = timed(m, tg, sx, pl, 2 + a.steps, a.batch)
        res[name] = {"prompt_phase_s": short, "ms_per_decode_step": 1000 * (long - short) / a.steps}
    print(json.dumps(res, indent=1))
    from torch.profiler import ProfilerActivity, profile

    for name, pl, sx in [("unpatched", "", None), ("w300_mix", plans, sr)]:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            m.generate(tg, sources=sx, plan=pl, max_new_tokens=12, stop_at_eos=False, batch_size=a.batch)
            torch.cuda.synchronize()
        print(name)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=70))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / f"profile_step_{torch.cuda.get_device_name().replace(' ', '_')}.json").write_text(json.dumps(res, indent=1))
