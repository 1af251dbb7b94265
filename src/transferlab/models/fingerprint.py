"""A model's fingerprint: what a file built on a model (a steering vector) must match to be used on another.

Two parts:

- ``config``: the architecture facts that decide whether a vector can even be
  added (family, layers, heads, hidden size, vocabulary size). Read without
  weights too (:func:`shape_config`), so a vector built on another
  architecture is refused before a run starts.
- ``probe``: :data:`N_PROBE` weights read at fixed positions spread over every
  parameter tensor (names sorted), as float32. Two loads of the same
  checkpoint agree to the precision they were loaded in; another checkpoint of
  the same architecture (another seed, another fine-tune) differs in most of
  them. :func:`fingerprint_problem` compares probes within bfloat16's relative
  resolution (``2**-7``), so a vector built on the float32 model serves the
  bfloat16 one and vice versa, while other weights are refused.
"""

from __future__ import annotations

import math

import torch

N_PROBE = 256
BF16_RESOLUTION = 2.0**-7  # relative spacing of bfloat16 numbers: the coarsest dtype a model is loaded in
CONFIG_KEYS = ("family", "n_layers", "n_heads", "n_kv_heads", "hidden_size", "vocab_size")


def model_config(model) -> dict:
    """The architecture part of the fingerprint of a loaded :class:`~transferlab.models.Model`."""
    ad = model.adapter
    return {
        "family": ad.family,
        "n_layers": int(ad.n_layers),
        "n_heads": int(ad.n_heads),
        "n_kv_heads": int(ad.n_kv_heads),
        "hidden_size": int(ad.hidden_size),
        "vocab_size": int(model.hf.config.vocab_size),
    }


def weight_probe(model, n: int = N_PROBE) -> list[float]:
    """``n`` weights at fixed positions: the parameter tensors in name order, ``n`` evenly spaced flat
    indices over their concatenation (independent of device, dtype and of how the model was placed)."""
    params = sorted((name, p) for name, p in model.hf.named_parameters() if p.device.type != "meta")
    sizes = [p.numel() for _, p in params]
    total = sum(sizes)
    if total == 0:
        return []
    wanted = [(k * total) // n for k in range(n)]
    out, start, j = [], 0, 0
    for (_, p), size in zip(params, sizes):
        stop = start + size
        picks = []
        while j < len(wanted) and wanted[j] < stop:
            picks.append(wanted[j] - start)
            j += 1
        if picks:
            flat = p.detach().reshape(-1)
            out.extend(flat[torch.tensor(picks, device=flat.device)].float().cpu().tolist())
        start = stop
    return out


def model_fingerprint(model) -> dict:
    """``{"config": ..., "probe": [...]}`` of a loaded model (cached on the model object)."""
    cached = getattr(model, "_transferlab_fingerprint", None)
    if cached is None:
        cached = {"config": model_config(model), "probe": weight_probe(model)}
        try:
            model._transferlab_fingerprint = cached
        except AttributeError:  # pragma: no cover - a model object that refuses attributes
            pass
    return cached


def config_problem(built: dict, here: dict) -> str | None:
    """Why a file built on a model of config ``built`` cannot serve one of config ``here`` (None: it can).
    Keys missing on either side (a shape read without weights knows fewer) are not compared."""
    diffs = [
        f"{k} {built[k]} vs {here[k]}"
        for k in CONFIG_KEYS
        if k in built and k in here and built[k] is not None and here[k] is not None and built[k] != here[k]
    ]
    return "; ".join(diffs) or None


def probe_problem(built: list[float], here: list[float]) -> str | None:
    """Why two weight probes are not the same weights (None: equal within bfloat16 resolution)."""
    if len(built) != len(here):
        return f"{len(built)} probed weights vs {len(here)}"
    off = sum(
        1
        for a, b in zip(built, here)
        if not (math.isfinite(a) and math.isfinite(b)) or abs(a - b) > BF16_RESOLUTION * max(abs(a), abs(b)) + 1e-12
    )
    return f"{off} of {len(built)} probed weights differ" if off else None


def fingerprint_problem(built: dict, model) -> str | None:
    """Why a file whose fingerprint is ``built`` cannot be used on ``model`` (None: it can)."""
    here = model_fingerprint(model)
    problem = config_problem(built.get("config", {}), here["config"])
    if problem:
        return f"another architecture ({problem})"
    if "probe" in built:
        problem = probe_problem(built["probe"], here["probe"])
        if problem:
            return f"other weights ({problem})"
    return None
