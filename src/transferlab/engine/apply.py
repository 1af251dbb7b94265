"""``apply``: a plan's activation interventions on the model, for your own forward passes.

::

    with tl.apply(model, "v_proj@0.84:w16", targets, sources=sources) as applied:
        logits = model.hf(**applied.inputs).logits          # the prompts, patched
        new = model.hf.generate(input_ids=applied.inputs["input_ids"],
                                attention_mask=applied.inputs["attention_mask"], max_new_tokens=20)
    applied.audit                                           # one row per (example, intervention)

Inside the block the plan's activation interventions sit on the model's hook
points, bound to ``targets`` exactly as :func:`~transferlab.engine.generate`
binds them (same position maps, source values, noise streams, audit), and
every forward of the model is one of:

* a **prompt forward**: the whole left-padded batch of ``targets`` from an
  empty cache (``model.hf(**applied.inputs)``, or ``hf.generate``'s first
  call). Prompt-phase interventions write. Its logits equal ``generate``'s
  at new token 0 (which computes the same prompt as prefix + last token);
* a **decode forward**: one new token per row on top of that prompt's cache,
  as ``hf.generate`` feeds them; the k-th such forward is decode step k, and
  decode-phase interventions (``last``, ``mean``, ``cycle``, ablations, noise,
  steering) write as in ``generate``. Rows that have ended are not known
  here: under ``hf.generate`` they keep being written (and audited).

Anything else (another batch size or width, another attention mask, several
new tokens at once) raises :class:`~transferlab.interventions.InterventionError`.
Not supported, refused when the block is entered: KV splices (they edit the
cache between the prompt's prefix and its last token, which only
``generate``'s prompt phase does), ``lockstep`` decode patches (the source must
generate alongside, in ``generate``'s shadow rows), and the seed flavour.

The hooks are removed when the block ends, by an exception too. The audit's
counters stay readable afterwards. Forwards may run with autograd on:
gradients flow through the edited activations (source values are constants),
never into the audit.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import pandas as pd
import torch

from ..hooks import hooked
from ..interventions.audit import audit_rows, audit_table, never_fired
from ..interventions.context import StepContext
from ..interventions.types import InterventionError, KVSplice
from .arguments import examples
from .batching import Batch, encode, left_pad, pad_id_of, resolve_format
from .plans import BoundPlans, bind, distinct_interventions, source_points
from .rows import BatchRows
from .sources import batch_sources


@dataclass
class Applied:
    """What ``apply`` yields: the inputs to run, and the audit of what the interventions wrote."""

    batch: Batch  # the targets, left-padded as generate pads them
    example_ids: list
    bound: BoundPlans

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` and ``position_ids`` ``[B, T]`` of the targets."""
        b = self.batch
        return {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "position_ids": b.position_ids}

    @property
    def audit(self) -> pd.DataFrame:
        """One row per (example, intervention), as ``Generation.audit``: forwards it wrote in, positions, change."""
        return audit_table(audit_rows(self.example_ids, list(range(len(self.example_ids))), self.bound.audit))

    def never_fired(self) -> pd.DataFrame:
        return never_fired(self.audit)


class _Calls:
    """A forward pre-hook on the whole model: tells the hooks whether this forward is the prompt or decode step k."""

    def __init__(self, batch: Batch, ctx: StepContext):
        self.batch, self.ctx = batch, ctx
        self.lengths = torch.tensor(batch.lengths, device=batch.input_ids.device)
        self.valid = batch.attention_mask.bool()
        self.padded = not bool(self.valid.all())

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        x = ids if ids is not None else kwargs.get("inputs_embeds")
        rows, cols = x.shape[0], x.shape[1]
        batch, ctx = self.batch, self.ctx
        if rows != len(batch.lengths):
            raise InterventionError(f"apply: bound to {len(batch.lengths)} prompts, but this forward has {rows} rows")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # the keyword differs across transformers releases
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        mask = kwargs.get("attention_mask")
        if past == 0:
            if cols != batch.width:
                raise InterventionError(
                    f"apply: a forward from an empty cache must be the whole prompt batch ({batch.width} positions, "
                    f"left-padded as applied.inputs); this one has {cols}"
                )
            same_mask = (
                not self.padded
                if mask is None
                else mask.dim() == 2 and torch.equal(mask.bool(), self.valid.to(mask.device))
            )
            if not same_mask:
                raise InterventionError(
                    "apply: this forward's attention mask is not the prompts' (pass applied.inputs' attention_mask)"
                )
            ctx.phase, ctx.step = "prompt", 0
            ctx.positions, ctx.valid = batch.position_ids, self.valid
            return None
        if cols != 1:
            raise InterventionError(
                f"apply: a forward that continues the cache must feed one new token per row; this one feeds {cols}"
            )
        step = past - batch.width  # new tokens fed before this one
        ctx.phase, ctx.step = "decode", step
        ctx.positions = (self.lengths + step)[:, None]
        ctx.valid = torch.ones(rows, 1, dtype=torch.bool, device=self.lengths.device)
        return None


@contextlib.contextmanager
def apply(
    model,
    plan,
    targets,
    *,
    sources=None,
    seed: int = 0,
    example_ids: list | None = None,
    streams: list | None = None,
    prompt_format: str | None = None,
) -> Iterator[Applied]:
    """Install ``plan``'s activation interventions, bound to ``targets``, on ``model`` inside a ``with`` block.

    ``plan`` and ``sources`` are one for all targets or one per target, as in
    :func:`~transferlab.engine.generate` (``sources`` may be captured
    :class:`~transferlab.engine.capture.Activations`); ``seed``,
    ``example_ids`` and ``streams`` key the noise streams as there. Yields an
    :class:`Applied`: run ``model.hf(**applied.inputs)`` or ``model.hf.generate``
    on its inputs; read ``applied.audit``. What is supported and what is
    refused: see the module docstring.
    """
    ex = examples(model, targets, plan, sources, "corrected", example_ids, streams)
    for p in {str(p): p for p in ex.plans}.values():
        for inter in p:
            if isinstance(inter, KVSplice):
                raise InterventionError(
                    f"apply: {inter.describe()} is a KV splice, which edits the cache between the prompt's prefix and "
                    "its last token; only generate's prompt phase does that. Use generate(...) for plans with splices."
                )
            if getattr(inter, "decode", None) == "lockstep":
                raise InterventionError(
                    f"apply: {inter.describe()} is a lockstep decode patch, whose source must generate alongside "
                    "(generate's shadow rows). Use generate(...), or another decode value (last, mean, cycle)."
                )
    tok, device = model.tokenizer, model.device
    fmt = resolve_format(tok, prompt_format)
    tgt_ids = encode(tok, ex.targets, fmt)
    src_ids = [encode(tok, [s], fmt)[0] if s is not None else None for s in ex.sources]
    rows = BatchRows.of(list(range(len(ex))), tgt_ids, src_ids, ex.plans, ex.keys(seed))
    batch = left_pad(rows.targets, pad_id_of(tok), tok.bos_token_id, device=device)
    entries = distinct_interventions(model, rows.plans)
    points = source_points(entries)
    sources_batch = batch_sources(model, rows, points, False, ex.precomputed)[0] if points else None
    ctx = StepContext()
    bound = bind(model, entries, batch, sources_batch, rows.keys.to(device), rows.partner, ctx, "corrected")
    calls = _Calls(batch, ctx)
    with contextlib.ExitStack() as stack:
        handle = model.hf.register_forward_pre_hook(calls, with_kwargs=True)
        stack.callback(handle.remove)
        stack.enter_context(hooked(bound.hooks))
        yield Applied(batch, ex.ids, bound)
