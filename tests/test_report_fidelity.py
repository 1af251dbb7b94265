"""The report's target-fidelity section and figure: the source's behavior beside the target's task."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_report import FAST, synthetic_results

from transferlab.report import build_summary, write_report

KEPT = {"baseline": 0.5, "transfer": 0.05, "kv_only": 0.06, "patch_only": 0.45, "source_direct": 0.01}
CONDS = tuple(KEPT)


@pytest.fixture(scope="module")
def table():
    df = synthetic_results(conditions=CONDS)
    rng = np.random.default_rng(1)
    keep = df.condition.map(KEPT)
    df["target_overlap"] = np.clip(keep + rng.normal(0, 0.05, len(df)), 0, 1)
    answered = rng.random(len(df)) < keep
    df["answer"] = np.where(df.target_group.isin(["math", "factual"]), answered.astype(float), np.nan)
    df["target_answer_logprob"] = np.log(keep) + rng.normal(0, 0.3, len(df))
    return df


SCORES = ["target_overlap", "seed_v1", "answer", "target_answer_logprob"]  # a fidelity score listed first


@pytest.fixture(scope="module")
def summary(table):
    return build_summary(table, SCORES, **FAST)


def test_fidelity_scores_are_never_the_primary_score(summary):
    assert summary["primary_score"] == "seed_v1"
    assert summary["fidelity_scores"] == ["target_overlap", "answer", "target_answer_logprob"]
    assert summary["behavior_scores"] == ["seed_v1"]
    json.dumps(summary, allow_nan=False)


def test_fidelity_rows_match_pandas(table, summary):
    rows = {r["condition"]: r for r in summary["fidelity"]}
    assert list(rows) == summary["conditions"]
    means = table.groupby("condition")[["seed_v1", *summary["fidelity_scores"]]].mean()
    counts = table.groupby("condition")["answer"].count()
    for c, r in rows.items():
        assert r["primary_score"] == "seed_v1"
        assert r["primary_mean"] == pytest.approx(means.loc[c, "seed_v1"])
        for f in summary["fidelity_scores"]:
            assert r[f"{f}_mean"] == pytest.approx(means.loc[c, f]), (c, f)
            assert r[f"{f}_ci_low"] < r[f"{f}_mean"] < r[f"{f}_ci_high"]
            assert r[f"{f}_vs_reference"] == pytest.approx(means.loc[c, f] - means.loc["baseline", f])
        assert r["answer_n"] == counts[c]  # targets without a known answer are not counted
    assert rows["baseline"]["target_overlap_vs_reference"] == 0.0


def test_report_shows_both_axes(tmp_path, table, summary):
    text = write_report(tmp_path, table, summary, config={"name": "fidelity"}).read_text()
    section = text.split("## Target fidelity", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| transfer ")]
    assert len(lines) == 1
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    r = {x["condition"]: x for x in summary["fidelity"]}["transfer"]
    assert cells[1].startswith(f"{r['primary_mean']:.3f} [")
    assert cells[2].startswith(f"{r['target_overlap_mean']:.3f} [")
    assert cells[3] == f"{r['target_overlap_vs_reference']:.3f}"
    png = (tmp_path / "figures" / "fidelity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "figures/fidelity.png" in text
    head = text.split("## Conditions", 1)[1].split("\n## ", 1)[0]  # the condition table carries both axes
    assert "seed_v1" in head and "target_overlap" in head and "target_answer_logprob" in head


def test_no_fidelity_scores_no_section(tmp_path, table):
    s = build_summary(table, ["seed_v1"], **FAST)
    assert s["fidelity"] == [] and s["fidelity_scores"] == []
    text = write_report(tmp_path, table, s).read_text()
    assert "## Target fidelity" not in text and not (tmp_path / "figures" / "fidelity.png").exists()


def test_the_command_lines_headline_shows_the_fidelity_scores(tmp_path, summary):
    from rich.console import Console

    from transferlab import cli

    (tmp_path / "summary.json").write_text(json.dumps(summary))
    out = Console(width=400, record=True, color_system=None)
    cli._print_headline(tmp_path, console=out)  # the console is a parameter (its default is bound at definition)
    lines = [" ".join(ln.replace("│", " ").replace("┃", " ").split()) for ln in out.export_text().splitlines()]
    assert "condition seed_v1 95% CI source_overlap" in lines  # the headline table as before
    assert "condition target_overlap answer target_answer_logprob" in lines
    r = {x["condition"]: x for x in summary["fidelity"]}["transfer"]
    want = [f"{r[f'{f}_mean']:.3f}" for f in ("target_overlap", "answer", "target_answer_logprob")]
    assert " ".join(["transfer", *want]) in lines
