"""Equivalence: "no effect" as a claim with a margin, tested by two one-sided tests (TOST).

A p above 0.05 is not evidence of no effect. A claim that a condition
"adds nothing" names a margin ``m`` (in the score's units, chosen before
the data) and tests ``H0: |mean difference| >= m`` against
``H1: |mean difference| < m`` by two one-sided tests; the TOST p is the
larger of the two. The verdict of a contrast tested at level ``a`` (its
Holm level within the confirmatory family, :func:`.multiplicity.holm_levels`):

- **equivalent within ±m**: TOST p (Holm-adjusted) at most ``alpha``; the
  ``1 - 2a`` bootstrap interval lies inside ``(-m, m)``;
- **different**: not equivalent, and the ordinary two-sided p is at most
  ``a``; the ``1 - a`` interval excludes 0 (the claimed null is refuted);
- **inconclusive**: neither; the data cannot tell "no effect" from an
  effect of the margin's size.

An equivalent contrast whose ``1 - a`` interval also excludes 0 is a real
but smaller-than-margin difference: the verdict stays "equivalent" and
``differs_from_zero`` says so.

:func:`tost_t` is the textbook paired-t TOST (units independent), kept as an
unclustered reference beside the bootstrap one.
"""

from __future__ import annotations

import math

import numpy as np

from .common import scipy_stats

EQUIVALENT, DIFFERENT, INCONCLUSIVE = "equivalent", "different", "inconclusive"


def verdict(p_tost_holm: float, p_diff: float, level: float, alpha: float = 0.05) -> str:
    """``"equivalent"``, ``"different"`` or ``"inconclusive"`` (definitions in the module docstring);
    ``""`` when the TOST p is missing (no pairs)."""
    if p_tost_holm is None or math.isnan(p_tost_holm):
        return ""
    if p_tost_holm <= alpha * (1 + 1e-9):
        return EQUIVALENT
    if p_diff is not None and not math.isnan(p_diff) and p_diff <= level * (1 + 1e-9):
        return DIFFERENT
    return INCONCLUSIVE


def verdict_text(kind: str, margin: float) -> str:
    """The verdict in words, with its margin."""
    if kind == EQUIVALENT:
        return f"equivalent within ±{margin:g}"
    return kind


def tost_t(d: np.ndarray, margin: float) -> float:
    """Paired-t TOST p of ``|mean(d)| >= margin`` (scipy's one-sample t, each side one-sided)."""
    d = np.asarray(d, dtype=np.float64)
    if d.size < 2 or not np.std(d) > 0:
        return math.nan
    st = scipy_stats()
    lower = st.ttest_1samp(d, -margin, alternative="greater").pvalue
    upper = st.ttest_1samp(d, margin, alternative="less").pvalue
    return float(max(lower, upper))
