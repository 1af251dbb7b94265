"""CUDA graphs + fused kernels against the eager loop, on a real model (issue 11 item 9).

SmolLM2-135M-Instruct (a local Hugging Face directory), every prompt of the
research bank in chat format as targets, greedy, EOS ignored (fixed work):

- ``eager``: ``TRANSFERLAB_DECODE=eager`` on a model loaded with ``fuse=False``;
- ``graph``: the default CUDA path, static decode captured as CUDA graphs on a
  model whose RMSNorm, SiLU x up and RoPE are fused.

Each runs twice: the targets alone (``baseline``) and under the transfer plan
``kv:all + v_proj@0.84375:w16:both`` with recursive (L3-L5) sources cycled over
the targets. For every pair of runs it reports the share of sequences whose
greedy tokens are identical, the per-token agreement, and the mean step of the
first divergence; in float32 the two paths must agree exactly, in bfloat16
rounding may flip near-ties. It also times each run.

    python benchmarks/gpu_real_model.py --model DIR [--dtype bfloat16 float32] [--new 64]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import transferlab as tl
from transferlab.bench_results import write_result
from transferlab.engine.batching import encode
from transferlab.prompts import load_bank

PLAN = "kv:all + v_proj@0.84375:w16:both"


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    """How far two runs' token ids agree: identical sequences, per-token agreement, mean first divergence."""
    same = sum(x == y for x, y in zip(a, b))
    tokens = sum(len(x) for x in a)
    equal_tokens = sum(sum(p == q for p, q in zip(x, y)) for x, y in zip(a, b))
    first = [next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), None) for x, y in zip(a, b)]
    diverged = [f for f in first if f is not None]
    return {
        "sequences": len(a),
        "identical_sequences": same,
        "identical_share": same / len(a),
        "token_agreement": equal_tokens / tokens,
        "mean_first_divergence_step": (sum(diverged) / len(diverged)) if diverged else None,
    }


def _run(model, targets, sources, plan, new: int, how: str) -> tuple[list[list[int]], float]:
    os.environ["TRANSFERLAB_DECODE"] = how
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    g = model.generate(targets, sources=sources, plan=plan, max_new_tokens=new, greedy=True, stop_at_eos=False)
    torch.cuda.synchronize()
    return g.token_ids, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    bank = load_bank("research")
    texts = [p.text for p in bank.prompts]
    recursive = [p.text for p in bank.prompts if p.group in ("L3", "L4", "L5")]
    result = {
        "model": args.model,
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "prompts": len(texts),
        "format": "chat",
        "new_tokens": args.new,
        "plan": PLAN,
        "runs": {},
    }
    for dtype in args.dtype:
        eager_model = tl.load_model(args.model, dtype=dtype, device="cuda", fuse=False)
        graph_model = tl.load_model(args.model, dtype=dtype, device="cuda", fuse=True)
        targets = encode(eager_model.tokenizer, texts, "chat")
        sources = [encode(eager_model.tokenizer, [recursive[i % len(recursive)]], "chat")[0] for i in range(len(texts))]
        for name, plan, src in (("baseline", None, None), ("transfer", PLAN, sources)):
            _run(graph_model, targets[:8], src[:8] if src else None, plan, 4, "auto")  # warm-up: graphs, kernels
            a, ta = _run(eager_model, targets, src, plan, args.new, "eager")
            b, tb = _run(graph_model, targets, src, plan, args.new, "auto")
            row = {"eager_s": round(ta, 3), "graph_fused_s": round(tb, 3), **agreement(a, b)}
            row["fused_parts"] = graph_model.source.get("fused")
            result["runs"][f"{dtype}/{name}"] = row
            print(dtype, name, json.dumps(row))
        if dtype != "float32":
            # is a disagreement bf16 rounding or the graph path? each bf16 path against float32 eager tokens
            ref_model = tl.load_model(args.model, dtype="float32", device="cuda", fuse=False)
            plain_model = tl.load_model(args.model, dtype=dtype, device="cuda", fuse=False)
            ref, _ = _run(ref_model, targets, None, None, args.new, "eager")
            for label, m, how in (
                ("eager", eager_model, "eager"),
                ("graph_unfused", plain_model, "auto"),
                ("graph_fused", graph_model, "auto"),
            ):
                toks, _ = _run(m, targets, None, None, args.new, how)
                result["runs"][f"{dtype}/baseline/{label}_vs_float32_eager"] = agreement(toks, ref)
                print(dtype, label, "vs float32 eager", json.dumps(agreement(toks, ref)))
            del ref_model, plain_model
        del eager_model, graph_model
        torch.cuda.empty_cache()
    print(write_result(result, args.out, "real_model_graph_vs_eager", result["device"]))


if __name__ == "__main__":
    main()
