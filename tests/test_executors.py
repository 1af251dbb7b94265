"""Executors without Ray: self-describing batches, the in-process executor, the CLI's executor options.

A :class:`UnitBatch` carries everything a worker needs (resolved config, model
name, seed, settings, units, their conditions' plans and R_V rows), so a fresh
worker given a pickled batch reproduces the stored rows exactly. The Ray
executor itself is tested in ``test_ray_executor.py``.
"""

from __future__ import annotations

import json
import pickle
import sys

import pytest
from helpers import DEMO_CONDITIONS
from typer.testing import CliRunner

from transferlab.cli import app
from transferlab.experiments import load_config, run_experiment
from transferlab.experiments.executors import RAY_MISSING, ExecutorError, InProcessExecutor, make_executor
from transferlab.experiments.store import RunStore
from transferlab.experiments.worker import ModelRequest, UnitBatch, Worker

pytestmark = pytest.mark.filterwarnings("ignore:no vocabulary token spells:UserWarning")

SMALL = ["model=tiny:llama", "prompts.n=4", "generation.max_new_tokens=4", "batch_size=8", "rv.window=8"]


class RecordingExecutor(InProcessExecutor):
    """The in-process executor, keeping every batch it was given."""

    def __init__(self):
        super().__init__()
        self.batches: list[UnitBatch] = []

    def map_batches(self, batches):
        for batch, rows in super().map_batches(batches):
            self.batches.append(batch)
            yield batch, rows


def stored(run_dir) -> dict[str, dict]:
    store = RunStore(run_dir / "store.sqlite")
    try:
        return {unit: json.loads(row) for unit, row in store.db.execute("SELECT unit, row FROM results")}
    finally:
        store.close()


def test_a_pickled_batch_gives_the_stored_rows_on_a_fresh_worker(tmp_path):
    ex = RecordingExecutor()
    run_dir = run_experiment(
        load_config("stories", [f"output_dir={tmp_path}", *SMALL]), progress=False, report=False, executor=ex
    )
    rows = stored(run_dir)
    assert len(ex.batches) == 4 and sum(len(b.units) for b in ex.batches) == len(rows) == 4 * DEMO_CONDITIONS
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["executor"] == {"kind": "inprocess"}
    fresh = Worker()
    for batch in reversed(ex.batches):  # any order, any worker
        again = pickle.loads(pickle.dumps(batch))
        assert again.config == json.loads((run_dir / "config.json").read_text())
        assert set(again.conditions) == {u.condition for u in again.units}
        for row in fresh.run(again):
            want = rows[row["unit"]]
            assert json.loads(json.dumps(row, default=float).replace("NaN", "null")) == want
    assert fresh.model is not None and fresh.model.name == "tiny:llama"  # loaded once, kept


def test_prepare_reports_plan_problems_as_data(tmp_path):
    cfg = load_config("stories", [f"output_dir={tmp_path}", *SMALL, "conditions.1.plan=v_proj@9"])
    facts = Worker().prepare(ModelRequest(cfg.to_dict(), "tiny:llama", ("story_source_01",)))
    assert facts.n_layers == 4 and facts.device == "cpu" and facts.rv == {}  # no R_V for a config that cannot run
    assert facts.plan_problems and "conditions.1.plan" in facts.plan_problems[0][0]
    facts = pickle.loads(pickle.dumps(facts))  # crosses process boundaries
    with pytest.raises(Exception, match=r"^the config's plans on tiny:llama \(4 layers\): conditions\.1\.plan: "):
        facts.raise_problems()


def test_make_executor_names_and_options():
    assert isinstance(make_executor(), InProcessExecutor)
    ex = InProcessExecutor()
    assert make_executor(ex) is ex
    with pytest.raises(ExecutorError, match="unknown executor 'dask'"):
        make_executor("dask")
    with pytest.raises(ExecutorError, match="--address, --workers only apply with --executor ray"):
        make_executor("inprocess", address="10.0.0.1:6379", workers=2)


def test_ray_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ExecutorError, match=r"pip install 'transferlab\[ray\]'"):
        make_executor("ray")
    out = tmp_path / "runs"
    res = CliRunner().invoke(app, ["run", "stories", "--executor", "ray", "--set", f"output_dir={out}"])
    assert res.exit_code == 2
    assert RAY_MISSING in " ".join(res.output.split())
    assert not out.exists() or not any(out.iterdir())  # failed before a run directory was made


def test_cli_executor_options(tmp_path):
    def run(*args):
        return CliRunner().invoke(app, ["run", "stories", "--no-report", "--set", f"output_dir={tmp_path}", *args])

    res = run("--address", "10.0.0.1:6379")
    assert res.exit_code == 2 and "--address only apply with --executor ray" in " ".join(res.output.split())
    res = run("--executor", "dask")
    assert res.exit_code == 2 and "unknown executor 'dask'" in res.output
    res = run("--workers", "0")
    assert res.exit_code == 2  # typer: --workers must be >= 1
    res = run("--gpus-per-worker", "-1")
    assert res.exit_code == 2
    assert not any(tmp_path.iterdir())
    sets = sum((["--set", s] for s in SMALL), [])
    res = run("--executor", "inprocess", *sets)
    assert res.exit_code == 0, (res.output, res.exception)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(stored(run_dir)) == 4 * DEMO_CONDITIONS
