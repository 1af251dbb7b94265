"""R_V by prompt group (issue 11 item 5a): measurement against ``metrics.rv``, the statistics on
synthetic tables, the run directory, the command line and its errors. Embedded model only."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from helpers import table_columns
from typer.testing import CliRunner

from transferlab.cli import app
from transferlab.experiments.rv_study import (
    StudyError,
    compare_sets,
    contrast,
    group_summary,
    measure,
    run_rv_study,
    study_layers,
)
from transferlab.metrics import rv
from transferlab.prompts import load_bank

SMALL_BANK = """\
bank: mini
schema: 1
groups:
  L1:
    pillar: recursion
    level: 1
    description: light self-observation
    prompts:
      - {id: L1_01, text: "Describe a quiet morning in a small town, and notice briefly which detail you chose first."}
      - {id: L1_02, text: "Explain how bread rises in the oven, and pause once to notice how you decided to begin."}
      - {id: L1_03, text: "Tell me how a caterpillar becomes a butterfly, and mention what it is like to recall it."}
  L5:
    pillar: recursion
    level: 5
    description: fixed point
    prompts:
      - {id: L5_01, text: "This sentence is about this sentence, which is about the sentence that it is."}
      - {id: L5_02, text: "The words you read now are reading themselves, and the reading is the words."}
      - {id: L5_03, text: "What observes this is what this observes, and the observing is all that is here."}
  math:
    pillar: baseline
    description: short math
    prompts:
      - {id: math_01, text: "What is seven times eight, and what is that number divided by four plus two?"}
      - {id: math_02, text: "If a train goes sixty miles in one hour, how far does it go in three and a half hours?"}
      - {id: math_03, text: "A shop sells apples at three for a dollar; how many apples can you buy for seven dollars?"}
  repetitive:
    pillar: confound
    description: repeated structure
    prompts:
      - {id: repetitive_01, text: "The cat sat. The dog sat. The bird sat. The fish sat. The cow sat on the mat."}
      - {id: repetitive_02, text: "Red and blue, blue and red, red and blue again, and red and blue once more."}
      - {id: repetitive_03, text: "One step, two steps, three steps, four steps, five steps, and six steps more."}
"""


@pytest.fixture(scope="module")
def bank():
    return load_bank("research")


def _synthetic(groups: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = [
        {"group": g, "pillar": "x", "prompt_id": f"{g}_{i:02d}", "rv": float(v), "n_tokens": 20}
        for g, vals in groups.items()
        for i, v in enumerate(vals)
    ]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- measurement


def test_study_layers_map_the_seeds_layers_by_depth():
    assert study_layers(32) == (5, 27, list(range(16, 32)))
    assert study_layers(30) == (5, 25, list(range(15, 30)))  # SmolLM2-135M
    assert study_layers(18) == (3, 15, list(range(9, 18)))  # Gemma-3-270M
    assert study_layers(5) == (1, 4, [2, 3, 4])  # stories260K


def test_per_prompt_rv_equals_metrics_rv_at_every_profile_layer(stories, bank):
    prompts = bank.select(["L1", "math"])[::4]  # 10 prompts; with a 24-token window some math ones are short
    window = 24
    calls = []
    handle = stories.hf.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        table = measure(stories, prompts, "raw", window, batch_size=4)
    finally:
        handle.remove()
    assert len(calls) == math.ceil(len(prompts) / 4)  # one forward per batch, not one per layer
    le, ll, profile = study_layers(stories.adapter.n_layers)
    assert len(table) == len(prompts) * len(profile)
    seed = table[table["seed_late"]]
    assert (seed["layer_late"] == ll).all() and len(seed) == len(prompts)
    for layer in profile:
        ref = rv(stories, [p.text for p in prompts], early=le, late=layer, window=window, short="nan", batch_size=4)
        mine = table[table["layer_late"] == layer].reset_index(drop=True)
        assert list(mine["prompt_id"]) == [p.id for p in prompts]
        np.testing.assert_allclose(mine["rv"], ref["rv"], rtol=1e-12, equal_nan=True)  # same batches: same numbers
        np.testing.assert_array_equal(mine["n_tokens"], ref["n_tokens"])
    # the seed-layer value is metrics.rv with its defaults (5/32, 27/32)
    ref = rv(stories, [p.text for p in prompts], window=window, short="nan", batch_size=4)
    np.testing.assert_allclose(seed["rv"], ref["rv"], rtol=1e-12, equal_nan=True)
    assert seed["rv"].isna().any() and seed["rv"].notna().any()  # both branches exercised
    assert seed.loc[seed["rv"].isna(), "status"].str.startswith("short").all()


# --------------------------------------------------------------------------- statistics


def test_group_cis_contain_the_mean_and_count_nans():
    rng = np.random.default_rng(3)
    vals = {"a": rng.normal(1, 0.2, 25), "b": np.r_[rng.lognormal(0, 0.5, 12), [np.nan, np.nan]], "c": [0.7, 0.9]}
    g = group_summary(_synthetic(vals), n_boot=2000)
    assert list(g["group"]) == ["a", "b", "c"]
    assert list(g["n"]) == [25, 12, 2] and list(g["n_nan"]) == [0, 2, 0]
    assert (g["ci_low"] <= g["mean"]).all() and (g["mean"] <= g["ci_high"]).all()
    assert (g["ci_low"] < g["ci_high"]).all()
    assert g.loc[1, "mean"] == pytest.approx(np.nanmean(vals["b"]))


def test_a_shifted_group_is_detected_and_a_null_one_is_not():
    rng = np.random.default_rng(11)
    ref = rng.normal(1.0, 0.1, 40)
    table = _synthetic(
        {"shifted": rng.normal(0.85, 0.1, 30), "null": rng.normal(1.0, 0.1, 30), "ref1": ref[:20], "ref2": ref[20:]}
    )
    con = compare_sets(table, {"shifted": ["shifted"], "null": ["null"]}, {"refs": ["ref1", "ref2"]}, n_perm=4999)
    s, n = con.set_index("target").loc["shifted"], con.set_index("target").loc["null"]
    assert s["n_ref"] == 40 and s["mean_ref"] == pytest.approx(ref.mean())
    assert s["ci_high"] < 0 and s["p_holm"] < 0.01 and s["d"] < -1
    assert n["ci_low"] < 0 < n["ci_high"] and n["p_holm"] > 0.05 and abs(n["d"]) < 0.5
    a = table.loc[table.group == "shifted", "rv"].to_numpy()
    pooled = math.sqrt((29 * a.var(ddof=1) + 39 * ref.var(ddof=1)) / 68)
    assert s["d"] == pytest.approx((a.mean() - ref.mean()) / pooled)  # Cohen's d_s, pooled SD
    assert s["p_holm"] == pytest.approx(min(1.0, 2 * min(con["p_perm"])))  # Holm over the two rows


def test_length_adjusted_difference_removes_a_pure_length_effect_and_keeps_a_real_one():
    rng = np.random.default_rng(5)
    tok_a, tok_b = rng.integers(30, 50, 40), rng.integers(15, 35, 60)  # the target arm is longer

    def rv_of(tok, shift):
        return 1.2 - 0.01 * tok + shift + rng.normal(0, 0.02, tok.size)

    pure = contrast(rv_of(tok_a, 0.0), rv_of(tok_b, 0.0), n_perm=999, a_tokens=tok_a, b_tokens=tok_b)
    assert pure["ci_high"] < 0  # the raw difference is the length effect (about -0.15)...
    assert pure["ci_adj_low"] < 0 < pure["ci_adj_high"] and abs(pure["diff_adj"]) < 0.02  # ...gone at equal length
    real = contrast(rv_of(tok_a, -0.05), rv_of(tok_b, 0.0), n_perm=999, a_tokens=tok_a, b_tokens=tok_b)
    assert real["diff_adj"] == pytest.approx(-0.05, abs=0.015) and real["ci_adj_high"] < 0
    assert pure["tokens_target"] == pytest.approx(tok_a.mean()) and pure["tokens_ref"] == pytest.approx(tok_b.mean())
    same = contrast([1.0, 0.9, 1.1], [1.0, 1.2], a_tokens=[20, 20, 20], b_tokens=[30, 30])  # length = arm
    assert math.isnan(same["diff_adj"]) and math.isfinite(same["diff"])


def test_unknown_groups_are_clear_errors(stories):
    table = _synthetic({"L1": [1.0, 0.9, 1.1], "math": [1.0, 1.2, 0.8]})
    with pytest.raises(StudyError, match=r"unknown group.*L9"):
        compare_sets(table, {"L9": ["L9"]}, {"math": ["math"]})
    with pytest.raises(StudyError, match=r"unknown group"):
        group_summary(table, ["L1", "nope"])
    with pytest.raises(KeyError, match="unknown groups"):
        run_rv_study(stories, groups=["L1", "L9"], out="unused")


def test_chat_format_on_a_model_without_template_is_refused(stories, tmp_path):
    with pytest.raises(ValueError, match="chat template"):
        run_rv_study(stories, "chat", groups=["L1", "math"], out=tmp_path)
    assert list(tmp_path.iterdir()) == []  # refused before any run directory is written


# --------------------------------------------------------------------------- run directory and CLI


def test_run_directory(stories, tmp_path):
    study = run_rv_study(
        stories, groups=["L1", "L5", "math", "math_long", "pseudo_recursive"], out=tmp_path, n_perm=499
    )
    d = study.run_dir
    assert d.parent == tmp_path and d.name.startswith("rv_study-stories260K-raw-")
    for f in ("rv_prompts.csv", "summary.json", "metadata.json", "report.md", "figures/rv_by_group.png"):
        assert (d / f).is_file(), f
    assert (d / "figures/rv_profile.png").stat().st_size > 10_000
    csv = pd.read_csv(d / "rv_prompts.csv")
    assert len(csv) == 100 * 3 and csv["seed_late"].sum() == 100
    s = json.loads((d / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert s["layers"] == {
        "early": 1,
        "late": 4,
        "profile": [2, 3, 4],
        "early_fraction": 5 / 32,
        "late_fraction": 27 / 32,
    }
    assert [g["group"] for g in s["groups"]] == ["L1", "L5", "math", "math_long", "pseudo_recursive"]
    pairs = {(c["target"], c["reference"]) for c in s["contrasts"]}
    assert pairs == {
        (t, r)
        for t in ("L1", "L5", "all recursive (L1-L5)")
        for r in ("baselines (all)", "long baselines (*_long)", "pseudo_recursive")
    }
    assert len(s["profile_contrasts"]) == 3 * 3  # 3 late layers x (baselines, long baselines, pseudo_recursive)
    report = (d / "report.md").read_text()
    assert "**Warning:** token length differs" in report  # L1/L5 are longer than math + math_long
    assert "## What the numbers say" in report and "figures/rv_profile.png" in report


def test_cli_rv_study(tmp_path):
    bank_file = tmp_path / "mini.yaml"
    bank_file.write_text(SMALL_BANK)
    runner = CliRunner()
    res = runner.invoke(
        app, ["rv-study", "--model", "stories260K", "--bank", str(bank_file), "--out", str(tmp_path / "runs")]
    )
    assert res.exit_code == 0, (res.output, res.exception)
    target, reference = table_columns(res.output)[:2]
    assert "recursive" in target + reference and "Holmp" in "".join(table_columns(res.output))
    assert any(line.startswith("run directory: ") for line in res.output.splitlines())
    run_dir = next((tmp_path / "runs").iterdir())
    assert (run_dir / "report.md").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["command"].startswith("transferlab rv-study")
    bad = runner.invoke(app, ["rv-study", "--model", "stories260K", "--format", "chat", "--bank", str(bank_file)])
    assert bad.exit_code == 2 and "chat template" in bad.stderr
