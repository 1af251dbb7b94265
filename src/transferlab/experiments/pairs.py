"""A config's (source, target) pairs: the one place the preflight, the runner and the worker draw them.

Without ``prompts.length_tolerance`` this is
:func:`~transferlab.prompts.make_pairs` as configured. With it, only a source
and a target whose lengths differ by at most that many tokens are paired
(:func:`~transferlab.prompts.make_length_matched_pairs`); lengths are counted
with each model's own tokenizer in the run's format (``raw`` or ``chat``: the
template's tokens count on both sides alike), read without loading weights.
A run of several models pairs what is within the tolerance under every
tokenizer. Fewer qualifying pairs than ``prompts.n`` is refused before the
run directory exists, with how many qualify; the run records the counts
(:attr:`Pairing.info`, in ``metadata.json`` and the report).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..prompts import PromptBank, make_length_matched_pairs, make_pairs
from .config import ExperimentConfig


@dataclass
class Pairing:
    """The pairs, and for a length-matched draw what qualified (None otherwise)."""

    pairs: list
    info: dict | None = None


_TOKENIZERS: dict[str, object] = {}


def _tokenizer(spec: str, tokenizer_of: Callable[[str], object]):
    if spec not in _TOKENIZERS:
        tok = tokenizer_of(spec)
        if tok is None:
            raise ValueError(
                f"prompts.length_tolerance counts tokens with the model's tokenizer, and {spec}'s cannot be read "
                f"without loading the model (pull it first: transferlab models pull {spec})"
            )
        _TOKENIZERS[spec] = tok
    return _TOKENIZERS[spec]


def token_lengths(
    config: ExperimentConfig, texts: list[str], tokenizer_of: Callable[[str], object]
) -> dict[str, tuple[int, ...]]:
    """Tokens of each text in the run's format, one count per model of the config (``tokenizer_of(spec)``: the
    model's tokenizer, read without its weights, or None)."""
    from ..engine.batching import encode

    fmt = config.prompts.format
    distinct = sorted(set(texts))
    per_model = []
    for spec in config.model_specs():
        ids = encode(_tokenizer(spec.spec, tokenizer_of), distinct, fmt)
        per_model.append([len(i) for i in ids])
    return {t: tuple(counts[k] for counts in per_model) for k, t in enumerate(distinct)}


def config_pairs(config: ExperimentConfig, bank: PromptBank, tokenizer_of: Callable[[str], object]) -> Pairing:
    """The config's pairs drawn from ``bank`` (see the module docstring); ``ValueError`` when they cannot be.
    ``tokenizer_of``: a model spec's tokenizer without its weights (:func:`~.checks.model_tokenizer`)."""
    p = config.prompts
    sources, targets = bank.select(p.sources), bank.select(p.targets)
    if p.length_tolerance is None:
        return Pairing(make_pairs(sources, targets, p.n, p.pair_seed, reuse=p.reuse, length_match=p.length_match))
    lengths = token_lengths(config, [x.text for x in (*sources, *targets)], tokenizer_of)
    matched = make_length_matched_pairs(
        sources, targets, p.n, p.pair_seed, p.length_tolerance, lengths.__getitem__, reuse=p.reuse
    )
    info = {
        **matched.describe(),
        "measured_with": [s.spec for s in config.model_specs()],
        "format": p.format,
    }
    return Pairing(matched.pairs, info)
