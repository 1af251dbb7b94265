"""Step 1 of generation: the sources a batch's plans read, captured once per distinct source.

What a batch needs from its sources: the activations at every hook point an
activation intervention reads (a :class:`SourceBatch`, row-aligned with the
batch), and, if any plan splices, their KV caches (a :class:`SourceKV` of each
whole source; the corrected flavour splices the source *prefix*, see
:func:`prefix_kv`). Sources come either as prompts, captured here, or as
:class:`~transferlab.engine.capture.Activations` captured beforehand (one per
target), which are left-padded into the same shapes.

Shapes follow the glossary of :mod:`transferlab.interventions`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..interventions.binding import SourceBatch
from ..interventions.splice import SourceKV
from ..interventions.types import InterventionError
from ..models.cache import get_kv, n_cache_layers
from .batching import left_pad, pad_id_of
from .capture import Activations, forward_capture, tokenizer_fingerprint
from .rows import BatchRows, distinct

BUCKET_ROWS = 64  # sources per capture forward, at least, before a batch's sources are split by length


def batch_sources(model, rows: BatchRows, points, want_kv: bool, precomputed: Activations | None = None):
    """``(SourceBatch, SourceKV of the whole sources or None)`` for the batch's rows."""
    if precomputed is not None:
        return precomputed_sources(model, precomputed, rows.examples[: rows.n_real], rows.n_shadow, points, want_kv)
    return capture_sources(model, rows.targets, rows.sources, points, want_kv)


def prefix_kv(kv: SourceKV | None) -> SourceKV | None:
    """The sources' prefix caches (every token but the last): what the corrected flavour splices."""
    if kv is None:
        return None
    return SourceKV(kv.keys, kv.values, [max(n - 1, 0) for n in kv.lengths], kv.end - 1, kv.rows)


def capture_sources(model, row_tgt, row_src, points, want_kv: bool):
    """One forward (or a few, by length) over the batch's distinct sources.

    A source shared by several rows (one pair under several conditions) is
    captured once, and rows without a source capture nothing; rows index into
    the distinct captures (a row without a source points at capture 0 and has
    length 0: no intervention reads it, since none of its plan needs a source).
    """
    first, inv = distinct(row_src)
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
    kv = SourceKV(ks, vs, list(lengths), sb.width, rows) if want_kv else None
    return acts, kv


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
    positions = sb.width  # S: the merged tensors are left-padded to the longest source
    store: dict = {}
    ks: list = []
    vs: list = []
    for part in np.array_split(np.asarray(order), k):
        part = part.tolist()
        sub = left_pad([seqs[i] for i in part], pad_id_of(tok), tok.bos_token_id, device=model.device)
        got, cache, _ = forward_capture(model, sub, points, want_kv)
        idx = torch.tensor(part, dtype=torch.long, device=model.device)
        sub_positions = sub.width
        for name, t in got.items():
            if name not in store:
                store[name] = t.new_zeros(len(seqs), positions, t.shape[-1])
            store[name][idx.to(t.device), positions - sub_positions :] = t
        if want_kv:
            if any(get_kv(cache, layer)[0].shape[2] != sub_positions for layer in range(n_cache_layers(cache))):
                # a sliding-window layer kept fewer slots than the bucket is wide: capture in one forward,
                # whose caches the splice checks and refuses or accepts as usual
                del got, cache
                return _capture_bucketed(model, seqs, points, want_kv, buckets=1)
            for layer in range(n_cache_layers(cache)):
                kl, vl = get_kv(cache, layer)
                if len(ks) <= layer:
                    ks.append(kl.new_zeros(len(seqs), kl.shape[1], positions, kl.shape[-1]))
                    vs.append(vl.new_zeros(len(seqs), vl.shape[1], positions, vl.shape[-1]))
                ks[layer][idx.to(kl.device), :, positions - sub_positions :] = kl
                vs[layer][idx.to(vl.device), :, positions - sub_positions :] = vl
        del got, cache
    return sb, store, ks, vs


def check_precomputed(model, acts: Activations, n: int, flavour: str = "corrected") -> Activations:
    """Sources given as captured :class:`Activations`: one per target, same vocabulary. A capture taken with
    a window serves where the plan reads only its window (checked per intervention when it is bound)."""
    if len(acts) != n:
        raise ValueError(f"sources: {len(acts)} captured prompts for {n} targets; capture one source per target")
    mine = tokenizer_fingerprint(model.tokenizer)
    if acts.tokenizer_fingerprint is not None and acts.tokenizer_fingerprint != mine:
        raise InterventionError(
            f"mismatched tokenizers: the sources were captured with a tokenizer whose vocabulary "
            f"({acts.tokenizer_fingerprint}) differs from this model's ({mine}); positions and token ids "
            "would not line up. Capture the sources with the same model (or tokenizer) you generate with."
        )
    if acts.window is not None and flavour == "seed":
        raise InterventionError(
            f"sources were captured with window={acts.window}; the seed flavour patches whole calls' columns, "
            "so capture them without a window"
        )
    if acts.n_layers and acts.n_layers != model.n_layers:
        raise InterventionError(f"sources come from a model with {acts.n_layers} layers; this one has {model.n_layers}")
    return acts


def precomputed_sources(model, acts: Activations, examples, n_shadow: int, points, want_kv: bool):
    """Left-pad per-prompt captured activations of ``examples`` into a :class:`SourceBatch` (and a
    :class:`SourceKV` of the whole sources); shadow rows get an empty one-token source."""
    rows = list(examples)
    lengths = [len(acts.token_ids[i]) for i in rows] + [1] * n_shadow
    positions = max(lengths)  # S
    device = model.device
    store = {}
    for p in points:
        name = str(p)
        if name not in acts.points:
            raise InterventionError(
                f"the plan reads {name}, which the given sources did not capture ({', '.join(acts.points) or 'none'})"
            )
        first = acts.points[name][rows[0]]
        t = torch.zeros(len(lengths), positions, first.shape[-1], dtype=first.dtype, device=device)
        for b, i in enumerate(rows):
            x = acts.points[name][i]
            t[b, positions - x.shape[0] :] = x.to(device)
        store[name] = t
    first = [int(acts.positions[i][0]) if len(acts.positions[i]) else 0 for i in rows] + [0] * n_shadow
    batch = SourceBatch(
        store,
        lengths,
        [acts.has_bos[i] for i in rows] + [False] * n_shadow,
        [True] * len(rows) + [False] * n_shadow,
        [None] * len(lengths),
        first if acts.window is not None else None,
    )
    if not want_kv:
        return batch, None
    if acts.kv is None:
        raise InterventionError("the plan splices the KV cache, but the given sources were captured without 'kv'")
    if acts.window is not None:
        raise InterventionError(
            f"the plan splices the KV cache, which reads the sources' whole caches, but they were captured with "
            f"window={acts.window}; capture them without a window"
        )
    n_layers = len(acts.kv[rows[0]])
    ks, vs = [], []
    for layer in range(n_layers):
        k0 = acts.kv[rows[0]][layer][0]
        K = torch.zeros(len(lengths), k0.shape[0], positions, k0.shape[-1], dtype=k0.dtype, device=device)
        V = torch.zeros_like(K)
        for b, i in enumerate(rows):
            k, v = acts.kv[i][layer]
            K[b, :, positions - k.shape[1] :] = k.to(device)
            V[b, :, positions - v.shape[1] :] = v.to(device)
        ks.append(K)
        vs.append(V)
    return batch, SourceKV(ks, vs, list(lengths), positions)
