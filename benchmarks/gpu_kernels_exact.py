"""Liger's fused kernels + CUDA graphs against the eager, unfused loop: the same greedy tokens? (issue 12)

A random model of Mistral-7B's width with ``--layers`` layers (float32 and
bfloat16, built with the same seed), W300's prompts (``--pairs`` pairs), each
target alone and under the transfer plan ``kv:all + v_proj@0.84375:decode`` (27/32
of depth, a layer that exists at any ``--layers``), greedy, ``--new`` tokens, EOS ignored:

- ``eager``: ``TRANSFERLAB_DECODE=eager``, no fused kernels (run first: the
  fused RoPE replaces the family's function for the whole process);
- ``graph``: the default CUDA path (static decode under CUDA graphs) with
  RMSNorm, SiLU x up and RoPE fused (``TRANSFERLAB_KERNELS``, default Liger).

It reports the share of identical sequences, per-token agreement and the mean
first divergence for each dtype. In float32 the paths should agree except
where rounding decides a near-tie; in bfloat16 rounding flips more of them.

    python benchmarks/gpu_kernels_exact.py [--layers 4] [--pairs 64] [--new 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from transferlab.bench_results import write_result  # noqa: E402
from transferlab.engine import prepare  # noqa: E402
from transferlab.experiments.w300 import make_workload  # noqa: E402
from transferlab.models.random import build_random  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_real_model import agreement  # noqa: E402  (one comparison for both GPU exactness scripts)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(model, targets, sources, plans, new: int, how: str):
    os.environ["TRANSFERLAB_DECODE"] = how
    sync()
    t0 = time.perf_counter()
    g = model.generate(targets, sources=sources, plan=plans, max_new_tokens=new, greedy=True, stop_at_eos=False)
    sync()
    return g.token_ids, time.perf_counter() - t0, dict(Counter(g.decode_paths))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--shape", default="mistral-7b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    src, tgt = make_workload(a.pairs)
    targets = tgt + tgt
    sources = [None] * a.pairs + src
    plans = [""] * a.pairs + ["kv:all + v_proj@0.84375:decode"] * a.pairs
    models = {
        d: build_random(a.shape, dtype=getattr(torch, d), n_layers=a.layers, device=a.device)
        for d in ("float32", "bfloat16")
    }
    for m in models.values():
        prepare(m, fast_attention=a.device.startswith("cuda"))
    eager = {d: run(m, targets, sources, plans, a.new, "eager") for d, m in models.items()}
    result = {
        "device": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "cpu",
        "shape": a.shape,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "layers": a.layers,
        "pairs": a.pairs,
        "new_tokens": a.new,
        "decode_attention": os.environ.get("TRANSFERLAB_DECODE_ATTENTION", "auto"),  # auto: ragged on CUDA
        "dtypes": {},
    }
    for d, m in models.items():
        prepare(m, fuse=True)
        result["kernels"], result["fused_parts"] = m.source.get("kernels"), m.source.get("fused")
        run(m, targets[:4], sources[:4], plans[:4], 4, "auto")  # compile or load the kernels first
        graph = run(m, targets, sources, plans, a.new, "auto")
        base = agreement(eager[d][0][: a.pairs], graph[0][: a.pairs])
        transfer = agreement(eager[d][0][a.pairs :], graph[0][a.pairs :])
        result["dtypes"][d] = {
            "baseline": base,
            "transfer": transfer,
            "eager_s": eager[d][1],
            "graph_fused_s": graph[1],
            "decode_paths": {"eager": eager[d][2], "graph_fused": graph[2]},  # rows per decode path
        }
    write_result(result, a.out, "kernels_exact", result["kernels"], result["device"])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
