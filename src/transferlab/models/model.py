"""``Model``: a loaded HF causal LM, its tokenizer and its architecture adapter.

This is the object every other part of transferlab takes. It is deliberately
thin: it owns no numerics of its own (the forward is always Hugging Face's),
it only knows how to resolve layers and sites, and it offers ``capture`` and
``generate`` as methods for convenience.

Those methods belong to the engine (:mod:`transferlab.engine`), a higher
floor that this module never imports at import time: the engine installs
itself as the model's *runtime* when it is imported, and the methods hand
over to it; a model used before anything imported the engine imports it by
name on first use (:func:`runtime`). The same runtime prepares a freshly
loaded model for fast generation (:func:`~transferlab.engine.prepare`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..sites import HookPoint, parse_hook_point, resolve_layer
from .adapters import Adapter

_RUNTIME: Any = None


def install_runtime(runtime) -> None:
    """Make ``runtime`` (a module or object with ``capture``, ``generate`` and ``prepare``) serve every Model."""
    global _RUNTIME
    _RUNTIME = runtime


def runtime():
    """The installed runtime: the engine, which installs itself when imported; imported here (by name, at
    run time) when a model is used before anything imported it, e.g. ``from transferlab.models import load_model``."""
    if _RUNTIME is None:
        import importlib

        importlib.import_module("transferlab.engine")  # the package's own runtime; it calls install_runtime
    if _RUNTIME is None:
        raise RuntimeError("no runtime installed: import transferlab.engine first")
    return _RUNTIME


@dataclass
class Model:
    """A causal LM ready for capture and intervention."""

    hf: torch.nn.Module
    tokenizer: object
    adapter: Adapter
    name: str
    source: dict = field(default_factory=dict)  # how it was loaded: kind, path, id, file hashes
    default_batch_size: int = 32

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def n_layers(self) -> int:
        return self.adapter.n_layers

    def layer(self, layer: int | float | str) -> int:
        """Resolve an index, negative index or depth fraction to a layer index."""
        return resolve_layer(layer, self.adapter.n_layers)

    def hook_point(self, text: str | HookPoint) -> HookPoint:
        return parse_hook_point(text, self.adapter.n_layers)

    def capture(self, prompts, sites=("v_proj@-1",), window=None, batch_size=None, prompt_format=None):
        """See :func:`transferlab.engine.capture.capture`."""
        return runtime().capture(
            self, prompts, sites=sites, window=window, batch_size=batch_size, prompt_format=prompt_format
        )

    def generate(self, targets, **kwargs):
        """See :func:`transferlab.engine.generation.generate`."""
        return runtime().generate(self, targets, **kwargs)

    def info(self) -> dict:
        out = {"name": self.name, **self.adapter.describe()}
        out["vocab_size"] = int(self.hf.config.vocab_size)
        out["device"] = str(self.device)
        out["dtype"] = str(self.dtype).replace("torch.", "")
        out["parameters"] = sum(p.numel() for p in self.hf.parameters())
        return out
