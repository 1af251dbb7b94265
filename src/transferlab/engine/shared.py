"""Shared products: an attention layer's ``q_proj``, ``k_proj`` and ``v_proj`` as one matrix product.

The three projections of a layer read the same normalised hidden state. At a
large-batch decode step they are three matrix products, two of them narrow
under grouped-query attention (``k_proj``/``v_proj`` of Mistral-7B: 1,024
columns for 4,096 inputs), which fill the GPU badly, and three kernels where
one would do. :func:`share_projections` makes them one product over their
weights stacked (``[q; k; v]``) while every projection stays the module it
was: the first of the three called with an input computes the product, and
each returns its own columns of it. So the sites ``q_proj``, ``k_proj`` and
``v_proj`` are still module outputs: hooks on them fire, read and replace
exactly as before (a replaced output is the hook's own tensor; an edit in
place touches only that projection's columns).

The stacked weight is the only copy: each module's ``weight`` (and ``bias``)
becomes a view of it, so editing a weight in place (zeroing a row, loading a
state dict) edits the product too. If one of the three had its weight
*replaced* (a new Parameter) or has forward pre-hooks, if the process has
global ones, or if a weight must get gradients (grad enabled and the weight
requires it), all three compute their own products, as before. A call with an
input other than the one the product was computed from computes it anew.
``TRANSFERLAB_SHARE_QKV=0`` leaves the projections apart.

**Private queries and keys.** Liger's RoPE rotates queries and keys in place
(:mod:`.liger`), so they are copied first, in case something holds the
projection's output. A product computed while neither ``q_proj`` nor
``k_proj`` has a forward hook (and no global forward hook is set) is marked
*private* (:func:`private`): nothing outside the attention can hold its query
or key columns, and RoPE may rotate them where they lie.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

NAMES = ("q_proj", "k_proj", "v_proj")
_PRIVATE = "_transferlab_private"


class SharedProduct:
    """One product for sibling linear layers that read the same input; each takes its columns of it."""

    def __init__(self, modules: list[nn.Linear]):
        self.modules = modules
        weight = torch.cat([m.weight.detach() for m in modules], 0)
        bias = None
        if modules[0].bias is not None:
            bias = torch.cat([m.bias.detach() for m in modules], 0)
        self.weight, self.bias = weight, bias
        self.bounds = []
        start = 0
        for m in modules:
            end = start + m.out_features
            self.bounds.append((start, end))
            m.weight = nn.Parameter(weight[start:end], requires_grad=m.weight.requires_grad)
            if bias is not None:
                m.bias = nn.Parameter(bias[start:end], requires_grad=m.bias.requires_grad)
            start = end
        self.params = [(m.weight, m.bias) for m in modules]  # what each module must still hold to use the product
        self._x = self._y = None
        self._taken: set = set()

    def plain(self) -> bool:
        """Whether the siblings compute their own products now (see the module docstring)."""
        for m, (w, b) in zip(self.modules, self.params):
            if m.weight is not w or m.bias is not b or m._forward_pre_hooks:
                return True
        if _global_hooks(pre=True):
            return True
        return torch.is_grad_enabled() and any(
            p.requires_grad for m in self.modules for p in (m.weight, m.bias) if p is not None
        )

    def take(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Module ``i``'s output for input ``x``: its columns of the product, computed once per input."""
        if self._x is not x or i in self._taken:
            y = F.linear(x, self.weight, self.bias)
            q, k = self.modules[0], self.modules[1]
            if not (q._forward_hooks or k._forward_hooks or _global_hooks(pre=False)):
                setattr(y, _PRIVATE, True)
            self._x, self._y, self._taken = x, y, set()
        self._taken.add(i)
        a, b = self.bounds[i]
        out = self._y[..., a:b]
        if len(self._taken) == len(self.modules):  # every sibling has its columns: hold nothing between calls
            self._x = self._y = None
        return out


def _global_hooks(pre: bool) -> bool:
    """Whether the process has global module hooks (``nn.modules.module.register_module_forward_hook``)."""
    from torch.nn.modules import module as torch_module

    if pre:
        return bool(torch_module._global_forward_pre_hooks)
    return bool(torch_module._global_forward_hooks)


def private(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Whether ``query`` and ``key`` are views of one private shared product (see the module docstring),
    which RoPE may rotate in place."""
    base = query._base
    return base is not None and key._base is base and getattr(base, _PRIVATE, False)


def _shareable(mods) -> bool:
    """Plain ``nn.Linear`` siblings (no subclass: quantised layers compute otherwise) on one device and dtype,
    reading the same width, with their class's own forward, all with a bias or all without."""
    first = mods[0]
    return (
        all(type(m) is nn.Linear for m in mods)
        and all("forward" not in vars(m) for m in mods)
        and len({m.in_features for m in mods}) == 1
        and len({(m.weight.device, m.weight.dtype) for m in mods}) == 1
        and len({m.bias is None for m in mods}) == 1
        and all(m.weight.is_contiguous() for m in mods)
        and len({id(m) for m in mods}) == len(mods)
        and not first.weight.is_meta
    )


def share_projections(model) -> int:
    """Make every layer's q/k/v projections one shared product (see the module docstring), in place;
    returns how many layers now share. Layers whose projections are already one module (Phi-3's
    ``qkv_proj``) or cannot share (:func:`_shareable`) are left as they are."""
    if model.adapter.fused_qkv or not wanted():
        return 0
    done = 0
    with torch.no_grad():
        for block in model.adapter.layers:
            attn = block.self_attn
            mods = [getattr(attn, n, None) for n in NAMES]
            if any(m is None for m in mods) or getattr(attn, "_transferlab_shared", None) is not None:
                continue
            if not _shareable(mods):
                continue
            product = SharedProduct(mods)
            for i, m in enumerate(mods):
                m.forward = _forward(m, product, i)
            attn._transferlab_shared = product
            done += 1
    return done


def wanted() -> bool:
    """``TRANSFERLAB_SHARE_QKV``: ``1`` (default) shares the projections, ``0`` leaves them apart."""
    value = os.environ.get("TRANSFERLAB_SHARE_QKV", "1")
    if value not in ("0", "1"):
        raise ValueError(f"TRANSFERLAB_SHARE_QKV={value!r}: use 1 (share q/k/v products) or 0")
    return value == "1"


def _forward(module: nn.Linear, product: SharedProduct, i: int):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if product.plain():
            return F.linear(x, module.weight, module.bias)
        return product.take(i, x)

    return forward


__all__ = ["SharedProduct", "share_projections", "private"]
