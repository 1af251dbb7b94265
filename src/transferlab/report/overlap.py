"""Summary section ``overlap``: each behavior score beside the ``source_overlap`` diagnostic."""

from __future__ import annotations

import numpy as np

from ..stats import DDOF
from .common import OVERLAP


def overlap_table(results, behavior, conds) -> list[dict]:
    if OVERLAP not in results.columns:
        return []
    rows = []
    for model, sub in results.groupby("model", sort=False):
        for c in conds:
            part = sub[sub["condition"] == c]
            if not len(part):
                continue
            ov = part[OVERLAP].astype(float)
            for s in behavior:
                v = part[s].astype(float)
                both = v.notna() & ov.notna()
                r = np.nan
                if both.sum() >= 3 and v[both].std() > 0 and ov[both].std() > 0:
                    r = float(np.corrcoef(v[both], ov[both])[0, 1])
                rows.append(
                    {
                        "model": model,
                        "condition": c,
                        "score": s,
                        "mean": v.mean(),
                        "sd": v.std(ddof=DDOF),
                        "n": int(v.notna().sum()),
                        "overlap_mean": ov.mean(),
                        "overlap_sd": ov.std(ddof=DDOF),
                        "overlap_n": int(ov.notna().sum()),
                        "overlap_n_nan": int(ov.isna().sum()),
                        "r_score_overlap": r,
                        "n_r": int(both.sum()),
                    }
                )
    return rows
