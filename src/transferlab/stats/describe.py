"""Per-group descriptive statistics of score columns."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .common import DDOF, as_list, require


def describe_scores(df: pd.DataFrame, scores: Sequence[str], by: str | Sequence[str] = "condition") -> pd.DataFrame:
    """Per group and score: ``n`` (non-NaN), ``n_nan``, ``mean``, ``sd``
    (ddof=1), ``median``, ``min``, ``max``. Long format."""
    by = as_list(by)
    require(df, [*by, *scores])
    rows = []
    for key, part in df.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        for s in scores:
            v = part[s].astype(float)
            x = v.dropna()
            rows.append(
                {
                    **dict(zip(by, key)),
                    "score": s,
                    "n": int(x.size),
                    "n_nan": int(v.isna().sum()),
                    "mean": x.mean() if x.size else np.nan,
                    "sd": x.std(ddof=DDOF) if x.size > 1 else np.nan,
                    "median": x.median() if x.size else np.nan,
                    "min": x.min() if x.size else np.nan,
                    "max": x.max() if x.size else np.nan,
                }
            )
    return pd.DataFrame(rows)
