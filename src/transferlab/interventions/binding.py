"""Binding activation interventions to a batch: from declarations to hook functions.

Binding happens once per batch, before the prompt is processed. For each
intervention and each example whose plan holds it, the rules of
:mod:`.types` are turned into index tables (which target position receives
which source row, what each decode step writes), so the hook itself is a few
batched tensor operations with no Python loop over examples.

Examples whose plan does not hold an intervention are masked out of it; this is
how one batch mixes conditions.

On a model split over devices (``load_model(..., device_map="auto")``) the
activation a hook edits lives on its layer's device. A bound intervention
keeps its tables on the device of the module it hooks, and any table needed on
another device is copied there once per batch (cached), never per token; on a
model on one device every move is a no-op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import rng
from ..sites import HookPoint
from .audit import Counters
from .context import StepContext
from .types import Ablate, InterventionError, Noise, Patch, Steer

SEED_WINDOW = 16  # the seed's hard-coded window_size


@dataclass
class SourceBatch:
    """Source activations for a batch, row-aligned with the targets (zeros where no source)."""

    acts: dict[str, torch.Tensor]  # hook point -> [B, Ws, W], left-padded
    lengths: list[int]  # source tokens per row (BOS included); 0 where no source
    has_bos: list[bool]
    has_source: list[bool]
    texts: list[str | None]

    @property
    def width(self) -> int:
        return next(iter(self.acts.values())).shape[1] if self.acts else max(self.lengths or [0])


def _channel_mask(model, inter, width: int, device) -> torch.Tensor | None:
    heads = getattr(inter, "heads", None)
    if heads is None:
        return None
    ad = model.adapter
    kind = getattr(inter, "head_kind", "kv")
    if inter.site == "q_proj":
        n = ad.n_heads
        kv_heads = list(heads)
    else:
        n = ad.n_kv_heads
        if kind == "query":
            for h in heads:
                if not 0 <= h < ad.n_heads:
                    raise InterventionError(
                        f"query head {h} does not exist: the model has {ad.n_heads} query heads (0..{ad.n_heads - 1})"
                    )
            group = ad.n_heads // ad.n_kv_heads
            kv_heads = sorted({h // group for h in heads})
        else:
            kv_heads = list(heads)
    for h in kv_heads:
        if not 0 <= h < n:
            what = "query" if inter.site == "q_proj" else "key/value"
            raise InterventionError(
                f"{what} head {h} does not exist at {inter.site}: the model has {n} {what} heads (0..{n - 1})"
            )
    mask = torch.zeros(width, dtype=torch.bool, device=device)
    hd = ad.head_dim
    for h in kv_heads:
        mask[h * hd : (h + 1) * hd] = True
    return mask


def _source_rows(inter, ns: int, bs: int, ls: int, where: str) -> list[int]:
    """Source positions an intervention draws from (independent of the target)."""
    if getattr(inter, "window", None) is not None:
        if inter.window > ns:
            raise InterventionError(
                f"{where}: window {inter.window} is longer than the source ({ns} tokens without BOS); "
                "use a smaller window or a longer source"
            )
        return list(range(ls - inter.window, ls))
    if getattr(inter, "fraction", None) is not None:
        k = max(1, math.ceil(inter.fraction * ns))
        return list(range(bs, bs + k))
    if getattr(inter, "positions", None) is not None:
        a, b = inter.positions
        if b > ls:
            raise InterventionError(f"{where}: positions {a}-{b} run past the source's {ls} tokens")
        return [p for p in range(a, b) if p >= bs]
    return list(range(bs, ls))


def _prompt_map(inter, nt: int, bt: int, lt: int, ns: int, bs: int, ls: int, where: str) -> list[tuple[int, int]]:
    """(target position, source position) pairs written at prefill (corrected flavour)."""
    if isinstance(inter, (Ablate, Steer)):
        return [(p, p) for p in range(bt, lt)]
    if inter.window is not None:
        if inter.window > ns:
            raise InterventionError(
                f"{where}: window {inter.window} is longer than the source ({ns} tokens without BOS); "
                "use a smaller window or a longer source"
            )
        k = min(inter.window, nt)
        return [(lt - k + j, ls - k + j) for j in range(k)]
    if inter.fraction is not None:
        k = min(max(1, math.ceil(inter.fraction * nt)), ns)
        return [(bt + j, bs + j) for j in range(k)]
    if inter.positions is not None:
        a, b = inter.positions
        if b > lt or b > ls:
            raise InterventionError(
                f"{where}: positions {a}-{b} run past the target ({lt} tokens) or the source ({ls} tokens)"
            )
        return [(p, p) for p in range(max(a, bt, bs), b)]
    k = min(nt, ns)
    return [(lt - k + j, ls - k + j) for j in range(k)]


def hook_device(model, point: HookPoint, fallback: torch.device) -> torch.device:
    """The device of the module a hook point sits on (its activations live there); ``fallback`` if unknown."""
    try:
        module = model.adapter.handle(point).module
        param = next(module.parameters(), None)
    except Exception:  # an adapter without a module for this point: the model's device
        return fallback
    if param is None or param.device.type == "meta":  # offloaded weights: no fixed device
        return fallback
    return param.device


_PER_BATCH = (
    "rows",
    "partner",
    "keys",
    "src",
    "index",
    "channels",
    "seed_source_ok",
    "cycle_len",
    "decode_table",
    "mean",
    "vector",
)


class _Tables:
    """A bound intervention's per-batch tensors, on one device."""

    def __init__(self, owner: "BoundActivation", device: torch.device):
        for name in _PER_BATCH:
            t = getattr(owner, name)
            setattr(self, name, t.to(device) if t is not None else None)


class BoundActivation:
    """One activation intervention bound to a batch; ``__call__`` is its site function."""

    def __init__(
        self,
        model,
        inter,
        point: HookPoint,
        rows: torch.Tensor,
        ctx: StepContext,
        target_lengths: list[int],
        target_bos: list[bool],
        sources: SourceBatch | None,
        keys: torch.Tensor,
        flavour: str,
        partner: torch.Tensor | None = None,
    ):
        self.inter, self.point, self.ctx, self.flavour = inter, point, ctx, flavour
        device = self.device = hook_device(model, point, rows.device)
        self.rows = rows.to(device)
        rows = self.rows
        # lockstep: the row where this row's source generates alongside
        self.partner = partner.to(device) if partner is not None else None
        self._tables: dict[torch.device, _Tables] = {}
        B = len(target_lengths)
        width = model.adapter.width(point.site)
        self.channels = _channel_mask(model, inter, width, device)
        self.counters = Counters(B, device)
        self.keys = keys.to(device)
        self.acts_prompt = inter.phase in ("prompt", "both")
        self.acts_decode = inter.phase in ("decode", "both")
        if flavour == "seed" and not isinstance(inter, (Ablate, Steer)):
            # the seed registered its patcher after prefill: "both" means decode only
            self.acts_prompt = inter.phase == "prompt"
            self.acts_decode = inter.phase in ("decode", "both")
        src = sources.acts.get(str(point)) if sources is not None else None
        if src is not None:
            src = src.to(device)  # captured at the same module: already there, unless the model moved
        self.src = src
        Ws = src.shape[1] if src is not None else 0
        dtype = model.dtype
        pmax = max(target_lengths)
        index = np.full((B, pmax), -1, dtype=np.int64)
        dec_rows: list[list[int]] = [[] for _ in range(B)]
        needs = inter.needs_source
        in_rows = rows.tolist()  # one copy to the host, not one synchronisation per row
        for b in range(B):
            if not in_rows[b]:
                continue
            where = f"{inter.describe()} (example {b})"
            lt, bt = target_lengths[b], int(target_bos[b])
            if needs:
                if sources is None or not sources.has_source[b]:
                    raise InterventionError(f"{where} needs a source prompt, but none was given for this example")
                ls, bs = sources.lengths[b], int(sources.has_bos[b])
            else:
                ls, bs = lt, bt
            ns, nt = ls - bs, lt - bt
            if flavour == "seed" and not isinstance(inter, (Ablate, Steer)):
                continue  # seed windows are relative to each call; see _seed_values
            pairs = _prompt_map(inter, nt, bt, lt, ns, bs, ls, where)
            if pairs:
                pt, ps = np.asarray(pairs, dtype=np.int64).T
                index[b, pt] = (Ws - ls + ps) if needs else ps
            if isinstance(inter, Patch):
                dec_rows[b] = [(Ws - ls + p) if needs else p for p in _source_rows(inter, ns, bs, ls, where)]
        self.index = torch.from_numpy(index).to(device)
        self.seed_window = getattr(inter, "window", None) or SEED_WINDOW
        if flavour == "seed" and src is not None and inter.needs_source:
            # the seed's patcher: ``L = min(T_cur, T_source); if L >= W`` -> needs >= W source tokens
            src_len = torch.tensor(sources.lengths, device=device)
            self.seed_source_ok = src_len >= self.seed_window
        else:
            self.seed_source_ok = torch.ones(B, dtype=torch.bool, device=device)
        # what a decode step writes
        self.cycle_len = torch.ones(B, dtype=torch.long, device=device)
        self.decode_table = None
        if isinstance(inter, Patch) and src is not None:
            has = torch.tensor([bool(c) for c in dec_rows], device=device)
            if inter.decode == "last":
                table = torch.where(has[:, None], src[:, Ws - 1], torch.zeros_like(src[:, Ws - 1]))[:, None]
            else:
                C = max(1, max(len(r) for r in dec_rows))
                cols = np.zeros((B, C), dtype=np.int64)
                valid = np.zeros((B, C), dtype=bool)
                for b, r in enumerate(dec_rows):
                    cols[b, : len(r)] = r
                    valid[b, : len(r)] = True
                cols_t = torch.from_numpy(cols).to(device)
                valid_t = torch.from_numpy(valid).to(device)
                block = src.gather(1, cols_t[..., None].expand(B, C, width))
                block = torch.where(valid_t[..., None], block, torch.zeros_like(block))
                if inter.decode == "mean":
                    n = valid_t.sum(1, keepdim=True).clamp(min=1)
                    table = (block.float().sum(1) / n).to(src.dtype)[:, None]
                else:
                    table = block
                    self.cycle_len = valid_t.sum(1).clamp(min=1)
            self.decode_table = table
        self.mean = None
        if isinstance(inter, Ablate) and inter.how == "mean":
            means = torch.zeros(B, width, dtype=dtype, device=device)
            for b in range(B):
                if in_rows[b]:
                    ls, bs = sources.lengths[b], int(sources.has_bos[b])
                    means[b] = src[b, Ws - ls + bs :].float().mean(0).to(dtype)
            self.mean = means
        self.vector = None
        if isinstance(inter, Steer):
            if len(inter.vector) != width:
                raise InterventionError(
                    f"{inter.describe()}: vector has {len(inter.vector)} dims, {point.site} has {width}"
                )
            self.vector = torch.tensor(inter.vector, dtype=dtype, device=device)

    # -- values -------------------------------------------------------------
    def _at(self, device: torch.device) -> "BoundActivation | _Tables":
        """The per-batch tensors on ``device``: this object itself on its own device, else a cached copy."""
        if device == self.device:
            return self
        tables = self._tables.get(device)
        if tables is None:
            tables = self._tables[device] = _Tables(self, device)
        return tables

    def _noise(self, positions: torch.Tensor, width: int, like: torch.Tensor) -> torch.Tensor:
        code = positions if self.ctx.phase == "prompt" else positions + (1 << 40)
        ch = torch.arange(width, device=positions.device)
        keys = self._at(positions.device).keys
        key = rng.combine(self.inter.seed, keys[:, None, None], code[..., None], ch)
        return rng.normal(key).to(device=like.device, dtype=like.dtype)

    def _values(self, x: torch.Tensor):
        """``(written [B,T], source value [B,T,W])`` for the current call, or None."""
        ctx, inter = self.ctx, self.inter
        B, T, W = x.shape
        if self.flavour == "seed" and not isinstance(inter, (Ablate, Steer)):
            return self._seed_values(x)
        t = self._at(x.device)
        valid, positions = ctx.valid.to(x.device), ctx.positions.to(x.device)
        if ctx.phase == "prompt":
            if not self.acts_prompt:
                return None
            pos = positions.clamp(max=t.index.shape[1] - 1)
            idx = t.index.gather(1, pos)
            written = (idx >= 0) & valid & t.rows[:, None]
            if isinstance(inter, Steer):
                return written, t.vector.expand(B, T, W)
            if isinstance(inter, Ablate):
                val = torch.zeros_like(x) if t.mean is None else t.mean[:, None, :].expand(B, T, W)
                return written, val
            if t.src is not None:
                val = t.src.gather(1, idx.clamp(min=0)[..., None].expand(B, T, W))
            else:
                val = None
        else:
            if not self.acts_decode:
                return None
            written = valid & t.rows[:, None]
            if isinstance(inter, Steer):
                return written, t.vector.expand(B, T, W)
            if isinstance(inter, Ablate):
                val = torch.zeros_like(x) if t.mean is None else t.mean[:, None, :].expand(B, T, W)
                return written, val
            if getattr(inter, "decode", None) == "lockstep":
                if t.partner is None:
                    raise InterventionError(f"{inter.describe()}: lockstep needs the generation loop's shadow rows")
                written = written & (t.partner >= 0)[:, None]
                val = x[t.partner.clamp(min=0)]
            elif t.decode_table is not None:
                k = (ctx.step % t.cycle_len)[:, None, None].expand(B, 1, W)
                val = t.decode_table.gather(1, k).expand(B, T, W)
            else:
                val = None
        if isinstance(inter, Noise):
            noise = self._noise(positions, W, x)
            if inter.norm_matched:
                ref = val if val is not None else x
                noise = noise / noise.float().norm(dim=-1, keepdim=True).clamp(min=1e-12).to(noise.dtype)
                noise = noise * ref.float().norm(dim=-1, keepdim=True).to(noise.dtype)
            else:
                noise = noise * inter.std
            val = noise
        return written, val

    def _seed_values(self, x: torch.Tensor):
        """The seed's patcher: the last W columns of the call, if the call has >= W real tokens."""
        ctx = self.ctx
        if (ctx.phase == "prompt" and not self.acts_prompt) or (ctx.phase == "decode" and not self.acts_decode):
            return None
        B, T, W = x.shape
        t = self._at(x.device)
        valid = ctx.valid.to(x.device)
        w = self.seed_window
        n_cur = valid.sum(dim=1)
        fires = (n_cur >= w) & t.rows & t.seed_source_ok
        cols = torch.arange(T, device=x.device)
        written = fires[:, None] & (cols >= T - w)[None, :] & valid
        if t.src is None:
            val = torch.zeros_like(x)
        else:
            Ws = t.src.shape[1]
            src_cols = (Ws - (T - cols)).clamp(min=0)
            val = t.src[:, src_cols]
        if isinstance(self.inter, Noise):
            noise = self._noise(ctx.positions.to(x.device), W, x)
            if self.inter.norm_matched:
                noise = noise / noise.float().norm(dim=-1, keepdim=True).clamp(min=1e-12).to(noise.dtype)
                noise = noise * val.float().norm(dim=-1, keepdim=True).to(noise.dtype)
            else:
                noise = noise * self.inter.std
            val = noise
        return written, val

    def __call__(self, x: torch.Tensor):
        out = self._values(x)
        if out is None:
            return None
        written, val = out
        inter = self.inter
        mode = getattr(inter, "mode", "replace")
        if isinstance(inter, Steer):
            new = x + inter.alpha * val
        elif mode == "replace" or isinstance(inter, Ablate):
            new = val.to(x.dtype)
        elif mode == "add":
            new = x + inter.alpha * val.to(x.dtype)
        else:
            new = (1 - inter.alpha) * x + inter.alpha * val.to(x.dtype)
        channels = self._at(x.device).channels
        if channels is not None:
            new = torch.where(channels, new, x)
        new = torch.where(written[..., None], new, x)
        home = self.counters.device
        if x.device == home:
            self.counters.record(self.ctx.phase, written, x, new)
        else:  # a hook whose module's device was unknown at binding (offloaded weights)
            self.counters.record(self.ctx.phase, written.to(home), x.to(home), new.to(home))
        return new
