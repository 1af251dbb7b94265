"""What every section of a report's summary shares: column names, the error, orderings, JSON."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

OVERLAP = "source_overlap"
#: Target-fidelity scores: whether the target's task survives (not the source's behavior arriving). They are
#: never the primary score; the report shows them beside it (:mod:`.fidelity`).
FIDELITY = ("target_overlap", "answer", "target_answer_logprob")
PAIR_UNIT = ["pair_id", "seed"]
CLUSTER = "source_id"
TARGET = "target_id"
PRIMARY_P = "p_boot"
GEN_KEYS = ("flavour", "temperature", "top_p", "top_k", "greedy", "max_new_tokens", "stop_at_eos", "sampler")
_GEN_SECTIONS = ("generation", "sampling", "sampler")


class ReportError(ValueError):
    """The results table cannot give the report that was asked for."""


def order(values: Sequence, first: Any = None) -> list:
    """Distinct values in order of first appearance, ``first`` moved to the front."""
    out = list(dict.fromkeys(values))
    if first is not None and first in out:
        out.remove(first)
        out.insert(0, first)
    return out


def display_order(
    results: pd.DataFrame, reference: str, primary: str | None, controls: Sequence[str] | None
) -> list[str]:
    """Reference, primary (``transfer`` by default), the controls, then the rest; conditions that
    generate from the source prompt (the ceiling) last. Otherwise in order of first appearance."""
    seen = order(results["condition"])
    primary = primary if primary is not None else ("transfer" if "transfer" in seen else None)
    ceiling = set()
    if "prompt_role" in results.columns:
        ceiling = set(results.loc[results["prompt_role"] == "source", "condition"])
    head = [c for c in (reference, primary, *(controls or [])) if c in seen]
    rest = [c for c in seen if c not in head]
    return list(dict.fromkeys(head + [c for c in rest if c not in ceiling] + [c for c in rest if c in ceiling]))


def check_results(results: pd.DataFrame, scores: Sequence[str], reference: str) -> None:
    if not scores:
        raise ReportError("no score columns given")
    need = ["model", "seed", "pair_id", "condition", CLUSTER, *scores]
    missing = [c for c in need if c not in results.columns]
    if missing:
        raise ReportError(f"results table lacks columns {missing}")
    if len(results) == 0:
        raise ReportError("results table is empty")
    conds = order(results["condition"])
    if reference not in conds:
        raise ReportError(
            f"reference condition {reference!r} is not in the results (conditions: {conds}); "
            "every paired delta is taken against it: pass reference=<one of them>"
        )
    for model, part in results.groupby("model", sort=False):
        if reference not in set(part["condition"]):
            raise ReportError(f"model {model!r} has no {reference!r} rows; its deltas would have no reference")


def records(df: pd.DataFrame) -> list[dict]:
    return df.to_dict(orient="records")


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy/pandas scalars made plain and NaN/inf/NA made ``None``."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, pd.DataFrame):
        return jsonable(records(obj))
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
