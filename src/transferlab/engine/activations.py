"""``Activations``: what :func:`~transferlab.engine.capture.capture` returns, for notebooks and as sources.

Captured activations are indexed two ways::

    acts = model.capture(prompts, sites=["v_proj@3", "resid_post@0.5", "kv"])
    acts["v_proj@3"]        # by hook point: one [tokens, width] tensor per prompt
    acts[0]                 # by prompt: a PromptActivations (acts[0]["v_proj@3"] is a [tokens, width] tensor)
    acts[0, "v_proj@3"]     # the same tensor
    acts[1:3], acts[[0, 2]] # some prompts: an Activations (usable as the sources of as many targets)

Hook points are matched after resolving their layer (``"v_proj@-1"`` is the
last layer's ``v_proj``). Every tensor covers the prompt's kept tokens only:
all of them (BOS included) without a window, the last ``min(W, n_tokens)``
(never BOS) with ``window=W``; ``positions[i]`` holds their absolute positions.

``acts.save(path)`` writes one safetensors file (the tensors, and as its
metadata the prompts, token ids, window, prompt format, layer count and
tokenizer fingerprint); :func:`load_activations` reads it back, equal to what
was saved. ``acts.to_dict()`` gives the same content as plain Python values
and tensors.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..sites import HookPoint, parse_hook_point

SAVE_FORMAT = 1  # version of the file layout written by Activations.save


@dataclass
class PromptActivations:
    """One prompt's captured activations: ``acts[i]``. ``self["v_proj@3"]`` is a ``[tokens, width]`` tensor."""

    prompt: object  # the prompt as given (text or token ids)
    token_ids: list[int]
    has_bos: bool
    positions: torch.Tensor  # absolute positions of the kept tokens
    points: dict[str, torch.Tensor]
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer (keys, values) [heads, tokens, head_dim]
    n_layers: int = 0

    def __getitem__(self, key: str | HookPoint) -> torch.Tensor:
        return _by_point(self, key)

    def keys(self) -> list[str]:
        return _captured(self)


def _point_name(key, n_layers: int, points) -> str:
    name = str(parse_hook_point(key, n_layers)) if n_layers else str(key)
    if name not in points:
        raise KeyError(f"{key!r} was not captured; captured: {', '.join(points) or 'none'}")
    return name


def _by_point(acts: PromptActivations | Activations, key):
    """``acts[key]`` for a hook point or ``"kv"``: what one prompt, or every prompt, captured there."""
    if str(key).strip() == "kv":
        if acts.kv is None:
            raise KeyError("'kv' was not captured; pass 'kv' among the sites")
        return acts.kv
    return acts.points[_point_name(key, acts.n_layers, acts.points)]


def _captured(acts: PromptActivations | Activations) -> list[str]:
    """The captured hook points, and ``"kv"`` when the cache was captured."""
    return list(acts.points) + (["kv"] if acts.kv is not None else [])


@dataclass
class Activations:
    """Activations of a list of prompts at some hook points (and optionally the KV cache)."""

    prompts: list
    token_ids: list[list[int]]
    has_bos: list[bool]
    positions: list[torch.Tensor]
    points: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    kv: list[list[tuple[torch.Tensor, torch.Tensor]]] | None = None
    n_layers: int = 0
    window: int | None = None
    tokenizer_fingerprint: str | None = None  # which vocabulary produced token_ids
    prompt_format: str | None = None  # "raw" or "chat": how text prompts became token_ids

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, key):
        """By hook point (a list of tensors, one per prompt), by prompt index (:class:`PromptActivations`), by
        ``(prompt, hook point)`` (one tensor), or by a slice / list of indices (an :class:`Activations`)."""
        if isinstance(key, tuple) and len(key) == 2:
            return self.prompt(key[0])[key[1]]
        if isinstance(key, slice):
            return self.select(range(len(self))[key])
        if isinstance(key, (list, range)) or (isinstance(key, torch.Tensor) and key.dim() == 1):
            return self.select([int(i) for i in key])
        if _is_index(key):
            return self.prompt(int(key))
        if not isinstance(key, (str, HookPoint)):
            raise TypeError(
                f"index Activations by hook point ('v_proj@3'), prompt (0), (prompt, hook point) or a slice; "
                f"got {type(key).__name__}"
            )
        return _by_point(self, key)

    def keys(self) -> list[str]:
        """The captured hook points (and ``"kv"`` when the cache was captured)."""
        return _captured(self)

    def prompt(self, i: int) -> PromptActivations:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"prompt {i} does not exist: {n} prompt(s) captured")
        i = i % n
        return PromptActivations(
            self.prompts[i],
            self.token_ids[i],
            self.has_bos[i],
            self.positions[i],
            {k: v[i] for k, v in self.points.items()},
            self.kv[i] if self.kv is not None else None,
            self.n_layers,
        )

    def select(self, indices) -> "Activations":
        """The prompts ``indices``, in that order (tensors shared, not copied)."""
        idx = list(indices)
        for i in idx:
            if not -len(self) <= i < len(self):
                raise IndexError(f"prompt {i} does not exist: {len(self)} prompt(s) captured")
        return Activations(
            [self.prompts[i] for i in idx],
            [self.token_ids[i] for i in idx],
            [self.has_bos[i] for i in idx],
            [self.positions[i] for i in idx],
            {k: [v[i] for i in idx] for k, v in self.points.items()},
            [self.kv[i] for i in idx] if self.kv is not None else None,
            self.n_layers,
            self.window,
            self.tokenizer_fingerprint,
            self.prompt_format,
        )

    def n_tokens(self, i: int) -> int:
        """Tokens of prompt ``i`` without BOS (the length windows are measured against)."""
        return len(self.token_ids[i]) - int(self.has_bos[i])

    def cpu(self) -> "Activations":
        return self._map(lambda t: t.cpu())

    def _map(self, fn) -> "Activations":
        kv = None
        if self.kv is not None:
            kv = [[(fn(k), fn(v)) for k, v in per] for per in self.kv]
        return Activations(
            self.prompts,
            self.token_ids,
            self.has_bos,
            [fn(p) for p in self.positions],
            {k: [fn(t) for t in v] for k, v in self.points.items()},
            kv,
            self.n_layers,
            self.window,
            self.tokenizer_fingerprint,
            self.prompt_format,
        )

    # -- plain values and files ------------------------------------------------
    def metadata(self) -> dict:
        """Everything but the tensors, as JSON-ready values."""
        return {
            "format": SAVE_FORMAT,
            "prompts": [p if isinstance(p, str) else list(map(int, p)) for p in self.prompts],
            "token_ids": [list(map(int, t)) for t in self.token_ids],
            "has_bos": [bool(b) for b in self.has_bos],
            "points": list(self.points),
            "kv": self.kv is not None,
            "n_layers": self.n_layers,
            "window": self.window,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "prompt_format": self.prompt_format,
        }

    def to_dict(self) -> dict:
        """The metadata's values, plus ``positions`` (a tensor per prompt), ``points`` (hook point -> a tensor
        per prompt) and ``kv`` (per prompt, per layer ``(keys, values)``, or None)."""
        out = self.metadata()
        out.pop("format")
        out["points"] = {k: list(v) for k, v in self.points.items()}
        out["positions"] = list(self.positions)
        out["kv"] = [list(per) for per in self.kv] if self.kv is not None else None
        return out

    def save(self, path) -> Path:
        """Write one safetensors file (see the module docstring); returns its path."""
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        for i, p in enumerate(self.positions):
            tensors[f"positions/{i}"] = p
        for name, per in self.points.items():
            for i, t in enumerate(per):
                tensors[f"points/{name}/{i}"] = t
        for i, per in enumerate(self.kv or []):
            for layer, (k, v) in enumerate(per):
                tensors[f"kv/{i}/{layer}/k"] = k
                tensors[f"kv/{i}/{layer}/v"] = v
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"transferlab.activations": json.dumps(self.metadata())})
        return path


def _is_index(key) -> bool:
    if isinstance(key, bool):
        return False
    if isinstance(key, numbers.Integral):  # int, numpy integers
        return True
    return isinstance(key, torch.Tensor) and key.dim() == 0 and not key.is_floating_point()


def load_activations(path, device=None) -> Activations:
    """Read an :meth:`Activations.save` file back (tensors on ``device``, default CPU)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no activations file at {path}")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        raw = (f.metadata() or {}).get("transferlab.activations")
        if raw is None:
            raise ValueError(
                f"{path} is a safetensors file but not one Activations.save wrote (no transferlab metadata)"
            )
        meta = json.loads(raw)
        if meta.get("format") != SAVE_FORMAT:
            raise ValueError(
                f"{path} was written in activations file format {meta.get('format')}; this transferlab reads "
                f"format {SAVE_FORMAT}"
            )
        n = len(meta["prompts"])
        get = f.get_tensor
        positions = [get(f"positions/{i}") for i in range(n)]
        points = {name: [get(f"points/{name}/{i}") for i in range(n)] for name in meta["points"]}
        kv = None
        if meta["kv"]:
            layers: dict[int, set[int]] = {}
            for k in f.keys():
                if k.startswith("kv/"):
                    _, i, layer, _ = k.split("/")
                    layers.setdefault(int(i), set()).add(int(layer))
            kv = [[(get(f"kv/{i}/{x}/k"), get(f"kv/{i}/{x}/v")) for x in sorted(layers.get(i, ()))] for i in range(n)]
    acts = Activations(
        meta["prompts"],
        meta["token_ids"],
        meta["has_bos"],
        positions,
        points,
        kv,
        meta["n_layers"],
        meta["window"],
        meta["tokenizer_fingerprint"],
        meta.get("prompt_format"),
    )
    return acts._map(lambda t: t.to(device)) if device is not None else acts
