"""Fused elementwise work for large-batch decoding (opt-in): RMSNorm, the gated MLP's activation, RoPE.

At a large batch, a decode step of an eager Hugging Face Llama-family model
spends a share of its GPU time in chains of small elementwise kernels: an
RMSNorm is six of them (upcast, square, mean, rsqrt, multiply, downcast and
scale), ``act(gate) * up`` is two passes over the MLP's widest activation, and
RoPE is about ten. :func:`fuse` replaces each with one ``torch.compile``-d
function of the same arithmetic, on a loaded model, in place:

* every ``*RMSNorm`` module whose forward is ``weight * normalize(x.float()).to(dtype)``;
* every gated MLP (``down_proj(act_fn(gate_proj(x)) * up_proj(x))``) whose activation is SiLU;
* the model family's ``apply_rotary_pos_emb`` (module-level, so every model of
  that family in this process uses the fused one from then on, ``fuse=False``
  or not: the same arithmetic, full or partial rotary width; a call the
  compiled function cannot serve goes back to the original).

Each replacement is checked against the original on random inputs before it is
installed, and left out where they differ beyond rounding (Gemma's ``1 + w``
norm, say): :func:`fuse` returns what it replaced. Hooks keep working: module
forward hooks wrap ``forward`` whatever it is, and the projections inside the
MLP are still the model's own modules.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

_COMPILED: dict = {}


def _compiled(name: str, fn, compiler):
    key = (name, compiler)
    if key not in _COMPILED:
        _COMPILED[key] = compiler(fn)
    return _COMPILED[key]


def default_compiler(fn):
    return torch.compile(fn, dynamic=True, fullgraph=True)


def kernels_choice() -> str:
    """``TRANSFERLAB_KERNELS``: ``auto`` (default: Liger's Triton kernels where liger-kernel is installed, else
    ``torch.compile``), ``liger`` or ``compile``."""
    how = os.environ.get("TRANSFERLAB_KERNELS", "auto")
    if how not in ("auto", "liger", "compile"):
        raise ValueError(f"TRANSFERLAB_KERNELS must be auto, liger or compile; got {how!r}")
    return how


def choose_compiler(device: torch.device):
    """The compiler :func:`fuse` uses by default on ``device`` (see :func:`kernels_choice`), and its name.

    Liger's kernels are Triton kernels that Triton caches on disk: a second
    process loads them instead of compiling, where ``torch.compile`` traces and
    compiles our functions again in every process (about 7 s warm, 17 s cold on
    an H200, measured). They need a CUDA device and liger-kernel
    (``pip install 'transferlab[gpu]'``).
    """
    how = kernels_choice()
    if how != "compile" and device.type == "cuda":
        from .liger import available, liger_compiler

        if available():
            return liger_compiler, "liger"
        if how == "liger":
            raise RuntimeError("TRANSFERLAB_KERNELS=liger but liger-kernel is not importable: pip install liger-kernel")
    return default_compiler, "torch.compile"


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def _rope(q, k, cos, sin, unsqueeze_dim: int = 1):
    """RoPE on the first ``cos.shape[-1]`` channels (all of them, or a partial rotary width as in Phi-3)."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    width = cos.shape[-1]

    def apply(x):
        xr, rest = x[..., :width], x[..., width:]
        half = width // 2
        turned = torch.cat((-xr[..., half:], xr[..., :half]), dim=-1)
        return torch.cat((xr * cos + turned * sin, rest), dim=-1)

    return apply(q), apply(k)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to rounding: relative error of the whole tensor (bf16 rounds once where eager rounds twice)."""
    if a.shape != b.shape or a.dtype != b.dtype:  # e.g. a float32 weight makes HF's RMSNorm return float32
        return False
    tol = 1e-5 if a.dtype == torch.float32 else 1e-2
    err = (a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)
    return bool(err <= tol)


def _norm_forward(mod, compiler):
    eps = getattr(mod, "variance_epsilon", getattr(mod, "eps", None))
    weight = getattr(mod, "weight", None)
    if eps is None or not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        return None
    fn = _compiled("rms", _rms, compiler)
    return lambda hidden_states: fn(hidden_states, mod.weight, eps)


def _mlp_forward(mod, compiler):
    if not all(hasattr(mod, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return None
    if not isinstance(mod.act_fn, torch.nn.SiLU) and type(mod.act_fn).__name__ not in ("SiLUActivation", "SiLU"):
        return None
    fn = _compiled("silu_mul", _silu_mul, compiler)
    return lambda x: mod.down_proj(fn(mod.gate_proj(x), mod.up_proj(x)))


def fuse(hf_model, parts=("norm", "mlp", "rope"), compiler=None) -> dict[str, int]:
    """Install fused forwards on ``hf_model`` (see module docstring); returns how many of each part.

    ``compiler`` turns a function into its fused form (default: ``torch.compile``
    with dynamic shapes); tests pass the identity to check the plumbing.
    """
    param = next(hf_model.parameters())
    device, dtype = param.device, param.dtype
    compiler = compiler or choose_compiler(device)[0]
    done = {"norm": 0, "mlp": 0, "rope": 0}
    failed: list = []  # compilation failures of this call (warned about once)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, like=None):
        """Check inputs on the device of the module checked (a split model's layers sit on several)."""
        p = next(like.parameters(), None) if like is not None else None
        return torch.randn(*shape, generator=gen).to(device=p.device if p is not None else device, dtype=dtype)

    verdicts: dict = {}  # modules alike (class, shapes, dtype, device, eps) are checked once, not 65 times
    with torch.no_grad():
        for mod in hf_model.modules():
            name = type(mod).__name__
            if getattr(mod, "_transferlab_fused", False):
                continue
            if "norm" in parts and name.endswith("RMSNorm"):
                kind, new = "norm", _norm_forward(mod, compiler)
                width = mod.weight.shape[0] if new is not None else None
            elif "mlp" in parts and hasattr(mod, "gate_proj"):
                kind, new = "mlp", _mlp_forward(mod, compiler)
                width = mod.gate_proj.in_features if new is not None else None
            else:
                continue
            if new is None:
                continue
            key = _likeness(mod) if "forward" not in vars(mod) else id(mod)  # a forward of its own: check it alone
            if key not in verdicts:
                verdicts[key] = _agrees(new, mod.forward, rand(2, 3, width, like=mod), seen=failed)
            if verdicts[key]:
                mod.forward, mod._transferlab_fused = new, True
                done[kind] += 1
        if "rope" in parts:
            done["rope"] = _fuse_rope(hf_model, compiler, rand, failed)
    return done


def _likeness(mod) -> tuple:
    """What makes two modules compute alike: their class, attributes' values (eps, activation) and the shapes,
    dtypes and devices of their parameters."""
    params = tuple((n, tuple(p.shape), p.dtype, p.device) for n, p in mod.named_parameters())
    plain = tuple(
        sorted((k, v) for k, v in vars(mod).items() if isinstance(v, (int, float, str, bool)) and not k.startswith("_"))
    )
    children = tuple((n, type(c).__name__) for n, c in mod.named_children())
    return (type(mod), params, plain, children)


def _agrees(new, old, *args, seen: list | None = None) -> bool:
    """The fused function gives the original's result (a compiler that fails counts as disagreeing)."""
    try:
        got = new(*args)
    except Exception as exc:  # no Triton, no C compiler, an unsupported op: keep the eager code
        _warn_once(exc, seen if seen is not None else [])
        return False
    want = old(*args)
    if isinstance(got, tuple):
        return all(_close(a, b) for a, b in zip(got, want))
    return _close(got, want)


def _warn_once(exc: Exception, seen: list) -> None:
    """One warning per ``seen`` list (a ``fuse`` call, or one fused function), not per failing part."""
    if not seen:
        import warnings

        seen.append(exc)
        warnings.warn(
            f"transferlab.engine.fused: compiling a fused kernel failed ({type(exc).__name__}: {str(exc)[:200]}); "
            "that part keeps its eager code",
            RuntimeWarning,
            stacklevel=3,
        )


def _fuse_rope(hf_model, compiler, rand, failed: list) -> int:
    module = sys.modules.get(type(hf_model).__module__)
    original = getattr(module, "apply_rotary_pos_emb", None)
    if original is None or getattr(original, "_transferlab_fused", False):
        return int(original is not None)
    fn = _compiled("rope", _rope, compiler)
    broken: list = []

    def fused(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        # every model of the family in this process comes here (the function is module-level):
        # a compilation that fails on some device or shape hands the call back to the original
        if not broken and unsqueeze_dim == 1:  # the layout every Llama-family attention passes
            try:
                return fn(q, k, cos, sin, unsqueeze_dim)
            except Exception as exc:
                _warn_once(exc, broken)
        return original(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)

    d = 8
    q, k = rand(2, 4, 3, d), rand(2, 2, 3, d)
    for width in (d, d // 2):  # full and partial rotary widths (where the family's own function has them)
        half_cos, half_sin = rand(2, 3, width // 2), rand(2, 3, width // 2)
        cos, sin = torch.cat([half_cos, half_cos], -1), torch.cat([half_sin, half_sin], -1)  # as RoPE builds them
        try:
            original(q, k, cos, sin)
        except Exception:  # this family rotates whole heads only
            if width == d:
                return 0
            continue
        if not _agrees(fn, original, q, k, cos, sin, seen=failed):
            return 0
    fused._transferlab_fused = True
    module.apply_rotary_pos_emb = fused
    return 1


__all__ = ["fuse", "default_compiler", "choose_compiler", "kernels_choice"]
