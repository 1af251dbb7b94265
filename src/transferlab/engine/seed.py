"""The seed flavour: what differs when ``generate(..., flavour="seed")`` reproduces the seed's code.

Everything else -- sources, binding, the decode loop -- is shared with the
corrected flavour. The differences:

* the plans it accepts (:func:`check_seed_plan`): the seed's splice and
  patcher, nothing they could not express;
* the prompt phase (:func:`seed_prompt`): the whole prompt in one forward, then
  the seed's KV splice (right-aligned, keys at their source rotations, on the
  whole prompt's cache with the whole source's), then every row whose plan is
  not empty re-feeds its last prompt token as the first decode step, whose
  logits give its first new token. Rows with an empty plan take their first
  token from the prompt's own forward, as the seed's baselines
  (``model.generate``) did;
* activation patches follow the seed's patcher (the last W positions of each
  forward call; :class:`~transferlab.interventions.operators.PatchOperator`),
  decided when they are bound.
"""

from __future__ import annotations

import torch

from ..interventions.plan import Plan
from ..interventions.splice import apply_splice
from ..interventions.types import InterventionError, KVSplice, Patch
from ..models.cache import cache_kwargs, last_logits_kwargs, output_cache


def check_seed_plan(plan: Plan) -> None:
    """Refuse what the seed's code could not express, rather than silently run something else.

    The seed spliced right-aligned caches with keys at their source rotations
    (``rope`` is therefore moot in this flavour: keys always keep their
    rotations) and patched "the last W positions of each call".
    """
    for inter in plan:
        if isinstance(inter, KVSplice):
            if inter.align != "right" or inter.window is not None or inter.positions is not None:
                raise InterventionError(
                    f"{inter.describe()}: flavour='seed' reproduces the seed's splice (right-aligned, last "
                    "min(T_target, T_source) slots, keys at source rotations) and has no equivalent of "
                    "align/window/positions; use flavour='corrected'"
                )
        elif isinstance(inter, Patch):
            if inter.fraction is not None or inter.positions is not None or inter.decode != "last":
                raise InterventionError(
                    f"{inter.describe()}: flavour='seed' reproduces the seed's patcher (the last W positions "
                    "of each forward call, W = window or 16) and has no equivalent of fraction/positions or a "
                    f"decode value other than 'last'; use flavour='corrected'"
                )


def seed_prompt(model, batch, plans: list[Plan], bound, source_kv, ctx, survival=None):
    """Steps 2-3, the seed's way; returns ``(logits [B, V], cache, attention mask, next model position)``."""
    hf = model.hf
    ids, attn, pos = batch.input_ids, batch.attention_mask, batch.position_ids
    lengths = torch.tensor(batch.lengths, device=model.device)
    ctx.phase = "prompt"
    ctx.positions, ctx.valid = pos, attn.bool()
    out = hf(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **last_logits_kwargs(hf))
    cache = output_cache(out)
    logits = out.logits[:, -1]
    for splice, rows, counters in bound.splices:
        apply_splice(model, cache, splice, rows, source_kv, batch.lengths, "seed", counters, bound.self_rows, survival)
    next_pos = lengths.clone()
    refeed = torch.tensor([len(p) > 0 for p in plans], device=model.device)
    if bool(refeed.any()):
        # the seed's loop feeds generated_ids[:, -1:] first: the last prompt token, again
        ctx.phase, ctx.step = "decode", -1
        ctx.positions, ctx.valid = (lengths - 1)[:, None], refeed[:, None]
        attn = torch.cat([attn, refeed.long()[:, None]], dim=1)
        out = hf(
            input_ids=ids[:, -1:],
            attention_mask=attn,
            position_ids=lengths[:, None],
            use_cache=True,
            **cache_kwargs(hf, cache),
        )
        cache = output_cache(out)
        logits = torch.where(refeed[:, None], out.logits[:, -1], logits)
        next_pos = lengths + refeed.long()
    return logits, cache, attn, next_pos
