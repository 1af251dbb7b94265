"""The ``info`` and ``rv`` commands, on the embedded model and a tiny one."""

from __future__ import annotations

import json
import math

import pytest
from conftest import PROMPT, STORY, STORY2
from helpers import flat
from typer.testing import CliRunner

from transferlab.cli import app
from transferlab.metrics import rv


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def _ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_info_embedded(runner):
    out = _ok(runner.invoke(app, ["info"]))
    assert "stories260K" in out
    assert "n_layers" in out and "│ 5 " in out
    assert "kv_width (k_proj/v_proj)" in out
    for site in ("q_proj", "k_proj", "v_proj", "attn_out", "resid_pre", "resid_post", "mlp_out", "kv"):
        assert site in out
    assert "LlamaDecoderLayer (input)" in out and "4 heads x 8" in out


def test_info_tiny_mistral(runner):
    out = _ok(runner.invoke(app, ["info", "--model", "tiny:mistral"]))
    assert "tiny:mistral" in out and "MistralDecoderLayer (output)" in out


def test_info_tiny_phi3_shows_fused_slices(runner):
    out = _ok(runner.invoke(app, ["info", "-m", "tiny:phi3"]))
    assert "Linear[96:128] (output)" in out  # v_proj = slice of qkv_proj


def test_rv_embedded_json_matches_library(runner, stories):
    out = _ok(runner.invoke(app, ["rv", "--json", STORY, STORY2]))
    rows = json.loads(out)
    expected = rv(stories, [STORY, STORY2])
    assert [r["prompt"] for r in rows] == [STORY, STORY2]
    for r, e in zip(rows, expected.itertuples()):
        assert (r["layer_early"], r["layer_late"]) == (1, 4)
        assert r["rv"] == pytest.approx(e.rv, rel=1e-6) and r["status"] == "ok"


def test_rv_json_is_strict_json_with_null_for_short_prompts(runner):
    out = _ok(runner.invoke(app, ["rv", "--json", PROMPT]))

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    rows = json.loads(out, parse_constant=refuse)
    assert rows[0]["rv"] is None and rows[0]["status"].startswith("short")


def test_rv_table_on_tiny_mistral(runner):
    out = _ok(runner.invoke(app, ["rv", "--model", "tiny:mistral", STORY, PROMPT]))
    assert "R_V on tiny:mistral (v_proj@3 / v_proj@1, window 16, raw format)" in flat(out)
    assert "ok" in out and "short" in out and "nan" in out


def test_rv_options(runner, stories):
    out = _ok(
        runner.invoke(
            app,
            [
                "rv",
                "--json",
                "--window",
                "4",
                "--early",
                "0",
                "--late",
                "-1",
                "--formula",
                "unsquared",
                "--short",
                "shrink",
                PROMPT,
            ],
        )
    )
    row = json.loads(out)[0]
    e = rv(stories, [PROMPT], window=4, early=0, late=-1, formula="unsquared", short="shrink")
    assert (row["layer_early"], row["layer_late"]) == (0, 4)
    assert row["rv"] == pytest.approx(e.rv[0], rel=1e-6) and not math.isnan(row["rv"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["rv", "--short", "error", PROMPT], "fewer than the R_V window of 16"),
        (["rv", "--window", "1", STORY], "R_V window must be at least 2 tokens"),
        (["rv", "--late", "9", STORY], "the model has 5 layers"),
        (["rv", "--early", "1.5", STORY], "fraction of depth"),
        (["info", "--model", "tiny:gpt2"], "unknown tiny model"),
        (["info", "--model", "missing/model.gguf"], "GGUF file not found"),
        (["rv", "--model", "tiny:llama:x", STORY], "seed"),
    ],
)
def test_bad_input_exits_nonzero_with_a_readable_message(runner, args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output
    assert message in " ".join(result.output.split())  # rich wraps long lines
    assert "Traceback" not in result.output


def test_unknown_hub_model_offline(runner, monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    result = runner.invoke(app, ["info", "--model", "nonexistent-org/nonexistent-model"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "could not load model 'nonexistent-org/nonexistent-model'" in text
    assert "local directory" in text


def test_no_arguments_shows_help(runner):
    result = runner.invoke(app, [])
    assert "info" in result.output and "rv" in result.output
