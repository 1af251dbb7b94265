"""The audit: did each intervention act, where, and how much did it change?

Each bound intervention keeps per-example counters on the model's device
(no host synchronisation on the per-token path): forward calls in which it
wrote at least one position, split by phase; positions written; and the
summed squared change, whose square root is the reported ``change_norm``.
:func:`audit_table` turns them into one row per (example, intervention).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

AUDIT_COLUMNS = [
    "example",
    "intervention",
    "kind",
    "description",
    "hook_point",
    "phase",
    "fired_prompt",
    "fired_decode",
    "fired",
    "positions",
    "change_norm",
    "never_fired",
]


@dataclass
class Counters:
    """Per-example counters for one bound intervention."""

    n: int
    device: torch.device
    fired_prompt: torch.Tensor = field(init=False)
    fired_decode: torch.Tensor = field(init=False)
    positions: torch.Tensor = field(init=False)
    sq_change: torch.Tensor = field(init=False)

    def __post_init__(self):
        z = lambda dt: torch.zeros(self.n, dtype=dt, device=self.device)  # noqa: E731
        self.fired_prompt, self.fired_decode = z(torch.long), z(torch.long)
        self.positions, self.sq_change = z(torch.long), z(torch.float64)

    def record(self, phase: str, written: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> None:
        """``written [B, T]`` marks written positions; ``old``/``new`` are ``[B, T, D]``."""
        if new.requires_grad:  # a forward with autograd on (``apply``): count the change, never differentiate it
            old, new = old.detach(), new.detach()
        fired = written.any(dim=1).long()
        if phase == "prompt":
            self.fired_prompt += fired
        else:
            self.fired_decode += fired
        self.positions += written.sum(dim=1)
        self.sq_change += ((new.float() - old.float()) ** 2).sum(dim=(1, 2)).double()


def audit_rows(example_ids, rows_of, bound) -> list[dict]:
    """Rows for one batch: ``bound`` = [(plan index, intervention, hook point text, Counters, rows mask)]."""
    out = []
    for index, inter, point, counters, mask in bound:
        fp = counters.fired_prompt.cpu().tolist()
        fd = counters.fired_decode.cpu().tolist()
        pos = counters.positions.cpu().tolist()
        sq = counters.sq_change.cpu().tolist()
        for b in mask.nonzero().flatten().cpu().tolist():
            fired = fp[b] + fd[b]
            out.append(
                dict(
                    example=example_ids[rows_of[b]],
                    intervention=index,
                    kind=inter.kind,
                    description=inter.describe(),
                    hook_point=point,
                    phase=getattr(inter, "phase", "prompt"),
                    fired_prompt=fp[b],
                    fired_decode=fd[b],
                    fired=fired,
                    positions=pos[b],
                    change_norm=float(sq[b]) ** 0.5,
                    never_fired=fired == 0,
                )
            )
    return out


def audit_table(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=AUDIT_COLUMNS)
    return df.sort_values(["example", "intervention"], kind="stable").reset_index(drop=True) if len(df) else df


def never_fired(audit: pd.DataFrame) -> pd.DataFrame:
    """Interventions that never acted, grouped: description, hook point, how many examples."""
    if audit is None or not len(audit):
        return pd.DataFrame(columns=["description", "hook_point", "examples_never_fired", "examples"])
    g = audit.groupby(["description", "hook_point"], sort=False)
    out = g.agg(examples_never_fired=("never_fired", "sum"), examples=("never_fired", "size")).reset_index()
    return out[out.examples_never_fired > 0].reset_index(drop=True)
