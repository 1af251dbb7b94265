"""The fast path for decoding: GQA attention without ``repeat_kv``, and a preallocated cache.

Two costs dominate a large-batch decode step of a GQA model in plain
``transformers``:

* ``repeat_kv``: before attention, the SDPA path copies every layer's cached
  keys and values ``n_heads / n_kv_heads`` times (4x for Mistral-7B) at every
  step. ``transferlab_sdpa`` instead folds the query heads of each group into
  the query-length axis (``[B, H_q, 1, d] -> [B, H_kv, g, d]``), so attention
  reads each cached key once (:func:`.grouped.grouped_decode`). It is exact
  (the same arithmetic, grouped differently); prefill and any other case fall back to ``transformers``' own
  SDPA function.
* ``torch.cat`` in ``DynamicCache``: every step reallocates and copies the
  whole cache. :func:`preallocate` moves each full-attention layer into a
  buffer with room for the new tokens, so a step writes one slot.

At a static decode step (:mod:`.decode`) the mask may instead be a
FlexAttention block mask: :mod:`.ragged` then attends over each row's own
cache slots only.

Select the attention with ``load_model(..., attn_implementation="transferlab_sdpa")``
(the default on CUDA); the generation loop preallocates on its own.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from .grouped import grouped_decode

NAME = "transferlab_sdpa"
_registered = False


def gqa_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """Attention for ``transformers``' AttentionInterface (see module docstring)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):  # a block mask: ragged decode
        from .ragged import attend

        return attend(query, key, value, attention_mask, scaling, dropout=dropout, **kwargs), None
    B, Hq, q_len, d = query.shape
    Hkv = key.shape[1]
    group = Hq // Hkv
    plain = (
        q_len != 1
        or group == 1
        or kwargs.get("softcap") is not None
        or dropout
        or kwargs.get("position_bias") is not None
        or kwargs.get("sinks") is not None
        or kwargs.get("s_aux") is not None
    )
    if plain:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    mask = attention_mask
    if mask is not None and mask.dim() == 4:
        mask = mask[:, :, -1:, : key.shape[-2]]  # [B, 1|H, 1, T]
        if mask.shape[1] != 1:  # a per-head mask: group it like the queries
            mask = mask.reshape(B, Hkv, group, -1)
    return grouped_decode(query, key, value, mask, scaling), None


def register() -> str:
    """Register ``transferlab_sdpa`` with transformers (attention and mask); idempotent."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(NAME, gqa_sdpa_forward)
        AttentionMaskInterface.register(NAME, sdpa_mask)
        _registered = True
    return NAME


def use_fast_attention(hf_model) -> bool:
    """Switch a loaded model to ``transferlab_sdpa`` where it runs SDPA; returns whether it did."""
    current = getattr(hf_model.config, "_attn_implementation", None)
    if current not in ("sdpa", NAME):
        return False
    register()
    if hasattr(hf_model, "set_attn_implementation"):
        try:
            hf_model.set_attn_implementation(NAME)
            return True
        except (ValueError, TypeError, AttributeError):
            pass
    hf_model.config._attn_implementation = NAME
    return True


class PreallocatedLayer(DynamicLayer):
    """A DynamicLayer whose keys/values live in a buffer with spare slots: no copy per step."""

    def reserve(self, extra: int) -> None:
        k, v = self.keys, self.values
        B, H, T, d = k.shape
        self._kbuf = k.new_empty(B, H, T + extra, d)
        self._vbuf = v.new_empty(B, H, T + extra, v.shape[-1])
        self._kbuf[:, :, :T].copy_(k)
        self._vbuf[:, :, :T].copy_(v)
        self._len = T
        self.keys, self.values = self._kbuf[:, :, :T], self._vbuf[:, :, :T]

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        end = self._len + n
        if end > self._kbuf.shape[-2]:
            self.reserve(max(n, self._kbuf.shape[-2]))
        self._kbuf[:, :, self._len : end].copy_(key_states)
        self._vbuf[:, :, self._len : end].copy_(value_states)
        self._len = end
        self.keys, self.values = self._kbuf[:, :, :end], self._vbuf[:, :, :end]
        return self.keys, self.values


def preallocate(cache, extra: int) -> None:
    """Give every full-attention layer of ``cache`` room for ``extra`` more tokens, in place."""
    if not hasattr(cache, "layers"):
        return
    for i, lay in enumerate(cache.layers):
        if type(lay) is not DynamicLayer or not getattr(lay, "is_initialized", False) or lay.keys.numel() == 0:
            continue
        new = PreallocatedLayer.__new__(PreallocatedLayer)
        new.__dict__.update(lay.__dict__)
        new.reserve(extra)
        cache.layers[i] = new
