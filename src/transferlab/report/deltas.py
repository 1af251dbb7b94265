"""Summary section ``deltas``: paired comparisons per model, each labelled confirmatory or exploratory.

The paired unit is ``(pair_id, seed)``; the bootstrap is two-way over
``source_id`` x ``target_id`` when either repeats, over pairs (seeds kept
together) when neither does (:mod:`transferlab.stats.bootstrap`). Holm runs
over the run's confirmatory family only (:mod:`.confirmatory`); every other
row keeps its unadjusted p and ``role = "exploratory"``.
"""

from __future__ import annotations

import pandas as pd

from ..stats import Family, paired_compare
from .common import CLUSTER, PAIR_UNIT, TARGET
from .confirmatory import apply_family


def _wanted(comparisons, controls_of, family: Family | None) -> list[tuple[str, str, str]]:
    """(section, condition, reference): vs the reference, vs each control, then the family's other claims."""
    out = [("vs_reference", c, r) for c, r in comparisons] + [("vs_control", c, r) for c, r in controls_of]
    have = {(c, r) for _, c, r in out}
    for claim in family.claims if family else ():
        if (claim.condition, claim.reference) not in have:
            out.append(("claim", claim.condition, claim.reference))
            have.add((claim.condition, claim.reference))
    return out


def paired_deltas(results, scores, comparisons, controls_of, n_boot, n_perm, seed, family: Family | None = None):
    """The deltas table (one row per model, comparison and score), the bootstrap draws of each row (for the
    family's intervals), and the comparisons skipped for want of rows."""
    parts, draws, skipped = [], [], []
    target = TARGET if TARGET in results.columns else None
    for model, sub in results.groupby("model", sort=False):
        have = set(sub["condition"])
        for section, c, r in _wanted(comparisons, controls_of, family):
            if c not in have or r not in have:
                why = f"condition {c if c not in have else r!r} has no rows for this model"
                skipped.append(dict(model=model, condition=c, reference=r, family=section, why=why))
                continue
            for score in [family.primary] if section == "claim" else scores:
                claim = family.claim(c, r, score) if family else None
                row, d = paired_compare(
                    sub, c, r, score, pair_col=PAIR_UNIT, cluster_col=CLUSTER, target_col=target,
                    group_col="pair_id", margin=claim.margin if claim else None, n_boot=n_boot, n_perm=n_perm,
                    seed=seed, return_draws=True,
                )  # fmt: skip
                row.insert(0, "family", section)
                row.insert(0, "model", model)
                parts.append(row)
                draws.append(d)
    if not parts:
        return pd.DataFrame(), skipped
    table = pd.concat(parts, ignore_index=True)
    return apply_family(table, draws, family), skipped
