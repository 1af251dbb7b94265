"""Target survival: which of the target's cache slots still hold the target's own keys and values.

A KV splice overwrites target slots with the source's; an activation patch at
the prompt phase can overwrite them too. This module keeps, per example and per
layer, which target prompt positions were **overwritten** (their key or value
at that layer no longer comes from the target's own computation), and reduces
it to the two numbers every results row carries:

* ``target_kept``: the share of the target's *message* tokens (its own text:
  BOS and chat-template tokens excluded, see
  :func:`transferlab.engine.batching.message_spans`) whose slots survive in
  every layer;
* ``target_kept_any``: the share whose slots survive in at least one layer.

What counts as overwritten at layer ``l`` (a decision, stated once here):

* a KV splice that writes the slot at ``l`` (right, left, range; the seed's
  splice). ``prepend`` and ``insert`` add the source's slots and move the
  target's (re-rotated keys are still the target's own): nothing is
  overwritten;
* a prompt-phase write at ``k_proj@l`` or ``v_proj@l`` (a patch in any mode,
  a head patch -- some heads are enough --, noise, an ablation): the slot's
  key or value at ``l`` is no longer the target's;
* a prompt-phase **replacement** of the residual stream (a patch with
  ``mode='replace'``, noise, an ablation) at ``resid_pre@l`` overwrites the
  slot at ``l`` and every later layer, at ``resid_post@l`` every later layer:
  those keys and values are computed from the source's (or the noise's)
  stream at that position.

Everything else keeps the slot: ``q_proj``, ``attn_out`` and ``mlp_out``
patches, ``add``/``mix`` on the residual stream and steering vectors change
what later layers compute from the target's tokens without replacing them,
and decode-phase writes touch only the new tokens' slots. Positions written
by the same example's own source (a self-splice) still count as overwritten:
survival says where the target's own slots were replaced, not by what.
"""

from __future__ import annotations

import numpy as np

from .types import Ablate, Intervention, Noise, Patch

_KV_SITES = ("k_proj", "v_proj")


def kv_layers_written(inter: Intervention, layer: int, n_layers: int) -> range:
    """The layers whose keys/values a prompt-phase write of ``inter`` at (resolved) ``layer`` overwrites."""
    site = getattr(inter, "site", None)
    if site in _KV_SITES and isinstance(inter, (Patch, Ablate)):  # Noise and HeadPatch are Patches
        return range(layer, layer + 1)
    replaces = isinstance(inter, (Ablate, Noise)) or (isinstance(inter, Patch) and inter.mode == "replace")
    if replaces and site == "resid_pre":
        return range(layer, n_layers)
    if replaces and site == "resid_post":
        return range(layer + 1, n_layers)
    return range(0)


class Survival:
    """Per example of one batch: ``overwritten[b, l, p]`` for target prompt position ``p`` at layer ``l``."""

    def __init__(self, lengths: list[int], n_layers: int):
        self.lengths = list(lengths)
        self.overwritten = np.zeros((len(lengths), n_layers, max(lengths) if lengths else 0), dtype=bool)

    def mark(self, row: int, layers, positions) -> None:
        """Slots of ``row`` at absolute target ``positions`` overwritten in ``layers``."""
        layers = list(layers)
        positions = np.asarray(positions, dtype=np.int64)
        if layers and positions.size:
            self.overwritten[row, np.asarray(layers)[:, None], positions[None, :]] = True

    def kept(self, row: int) -> np.ndarray:
        """``[layers, target tokens]`` True where the slot kept the target's own key and value."""
        return ~self.overwritten[row, :, : self.lengths[row]]


def kept_shares(kept: np.ndarray, span: tuple[int, int]) -> tuple[float, float]:
    """``(target_kept, target_kept_any)`` of one example from its ``[layers, tokens]`` map and message span.

    NaN for an empty span or a map with no layers (nothing to share).
    """
    a, b = span
    if b <= a or kept.shape[0] == 0:
        return float("nan"), float("nan")
    msg = kept[:, a:b]
    return float(msg.all(axis=0).mean()), float(msg.any(axis=0).mean())
