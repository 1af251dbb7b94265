"""``transferlab bench``: the W300 benchmark from the command line (here on a tiny random model, CPU)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from transferlab.cli import app


def test_bench_writes_its_json(tmp_path, monkeypatch):
    monkeypatch.delenv("TRANSFERLAB_DECODE", raising=False)  # the default decode loop on CPU
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "--shape",
            "tiny-mistral",
            "--pairs",
            "4",
            "--max-new-tokens",
            "3",
            "--skip",
            "seed,hf",
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, (res.output, res.exception)
    (path,) = tmp_path.glob("w4_tiny-mistral_cpu_*.json")
    data = json.loads(path.read_text())
    for part in ("engine", "engine_unpatched"):
        assert data[part]["generations"] == 16 and data[part]["tokens"] == 16 * 3
    assert data["engine"]["never_fired"] == 0  # every intervention of the 3 patched conditions acted
    assert data["decode"] == "eager" and data["device"] == "cpu"
    assert "seed_loop" not in data and "hf_generate" not in data


def test_bench_refuses_an_unknown_part(tmp_path):
    res = CliRunner().invoke(app, ["bench", "--skip", "engine,warp", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "unknown part(s) warp" in res.output


def test_bench_refuses_an_unknown_path(tmp_path):
    res = CliRunner().invoke(app, ["bench", "--path", "notebook", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "--path must be engine or run" in res.output


def test_run_writes_its_stage_timings(tmp_path):
    """``transferlab run --timings FILE``: where the wall time went, each stage once at least, adding up."""
    from transferlab.experiments.w300 import write_w300_bank, write_w300_config

    bank = write_w300_bank(tmp_path / "bank", n_pairs=4)
    cfg = write_w300_config(
        tmp_path / "w.toml",
        bank,
        model="random:tiny-mistral",
        seeds=(0,),
        n_pairs=4,
        output_dir=str(tmp_path / "runs"),
        generation={"max_new_tokens": 3},
    )
    out = tmp_path / "t.json"
    res = CliRunner().invoke(app, ["run", str(cfg), "--timings", str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    t = json.loads(out.read_text())
    assert t["command"] == "transferlab run" and t["run_dir"] and (tmp_path / "runs").is_dir()
    for name in ("config", "model_load", "source_capture", "decode", "scoring", "store", "statistics", "figures"):
        assert t["stages"][name]["entries"] >= 1, name
    assert sum(s["s"] for s in t["stages"].values()) + t["other_s"] == pytest.approx(t["wall_s"], abs=1e-6)
    assert t["inclusive"]["batches"]["s"] >= t["stages"]["decode"]["s"]
