"""Summary section ``deltas``: paired comparisons per model, Holm-adjusted across all rows.

The paired unit is ``(pair_id, seed)``; clusters are ``source_id``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..stats import P_COLUMNS, compare_all, holm
from .common import CLUSTER, PAIR_UNIT, PRIMARY_P


def paired_deltas(results, scores, comparisons, controls_of, n_boot, n_perm, seed):
    parts, skipped = [], []
    for model, sub in results.groupby("model", sort=False):
        have = set(sub["condition"])
        fam = []
        for family, pairs in (("vs_reference", comparisons), ("vs_control", controls_of)):
            for c, r in pairs:
                if c in have and r in have:
                    fam.append((family, c, r))
                else:
                    skipped.append(
                        {
                            "model": model,
                            "condition": c,
                            "reference": r,
                            "family": family,
                            "why": f"condition {c if c not in have else r!r} has no rows for this model",
                        }
                    )
        if not fam:
            continue
        out = compare_all(
            sub,
            [(c, r) for _, c, r in fam],
            scores,
            primary=PRIMARY_P,
            pair_col=PAIR_UNIT,
            cluster_col=CLUSTER,
            n_boot=n_boot,
            n_perm=n_perm,
            seed=seed,
        )
        out.insert(0, "family", np.repeat([f for f, _, _ in fam], len(scores)))
        out.insert(0, "model", model)
        parts.append(out)
    if not parts:
        return pd.DataFrame(), skipped
    table = pd.concat(parts, ignore_index=True)
    for col in P_COLUMNS:  # one Holm family: every row of the report
        table[f"{col}_holm"] = holm(table[col].to_numpy())
    table["p_holm"] = table[f"{PRIMARY_P}_holm"]
    return table, skipped
