"""``apply``: a plan's interventions on the model, for your own forward passes and ``hf.generate``.

::

    with tl.apply(model, "kv:all + v_proj@0.84:w16", targets, sources=sources) as applied:
        logits = applied.forward().logits[:, -1]                 # the prompts, spliced and patched
        out = applied.generate(max_new_tokens=20, num_beams=4)  # hf.generate from the same state
        with torch.no_grad():                                   # or drive the model yourself:
            out = model.hf(**applied.prompt_inputs())           # = last_inputs on a fresh applied.cache()
    applied.audit                                               # one row per (example, intervention)

Inside the block the plan's interventions sit on the model's hook points,
bound to ``targets`` exactly as :func:`~transferlab.engine.generate` binds
them (same position maps, source values, noise streams, audit), and every
forward of the model is one of:

* a **prompt forward**. Without a KV splice: the whole left-padded batch of
  ``targets`` from an empty cache (``model.hf(**applied.inputs)``, or
  ``hf.generate``'s first call); its logits at the last position equal
  ``generate``'s at new token 0 (which computes the same prompt as prefix +
  last token). With a KV splice: the splice edits the cache between the
  prompt's prefix and its last token, so the block computes the prefix when
  it is entered (prompt-phase interventions writing, splices applied, as
  ``generate``'s step 2) and every prompt forward starts from that spliced
  cache: :meth:`Applied.cache` (a fresh copy each call), fed the last prompt
  token (:attr:`Applied.last_inputs`). ``applied.forward()`` and
  ``applied.generate(...)`` do this for you, and work without splices too;
* a **decode forward**: one new token per row on top of that prompt's cache,
  as ``hf.generate`` feeds them; the k-th such forward is decode step k, and
  decode-phase interventions (``last``, ``mean``, ``cycle``, ablations, noise,
  steering, hooks) write as in ``generate``. Rows that have ended are not
  known here: under ``hf.generate`` they keep being written (and audited).

**Batch shapes.** A forward may hold each prompt's row ``r`` times over,
in order (``[p0, p0, p1, p1]`` for ``r = 2``), as ``hf.generate`` lays out
beams (``num_beams``) and samples (``num_return_sequences``); the plan is
then bound to that layout, the same for each copy (same source values, same
noise). ``applied.generate`` expands the spliced cache to match. The audit
adds up an example's copies: under ``num_beams=4`` an intervention that
writes at every step counts 4 forwards per step.

Anything else (another number of rows, another width or attention mask,
several new tokens at once, a splice plan's forward from an empty cache)
raises :class:`~transferlab.interventions.InterventionError`. Refused when
the block is entered: ``lockstep`` decode patches (the source must generate
alongside, in ``generate``'s shadow rows) and the seed flavour.

The hooks are removed when the block ends, by an exception too. The audit's
counters stay readable afterwards. Forwards may run with autograd on:
gradients flow through the edited activations (source values and the
spliced prefix cache are constants), never into the audit.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Iterator

import pandas as pd
import torch

from ..hooks import hooked
from ..interventions.audit import audit_rows, audit_table, never_fired
from ..interventions.binding import SourceBatch
from ..interventions.context import StepContext
from ..interventions.types import InterventionError
from ..models.cache import cache_kwargs, get_kv, n_cache_layers, set_kv
from .arguments import examples
from .batching import Batch, encode, left_pad, pad_id_of, resolve_format
from .plans import BoundPlans, bind, distinct_interventions, source_points, splices
from .rows import BatchRows
from .sources import batch_sources, prefix_kv
from .steps import prefix


@dataclass
class _Layout:
    """The plan bound to a forward that repeats each prompt's row ``copies`` times."""

    copies: int
    batch: Batch  # the targets, each row repeated ``copies`` times, left-padded as generate pads them
    bound: BoundPlans
    valid: torch.Tensor  # [B, T] the prompts' real tokens
    lengths: torch.Tensor  # [B] tokens per row
    rows: BatchRows | None = None
    source_kv: object = None  # the sources' caches, until the prefix is spliced (one row per prompt only)


@dataclass
class Applied:
    """What ``apply`` yields: the inputs to run, the spliced cache, and the audit of what the plan wrote."""

    batch: Batch  # the targets, left-padded as generate pads them
    example_ids: list
    bound: BoundPlans  # the plan bound to one row per prompt
    _model: object = None
    _cache: object = None  # the spliced prefix cache (a plan with KV splices), else None
    _cache_mask: torch.Tensor | None = None  # [B, slots] its attention mask
    _offset: torch.Tensor | None = None  # [B] model position of the last prompt token, less its target position
    _layouts: dict = field(default_factory=dict)  # copies -> _Layout
    _prepend_ids: torch.Tensor | None = (
        None  # a prepend splice: [B, slots + 1] the tokens the cache holds, then the last
    )

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` and ``position_ids`` ``[B, T]`` of the targets (a plan with KV
        splices starts from :meth:`cache` instead: see :attr:`last_inputs`)."""
        b = self.batch
        return {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "position_ids": b.position_ids}

    @property
    def spliced(self) -> bool:
        """Whether the plan splices the KV cache (prompt forwards then start from :meth:`cache`)."""
        return self._cache is not None

    def cache(self, copies: int = 1):
        """A fresh copy of the spliced prefix cache (every prompt token but the last), each row repeated
        ``copies`` times; None when the plan has no KV splice. Forwards extend a cache in place: take a new
        copy for each prompt forward."""
        if self._cache is None:
            return None
        out = copy.deepcopy(self._cache)
        if copies > 1:
            for layer in range(n_cache_layers(out)):
                k, v = get_kv(out, layer)
                set_kv(out, layer, k.repeat_interleave(copies, 0), v.repeat_interleave(copies, 0))
        return out

    @property
    def last_inputs(self) -> dict[str, torch.Tensor]:
        """The last prompt token to feed on top of :meth:`cache`: ``input_ids`` ``[B, 1]``, ``attention_mask``
        ``[B, slots + 1]`` (the cache's and the token's) and ``position_ids`` ``[B, 1]`` (model positions: a
        ``prepend`` splice shifts them by the source's length)."""
        b = self.batch
        if self._cache is None:
            raise InterventionError("last_inputs: this plan has no KV splice; run the whole prompt (inputs)")
        mask = torch.cat([self._cache_mask, b.attention_mask[:, -1:]], dim=1)
        return {
            "input_ids": b.input_ids[:, -1:],
            "attention_mask": mask,
            "position_ids": b.position_ids[:, -1:] + self._offset[:, None],
        }

    def prompt_inputs(self) -> dict:
        """The keywords of a prompt forward, ``model.hf(**applied.prompt_inputs())``: :attr:`inputs`, or with a
        KV splice :attr:`last_inputs` and a fresh copy of the spliced cache (under the keyword this
        transformers release takes: ``cache`` or ``past_key_values``)."""
        if self._cache is None:
            return self.inputs
        return {**self.last_inputs, **cache_kwargs(self._model.hf, self.cache())}

    def forward(self, **kwargs):
        """The prompt forward (``model.hf``'s output): the whole batch, or with a KV splice the last prompt
        token on a fresh copy of the spliced cache (whose logits are then ``[B, 1, V]``). ``kwargs`` go to the
        model (``use_cache=True``, ``output_hidden_states=True``, ...)."""
        return self._model.hf(**self.prompt_inputs(), **kwargs)

    def generate(self, **kwargs):
        """``model.hf.generate`` on the prompts, its prompt forward starting from the spliced cache where the
        plan splices (expanded for ``num_beams`` / ``num_return_sequences``). ``kwargs`` go to it as given
        (``max_new_tokens``, ``do_sample``, ``num_beams``, ``output_logits=True`` with
        ``return_dict_in_generate=True`` for per-step logits, ...); ``pad_token_id`` defaults to the
        tokenizer's. Returns what it returns: with a ``prepend`` splice, each row's ids start with the
        tokens the cache holds (padding, the source's prefix, the target)."""
        hf, tok = self._model.hf, self._model.tokenizer
        kwargs.setdefault("pad_token_id", pad_id_of(tok))
        if self._cache is None:
            b = self.batch
            return hf.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, **kwargs)
        config = kwargs.get("generation_config") or hf.generation_config
        beams = kwargs.get("num_beams", getattr(config, "num_beams", 1)) or 1
        samples = kwargs.get("num_return_sequences", getattr(config, "num_return_sequences", 1)) or 1
        last = self.last_inputs
        return hf.generate(
            input_ids=self._cache_ids(),
            attention_mask=last["attention_mask"],
            **cache_kwargs(hf, self.cache(max(beams, samples))),  # the keyword differs across releases
            **kwargs,
        )

    def _cache_ids(self) -> torch.Tensor:
        """``[B, slots + 1]`` token ids of what the cache holds, then the last prompt token (hf.generate feeds
        only the uncached last one)."""
        b = self.batch
        slots = self._cache_mask.shape[1]
        if slots == b.width - 1:
            return b.input_ids
        return self._prepend_ids

    @property
    def audit(self) -> pd.DataFrame:
        """One row per (example, intervention), as ``Generation.audit``: forwards it wrote in, positions, change
        (an example's rows under beams or several samples add up)."""
        rows = []
        for layout in self._layouts.values():
            rows_of = [i for i in range(len(self.example_ids)) for _ in range(layout.copies)]
            rows.extend(audit_rows(self.example_ids, rows_of, layout.bound.audit))
        return audit_table(_add_up(rows))

    def never_fired(self) -> pd.DataFrame:
        return never_fired(self.audit)


def _add_up(rows: list[dict]) -> list[dict]:
    """Audit rows of one (example, intervention) merged: counts and positions summed, changes in quadrature."""
    merged: dict[tuple, dict] = {}
    for r in rows:
        key = (r["example"], r["intervention"])
        if key not in merged:
            merged[key] = dict(r)
            continue
        m = merged[key]
        for name in ("fired_prompt", "fired_decode", "fired", "positions"):
            m[name] += r[name]
        m["change_norm"] = (m["change_norm"] ** 2 + r["change_norm"] ** 2) ** 0.5
        m["never_fired"] = m["fired"] == 0
    return list(merged.values())


class _Calls:
    """A forward pre-hook on the whole model: picks the layout of this forward's rows and tells the hooks
    whether it is the prompt or decode step k."""

    def __init__(self, applied: Applied, layout_of, ctx: StepContext):
        self.applied, self.layout_of, self.ctx = applied, layout_of, ctx
        self.current: _Layout | None = None
        a = applied
        # the cache a prompt forward starts from: empty, or the spliced prefix (its slots)
        self.start = a._cache_mask.shape[1] if a._cache is not None else 0

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        x = ids if ids is not None else kwargs.get("inputs_embeds")
        rows, cols = x.shape[0], x.shape[1]
        n = len(self.applied.example_ids)
        if rows % n:
            raise InterventionError(
                f"apply: bound to {n} prompts, but this forward has {rows} rows (a forward may repeat each "
                "prompt's row a few times in order, as beams and num_return_sequences do)"
            )
        layout = self.current = self.layout_of(rows // n)
        batch, ctx = layout.batch, self.ctx
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # the keyword differs across transformers releases
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        if past == self.start:
            self._prompt(layout, cols, kwargs.get("attention_mask"))
            return None
        if past < self.start:
            raise InterventionError(
                "apply: this plan splices the KV cache, so a prompt forward starts from the spliced cache: "
                "use applied.forward() / applied.generate(), or feed applied.last_inputs on applied.cache()"
            )
        if cols != 1:
            raise InterventionError(
                f"apply: a forward that continues the cache must feed one new token per row; this one feeds {cols}"
            )
        step = past - (self.start + (batch.width if self.start == 0 else 1))  # new tokens fed before this one
        ctx.phase, ctx.step = "decode", step
        ctx.positions = (layout.lengths + step)[:, None]
        ctx.valid = torch.ones(rows, 1, dtype=torch.bool, device=layout.lengths.device)
        return None

    def _prompt(self, layout: _Layout, cols: int, mask) -> None:
        batch, ctx = layout.batch, self.ctx
        if self.start:  # the last prompt token on the spliced prefix
            if cols != 1:
                raise InterventionError(
                    f"apply: on the spliced cache a prompt forward feeds the last prompt token; this one feeds {cols}"
                )
            ctx.phase, ctx.step = "prompt", 0
            ctx.positions, ctx.valid = batch.position_ids[:, -1:], layout.valid[:, -1:]
            return
        if cols != batch.width:
            raise InterventionError(
                f"apply: a forward from an empty cache must be the whole prompt batch ({batch.width} positions, "
                f"left-padded as applied.inputs); this one has {cols}"
            )
        padded = not bool(layout.valid.all())
        same_mask = (
            not padded if mask is None else mask.dim() == 2 and torch.equal(mask.bool(), layout.valid.to(mask.device))
        )
        if not same_mask:
            raise InterventionError(
                "apply: this forward's attention mask is not the prompts' (pass applied.inputs' attention_mask)"
            )
        ctx.phase, ctx.step = "prompt", 0
        ctx.positions, ctx.valid = batch.position_ids, layout.valid


class _Dispatch:
    """The site function registered at one hook point: runs the bound intervention of the current layout."""

    def __init__(self, calls: _Calls, index: int):
        self.calls, self.index = calls, index

    def __call__(self, x):
        return self.calls.current.bound.hooks[self.index][1](x)


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
    """Install ``plan``'s interventions, bound to ``targets``, on ``model`` inside a ``with`` block.

    ``plan`` and ``sources`` are one for all targets or one per target, as in
    :func:`~transferlab.engine.generate` (``sources`` may be captured
    :class:`~transferlab.engine.capture.Activations`); ``seed``,
    ``example_ids`` and ``streams`` key the noise streams as there;
    ``prompt_format`` encodes text prompts as there (default: chat when the
    model has a chat template). Yields an :class:`Applied`: run
    ``applied.forward()`` / ``applied.generate(...)`` (or ``model.hf`` on its
    inputs and cache); read ``applied.audit``. What is supported and what is
    refused: see the module docstring.
    """
    ex = examples(model, targets, plan, sources, "corrected", example_ids, streams)
    for p in {str(p): p for p in ex.plans}.values():
        for inter in p:
            if getattr(inter, "decode", None) == "lockstep":
                raise InterventionError(
                    f"apply: {inter.describe()} is a lockstep decode patch, whose source must generate alongside "
                    "(generate's shadow rows). Use generate(...), or another decode value (last, mean, cycle)."
                )
    tok, device = model.tokenizer, model.device
    fmt = resolve_format(tok, prompt_format)
    tgt_ids = encode(tok, ex.targets, fmt)
    src_ids = [encode(tok, [s], fmt)[0] if s is not None else None for s in ex.sources]
    keys = ex.keys(seed)
    n = len(ex)
    ctx = StepContext()
    captured: dict = {}  # the sources, captured once (shared by every layout)

    layouts: dict[int, _Layout] = {}

    def layout_of(copies: int) -> _Layout:
        if copies in layouts:
            return layouts[copies]
        chunk = [i for i in range(n) for _ in range(copies)]
        rows = BatchRows.of(chunk, tgt_ids, src_ids, ex.plans, keys)
        batch = left_pad(rows.targets, pad_id_of(tok), tok.bos_token_id, device=device)
        entries = distinct_interventions(model, rows.plans)
        points = source_points(entries)
        sources_batch = source_kv = None
        if copies == 1 and (points or splices(entries)):  # captured when the block is entered, before any hook
            sources_batch, source_kv = batch_sources(model, rows, points, splices(entries), ex.precomputed)
            captured["one"] = sources_batch
        elif captured.get("one") is not None:  # the same sources, each row repeated (never captured again)
            sources_batch = _repeat(captured["one"], copies)
        bound = bind(model, entries, batch, sources_batch, rows.keys.to(device), rows.partner, ctx, "corrected")
        lengths = torch.tensor(batch.lengths, device=batch.input_ids.device)
        layouts[copies] = _Layout(copies, batch, bound, batch.attention_mask.bool(), lengths, rows, source_kv)
        return layouts[copies]

    first = layout_of(1)
    applied = Applied(first.batch, ex.ids, first.bound, model, _layouts=layouts)
    if first.bound.splices:
        _splice_prefix(model, applied, first, ctx, tgt_ids, src_ids)
    first.source_kv = None  # spliced already (or never needed): free the sources' caches
    calls = _Calls(applied, layout_of, ctx)
    calls.current = first
    with contextlib.ExitStack() as stack:
        handle = model.hf.register_forward_pre_hook(calls, with_kwargs=True)
        stack.callback(handle.remove)
        stack.enter_context(hooked([(h, _Dispatch(calls, j)) for j, (h, _) in enumerate(first.bound.hooks)]))
        yield applied


def _repeat(sources: SourceBatch, copies: int) -> SourceBatch:
    """``sources`` with each row repeated ``copies`` times, in order."""

    def rep(values):
        return None if values is None else [v for v in values for _ in range(copies)]

    acts = {k: v.repeat_interleave(copies, dim=0) for k, v in sources.acts.items()}
    return SourceBatch(
        acts,
        rep(sources.lengths),
        rep(sources.has_bos),
        rep(sources.has_source),
        rep(sources.texts),
        rep(sources.first),
    )


def _splice_prefix(model, applied: Applied, layout: _Layout, ctx: StepContext, tgt_ids, src_ids) -> None:
    """``generate``'s step 2 for the block: the prompts' prefix cache with prompt-phase interventions writing,
    the KV splices applied; kept on ``applied`` (with its attention mask and position offset)."""
    batch = layout.batch
    if batch.width < 2:
        raise InterventionError("apply: a KV splice edits the prompts' prefix, and these prompts are one token long")
    with torch.no_grad(), hooked(layout.bound.hooks):
        cache, attn_prefix, offset = prefix(model, batch, layout.rows, layout.bound, prefix_kv(layout.source_kv), ctx)
    applied._cache, applied._cache_mask, applied._offset = cache, attn_prefix, offset
    if attn_prefix.shape[1] != batch.width - 1:  # prepend: the cache holds [padding | source prefix | target prefix]
        applied._prepend_ids = _prepend_ids(model, attn_prefix, offset, batch, tgt_ids, src_ids)


def _prepend_ids(model, attn_prefix, offset, batch: Batch, tgt_ids, src_ids) -> torch.Tensor:
    """``[B, slots + 1]``: the tokens a prepend-spliced cache holds, right-aligned, then the last prompt token."""
    pad = pad_id_of(model.tokenizer)
    slots = attn_prefix.shape[1]
    out = torch.full((len(tgt_ids), slots + 1), pad, dtype=torch.long)
    for b, (t, s) in enumerate(zip(tgt_ids, src_ids)):
        shift = int(offset[b])
        held = (list(s[:shift]) if shift else []) + list(t)
        out[b, slots + 1 - len(held) :] = torch.tensor(held, dtype=torch.long)
    return out.to(batch.input_ids.device)
