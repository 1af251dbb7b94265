"""Bootstrap distributions of a mean under the clustering of a paired design.

A paired unit (one pair under one sampling seed) belongs to a **source**
prompt and a **target** prompt, and pairs reuse both: 300 pairs may draw on
65 sources and 200 targets. Units that share a source, or a target, are not
independent, and resampling units (or sources only) one by one understates
the uncertainty of their mean.

**Two-way (pigeonhole) bootstrap** (McCullagh 2000; Owen 2007, "The
pigeonhole bootstrap"): each draw resamples the sources with replacement
and, independently, the targets; a unit counts ``a_s * b_t`` times, ``a_s``
and ``b_t`` being how often its source and its target were drawn. The mean
of a draw is the weighted mean of the units. Its variance over draws is
conservative for crossed random effects: it counts the unit-level noise
more than once, the more so the sparser the design, where the one-way
bootstrap over sources misses the targets' share entirely. Measured on
simulated data (tests/test_stats_design.py keeps the first): 60 pairs of 15
sources x 10 targets, target SD 1: 95% coverage 0.72 one-way, 0.96 two-way;
a design shaped like smollm2_n300 (300 pairs, 60 sources, 200 targets, unit
SD 1, source SD 0.5), target SD 0 / 0.5 / 1: one-way 0.935 / 0.935 / 0.91,
two-way 0.98 / 1.00 / 0.99 with intervals 1.4-1.6x wider (200 data sets
each, so about ±0.02). A variance-components correction (Cameron, Gelbach
and Miller's V_s + V_t - V_pair) would be tighter but can go negative; this
module keeps the conservative, always-defined resampling. A draw in which no drawn source
meets a drawn target (possible only in small, sparse designs) has no mean;
it is dropped and counted.

**Seeds**: the sampling seeds of one pair are a level below the pair: they
share the pair's source and target and always move together (a unit's
weight is its cell's weight). When no source and no target repeats, the
draw resamples pairs, each with all its seeds: there is no cluster above
the pair, and :func:`choose_design` says so instead of calling it a cluster
bootstrap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Design:
    """How a bootstrap resamples: ``kind`` is ``"two-way"`` (sources x targets), ``"one-way"`` (one cluster
    column) or ``"pairs"`` (no cluster repeats: pairs resampled, seeds kept with their pair)."""

    kind: str
    n_sources: int
    n_targets: int
    n_pairs: int
    n_units: int

    @property
    def label(self) -> str:
        """The clustering in words, for a report."""
        seeds = (
            f"; {self.n_units} units = pairs x seeds, seeds move with their pair" if self.n_units > self.n_pairs else ""
        )
        if self.kind == "two-way":
            return f"two-way cluster bootstrap: {self.n_sources} sources x {self.n_targets} targets{seeds}"
        if self.kind == "one-way":
            return f"one-way cluster bootstrap over {self.n_sources} clusters{seeds}"
        return f"one pair per source and per target: no cluster CI, {self.n_pairs} pairs resampled{seeds}"


def _codes(values: Sequence) -> np.ndarray:
    return pd.factorize(pd.Series(list(values), dtype=object))[0]


def choose_design(sources: Sequence, targets: Sequence | None, pairs: Sequence) -> Design:
    """The design a set of units calls for: two-way when a source or a target serves more than one pair,
    pairs when neither does; one-way when ``targets`` is None (sources only, the older clustering)."""
    frame = pd.DataFrame({"s": list(sources), "p": list(pairs)})
    frame["t"] = list(targets) if targets is not None else frame["p"]
    per_pair = frame.drop_duplicates("p")
    n_s, n_t, n_p = per_pair["s"].nunique(), per_pair["t"].nunique(), len(per_pair)
    if targets is None:
        kind = "one-way"
    else:
        kind = "two-way" if (n_s < n_p or n_t < n_p) else "pairs"
    return Design(kind, int(n_s), int(n_t), int(n_p), int(len(frame)))


def oneway_draws(values: np.ndarray, clusters: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` draws that resample whole clusters (integer codes) with replacement."""
    sums = np.bincount(clusters, weights=values)
    counts = np.bincount(clusters).astype(np.float64)
    g = sums.size
    draws = rng.integers(0, g, size=(n_boot, g))
    return sums[draws].sum(axis=1) / counts[draws].sum(axis=1)


def twoway_draws(
    values: np.ndarray, rows: np.ndarray, cols: np.ndarray, n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Pigeonhole bootstrap means (rows and columns resampled independently, a unit weighted by the product
    of its row's and column's draw counts); returns the means of the draws that have a unit, and how many
    draws had none."""
    r, c = int(rows.max()) + 1, int(cols.max()) + 1
    sums = np.zeros((r, c))
    counts = np.zeros((r, c))
    np.add.at(sums, (rows, cols), values)
    np.add.at(counts, (rows, cols), 1.0)
    a = rng.multinomial(r, np.full(r, 1.0 / r), size=n_boot).astype(np.float64)
    b = rng.multinomial(c, np.full(c, 1.0 / c), size=n_boot).astype(np.float64)
    num = ((a @ sums) * b).sum(axis=1)
    den = ((a @ counts) * b).sum(axis=1)
    keep = den > 0
    return num[keep] / den[keep], int((~keep).sum())


def design_draws(
    values: np.ndarray,
    design: Design,
    sources: Sequence,
    targets: Sequence | None,
    pairs: Sequence,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """Bootstrap means of ``values`` under ``design`` (from :func:`choose_design` on the same units);
    returns the draws and how many were dropped (two-way draws with no unit)."""
    v = np.asarray(values, dtype=np.float64)
    if np.isnan(v).any():
        raise ValueError("bootstrap got NaN values; exclude (and report) them first")
    if v.size == 0:
        return np.empty(0), 0
    rng = np.random.default_rng(seed)
    if design.kind == "two-way":
        return twoway_draws(v, _codes(sources), _codes(targets), n_boot, rng)
    clusters = _codes(sources) if design.kind == "one-way" else _codes(pairs)
    return oneway_draws(v, clusters, n_boot, rng), 0


def bootstrap_mean_ci(
    values: np.ndarray,
    clusters: Sequence | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (quantiles interpolated).

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
    codes = np.arange(v.size) if clusters is None else _codes(clusters)
    if codes.size != v.size:
        raise ValueError("values and clusters differ in length")
    means = oneway_draws(v, codes, n_boot, np.random.default_rng(seed))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
