"""Shared q/k/v products (transferlab.engine.shared), measured against separate projections in one process.

W300 on a random Mistral-7B-shape model (bf16, fast attention, fused kernels,
CUDA graphs, ragged decode attention), three ways, interleaved over rounds so
that a drifting machine hits all of them alike:

- ``apart``: each projection computes its own product (``SharedProduct.plain``
  forced true: the layout of weights is the same, only the products differ);
- ``shared_copy``: one product per layer, RoPE copying queries and keys first
  (``shared.private`` forced false);
- ``shared``: the default, one product, RoPE rotating queries and keys in place.

Each round runs the patched W300 and the same generations unpatched per way;
round 0 warms every way (the ragged kernel compiles for each query layout) and
is not reported.

    python benchmarks/shared_qkv.py [--rounds 2] [--pairs 300] [--new 150]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from transferlab.bench import run_engine  # noqa: E402
from transferlab.bench_results import write_result  # noqa: E402
from transferlab.engine import prepare, shared  # noqa: E402
from transferlab.experiments.w300 import W300_CONDITIONS, make_workload  # noqa: E402
from transferlab.models.random import build_random  # noqa: E402


def way(name: str):
    """Switch the process to one way of computing the projections (see the module docstring)."""
    plain, private = shared.SharedProduct.plain, shared.private
    shared.SharedProduct.plain = (lambda self: True) if name == "apart" else _PLAIN
    shared.private = (lambda q, k: False) if name == "shared_copy" else _PRIVATE
    return plain, private


_PLAIN, _PRIVATE = shared.SharedProduct.plain, shared.private

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--new", type=int, default=150)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    model = prepare(build_random("mistral-7b", device="cuda"), fast_attention=True, fuse=True)
    sources, targets = make_workload(a.pairs, 32000)
    batch = a.pairs * len(W300_CONDITIONS)
    plain = {name: "" for name in W300_CONDITIONS}
    res = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "prepared": model.source,
        "batch": batch,
        "new_tokens": a.new,
        "pairs": a.pairs,
        "engine_settings": {k: v for k, v in os.environ.items() if k.startswith("TRANSFERLAB_")},
        "rounds": [],
    }
    ways = ("apart", "shared_copy", "shared")
    for r in range(a.rounds + 1):
        row = {}
        for name in ways:
            way(name)
            patched = run_engine(model, sources, targets, a.new, batch)["wall_s"]
            unpatched = run_engine(model, sources, targets, a.new, batch, plain)["wall_s"]
            row[name] = {"patched_s": patched, "unpatched_s": unpatched, "overhead": patched / unpatched - 1}
            print(r, name, row[name], flush=True)
        if r:
            res["rounds"].append(row)
    way("shared")
    best = {n: min(row[n]["patched_s"] for row in res["rounds"]) for n in ways}
    res["best_patched_s"] = best
    res["best_unpatched_s"] = {n: min(row[n]["unpatched_s"] for row in res["rounds"]) for n in ways}
    res["shared_over_apart"] = best["shared"] / best["apart"]
    print(res["best_patched_s"], res["best_unpatched_s"], res["shared_over_apart"])
    print("wrote", write_result(res, a.out, "shared_qkv", torch.cuda.get_device_name()))
