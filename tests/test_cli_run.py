"""``transferlab run / report / runs / presets``: a complete run directory and the ledger.

One full run with the report (stories260K, the embedded model, so its sha256 is
recorded), one ``--no-report`` run whose report is made afterwards by
``transferlab report``; the ledger lists both.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import DEMO_CONDITIONS, flat, nows, table_columns
from typer.testing import CliRunner

import transferlab
from transferlab.cli import app
from transferlab.experiments import list_presets
from transferlab.experiments.exports import TEXT_COLUMNS
from transferlab.experiments.metadata import ledger
from transferlab.experiments.presets import preset_description
from transferlab.experiments.schema import BASE_COLUMNS, TAIL_COLUMNS
from transferlab.experiments.store import RunStore
from transferlab.models.embedded import embedded_path
from transferlab.models.loading import file_sha256
from transferlab.prompts import load_bank

N_PAIRS, N_CONDITIONS = 6, DEMO_CONDITIONS
HAS_REPORT = (Path(transferlab.__file__).parent / "report" / "__init__.py").exists()

# small vocabularies have no token for most marker words (see marker_token_ids)
pytestmark = pytest.mark.filterwarnings("ignore:no vocabulary token spells:UserWarning")


def invoke(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, (res.output, res.exception)
    return flat(res.output)


def sets(output_dir: Path, *extra: str) -> list[str]:
    out = []
    for item in (f"output_dir={output_dir}", f"prompts.n={N_PAIRS}", "generation.max_new_tokens=6", *extra):
        out += ["--set", item]
    return out


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """``transferlab run stories`` on stories260K with the report."""
    out_dir = tmp_path_factory.mktemp("runs")
    args = ["run", "stories", *sets(out_dir, "model=stories260K")]
    if not HAS_REPORT:
        args.append("--no-report")
    output = invoke(*args)
    (run_dir,) = [p for p in out_dir.iterdir() if p.is_dir()]
    return out_dir, run_dir, output


def test_run_directory_is_complete(full_run):
    out_dir, run_dir, output = full_run
    assert nows(f"run directory: {run_dir}") in nows(output)
    assert f"stories: {N_CONDITIONS} conditions x 6 pairs x 1 seed(s) on stories260K" in output
    for name in ("config.json", "metadata.json", "store.sqlite", "results.csv", "results.jsonl"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["prompts"]["n"] == N_PAIRS and config["output_dir"] == str(out_dir)
    csv = pd.read_csv(run_dir / "results.csv")
    jsonl = pd.read_json(run_dir / "results.jsonl", lines=True)
    assert len(csv) == len(jsonl) == N_PAIRS * N_CONDITIONS
    assert list(csv.columns) == list(jsonl.columns)
    stored = [c for c in csv.columns if c not in TEXT_COLUMNS]  # the exports join the prompts' texts in
    assert stored[: len(BASE_COLUMNS)] == BASE_COLUMNS and stored[-len(TAIL_COLUMNS) :] == TAIL_COLUMNS
    bank = load_bank("stories")
    assert (csv["source_text"] == csv["source_id"].map(lambda i: bank.get(i).text)).all()
    assert (csv["target_text"] == csv["target_id"].map(lambda i: bank.get(i).text)).all()
    assert len(pd.read_parquet(run_dir / "results.parquet")) == len(csv)
    store = RunStore(run_dir / "store.sqlite")
    assert sorted(store.results()["unit"]) == sorted(csv["unit"])
    store.close()


@pytest.mark.skipif(not HAS_REPORT, reason="the report package has not landed")
def test_run_writes_the_report(full_run):
    _, run_dir, output = full_run
    assert nows(f"report: {run_dir / 'report.md'}") in nows(output)
    summary = json.loads((run_dir / "summary.json").read_text())
    # the demo preset scores without logits (no marker tokens in the 512-token vocabulary)
    from transferlab.experiments import load_config

    assert summary["scores"] == load_config("stories").scoring.scorers
    assert "logit_markers" not in summary["scores"] and "seed_v1_markers" in summary["scores"]
    report = (run_dir / "report.md").read_text()
    assert "transfer" in report and "baseline" in report
    assert nows(f"browse: {run_dir / 'report.html'}") in nows(output)
    assert (run_dir / "report.html").stat().st_size > 10_000
    figures = list((run_dir / "figures").glob("*.png"))
    assert figures and all(f.stat().st_size > 1000 for f in figures)


def test_metadata(full_run):
    _, run_dir, _ = full_run
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["transferlab"] == transferlab.__version__
    assert meta["torch"] == torch.__version__
    import transformers

    assert meta["transformers"] == transformers.__version__
    assert meta["device"] and meta["python"]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=Path(transferlab.__file__).parent, capture_output=True, text=True
    )
    if head.returncode == 0:
        assert meta["git_commit"].removesuffix("+dirty") == head.stdout.strip()
    assert meta["bank"] == {"name": "stories", "version": load_bank("stories").version}
    (model,) = meta["models"]
    assert model["spec"] == "stories260K" and model["sha256"] == file_sha256(embedded_path())
    assert meta["seeds"] == [0] and meta["name"] == "stories"
    assert isinstance(meta["command"], str) and meta["command"]  # the process command line, shell-quoted
    started, finished = dt.datetime.fromisoformat(meta["started"]), dt.datetime.fromisoformat(meta["finished"])
    assert started <= finished


def test_ledger_and_runs_command(full_run, tmp_path, monkeypatch):
    out_dir, run_dir, _ = full_run
    lines = [json.loads(x) for x in (out_dir / "index.jsonl").read_text().splitlines()]
    assert [e["status"] for e in lines] == ["running", "complete"]
    assert {e["run_dir"] for e in lines} == {str(run_dir)}
    assert lines[1]["rows"] == N_PAIRS * N_CONDITIONS
    (entry,) = ledger(out_dir)
    assert entry["status"] == "complete" and entry["models"] == ["stories260K"]
    # a second run, stopped by a plan only the loaded model can refute (a window longer than the
    # prompts, on a model whose shape is not readable before loading it: a hub id not in the cache),
    # is listed as failed
    import transferlab.experiments.checks as checks

    monkeypatch.setattr(checks, "model_shape", lambda spec, strict=False: None)
    res = CliRunner().invoke(
        app, ["run", "stories", "--no-report", *sets(out_dir, "model=tiny:llama", "conditions.1.plan=v_proj@1:w999")]
    )
    assert res.exit_code == 2
    res = CliRunner().invoke(app, ["runs", "--output-dir", str(out_dir)])
    names, _, status, _, rows = table_columns(res.output)  # folded at a narrow width, never cut
    assert run_dir.name in names and "complete" in status and "failed" in status and str(N_PAIRS * N_CONDITIONS) in rows
    assert "no runs recorded" in invoke("runs", "--output-dir", str(tmp_path))


def test_no_report_then_report_command(tmp_path):
    output = invoke("run", "stories", "--no-report", *sets(tmp_path, "model=tiny:llama", "prompts.n=4"))
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert (run_dir / "results.csv").is_file() and (run_dir / "results.jsonl").is_file()
    assert not (run_dir / "summary.json").exists() and not (run_dir / "report.md").exists()
    assert "report:" not in output
    if HAS_REPORT:
        out = invoke("report", str(run_dir))
        assert nows(f"report: {run_dir / 'report.md'}") in nows(out)
        assert (run_dir / "summary.json").is_file() and (run_dir / "report.md").is_file()
        assert list((run_dir / "figures").glob("*.png"))
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "not a run directory" in flat(res.output)


def test_presets_command():
    out = flat(invoke("presets"))
    for name in list_presets():
        assert f"{name} {flat(preset_description(name))}" in out  # the whole description, beside its name
    assert {
        "demo",
        "stories",
        "seed_n300",
        "corrected_n300",
        "layer_sweep",
        "minimal_layers",
        "seeds_x10",
        "cross_model",
    } <= set(list_presets())


def test_configs_symlink_points_at_the_presets():
    root = Path(transferlab.__file__).resolve().parents[2] / "configs"
    if not root.exists():
        pytest.skip("not a source checkout")
    assert sorted(p.name for p in root.glob("*.toml")) == sorted(f"{n}.toml" for n in list_presets())


def test_run_prints_its_headline(full_run):
    """The headline printed after a run is summary.json's: the primary score per condition, and its deltas."""
    _, run_dir, output = full_run
    summary = json.loads((run_dir / "summary.json").read_text())
    flat_out = nows(output)
    score = summary["primary_score"]
    assert nows(f"paired Δ {score} (Holm within the confirmatory family only)") in flat_out
    # the table's cells are headline_rows' (tests/test_report.py); wrapped cells depend on the width, the
    # family's sentence does not
    from transferlab.report.deltas_md import family_line

    assert nows(family_line(summary)) in flat_out  # stories declares no family: it says so


def test_metadata_records_the_engine_settings(monkeypatch):
    """The kernel choices that move bf16 rounding are part of a run's record, unset ones as 'default'."""
    from transferlab.experiments.metadata import ENGINE_SETTINGS, environment

    for name in ENGINE_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRANSFERLAB_DECODE_ATTENTION", "sdpa")
    settings = environment()["engine_settings"]
    assert settings["TRANSFERLAB_DECODE_ATTENTION"] == "sdpa"
    assert settings["TRANSFERLAB_KERNELS"] == "default" and set(settings) == set(ENGINE_SETTINGS)
