"""Liger-Kernel's Triton kernels as the fused RMSNorm, SiLU x up and RoPE of :mod:`.fused`.

`liger-kernel <https://github.com/linkedin/Liger-Kernel>`_ is a maintained
library of Triton kernels for Llama-family models. Triton compiles a kernel
once per specialisation and keeps it in its on-disk cache
(``~/.triton/cache``), so a later process loads instead of compiling; the
``torch.compile`` path of :mod:`.fused` traces and compiles in every process.

:func:`liger_compiler` follows the compiler protocol of :func:`.fused.fuse`:
it maps each of our reference functions to Liger's kernel for the same
arithmetic, and :func:`.fused.fuse` checks every one against the model's own
module before installing it. What differs from the reference, on purpose:

* Llama's RMSNorm rounds the normalised row to the input dtype and then
  multiplies by the weight (Liger's ``llama`` casting mode: the same);
* SiLU is computed in float32 and rounded once before the product (PyTorch's
  bf16 SiLU does the same internally);
* Liger's RoPE rotates ``q`` and ``k`` in place. Ours must not: the tensors it
  gets may be a ``q_proj``/``k_proj`` output that a capture holds, so they are
  copied first. It reads the first half of ``cos``/``sin`` only, which RoPE
  builds as two equal halves (the check feeds such inputs).
"""

from __future__ import annotations

import torch


def available() -> bool:
    """liger-kernel and a working Triton can be imported."""
    try:
        import liger_kernel.ops.rms_norm  # noqa: F401
        import liger_kernel.ops.rope  # noqa: F401
        import liger_kernel.ops.swiglu  # noqa: F401
    except Exception:  # not installed, or Triton without a GPU backend
        return False
    return True


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    from liger_kernel.ops.rms_norm import rms_norm_forward

    return rms_norm_forward(x.contiguous(), weight, eps, 0.0, "llama", None)[0]


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    from liger_kernel.ops.swiglu import swiglu_forward

    return swiglu_forward(gate.contiguous(), up.contiguous())[2]


def rope(q, k, cos, sin, unsqueeze_dim: int = 1):
    from liger_kernel.ops.rope import rope_forward

    if unsqueeze_dim != 1:
        raise ValueError("Liger's RoPE takes [B, H, T, d] queries and keys (unsqueeze_dim=1)")
    with torch.cuda.device(q.device):  # Liger launches RoPE on the current device: a split model's layers differ
        q2, k2, _, _ = rope_forward(q.clone(), k.clone(), cos, sin, rotary_dim=cos.shape[-1])
    return q2, k2


KERNELS = {"_rms": rms, "_silu_mul": silu_mul, "_rope": rope}  # :mod:`.fused`'s reference function -> ours


def liger_compiler(fn):
    """Liger's kernel for one of :mod:`.fused`'s reference functions (by its name)."""
    name = getattr(fn, "__name__", repr(fn))
    if name not in KERNELS:
        raise ValueError(f"no Liger kernel for {name!r}")
    return KERNELS[name]


__all__ = ["available", "liger_compiler", "rms", "silu_mul", "rope"]
