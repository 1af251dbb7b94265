"""The sampler and its counter-based random streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_reference import filtered_probs_reference

from transferlab import rng
from transferlab.engine.sampling import Sampler

pytestmark = pytest.mark.usefixtures("engine_single_thread")


def _logits(rows=6, vocab=40, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g) * scale


KEYS = torch.tensor([rng.example_key(x) for x in ["a", "b", 3, 4, "e", 99]], dtype=torch.long)


@pytest.mark.parametrize(
    "kw", [dict(), dict(top_k=5), dict(top_p=0.9), dict(top_k=10, top_p=0.5), dict(temperature=1.7, top_p=0.3)]
)
def test_draws_are_batch_independent(kw):
    s = Sampler(**kw)
    logits = _logits()
    for step in (0, 1, 17):
        full = s.sample(logits, KEYS, step)
        for b in range(len(KEYS)):
            assert s.sample(logits[b : b + 1], KEYS[b : b + 1], step).item() == full[b].item()
        perm = torch.tensor([3, 0, 5, 1, 4, 2])
        assert torch.equal(s.sample(logits[perm], KEYS[perm], step), full[perm])
        # a row's draw ignores what the other rows hold
        other = logits.clone()
        other[1:] = _logits(seed=5)[1:]
        assert s.sample(other, KEYS, step)[0] == full[0]


def test_draws_follow_the_inverse_cdf_of_the_example_stream():
    s = Sampler(temperature=0.8)
    logits = _logits()
    for step in range(5):
        got = s.sample(logits, KEYS, step)
        for b in range(len(KEYS)):
            p = torch.softmax(logits[b].double() / 0.8, -1).numpy()
            u = float(rng.uniform(rng.combine(KEYS[b : b + 1], step))[0])
            want = int(np.searchsorted(np.cumsum(p), u * p.sum(), side="right"))
            assert got[b].item() == want


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [
        (1.0, 0, 1.0),
        (0.8, 5, 1.0),
        (0.8, 0, 0.9),
        (1.3, 0, 0.5),
        (0.5, 12, 0.7),
        (1.0, 1, 1.0),
        (2.0, 0, 0.05),
        (1.0, 40, 1.0),
        (1.0, 100, 0.999),
    ],
)
def test_filtering_matches_reference(temperature, top_k, top_p):
    logits = _logits(rows=8, seed=1)
    got = Sampler(temperature=temperature, top_k=top_k, top_p=top_p).filtered_probs(logits).double()
    want = filtered_probs_reference(logits, temperature, top_k, top_p)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert torch.equal(got > 0, want > 0)  # exactly the same support
    if top_k:
        assert ((got > 0).sum(-1) <= top_k).all()


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    for p, support in ((0.5, 1), (0.51, 2), (0.8, 2), (0.81, 3), (0.95, 3), (0.96, 4), (1.0, 4)):
        probs = Sampler(temperature=1.0, top_p=p).filtered_probs(logits)
        assert int((probs > 0).sum()) == support, p


def test_greedy_is_argmax():
    logits = _logits(rows=20, seed=2)
    s = Sampler(greedy=True, temperature=0)
    for step in range(3):
        assert torch.equal(s.sample(logits, torch.arange(20), step), logits.argmax(-1))
    assert torch.allclose(s.log_probs(logits), torch.log_softmax(logits, -1))


def _chi2(counts: np.ndarray, probs: np.ndarray) -> float:
    n = counts.sum()
    keep = probs > 0
    exp = probs[keep] * n
    return float(((counts[keep] - exp) ** 2 / exp).sum())


@pytest.mark.parametrize(
    "kw", [dict(temperature=1.0), dict(temperature=0.7, top_k=4), dict(temperature=1.0, top_p=0.8)]
)
def test_empirical_distribution_matches_probabilities(kw):
    vocab, n = 8, 40000
    logits = torch.tensor([[1.0, 0.5, 0.0, -0.5, 2.0, -1.0, 0.2, 1.5]])
    s = Sampler(**kw)
    probs = s.filtered_probs(logits)[0].double().numpy()
    keys = torch.arange(n, dtype=torch.long)  # n examples, one draw each
    draws = s.sample(logits.expand(n, vocab), keys, 0).numpy()
    counts = np.bincount(draws, minlength=vocab)
    assert counts[probs == 0].sum() == 0  # filtered tokens are never drawn
    dof = int((probs > 0).sum()) - 1
    assert _chi2(counts, probs) < dof + 6 * np.sqrt(2 * dof)  # ~6 sigma of a chi-square
    # the steps of ONE example are an equally good stream
    steps = np.array([s.sample(logits, keys[:1], t).item() for t in range(4000)])
    counts = np.bincount(steps, minlength=vocab)
    assert _chi2(counts, probs) < dof + 6 * np.sqrt(2 * dof)


def test_sampler_arguments():
    for bad in (0, -0.5, float("nan"), float("inf")):  # nan compared false with 0 and was accepted (issue 14)
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            Sampler(temperature=bad)
    Sampler(temperature=float("nan"), greedy=True)  # greedy reads no temperature
    with pytest.raises(ValueError, match=r"top_p must lie in \(0, 1\]"):
        Sampler(top_p=1.5)
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        Sampler(top_k=-1)


def test_rng_streams():
    keys = torch.arange(200000, dtype=torch.long)
    u = rng.uniform(keys)
    assert u.dtype == torch.float64 and (u >= 0).all() and (u < 1).all()
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    z = rng.normal(keys)
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    assert torch.equal(rng.uniform(keys[:10]), u[:10])  # pure functions of their keys
    assert rng.example_key("pair-7") == rng.example_key("pair-7") != rng.example_key("pair-8")
    assert rng.example_key(12) == 12
    with pytest.raises(TypeError):
        rng.example_key(True)
    a = rng.combine(1, torch.tensor([5, 6]), 3)
    assert a[0] != a[1] and torch.equal(a, rng.combine(1, torch.tensor([5, 6]), 3))
    assert not torch.equal(rng.combine(2, torch.tensor([5, 6]), 3), a)
