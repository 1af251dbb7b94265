"""Paired comparisons of two conditions on the same units.

**Input** is a long table, one row per (pair, condition[, seed]) with
columns ``pair_id, source_id, target_id, condition, seed`` and one column per
score. Two conditions are compared on the *same* units: a paired unit is
identified by ``pair_col`` (default ``"pair_id"``; pass ``["pair_id",
"seed"]`` when several sampling seeds were run per pair). A unit appearing
twice in one condition is an error, not an average.

**Missing values are reported, never silently dropped.** Units present in
only one of the two conditions are counted in ``n_unmatched``; units with a
NaN score in either arm are counted in ``n_nan``; both are excluded from
every statistic, and ``n`` is what remains.

**Clusters.** The seed reused 65 source prompts across 300 pairs and treated
the pairs as independent. With ``target_col`` (the report passes
``"target_id"``) the interval and ``p_boot`` come from the two-way
(source x target) bootstrap of :mod:`.bootstrap` whenever a source or a
target serves several pairs, and from a bootstrap over pairs (their seeds
kept together, ``group_col``) when none does; ``clustering`` says which.
Without ``target_col``, sources alone are resampled (the older one-way
clustering). The iid bootstrap over units is reported beside it
(``ci_iid_*``) so the difference is visible. ``p_perm_cluster`` flips the
sign of whole source clusters (one-way; kept as it was).

**Output row of** :func:`paired_compare` (one per comparison and score):

================================  ==========================================
``condition, reference``          compared conditions (difference = cond - ref)
``score``                         the score column
``n``                             units used (matched, no NaN)
``n_nan, n_unmatched``            units excluded, and why
``n_clusters``                    distinct source clusters among the ``n`` units
``n_sources, n_targets, n_pairs`` distinct sources, targets, pairs among them
``design, clustering``            the bootstrap's design, and in words
``mean_ref, mean_cond``           arm means over the ``n`` units
``mean_diff, sd_diff``            mean and SD (ddof=1) of the differences
``ci_low, ci_high``               the design's bootstrap interval (order statistics)
``p_boot, p_boot_floor``          its two-sided p of "mean = 0", and the p's floor 2/(B+1)
``n_boot_dropped``                two-way draws with no unit (dropped)
``ci_iid_low, ci_iid_high``       the percentile interval resampling units independently
``t, df, p_t``                    paired t-test (``scipy.stats.ttest_rel``): the seed's test
``w, p_wilcoxon``                 Wilcoxon signed-rank (zeros dropped, "wilcox")
``n_zero_diff``                   units with difference exactly 0
``all_zero, zero_upper``          every difference 0; then 3/n_pairs (rule of three)
``p_perm, p_perm_floor``          sign-flip permutation test of the mean diff, its floor
``p_perm_cluster(_floor)``        the same flipping whole source clusters
``margin, p_tost, p_tost_t``      with a margin: bootstrap TOST p, paired-t TOST p
``d_z``                           mean_diff / sd_diff (ddof=1)
``d_av``                          mean_diff / mean(sd_ref, sd_cond) (ddof=1)
``ddof, level, n_boot, n_perm``   settings
``note``                          why a statistic is NaN, if one is
================================  ==========================================

A difference that is 0 in every unit has ``p_boot = 1`` (it stays in a Holm
family's count) and an interval ``[0, 0]`` that a report replaces by the
rule-of-three bound on the share of pairs that differ.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .bootstrap import bootstrap_mean_ci, choose_design, design_draws
from .common import DDOF, P_COLUMNS, as_list, require, scipy_stats
from .equivalence import tost_t
from .inference import boot_p, boot_p_floor, order_ci, perm_p_floor, rule_of_three, tost_p
from .multiplicity import holm


def _arm(part: pd.DataFrame, keys: list[str], carry: list[str], role: str, name: str, score: str) -> pd.DataFrame:
    dup = part.duplicated(keys, keep=False)
    if dup.any():
        example = part.loc[dup, keys].iloc[0].to_dict()
        raise ValueError(
            f"condition {name!r} has {int(dup.sum())} rows sharing a unit key {keys} "
            f"(e.g. {example}); add 'seed' to pair_col or aggregate first"
        )
    out = part[keys + carry + [score]].rename(columns={score: role})
    return out if role == "cond" else out.rename(columns={c: f"_{c}_ref" for c in carry})


def paired_table(
    df: pd.DataFrame,
    condition: str,
    reference: str = "baseline",
    score: str = "seed_v1",
    pair_col: str | Sequence[str] = "pair_id",
    cluster_col: str | None = "source_id",
    condition_col: str = "condition",
    target_col: str | None = None,
) -> pd.DataFrame:
    """One row per paired unit present in either condition.

    Columns: the ``pair_col`` keys, ``cluster`` (from ``cluster_col``, or the
    unit's own key when None), ``target`` (from ``target_col``, when given),
    ``ref``, ``cond``, ``diff`` (cond - ref), ``status`` (``"ok"``, ``"nan"``
    or ``"unmatched"``).
    """
    keys = as_list(pair_col)
    carry = [c for c in (cluster_col, target_col) if c]
    require(df, [*keys, condition_col, score, *carry])
    have = set(df[condition_col].unique())
    for c in (condition, reference):
        if c not in have:
            raise KeyError(f"condition {c!r} not in table; conditions: {sorted(map(str, have))}")
    if condition == reference:
        raise ValueError("condition and reference must differ")
    cond = _arm(df[df[condition_col] == condition], keys, carry, "cond", condition, score)
    ref = _arm(df[df[condition_col] == reference], keys, carry, "ref", reference, score)
    wide = cond.merge(ref, on=keys, how="outer", indicator=True)
    both = wide["_merge"] == "both"
    for col in carry:
        clash = both & (wide[col] != wide[f"_{col}_ref"])
        if clash.any():
            raise ValueError(f"{int(clash.sum())} pairs have a different {col} in the two conditions")
        wide[col] = wide[col].where(wide[col].notna(), wide[f"_{col}_ref"])
    if cluster_col:
        wide["cluster"] = wide[cluster_col]
    else:
        wide["cluster"] = list(zip(*[wide[k] for k in keys])) if len(keys) > 1 else wide[keys[0]]
    if target_col:
        wide["target"] = wide[target_col]
    wide["cond"] = wide["cond"].astype(float)
    wide["ref"] = wide["ref"].astype(float)
    wide["diff"] = wide["cond"] - wide["ref"]
    wide["status"] = np.where(~both, "unmatched", np.where(wide["diff"].isna(), "nan", "ok"))
    cols = [*keys, "cluster", *(["target"] if target_col else []), "ref", "cond", "diff", "status"]
    return wide[cols]


def _sign_flip_p(x: np.ndarray, n_total: int, n_perm: int, seed: int) -> float:
    """Two-sided sign-flip permutation p of ``sum(x) / n_total`` (scipy; floor in :func:`.perm_p_floor`)."""
    if x.size == 0 or not np.any(x != 0):
        return np.nan
    res = scipy_stats().permutation_test(
        (x,),
        lambda a, axis: a.sum(axis=axis) / n_total,
        permutation_type="samples",
        n_resamples=n_perm,
        vectorized=True,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(res.pvalue)


_NAN_COLUMNS = (
    "mean_ref mean_cond mean_diff sd_diff ci_low ci_high p_boot p_boot_floor ci_iid_low ci_iid_high t df p_t w "
    "p_wilcoxon zero_upper p_perm p_perm_floor p_perm_cluster p_perm_cluster_floor p_tost p_tost_t d_z d_av"
).split()


def _bootstrap_part(row: dict, ok: pd.DataFrame, groups: list, target_col, margin, n_boot, level, seed) -> np.ndarray:
    """The design's draws and what is read from them: the interval, p_boot, the TOST p, the iid interval."""
    d = ok["diff"].to_numpy()
    targets = ok["target"].tolist() if target_col else None
    design = choose_design(ok["cluster"].tolist(), targets, groups)
    draws, dropped = design_draws(d, design, ok["cluster"].tolist(), targets, groups, n_boot, seed)
    row.update(design=design.kind, clustering=design.label, n_sources=design.n_sources)
    row.update(n_targets=design.n_targets if target_col else np.nan, n_pairs=design.n_pairs)
    row.update(n_boot_dropped=dropped, p_boot=boot_p(draws), p_boot_floor=boot_p_floor(draws.size))
    row["ci_low"], row["ci_high"] = order_ci(draws, level)
    row["ci_iid_low"], row["ci_iid_high"] = bootstrap_mean_ci(d, None, n_boot, level, seed)
    if margin is not None:
        row["p_tost"] = tost_p(draws, margin)
        row["p_tost_t"] = tost_t(d, margin)
    if not np.any(d != 0):
        row.update(all_zero=True, zero_upper=rule_of_three(design.n_pairs))
    return draws


def _tests_part(row: dict, ok: pd.DataFrame, notes: list[str], n_perm: int, seed: int) -> None:
    """The paired t (the seed's test), effect sizes, Wilcoxon and the sign-flip permutation tests."""
    d = ok["diff"].to_numpy()
    ref, cond = ok["ref"].to_numpy(), ok["cond"].to_numpy()
    n = d.size
    sd = d.std(ddof=DDOF)
    row["sd_diff"] = sd
    if sd > 0:
        tt = scipy_stats().ttest_rel(cond, ref)
        row.update(t=float(tt.statistic), df=float(tt.df), p_t=float(tt.pvalue), d_z=d.mean() / sd)
    else:
        notes.append("all differences equal: t, d_z undefined")
    sd_av = (ref.std(ddof=DDOF) + cond.std(ddof=DDOF)) / 2
    if sd_av > 0:
        row["d_av"] = d.mean() / sd_av
    else:
        notes.append("both arms constant: d_av undefined")
    if not np.any(d != 0):
        notes.append("all differences zero: rank and permutation tests undefined")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wres = scipy_stats().wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    row.update(w=float(wres.statistic), p_wilcoxon=float(wres.pvalue))
    row["p_perm"], row["p_perm_floor"] = _sign_flip_p(d, n, n_perm, seed), perm_p_floor(n, n_perm)
    csum = ok.groupby("cluster", sort=True)["diff"].sum().to_numpy()
    row["p_perm_cluster"] = _sign_flip_p(csum, n, n_perm, seed)
    row["p_perm_cluster_floor"] = perm_p_floor(csum.size, n_perm)


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
    target_col: str | None = None,
    group_col: str | None = None,
    margin: float | None = None,
    return_draws: bool = False,
):
    """Compare ``condition`` with ``reference`` on ``score``, unit by unit.

    Returns a one-row table (columns in the module docstring); with
    ``return_draws``, also the bootstrap draws of the mean difference (for
    intervals at other levels, :func:`.order_ci`). ``group_col`` names the
    pair a unit belongs to (its seeds move together; default: the first
    ``pair_col`` key). ``margin``: test equivalence within ±margin as well.
    """
    if margin is not None and not margin > 0:
        raise ValueError(f"an equivalence margin must be positive, not {margin!r}")
    if target_col and not cluster_col:
        raise ValueError("target_col needs cluster_col (the source column) for the two-way bootstrap")
    wide = paired_table(df, condition, reference, score, pair_col, cluster_col, condition_col, target_col)
    ok = wide[wide["status"] == "ok"]
    group = group_col or as_list(pair_col)[0]
    if group not in ok.columns:
        raise ValueError(f"group_col {group!r} must be one of the unit keys {as_list(pair_col)}")
    groups = ok[group].tolist()
    n = len(ok)
    row: dict = dict(condition=condition, reference=reference, score=score, n=n)
    row.update(n_nan=int((wide["status"] == "nan").sum()), n_unmatched=int((wide["status"] == "unmatched").sum()))
    row.update(n_clusters=int(ok["cluster"].nunique()), n_sources=0, n_targets=np.nan, n_pairs=0)
    row.update(design="", clustering="", n_boot_dropped=0, **{c: np.nan for c in _NAN_COLUMNS})
    row.update(n_zero_diff=int(np.sum(ok["diff"].to_numpy() == 0)), all_zero=False, margin=margin)
    notes: list[str] = []
    draws = np.empty(0)
    if n == 0:
        notes.append("no valid pairs")
    else:
        row.update(mean_ref=ok["ref"].mean(), mean_cond=ok["cond"].mean(), mean_diff=ok["diff"].mean())
        draws = _bootstrap_part(row, ok, groups, target_col, margin, n_boot, level, seed)
    if n >= 2:
        _tests_part(row, ok, notes, n_perm, seed)
    else:
        notes.append("fewer than 2 pairs: tests undefined")
    row.update(ddof=DDOF, level=level, n_boot=n_boot, n_perm=n_perm, note="; ".join(notes))
    out = pd.DataFrame([row])
    return (out, draws) if return_draws else out


def compare_all(
    df: pd.DataFrame,
    comparisons: Sequence[tuple[str, str]],
    scores: Sequence[str],
    primary: str = "p_perm_cluster",
    **kwargs,
) -> pd.DataFrame:
    """:func:`paired_compare` for every (condition, reference) x score, stacked.

    Adds ``<p>_holm`` for each p column, adjusted across all rows **as one
    family** (pass only the rows that form one), and ``p_holm`` = the
    Holm-adjusted ``primary`` p (named in ``primary_p``). ``kwargs`` go to
    :func:`paired_compare`.
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
