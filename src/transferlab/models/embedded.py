"""The embedded default model: stories260K, shipped inside the package.

A real 260K-parameter Llama trained on TinyStories (MIT licence, beside the
file), stored as a GGUF. Its tokenizer (a 512-token SentencePiece BPE) also
serves the tiny random test models, so text prompts work on them.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

EMBEDDED = "stories260K"


def embedded_path() -> Path:
    """Where the embedded GGUF lies inside the installed package."""
    return Path(str(resources.files("transferlab.models") / "data" / "stories260K.gguf"))


@functools.lru_cache(maxsize=1)
def embedded():
    """``(hf_model, tokenizer)`` of the embedded file, read once per process (callers copy the weights)."""
    from .gguf import load_gguf

    return load_gguf(embedded_path())


def embedded_tokenizer():
    """The stories260K tokenizer (shared by the tiny test models)."""
    return embedded()[1]
