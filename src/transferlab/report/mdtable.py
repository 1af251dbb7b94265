"""Markdown table cells: numbers, p-values, intervals, and GitHub tables (shared by the report's sections)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

DASH = "–"


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table: ``–`` for missing, small/large floats in scientific form."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) < 10**-digits or abs(x) >= 1e5:
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}f}"
    return str(x)


def fmt_p(p: Any) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return DASH
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def p_cell(p: Any, floor: Any = None) -> str:
    """A resampled p: ``≤ floor`` when it sits at its floor (no resample as extreme: the p is at most that)."""
    if floor is not None and p is not None and not (isinstance(p, float) and math.isnan(p)) and p <= floor * (1 + 1e-9):
        return f"≤ {fmt_p(floor)}"
    return fmt_p(p)


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def md_table(
    rows: Sequence[dict] | pd.DataFrame,
    columns: Sequence[str],
    headers: Sequence[str] | None = None,
    align: Sequence[str] | None = None,
) -> str:
    """A GitHub markdown table of ``rows`` (dicts or a DataFrame) over ``columns``.

    Cells are written with ``str`` (format them first); ``|`` is escaped.
    ``align`` per column: ``l`` or ``r`` (default: left for the first, right
    for the others).
    """
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict(orient="records")
    headers = list(headers or columns)
    align = list(align or (["l"] + ["r"] * (len(columns) - 1)))
    out = [
        "| " + " | ".join(_cell(h) for h in headers) + " |",
        "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|",
    ]
    for r in rows:
        out.append("| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |")
    return "\n".join(out)


def pm(mean, sd) -> str:
    return f"{fmt(mean)} ± {fmt(sd)}" if mean is not None else DASH


def ci_text(lo, hi) -> str:
    return f"[{fmt(lo)}, {fmt(hi)}]" if lo is not None and hi is not None else DASH
