"""The report: summary numbers against direct pandas/scipy computations, report.md, figures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from transferlab.report import ReportError, build_summary, md_table, write_report
from transferlab.stats import holm, order_ci, paired_compare

PLANS = {
    "baseline": "",
    "transfer": "kv:all + v_proj@27:w16:decode",
    "kv_only": "kv:all",
    "patch_only": "v_proj@27:w16",
    "wrong_layer": "kv:all + v_proj@5:w16:decode",
    "noise": "noise:v_proj@27:w16",
    "source_direct": "",
}
EFFECT = {
    "baseline": 0.0,
    "transfer": 2.0,
    "kv_only": 1.8,
    "patch_only": 0.2,
    "wrong_layer": 1.6,
    "noise": 0.1,
    "source_direct": 5.0,
}
SCORES = ["seed_v1", "strict", "source_overlap"]
# Few resamples keep the suite fast. Tables keep n > 50 pairs: below that, scipy's Wilcoxon with ties
# switches to a permutation method that takes seconds per call.
FAST = dict(n_boot=400, n_perm=999)


def _audit(cond, unit, rng, pair_id, plans):
    """Audit rows as the engine writes them; transfer's v_proj patch never fires (the seed's bug),
    patch_only's misses every ninth pair."""
    rows = []
    for k, item in enumerate(i.strip() for i in plans[cond].split("+") if i.strip()):
        hp, kind = (
            ("kv", "kv_splice")
            if item.startswith("kv")
            else (("v_proj@27", "noise") if item.startswith("noise") else (item.split(":")[0], "patch"))
        )
        never = (cond == "transfer" and kind == "patch") or (cond == "patch_only" and pair_id % 9 == 0)
        fp, fd = (0, 0) if never else (1, int(rng.integers(0, 150)))
        rows.append(
            dict(
                example=unit,
                intervention=k,
                kind=kind,
                description=item,
                hook_point=hp,
                phase="decode" if item.endswith("decode") else "both",
                fired_prompt=fp,
                fired_decode=fd,
                fired=fp + fd,
                positions=0 if never else 16 + fd,
                change_norm=0.0 if never else float(rng.gamma(2, 3)),
                never_fired=never,
            )
        )
    return rows


def synthetic_results(
    n_pairs=60, n_sources=12, conditions=tuple(PLANS), seeds=(0, 1), models=("stories260K",), seed=0, plans=None
):
    """A realistic results table: 60 pairs from 12 source prompts and 20 targets, a real transfer
    effect with a per-source random effect, count-valued seed_v1, one NaN strict score, NaN R_V for
    one source and for every 'short' target, and audit rows with one intervention that never fired."""
    plans = {**PLANS, **(plans or {})}
    rng = np.random.default_rng(seed)
    src_groups, tgt_groups, n_targets = ["L3", "L4", "L5"], ["math", "factual", "creative", "short"], 20
    src_eff = rng.normal(0, 1.0, n_sources)
    rv_src = {f"s{i:02d}": (np.nan if i == 3 else 0.55 + 0.1 * (i % 3) + rng.normal(0, 0.05)) for i in range(n_sources)}
    rv_tgt = {
        f"t{j:02d}": (np.nan if tgt_groups[j % 4] == "short" else 0.95 + rng.normal(0, 0.08)) for j in range(n_targets)
    }
    rows = []
    for model in models:
        for s in seeds:
            for p in range(n_pairs):
                si, tj = p % n_sources, (p * 7) % n_targets
                sid, tid = f"s{si:02d}", f"t{tj:02d}"
                for c in conditions:
                    unit = f"{model}|{s}|{p}|{c}"
                    lam = max(0.2, 0.8 + EFFECT[c] + (src_eff[si] if EFFECT[c] > 0 else 0) * 0.8)
                    strict = float(np.clip(0.1 + 0.05 * EFFECT[c] + rng.normal(0, 0.1), 0, 1))
                    if c == "noise" and p == 5 and s == seeds[0]:
                        strict = np.nan
                    audit = _audit(c, unit, rng, p, plans)
                    rows.append(
                        dict(
                            unit=unit,
                            model=model,
                            seed=s,
                            pair_id=p,
                            condition=c,
                            source_id=sid,
                            target_id=tid,
                            source_group=src_groups[si % 3],
                            target_group=tgt_groups[tj % 4],
                            prompt_role="source" if c == "source_direct" else "target",
                            plan=plans[c],
                            text="...",
                            n_prompt_tokens=20,
                            n_new_tokens=150,
                            finish_reason="length",
                            seed_v1=float(rng.poisson(lam)),
                            strict=strict,
                            source_overlap=float(np.clip(0.05 + 0.04 * EFFECT[c] + rng.normal(0, 0.04), 0, 1)),
                            rv_source=rv_src[sid],
                            rv_target=rv_tgt[tid],
                            n_interventions=len(audit),
                            n_never_fired=sum(a["never_fired"] for a in audit),
                            audit=json.dumps(audit),
                        )
                    )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def table():
    return synthetic_results()


@pytest.fixture(scope="module")
def summary(table):
    return build_summary(table, SCORES, **FAST)


@pytest.fixture(scope="module")
def report(tmp_path_factory, table, summary):
    run = tmp_path_factory.mktemp("run")
    path = write_report(run, table, summary, config={"name": "synthetic"})
    return run, path.read_text()


def _rows(summary, key, **match):
    return [r for r in summary[key] if all(r[k] == v for k, v in match.items())]


def test_condition_table_matches_pandas(table, summary):
    for (cond, score), r in {(r["condition"], r["score"]): r for r in summary["conditions_table"]}.items():
        v = table.loc[table.condition == cond, score]
        assert r["n"] == v.notna().sum() and r["n_nan"] == v.isna().sum()
        assert r["mean"] == pytest.approx(v.mean()) and r["sd"] == pytest.approx(v.std(ddof=1))
        assert r["ddof"] == 1 and r["ci_low"] < r["mean"] < r["ci_high"]
    assert _rows(summary, "conditions_table", condition="noise", score="strict")[0]["n_nan"] == 1
    warn = [w for w in summary["warnings"] if w["kind"] == "nan_score"]
    assert [(w["score"], w["by_condition"]) for w in warn] == [("strict", {"noise": 1})]
    assert summary["conditions"][0] == "baseline"


def test_paired_deltas_match_scipy(table, summary):
    wide = table.pivot_table(index=["pair_id", "seed"], columns="condition", values="seed_v1")
    d = wide["transfer"] - wide["baseline"]
    r = _rows(summary, "deltas", family="vs_reference", condition="transfer", score="seed_v1")[0]
    tt = sps.ttest_rel(wide["transfer"], wide["baseline"])
    assert r["n"] == 120 and r["n_clusters"] == 12 and r["reference"] == "baseline"
    assert r["mean_diff"] == pytest.approx(d.mean())
    assert r["d_z"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert r["p_t"] == pytest.approx(tt.pvalue)
    assert r["p_wilcoxon"] == pytest.approx(sps.wilcoxon(d).pvalue)
    direct = paired_compare(
        table,
        "transfer",
        "baseline",
        "seed_v1",
        pair_col=["pair_id", "seed"],
        cluster_col="source_id",
        target_col="target_id",
        group_col="pair_id",
        seed=0,
        **FAST,
    ).iloc[0]
    assert r["design"] == "two-way" and r["n_targets"] == 20 and r["n_pairs"] == 60
    for k in ("ci_low", "ci_high", "ci_iid_low", "ci_iid_high", "p_boot", "p_perm", "p_perm_cluster"):
        assert r[k] == pytest.approx(direct[k])
    # the NaN strict score is counted, not silently dropped
    r = _rows(summary, "deltas", family="vs_reference", condition="noise", score="strict")[0]
    assert (r["n"], r["n_nan"]) == (119, 1)


def test_controls_are_primary_minus_each_other_condition(table, summary):
    ctl = [r for r in summary["deltas"] if r["family"] == "vs_control"]
    assert summary["primary"] == "transfer"
    assert {r["reference"] for r in ctl} == {"kv_only", "patch_only", "wrong_layer", "noise", "source_direct"}
    r = _rows(summary, "deltas", family="vs_control", reference="wrong_layer", score="seed_v1")[0]
    wide = table.pivot_table(index=["pair_id", "seed"], columns="condition", values="seed_v1")
    assert r["condition"] == "transfer" and r["mean_diff"] == pytest.approx((wide.transfer - wide.wrong_layer).mean())


def test_without_a_family_every_row_is_exploratory_and_unadjusted(summary):
    rows = summary["deltas"]
    assert len(rows) == (6 + 5) * len(SCORES)
    assert {r["role"] for r in rows} == {"exploratory"} and all(r["p_holm"] is None for r in rows)
    assert summary["stats"]["family"] is None


ANALYSIS = {
    "primary": "seed_v1",
    "confirmatory": ["transfer - baseline", "transfer - noise", "kv_only - patch_only"],
    "equivalence": [{"contrast": "transfer - kv_only", "margin": 0.5}, {"contrast": "noise - baseline", "margin": 0.3}],
}


@pytest.fixture(scope="module")
def family_table(table):
    """The synthetic table with noise's seed_v1 equal to the baseline's in every unit (a difference of 0)."""
    t = table.copy()
    t.loc[t.condition == "noise", "seed_v1"] = t.loc[t.condition == "baseline", "seed_v1"].to_numpy()
    return t


@pytest.fixture(scope="module")
def family_summary(family_table):
    return build_summary(family_table, SCORES, analysis=ANALYSIS, n_boot=1999, n_perm=999)


def test_holm_runs_within_the_family_only(family_table, family_summary):
    table = family_table
    rows = family_summary["deltas"]
    fam = [r for r in rows if r["role"] != "exploratory"]
    assert len(fam) == 5 == family_summary["stats"]["family"]["size"]
    assert {(r["condition"], r["reference"], r["role"]) for r in fam} == {
        ("transfer", "baseline", "confirmatory"),
        ("transfer", "noise", "confirmatory"),
        ("kv_only", "patch_only", "confirmatory"),
        ("transfer", "kv_only", "equivalence"),
        ("noise", "baseline", "equivalence"),
    }
    assert all(r["score"] == "seed_v1" for r in fam)
    p = [r["p_boot"] if r["role"] == "confirmatory" else r["p_tost"] for r in fam]
    np.testing.assert_allclose([r["p_holm"] for r in fam], holm(p))
    assert all(r["p_holm"] is None for r in rows if r["role"] == "exploratory")
    # a contrast that is no section's row gets its own, on the primary score only
    extra = [r for r in rows if r["family"] == "claim"]
    assert [(r["condition"], r["reference"], r["score"]) for r in extra] == [("kv_only", "patch_only", "seed_v1")]
    # the same claim computed directly: the equivalence row's TOST p and interval
    r = next(r for r in fam if r["reference"] == "kv_only")
    direct, draws = paired_compare(
        table, "transfer", "kv_only", "seed_v1", pair_col=["pair_id", "seed"], target_col="target_id",
        group_col="pair_id", margin=0.5, n_boot=1999, n_perm=999, return_draws=True,
    )  # fmt: skip
    assert r["p_tost"] == pytest.approx(direct["p_tost"].iloc[0])
    lo, hi = order_ci(draws, 1 - 2 * r["holm_level"])
    assert (r["ci_family_low"], r["ci_family_high"]) == pytest.approx((lo, hi))


def test_family_intervals_and_verdicts_agree_with_holm_p(family_summary):
    for r in family_summary["deltas"]:
        if r["role"] == "confirmatory":
            excludes = not r["ci_family_low"] <= 0 <= r["ci_family_high"]
            assert excludes == (r["p_holm"] <= 0.05) == (r["verdict"] == "different")
        elif r["role"] == "equivalence":
            inside = -r["margin"] < r["ci_family_low"] and r["ci_family_high"] < r["margin"]
            assert inside == (r["p_holm"] <= 0.05) == (r["verdict"] == "equivalent")
            assert r["ci_family_level"] == pytest.approx(1 - 2 * r["holm_level"])
    verdicts = {(r["condition"], r["reference"]): r["verdict"] for r in family_summary["deltas"] if r["verdict"]}
    assert verdicts[("transfer", "baseline")] == "different"
    assert verdicts[("transfer", "kv_only")] in ("equivalent", "inconclusive")


def test_all_zero_differences_show_the_rule_of_three_and_count_in_the_family(family_summary, tmp_path):
    r = next(r for r in family_summary["deltas"] if (r["condition"], r["score"]) == ("noise", "seed_v1"))
    assert r["all_zero"] and r["p_boot"] == 1.0 and r["zero_upper"] == pytest.approx(3 / 60)
    assert r["role"] == "equivalence" and r["verdict"] == "equivalent" and r["p_holm"] is not None
    text = write_report(tmp_path, pd.DataFrame(), family_summary, config={"name": "x"}).read_text()
    line = next(x for x in text.splitlines() if x.startswith("| noise − baseline (±0.3)"))
    assert "0 in all 60 pairs; share that differ ≤ 3/60 = 0.050 (95%)" in line and "[0, 0]" not in line


def test_report_and_console_label_roles_and_floors(family_summary, tmp_path):
    from transferlab.report.deltas_md import headline_rows

    text = " ".join(write_report(tmp_path, pd.DataFrame(), family_summary, config={"name": "x"}).read_text().split())
    assert "## Confirmatory family" in text and "Holm's step-down runs over these rows only" in text
    assert "2/(B+1) = 0.001" in text and "≤ 0.001" in text  # the bootstrap p's floor, said and shown
    rows = {r["comparison"]: r for r in headline_rows(family_summary, "stories260K", "seed_v1")}
    fam = {(r["condition"], r["reference"]): r for r in family_summary["deltas"] if r["score"] == "seed_v1"}
    assert (
        rows["transfer − baseline"]["role"] == "confirmatory" and rows["transfer − baseline"]["verdict"] == "different"
    )
    assert rows["transfer − baseline"]["holm"] == f"{fam[('transfer', 'baseline')]['p_holm']:.3f}"
    level = fam[("transfer", "baseline")]["ci_family_level"]
    assert rows["transfer − baseline"]["ci"].endswith(f"({100 * level:.1f}%)")
    assert rows["wrong_layer − baseline"]["role"] == "exploratory" and rows["wrong_layer − baseline"]["holm"] == "–"
    assert rows["wrong_layer − baseline"]["ci"].endswith("(95.0%)")


def test_without_a_family_the_report_says_so(summary, tmp_path):
    text = " ".join(write_report(tmp_path, pd.DataFrame(), summary, config={"name": "x"}).read_text().split())
    assert "declares no confirmatory family" in text and "every comparison below is exploratory" in text


def test_a_claim_with_an_unscored_primary_is_a_clear_error(table):
    with pytest.raises(ReportError, match="primary score 'nosuch'"):
        build_summary(table, SCORES, analysis={**ANALYSIS, "primary": "nosuch"}, **FAST)


def test_audit_counts_and_never_fired_first(summary):
    audit = summary["audit"]
    first = audit[0]
    assert (first["condition"], first["description"], first["hook_point"]) == (
        "transfer",
        "v_proj@27:w16:decode",
        "v_proj@27",
    )
    assert (first["examples_never_fired"], first["examples"]) == (120, 120)
    patch = _rows(summary, "audit", condition="patch_only")[0]
    assert patch["examples_never_fired"] == 7 * 2  # pairs 0, 9, ..., 54 in both seeds
    nf = [r["examples_never_fired"] > 0 for r in audit]
    assert nf == sorted(nf, reverse=True)
    assert _rows(summary, "audit", condition="transfer", hook_point="kv")[0]["examples_never_fired"] == 0


def test_never_fired_warning_is_bold_at_the_top(report):
    _, text = report
    line = "**WARNING: v_proj@27:w16:decode never fired in 120/120 examples of condition transfer**"
    assert line in text
    assert "**WARNING: v_proj@27:w16 never fired in 14/120 examples of condition patch_only**" in text
    assert text.index("## Warnings") < text.index(line) < text.index("## Conditions")
    assert text.startswith("# transferlab report: synthetic (stories260K)")
    for section in (
        "## Paired deltas vs baseline",
        "## transfer vs each control",
        "## Source-overlap diagnostic",
        "## Intervention audit",
        "## R_V by prompt group",
        "## Reproducibility across seeds",
        "## Figures",
    ):
        assert section in text


def test_summary_is_json_without_nan(summary):
    text = json.dumps(summary, allow_nan=False)
    back = json.loads(text)
    short = [r for r in back["rv_groups"] if r["group"] == "short"][0]
    assert short["mean"] is None and short["sd"] is None


def test_rv_groups_count_nan_prompts(table, summary):
    src = table.drop_duplicates("source_id")
    tgt = table.drop_duplicates("target_id")
    for role, t in (("source", src), ("target", tgt)):
        for group, g in t.groupby(f"{role}_group"):
            r = _rows(summary, "rv_groups", role=role, group=group)[0]
            v = g[f"rv_{role}"]
            assert (r["n_prompts"], r["n"], r["n_nan"]) == (len(v), v.notna().sum(), v.isna().sum())
            if v.notna().any():
                assert r["mean"] == pytest.approx(v.mean())
    assert _rows(summary, "rv_groups", group="short")[0]["n_nan"] == 5
    assert _rows(summary, "rv_groups", group="L3")[0]["n_nan"] == 1


def test_overlap_and_seeds_match_pandas(table, summary):
    r = _rows(summary, "overlap", condition="transfer", score="seed_v1")[0]
    part = table[table.condition == "transfer"]
    assert r["overlap_mean"] == pytest.approx(part.source_overlap.mean())
    assert r["r_score_overlap"] == pytest.approx(part.seed_v1.corr(part.source_overlap))
    means = table.groupby(["condition", "seed"]).seed_v1.mean()
    for s in summary["seeds_table"]:
        if s["score"] == "seed_v1":
            assert s["mean"] == pytest.approx(means[(s["condition"], s["seed"])])
    sp = _rows(summary, "seed_spread", condition="transfer", score="seed_v1")[0]
    assert sp["sd_across_seeds"] == pytest.approx(means["transfer"].std(ddof=1))


def test_figures_are_written(report):
    run, text = report
    for name in ("condition_means", "pair_deltas", "condition_score_heatmap", "rv_groups", "seeds"):
        path = run / "figures" / f"{name}.png"
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
        assert f"figures/{name}.png" in text


def test_single_seed_single_model(tmp_path):
    df = synthetic_results(seeds=(42,), conditions=("baseline", "transfer", "kv_only"))
    s = build_summary(df, ["seed_v1"], **FAST)
    json.dumps(s, allow_nan=False)
    assert s["seeds"] == [42] and len(s["deltas"]) == 2 + 1
    text = write_report(tmp_path, df, s).read_text()
    assert "One sampling seed (42)" in text
    made = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert made == ["condition_means.png", "pair_deltas.png", "rv_groups.png"]  # no seeds, no heatmap


def test_missing_baseline_is_a_clear_error():
    df = synthetic_results(seeds=(0,), conditions=("transfer", "kv_only"))
    with pytest.raises(ReportError, match=r"reference condition 'baseline' is not in the results.*transfer"):
        build_summary(df, ["seed_v1"], **FAST)
    assert build_summary(df, ["seed_v1"], reference="kv_only", **FAST)["reference"] == "kv_only"


def test_generation_differences_and_raw_noise_are_warned(tmp_path):
    df = synthetic_results(
        seeds=(0,), conditions=("baseline", "transfer", "noise"), plans={"noise": "noise:v_proj@27:w16:raw"}
    )
    s = build_summary(df, ["seed_v1"], **FAST)
    config = {
        "flavour": "seed",
        "generation": {"temperature": 0.8},
        "conditions": {"baseline": {"plan": "", "generation": {"top_k": 50}}, "transfer": "kv:all"},
    }
    text = write_report(tmp_path, df, s, config=config).read_text()
    head = text[: text.index("## Run")]
    assert (
        "**WARNING: conditions differ in more than the intervention: transfer, noise generate with "
        "top_k=unset (default) where baseline has top_k=50**" in head
    )
    assert "per-condition generation overrides for baseline" in head
    assert "re-feeds its last prompt token" in head
    assert "not norm-matched" in head


def test_sweep_table_and_path_are_printed(tmp_path, table):
    sweep = {
        "kind": "minimal_layers",
        "path": [{"layers": [18, 25, 27], "delta": 2.1}, {"layers": [25, 27], "delta": 1.9}],
    }
    three = table[table.condition.isin(["baseline", "transfer", "kv_only"])]
    s = build_summary(three, ["seed_v1"], sweep=sweep, **FAST)
    assert s["sweep"]["kind"] == "minimal_layers" and s["sweep"]["path"] == sweep["path"]
    assert {r["condition"] for r in s["sweep"]["table"]} == {"transfer", "kv_only"}
    text = write_report(tmp_path, table, s).read_text()
    assert "## Layer sweep (minimal_layers)" in text and "[18, 25, 27]" in text
    # a sweep draws the heatmap even with 3 conditions
    assert (tmp_path / "figures" / "condition_score_heatmap.png").exists()


def test_md_table_escapes_pipes():
    out = md_table([{"a": "x|y", "b": 1}], ["a", "b"])
    assert out.splitlines() == ["| a | b |", "|:---|---:|", "| x\\|y | 1 |"]


def test_empty_overrides_in_a_dumped_config_are_not_warned(tmp_path):
    """ExperimentConfig.model_dump() lists every override key, set to None when not overridden."""
    from transferlab.report import generation_warnings

    df = synthetic_results(seeds=(0,), conditions=("baseline", "transfer"))
    empty = dict.fromkeys(("max_new_tokens", "temperature", "top_p", "top_k", "greedy", "flavour", "stop_at_eos"))
    config = {
        "generation": {"temperature": 0.8, "top_k": 0, "flavour": "corrected"},
        "conditions": [
            {"name": "baseline", "plan": "", "generation": dict(empty)},
            {"name": "transfer", "plan": "kv:all", "generation": dict(empty)},
        ],
    }
    assert generation_warnings(config, df) == []
    config["conditions"][0]["generation"]["top_k"] = 50
    kinds = [w["kind"] for w in generation_warnings(config, df)]
    assert kinds == ["generation_differs", "generation_overrides"]


def test_rows_decoded_by_two_kernel_paths_are_warned(tmp_path):
    """A model whose rows came from two decode paths (a kernel that failed for one batch shape, a server past its
    compiled shapes) is warned in bold, with the count per path; one path, or a table from before the column, is
    not."""
    df = synthetic_results(seeds=(0,), conditions=("baseline", "transfer"))
    assert not [w for w in build_summary(df, ["seed_v1"], **FAST)["warnings"] if w["kind"] == "mixed_decode_paths"]
    df["decode_path"] = "graph/ragged"
    df.loc[df.index[:2], "decode_path"] = "graph+static/ragged"  # the same kernels, replayed or not: no warning
    s = build_summary(df, ["seed_v1"], **FAST)
    assert not [w for w in s["warnings"] if w["kind"] == "mixed_decode_paths"]
    df["decode_path"] = "graph/ragged"
    df.loc[df.index[:3], "decode_path"] = "graph/ragged-fallback"
    s = build_summary(df, ["seed_v1"], **FAST)
    (w,) = [w for w in s["warnings"] if w["kind"] == "mixed_decode_paths"]
    assert w["by_path"] == {"graph/ragged": len(df) - 3, "graph/ragged-fallback": 3}
    head = write_report(tmp_path, df, s).read_text().split("## Run")[0]
    assert f"**WARNING: rows of {df.model[0]} were decoded by 2 decode paths (graph/ragged {len(df) - 3}" in head
    df["decode_path"] = "static/sdpa"
    df.loc[df.index[:1], "decode_path"] = "eager/sdpa"  # the eager loop may round otherwise: warned
    (w,) = [w for w in build_summary(df, ["seed_v1"], **FAST)["warnings"] if w["kind"] == "mixed_decode_paths"]
    assert w["by_path"] == {"static/sdpa": len(df) - 1, "eager/sdpa": 1}
