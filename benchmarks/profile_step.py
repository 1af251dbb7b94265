"""Where does a W300 second go? Phases, per-step cost, and a kernel profile by category.

    python benchmarks/profile_step.py [--batch 1200] [--steps 24] [--small 64,300]

On a random Mistral-7B-shape model (bf16, built on the GPU) it measures, for
the W300 mix of conditions and for the same rows with every plan empty:

* the prompt phase (``generate`` with one new token: source capture, target
  prefill, splice) and, separately, the source capture alone;
* milliseconds per decode step (from 1 and 1 + ``steps`` new tokens);
* the same per-step cost at small batches, where the GPU has little to do, so
  the step is as slow as the host can launch it (the host's share of a step);
* a CUDA kernel profile of a few decode steps, summed by category (matrix
  products, attention, elementwise, reductions, sampling, copies), beside the
  wall time of those steps: a GPU busy for less than the wall time is waiting
  on the host.

It writes JSON next to the W300 results.
"""

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from transferlab.bench_results import write_result  # noqa: E402
from transferlab.experiments.w300 import W300_CONDITIONS, make_workload  # noqa: E402
from transferlab.models.random import build_random  # noqa: E402


def timed(model, targets, sources, plans, steps, bs, warm=False):
    """Seconds of one ``generate``; ``warm``: run it once first, untimed (a new batch shape compiles the ragged
    decode attention's kernel on its first run: transferlab.engine.ragged)."""
    if warm:
        timed(model, targets, sources, plans, steps, bs)
    torch.cuda.synchronize()
    t = time.perf_counter()
    model.generate(targets, sources=sources, plan=plans, max_new_tokens=steps, stop_at_eos=False, batch_size=bs)
    torch.cuda.synchronize()
    return time.perf_counter() - t


def rows(sources, targets, n_rows, empty=False):
    """``n_rows`` rows cycling through the W300 conditions (a quarter each)."""
    per = n_rows // len(W300_CONDITIONS)
    tg, sr, pl = [], [], []
    for plan in W300_CONDITIONS.values():
        plan = "" if empty else plan
        tg += targets[:per]
        sr += [s if plan else None for s in sources[:per]]
        pl += [plan] * per
    return tg, sr, pl


CATEGORIES = [  # first match wins: attention before gemm (the memory-efficient attention kernel is a cutlass one)
    ("attention", r"fmha|attention|flash|efficient|sdpa"),
    ("gemm", r"gemm|cutlass|sm90_xmma|nvjet|ampere_bf16|matmul"),
    ("sampling/scan", r"scan|cumsum|search|sort|softmax|logsumexp"),
    ("reduction", r"reduce|norm|mean"),
    ("copy", r"copy|cat|index|gather|scatter|Memcpy|Memset|fill"),
    ("elementwise", r"elementwise|vectorized|unrolled|pointwise|triton"),
]


def categorize(name: str) -> str:
    for cat, pat in CATEGORIES:
        if re.search(pat, name, re.IGNORECASE):
            return cat
    return "other"


def kernel_profile(model, tg, sr, pl, bs, steps=6):
    """CUDA time per decode step by kernel category, and the wall time of those steps."""
    from torch.profiler import ProfilerActivity, profile

    short = 2
    timed(model, tg, sr, pl, short, bs)  # warm
    timed(model, tg, sr, pl, short + steps, bs)  # warm at the long run's cache width too
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        m_short = timed(model, tg, sr, pl, short, bs)
    by_short, short_prof = _by_category(prof), prof
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        m_long = timed(model, tg, sr, pl, short + steps, bs)
    by_long = _by_category(prof)
    top = sorted(((e.key, e.device_time_total / 1e3) for e in _kernels(prof)), key=lambda x: -x[1])[:30]
    per_step = {k: (by_long.get(k, 0.0) - by_short.get(k, 0.0)) / steps for k in set(by_long) | set(by_short)}
    kernels = _per_kernel(short_prof, prof, steps)
    return {
        "kernels_per_step": sum(n for n, _ in kernels.values()),
        "per_kernel_per_step": sorted(([k[:140], n, ms] for k, (n, ms) in kernels.items()), key=lambda r: -r[2]),
        "ms_per_step_wall_under_profiler": 1000 * (m_long - m_short) / steps,
        "ms_per_step_gpu_by_category": dict(sorted(per_step.items(), key=lambda kv: -kv[1])),
        "ms_per_step_gpu_total": sum(per_step.values()),
        "top_kernels_ms_total_long_run": top,
    }


def _kernels(prof) -> list:
    """The profile's GPU kernels only (CPU-side ops would count their kernels twice)."""
    from torch.autograd import DeviceType

    events = prof.key_averages()
    gpu = [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA]
    return gpu or [e for e in events if not e.key.startswith(("aten::", "cuda", "Activity"))]


def _per_kernel(short, long, steps: int) -> dict:
    """kernel name -> (launches, ms of GPU time) per decode step: the long run's less the short run's."""

    def table(prof):
        return {e.key: (e.count, e.device_time_total / 1e3) for e in _kernels(prof)}

    a, b = table(short), table(long)
    out = {}
    for k in set(a) | set(b):
        n = (b.get(k, (0, 0.0))[0] - a.get(k, (0, 0.0))[0]) / steps
        ms = (b.get(k, (0, 0.0))[1] - a.get(k, (0, 0.0))[1]) / steps
        if n > 0 or abs(ms) > 0.001:  # the short run's kernels cancel; what is left is per step
            out[k] = (max(n, 0.0), ms)
    return out


def capture_profile(model, tg, sr, pl) -> dict:
    """The source capture alone under the profiler: GPU ms by category and its top kernels, beside its wall time."""
    from torch.profiler import ProfilerActivity, profile

    capture_only(model, tg, sr, pl)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        wall = capture_only(model, tg, sr, pl)
    cats = _by_category(prof)
    top = sorted(([e.key[:140], e.count, e.device_time_total / 1e3] for e in _kernels(prof)), key=lambda r: -r[2])
    return {
        "wall_s_under_profiler": wall,
        "gpu_ms_by_category": cats,
        "gpu_ms_total": sum(cats.values()),
        "top_kernels": top[:25],
    }


def _by_category(prof) -> dict:
    out: dict = {}
    for e in _kernels(prof):
        t = e.device_time_total / 1e3  # ms
        if t <= 0:
            continue
        c = categorize(e.key)
        out[c] = out.get(c, 0.0) + t
    return out


def capture_only(model, tg, sr, pl):
    from transferlab.engine.capture import forward_capture  # noqa: F401  (import cost outside the timing)
    from transferlab.engine.sources import capture_sources
    from transferlab.sites import HookPoint

    points = sorted({HookPoint("v_proj", 27), HookPoint("v_proj", 5)})
    torch.cuda.synchronize()
    t = time.perf_counter()
    capture_sources(model, tg, sr, points, True)
    torch.cuda.synchronize()
    return time.perf_counter() - t


def phases(model, tg, sr, pl, bs, steps=150):
    """Seconds per stage of one full generate, from the engine's own stage clock (synchronised at every
    stage boundary; see transferlab.timings)."""
    from transferlab.timings import StageClock

    timed(model, tg, sr, pl, steps, bs)  # warm: this shape's kernels compiled before the clock starts
    with StageClock(sync=torch.cuda.synchronize) as clock:
        total = timed(model, tg, sr, pl, steps, bs)
    spent = {f"{name}_s": row["s"] for name, row in clock.table()["stages"].items()}
    spent["graphs"] = clock.entries.get("graph_capture", 0)
    spent["total_s"] = total
    return spent


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1200)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--small", default="64,300")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--phases-only", action="store_true", help="only the per-phase seconds of full W300-mix runs")
    ap.add_argument(
        "--fused",
        action="store_true",
        help="then fuse the elementwise work (transferlab.engine.fused) and measure again",
    )
    ap.add_argument(
        "--engine",
        action="store_true",
        help="profile the model as load_model prepares it (grouped-query decode attention, fused kernels: Liger "
        "where installed) and skip the phase runs",
    )
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    m = build_random("mistral-7b", device="cuda")
    src, tgt = make_workload(300, 32000)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": a.batch}
    if a.engine:
        from transferlab.engine import prepare

        prepare(m, fuse=True, fast_attention=True)
        res["prepared"] = {"attention": m.hf.config._attn_implementation, **m.source}
        a.fused = False
    w = rows(src, tgt, 16)
    timed(m, w[0], w[1], w[2], 4, 16)  # warm-up
    phase_runs = [("w300_mix", False), ("unpatched", True), ("w300_mix", False), ("unpatched", True)]
    for name, empty in [] if a.engine else phase_runs:
        tg, sr, pl = rows(src, tgt, a.batch, empty)
        res[f"phases_{name}"] = phases(m, tg, sr, pl, a.batch)  # the second of each is kept (warm)
        print(f"phases_{name}", json.dumps(res[f"phases_{name}"]), flush=True)
    if a.phases_only:
        a.small, a.no_profile, a.steps = "", True, 0
    for name, empty in [("unpatched", True), ("w300_mix", False)] if a.steps else []:
        tg, sr, pl = rows(src, tgt, a.batch, empty)
        one = timed(m, tg, sr, pl, 1, a.batch, warm=True)
        long = timed(m, tg, sr, pl, 1 + a.steps, a.batch, warm=True)
        res[name] = {"prompt_phase_s": one, "ms_per_decode_step": 1000 * (long - one) / a.steps}
        if not empty:
            capture_only(m, tg, sr, pl)
            res[name]["source_capture_s"] = capture_only(m, tg, sr, pl)
        print(name, res[name], flush=True)
    for b in [int(x) for x in a.small.split(",") if x]:
        for name, empty in [("unpatched", True), ("w300_mix", False)]:
            tg, sr, pl = rows(src, tgt, b, empty)
            one = timed(m, tg, sr, pl, 1, b, warm=True)
            long = timed(m, tg, sr, pl, 1 + a.steps, b, warm=True)
            res[f"{name}_b{b}"] = {"prompt_phase_s": one, "ms_per_decode_step": 1000 * (long - one) / a.steps}
            print(f"{name}_b{b}", res[f"{name}_b{b}"], flush=True)
    if not a.no_profile:
        for name, empty in [("unpatched", True), ("w300_mix", False)]:
            tg, sr, pl = rows(src, tgt, a.batch, empty)
            res[f"profile_{name}"] = kernel_profile(m, tg, sr, pl, a.batch)
            print(
                name,
                json.dumps(
                    {k: v for k, v in res[f"profile_{name}"].items() if k != "top_kernels_ms_total_long_run"}, indent=1
                ),
                flush=True,
            )
            print("kernels per step:", res[f"profile_{name}"]["kernels_per_step"])
            for k, n, ms in res[f"profile_{name}"]["per_kernel_per_step"][:45]:
                print(f"  {n:6.1f} x {ms:7.3f} ms  {k[:110]}")
            if not empty:
                res["profile_source_capture"] = capture_profile(m, tg, sr, pl)
                print(json.dumps({k: v for k, v in res["profile_source_capture"].items() if k != "top_kernels"}))
                for k, n, ms in res["profile_source_capture"]["top_kernels"]:
                    print(f"  {n:6d} x {ms:8.2f} ms  {k[:110]}")
    if a.fused:
        from transferlab.engine.fused import fuse

        t0 = time.perf_counter()
        res["fused_parts"] = fuse(m.hf)
        w = rows(src, tgt, 16)
        timed(m, w[0], w[1], w[2], 4, 16)
        tg, sr, pl = rows(src, tgt, a.batch, False)
        timed(m, tg[:64], sr[:64], pl[:64], 3, 64)
        res["fuse_and_compile_s"] = time.perf_counter() - t0
        for name, empty in [("unpatched", True), ("w300_mix", False)]:
            tg, sr, pl = rows(src, tgt, a.batch, empty)
            one = timed(m, tg, sr, pl, 1, a.batch, warm=True)
            long = timed(m, tg, sr, pl, 1 + a.steps, a.batch, warm=True)
            res[f"fused_{name}"] = {"prompt_phase_s": one, "ms_per_decode_step": 1000 * (long - one) / a.steps}
            print(f"fused_{name}", res[f"fused_{name}"], flush=True)
        if not a.no_profile:
            tg, sr, pl = rows(src, tgt, a.batch, True)
            res["profile_fused_unpatched"] = kernel_profile(m, tg, sr, pl, a.batch)
            print(json.dumps(res["profile_fused_unpatched"]["ms_per_step_gpu_by_category"], indent=1))
    print("wrote", write_result(res, a.out, "profile_step", torch.cuda.get_device_name()))
