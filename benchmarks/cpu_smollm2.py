"""CPU speed on a real model (issue 11 item 8): SmolLM2-135M-Instruct, batched generation.

For each torch thread count (default 1 and 2) it times, on the same batch of
chat-format prompts from the research bank (targets from the baseline groups,
sources from L3-L5), greedy, EOS ignored so the work is fixed:

- ``engine_plan``: our engine with an intervention plan
  (``kv:all:keepfirst + v_proj@0.84375:w16:both``), sources captured and spliced;
- ``engine_empty``: our engine, same batch, plans empty;
- ``hf_generate``: transformers' ``generate`` on the same left-padded batch,
  no interventions.

It records tokens/s for each, the machine's load average before and after
(the box is shared: a second busy process changes everything), torch and
transformers versions, and writes JSON to ``benchmarks/results/``.

    python benchmarks/cpu_smollm2.py [--batch 32] [--new 32] [--threads 1 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import transferlab as tl
from transferlab.bench_results import write_result
from transferlab.engine.batching import encode, left_pad, pad_id_of
from transferlab.prompts import load_bank

PLAN = "kv:all:keepfirst + v_proj@0.84375:w16:both"
TARGETS = ("factual", "creative", "personal", "math")
SOURCES = ("L3", "L4", "L5")


def _prompts(model, batch: int):
    bank = load_bank("research")
    tg = [p.text for p in bank.prompts if p.group in TARGETS][:batch]
    sr = [p.text for p in bank.prompts if p.group in SOURCES][:batch]
    return encode(model.tokenizer, tg, "chat"), encode(model.tokenizer, sr, "chat")


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(batch: int, new: int, threads: list[int], repeats: int) -> dict:
    model = tl.load_model("smollm2-135m-instruct", device="cpu", dtype="float32")
    targets, sources = _prompts(model, batch)
    tok = model.tokenizer
    padded = left_pad(targets, pad_id_of(tok), tok.bos_token_id)
    out = {
        "model": "smollm2-135m-instruct",
        "dtype": "float32",
        "batch": batch,
        "new_tokens": new,
        "plan": PLAN,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
        "runs": [],
    }
    tokens = batch * new
    for n in threads:
        torch.set_num_threads(n)
        kw = dict(max_new_tokens=new, greedy=True, stop_at_eos=False, batch_size=batch)

        def engine_plan():
            g = model.generate(targets, sources=sources, plan=PLAN, **kw)
            assert int(g.audit["never_fired"].sum()) == 0

        def engine_empty():
            model.generate(targets, **kw)

        def hf_generate():
            with torch.inference_mode():
                model.hf.generate(
                    input_ids=padded.input_ids,
                    attention_mask=padded.attention_mask,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    do_sample=False,
                    pad_token_id=pad_id_of(tok),
                )

        engine_empty()  # warm-up (allocator, first-call costs)
        row = {"threads": n}
        for name, fn in (("engine_plan", engine_plan), ("engine_empty", engine_empty), ("hf_generate", hf_generate)):
            s = _time(fn, repeats)
            row[name] = {"best_s": round(s, 3), "tokens_per_s": round(tokens / s, 1)}
        out["runs"].append(row)
        print(json.dumps(row))
    out["load_after"] = os.getloadavg()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    result = run(args.batch, args.new, args.threads, args.repeats)
    print(write_result(result, args.out, "cpu_smollm2", f"b{args.batch}"))


if __name__ == "__main__":
    main()
