"""KV-cache splicing: writing a source's cached keys/values into a target's cache.

Corrected flavour (default)
    The target's prompt is processed in two calls: its prefix (every token but
    the last), then its last token. The splice acts between them, on the
    prefix cache, with the source's prefix cache (the source's tokens but its
    last). So the last target token is computed once, on top of the spliced
    cache, and the first new token comes from that forward. With equal lengths
    and the same last token, a whole-prefix splice reproduces the source's own
    run exactly.

Seed flavour
    The target's whole prompt is processed, then its cache's last
    ``n = min(T_target, T_source)`` slots are overwritten by the source's last
    n slots with keys left at their source rotations (``rope="keep"``,
    ``align="right"``), whatever the splice asked for, as the seed's code did.

Alignment (corrected): ``right`` -- the last n = min(P, S) slots of the target
prefix (P slots) get the source prefix's last n (S slots); ``left`` -- the
first n; ``range`` -- the same slots ``[a, b)`` of both; ``prepend`` -- the
whole source prefix goes before the target prefix, whose keys move S slots
later; ``insert`` -- the source's message slots go just before the target's
message, the target's head (BOS, template) stays and its message moves later
(:func:`apply_lengthening` says how it differs from prepend). ``window=W``
caps n at W (right: the source prefix's last W tokens; insert: the source
message's last W). Right, left and range splices may be restricted to some
layers (a list, or a third of the depth: :func:`splice_layers`); prepend and
insert lengthen every layer's cache. ``first="keep"`` (the default) leaves both
prefixes' first slots (BOS or a template's first token: the attention sink)
out of a right or left splice: n = min(P, S) - 1, and a left splice starts at
slot 1; ``first="splice"`` (plan text ``splicefirst``) lets it reach them.
With ``rope="reposition"`` every moved key is
re-rotated by (landing position - source position) (:mod:`.rope`); a key that
lands where it was (a zero shift) is left as it is, not rotated by zero.

Self-splices (the self-patch control: the source is the target itself, the
same token ids) read the source's slots from the target's own cache, not from
the source's capture: a capture runs the prompt in another batch, whose shape
(padding to another source's length, another batch size) makes bf16 kernels
round differently -- on an H100 in bf16 the captured cache of the same prompt
differed by change norms up to 12.8 and changed 3 of 6 greedy continuations
(``benchmarks/self_splice_gpu.py``). Read from the target, the slot written is
the slot read: bitwise the target's own, in every dtype and on every decode path.
A self-sourced activation patch likewise reads its prompt-phase values from
the target's own activation and, with ``decode="last"``, writes at decode the
target's own last prompt token's activation (``mean`` and ``cycle`` decode
values still come from the capture).

On a model split over devices each layer's cache lives on its layer's device;
source keys/values and the slot maps are moved to the device of the cache
layer they are written into (each map once per device; no-ops on one device).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..models.cache import get_kv, n_cache_layers, set_kv
from ..sites import resolve_layer
from .audit import Counters
from .rope import inverse_frequencies, rotate_keys
from .survival import Survival
from .types import BANDS, InterventionError, KVSplice


@dataclass
class SourceKV:
    """Source keys/values per layer, ``[B, H, S, hd]``, left-padded, row-aligned with targets."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    lengths: list[int]  # slots usable for splicing (the source prefix in corrected flavour)
    end: int  # column after the last usable slot (S - 1 in corrected flavour, S in seed)
    rows: torch.Tensor | None = None  # batch row -> row of keys/values (distinct sources captured once)

    def layer(self, layer: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one layer, one row per batch row (on ``device`` if given)."""
        k, v = self.keys[layer], self.values[layer]
        if self.rows is not None:
            rows = self.rows.to(k.device)
            k, v = k.index_select(0, rows), v.index_select(0, rows)
        if device is not None:
            k, v = k.to(device), v.to(device)
        return k, v

    def gather_slots(
        self, layer: int, index: torch.Tensor, device: torch.device, batch_rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, H, n, hd]`` keys/values where ``index[b, j]`` (``[B, n]``) names a source slot of batch row b
        (of batch row ``batch_rows[b]`` when given: a subset of the batch).

        Reads only the slots asked for (not each row's whole source cache).
        """
        k, v = self.keys[layer], self.values[layer]
        idx = index.clamp(min=0).to(k.device)
        if batch_rows is not None:
            sel = batch_rows.to(k.device)
            rows = self.rows.to(k.device).index_select(0, sel) if self.rows is not None else sel
        else:
            rows = self.rows.to(k.device) if self.rows is not None else torch.arange(idx.shape[0], device=k.device)
        r = rows[:, None].expand_as(idx)
        nk = k[r, :, idx].permute(0, 2, 1, 3)  # [B, n, H, hd] -> [B, H, n, hd]
        nv = v[r, :, idx].permute(0, 2, 1, 3)
        return nk.to(device), nv.to(device)


class _PerDevice:
    """Small per-splice tensors (slot maps), copied once to each device that needs them."""

    def __init__(self, **tensors: torch.Tensor):
        self._home = tensors
        self._copies: dict[torch.device, dict[str, torch.Tensor]] = {}

    def on(self, device: torch.device) -> dict[str, torch.Tensor]:
        got = self._copies.get(device)
        if got is None:
            got = self._copies[device] = {k: t.to(device) for k, t in self._home.items()}
        return got


def splice_layers(splice: KVSplice, n_layers: int) -> list[int]:
    """The cache layers a splice writes: all, a third of the depth (``floor(3 l / n_layers)`` = 0, 1, 2 for
    early, middle, late), or the listed ones."""
    if splice.layers == "all":
        return list(range(n_layers))
    if splice.layers in BANDS:
        band = BANDS.index(splice.layers)
        out = [layer for layer in range(n_layers) if (3 * layer) // n_layers == band]
        if not out:
            raise InterventionError(f"{splice.describe()}: a model with {n_layers} layers has no {splice.layers} third")
        return out
    out = sorted({resolve_layer(x, n_layers) for x in splice.layers})
    return out


def _slot_maps(
    splice: KVSplice, flavour: str, rows: list[bool], tgt_len: list[int], src_len: list[int], tgt_w: int, src_end: int
):
    """Per row: source column for each target column (-1 = untouched) and the position shift."""
    B = len(rows)
    index = np.full((B, tgt_w), -1, dtype=np.int64)
    delta = np.zeros(B, dtype=np.int64)
    count = np.zeros(B, dtype=np.int64)
    align = "right" if flavour == "seed" else splice.align
    cap = splice.window if splice.window is not None else 10**9
    for b in range(B):
        if not rows[b]:
            continue
        P, S = tgt_len[b], src_len[b]
        skip = int(flavour != "seed" and splice.first == "keep")  # leave both first slots out
        if align == "right":
            n = max(0, min(P - skip, S - skip, cap))
            t0, s0 = tgt_w - n, src_end - n
            delta[b] = P - S
        elif align == "left":
            n = max(0, min(P - skip, S - skip, cap))
            t0, s0 = tgt_w - P + skip, src_end - S + skip
        else:  # range
            a, z = splice.positions
            if z > min(P, S):
                raise InterventionError(
                    f"{splice.describe()} (example {b}): slots {a}-{z} run past the target prefix "
                    f"({P} slots) or the source prefix ({S} slots)"
                )
            n, t0, s0 = z - a, tgt_w - P + a, src_end - S + a
        if n > 0:
            index[b, t0 : t0 + n] = np.arange(s0, s0 + n)
        count[b] = n
    return torch.from_numpy(index), torch.from_numpy(delta), torch.from_numpy(count)


def _check_whole_prompt_cached(cache, source: SourceKV, layers: list[int]) -> None:
    """Refuse layers whose cache dropped positions (sliding-window attention shorter than the prompt)."""
    n = n_cache_layers(cache)
    full_t = max(get_kv(cache, i)[0].shape[2] for i in range(n))
    full_s = max(k.shape[2] for k in source.keys)
    for layer in layers:
        wt, ws = get_kv(cache, layer)[0].shape[2], source.keys[layer].shape[2]
        cut = [f"the target's cache keeps only {wt} of its {full_t} positions"] if wt != full_t else []
        cut += [f"the source's cache keeps only {ws} of its {full_s} positions"] if ws != full_s else []
        if cut:
            raise InterventionError(
                f"KV splice at layer {layer}: {' and '.join(cut)} (a sliding-window layer whose window is shorter "
                "than the prompt). Splicing needs every position cached: use shorter prompts, or splice only "
                "full-attention layers."
            )


def apply_splice(
    model,
    cache,
    splice: KVSplice,
    rows: torch.Tensor,
    source: SourceKV,
    tgt_len: list[int],
    flavour: str,
    counters: Counters,
    self_rows: list[bool] | None = None,
    survival: Survival | None = None,
) -> None:
    """Overwrite slots of ``cache`` in place (right/left/range alignment).

    ``self_rows[b]``: row b's source is its target itself (the same token ids). Such a row reads the
    source's slots from its own cache, not from the source's capture: the slot a self-splice writes is the
    one it reads (the same prompt, the same alignment), so it keeps its keys and values bitwise, whatever
    the dtype or the kernels (a second forward in another batch shape rounds differently in bf16). Its
    slots therefore count as kept in ``survival``; other rows mark the slots they overwrite.
    """
    layers = splice_layers(splice, n_cache_layers(cache))
    _check_whole_prompt_cached(cache, source, layers)
    k0, _ = get_kv(cache, layers[0])
    tgt_w = k0.shape[2]
    in_rows = rows.tolist()
    index, delta, count = _slot_maps(splice, flavour, in_rows, tgt_len, source.lengths, tgt_w, source.end)
    own = np.asarray(self_rows if self_rows is not None else [False] * len(in_rows), dtype=bool)
    if survival is not None:
        for b in np.flatnonzero((count.numpy() > 0) & ~own):
            cols = np.flatnonzero(index[b].numpy() >= 0)
            survival.mark(int(b), layers, cols - (tgt_w - tgt_len[b]))  # cache column -> target position
    device = counters.device  # the audit's device (the model's); each layer's cache may be elsewhere
    rows = rows.to(device)
    # only the rows whose plan holds this splice are read, rewritten and audited; a self row's slots stay
    sel = torch.from_numpy(np.flatnonzero(count.numpy() > 0))
    write = torch.from_numpy(~own)[sel]
    maps = _PerDevice(index=torch.where(write[:, None], index[sel], -1), delta=delta[sel], sel=sel)
    reposition = flavour != "seed" and splice.rope == "reposition"
    # each layer's own frequencies (Gemma-3's local and global bases differ), checked before any write
    inv = {layer: inverse_frequencies(model, layer) for layer in layers} if reposition else None
    sq = torch.zeros(index.shape[0], dtype=torch.float64, device=device)
    for layer in layers if len(sel) else []:
        k, v = get_kv(cache, layer)
        local = maps.on(k.device)
        nk, nv = source.gather_slots(layer, local["index"], k.device, batch_rows=local["sel"])
        nk, nv = nk.to(k.dtype), nv.to(v.dtype)
        if reposition:  # a zero shift is no rotation at all (not a rotation by 0 with its round-off)
            d = local["delta"]
            nk = torch.where((d != 0)[:, None, None, None], rotate_keys(nk, d[:, None, None], inv[layer]), nk)
        m = (local["index"] >= 0)[:, None, :, None]
        old_k, old_v = k.index_select(0, local["sel"]), v.index_select(0, local["sel"])
        new_k, new_v = torch.where(m, nk, old_k), torch.where(m, nv, old_v)
        change = ((new_k.float() - old_k.float()) ** 2).sum(dim=(1, 2, 3)) + ((new_v.float() - old_v.float()) ** 2).sum(
            dim=(1, 2, 3)
        )
        sq.index_add_(0, local["sel"].to(device), change.double().to(device))
        k.index_copy_(0, local["sel"], new_k)  # in place: only the spliced rows move
        v.index_copy_(0, local["sel"], new_v)
    counters.fired_prompt += (count.to(device) > 0).long() * rows.long()
    counters.positions += count.to(device) * rows.long()
    counters.sq_change += sq * rows.double()


def apply_lengthening(
    model,
    cache,
    splices: list,
    source: SourceKV,
    tgt_len: list[int],
    tgt_spans: list[tuple[int, int]] | None = None,
    src_spans: list[tuple[int, int]] | None = None,
):
    """Apply every ``prepend`` and ``insert`` splice of a batch in one rebuild of the cache.

    ``splices``: ``[(KVSplice, rows [B] bool, Counters)]``; a row holds at most one of them (a plan with a
    prepend or insert holds no other splice), rows in none keep their own cache. ``tgt_len``: the target
    prefix lengths (P slots); ``tgt_spans``/``src_spans``: each prompt's message ``(start, stop)`` in
    absolute positions (:func:`~transferlab.engine.batching.message_spans`; an insert needs them).

    **prepend**: ``[source prefix | target prefix]``, the target's keys re-rotated S slots later.

    **insert**: ``[target head | source message | target message and tail]``: the inserted slots are the
    source's message tokens within the source prefix (its last ``window`` when given), keys re-rotated
    from their source positions to the positions they land at; the target's slots from its message start
    on move ``n`` later (keys re-rotated by ``n``); its head (BOS, template) stays where it was, bitwise.

    How they differ: prepend puts the source's *whole* prefix (its BOS, system prompt, template, message
    and the template's tail up to its last token) before the target's *whole* prefix, so the target's BOS
    and template sit in the middle at shifted positions and the source's generation prompt precedes the
    target's turn; insert keeps one head, the target's, at its own positions, and adds only the source's
    message. Both keep every target slot (``target_kept`` = 1).

    Returns ``(attention mask [B, slots], position offset = slots added per row)``.
    """
    B = len(tgt_len)
    pieces = [[("t", 0, P, 0)] for P in tgt_len]  # rows in no splice: their own prefix
    rotate = [False] * B
    owner = [-1] * B  # which splice of ``splices`` each row's slots were added by
    for e, (splice, rows, _) in enumerate(splices):
        for b in np.flatnonzero(rows.cpu().numpy()):
            P, S = tgt_len[b], source.lengths[b]
            if splice.align == "prepend":
                # [source 0..S-1 at its own positions | target 0..P-1 moved S later]
                pieces[b] = [("s", 0, S, 0), ("t", 0, P, S)]
            else:
                if tgt_spans is None or src_spans is None:
                    raise InterventionError(f"{splice.describe()}: an insert needs the prompts' message spans")
                m0 = min(tgt_spans[b][0], P)
                s1 = min(src_spans[b][1], S)  # the source's last token is not in its prefix cache
                s0 = min(src_spans[b][0], s1)
                if splice.window is not None:
                    s0 = max(s0, s1 - splice.window)
                pieces[b] = [("t", 0, m0, 0), ("s", s0, s1, m0 - s0), ("t", m0, P, s1 - s0)]
            rotate[b], owner[b] = splice.rope == "reposition", e
    return _rebuild(model, cache, source, tgt_len, pieces, rotate, owner, [c for _, _, c in splices])


def _rebuild(model, cache, source: SourceKV, tgt_len: list[int], pieces, rotate, owner, counters_of):
    """Rebuild every layer's cache from per-row ``pieces``: ``(who, a, b, shift)`` lays the slots of positions
    ``a..b-1`` of the source prefix (``"s"``) or the target prefix (``"t"``) next, their keys rotated ``shift``
    positions further where ``rotate[b]`` (``rope='reposition'``). Rows are left-padded to the longest; the
    inserted source slots are audited, in the counters of the splice that owns the row (``owner[b]``, -1:
    none). Returns ``(attention mask, position offset = slots added per row)``."""
    n_layers = n_cache_layers(cache)
    _check_whole_prompt_cached(cache, source, list(range(n_layers)))
    k0, _ = get_kv(cache, 0)
    device = counters_of[0].device  # the model's (inputs, mask, audit); each layer's cache may be elsewhere
    tgt_w = k0.shape[2]
    B = len(tgt_len)
    new_len = [sum(b - a for _, a, b, _ in row) for row in pieces]
    W = max(new_len)
    Ws = source.keys[0].shape[2]
    # index into the concatenation [source (Ws cols) | target (tgt_w cols)]
    index = torch.zeros(B, W, dtype=torch.long)
    shift = torch.zeros(B, W, dtype=torch.long)
    mask = torch.zeros(B, W, dtype=torch.long)
    inserted = torch.zeros(B, W, dtype=torch.bool)
    offset = torch.zeros(B, dtype=torch.long)
    added = torch.zeros(B, dtype=torch.long)
    for r, row in enumerate(pieces):
        col = W - new_len[r]
        mask[r, col:] = 1
        offset[r] = new_len[r] - tgt_len[r]
        for who, a, b, sh in row:
            n = b - a
            if n <= 0:
                continue
            if who == "s":
                base = source.end - source.lengths[r]  # column of source position 0
                inserted[r, col : col + n] = True
                added[r] += n
            else:
                base = Ws + tgt_w - tgt_len[r]
            index[r, col : col + n] = torch.arange(base + a, base + b)
            shift[r, col : col + n] = sh
            col += n
    shift *= torch.tensor(rotate, dtype=torch.long)[:, None]  # rope='keep': no rotation at all
    maps = _PerDevice(index=index, shift=shift, inserted=inserted)
    reposition = any(rotate)
    inv = {layer: inverse_frequencies(model, layer) for layer in range(n_layers)} if reposition else None
    sq = torch.zeros(B, dtype=torch.float64, device=device)
    for layer in range(n_layers):
        k, v = get_kv(cache, layer)
        sk, sv = source.layer(layer, k.device)
        local = maps.on(k.device)
        cat_k = torch.cat([sk.to(k.dtype), k], dim=2)
        cat_v = torch.cat([sv.to(v.dtype), v], dim=2)
        H, hd = k.shape[1], k.shape[3]
        g = local["index"][:, None, :, None].expand(-1, H, -1, hd)
        nk, nv = cat_k.gather(2, g), cat_v.gather(2, g)
        if reposition:  # slots that stay where they were keep their keys bitwise (no rotation by 0)
            sh = local["shift"]
            nk = torch.where((sh != 0)[:, None, :, None], rotate_keys(nk, sh[:, None, :], inv[layer]), nk)
        # the change a rebuild makes: the source keys/values it inserts
        ins = local["inserted"][:, None, :, None]
        sq += ((nk.float() ** 2) * ins).sum(dim=(1, 2, 3)).double().to(device)
        sq += ((nv.float() ** 2) * ins).sum(dim=(1, 2, 3)).double().to(device)
        set_kv(cache, layer, nk, nv)
        lay = cache.layers[layer] if hasattr(cache, "layers") else None
        if lay is not None and hasattr(lay, "cumulative_length"):
            lay.cumulative_length = W
    for e, counters in enumerate(counters_of):
        mine = torch.tensor([o == e for o in owner], device=device)
        got = torch.where(mine, added.to(device), 0)
        counters.fired_prompt += (got > 0).long()
        counters.positions += got
        counters.sq_change += torch.where(mine, sq, 0.0)
    return mask.to(device), offset.to(device)
