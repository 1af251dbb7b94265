"""Binding activation interventions to a batch: from declarations to hook functions.

Binding happens once per batch, before the prompt is processed. For each
intervention and each example whose plan holds it, the rules of the
intervention's kind (its operator, :mod:`.operators`) are turned into index
tables (which target position receives which source column, what each decode
step writes), so the hook itself is a few batched tensor operations with no
Python loop over examples.

Examples whose plan does not hold an intervention are masked out of it; this is
how one batch mixes conditions.

On a model split over devices (``load_model(..., device_map="auto")``) the
activation a hook edits lives on its layer's device. A bound intervention
keeps its tables on the device of the module it hooks, and any table needed on
another device is copied there once per batch (cached), never per token; on a
model on one device every move is a no-op.

Shapes follow the glossary of :mod:`transferlab.interventions`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from ..sites import HookPoint
from .audit import Counters
from .context import StepContext
from .operators import Span, operator_for
from .survival import Survival, kv_layers_written
from .types import InterventionError


@dataclass
class SourceBatch:
    """Source activations for a batch, row-aligned with the targets (zeros where no source)."""

    acts: dict[str, torch.Tensor]  # hook point -> [B, S, D], left-padded
    lengths: list[int]  # source tokens per row (BOS included); 0 where no source
    has_bos: list[bool]
    has_source: list[bool]
    texts: list[str | None]
    # the first source position each row holds (sources captured with a window hold only their last tokens;
    # columns before it are zeros that no intervention may read); None: every position
    first: list[int] | None = None


def _channel_mask(model, inter, width: int, device) -> torch.Tensor | None:
    """``[D]`` True on the channels of the heads an intervention is restricted to (None: all channels)."""
    heads = getattr(inter, "heads", None)
    if heads is None:
        return None
    ad = model.adapter
    kind = getattr(inter, "head_kind", "kv")
    if inter.site in ("q_proj", "z"):  # query heads, whatever head_kind says
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
            what = "query" if inter.site in ("q_proj", "z") else "key/value"
            raise InterventionError(
                f"{what} head {h} does not exist at {inter.site}: the model has {n} {what} heads (0..{n - 1})"
            )
    mask = torch.zeros(width, dtype=torch.bool, device=device)
    hd = ad.head_dim
    for h in kv_heads:
        mask[h * hd : (h + 1) * hd] = True
    return mask


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


@dataclass
class Tables:
    """A bound intervention's per-batch tensors, on one device."""

    rows: torch.Tensor  # [B] True where the example's plan holds the intervention
    keys: torch.Tensor  # [B] the examples' random-stream keys (noise)
    index: torch.Tensor  # [B, T] source column written at each prompt position; -1 = none
    src: torch.Tensor | None = None  # [B, S, D] the sources at this hook point
    partner: torch.Tensor | None = None  # [B] lockstep: the row where this row's source runs; -1 = none
    channels: torch.Tensor | None = None  # [D] the heads' channels (None: all)
    self_rows: torch.Tensor | None = None  # [B] rows whose source is the target itself (None: none)
    own: dict | None = None  # the operator's own: decode table, mean, vector, ...

    def to(self, device: torch.device) -> "Tables":
        def move(t):
            return t.to(device) if isinstance(t, torch.Tensor) else t

        out = {f.name: move(getattr(self, f.name)) for f in fields(self) if f.name != "own"}
        return Tables(**out, own={k: move(v) for k, v in (self.own or {}).items()})


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
        self_rows: list[bool] | None = None,
    ):
        self.inter, self.point, self.ctx = inter, point, ctx
        self.op = operator_for(inter)
        device = self.device = hook_device(model, point, rows.device)
        self.width, self.dtype = model.adapter.width(point.site), model.dtype
        self._copies: dict[torch.device, Tables] = {}
        batch = len(target_lengths)
        channels = _channel_mask(model, inter, self.width, device)
        self.counters = Counters(batch, device)
        self.acts_prompt, self.acts_decode = self.op.phases(flavour)
        self.seed_patcher = flavour == "seed" and self.op.follows_seed_patcher  # seed windows are relative to calls
        src = sources.acts.get(str(point)) if sources is not None else None
        if src is not None:
            src = src.to(device)  # captured at the same module: already there, unless the model moved
        self.source_lengths = sources.lengths if sources is not None else None
        spans, index = self._prompt_map(rows.tolist(), target_lengths, target_bos, sources, src)
        self.tables = Tables(
            rows=rows.to(device),
            keys=keys.to(device),
            index=index.to(device),
            src=src,
            partner=partner.to(device) if partner is not None else None,
            channels=channels,
            self_rows=torch.tensor(self_rows, device=device) if self_rows is not None and any(self_rows) else None,
        )
        self.tables.own = self.op.own_tables(self, spans, flavour)
        # target survival: the prompt positions this intervention wrote, where that overwrites keys/values
        self.kv_layers = kv_layers_written(inter, point.layer, model.n_layers) if self.acts_prompt else range(0)
        self._prompt_hits: dict[torch.device, torch.Tensor] = {}  # activation device -> [B, T] writes per position
        self._prompt_width = max(target_lengths)
        # a self row's decode value "last" is its own last prompt token's activation, read from its own forward
        # at the prompt phase (the capture's was the same prompt in another batch shape: other bf16 rounding)
        self._own_last = (
            self.tables.self_rows is not None
            and flavour != "seed"
            and self.acts_decode
            and getattr(inter, "decode", None) == "last"
            and (self.tables.own or {}).get("decode_table") is not None
        )
        self._last_pos = torch.tensor([n - 1 for n in target_lengths], device=device)

    def _prompt_map(self, in_rows, target_lengths, target_bos, sources, src):
        """Each example's :class:`Span` (None where its plan does not hold this intervention), and ``index
        [B, T]`` (T: the longest prompt): the source column each position receives at the prompt phase (-1: none).
        """
        inter = self.inter
        needs = inter.needs_source
        source_columns = src.shape[1] if src is not None else 0
        spans: list[Span | None] = []
        index = np.full((len(in_rows), max(target_lengths)), -1, dtype=np.int64)
        for b, held in enumerate(in_rows):  # one copy of ``rows`` to the host, not one synchronisation per row
            if not held:
                spans.append(None)
                continue
            where = f"{inter.describe()} (example {b})"
            lt, bt = target_lengths[b], int(target_bos[b])
            if needs:
                if sources is None or not sources.has_source[b]:
                    raise InterventionError(f"{where} needs a source prompt, but none was given for this example")
                ls, bs = sources.lengths[b], int(sources.has_bos[b])
                first = sources.first[b] if sources.first is not None else 0
            else:
                ls, bs, first = lt, bt, 0
            span = Span(lt, bt, ls, bs, source_columns, needs, where, first)
            spans.append(span)
            if self.seed_patcher:
                continue  # the seed's patcher picks its columns per call (see PatchOperator.seed_values)
            pairs = self.op.prompt_pairs(span)
            if pairs and self.acts_prompt and self.op.reads_paired_columns:
                span.check_held([ps for _, ps in pairs], "its prompt phase")
            if pairs:
                pt, ps = np.asarray(pairs, dtype=np.int64).T
                index[b, pt] = span.column(ps)
        return spans, torch.from_numpy(index)

    # -- per-device tables ----------------------------------------------------
    def _at(self, device: torch.device) -> Tables:
        """The per-batch tensors on ``device``: the bound tables on their own device, else a cached copy."""
        if device == self.device:
            return self.tables
        copy = self._copies.get(device)
        if copy is None:
            copy = self._copies[device] = self.tables.to(device)
        return copy

    # -- the site function ----------------------------------------------------
    def _values(self, x: torch.Tensor):
        """``(written [B, T], value [B, T, D])`` for the current call, or None."""
        ctx = self.ctx
        if self._own_last and ctx.phase == "prompt":
            self._read_own_last(x)
        if not (self.acts_prompt if ctx.phase == "prompt" else self.acts_decode):
            return None
        t = self._at(x.device)
        if self.seed_patcher:
            return self.op.seed_values(x, t, ctx)
        valid = ctx.valid.to(x.device)
        if ctx.phase == "prompt":
            positions = ctx.positions.to(x.device).clamp(max=t.index.shape[1] - 1)
            idx = t.index.gather(1, positions)
            written = (idx >= 0) & valid & t.rows[:, None]
            return written, self.op.prompt_value(x, t, ctx, idx)
        return self.op.decode_value(x, t, ctx, valid & t.rows[:, None])

    def _read_own_last(self, x: torch.Tensor) -> None:
        """Self rows: the decode table's row becomes the activation at the row's last prompt position, when this
        prompt call holds it (no host synchronisation: a masked sum over at most one position per row)."""
        t = self._at(x.device)
        ctx = self.ctx
        last = self._last_pos.to(x.device)
        hit = (ctx.positions.to(x.device) == last[:, None]) & ctx.valid.to(x.device) & t.self_rows[:, None]
        own = (x.detach() * hit[..., None]).sum(dim=1)  # [B, D]: zeros added, exact in any dtype
        table = t.own["decode_table"]
        t.own["decode_table"] = torch.where(hit.any(dim=1)[:, None, None], own[:, None].to(table.dtype), table)

    def __call__(self, x: torch.Tensor):
        out = self._values(x)
        if out is None:
            return None
        written, value = out
        new = self.op.combine(x, value)
        channels = self._at(x.device).channels
        if channels is not None:
            new = torch.where(channels, new, x)
        new = torch.where(written[..., None], new, x)
        if len(self.kv_layers) and self.ctx.phase == "prompt":  # on the activation's device: no host sync
            hits = self._prompt_hits.get(x.device)
            if hits is None:
                hits = torch.zeros(written.shape[0], self._prompt_width, dtype=torch.long, device=x.device)
            pos = self.ctx.positions.to(x.device).clamp(0, self._prompt_width - 1)
            self._prompt_hits[x.device] = hits.scatter_add(1, pos, written.long())  # out of place: any grad mode
        home = self.counters.device
        if x.device == home:
            self.counters.record(self.ctx.phase, written, x, new)
        else:  # a hook whose module's device was unknown at binding (offloaded weights)
            self.counters.record(self.ctx.phase, written.to(home), x.to(home), new.to(home))
        return new


def mark_prompt_writes(bound: BoundActivation, survival: Survival, self_rows: list[bool]) -> None:
    """Fold the prompt positions ``bound`` wrote into ``survival`` (the layers whose keys/values that overwrote).

    A self row (source = target) under a replacing patch wrote its own activation back
    (:meth:`~.operators.PatchOperator.prompt_value`): its slots are kept.
    """
    if not bound._prompt_hits:
        return
    identity = type(bound.inter).__name__ in ("Patch", "HeadPatch") and bound.inter.mode == "replace"
    hits = sum(h.cpu() for h in bound._prompt_hits.values()).numpy()
    for b in range(min(len(hits), len(survival.lengths))):
        if identity and self_rows[b]:
            continue
        survival.mark(b, bound.kv_layers, np.flatnonzero(hits[b] > 0))
