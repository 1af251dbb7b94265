"""Where a benchmark's result goes: one JSON file per run, ``<out>/<what>_<card>_<time>.json``.

Every benchmark (``transferlab bench``, ``benchmarks/*.py``) records its result
the same way, so that ``benchmarks/results/`` sorts by what was measured, then
by the card it ran on, then by when.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def write_result(result: dict, out_dir, *name) -> Path:
    """Write ``result`` as ``out_dir/<name parts joined by _>_<YYYYmmdd-HHMMSS>.json``; returns the path.

    Spaces and slashes in a part (a card's name: "NVIDIA H200") become underscores.
    """
    parts = [str(p).replace(" ", "_").replace("/", "_") for p in name]
    path = Path(out_dir) / f"{'_'.join([*parts, time.strftime('%Y%m%d-%H%M%S')])}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path


__all__ = ["write_result"]
