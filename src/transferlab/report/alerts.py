"""Summary section ``warnings``: what the data show to be wrong, and conditions that differ in more than their plan."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..decode_paths import numerics
from .audit import parse_audit
from .common import _GEN_SECTIONS, GEN_KEYS


def data_warnings(results, all_scores, conds, audit, deltas, skipped, plans, self_sourced=()) -> list[dict]:
    """``self_sourced``: conditions whose source is the target itself (a self-patch control): writing back the
    values already there is what they are for, so "fired but changed nothing" is no warning for them (the audit
    table still shows the counts)."""
    out = []
    for r in audit.itertuples():
        if r.examples_never_fired > 0:
            out.append(
                {
                    "kind": "never_fired",
                    "model": r.model,
                    "condition": r.condition,
                    "description": r.description,
                    "hook_point": r.hook_point,
                    "count": int(r.examples_never_fired),
                    "of": int(r.examples),
                    "message": f"{r.description} never fired in {r.examples_never_fired}/{r.examples} "
                    f"examples of condition {r.condition}",
                }
            )
        if getattr(r, "examples_no_effect", 0) > 0 and r.condition not in self_sourced:
            out.append(
                {
                    "kind": "no_effect",
                    "model": r.model,
                    "condition": r.condition,
                    "description": r.description,
                    "hook_point": r.hook_point,
                    "count": int(r.examples_no_effect),
                    "of": int(r.examples),
                    "message": f"{r.description} fired but changed nothing in {r.examples_no_effect}/"
                    f"{r.examples} examples of condition {r.condition} (it wrote the values "
                    "already there: an earlier intervention or the same layer twice?)",
                }
            )
    if "n_interventions" in results.columns and "audit" in results.columns:
        empty = results["audit"].map(lambda a: len(parse_audit(a)) == 0)
        lack = results[empty & (results["n_interventions"].fillna(0) > 0)]
        for (model, cond), g in lack.groupby(["model", "condition"], sort=False):
            out.append(
                {
                    "kind": "no_audit",
                    "model": model,
                    "condition": cond,
                    "count": len(g),
                    "message": f"{len(g)} rows of condition {cond} have interventions but no audit rows",
                }
            )
    for (model, cond), plan in plans.items():
        items = [i.strip() for i in str(plan).split("+")]
        if any(i.startswith("noise:") and "raw" in i.split(":") for i in items):
            out.append(
                {
                    "kind": "raw_noise",
                    "model": model,
                    "condition": cond,
                    "message": f"condition {cond} uses noise that is not norm-matched ({plan}): "
                    "it differs from the transfer in scale as well as direction",
                }
            )
    for model, sub in results.groupby("model", sort=False):
        for s in all_scores:
            nan = sub[s].isna().groupby(sub["condition"]).agg(["sum", "size"])
            hit = [
                (c, int(nan.loc[c, "sum"]), int(nan.loc[c, "size"]))
                for c in conds
                if c in nan.index and nan.loc[c, "sum"]
            ]
            if hit:
                total = sum(k for _, k, _ in hit)
                where = ", ".join(f"{c} {k}/{n}" for c, k, n in hit)
                out.append(
                    {
                        "kind": "nan_score",
                        "model": model,
                        "score": s,
                        "count": total,
                        "by_condition": {c: k for c, k, _ in hit},
                        "message": f"score {s} is NaN in {total}/{len(sub)} rows ({where}); "
                        "excluded from its statistics and counted as n_nan"
                        + ("; answer is NaN by design where the target has no known answer" if s == "answer" else ""),
                    }
                )
    if len(deltas):
        for r in deltas[deltas["n_unmatched"] > 0].itertuples():
            out.append(
                {
                    "kind": "unmatched",
                    "model": r.model,
                    "condition": r.condition,
                    "message": f"{r.condition} vs {r.reference} ({r.score}): {r.n_unmatched} units "
                    "present in only one condition",
                }
            )
    for s in skipped:
        out.append({"kind": "skipped", **s, "message": f"{s['condition']} vs {s['reference']} skipped: {s['why']}"})
    out += _mixed_decode_paths(results)
    return out


def _mixed_decode_paths(results) -> list[dict]:
    """One warning per model whose rows were decoded by paths that round differently in bf16 (another attention
    kernel, or the eager loop beside the static one: :func:`~transferlab.decode_paths.numerics`), e.g. a server
    past its compiled shapes, a kernel that failed for one batch shape, a resume under other settings: the same
    unit can then give other tokens. Graph and plain static steps run the same kernels: no warning."""
    if "decode_path" not in results.columns:  # a table from before the column
        return []
    out = []
    for model, sub in results.groupby("model", sort=False):
        paths = sub["decode_path"].fillna("(unrecorded)")
        if paths.map(numerics).nunique() < 2:
            continue
        counts = paths.value_counts()
        where = ", ".join(f"{path} {n}" for path, n in counts.items())
        out.append(
            {
                "kind": "mixed_decode_paths",
                "model": model,
                "by_path": {str(p): int(n) for p, n in counts.items()},
                "message": f"rows of {model} were decoded by {len(counts)} decode paths ({where}) that round "
                "differently in bf16, so their tokens are not those one path would give; compare rows of one path "
                "(results column decode_path) or rerun under one (TRANSFERLAB_DECODE_ATTENTION, TRANSFERLAB_DECODE)",
            }
        )
    return out


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
        diff = tuple(
            (k, _show(s.get(k)), _show(ref.get(k)))
            for k in sorted(set(s) | set(ref))
            if str(s.get(k)) != str(ref.get(k))
        )
        if diff:
            groups.setdefault(diff, []).append(cond)
    out = []
    for diff, conds in groups.items():
        mine = ", ".join(f"{k}={a}" for k, a, _ in diff)
        theirs = ", ".join(f"{k}={b}" for k, _, b in diff)
        out.append(
            {
                "kind": "generation_differs",
                "conditions": conds,
                "differs": {k: [a, b] for k, a, b in diff},
                "message": f"conditions differ in more than the intervention: {', '.join(conds)} "
                f"generate{'s' if len(conds) == 1 else ''} with {mine} where {reference} "
                f"has {theirs}",
            }
        )
    overridden = [c for c, spec in _condition_specs(config) if spec and _pick_settings(spec)]
    if overridden:
        out.append(
            {
                "kind": "generation_overrides",
                "conditions": overridden,
                "message": "conditions differ in more than the intervention: the config gives per-condition "
                f"generation overrides for {', '.join(overridden)}",
            }
        )
    flav = {c: s.get("flavour", base.get("flavour")) for c, s in settings.items()} or {"*": base.get("flavour")}
    if any(str(f) == "seed" for f in flav.values()):
        out.append(
            {
                "kind": "seed_flavour",
                "message": "conditions differ in more than the intervention: in the seed flavour every "
                "condition with a non-empty plan re-feeds its last prompt token, and an empty "
                f"plan ({reference}) does not",
            }
        )
    return out


def _show(v: Any) -> str:
    return "unset (default)" if v is None else repr(v)


def _condition_specs(config: dict | None) -> list[tuple[str, dict | None]]:
    conds = (config or {}).get("conditions") or {}
    if isinstance(conds, dict):
        return [(str(k), v if isinstance(v, dict) else None) for k, v in conds.items()]
    return [(str(c.get("name")), c) for c in conds if isinstance(c, dict)]
