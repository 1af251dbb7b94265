"""Interventions, plans, and the machinery that applies them during a forward pass.

Shapes
------
One letter per dimension, in the docstrings and comments of ``interventions/``
and ``engine/`` (code spells them out: ``batch``, ``positions``, ``width``...):

==========  ==================================================================
``B``       batch: the rows of one forward (examples, and lockstep shadow rows)
``T``       positions: the columns of a forward call's input (the padded
            prompt at the prompt phase, 1 at a decode step)
``S``       source positions: the columns of the left-padded source tensors
``D``       width: the channels of the activation at a hook point
            (``adapter.width(site)``: the hidden size, or heads x head dim)
``W``       window: a number of tokens counted back from the last one
            (``window=W`` of capture, R_V, patches, KV splices); never a
            tensor dimension
``H``       heads: the key/value heads of a cache layer
``hd``      the dimension of one head
``slots``   the positions a cache layer holds: keys are ``[B, H, slots, hd]``
``V``       the vocabulary
==========  ==================================================================

An activation is ``[B, T, D]``; a source activation ``[B, S, D]``. A padded
:class:`~transferlab.engine.batching.Batch`'s ``width`` is its ``T`` (the
width of the batch, not of an activation).
"""

from .audit import never_fired
from .plan import Plan, as_plan, format_intervention, parse_intervention, parse_plan
from .steering import SteeringVectors, load_steering, save_steering, steer_problem
from .types import (
    Ablate,
    HeadPatch,
    Hook,
    HookCall,
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
    "Hook",
    "HookCall",
    "Intervention",
    "InterventionError",
    "KVSplice",
    "Noise",
    "Patch",
    "Steer",
    "SteeringVectors",
    "load_steering",
    "save_steering",
    "steer_problem",
    "intervention_from_dict",
]
