"""Geometry of activations: participation ratio and R_V.

**Participation ratio (PR)** of a ``tokens x features`` matrix with singular
values ``s``: how many directions its rows effectively spread over.

* ``formula="squared"`` (the seed's code): ``(sum s^2)^2 / sum s^4``;
* ``formula="unsquared"`` (a variant in the seed's documents): ``(sum s)^2 / sum s^2``.

Both lie in ``[1, rank]``: W orthogonal rows of equal norm give W, a rank-one
matrix gives 1. Computed in float64; rows are not centred unless ``center=True``.

**R_V** of a prompt = PR(late) / PR(early), where PR is taken over the value
projection (``v_proj`` output, before attention; no RoPE on V) of the prompt's
last ``window`` tokens at an early and a late layer. Defaults follow the seed on
32 layers (layers 5 and 27, window 16) and scale by depth elsewhere
(``early=5/32``, ``late=27/32``). The window never includes BOS (see
:mod:`transferlab.engine.batching`); a prompt with fewer tokens than the window is an
error, NaN, or a shrunken window, as ``short`` says, and ``status`` records it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

FORMULAS = ("squared", "unsquared")
SHORT_POLICIES = ("error", "nan", "shrink")


class ShortPromptError(ValueError):
    """A prompt shorter than the R_V window (with ``short="error"``)."""


def participation_ratio(matrix, formula: str = "squared", center: bool = False) -> float:
    """PR of a ``tokens x features`` matrix (see module docstring)."""
    if formula not in FORMULAS:
        raise ValueError(f"unknown PR formula {formula!r}; use one of {FORMULAS}")
    if isinstance(matrix, torch.Tensor):
        x = matrix.detach().to("cpu", torch.float64).numpy()
    else:
        x = np.asarray(matrix, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"participation_ratio needs a 2-D (tokens x features) matrix, got shape {x.shape}")
    if center:
        x = x - x.mean(axis=0, keepdims=True)
    s = np.linalg.svd(x, compute_uv=False)
    if not np.all(np.isfinite(s)) or s.sum() == 0.0:
        return float("nan")
    if formula == "squared":
        s2 = s**2
        return float(s2.sum() ** 2 / (s2**2).sum())
    return float(s.sum() ** 2 / (s**2).sum())


def default_rv_layers(n_layers: int, early: float | int = 5 / 32, late: float | int = 27 / 32) -> tuple[int, int]:
    """Early and late layers: fractions of depth (5/32 and 27/32 give 5 and 27 on 32 layers)."""
    from ..sites import resolve_layer

    return resolve_layer(early, n_layers), resolve_layer(late, n_layers)


def rv(
    model,
    prompts: list[str],
    *,
    early: float | int = 5 / 32,
    late: float | int = 27 / 32,
    window: int = 16,
    site: str = "v_proj",
    formula: str = "squared",
    short: str = "error",
    center: bool = False,
    batch_size: int | None = None,
    prompt_format: str | None = None,
) -> pd.DataFrame:
    """R_V per prompt: one batched forward per batch, both layers captured at once.

    ``prompt_format``: ``raw`` or ``chat``; None takes chat when the model has a chat template
    (:func:`transferlab.engine.batching.default_format`). Token-id prompts are used as given.
    """
    if short not in SHORT_POLICIES:
        raise ValueError(f"short must be one of {SHORT_POLICIES}, got {short!r}")
    if formula not in FORMULAS:  # before any prompt: a short one would never reach the formula
        raise ValueError(f"unknown PR formula {formula!r}; use one of {FORMULAS}")
    if window < 2:
        raise ValueError(f"the R_V window must be at least 2 tokens, got {window}")
    if isinstance(prompts, str):
        prompts = [prompts]
    le, ll = default_rv_layers(model.adapter.n_layers, early, late)
    acts = model.capture(
        prompts,
        sites=[f"{site}@{le}", f"{site}@{ll}"],
        window=window,
        batch_size=batch_size,
        prompt_format=prompt_format,
    )
    rows = []
    for i, prompt in enumerate(prompts):
        n = acts.n_tokens(i)
        status = "ok"
        if n < window:
            if short == "error":
                raise ShortPromptError(
                    f"prompt {i} ({prompt[:60]!r}) has {n} tokens (BOS excluded), fewer than the "
                    f"R_V window of {window}; lengthen it, lower window, or pass short='nan' or 'shrink'"
                )
            if short == "nan" or n < 2:
                rows.append(
                    dict(
                        prompt=prompt,
                        n_tokens=n,
                        layer_early=le,
                        layer_late=ll,
                        pr_early=np.nan,
                        pr_late=np.nan,
                        rv=np.nan,
                        status=f"short: {n} < window {window}",
                    )
                )
                continue
            status = f"shrunk: window {n} < {window}"
        pe = participation_ratio(acts[f"{site}@{le}"][i], formula, center)
        pl = participation_ratio(acts[f"{site}@{ll}"][i], formula, center)
        value = pl / pe if pe and np.isfinite(pe) and np.isfinite(pl) else np.nan
        if not np.isfinite(value):
            status = "nan: degenerate activations"
        rows.append(
            dict(
                prompt=prompt,
                n_tokens=n,
                layer_early=le,
                layer_late=ll,
                pr_early=pe,
                pr_late=pl,
                rv=value,
                status=status,
            )
        )
    return pd.DataFrame(
        rows, columns=["prompt", "n_tokens", "layer_early", "layer_late", "pr_early", "pr_late", "rv", "status"]
    )
