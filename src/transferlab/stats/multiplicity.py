"""Holm's step-down adjustment, and the level at which it tested each hypothesis.

Holm sorts the ``m`` p-values ``p(1) <= ... <= p(m)`` and rejects ``H(1)``,
``H(2)``, ... while ``p(i) <= alpha / (m - i + 1)``, stopping at the first
``r`` that fails. :func:`holm_levels` gives each hypothesis the level its
interval should have so that the interval agrees with the decision: rank
``i < r`` gets ``alpha / (m - i + 1)``; every rank from ``r`` on gets
``alpha / (m - r + 1)``, the level at which the procedure stopped. With the
intervals of :mod:`.inference`, such an interval excludes 0 exactly when
the Holm-adjusted p is at most ``alpha``. These are decision-consistent
intervals, not simultaneous-coverage ones (those exist for Holm only in a
form that gives the rejected hypotheses one-sided bounds).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _on_present(pvalues: Sequence[float], ranked) -> np.ndarray:
    """``ranked(sorted_p)`` applied to the non-NaN p-values in ascending order (ties kept in input order), its
    per-rank result put back at each hypothesis' place; NaNs stay NaN and do not count in m."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if not ok.any():
        return out
    pv = p[ok]
    order = np.argsort(pv, kind="mergesort")
    res = np.empty(pv.size)
    res[order] = ranked(pv[order])
    out[ok] = res
    return out


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values; NaNs stay NaN and do not count in m."""

    def adjusted(ps: np.ndarray) -> np.ndarray:
        m = ps.size
        return np.minimum(np.maximum.accumulate((m - np.arange(m)) * ps), 1.0)

    return _on_present(pvalues, adjusted)


def holm_levels(pvalues: Sequence[float], alpha: float = 0.05) -> np.ndarray:
    """Per hypothesis, the level Holm's step-down tested it at (see the module docstring); NaN p: NaN."""

    def levels(ps: np.ndarray) -> np.ndarray:
        m = ps.size
        steps = alpha / (m - np.arange(m))  # rank i (0-based) is tested at alpha / (m - i)
        failed = np.nonzero(ps > steps * (1 + 1e-9))[0]
        stop = int(failed[0]) if failed.size else m
        return np.where(np.arange(m) < stop, steps, steps[min(stop, m - 1)])

    return _on_present(pvalues, levels)
