"""Summary section ``survival``: how much of the target each condition leaves in place (``target_kept``).

Per (model, condition): the mean of ``target_kept`` (the share of the target's
message tokens whose keys and values survive in every layer), its minimum,
the mean of ``target_kept_any`` (in at least one layer), and how many rows
keep less than half of the message. A condition whose mean ``target_kept``
is below :data:`HALF` gets a warning the report prints first, in bold: its
continuations answer what replaced the target, so its scores measure a
replacement, not a transfer into the target's task.

A results table from before the columns (``RESULTS_VERSION`` < 3) has no
section and no warning.
"""

from __future__ import annotations

import pandas as pd

from .common import order

KEPT, KEPT_ANY = "target_kept", "target_kept_any"
HALF = 0.5


def survival_table(results: pd.DataFrame, conds: list[str]) -> list[dict]:
    """One record per (model, condition) with the survival columns; empty without them."""
    if KEPT not in results.columns:
        return []
    out = []
    rank = {c: i for i, c in enumerate(conds)}
    for model in order(results["model"]):
        sub = results[results["model"] == model]
        for cond, g in sorted(sub.groupby("condition", sort=False), key=lambda kv: rank.get(kv[0], len(rank))):
            kept = pd.to_numeric(g[KEPT], errors="coerce")
            ok = kept.dropna()
            any_ = pd.to_numeric(g[KEPT_ANY], errors="coerce") if KEPT_ANY in g else pd.Series(dtype=float)
            out.append(
                {
                    "model": model,
                    "condition": cond,
                    "n": int(len(ok)),
                    "target_kept": float(ok.mean()) if len(ok) else None,
                    "target_kept_min": float(ok.min()) if len(ok) else None,
                    "target_kept_any": float(any_.dropna().mean()) if any_.notna().any() else None,
                    "below_half": int((ok < HALF).sum()),
                }
            )
    return out


def survival_warnings(table: list[dict]) -> list[dict]:
    """A ``target_erased`` warning per (model, condition) whose mean ``target_kept`` is below one half."""
    out = []
    for r in table:
        mean = r["target_kept"]
        if mean is None or mean >= HALF:
            continue
        out.append(
            {
                "kind": "target_erased",
                "model": r["model"],
                "condition": r["condition"],
                "target_kept": mean,
                "count": r["below_half"],
                "of": r["n"],
                "message": f"condition {r['condition']} leaves less than half of the targets' message: on average "
                f"{100 * mean:.0f}% of its tokens keep their own keys and values in every layer "
                f"({r['below_half']}/{r['n']} rows below half). Its continuations answer what replaced the "
                "target: a replacement, not a transfer into the target's task",
            }
        )
    return out
