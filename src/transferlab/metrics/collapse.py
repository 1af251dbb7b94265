"""``collapse``: did generation break down?

A text is *collapsed* (score 1.0; else 0.0) when any of these holds, checked
in this order (:func:`collapse_reason` names the first that fired):

1. ``"empty"``: fewer than ``min_words`` word tokens (default 3), which
   covers empty output, whitespace, lone punctuation and one-word replies.
2. ``"loop"``: a unit of 1 to ``max_period`` word tokens (default 8) repeats
   back to back at least ``min_repeats`` times (default 3) and that run covers
   at least ``loop_fraction`` (default 0.5) of all word tokens.
3. ``"char_loop"``: the same inside words: a unit of up to 12 characters
   repeated at least 5 times covering at least ``loop_fraction`` of the
   non-space characters (``"hahahahaha..."``, ``"!!!!!!!!"``, ``"abcabcabc"``).
4. ``"low_diversity"``: at least 20 word tokens and fewer than
   ``min_distinct_4gram`` (default 0.3) of the 4-grams are distinct: loops
   with small variations that defeat rule 2.

Word tokens are :func:`~transferlab.metrics.text.words` (lowercased, no
punctuation), so ``"Go. go, GO!"`` is a loop of ``go``.
"""

from __future__ import annotations

from collections.abc import Sequence

from transferlab.metrics.text import check_texts, distinct_ngram_ratio, longest_periodic_run, words


class CollapseScorer:
    """Scorer form of :func:`collapse_reason`: 1.0 collapsed, 0.0 not."""

    name = "collapse"
    needs: frozenset[str] = frozenset()
    bounds = (0.0, 1.0)

    def __init__(
        self,
        min_words: int = 3,
        max_period: int = 8,
        min_repeats: int = 3,
        loop_fraction: float = 0.5,
        min_distinct_4gram: float = 0.3,
    ) -> None:
        self.min_words, self.max_period, self.min_repeats = min_words, max_period, min_repeats
        self.loop_fraction, self.min_distinct_4gram = loop_fraction, min_distinct_4gram

    def reason(self, text: str) -> str | None:
        """Why ``text`` counts as collapsed, or None if it does not."""
        toks = words(text)
        if len(toks) < self.min_words:
            return "empty"
        p, run = longest_periodic_run(toks, self.max_period)
        if p and run >= self.min_repeats * p and run >= self.loop_fraction * len(toks):
            return "loop"
        chars = "".join(text.split())
        cp, crun = longest_periodic_run(chars, 12)
        if cp and crun >= 5 * cp and crun >= self.loop_fraction * len(chars):
            return "char_loop"
        if len(toks) >= 20 and distinct_ngram_ratio(toks, 4) < self.min_distinct_4gram:
            return "low_diversity"
        return None

    def __call__(self, texts: Sequence[str], sources: Sequence[str] | None = None) -> list[float]:
        return [1.0 if self.reason(t) else 0.0 for t in check_texts(texts)]


def collapse_reason(text: str, **params) -> str | None:
    """Why ``text`` counts as collapsed under default (or given) thresholds."""
    return CollapseScorer(**params).reason(text)
