"""Summary sections ``seeds_table`` and ``seed_spread``: per-seed means and their SD across seeds."""

from __future__ import annotations

import numpy as np

from ..stats import DDOF, describe_scores
from .common import records


def seed_tables(results, scores, conds) -> tuple[list[dict], list[dict]]:
    per = describe_scores(results, scores, by=["model", "condition", "seed"])
    per = per[["model", "condition", "seed", "score", "n", "n_nan", "mean", "sd"]]
    spread = []
    for (model, cond, score), g in per.groupby(["model", "condition", "score"], sort=False):
        m = g["mean"].dropna()
        spread.append(
            {
                "model": model,
                "condition": cond,
                "score": score,
                "n_seeds": int(len(g)),
                "mean_of_means": m.mean() if m.size else np.nan,
                "sd_across_seeds": m.std(ddof=DDOF) if m.size > 1 else np.nan,
                "min": m.min() if m.size else np.nan,
                "max": m.max() if m.size else np.nan,
            }
        )
    rank = {c: i for i, c in enumerate(conds)}
    per = per.assign(_c=per.condition.map(rank)).sort_values(["model", "_c", "score", "seed"], kind="stable")
    return records(per.drop(columns="_c")), spread
