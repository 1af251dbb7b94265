"""A batch's plans, bound to the model: distinct interventions, their hooks, splices and audit.

Rows of a batch hold different plans (one batch mixes conditions), and most
rows share interventions. Each distinct (plan position, intervention) pair is
bound once, with a ``[B]`` mask of the rows whose plan holds it there:
activation interventions become hook functions
(:class:`~transferlab.interventions.binding.BoundActivation`), KV splices get
audit counters and are applied by the prompt phase.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import torch

from ..interventions.audit import Counters
from ..interventions.binding import BoundActivation, SourceBatch
from ..interventions.context import StepContext
from ..interventions.plan import Plan
from ..interventions.steering import steer_problem
from ..interventions.types import Intervention, InterventionError, KVSplice
from ..sites import HookPoint
from .batching import Batch


@dataclass
class Entry:
    """One distinct intervention of the batch, at one plan position, and the rows that hold it there."""

    index: int  # its position in the plans that hold it (the audit's ``intervention``)
    inter: Intervention  # its layer resolved to an index
    rows: torch.Tensor  # [B] bool


def _identity(inter: Intervention) -> str:
    """What makes two interventions the same one: kind and every field, type-exact (``1`` and ``1.0`` differ,
    so each row's audit describes its own plan as written)."""
    return json.dumps(inter.to_dict(), sort_keys=True, default=str)


def _resolve(model, inter: Intervention) -> Intervention:
    if isinstance(inter, KVSplice):
        return inter  # layers resolved when spliced
    problem = steer_problem(inter, model)  # a steering vector built on another model: refused, never added
    if problem:
        raise InterventionError(problem)
    return replace(inter, layer=model.layer(inter.layer))


def distinct_interventions(model, plans: list[Plan]) -> list[Entry]:
    """The batch's distinct (plan position, intervention) pairs, in position order.

    Keying by position keeps a repeated intervention (two ``add``s) and, applied
    in position order, gives every row its own plan's order at a shared hook
    point whatever the other rows hold.
    """
    n = len(plans)
    found: dict[tuple, tuple[Intervention, list[int]]] = {}  # key -> (resolved intervention, its rows)
    keyed_by_plan: dict[int, list] = {}  # id(plan) -> [(key, resolved intervention)]: once per plan, not per row
    for b, plan in enumerate(plans):
        keyed = keyed_by_plan.get(id(plan))
        if keyed is None:
            keyed = []
            for j, inter in enumerate(plan):
                res = _resolve(model, inter)
                keyed.append(((j, _identity(res)), res))
            keyed_by_plan[id(plan)] = keyed
        for key, res in keyed:
            found.setdefault(key, (res, []))[1].append(b)
    entries = []
    for key in sorted(found, key=lambda k: k[0]):
        res, rows = found[key]
        mask = torch.zeros(n, dtype=torch.bool)
        mask[rows] = True  # one write per intervention, not one per row
        entries.append(Entry(key[0], res, mask))
    return entries


def _acts(entry: Entry) -> bool:
    """Whether an entry acts on an activation (at a hook point) rather than on the KV cache."""
    return not isinstance(entry.inter, KVSplice)


def source_points(entries: list[Entry]) -> list[HookPoint]:
    """The hook points whose source activations some activation intervention reads."""
    return sorted({HookPoint(e.inter.site, e.inter.layer) for e in entries if _acts(e) and e.inter.needs_source})


def splices(entries: list[Entry]) -> bool:
    """Whether some entry splices the KV cache (the sources' caches are then captured too)."""
    return any(not _acts(e) for e in entries)


@dataclass
class BoundPlans:
    """What the prompt phase and the decode loop apply: hooks, splices, and the audit of both."""

    activations: list[BoundActivation] = field(default_factory=list)
    hooks: list = field(default_factory=list)  # [(SiteHandle, BoundActivation)] for ``hooked``
    splices: list[tuple[KVSplice, torch.Tensor, Counters]] = field(default_factory=list)  # (splice, rows, counters)
    audit: list = field(default_factory=list)  # [(plan index, intervention, hook point text, Counters, rows)]
    self_rows: list[bool] = field(default_factory=list)  # rows whose source is their own target

    @property
    def acts_at_prompt(self) -> bool:
        """Whether any activation intervention writes during the prompt phase."""
        return any(b.acts_prompt for b in self.activations)


def bind(
    model,
    entries: list[Entry],
    batch: Batch,
    sources: SourceBatch | None,
    keys: torch.Tensor,
    partner: torch.Tensor,
    ctx: StepContext,
    flavour: str,
    self_rows: list[bool] | None = None,
) -> BoundPlans:
    """Bind every entry to the batch: a hook function per activation intervention, counters per splice.

    ``self_rows[b]``: row b's source is its own target (the same token ids); such rows read their source
    from their own forward (:mod:`~transferlab.interventions.splice`, the patch operators' prompt values).
    """
    device = model.device
    out = BoundPlans(self_rows=list(self_rows) if self_rows is not None else [False] * len(batch.lengths))
    for e in entries:
        if _acts(e):
            point = HookPoint(e.inter.site, e.inter.layer)
            bound = BoundActivation(
                model,
                e.inter,
                point,
                e.rows.to(device),
                ctx,
                batch.lengths,
                batch.has_bos,
                sources,
                keys,
                flavour,
                partner=partner.to(device),
                self_rows=out.self_rows,
            )
            out.activations.append(bound)
            out.hooks.append((model.adapter.handle(point), bound))
            out.audit.append((e.index, e.inter, str(point), bound.counters, e.rows))
    for e in entries:  # after the activations: the audit lists them in that order within a batch
        if not _acts(e):
            counters = Counters(len(batch.lengths), device)
            out.splices.append((e.inter, e.rows.to(device), counters))
            out.audit.append((e.index, e.inter, "kv", counters, e.rows))
    return out
