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
    ap.add_argument("--batch", type=int, default=600)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    m = build_random("mistral-7b", device="cuda")
    src, tgt = make_workload(a.batch, 32000)
    import os

    res = {}
    timed(m, tgt[:8], None, "", 4, 8)
    for backend in ["efficient", "cudnn"]:
        os.environ["TRANSFERLAB_SDPA_BACKEND"] = backend
        timed(m, tgt, None, "", 3, a.batch)
        short = timed(m, tgt, None, "", 2, a.batch)
        long = timed(m, tgt, None, "", 2 + a.steps, a.batch)
        res[f"baseline_{backend}"] = {"prompt_phase_s": short, "ms_per_decode_step": 1000 * (long - short) / a.steps}
    os.environ["TRANSFERLAB_SDPA_BACKEND"] = "efficient"
    for name, plan in [("baseline", ""), ("transfer", "kv:all + v_proj@27:decode"), ("noise", "noise:v_proj@27:decode")]:
        srcs = src if plan else None
        timed(m, tgt[:8], src[:8] if plan else None, plan, 4, 8)
        short = timed(m, tgt, srcs, plan, 2, a.batch)
        long = timed(m, tgt, srcs, plan, 2 + a.steps, a.batch)
        res[name] = {"prompt_phase_s": short, "ms_per_decode_step": 1000 * (long - short) / a.steps}
    print(json.dumps(res, indent=1))
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        m.generate(tgt, sources=src, plan="kv:all + v_proj@27:decode", max_new_tokens=2, stop_at_eos=False, batch_size=a.batch)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=20))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        m.generate(tgt, sources=src, plan="kv:all + v_proj@27:decode", max_new_tokens=10, stop_at_eos=False, batch_size=a.batch)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / f"profile_step_{torch.cuda.get_device_name().replace(' ', '_')}.json").write_text(json.dumps(res, indent=1))
