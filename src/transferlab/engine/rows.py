"""The rows of one batch: its examples, and the shadow rows of lockstep patches.

A batch runs a chunk of the examples of one ``generate`` call, one row each
(the *real* rows, in chunk order). An example whose plan holds a ``lockstep``
decode patch also gets a *shadow* row after the real ones: its source, run with
an empty plan and the example's own random stream, so that at every decode
step the patch can read the source's activation at the same new token. Shadow
rows are never returned; ``partner[b]`` names the shadow row of real row ``b``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..interventions.plan import Plan


@dataclass
class BatchRows:
    """Row ``b`` of the batch runs ``targets[b]`` under ``plans[b]`` with ``sources[b]`` and stream ``keys[b]``."""

    examples: list[int]  # the example of each row (a shadow row: the example whose source it runs)
    n_real: int  # rows 0 .. n_real-1 are the chunk's examples; the rest are shadow rows
    targets: list[list[int]]  # token ids each row runs (a shadow row: its example's source)
    sources: list[list[int] | None]  # token ids of each row's source (None: no source; shadow rows have none)
    plans: list[Plan]
    partner: torch.Tensor  # [B] the shadow row of each real row; -1 = none
    keys: torch.Tensor  # [B] sampling and noise stream keys
    target_spans: list[tuple[int, int]] | None = None  # each row's message tokens (start, stop) in its target
    source_spans: list[tuple[int, int]] | None = None  # ... and in its source ((0, 0) where none)

    @property
    def self_source(self) -> list[bool]:
        """Per row: its source is its own target (the same token ids), as in a self-patch control."""
        return [s is not None and list(s) == list(t) for t, s in zip(self.targets, self.sources)]

    @classmethod
    def of(
        cls, chunk: list[int], tgt_ids, src_ids, plans, keys: torch.Tensor, tgt_spans=None, src_spans=None
    ) -> "BatchRows":
        """The rows for examples ``chunk``: one per example, then one shadow row per lockstep plan."""
        lock = [b for b, i in enumerate(chunk) if any(getattr(x, "decode", None) == "lockstep" for x in plans[i])]
        n_real = len(chunk)
        partner = torch.full((n_real + len(lock),), -1, dtype=torch.long)
        for j, b in enumerate(lock):
            partner[b] = n_real + j
        shadowed = [chunk[b] for b in lock]
        return cls(
            examples=list(chunk) + shadowed,
            n_real=n_real,
            targets=[tgt_ids[i] for i in chunk] + [src_ids[i] for i in shadowed],
            sources=[src_ids[i] for i in chunk] + [None] * len(lock),
            plans=[plans[i] for i in chunk] + [Plan()] * len(lock),
            partner=partner,
            keys=torch.cat([keys[chunk], keys[shadowed]]),
            target_spans=None
            if tgt_spans is None
            else [tgt_spans[i] for i in chunk] + [src_spans[i] for i in shadowed],
            source_spans=None if src_spans is None else [src_spans[i] for i in chunk] + [(0, 0)] * len(lock),
        )

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def n_shadow(self) -> int:
        return len(self) - self.n_real


def distinct(seqs) -> tuple[list[int], list[int]]:
    """(first row of each distinct sequence, the distinct index of every row; -1 for a row that is None)."""
    where: dict[tuple, int] = {}
    first, inverse = [], []
    for b, seq in enumerate(seqs):
        if seq is None:
            inverse.append(-1)
            continue
        j = where.setdefault(tuple(seq), len(first))
        if j == len(first):
            first.append(b)
        inverse.append(j)
    return first, inverse
