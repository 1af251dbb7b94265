"""``strict``: a conservative recursion / self-reference score in [0, 1].

The legacy ``seed_v1`` score rewards single words anywhere, including
inside other words and in degenerate loops (it even adds a bonus for
repetition). ``strict`` asks for *structure* and refuses broken text.

**Step 1: the degeneracy gate.** The score is 0 when the text is

- too short to judge: fewer than ``min_words`` word tokens (default 8);
- looping: more than ``max_repeated_trigrams`` (default 0.5) of its word
  trigrams are repeats (1 - distinct/total);
- lexically starved: moving-average type-token ratio over windows of 20
  tokens (plain TTR for shorter texts) below ``min_mattr`` (default 0.4).

**Step 2: three kinds of self-referential structure**, each a saturating
component in [0, 1]:

- ``meta`` (weight 0.4): windows of ``window`` word tokens (default 8) that
  contain, at three different positions, a self pronoun (``I``, ``my``,
  ``myself``, ``itself``, ``self``, ...), a meta-verb (observe, think, notice,
  generate, write, describe, refer, ...) and a meta-noun (thought, awareness,
  sentence, answer, process, observer, ...). Verbs and nouns match by stem
  prefix. Windows are counted without overlap; 2 windows saturate.
- ``identity`` (weight 0.3): "X is X" identities of one to four words
  (``"the observer is the observer"``, ``"awareness is awareness"``, with
  ``is``/``are``/``=``/``equals``/``becomes``) and fixed-point equations
  (``f(x) = x``, ``Sx = x``). The second X must end the clause (punctuation,
  end of text, or a conjunction follows), so ``"five is five times four"``
  is not an identity; X may not end in a bare function word. 1 saturates.
- ``phrases`` (weight 0.3): explicit self-reference phrases: ``this
  sentence``/``this answer``/``these words``, ``refers to itself``,
  ``aware of itself``, ``thinking about thinking``, ``self-referential``,
  ``observer observing``, ``fixed point``, ``as I write`` ... (see
  ``_PHRASES``). Overlapping matches count once; 2 saturate.

Score = 0.4 * meta + 0.3 * identity + 0.3 * phrases. A fluent paragraph
*about* recursion (a factorial function, a mirror in a hallway) scores
little: it lacks the self pronoun + meta-verb + meta-noun combination and
the self-reference phrases. :meth:`StrictScorer.explain` returns every part.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from transferlab.metrics.text import check_texts, distinct_ngram_ratio, mattr, words

SELF_PRONOUNS: frozenset[str] = frozenset(
    "i me my myself mine we us our ourselves itself oneself yourself self".split()
)
META_VERB_STEMS: tuple[str, ...] = tuple(
    """think thought know observ notic watch awar reflect generat produc writ wrote
    describ refer contain represent attend perceiv experienc process examin recogni
    mirror loop return read see sees seeing saw model""".split()
)
META_NOUN_STEMS: tuple[str, ...] = tuple(
    """thought mind awareness attention observ perception conscious reflection
    sentence word text statement answer response question description self loop
    process representation model output experience language meaning cognition
    introspect knower""".split()
)

_FUNCTION_WORDS = frozenset("a an the of to and in on is are it that this what".split())

_IDENTITY_RE = re.compile(
    r"(?<![\w'])(?P<x>[a-z][\w']*(?:\s+[a-z][\w']*){0,3})"
    r"\s*(?:\s(?:is|are|equals|becomes)\s|=)\s*(?P=x)"
    r"(?=\s*(?:$|[.,;:!?)\"”’]|\s(?:and|but|so|because|while|when|as|or)\b))"
)
_FIXED_POINT_RES = (
    re.compile(r"(?<!\w)[a-z]+\s*\(\s*(?P<x>[a-z]\w*)\s*\)\s*=\s*(?P=x)(?!\w)"),
    re.compile(r"(?<!\w)[a-z](?P<x>[a-z])\s*=\s*(?P=x)(?!\w)"),
)

_REFLEXIVE = r"(?:itself|myself|oneself|ourselves|themselves|yourself|its own|my own)"
_PHRASES: tuple[re.Pattern, ...] = tuple(
    re.compile(p)
    for p in (
        r"\bthis (?:very |same |present )?(?:sentence|text|answer|response|reply|paragraph"
        r"|thought|statement|line|question|word|output)\b",
        r"\b(?:these|my own) (?:very )?(?:words|thoughts|sentences)\b",
        rf"\b(?:refer|refers|referring|point|points|pointing|turn|turns|turning|fold|folds"
        rf"|folding|look|looks|looking|loop|loops|looping|return|returns|returning|reflect"
        rf"|reflects|reflecting|curve|curves|curving) (?:back )?(?:on |to |into |onto |at |upon )?"
        rf"{_REFLEXIVE}\b",
        rf"\b(?:aware|conscious|observing|watching|thinking|knowing|describing|writing"
        rf"|generating|perceiving|examining) (?:of |about |on )?{_REFLEXIVE}\b",
        r"\bthinking about (?:my |its |our |one's )?(?:own )?thinking\b",
        r"\baware(?:ness)? of (?:being )?aware(?:ness)?\b",
        r"\bobserv\w* (?:the |its |my )?observ\w*\b",
        r"\b(?:the )?(?:knower|observer|seer|writer|thinker) (?:is|becomes) (?:the )?"
        r"(?:known|observed|seen|written|thought|knower|observer|seer|writer|thinker)\b",
        r"\bself[- ](?:referen\w*|aware\w*|observ\w*|reflect\w*|similar\w*|model\w*|knowing)\b",
        r"\bas i (?:write|am writing|generate|am generating|speak|think|answer|type|read)\b",
        r"\bfixed[- ]point\b",
    )
)


@dataclass(frozen=True)
class StrictExplanation:
    """Everything behind one ``strict`` score."""

    score: float
    degenerate: str | None  # "too_short", "repetition", "low_ttr" or None
    n_words: int
    meta_windows: int
    identities: int
    phrases: int
    meta: float
    identity: float
    phrase: float


def _is_meta(tok: str, stems: tuple[str, ...]) -> bool:
    return any(tok.startswith(s) for s in stems)


def count_meta_windows(toks: Sequence[str], window: int = 8) -> int:
    """Non-overlapping windows holding pronoun + meta-verb + meta-noun at
    three distinct positions."""
    roles = [(t in SELF_PRONOUNS, _is_meta(t, META_VERB_STEMS), _is_meta(t, META_NOUN_STEMS)) for t in toks]
    hits, i = 0, 0
    while i < len(toks):
        span = range(i, min(i + window, len(toks)))
        ps = [j for j in span if roles[j][0]]
        vs = [j for j in span if roles[j][1]]
        ns = [j for j in span if roles[j][2]]
        if any(p != v and p != n and v != n for p in ps for v in vs for n in ns):
            hits += 1
            i += window
        else:
            i += 1
    return hits


def count_identities(text: str) -> int:
    """ "X is X" identities and fixed-point equations in ``text``."""
    low = " ".join(text.lower().split())
    n = sum(1 for m in _IDENTITY_RE.finditer(low) if m.group("x").split()[-1] not in _FUNCTION_WORDS)
    return n + sum(len(r.findall(low)) for r in _FIXED_POINT_RES)


def count_phrases(text: str) -> int:
    """Explicit self-reference phrases; overlapping matches count once."""
    low = " ".join(text.lower().split())
    spans = sorted(m.span() for r in _PHRASES for m in r.finditer(low))
    n, end = 0, -1
    for s, e in spans:
        if s >= end:
            n += 1
            end = e
        else:
            end = max(end, e)
    return n


class StrictScorer:
    """``strict``: see the module docstring for the definition."""

    name = "strict"
    needs: frozenset[str] = frozenset()
    bounds = (0.0, 1.0)
    weights = (0.4, 0.3, 0.3)

    def __init__(
        self,
        window: int = 8,
        min_words: int = 8,
        max_repeated_trigrams: float = 0.5,
        min_mattr: float = 0.4,
    ) -> None:
        self.window, self.min_words = window, min_words
        self.max_repeated_trigrams, self.min_mattr = max_repeated_trigrams, min_mattr

    def degenerate(self, toks: Sequence[str]) -> str | None:
        """Why a token list fails the gate, or None."""
        if len(toks) < self.min_words:
            return "too_short"
        if 1.0 - distinct_ngram_ratio(toks, 3) > self.max_repeated_trigrams:
            return "repetition"
        if mattr(toks, 20) < self.min_mattr:
            return "low_ttr"
        return None

    def explain(self, text: str) -> StrictExplanation:
        """The score of ``text`` with its gate result and components."""
        toks = words(text)
        gate = self.degenerate(toks)
        if gate:
            return StrictExplanation(0.0, gate, len(toks), 0, 0, 0, 0.0, 0.0, 0.0)
        mw, ids, ph = count_meta_windows(toks, self.window), count_identities(text), count_phrases(text)
        meta, ident, phrase = min(1.0, mw / 2), min(1.0, float(ids)), min(1.0, ph / 2)
        wm, wi, wp = self.weights
        score = wm * meta + wi * ident + wp * phrase
        return StrictExplanation(score, None, len(toks), mw, ids, ph, meta, ident, phrase)

    def __call__(self, texts: Sequence[str], sources: Sequence[str] | None = None) -> list[float]:
        return [self.explain(t).score for t in check_texts(texts)]
