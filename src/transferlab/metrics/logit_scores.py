"""Logit-based behavior scores, computed from recorded next-token distributions.

Text scores see only the sampled tokens; a logit score sees where the
probability mass went at every step, so it is far less noisy per example
and does not depend on the sampler's luck.

**The recorded-logits interface.** When asked, the generation engine
records a :data:`LogitRecord`: a dict from a *set name* to a float64 array
of shape ``(n_examples, n_steps)``. Entry ``[i, s]`` is the natural log of
the probability mass that example ``i``'s next-token distribution at
generated step ``s`` (after temperature, before any top-k/top-p) puts on the
token-id set with that name::

    log( sum_{v in set} softmax(logits_s / T)[v] )

Entries are NaN after the example finished (EOS or max tokens). An empty
id set gives ``-inf`` and propagates. Set names in use:

- ``"markers"``: the marker vocabulary (:func:`marker_token_ids`);
- ``"target_top"``: the tokens the target's own un-intervened generation
  ranked top-k at the same steps (the engine decides the details).

:func:`log_mass` computes one step of such a record from raw logits; it is
the reference the engine's recording is tested against.

**The score.** :func:`logit_mass_score` gives, per example, the mean over
valid steps of ``logmass[numerator] - logmass[denominator]``: the average
log-odds of "speaking in markers" versus "speaking as the target would".
Higher means the intervention moved mass toward the marker vocabulary. NaN
when an example has no valid step.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

LogitRecord = dict[str, np.ndarray]

_SPACE_MARKS = "▁Ġ"  # sentencepiece and byte-level BPE word-start marks


def _token_strings(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each id's text as the tokenizer decodes it alone (fallback: the raw
    token with word-start marks turned into spaces)."""
    if hasattr(tokenizer, "batch_decode"):
        return list(tokenizer.batch_decode([[i] for i in ids]))
    if hasattr(tokenizer, "decode"):
        return [tokenizer.decode([i]) for i in ids]
    toks = tokenizer.convert_ids_to_tokens(list(ids))
    return [t.translate(str.maketrans(_SPACE_MARKS, "  ")) for t in toks]


def marker_token_ids(tokenizer, words: Iterable[str], min_prefix: int = 3) -> list[int]:
    """Ids of vocabulary tokens that spell a marker word, or the start of one.

    A token qualifies when its decoded text, stripped of surrounding
    whitespace and lowercased, equals a (lowercased) marker or is a prefix of
    one at least ``min_prefix`` characters long: with markers
    ``["mirror"]``, tokens ``"mirror"``, ``" Mirror"``, ``"mir"`` qualify, ``"mi"``
    and ``"mirrors"`` do not. Multi-word markers match as whole strings
    (``"fixed point"`` gives the prefix ``"fixed"``, not ``"point"``).
    Special tokens never qualify. Works with any tokenizer exposing
    ``get_vocab()`` plus ``batch_decode``/``decode`` or
    ``convert_ids_to_tokens``. Returns sorted unique ids; warns when none
    qualifies (small vocabularies split most words into pieces shorter than
    ``min_prefix``: the embedded 512-token model has no token for the seed's
    markers at all), since an empty set makes every log-mass ``-inf``.
    """
    targets = sorted({w.strip().lower() for w in words if w.strip()})
    if not targets:
        raise ValueError("marker_token_ids needs at least one non-empty word")
    exact = set(targets)
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    ids = sorted(set(tokenizer.get_vocab().values()) - special)
    out = []
    for i, s in zip(ids, _token_strings(tokenizer, ids)):
        s = s.strip().lower()
        if not s:
            continue
        if s in exact or (len(s) >= min_prefix and any(t.startswith(s) for t in targets)):
            out.append(i)
    if not out:
        warnings.warn(
            f"no vocabulary token spells any of {targets[:8]} (or a {min_prefix}+ character prefix)", stacklevel=2
        )
    return out


def log_mass(logits: np.ndarray, ids: Sequence[int], temperature: float = 1.0) -> np.ndarray:
    """``log(sum_{v in ids} softmax(logits / temperature)[v])`` along the last axis.

    ``logits`` has shape ``(..., vocab)``; returns shape ``(...)``; ``-inf``
    for an empty id set.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    z = np.asarray(logits, dtype=np.float64) / temperature
    from scipy.special import logsumexp  # on first use: importing scipy.special takes ~0.5 s

    norm = logsumexp(z, axis=-1)
    idx = np.asarray(sorted(set(int(i) for i in ids)), dtype=np.int64)
    if idx.size == 0:
        return np.full(norm.shape, -np.inf)
    return logsumexp(z[..., idx], axis=-1) - norm


def validate_record(record: LogitRecord, names: Iterable[str] = ()) -> tuple[int, int]:
    """Check a record: 2-D arrays of one shape, the named sets present, no
    positive log-mass (a probability above 1). Returns ``(n_examples, n_steps)``."""
    if not record:
        raise ValueError("empty LogitRecord")
    missing = [n for n in names if n not in record]
    if missing:
        raise KeyError(f"LogitRecord lacks {missing}; it has {sorted(record)}")
    shape = None
    for name, arr in record.items():
        a = np.asarray(arr)
        if a.ndim != 2:
            raise ValueError(f"LogitRecord[{name!r}] must be 2-D (examples, steps), got {a.shape}")
        if shape is not None and a.shape != shape:
            raise ValueError(f"LogitRecord[{name!r}] has shape {a.shape}, others {shape}")
        shape = a.shape
        if np.any(a[np.isfinite(a)] > 1e-9):
            raise ValueError(f"LogitRecord[{name!r}] has log-mass > 0 (probability above 1)")
    return shape


def logit_mass_score(record: LogitRecord, numerator: str = "markers", denominator: str = "target_top") -> np.ndarray:
    """Per example: mean over valid steps of ``record[numerator] - record[denominator]``.

    A step is valid when neither entry is NaN. Examples with no valid step get
    NaN. Shape ``(n_examples,)``.
    """
    validate_record(record, (numerator, denominator))
    num = np.asarray(record[numerator], dtype=np.float64)
    den = np.asarray(record[denominator], dtype=np.float64)
    diff = num - den
    valid = ~(np.isnan(num) | np.isnan(den))
    n_valid = valid.sum(axis=1)
    total = np.where(valid, diff, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_valid > 0, total / np.maximum(n_valid, 1), np.nan)


def valid_steps(record: LogitRecord, names: Sequence[str] = ("markers", "target_top")) -> np.ndarray:
    """Per example, the number of steps where none of ``names`` is NaN."""
    validate_record(record, names)
    valid = np.ones(np.asarray(record[names[0]]).shape, dtype=bool)
    for n in names:
        valid &= ~np.isnan(np.asarray(record[n], dtype=np.float64))
    return valid.sum(axis=1)


LogitScore = Callable[[LogitRecord], np.ndarray]

#: Logit scores by name; each maps a record to one value per example.
LOGIT_SCORES: dict[str, LogitScore] = {
    "logit_markers_vs_target": lambda r: logit_mass_score(r, "markers", "target_top"),
}


def register_logit_score(name: str, fn: LogitScore, overwrite: bool = False) -> None:
    """Add a logit score ``fn(record) -> array (n_examples,)``."""
    if name in LOGIT_SCORES and not overwrite:
        raise ValueError(f"logit score {name!r} is already registered (pass overwrite=True)")
    LOGIT_SCORES[name] = fn


def logit_score_table(record: LogitRecord, names: Sequence[str] | None = None) -> pd.DataFrame:
    """The logit counterpart of ``score_table``: one column per logit score
    (default: all registered) plus ``logit_valid_steps`` (steps where both
    ``markers`` and ``target_top`` are recorded, if present)."""
    n_examples, _ = validate_record(record)
    names = list(LOGIT_SCORES) if names is None else list(names)
    cols = {}
    for n in names:
        if n not in LOGIT_SCORES:
            raise KeyError(f"unknown logit score {n!r}; registered: {sorted(LOGIT_SCORES)}")
        vals = np.asarray(LOGIT_SCORES[n](record), dtype=np.float64)
        if vals.shape != (n_examples,):
            raise ValueError(f"logit score {n!r} returned shape {vals.shape}, expected ({n_examples},)")
        cols[n] = vals
    if {"markers", "target_top"} <= set(record):
        cols["logit_valid_steps"] = valid_steps(record)
    return pd.DataFrame(cols)
