"""Summary section ``fidelity``: the source's behavior beside the target's task, per condition.

A transfer worth the name raises the source's behavior (the run's primary
score) while the target's task survives: its target-fidelity scores
(``target_overlap``, ``answer``, ``target_answer_logprob``; see
:data:`.common.FIDELITY`) stay near the reference's. A condition that scores
like the source and keeps nothing of the target is the source answering, not
a behavior moved into the target's task. One row per (model, condition): the
primary score and each fidelity score with mean, 95% cluster-bootstrap CI and
n, read from the condition table (nothing recomputed), and each fidelity
score's difference from the reference's mean.
"""

from __future__ import annotations

import pandas as pd

from .common import FIDELITY


def fidelity_scores(columns) -> list[str]:
    """The target-fidelity scores among ``columns``, in :data:`FIDELITY` order."""
    have = set(columns)
    return [s for s in FIDELITY if s in have]


def fidelity_table(ctab: pd.DataFrame, primary_score: str, fidelity: list[str], reference: str) -> list[dict]:
    """Per (model, condition): ``primary_score`` and every score of ``fidelity`` (mean, CI, n), and each fidelity
    score minus the reference condition's mean (``<score>_vs_reference``); empty without fidelity scores."""
    if not fidelity or not len(ctab):
        return []
    cell = {(r.model, r.condition, r.score): r for r in ctab.itertuples()}
    rows = []
    for (model, cond), _ in ctab.groupby(["model", "condition"], sort=False):
        row = {"model": model, "condition": cond, "primary_score": primary_score}
        for key, s in [("primary", primary_score)] + [(f, f) for f in fidelity]:
            r = cell.get((model, cond, s))
            row[f"{key}_mean"] = None if r is None else r.mean
            row[f"{key}_ci_low"] = None if r is None else r.ci_low
            row[f"{key}_ci_high"] = None if r is None else r.ci_high
            row[f"{key}_n"] = 0 if r is None else int(r.n)
        for f in fidelity:
            ref = cell.get((model, reference, f))
            mine = row[f"{f}_mean"]
            row[f"{f}_vs_reference"] = None if ref is None or mine is None else mine - ref.mean
        rows.append(row)
    return rows
