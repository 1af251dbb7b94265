"""Weights that are code: pickled checkpoints are refused, not unpickled.

PyTorch's ``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt`` checkpoints are Python
pickles, and unpickling a file can run any code it carries. transferlab loads
weights only from safetensors (and GGUF), which hold tensors and nothing
else; a model directory that offers only pickles is refused with a message
that says why and what to do.
"""

from __future__ import annotations

from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class UnsafeWeightsError(ValueError):
    """A model whose weights exist only as pickle files."""


def check_weights_dir(path: str | Path) -> None:
    """Refuse a local model directory whose weights are pickles only (no ``*.safetensors``)."""
    path = Path(path)
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    if pickles:
        raise UnsafeWeightsError(
            f"{pickles[0]} is refused as unsafe: it is a pickle file (PyTorch's .bin/.pt checkpoint format), "
            "and unpickling a file can run arbitrary code on this machine. transferlab loads weights only from "
            "safetensors or GGUF files. Where you trust the checkpoint, convert it (load it and call "
            "save_pretrained(..., safe_serialization=True)) and pass the converted directory."
        )
