"""``--executor ray``: two local CPU workers give exactly the in-process table, and a killed worker loses nothing.

The demo preset (24 pairs x its conditions, 8 new tokens, batches of 8: 21
batches) runs once in-process (the reference) and then on two Ray actors. A
real SIGKILL of a worker process while it computes a batch must lose nothing
and store nothing twice (Ray restarts the actor and runs its batch again). A
partial Ray run resumes from the CLI with ``--executor ray``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import DEMO_CONDITIONS, AppendSpy
from helpers import stored_results as results
from typer.testing import CliRunner

ray = pytest.importorskip("ray")

from transferlab.cli import app  # noqa: E402
from transferlab.experiments import load_config, run_experiment  # noqa: E402
from transferlab.experiments.executors import Executor, RayExecutor  # noqa: E402

N_PAIRS, N_CONDITIONS = 24, DEMO_CONDITIONS
TOTAL = N_PAIRS * N_CONDITIONS

pytestmark = pytest.mark.filterwarnings("ignore:no vocabulary token spells:UserWarning")


def overrides(output_dir: Path) -> list[str]:
    return [f"output_dir={output_dir}", f"prompts.n={N_PAIRS}", "generation.max_new_tokens=8", "batch_size=8"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CPU workers run (cpus_per_worker=1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for this module: 4 logical CPUs (2 workers here, 2 more for the CLI's executor)."""
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def executor(ray_local):
    ex = RayExecutor(workers=2)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    """The in-process table."""
    run_dir = run_experiment(
        load_config("stories", overrides(tmp_path_factory.mktemp("inprocess"))), progress=False, report=False
    )
    return results(run_dir)


def assert_same_table(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Every unit once, and the same row for it: texts, token counts, scores, R_V, audit."""
    assert got["unit"].is_unique and len(got) == len(want) == TOTAL
    got = got.sort_values("unit").reset_index(drop=True)
    want = want.sort_values("unit").reset_index(drop=True)
    assert list(got.columns) == list(want.columns)
    for col in ("unit", "text", "n_prompt_tokens", "n_new_tokens", "finish_reason", "plan", "audit"):
        assert got[col].tolist() == want[col].tolist(), f"column {col} differs"
    pd.testing.assert_frame_equal(got, want, check_exact=True)


class KillOneWorker(Executor):
    """Delegates to a Ray executor; after the first batch arrives, SIGKILLs a worker that is computing one."""

    kind = "ray"

    def __init__(self, inner: RayExecutor):
        self.inner = inner
        self.pids = {a: ray.get(a.pid.remote()) for a in inner.actors}  # asked while idle
        self.killed = None  # (actor, pid, units of the batch it was computing)

    def prepare(self, request):
        return self.inner.prepare(request)

    def map_batches(self, batches):
        for i, (batch, rows) in enumerate(self.inner.map_batches(batches)):
            if self.killed is None:
                actor, in_flight = next(iter(self.inner.busy().items()))
                pid = self.pids[actor]
                os.kill(pid, signal.SIGKILL)
                self.killed = (actor, pid, [u.key for u in in_flight.units])
            yield batch, rows


def test_ray_gives_the_in_process_table(executor, reference, tmp_path, monkeypatch):
    spy = AppendSpy(monkeypatch)
    run_dir = run_experiment(
        load_config("stories", overrides(tmp_path)), progress=False, report=False, executor=executor
    )
    assert_same_table(results(run_dir), reference)
    assert len(spy.units) == len(set(spy.units)) == TOTAL
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["executor"]["kind"] == "ray" and meta["executor"]["workers"] == 2 and meta["finished"]


def test_a_killed_worker_loses_nothing(executor, reference, tmp_path, monkeypatch):
    spy = AppendSpy(monkeypatch)
    killer = KillOneWorker(executor)
    run_dir = run_experiment(load_config("stories", overrides(tmp_path)), progress=False, report=False, executor=killer)
    actor, pid, in_flight = killer.killed
    assert in_flight, "the killed worker was computing a batch"
    assert ray.get(actor.pid.remote()) != pid, "Ray restarted the killed worker in a new process"
    assert len(executor.actors) == 2
    assert len(spy.units) == len(set(spy.units)) == TOTAL, "a unit was lost or written twice"
    assert set(in_flight) <= set(spy.units)
    assert_same_table(results(run_dir), reference)


def test_a_partial_ray_run_resumes_from_the_cli(executor, reference, tmp_path, monkeypatch):
    spy = AppendSpy(monkeypatch)
    run_dir = run_experiment(
        load_config("stories", overrides(tmp_path)), progress=False, report=False, executor=executor, max_batches=3
    )
    before = results(run_dir)
    assert len(before) == len(spy.units) == 24  # three batches of 8, each stored once
    spy.units.clear()
    res = CliRunner().invoke(
        app, ["run", "--resume", str(run_dir), "--no-report", "--executor", "ray", "--workers", "2"]
    )
    assert res.exit_code == 0, (res.output, res.exception)
    assert set(spy.units).isdisjoint(before["unit"]), "a stored unit was computed again"
    assert len(spy.units) == len(set(spy.units)) == TOTAL - 24
    assert_same_table(results(run_dir), reference)
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["finished"] and len(meta["resumed_at"]) == 1 and meta["executor"]["workers"] == 2
    assert np.isfinite(results(run_dir)["source_lexicon"]).all()


class RemoveOneWorker(KillOneWorker):
    """After the first batch arrives, kills a busy worker for good (no restart): Ray gives up on it."""

    def map_batches(self, batches):
        for batch, rows in self.inner.map_batches(batches):
            if self.killed is None:
                actor, in_flight = next(iter(self.inner.busy().items()))
                ray.kill(actor, no_restart=True)
                self.killed = (actor, None, [u.key for u in in_flight.units])
            yield batch, rows


def test_a_worker_gone_for_good_has_its_batch_requeued(ray_local, reference, tmp_path, monkeypatch):
    spy = AppendSpy(monkeypatch)
    with RayExecutor(workers=2) as inner:
        remover = RemoveOneWorker(inner)
        run_dir = run_experiment(
            load_config("stories", overrides(tmp_path)), progress=False, report=False, executor=remover
        )
        actor, _, in_flight = remover.killed
        assert in_flight and actor not in inner.actors and len(inner.actors) == 1  # the driver dropped it
    assert len(spy.units) == len(set(spy.units)) == TOTAL, "a unit was lost or written twice"
    assert_same_table(results(run_dir), reference)
