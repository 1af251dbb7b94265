"""``seed_v1``: the seed's legacy behavior score, reproduced exactly, quirks included.

Definition (SEED_FACTS.md):

- 21 markers (:data:`SEED_MARKERS`). The score counts how many *distinct*
  markers occur as substrings of ``text.lower()``: presence, not count.
- +5 "repetition bonus" when the text has **more than 10** whitespace tokens
  (``text.split()``) **and fewer than 60 %** of them are distinct. Tokens are
  compared case-sensitively with punctuation attached.
- Range 0 to 26 (21 markers + 5).

Quirks that are part of the definition and are deliberately *not* fixed here
(use the ``lexicon`` scorer with ``match="word"`` or ``strict`` for a fairer
measure):

- Substrings, not words. ``"itself"`` always also scores ``"self"`` (so does
  ``herself``, ``yourself``, ``selfish``, ``self-reference``);
  ``"dissolution"``/``"resolution"`` score ``"solution"``; ``"bicycle"`` and
  ``"recycle"`` score ``"cycle"``; ``"returned"`` scores ``"return"``;
  ``"processing"`` scores ``"process"``; ``"rewriting"`` scores ``"writing"``;
  ``"eigenvalue"`` scores ``"eigen"``; ``"the answerer is"`` scores
  ``"answerer"`` but not ``"answer is"`` (the letters between differ).
- ``"recursive"`` is a marker, ``"recursion"`` is not (it does not contain it).
- Multi-word markers need exactly one ASCII space: ``"fixed point"`` and
  ``"answer is"`` miss ``"fixed-point"``, ``"fixed  point"`` or
  ``"fixed\\npoint"``.
- The bonus boundary is strict on both sides: exactly 10 tokens never gets
  it; exactly 60 % distinct (e.g. 6 of 10, 9 of 15) does not either.
  ``"Loop"`` and ``"loop"`` and ``"loop."`` are three different tokens for the
  bonus, though they are one marker.
- It rewards echoing the source prompt: the seed's champion prompt itself
  contains 8 markers. Report ``source_overlap`` beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

from transferlab.metrics.text import check_texts

#: The seed's 21 markers, in the seed's order.
SEED_MARKERS: tuple[str, ...] = (
    "itself",
    "self",
    "recursive",
    "loop",
    "process",
    "cycle",
    "return",
    "eigen",
    "writing",
    "mirror",
    "awareness",
    "consciousness",
    "observer",
    "observing",
    "generating",
    "emerging",
    "simultaneous",
    "fixed point",
    "solution",
    "answerer",
    "answer is",
)

#: Points added by the repetition bonus.
REPETITION_BONUS = 5
#: The bonus needs strictly more than this many whitespace tokens ...
BONUS_MIN_TOKENS_EXCLUSIVE = 10
#: ... and a distinct/total ratio strictly below this.
BONUS_MAX_DISTINCT_RATIO_EXCLUSIVE = 0.6


def seed_v1_markers_found(text: str) -> list[str]:
    """The seed markers present (as lowercase substrings) in ``text``."""
    low = text.lower()
    return [m for m in SEED_MARKERS if m in low]


def seed_v1_repetition_bonus(text: str) -> int:
    """5 when the seed's repetition rule fires for ``text``, else 0."""
    toks = text.split()
    if len(toks) > BONUS_MIN_TOKENS_EXCLUSIVE and (len(set(toks)) / len(toks) < BONUS_MAX_DISTINCT_RATIO_EXCLUSIVE):
        return REPETITION_BONUS
    return 0


def seed_v1_score(text: str) -> int:
    """The legacy score of one text: distinct markers found + repetition bonus."""
    return len(seed_v1_markers_found(text)) + seed_v1_repetition_bonus(text)


class SeedV1Scorer:
    """Scorer form of :func:`seed_v1_score` (no parameters; sources unused)."""

    name = "seed_v1"
    needs: frozenset[str] = frozenset()
    bounds = (0.0, float(len(SEED_MARKERS) + REPETITION_BONUS))

    def __call__(self, texts: Sequence[str], sources: Sequence[str] | None = None) -> list[float]:
        return [float(seed_v1_score(t)) for t in check_texts(texts)]


class SeedV1MarkersScorer:
    """``seed_v1`` without its +5 repetition bonus: distinct markers only (0-21).

    Shown beside ``seed_v1`` so that a gain made of the bonus alone (degenerate,
    repetitive text scores +5) is visible as such.
    """

    name = "seed_v1_markers"
    needs: frozenset[str] = frozenset()
    bounds = (0.0, float(len(SEED_MARKERS)))

    def __call__(self, texts: Sequence[str], sources: Sequence[str] | None = None) -> list[float]:
        return [float(len(seed_v1_markers_found(t))) for t in check_texts(texts)]
