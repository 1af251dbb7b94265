"""Decode paths: which decode loop and attention kernel made a row's tokens.

A **decode path** is written ``"<loop>/<attention>"``
(:func:`transferlab.engine.decode.run` returns one per batch, and every
results row carries its batch's in the ``decode_path`` column):

* loop: ``eager`` (the plain loop), ``static`` (static buffers, step by step)
  or ``graph`` (static steps replayed as CUDA graphs); ``graph+static`` where
  a capture failed part-way;
* attention: ``ragged`` (:mod:`transferlab.engine.ragged`), ``ragged-fallback``
  (its kernel failed for the batch's shape: SDPA over the same mask), or the
  model's attention implementation (``sdpa``, ``transferlab_sdpa``, ...).

In float32 every path gives the same tokens. In bf16 the attention kernels
round differently, and the eager loop may round otherwise than the static
one (it attends over the written slots only); a replayed graph runs the
static loop's own kernels, so ``graph``, ``static`` and ``graph+static`` round
alike. :func:`numerics` keeps what can change the rounding, which is what a
report compares.
"""

from __future__ import annotations


def path(loop: str, attention: str) -> str:
    """The decode path of ``loop`` (``eager``, ``static``, ``graph``, ``graph+static``) and ``attention``."""
    return f"{loop}/{attention}"


def numerics(decode_path: str) -> str:
    """The part of ``decode_path`` that can change bf16 rounding: the attention, and whether the loop was eager."""
    loop, _, attention = str(decode_path).partition("/")
    return path("eager" if loop == "eager" else "static", attention)


__all__ = ["numerics", "path"]
