"""The confirmatory statistics: two-way bootstrap, consistent intervals and p, floors, Holm levels, TOST.

Each piece against an independent computation: scipy where it has the test, brute-force enumeration of
every bootstrap resample on small designs, and a coverage simulation on crossed random effects.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from transferlab.stats import (
    boot_p,
    boot_p_floor,
    choose_design,
    holm,
    holm_levels,
    oneway_draws,
    order_ci,
    paired_compare,
    perm_p_floor,
    rule_of_three,
    tost_p,
    tost_t,
    twoway_draws,
    verdict,
)

# a sparse 3 x 3 design: (source, target, difference) per unit
CELLS = [(0, 0, 1.0), (0, 1, 3.0), (1, 1, -2.0), (2, 2, 0.5), (2, 0, 4.0), (1, 2, 2.5)]


def _exact_twoway(cells, r=3, c=3):
    """Every equally likely pair of (source draw, target draw) index tuples: the exact pigeonhole
    bootstrap distribution of the weighted mean, and the share of draws with no unit."""
    means, empty = [], 0
    for rows in itertools.product(range(r), repeat=r):
        a = np.bincount(rows, minlength=r)
        for cols in itertools.product(range(c), repeat=c):
            b = np.bincount(cols, minlength=c)
            w = np.array([a[s] * b[t] for s, t, _ in cells], dtype=float)
            if w.sum() == 0:
                empty += 1
                continue
            means.append(float(np.dot(w, [v for *_, v in cells]) / w.sum()))
    return np.array(means), empty / (r**r * c**c)


def test_twoway_draws_match_the_enumerated_pigeonhole_bootstrap():
    exact, empty = _exact_twoway(CELLS)
    s, t, v = (np.array(x) for x in zip(*CELLS))
    draws, dropped = twoway_draws(v.astype(float), s, t, 100_000, np.random.default_rng(0))
    n = 100_000
    assert dropped / n == pytest.approx(empty, abs=4 * math.sqrt(empty * (1 - empty) / n))
    se_mean = exact.std() / math.sqrt(draws.size)
    assert draws.mean() == pytest.approx(exact.mean(), abs=5 * se_mean)
    assert draws.std() == pytest.approx(exact.std(), rel=0.02)
    for x in (0.0, 1.0, 2.0):
        q = np.mean(exact <= x)
        assert np.mean(draws <= x) == pytest.approx(q, abs=5 * math.sqrt(q * (1 - q) / draws.size) + 1e-3)


def test_oneway_draws_match_enumeration():
    v, clusters = np.array([1.0, 2.0, 6.0, -1.0, 0.5]), np.array([0, 0, 1, 2, 2])
    sums, counts = np.bincount(clusters, weights=v), np.bincount(clusters)
    exact = np.array([sums[list(k)].sum() / counts[list(k)].sum() for k in itertools.product(range(3), repeat=3)])
    draws = oneway_draws(v, clusters, 100_000, np.random.default_rng(1))
    assert draws.mean() == pytest.approx(exact.mean(), abs=5 * exact.std() / math.sqrt(draws.size))
    assert draws.std() == pytest.approx(exact.std(), rel=0.02)


def _crossed(rng, n_s=15, n_t=10, n=60):
    s = np.concatenate([np.arange(n_s), rng.integers(0, n_s, n - n_s)])
    t = np.concatenate([rng.permutation(n_t), rng.integers(0, n_t, n - n_t)])
    return s, t, rng.normal(0, 0.5, n_s)[s] + rng.normal(0, 1.0, n_t)[t] + rng.normal(0, 1.0, n)


def test_twoway_covers_where_the_one_way_bootstrap_undercovers():
    """Crossed random effects (source SD 0.5, target SD 1, unit SD 1; 60 pairs of 15 sources x 10 targets):
    the 95% interval from resampling sources misses the targets' share (measured 0.72), the two-way one
    covers (0.96). 300 simulated data sets, so each coverage has a standard error of 1.2-2.6 points."""
    rng = np.random.default_rng(1)
    one = two = 0
    reps = 300
    for _ in range(reps):
        s, t, d = _crossed(rng)
        lo, hi = order_ci(oneway_draws(d, s, 400, rng))
        one += lo <= 0 <= hi
        lo, hi = order_ci(twoway_draws(d, s, t, 400, rng)[0])
        two += lo <= 0 <= hi
    assert one / reps < 0.85
    assert two / reps >= 0.92


def test_interval_and_p_from_the_same_draws_agree():
    rng = np.random.default_rng(2)
    for _ in range(400):
        b = int(rng.choice([399, 1999, 2000, 999, 77]))
        draws = rng.normal(rng.normal(0, 0.15), 0.1, b)
        for a in (0.05, 0.01, 0.05 / 3, 0.1):
            lo, hi = order_ci(draws, 1 - a)
            assert (not lo <= 0 <= hi) == (boot_p(draws) <= a * (1 + 1e-9))
            m = float(rng.uniform(0.05, 0.4))
            lo, hi = order_ci(draws, 1 - 2 * a)
            assert (-m < lo and hi < m) == (tost_p(draws, m) <= a * (1 + 1e-9))


def test_order_ci_by_hand_and_unbounded_when_too_few_draws():
    draws = np.arange(1.0, 40.0)  # 39 draws: a = 0.05 -> k = floor(0.05 * 40 / 2) = 1
    assert order_ci(draws, 0.95) == (1.0, 39.0)
    assert order_ci(draws, 0.5) == (10.0, 30.0)  # k = 10
    assert order_ci(draws[:10], 0.95) == (-math.inf, math.inf)


def test_p_floors_are_scipys():
    """scipy's two-sided permutation p never falls below 2/(B+1) (random flips) or 2/2**n (all flips)."""
    x = np.linspace(1, 2, 20)

    def flip(x, n_perm):
        res = sps.permutation_test(
            (x,), np.mean, permutation_type="samples", n_resamples=n_perm, rng=np.random.default_rng(0)
        )
        return res.pvalue

    assert flip(x, 999) == pytest.approx(perm_p_floor(20, 999)) and perm_p_floor(20, 999) == pytest.approx(2 / 1000)
    assert flip(x[:5], 999) == pytest.approx(perm_p_floor(5, 999)) and perm_p_floor(5, 999) == pytest.approx(2 / 32)
    assert boot_p(np.full(1999, 0.3)) == boot_p_floor(1999) == pytest.approx(2 / 2000)


def test_rule_of_three_bounds_the_exact_binomial_limit():
    for n in (1, 5, 24, 60, 300):
        exact = sps.binomtest(0, n).proportion_ci(confidence_level=0.90, method="exact").high  # one-sided 95%
        assert rule_of_three(n) >= exact
        if n >= 20:
            assert rule_of_three(n) == pytest.approx(exact, rel=0.1)


def test_holm_levels_agree_with_holm_decisions():
    rng = np.random.default_rng(3)
    for _ in range(500):
        m = int(rng.integers(1, 9))
        p = rng.uniform(0, 0.08, m) ** rng.uniform(0.5, 2)
        lv = holm_levels(p)
        assert np.array_equal(holm(p) <= 0.05, p <= lv * (1 + 1e-9))
    # by hand: sorted 0.005 (<= .05/4), 0.01 (<= .05/3), 0.03 (> .05/2): stop at rank 3
    np.testing.assert_allclose(holm_levels([0.01, 0.04, 0.03, 0.005]), [0.05 / 3, 0.025, 0.025, 0.0125])


def test_tost_t_against_the_formula_and_the_bootstrap_tost():
    rng = np.random.default_rng(4)
    d = rng.normal(0.1, 1.0, 400)
    m = 0.3
    se = d.std(ddof=1) / math.sqrt(d.size)
    by_hand = max(sps.t.sf((d.mean() + m) / se, d.size - 1), sps.t.cdf((d.mean() - m) / se, d.size - 1))
    assert tost_t(d, m) == pytest.approx(by_hand, rel=1e-9)
    draws = oneway_draws(d, np.arange(d.size), 20_000, rng)
    assert tost_p(draws, m) == pytest.approx(by_hand, abs=0.01)


def test_verdicts():
    assert verdict(0.01, 0.5, 0.05) == "equivalent"
    assert verdict(0.01, 0.001, 0.05) == "equivalent"  # smaller than the margin, though not 0
    assert verdict(0.4, 0.001, 0.05) == "different"
    assert verdict(0.4, 0.03, 0.0125) == "inconclusive"  # 0.03 is not below its Holm level
    assert verdict(float("nan"), 0.5, 0.05) == ""
    with pytest.raises(ValueError, match="positive"):
        tost_p(np.zeros(3), 0.0)


def _table(pairs, seeds=(0,), diff=lambda p, s: 1.0):
    rows = []
    for p, (src, tgt) in enumerate(pairs):
        for s in seeds:
            rows.append(dict(pair_id=p, seed=s, source_id=src, target_id=tgt, condition="baseline", score=0.0))
            rows.append(dict(pair_id=p, seed=s, source_id=src, target_id=tgt, condition="x", score=diff(p, s)))
    return pd.DataFrame(rows)


KW = dict(pair_col=["pair_id", "seed"], target_col="target_id", group_col="pair_id", n_boot=999, n_perm=999)


def test_design_is_chosen_from_the_repeats_and_said_in_words():
    assert choose_design(["a", "b", "c"], ["x", "y", "z"], [0, 1, 2]).kind == "pairs"
    assert choose_design(["a", "a", "c"], ["x", "y", "z"], [0, 1, 2]).kind == "two-way"
    assert choose_design(["a", "b", "c"], ["x", "x", "z"], [0, 1, 2]).kind == "two-way"
    d = choose_design(["a", "a", "b", "b"], ["x", "x", "y", "y"], [0, 0, 1, 1])  # one pair, two seeds each
    assert d.kind == "pairs" and "no cluster CI" in d.label and "seeds move with their pair" in d.label


def test_seeds_move_with_their_pair():
    """Three seeds of a pair with the same difference: the bootstrap over pairs (seeds together) gives the
    draws of the pair-level table exactly; treating the 3 seeds as independent units would narrow it."""
    rng = np.random.default_rng(5)
    vals = rng.normal(0, 1, 12)
    pairs = [(f"s{i}", f"t{i}") for i in range(12)]
    three = paired_compare(_table(pairs, (0, 1, 2), lambda p, s: vals[p]), "x", "baseline", "score", **KW).iloc[0]
    one = paired_compare(_table(pairs, (0,), lambda p, s: vals[p]), "x", "baseline", "score", **KW).iloc[0]
    assert three.design == one.design == "pairs" and three.n == 36 and three.n_pairs == 12
    assert (three.ci_low, three.ci_high) == pytest.approx((one.ci_low, one.ci_high), abs=1e-9)
    assert three.p_boot == one.p_boot
    assert three.ci_iid_high - three.ci_iid_low < 0.8 * (three.ci_high - three.ci_low)


def test_all_zero_differences_keep_p_1_and_the_rule_of_three():
    pairs = [(f"s{i % 4}", f"t{i % 5}") for i in range(20)]
    row = paired_compare(_table(pairs, (0, 1), lambda p, s: 0.0), "x", "baseline", "score", margin=0.5, **KW).iloc[0]
    assert row.all_zero and row.p_boot == 1.0 and row.zero_upper == pytest.approx(3 / 20)
    assert row.design == "two-way" and (row.ci_low, row.ci_high) == (0.0, 0.0)
    assert row.p_tost == pytest.approx(1 / (row.n_boot - row.n_boot_dropped + 1))
    assert holm([row.p_boot, 0.01])[1] == pytest.approx(0.02)  # it counts in m


def test_margin_must_be_positive():
    pairs = [(f"s{i}", f"t{i}") for i in range(5)]
    with pytest.raises(ValueError, match="margin must be positive"):
        paired_compare(_table(pairs), "x", "baseline", "score", margin=0, **KW)


def test_paired_compare_uses_the_two_way_draws_when_targets_repeat():
    """Targets shared by many pairs and a strong target effect: the row's interval is the pigeonhole one
    (the same draws as twoway_draws on its codes) and wider than resampling sources alone."""
    rng = np.random.default_rng(6)
    s, t, d = _crossed(rng)
    pairs = [(f"s{a}", f"t{b}") for a, b in zip(s, t)]
    table = _table(pairs, (0,), lambda p, seed: d[p])
    row, draws = paired_compare(table, "x", "baseline", "score", return_draws=True, **KW)
    row = row.iloc[0]
    assert row.design == "two-way" and (row.n_sources, row.n_targets, row.n_pairs) == (15, 10, 60)
    codes = [pd.factorize(pd.Series([p[i] for p in pairs]))[0] for i in (0, 1)]
    expect, _ = twoway_draws(d, codes[0], codes[1], 999, np.random.default_rng(0))
    np.testing.assert_allclose(np.sort(draws), np.sort(expect), atol=1e-12)
    one = paired_compare(table, "x", "baseline", "score", **{**KW, "target_col": None}).iloc[0]
    assert one.design == "one-way"
    assert row.ci_high - row.ci_low > 1.3 * (one.ci_high - one.ci_low)
