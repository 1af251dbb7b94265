"""``transferlab bench``: the W300 benchmark from the command line (here on a tiny random model, CPU)."""

from __future__ import annotations

import json

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
