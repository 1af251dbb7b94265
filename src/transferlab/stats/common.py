"""What the statistics modules share: the ddof, the p columns, scipy on first use, column checks."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

#: the p columns of a :func:`~transferlab.stats.paired_compare` row, each unadjusted
P_COLUMNS = ("p_t", "p_wilcoxon", "p_perm", "p_perm_cluster", "p_boot")
#: the delta degrees of freedom of every SD
DDOF = 1


def scipy_stats():
    """``scipy.stats``, imported on first use (0.5-0.7 s: a run imports it while the GPU decodes, see the runner)."""
    from scipy import stats

    return stats


def as_list(cols: str | Sequence[str]) -> list[str]:
    return [cols] if isinstance(cols, str) else list(cols)


def require(df: pd.DataFrame, cols: Sequence[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"table lacks columns {missing}; it has {list(df.columns)}")
