"""What the generation loop tells the hooks before every forward call.

Hooks never guess the phase from tensor shapes or call counts: the loop sets a
:class:`StepContext` (phase, absolute positions of the current columns, which
columns are real tokens, the decode step) before each forward, and every
intervention reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepContext:
    phase: str = "prompt"  # "prompt" (prefill) or "decode" (a new token)
    positions: torch.Tensor | None = None  # [B, T] absolute positions of the call's columns
    valid: torch.Tensor | None = None  # [B, T] True for real (non-pad) tokens
    step: int = 0  # index of the generated token being processed (decode phase)
