"""How many examples one batch holds: from the cache each example needs and the device's free memory."""

from __future__ import annotations

import torch


def tokens_per_example(tgt_ids, src_ids, max_new_tokens: int) -> int:
    """Cache slots one example needs: its prompt and new tokens, plus half its source
    (source caches live only until the splice, and pairs share them across conditions)."""
    longest_src = max((len(x) for x in src_ids if x is not None), default=0)
    return max(len(t) for t in tgt_ids) + max_new_tokens + longest_src // 2


def kv_bytes_per_token(model) -> int:
    """Bytes of KV cache one token occupies across all layers."""
    ad = model.adapter
    return 2 * ad.n_layers * ad.n_kv_heads * ad.head_dim * torch.finfo(model.dtype).bits // 8


def auto_batch_size(model, n: int, tokens_per_example: int = 512, headroom: float = 0.8) -> int:
    """Examples per batch: 64 on the CPU; on a GPU, from its free memory.

    On a GPU each example holds its KV cache (target, source and new tokens),
    a few vocabulary-sized rows for sampling, and a share of prefill
    activations. Batches are then evened out (1,200 examples at a cap of 700
    run as 2 x 600, not 700 + 500).
    """
    if model.device.type != "cuda":
        return min(n, 64)
    free, _ = torch.cuda.mem_get_info(model.device)
    # memory PyTorch keeps cached from earlier work is free to this process too: without it, a second run in the
    # same process (a notebook, `transferlab serve`) would see less and split its work differently
    free += torch.cuda.memory_reserved(model.device) - torch.cuda.memory_allocated(model.device)
    cfg = model.hf.config
    per_example = (
        kv_bytes_per_token(model) * tokens_per_example
        + cfg.vocab_size * 24
        + 64 * getattr(cfg, "intermediate_size", 4 * cfg.hidden_size) * 2
    )
    cap = max(1, int(free * headroom // per_example))
    n_batches = -(-n // cap)
    return max(1, -(-n // n_batches))
