"""Architecture adapters: where each site lives in a family of HF models.

An :class:`Adapter` holds the numbers an experiment needs (layers, query and
key/value heads, head_dim, hidden size, the width of each site) and maps a
:class:`~transferlab.sites.HookPoint` to a :class:`SiteHandle`: the module to
hook, whether the activation is that module's input or output, and, for fused
projections (Phi-3's ``qkv_proj``), the slice of the output that holds it.

Supported families: llama, mistral, mixtral, qwen2, gemma2, gemma3 (separate
q/k/v projections; Gemma-3's ``k_proj``/``q_proj`` sites are the projections'
outputs before its QK-norm and RoPE) and phi3 (fused ``qkv_proj``). Any other decoder with the usual
``model.layers[i].self_attn.{q,k,v}_proj`` layout is accepted as ``generic``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..hooks import SiteHandle
from ..sites import ACTIVATION_SITES, HookPoint, SiteError, check_site

SEPARATE_QKV = ("llama", "mistral", "mixtral", "qwen2", "gemma2", "gemma3", "qwen3", "gemma", "granite")
ALIASES = {"gemma3_text": "gemma3"}  # config.model_type -> family (Gemma-3's text-only model)
FUSED_QKV = ("phi3",)
FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "gemma2", "gemma3", "phi3")


@dataclass(frozen=True)
class Adapter:
    """Architecture facts and the site map of one loaded model."""

    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_size: int
    fused_qkv: bool
    rope_theta: float | None
    rope_scaling: dict | None
    layers: nn.ModuleList

    @property
    def q_width(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Width of k_proj / v_proj output: n_kv_heads * head_dim (not hidden_size under GQA)."""
        return self.n_kv_heads * self.head_dim

    def width(self, site: str) -> int:
        check_site(site, ACTIVATION_SITES)
        if site == "q_proj":
            return self.q_width
        if site in ("k_proj", "v_proj"):
            return self.kv_width
        if site == "z":
            return self.q_width
        if site == "mlp_hidden":
            return self._down_proj(0).in_features
        return self.hidden_size

    def _down_proj(self, layer: int) -> nn.Module:
        """The MLP's down projection at ``layer`` (its input is the ``mlp_hidden`` site)."""
        mlp = getattr(self.layers[layer], "mlp", None)
        down = getattr(mlp, "down_proj", None) if mlp is not None else None
        if down is None:
            raise SiteError(
                f"{self.family}: layer {layer} has no MLP down_proj (a mixture-of-experts block?), so no "
                "mlp_hidden site; use mlp_out"
            )
        return down

    def heads(self, site: str) -> int:
        """How many heads a site is split into (query heads for q_proj, kv heads for k/v)."""
        if site in ("q_proj", "z"):
            return self.n_heads
        if site in ("k_proj", "v_proj"):
            return self.n_kv_heads
        raise SiteError(f"site {site!r} has no heads; head-level sites are q_proj, k_proj, v_proj, z")

    def handle(self, point: HookPoint) -> SiteHandle:
        site, layer = point.site, point.layer
        check_site(site, ACTIVATION_SITES)
        if not 0 <= layer < self.n_layers:
            raise SiteError(f"layer {layer} does not exist: the model has {self.n_layers} layers")
        block = self.layers[layer]
        attn = block.self_attn
        if site in ("q_proj", "k_proj", "v_proj"):
            if self.fused_qkv:
                q, kv = self.q_width, self.kv_width
                bounds = {"q_proj": (0, q), "k_proj": (q, q + kv), "v_proj": (q + kv, q + 2 * kv)}
                return SiteHandle(attn.qkv_proj, "output", *bounds[site])
            return SiteHandle(getattr(attn, site), "output")
        if site == "z":
            return SiteHandle(attn.o_proj, "input")
        if site == "attn_out":
            return SiteHandle(attn.o_proj, "output")
        if site == "mlp_hidden":
            return SiteHandle(self._down_proj(layer), "input")
        if site == "resid_pre":
            return SiteHandle(block, "input")
        if site == "resid_post":
            return SiteHandle(block, "output")
        if site == "mlp_out":
            mlp = getattr(block, "mlp", None) or getattr(block, "block_sparse_moe", None)
            if mlp is None:
                raise SiteError(f"{self.family}: no MLP module found in layer {layer}")
            return SiteHandle(mlp, "output")
        raise SiteError(f"unknown site {site!r}")  # pragma: no cover

    def describe(self) -> dict:
        return {
            "family": self.family,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "hidden_size": self.hidden_size,
            "q_width": self.q_width,
            "kv_width (k_proj/v_proj)": self.kv_width,
            "fused_qkv": self.fused_qkv,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
        }


def _rope(config) -> tuple[float | None, dict | None]:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and params:
        if "rope_theta" in params or "rope_type" in params:
            theta = params.get("rope_theta", getattr(config, "rope_theta", None))
            kind = params.get("rope_type", "default")
            return theta, (None if kind == "default" else dict(params))
        # per-layer-type parameters (e.g. {"full_attention": {...}}): take the first.
        first = next(iter(params.values()))
        if isinstance(first, dict):
            kind = first.get("rope_type", "default")
            return first.get("rope_theta"), (None if kind == "default" else dict(first))
    theta = getattr(config, "rope_theta", None)
    scaling = getattr(config, "rope_scaling", None)
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type", "default")) == "default":
        scaling = None
    return theta, scaling


def make_adapter(hf_model: nn.Module) -> Adapter:
    """Build the adapter for a loaded HF causal LM, or explain why it is unsupported."""
    config = hf_model.config
    family = getattr(config, "model_type", "unknown")
    family = ALIASES.get(family, family)
    base = getattr(hf_model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise SiteError(
            f"unsupported architecture {family!r}: expected model.model.layers "
            f"(supported families: {', '.join(FAMILIES)})"
        )
    attn = layers[0].self_attn
    fused = hasattr(attn, "qkv_proj")
    if not fused and not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj")):
        raise SiteError(f"unsupported attention layout in {family!r}: no q/k/v projections found")
    if family not in SEPARATE_QKV + FUSED_QKV:
        family = f"generic({family})"
    n_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    theta, scaling = _rope(config)
    return Adapter(
        family=family,
        n_layers=len(layers),
        n_heads=n_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
        head_dim=head_dim,
        hidden_size=config.hidden_size,
        fused_qkv=fused,
        rope_theta=theta,
        rope_scaling=scaling,
        layers=layers,
    )
