"""Intervals and p-values read from one set of bootstrap draws, so that each agrees with the other.

All three come from the same ``B`` sorted draws ``θ*(1) <= ... <= θ*(B)``:

- :func:`order_ci`: the level-``1 - a`` interval ``[θ*(k), θ*(B + 1 - k)]``
  with ``k = floor(a (B + 1) / 2)`` (no interpolation). With ``k = 0``
  (too few draws for the level) the interval is unbounded.
- :func:`boot_p`: the two-sided p of "mean = 0", the percentile interval
  inverted: ``2 min(#{θ* <= 0} + 1, #{θ* >= 0} + 1) / (B + 1)``, at most 1.
  Its floor is ``2 / (B + 1)`` (no draw on the far side of 0).
- :func:`tost_p`: the two one-sided tests of "|mean| >= m":
  ``max(#{θ* <= -m} + 1, #{θ* >= m} + 1) / (B + 1)``; floor ``1 / (B + 1)``.

With these counts, exactly: ``order_ci(a)`` excludes 0 iff ``boot_p <= a``,
and ``order_ci(2a)`` lies inside ``(-m, m)`` iff ``tost_p(m) <= a``
(tests/test_stats_inference.py checks both on random draws). A table that
prints the interval beside the p therefore never contradicts itself.
"""

from __future__ import annotations

import math

import numpy as np

_EPS = 1e-9  # a (B + 1) / 2 computed in floating point must not lose an integer


def _k(a: float, n: int) -> int:
    return int(math.floor(a * (n + 1) / 2 + _EPS))


def order_ci(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The bootstrap interval at ``level`` from order statistics (see the module docstring)."""
    d = np.sort(np.asarray(draws, dtype=np.float64))
    if d.size == 0:
        return (math.nan, math.nan)
    k = _k(1.0 - level, d.size)
    if k < 1:
        return (-math.inf, math.inf)
    return float(d[k - 1]), float(d[d.size - k])


def boot_p(draws: np.ndarray, null: float = 0.0) -> float:
    """Two-sided bootstrap p of "mean = null" (floor ``2 / (B + 1)``)."""
    d = np.asarray(draws, dtype=np.float64)
    if d.size == 0:
        return math.nan
    low, high = int(np.sum(d <= null)), int(np.sum(d >= null))
    return min(1.0, 2.0 * (min(low, high) + 1) / (d.size + 1))


def tost_p(draws: np.ndarray, margin: float) -> float:
    """Bootstrap p of the two one-sided tests of "|mean| >= margin" (floor ``1 / (B + 1)``)."""
    if not margin > 0:
        raise ValueError(f"an equivalence margin must be positive, not {margin!r}")
    d = np.asarray(draws, dtype=np.float64)
    if d.size == 0:
        return math.nan
    low, high = int(np.sum(d <= -margin)), int(np.sum(d >= margin))
    return (max(low, high) + 1) / (d.size + 1)


def boot_p_floor(n_draws: int) -> float:
    """The smallest two-sided p :func:`boot_p` can give with ``n_draws`` draws."""
    return min(1.0, 2.0 / (n_draws + 1))


def perm_p_floor(n_units: int, n_perm: int) -> float:
    """The smallest two-sided p of scipy's sign-flip ``permutation_test`` on ``n_units`` units.

    scipy enumerates all ``2**n`` sign patterns when ``n_perm >= 2**n`` (the observed pattern and its
    mirror are among them: floor ``2 / 2**n``); otherwise it draws ``n_perm`` patterns and counts the
    observed one too (floor ``2 / (n_perm + 1)``).
    """
    if n_units < 1:
        return math.nan
    if n_units < 63 and 2**n_units <= n_perm:
        return min(1.0, 2.0 / 2**n_units)
    return min(1.0, 2.0 / (n_perm + 1))


def rule_of_three(n: int) -> float:
    """95% upper bound on the share of units that differ when none of ``n`` independent units did
    (``3 / n``, capped at 1; the exact one-sided bound is ``1 - 0.05 ** (1 / n)``, always a little lower)."""
    return min(1.0, 3.0 / n) if n > 0 else math.nan
