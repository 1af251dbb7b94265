"""Run the W300 benchmark (see transferlab.bench) and print its JSON.

    python benchmarks/w300.py [--pairs 300] [--batch-size N] [--skip seed,hf] [--fused]

TRANSFERLAB_DECODE=eager|static|graph picks the decode loop (default: CUDA graphs on CUDA).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from transferlab.bench import main  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="mistral-7b")
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--max-new-tokens", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seed-sample", type=int, default=3)
    ap.add_argument("--skip", default="")
    ap.add_argument("--hf-batch", type=int, default=None)
    ap.add_argument("--fused", action="store_true", help="also measure with fused elementwise kernels (torch.compile)")
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    r = main(
        a.shape,
        a.pairs,
        a.max_new_tokens,
        a.batch_size,
        a.seed_sample,
        a.out,
        tuple(filter(None, a.skip.split(","))),
        hf_batch=a.hf_batch,
        variants=("plain", "fused") if a.fused else ("plain",),
    )
    print(json.dumps(r, indent=2))
