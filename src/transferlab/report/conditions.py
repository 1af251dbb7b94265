"""Summary section ``conditions_table``: per (model, condition, score) mean, SD, n and a bootstrap CI.

The CI resamples as the deltas do: two-way over sources x targets when either repeats, pairs (seeds kept
together) when neither does; ``clustering`` says which.
"""

from __future__ import annotations

import pandas as pd

from ..stats import DDOF, choose_design, describe_scores, design_draws, order_ci
from .common import CLUSTER, TARGET, order


def _ci(part: pd.DataFrame, score: str, n_boot: int, seed: int) -> tuple[float, float, int, str]:
    ok = part[part[score].notna()]
    sources = ok[CLUSTER].tolist()
    targets = ok[TARGET].tolist() if TARGET in ok.columns else None
    pairs = ok["pair_id"].tolist() if "pair_id" in ok.columns else list(range(len(ok)))
    design = choose_design(sources, targets, pairs)
    draws, _ = design_draws(ok[score].to_numpy(float), design, sources, targets, pairs, n_boot, seed)
    lo, hi = order_ci(draws, 0.95)
    return lo, hi, int(ok[CLUSTER].nunique()), design.label


def condition_table(results, scores, conds, n_boot, seed) -> pd.DataFrame:
    desc = describe_scores(results, scores, by=["model", "condition"])
    groups = {k: g for k, g in results.groupby(["model", "condition"], sort=False)}
    cis = [_ci(groups[(r.model, r.condition)], r.score, n_boot, seed) for r in desc.itertuples()]
    desc["ci_low"], desc["ci_high"], desc["n_clusters"], desc["clustering"] = (list(x) for x in zip(*cis))
    desc["ddof"] = DDOF
    rank = {c: i for i, c in enumerate(conds)}
    srank = {s: i for i, s in enumerate(scores)}
    key = desc["condition"].map(rank) * 1000 + desc["score"].map(srank)
    models = order(results["model"])
    key = key + desc["model"].map({m: i for i, m in enumerate(models)}) * 10**6
    return desc.assign(_k=key).sort_values("_k", kind="stable").drop(columns="_k").reset_index(drop=True)
