"""One batch through the four steps of generation (see :mod:`.generation` for the whole call).

1. capture the sources every plan reads (:mod:`.sources`);
2. process the target prefixes (every prompt token but the last) with
   prompt-phase interventions in place, and splice KV caches into that prefix
   cache (:func:`prefix`);
3. process the last prompt token on top; its logits give new token 0
   (:func:`last_token`);
4. decode: feed each new token once until ``max_new_tokens`` exist or every row
   has ended (:mod:`.decode`).

The seed flavour replaces steps 2-3 by :func:`.seed.seed_prompt`. The batch's
rows (real and lockstep shadow rows) are :class:`.rows.BatchRows`; its plans,
bound once per distinct intervention, are :class:`.plans.BoundPlans`.

Shapes follow the glossary of :mod:`transferlab.interventions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..hooks import hooked
from ..interventions.binding import mark_prompt_writes
from ..interventions.context import StepContext
from ..interventions.splice import apply_lengthening, apply_splice
from ..interventions.survival import Survival
from ..interventions.types import LENGTHENING
from ..models.cache import cache_kwargs, get_kv, last_logits_kwargs, n_cache_layers, output_cache, set_kv
from ..timings import stage
from . import decode
from .batching import left_pad, pad_id_of
from .plans import bind, distinct_interventions, source_points, splices
from .rows import BatchRows, distinct
from .sampling import Sampler
from .seed import seed_prompt
from .sources import batch_sources, prefix_kv


@dataclass(frozen=True)
class Decoding:
    """How every batch of one ``generate`` call samples and stops."""

    sampler: Sampler
    max_new: int
    stop_at_eos: bool
    flavour: str  # "corrected" or "seed"
    logits: bool = False  # keep every new token's logits (generate's return_logits)


@dataclass
class BatchOutput:
    """The real rows' new tokens (cut at EOS), why each stopped, their logit masses, and the audit's counters."""

    tokens: list[list[int]]
    reasons: list[str]  # "eos" or "length"
    mass: dict[str, np.ndarray]  # name -> [real rows, max_new]
    audit: list  # [(plan index, intervention, hook point text, Counters, rows)]
    decode_path: str = ""  # the loop and attention kernel that decoded the batch (decode.run)
    logprobs: list[np.ndarray] | None = None  # per real row, log p of each returned token (when recorded)
    logits: torch.Tensor | None = None  # [real rows, max_new, V] float32 on the host (Decoding.logits)
    kept: list = None  # per real row, [layers, target tokens] True where the slot kept the target's own KV


def generate_batch(
    model, rows: BatchRows, how: Decoding, logit_sets: dict, precomputed=None, forced=None, logprobs: bool = False
) -> BatchOutput:
    """Generate for one batch of rows (``logit_sets``: name -> one id list per example; ``forced``: one token
    list or None per example, the tokens its row takes instead of sampling; ``logprobs``: record the
    log-probability of every token taken). Shadow rows are never forced."""
    device, tok = model.device, model.tokenizer
    batch = left_pad(rows.targets, pad_id_of(tok), tok.bos_token_id, device=device)
    keys = rows.keys.to(device)
    entries = distinct_interventions(model, rows.plans)
    # 1. the sources: activations at every hook point the plans read, and their caches if a plan splices
    points, want_kv = source_points(entries), splices(entries)
    sources = source_kv = None
    if points or want_kv:
        with stage("source_capture"):
            sources, source_kv = batch_sources(model, rows, points, want_kv, precomputed)
    ctx = StepContext()
    own = rows.self_source
    bound = bind(model, entries, batch, sources, keys, rows.partner, ctx, how.flavour, self_rows=own)
    survival = Survival(batch.lengths, model.n_layers)
    masks = _logit_masks(logit_sets, rows.examples, int(model.hf.config.vocab_size), device)
    mass = {
        name: torch.full((len(rows), how.max_new), float("nan"), dtype=torch.float64, device=device) for name in masks
    }
    eos = tok.eos_token_id
    fill = eos if eos is not None else pad_id_of(tok)
    with torch.inference_mode(), hooked(bound.hooks):
        if how.flavour == "seed":
            with stage("seed_prompt"):
                prompt = seed_prompt(model, batch, rows.plans, bound, source_kv, ctx, survival)
        else:
            # 2. the prefixes, with prompt-phase interventions; KV splices into the prefix cache
            cache, attn_prefix, offset = prefix(model, batch, rows, bound, prefix_kv(source_kv), ctx, survival)
            # 3. the last prompt token on top: its logits give new token 0
            with stage("last_token"):
                prompt = last_token(model, batch, cache, attn_prefix, offset, ctx)
            cache = None
        for b in bound.activations:  # what prompt-phase patches overwrote (both flavours)
            mark_prompt_writes(b, survival, own)
        source_kv = sources = None  # spliced already; free the source caches before decoding
        # 4. decode: one new token per forward, decode-phase interventions at every one
        logits, cache, attn, next_pos = prompt
        prompt = None
        state = decode.DecodeState(
            logits=logits,
            cache=cache,
            attn=attn,
            next_pos=next_pos,
            target_pos=torch.tensor(batch.lengths, device=device),
            keys=keys,
            generated=torch.full((len(rows), how.max_new), fill, dtype=torch.long, device=device),
            finished=torch.zeros(len(rows), dtype=torch.bool, device=device),
            mass=mass,
            masks=masks,
            logits_out=(
                torch.zeros(len(rows), how.max_new, logits.shape[-1], dtype=torch.float32, device=device)
                if how.logits
                else None
            ),
        )
        if forced is not None:
            state.forced, state.forced_len = _forced(forced, rows, how.max_new, device)
        if logprobs or forced is not None:
            state.logprob = torch.full((len(rows), how.max_new), float("nan"), dtype=torch.float64, device=device)
        logits = cache = None
        with stage("decode"):
            path = decode.run(model.hf, ctx, how.sampler, state, how.max_new, how.stop_at_eos, eos, fill)
            generated = state.generated[: rows.n_real].cpu().tolist()
    tokens, reasons = _cut_at_eos(generated, eos if how.stop_at_eos else None)
    if forced is not None:  # a forced row stops after its forced tokens: cut there (an EOS among them is kept)
        for b, i in enumerate(rows.examples[: rows.n_real]):
            if forced[i] is not None:
                tokens[b], reasons[b] = generated[b][: len(forced[i])], "forced"
    masses = {n: m[: rows.n_real].cpu().numpy() for n, m in mass.items()}
    lps = None
    if state.logprob is not None:
        table = state.logprob[: rows.n_real].cpu().numpy()
        lps = [table[b, : len(t)] for b, t in enumerate(tokens)]
    logits = state.logits_out[: rows.n_real].cpu() if state.logits_out is not None else None
    survived = [survival.kept(b) for b in range(rows.n_real)]
    return BatchOutput(tokens, reasons, masses, bound.audit, path, lps, logits, survived)


def _forced(forced: list, rows: BatchRows, max_new: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, max_new]`` forced token per row and step (-1: sampled) and ``[B]`` forced lengths (max_new: none)."""
    table = torch.full((len(rows), max_new), -1, dtype=torch.long)
    length = torch.full((len(rows),), max_new, dtype=torch.long)
    for b, i in enumerate(rows.examples[: rows.n_real]):
        if forced[i] is not None:
            table[b, : len(forced[i])] = torch.tensor(forced[i], dtype=torch.long)
            length[b] = len(forced[i])
    return table.to(device), length.to(device)


def prefix(model, batch, rows: BatchRows, bound, source_kv, ctx, survival=None):
    """Step 2: the prefix cache of every row, spliced; returns ``(cache, its attention mask, position offset)``.

    A 1-token target has an empty prefix: nothing to splice into (audited as
    never fired), alone or batched with longer targets alike. A ``prepend``
    splice lengthens the cache and shifts the target's positions by ``offset``.
    """
    device = model.device
    ids, attn, pos = batch.input_ids, batch.attention_mask, batch.position_ids
    cache, offset = None, torch.zeros(len(rows), dtype=torch.long, device=device)
    attn_prefix = attn[:, :-1]
    ctx.phase = "prompt"
    if batch.width > 1:
        ctx.positions, ctx.valid = pos[:, :-1], attn_prefix.bool()
        with stage("target_prefix"):
            cache = _prefix_cache(
                model.hf, ids[:, :-1], attn_prefix, pos[:, :-1], rows.targets, not bound.acts_at_prompt
            )
        prefix_len = [n - 1 for n in batch.lengths]
        with stage("splice"):
            grow = []  # prepend and insert: one rebuild of the cache for all of them, after the others
            for splice, held, counters in bound.splices:
                if splice.align in LENGTHENING:
                    grow.append((splice, held, counters))
                    continue
                apply_splice(
                    model,
                    cache,
                    splice,
                    held,
                    source_kv,
                    prefix_len,
                    "corrected",
                    counters,
                    self_rows=bound.self_rows,
                    survival=survival,
                )
            if grow:
                attn_prefix, offset = apply_lengthening(
                    model, cache, grow, source_kv, prefix_len, rows.target_spans, rows.source_spans
                )
    return cache, attn_prefix, offset


def last_token(model, batch, cache, attn_prefix, offset, ctx):
    """Step 3: the last prompt token on top of the prefix cache; returns
    ``(logits [B, V], cache, attention mask, model position of the first token fed back)``."""
    hf = model.hf
    ids, attn, pos = batch.input_ids, batch.attention_mask, batch.position_ids
    ctx.positions, ctx.valid = pos[:, -1:], attn[:, -1:].bool()
    attn = torch.cat([attn_prefix, attn[:, -1:]], dim=1)
    model_pos = pos[:, -1:] + offset[:, None]
    out = hf(
        input_ids=ids[:, -1:], attention_mask=attn, position_ids=model_pos, use_cache=True, **cache_kwargs(hf, cache)
    )
    return out.logits[:, -1], output_cache(out), attn, model_pos[:, 0] + 1


def _prefix_cache(hf, ids, attn, pos, targets, dedupe: bool):
    """The prompt prefixes' cache. Rows sharing a target (one pair under several conditions) are
    computed once and copied, when no intervention acts at the prompt phase (``dedupe``): the
    forward is then the same for every such row."""
    uniq, inverse = distinct(targets) if dedupe else (None, None)
    if uniq is None or len(uniq) == len(targets):
        return output_cache(
            hf(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **last_logits_kwargs(hf))
        )
    first = torch.tensor(uniq, dtype=torch.long, device=ids.device)
    out = hf(
        input_ids=ids[first],
        attention_mask=attn[first],
        position_ids=pos[first],
        use_cache=True,
        **last_logits_kwargs(hf),
    )
    cache = output_cache(out)
    rows = torch.tensor(inverse, dtype=torch.long, device=ids.device)
    for layer in range(n_cache_layers(cache)):
        k, v = get_kv(cache, layer)
        set_kv(cache, layer, k.index_select(0, rows.to(k.device)), v.index_select(0, rows.to(v.device)))
    return cache


def _logit_masks(logit_sets: dict, examples: list[int], vocab: int, device) -> dict[str, torch.Tensor]:
    """name -> ``[B, V]`` True on the ids whose log-probability mass is recorded for each row."""
    masks = {}
    for name, per_example in logit_sets.items():
        m = torch.zeros(len(examples), vocab, dtype=torch.bool, device=device)
        for b, i in enumerate(examples):
            m[b, per_example[i]] = True
        masks[name] = m
    return masks


def _cut_at_eos(generated: list[list[int]], eos) -> tuple[list[list[int]], list[str]]:
    """Each row's tokens up to its first ``eos`` (None: no stopping), and why it stopped."""
    tokens, reasons = [], []
    for row in generated:
        if eos is not None and eos in row:
            tokens.append(row[: row.index(eos)])
            reasons.append("eos")
        else:
            tokens.append(row)
            reasons.append("length")
    return tokens, reasons
