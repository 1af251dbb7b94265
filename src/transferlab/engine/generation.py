"""Batched generation under a plan: the engine.

``generate(model, targets, sources=..., plan=...)`` runs every example's own
plan with its own source, many examples per batch (left-padded, sorted by
length), and returns a :class:`Generation` with the texts, the token ids, why
each example stopped, and the audit of every intervention.

The loop, corrected flavour (default):

1. capture the batch's sources (one forward: every hook point the plans read,
   plus the KV cache if any plan splices);
2. process each target's prefix (all tokens but the last) with prompt-phase
   interventions in place; apply KV splices to that prefix cache;
3. process the last prompt token on top of it; its logits give new token 0;
4. feed each new token once (decode phase) until ``max_new_tokens`` tokens
   exist or every example has ended; decode-phase interventions act at every
   such forward, i.e. on new tokens 0 .. n-2 (the last sampled token is never
   fed).

Seed flavour reproduces the seed's code: the whole prompt is processed, KV
splices use the seed's rule, and every example whose plan is not empty then
re-feeds its last prompt token as the first decode step (its first new token
comes from that second pass). Examples with an empty plan take their first
token from the prompt's own forward, as the seed's baselines (``model.generate``)
did. Activation patches follow the seed's patcher (see :mod:`.interventions.binding`).

Everything about an example -- its tokens, its sampling stream, its noise --
depends only on that example, never on the batch it shares.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from .. import rng
from ..hooks import hooked
from ..interventions.audit import Counters, audit_rows, audit_table, never_fired
from ..interventions.binding import BoundActivation, SourceBatch
from ..interventions.context import StepContext
from ..interventions.plan import Plan, as_plan
from ..interventions.splice import SourceKV, apply_prepend, apply_splice
from ..interventions.types import Intervention, InterventionError, KVSplice, Patch
from ..models.cache import cache_kwargs, get_kv, last_logits_kwargs, n_cache_layers, output_cache, set_kv
from ..models.context import check_generation
from ..sites import HookPoint
from . import decode
from .batching import encode, left_pad, pad_id_of
from .capture import Activations, forward_capture
from .sampling import Sampler

FLAVOURS = ("corrected", "seed")


@dataclass
class Generation:
    """What ``generate`` returns, in the order the targets were given."""

    texts: list[str]
    token_ids: list[list[int]]
    finish_reasons: list[str]  # "eos" or "length"
    audit: pd.DataFrame
    example_ids: list
    prompt_lengths: list[int]
    flavour: str
    logmass: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def never_fired(self) -> pd.DataFrame:
        return never_fired(self.audit)


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


def _per_example(value, n: int, what: str) -> list:
    if value is None or isinstance(value, (str, Plan)) or not isinstance(value, (list, tuple)):
        return [value] * n
    if len(value) != n:
        raise ValueError(f"{what}: got {len(value)} for {n} targets; give one per target or a single one for all")
    return list(value)


def _resolve(model, inter):
    if isinstance(inter, KVSplice):
        return inter
    return replace(inter, layer=model.layer(inter.layer))


def tokens_per_example(tgt_ids, src_ids, max_new_tokens: int) -> int:
    """Cache slots one example needs: its prompt and new tokens, plus half its source
    (source caches live only until the splice, and pairs share them across conditions)."""
    longest_src = max((len(x) for x in src_ids if x is not None), default=0)
    return max(len(t) for t in tgt_ids) + max_new_tokens + longest_src // 2


def kv_bytes_per_token(model) -> int:
    """Bytes of KV cache one token occupies across all layers."""
    ad = model.adapter
    return 2 * ad.n_layers * ad.n_kv_heads * ad.head_dim * torch.finfo(model.dtype).bits // 8


def auto_batch_size(model, n: int, tokens_per_example: int = 512, headroom: float = 0.8) -> int:
    """Examples per batch: 64 on the CPU; on a GPU, from its free memory.

    On a GPU each example holds its KV cache (target, source and new tokens),
    a few vocabulary-sized rows for sampling, and a share of prefill
    activations. Batches are then evened out (1,200 examples at a cap of 700
    run as 2 x 600, not 700 + 500).
    """
    if model.device.type != "cuda":
        return min(n, 64)
    free, _ = torch.cuda.mem_get_info(model.device)
    cfg = model.hf.config
    per_example = (
        kv_bytes_per_token(model) * tokens_per_example
        + cfg.vocab_size * 24
        + 64 * getattr(cfg, "intermediate_size", 4 * cfg.hidden_size) * 2
    )
    cap = max(1, int(free * headroom // per_example))
    n_batches = -(-n // cap)
    return max(1, -(-n // n_batches))


def generate(
    model,
    targets,
    *,
    sources=None,
    plan=None,
    max_new_tokens: int = 150,
    temperature: float = 0.8,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    seed: int = 0,
    stop_at_eos: bool = True,
    batch_size: int | None = None,
    flavour: str = "corrected",
    example_ids: list | None = None,
    streams: list | None = None,
    record_logits: dict | None = None,
    progress: bool = False,
) -> Generation:
    """Generate continuations of ``targets`` under ``plan`` (see module docstring).

    ``plan`` and ``sources`` are either one for all targets or a list with one
    per target (``None`` entries allowed where the plan needs no source).
    ``example_ids`` name the examples in the audit and, unless ``streams``
    is given, key their random streams (default: the index). ``streams``
    keys the sampling and noise streams separately: examples given the same
    stream draw the same random numbers (an experiment gives every condition
    of a pair one stream, so paired differences carry no extra sampling noise).
    ``record_logits`` maps a name to token ids (one list for all, or one list
    per example); ``Generation.logmass[name]`` then holds, per example and
    step, the log-probability mass the tempered next-token distribution puts
    on those ids (NaN after the example ended).
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}; got {flavour!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    if isinstance(targets, str) or (isinstance(targets, (list, tuple)) and targets and isinstance(targets[0], int)):
        targets = [targets]
    targets = list(targets)
    n = len(targets)
    if n == 0:
        raise ValueError("no targets given")
    if isinstance(plan, (list, tuple)) and plan and all(isinstance(x, (Intervention, dict)) for x in plan):
        plan = as_plan(plan)  # a list of interventions (or their dicts) is ONE plan, not one per target
    parsed: dict[str, Plan] = {}  # plan text -> Plan: an experiment's rows repeat a few plans many times

    def plan_of(p) -> Plan:
        if not isinstance(p, str):
            return as_plan(p)
        if p not in parsed:
            parsed[p] = as_plan(p)
        return parsed[p]

    plans = [plan_of(p) for p in _per_example(plan, n, "plan")]
    precomputed = None
    if isinstance(sources, Activations):
        precomputed = _check_precomputed(model, sources, n, plans)
        sources = list(sources.prompts)
    srcs = _per_example(sources, n, "sources")
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
    ids = example_ids if example_ids is not None else list(range(n))
    if len(ids) != n:
        raise ValueError(f"example_ids: got {len(ids)} for {n} targets")
    stream_ids = streams if streams is not None else ids
    if len(stream_ids) != n:
        raise ValueError(f"streams: got {len(stream_ids)} for {n} targets")
    keys = rng.combine(seed, torch.tensor([rng.example_key(x) for x in stream_ids], dtype=torch.long))
    sampler = Sampler(temperature=temperature, top_p=top_p, top_k=top_k, greedy=greedy)
    tgt_ids = encode(model.tokenizer, targets)
    src_ids = [encode(model.tokenizer, [s])[0] if s is not None else None for s in srcs]
    check_generation(model, tgt_ids, src_ids, plans, max_new_tokens, flavour, targets)  # refused, not truncated
    per_row_sets = _logit_sets(record_logits, n, model)
    order = sorted(range(n), key=lambda i: (len(tgt_ids[i]), len(src_ids[i] or ())))
    bs = batch_size or auto_batch_size(model, n, tokens_per_example(tgt_ids, src_ids, max_new_tokens))
    out_tokens: list = [None] * n
    out_reason: list = [None] * n
    out_mass = {name: np.full((n, max_new_tokens), np.nan) for name in per_row_sets}
    audit: list[dict] = []
    chunks = [order[i : i + bs] for i in range(0, n, bs)]
    bar = _progress(progress, len(chunks))
    for chunk in chunks:
        toks, reasons, masses, rows = _generate_batch(
            model,
            chunk,
            tgt_ids,
            src_ids,
            plans,
            keys,
            sampler,
            max_new_tokens,
            stop_at_eos,
            flavour,
            per_row_sets,
            ids,
            precomputed,
        )
        for b, i in enumerate(chunk):
            out_tokens[i], out_reason[i] = toks[b], reasons[b]
            for name in out_mass:
                out_mass[name][i] = masses[name][b]
        audit.extend(rows)
        if bar is not None:
            bar.advance(bar.task_ids[0])
    if bar is not None:
        bar.stop()
    texts = [model.tokenizer.decode(t, skip_special_tokens=True) for t in out_tokens]
    return Generation(
        texts, out_tokens, out_reason, audit_table(audit), list(ids), [len(t) for t in tgt_ids], flavour, out_mass
    )


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from rich.progress import Progress

    bar = Progress(transient=True)
    bar.add_task("generating", total=total)
    bar.start()
    return bar


def _logit_sets(record, n: int, model) -> dict[str, list[list[int]]]:
    if not record:
        return {}
    out = {}
    vocab = int(model.hf.config.vocab_size)
    for name, value in record.items():
        value = list(value)
        per_row = value if value and isinstance(value[0], (list, tuple)) else [value] * n
        if len(per_row) != n:
            raise ValueError(f"record_logits[{name!r}]: one id list for all, or one per target ({n})")
        for ids in per_row:
            bad = [i for i in ids if not 0 <= int(i) < vocab]
            if bad:
                raise ValueError(
                    f"record_logits[{name!r}]: token ids {bad[:5]} outside the vocabulary (0..{vocab - 1})"
                )
        out[name] = [list(map(int, r)) for r in per_row]
    return out


def _check_precomputed(model, acts: Activations, n: int, plans) -> Activations:
    """Sources given as captured :class:`Activations`: one per target, same vocabulary, no window."""
    from .capture import tokenizer_fingerprint

    if len(acts) != n:
        raise ValueError(f"sources: {len(acts)} captured prompts for {n} targets; capture one source per target")
    mine = tokenizer_fingerprint(model.tokenizer)
    if acts.tokenizer_fingerprint is not None and acts.tokenizer_fingerprint != mine:
        raise InterventionError(
            f"mismatched tokenizers: the sources were captured with a tokenizer whose vocabulary "
            f"({acts.tokenizer_fingerprint}) differs from this model's ({mine}); positions and token ids "
            "would not line up. Capture the sources with the same model (or tokenizer) you generate with."
        )
    if acts.window is not None:
        raise InterventionError(f"sources were captured with window={acts.window}; capture them without a window")
    if acts.n_layers and acts.n_layers != model.n_layers:
        raise InterventionError(f"sources come from a model with {acts.n_layers} layers; this one has {model.n_layers}")
    return acts


def _precomputed_sources(model, acts: Activations, chunk, n_shadow, points, want_kv, flavour):
    """Left-pad per-prompt captured activations into a :class:`SourceBatch` (and :class:`SourceKV`)."""
    rows = list(chunk)
    lengths = [len(acts.token_ids[i]) for i in rows] + [1] * n_shadow
    width = max(lengths)
    device = model.device
    store = {}
    for p in points:
        name = str(p)
        if name not in acts.points:
            raise InterventionError(
                f"the plan reads {name}, which the given sources did not capture ({', '.join(acts.points) or 'none'})"
            )
        first = acts.points[name][rows[0]]
        t = torch.zeros(len(lengths), width, first.shape[-1], dtype=first.dtype, device=device)
        for b, i in enumerate(rows):
            x = acts.points[name][i]
            t[b, width - x.shape[0] :] = x.to(device)
        store[name] = t
    batch = SourceBatch(
        store,
        lengths,
        [acts.has_bos[i] for i in rows] + [False] * n_shadow,
        [True] * len(rows) + [False] * n_shadow,
        [None] * len(lengths),
    )
    kv = None
    if want_kv:
        if acts.kv is None:
            raise InterventionError("the plan splices the KV cache, but the given sources were captured without 'kv'")
        n_layers = len(acts.kv[rows[0]])
        ks, vs = [], []
        for layer in range(n_layers):
            k0 = acts.kv[rows[0]][layer][0]
            K = torch.zeros(len(lengths), k0.shape[0], width, k0.shape[-1], dtype=k0.dtype, device=device)
            V = torch.zeros_like(K)
            for b, i in enumerate(rows):
                k, v = acts.kv[i][layer]
                K[b, :, width - k.shape[1] :] = k.to(device)
                V[b, :, width - v.shape[1] :] = v.to(device)
            ks.append(K)
            vs.append(V)
        if flavour == "seed":
            kv = SourceKV(ks, vs, list(lengths), width)
        else:
            kv = SourceKV(ks, vs, [L - 1 for L in lengths], width - 1)
    return batch, kv


def _capture_sources(model, row_tgt, row_src, points, want_kv, flavour):
    """One forward over the batch's distinct sources.

    A source shared by several rows (one pair under several conditions) is
    captured once, and rows without a source capture nothing; rows index into
    the distinct captures (a row without a source points at capture 0 and has
    length 0: no intervention reads it, since none of its plan needs a source).
    """
    first, inv = _distinct(row_src)
    uniq = [row_src[b] for b in first]
    if not uniq:  # nothing reads a source in this batch
        uniq = [row_tgt[0]]
    sb, store, ks, vs = _capture_bucketed(model, uniq, points, want_kv)
    rows = torch.tensor([max(j, 0) for j in inv], dtype=torch.long, device=model.device)
    store = {k: v.index_select(0, rows.to(v.device)) for k, v in store.items()}
    lengths = [sb.lengths[j] if j >= 0 else 0 for j in inv]
    acts = SourceBatch(
        store, lengths, [sb.has_bos[j] if j >= 0 else False for j in inv], [j >= 0 for j in inv], [None] * len(inv)
    )
    kv = None
    if want_kv:
        if flavour == "seed":
            kv = SourceKV(ks, vs, list(lengths), sb.width, rows)
        else:
            kv = SourceKV(ks, vs, [max(L - 1, 0) for L in lengths], sb.width - 1, rows)
    return acts, kv


BUCKET_ROWS = 64  # sources per capture forward, at least, before a batch's sources are split by length


def _capture_bucketed(model, seqs, points, want_kv, buckets: int | None = None):
    """Capture distinct sources in a few forwards of similar lengths, merged into one left-padded batch.

    One forward pads every source to the longest; with many sources of
    varied lengths, up to 4 forwards over length-sorted buckets (at least
    ``BUCKET_ROWS`` sources each) compute far fewer padding positions. The
    merged tensors are left-padded to the longest source like a single
    forward's (pad slots hold zeros; nothing reads them).
    """
    tok = model.tokenizer
    sb = left_pad(seqs, pad_id_of(tok), tok.bos_token_id, device=model.device)
    k = min(4, len(seqs) // BUCKET_ROWS) if buckets is None else buckets
    if k < 2:
        store, cache, _ = forward_capture(model, sb, points, want_kv)
        ks = vs = None
        if want_kv:
            ks = [get_kv(cache, layer)[0] for layer in range(n_cache_layers(cache))]
            vs = [get_kv(cache, layer)[1] for layer in range(n_cache_layers(cache))]
        return sb, store, ks, vs
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    W = sb.width
    store: dict = {}
    ks: list = []
    vs: list = []
    for part in np.array_split(np.asarray(order), k):
        part = part.tolist()
        sub = left_pad([seqs[i] for i in part], pad_id_of(tok), tok.bos_token_id, device=model.device)
        got, cache, _ = forward_capture(model, sub, points, want_kv)
        idx = torch.tensor(part, dtype=torch.long, device=model.device)
        w = sub.width
        for name, t in got.items():
            if name not in store:
                store[name] = t.new_zeros(len(seqs), W, t.shape[-1])
            store[name][idx.to(t.device), W - w :] = t
        if want_kv:
            if any(get_kv(cache, layer)[0].shape[2] != w for layer in range(n_cache_layers(cache))):
                # a sliding-window layer kept fewer slots than the bucket is wide: capture in one forward,
                # whose caches the splice checks and refuses or accepts as usual
                del got, cache
                return _capture_bucketed(model, seqs, points, want_kv, buckets=1)
            for layer in range(n_cache_layers(cache)):
                kl, vl = get_kv(cache, layer)
                if len(ks) <= layer:
                    ks.append(kl.new_zeros(len(seqs), kl.shape[1], W, kl.shape[-1]))
                    vs.append(vl.new_zeros(len(seqs), vl.shape[1], W, vl.shape[-1]))
                ks[layer][idx.to(kl.device), :, W - w :] = kl
                vs[layer][idx.to(vl.device), :, W - w :] = vl
        del got, cache
    return sb, store, ks, vs


def _prefix_cache(hf, ids, attn, pos, row_tgt, dedupe: bool):
    """The prompt prefixes' cache. Rows sharing a target (one pair under several conditions) are
    computed once and copied, when no intervention acts at the prompt phase (``dedupe``): the
    forward is then the same for every such row."""
    uniq, inverse = _distinct(row_tgt) if dedupe else (None, None)
    if uniq is None or len(uniq) == len(row_tgt):
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


def _distinct(seqs) -> tuple[list[int], list[int]]:
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


def _generate_batch(
    model,
    chunk,
    tgt_ids,
    src_ids,
    plans,
    all_keys,
    sampler,
    max_new,
    stop_at_eos,
    flavour,
    logit_sets,
    example_ids,
    precomputed=None,
):
    hf, tok, device = model.hf, model.tokenizer, model.device
    # lockstep patches: the source generates alongside as a shadow row (empty plan, same stream)
    lock = [b for b, i in enumerate(chunk) if any(getattr(x, "decode", None) == "lockstep" for x in plans[i])]
    n_real = len(chunk)
    B = n_real + len(lock)
    partner = torch.full((B,), -1, dtype=torch.long)
    for j, b in enumerate(lock):
        partner[b] = n_real + j
    row_tgt = [tgt_ids[i] for i in chunk] + [src_ids[chunk[b]] for b in lock]
    row_src = [src_ids[i] for i in chunk] + [None] * len(lock)
    row_plan = [plans[i] for i in chunk] + [Plan()] * len(lock)
    batch = left_pad(row_tgt, pad_id_of(tok), tok.bos_token_id, device=device)
    keys = torch.cat([all_keys[chunk], all_keys[[chunk[b] for b in lock]]]).to(device)
    # distinct (plan position, intervention) pairs of the batch, each with the rows whose plan holds it
    # there. Keying by position keeps a repeated intervention (two "add"s) and, applied in position
    # order, gives every row its own plan's order at a shared hook point whatever the other rows hold.
    entries: dict[tuple, dict] = {}
    plan_keys: dict[int, list] = {}  # id(plan) -> [(entry key, resolved intervention)], computed once per plan
    for b in range(B):
        keyed = plan_keys.get(id(row_plan[b]))
        if keyed is None:
            keyed = []
            for j, inter in enumerate(row_plan[b]):
                res = _resolve(model, inter)
                keyed.append(((j, json.dumps(res.to_dict(), sort_keys=True, default=str)), res))
            plan_keys[id(row_plan[b])] = keyed
        for k, res in keyed:
            e = entries.setdefault(k, {"inter": res, "rows": torch.zeros(B, dtype=torch.bool), "index": k[0]})
            e["rows"][b] = True
    entries = dict(sorted(entries.items(), key=lambda kv: kv[0][0]))
    splices = [e for e in entries.values() if isinstance(e["inter"], KVSplice)]
    acts_e = [e for e in entries.values() if not isinstance(e["inter"], KVSplice)]
    points = sorted({HookPoint(e["inter"].site, e["inter"].layer) for e in acts_e if e["inter"].needs_source})
    sources, source_kv = (None, None)
    if points or splices:
        if precomputed is not None:
            sources, source_kv = _precomputed_sources(
                model, precomputed, chunk, len(lock), points, bool(splices), flavour
            )
        else:
            sources, source_kv = _capture_sources(model, row_tgt, row_src, points, bool(splices), flavour)
    ctx = StepContext(flavour=flavour)
    bound, hooks, audit_bound = [], [], []
    for e in acts_e:
        inter = e["inter"]
        point = HookPoint(inter.site, inter.layer)
        bi = BoundActivation(
            model,
            inter,
            point,
            e["rows"].to(device),
            ctx,
            batch.lengths,
            batch.has_bos,
            sources,
            keys,
            flavour,
            partner=partner.to(device),
        )
        bound.append(bi)
        hooks.append((model.adapter.handle(point), bi))
        audit_bound.append((e["index"], inter, str(point), bi.counters, e["rows"]))
    splice_counters = []
    for e in splices:
        c = Counters(B, device)
        splice_counters.append(c)
        audit_bound.append((e["index"], e["inter"], "kv", c, e["rows"]))
    refeed = torch.tensor([flavour == "seed" and len(p) > 0 for p in row_plan], device=device)
    names = list(logit_sets)
    masks = {}
    vocab = int(hf.config.vocab_size)
    for name in names:
        m = torch.zeros(B, vocab, dtype=torch.bool, device=device)
        for b, i in enumerate(chunk + [chunk[x] for x in lock]):
            m[b, logit_sets[name][i]] = True
        masks[name] = m
    mass = {name: torch.full((B, max_new), float("nan"), dtype=torch.float64, device=device) for name in names}
    ids, attn, pos = batch.input_ids, batch.attention_mask, batch.position_ids
    lengths = torch.tensor(batch.lengths, device=device)
    with torch.inference_mode(), hooked(hooks):
        ctx.phase = "prompt"
        if flavour == "corrected":
            # a 1-token target has an empty prefix: nothing to splice into (audited as never fired),
            # alone or batched with longer targets alike
            cache, offset = None, torch.zeros(B, dtype=torch.long, device=device)
            attn_prefix = attn[:, :-1]
            if batch.width > 1:
                ctx.positions, ctx.valid = pos[:, :-1], attn_prefix.bool()
                acts_at_prompt = any(b.acts_prompt for b in bound)
                cache = _prefix_cache(hf, ids[:, :-1], attn_prefix, pos[:, :-1], row_tgt, dedupe=not acts_at_prompt)
                prefix_len = [L - 1 for L in batch.lengths]
                for e, c in zip(splices, splice_counters):
                    rows = e["rows"].to(device)
                    if e["inter"].align == "prepend":
                        attn_prefix, offset = apply_prepend(model, cache, e["inter"], rows, source_kv, prefix_len, c)
                    else:
                        apply_splice(model, cache, e["inter"], rows, source_kv, prefix_len, flavour, c)
            ctx.positions, ctx.valid = pos[:, -1:], attn[:, -1:].bool()
            attn = torch.cat([attn_prefix, attn[:, -1:]], dim=1)
            model_pos = pos[:, -1:] + offset[:, None]
            out = hf(
                input_ids=ids[:, -1:],
                attention_mask=attn,
                position_ids=model_pos,
                use_cache=True,
                **cache_kwargs(hf, cache),
            )
            cache = output_cache(out)
            logits = out.logits[:, -1]
            next_pos = model_pos[:, 0] + 1
        else:
            ctx.positions, ctx.valid = pos, attn.bool()
            out = hf(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **last_logits_kwargs(hf))
            cache = output_cache(out)
            logits = out.logits[:, -1]
            for e, c in zip(splices, splice_counters):
                apply_splice(model, cache, e["inter"], e["rows"].to(device), source_kv, batch.lengths, flavour, c)
            next_pos = lengths.clone()
            if bool(refeed.any()):
                # the seed's loop feeds generated_ids[:, -1:] first: the last prompt token, again
                ctx.phase, ctx.step, ctx.seed_refeed = "decode", -1, True
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
                ctx.seed_refeed = False
        source_kv = sources = None  # spliced already; free the source cache before decoding
        eos = tok.eos_token_id
        fill = eos if eos is not None else pad_id_of(tok)
        state = decode.DecodeState(
            logits=logits,
            cache=cache,
            attn=attn,
            next_pos=next_pos,
            target_pos=lengths,
            keys=keys,
            generated=torch.full((B, max_new), fill, dtype=torch.long, device=device),
            finished=torch.zeros(B, dtype=torch.bool, device=device),
            mass=mass,
            masks=masks,
        )
        logits = cache = out = None
        decode.run(hf, ctx, sampler, state, max_new, stop_at_eos, eos, fill)
        generated = state.generated
    gen = generated[:n_real].cpu().tolist()
    toks, reasons = [], []
    for row in gen:
        if stop_at_eos and eos is not None and eos in row:
            toks.append(row[: row.index(eos)])
            reasons.append("eos")
        else:
            toks.append(row)
            reasons.append("length")
    masses = {name: mass[name][:n_real].cpu().numpy() for name in names}
    return toks, reasons, masses, audit_rows(example_ids, chunk, audit_bound)
