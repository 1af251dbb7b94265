"""Summary section ``conditions_table``: per (model, condition, score) mean, SD, n and a cluster-bootstrap CI."""

from __future__ import annotations

import pandas as pd

from ..stats import DDOF, bootstrap_mean_ci, describe_scores
from .common import CLUSTER, order


def condition_table(results, scores, conds, n_boot, seed) -> pd.DataFrame:
    desc = describe_scores(results, scores, by=["model", "condition"])
    lo, hi, ncl = [], [], []
    groups = {k: g for k, g in results.groupby(["model", "condition"], sort=False)}
    for row in desc.itertuples():
        part = groups[(row.model, row.condition)]
        ok = part[part[row.score].notna()]
        a, b = bootstrap_mean_ci(ok[row.score].to_numpy(float), ok[CLUSTER].tolist(), n_boot, seed=seed)
        lo.append(a), hi.append(b), ncl.append(int(ok[CLUSTER].nunique()))
    desc["ci_low"], desc["ci_high"], desc["n_clusters"] = lo, hi, ncl
    desc["ddof"] = DDOF
    rank = {c: i for i, c in enumerate(conds)}
    srank = {s: i for i, s in enumerate(scores)}
    key = desc["condition"].map(rank) * 1000 + desc["score"].map(srank)
    models = order(results["model"])
    key = key + desc["model"].map({m: i for i, m in enumerate(models)}) * 10**6
    return desc.assign(_k=key).sort_values("_k", kind="stable").drop(columns="_k").reset_index(drop=True)
