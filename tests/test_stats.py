"""Statistics against scipy / statsmodels and independent enumerations."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from transferlab.stats import (
    bootstrap_mean_ci,
    compare_all,
    describe_scores,
    holm,
    paired_compare,
    paired_table,
)


def long_table(n_pairs=24, n_sources=6, effect=0.5, seed=0, conditions=("baseline", "transfer")):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_pairs):
        base = rng.normal()
        for k, c in enumerate(conditions):
            rows.append(
                dict(
                    pair_id=p,
                    source_id=f"s{p % n_sources}",
                    target_id=f"t{p}",
                    condition=c,
                    seed=0,
                    score=base + k * effect + rng.normal(),
                    other=rng.integers(0, 5),
                )
            )
    return pd.DataFrame(rows)


def arms(df, cond, ref, score="score"):
    a = df[df.condition == cond].set_index("pair_id")[score]
    b = df[df.condition == ref].set_index("pair_id")[score]
    return a.sort_index().to_numpy(float), b.sort_index().to_numpy(float)


def exact_sign_flip_p(x, n_total):
    obs = abs(x.sum() / n_total)
    stats_ = [abs((np.array(s) * x).sum() / n_total) for s in itertools.product([1, -1], repeat=len(x))]
    return np.mean(np.array(stats_) >= obs * (1 - 1e-12))


def test_paired_compare_matches_scipy():
    df = long_table()
    row = paired_compare(df, "transfer", "baseline", "score", n_perm=5000).iloc[0]
    cond, ref = arms(df, "transfer", "baseline")
    d = cond - ref
    tt = sps.ttest_rel(cond, ref)
    assert row.n == 24 and row.n_nan == 0 and row.n_unmatched == 0 and row.n_clusters == 6
    assert row.t == pytest.approx(tt.statistic) and row.p_t == pytest.approx(tt.pvalue)
    assert row.df == 23
    w = sps.wilcoxon(cond, ref)
    assert row.w == pytest.approx(w.statistic) and row.p_wilcoxon == pytest.approx(w.pvalue)
    assert row.mean_diff == pytest.approx(d.mean())
    assert row.mean_cond == pytest.approx(cond.mean()) and row.mean_ref == pytest.approx(ref.mean())
    assert row.d_z == pytest.approx(d.mean() / d.std(ddof=1))
    assert row.d_av == pytest.approx(d.mean() / ((cond.std(ddof=1) + ref.std(ddof=1)) / 2))
    assert row.ddof == 1
    # permutation p against scipy's own call with the same resampling
    ref_perm = sps.permutation_test(
        (cond, ref),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        n_resamples=5000,
        vectorized=True,
        rng=np.random.default_rng(0),
    )
    assert row.p_perm == pytest.approx(ref_perm.pvalue, abs=0.02)
    assert row.ci_low < d.mean() < row.ci_high


def test_permutation_tests_against_exact_enumeration():
    df = long_table(n_pairs=10, n_sources=5, seed=3)
    row = paired_compare(df, "transfer", "baseline", "score", n_perm=9999).iloc[0]
    cond, ref = arms(df, "transfer", "baseline")
    d = cond - ref
    assert row.p_perm == pytest.approx(exact_sign_flip_p(d, 10))  # 2^10 < 9999: scipy is exact
    wide = paired_table(df, "transfer", "baseline", "score")
    csum = wide.groupby("cluster")["diff"].sum().to_numpy()
    assert row.p_perm_cluster == pytest.approx(exact_sign_flip_p(csum, 10))


def test_nan_and_unmatched_are_counted_and_excluded():
    df = long_table()
    df.loc[(df.condition == "transfer") & (df.pair_id == 3), "score"] = np.nan
    df.loc[(df.condition == "baseline") & (df.pair_id == 7), "score"] = np.nan
    df = df[~((df.condition == "baseline") & (df.pair_id == 11))]  # pair 11: transfer only
    row = paired_compare(df, "transfer", "baseline", "score", n_perm=200).iloc[0]
    assert (row.n, row.n_nan, row.n_unmatched) == (21, 2, 1)
    keep = [p for p in range(24) if p not in (3, 7, 11)]
    sub = df[df.pair_id.isin(keep)]
    cond, ref = arms(sub, "transfer", "baseline")
    assert row.p_t == pytest.approx(sps.ttest_rel(cond, ref).pvalue)
    status = paired_table(df, "transfer", "baseline", "score").set_index("pair_id")["status"]
    assert status[3] == status[7] == "nan" and status[11] == "unmatched" and status[0] == "ok"


def test_degenerate_inputs_report_nan_with_a_note():
    df = long_table(n_pairs=6)
    df["zero"] = 1.0
    row = paired_compare(df, "transfer", "baseline", "zero", n_perm=100).iloc[0]
    assert row.mean_diff == 0 and np.isnan(row.t) and np.isnan(row.p_wilcoxon) and np.isnan(row.p_perm)
    assert "all differences" in row.note
    df["allnan"] = np.nan
    row = paired_compare(df, "transfer", "baseline", "allnan").iloc[0]
    assert row.n == 0 and row.n_nan == 6 and "no valid pairs" in row.note


def test_unit_keys_must_be_unique_per_condition():
    df = pd.concat([long_table().assign(seed=0), long_table(seed=1).assign(seed=1)], ignore_index=True)
    with pytest.raises(ValueError, match="add 'seed' to pair_col"):
        paired_compare(df, "transfer", "baseline", "score")
    row = paired_compare(df, "transfer", "baseline", "score", pair_col=["pair_id", "seed"], n_perm=100).iloc[0]
    assert row.n == 48
    with pytest.raises(KeyError, match="'nope' not in table"):
        paired_compare(df, "nope", "baseline", "score")
    with pytest.raises(KeyError, match="lacks columns"):
        paired_compare(df, "transfer", "baseline", "missing_score")


def test_holm_against_hand_example_and_statsmodels():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    got = holm([0.2, np.nan, 0.01])
    assert np.isnan(got[1]) and got[0] == pytest.approx(0.2) and got[2] == pytest.approx(0.02)
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(0)
    for _ in range(20):
        pv = rng.uniform(0, 0.2, size=rng.integers(1, 15))
        np.testing.assert_allclose(holm(pv), multitest.multipletests(pv, method="holm")[1])


def test_compare_all_adjusts_across_all_rows():
    df = long_table(conditions=("baseline", "transfer", "wrong_layer"))
    out = compare_all(
        df,
        [("transfer", "baseline"), ("wrong_layer", "baseline"), ("transfer", "wrong_layer")],
        ["score", "other"],
        n_perm=500,
        n_boot=300,
    )
    assert len(out) == 6
    assert list(out[["condition", "reference", "score"]].iloc[4]) == ["transfer", "wrong_layer", "score"]
    np.testing.assert_allclose(out["p_t_holm"], holm(out["p_t"]))
    np.testing.assert_allclose(out["p_holm"], holm(out["p_perm_cluster"]))
    assert (out["primary_p"] == "p_perm_cluster").all()
    assert (out["p_holm"] >= out["p_perm_cluster"]).all()


def test_describe_scores_reports_nan():
    df = long_table()
    df.loc[0, "score"] = np.nan
    d = describe_scores(df, ["score"]).set_index("condition")
    assert d.loc["baseline", "n"] == 23 and d.loc["baseline", "n_nan"] == 1
    x = df[df.condition == "transfer"]["score"]
    assert d.loc["transfer", "sd"] == pytest.approx(x.std(ddof=1))


def test_cluster_bootstrap_under_prompt_reuse():
    """10 source prompts each reused 30 times, a per-prompt random effect on the
    difference, no true effect. The iid bootstrap treats 300 pairs as independent
    and is far too narrow; the cluster bootstrap covers 0 near the nominal rate."""
    rng = np.random.default_rng(42)
    clusters = np.repeat(np.arange(10), 30)
    cover_iid = cover_cl = 0
    widths_iid, widths_cl = [], []
    n_sim = 150
    for i in range(n_sim):
        d = rng.normal(0, 1, 10)[clusters] + rng.normal(0, 1, 300)
        lo_c, hi_c = bootstrap_mean_ci(d, clusters, n_boot=800, seed=i)
        lo_i, hi_i = bootstrap_mean_ci(d, None, n_boot=800, seed=i)
        cover_cl += lo_c <= 0 <= hi_c
        cover_iid += lo_i <= 0 <= hi_i
        widths_cl.append(hi_c - lo_c)
        widths_iid.append(hi_i - lo_i)
    assert np.mean(widths_cl) > 2.5 * np.mean(widths_iid)
    assert cover_cl / n_sim >= 0.82  # nominal 0.95; 10 clusters run a little short
    assert cover_iid / n_sim <= 0.6  # the naive interval misses 0 most of the time


def test_paired_compare_shows_the_inflation_on_one_dataset():
    rng = np.random.default_rng(7)
    rows = []
    for p in range(300):
        src = p % 10
        shift = [1.6, -0.8, 0.9, 1.5, -0.7, 1.3, -1.0, 0.4, 1.2, -0.4][src]  # mean 0.4
        rows.append(dict(pair_id=p, source_id=src, condition="baseline", score=rng.normal()))
        rows.append(dict(pair_id=p, source_id=src, condition="transfer", score=rng.normal() + shift))
    row = paired_compare(pd.DataFrame(rows), "transfer", "baseline", "score", n_perm=2000).iloc[0]
    assert row.p_t < 0.01  # naive: "significant"
    assert row.ci_iid_low > 0  # naive CI excludes 0
    assert row.ci_low < 0 < row.ci_high  # cluster CI does not
    assert row.p_perm_cluster > 0.05
    assert (row.ci_high - row.ci_low) > 3 * (row.ci_iid_high - row.ci_iid_low)


def test_bootstrap_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean_ci(np.array([1.0, np.nan]))
