"""Summary section ``rv_groups``: R_V per prompt group over distinct prompts, per model and role."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..stats import DDOF
from .common import ReportError, order


def rv_prompt_table(results: pd.DataFrame, rv_groups: pd.DataFrame | None = None) -> pd.DataFrame:
    """R_V per distinct prompt: columns ``model, role, prompt_id, group, rv``.

    From ``rv_groups`` when given (needs ``group`` and ``rv``; ``model``,
    ``role`` and ``prompt_id`` optional), else from the results' ``rv_source``
    / ``rv_target`` with ``source_group`` / ``target_group``, each prompt once
    per (model, role).
    """
    cols = ["model", "role", "prompt_id", "group", "rv"]
    if rv_groups is not None:
        missing = [c for c in ("group", "rv") if c not in rv_groups.columns]
        if missing:
            raise ReportError(f"rv_groups lacks columns {missing}")
        t = rv_groups.copy()
        t["model"] = t["model"] if "model" in t else (order(results["model"])[0] if len(results) else "")
        t["role"] = t["role"] if "role" in t else "prompt"
        t["prompt_id"] = t["prompt_id"] if "prompt_id" in t else np.arange(len(t))
        return t[cols].assign(rv=lambda d: d["rv"].astype(float)).reset_index(drop=True)
    parts = []
    for role in ("source", "target"):
        need = [f"rv_{role}", f"{role}_id", f"{role}_group"]
        if all(c in results.columns for c in need):
            p = results[["model", *need]].set_axis(["model", "rv", "prompt_id", "group"], axis=1)
            parts.append(p.drop_duplicates(["model", "prompt_id"]).assign(role=role))
    if not parts:
        return pd.DataFrame(columns=cols)
    t = pd.concat(parts, ignore_index=True)
    return t[cols].assign(rv=lambda d: d["rv"].astype(float))


def rv_summary(table: pd.DataFrame) -> list[dict]:
    rows = []
    for (model, role, group), g in table.groupby(["model", "role", "group"], sort=False):
        v = g["rv"]
        x = v.dropna()
        rows.append(
            {
                "model": model,
                "role": role,
                "group": group,
                "n_prompts": int(len(v)),
                "n": int(x.size),
                "n_nan": int(v.isna().sum()),
                "mean": x.mean() if x.size else np.nan,
                "sd": x.std(ddof=DDOF) if x.size > 1 else np.nan,
                "median": x.median() if x.size else np.nan,
                "ddof": DDOF,
                "values": x.tolist(),
            }
        )
    return rows
