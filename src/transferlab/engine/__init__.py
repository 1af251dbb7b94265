"""The engine: the runtime that turns a plan into tokens.

Entry points:

- :func:`capture` -- activations (and the KV cache) of prompts at hook points,
  one left-padded forward per batch (:mod:`.capture`, :mod:`.batching`);
- :func:`generate` -- batched generation under per-example plans and sources:
  capture sources, prefix with prompt-phase interventions and splices, last
  prompt token, decode (:mod:`.generation`; the decode loop over static
  buffers and CUDA graphs in :mod:`.decode`, attending raggedly on CUDA
  (:mod:`.ragged`: each row reads only its own cache slots); samplers and
  their random streams in :mod:`.sampling`);
- :func:`prepare` -- ready a loaded model for fast generation: the grouped-query
  decode attention (:mod:`.fastpath`) and fused elementwise kernels
  (:mod:`.fused`).

Shapes are named as in the glossary of :mod:`transferlab.interventions`
(``B`` batch, ``T`` positions, ``S`` source positions, ``D`` width, ``W``
window, ``H`` heads, ``V`` vocabulary).

Importing this package installs it as the runtime behind ``Model.capture``,
``Model.generate`` and ``load_model``'s preparation step (see
:mod:`transferlab.models.model`); the models floor never imports the engine at import time (its
``runtime()`` imports this package by name when a model is used before anything else did).
"""

from __future__ import annotations

from ..models.model import install_runtime
from .apply import Applied, apply
from .capture import Activations, PromptActivations, capture, load_activations
from .generation import Generation, generate
from .sizing import auto_batch_size
from .steering import build_steering, build_steering_from_bank


def prepare(model, *, fuse: bool = False, fast_attention: bool = False):
    """Switch ``model`` to the engine's fast attention and/or fused kernels, in place.

    ``fast_attention``: a model that runs SDPA attention uses the grouped-query
    decode attention ``transferlab_sdpa`` from then on. ``fuse``: RMSNorm,
    SiLU x up and RoPE become compiled functions, each checked against the
    original first; ``model.source["fused"]`` records how many of each part, ``["kernels"]`` whose
    kernels (Liger's Triton kernels where liger-kernel is installed, else ``torch.compile``).
    """
    if fast_attention:
        from .fastpath import use_fast_attention

        use_fast_attention(model.hf)
    if fuse:
        from ..timings import stage
        from .fused import choose_compiler
        from .fused import fuse as fuse_model

        with stage("kernels"):
            compiler, kernels = choose_compiler(model.device)
            fused = fuse_model(model.hf, compiler=compiler)
            model.source = {**(model.source or {}), "fused": fused, "kernels": kernels}
    return model


class _Runtime:
    """What ``Model``'s methods and ``load_model`` hand over to."""

    capture = staticmethod(capture)
    generate = staticmethod(generate)
    prepare = staticmethod(prepare)


install_runtime(_Runtime())

__all__ = [
    "Activations",
    "Applied",
    "Generation",
    "PromptActivations",
    "apply",
    "auto_batch_size",
    "build_steering",
    "build_steering_from_bank",
    "capture",
    "generate",
    "load_activations",
    "prepare",
]
