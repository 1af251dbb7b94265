"""The behavior-scorer registry.

A **scorer** is a callable ``scorer(texts, sources=None, **context) ->
list[float]``: one float per generated text, NaN where the score is
undefined (never a silent 0). ``sources`` are the source prompts of the same
pairs; scorers that need them say so in their ``needs`` attribute. The other
context: ``lexicons`` (one marker list per text) for ``source_lexicon``,
``targets`` (the target prompt of each text) for ``target_overlap``,
``answers`` (the accepted answers of each text's target, or None) for
``answer``.

Built-in scorers (``SCORERS`` maps each name to its :class:`ScorerSpec`):

=================  =======================================================  ========
name               meaning                                                  range
=================  =======================================================  ========
``seed_v1``        the seed's legacy keyword score, quirks included          0-26
``seed_v1_markers`` seed_v1 without the +5 repetition bonus                0-21
``lexicon``        configurable marker set (substring/word, presence/count)  >= 0
``source_lexicon`` each text vs its own source's lexicon (fraction found)    0-1
``strict``         degeneracy gate, then self-referential structure          0-1
``source_overlap`` share of the source's content words echoed (confound)    0-1
``collapse``       1.0 if the text is empty or a repetition loop             {0, 1}
``target_overlap`` share of the target's content words used (fidelity)     0-1
``answer``         1.0 if the text contains its target's known answer       {0, 1}
=================  =======================================================  ========

``target_overlap`` and ``answer`` are *target-fidelity* scores: they ask
whether the target's task survives an intervention, where the others ask
whether the source's behavior arrived.

``get_scorer(name, **params)`` builds one (``params`` go to its
constructor, e.g. ``get_scorer("lexicon", markers=["dragon"], match="word")``);
``score_table`` runs several and returns a table; ``register_scorer`` adds
your own. Logit-based scores work on recorded distributions, not texts: see
:mod:`transferlab.metrics.logit_scores`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from transferlab.metrics.answers import AnswerScorer
from transferlab.metrics.collapse import CollapseScorer
from transferlab.metrics.lexical import LexiconScorer, SourceLexiconScorer, SourceOverlapScorer, TargetOverlapScorer
from transferlab.metrics.seed_v1 import SeedV1MarkersScorer, SeedV1Scorer
from transferlab.metrics.strict import StrictScorer
from transferlab.suggest import unknown

Scorer = Callable[..., list[float]]

#: Context keywords a scorer may need besides ``texts``.
KNOWN_NEEDS = frozenset({"sources", "lexicons", "targets", "answers"})


@dataclass(frozen=True)
class ScorerSpec:
    """A registered scorer: how to build it and what it needs.

    ``factory(**params)`` returns the scorer callable. ``needs`` names the
    context it requires (``"sources"``, ``"lexicons"``, ``"targets"``, ``"answers"``).
    """

    name: str
    factory: Callable[..., Scorer]
    needs: frozenset[str] = field(default_factory=frozenset)
    description: str = ""


SCORERS: dict[str, ScorerSpec] = {}


def _first_doc_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def register_scorer(
    name: str,
    scorer: Callable,
    *,
    factory: bool | None = None,
    needs: Sequence[str] | None = None,
    description: str | None = None,
    overwrite: bool = False,
) -> ScorerSpec:
    """Add a scorer to :data:`SCORERS`.

    ``scorer`` is either a **factory** -- ``get_scorer(name, **params)``
    calls ``scorer(**params)`` to build the scorer -- or the scorer itself, a
    callable ``f(texts, sources=None) -> list[float]`` used as is (it then
    takes no parameters). Classes are factories; other callables are scorers
    unless ``factory=True``. ``needs`` defaults to the object's ``needs``
    attribute, else nothing. Re-registering a name is an error unless
    ``overwrite=True``.
    """
    if not name or not isinstance(name, str):
        raise ValueError("scorer name must be a non-empty string")
    if name in SCORERS and not overwrite:
        raise ValueError(f"scorer {name!r} is already registered (pass overwrite=True)")
    if not callable(scorer):
        raise TypeError("scorer must be a class or a callable")
    need_set = frozenset(needs if needs is not None else getattr(scorer, "needs", ()))
    unknown = need_set - KNOWN_NEEDS
    if unknown:
        raise ValueError(f"unknown needs {sorted(unknown)}; known: {sorted(KNOWN_NEEDS)}")
    if factory is None:
        factory = inspect.isclass(scorer)
    if factory:
        build = scorer
    else:

        def build(**params):
            if params:
                raise TypeError(f"scorer {name!r} takes no parameters, got {sorted(params)}")
            return scorer

    spec = ScorerSpec(name, build, need_set, description or _first_doc_line(scorer))
    SCORERS[name] = spec
    return spec


def get_scorer(name: str, **params) -> Scorer:
    """Build the scorer registered as ``name`` with constructor ``params``."""
    try:
        spec = SCORERS[name]
    except KeyError:
        raise KeyError(unknown("scorer", name, SCORERS)) from None
    return spec.factory(**params)


def score_table(
    texts: Sequence[str],
    sources: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    *,
    lexicons: Sequence[Sequence[str]] | None = None,
    targets: Sequence[str] | None = None,
    answers: Sequence[Sequence[str] | None] | None = None,
    params: Mapping[str, Mapping] | None = None,
) -> pd.DataFrame:
    """Run several scorers; one column per name, one row per text.

    ``names`` defaults to ``seed_v1, strict, collapse``, plus
    ``source_overlap`` when ``sources`` are given. ``params`` maps a scorer
    name to its constructor parameters. Each scorer gets only the context it
    ``needs``: ``sources`` for ``source_overlap``, ``lexicons`` for
    ``source_lexicon``, ``targets`` for ``target_overlap``, ``answers`` for
    ``answer``. A scorer whose needs are missing raises, naming the
    scorer.
    """
    if names is None:
        names = ["seed_v1", "strict", "collapse"] + (["source_overlap"] if sources is not None else [])
    names = list(names)
    params = dict(params or {})
    stray = set(params) - set(names)
    if stray:
        raise ValueError(f"params given for scorers not in names: {sorted(stray)}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate scorer names in {list(names)}")
    texts = list(texts)
    context = {"sources": sources, "lexicons": lexicons, "targets": targets, "answers": answers}
    cols: dict[str, list[float]] = {}
    for name in names:
        spec = SCORERS.get(name)
        if spec is None:
            raise KeyError(unknown("scorer", name, SCORERS))
        scorer = spec.factory(**params.get(name, {}))
        kwargs = {}
        for need in spec.needs:
            if context[need] is None:
                raise ValueError(f"scorer {name!r} needs {need}=, which was not given")
            if need != "sources":
                kwargs[need] = context[need]
        src = sources if "sources" in spec.needs else None
        values = scorer(texts, src, **kwargs)
        if len(values) != len(texts):
            raise ValueError(f"scorer {name!r} returned {len(values)} values for {len(texts)} texts")
        cols[name] = [float(v) for v in values]
    return pd.DataFrame(cols, index=pd.RangeIndex(len(texts)), columns=list(names))


for _cls in (
    SeedV1Scorer,
    SeedV1MarkersScorer,
    LexiconScorer,
    SourceLexiconScorer,
    StrictScorer,
    SourceOverlapScorer,
    CollapseScorer,
    TargetOverlapScorer,
    AnswerScorer,
):
    register_scorer(_cls.name, _cls)
del _cls
