"""Lexical scorers: marker lexicons and echo of the source prompt.

- ``lexicon``: one configurable marker set for every text.
- ``source_lexicon``: each text scored against *its own* marker list (the
  stories bank gives every source prompt a lexicon; the runner passes the
  lexicon of each pair's source).
- ``source_overlap``: how much of the source prompt's content vocabulary the
  generated text repeats. It measures the seed's hidden confound (a score
  that rises just because the source's words leak into the continuation);
  reports show it beside every behavior score.
- ``target_overlap``: the mirror of ``source_overlap`` over the *target*
  prompt's content words: how much of the target's task survives (a
  target-fidelity score).

Matching rules (shared by ``lexicon`` and ``source_lexicon``):

- ``match="substring"``: the marker is found anywhere, like the seed did
  (``"self"`` inside ``"itself"``).
- ``match="word"``: the marker must stand as whole words: not preceded or
  followed by a letter, digit or underscore. Words of a multi-word marker may
  be separated by any run of whitespace. With ``inflections=True`` a marker
  also matches with a plain ``s``/``es``/``'s`` ending (``kite`` ->
  ``kites``, ``Zog`` -> ``Zog's``); nothing cleverer.
- ``case_sensitive=False`` (default) lowercases both sides.
- ``count=False`` scores the number of *distinct* markers present;
  ``count=True`` the total number of (non-overlapping) occurrences.
- ``fraction=True`` divides by the number of markers (presence only), so
  lexicons of different sizes are comparable: the result is in [0, 1].
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache

from transferlab.metrics.seed_v1 import SEED_MARKERS
from transferlab.metrics.text import check_texts, content_words, words

_MATCH_MODES = ("substring", "word")


@lru_cache(maxsize=4096)
def _pattern(marker: str, match: str, inflections: bool, case_sensitive: bool) -> re.Pattern:
    flags = 0 if case_sensitive else re.IGNORECASE
    if match == "substring":
        return re.compile(re.escape(marker), flags)
    body = r"\s+".join(re.escape(w) for w in marker.split())
    suffix = r"(?:s|es|'s|’s)?" if inflections else ""
    return re.compile(rf"(?<!\w){body}{suffix}(?!\w)", flags)


def count_markers(
    text: str,
    markers: Sequence[str],
    *,
    match: str = "word",
    count: bool = False,
    inflections: bool = False,
    case_sensitive: bool = False,
) -> int:
    """Distinct markers present (``count=False``) or total occurrences
    (``count=True``) of ``markers`` in ``text`` under the matching rules above."""
    if match not in _MATCH_MODES:
        raise ValueError(f"match must be one of {_MATCH_MODES}, got {match!r}")
    total = 0
    for m in dict.fromkeys(markers):  # de-duplicate, keep order
        if not m.strip():
            raise ValueError("empty marker")
        found = _pattern(m, match, inflections, case_sensitive).findall(text)
        total += len(found) if count else int(bool(found))
    return total


def _check_options(match: str, count: bool, fraction: bool) -> None:
    if match not in _MATCH_MODES:
        raise ValueError(f"match must be one of {_MATCH_MODES}, got {match!r}")
    if count and fraction:
        raise ValueError("fraction=True is only defined for presence (count=False)")


class LexiconScorer:
    """``lexicon``: one marker set for all texts.

    Defaults to the seed's 21 markers as whole words, presence, so
    ``get_scorer("lexicon")`` is the word-boundary cousin of ``seed_v1``
    (without its repetition bonus).
    """

    name = "lexicon"
    needs: frozenset[str] = frozenset()

    def __init__(
        self,
        markers: Sequence[str] = SEED_MARKERS,
        match: str = "word",
        count: bool = False,
        inflections: bool = False,
        case_sensitive: bool = False,
        fraction: bool = False,
    ) -> None:
        _check_options(match, count, fraction)
        if isinstance(markers, str) or not markers:
            raise ValueError("markers must be a non-empty list of strings")
        self.markers = tuple(markers)
        self.match, self.count, self.fraction = match, count, fraction
        self.inflections, self.case_sensitive = inflections, case_sensitive

    def __call__(self, texts: Sequence[str], sources: Sequence[str] | None = None) -> list[float]:
        out = []
        for t in check_texts(texts):
            v = count_markers(
                t,
                self.markers,
                match=self.match,
                count=self.count,
                inflections=self.inflections,
                case_sensitive=self.case_sensitive,
            )
            out.append(v / len(set(self.markers)) if self.fraction else float(v))
        return out


class SourceLexiconScorer:
    """``source_lexicon``: each text against its own marker list.

    Call as ``scorer(texts, sources=None, lexicons=[[...], [...], ...])`` with
    one lexicon per text (the lexicon of that pair's source prompt;
    ``Prompt.markers`` in the stories bank). Default: whole words with simple
    inflections, presence, as a fraction of the lexicon (0 to 1). An empty
    lexicon gives NaN (there is nothing to transfer), never 0.
    """

    name = "source_lexicon"
    needs: frozenset[str] = frozenset({"lexicons"})

    def __init__(
        self,
        match: str = "word",
        count: bool = False,
        inflections: bool = True,
        case_sensitive: bool = False,
        fraction: bool = True,
    ) -> None:
        _check_options(match, count, fraction)
        self.match, self.count, self.fraction = match, count, fraction
        self.inflections, self.case_sensitive = inflections, case_sensitive

    def __call__(
        self,
        texts: Sequence[str],
        sources: Sequence[str] | None = None,
        lexicons: Sequence[Sequence[str]] | None = None,
    ) -> list[float]:
        texts = check_texts(texts)
        if lexicons is None:
            raise ValueError("source_lexicon needs lexicons=[one marker list per text]")
        if len(lexicons) != len(texts):
            raise ValueError(f"got {len(lexicons)} lexicons for {len(texts)} texts")
        out = []
        for i, (t, lex) in enumerate(zip(texts, lexicons)):
            if lex is None or isinstance(lex, str):
                raise TypeError(f"lexicons[{i}] must be a list of strings")
            distinct = set(lex)
            if not distinct:
                out.append(math.nan)
                continue
            v = count_markers(
                t,
                list(lex),
                match=self.match,
                count=self.count,
                inflections=self.inflections,
                case_sensitive=self.case_sensitive,
            )
            out.append(v / len(distinct) if self.fraction else float(v))
        return out


def prompt_overlap(texts: Sequence[str], prompts: Sequence[str], min_len: int, what: str) -> list[float]:
    """Per text, the share of its prompt's distinct content words that reappear in it as lowercased whole words.

    The one computation behind ``source_overlap`` and ``target_overlap``
    (``prompts`` are the source or the target prompts of the same pairs;
    ``what`` names them in errors). NaN where a prompt has no content words.
    """
    texts = check_texts(texts)
    prompts = check_texts(prompts, what)
    if len(prompts) != len(texts):
        raise ValueError(f"got {len(prompts)} {what} for {len(texts)} texts")
    out = []
    for t, s in zip(texts, prompts):
        vocab = content_words(s, min_len)
        if not vocab:
            out.append(math.nan)
            continue
        out.append(len(vocab & set(words(t))) / len(vocab))
    return out


class SourceOverlapScorer:
    """``source_overlap``: fraction of the source's distinct content words
    that reappear (as lowercased whole words) in the generated text.

    Content words are letter-only words of at least ``min_len`` characters not
    in :data:`~transferlab.metrics.text.STOPWORDS`; no stemming (``loops`` does
    not match ``loop``). Range 0 to 1; NaN when the source has no content
    words. High overlap means the "behavior" may only be an echo of the source
    prompt: the seed's champion contained 8 of its own 21 markers.
    """

    name = "source_overlap"
    needs: frozenset[str] = frozenset({"sources"})
    bounds = (0.0, 1.0)

    def __init__(self, min_len: int = 3) -> None:
        self.min_len = min_len

    def __call__(self, texts: Sequence[str], sources: Sequence[str] | None = None) -> list[float]:
        if sources is None:
            raise ValueError("source_overlap needs sources= (the source prompt of each text)")
        return prompt_overlap(texts, sources, self.min_len, "sources")


class TargetOverlapScorer:
    """``target_overlap``: fraction of the *target's* distinct content words that
    reappear in the generated text -- the mirror of ``source_overlap``, with the
    same words, stopwords and rules.

    A target-fidelity score: a continuation that still does the target's task
    mostly talks about the target's subject (a baseline uses about half of its
    target's content words), one that answers the source instead uses almost
    none. Range 0 to 1; NaN when the target has no content words. The runner
    passes each pair's target prompt, also for rows generated from the source
    (``source_direct``: how much of the target's task the ceiling happens to do).
    """

    name = "target_overlap"
    needs: frozenset[str] = frozenset({"targets"})
    bounds = (0.0, 1.0)

    def __init__(self, min_len: int = 3) -> None:
        self.min_len = min_len

    def __call__(
        self, texts: Sequence[str], sources: Sequence[str] | None = None, targets: Sequence[str] | None = None
    ) -> list[float]:
        if targets is None:
            raise ValueError("target_overlap needs targets= (the target prompt of each text)")
        return prompt_overlap(texts, targets, self.min_len, "targets")
