"""Re-rotating cached keys to new positions (exact for rotary embeddings).

A cached key at position p is ``R(p) k`` (times a constant attention scaling
for some schemes), where ``R(p)`` rotates each pair of dimensions
``(i, i + d/2)`` by the angle ``p * inv_freq[i]`` (Hugging Face's half-split
convention, ``rotate_half``). Rotations compose, so moving the key to position
``p + delta`` is one more rotation by ``delta * inv_freq``: no need to know
the unrotated key.

This holds whenever the angle is position x a fixed frequency: the ``default``,
``linear``, ``llama3`` and ``yarn`` rope types. ``dynamic`` and ``longrope``
change the frequencies with the sequence length and are refused. Models with
partial rotary embeddings rotate only the first ``2 * len(inv_freq)`` dims.

**Per-layer frequencies.** Some models rotate different layers with different
bases: Gemma-3 uses base 10,000 on its sliding-window (local) layers and
1,000,000 on its full-attention (global) layers (``config.layer_types`` and
``config.rope_parameters[layer_type]``; the rotary module holds one
``<layer_type>_inv_freq`` per type). A key is re-rotated with the frequencies
of the layer it is cached in.
"""

from __future__ import annotations

import torch

from .types import InterventionError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def _layer_type(model, layer: int | None) -> str | None:
    """The layer's attention type where the model rotates layer types differently (Gemma-3), else None."""
    types = getattr(model.hf.config, "layer_types", None)
    params = getattr(model.hf.config, "rope_parameters", None)
    if layer is None or not types or not isinstance(params, dict) or types[layer] not in params:
        return None
    return types[layer]


def inverse_frequencies(model, layer: int | None = None) -> torch.Tensor:
    """The rotary ``inv_freq`` (float32) that ``layer`` uses, after checking its rope type is supported.

    ``layer=None`` (or a model with one rotary scheme for all layers) gives the model's one set.
    """
    kind_of = _layer_type(model, layer)
    if kind_of is not None:
        scaling = model.hf.config.rope_parameters[kind_of] or {}
    else:
        scaling = model.adapter.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind not in SUPPORTED_ROPE_TYPES:
        raise InterventionError(
            f"KVSplice(rope='reposition') supports rope types {', '.join(SUPPORTED_ROPE_TYPES)}; "
            f"this model uses {kind!r}, whose frequencies depend on sequence length. "
            "Use rope='keep' (keys stay rotated for their source positions) or align='left'."
        )
    base = getattr(model.hf, "model", model.hf)
    rotary = getattr(base, "rotary_emb", None)
    inv = getattr(rotary, f"{kind_of}_inv_freq" if kind_of is not None else "inv_freq", None)
    if inv is None and kind_of is not None:
        raise InterventionError(
            f"layer {layer} is a {kind_of!r} layer, but the rotary module holds no {kind_of}_inv_freq: "
            "this transformers version lays out per-layer RoPE differently; use rope='keep'"
        )
    if inv is None:
        if model.adapter.rope_theta is None:
            raise InterventionError(
                "cannot find this model's rotary frequencies (no rotary_emb.inv_freq, no rope_theta)"
            )
        d = model.adapter.head_dim
        inv = 1.0 / (model.adapter.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    return inv.detach().to(torch.float32)


def rotate_keys(keys: torch.Tensor, delta: torch.Tensor | int, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate post-RoPE keys ``[..., positions, head_dim]`` forward by ``delta`` positions.

    ``delta`` is an int or a tensor broadcastable to ``keys.shape[:-1]``.
    """
    rot = 2 * inv_freq.numel()
    dtype = keys.dtype
    k = keys.to(torch.float32)
    delta = torch.as_tensor(delta, dtype=torch.float32, device=keys.device)
    angles = delta[..., None] * inv_freq.to(keys.device)  # [..., rot/2]
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1)
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1)
    kr, rest = k[..., :rot], k[..., rot:]
    half = rot // 2
    rotated_half = torch.cat([-kr[..., half:], kr[..., :half]], dim=-1)
    out = kr * cos + rotated_half * sin
    return torch.cat([out, rest], dim=-1).to(dtype)
