"""Choosing the next token, per example, independently of the batch.

``corrected`` sampling: logits / temperature, then optional top-k and top-p
(nucleus) filtering, then inverse-CDF sampling with a uniform number drawn
from the example's own counter stream (:mod:`transferlab.rng`) keyed by
``(seed, example id, step)``. ``greedy=True`` takes the argmax.

``seed`` flavour: plain ``softmax(logits / T)`` with no filtering, the seed's
loop; the uniform draws are still per example (the seed drew from PyTorch's
global generator at batch size 1, a stream no batched engine can replay).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import rng


@dataclass(frozen=True)
class Sampler:
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False

    def __post_init__(self):
        if not self.greedy and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0 (or pass greedy=True); got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1]; got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off); got {self.top_k}")

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the tempered distribution (before top-k/top-p)."""
        t = 1.0 if self.greedy else self.temperature
        return torch.log_softmax(logits.float() / t, dim=-1)

    def filtered_probs(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float() / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = torch.sort(probs, dim=-1, descending=True)
            cum = sorted_p.cumsum(-1)
            drop_sorted = (cum - sorted_p) >= self.top_p  # keep the smallest prefix reaching top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            probs = probs.masked_fill(drop, 0.0)
            probs = probs / probs.sum(-1, keepdim=True)
        return probs

    def sample(self, logits: torch.Tensor, keys: torch.Tensor, step: int) -> torch.Tensor:
        """Next token per row of ``logits [B, V]``; ``keys [B]`` are the examples' stream keys."""
        if self.greedy:
            return logits.argmax(-1)
        probs = self.filtered_probs(logits).double()
        cdf = probs.cumsum(-1)
        u = rng.uniform(rng.combine(keys, step)).to(cdf.device) * cdf[:, -1]
        idx = torch.searchsorted(cdf, u[:, None], right=True).squeeze(-1)
        # never pick a zero-probability token through rounding at the top of the CDF
        idx = idx.clamp(max=logits.shape[-1] - 1)
        bad = probs.gather(-1, idx[:, None]).squeeze(-1) <= 0
        return torch.where(bad, probs.argmax(-1), idx)  # no host sync
