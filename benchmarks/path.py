"""The user's path: `transferlab run` of W300 from process start to report, by stage (transferlab.bench_path).

    python benchmarks/path.py [--model random:mistral-7b] [--pairs 300] [--runs 2] [--batch-size N]

The first run is cold (empty Triton/Inductor caches under the work directory), the rest warm.
TRANSFERLAB_KERNELS=liger|compile picks the fused kernels' source (default: Liger where installed).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from transferlab.bench_path import main  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:mistral-7b")
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=150)
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--notebook", type=int, default=0, help="then N run_experiment calls in one process, one executor")
    ap.add_argument("--server", type=int, default=0, help="then N `transferlab run --server` against one server")
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    r = main(
        a.model,
        a.pairs,
        a.runs,
        a.batch_size,
        a.max_new_tokens,
        out_dir=a.out,
        work_dir=a.work_dir,
        notebook=a.notebook,
        server=a.server,
    )
    print(json.dumps({k: v for k, v in r.items() if k != "config"}, indent=1)[:6000])
