"""The confirmatory family of a report: which deltas rows it claims, Holm within them, their intervals and verdicts.

A run's config names its family (``[analysis]``: primary score, contrasts
claimed to differ, contrasts claimed equivalent within a margin; see
:mod:`transferlab.stats.family`). Here each deltas row gets:

- ``role``: ``"confirmatory"`` (claimed to differ), ``"equivalence"``
  (claimed equivalent within ``margin``) or ``"exploratory"`` (all others);
- ``p_family``: the p that enters Holm: the two-sided bootstrap ``p_boot``
  for a confirmatory row, the TOST ``p_tost`` for an equivalence row;
- ``p_holm``: Holm-adjusted over the family's rows only (every model of the
  run in one family); NaN for exploratory rows, whose p stays unadjusted;
- ``holm_level``: the level Holm tested the row at
  (:func:`transferlab.stats.holm_levels`), and ``ci_family_low/high`` at
  ``ci_family_level``: ``1 - holm_level`` for a confirmatory row (it
  excludes 0 exactly when ``p_holm <= alpha``), ``1 - 2 holm_level`` for an
  equivalence row (inside ``±margin`` exactly when ``p_holm <= alpha``);
- ``verdict``: ``"different"`` / ``"not shown"`` for a confirmatory row;
  ``"equivalent"`` / ``"different"`` / ``"inconclusive"`` for an
  equivalence row (:mod:`transferlab.stats.equivalence`), with
  ``differs_from_zero`` when an equivalent difference is nonetheless not 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..stats import Family, holm, holm_levels, order_ci, verdict

_TOL = 1 + 1e-9


def _role(row, family: Family | None) -> str:
    claim = family.claim(row.condition, row.reference, row.score) if family else None
    return claim.role if claim else "exploratory"


def _first_claims(table: pd.DataFrame, family: Family | None) -> np.ndarray:
    """Roles per row; a claim repeated in two sections of one model counts once (its first row)."""
    roles = np.array([_role(r, family) for r in table.itertuples()], dtype=object)
    seen = set()
    for i, r in enumerate(table.itertuples()):
        key = (r.model, r.condition, r.reference, r.score)
        if roles[i] != "exploratory" and key in seen:
            roles[i] = "exploratory"
        seen.add(key)
    return roles


def apply_family(table: pd.DataFrame, draws: list[np.ndarray], family: Family | None) -> pd.DataFrame:
    """``table`` (the deltas rows, ``draws`` their bootstrap draws in order) with the columns above."""
    t = table.copy()
    t["role"] = _first_claims(t, family)
    t["p_family"] = np.where(
        t["role"] == "equivalence", t["p_tost"], np.where(t["role"] == "confirmatory", t["p_boot"], np.nan)
    )
    for col in ("p_holm", "holm_level", "ci_family_low", "ci_family_high", "ci_family_level"):
        t[col] = np.nan
    t["verdict"], t["differs_from_zero"] = "", False
    idx = np.nonzero(t["role"].to_numpy() != "exploratory")[0]
    if idx.size == 0:
        return t
    p = t["p_family"].to_numpy()[idx]
    t.loc[t.index[idx], "p_holm"] = holm(p)
    t.loc[t.index[idx], "holm_level"] = holm_levels(p, family.alpha)
    for i in idx:
        r = t.iloc[i]
        a = r["holm_level"]
        if np.isnan(a):
            continue
        level = 1 - 2 * a if r["role"] == "equivalence" else 1 - a
        lo, hi = order_ci(draws[i], level)
        t.iloc[i, t.columns.get_indexer(["ci_family_low", "ci_family_high", "ci_family_level"])] = [lo, hi, level]
        differs = bool(r["p_boot"] <= a * _TOL)
        if r["role"] == "equivalence":
            t.iat[i, t.columns.get_loc("verdict")] = verdict(r["p_holm"], r["p_boot"], a, family.alpha)
            t.iat[i, t.columns.get_loc("differs_from_zero")] = differs
        else:
            t.iat[i, t.columns.get_loc("verdict")] = "different" if r["p_holm"] <= family.alpha * _TOL else "not shown"
    return t
