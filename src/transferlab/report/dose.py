"""Dose-response of steering vectors: the primary score and target fidelity against the coefficient, per depth.

A condition belongs to the dose-response when its plan is a single steering
vector read from a file, ``steer:FILE@LAYER:aCOEF`` (what a ``steer_dose``
sweep generates, or conditions listed by hand). Its layer and coefficient are
read from the plan text; each (file, layer) is one line. Means and 95%
cluster-bootstrap CIs come from the summary's condition table (nothing is
recomputed); the reference condition (the target alone) is drawn as a
dashed line, the value every line should start from at coefficient 0.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .common import FIDELITY

STEER_PLAN = re.compile(r"^steer:(?P<file>[^:+]+?)@(?P<layer>-?[\d.]+)(?::a(?P<coef>[-+\d.eE]+))?(?::both)?$")


def dose_points(summary: dict) -> list[dict]:
    """One row per (model, condition) whose plan is a single file-form steer:
    ``model, condition, vector (file name), layer, coef`` and, for the primary score and each fidelity score
    present, ``<score>_mean / _ci_low / _ci_high``."""
    plans = summary.get("plans") or []
    cell = {(r["model"], r["condition"], r["score"]): r for r in summary.get("conditions_table") or []}
    scores = [summary["primary_score"]] + [s for s in FIDELITY if s != summary["primary_score"]]
    out = []
    for p in plans:
        m = STEER_PLAN.match(str(p["plan"]).strip())
        if m is None:
            continue
        row = {
            "model": p["model"],
            "condition": p["condition"],
            "vector": Path(m["file"]).name,
            "layer": m["layer"],
            "coef": float(m["coef"]) if m["coef"] is not None else 1.0,
        }
        for s in scores:
            r = cell.get((p["model"], p["condition"], s))
            if r is not None:
                row.update({f"{s}_mean": r["mean"], f"{s}_ci_low": r["ci_low"], f"{s}_ci_high": r["ci_high"]})
        out.append(row)
    return out


def _panel_scores(summary: dict, points: list[dict]) -> list[str]:
    primary = summary["primary_score"]
    present = [s for s in FIDELITY if s != primary and any(p.get(f"{s}_mean") is not None for p in points)]
    return [primary] + present


def plot_dose_response(summary: dict, out_dir: Path) -> Path | None:
    """Per model, one panel per score (the primary, then each target-fidelity score present): the mean against
    the coefficient, a line per (vector, layer), with 95% cluster CIs; None without at least two coefficients."""
    points = dose_points(summary)
    if len({p["coef"] for p in points}) < 2:
        return None
    models = list(dict.fromkeys(p["model"] for p in points))
    scores = _panel_scores(summary, points)
    cell = {(r["model"], r["condition"], r["score"]): r for r in summary.get("conditions_table") or []}
    reference = summary["reference"]
    fig = Figure(figsize=(4.2 * len(scores) + 1.6, 3.6 * len(models)), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(len(models), len(scores), squeeze=False)
    for mi, model in enumerate(models):
        mine = [p for p in points if p["model"] == model]
        lines = list(dict.fromkeys((p["vector"], p["layer"]) for p in mine))
        several = len({v for v, _ in lines}) > 1
        for si, score in enumerate(scores):
            ax = grid[mi][si]
            for vector, layer in lines:
                pts = sorted((p for p in mine if (p["vector"], p["layer"]) == (vector, layer)), key=lambda p: p["coef"])
                pts = [p for p in pts if p.get(f"{score}_mean") is not None]
                if not pts:
                    continue
                x = np.array([p["coef"] for p in pts])
                y = np.array([p[f"{score}_mean"] for p in pts], dtype=float)
                lo = np.array([p[f"{score}_ci_low"] if p[f"{score}_ci_low"] is not None else np.nan for p in pts])
                hi = np.array([p[f"{score}_ci_high"] if p[f"{score}_ci_high"] is not None else np.nan for p in pts])
                label = f"{vector} @ layer {layer}" if several else f"layer {layer}"
                line = ax.plot(x, y, "o-", ms=5, lw=1.5, label=label)[0]
                ok = np.isfinite(lo) & np.isfinite(hi)
                if ok.any():
                    ax.fill_between(x[ok], lo[ok], hi[ok], color=line.get_color(), alpha=0.15, lw=0)
            ref = cell.get((model, reference, score))
            if ref is not None and ref["mean"] is not None:
                ax.axhline(ref["mean"], color="black", ls="--", lw=1, label=f"{reference} (no steering)")
            ax.set_xlabel("coefficient (× steering vector)")
            ax.set_ylabel(score)
            ax.grid(alpha=0.3)
            ax.set_title(f"{model}: {score}" if len(models) > 1 else score, fontsize=10)
        grid[mi][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.suptitle(
        "Steering dose-response: condition means with 95% cluster CIs against the coefficient, one line per depth",
        fontsize=10,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "dose_response.png"
    fig.savefig(path, dpi=110)
    return path


def dose_section(summary: dict) -> list[str]:
    """Markdown lines: the dose-response table (layer x coefficient: primary and fidelity means), or none."""
    points = dose_points(summary)
    if len({p["coef"] for p in points}) < 2:
        return []
    scores = _panel_scores(summary, points)
    multi = len({p["model"] for p in points}) > 1
    head = (["model"] if multi else []) + ["vector", "layer", "coefficient"] + scores
    lines = [
        "## Steering dose-response",
        "",
        "Condition means (95% cluster CI) of each steering condition, by depth and coefficient; "
        "see figures/dose_response.png.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * len(head)) + "|",
    ]

    def cell(p, s):
        m = p.get(f"{s}_mean")
        if m is None:
            return "–"
        lo, hi = p.get(f"{s}_ci_low"), p.get(f"{s}_ci_high")
        return f"{m:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")

    for p in sorted(points, key=lambda p: (p["model"], p["vector"], float(p["layer"]), p["coef"])):
        row = (
            ([p["model"]] if multi else []) + [p["vector"], p["layer"], f"{p['coef']:g}"] + [cell(p, s) for s in scores]
        )
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]
