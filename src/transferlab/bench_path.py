"""The speed benchmark of the user's path: ``transferlab run`` of W300, from process start to report written.

:mod:`transferlab.bench` times the engine alone, in a warm process. What a user
waits for is more: starting Python and importing, loading the model, preparing
kernels, the runner's batches (source capture, prefixes, graph capture,
decode, scoring, storing) and the statistics, figures and report. This module
runs the real command line, ``python -m transferlab.cli run CONFIG --timings
FILE``, in fresh processes, and reads where each one's time went from the
stage clock the library reports to (:mod:`transferlab.timings`).

The workload is W300 as the runner runs it (:mod:`transferlab.experiments.w300`:
300 pairs x 4 conditions x 150 new tokens, one seed, a random model of
Mistral-7B-Instruct-v0.2's shape by default), its config written as a TOML
file. The command runs ``runs`` times in a row with the same Triton, Inductor
and transferlab caches under the work directory: the first run is **cold**
(empty compile caches, a first process on this machine if the benchmark is
the first thing run), the next ones **warm**. Each run's result holds the
wall time of the process as its parent saw it, the process's own account
(``startup_s``: interpreter start to the command line's entry; then each
stage), the time without the model's load, and the run directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .bench_results import write_result

ENGINE_STAGES = (
    "tokenize",
    "source_capture",
    "target_prefix",
    "splice",
    "last_token",
    "seed_prompt",
    "graph_capture",
    "decode",
    "detokenize",
    "audit",
)


def write_workload(directory: Path, model: str, n_pairs: int, batch_size: int | None, max_new_tokens: int) -> Path:
    """The W300 bank and a one-seed TOML config in ``directory``; returns the config's path."""
    from .experiments.w300 import write_w300_bank, write_w300_config

    bank = write_w300_bank(directory / "bank", n_pairs=n_pairs)
    overrides = {"output_dir": str(directory / "runs"), "generation": {"max_new_tokens": max_new_tokens}}
    if batch_size:
        overrides["batch_size"] = batch_size
    return write_w300_config(directory / "w300.toml", bank, model=model, seeds=(0,), n_pairs=n_pairs, **overrides)


def _python(args: list[str], env: dict, timeout: float | None) -> float:
    """``python -m ARGS`` in a new process; its wall time as the parent sees it (a failure: its output's tail)."""
    cmd = [sys.executable, "-m", *args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return wall


def run_once(config: Path, timings: Path, env: dict, timeout: float | None = None) -> dict:
    """``transferlab run CONFIG --timings TIMINGS`` in a new process; its stage table plus the parent's wall time."""
    wall = _python(["transferlab.cli", "run", str(config), "--timings", str(timings)], env, timeout)
    table = json.loads(timings.read_text())
    paths = decode_paths(table["run_dir"]) if table.get("run_dir") else {}
    return {**table, **account(table, wall), "decode_paths": paths}


def decode_paths(run_dir: str | Path) -> dict[str, int]:
    """Rows per decode path (the results' ``decode_path`` column) of a finished run: which kernels the timed
    run decoded with."""
    from .experiments.store import RunStore

    store = RunStore(Path(run_dir) / "store.sqlite", create=False)
    try:
        results = store.results()
    finally:
        store.close()
    if "decode_path" not in results.columns:
        return {}
    return {str(k): int(n) for k, n in results["decode_path"].value_counts().items()}


def account(table: dict, process_wall: float) -> dict:
    """The numbers the issue asks for, from one run's stage table and its process wall time."""
    stages = {name: row["s"] for name, row in table["stages"].items()}
    engine = sum(stages.get(n, 0.0) for n in ENGINE_STAGES)
    load = stages.get("model_load", 0.0)
    return {
        "process_wall_s": process_wall,
        "exit_s": process_wall - (table.get("startup_s") or 0.0) - table["wall_s"],  # teardown and the spawn
        "model_load_s": load,
        "kernels_s": stages.get("kernels", 0.0),
        "without_model_load_s": process_wall - load,
        "batches_s": table.get("inclusive", {}).get("batches", {}).get("s"),
        "engine_s": engine,
        "after_batches_s": sum(stages.get(n, 0.0) for n in ("export", "statistics", "figures", "report", "cli_output")),
    }


def in_process(config: Path, runs: int, out: Path) -> Path:
    """The notebook path: ``run_experiment`` ``runs`` times in this process with one executor, whose worker keeps
    the model loaded and its kernels prepared between runs; one stage table per run, as JSON at ``out``."""
    from .experiments import load_config, run_experiment
    from .experiments.executors import InProcessExecutor
    from .timings import StageClock, cuda_sync, process_age

    started = process_age()
    tables = []
    with InProcessExecutor() as executor:
        cfg = load_config(str(config))
        for _ in range(runs):
            with StageClock(sync=cuda_sync) as clock:
                run_experiment(cfg, executor=executor, progress=False)
            tables.append(clock.table())
    out.write_text(json.dumps({"startup_s": started, "runs": tables}, indent=2))
    return out


def through_server(config: Path, work: Path, runs: int, env: dict, timeout: float | None = None) -> list[dict]:
    """``transferlab serve`` in the background, then ``transferlab run CONFIG --server`` ``runs`` times in fresh
    client processes (the first finds no model loaded); each client's account with the server's stage table."""
    from .serve import request, wait_for

    # a Unix socket's path is limited to about 100 bytes: a private directory under the temp dir, not `work`
    sock_dir = Path(tempfile.mkdtemp(prefix="tl-serve-"))
    sock = sock_dir / "serve.sock"
    log = open(work / "serve.log", "w")
    cmd = [sys.executable, "-m", "transferlab.cli", "serve", "--socket", str(sock)]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    out = []
    try:
        if not wait_for(sock, timeout=timeout or 300):
            raise RuntimeError(f"transferlab serve did not answer at {sock}; see {work / 'serve.log'}")
        for i in range(runs):
            timings = work / f"server_timings_{i}.json"
            client = ["transferlab.cli", "run", str(config), "--server", "--socket", str(sock), "--timings"]
            wall = _python([*client, str(timings)], env, timeout)
            table = json.loads(timings.read_text())
            report = (table.get("startup_s") or 0.0) + table["wall_s"]
            stages = table["server"]["stages"]
            load = stages.get("model_load", {}).get("s", 0.0)
            table.update(
                label="first (loads the model)" if i == 0 else "model already loaded",
                process_wall_s=wall,
                report_written_s=report,
                model_load_s=load,
                without_model_load_s=report - load,
            )
            out.append(table)
            print(
                f"[server] {report:.1f} s from client start to report ({report - load:.1f} s without the load)",
                file=sys.stderr,
            )
    finally:
        try:
            request({"op": "stop"}, sock, timeout=60)
            proc.wait(timeout=120)
        except Exception:
            proc.kill()
        log.close()
        try:
            sock_dir.rmdir()  # empty once the server removed its socket
        except OSError:
            print(f"[server] left its socket behind in {sock_dir}", file=sys.stderr)
    return out


def main(
    model: str = "random:mistral-7b",
    n_pairs: int = 300,
    runs: int = 2,
    batch_size: int | None = None,
    max_new_tokens: int = 150,
    out_dir: str | Path = "benchmarks/results",
    work_dir: str | Path | None = None,
    timeout: float | None = None,
    notebook: int = 0,
    server: int = 0,
) -> dict:
    """Run the user's path ``runs`` times (first cold, then warm); with ``notebook`` > 0, then ``run_experiment``
    that many times in one more process with one executor (:func:`in_process`); with ``server`` > 0, then
    ``transferlab run --server`` that many times against one ``transferlab serve`` (:func:`through_server`);
    write and return the JSON."""
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="transferlab-path-"))
    work.mkdir(parents=True, exist_ok=True)
    config = write_workload(work, model, n_pairs, batch_size, max_new_tokens)
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    caches = work / "caches"  # compile caches of this benchmark alone: the first run finds them empty
    env.setdefault("TRITON_CACHE_DIR", str(caches / "triton"))
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(caches / "inductor"))
    env.setdefault("PYTHONUNBUFFERED", "1")
    results = []
    for i in range(runs):
        label = "cold" if i == 0 else "warm"
        r = run_once(config, work / f"timings_{i}.json", env, timeout)
        r["label"] = label
        results.append(r)
        print(
            f"[{label}] {r['process_wall_s']:.1f} s from process start to report "
            f"({r['without_model_load_s']:.1f} s without the model's load)",
            file=sys.stderr,
        )
    if notebook:
        path = work / "in_process.json"
        _python(["transferlab.bench_path", str(config), str(path), str(notebook)], env, timeout)
        notebook_runs = json.loads(path.read_text())["runs"]
        for i, table in enumerate(notebook_runs):
            table["label"] = "first" if i == 0 else "model already loaded"
            table["model_load_s"] = table["stages"].get("model_load", {}).get("s", 0.0)
        walls = ", ".join(f"{t['wall_s']:.1f} s" for t in notebook_runs)
        print(f"[in process] run_experiment: {walls}", file=sys.stderr)
    if server:
        server_runs = through_server(config, work, server, env, timeout)
    device = next((r.get("device") for r in results if r.get("device")), "cpu")
    result = {
        "workload": f"W{n_pairs} through transferlab run (1 seed, {max_new_tokens} new tokens)",
        "model": model,
        "device": device,
        "batch_size": batch_size or "runner's choice",
        "config": config.read_text(),
        "caches": {k: env[k] for k in ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")},
        "kernels": os.environ.get("TRANSFERLAB_KERNELS", "auto"),
        "decode_attention": os.environ.get("TRANSFERLAB_DECODE_ATTENTION", "auto"),  # auto: ragged on CUDA
        "runs": results,
    }
    if notebook:
        result["in_process"] = notebook_runs
    if server:
        result["server"] = server_runs
    path = write_result(result, out_dir, f"path_w{n_pairs}", device)
    result["path"] = str(path)
    return result


if __name__ == "__main__":  # python -m transferlab.bench_path CONFIG OUT RUNS: the in-process runs of main()
    in_process(Path(sys.argv[1]), int(sys.argv[3]), Path(sys.argv[2]))


__all__ = ["main", "in_process", "run_once", "account", "write_workload", "ENGINE_STAGES"]
