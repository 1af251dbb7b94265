"""Paired statistics for behavior-transfer experiments.

**Input** is a long table, one row per (pair, condition[, seed]) with
columns ``pair_id, source_id, target_id, condition, seed`` and one column per
score. Two conditions are compared on the *same* pairs: a paired unit is
identified by ``pair_col`` (default ``"pair_id"``; pass ``["pair_id",
"seed"]`` when several sampling seeds were run per pair). A unit appearing
twice in one condition is an error, not an average.

**Missing values are reported, never silently dropped.** Units present in
only one of the two conditions are counted in ``n_unmatched``; units with a
NaN score in either arm are counted in ``n_nan``; both are excluded from
every statistic, and ``n`` is what remains.

**Clusters.** The seed reused 65 source prompts across 300 pairs and
treated the pairs as independent, which understates uncertainty when a
prompt's identity matters. Here the confidence interval of the mean
difference comes from a *cluster bootstrap* that resamples source prompts
(``cluster_col``, default ``"source_id"``) with replacement and keeps all
pairs of each drawn prompt; the iid bootstrap is reported beside it
(``ci_iid_*``) so the difference is visible. ``p_perm_cluster`` flips the
sign of whole clusters' differences. Target-prompt reuse is not modelled (a
single clustering factor); pass ``cluster_col="target_id"`` to look at it.

**Output row of** :func:`paired_compare` (one per comparison and score):

============================  ==============================================
``condition, reference``      compared conditions (difference = cond - ref)
``score``                     the score column
``n``                         pairs used (matched, no NaN)
``n_nan, n_unmatched``        pairs excluded, and why
``n_clusters``                distinct clusters among the ``n`` pairs
``mean_ref, mean_cond``       arm means over the ``n`` pairs
``mean_diff, sd_diff``        mean and SD (ddof=1) of the differences
``ci_low, ci_high``           cluster-bootstrap percentile CI of mean_diff
``ci_iid_low, ci_iid_high``   the same resampling pairs independently
``t, df, p_t``                paired t-test (``scipy.stats.ttest_rel``)
``w, p_wilcoxon``             Wilcoxon signed-rank (zeros dropped, "wilcox")
``n_zero_diff``               pairs with difference exactly 0
``p_perm``                    sign-flip permutation test of the mean diff
``p_perm_cluster``            the same flipping whole clusters
``d_z``                       mean_diff / sd_diff (ddof=1)
``d_av``                      mean_diff / mean(sd_ref, sd_cond) (ddof=1)
``ddof``                      the ddof used for every SD (1)
``note``                      why a statistic is NaN, if one is
============================  ==============================================

:func:`compare_all` stacks rows for several comparisons and scores and adds
Holm-adjusted p-values across all of them. Distributions come from scipy;
only Holm's step-down (a few lines) is written here, and it is tested
against statsmodels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

P_COLUMNS = ("p_t", "p_wilcoxon", "p_perm", "p_perm_cluster")
DDOF = 1


def _scipy_stats():
    """``scipy.stats``, imported on first use (0.5-0.7 s: a run imports it while the GPU decodes, see the runner)."""
    from scipy import stats

    return stats


def _as_list(cols: str | Sequence[str]) -> list[str]:
    return [cols] if isinstance(cols, str) else list(cols)


def _require(df: pd.DataFrame, cols: Sequence[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"table lacks columns {missing}; it has {list(df.columns)}")


def paired_table(
    df: pd.DataFrame,
    condition: str,
    reference: str = "baseline",
    score: str = "seed_v1",
    pair_col: str | Sequence[str] = "pair_id",
    cluster_col: str | None = "source_id",
    condition_col: str = "condition",
) -> pd.DataFrame:
    """One row per paired unit present in either condition.

    Columns: the ``pair_col`` keys, ``cluster`` (from ``cluster_col``, or the
    unit's own key when None), ``ref``, ``cond``, ``diff`` (cond - ref),
    ``status`` (``"ok"``, ``"nan"`` or ``"unmatched"``).
    """
    keys = _as_list(pair_col)
    _require(df, [*keys, condition_col, score] + ([cluster_col] if cluster_col else []))
    have = set(df[condition_col].unique())
    for c in (condition, reference):
        if c not in have:
            raise KeyError(f"condition {c!r} not in table; conditions: {sorted(map(str, have))}")
    if condition == reference:
        raise ValueError("condition and reference must differ")
    arms = {}
    for role, c in (("cond", condition), ("ref", reference)):
        part = df[df[condition_col] == c]
        dup = part.duplicated(keys, keep=False)
        if dup.any():
            example = part.loc[dup, keys].iloc[0].to_dict()
            raise ValueError(
                f"condition {c!r} has {int(dup.sum())} rows sharing a unit key {keys} "
                f"(e.g. {example}); add 'seed' to pair_col or aggregate first"
            )
        cols = keys + ([cluster_col] if cluster_col else []) + [score]
        arms[role] = part[cols].rename(columns={score: role})
    if cluster_col:
        arms["ref"] = arms["ref"].rename(columns={cluster_col: "_cluster_ref"})
    wide = arms["cond"].merge(arms["ref"], on=keys, how="outer", indicator=True)
    if cluster_col:
        both = wide["_merge"] == "both"
        clash = both & (wide[cluster_col] != wide["_cluster_ref"])
        if clash.any():
            raise ValueError(f"{int(clash.sum())} pairs have a different {cluster_col} in the two conditions")
        wide["cluster"] = wide[cluster_col].where(wide[cluster_col].notna(), wide["_cluster_ref"])
        wide = wide.drop(columns=[cluster_col, "_cluster_ref"])
    else:
        wide["cluster"] = list(zip(*[wide[k] for k in keys])) if len(keys) > 1 else wide[keys[0]]
    wide["cond"] = wide["cond"].astype(float)
    wide["ref"] = wide["ref"].astype(float)
    wide["diff"] = wide["cond"] - wide["ref"]
    status = np.where(wide["_merge"] != "both", "unmatched", np.where(wide["diff"].isna(), "nan", "ok"))
    wide["status"] = status
    return wide.drop(columns="_merge")[[*keys, "cluster", "ref", "cond", "diff", "status"]]


def bootstrap_mean_ci(
    values: np.ndarray,
    clusters: Sequence | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values``.

    With ``clusters``, whole clusters are resampled with replacement (as many
    draws as there are clusters) and the statistic is the mean over all
    values of the drawn clusters; without, values are resampled one by one.
    NaN values are an error here (callers exclude and report them first).
    """
    v = np.asarray(values, dtype=np.float64)
    if np.isnan(v).any():
        raise ValueError("bootstrap_mean_ci got NaN values; exclude (and report) them first")
    if v.size == 0:
        return (np.nan, np.nan)
    rng = np.random.default_rng(seed)
    if clusters is None:
        codes = np.arange(v.size)
    else:
        codes = pd.factorize(pd.Series(list(clusters)))[0]
        if codes.size != v.size:
            raise ValueError("values and clusters differ in length")
    sums = np.bincount(codes, weights=v)
    counts = np.bincount(codes).astype(np.float64)
    g = sums.size
    draws = rng.integers(0, g, size=(n_boot, g))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _sign_flip_p(x: np.ndarray, n_total: int, n_perm: int, seed: int) -> float:
    """Two-sided sign-flip permutation p of ``sum(x) / n_total`` (scipy)."""
    if x.size == 0 or not np.any(x != 0):
        return np.nan
    res = _scipy_stats().permutation_test(
        (x,),
        lambda a, axis: a.sum(axis=axis) / n_total,
        permutation_type="samples",
        n_resamples=n_perm,
        vectorized=True,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(res.pvalue)


def paired_compare(
    df: pd.DataFrame,
    condition: str,
    reference: str = "baseline",
    score: str = "seed_v1",
    pair_col: str | Sequence[str] = "pair_id",
    cluster_col: str | None = "source_id",
    n_boot: int = 2000,
    n_perm: int = 9999,
    seed: int = 0,
    level: float = 0.95,
    condition_col: str = "condition",
) -> pd.DataFrame:
    """Compare ``condition`` with ``reference`` on ``score``, pair by pair.

    Returns a one-row table; columns are described in the module docstring.
    """
    wide = paired_table(df, condition, reference, score, pair_col, cluster_col, condition_col)
    ok = wide[wide["status"] == "ok"]
    d = ok["diff"].to_numpy()
    ref, cond = ok["ref"].to_numpy(), ok["cond"].to_numpy()
    n = int(d.size)
    notes: list[str] = []
    row: dict = {
        "condition": condition,
        "reference": reference,
        "score": score,
        "n": n,
        "n_nan": int((wide["status"] == "nan").sum()),
        "n_unmatched": int((wide["status"] == "unmatched").sum()),
        "n_clusters": int(ok["cluster"].nunique()),
    }
    nan = np.nan
    row.update(
        mean_ref=nan,
        mean_cond=nan,
        mean_diff=nan,
        sd_diff=nan,
        ci_low=nan,
        ci_high=nan,
        ci_iid_low=nan,
        ci_iid_high=nan,
        t=nan,
        df=nan,
        p_t=nan,
        w=nan,
        p_wilcoxon=nan,
        n_zero_diff=int(np.sum(d == 0)),
        p_perm=nan,
        p_perm_cluster=nan,
        d_z=nan,
        d_av=nan,
    )
    if n == 0:
        notes.append("no valid pairs")
    else:
        row.update(mean_ref=ref.mean(), mean_cond=cond.mean(), mean_diff=d.mean())
        clusters = ok["cluster"].tolist()
        row["ci_low"], row["ci_high"] = bootstrap_mean_ci(d, clusters, n_boot, level, seed)
        row["ci_iid_low"], row["ci_iid_high"] = bootstrap_mean_ci(d, None, n_boot, level, seed)
    if n >= 2:
        sd = d.std(ddof=DDOF)
        row["sd_diff"] = sd
        if sd > 0:
            tt = _scipy_stats().ttest_rel(cond, ref)
            row.update(t=float(tt.statistic), df=float(tt.df), p_t=float(tt.pvalue), d_z=d.mean() / sd)
        else:
            notes.append("all differences equal: t, d_z undefined")
        sd_av = (ref.std(ddof=DDOF) + cond.std(ddof=DDOF)) / 2
        if sd_av > 0:
            row["d_av"] = d.mean() / sd_av
        else:
            notes.append("both arms constant: d_av undefined")
        if np.any(d != 0):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wres = _scipy_stats().wilcoxon(d, zero_method="wilcox", alternative="two-sided")
            row.update(w=float(wres.statistic), p_wilcoxon=float(wres.pvalue))
            row["p_perm"] = _sign_flip_p(d, n, n_perm, seed)
            csum = ok.groupby("cluster", sort=True)["diff"].sum().to_numpy()
            row["p_perm_cluster"] = _sign_flip_p(csum, n, n_perm, seed)
        else:
            notes.append("all differences zero: rank and permutation tests undefined")
    else:
        notes.append("fewer than 2 pairs: tests undefined")
    row.update(ddof=DDOF, level=level, n_boot=n_boot, n_perm=n_perm, note="; ".join(notes))
    return pd.DataFrame([row])


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values; NaNs stay NaN and do not count in m."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return out
    pv = p[ok]
    order = np.argsort(pv, kind="mergesort")
    adj = np.maximum.accumulate((m - np.arange(m)) * pv[order])
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


def compare_all(
    df: pd.DataFrame,
    comparisons: Sequence[tuple[str, str]],
    scores: Sequence[str],
    primary: str = "p_perm_cluster",
    **kwargs,
) -> pd.DataFrame:
    """:func:`paired_compare` for every (condition, reference) x score, stacked.

    Adds ``<p>_holm`` for each p column, adjusted across all rows, and
    ``p_holm`` = the Holm-adjusted ``primary`` p (named in ``primary_p``).
    ``kwargs`` go to :func:`paired_compare`.
    """
    if primary not in P_COLUMNS:
        raise ValueError(f"primary must be one of {P_COLUMNS}")
    if not comparisons or not scores:
        raise ValueError("need at least one comparison and one score")
    rows = [paired_compare(df, c, r, s, **kwargs) for c, r in comparisons for s in scores]
    out = pd.concat(rows, ignore_index=True)
    for col in P_COLUMNS:
        out[f"{col}_holm"] = holm(out[col].to_numpy())
    out["primary_p"] = primary
    out["p_holm"] = out[f"{primary}_holm"]
    return out


def describe_scores(df: pd.DataFrame, scores: Sequence[str], by: str | Sequence[str] = "condition") -> pd.DataFrame:
    """Per group and score: ``n`` (non-NaN), ``n_nan``, ``mean``, ``sd``
    (ddof=1), ``median``, ``min``, ``max``. Long format."""
    by = _as_list(by)
    _require(df, [*by, *scores])
    rows = []
    for key, part in df.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        for s in scores:
            v = part[s].astype(float)
            x = v.dropna()
            rows.append(
                {
                    **dict(zip(by, key)),
                    "score": s,
                    "n": int(x.size),
                    "n_nan": int(v.isna().sum()),
                    "mean": x.mean() if x.size else np.nan,
                    "sd": x.std(ddof=DDOF) if x.size > 1 else np.nan,
                    "median": x.median() if x.size else np.nan,
                    "min": x.min() if x.size else np.nan,
                    "max": x.max() if x.size else np.nan,
                }
            )
    return pd.DataFrame(rows)
