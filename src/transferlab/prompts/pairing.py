"""Seeded (source, target) pairing.

:func:`make_pairs` draws ``n`` pairs from a source pool and a target pool:

- **Deterministic.** The pools are sorted by id first, so the same seed and
  the same *sets* of prompts give the same pairs whatever their input order.
- **Without replacement first.** Sources are drawn as successive random
  permutations of the source pool ("rounds"), targets likewise. The first
  ``min(len(sources), len(targets))`` pairs therefore use every prompt at
  most once.
- **Balanced reuse.** Beyond that, prompts are reused only with
  ``reuse=True``, and then evenly: over ``n`` pairs each source is used
  ``floor(n / len(sources))`` or ``ceil(...)`` times, and each target
  likewise. Without ``reuse=True`` asking for more pairs is a ``ValueError``
  that says how many are possible.
- **Valid pairs.** A prompt is never paired with itself (same id in both
  pools) and no (source, target) combination repeats; both are repaired by
  swapping targets between pairs, which keeps the counts balanced (when a
  conflict cannot be swapped away -- only near the number of distinct
  combinations -- the whole draw is repeated with the same generator, so the
  result stays a function of the seed). Asking for more pairs than there are
  distinct valid combinations is an error.
- **Length matching** (``length_match=True``): the pair sequence is cut into
  blocks of ``min(len(sources), len(targets))`` consecutive pairs, and within
  each block the sources and the targets are each sorted by length and
  paired rank by rank (ties keep their random order). Among all one-to-one
  pairings of a block this minimises the total absolute length difference.
  It matches lengths *within the prompts drawn*; it does not choose
  which prompts are drawn. Length is ``tokenizer_len(text)``, default the
  whitespace word count; pass e.g. ``lambda s: len(tok(s).input_ids)``.

:func:`make_length_matched_pairs` instead draws only pairs whose lengths
differ by at most a tolerance (e.g. ±2 tokens of the run's tokenizer), and
says how many combinations qualified (:class:`MatchedPairing`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from transferlab.prompts.bank import Prompt


@dataclass(frozen=True)
class Pair:
    """One (source, target) pair; ``pair_id`` is its position, from 0."""

    pair_id: int
    source_id: str
    target_id: str
    source_text: str
    target_text: str

    def to_dict(self) -> dict:
        return asdict(self)


_MAX_ATTEMPTS = 200


def _word_len(text: str) -> int:
    return len(text.split())


def _check_pool(pool: Sequence[Prompt], name: str) -> list[Prompt]:
    if not pool:
        raise ValueError(f"{name} pool is empty")
    ids = [p.id for p in pool]
    dup = [i for i, c in Counter(ids).items() if c > 1]
    if dup:
        raise ValueError(f"{name} pool has duplicate ids: {sorted(dup)[:5]}")
    return sorted(pool, key=lambda p: p.id)


def max_pairs_without_reuse(sources: Sequence[Prompt], targets: Sequence[Prompt]) -> int:
    """How many pairs can be drawn with no prompt used twice."""
    if not sources or not targets:
        return 0
    if len(sources) == len(targets) == 1 and sources[0].id == targets[0].id:
        return 0
    return min(len(sources), len(targets))


def _rounds(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    reps = -(-n // size)
    return np.concatenate([rng.permutation(size) for _ in range(reps)])[:n]


def make_pairs(
    sources: Sequence[Prompt],
    targets: Sequence[Prompt],
    n: int,
    seed: int,
    reuse: bool = False,
    length_match: bool = False,
    tokenizer_len: Callable[[str], int] | None = None,
) -> list[Pair]:
    """``n`` seeded (source, target) pairs; see the module docstring."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    src = _check_pool(sources, "source")
    tgt = _check_pool(targets, "target")
    shared = {p.id for p in src} & {p.id for p in tgt}
    n_distinct = len(src) * len(tgt) - len(shared)
    if n > n_distinct:
        raise ValueError(
            f"asked for {n} pairs but only {n_distinct} distinct (source, target) combinations exist "
            f"({len(src)} sources x {len(tgt)} targets, minus self-pairs)"
        )
    limit = max_pairs_without_reuse(src, tgt)
    if n > limit and not reuse:
        raise ValueError(
            f"asked for {n} pairs but only {limit} are possible without reusing a prompt "
            f"({len(src)} sources, {len(tgt)} targets); pass reuse=True to reuse prompts "
            f"evenly (each used floor or ceil of n / pool size times)"
        )
    rng = np.random.default_rng(seed)
    block = min(len(src), len(tgt))
    length = tokenizer_len or _word_len
    s_len = np.array([length(p.text) for p in src]) if length_match else None
    t_len = np.array([length(p.text) for p in tgt]) if length_match else None
    for _attempt in range(_MAX_ATTEMPTS):
        s_idx = _rounds(rng, len(src), n)
        t_idx = _rounds(rng, len(tgt), n)
        if length_match:
            for start in range(0, n, block):
                sl = slice(start, min(start + block, n))
                s_blk, t_blk = s_idx[sl], t_idx[sl]
                s_idx[sl] = s_blk[np.argsort(s_len[s_blk], kind="stable")]
                t_idx[sl] = t_blk[np.argsort(t_len[t_blk], kind="stable")]
        if _repair(src, tgt, s_idx, t_idx, block, t_len, rng):
            break
    else:
        raise RuntimeError(
            f"no valid pairing found in {_MAX_ATTEMPTS} draws; n={n} is too close to "
            f"the {n_distinct} distinct combinations"
        )
    return [
        Pair(i, src[s].id, tgt[t].id, src[s].text, tgt[t].text)
        for i, (s, t) in enumerate(zip(s_idx.tolist(), t_idx.tolist()))
    ]


def _repair(src, tgt, s_idx, t_idx, block, t_len, rng) -> bool:
    """Swap targets until no pair is a self-pair or a repeat (in place).
    False when a conflict cannot be resolved by one swap (the caller redraws)."""
    sid = [p.id for p in src]
    tid = [p.id for p in tgt]
    n = len(s_idx)
    used = Counter(zip(s_idx.tolist(), t_idx.tolist()))

    def bad(i: int, t: int) -> bool:
        return sid[s_idx[i]] == tid[t]

    for i in range(n):
        key = (int(s_idx[i]), int(t_idx[i]))
        if not bad(i, t_idx[i]) and used[key] == 1:
            continue
        same_block = np.arange((i // block) * block, min((i // block + 1) * block, n))
        others = np.setdiff1d(np.arange(n), same_block)
        candidates = []
        for pool in (same_block, others):
            pool = pool[pool != i]
            if t_len is not None:
                pool = pool[np.argsort(np.abs(t_len[t_idx[pool]] - t_len[t_idx[i]]), kind="stable")]
            else:
                pool = rng.permutation(pool)
            candidates.extend(pool.tolist())
        for j in candidates:
            ti, tj = int(t_idx[i]), int(t_idx[j])
            new_i, new_j = (int(s_idx[i]), tj), (int(s_idx[j]), ti)
            if bad(i, tj) or bad(j, ti) or new_i == new_j:
                continue
            old_j = (int(s_idx[j]), tj)
            used[key] -= 1
            used[old_j] -= 1
            if used[new_i] == 0 and used[new_j] == 0:
                used[new_i] += 1
                used[new_j] += 1
                t_idx[i], t_idx[j] = tj, ti
                break
            used[key] += 1
            used[old_j] += 1
        else:
            return False
    return True


def pairs_table(pairs: Sequence[Pair]) -> pd.DataFrame:
    """The pairs as a table with columns ``pair_id, source_id, target_id,
    source_text, target_text``."""
    return pd.DataFrame(
        [p.to_dict() for p in pairs], columns=["pair_id", "source_id", "target_id", "source_text", "target_text"]
    )


@dataclass(frozen=True)
class MatchedPairing:
    """Pairs drawn under a length tolerance, and how many could have been.

    ``qualifying``: distinct (source, target) combinations whose lengths are
    within the tolerance (self-pairs excluded); ``without_reuse``: the most
    pairs of them with no prompt used twice (a maximum matching).
    """

    pairs: list[Pair]
    tolerance: int
    qualifying: int
    without_reuse: int
    n_sources: int
    n_targets: int

    def describe(self) -> dict:
        return {
            "length_tolerance": self.tolerance,
            "qualifying_combinations": self.qualifying,
            "max_pairs_without_reuse": self.without_reuse,
            "pairs": len(self.pairs),
            "sources": self.n_sources,
            "targets": self.n_targets,
        }


def _max_matching(order: list[int], adjacency: dict[int, list[int]]) -> dict[int, int]:
    """A maximum matching source -> target (Kuhn's augmenting paths), trying sources in ``order`` and each
    source's targets in its list's order (the caller shuffles both: the matching is then a seeded draw)."""
    owner: dict[int, int] = {}  # target -> source

    def augment(s: int, seen: set[int]) -> bool:
        for t in adjacency[s]:
            if t in seen:
                continue
            seen.add(t)
            if t not in owner or augment(owner[t], seen):
                owner[t] = s
                return True
        return False

    for s in order:
        augment(s, set())
    return {s: t for t, s in owner.items()}


def make_length_matched_pairs(
    sources: Sequence[Prompt],
    targets: Sequence[Prompt],
    n: int,
    seed: int,
    tolerance: int,
    lengths: Callable[[str], int | Sequence[int]],
    reuse: bool = False,
) -> MatchedPairing:
    """``n`` seeded pairs whose source and target lengths differ by at most ``tolerance``.

    ``lengths(text)`` gives a prompt's length -- an int, or one int per
    tokenizer (a run of several models): a pair qualifies when it is within
    the tolerance under every one. Pairs are drawn in rounds: each round is a
    seeded maximum matching of the qualifying combinations not used yet, so a
    round uses every prompt at most once; the first round alone serves
    ``reuse=False``. Rules: no qualifying combination is a ``ValueError``;
    fewer qualifying pairs than ``n`` (without reuse: the maximum matching;
    with it: the distinct combinations) is a ``ValueError`` that says how
    many qualify -- a run never silently uses fewer pairs than it asked for.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(tolerance, (int, np.integer)) or tolerance < 0:
        raise ValueError(f"the length tolerance must be a whole number of tokens >= 0, got {tolerance!r}")
    src = _check_pool(sources, "source")
    tgt = _check_pool(targets, "target")
    s_len = np.array([np.atleast_1d(lengths(p.text)) for p in src])
    t_len = np.array([np.atleast_1d(lengths(p.text)) for p in tgt])
    close = (np.abs(s_len[:, None, :] - t_len[None, :, :]) <= tolerance).all(-1)
    close &= np.array([[s.id != t.id for t in tgt] for s in src], dtype=bool).reshape(close.shape)
    qualifying = int(close.sum())
    if qualifying == 0:
        raise ValueError(
            f"no (source, target) pair has lengths within ±{tolerance} tokens: sources are "
            f"{int(s_len.min())}-{int(s_len.max())} tokens, targets {int(t_len.min())}-{int(t_len.max())}; "
            "widen the tolerance or pair groups of similar length"
        )
    rng = np.random.default_rng(seed)
    remaining = close.copy()
    rounds: list[tuple[int, int]] = []
    without_reuse = None
    while len(rounds) < n and remaining.any():
        order = rng.permutation(len(src)).tolist()
        adjacency = {s: rng.permutation(np.flatnonzero(remaining[s])).tolist() for s in range(len(src))}
        matched = _max_matching(order, adjacency)
        if without_reuse is None:
            without_reuse = len(matched)
            if not reuse and n > without_reuse:
                raise ValueError(
                    f"only {without_reuse} pairs within ±{tolerance} tokens can be drawn without reusing a prompt "
                    f"({qualifying} qualifying combinations of {len(src)} sources x {len(tgt)} targets); ask for "
                    f"at most {without_reuse} pairs, widen the tolerance, or allow reuse"
                )
        for s in order:
            if s in matched:
                rounds.append((s, matched[s]))
                remaining[s, matched[s]] = False
    if len(rounds) < n:
        raise ValueError(
            f"only {qualifying} distinct (source, target) combinations are within ±{tolerance} tokens "
            f"({len(src)} sources x {len(tgt)} targets); ask for at most {qualifying} pairs or widen the tolerance"
        )
    pairs = [Pair(i, src[s].id, tgt[t].id, src[s].text, tgt[t].text) for i, (s, t) in enumerate(rounds[:n])]
    return MatchedPairing(pairs, int(tolerance), qualifying, int(without_reuse), len(src), len(tgt))
