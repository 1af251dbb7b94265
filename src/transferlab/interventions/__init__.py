"""Interventions, plans, and the machinery that applies them during a forward pass."""

from .audit import never_fired
from .plan import Plan, as_plan, format_intervention, parse_intervention, parse_plan
from .types import (
    Ablate,
    HeadPatch,
    Intervention,
    InterventionError,
    KVSplice,
    Noise,
    Patch,
    Steer,
    intervention_from_dict,
)

__all__ = [
    "never_fired",
    "Plan",
    "as_plan",
    "format_intervention",
    "parse_intervention",
    "parse_plan",
    "Ablate",
    "HeadPatch",
    "Intervention",
    "InterventionError",
    "KVSplice",
    "Noise",
    "Patch",
    "Steer",
    "intervention_from_dict",
]
