"""The numbers of a report: one JSON-serialisable dict built from a results table.

:func:`build_summary` reads the results table of
:mod:`transferlab.experiments.schema` (one row per model, pair, condition and
seed) and computes everything the report shows, with the statistics of
:mod:`transferlab.stats` (nothing is re-derived here):

- ``conditions``: per (model, condition, score) the mean, the SD (ddof=1),
  ``n`` (non-NaN) and ``n_nan``, and a cluster-bootstrap 95% CI of the mean
  (source prompts resampled);
- ``deltas``: paired comparisons, per model. The paired unit is
  ``(pair_id, seed)``; clusters are ``source_id``. ``family`` is
  ``vs_reference`` (each condition minus the reference) or ``vs_control``
  (the primary condition minus each control). Every ``*_holm`` column is
  Holm-adjusted across **all** rows of the table (every model, family and
  score); ``p_holm`` is the adjusted ``p_perm_cluster``;
- ``audit``: per (model, condition, intervention) how many examples it
  never fired in; never-fired ones first;
- ``overlap``: each behavior score beside the ``source_overlap`` diagnostic
  (a score that rises only with the source's echoed words is not transfer);
- ``rv_groups``: R_V per prompt group, over distinct prompts (a prompt
  reused by many pairs counts once), NaN prompts counted in ``n_nan``;
- ``seeds``: per-seed means, and the SD of those means across seeds;
- ``sweep``: the layer-combination table, when the run is a sweep;
- ``warnings``: what the data themselves show to be wrong or suspicious.

Missing values are written as ``null`` (the dict passes
``json.dumps(..., allow_nan=False)``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..stats import DDOF, P_COLUMNS, bootstrap_mean_ci, compare_all, describe_scores, holm

OVERLAP = "source_overlap"
PAIR_UNIT = ["pair_id", "seed"]
CLUSTER = "source_id"
PRIMARY_P = "p_perm_cluster"
GEN_KEYS = ("flavour", "temperature", "top_p", "top_k", "greedy", "max_new_tokens", "stop_at_eos", "sampler")
_GEN_SECTIONS = ("generation", "sampling", "sampler")


class ReportError(ValueError):
    """The results table cannot give the report that was asked for."""


def _order(values: Sequence, first: Any = None) -> list:
    """Distinct values in order of first appearance, ``first`` moved to the front."""
    out = list(dict.fromkeys(values))
    if first is not None and first in out:
        out.remove(first)
        out.insert(0, first)
    return out


def _display_order(results: pd.DataFrame, reference: str, primary: str | None,
                   controls: Sequence[str] | None) -> list[str]:
    """Reference, primary (``transfer`` by default), the controls, then the rest; conditions that
    generate from the source prompt (the ceiling) last. Otherwise in order of first appearance."""
    seen = _order(results["condition"])
    primary = primary if primary is not None else ("transfer" if "transfer" in seen else None)
    ceiling = set()
    if "prompt_role" in results.columns:
        ceiling = set(results.loc[results["prompt_role"] == "source", "condition"])
    head = [c for c in (reference, primary, *(controls or [])) if c in seen]
    rest = [c for c in seen if c not in head]
    return list(dict.fromkeys(head + [c for c in rest if c not in ceiling] + [c for c in rest if c in ceiling]))


def _check(results: pd.DataFrame, scores: Sequence[str], reference: str) -> None:
    if not scores:
        raise ReportError("no score columns given")
    need = ["model", "seed", "pair_id", "condition", CLUSTER, *scores]
    missing = [c for c in need if c not in results.columns]
    if missing:
        raise ReportError(f"results table lacks columns {missing}")
    if len(results) == 0:
        raise ReportError("results table is empty")
    conds = _order(results["condition"])
    if reference not in conds:
        raise ReportError(
            f"reference condition {reference!r} is not in the results (conditions: {conds}); "
            "every paired delta is taken against it: pass reference=<one of them>"
        )
    for model, part in results.groupby("model", sort=False):
        if reference not in set(part["condition"]):
            raise ReportError(f"model {model!r} has no {reference!r} rows; its deltas would have no reference")


def _records(df: pd.DataFrame) -> list[dict]:
    return df.to_dict(orient="records")


def _condition_table(results, scores, conds, n_boot, seed) -> pd.DataFrame:
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
    models = _order(results["model"])
    key = key + desc["model"].map({m: i for i, m in enumerate(models)}) * 10**6
    return desc.assign(_k=key).sort_values("_k", kind="stable").drop(columns="_k").reset_index(drop=True)


def _deltas(results, scores, comparisons, controls_of, n_boot, n_perm, seed):
    parts, skipped = [], []
    for model, sub in results.groupby("model", sort=False):
        have = set(sub["condition"])
        fam = []
        for family, pairs in (("vs_reference", comparisons), ("vs_control", controls_of)):
            for c, r in pairs:
                if c in have and r in have:
                    fam.append((family, c, r))
                else:
                    skipped.append({"model": model, "condition": c, "reference": r, "family": family,
                                    "why": f"condition {c if c not in have else r!r} has no rows for this model"})
        if not fam:
            continue
        out = compare_all(sub, [(c, r) for _, c, r in fam], scores, primary=PRIMARY_P, pair_col=PAIR_UNIT,
                          cluster_col=CLUSTER, n_boot=n_boot, n_perm=n_perm, seed=seed)
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


def _parse_audit(value) -> list[dict]:
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
    cols = ["model", "condition", "intervention", "description", "hook_point", "kind", "phase", "rows",
            "examples", "examples_never_fired", "examples_no_effect", "mean_fired_prompt", "mean_fired_decode",
            "mean_positions", "mean_change_norm"]
    if "audit" not in results.columns:
        return pd.DataFrame(columns=cols)
    recs = []
    for model, cond, audit in zip(results["model"], results["condition"], results["audit"]):
        for a in _parse_audit(audit):
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
    out = g.agg(kind=("kind", "first"), phase=("phase", "first"), examples=("never_fired", "size"),
                examples_never_fired=("never_fired", "sum"), examples_no_effect=("no_effect", "sum"),
                mean_fired_prompt=("fired_prompt", "mean"),
                mean_fired_decode=("fired_decode", "mean"), mean_positions=("positions", "mean"),
                mean_change_norm=("change_norm", "mean")).reset_index()
    rows = results.groupby(["model", "condition"]).size()
    out["rows"] = [int(rows[(m, c)]) for m, c in zip(out["model"], out["condition"])]
    out["examples_never_fired"] = out["examples_never_fired"].astype(int)
    out["examples_no_effect"] = out["examples_no_effect"].astype(int)
    rank = {c: i for i, c in enumerate(conditions or _order(results["condition"]))}
    mrank = {m: i for i, m in enumerate(_order(results["model"]))}
    out = out.assign(_nf=-(out.examples_never_fired > 0).astype(int), _n=-out.examples_never_fired,
                     _m=out.model.map(mrank), _c=out.condition.map(rank))
    out = out.sort_values(["_nf", "_n", "_m", "_c", "intervention"], kind="stable")
    return out[cols].reset_index(drop=True)


def _overlap(results, behavior, conds) -> list[dict]:
    if OVERLAP not in results.columns:
        return []
    rows = []
    for model, sub in results.groupby("model", sort=False):
        for c in conds:
            part = sub[sub["condition"] == c]
            if not len(part):
                continue
            ov = part[OVERLAP].astype(float)
            for s in behavior:
                v = part[s].astype(float)
                both = v.notna() & ov.notna()
                r = np.nan
                if both.sum() >= 3 and v[both].std() > 0 and ov[both].std() > 0:
                    r = float(np.corrcoef(v[both], ov[both])[0, 1])
                rows.append({"model": model, "condition": c, "score": s, "mean": v.mean(), "sd": v.std(ddof=DDOF),
                             "n": int(v.notna().sum()), "overlap_mean": ov.mean(), "overlap_sd": ov.std(ddof=DDOF),
                             "overlap_n": int(ov.notna().sum()), "overlap_n_nan": int(ov.isna().sum()),
                             "r_score_overlap": r, "n_r": int(both.sum())})
    return rows


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
        t["model"] = t["model"] if "model" in t else (_order(results["model"])[0] if len(results) else "")
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


def _rv_summary(table: pd.DataFrame) -> list[dict]:
    rows = []
    for (model, role, group), g in table.groupby(["model", "role", "group"], sort=False):
        v = g["rv"]
        x = v.dropna()
        rows.append({"model": model, "role": role, "group": group, "n_prompts": int(len(v)), "n": int(x.size),
                     "n_nan": int(v.isna().sum()), "mean": x.mean() if x.size else np.nan,
                     "sd": x.std(ddof=DDOF) if x.size > 1 else np.nan,
                     "median": x.median() if x.size else np.nan, "ddof": DDOF, "values": x.tolist()})
    return rows


def _seeds(results, scores, conds) -> tuple[list[dict], list[dict]]:
    per = describe_scores(results, scores, by=["model", "condition", "seed"])
    per = per[["model", "condition", "seed", "score", "n", "n_nan", "mean", "sd"]]
    spread = []
    for (model, cond, score), g in per.groupby(["model", "condition", "score"], sort=False):
        m = g["mean"].dropna()
        spread.append({"model": model, "condition": cond, "score": score, "n_seeds": int(len(g)),
                       "mean_of_means": m.mean() if m.size else np.nan,
                       "sd_across_seeds": m.std(ddof=DDOF) if m.size > 1 else np.nan,
                       "min": m.min() if m.size else np.nan, "max": m.max() if m.size else np.nan})
    rank = {c: i for i, c in enumerate(conds)}
    per = per.assign(_c=per.condition.map(rank)).sort_values(["model", "_c", "score", "seed"], kind="stable")
    return _records(per.drop(columns="_c")), spread


def _data_warnings(results, all_scores, conds, audit, deltas, skipped, plans) -> list[dict]:
    out = []
    for r in audit.itertuples():
        if r.examples_never_fired > 0:
            out.append({"kind": "never_fired", "model": r.model, "condition": r.condition,
                        "description": r.description, "hook_point": r.hook_point,
                        "count": int(r.examples_never_fired), "of": int(r.examples),
                        "message": f"{r.description} never fired in {r.examples_never_fired}/{r.examples} "
                                   f"examples of condition {r.condition}"})
        if getattr(r, "examples_no_effect", 0) > 0:
            out.append({"kind": "no_effect", "model": r.model, "condition": r.condition,
                        "description": r.description, "hook_point": r.hook_point,
                        "count": int(r.examples_no_effect), "of": int(r.examples),
                        "message": f"{r.description} fired but changed nothing in {r.examples_no_effect}/"
                                   f"{r.examples} examples of condition {r.condition} (it wrote the values "
                                   "already there: an earlier intervention or the same layer twice?)"})
    if "n_interventions" in results.columns and "audit" in results.columns:
        empty = results["audit"].map(lambda a: len(_parse_audit(a)) == 0)
        lack = results[empty & (results["n_interventions"].fillna(0) > 0)]
        for (model, cond), g in lack.groupby(["model", "condition"], sort=False):
            out.append({"kind": "no_audit", "model": model, "condition": cond, "count": len(g),
                        "message": f"{len(g)} rows of condition {cond} have interventions but no audit rows"})
    for (model, cond), plan in plans.items():
        items = [i.strip() for i in str(plan).split("+")]
        if any(i.startswith("noise:") and "raw" in i.split(":") for i in items):
            out.append({"kind": "raw_noise", "model": model, "condition": cond,
                        "message": f"condition {cond} uses noise that is not norm-matched ({plan}): "
                                   "it differs from the transfer in scale as well as direction"})
    for model, sub in results.groupby("model", sort=False):
        for s in all_scores:
            nan = sub[s].isna().groupby(sub["condition"]).agg(["sum", "size"])
            hit = [(c, int(nan.loc[c, "sum"]), int(nan.loc[c, "size"])) for c in conds
                   if c in nan.index and nan.loc[c, "sum"]]
            if hit:
                total = sum(k for _, k, _ in hit)
                where = ", ".join(f"{c} {k}/{n}" for c, k, n in hit)
                out.append({"kind": "nan_score", "model": model, "score": s, "count": total,
                            "by_condition": {c: k for c, k, _ in hit},
                            "message": f"score {s} is NaN in {total}/{len(sub)} rows ({where}); "
                                       "excluded from its statistics and counted as n_nan"})
    if len(deltas):
        for r in deltas[deltas["n_unmatched"] > 0].itertuples():
            out.append({"kind": "unmatched", "model": r.model, "condition": r.condition,
                        "message": f"{r.condition} vs {r.reference} ({r.score}): {r.n_unmatched} units "
                                   "present in only one condition"})
    for s in skipped:
        out.append({"kind": "skipped", **s, "message": f"{s['condition']} vs {s['reference']} skipped: {s['why']}"})
    return out


def build_summary(
    results: pd.DataFrame,
    scores: list[str],
    *,
    reference: str = "baseline",
    comparisons: list[tuple[str, str]] | None = None,
    primary: str | None = None,
    controls: list[str] | None = None,
    rv_groups: pd.DataFrame | None = None,
    sweep: dict | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    n_perm: int = 9999,
) -> dict:
    """Every number of the report, as a JSON-serialisable dict (see module docstring).

    ``scores``: the score columns to describe and compare (``source_overlap``
    is shown as a diagnostic whenever the table has it). ``comparisons``:
    (condition, reference) pairs; default every other condition vs
    ``reference``. ``primary``: the condition compared with each of
    ``controls``; default ``"transfer"`` if present, and by default the
    controls are every other non-reference condition.
    """
    scores = list(scores)
    _check(results, scores, reference)
    conds = _display_order(results, reference, primary, controls)
    if comparisons is None:
        comparisons = [(c, reference) for c in conds if c != reference]
    unknown = sorted({c for pair in comparisons for c in pair} - set(conds))
    if unknown:
        raise ReportError(f"comparisons name conditions not in the results: {unknown}")
    if primary is None and "transfer" in conds:
        primary = "transfer"
    if primary is not None and primary not in conds:
        raise ReportError(f"primary condition {primary!r} is not in the results (conditions: {conds})")
    if primary is None:
        controls = []
    elif controls is None:
        controls = [c for c in conds if c not in (reference, primary)]
    controls_of = [(primary, c) for c in controls]
    behavior = [s for s in scores if s != OVERLAP]
    all_scores = scores + ([OVERLAP] if OVERLAP in results.columns and OVERLAP not in scores else [])

    ctab = _condition_table(results, all_scores, conds, n_boot, seed)
    deltas, skipped = _deltas(results, scores, comparisons, controls_of, n_boot, n_perm, seed)
    audit = audit_summary(results, conds)
    rv = rv_prompt_table(results, rv_groups)
    per_seed, seed_spread = _seeds(results, all_scores, conds)
    plans = {}
    if "plan" in results.columns:
        plans = {k: v for k, v in results.groupby(["model", "condition"], sort=False)["plan"].first().items()}
    roles = {}
    if "prompt_role" in results.columns:
        roles = results.groupby("condition", sort=False)["prompt_role"].agg(lambda v: sorted(set(map(str, v))))
        roles = {c: "/".join(v) for c, v in roles.items()}

    sweep_out = None
    if sweep is not None:
        ref_rows = deltas[deltas["family"] == "vs_reference"] if len(deltas) else deltas
        keep = ["model", "condition", "score", "n", "mean_diff", "ci_low", "ci_high", "d_z", "p_holm"]
        table = _records(ref_rows[keep]) if len(ref_rows) else []
        for row in table:
            row["plan"] = plans.get((row["model"], row["condition"]))
        sweep_out = {**(dict(sweep) if isinstance(sweep, dict) else {"path": sweep}), "table": table}

    models = _order(results["model"])
    out = {
        "scores": scores,
        "behavior_scores": behavior,
        "described_scores": all_scores,
        "primary_score": behavior[0] if behavior else scores[0],
        "reference": reference,
        "primary": primary,
        "controls": list(controls),
        "models": models,
        "conditions": conds,
        "seeds": sorted(results["seed"].unique().tolist()),
        "n_rows": int(len(results)),
        "n_pairs": int(results.groupby("model")["pair_id"].nunique().max()),
        "n_source_prompts": int(results[CLUSTER].nunique()),
        "n_target_prompts": int(results["target_id"].nunique()) if "target_id" in results else None,
        "plans": [{"model": m, "condition": c, "plan": plans[(m, c)]} for m in models for c in conds
                  if (m, c) in plans],
        "prompt_roles": roles,
        "stats": {"ddof": DDOF, "pair_unit": PAIR_UNIT, "cluster": CLUSTER, "n_boot": n_boot, "n_perm": n_perm,
                  "seed": seed, "level": 0.95, "primary_p": PRIMARY_P,
                  "holm_family_size": int(deltas[PRIMARY_P].notna().sum()) if len(deltas) else 0,
                  "holm": "Holm step-down across every row of 'deltas' (all models, families and scores), "
                          "separately for each p column"},
        "conditions_table": _records(ctab),
        "deltas": _records(deltas) if len(deltas) else [],
        "audit": _records(audit),
        "overlap": _overlap(results, behavior, conds),
        "rv_groups": _rv_summary(rv),
        "seeds_table": per_seed,
        "seed_spread": seed_spread,
        "sweep": sweep_out,
        "warnings": _data_warnings(results, all_scores, conds, audit, deltas, skipped, plans),
    }
    return jsonable(out)


def _pick_settings(d: dict) -> dict:
    """Generation settings given in ``d`` (None means "not set", as in an override left empty)."""
    got = {k: d[k] for k in GEN_KEYS if d.get(k) is not None and not isinstance(d[k], dict)}
    for sec in _GEN_SECTIONS:
        if isinstance(d.get(sec), dict):
            got.update(_pick_settings(d[sec]))
    return got


def generation_settings(config: dict | None, results: pd.DataFrame | None = None) -> dict[str, dict]:
    """Effective generation settings per condition, from a config and/or result columns.

    The config may give settings at top level or in a ``generation`` /
    ``sampling`` / ``sampler`` section, and per condition in ``conditions``
    (a mapping name -> plan string or table, or a list of tables with
    ``name``), either directly or in such a section. Result columns named like
    a setting (``flavour``, ``top_k``, ...) are read per condition as well.
    """
    out: dict[str, dict] = {}
    config = config or {}
    base = _pick_settings(config)
    conds = config.get("conditions") or {}
    items = conds.items() if isinstance(conds, dict) else [(c.get("name"), c) for c in conds if isinstance(c, dict)]
    for name, spec in items:
        out[str(name)] = {**base, **(_pick_settings(spec) if isinstance(spec, dict) else {})}
    if results is not None and len(results):
        cols = [k for k in GEN_KEYS if k in results.columns]
        for cond, g in results.groupby("condition", sort=False):
            s = out.setdefault(str(cond), dict(base))
            for k in cols:
                vals = sorted(set(map(str, g[k].dropna())))
                if vals:
                    s[k] = vals[0] if len(vals) == 1 else "/".join(vals)
    out["*"] = base
    return out


def generation_warnings(config: dict | None, results: pd.DataFrame, reference: str = "baseline") -> list[dict]:
    """Conditions that differ from ``reference`` in more than their plan (sampler, flavour, ...)."""
    settings = generation_settings(config, results)
    base = settings.pop("*")
    ref = settings.get(reference, base)
    groups: dict[tuple, list[str]] = {}
    for cond, s in settings.items():
        if cond == reference:
            continue
        diff = tuple((k, _show(s.get(k)), _show(ref.get(k))) for k in sorted(set(s) | set(ref))
                     if str(s.get(k)) != str(ref.get(k)))
        if diff:
            groups.setdefault(diff, []).append(cond)
    out = []
    for diff, conds in groups.items():
        mine = ", ".join(f"{k}={a}" for k, a, _ in diff)
        theirs = ", ".join(f"{k}={b}" for k, _, b in diff)
        out.append({"kind": "generation_differs", "conditions": conds,
                    "differs": {k: [a, b] for k, a, b in diff},
                    "message": f"conditions differ in more than the intervention: {', '.join(conds)} "
                               f"generate{'s' if len(conds) == 1 else ''} with {mine} where {reference} "
                               f"has {theirs}"})
    overridden = [c for c, spec in _condition_specs(config) if spec and _pick_settings(spec)]
    if overridden:
        out.append({"kind": "generation_overrides", "conditions": overridden,
                    "message": "conditions differ in more than the intervention: the config gives per-condition "
                               f"generation overrides for {', '.join(overridden)}"})
    flav = {c: s.get("flavour", base.get("flavour")) for c, s in settings.items()} or {"*": base.get("flavour")}
    if any(str(f) == "seed" for f in flav.values()):
        out.append({"kind": "seed_flavour",
                    "message": "conditions differ in more than the intervention: in the seed flavour every "
                               "condition with a non-empty plan re-feeds its last prompt token, and an empty "
                               f"plan ({reference}) does not"})
    return out


def _show(v: Any) -> str:
    return "unset (default)" if v is None else repr(v)


def _condition_specs(config: dict | None) -> list[tuple[str, dict | None]]:
    conds = (config or {}).get("conditions") or {}
    if isinstance(conds, dict):
        return [(str(k), v if isinstance(v, dict) else None) for k, v in conds.items()]
    return [(str(c.get("name")), c) for c in conds if isinstance(c, dict)]


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy/pandas scalars made plain and NaN/inf/NA made ``None``."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, pd.DataFrame):
        return jsonable(_records(obj))
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or obj is pd.NA or obj is pd.NaT:
        return None
    if isinstance(obj, (str,)):
        return obj
    if isinstance(obj, pd.Timestamp):
        return obj.isoformat()
    try:
        if pd.isna(obj):
            return None
    except (TypeError, ValueError):
        pass
    return str(obj)
