"""report.md's statistics sections: the confirmatory family, then the exploratory paired deltas.

Every interval is printed beside the p it agrees with: a family row's
interval is at the level Holm tested it (beside its Holm p and verdict); an
exploratory row's 95% interval is beside its unadjusted bootstrap p. A
difference that is 0 in every pair is shown as such, with the rule-of-three
bound, instead of ``[0, 0]``.
"""

from __future__ import annotations

from .mdtable import DASH, ci_text, fmt, fmt_p, md_table, p_cell


def _model_heading(summary: dict, model: str) -> list[str]:
    return [f"### Model {model}", ""] if len(summary["models"]) > 1 else []


def zero_text(r: dict) -> str:
    """The cell of a difference that is 0 in every pair."""
    n = r["n_pairs"]
    return f"0 in all {n} pairs; share that differ ≤ 3/{n} = {fmt(r['zero_upper'])} (95%)"


def _interval(r: dict, lo: str, hi: str, level: float | None = None) -> str:
    if r.get("all_zero"):
        return zero_text(r)
    text = ci_text(r[lo], r[hi])
    return f"{text} ({100 * level:.1f}%)" if level is not None and text != DASH else text


def _verdict(r: dict) -> str:
    v = r.get("verdict") or DASH
    if r["role"] == "equivalence" and v == "equivalent":
        v = f"equivalent within ±{r['margin']:g}" + (" (though not 0)" if r.get("differs_from_zero") else "")
    return v


def _family_intro(fam: dict, st: dict) -> str:
    claims = ", ".join(
        f"`{c['contrast']}`" + (f" equivalent within ±{c['margin']:g}" if c["margin"] is not None else "")
        for c in fam["claims"]
    )
    floor = fmt_p(st["p_boot_floor"])
    return " ".join(
        [
            f"Named in the run's config (`[analysis]`) before the data: primary score `{fam['primary']}`,",
            f"α = {fam['alpha']:g}, claims: {claims}; {fam['size']} rows (claims x models).",
            "Holm's step-down runs over these rows only; every other comparison of this report is exploratory,",
            "with unadjusted p. A difference claim's p is the two-sided bootstrap p (its floor, no draw on the",
            f"far side of 0, is 2/(B+1) = {floor} with B = {st['n_boot']}); its interval is at the level Holm",
            "tested it, so it excludes 0 exactly when Holm p ≤ α. An equivalence claim is a TOST against its",
            "margin: p is the larger of the two one-sided bootstrap p's (floor 1/(B+1)); its interval is the",
            "1 − 2×(Holm level) one, inside ±margin exactly when Holm p ≤ α. Verdicts: *equivalent within ±m*",
            "(TOST Holm p ≤ α), *different* (not equivalent, and the ordinary bootstrap p is at most the row's",
            "Holm level: the claimed null is refuted), *inconclusive* (neither); a difference claim is",
            "*different* when Holm p ≤ α, else *not shown*.",
        ]
    )


def family_section(summary: dict) -> list[str]:
    """The confirmatory family's table, or a line saying that the run declared none."""
    fam, st = summary["stats"].get("family"), summary["stats"]
    out = ["## Confirmatory family", ""]
    if not fam:
        return out + [
            "This run's config declares no confirmatory family (`[analysis]`: primary score, contrasts, "
            "equivalence margins), so every comparison below is exploratory: unadjusted p, no Holm.",
            "",
        ]
    out += [_family_intro(fam, st), ""]
    rows = [r for r in summary["deltas"] if r["role"] != "exploratory"]
    multi = len(summary["models"]) > 1
    table = [
        {
            "model": r["model"],
            "claim": f"{r['condition']} − {r['reference']}" + (f" (±{r['margin']:g})" if r["margin"] else ""),
            "delta": fmt(r["mean_diff"]),
            "ci": _interval(r, "ci_family_low", "ci_family_high", r.get("ci_family_level")),
            "p": p_cell(r["p_family"], r["p_boot_floor"] / (1 if r["role"] == "confirmatory" else 2)),
            "holm": fmt_p(r["p_holm"]),
            "verdict": _verdict(r),
            "n": r["n"],
            "clustering": r["clustering"] or DASH,
        }
        for r in rows
    ]
    cols = (["model"] if multi else []) + ["claim", "delta", "ci", "p", "holm", "verdict", "n", "clustering"]
    heads = (["model"] if multi else []) + [
        "claim",
        "Δ mean",
        "interval (level)",
        "p (bootstrap; TOST for ±m)",
        "Holm p",
        "verdict",
        "n",
        "clustering",
    ]
    return out + [md_table(table, cols, heads, ["l"] * (len(cols) - 7) + ["r"] * 5 + ["r", "l"]), ""]


DELTA_COLS = ["score", "comparison", "role", "delta", "ci", "ci_iid", "p", "p_t", "p_wilcoxon", "p_perm", "d_z", "n"]
DELTA_HEADS = [
    "score",
    "comparison",
    "role",
    "Δ mean",
    "95% CI (bootstrap)",
    "95% iid CI",
    "p (bootstrap)",
    "p_t",
    "p_wilcoxon",
    "p_perm",
    "d_z",
    "n (nan)",
]


def _delta_rows(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        role = "exploratory" if r["role"] == "exploratory" else f"{r['role']} (family table)"
        nan = f" ({r['n_nan']}" + (f", +{r['n_unmatched']} unmatched)" if r["n_unmatched"] else ")")
        out.append(
            {
                "score": r["score"],
                "comparison": f"{r['condition']} − {r['reference']}",
                "role": role,
                "delta": fmt(r["mean_diff"]),
                "ci": _interval(r, "ci_low", "ci_high"),
                "ci_iid": DASH if r.get("all_zero") else ci_text(r["ci_iid_low"], r["ci_iid_high"]),
                "p": p_cell(r["p_boot"], r["p_boot_floor"]),
                "p_t": fmt_p(r["p_t"]),
                "p_wilcoxon": fmt_p(r["p_wilcoxon"]),
                "p_perm": p_cell(r["p_perm"], r["p_perm_floor"]),
                "d_z": fmt(r["d_z"]),
                "n": f"{r['n']}" + (nan if r["n_nan"] or r["n_unmatched"] else ""),
            }
        )
    return out


def _delta_intro(summary: dict, section: str, rows: list[dict]) -> str:
    st = summary["stats"]
    designs = "; ".join(dict.fromkeys(r["clustering"] for r in rows if r["clustering"]))
    what = {
        "vs_reference": f"Δ = condition − {summary['reference']}",
        "vs_control": f"Δ = {summary['primary']} − control",
        "claim": "Δ = the contrasts the confirmatory family names that no table above covers",
    }[section]
    return (
        f"{what}, paired on (pair_id, seed). Exploratory unless the role says otherwise: p unadjusted (a "
        "family row's Holm p is in the family table). 95% CI and p (bootstrap) come from the same "
        f"{st['n_boot']} draws ({designs or 'none'}), so the CI excludes 0 exactly when p ≤ 0.05; the iid CI "
        "resamples units as if independent, for comparison. p_t is the paired t-test (the seed's), p_wilcoxon "
        "the signed-rank test, p_perm the sign-flip permutation test over units (both ignore clustering). "
        f"Resampled p's have floors, shown as ≤: the bootstrap p cannot fall below 2/(B+1) = "
        f"{fmt_p(st['p_boot_floor'])} (two-sided, B = {st['n_boot']} draws), the permutation p below 2/(B+1) = "
        f"{fmt_p(st['p_perm_floor'])} with B = {st['n_perm']} random sign patterns (2/2^n when all 2^n are "
        "enumerated). d_z = mean Δ / SD(Δ), ddof=1."
    )


def delta_section(summary: dict, section: str) -> list[str]:
    """One section of paired deltas (``vs_reference``, ``vs_control`` or ``claim``)."""
    rows = [r for r in summary["deltas"] if r["family"] == section]
    if section != "vs_reference" and not rows:
        return []
    title = {
        "vs_reference": f"## Paired deltas vs {summary['reference']}",
        "vs_control": f"## {summary['primary']} vs each control",
        "claim": "## Other contrasts of the family",
    }[section]
    out = [title, "", _delta_intro(summary, section, rows), ""]
    if not rows:
        return out + ["No comparisons.", ""]
    for model in summary["models"]:
        mine = [r for r in rows if r.get("model") == model]
        if mine:
            out += _model_heading(summary, model)
            align = ["l", "l", "l"] + ["r"] * (len(DELTA_COLS) - 3)
            out += [md_table(_delta_rows(mine), DELTA_COLS, DELTA_HEADS, align), ""]
    return out


def headline_rows(summary: dict, model: str, score: str) -> list[dict]:
    """The command line's paired-deltas rows for one model and score: each comparison with its role, its
    interval (the family's, at its level, for a claim; else the 95% one), the p beside it and the verdict."""
    out = []
    for r in summary["deltas"]:
        if r["model"] != model or r["score"] != score:
            continue
        claim = r["role"] != "exploratory"
        if claim:
            ci = _interval(r, "ci_family_low", "ci_family_high", r.get("ci_family_level"))
            p = p_cell(r["p_family"], r["p_boot_floor"] / (1 if r["role"] == "confirmatory" else 2))
        else:
            ci, p = _interval(r, "ci_low", "ci_high", 0.95), p_cell(r["p_boot"], r["p_boot_floor"])
        out.append(
            {
                "comparison": f"{r['condition']} − {r['reference']}",
                "role": r["role"],
                "delta": fmt(r["mean_diff"]),
                "ci": ci,
                "p": p,
                "holm": fmt_p(r["p_holm"]) if claim else DASH,
                "verdict": _verdict(r) if claim else DASH,
            }
        )
    return out


def family_line(summary: dict) -> str:
    """One sentence on the run's confirmatory family, for the command line."""
    fam = summary["stats"].get("family")
    if not fam:
        return "No confirmatory family declared ([analysis]): every comparison is exploratory, p unadjusted."
    return (
        f"Confirmatory family: {len(fam['claims'])} claims on {fam['primary']} ({fam['size']} rows), Holm within "
        "them only; every other row exploratory, p unadjusted. Intervals: a claim's at its Holm level, others 95%."
    )
