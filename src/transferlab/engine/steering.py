"""Building steering vectors: the mean activation difference between two groups of prompts (CAA / ActAdd).

For a site and a layer, each prompt is reduced to one vector, then

    vector = mean over the positive prompts - mean over the negative prompts

(the positive group holds the behavior to add: in the research bank the
recursive prompts, against the baseline groups). How a prompt is reduced is
``position``:

- ``"mean"`` (default): the mean over the prompt's *message* tokens -- in
  ``raw`` format every token but BOS; in ``chat`` format the tokens of the
  user's message only, the chat template's tokens excluded
  (:func:`message_span`), so the difference reflects what the prompts say,
  not the template they share. Averaging many tokens also makes the mean of
  a dozen prompts steadier than one token per prompt.
- ``"last"``: the prompt's last token -- in chat format the generation
  prompt's last token, the position from which the reply starts (CAA reads
  the answer position).

``prompt_format`` (``raw`` or ``chat``) should be the format of the runs that
use the vector; None takes the engine's default (chat where the model's
tokenizer has a chat template: :func:`~.batching.default_format`).

Activations are captured in left-padded batches (:func:`~.capture.capture`:
a prompt's activations do not depend on its batch), reduced and averaged in
float32. :func:`build_steering` returns
:class:`~transferlab.interventions.steering.SteeringVectors` with the
metadata a file needs (the model's spec and fingerprint, the site, layers,
width, groups, prompt counts, format, position);
:func:`build_steering_from_bank` takes the two groups from a prompt bank and
records the bank's name and version.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from ..interventions.steering import SteeringVectors
from ..models.fingerprint import model_fingerprint
from ..prompts import load_bank
from ..sites import parse_hook_point
from .batching import chat_text, encode, resolve_format
from .capture import capture

POSITIONS = ("mean", "last")


def message_span(tokenizer, prompt: str, prompt_format: str = "raw") -> tuple[list[int], int, int]:
    """``(token ids, start, stop)``: the prompt in ``prompt_format`` and the token positions ``[start, stop)``
    that hold its message -- every token but a leading BOS in raw format; in chat format the tokens whose
    characters lie in the message (the template's tokens around it excluded)."""
    ids = encode(tokenizer, [prompt], prompt_format)[0]
    bos = getattr(tokenizer, "bos_token_id", None)
    if prompt_format == "raw":
        return ids, int(len(ids) > 1 and ids[0] == bos), len(ids)
    text = chat_text(tokenizer, prompt)
    first = text.rfind(prompt)
    if first < 0:
        raise ValueError(f"the chat template changed the message {prompt[:40]!r}: its tokens cannot be located")
    span = _span_by_offsets(tokenizer, text, ids, first, first + len(prompt))
    if span is None:
        span = _span_by_decoding(tokenizer, ids, prompt)
    if span is None:
        raise ValueError(f"the message {prompt[:40]!r} could not be located among its chat tokens")
    return ids, span[0], span[1]


def _span_by_offsets(tokenizer, text: str, ids: list[int], first: int, last: int) -> tuple[int, int] | None:
    """Tokens whose characters overlap ``[first, last)`` of ``text`` (a fast tokenizer's offsets); None if the
    tokenizer gives none, or its tokens are not ``ids``."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        return None
    offsets = enc.get("offset_mapping")
    if not offsets or list(enc["input_ids"]) != list(ids):
        return None
    inside = [i for i, (a, b) in enumerate(offsets) if a < last and b > first and b > a]
    return (inside[0], inside[-1] + 1) if inside else None


def _span_by_decoding(tokenizer, ids: list[int], prompt: str) -> tuple[int, int] | None:
    """The narrowest ``[start, stop)`` whose decoded text still holds the message (tokenizers without offsets)."""
    words = prompt.strip()

    def holds(a: int, b: int) -> bool:
        return words in tokenizer.decode(ids[a:b])

    if not holds(0, len(ids)):
        return None
    start = 0
    while start + 1 < len(ids) and holds(start + 1, len(ids)):
        start += 1
    stop = len(ids)
    while stop - 1 > start and holds(start, stop - 1):
        stop -= 1
    return start, stop


def prompt_vectors(
    model,
    prompts: Sequence[str],
    site: str,
    layers: Sequence[int | float],
    prompt_format: str | None = None,
    position: str = "mean",
    batch_size: int | None = None,
) -> dict[int, torch.Tensor]:
    """``{layer index: [n_prompts, width] float32}``: each prompt reduced to one vector (see the module
    docstring) at ``site`` of each layer."""
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {', '.join(POSITIONS)}; got {position!r}")
    prompt_format = resolve_format(model.tokenizer, prompt_format)
    if not prompts:
        raise ValueError("no prompts to build a steering vector from")
    n_layers = model.n_layers
    points = {model.layer(layer): parse_hook_point(f"{site}@{model.layer(layer)}", n_layers) for layer in layers}
    spans = [message_span(model.tokenizer, p, prompt_format) for p in prompts]
    acts = capture(model, [ids for ids, _, _ in spans], sites=list(points.values()), batch_size=batch_size)
    out = {}
    for index, point in points.items():
        rows = []
        for (ids, start, stop), a in zip(spans, acts[point]):
            a = a.float()
            rows.append(a[start:stop].mean(0) if position == "mean" else a[len(ids) - 1])
        out[index] = torch.stack(rows).cpu()
    return out


def build_steering(
    model,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    site: str = "resid_post",
    layers: Sequence[int | float] = (0.5,),
    prompt_format: str | None = None,
    position: str = "mean",
    batch_size: int | None = None,
    meta: dict | None = None,
) -> SteeringVectors:
    """Mean over ``positive`` minus mean over ``negative`` at ``site`` of each of ``layers`` (module docstring).

    ``meta`` adds to the recorded metadata (the bank, its groups: see :func:`build_steering_from_bank`).
    """
    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    if not layers:
        raise ValueError("give at least one layer")
    if not positive or not negative:
        raise ValueError(
            f"a steering vector needs prompts in both groups; got {len(positive)} positive, {len(negative)} negative"
        )
    prompt_format = resolve_format(model.tokenizer, prompt_format)  # None: chat where the model has a template
    pos = prompt_vectors(model, positive, site, layers, prompt_format, position, batch_size)
    neg = prompt_vectors(model, negative, site, layers, prompt_format, position, batch_size)
    vectors = {i: pos[i].mean(0) - neg[i].mean(0) for i in pos}
    written = {str(model.layer(layer)): layer for layer in layers}
    info = {
        "model": {"spec": model.name, **model_fingerprint(model)},
        "position": position,
        "prompt_format": prompt_format,
        "n_positive": len(positive),
        "n_negative": len(negative),
        "layers_written": written,
        "norms": {str(i): float(v.norm()) for i, v in vectors.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(meta or {}),
    }
    return SteeringVectors(site, vectors, info)


def build_steering_from_bank(
    model,
    bank: str = "research",
    positive: Sequence[str] | None = None,
    negative: Sequence[str] | None = None,
    **kwargs,
) -> SteeringVectors:
    """:func:`build_steering` with the two groups from a prompt bank: ``positive`` / ``negative`` are group
    names (default: every group of the ``recursion`` pillar against every group of the ``baseline``
    pillar; in the stories bank ``story_source`` against ``story_target``). Records the bank's name and
    version and each side's groups."""
    loaded = load_bank(bank)
    defaults = {"stories": (["story_source"], ["story_target"])}
    by_pillar = {
        pillar: [g for g, info in loaded.group_info.items() if info.pillar == pillar]
        for pillar in ("recursion", "baseline")
    }
    fallback = defaults.get(loaded.name, (by_pillar["recursion"], by_pillar["baseline"]))
    positive = list(positive) if positive else fallback[0]
    negative = list(negative) if negative else fallback[1]
    if not positive or not negative:
        raise ValueError(f"bank {loaded.name!r}: name the groups (positive and negative), e.g. L3,L4 and math,factual")
    overlap = sorted(set(positive) & set(negative))
    if overlap:
        raise ValueError(f"group(s) {overlap} are on both sides; a steering vector contrasts two different groups")
    pos = [p.text for p in loaded.select(positive)]
    neg = [p.text for p in loaded.select(negative)]
    meta = {
        "bank": loaded.name,
        "bank_version": loaded.version,
        "positive_groups": positive,
        "negative_groups": negative,
        **kwargs.pop("meta", {}),
    }
    return build_steering(model, pos, neg, meta=meta, **kwargs)
