"""Choosing batch sizes for the device at hand."""

from __future__ import annotations

import torch


def kv_bytes_per_token(model) -> int:
    ad = model.adapter
    return 2 * ad.n_layers * ad.n_kv_heads * ad.head_dim * torch.finfo(model.dtype).bits // 8


def auto_batch_size(model, n: int, tokens_per_example: int = 512, headroom: float = 0.6) -> int:
    """Largest batch whose KV cache (plus activations) fits in a share of free GPU memory."""
    free, _ = torch.cuda.mem_get_info(model.device)
    per_example = kv_bytes_per_token(model) * tokens_per_example * 2 + model.hf.config.vocab_size * 4 * 4
    return max(1, min(n, int(free * headroom // per_example)))
