"""What ``generate`` and ``apply`` accept, made one entry per example and checked before any forward.

Targets are a prompt or a list of prompts (text or token ids). ``plan`` and
``sources`` are one for all targets or one per target; sources may also be
captured :class:`~transferlab.engine.capture.Activations`, one per target.
``example_ids`` name the examples (default: their index) and, unless
``streams`` is given, key their random streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import rng
from ..interventions.plan import Plan, as_plan
from ..interventions.types import Intervention, InterventionError
from .capture import Activations
from .seed import check_seed_plan
from .sources import check_precomputed


@dataclass
class Examples:
    """One call's examples: example ``i`` runs ``targets[i]`` under ``plans[i]`` with ``sources[i]``."""

    targets: list  # prompts as given (text or token ids)
    plans: list[Plan]
    sources: list  # prompts as given, or None where the plan reads no source
    precomputed: Activations | None  # the sources, when given captured
    ids: list  # the examples' names in the audit
    stream_ids: list  # what keys their random streams

    def __len__(self) -> int:
        return len(self.targets)

    def keys(self, seed: int) -> torch.Tensor:
        """``[examples]``: the sampling and noise stream keys."""
        return rng.combine(seed, torch.tensor([rng.example_key(x) for x in self.stream_ids], dtype=torch.long))


def examples(model, targets, plan, sources, flavour: str, example_ids=None, streams=None) -> Examples:
    """Normalise and check one call's arguments (see module docstring)."""
    if isinstance(targets, str) or (isinstance(targets, (list, tuple)) and targets and isinstance(targets[0], int)):
        targets = [targets]
    targets = list(targets)
    n = len(targets)
    if n == 0:
        raise ValueError("no targets given")
    plans = plans_per_example(plan, n)
    precomputed = None
    if isinstance(sources, Activations):
        precomputed = check_precomputed(model, sources, n, flavour)
        sources = list(sources.prompts)
    srcs = per_example(sources, n, "sources")
    check_plans_and_sources(plans, srcs, flavour)
    ids = example_ids if example_ids is not None else list(range(n))
    if len(ids) != n:
        raise ValueError(f"example_ids: got {len(ids)} for {n} targets")
    stream_ids = streams if streams is not None else ids
    if len(stream_ids) != n:
        raise ValueError(f"streams: got {len(stream_ids)} for {n} targets")
    return Examples(targets, plans, srcs, precomputed, list(ids), list(stream_ids))


def per_example(value, n: int, what: str) -> list:
    """``value`` once per target: a single value repeated, or a list of ``n`` taken as is."""
    if value is None or isinstance(value, (str, Plan)) or not isinstance(value, (list, tuple)):
        return [value] * n
    if len(value) != n:
        raise ValueError(f"{what}: got {len(value)} for {n} targets; give one per target or a single one for all")
    return list(value)


def plans_per_example(plan, n: int) -> list[Plan]:
    """One :class:`Plan` per target, from one plan for all or one per target (text, Plan, interventions)."""
    if isinstance(plan, (list, tuple)) and plan and all(isinstance(x, (Intervention, dict)) for x in plan):
        plan = as_plan(plan)  # a list of interventions (or their dicts) is ONE plan, not one per target
    parsed: dict[str, Plan] = {}  # plan text -> Plan: an experiment's rows repeat a few plans many times

    def plan_of(p) -> Plan:
        if not isinstance(p, str):
            return as_plan(p)
        if p not in parsed:
            parsed[p] = as_plan(p)
        return parsed[p]

    return [plan_of(p) for p in per_example(plan, n, "plan")]


def check_plans_and_sources(plans: list[Plan], srcs: list, flavour: str) -> None:
    """Refuse a plan the flavour cannot run, or a plan without the source it reads."""
    if flavour == "seed":
        for p in {str(p): p for p in plans}.values():
            check_seed_plan(p)
    for i, (p, s) in enumerate(zip(plans, srcs)):
        if p.needs_source and s is None:
            raise InterventionError(
                f"example {i}: the plan '{p}' needs a source prompt, but none was given (pass sources=...)"
            )
        if s is not None and not isinstance(s, (str, list, tuple)):
            raise TypeError(f"sources must be strings or token-id lists (or None); example {i} has {type(s).__name__}")
