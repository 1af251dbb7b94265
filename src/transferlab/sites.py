"""Sites and hook points: the names of places whose activations we read or write.

A **site** is a named place in every decoder layer:

==========  ==================================================================
site        meaning (shape per token)
==========  ==================================================================
q_proj      output of the query projection (n_heads * head_dim)
k_proj      output of the key projection, before RoPE (n_kv_heads * head_dim)
v_proj      output of the value projection (n_kv_heads * head_dim; no RoPE)
z           the attention heads' outputs, concatenated, before o_proj (its input;
            n_heads * head_dim): head h is channels h*head_dim .. (h+1)*head_dim-1
            (TransformerLens's ``hook_z``); patches and ablations take query
            heads (``z@3:h5``)
attn_out    output of the attention output projection o_proj (hidden_size)
resid_pre   the residual stream entering the layer (hidden_size)
resid_post  the residual stream leaving the layer (hidden_size)
mlp_out     output of the layer's MLP / mixture-of-experts block (hidden_size)
mlp_hidden  the MLP's hidden activations, the input of down_proj (intermediate_size;
            ``act(gate) * up`` in gated MLPs: one channel per neuron); not on
            mixture-of-experts blocks
kv          the layer's key/value cache (keys after RoPE), for splicing
==========  ==================================================================

A site plus a layer is a **hook point**, written ``v_proj@27``. Layers may be
an index (``27``), a negative index (``-1`` is the last layer) or a fraction
of depth (``0.84`` -> ``0.84 * n_layers`` rounded half up, at most the last
layer), so one config serves models of any depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .suggest import unknown

ACTIVATION_SITES = ("q_proj", "k_proj", "v_proj", "z", "attn_out", "resid_pre", "resid_post", "mlp_out", "mlp_hidden")
HEAD_SITES = ("q_proj", "k_proj", "v_proj", "z")  # sites split into attention heads (z and q_proj: query heads)
SITES = ACTIVATION_SITES + ("kv",)


class SiteError(ValueError):
    """An unknown site, a malformed hook point, or a layer that does not exist."""


def resolve_layer(layer: int | float | str, n_layers: int) -> int:
    """Turn an index, negative index or depth fraction into a layer index in [0, n_layers)."""
    original = layer
    if isinstance(layer, str):
        text = layer.strip()
        try:
            layer = int(text)
        except ValueError:
            try:
                layer = float(text)
            except ValueError:
                raise SiteError(
                    f"layer {original!r} is not a number; give an index (27, -1) or a "
                    f"fraction of depth (0.84). The model has {n_layers} layers (0..{n_layers - 1})."
                ) from None
    if isinstance(layer, bool):
        raise SiteError(f"layer {original!r} is not a layer index")
    if isinstance(layer, float):
        if layer == 1.0:  # "all of the depth" or "layer 1"? Refuse rather than guess.
            raise SiteError(
                f"layer {original!r}: a fraction of depth must lie in [0, 1); 1.0 is ambiguous "
                f"(write -1 for the last layer, or the integer 1 for layer 1). "
                f"The model has {n_layers} layers (0..{n_layers - 1})."
            )
        if layer.is_integer() and not 0.0 <= layer < 1.0:
            layer = int(layer)
        elif 0.0 <= layer < 1.0:
            return min(int(math.floor(layer * n_layers + 0.5)), n_layers - 1)  # half up, not to even
        else:
            raise SiteError(
                f"layer {original!r}: a fraction of depth must lie in [0, 1); "
                f"the model has {n_layers} layers (0..{n_layers - 1})."
            )
    idx = layer + n_layers if layer < 0 else layer
    if not 0 <= idx < n_layers:
        raise SiteError(
            f"layer {original} does not exist: the model has {n_layers} layers "
            f"(valid: 0..{n_layers - 1}, -{n_layers}..-1, or a fraction of depth in [0, 1))."
        )
    return idx


@dataclass(frozen=True, order=True)
class HookPoint:
    """A site at one resolved layer, e.g. ``HookPoint("v_proj", 27)``."""

    site: str
    layer: int

    def __str__(self) -> str:
        return f"{self.site}@{self.layer}"


def check_site(site: str, allowed: tuple[str, ...] = SITES) -> str:
    if site not in allowed:
        raise SiteError(unknown("site", site, allowed))
    return site


def parse_hook_point(text: str | HookPoint, n_layers: int) -> HookPoint:
    """Parse ``"site@layer"`` (or ``"kv"`` for the whole cache, layer -1 meaning all)."""
    if isinstance(text, HookPoint):
        check_site(text.site)
        if text.site == "kv" and text.layer == -1:  # the whole cache, not the last layer
            return text
        return HookPoint(text.site, resolve_layer(text.layer, n_layers))
    text = text.strip()
    if text == "kv":
        return HookPoint("kv", -1)
    if "@" not in text:
        raise SiteError(
            f"hook point {text!r} must be written site@layer (e.g. v_proj@27, resid_post@0.5) "
            f"or 'kv'; known sites: {', '.join(SITES)}"
        )
    site, layer = text.split("@", 1)
    check_site(site.strip())
    return HookPoint(site.strip(), resolve_layer(layer, n_layers))
