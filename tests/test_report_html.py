"""report.html's data (without a browser), the exports with the prompts' texts, and old run directories.

The page itself is opened in Chromium by tests/test_report_browser.py; here: what the page is given (every row,
the prompts as fed, the reading, the warnings), that the file needs nothing from outside, that no text from the
data can close its script, that results carry their texts (CSV, Parquet, ``tl.load_results``), and that a run
made before prompts and tokens were recorded still renders and says what it lacks.
"""

from __future__ import annotations

import json
import re
import sqlite3

import numpy as np
import pandas as pd
import pytest

import transferlab as tl
from transferlab.experiments import finalize, load_config, run_experiment
from transferlab.experiments.exports import PROMPTS_KEY, TOKENS_KEY, join_texts, load_results
from transferlab.experiments.store import RunStore
from transferlab.prompts import load_bank
from transferlab.report import build_summary, write_report
from transferlab.report.html import (
    HTML_FORMAT,
    _where,
    collect_warnings,
    family_rows,
    html_data,
    reading,
    render_html,
)

pytestmark = pytest.mark.filterwarnings("ignore:no vocabulary token spells:UserWarning")

FAST = {"n_boot": 200, "n_perm": 199}


def page_data(html: str) -> dict:
    """The JSON the page embeds, read back as its script reads it."""
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    assert m, "no embedded data"
    return json.loads(m.group(1))


def synthetic(n_pairs=8, conditions=("baseline", "transfer", "noise"), seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_pairs):
        for c in conditions:
            rows.append(
                {
                    "unit": f"m|0|{p}|{c}",
                    "model": "m",
                    "seed": 0,
                    "pair_id": p,
                    "condition": c,
                    "source_id": f"s{p % 3}",
                    "target_id": f"t{p}",
                    "source_group": "L5",
                    "target_group": "factual" if p % 2 else "creative",
                    "prompt_role": "target",
                    "plan": "(none)" if c == "baseline" else "kv:all",
                    "text": f"continuation {p} {c}",
                    "n_prompt_tokens": 10,
                    "n_new_tokens": 4,
                    "finish_reason": "length",
                    "score": float(rng.normal(1.0 if c == "transfer" else 0.0, 0.3)),
                    "audit": "[]",
                }
            )
    return pd.DataFrame(rows)


# -- the page: self-contained, escaped, every row ----------------------------------------------------------------


def test_the_page_needs_nothing_from_outside_and_holds_every_row(tmp_path):
    df = synthetic()
    s = build_summary(df, ["score"], **FAST)
    write_report(tmp_path, df, s)
    html = (tmp_path / "report.html").read_text()
    # no fetch of any kind: no external script, style, image or font; no URL with a scheme at all
    assert not re.search(r"<(script|link|img|iframe)[^>]*\s(src|href)=", html)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", html)
    assert "@import" not in html and "url(" not in html
    data = page_data(html)
    assert data["format"] == HTML_FORMAT
    cols = data["rows"]["cols"]
    got = pd.DataFrame([dict(zip(cols, r)) for r in data["rows"]["data"]])
    assert len(got) == len(df)
    merged = got.merge(df, on=["model", "seed", "pair_id", "condition"], suffixes=("", "_df"))
    assert len(merged) == len(df)
    assert np.allclose(merged["score"], merged["score_df"]) and (merged["text"] == merged["text_df"]).all()


def test_no_text_can_close_the_script(tmp_path):
    df = synthetic(n_pairs=3)
    evil = "</script><script>window.pwned=1</script><!-- \u2028 & <b>"
    df.loc[df.condition == "transfer", "text"] = evil
    s = build_summary(df, ["score"], **FAST)
    html = render_html(html_data(df, s))
    assert html.count("</script>") == 2  # the data's and the page script's own, nothing from a text
    assert "<b>" not in html.split('id="report-data">', 1)[1].split("</script>", 1)[0]
    data = page_data(html)
    at = data["rows"]["cols"].index("text")
    assert evil in {row[at] for row in data["rows"]["data"]}  # read back unchanged


def test_a_page_of_another_format_is_refused_by_the_script():
    # the script compares its own format with the data's (exercised in the browser test); here: the check exists
    from importlib import resources

    js = resources.files("transferlab.report").joinpath("assets", "report.js").read_text()
    assert f"var FORMAT = {HTML_FORMAT};" in js and "D.format !== FORMAT" in js


# -- the reading and the warnings ---------------------------------------------------------------------------------


def _row(condition, reference, mean, lo, hi, family="vs_reference", role="exploratory", verdict="", p_holm=None):
    return {
        "model": "m",
        "family": family,
        "condition": condition,
        "reference": reference,
        "score": "x",
        "mean_diff": mean,
        "ci_low": lo,
        "ci_high": hi,
        "p_boot": 0.01,
        "p_holm": p_holm,
        "role": role,
        "verdict": verdict,
        "n": 40,
    }


def _summary(*rows, claims=()):
    return {
        "primary": "transfer",
        "reference": "baseline",
        "primary_score": "x",
        "models": ["m"],
        "deltas": list(rows),
        "stats": {"family": {"claims": list(claims)}},
    }


def test_the_reading_says_only_what_the_rows_support():
    up = reading(
        _summary(
            _row("transfer", "baseline", 0.5, 0.2, 0.8),
            _row("transfer", "noise", 0.3, 0.1, 0.5, family="vs_control"),
            _row("transfer", "kv_only", 0.1, -0.1, 0.3, family="vs_control"),
        )
    )
    assert up[0].startswith("m: transfer raises x against baseline") and "exploratory: unadjusted p" in up[0]
    assert "above noise" in up[0] and "not above kv_only" in up[0]
    assert "raises" not in reading(_summary(_row("transfer", "baseline", 0.5, -0.1, 0.8)))[0]  # CI includes zero
    assert "lowers" in reading(_summary(_row("transfer", "baseline", -0.5, -0.8, -0.2)))[0]
    # a confirmatory claim reads its verdict (Holm within the family), not its 95% CI
    shown = _row("transfer", "baseline", 0.5, 0.2, 0.8, role="confirmatory", verdict="different", p_holm=0.01)
    assert "raises" in reading(_summary(shown))[0] and "confirmatory: Holm p 0.010" in reading(_summary(shown))[0]
    held = _row("transfer", "baseline", 0.5, 0.2, 0.8, role="confirmatory", verdict="not shown", p_holm=0.08)
    assert "raises" not in reading(_summary(held))[0]


def test_equivalence_claims_get_their_own_line_and_table_rows():
    eq = _row("transfer", "kv_only", 0.01, -0.1, 0.1, "vs_control", "equivalence", "equivalent", 0.004)
    s = _summary(
        _row("transfer", "baseline", 0.5, 0.2, 0.8),
        eq,
        claims=[{"contrast": "transfer - kv_only", "role": "equivalence", "margin": 0.5}],
    )
    lines = reading(s)
    assert lines[1] == "m: equivalence claims: transfer − kv_only equivalent within ±0.5 (TOST Holm p 0.004)."
    (row,) = family_rows(s)
    assert row["claim"] == "equivalence" and row["margin"] == 0.5 and row["verdict"] == "equivalent"


def test_target_erased_is_a_loud_warning_once():
    df = synthetic(n_pairs=4)
    df["target_kept"] = np.where(df.condition == "transfer", 0.2, 1.0)
    s = build_summary(df, ["score"], **FAST)
    warns = collect_warnings(df, s, None)
    erased = [w for w in warns if w["kind"] == "target_erased"]
    assert len(erased) == 1 and erased[0]["loud"] and "transfer" in erased[0]["message"]  # the summary's own
    assert warns[0]["kind"] == "target_erased"  # loud warnings first
    # a summary from before its survival section: the page computes the warning itself, once
    old = {k: v for k, v in s.items() if k != "survival"}
    old["warnings"] = [w for w in s["warnings"] if w["kind"] != "target_erased"]
    mine = [w for w in collect_warnings(df, old, None) if w["kind"] == "target_erased"]
    assert len(mine) == 1 and "transfer keeps 20%" in mine[0]["message"]
    df["target_kept"] = 0.9
    assert not [w for w in collect_warnings(df, old, None) if w["kind"] == "target_erased"]


def test_extra_score_columns_are_shown_when_present():
    df = synthetic(n_pairs=4)
    df["target_overlap"] = 0.5
    data = html_data(df, build_summary(df, ["score"], **FAST))
    assert data["scores"] == ["score", "target_overlap"]
    assert "target_overlap" in data["rows"]["cols"]


@pytest.mark.parametrize(
    "description, kind, flavour, want",
    [
        ("kv:all", "kv_splice", "corrected", {"align": "right", "prefix": True, "skip_first": True}),
        ("kv:all", "kv_splice", "seed", {"align": "right", "prefix": False}),
        ("kv:all:left:w4", "kv_splice", "corrected", {"align": "left", "prefix": True, "skip_first": True}),
        ("kv:all:prepend", "kv_splice", "corrected", {"align": "none"}),
        ("v_proj@3:w16:both", "patch", "corrected", {"align": "right"}),
        ("v_proj@3:f0.25", "patch", "corrected", {"align": "left", "skip_first": True}),
        ("v_proj@3:p2-5", "patch", "corrected", {"align": "range", "a": 2, "b": 5}),
    ],
)
def test_where_an_intervention_writes(description, kind, flavour, want):
    assert _where(description, kind, flavour) == want


# -- results with their texts: exports, Parquet, load_results; old runs ------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("html_run")
    cfg = load_config(
        "stories",
        [f"output_dir={out}", "model=tiny:llama", "prompts.n=3", "generation.max_new_tokens=4", "rv.enabled=false"],
    )
    return run_experiment(cfg, progress=False, report=True)


def test_results_carry_their_prompt_texts_everywhere(tiny_run):
    bank = load_bank("stories")
    csv = pd.read_csv(tiny_run / "results.csv")
    parquet = pd.read_parquet(tiny_run / "results.parquet")
    loaded = tl.load_results(tiny_run)
    for frame in (csv, parquet, loaded):
        assert (frame["source_text"] == frame["source_id"].map(lambda i: bank.get(i).text)).all()
        assert (frame["target_text"] == frame["target_id"].map(lambda i: bank.get(i).text)).all()
    key = ["unit"]
    a = parquet.sort_values(key).reset_index(drop=True)
    b = csv.sort_values(key).reset_index(drop=True)
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(
        a[["unit", "text", "source_text", "condition"]], b[["unit", "text", "source_text", "condition"]]
    )
    assert len(loaded) == len(csv) and loaded["unit"].is_unique


def test_load_results_reads_the_store_when_the_parquet_is_behind(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    short = pd.read_parquet(run / "results.parquet").iloc[:2]
    short.to_parquet(run / "results.parquet", index=False)
    assert len(load_results(run)) == len(pd.read_csv(run / "results.csv"))


def test_the_tokens_recorded_are_the_tokens_fed(tiny_run):
    """Each prompt's recorded token texts are as many as the prompt tokens each row says it was fed."""
    store = RunStore(tiny_run / "store.sqlite", create=False)
    try:
        tokens = store.get(f"{TOKENS_KEY}:tiny:llama")
        prompts = store.get(PROMPTS_KEY)
        results = store.results()
    finally:
        store.close()
    assert tokens and set(tokens) == set(prompts)
    for r in results.itertuples():
        fed = r.source_id if r.prompt_role == "source" else r.target_id
        assert len(tokens[fed]) == r.n_prompt_tokens, (r.unit, fed)
    data = page_data((tiny_run / "report.html").read_text())
    assert data["tokens"]["tiny:llama"] == tokens
    assert {p: v["text"] for p, v in data["prompts"].items()} == {p: v["text"] for p, v in prompts.items()}


def _make_old(run, bank_version=None):
    """``run`` as a run from before this change: no prompts or tokens recorded, no decode_path, no command."""
    db = sqlite3.connect(run / "store.sqlite")
    db.execute("DELETE FROM kv WHERE key = ? OR key LIKE ?", (PROMPTS_KEY, f"{TOKENS_KEY}:%"))
    if bank_version is not None:
        db.execute("UPDATE kv SET value = ? WHERE key = 'bank_version'", (json.dumps(bank_version),))
    rows = [(u, json.loads(r)) for u, r in db.execute("SELECT unit, row FROM results")]
    for u, r in rows:
        r.pop("decode_path", None)
        db.execute("UPDATE results SET row = ? WHERE unit = ?", (json.dumps(r), u))
    db.commit()
    db.close()
    meta = json.loads((run / "metadata.json").read_text())
    meta.pop("command", None)
    (run / "metadata.json").write_text(json.dumps(meta))


def test_an_old_run_renders_with_its_texts_from_an_unchanged_bank(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "old"
    shutil.copytree(tiny_run, run)
    _make_old(run)
    finalize(run)
    data = page_data((run / "report.html").read_text())
    assert data["tokens"] == {} and any("recorded no prompt tokens" in n for n in data["notes"])
    assert "decode_path" not in data["rows"]["cols"]
    assert all(p["text"] for p in data["prompts"].values())
    assert "source_text" in pd.read_csv(run / "results.csv").columns


def test_an_old_run_whose_bank_changed_renders_without_texts_and_says_why(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "old"
    shutil.copytree(tiny_run, run)
    _make_old(run, bank_version="0" * 64)
    finalize(run)
    data = page_data((run / "report.html").read_text())
    assert data["prompts"] == {}
    assert any("changed since the run" in n and "000000000000" in n for n in data["notes"])
    assert "source_text" not in pd.read_csv(run / "results.csv").columns


def test_join_texts_places_the_columns_after_the_groups():
    df = synthetic(n_pairs=2)
    out = join_texts(df, {"s0": {"text": "S0"}, "s1": {"text": "S1"}, "t0": {"text": "T0"}, "t1": {"text": "T1"}})
    cols = list(out.columns)
    assert cols[cols.index("target_group") + 1 : cols.index("target_group") + 3] == ["source_text", "target_text"]
    assert out.loc[out.pair_id == 1, "target_text"].eq("T1").all()
    assert join_texts(df, {}) is df
