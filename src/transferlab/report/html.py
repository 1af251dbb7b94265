"""report.html: one self-contained file to browse a run's numbers and read what the model generated.

:func:`html_data` gathers what the page shows into one JSON-serialisable dict
(the summary's numbers, every row's continuation and scores, the prompts with
their content words and markers, the token texts each model was fed, the run's
config, command, versions and fingerprint); :func:`render_html` puts it into
the Jinja2 template with the page's own script and styles inlined, so the file
opens offline from disk, with no server and no network fetch.

The views: **Verdict** (the primary score's change against the reference and
each control as a forest plot with CIs, a one-line reading, the warnings),
**Examples** (one row per pair: source | target | each condition's
continuation with its scores; markers, source- and target-overlap words
highlighted; sort, filter, search; paginated so thousands of rows stay
quick), **Pair** (a pair's prompts as tokens with the positions each
intervention wrote, its audit rows, where each continuation first departs from
the reference's), **Contrasts** (per-pair strip plots, effects per source
prompt and per target group), **Overview** (condition x score heatmap whose
cells filter the examples, R_V by group) and **Run**.

Why Jinja2 and hand-written vanilla JS/CSS: Jinja2 (a dependency of torch, so
always installed; declared on purpose) escapes the page's text by default and
keeps the HTML out of Python strings; the page's script is small (tables,
SVG plots, filters) and ships in the package (``report/assets``), so the file
needs no CDN, no build step and no third-party licence to carry.

Columns the results may or may not have (``target_kept``, ``target_overlap``,
``answer``, ...; ``decode_path`` of newer runs) are shown when present; a run
made before the prompts' texts or tokens were recorded renders without them
and says so. The embedded data carry :data:`HTML_FORMAT`; the page refuses,
naming both versions, data of a format it does not know.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import TypedDict, Unpack

import pandas as pd

from ..atomic import write_text
from .alerts import generation_warnings
from .audit import parse_audit
from .common import jsonable

#: Version of the data the page's script reads (bump when its layout changes).
HTML_FORMAT = 1
#: Result columns shown as scores when present besides the run's own scorers (survival, fidelity).
EXTRA_SCORES = ("target_kept", "target_kept_any", "target_overlap", "answer", "target_answer_logprob")
#: Warning kinds shown loud (bold, red): what makes the numbers below misleading.
LOUD = (
    "incomplete",
    "never_fired",
    "target_erased",
    "mixed_decode_paths",
    "raw_noise",
    "no_audit",
    "no_effect",
    "generation_differs",
    "generation_overrides",
    "seed_flavour",
)
ROW_COLUMNS = (
    "model",
    "seed",
    "pair_id",
    "condition",
    "source_id",
    "target_id",
    "source_group",
    "target_group",
    "prompt_role",
    "text",
    "n_prompt_tokens",
    "n_new_tokens",
    "finish_reason",
    "decode_path",
    "n_never_fired",
)
ERASED_BELOW = 0.5


def row_scores(results: pd.DataFrame, summary: dict) -> list[str]:
    """The score columns each row shows: the summary's described scores, then the survival/fidelity columns
    present, then any other numeric score a newer run carries (never the bookkeeping columns)."""
    out = [s for s in summary.get("described_scores", summary.get("scores", [])) if s in results.columns]
    out += [s for s in EXTRA_SCORES if s in results.columns and s not in out]
    return out


def _content_words(text: str) -> list[str]:
    from ..metrics.text import content_words

    return sorted(content_words(text or ""))


def _markers(p: dict) -> list[str]:
    if p.get("markers"):
        return list(p["markers"])
    from ..metrics.seed_v1 import SEED_MARKERS

    return list(SEED_MARKERS)


def _erased_warnings(results: pd.DataFrame, summary: dict) -> list[dict]:
    """Conditions whose mean ``target_kept`` is below :data:`ERASED_BELOW`: the target was mostly replaced, so
    its rows measure a replacement, not a transfer (skipped when the summary already warns about it)."""
    if "target_kept" not in results.columns or "survival" in summary:  # a summary with the section warns itself
        return []
    out = []
    for (model, cond), g in results.groupby(["model", "condition"], sort=False):
        kept = pd.to_numeric(g["target_kept"], errors="coerce").dropna()
        if len(kept) and kept.mean() < ERASED_BELOW:
            out.append(
                {
                    "kind": "target_erased",
                    "model": model,
                    "condition": cond,
                    "message": f"condition {cond} keeps {kept.mean():.0%} of the target's tokens on average "
                    f"(target_kept < {ERASED_BELOW}): the target was erased, so its rows measure a replacement, "
                    "not a transfer",
                }
            )
    return out


def collect_warnings(results: pd.DataFrame, summary: dict, config: dict | None) -> list[dict]:
    """Every warning the page shows: the summary's, the generation settings' and target erasure, loud first."""
    warns = list(summary.get("warnings", []))
    warns += generation_warnings(config, results, summary["reference"])
    warns += _erased_warnings(results, summary)
    out = [{"kind": w.get("kind", ""), "message": w.get("message", ""), "loud": w.get("kind") in LOUD} for w in warns]
    return sorted(out, key=lambda w: (not w["loud"], LOUD.index(w["kind"]) if w["loud"] else 0))


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if x == 0:
        return "0"
    return f"{x:+.3g}" if abs(x) >= 1e-3 else f"{x:+.2e}"


def _p(p) -> str:
    return "–" if p is None else (f"{p:.2e}" if p < 1e-3 else f"{p:.3f}")


def _direction(r: dict) -> int:
    """+1 / -1 where a deltas row supports a change (0 where it does not): a confirmatory row by its verdict
    ("different", Holm within the family), any other row by its 95% CI excluding zero (unadjusted)."""
    mean = r.get("mean_diff")
    if mean is None:
        return 0
    if r.get("role") == "confirmatory":
        return (1 if mean > 0 else -1) if r.get("verdict") == "different" else 0
    lo, hi = r.get("ci_low"), r.get("ci_high")
    if lo is not None and hi is not None and (lo > 0 or hi < 0):
        return 1 if mean > 0 else -1
    return 0


def _evidence(r: dict) -> str:
    text = f"Δ {_fmt(r['mean_diff'])}, 95% CI [{_fmt(r.get('ci_low'))}, {_fmt(r.get('ci_high'))}]"
    if r.get("role") in ("confirmatory", "equivalence"):
        return text + f", confirmatory: Holm p {_p(r.get('p_holm'))}, n {r['n']}"
    return text + f", exploratory: unadjusted p {_p(r.get('p_boot', r.get('p_perm_cluster')))}, n {r['n']}"


def reading(summary: dict) -> list[str]:
    """What the primary score's paired deltas support, one line per model (and one for its equivalence claims).

    "raises"/"lowers" only where the row supports it (:func:`_direction`: a confirmatory row's verdict, with Holm
    within the config's confirmatory family; any other row's 95% CI excluding zero, labelled exploratory), else
    "no change ... tell from zero"; then the controls the primary condition exceeds on the same criterion; then
    each equivalence claim's TOST verdict."""
    primary, ref, score = summary.get("primary"), summary["reference"], summary["primary_score"]
    family = (summary.get("stats") or {}).get("family") or {}
    margins = {c.get("contrast"): c.get("margin") for c in family.get("claims") or []}
    out = []
    if primary is None:
        return [f"No primary condition: the deltas below compare each condition with {ref}."]
    for model in summary["models"]:
        rows = [r for r in summary.get("deltas", []) if r["model"] == model and r["score"] == score]
        main = next((r for r in rows if r["family"] == "vs_reference" and r["condition"] == primary), None)
        if main is None or main["mean_diff"] is None:
            out.append(f"{model}: no paired delta of {score} for {primary} vs {ref}.")
            continue
        d = _direction(main)
        if d:
            head = f"{model}: {primary} {'raises' if d > 0 else 'lowers'} {score} against {ref}"
        else:
            head = f"{model}: {primary} changes {score} against {ref} by nothing this run can tell from zero"
        line = f"{head} ({_evidence(main)})"
        ctrl = [r for r in rows if r["family"] == "vs_control"]
        beats = [r["reference"] for r in ctrl if _direction(r) > 0]
        not_beats = [r["reference"] for r in ctrl if r["reference"] not in beats]
        if beats:
            line += f"; above {', '.join(beats)}"
        if not_beats:
            line += f"; not above {', '.join(not_beats)}"
        out.append(line + ".")
        eq = [r for r in rows if r.get("role") == "equivalence"]
        if eq:
            parts = []
            for r in eq:
                name = f"{r['condition']} − {r['reference']}"
                margin = margins.get(f"{r['condition']} - {r['reference']}")
                verdict = r.get("verdict") or "no verdict"
                within = f" within ±{margin:g}" if verdict == "equivalent" and margin is not None else ""
                parts.append(f"{name} {verdict}{within} (TOST Holm p {_p(r.get('p_holm'))})")
            out.append(f"{model}: equivalence claims: " + "; ".join(parts) + ".")
    return out


def family_rows(summary: dict) -> list[dict]:
    """The confirmatory family's rows (claimed differences and equivalences), as the page's table shows them."""
    family = (summary.get("stats") or {}).get("family") or {}
    margins = {c.get("contrast"): c.get("margin") for c in family.get("claims") or []}
    out = []
    for r in summary.get("deltas", []):
        if r.get("role") not in ("confirmatory", "equivalence"):
            continue
        level = r.get("ci_family_level")
        out.append(
            {
                "model": r["model"],
                "contrast": f"{r['condition']} − {r['reference']}",
                "score": r["score"],
                "claim": r["role"],
                "margin": margins.get(f"{r['condition']} - {r['reference']}"),
                "Δ": r.get("mean_diff"),
                "family CI": f"[{_fmt(r.get('ci_family_low'))}, {_fmt(r.get('ci_family_high'))}]"
                + (f" at {level:.4g}" if level is not None else ""),
                "Holm p": r.get("p_holm"),
                "verdict": r.get("verdict") or "–",
                "n": r.get("n"),
            }
        )
    return out


def _where(description: str, kind: str, flavour: str | None) -> dict:
    """Where in the prompt an intervention's written positions lie, for the page to place the audit's count:
    ``{"align": right|left|range|none, "a", "b", "skip_first", "prefix"}`` (``prefix``: a corrected KV splice
    writes the cache of every prompt token but the last)."""
    from ..interventions.plan import parse_intervention

    try:
        inter = parse_intervention(description)
    except Exception:
        return {"align": "right", "approx": True}
    if kind == "kv_splice" or getattr(inter, "kind", "") == "kv_splice":
        if flavour == "seed":
            return {"align": "right", "prefix": False}
        align = inter.align
        if align == "prepend":
            return {"align": "none"}
        if align == "range":
            return {"align": "range", "a": inter.positions[0], "b": inter.positions[1], "prefix": True}
        return {"align": align, "prefix": True, "skip_first": inter.first == "keep"}
    positions = getattr(inter, "positions", None)
    if positions is not None:
        return {"align": "range", "a": positions[0], "b": positions[1]}
    if getattr(inter, "fraction", None) is not None:
        return {"align": "left", "skip_first": True}
    return {"align": "right"}


def _interventions(results: pd.DataFrame, flavour: str | None) -> tuple[dict, list]:
    """Per ``model|condition`` the interventions its audit names (description, hook point, phase, kind, where),
    and per row its audit as ``[index, fired_prompt, fired_decode, positions, change_norm, never_fired]``."""
    table: dict[str, list] = {}
    per_row = []
    if "audit" not in results.columns:
        return table, [[] for _ in range(len(results))]
    for model, cond, audit in zip(results["model"], results["condition"], results["audit"]):
        key = f"{model}|{cond}"
        known = table.setdefault(key, [])
        mine = []
        for a in parse_audit(audit):
            desc = str(a.get("description", ""))
            idx = next((i for i, k in enumerate(known) if k[0] == desc and k[1] == a.get("hook_point")), None)
            if idx is None:
                known.append(
                    [desc, a.get("hook_point"), a.get("phase"), a.get("kind"), _where(desc, a.get("kind"), flavour)]
                )
                idx = len(known) - 1
            mine.append(
                [
                    idx,
                    a.get("fired_prompt"),
                    a.get("fired_decode"),
                    a.get("positions"),
                    a.get("change_norm"),
                    bool(a.get("never_fired")),
                ]
            )
        per_row.append(mine)
    return table, per_row


def _rows(results: pd.DataFrame, scores: list[str], audits: list) -> dict:
    cols = [c for c in ROW_COLUMNS if c in results.columns]
    frame = results[cols + scores].copy()
    data = []
    for values, audit in zip(frame.itertuples(index=False, name=None), audits):
        data.append([*values, audit])
    return {"cols": [*cols, *scores, "audit"], "data": data}


def _run_info(config: dict | None, metadata: dict | None, summary: dict) -> dict:
    metadata = dict(metadata or {})
    versions = {
        k: metadata.get(k)
        for k in ("transferlab", "git_commit", "python", "torch", "transformers", "device", "torch_threads", "platform")
        if k in metadata
    }
    return {
        "name": metadata.get("name") or (config or {}).get("name") or "run",
        "command": metadata.get("command"),
        "resume_commands": metadata.get("resume_commands"),
        "started": metadata.get("started"),
        "finished": metadata.get("finished"),
        "versions": versions,
        "engine_settings": metadata.get("engine_settings"),
        "executor": metadata.get("executor"),
        "fingerprint": metadata.get("fingerprint"),
        "bank": metadata.get("bank"),
        "models": metadata.get("models"),
        "config": config or {},
        "progress": summary.get("progress"),
    }


class PageInputs(TypedDict, total=False):
    """What report.html can show beyond the results and summary; :func:`html_data` says what each means.
    :func:`write_html` and :func:`~transferlab.report.markdown.write_report` pass them on as keywords."""

    prompts: dict | None
    tokens: dict | None
    notes: list[str] | None


def html_data(
    results: pd.DataFrame,
    summary: dict,
    config: dict | None = None,
    metadata: dict | None = None,
    *,
    prompts: dict | None = None,
    tokens: dict | None = None,
    notes: list[str] | None = None,
) -> dict:
    """Everything report.html shows, as one JSON-serialisable dict (see the module docstring).

    ``prompts``: ``{id: {text, group, markers}}`` (the run's record, :mod:`transferlab.experiments.exports`);
    without them the prompts' texts come from ``source_text``/``target_text`` columns if the table has them.
    ``tokens``: ``{model: {prompt id: token texts as fed}}``. ``notes``: what the page should say is missing."""
    summary = jsonable(summary)
    config = config or {}
    notes = list(notes or [])
    prompts = {k: dict(v) for k, v in (prompts or {}).items()}
    for id_col, text_col, group_col in (
        ("source_id", "source_text", "source_group"),
        ("target_id", "target_text", "target_group"),
    ):
        if text_col in results.columns:
            for pid, text, group in zip(results[id_col], results[text_col], results.get(group_col, results[id_col])):
                if pid not in prompts and isinstance(text, str):
                    prompts[pid] = {"text": text, "group": group, "markers": None}
    source_ids = set(results["source_id"]) if "source_id" in results.columns else set()
    for pid, p in prompts.items():
        p["cw"] = _content_words(p.get("text", ""))
        if pid in source_ids:
            p["markers"] = _markers(p)
    if not prompts:
        notes.append("No prompt texts: the examples show each prompt's id instead of its text.")
    if not tokens:
        notes.append(
            "This run recorded no prompt tokens (runs record them since report.html exists): the pair view shows "
            "each prompt's text without the positions its interventions wrote."
        )
    flavour = (config.get("generation") or {}).get("flavour") if isinstance(config, dict) else None
    scores = row_scores(results, summary)
    table, audits = _interventions(results, flavour)
    data = {
        "format": HTML_FORMAT,
        "name": _run_info(config, metadata, summary)["name"],
        "reference": summary["reference"],
        "primary": summary.get("primary"),
        "controls": summary.get("controls", []),
        "conditions": summary["conditions"],
        "models": summary["models"],
        "seeds": summary["seeds"],
        "primary_score": summary["primary_score"],
        "scores": scores,
        "overlap": "source_overlap" if "source_overlap" in results.columns else None,
        "prompt_roles": summary.get("prompt_roles", {}),
        "plans": summary.get("plans", []),
        "deltas": summary.get("deltas", []),
        "conditions_table": summary.get("conditions_table", []),
        "audit": summary.get("audit", []),
        "survival": summary.get("survival") or [],
        "fidelity": summary.get("fidelity") or [],
        "rv_groups": [{k: v for k, v in r.items() if k != "values"} for r in summary.get("rv_groups") or []],
        "confirmatory": family_rows(summary),
        "reading": reading(summary),
        "warnings": collect_warnings(results, summary, config),
        "notes": notes,
        "counts": {k: summary.get(k) for k in ("n_rows", "n_pairs", "n_source_prompts", "n_target_prompts")},
        "stats": summary.get("stats", {}),
        "interventions": table,
        "prompts": prompts,
        "tokens": tokens or {},
        "rows": _rows(results, scores, audits),
        "run": _run_info(config, metadata, summary),
    }
    return jsonable(data)


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def _script_json(data: dict) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<`` (so no ``</script>`` or ``<!--``) and no
    line separators a parser could trip on; JSON.parse reads the escapes back as the same characters."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render_html(data: dict) -> str:
    """The page: the Jinja2 template with the script, the styles and ``data`` inlined."""
    from jinja2 import Environment, select_autoescape

    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    template = env.from_string(_asset("report.html.j2"))
    from markupsafe import Markup

    return template.render(
        title=f"transferlab report: {data['name']}",
        data=data,
        data_json=Markup(_script_json(data)),
        script=Markup(_asset("report.js").replace("</script", "<\\/script")),
        style=Markup(_asset("report.css")),
    )


def write_html(
    run_dir: Path,
    results: pd.DataFrame,
    summary: dict,
    config: dict | None = None,
    metadata: dict | None = None,
    **page: Unpack[PageInputs],
) -> Path:
    """Write ``report.html`` into ``run_dir``; return its path. ``page``: :class:`PageInputs`."""
    data = html_data(results, summary, config, metadata, **page)
    return write_text(Path(run_dir) / "report.html", render_html(data))
