"""Text primitives shared by the behavior scorers.

Two tokenizations are used on purpose, and every scorer says which one it
uses:

- **whitespace tokens** (``text.split()``): case-sensitive, punctuation stays
  attached. Only the legacy ``seed_v1`` score uses them, because the seed did.
- **word tokens** (:func:`words`): maximal runs of letters, digits and
  apostrophes inside a word, lowercased. Everything else uses these.

The repetition helpers (:func:`longest_periodic_run`, :func:`distinct_ngram_ratio`,
:func:`mattr`) are the building blocks of "degenerate text" in the ``strict``
and ``collapse`` scorers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_WORD_RE = re.compile(r"\w+(?:'\w+)*")
_LETTER_WORD_RE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")

#: Function words ignored by ``source_overlap`` (a small, fixed English list;
#: changing it changes that score, so it is versioned with the code).
STOPWORDS: frozenset[str] = frozenset(
    """
    a about above after again against all also am an and any are as at be because
    been before being below between both but by can could did do does doing down
    during each even ever every few for from further get got had has have having he
    her here hers herself him himself his how i if in into is it its itself just
    let like made make many may me might more most much must my myself never no nor
    not now of off on once one only or other our ours ourselves out over own per
    please same shall she should so some such than that the their theirs them
    themselves then there these they this those though through thus to too under
    until up upon us very was we were what when where which while who whom whose
    why will with within without would yet you your yours yourself yourselves
    i'm it's don't can't won't that's there's let's
    """.split()
)


def words(text: str) -> list[str]:
    """Lowercased word tokens: letters/digits/underscore, inner apostrophes kept."""
    return [w.lower() for w in _WORD_RE.findall(text)]


def content_words(text: str, min_len: int = 3) -> set[str]:
    """Distinct lowercased letter-only words of at least ``min_len`` characters
    that are not in :data:`STOPWORDS` (the "content" of a prompt)."""
    out = set()
    for m in _LETTER_WORD_RE.finditer(text):
        w = m.group(0).lower()
        if len(w) >= min_len and w not in STOPWORDS:
            out.add(w)
    return out


def longest_periodic_run(seq: Sequence, max_period: int) -> tuple[int, int]:
    """The longest stretch of ``seq`` that repeats a unit of at most
    ``max_period`` items back to back, as ``(period, length)``.

    ``length`` counts every item of the stretch, including the first unit, so
    the tokens of ``"x a b a b a b y"`` give ``(2, 6)``. A unit must occur at
    least twice in full to count; no repetition gives ``(0, 0)``. Among equally
    long runs the shortest period wins. ``length / period`` is the number of
    repeats (the stretch may end in a partial unit).

    For each period ``p`` the stretch is the longest run of positions ``i``
    with ``seq[i] == seq[i - p]``, plus the unit before it; long sequences
    compare all positions of a period at once (numpy), short ones item by item
    (:func:`_periodic_run_loop`, the reference the fast form is tested against).
    """
    n = len(seq)
    top = min(max_period, n // 2)
    if n < 64 or top < 1 or top * n > 1 << 22:  # short, nothing to search, or too large to compare at once
        return _periodic_run_loop(seq, max_period)
    try:
        codes = _codes(seq)
    except TypeError:  # items that cannot be hashed: compare them one by one
        return _periodic_run_loop(seq, max_period)
    same = np.zeros((top, n), dtype=np.int32)  # same[p - 1, i]: seq[i] == seq[i - p]
    for p in range(1, top + 1):
        same[p - 1, p:] = codes[p:] == codes[:-p]
    count = np.cumsum(same, axis=1)
    runs = count - np.maximum.accumulate(np.where(same == 0, count, 0), axis=1)  # run ending at each i
    longest = runs.max(axis=1)
    best_p, best_len = 0, 0
    for p, run in enumerate(longest.tolist(), start=1):
        if run >= p and run + p > best_len:
            best_p, best_len = p, run + p
    return best_p, best_len


def _codes(seq: Sequence) -> np.ndarray:
    """``seq`` as integers, equal where its items are equal (a string: its code points)."""
    if isinstance(seq, str):
        return np.frombuffer(seq.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    if all(isinstance(x, str) for x in seq):
        return np.unique(np.array(seq), return_inverse=True)[1]
    ids: dict = {}
    return np.fromiter((ids.setdefault(x, len(ids)) for x in seq), dtype=np.int64, count=len(seq))


def _periodic_run_loop(seq: Sequence, max_period: int) -> tuple[int, int]:
    """:func:`longest_periodic_run` item by item."""
    best_p, best_len = 0, 0
    n = len(seq)
    for p in range(1, min(max_period, n // 2) + 1):
        run = 0
        for i in range(p, n):
            if seq[i] == seq[i - p]:
                run += 1
                if run >= p and run + p > best_len:
                    best_p, best_len = p, run + p
            else:
                run = 0
    return best_p, best_len


def distinct_ngram_ratio(tokens: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams; 1.0 when there are no n-grams."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 1.0
    return len(set(grams)) / len(grams)


def mattr(tokens: Sequence[str], window: int) -> float:
    """Moving-average type-token ratio: the mean, over every window of
    ``window`` consecutive tokens, of distinct/total. Plain TTR when the text
    is shorter than the window; 1.0 for no tokens. Unlike plain TTR it does not
    fall just because a text is long."""
    n = len(tokens)
    if n == 0:
        return 1.0
    if n <= window:
        return len(set(tokens)) / n
    counts: dict[str, int] = {}
    for t in tokens[:window]:
        counts[t] = counts.get(t, 0) + 1
    total = len(counts)
    for i in range(window, n):
        out, inc = tokens[i - window], tokens[i]
        counts[out] -= 1
        if counts[out] == 0:
            del counts[out]
        counts[inc] = counts.get(inc, 0) + 1
        total += len(counts)
    return total / (n - window + 1) / window


def check_texts(texts: Sequence[str], name: str = "texts") -> list[str]:
    """Validate a batch of texts: a list/tuple of ``str`` (not one bare string)."""
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a list of strings, not a single string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] is {type(t).__name__}, expected str")
    return out
