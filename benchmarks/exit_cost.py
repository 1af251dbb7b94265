"""What a `transferlab run` process spends after its report is written, before the shell gets it back (issue 12).

The user's-path benchmark measured 1.9-2.6 s between a warm run's last stage
and its process exit on an H200. This runs the same kind of process (torch,
transformers, a random Mistral-7B-shape model prepared as ``transferlab run``
prepares it, a short W300-mix generate with CUDA graphs and ragged attention)
and ends it three ways, timing from the child's last line to its exit:

- ``normal``: the interpreter's own exit (atexit handlers, module teardown,
  CUDA's);
- ``atexit``: the atexit handlers, then ``os._exit``;
- ``os_exit``: ``os._exit`` at once.

    python benchmarks/exit_cost.py [--rounds 2] [--layers 32]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import atexit, os, sys, time
sys.path.insert(0, {src!r})
import torch
from transferlab.engine import prepare
from transferlab.experiments.w300 import W300_CONDITIONS, make_workload
from transferlab.models.random import build_random
model = prepare(build_random("mistral-7b", device="cuda", n_layers={layers}), fast_attention=True, fuse=True)
src, tgt = make_workload(16, 32000)
plans = [p for p in W300_CONDITIONS.values() for _ in tgt]
model.generate(tgt * 4, sources=[s if p else None for p in W300_CONDITIONS.values() for s in src], plan=plans,
               max_new_tokens=20, stop_at_eos=False, batch_size=64)
torch.cuda.synchronize()
how = {how!r}
print("DONE %.6f" % time.time(), flush=True)
if how == "atexit":
    atexit._run_exitfuncs()
    t = time.time()
    print("ATEXIT %.6f" % t, flush=True)
    os._exit(0)
if how == "os_exit":
    os._exit(0)
"""


def once(how: str, layers: int) -> dict:
    code = CHILD.format(src=str(ROOT / "src"), layers=layers, how=how)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    end = time.time()
    if "DONE" not in out:
        raise RuntimeError(f"the child process failed (exit {proc.returncode}):\n{err[-3000:]}")
    marks = {line.split()[0]: float(line.split()[1]) for line in out.splitlines() if line[:4] in ("DONE", "ATEX")}
    row = {"how": how, "exit_s": end - marks["DONE"], "rc": proc.returncode}
    if "ATEXIT" in marks:
        row["atexit_handlers_s"] = marks["ATEXIT"] - marks["DONE"]
    return row


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from transferlab.bench_results import write_result

    rows = []
    for _ in range(a.rounds):
        for how in ("normal", "atexit", "os_exit"):
            rows.append(once(how, a.layers))
            print(rows[-1], flush=True)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "layers": a.layers, "runs": rows}
    print("wrote", write_result(res, a.out, "exit_cost", torch.cuda.get_device_name()))
