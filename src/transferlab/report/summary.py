"""The numbers of a report: one JSON-serialisable dict built from a results table.

:func:`build_summary` reads the results table of
:mod:`transferlab.experiments.schema` (one row per model, pair, condition and
seed) and computes everything the report shows, with the statistics of
:mod:`transferlab.stats` (nothing is re-derived here):

- ``conditions``: per (model, condition, score) the mean, the SD (ddof=1),
  ``n`` (non-NaN) and ``n_nan``, and a bootstrap 95% CI of the mean
  (two-way over sources x targets when either repeats);
- ``deltas``: paired comparisons, per model. The paired unit is
  ``(pair_id, seed)``; the bootstrap is two-way over ``source_id`` x
  ``target_id`` when either repeats, over pairs (seeds together) when
  neither does (``clustering`` says which, row by row). ``family`` is the
  section: ``vs_reference`` (each condition minus the reference),
  ``vs_control`` (the primary condition minus each control) or ``claim``
  (a contrast the config's ``[analysis]`` names that neither covers).
  ``role`` is ``confirmatory``/``equivalence`` for the claims of the
  confirmatory family (:mod:`.confirmatory`: Holm within them only,
  ``p_holm``, intervals at Holm's level, TOST verdicts) and
  ``exploratory`` for every other row (unadjusted p, no ``p_holm``);
- ``audit``: per (model, condition, intervention) how many examples it
  never fired in; never-fired ones first;
- ``overlap``: each behavior score beside the ``source_overlap`` diagnostic
  (a score that rises only with the source's echoed words is not transfer);
- ``fidelity``: per condition, the primary score beside the target-fidelity
  scores (``target_overlap``, ``answer``, ``target_answer_logprob``): does
  the target's task survive? (``fidelity_scores`` lists those present; they
  are never the primary score);
- ``rv_groups``: R_V per prompt group, over distinct prompts (a prompt
  reused by many pairs counts once), NaN prompts counted in ``n_nan``;
- ``survival``: per (model, condition) how much of the targets' message
  keeps its own keys and values (``target_kept``, :mod:`.survival`);
- ``seeds``: per-seed means, and the SD of those means across seeds;
- ``sweep``: the layer-combination table, when the run is a sweep;
- ``warnings``: what the data themselves show to be wrong or suspicious.

Missing values are written as ``null`` (the dict passes
``json.dumps(..., allow_nan=False)``).
"""

from __future__ import annotations

import pandas as pd

from ..stats import DDOF, Family, boot_p_floor, perm_p_floor
from .alerts import data_warnings
from .audit import audit_summary
from .common import (
    CLUSTER,
    FIDELITY,
    OVERLAP,
    PAIR_UNIT,
    PRIMARY_P,
    ReportError,
    check_results,
    display_order,
    jsonable,
    order,
    records,
)
from .conditions import condition_table
from .deltas import paired_deltas
from .fidelity import fidelity_scores, fidelity_table
from .overlap import overlap_table
from .rv import rv_prompt_table, rv_summary
from .seeds import seed_tables
from .survival import survival_table, survival_warnings


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
    self_sourced: tuple[str, ...] | list[str] = (),
    n_boot: int = 2000,
    seed: int = 0,
    n_perm: int = 9999,
    analysis: dict | None = None,
) -> dict:
    """Every number of the report, as a JSON-serialisable dict (see module docstring).

    ``scores``: the score columns to describe and compare (``source_overlap``
    is shown as a diagnostic whenever the table has it). ``comparisons``:
    (condition, reference) pairs; default every other condition vs
    ``reference``. ``primary``: the condition compared with each of
    ``controls``; default ``"transfer"`` if present, and by default the
    controls are every other non-reference condition. ``self_sourced``: conditions whose source is the target
    itself (no "changed nothing" warning for them: that is their point). ``analysis``: the config's
    ``[analysis]`` table (the confirmatory family); without one every comparison is exploratory.
    """
    scores = list(scores)
    check_results(results, scores, reference)
    conds = display_order(results, reference, primary, controls)
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
    behavior = [s for s in scores if s != OVERLAP and s not in FIDELITY]
    family = Family.from_analysis(analysis)
    if family is not None and family.primary not in results.columns:
        raise ReportError(f"the confirmatory family's primary score {family.primary!r} is not in the results")
    all_scores = scores + ([OVERLAP] if OVERLAP in results.columns and OVERLAP not in scores else [])

    ctab = condition_table(results, all_scores, conds, n_boot, seed)
    deltas, skipped = paired_deltas(results, scores, comparisons, controls_of, n_boot, n_perm, seed, family)
    audit = audit_summary(results, conds)
    rv = rv_prompt_table(results, rv_groups)
    per_seed, seed_spread = seed_tables(results, all_scores, conds)
    survival = survival_table(results, conds)
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
        keep = ["model", "condition", "score", "n", "mean_diff", "ci_low", "ci_high", "d_z", "p_boot", "role"]
        table = records(ref_rows[keep]) if len(ref_rows) else []
        for row in table:
            row["plan"] = plans.get((row["model"], row["condition"]))
        sweep_out = {**(dict(sweep) if isinstance(sweep, dict) else {"path": sweep}), "table": table}

    models = order(results["model"])
    primary_score = family.primary if family else (behavior[0] if behavior else scores[0])
    fidelity = fidelity_scores(all_scores)
    out = {
        "scores": scores,
        "behavior_scores": behavior,
        "described_scores": all_scores,
        "primary_score": primary_score,
        "fidelity_scores": fidelity,
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
        "plans": [
            {"model": m, "condition": c, "plan": plans[(m, c)]} for m in models for c in conds if (m, c) in plans
        ],
        "prompt_roles": roles,
        "stats": {
            "ddof": DDOF,
            "pair_unit": PAIR_UNIT,
            "cluster": CLUSTER,
            "n_boot": n_boot,
            "n_perm": n_perm,
            "seed": seed,
            "level": 0.95,
            "primary_p": PRIMARY_P,
            "p_boot_floor": boot_p_floor(n_boot),
            "p_perm_floor": perm_p_floor(10**6, n_perm),
            "family": _family_summary(family, deltas),
        },
        "conditions_table": records(ctab),
        "deltas": records(deltas) if len(deltas) else [],
        "audit": records(audit),
        "overlap": overlap_table(results, behavior, conds),
        "fidelity": fidelity_table(ctab, primary_score, fidelity, reference),
        "survival": survival,
        "rv_groups": rv_summary(rv),
        "seeds_table": per_seed,
        "seed_spread": seed_spread,
        "sweep": sweep_out,
        "warnings": survival_warnings(survival)
        + data_warnings(results, all_scores, conds, audit, deltas, skipped, plans, set(self_sourced)),
    }
    return jsonable(out)


def _family_summary(family: Family | None, deltas) -> dict | None:
    """The confirmatory family as declared, and how many of its claims the report could compute."""
    if family is None:
        return None
    size = int((deltas["role"] != "exploratory").sum()) if len(deltas) else 0
    return {
        "primary": family.primary,
        "alpha": family.alpha,
        "claims": [
            {"contrast": f"{c.condition} - {c.reference}", "role": c.role, "margin": c.margin} for c in family.claims
        ],
        "size": size,
        "holm": "Holm step-down over the family's rows only (its claims x models); exploratory rows unadjusted",
    }
