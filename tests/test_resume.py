"""A killed run resumes with nothing lost and nothing computed twice.

The reference is one uninterrupted run (batch size 64). Against it: a real
``transferlab run`` subprocess killed with SIGKILL after a few batches of 8 and
resumed; a deliberately partial in-process run (``max_batches``) resumed from
the CLI. Each finished table must equal the reference unit by unit (texts,
token counts, scores, audit), and the resumed part must compute only the units
the store lacked.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import DEMO_CONDITIONS, AppendSpy
from helpers import stored_results as results
from typer.testing import CliRunner

from transferlab.cli import app
from transferlab.experiments import load_config, run_experiment
from transferlab.experiments.metadata import ledger

N_PAIRS, N_CONDITIONS, N_SEEDS = 24, DEMO_CONDITIONS, 1
TOTAL = N_PAIRS * N_CONDITIONS * N_SEEDS


def overrides(output_dir: Path, batch_size: int) -> list[str]:
    return [
        "model=stories260K",
        f"prompts.n={N_PAIRS}",
        "generation.max_new_tokens=12",
        f"batch_size={batch_size}",
        f"output_dir={output_dir}",
        "rv.window=8",
    ]


# small vocabularies have no token for most marker words (see marker_token_ids)
pytestmark = pytest.mark.filterwarnings("ignore:no vocabulary token spells:UserWarning")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    """The uninterrupted run's table."""
    out = tmp_path_factory.mktemp("reference")
    run_dir = run_experiment(load_config("stories", overrides(out, 64)), progress=False, report=False)
    return results(run_dir)


def _audit(text: str) -> list[dict]:
    return json.loads(text or "[]")


def assert_same_table(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Same units, texts, tokens, scores; audit equal up to float32 noise in change_norm."""
    assert got["unit"].is_unique, "a unit was stored twice"
    assert len(got) == len(want) == TOTAL
    got = got.sort_values("unit").reset_index(drop=True)
    want = want.sort_values("unit").reset_index(drop=True)
    assert list(got.columns) == list(want.columns)
    assert got["unit"].tolist() == want["unit"].tolist()
    for col in ("text", "n_prompt_tokens", "n_new_tokens", "finish_reason", "plan", "source_id", "target_id"):
        assert got[col].tolist() == want[col].tolist(), f"column {col} differs"
    numeric = [c for c in got.columns if c not in ("audit",) and pd.api.types.is_numeric_dtype(want[c])]
    pd.testing.assert_frame_equal(got[numeric], want[numeric], check_exact=False, rtol=1e-6)
    for a, b in zip(got["audit"], want["audit"]):
        a, b = _audit(a), _audit(b)
        assert [{k: v for k, v in r.items() if k != "change_norm"} for r in a] == [
            {k: v for k, v in r.items() if k != "change_norm"} for r in b
        ]
        assert np.allclose(
            [r["change_norm"] for r in a], [r["change_norm"] for r in b], rtol=1e-5, atol=1e-3
        )  # float noise around 0 (self splices)


def _count_rows(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # not created yet
        return 0


def test_kill_and_resume_subprocess(tmp_path, reference, monkeypatch):
    out = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "transferlab.cli", "run", "stories", "--no-report"]
    for item in overrides(out, 8):
        cmd += ["--set", item]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    rows, db, deadline = 0, None, time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            found = list(out.glob("*/store.sqlite"))
            if found:
                db = found[0]
                rows = _count_rows(db)
                if rows >= 16:  # at least two batches of 8 stored
                    break
            time.sleep(0.02)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0].decode(errors="replace")
    assert not finished, f"the run ended before it could be killed (rc {proc.returncode}):\n{output}"
    assert proc.returncode == -signal.SIGKILL
    assert db is not None
    run_dir = db.parent
    before = results(run_dir)
    assert 16 <= len(before) < TOTAL, f"{len(before)} rows after the kill"
    assert before["unit"].is_unique
    assert not (run_dir / "results.csv").exists()
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert "finished" not in meta
    assert [e["status"] for e in ledger(out)] == ["running"]  # SIGKILL leaves no chance to write more

    spy = AppendSpy(monkeypatch)
    assert run_experiment(resume=run_dir, progress=False, report=False) == run_dir
    assert set(spy.units).isdisjoint(before["unit"]), "a stored unit was computed again"
    assert len(spy.units) == len(set(spy.units)) == TOTAL - len(before)
    after = results(run_dir)
    assert_same_table(after, reference)
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["finished"] and len(meta["resumed_at"]) == 1
    assert [e["status"] for e in ledger(out)] == ["complete"]
    assert (run_dir / "results.csv").exists() and (run_dir / "results.jsonl").exists()
    assert len(pd.read_csv(run_dir / "results.csv")) == TOTAL


def test_max_batches_then_cli_resume(tmp_path, reference, monkeypatch):
    out = tmp_path / "runs"
    spy = AppendSpy(monkeypatch)
    run_dir = run_experiment(load_config("stories", overrides(out, 8)), progress=False, report=False, max_batches=3)
    before = results(run_dir)
    assert len(before) == len(spy.units) == 24  # exactly three batches of 8, each stored once
    assert sorted(spy.units) == sorted(before["unit"])
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert "finished" not in meta and meta["bank"]["version"]
    assert not (run_dir / "results.csv").exists()

    spy.units.clear()
    res = CliRunner().invoke(app, ["run", "--resume", str(run_dir), "--no-report"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "run directory" in res.output
    assert set(spy.units).isdisjoint(before["unit"])
    assert len(spy.units) == len(set(spy.units)) == TOTAL - 24
    assert_same_table(results(run_dir), reference)

    # resuming a finished run computes nothing and keeps the table
    spy.units.clear()
    run_experiment(resume=run_dir, progress=False, report=False)
    assert spy.units == []
    assert_same_table(results(run_dir), reference)
    assert len(json.loads((run_dir / "metadata.json").read_text())["resumed_at"]) == 2


def test_resume_without_metadata(tmp_path, reference):
    """Killed between config.json and metadata.json: resume still works."""
    run_dir = run_experiment(
        load_config("stories", overrides(tmp_path, 64)), progress=False, report=False, max_batches=1
    )
    (run_dir / "metadata.json").unlink()
    run_experiment(resume=run_dir, progress=False, report=False)
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["finished"] and meta["torch"]
    assert_same_table(results(run_dir), reference)


def test_resume_not_a_run_dir(tmp_path):
    from transferlab.experiments.store import RunDirError

    with pytest.raises(RunDirError, match="not a run directory"):
        run_experiment(resume=tmp_path, progress=False, report=False)
    res = CliRunner().invoke(app, ["run", "--resume", str(tmp_path)])
    assert res.exit_code == 2
    assert "not a run directory" in " ".join(res.output.split())  # rich wraps long lines


def test_a_resume_under_other_engine_settings_says_so(tmp_path, monkeypatch):
    """A bf16 resume whose engine switches differ from the run's start (its rows may round otherwise) is told,
    naming each switch; the same settings say nothing, and so does a float32 run (its tokens cannot differ)."""
    monkeypatch.delenv("TRANSFERLAB_DECODE", raising=False)
    plain = run_experiment(
        load_config("stories", overrides(tmp_path / "f32", 32)), progress=False, report=False, max_batches=1
    )
    monkeypatch.setenv("TRANSFERLAB_DECODE", "eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # float32: nothing to say
        run_experiment(resume=plain, progress=False, report=False, max_batches=1)
    monkeypatch.delenv("TRANSFERLAB_DECODE")
    sets = [*overrides(tmp_path, 32), "model.dtype=bfloat16"]
    run_dir = run_experiment(load_config("stories", sets), progress=False, report=False, max_batches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # same settings: nothing to say
        run_experiment(resume=run_dir, progress=False, report=False, max_batches=1)
    monkeypatch.setenv("TRANSFERLAB_DECODE", "eager")
    with pytest.warns(RuntimeWarning, match=r"TRANSFERLAB_DECODE=eager now, default when the run started"):
        run_experiment(resume=run_dir, progress=False, report=False, max_batches=1)
    res = CliRunner().invoke(app, ["run", "--resume", str(run_dir), "--no-report"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "TRANSFERLAB_DECODE=eager now, default when the run started" in " ".join(res.output.split())
