"""Where the runner's own work in a batch goes (the ``batches`` stage's exclusive seconds), on the GPU.

    python benchmarks/profile_batches.py [--model random:mistral-7b] [--pairs 300]

W300 through ``run_experiment`` twice in one process with one executor (the
model stays loaded); the second run is profiled with cProfile, with the stage
clock on. Prints the stage table and the transferlab functions by their own
time and by cumulative time, so host work outside the engine's stages can be
named. Nothing is stored: the printout is the result.
"""

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from transferlab.bench_path import write_workload  # noqa: E402
from transferlab.experiments import load_config, run_experiment  # noqa: E402
from transferlab.experiments.executors import InProcessExecutor  # noqa: E402
from transferlab.timings import StageClock, cuda_sync  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:mistral-7b")
    ap.add_argument("--pairs", type=int, default=300)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="transferlab-profile-"))
    cfg = load_config(str(write_workload(work, a.model, a.pairs, None, 150)))
    with InProcessExecutor() as executor:
        run_experiment(cfg, executor=executor, progress=False, report=False)
        prof = cProfile.Profile()
        with StageClock(sync=cuda_sync) as clock:
            prof.enable()
            run_experiment(cfg, executor=executor, progress=False, report=False)
            prof.disable()
    table = clock.table()
    print({k: round(v["s"], 3) for k, v in table["stages"].items()})
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats(key).print_stats(35)
        print("\n".join(line[:200] for line in out.getvalue().splitlines()[:60]))
