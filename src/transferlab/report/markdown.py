"""report.md: the summary as a document a person reads top to bottom.

The first section is the **warnings**: first every condition that leaves
less than half of the targets' message in place (``target_kept`` < 0.5: a
replacement, not a transfer), then every intervention that never fired
(in bold, with counts), every condition that differs from the reference in
more than its plan (sampler, flavour, per-condition overrides), and whatever
else the data show to be off. Then the condition table, target survival, the paired deltas,
the transfer-vs-control comparisons, the source-overlap diagnostic, the
target fidelity (the source's behavior beside the target's task), the audit,
R_V by prompt group, the per-seed table, the sweep table and the figures.
Tables are plain GitHub markdown written by :func:`md_table`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Unpack

import pandas as pd

from ..atomic import write_text
from ..timings import stage
from .alerts import generation_warnings
from .common import jsonable
from .deltas_md import delta_section, family_section
from .dose import dose_section
from .figures import make_figures
from .html import PageInputs, write_html
from .mdtable import DASH, fmt, fmt_p, md_table
from .mdtable import ci_text as _ci
from .mdtable import pm as _pm

__all__ = ["DASH", "fmt", "fmt_p", "md_table", "render_markdown", "write_report"]

_LOUD = ("raw_noise", "no_audit", "no_effect", "mixed_decode_paths")  # bold, after the generation warnings


def _warnings(summary: dict, config: dict | None, results: pd.DataFrame) -> list[str]:
    models = summary["models"]
    warns = summary.get("warnings", [])
    lines = []
    for w in warns:  # first: conditions that replaced the target rather than transferred into it
        if w["kind"] == "target_erased":
            model = f" (model {w['model']})" if len(models) > 1 else ""
            lines.append(f"- **WARNING: {w['message']}{model}**")
    lines += [f"- **WARNING: {w['message']}**" for w in warns if w["kind"] == "incomplete"]
    for w in warns:
        if w["kind"] == "never_fired":
            where = f" (hook point `{w['hook_point']}`" + (f", model {w['model']})" if len(models) > 1 else ")")
            lines.append(
                f"- **WARNING: {w['description']} never fired in {w['count']}/{w['of']} examples of "
                f"condition {w['condition']}**{where}"
            )
    for w in generation_warnings(config, results, summary["reference"]):
        lines.append(f"- **WARNING: {w['message']}**")
    for w in warns:
        if w["kind"] in _LOUD:
            lines.append(f"- **WARNING: {w['message']}**")
    for w in warns:
        if w["kind"] not in ("incomplete", "never_fired", "target_erased", *_LOUD):
            model = f" (model {w['model']})" if len(models) > 1 and "model" in w else ""
            lines.append(f"- {w['message']}{model}")
    return lines


def _by_model(rows: list[dict], model: str) -> list[dict]:
    return [r for r in rows if r.get("model") == model]


def _model_heading(summary: dict, model: str, level: str = "###") -> list[str]:
    return [f"{level} Model {model}", ""] if len(summary["models"]) > 1 else []


def _condition_section(summary: dict) -> list[str]:
    scores = summary["described_scores"]
    out = [
        "## Conditions",
        "",
        f"Mean ± SD (ddof={summary['stats']['ddof']}) over (pair, seed) rows, with n non-missing "
        "(and missing, if any); the primary score's 95% CI is a bootstrap of the mean: two-way over sources x "
        "targets when either repeats, over pairs (their seeds together) when neither does. "
        "`source_overlap` (share of the source's content words echoed) is the echo diagnostic.",
        "",
    ]
    primary = summary["primary_score"]
    roles = summary.get("prompt_roles", {})
    for model in summary["models"]:
        rows = _by_model(summary["conditions_table"], model)
        table = []
        for c in summary["conditions"]:
            got = {r["score"]: r for r in rows if r["condition"] == c}
            if not got:
                continue
            row = {"condition": c + (" (source prompt)" if roles.get(c) == "source" else "")}
            for s in scores:
                r = got.get(s)
                if r is None:
                    row[s] = DASH
                    continue
                nan = f", {r['n_nan']} NaN" if r["n_nan"] else ""
                row[s] = f"{_pm(r['mean'], r['sd'])} (n={r['n']}{nan})"
            p = got.get(primary)
            row["ci"] = _ci(p["ci_low"], p["ci_high"]) if p else DASH
            table.append(row)
        out += _model_heading(summary, model)
        out += [md_table(table, ["condition", *scores, "ci"], ["condition", *scores, f"{primary} 95% CI"]), ""]
    return out


def _survival_section(summary: dict) -> list[str]:
    table = summary.get("survival") or []
    if not table:
        return []
    out = [
        "## Target survival",
        "",
        "The share of the targets' message tokens (BOS and chat-template tokens excluded) whose keys and values "
        "each condition left the target's own: in every layer (`target_kept`, mean and minimum over rows) and in "
        "at least one (`target_kept_any`). Below one half the condition replaces the target rather than "
        "transferring into it.",
        "",
    ]
    for model in summary["models"]:
        rows = [
            {
                "condition": r["condition"],
                "kept": fmt(r["target_kept"]),
                "min": fmt(r["target_kept_min"]),
                "any": fmt(r["target_kept_any"]),
                "below": f"{r['below_half']}/{r['n']}",
            }
            for r in _by_model(table, model)
        ]
        out += _model_heading(summary, model)
        out += [
            md_table(
                rows,
                ["condition", "kept", "min", "any", "below"],
                ["condition", "target_kept", "min", "target_kept_any", "rows below half"],
            ),
            "",
        ]
    return out


DELTA_COLS = [
    "score",
    "condition",
    "delta",
    "ci",
    "ci_iid",
    "p_t",
    "p_wilcoxon",
    "p_perm",
    "p_perm_cluster",
    "p_holm",
    "d_z",
    "n",
    "n_nan",
]


def _delta_rows(rows: list[dict], vs: bool) -> list[dict]:
    out = []
    for r in rows:
        name = f"{r['condition']} − {r['reference']}" if vs else r["condition"]
        out.append(
            {
                "score": r["score"],
                "condition": name,
                "delta": fmt(r["mean_diff"]),
                "ci": _ci(r["ci_low"], r["ci_high"]),
                "ci_iid": _ci(r["ci_iid_low"], r["ci_iid_high"]),
                "p_t": fmt_p(r["p_t"]),
                "p_wilcoxon": fmt_p(r["p_wilcoxon"]),
                "p_perm": fmt_p(r["p_perm"]),
                "p_perm_cluster": fmt_p(r["p_perm_cluster"]),
                "p_holm": fmt_p(r["p_holm"]),
                "d_z": fmt(r["d_z"]),
                "n": r["n"],
                "n_nan": f"{r['n_nan']}" + (f" (+{r['n_unmatched']} unmatched)" if r["n_unmatched"] else ""),
            }
        )
    return out


def _delta_section(summary: dict, family: str) -> list[str]:
    rows = [r for r in summary["deltas"] if r["family"] == family]
    st = summary["stats"]
    if family == "vs_reference":
        title = f"## Paired deltas vs {summary['reference']}"
        intro = (
            f"Δ = condition − {summary['reference']}, paired on (pair_id, seed). 95% CIs: cluster bootstrap "
            f"over source prompts ({st['n_boot']} draws) and, beside it, iid over pairs. p: paired t, Wilcoxon "
            f"signed-rank, sign-flip permutation (pairs, and whole source-prompt clusters). Holm p adjusts "
            f"`{st['primary_p']}` across all {st['holm_family_size']} comparisons of this report (both tables, "
            "every model and score). d_z = mean Δ / SD(Δ), ddof=1. "
            f"Permutation p values are resolution-limited (p ≥ 1/({st['n_perm']}+1)), so Holm p cannot fall "
            f"below {st['holm_family_size']}/({st['n_perm']}+1) = {st['holm_family_size'] / (st['n_perm'] + 1):.2g} "
            "here; p_t and p_wilcoxon show finer evidence (without the clustering)."
        )
    else:
        if not rows:
            return []
        title = f"## {summary['primary']} vs each control"
        intro = (
            f"Δ = {summary['primary']} − control on the same (pair_id, seed) units; same statistics and the "
            "same Holm family as above."
        )
    out = [title, "", intro, ""]
    if not rows:
        return out + ["No comparisons.", ""]
    headers = [
        "score",
        "comparison",
        "Δ mean",
        "95% cluster CI",
        "95% iid CI",
        "p_t",
        "p_wilcoxon",
        "p_perm",
        "p_perm_cluster",
        "Holm p",
        "d_z",
        "n",
        "n_nan",
    ]
    for model in summary["models"]:
        mine = _by_model(rows, model)
        if mine:
            out += _model_heading(summary, model)
            out += [md_table(_delta_rows(mine, True), DELTA_COLS, headers, ["l", "l"] + ["r"] * 11), ""]
    return out


def _overlap_section(summary: dict) -> list[str]:
    rows = summary.get("overlap") or []
    if not rows:
        return []
    out = [
        "## Source-overlap diagnostic",
        "",
        "Each behavior score beside `source_overlap` in the same condition, and their correlation over rows "
        "(Pearson r). A behavior score that moves only with the overlap is the source's words echoed, "
        "not transferred behavior.",
        "",
    ]
    for model in summary["models"]:
        table = [
            {
                "condition": r["condition"],
                "score": r["score"],
                "mean": _pm(r["mean"], r["sd"]),
                "overlap": _pm(r["overlap_mean"], r["overlap_sd"]),
                "r": fmt(r["r_score_overlap"]),
                "n": r["n_r"],
            }
            for r in _by_model(rows, model)
        ]
        out += _model_heading(summary, model)
        out += [
            md_table(
                table,
                ["condition", "score", "mean", "overlap", "r", "n"],
                ["condition", "score", "score mean ± SD", "source_overlap mean ± SD", "r(score, overlap)", "n"],
                ["l", "l", "r", "r", "r", "r"],
            ),
            "",
        ]
    return out


FIDELITY_MEANING = {
    "target_overlap": "share of the target prompt's content words the continuation uses",
    "answer": "share of continuations containing the target's known answer (targets with one)",
    "target_answer_logprob": "mean log-prob of the reference's own first tokens under the condition (nats)",
}


def _fidelity_section(summary: dict) -> list[str]:
    rows = summary.get("fidelity") or []
    fidelity = summary.get("fidelity_scores") or []
    if not rows or not fidelity:
        return []
    score, ref = summary["primary_score"], summary["reference"]
    meanings = "; ".join(f"`{f}`: {FIDELITY_MEANING.get(f, f)}" for f in fidelity)
    out = [
        "## Target fidelity",
        "",
        f"The source's behavior (`{score}`, the primary score) beside the target's task, per condition: mean "
        f"[95% cluster CI] (n), and Δ = condition − {ref} in each fidelity score. A transfer worth the name "
        f"raises `{score}` while its fidelity stays near {ref}'s; a condition that scores like the source and "
        f"keeps nothing of the target is the source answering, not a behavior moved into the target's task. "
        f"{meanings}.",
        "",
    ]
    roles = summary.get("prompt_roles", {})
    for model in summary["models"]:
        table = []
        for r in _by_model(rows, model):
            row = {
                "condition": r["condition"] + (" (source prompt)" if roles.get(r["condition"]) == "source" else ""),
                "primary": _mean_ci(r, "primary"),
            }
            for f in fidelity:
                row[f] = _mean_ci(r, f)
                row[f"{f}_d"] = fmt(r[f"{f}_vs_reference"]) if r["condition"] != ref else DASH
            table.append(row)
        cols = ["condition", "primary"] + [c for f in fidelity for c in (f, f"{f}_d")]
        heads = ["condition", score] + [h for f in fidelity for h in (f, f"Δ {f}")]
        out += _model_heading(summary, model)
        out += [md_table(table, cols, heads), ""]
    return out


def _mean_ci(row: dict, key: str) -> str:
    if row[f"{key}_mean"] is None:
        return DASH
    return f"{fmt(row[f'{key}_mean'])} {_ci(row[f'{key}_ci_low'], row[f'{key}_ci_high'])} (n={row[f'{key}_n']})"


def _audit_section(summary: dict) -> list[str]:
    rows = summary.get("audit") or []
    out = [
        "## Intervention audit",
        "",
        "Per condition and intervention: in how many examples it never wrote anything (never-fired first), "
        "mean forward calls it acted in (prefill / decode), mean positions written, mean norm of the change.",
        "",
    ]
    if not rows:
        return out + ["No intervention was audited (no condition has a plan, or the results carry no audit).", ""]
    multi = len(summary["models"]) > 1
    table = [
        {
            "model": r["model"],
            "condition": r["condition"],
            "intervention": f"`{r['description']}`",
            "hook": f"`{r['hook_point']}`",
            "phase": r["phase"],
            "never": (
                f"**{r['examples_never_fired']}/{r['examples']}**"
                if r["examples_never_fired"]
                else f"0/{r['examples']}"
            ),
            "fp": fmt(r["mean_fired_prompt"]),
            "fd": fmt(r["mean_fired_decode"]),
            "pos": fmt(r["mean_positions"]),
            "norm": fmt(r["mean_change_norm"]),
        }
        for r in rows
    ]
    cols = (["model"] if multi else []) + [
        "condition",
        "intervention",
        "hook",
        "phase",
        "never",
        "fp",
        "fd",
        "pos",
        "norm",
    ]
    heads = (["model"] if multi else []) + [
        "condition",
        "intervention",
        "hook point",
        "phase",
        "never fired",
        "calls (prefill)",
        "calls (decode)",
        "positions",
        "change norm",
    ]
    return out + [md_table(table, cols, heads, ["l"] * (len(cols) - 5) + ["r"] * 5), ""]


def _rv_section(summary: dict) -> list[str]:
    rows = summary.get("rv_groups") or []
    if not rows:
        return []
    out = [
        "## R_V by prompt group",
        "",
        "R_V = PR(late) / PR(early) of `v_proj` over the prompt's last tokens, one value per distinct prompt "
        "(a prompt reused by several pairs counts once). NaN prompts (e.g. shorter than the window) are counted, "
        "not dropped silently.",
        "",
    ]
    multi = len(summary["models"]) > 1
    table = [
        {
            "model": r["model"],
            "role": r["role"],
            "group": r["group"],
            "prompts": r["n_prompts"],
            "n": r["n"],
            "n_nan": f"**{r['n_nan']}**" if r["n_nan"] else "0",
            "mean": _pm(r["mean"], r["sd"]),
            "median": fmt(r["median"]),
        }
        for r in rows
    ]
    cols = (["model"] if multi else []) + ["role", "group", "prompts", "n", "n_nan", "mean", "median"]
    heads = (["model"] if multi else []) + [
        "role",
        "group",
        "prompts",
        "n (R_V defined)",
        "n NaN",
        "mean ± SD (ddof=1)",
        "median",
    ]
    return out + [md_table(table, cols, heads, ["l"] * (len(cols) - 5) + ["r"] * 5), ""]


def _seed_section(summary: dict) -> list[str]:
    seeds = summary["seeds"]
    out = ["## Reproducibility across seeds", ""]
    if len(seeds) < 2:
        one = seeds[0] if seeds else DASH
        return out + [f"One sampling seed ({one}): reproducibility across seeds not measured.", ""]
    out += ["Mean of each score per sampling seed, and the SD (ddof=1) of those per-seed means.", ""]
    spread = {(r["model"], r["condition"], r["score"]): r for r in summary["seed_spread"]}
    for model in summary["models"]:
        out += _model_heading(summary, model)
        for score in summary["described_scores"]:
            table = []
            for c in summary["conditions"]:
                per = {
                    r["seed"]: r
                    for r in summary["seeds_table"]
                    if r["model"] == model and r["condition"] == c and r["score"] == score
                }
                if not per:
                    continue
                row = {"condition": c, **{f"s{s}": fmt(per[s]["mean"]) if s in per else DASH for s in seeds}}
                row["sd"] = fmt(spread.get((model, c, score), {}).get("sd_across_seeds"))
                table.append(row)
            out += [
                f"**{score}**",
                "",
                md_table(
                    table,
                    ["condition", *[f"s{s}" for s in seeds], "sd"],
                    ["condition", *[f"seed {s}" for s in seeds], "SD across seeds"],
                ),
                "",
            ]
    return out


def _sweep_section(summary: dict) -> list[str]:
    sweep = summary.get("sweep")
    if not sweep:
        return []
    out = [f"## Layer sweep ({sweep.get('kind', 'sweep')})", ""]
    path = sweep.get("path")
    if path:
        out += ["Path, as the sweep recorded it:", ""]
        if all(isinstance(p, dict) for p in path):
            cols = list(dict.fromkeys(k for p in path for k in p))
            out += [
                md_table(
                    [
                        {k: fmt(v) if not isinstance(v, (list, dict)) else json.dumps(v) for k, v in p.items()}
                        for p in path
                    ],
                    cols,
                ),
                "",
            ]
        else:
            out += [f"{i + 1}. `{json.dumps(p) if not isinstance(p, str) else p}`" for i, p in enumerate(path)] + [""]
    extra = {k: v for k, v in sweep.items() if k not in ("kind", "path", "table")}
    if extra:
        out += [f"- {k}: `{json.dumps(v)}`" for k, v in extra.items()] + [""]
    multi = len(summary["models"]) > 1
    table = [
        {
            "model": r["model"],
            "condition": r["condition"],
            "plan": f"`{r['plan']}`" if r.get("plan") else DASH,
            "score": r["score"],
            "delta": fmt(r["mean_diff"]),
            "ci": _ci(r["ci_low"], r["ci_high"]),
            "d_z": fmt(r["d_z"]),
            "p": fmt_p(r["p_boot"]),
            "n": r["n"],
        }
        for r in sweep.get("table", [])
    ]
    cols = (["model"] if multi else []) + ["condition", "plan", "score", "delta", "ci", "d_z", "p", "n"]
    heads = (["model"] if multi else []) + [
        "condition",
        "plan",
        "score",
        f"Δ vs {summary['reference']}",
        "95% CI",
        "d_z",
        "p (exploratory, unadjusted)",
        "n",
    ]
    return out + [md_table(table, cols, heads, ["l"] * (len(cols) - 5) + ["r"] * 5), ""]


def _figures_section(figures: dict[str, Path], run_dir: Path) -> list[str]:
    if not figures:
        return []
    captions = {
        "condition_means": "Mean of the primary score per condition, 95% bootstrap CI (the deltas' clustering)",
        "pair_deltas": "Per-unit deltas vs the reference, by condition",
        "fidelity": "Source behavior (primary score) vs target fidelity, per condition",
        "condition_score_heatmap": "Mean delta per condition and score (colour: d_z)",
        "rv_groups": "R_V by prompt group",
        "seeds": "Per-seed condition means",
    }
    out = ["## Figures", ""]
    for name, path in figures.items():
        rel = Path(path).relative_to(run_dir).as_posix()
        out += [f"- [{captions.get(name, name)}]({rel})", "", f"  ![{captions.get(name, name)}]({rel})", ""]
    return out


def pairing_text(p: dict) -> str:
    """One line on a length-matched draw (``metadata.json``'s ``pairing``): the tolerance and what qualified."""
    tokenizers = ", ".join(p.get("measured_with") or []) or "the model's"
    return (
        f"within ±{p['length_tolerance']} tokens ({tokenizers} tokenizer, {p.get('format', 'raw')} format): "
        f"{p['qualifying_combinations']} of {p['sources']} x {p['targets']} (source, target) combinations "
        f"qualify, at most {p['max_pairs_without_reuse']} pairs without reusing a prompt; {p['pairs']} pairs drawn"
    )


def render_markdown(
    summary: dict,
    results: pd.DataFrame,
    config: dict | None = None,
    metadata: dict | None = None,
    figures: dict[str, Path] | None = None,
    run_dir: Path | None = None,
) -> str:
    """The text of report.md (see the module docstring for its sections)."""
    metadata = metadata or {}
    config = config or {}
    name = metadata.get("name") or config.get("name") or (run_dir.name if run_dir else "run")
    models = ", ".join(summary["models"])
    lines = [f"# transferlab report: {name} ({models})", ""]
    lines += ["## Warnings", ""]
    warn = _warnings(summary, config, results)
    lines += warn or [
        "No warnings: every audited intervention fired in every example, no condition differs from "
        "the reference in its sampler or flavour, no score is missing."
    ]
    lines += [""]
    info = {
        "models": models,
        "conditions": ", ".join(summary["conditions"]),
        "reference": summary["reference"],
        "pairs": summary["n_pairs"],
        "source prompts (clusters)": summary["n_source_prompts"],
        "target prompts": summary["n_target_prompts"],
        "seeds": ", ".join(map(str, summary["seeds"])),
        "rows": summary["n_rows"],
        "primary score": summary["primary_score"],
    }
    if metadata.get("pairing"):
        info["length-matched pairs"] = pairing_text(metadata["pairing"])
    for k in ("created", "git", "commit", "device", "dtype", "flavour", "duration_s", "transferlab"):
        if k in metadata:
            info[k] = metadata[k]
    lines += [
        "## Run",
        "",
        md_table([{"k": k, "v": fmt(v)} for k, v in info.items()], ["k", "v"], ["run", "value"], ["l", "l"]),
        "",
    ]
    plans = summary.get("plans") or []
    if plans:
        multi = len(summary["models"]) > 1
        rows = [
            {
                "model": p["model"],
                "condition": p["condition"],
                "plan": f"`{p['plan']}`" if p["plan"] not in ("", "(none)") else "(none)",
                "prompt": summary.get("prompt_roles", {}).get(p["condition"], DASH),
            }
            for p in plans
        ]
        cols = (["model"] if multi else []) + ["condition", "plan", "prompt"]
        lines += [
            md_table(
                rows,
                cols,
                (["model"] if multi else []) + ["condition", "plan", "prompt generated from"],
                ["l"] * len(cols),
            ),
            "",
        ]
    lines += _condition_section(summary)
    lines += _survival_section(summary)
    lines += family_section(summary)
    lines += delta_section(summary, "vs_reference")
    lines += delta_section(summary, "vs_control")
    lines += delta_section(summary, "claim")
    lines += _overlap_section(summary)
    lines += _fidelity_section(summary)
    lines += _audit_section(summary)
    lines += _rv_section(summary)
    lines += _seed_section(summary)
    lines += _sweep_section(summary)
    lines += dose_section(summary)
    if figures and run_dir is not None:
        lines += _figures_section(figures, run_dir)
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    run_dir: Path,
    results: pd.DataFrame,
    summary: dict,
    config: dict | None = None,
    metadata: dict | None = None,
    **page: Unpack[PageInputs],
) -> Path:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` into ``run_dir``; return report.md's path.

    ``page`` (``prompts``, ``tokens``, ``notes``: :class:`~transferlab.report.html.PageInputs`) goes to
    report.html (:func:`~transferlab.report.html.write_html`)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = jsonable(summary)
    with stage("figures"):
        figures = make_figures(results, summary, run_dir / "figures")
    with stage("report"):
        path = write_text(run_dir / "report.md", render_markdown(summary, results, config, metadata, figures, run_dir))
    with stage("report_html"):
        write_html(run_dir, results, summary, config, metadata, **page)
    return path
