"""Summary section ``audit``: per (model, condition, intervention) how many examples it never fired in."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .common import order


def parse_audit(value) -> list[dict]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return json.loads(value) if value.strip() else []
    return list(value)


def audit_summary(results: pd.DataFrame, conditions: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (model, condition, intervention): examples, examples_never_fired, firing stats.

    Sorted so that interventions that never fired in some example come first
    (most examples first). ``examples`` counts audit rows; ``rows`` the
    condition's result rows (they differ if the audit is incomplete).
    """
    cols = [
        "model",
        "condition",
        "intervention",
        "description",
        "hook_point",
        "kind",
        "phase",
        "rows",
        "examples",
        "examples_never_fired",
        "examples_no_effect",
        "mean_fired_prompt",
        "mean_fired_decode",
        "mean_positions",
        "mean_change_norm",
    ]
    if "audit" not in results.columns:
        return pd.DataFrame(columns=cols)
    recs = []
    for model, cond, audit in zip(results["model"], results["condition"], results["audit"]):
        for a in parse_audit(audit):
            recs.append({"model": model, "condition": cond, **a})
    if not recs:
        return pd.DataFrame(columns=cols)
    a = pd.DataFrame(recs)
    for c in ("fired_prompt", "fired_decode", "positions", "change_norm"):
        a[c] = pd.to_numeric(a.get(c, np.nan), errors="coerce")
    a["never_fired"] = a["never_fired"].astype(bool)
    # fired, yet wrote exactly what was there (e.g. an earlier patch already set that activation)
    a["no_effect"] = (~a["never_fired"]) & (a["change_norm"] == 0)
    g = a.groupby(["model", "condition", "intervention", "description", "hook_point"], sort=False, dropna=False)
    out = g.agg(
        kind=("kind", "first"),
        phase=("phase", "first"),
        examples=("never_fired", "size"),
        examples_never_fired=("never_fired", "sum"),
        examples_no_effect=("no_effect", "sum"),
        mean_fired_prompt=("fired_prompt", "mean"),
        mean_fired_decode=("fired_decode", "mean"),
        mean_positions=("positions", "mean"),
        mean_change_norm=("change_norm", "mean"),
    ).reset_index()
    rows = results.groupby(["model", "condition"]).size()
    out["rows"] = [int(rows[(m, c)]) for m, c in zip(out["model"], out["condition"])]
    out["examples_never_fired"] = out["examples_never_fired"].astype(int)
    out["examples_no_effect"] = out["examples_no_effect"].astype(int)
    rank = {c: i for i, c in enumerate(conditions or order(results["condition"]))}
    mrank = {m: i for i, m in enumerate(order(results["model"]))}
    out = out.assign(
        _nf=-(out.examples_never_fired > 0).astype(int),
        _n=-out.examples_never_fired,
        _m=out.model.map(mrank),
        _c=out.condition.map(rank),
    )
    out = out.sort_values(["_nf", "_n", "_m", "_c", "intervention"], kind="stable")
    return out[cols].reset_index(drop=True)
