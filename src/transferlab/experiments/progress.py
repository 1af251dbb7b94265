"""How far a run got: rows done against rows expected, conditions missing, whether it finished.

A report made from an unfinished run (killed, stopped, still running) must
say so: its tables cover only the units that happen to be stored. The runner
records, per model, the conditions and unit count it planned
(``plan:<model>`` in the store) and ``finished`` when the last row is in;
:func:`run_progress` reads them back. A model the run never reached counts
with what its config implies (when that is known without loading it).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .config import validate_config
from .resume import read_run_config
from .store import RunStore


def expected_plan(config, model: str) -> dict | None:
    """Conditions and units a model of ``config`` will run, from the config alone (None if not known)."""
    from .checks import model_depth
    from .units import expand_conditions

    depth = 0
    if any(s.kind == "kv_single_layer" for s in config.sweeps):
        depth = model_depth(model)
        if depth is None:
            return None
    names = [c.name for c in expand_conditions(config, depth)]
    return {"conditions": names, "units": len(names) * config.prompts.n * len(config.seeds)}


def run_progress(run_dir: str | Path) -> dict:
    """``finished``, ``rows``, ``expected`` (None if unknown), ``missing`` (model -> conditions with
    fewer rows than planned, with counts), ``not_started`` (models without a row), ``search`` (whether
    a minimal-layers search adds rows not counted in ``expected``)."""
    run_dir = Path(run_dir)
    config = validate_config(read_run_config(run_dir), str(run_dir / "config.json"))
    store = RunStore(run_dir / "store.sqlite", create=False)
    try:
        finished = store.get("finished")
        units = store.done_units()
        plans = {m.spec: store.get(f"plan:{m.spec}") for m in config.model_specs()}
    finally:
        store.close()
    if not finished:  # runs made before the store recorded it
        try:
            finished = json.loads((run_dir / "metadata.json").read_text()).get("finished")
        except (OSError, ValueError, AttributeError):
            finished = None
    per = Counter()
    for key in units:
        model, _seed, _pair, condition = key.rsplit("|", 3)
        per[(model, condition)] += 1
    expected: int | None = 0
    missing: dict[str, list[str]] = {}
    not_started = []
    per_condition = config.prompts.n * len(config.seeds)
    for spec in config.model_specs():
        plan = plans[spec.spec] or expected_plan(config, spec.spec)
        if not any(m == spec.spec for m, _ in per):
            not_started.append(spec.spec)
        if plan is None:
            expected = None
            continue
        if expected is not None:
            expected += plan["units"]
        gaps = [
            f"{c} ({per[(spec.spec, c)]}/{per_condition})"
            for c in plan["conditions"]
            if per[(spec.spec, c)] < per_condition
        ]
        if gaps:
            missing[spec.spec] = gaps
    return {
        "finished": bool(finished),
        "rows": len(units),
        "expected": expected,
        "missing": missing,
        "not_started": not_started,
        "search": any(s.kind == "minimal_layers" for s in config.sweeps),
    }


def progress_text(p: dict) -> str:
    """One sentence: ``120 of 320 rows; conditions missing rows: ...``."""
    of = (
        f"{p['rows']} of {p['expected']} rows"
        if p["expected"] is not None
        else f"{p['rows']} rows (of an unknown total)"
    )
    if p["search"]:
        of += " (plus the minimal-layers search's)"
    parts = [of]
    multi = len(p["missing"]) > 1
    for model, gaps in p["missing"].items():
        where = f" of {model}" if multi else ""
        parts.append(f"conditions short of rows{where}: {', '.join(gaps)}")
    if p["not_started"] and p["rows"]:
        parts.append(f"models not started: {', '.join(p['not_started'])}")
    return "; ".join(parts)
