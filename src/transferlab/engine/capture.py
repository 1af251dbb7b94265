"""Capture: one batched, left-padded forward that records activations.

``model.capture(prompts, sites=["v_proj@27", "resid_post@18", "kv"])`` runs
the prompts through the model in left-padded batches (one forward per batch,
whatever the number of hook points) and returns :class:`Activations`: for each
hook point a ``[tokens, width]`` tensor per prompt, over that prompt's real
tokens only, and for ``"kv"`` the per-layer keys/values per prompt with the
positions they were computed at.

Which tokens are kept follows the BOS rule of :mod:`transferlab.engine.batching`:
without a window, every real token (BOS included); with ``window=W``, the last
``min(W, n_tokens)`` tokens, never BOS. ``Activations.positions[i]`` gives the
absolute positions kept for prompt ``i``. Text prompts are encoded in
``prompt_format`` (default: chat when the model has a chat template, see
:mod:`transferlab.engine.batching`). Indexing, saving and loading the result:
:mod:`transferlab.engine.activations`.
"""

from __future__ import annotations

import torch

from ..hooks import hooked
from ..models.cache import get_kv, last_logits_kwargs, n_cache_layers, output_cache
from ..models.context import check_fits, context_length
from ..sites import HookPoint, parse_hook_point
from .activations import Activations, PromptActivations, load_activations
from .batching import Batch, encode, left_pad, pad_id_of, resolve_format

__all__ = ["Activations", "PromptActivations", "capture", "forward_capture", "load_activations", "kept_slice"]


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of a tokenizer's vocabulary: equal fingerprints, same token ids."""
    import hashlib
    import json

    cached = getattr(tokenizer, "_transferlab_fingerprint", None)
    if cached is None:
        vocab = sorted(tokenizer.get_vocab().items())
        cached = hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]
        try:
            tokenizer._transferlab_fingerprint = cached
        except AttributeError:  # pragma: no cover
            pass
    return cached


def kept_slice(length: int, has_bos: bool, width: int, window: int | None) -> tuple[int, int]:
    """Columns ``[start, stop)`` of a left-padded row of ``width`` that capture keeps."""
    stop = width
    first_real = width - length
    if window is None:
        return first_real, stop
    first_kept = first_real + int(has_bos)
    return max(first_kept, stop - window), stop


def forward_capture(model, batch: Batch, points: list[HookPoint], want_kv: bool):
    """One forward of a left-padded batch; returns ``({point: [B, T, D]}, cache | None, logits)``."""
    adapter = model.adapter
    store: dict[str, torch.Tensor] = {}

    def recorder(name: str):
        def fn(x: torch.Tensor):
            store[name] = x.detach()
            return None

        return fn

    pairs = [(adapter.handle(p), recorder(str(p))) for p in points]
    with torch.inference_mode(), hooked(pairs):
        out = model.hf(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=want_kv,
            **last_logits_kwargs(model.hf),
        )
    return store, (output_cache(out) if want_kv else None), out.logits


def capture(
    model,
    prompts: list[str],
    sites: list[str | HookPoint] = ("v_proj@-1",),
    window: int | None = None,
    batch_size: int | None = None,
    prompt_format: str | None = None,
) -> Activations:
    """Capture activations at ``sites`` for ``prompts`` (see module docstring).

    ``prompt_format``: ``raw`` or ``chat``; None takes chat when the model has a chat template
    (:func:`~transferlab.engine.batching.default_format`). Token-id prompts are used as given.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(sites, (str, HookPoint)):  # one hook point, not a sequence of characters
        sites = [sites]
    if window is not None and window < 1:
        raise ValueError(f"window must be a positive number of tokens, got {window}")
    n_layers = model.adapter.n_layers
    want_kv = any(str(s).strip() == "kv" for s in sites)
    points = [parse_hook_point(s, n_layers) for s in sites if str(s).strip() != "kv"]
    points = list(dict.fromkeys(points))
    fmt = resolve_format(model.tokenizer, prompt_format)
    ids = encode(model.tokenizer, prompts, fmt)
    check_fits(context_length(model), [len(i) for i in ids], text_of=lambda i: prompts[i])  # refused, not truncated
    bs = batch_size or model.default_batch_size
    pad, bos = pad_id_of(model.tokenizer), model.tokenizer.bos_token_id
    acts = Activations(
        list(prompts),
        ids,
        [],
        [],
        {str(p): [] for p in points},
        [] if want_kv else None,
        n_layers,
        window,
        tokenizer_fingerprint(model.tokenizer),
        fmt,
    )
    for start in range(0, len(ids), bs):
        chunk = ids[start : start + bs]
        batch = left_pad(chunk, pad, bos, device=model.device)
        store, cache, _ = forward_capture(model, batch, points, want_kv)
        for row, length in enumerate(batch.lengths):
            a, b = kept_slice(length, batch.has_bos[row], batch.width, window)
            acts.has_bos.append(batch.has_bos[row])
            acts.positions.append(batch.position_ids[row, a:b].clone())
            for name, t in store.items():
                acts.points[name].append(t[row, a:b].clone())
            if want_kv:
                acts.kv.append(
                    [
                        tuple(x[row, :, a:b].clone() for x in get_kv(cache, layer))
                        for layer in range(n_cache_layers(cache))
                    ]
                )
    return acts
