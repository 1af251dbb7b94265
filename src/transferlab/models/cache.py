"""Uniform access to a Hugging Face KV cache, across ``transformers`` releases.

The cache holds, per layer, keys and values of shape
``[batch, n_kv_heads, positions, head_dim]``. Keys are stored **after** RoPE:
a key computed at position p carries the rotation of p, which is why moving a
key to another slot needs re-rotation (:mod:`transferlab.interventions.rope`).
"""

from __future__ import annotations

import torch


def n_cache_layers(cache) -> int:
    if hasattr(cache, "layers"):
        return len(cache.layers)
    return len(cache.key_cache)  # pragma: no cover - transformers < 4.56


def get_kv(cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(cache, "layers"):
        lay = cache.layers[layer]
        return lay.keys, lay.values
    return cache.key_cache[layer], cache.value_cache[layer]  # pragma: no cover


def set_kv(cache, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    if hasattr(cache, "layers"):
        lay = cache.layers[layer]
        lay.keys, lay.values = keys, values
        return
    cache.key_cache[layer], cache.value_cache[layer] = keys, values  # pragma: no cover


def cache_kwargs(hf_model, cache) -> dict:
    """The forward keyword for a cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    import inspect

    params = inspect.signature(hf_model.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def output_cache(out):
    """The cache a forward returned, whatever the release calls it."""
    keys = out.keys()
    if "cache" in keys:
        return out["cache"]
    return out["past_key_values"] if "past_key_values" in keys else None


def last_logits_kwargs(hf_model) -> dict:
    """Ask the forward for the last position's logits only, where the model supports it."""
    import inspect

    params = inspect.signature(hf_model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}
