"""The matrix products of W300's decode alone, at the card's sustained clocks: the decode's floor (issue 12).

A W300 decode step of Mistral-7B's shape at batch 1,200 is 17.1 TFLOP of
matrix products (32 layers x q, k, v, o, gate, up, down, then the LM head).
This replays exactly those products, with bf16 weights of those shapes and
nothing else, under one CUDA graph, 149 times (W300's decode steps), and
reports their wall time and rate. Meanwhile ``nvidia-smi`` samples the SM
clock, power and throttle reasons every 100 ms, so that a rate below the
profile's per-kernel rate can be told apart from idle time: under sustained
load the card may lower its clocks to stay within its power limit.

``--w300`` then times the engine's W300 (fused kernels, CUDA graphs, ragged
decode attention) with the same sampling, warm (second run in the process).

    python benchmarks/gemm_floor.py [--steps 149] [--batch 1200] [--w300]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from transferlab.bench_results import write_result  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_graphs import capture  # noqa: E402

SHAPE = dict(hidden=4096, q=4096, kv=1024, mlp=14336, layers=32, vocab=32000)
FIELDS = "clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active"


class Clocks:
    """``nvidia-smi`` samples (SM MHz, memory MHz, watts, degrees C, throttle bitmask) while a block runs."""

    def __enter__(self):
        self.rows: list = []
        self.proc = subprocess.Popen(
            ["nvidia-smi", f"--query-gpu={FIELDS}", "--format=csv,noheader,nounits", "-lms", "100", "-i", _card()],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            self.rows.append([x.strip() for x in line.split(",")])

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()
        self.reader.join(timeout=5)  # the samples already printed

    def summary(self) -> dict:
        def column(i, cast=float):
            out = []
            for r in self.rows:
                try:
                    out.append(cast(r[i]))
                except (ValueError, IndexError):
                    pass
            return out

        sm, power = column(0), column(2)
        reasons = sorted({r[4] for r in self.rows if len(r) > 4})
        return {
            "samples": len(self.rows),
            "sm_mhz_median": sorted(sm)[len(sm) // 2] if sm else None,
            "sm_mhz_min": min(sm) if sm else None,
            "sm_mhz_max": max(sm) if sm else None,
            "power_w_median": sorted(power)[len(power) // 2] if power else None,
            "throttle_reasons": reasons,
        }


def _card() -> str:
    """The card torch calls cuda:0, as nvidia-smi names it (CUDA_VISIBLE_DEVICES may renumber)."""
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible or "0"


def gemm_step_graph(batch: int):
    """A CUDA graph of one decode step's matrix products, and its FLOPs."""
    s = SHAPE
    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)

    def w(n, k):
        return (torch.randn(n, k, device=dev, dtype=dt, generator=g) * 0.02).contiguous()

    layers = [
        [w(s["q"], s["hidden"]), w(s["kv"], s["hidden"]), w(s["kv"], s["hidden"]), w(s["hidden"], s["q"])]
        + [w(s["mlp"], s["hidden"]), w(s["mlp"], s["hidden"]), w(s["hidden"], s["mlp"])]
        for _ in range(s["layers"])
    ]
    head = w(s["vocab"], s["hidden"])
    x = torch.randn(batch, s["hidden"], device=dev, dtype=dt, generator=g)
    wide = torch.randn(batch, s["mlp"], device=dev, dtype=dt, generator=g)
    q = torch.randn(batch, s["q"], device=dev, dtype=dt, generator=g)

    def step():
        for wq, wk, wv, wo, wg, wu, wd in layers:
            F.linear(x, wq), F.linear(x, wk), F.linear(x, wv), F.linear(q, wo)
            F.linear(x, wg), F.linear(x, wu), F.linear(wide, wd)
        F.linear(x, head)

    flops = (
        2
        * batch
        * (
            s["layers"] * (s["hidden"] * (s["q"] + 2 * s["kv"]) + s["q"] * s["hidden"] + 3 * s["hidden"] * s["mlp"])
            + s["hidden"] * s["vocab"]
        )
    )
    graph, _ = capture(step)
    return graph, flops, layers


def time_graph(graph, steps: int) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        graph.replay()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def w300(out: dict) -> None:
    from transferlab.bench import run_engine
    from transferlab.engine import prepare
    from transferlab.experiments.w300 import W300_CONDITIONS, make_workload
    from transferlab.models.random import build_random

    model = prepare(build_random("mistral-7b", device="cuda"), fast_attention=True, fuse=True)
    sources, targets = make_workload(300, 32000)
    batch = 300 * len(W300_CONDITIONS)
    run_engine(model, sources, targets, 150, batch)  # compiles the ragged kernel for this shape
    with Clocks() as c:
        t = time.perf_counter()
        got = run_engine(model, sources, targets, 150, batch)
        wall = time.perf_counter() - t
    out["w300"] = {"wall_s": got["wall_s"], "outer_wall_s": wall, "clocks": c.summary(), "prepared": model.source}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=149)
    ap.add_argument("--batch", type=int, default=1200)
    ap.add_argument("--w300", action="store_true")
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": a.batch, "steps": a.steps}
    graph, flops, keep = gemm_step_graph(a.batch)
    time_graph(graph, 20)  # warm
    short = time_graph(graph, 3)
    with Clocks() as c:
        wall = time_graph(graph, a.steps)
    res["gemm_only"] = {
        "wall_s": wall,
        "ms_per_step": 1000 * wall / a.steps,
        "tflop_per_step": flops / 1e12,
        "tflops_sustained": flops * a.steps / wall / 1e12,
        "ms_per_step_short_burst": 1000 * short / 3,
        "clocks": c.summary(),
    }
    print("gemm_only", res["gemm_only"], flush=True)
    del graph, keep
    torch.cuda.empty_cache()
    if a.w300:
        w300(res)
        print("w300", res["w300"], flush=True)
    print("wrote", write_result(res, a.out, "gemm_floor", torch.cuda.get_device_name()))
