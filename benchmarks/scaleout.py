"""Scale-out of W300 through the experiment runner (issue 7): one GPU in-process vs Ray workers.

    python benchmarks/scaleout.py [--model random:mistral-7b] [--seeds 4] [--pairs 300] [--gpus 2]
                                  [--out benchmarks/results] [--modes inprocess,ray1,ray2]

W300 x seeds (300 pairs x 4 conditions x 150 new tokens x 4 seeds = 4,800
generations; see :mod:`transferlab.experiments.w300`) runs through
``run_experiment`` three times, in this order, on the same config:

- ``inprocess``: the default executor, in this process, on ``cuda:0``;
- ``ray1``: ``--executor ray`` with one worker of one GPU;
- ``ray<N>`` (``N = --gpus``): N workers of one GPU each (Ray gives each its
  own card through ``CUDA_VISIBLE_DEVICES``; the worker's model goes to
  ``cuda:0`` of that card).

Without CUDA, Ray workers are CPU workers (one thread each, and in-process
runs on one thread too) instead, so the script runs on a laptop:
``--model random:tiny-mistral --pairs 8 --seeds 2``.

Per mode it records the wall time of the whole run (making the executor,
``run_experiment`` with the report skipped, closing the executor) and its
parts, measured by a thin executor wrapper through the executor interface:
``start_s`` (Ray started, actors created), ``prepare_s`` (worker processes up
and the model loaded on **every** worker, plans checked), ``batches_s`` (first
batch handed out to the last result stored: the generation work, without
start-up) and ``close_s``. Speed-ups are in-process / ray<N> and ray1 /
ray<N>, end to end and for the batches alone. Every mode's table is compared
with the first one's (the rows should be the same whichever executor ran
them). One JSON file goes to ``--out``:
``scaleout_w<pairs>x<seeds>_<card>_<YYYYmmdd-HHMMSS>.json``.

Environment: the script needs no ``pip install``: run it as
``PYTHONPATH=/some/site:src python3 benchmarks/scaleout.py``. It puts this
repository's ``src`` first on ``PYTHONPATH`` and makes every entry absolute
before Ray starts; a local Ray's workers inherit the driver's environment
(``PYTHONPATH``, ``NCCL_NVLS_ENABLE``, ...), so they import the same code.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def export_pythonpath() -> str:
    """``SRC`` first on ``sys.path`` and on ``PYTHONPATH``, every entry made absolute (Ray workers inherit it)."""
    sys.path.insert(0, str(SRC))
    entries = [str(SRC)] + [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(entries))
    return os.environ["PYTHONPATH"]


export_pythonpath()

import torch  # noqa: E402

from transferlab.bench_results import write_result  # noqa: E402
from transferlab.experiments import run_experiment  # noqa: E402
from transferlab.experiments.executors import Executor, InProcessExecutor, RayExecutor, import_ray  # noqa: E402
from transferlab.experiments.store import RunStore  # noqa: E402
from transferlab.experiments.w300 import w300_config, write_w300_bank  # noqa: E402


class TimedExecutor(Executor):
    """Another executor, its phases timed through the executor interface (the runner sees no difference).

    ``prepare`` asks **every** Ray worker to load the model and check the
    plans, in parallel (a plain RayExecutor asks one, and the others load on
    their first batch), so that ``batches_s`` holds generation work only.
    """

    def __init__(self, inner: Executor):
        self.inner = inner
        self.kind = inner.kind
        self.times = {"prepare_s": 0.0, "batches_s": 0.0}
        self.n_batches = 0

    def prepare(self, request):
        t0 = time.perf_counter()
        if isinstance(self.inner, RayExecutor):  # every worker loads now, in parallel, not on its first batch
            ray = import_ray()
            facts = ray.get([a.prepare.remote(request) for a in self.inner.actors])[0]
        else:
            facts = self.inner.prepare(request)
        self.times["prepare_s"] += time.perf_counter() - t0
        return facts

    def map_batches(self, batches):
        batches = list(batches)
        t0 = time.perf_counter()
        try:
            for batch, rows in self.inner.map_batches(batches):
                self.n_batches += 1
                yield batch, rows
        finally:
            self.times["batches_s"] += time.perf_counter() - t0

    def describe(self) -> dict:
        return self.inner.describe()

    def placement(self) -> list[dict]:
        if isinstance(self.inner, RayExecutor):
            ray = import_ray()
            return ray.get([a.placement.remote() for a in self.inner.actors])
        model = self.inner.worker.model
        device = model.device if model is not None else None
        gpu = torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" else None
        return [
            {
                "pid": os.getpid(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "model_device": str(device) if device is not None else None,
                "gpu": gpu,
            }
        ]

    def close(self) -> None:
        self.inner.close()


def make_inner(mode: str, cuda: bool) -> Executor:
    if mode == "inprocess":
        return InProcessExecutor()
    workers = int(mode[3:])
    if cuda:
        return RayExecutor(workers=workers, gpus_per_worker=1)
    return RayExecutor(workers=workers, gpus_per_worker=0, cpus_per_worker=1)


def results(run_dir: Path):
    store = RunStore(Path(run_dir) / "store.sqlite")
    try:
        return store.results().sort_values("unit").reset_index(drop=True)
    finally:
        store.close()


def run_mode(mode: str, config, cuda: bool) -> tuple[dict, Path]:
    t0 = time.perf_counter()
    timed = TimedExecutor(make_inner(mode, cuda))
    start_s = time.perf_counter() - t0
    try:
        run_dir = run_experiment(config, executor=timed, progress=False, report=False)
        run_s = time.perf_counter() - t0 - start_s
        described, placement = timed.describe(), timed.placement()  # before close: the workers are gone then
        t_close = time.perf_counter()  # asking where the workers run is not part of the run's time
    finally:
        timed.close()
    close_s = time.perf_counter() - t_close
    end = start_s + run_s + close_s
    df = results(run_dir)
    out = {
        "executor": described,
        "end_to_end_s": end,
        "start_s": start_s,
        **timed.times,
        "run_experiment_s": run_s,
        "close_s": close_s,
        "n_batches": timed.n_batches,
        "rows": len(df),
        "new_tokens": int(df["n_new_tokens"].sum()),
        "never_fired": int(df["n_never_fired"].sum()),
        "placement": placement,
        "run_dir": str(run_dir),
    }
    out["tokens_per_s_batches"] = out["new_tokens"] / out["batches_s"] if out["batches_s"] else None
    if cuda and mode != "inprocess":  # each worker sees exactly one card, and no two share one
        cards = [tuple(g["uuid"] for g in p["gpus"]) for p in placement]
        out["one_gpu_per_worker"] = all(len(c) == 1 for c in cards) and len(set(cards)) == len(cards)
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()  # the in-process model's memory back to the card before Ray workers use it
    return out, run_dir


def versions() -> dict:
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import ray

        out["ray"] = ray.__version__
    except ImportError:
        out["ray"] = None
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="random:mistral-7b")
    ap.add_argument("--seeds", type=int, default=4, help="seeds 0..N-1")
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument(
        "--gpus", type=int, default=2, help="workers of the last Ray mode (one GPU each; CPU workers without CUDA)"
    )
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--modes", default=None, help="comma-separated, in order; default inprocess,ray1,ray<gpus>")
    ap.add_argument("--max-new-tokens", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=None, help="units per batch (default: the runner's: 256 on CUDA)")
    ap.add_argument("--runs", default=None, help="where the run directories go (default: a new temporary directory)")
    a = ap.parse_args(argv)

    modes = (a.modes or f"inprocess,ray1,ray{a.gpus}").split(",")
    for m in modes:
        if m != "inprocess" and not (m.startswith("ray") and m[3:].isdigit() and int(m[3:]) >= 1):
            ap.error(f"unknown mode {m!r}: use inprocess or ray<workers> (ray1, ray2, ...)")
    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(1)  # in-process on one core, as each Ray CPU worker (cpus_per_worker=1)
    n_visible = torch.cuda.device_count() if cuda else 0
    gpus = [torch.cuda.get_device_name(i) for i in range(n_visible)]
    if cuda and any(m.startswith("ray") and int(m[3:]) > n_visible for m in modes):
        ap.error(f"{n_visible} GPU(s) visible, fewer than a Ray mode's workers ({', '.join(modes)})")
    if any(m.startswith("ray") for m in modes):
        import_ray()  # a clear error before any work if Ray is missing

    work = Path(a.runs or tempfile.mkdtemp(prefix="scaleout-"))
    bank_dir = write_w300_bank(work / "bank", n_pairs=a.pairs)
    seeds = list(range(a.seeds))
    overrides = {"output_dir": str(work / "runs"), "generation": {"max_new_tokens": a.max_new_tokens}}
    if a.batch_size:
        overrides["batch_size"] = a.batch_size
    config = w300_config(bank_dir, model=a.model, seeds=seeds, n_pairs=a.pairs, **overrides)

    result = {
        "workload": f"W{a.pairs}x{a.seeds}",
        "model": a.model,
        "pairs": a.pairs,
        "seeds": seeds,
        "conditions": [c.name for c in config.conditions],
        "max_new_tokens": a.max_new_tokens,
        "generations": a.pairs * len(config.conditions) * a.seeds,
        "batch_size": a.batch_size or "runner default",
        "cuda": cuda,
        "gpus": gpus,
        **versions(),
        "torch_threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "NCCL_NVLS_ENABLE", "PYTHONPATH")},
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "work_dir": str(work),
        "modes": {},
    }
    reference = None
    for mode in modes:
        print(f"[scaleout] {mode} ...", file=sys.stderr, flush=True)
        r, run_dir = run_mode(mode, config, cuda)
        df = results(run_dir)
        if reference is None:
            reference, r["same_as"] = df, None
        else:
            same = len(df) == len(reference) and df["unit"].tolist() == reference["unit"].tolist()
            r["same_as"] = modes[0]
            r["identical_texts"] = float((df["text"] == reference["text"]).mean()) if same else 0.0
            r["identical_table"] = bool(same and df.equals(reference))
        result["modes"][mode] = r
        print(
            f"[scaleout] {mode}: {r['end_to_end_s']:.1f} s end to end, {r['batches_s']:.1f} s of batches",
            file=sys.stderr,
            flush=True,
        )

    last = f"ray{a.gpus}"
    t = result["modes"]
    if last in t:
        result["speedup"] = {
            f"{m}_over_{last}_{kind}": t[m][key] / t[last][key]
            for m in ("inprocess", "ray1")
            if m in t and m != last
            for kind, key in (("end_to_end", "end_to_end_s"), ("batches", "batches_s"))
        }
    path = write_result(result, a.out, f"scaleout_w{a.pairs}x{a.seeds}", gpus[0] if gpus else "cpu")
    result["path"] = str(path)
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
