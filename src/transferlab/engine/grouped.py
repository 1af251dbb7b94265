"""Grouped-query attention of one new token with SDPA, without ``repeat_kv``.

At a decode step each query has one position, so the query heads of a group
(those sharing a key/value head) can be folded into the query-length axis:
``[B, H_q, 1, d] -> [B, H_kv, group, d]``. Attention then reads each cached
key and value once instead of ``group`` times. It is exact: the same
arithmetic, grouped differently. Used by ``transferlab_sdpa`` (:mod:`.fastpath`)
at every decode step that is not ragged, and by :mod:`.ragged` as its fallback.
"""

from __future__ import annotations

import torch.nn.functional as F


def grouped_decode(query, key, value, mask, scale):
    """One new token's attention, each group's query heads folded into the query axis (no ``repeat_kv``):
    ``[B, Hq, 1, d]`` -> ``[B, 1, Hq, d]``; ``mask`` broadcasts to ``[B, H_kv, group, T]`` (True = attend)."""
    B, Hq, _, d = query.shape
    Hkv = key.shape[1]
    with _backend(query.device):
        out = F.scaled_dot_product_attention(
            query.reshape(B, Hkv, Hq // Hkv, d), key, value, attn_mask=mask, scale=scale
        )
    return out.reshape(B, Hq, 1, d).transpose(1, 2).contiguous()


def _backend(device):
    """The SDPA kernel for grouped decode: memory-efficient attention on CUDA by default.

    PyTorch may otherwise pick cuDNN's attention, whose per-call host overhead
    (about 1 ms a call, measured on an H200) exceeds the whole kernel at decode.
    ``TRANSFERLAB_SDPA_BACKEND`` = efficient (default) | cudnn | flash | math | auto.
    """
    import contextlib
    import os

    choice = os.environ.get("TRANSFERLAB_SDPA_BACKEND", "efficient")
    if device.type != "cuda" or choice == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "math": SDPBackend.MATH,
    }
    return sdpa_kernel([table[choice], SDPBackend.MATH])


__all__ = ["grouped_decode"]
