"""R_V by prompt group: does the seed's geometry separate recursive prompts? (issue 11 item 5a)

**The question.** The seed reported that R_V = PR(late) / PR(early) of the
value projection (:mod:`transferlab.metrics.geometry`) is lower ("contracts")
for recursive, self-observing prompts than for ordinary ones. This study
measures R_V for every prompt of a bank on one model in one prompt format and
asks whether the recursive groups (``L1``-``L5``) differ from the baselines,
from the length-matched baselines (``*_long``: ordinary prompts as long as the
recursive ones) and from each confound group (long ordinary text, text *about*
recursion, repetitive text). Length matters: R_V is taken over the last
``window`` tokens, a prompt shorter than the window has no R_V (NaN, counted),
and longer prompts put the window at later positions; the length-matched
baselines are the comparison that controls for it.

**Layers.** The seed's layers 5 and 27 of 32, mapped by depth
(``resolve_layer(5/32)``, ``resolve_layer(27/32)``). The **profile** keeps the
early layer fixed and sweeps the late layer over every layer from the middle
of the network (``n_layers // 2``, or the seed's late layer if that is lower)
to the last. All of these layers' ``v_proj`` are captured in one forward per
batch; the seed-layer value is the profile's value at the seed's late layer,
and equals :func:`transferlab.metrics.rv` for the same token ids. At every
profile layer, all recursive prompts are compared with the same references as
at the seed layers (baselines, long baselines, each confound).

**Statistics.** Prompts are the unit: each prompt is its own cluster (no
prompt is measured twice; the groups are independent samples of prompts).
Per group: mean, percentile bootstrap 95% CI over prompts, n (prompts with an
R_V), n_nan (prompts shorter than the window, or degenerate). A contrast is
``target - reference`` between two sets of groups, unpaired: difference of
means, bootstrap CI resampling each arm's prompts independently, a two-sided
permutation p (group labels shuffled; ``(1 + #extreme) / (1 + n_perm)``),
Welch's t p beside it, and **Cohen's d_s** = difference / pooled SD (ddof=1,
no Hedges correction). Holm adjusts the permutation p across the seed-layer
contrasts (one family) and, separately, across the profile's contrasts. Beside
each contrast, the difference **at equal length**: the target coefficient of
the OLS ``R_V ~ 1 + target + tokens`` over both arms (bootstrap CI, no p).

**Output** (a run directory ``<out>/rv_study-<model>-<format>-<time>/``):
``rv_prompts.csv`` (one row per prompt and late layer; ``seed_late`` marks the
seed's layer; prompt texts are the bank's, by ``prompt_id`` and bank version),
``summary.json``, ``metadata.json`` (versions, command, times), ``report.md``
and ``figures/rv_by_group.png``, ``figures/rv_profile.png``.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..engine.batching import encode
from ..metrics.geometry import default_rv_layers, participation_ratio
from ..prompts import PromptBank, load_bank
from ..report.figures import DPI, RV_LABEL
from ..stats import DDOF, bootstrap_mean_ci, holm
from .metadata import environment, now, write_json

RECURSIVE_ALL = "all recursive (L1-L5)"
BASELINES = "baselines (all)"
LONG_BASELINES = "long baselines (*_long)"
SITE = "v_proj"
LENGTH_WARN = 0.10  # warn when mean tokens differ by more than 10% between recursive prompts and a baseline set
PROMPT_COLUMNS = [
    "model",
    "format",
    "prompt_id",
    "group",
    "pillar",
    "level",
    "n_tokens",
    "layer_early",
    "layer_late",
    "seed_late",
    "pr_early",
    "pr_late",
    "rv",
    "status",
    "text",
]


class StudyError(ValueError):
    """The study cannot run as asked (unknown group, a bank without recursive groups, ...)."""


# --------------------------------------------------------------------------- measurement


def study_layers(n_layers: int, early: float | int = 5 / 32, late: float | int = 27 / 32) -> tuple[int, int, list[int]]:
    """(early, late, profile): the seed's layers by depth and the late layers of the profile."""
    le, ll = default_rv_layers(n_layers, early, late)
    return le, ll, list(range(min(n_layers // 2, ll), n_layers))


def measure(
    model,
    prompts: Sequence,
    prompt_format: str = "raw",
    window: int = 16,
    *,
    early: float | int = 5 / 32,
    late: float | int = 27 / 32,
    formula: str = "squared",
    batch_size: int | None = None,
) -> pd.DataFrame:
    """R_V per prompt at every profile layer (one row per prompt and late layer).

    ``prompts`` are bank :class:`~transferlab.prompts.Prompt` objects. One
    capture of ``v_proj`` at the early layer and every profile layer; a prompt
    with fewer tokens than ``window`` (BOS excluded) gets NaN, as
    ``metrics.rv(short="nan")`` gives it.
    """
    if window < 2:
        raise StudyError(f"the R_V window must be at least 2 tokens, got {window}")
    prompts = list(prompts)
    if not prompts:
        raise StudyError("no prompts to measure")
    ids = encode(model.tokenizer, [p.text for p in prompts], prompt_format)  # chat without a template: ValueError
    le, ll, profile = study_layers(model.adapter.n_layers, early, late)
    acts = model.capture(ids, sites=[f"{SITE}@{x}" for x in [le, *profile]], window=window, batch_size=batch_size)
    early_acts = acts[f"{SITE}@{le}"]
    late_acts = {x: acts[f"{SITE}@{x}"] for x in profile}
    rows = []
    for i, p in enumerate(prompts):
        n = acts.n_tokens(i)
        base = dict(
            model=model.name,
            format=prompt_format,
            prompt_id=p.id,
            group=p.group,
            pillar=p.meta.get("pillar", ""),
            level=p.level,
            n_tokens=n,
            layer_early=le,
            text=p.text,
        )
        pe = participation_ratio(early_acts[i], formula) if n >= window else np.nan
        for x in profile:
            if n < window:
                pl, value, status = np.nan, np.nan, f"short: {n} < window {window}"
            else:
                pl = participation_ratio(late_acts[x][i], formula)
                ok = pe and np.isfinite(pe) and np.isfinite(pl)
                value = pl / pe if ok else np.nan
                status = "ok" if np.isfinite(value) else "nan: degenerate activations"
            rows.append(
                {
                    **base,
                    "layer_late": x,
                    "seed_late": x == ll,
                    "pr_early": pe,
                    "pr_late": pl,
                    "rv": value,
                    "status": status,
                }
            )
    return pd.DataFrame(rows, columns=PROMPT_COLUMNS)


# --------------------------------------------------------------------------- statistics


def describe(values, n_boot: int = 5000, seed: int = 0, level: float = 0.95) -> dict:
    """n, n_nan, mean, sd, bootstrap CI (each value its own cluster) of one set of prompts' values."""
    v = np.asarray(values, dtype=np.float64)
    x = v[np.isfinite(v)]
    lo, hi = bootstrap_mean_ci(x, None, n_boot, level, seed) if x.size else (np.nan, np.nan)
    return {
        "n": int(x.size),
        "n_nan": int(v.size - x.size),
        "mean": float(x.mean()) if x.size else np.nan,
        "sd": float(x.std(ddof=DDOF)) if x.size > 1 else np.nan,
        "ci_low": lo,
        "ci_high": hi,
    }


def _select(table: pd.DataFrame, groups: Sequence[str], what: str) -> pd.DataFrame:
    if isinstance(groups, str):
        groups = [groups]
    have = set(table["group"])
    unknown = [g for g in groups if g not in have]
    if unknown:
        raise StudyError(f"{what}: unknown group(s) {unknown}; the table has {sorted(map(str, have))}")
    return table[table["group"].isin(list(groups))]


def group_summary(
    table: pd.DataFrame, groups: Sequence[str] | None = None, value: str = "rv", n_boot: int = 5000, seed: int = 0
) -> pd.DataFrame:
    """Per group (order of ``groups``, else of first appearance): n_prompts, n, n_nan, mean, sd,
    95% bootstrap CI over prompts, and mean / min / max tokens (BOS excluded) when the table has them."""
    groups = list(dict.fromkeys(table["group"])) if groups is None else list(groups)
    rows = []
    for g in groups:
        part = _select(table, [g], "group_summary")
        row = {"group": g, "pillar": part["pillar"].iloc[0] if "pillar" in part else "", "n_prompts": len(part)}
        row.update(describe(part[value], n_boot, seed))
        if "n_tokens" in part:
            row.update(
                mean_tokens=float(part["n_tokens"].mean()),
                min_tokens=int(part["n_tokens"].min()),
                max_tokens=int(part["n_tokens"].max()),
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _perm_p(a: np.ndarray, b: np.ndarray, n_perm: int, rng: np.random.Generator) -> float:
    """Two-sided permutation p of mean(a) - mean(b), labels shuffled; (1 + #extreme) / (1 + n_perm)."""
    pooled = np.concatenate([a, b])
    obs = abs(a.mean() - b.mean())
    extreme, done, chunk = 0, 0, 2000
    while done < n_perm:
        k = min(chunk, n_perm - done)
        perms = rng.permuted(np.broadcast_to(pooled, (k, pooled.size)), axis=1)
        d = perms[:, : a.size].mean(axis=1) - perms[:, a.size :].mean(axis=1)
        extreme += int(np.sum(np.abs(d) >= obs - 1e-12 * max(1.0, obs)))
        done += k
    return (1 + extreme) / (1 + n_perm)


def _ols_target_coef(y: np.ndarray, is_t: np.ndarray, tok: np.ndarray) -> np.ndarray:
    """Coefficient of the target indicator in ``y ~ 1 + target + tokens``, batched over leading axes."""
    x = np.stack([np.ones_like(tok), is_t, tok], axis=-1)
    xtx = np.einsum("...ni,...nj->...ij", x, x)
    xty = np.einsum("...ni,...n->...i", x, y)
    with np.errstate(all="ignore"):
        bad = ~(np.linalg.cond(xtx) < 1e12)  # tokens constant, or collinear with the arm: no estimate
    xtx = np.where(bad[..., None, None], np.eye(3), xtx)
    return np.where(bad, np.nan, np.linalg.solve(xtx, xty[..., None])[..., 1, 0])


def length_adjusted(a, b, a_tokens, b_tokens, n_boot: int = 5000, seed: int = 0, level: float = 0.95) -> tuple:
    """Target - reference at equal length: the target coefficient of the OLS ``value ~ 1 + target + tokens``
    over both arms, with a bootstrap CI resampling each arm's prompts. NaN when tokens cannot separate."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ta, tb = np.asarray(a_tokens, float), np.asarray(b_tokens, float)
    y, tok = np.r_[a, b], np.r_[ta, tb]
    is_t = np.r_[np.ones(a.size), np.zeros(b.size)]
    est = float(_ols_target_coef(y, is_t, tok)) if a.size >= 2 and b.size >= 2 else np.nan
    if not np.isfinite(est):
        return np.nan, np.nan, np.nan
    rng = np.random.default_rng(seed)
    idx = np.concatenate(
        [rng.integers(0, a.size, (n_boot, a.size)), a.size + rng.integers(0, b.size, (n_boot, b.size))], 1
    )
    boots = _ols_target_coef(y[idx], np.broadcast_to(is_t, idx.shape), tok[idx])
    boots = boots[np.isfinite(boots)]
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha]) if boots.size else (np.nan, np.nan)
    return est, float(lo), float(hi)


def contrast(
    a_values,
    b_values,
    n_boot: int = 5000,
    n_perm: int = 9999,
    seed: int = 0,
    level: float = 0.95,
    a_tokens=None,
    b_tokens=None,
) -> dict:
    """Unpaired ``mean(a) - mean(b)`` with bootstrap CI, permutation and Welch p, Cohen's d_s (pooled SD);
    with token counts also the mean tokens of each arm and the length-adjusted difference (``diff_adj``)."""
    a = np.asarray(a_values, dtype=np.float64)
    b = np.asarray(b_values, dtype=np.float64)
    ma, mb = np.isfinite(a), np.isfinite(b)
    a, b = a[ma], b[mb]
    nan = np.nan
    tokens = {}
    if a_tokens is not None and b_tokens is not None:
        ta, tb = np.asarray(a_tokens, float)[ma], np.asarray(b_tokens, float)[mb]
        tokens = dict(
            tokens_target=float(ta.mean()) if ta.size else nan,
            tokens_ref=float(tb.mean()) if tb.size else nan,
        )
        tokens["diff_adj"], tokens["ci_adj_low"], tokens["ci_adj_high"] = length_adjusted(
            a, b, ta, tb, n_boot, seed, level
        )
    out = dict(
        n_target=int(a.size),
        n_ref=int(b.size),
        mean_target=float(a.mean()) if a.size else nan,
        mean_ref=float(b.mean()) if b.size else nan,
        diff=nan,
        ci_low=nan,
        ci_high=nan,
        p_perm=nan,
        p_welch=nan,
        d=nan,
        **tokens,
        note="",
    )
    if a.size < 2 or b.size < 2:
        out["note"] = "fewer than 2 prompts with an R_V in an arm"
        if a.size and b.size:
            out["diff"] = out["mean_target"] - out["mean_ref"]
        return out
    rng = np.random.default_rng(seed)
    out["diff"] = float(a.mean() - b.mean())
    boots = a[rng.integers(0, a.size, (n_boot, a.size))].mean(1) - b[rng.integers(0, b.size, (n_boot, b.size))].mean(1)
    alpha = (1 - level) / 2
    out["ci_low"], out["ci_high"] = (float(q) for q in np.quantile(boots, [alpha, 1 - alpha]))
    out["p_perm"] = _perm_p(a, b, n_perm, rng)
    pooled = math.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2))
    if pooled > 0:
        out["d"] = out["diff"] / pooled
        out["p_welch"] = float(sps.ttest_ind(a, b, equal_var=False).pvalue)
    else:
        out["note"] = "both arms constant: d and Welch p undefined"
    return out


def compare_sets(
    table: pd.DataFrame,
    targets: Mapping[str, Sequence[str]],
    references: Mapping[str, Sequence[str]],
    value: str = "rv",
    n_boot: int = 5000,
    n_perm: int = 9999,
    seed: int = 0,
) -> pd.DataFrame:
    """Every target set against every reference set (each a list of groups of ``table``).

    One row per (target, reference): arm sizes and NaN counts, means, ``diff`` = target - reference,
    its 95% bootstrap CI, ``p_perm``, ``p_welch``, Cohen's ``d`` (d_s, pooled SD), and ``p_holm`` (Holm
    over this table's ``p_perm``). When the table has ``n_tokens``: mean tokens of each arm's measured
    prompts and ``diff_adj`` with its CI (see :func:`length_adjusted`; no p-value, not in the Holm family).
    """
    if not targets or not references:
        raise StudyError("compare_sets needs at least one target set and one reference set")
    rows = []
    for tname, tgroups in targets.items():
        ta = _select(table, tgroups, f"target {tname!r}")
        for rname, rgroups in references.items():
            ra = _select(table, rgroups, f"reference {rname!r}")
            row = {"target": tname, "reference": rname}
            tok = (ta["n_tokens"], ra["n_tokens"]) if "n_tokens" in table else (None, None)
            row.update(contrast(ta[value], ra[value], n_boot, n_perm, seed, a_tokens=tok[0], b_tokens=tok[1]))
            row.update(n_nan_target=int(ta[value].isna().sum()), n_nan_ref=int(ra[value].isna().sum()))
            rows.append(row)
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p_perm"].to_numpy())
    return out


def contrast_sets(bank: PromptBank, groups: Sequence[str] | None = None):
    """(targets, references, sets) from a bank's declarations, restricted to ``groups`` when given.

    Targets: each recursion level and all of them pooled. References: all baseline-pillar groups,
    the length-matched ones (``length_variant_of`` declared), and each confound group.
    """
    info = {g: i for g, i in bank.group_info.items() if groups is None or g in groups}
    rec = sorted((g for g, i in info.items() if i.pillar == "recursion"), key=lambda g: (info[g].level or 0, g))
    if not rec:
        raise StudyError(f"bank {bank.name!r} has no recursion-pillar groups (L1-L5) among those measured")
    base = [g for g, i in info.items() if i.pillar == "baseline"]
    long = [g for g in base if info[g].length_variant_of]
    targets = {g: [g] for g in rec}
    if len(rec) > 1:
        targets[RECURSIVE_ALL] = rec
    references = {}
    if base:
        references[BASELINES] = base
    if long and long != base:
        references[LONG_BASELINES] = long
    references.update({g: [g] for g, i in info.items() if i.pillar == "confound"})
    if not references:
        raise StudyError(f"bank {bank.name!r} has no baseline or confound groups among those measured")
    sets = {RECURSIVE_ALL: rec}
    sets.update({k: v for k, v in references.items() if k in (BASELINES, LONG_BASELINES)})
    return targets, references, sets


def profile_tables(
    table: pd.DataFrame,
    sets: Mapping[str, Sequence[str]],
    references: Mapping[str, Sequence[str]],
    n_boot: int,
    n_perm: int,
    seed: int,
):
    """Per late layer: mean and CI of each of ``sets``, and the first set (all recursive) minus each of
    ``references`` (baselines, long baselines, each confound), Holm across every layer and reference."""
    means, contrasts = [], []
    first = next(iter(sets))
    for layer, part in table.groupby("layer_late", sort=True):
        for name, groups in sets.items():
            means.append(
                {"layer_late": int(layer), "set": name, **describe(_select(part, groups, name)["rv"], n_boot, seed)}
            )
        if references:
            c = compare_sets(part, {first: sets[first]}, references, "rv", n_boot, n_perm, seed)
            contrasts.append(c.assign(layer_late=int(layer)))
    con = pd.concat(contrasts, ignore_index=True) if contrasts else pd.DataFrame()
    if len(con):
        con["p_holm"] = holm(con["p_perm"].to_numpy())
    return pd.DataFrame(means), con


def length_checks(seed_table: pd.DataFrame, sets: Mapping[str, Sequence[str]]) -> dict:
    """Mean tokens per set, warnings when recursive and a baseline set differ by > 10%, and
    Spearman correlations of R_V with length (all measured prompts; non-recursive ones) and with level."""
    ok = seed_table[np.isfinite(seed_table["rv"])]
    tokens = {k: float(_select(seed_table, g, k)["n_tokens"].mean()) for k, g in sets.items()}
    measured = {k: float(ok[ok["group"].isin(list(g))]["n_tokens"].mean()) for k, g in sets.items()}
    warnings = []
    rec = measured.get(RECURSIVE_ALL)
    for k in (BASELINES, LONG_BASELINES):
        if k in measured and rec is not None and abs(rec - measured[k]) > LENGTH_WARN * measured[k]:
            warnings.append(
                f"token length differs: the recursive prompts with an R_V average {rec:.1f} tokens, {k} "
                f"{measured[k]:.1f} (BOS excluded; more than {LENGTH_WARN:.0%} apart); R_V differences between "
                "them may be length effects (see the length-adjusted column)"
            )
    out = {"mean_tokens": tokens, "mean_tokens_measured": measured, "warnings": warnings}
    for name, part in (("all", ok), ("non_recursive", ok[ok["pillar"] != "recursion"])):
        if len(part) > 2 and part["n_tokens"].nunique() > 1:
            r = sps.spearmanr(part["n_tokens"], part["rv"])
            out[f"spearman_tokens_{name}"] = {"rho": float(r.statistic), "p": float(r.pvalue), "n": len(part)}
    rec_ok = ok[ok["pillar"] == "recursion"]
    if len(rec_ok) > 2 and rec_ok["level"].nunique() > 1:
        r = sps.spearmanr(rec_ok["level"], rec_ok["rv"])
        out["spearman_level"] = {"rho": float(r.statistic), "p": float(r.pvalue), "n": len(rec_ok)}
    return out


# --------------------------------------------------------------------------- figures

PILLAR_COLORS = {
    "recursion": "#d62728",
    "baseline": "#7f7f7f",
    "long_baseline": "#1f77b4",
    "confound": "#2ca02c",
    "kill_switch": "#9467bd",
}
SET_COLORS = {RECURSIVE_ALL: "#d62728", BASELINES: "#7f7f7f", LONG_BASELINES: "#1f77b4"}


def _fig(w: float, h: float, n: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, n, squeeze=False)[0])


def plot_groups(seed_table: pd.DataFrame, groups: pd.DataFrame, title: str, out_dir: Path) -> Path:
    """Mean R_V per group with 95% CI, every prompt as a faint point; recursive levels in red."""
    fig, (ax,) = _fig(max(8.0, 0.42 * len(groups) + 2), 5.2)
    rng = np.random.default_rng(0)
    labels = []
    for i, r in enumerate(groups.itertuples()):
        kind = "long_baseline" if r.group.endswith("_long") and r.pillar == "baseline" else r.pillar
        color = PILLAR_COLORS.get(kind, "#555555")
        v = seed_table.loc[seed_table["group"] == r.group, "rv"].dropna().to_numpy()
        ax.scatter(i + rng.uniform(-0.18, 0.18, v.size), v, s=8, color=color, alpha=0.3, lw=0)
        if r.n:
            err = [[r.mean - r.ci_low], [r.ci_high - r.mean]] if np.isfinite(r.ci_low) else None
            ax.errorbar(i, r.mean, yerr=err, fmt="o", color=color, ms=6 if kind == "recursion" else 4.5, capsize=3)
        else:
            ax.text(
                i,
                0.02,
                "all NaN",
                rotation=90,
                ha="center",
                va="bottom",
                fontsize=7,
                transform=ax.get_xaxis_transform(),
            )
        labels.append(f"{r.group} (n={r.n}" + (f", NaN {r.n_nan})" if r.n_nan else ")"))
        if kind == "recursion":
            ax.axvspan(i - 0.5, i + 0.5, color=color, alpha=0.06, lw=0)
    ax.axhline(1.0, color="black", lw=0.8, ls=":")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7.5)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_ylabel(RV_LABEL)
    ax.grid(axis="y", alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=c, label=k.replace("_", " ")) for k, c in PILLAR_COLORS.items()]
    ax.legend(handles=handles, fontsize=7.5, frameon=False, loc="best", ncol=5)
    ax.set_title(title, fontsize=10)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "rv_by_group.png"
    fig.savefig(path, dpi=DPI)
    return path


def plot_profile(
    means: pd.DataFrame, contrasts: pd.DataFrame, early: int, seed_late: int, title: str, out_dir: Path
) -> Path:
    """Left: mean R_V by late layer per set with 95% CI bands. Right: recursive minus each set, CI bands."""
    from matplotlib.ticker import MaxNLocator

    fig, (ax, bx) = _fig(13.0, 5.0, 2)
    for name, part in means.groupby("set", sort=False):
        c = SET_COLORS.get(name, "#555555")
        ax.plot(part["layer_late"], part["mean"], marker="o", ms=3.5, color=c, label=f"{name}")
        ax.fill_between(part["layer_late"], part["ci_low"], part["ci_high"], color=c, alpha=0.18, lw=0)
    ax.set_xlabel(f"late layer (early layer {early} fixed)")
    ax.set_ylabel(RV_LABEL)
    ax.set_title("mean R_V by late layer [95% bootstrap CI over prompts]", fontsize=9.5)
    if len(contrasts):
        others = iter(["#2ca02c", "#bcbd22", "#17becf", "#8c564b", "#e377c2", "#ff7f0e"])
        for name, part in contrasts.groupby("reference", sort=False):
            main = name in SET_COLORS  # the baselines: solid with CI bands; confounds: dashed, no band
            c = SET_COLORS[name] if main else next(others, "#555555")
            style = dict(marker="o", ms=3.5, color=c, ls="-" if main else "--", label=f"recursive − {name}")
            bx.plot(part["layer_late"], part["diff"], **style)
            if main:
                bx.fill_between(part["layer_late"], part["ci_low"], part["ci_high"], color=c, alpha=0.18, lw=0)
            sig = part[part["p_holm"] < 0.05]
            bx.scatter(sig["layer_late"], sig["diff"], s=60, facecolors="none", edgecolors=c, lw=1.2)
        bx.axhline(0, color="black", lw=0.8)
        bx.set_title("difference of means (95% CI bands for the baselines); circled: Holm p < 0.05", fontsize=9.5)
        bx.set_xlabel("late layer")
        bx.set_ylabel("Δ R_V (recursive − reference)")
    for a in (ax, bx):
        a.axvline(seed_late, color="black", ls=":", lw=0.9, label=f"seed's late layer ({seed_late})")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.grid(alpha=0.3)
        a.legend(fontsize=7.5, frameon=False, loc="best")
    fig.suptitle(title, fontsize=10.5)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "rv_profile.png"
    fig.savefig(path, dpi=DPI)
    return path


# --------------------------------------------------------------------------- report


def _f(x, nd: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def _p(x) -> str:
    return "–" if x is None or not np.isfinite(x) else (f"{x:.2g}" if x < 0.001 else f"{x:.3f}")


def _ci(lo, hi) -> str:
    return f"[{_f(lo)}, {_f(hi)}]"


def _md_table(header: Sequence[str], rows: list[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _verdict(r) -> str:
    if not np.isfinite(r["diff"]) or not np.isfinite(r["p_holm"]):
        return "not testable"
    side = "lower" if r["diff"] < 0 else "higher"
    if r["p_holm"] < 0.05 and (r["ci_low"] > 0 or r["ci_high"] < 0):
        return f"separated: {side}"
    return "not separated"


def _contrast_rows(con: pd.DataFrame) -> list[list]:
    return [
        [
            r["target"],
            r["reference"],
            f"{r['n_target']} / {r['n_ref']}",
            f"{_f(r['mean_target'])} / {_f(r['mean_ref'])}",
            _f(r["diff"]),
            _ci(r["ci_low"], r["ci_high"]),
            _p(r["p_perm"]),
            _p(r["p_holm"]),
            _f(r["d"], 2),
            f"{_f(r.get('tokens_target'), 1)} / {_f(r.get('tokens_ref'), 1)}",
            f"{_f(r.get('diff_adj'))} {_ci(r.get('ci_adj_low'), r.get('ci_adj_high'))}",
            _verdict(r),
        ]
        for r in con.to_dict("records")
    ]


CONTRAST_HEADER = [
    "target",
    "reference",
    "n (t / r)",
    "mean R_V (t / r)",
    "Δ mean",
    "95% CI",
    "p perm",
    "Holm p",
    "d_s",
    "tokens (t / r)",
    "Δ at equal length [95% CI]",
    "reading",
]


def _sentences(summary: dict) -> list[str]:
    out = []
    con = pd.DataFrame(summary["contrasts"])
    head = con[con["target"] == RECURSIVE_ALL] if RECURSIVE_ALL in set(con["target"]) else con.iloc[:0]
    for r in head.to_dict("records"):
        if not np.isfinite(r["diff"]):
            out.append(f"All recursive vs {r['reference']}: not testable ({r['note']}).")
            continue
        side = "lower" if r["diff"] < 0 else "higher"
        excl = "excludes" if (r["ci_low"] > 0 or r["ci_high"] < 0) else "includes"
        adj = ""
        if r.get("diff_adj") is not None and np.isfinite(r["diff_adj"]):
            adj = f" At equal length (OLS on tokens): Δ = {_f(r['diff_adj'])} {_ci(r['ci_adj_low'], r['ci_adj_high'])}."
        out.append(
            f"All recursive prompts (L1-L5, n={r['n_target']}, {_f(r.get('tokens_target'), 1)} tokens) have a "
            f"{side} mean R_V than {r['reference']} (n={r['n_ref']}, {_f(r.get('tokens_ref'), 1)} tokens): "
            f"Δ = {_f(r['diff'])}, 95% CI {_ci(r['ci_low'], r['ci_high'])} ({excl} 0), "
            f"Holm p = {_p(r['p_holm'])}, d_s = {_f(r['d'], 2)}: {_verdict(r)}.{adj}"
        )
    if LONG_BASELINES in set(con["reference"]):
        lv = con[(con["reference"] == LONG_BASELINES) & (con["target"] != RECURSIVE_ALL)]
        parts = [f"{r['target']} {_f(r['diff'], 3)} ({_verdict(r)})" for r in lv.to_dict("records")]
        if parts:
            out.append("Each level minus the long baselines: " + "; ".join(parts) + ".")
    conf = con[(con["target"] == RECURSIVE_ALL) & ~con["reference"].isin([BASELINES, LONG_BASELINES])]
    parts = [f"{r['reference']} {_f(r['diff'], 3)} ({_verdict(r)})" for r in conf.to_dict("records")]
    if parts:
        out.append("All recursive minus each confound: " + "; ".join(parts) + ".")
    prof = pd.DataFrame(summary["profile_contrasts"])
    for ref, part in prof.groupby("reference", sort=False) if len(prof) else []:
        sig = part[(part["p_holm"] < 0.05)]
        lo, hi = int(part["layer_late"].min()), int(part["layer_late"].max())
        text = f"Profile (late layers {lo}-{hi}), recursive vs {ref}: "
        if len(sig):
            where = [
                f"recursive {word} at {', '.join(str(int(x)) for x in sub['layer_late'])}"
                for word, sub in (("lower", sig[sig["diff"] < 0]), ("higher", sig[sig["diff"] > 0]))
                if len(sub)
            ]
            text += f"Holm p < 0.05 at {len(sig)} of {len(part)} layers ({'; '.join(where)})"
        else:
            text += f"no layer of {len(part)} with Holm p < 0.05"
        if part["diff"].notna().any():
            r = part.loc[part["diff"].abs().idxmax()]
            text += (
                f"; largest |Δ| at layer {int(r['layer_late'])}: Δ = {_f(r['diff'])} "
                f"{_ci(r['ci_low'], r['ci_high'])}, d_s = {_f(r['d'], 2)}"
            )
        out.append(text + ".")
    lc = summary["length"]
    for key, label in (
        ("spearman_tokens_all", "all measured prompts"),
        ("spearman_tokens_non_recursive", "non-recursive prompts"),
    ):
        if key in lc:
            s = lc[key]
            out.append(f"R_V vs token count, {label}: Spearman ρ = {_f(s['rho'], 2)} (p = {_p(s['p'])}, n = {s['n']}).")
    if "spearman_level" in lc:
        s = lc["spearman_level"]
        out.append(
            f"Dose-response, R_V vs recursion level 1-5: Spearman ρ = {_f(s['rho'], 2)} "
            f"(p = {_p(s['p'])}, n = {s['n']})."
        )
    return out


def write_report(summary: dict, run_dir: Path) -> Path:
    """``report.md`` from the summary: warnings, plain reading, tables, figures."""
    s = summary
    lines = [
        f"# R_V by prompt group: {s['model']} ({s['format']} format)",
        "",
        f"R_V = PR(v_proj@{s['layers']['late']}) / PR(v_proj@{s['layers']['early']}) over the last {s['window']} "
        f"tokens (BOS excluded), PR formula `{s['formula']}`; the seed's layers 5 and 27 of 32 mapped by depth "
        f"on {s['n_layers']} layers. Bank `{s['bank']}` (version {s['bank_version'][:12]}), {s['n_prompts']} prompts. "
        "Each prompt is its own cluster: CIs are percentile bootstraps over prompts "
        f"({s['n_boot']} resamples); contrasts are unpaired (permutation p with {s['n_perm']} label shuffles, "
        "Holm across the seed-layer contrasts; Cohen's d_s with pooled SD, ddof=1).",
        "",
    ]
    warns = list(s["length"]["warnings"])
    nan_groups = [g for g in s["groups"] if g["n_nan"]]
    if nan_groups:
        warns.append(
            f"{sum(g['n_nan'] for g in nan_groups)} prompts have no R_V (fewer than {s['window']} tokens): "
            + ", ".join(f"{g['group']} {g['n_nan']}/{g['n_prompts']}" for g in nan_groups)
            + ". The measured prompts of those groups are their longest ones."
        )
    for w in warns:
        lines.append(f"**Warning:** {w}")
        lines.append("")
    lines += ["## What the numbers say", ""] + [f"- {x}" for x in _sentences(s)] + [""]
    lines += [
        "A contrast reads *separated* when its Holm-adjusted permutation p is below 0.05 and its 95% CI excludes 0. "
        "*Δ at equal length* is the recursive coefficient of the OLS R_V ~ 1 + recursive + tokens over both arms' "
        "measured prompts, with a bootstrap CI over prompts (no p-value; where the arms' token ranges do not "
        "overlap, as for long_nonrecursive, it extrapolates).",
        "",
        "## R_V per group (seed layers)",
        "",
        _md_table(
            ["group", "pillar", "n", "NaN", "mean R_V", "95% CI", "sd", "tokens mean [min-max]"],
            [
                [
                    g["group"],
                    g["pillar"],
                    g["n"],
                    g["n_nan"],
                    _f(g["mean"]),
                    _ci(g["ci_low"], g["ci_high"]),
                    _f(g["sd"]),
                    f"{_f(g['mean_tokens'], 1)} [{g['min_tokens']}-{g['max_tokens']}]",
                ]
                for g in s["groups"]
            ],
        ),
        "",
        "Sets: " + "; ".join(f"**{k}** = {', '.join(v)}" for k, v in s["sets"].items()) + ".",
        "",
        "Mean tokens (BOS excluded), all prompts of the set / those with an R_V: "
        + ", ".join(
            f"{k} {v:.1f} / {s['length']['mean_tokens_measured'][k]:.1f}" for k, v in s["length"]["mean_tokens"].items()
        )
        + ".",
        "",
        "## Contrasts at the seed layers (target − reference)",
        "",
        _md_table(CONTRAST_HEADER, _contrast_rows(pd.DataFrame(s["contrasts"]))),
        "",
        f"## Late-layer profile (early layer {s['layers']['early']} fixed, late layer "
        f"{s['layers']['profile'][0]}-{s['layers']['profile'][-1]})",
        "",
    ]
    means = pd.DataFrame(s["profile_means"])
    prof = pd.DataFrame(s["profile_contrasts"])
    seed_mark = {s["layers"]["late"]: " (seed)"}
    mean_rows, con_rows = [], []
    for layer, part in means.groupby("layer_late", sort=True):
        label = f"{int(layer)}{seed_mark.get(int(layer), '')}"
        mean_rows.append(
            [label] + [f"{_f(r['mean'])} {_ci(r['ci_low'], r['ci_high'])}" for r in part.to_dict("records")]
        )
        mine = prof[prof["layer_late"] == layer].to_dict("records") if len(prof) else []
        con_rows.append(
            [label] + [f"{_f(r['diff'])} {_ci(r['ci_low'], r['ci_high'])} ({_p(r['p_holm'])})" for r in mine]
        )
    set_names = list(dict.fromkeys(means["set"]))
    refs = list(dict.fromkeys(prof["reference"])) if len(prof) else []
    lines += [
        "Mean R_V [95% CI] by late layer:",
        "",
        _md_table(["late layer", *set_names], mean_rows),
        "",
        "All recursive (L1-L5) minus each reference: Δ [95% CI] (Holm p):",
        "",
        _md_table(["late layer", *refs], con_rows),
        "",
        "Holm here runs across every cell of this table (the profile's own family).",
        "",
        "## Figures",
        "",
        "![R_V by group](figures/rv_by_group.png)",
        "",
        "![late-layer profile](figures/rv_profile.png)",
        "",
        "## Reproduce",
        "",
        f"`{s['command']}` — the study took {s['wall_s']:.1f} s (forward passes {s['timings_s']['measure']:.1f} s, "
        f"statistics {s['timings_s']['statistics']:.1f} s), torch {s['environment']['torch']}, "
        f"transformers {s['environment']['transformers']}, {s['environment']['torch_threads']} torch thread(s), "
        f"{s['environment']['device']}. Per-prompt values: `rv_prompts.csv` (one row per prompt and late layer; "
        "`seed_late` marks the seed's layer).",
        "",
    ]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


# --------------------------------------------------------------------------- the study


@dataclass
class RVStudy:
    run_dir: Path
    summary: dict
    table: pd.DataFrame


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return _jsonable(x.item())
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _records(df: pd.DataFrame) -> list[dict]:
    return [_jsonable(r) for r in df.to_dict("records")]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def run_rv_study(
    model,
    prompt_format: str = "raw",
    bank: str | PromptBank = "research",
    window: int = 16,
    out: str | Path = "runs",
    *,
    groups: Sequence[str] | None = None,
    early: float | int = 5 / 32,
    late: float | int = 27 / 32,
    formula: str = "squared",
    n_boot: int = 5000,
    n_perm: int = 9999,
    seed: int = 0,
    batch_size: int | None = None,
    command: str | None = None,
) -> RVStudy:
    """Measure, compare, and write the run directory (see the module docstring). ``model`` is a
    loaded model or a spec for ``load_model``; ``groups`` restricts the bank's groups."""
    t0 = time.perf_counter()
    started = now()
    if isinstance(model, str):
        from ..models import load_model

        model = load_model(model)
    bank = bank if isinstance(bank, PromptBank) else load_bank(bank)
    prompts = bank.select(list(groups)) if groups is not None else list(bank.prompts)
    rank = {"recursion": 0, "baseline": 1, "confound": 2, "kill_switch": 3}
    measured = list(dict.fromkeys(p.group for p in prompts))
    measured.sort(key=lambda g: rank.get(bank.group_info[g].pillar, 4))  # stable: bank order within a pillar
    targets, references, sets = contrast_sets(bank, measured)
    t1 = time.perf_counter()
    table = measure(
        model, prompts, prompt_format, window, early=early, late=late, formula=formula, batch_size=batch_size
    )
    t2 = time.perf_counter()
    seed_table = table[table["seed_late"]]
    gsum = group_summary(seed_table, measured, n_boot=n_boot, seed=seed)
    con = compare_sets(seed_table, targets, references, n_boot=n_boot, n_perm=n_perm, seed=seed)
    pmeans, pcon = profile_tables(table, sets, references, n_boot, n_perm, seed)
    le, ll, profile = study_layers(model.adapter.n_layers, early, late)
    t3 = time.perf_counter()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out) / f"rv_study-{_slug(model.name)}-{prompt_format}-{stamp}"
    k = 1
    while run_dir.exists():
        run_dir = Path(out) / f"rv_study-{_slug(model.name)}-{prompt_format}-{stamp}-{k}"
        k += 1
    run_dir.mkdir(parents=True)
    env = environment()
    command = command or " ".join(sys.argv)
    summary = {
        "model": model.name,
        "model_source": model.source,
        "format": prompt_format,
        "bank": bank.name,
        "bank_version": bank.version,
        "n_prompts": len(prompts),
        "n_layers": model.adapter.n_layers,
        "site": SITE,
        "window": window,
        "formula": formula,
        "layers": {"early": le, "late": ll, "profile": profile, "early_fraction": early, "late_fraction": late},
        "n_boot": n_boot,
        "n_perm": n_perm,
        "seed": seed,
        "cluster": "prompt (each prompt is its own cluster)",
        "effect_size": "Cohen's d_s = diff / pooled SD (ddof=1), no Hedges correction",
        "sets": sets,
        "groups": _records(gsum),
        "contrasts": _records(con),
        "profile_means": _records(pmeans),
        "profile_contrasts": _records(pcon),
        "length": _jsonable(length_checks(seed_table, sets)),
        "command": command,
        "environment": env,
        "started": started,
    }
    table.drop(columns="text").to_csv(run_dir / "rv_prompts.csv", index=False)  # texts: the bank, by prompt_id
    title = f"{model.name}, {prompt_format} format, R_V = PR(v_proj@{ll}) / PR(v_proj@{le}), window {window}"
    plot_groups(seed_table, gsum, f"R_V by group [95% bootstrap CI over prompts]: {title}", run_dir / "figures")
    plot_profile(
        pmeans, pcon, le, ll, f"{model.name}, {prompt_format} format: R_V profile over late layers", run_dir / "figures"
    )
    summary["wall_s"] = time.perf_counter() - t0
    summary["finished"] = now()
    summary["timings_s"] = {"setup": t1 - t0, "measure": t2 - t1, "statistics": t3 - t2}
    write_report(summary, run_dir)
    summary["wall_s"] = time.perf_counter() - t0
    summary["timings_s"]["figures_and_files"] = summary["wall_s"] - (t3 - t0)
    write_json(run_dir / "summary.json", _jsonable(summary))
    meta = {
        k: summary[k]
        for k in ("model", "model_source", "format", "bank", "bank_version", "command", "started", "finished", "wall_s")
    }
    write_json(run_dir / "metadata.json", _jsonable({**meta, **env, "model_info": model.info()}))
    return RVStudy(run_dir, summary, table)


def headline(summary: dict) -> pd.DataFrame:
    """The seed-layer contrasts of all recursive prompts (or of each level when there is no pool)."""
    con = pd.DataFrame(summary["contrasts"])
    if RECURSIVE_ALL in set(con["target"]):
        con = con[con["target"] == RECURSIVE_ALL]
    return con.reset_index(drop=True)


__all__ = [
    "RVStudy",
    "StudyError",
    "compare_sets",
    "contrast",
    "contrast_sets",
    "describe",
    "group_summary",
    "headline",
    "measure",
    "profile_tables",
    "run_rv_study",
    "study_layers",
    "write_report",
]
