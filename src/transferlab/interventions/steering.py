"""Steering-vector files: one site, one or more layers, and what the vectors were built from.

A steering vector (CAA / ActAdd style) is the mean difference of an
activation between two groups of prompts; :func:`transferlab.engine.steering.build_steering`
builds one, :class:`~transferlab.interventions.types.Steer` adds ``alpha``
times it during generation (plan text ``steer:PATH[@LAYER][:aX]``).

The file is a safetensors file: one float32 tensor ``layer.<index>`` of the
site's width per layer, and in the header's metadata (key ``transferlab``) a
JSON object with at least ``format`` (:data:`FILE_FORMAT`), ``version``,
``site``, ``layers`` (indices), ``width`` and ``model`` -- the spec it was
built on and its fingerprint (:mod:`transferlab.models.fingerprint`), checked
before the vector is added to any model. Everything else (groups, prompt
counts, bank and its version, prompt format, positions averaged) is recorded
as the builder wrote it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..models.fingerprint import config_problem, fingerprint_problem
from ..sites import SiteError, resolve_layer
from .types import InterventionError, Steer

FILE_FORMAT = "transferlab.steering_vector"
FILE_VERSION = 1
META_KEY = "transferlab"


@dataclass
class SteeringVectors:
    """Vectors at one site, by layer index, and the metadata they were saved with."""

    site: str
    vectors: dict[int, torch.Tensor]  # layer index -> [width] float32
    meta: dict = field(default_factory=dict)

    @property
    def width(self) -> int:
        return int(next(iter(self.vectors.values())).numel())

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    def layer(self, requested, path: str = "") -> int:
        """The stored layer index a plan's layer (index, negative index or depth fraction; None = the only
        one) names, resolved with the number of layers of the model the vectors were built on."""
        where = f"steering vector {path}" if path else "steering vector"
        if requested is None:
            if len(self.vectors) != 1:
                raise InterventionError(
                    f"{where} holds layers {self.layers}; name one, e.g. steer:{path or 'FILE'}@{self.layers[0]}"
                )
            return self.layers[0]
        n_layers = self.meta.get("model", {}).get("config", {}).get("n_layers")
        try:
            index = resolve_layer(requested, n_layers) if n_layers else int(requested)
        except (SiteError, ValueError) as exc:
            raise InterventionError(f"{where}: layer {requested!r}: {exc}") from None
        if index not in self.vectors:
            raise InterventionError(
                f"{where} holds layers {self.layers} ({n_layers} layers in its model); layer {requested!r} "
                f"is layer {index}: build it with transferlab steer build --layers {requested}"
            )
        return index


def save_steering(path: str | Path, vectors: SteeringVectors) -> Path:
    """Write ``vectors`` to ``path`` (a ``.safetensors`` file; parent folders are created)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        **vectors.meta,
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "site": vectors.site,
        "layers": vectors.layers,
        "width": vectors.width,
    }
    tensors = {f"layer.{i}": v.detach().to(torch.float32).cpu().contiguous() for i, v in vectors.vectors.items()}
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    return path


def load_steering(path: str | Path) -> SteeringVectors:
    """Read a file written by :func:`save_steering`; :class:`InterventionError` naming what is wrong."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise InterventionError(
            f"steering vector file not found: {p} (build one with: transferlab steer build --out {p} ...)"
        )
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InterventionError(f"{p} is not a readable safetensors file ({exc})") from None
    try:
        meta = json.loads(header[META_KEY])
    except (KeyError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FILE_FORMAT:
        raise InterventionError(
            f"{p} is a safetensors file but not a transferlab steering vector (no '{META_KEY}' metadata); "
            "build one with transferlab steer build"
        )
    if meta.get("version") != FILE_VERSION:
        raise InterventionError(
            f"{p}: steering vector file version {meta.get('version')!r}; this transferlab reads version "
            f"{FILE_VERSION}: rebuild it with transferlab steer build"
        )
    vectors: dict[int, torch.Tensor] = {}
    for key, t in tensors.items():
        name, _, index = key.partition(".")
        if name != "layer" or not index.lstrip("-").isdigit() or t.dim() != 1:
            raise InterventionError(f"{p}: unexpected tensor {key!r} {tuple(t.shape)} (expected layer.<i>, 1-D)")
        vectors[int(index)] = t.to(torch.float32)
    if not vectors:
        raise InterventionError(f"{p}: the file holds no vectors")
    widths = {int(v.numel()) for v in vectors.values()}
    if len(widths) != 1 or widths != {meta.get("width")}:
        raise InterventionError(f"{p}: vectors of width {sorted(widths)}, metadata says {meta.get('width')}")
    if not all(torch.isfinite(v).all() for v in vectors.values()):
        raise InterventionError(f"{p}: a vector holds NaN or infinity")
    return SteeringVectors(str(meta.get("site")), vectors, meta)


_LOADED: dict[tuple, SteeringVectors] = {}  # (resolved path, size, mtime) -> vectors: a plan is parsed often


def _read_cached(path: str) -> SteeringVectors:
    p = Path(path)
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and key in _LOADED:
        return _LOADED[key]
    out = load_steering(p)
    if key is not None:
        if len(_LOADED) > 32:
            _LOADED.clear()
        _LOADED[key] = out
    return out


def resolve_steer(inter):
    """A file-form :class:`~.types.Steer` with its vector read from its file (site, layer index, vector and
    ``built_on`` filled in); any other intervention unchanged."""
    if not isinstance(inter, Steer) or inter.file is None or inter.loaded:
        return inter
    sv = _read_cached(inter.file)
    index = sv.layer(inter.layer, inter.file)
    if inter.site is not None and inter.site != sv.site:
        raise InterventionError(
            f"{inter.describe()}: the file's vectors are at {sv.site}, the plan names {inter.site}; "
            "drop the site or build a vector at that site"
        )
    return replace(
        inter,
        site=sv.site,
        layer=index,
        vector=tuple(sv.vectors[index].tolist()),
        built_on=sv.meta.get("model"),
    )


def steer_problem(inter, model) -> str | None:
    """Why a loaded file-form :class:`~.types.Steer` cannot act on ``model`` (None: it can).

    ``model`` is a loaded :class:`~transferlab.models.Model` (architecture and
    weights are compared) or a shape read without weights with some of
    ``n_layers``, ``n_heads``, ``n_kv_heads``, ``hidden_size`` (those are).
    """
    if not isinstance(inter, Steer) or inter.built_on is None:
        return None
    built = inter.built_on
    spec = built.get("spec", "another model")
    if hasattr(model, "hf"):
        problem = fingerprint_problem(built, model)
        name = getattr(model, "name", "this model")
    else:
        here = {k: getattr(model, k) for k in ("n_layers", "n_heads", "n_kv_heads", "hidden_size") if hasattr(model, k)}
        problem = config_problem(built.get("config", {}), here)
        problem = problem and f"another architecture ({problem})"
        name = getattr(model, "name", "this model")
    if problem is None:
        return None
    return (
        f"{inter.file} was built on {spec}, not on {name}: {problem}; build a vector on this model "
        f"(transferlab steer build --model {name} ...)"
    )
