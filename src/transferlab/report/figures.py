"""The report's figures, drawn from the summary (and the results for per-pair deltas).

Each ``plot_*`` function writes one PNG (150 dpi) into ``out_dir`` and returns
its path, or returns ``None`` when the data do not call for it (one seed, no
R_V, ...). Figures are built on :class:`matplotlib.figure.Figure` with an Agg
canvas attached explicitly: the Agg backend, without touching pyplot's global
state, so the report can be written from a notebook or a headless server.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from ..atomic import own_folder, replace_file
from ..stats import paired_table
from .common import CLUSTER, PAIR_UNIT
from .dose import plot_dose_response

DPI = 150
SCORE_UNITS = {
    "seed_v1": "markers, 0–26",
    "seed_v1_markers": "markers, 0–21",
    "lexicon": "markers",
    "source_lexicon": "fraction of source lexicon, 0–1",
    "strict": "0–1",
    "source_overlap": "fraction of source words, 0–1",
    "collapse": "fraction collapsed, 0–1",
    "logit_markers": "mean log-odds, nats",
    "target_overlap": "fraction of target words, 0–1",
    "answer": "fraction answered, 0–1",
    "target_answer_logprob": "mean log-prob of the reference's tokens, nats",
}
RV_LABEL = "R_V = PR(late) / PR(early)  (ratio)"


def score_label(score: str, prefix: str = "") -> str:
    """Axis label of a score with its unit (``score units`` when unknown)."""
    return f"{prefix}{score} ({SCORE_UNITS.get(score, 'score units')})"


def _figure(n_panels: int, panel_w: float, panel_h: float, sharey: bool = True):
    fig = Figure(figsize=(panel_w * n_panels, panel_h), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, sharey=sharey, squeeze=False)[0]
    return fig, list(axes)


def _suptitle(fig: Figure, text: str) -> None:
    """A figure title wrapped to the figure's width (about 11 characters an inch at size 11)."""
    fig.suptitle(textwrap.fill(text, width=max(30, int(fig.get_figwidth() * 11))), fontsize=11)


def _save(fig: Figure, out_dir: Path, name: str) -> Path:
    own_folder(out_dir)  # a link named figures/ is replaced, never written through
    return replace_file(out_dir / f"{name}.png", lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))


def condition_colors(conditions: Sequence[str], reference: str, primary: str | None) -> dict[str, str]:
    """One colour per condition, the same in every figure: reference grey, primary red."""
    palette = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#ff7f0e"]
    out, k = {}, 0
    for c in conditions:
        if c == reference:
            out[c] = "#7f7f7f"
        elif c == primary:
            out[c] = "#d62728"
        else:
            out[c] = palette[k % len(palette)]
            k += 1
    return out


def _xticks(ax, labels: Sequence[str]) -> None:
    ax.set_xticks(range(len(labels)))
    rot = 30 if max((len(x) for x in labels), default=0) * len(labels) > 40 else 0
    ax.set_xticklabels(labels, rotation=rot, ha="right" if rot else "center", rotation_mode="anchor")


def plot_condition_means(summary: dict, out_dir: Path) -> Path | None:
    """Mean of the primary score per condition with its 95% bootstrap CI, a panel per model."""
    score = summary["primary_score"]
    rows = [r for r in summary["conditions_table"] if r["score"] == score and r["mean"] is not None]
    if not rows:
        return None
    models, ref = summary["models"], summary["reference"]
    colors = condition_colors(summary["conditions"], ref, summary.get("primary"))
    fig, axes = _figure(len(models), max(4.5, 0.85 * len(summary["conditions"]) + 1.8), 4.6)
    for ax, model in zip(axes, models):
        mine = {r["condition"]: r for r in rows if r["model"] == model}
        conds = [c for c in summary["conditions"] if c in mine]
        for i, c in enumerate(conds):
            r = mine[c]
            lo, hi = r["ci_low"], r["ci_high"]
            yerr = None if lo is None else [[r["mean"] - lo], [hi - r["mean"]]]
            ax.errorbar(i, r["mean"], yerr=yerr, fmt="o", ms=8, color=colors[c], capsize=5, lw=2)
            ax.annotate(
                f"{r['mean']:.2f}",
                (i, hi if hi is not None else r["mean"]),
                xytext=(0, 5),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
        if ref in mine:
            ax.axhline(mine[ref]["mean"], color=colors[ref], ls="--", lw=1, label=f"{ref} mean")
            ax.legend(loc="upper left", fontsize=8, frameon=False)
        _xticks(ax, conds)
        ax.set_xlim(-0.6, len(conds) - 0.4)
        ax.margins(y=0.12)
        ax.set_xlabel("condition")
        ax.grid(axis="y", alpha=0.3)
        n = max((mine[c]["n"] for c in conds), default=0)
        ax.set_title(f"{model}" + (f"  (n ≤ {n} per condition)" if n else ""), fontsize=10)
    axes[0].set_ylabel(score_label(score, "mean "))
    _suptitle(fig, f"Mean {score} by condition; error bars: 95% CI, bootstrap over source prompts")
    return _save(fig, Path(out_dir), "condition_means")


def plot_pair_deltas(results: pd.DataFrame, summary: dict, out_dir: Path) -> Path | None:
    """Per-unit (pair × seed) deltas vs the reference for each condition: violin, points, mean and CI."""
    score, ref = summary["primary_score"], summary["reference"]
    models = summary["models"]
    conds = [c for c in summary["conditions"] if c != ref]
    if not conds or score not in results.columns:
        return None
    colors = condition_colors(summary["conditions"], ref, summary.get("primary"))
    stats = {
        (r["model"], r["condition"]): r
        for r in summary["deltas"]
        if r["family"] == "vs_reference" and r["score"] == score
    }
    fig, axes = _figure(len(models), max(4.5, 0.9 * len(conds) + 1.8), 4.8)
    rng = np.random.default_rng(0)
    drawn = False
    for ax, model in zip(axes, models):
        sub = results[results["model"] == model]
        have = set(sub["condition"])
        mine = [c for c in conds if c in have and ref in have]
        for i, c in enumerate(mine):
            wide = paired_table(sub, c, ref, score, pair_col=PAIR_UNIT, cluster_col=CLUSTER)
            d = wide.loc[wide["status"] == "ok", "diff"].to_numpy(float)
            if not d.size:
                continue
            drawn = True
            if np.ptp(d) > 0:
                parts = ax.violinplot([d], positions=[i], widths=0.8, showextrema=False)
                for body in parts["bodies"]:
                    body.set_facecolor(colors[c])
                    body.set_alpha(0.18)
            ax.scatter(i + rng.uniform(-0.22, 0.22, d.size), d, s=7, color=colors[c], alpha=0.45, lw=0)
            st = stats.get((model, c))
            if st and st["ci_low"] is not None:
                m = st["mean_diff"]
                ax.errorbar(
                    i,
                    m,
                    yerr=[[m - st["ci_low"]], [st["ci_high"] - m]],
                    fmt="D",
                    color="black",
                    ms=6,
                    capsize=5,
                    lw=1.8,
                    zorder=5,
                    label="mean Δ, 95% bootstrap CI" if i == 0 else None,
                )
        ax.axhline(0, color="black", lw=0.9)
        _xticks(ax, mine)
        ax.set_xlim(-0.6, len(mine) - 0.4)
        ax.set_xlabel("condition")
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(model, fontsize=10)
        ax.margins(y=0.08)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8, framealpha=0.8)
    if not drawn:
        return None
    axes[0].set_ylabel(score_label(score, "Δ "))
    _suptitle(fig, f"Δ {score} = condition − {ref}; one point per (pair, seed)")
    return _save(fig, Path(out_dir), "pair_deltas")


def plot_condition_score_heatmap(summary: dict, out_dir: Path) -> Path | None:
    """Condition × score heatmap (``condition_score_heatmap.png``): mean Δ vs the reference (text, with CI) per
    condition and score; colour is d_z.

    Drawn only for a sweep or when there are more than four conditions. The
    colour is d_z rather than the raw Δ so that scores of different ranges
    share one scale.
    """
    if summary.get("sweep") is None and len(summary["conditions"]) <= 4:
        return None
    rows = [r for r in summary["deltas"] if r["family"] == "vs_reference"]
    if not rows:
        return None
    multi = len(summary["models"]) > 1
    scores = list(dict.fromkeys(r["score"] for r in rows))
    keys = list(dict.fromkeys((r["model"], r["condition"]) for r in rows))
    cell = {(r["model"], r["condition"], r["score"]): r for r in rows}
    dz = np.full((len(keys), len(scores)), np.nan)
    for i, (m, c) in enumerate(keys):
        for j, s in enumerate(scores):
            r = cell.get((m, c, s))
            if r and r["d_z"] is not None:
                dz[i, j] = r["d_z"]
    vmax = max(0.5, float(np.nanmax(np.abs(dz))) if np.isfinite(dz).any() else 1.0)
    fig = Figure(figsize=(2.0 * len(scores) + 3.2, 0.75 * len(keys) + 1.9), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    cmap = colormaps["RdBu_r"].with_extremes(bad="#e6e6e6")
    im = ax.imshow(np.ma.masked_invalid(dz), cmap=cmap, norm=TwoSlopeNorm(0.0, -vmax, vmax), aspect="auto")
    n_max = max((r["n"] for r in rows), default=0)
    for i, (m, c) in enumerate(keys):
        for j, s in enumerate(scores):
            r = cell.get((m, c, s))
            if not r or r["mean_diff"] is None:
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="#555555")
                continue
            text = _num(r["mean_diff"], sign=True)
            if r["ci_low"] is not None:
                text += f"\n[{_num(r['ci_low'])}, {_num(r['ci_high'])}]"
            if not np.isfinite(dz[i, j]):
                text += "\nd_z undefined"
            if r["n"] < n_max:
                text += f"\nn={r['n']}"
            dark = np.isfinite(dz[i, j]) and abs(dz[i, j]) > 0.6 * vmax
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(scores)))
    ax.set_xticklabels([f"{s}\n({SCORE_UNITS.get(s, 'score units')})" for s in scores], fontsize=8)
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels([f"{m}: {c}" if multi else c for m, c in keys], fontsize=9)
    ax.set_xlabel("score")
    ax.set_ylabel("condition")
    cb = fig.colorbar(im, ax=ax, shrink=0.9)
    cb.set_label("d_z = mean Δ / SD(Δ)  (unitless)")
    kind = (summary.get("sweep") or {}).get("kind", "conditions")
    ax.set_title(f"{kind}: mean Δ vs {summary['reference']} [95% bootstrap CI]; colour = d_z", fontsize=10)
    return _save(fig, Path(out_dir), "condition_score_heatmap")


def _num(x: float, sign: bool = False) -> str:
    """Two decimals, no negative zero."""
    x = 0.0 if abs(x) < 0.005 else x
    return f"{x:+.2f}" if sign and x != 0 else f"{x:.2f}"


def plot_rv_groups(summary: dict, out_dir: Path) -> Path | None:
    """R_V distribution per prompt group (box + points), NaN prompts counted in the tick labels."""
    rows = summary.get("rv_groups") or []
    if not rows or all(r["n"] == 0 for r in rows):
        return None
    models = [m for m in summary["models"] if any(r["model"] == m for r in rows)] or [rows[0]["model"]]
    fig, axes = _figure(len(models), max(4.5, 1.0 * max(sum(r["model"] == m for r in rows) for m in models) + 1.6), 4.8)
    rng = np.random.default_rng(0)
    role_colors = {"source": "#d62728", "target": "#1f77b4"}
    for ax, model in zip(axes, models):
        mine = [r for r in rows if r["model"] == model]
        labels = []
        for i, r in enumerate(mine):
            v = np.asarray(r.get("values") or [], float)
            color = role_colors.get(r["role"], "#555555")
            if v.size:
                bp = ax.boxplot(
                    [v], positions=[i], widths=0.55, patch_artist=True, showfliers=False, medianprops={"color": "black"}
                )
                bp["boxes"][0].set(facecolor=color, alpha=0.25)
                ax.scatter(i + rng.uniform(-0.15, 0.15, v.size), v, s=14, color=color, alpha=0.8, lw=0, zorder=3)
            else:
                ax.text(
                    i,
                    0.5,
                    "no R_V\n(all NaN)",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="#555555",
                    transform=ax.get_xaxis_transform(),
                )
            nan = f", NaN={r['n_nan']}" if r["n_nan"] else ""
            labels.append(f"{r['group']}\n{r['role']}\nn={r['n']}{nan}")
        ax.axhline(1.0, color="black", lw=0.8, ls=":", label="R_V = 1 (no contraction)")
        ax.set_xticks(range(len(mine)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_xlim(-0.6, len(mine) - 0.4)
        ax.set_xlabel("prompt group (role, prompts with R_V defined)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(model, fontsize=10)
        ax.legend(loc="best", fontsize=8, frameon=False)
    axes[0].set_ylabel(RV_LABEL)
    _suptitle(fig, "R_V by prompt group, one point per distinct prompt")
    return _save(fig, Path(out_dir), "rv_groups")


def plot_seeds(summary: dict, out_dir: Path) -> Path | None:
    """Per-seed mean of the primary score, one line per condition across seeds (needs > 1 seed)."""
    seeds = summary["seeds"]
    if len(seeds) < 2:
        return None
    score, models = summary["primary_score"], summary["models"]
    colors = condition_colors(summary["conditions"], summary["reference"], summary.get("primary"))
    fig, axes = _figure(len(models), max(4.5, 0.5 * len(seeds) + 3.5), 4.4)
    x = {s: i for i, s in enumerate(seeds)}
    for ax, model in zip(axes, models):
        for c in summary["conditions"]:
            pts = sorted(
                (x[r["seed"]], r["mean"])
                for r in summary["seeds_table"]
                if r["model"] == model and r["condition"] == c and r["score"] == score and r["mean"] is not None
            )
            if pts:
                ax.plot(*zip(*pts), marker="o", color=colors[c], lw=1.6, label=c)
        ax.set_xticks(range(len(seeds)))
        ax.set_xticklabels([str(s) for s in seeds])
        ax.set_xlabel("sampling seed")
        ax.grid(alpha=0.3)
        ax.set_title(model, fontsize=10)
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, title="condition")
    axes[0].set_ylabel(score_label(score, "mean "))
    _suptitle(fig, f"Mean {score} per sampling seed")
    return _save(fig, Path(out_dir), "seeds")


def plot_fidelity(results: pd.DataFrame, summary: dict, out_dir: Path) -> Path | None:
    """Source score vs target fidelity: a panel per (model, fidelity score), the primary score on y.

    One faint point per row (pair × seed) and, per condition, its mean with 95% cluster-bootstrap CIs on both
    axes (from the summary's ``fidelity`` table). A transfer worth the name sits high (the source's behavior)
    and as far right as the reference (the target's task kept); the source prompt itself sits high and left.
    """
    fidelity = [f for f in summary.get("fidelity_scores") or [] if f in results.columns]
    rows = summary.get("fidelity") or []
    score = summary["primary_score"]
    if not fidelity or not rows or score not in results.columns:
        return None
    models = summary["models"]
    colors = condition_colors(summary["conditions"], summary["reference"], summary.get("primary"))
    fig = Figure(figsize=(4.4 * len(fidelity) + 1.8, 4.0 * len(models)), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(len(models), len(fidelity), squeeze=False, sharey="row")
    rng = np.random.default_rng(0)
    means = {(r["model"], r["condition"]): r for r in rows}
    for mi, model in enumerate(models):
        sub = results[results["model"] == model]
        for fi, f in enumerate(fidelity):
            ax = grid[mi][fi]
            for c in summary["conditions"]:
                part = sub[sub["condition"] == c]
                ok = part[[f, score]].astype(float).dropna()
                if len(ok):
                    jitter = 0.01 if f == "answer" else 0.0  # 0/1 values: spread the dots a little
                    ax.scatter(
                        ok[f] + rng.uniform(-jitter, jitter, len(ok)),
                        ok[score],
                        s=6,
                        color=colors[c],
                        alpha=0.25,
                        lw=0,
                    )
                r = means.get((model, c))
                if r is None or r[f"{f}_mean"] is None or r["primary_mean"] is None:
                    continue
                x, y = r[f"{f}_mean"], r["primary_mean"]
                xerr = _err(x, r[f"{f}_ci_low"], r[f"{f}_ci_high"])
                yerr = _err(y, r["primary_ci_low"], r["primary_ci_high"])
                ax.errorbar(
                    x,
                    y,
                    xerr=xerr,
                    yerr=yerr,
                    fmt="o",
                    ms=8,
                    mec="black",
                    mew=0.8,
                    color=colors[c],
                    capsize=3,
                    lw=1.4,
                    label=c if fi == len(fidelity) - 1 else None,
                    zorder=5,
                )
            ax.set_xlabel(score_label(f))
            ax.grid(alpha=0.3)
            if len(models) > 1 or fi == 0:
                ax.set_title(model if len(models) > 1 else "", fontsize=10)
        grid[mi][0].set_ylabel(score_label(score))
        grid[mi][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False, title="condition")
    _suptitle(
        fig,
        f"Source behavior ({score}) vs target fidelity, per condition: one faint point per (pair, seed); "
        "large points: condition means with 95% cluster CIs",
    )
    return _save(fig, Path(out_dir), "fidelity")


def _err(center: float, lo, hi):
    """An errorbar's ``[[below], [above]]`` from a CI, or None without one."""
    if lo is None or hi is None:
        return None
    return [[max(0.0, center - lo)], [max(0.0, hi - center)]]


def make_figures(results: pd.DataFrame, summary: dict, out_dir: Path) -> dict[str, Path]:
    """Every figure that applies, as {name: path}, in report order."""
    out_dir = Path(out_dir)
    made = {
        "condition_means": plot_condition_means(summary, out_dir),
        "pair_deltas": plot_pair_deltas(results, summary, out_dir),
        "fidelity": plot_fidelity(results, summary, out_dir),
        "condition_score_heatmap": plot_condition_score_heatmap(summary, out_dir),
        "dose_response": plot_dose_response(summary, out_dir),
        "rv_groups": plot_rv_groups(summary, out_dir),
        "seeds": plot_seeds(summary, out_dir),
    }
    return {k: v for k, v in made.items() if v is not None}
