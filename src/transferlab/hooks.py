"""Reading and writing the activation at a hook point with PyTorch hooks.

One small mechanism serves capture and every intervention: a *site function*
receives the activation at a :class:`SiteHandle` (a module, its input or
output, an optional slice; an adapter maps each hook point to one) as a
``[batch, positions, width]`` tensor and returns either ``None`` (leave it
alone) or a tensor of the same shape that replaces it. This module hides the
differences between sites: a module's output or its input, a plain tensor or a
tuple, a slice of a fused ``qkv_proj`` output.

Hooks are always removed, even when the forward raises: use :func:`hooked`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn


@dataclass(frozen=True)
class SiteHandle:
    """How to reach one hook point: a module, input or output, and an optional slice."""

    module: nn.Module
    where: str  # "output" (forward hook) or "input" (forward pre-hook on hidden_states)
    start: int | None = None  # slice of the last dimension, for fused projections
    stop: int | None = None


SiteFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def _apply(handle: SiteHandle, value: torch.Tensor, fn: SiteFn) -> torch.Tensor | None:
    if handle.start is None:
        return fn(value)
    part = value[..., handle.start : handle.stop]
    new = fn(part)
    if new is None:
        return None
    out = value.clone()
    out[..., handle.start : handle.stop] = new
    return out


def add_hook(handle: SiteHandle, fn: SiteFn):
    """Register ``fn`` at ``handle``; returns a removable PyTorch hook handle."""
    if handle.where == "output":

        def forward_hook(module, args, output):
            if isinstance(output, torch.Tensor):
                return _apply(handle, output, fn)
            new = _apply(handle, output[0], fn)
            if new is None:
                return None
            return (new,) + tuple(output[1:])

        return handle.module.register_forward_hook(forward_hook)

    def pre_hook(module, args, kwargs):
        if args:
            new = _apply(handle, args[0], fn)
            if new is None:
                return None
            return (new,) + tuple(args[1:]), kwargs
        new = _apply(handle, kwargs["hidden_states"], fn)
        if new is None:
            return None
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = new
        return args, kwargs

    return handle.module.register_forward_pre_hook(pre_hook, with_kwargs=True)


@contextlib.contextmanager
def hooked(pairs: Iterable[tuple[SiteHandle, SiteFn]]) -> Iterator[None]:
    """Context manager: hooks in place inside the block, removed in ``finally``."""
    registered = []
    try:
        for handle, fn in pairs:
            registered.append(add_hook(handle, fn))
        yield
    finally:
        for h in registered:
            h.remove()
