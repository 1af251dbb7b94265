"""What each kind of activation intervention does, one operator class per kind.

An :class:`Operator` holds everything that differs between kinds: in which
phases it acts, which target positions it writes at the prompt phase and from
which source positions, the per-batch tensors it needs (a decode table, a
mean, a vector), the value it writes at a prompt or decode call, and how that
value meets the activation. The rest -- masking rows and heads, moving tables
to the activation's device, the audit -- is the same for every kind and lives
in :class:`~transferlab.interventions.binding.BoundActivation`.

Adding an activation intervention kind means declaring it (a dataclass in
:mod:`.types`: fields, checks, ``describe``) and writing its operator here,
registered with ``@operates(TheKind)``; nothing else dispatches on the kind.
(A :class:`~.types.KVSplice` edits the cache, not an activation: see
:mod:`.splice`.)

Shapes follow the glossary of :mod:`transferlab.interventions`: ``x`` is the
activation of one forward call, ``[B, T, D]``; source activations are ``[B, S, D]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .. import rng
from .types import Ablate, Hook, HookCall, Intervention, InterventionError, Noise, Patch, Steer

SEED_WINDOW = 16  # the seed's hard-coded window_size

_OPERATORS: dict[type, type["Operator"]] = {}


def operates(*kinds: type[Intervention]):
    """Class decorator: the operator of ``kinds`` (their subclasses too, unless they have their own)."""

    def register(cls):
        for kind in kinds:
            _OPERATORS[kind] = cls
        return cls

    return register


def operator_for(inter: Intervention) -> "Operator":
    """The operator of ``inter``'s kind (the nearest registered class in its MRO)."""
    for cls in type(inter).__mro__:
        if cls in _OPERATORS:
            return _OPERATORS[cls](inter)
    raise InterventionError(f"{type(inter).__name__} is not an activation intervention (no operator acts on it)")


@dataclass(frozen=True)
class Span:
    """One example as an intervention sees it: its target prompt and the source it reads.

    Positions are absolute (BOS, where present, at 0). For a kind that reads no
    source, the source is the target itself (``source_len = target_len``) and
    ``column`` gives target positions.
    """

    target_len: int  # target tokens, BOS included
    target_bos: int  # 1 if the target starts with BOS
    source_len: int  # source tokens, BOS included
    source_bos: int
    source_columns: int  # S: positions of the left-padded source tensor (0 without one)
    reads_source: bool
    where: str  # "<description> (example b)", for error messages
    source_first: int = 0  # the first source position the sources hold (a windowed capture: its window's first)

    @property
    def target_tokens(self) -> int:
        """Target tokens without BOS (what windows and fractions count)."""
        return self.target_len - self.target_bos

    @property
    def source_tokens(self) -> int:
        return self.source_len - self.source_bos

    def check_held(self, positions, what: str) -> None:
        """Refuse to read source positions that sources captured with a window do not hold."""
        if not self.reads_source or not positions or min(positions) >= self.source_first:
            return
        need = self.source_len - min(positions)
        raise InterventionError(
            f"{self.where}: {what} reads source position {min(positions)}, but the sources were captured with a "
            f"window holding positions {self.source_first}..{self.source_len - 1} only; capture them with "
            f"window >= {need} (or without a window)"
        )

    def column(self, p: int) -> int:
        """Column of the left-padded source tensor holding source position ``p``."""
        return self.source_columns - self.source_len + p if self.reads_source else p


def _window_fits(inter, span: Span) -> None:
    if inter.window > span.source_tokens:
        raise InterventionError(
            f"{span.where}: window {inter.window} is longer than the source ({span.source_tokens} tokens without "
            "BOS); use a smaller window or a longer source"
        )


class Operator:
    """How one kind of activation intervention acts (base class; one subclass per kind).

    ``tables`` holds the bound intervention's per-batch tensors on the
    activation's device (``rows``, ``src``, ``keys``, ``partner``, ... and
    this operator's own, from :meth:`own_tables`, in ``tables.own``).
    """

    follows_seed_patcher: ClassVar[bool] = False  # seed flavour: the seed's "last W columns of each call" patcher
    reads_paired_columns: ClassVar[bool] = False  # prompt phase: writes the source column paired with each position

    def __init__(self, inter: Intervention):
        self.inter = inter

    def phases(self, flavour: str) -> tuple[bool, bool]:
        """(acts at the prompt phase, acts at the decode phase)."""
        phase = self.inter.phase
        return phase in ("prompt", "both"), phase in ("decode", "both")

    def prompt_pairs(self, span: Span) -> list[tuple[int, int]]:
        """(target position, source position) pairs written at the prompt phase."""
        raise NotImplementedError

    def own_tables(self, bound, spans: list[Span | None], flavour: str) -> dict[str, torch.Tensor | None]:
        """This kind's per-batch tensors (``spans[b]`` is None for rows outside the intervention)."""
        return {}

    def prompt_value(self, x, tables, ctx, idx):
        """The value ``[B, T, D]`` written at a prompt call (``idx``: source column per position)."""
        raise NotImplementedError

    def decode_value(self, x, tables, ctx, written):
        """``(written, value)`` at a decode call (``written``: the rows' real tokens)."""
        raise NotImplementedError

    def combine(self, x, value):
        """The new activation where written (before head masks)."""
        raise NotImplementedError


@operates(Patch)  # HeadPatch too: its heads are a channel mask, applied by the binding
class PatchOperator(Operator):
    """A source's activation written into the target's: :class:`~.types.Patch` and :class:`~.types.HeadPatch`.

    Prompt phase: the position map of :mod:`.types` (window, fraction,
    positions, or the last ``min(n_target, n_source)`` tokens). Decode phase:
    a per-row table of what each step writes (``last``: the source's last
    token; ``mean``: the mean over the source window; ``cycle``: the window's
    rows in turn), or, for ``lockstep``, the shadow row's activation of the same
    call. Seed flavour: the seed's patcher (:meth:`seed_values`).
    """

    follows_seed_patcher = True
    reads_paired_columns = True

    def phases(self, flavour: str) -> tuple[bool, bool]:
        if flavour == "seed":  # the seed registered its patcher after prefill: "both" means decode only
            return self.inter.phase == "prompt", self.inter.phase in ("decode", "both")
        return super().phases(flavour)

    def prompt_pairs(self, span: Span) -> list[tuple[int, int]]:
        inter, nt, ns = self.inter, span.target_tokens, span.source_tokens
        lt, bt, ls, bs = span.target_len, span.target_bos, span.source_len, span.source_bos
        if inter.window is not None:
            _window_fits(inter, span)
            k = min(inter.window, nt)
            return [(lt - k + j, ls - k + j) for j in range(k)]
        if inter.fraction is not None:
            k = min(max(1, math.ceil(inter.fraction * nt)), ns)
            return [(bt + j, bs + j) for j in range(k)]
        if inter.positions is not None:
            a, b = inter.positions
            if b > lt or b > ls:
                raise InterventionError(
                    f"{span.where}: positions {a}-{b} run past the target ({lt} tokens) or the source ({ls} tokens)"
                )
            return [(p, p) for p in range(max(a, bt, bs), b)]
        k = min(nt, ns)
        return [(lt - k + j, ls - k + j) for j in range(k)]

    def source_positions(self, span: Span) -> list[int]:
        """Source positions the decode table draws from (independent of the target)."""
        inter, ns, bs, ls = self.inter, span.source_tokens, span.source_bos, span.source_len
        if inter.window is not None:
            _window_fits(inter, span)
            return list(range(ls - inter.window, ls))
        if inter.fraction is not None:
            return list(range(bs, bs + max(1, math.ceil(inter.fraction * ns))))
        if inter.positions is not None:
            a, b = inter.positions
            if b > ls:
                raise InterventionError(f"{span.where}: positions {a}-{b} run past the source's {ls} tokens")
            return [p for p in range(a, b) if p >= bs]
        return list(range(bs, ls))

    def own_tables(self, bound, spans, flavour):
        src, device = bound.tables.src, bound.device
        batch = len(spans)
        if flavour == "seed":
            # the seed's patcher: ``L = min(T_cur, T_source); if L >= W`` -> needs >= W source tokens
            window = self.inter.window or SEED_WINDOW
            if src is not None and self.inter.needs_source:
                seed_ok = torch.tensor(bound.source_lengths, device=device) >= window
            else:
                seed_ok = torch.ones(batch, dtype=torch.bool, device=device)
            return {"seed_ok": seed_ok, "seed_window": window}
        cycle_len = torch.ones(batch, dtype=torch.long, device=device)
        if src is None:
            return {"decode_table": None, "cycle_len": cycle_len}
        # one row of source columns per example: the window (or all its tokens) the decode value draws from
        if self.inter.decode in ("mean", "cycle") and self.phases(flavour)[1]:
            for s in spans:
                if s is not None:
                    s.check_held(self.source_positions(s), f"its decode value ({self.inter.decode})")
        cols_of = [[s.column(p) for p in self.source_positions(s)] if s is not None else [] for s in spans]
        width = src.shape[-1]
        last = src[:, src.shape[1] - 1]
        if self.inter.decode == "last":
            has = torch.tensor([bool(c) for c in cols_of], device=device)
            table = torch.where(has[:, None], last, torch.zeros_like(last))[:, None]
        else:
            n_cols = max(1, max(len(c) for c in cols_of))
            cols = np.zeros((batch, n_cols), dtype=np.int64)
            valid = np.zeros((batch, n_cols), dtype=bool)
            for b, c in enumerate(cols_of):
                cols[b, : len(c)] = c
                valid[b, : len(c)] = True
            cols_t, valid_t = torch.from_numpy(cols).to(device), torch.from_numpy(valid).to(device)
            block = src.gather(1, cols_t[..., None].expand(batch, n_cols, width))
            block = torch.where(valid_t[..., None], block, torch.zeros_like(block))
            if self.inter.decode == "mean":
                n = valid_t.sum(1, keepdim=True).clamp(min=1)
                table = (block.float().sum(1) / n).to(src.dtype)[:, None]
            else:  # cycle: step k reads row k mod (window rows)
                table = block
                cycle_len = valid_t.sum(1).clamp(min=1)
        return {"decode_table": table, "cycle_len": cycle_len}

    def prompt_value(self, x, tables, ctx, idx):
        if tables.src is None:
            return self.finish(None, x, tables, ctx)
        batch, positions, width = x.shape
        value = tables.src.gather(1, idx.clamp(min=0)[..., None].expand(batch, positions, width))
        if tables.self_rows is not None:
            # a row whose source is its own prompt reads every position from itself (the position map of equal
            # prompts is the identity): its own forward's activation, not a capture's rounding of it
            value = torch.where(tables.self_rows.to(x.device)[:, None, None], x, value.to(x.dtype))
        return self.finish(value, x, tables, ctx)

    def decode_value(self, x, tables, ctx, written):
        batch, _, width = x.shape
        own = tables.own
        if self.inter.decode == "lockstep":
            if tables.partner is None:
                raise InterventionError(f"{self.inter.describe()}: lockstep needs the generation loop's shadow rows")
            written = written & (tables.partner >= 0)[:, None]
            value = x[tables.partner.clamp(min=0)]
        elif own["decode_table"] is not None:
            k = (ctx.step % own["cycle_len"])[:, None, None].expand(batch, 1, width)
            value = own["decode_table"].gather(1, k).expand(*x.shape)
        else:
            value = None
        return written, self.finish(value, x, tables, ctx)

    def seed_values(self, x, tables, ctx):
        """The seed's patcher: the last W columns of the call, if the call has >= W real tokens."""
        _, positions, _ = x.shape
        valid = ctx.valid.to(x.device)
        w = tables.own["seed_window"]
        fires = (valid.sum(dim=1) >= w) & tables.rows & tables.own["seed_ok"]
        cols = torch.arange(positions, device=x.device)
        written = fires[:, None] & (cols >= positions - w)[None, :] & valid
        if tables.src is None:
            value = torch.zeros_like(x)
        else:
            value = tables.src[:, (tables.src.shape[1] - (positions - cols)).clamp(min=0)]
        return written, self.finish(value, x, tables, ctx)

    def finish(self, value, x, tables, ctx):
        """The value written, from the source's (a patch writes the source's value itself)."""
        return value

    def combine(self, x, value):
        inter = self.inter
        if inter.mode == "replace":
            return value.to(x.dtype)
        if inter.mode == "add":
            return x + inter.alpha * value.to(x.dtype)
        return (1 - inter.alpha) * x + inter.alpha * value.to(x.dtype)


@operates(Noise)
class NoiseOperator(PatchOperator):
    """Gaussian noise where a patch would write the source's value (:class:`~.types.Noise`).

    Norm-matched: each vector is rescaled to the norm of the value it stands in
    for (the activation itself where there is none); raw: ``N(0, std^2)``. The
    draw is keyed by (noise seed, example stream, position, channel), with
    decode positions in a separate range from prompt positions.
    """

    def finish(self, value, x, tables, ctx):
        positions = ctx.positions.to(x.device)
        code = positions if ctx.phase == "prompt" else positions + (1 << 40)
        channels = torch.arange(x.shape[-1], device=positions.device)
        key = rng.combine(self.inter.seed, tables.keys[:, None, None], code[..., None], channels)
        noise = rng.normal(key).to(device=x.device, dtype=x.dtype)
        if not self.inter.norm_matched:
            return noise * self.inter.std
        ref = value if value is not None else x
        noise = noise / noise.float().norm(dim=-1, keepdim=True).clamp(min=1e-12).to(noise.dtype)
        return noise * ref.float().norm(dim=-1, keepdim=True).to(noise.dtype)


def _every_token(span: Span) -> list[tuple[int, int]]:
    """Every real target position but BOS (kinds whose value does not depend on the position)."""
    return [(p, p) for p in range(span.target_bos, span.target_len)]


@operates(Ablate)
class AblateOperator(Operator):
    """Zeros, or the source's mean over its tokens (BOS excluded), at every real target position."""

    def prompt_pairs(self, span: Span) -> list[tuple[int, int]]:
        return _every_token(span)

    def own_tables(self, bound, spans, flavour):
        if self.inter.how != "mean":
            return {"mean": None}
        src, dtype = bound.tables.src, bound.dtype
        means = torch.zeros(len(spans), bound.width, dtype=dtype, device=bound.device)
        for b, span in enumerate(spans):
            if span is not None:
                span.check_held([span.source_bos], "its mean over the source's tokens")
                means[b] = src[b, span.column(span.source_bos) :].float().mean(0).to(dtype)
        return {"mean": means}

    def _value(self, x, tables):
        mean = tables.own["mean"]
        return torch.zeros_like(x) if mean is None else mean[:, None, :].expand(*x.shape)

    def prompt_value(self, x, tables, ctx, idx):
        return self._value(x, tables)

    def decode_value(self, x, tables, ctx, written):
        return written, self._value(x, tables)

    def combine(self, x, value):
        return value.to(x.dtype)


@operates(Steer)
class SteerOperator(Operator):
    """``alpha * vector`` added at every real target position (BOS excluded)."""

    def prompt_pairs(self, span: Span) -> list[tuple[int, int]]:
        return _every_token(span)

    def own_tables(self, bound, spans, flavour):
        inter = self.inter
        if len(inter.vector) != bound.width:
            raise InterventionError(
                f"{inter.describe()}: vector has {len(inter.vector)} dims, {bound.point.site} has {bound.width}"
            )
        return {"vector": torch.tensor(inter.vector, dtype=bound.dtype, device=bound.device)}

    def prompt_value(self, x, tables, ctx, idx):
        return tables.own["vector"].expand(*x.shape)

    def decode_value(self, x, tables, ctx, written):
        return written, tables.own["vector"].expand(*x.shape)

    def combine(self, x, value):
        if self.inter.alpha == 0:
            return x  # nothing added: the activation stays bitwise as it was (x + 0 * v would turn -0.0 into +0.0)
        return x + self.inter.alpha * value


@operates(Hook)
class HookOperator(Operator):
    """The user's function (:class:`~.types.Hook`) at every real target position but BOS, both phases."""

    def prompt_pairs(self, span: Span) -> list[tuple[int, int]]:
        return _every_token(span)

    def _run(self, x, ctx, mask):
        call = HookCall(ctx.phase, ctx.step, ctx.positions.to(x.device), mask)
        fn = self.inter.fn
        if not hasattr(self, "_with_call"):
            self._with_call = _takes_call(fn)
        mine = x.clone()  # the function may change its argument in place; x itself is the audit's "before"
        out = fn(mine, call) if self._with_call else fn(mine)
        if out is None:
            out = mine
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InterventionError(
                f"{self.inter.describe()}: the function must return a tensor of the activation's shape "
                f"{tuple(x.shape)} (or None); it returned {got}"
            )
        return out

    def prompt_value(self, x, tables, ctx, idx):
        mask = (idx >= 0) & ctx.valid.to(x.device) & tables.rows[:, None]
        return self._run(x, ctx, mask)

    def decode_value(self, x, tables, ctx, written):
        return written, self._run(x, ctx, written)

    def combine(self, x, value):
        return value.to(x.dtype)


def _takes_call(fn) -> bool:
    """Whether ``fn`` takes a :class:`~.types.HookCall`: a second positional parameter without a default (or
    ``*args``). ``torch.relu``-like functions whose second parameter has a default get the activation only."""
    import inspect

    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: give it the activation only
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 and positional[1].default is positional[1].empty
