"""The decode loop: one new token per forward, after the prompt phase.

Two ways to run the same steps, token for token:

* ``eager``: the plain loop. Every step builds its inputs anew, lets
  ``transformers`` build the attention mask and appends one slot to the cache.
* ``static``: every per-step input lives in a buffer allocated once (the token
  fed, its position, the attention mask over a fixed number of cache slots,
  the step index) and is advanced **on the device** by the step itself; the
  cache writes its new slot at a device-side index; the mask is handed to the
  model ready-made (4D), so ``transformers`` neither builds one nor waits for
  the GPU to inspect it. One step is then a fixed sequence of kernels on fixed
  memory, which on CUDA is captured once as a CUDA graph and replayed: the
  host no longer launches a large-batch step kernel by kernel (about 1,300
  launches for a 32-layer model), it replays it.

Static steps attend over a *segment* of cache slots: the slots the segment's
last step will have filled, the unfilled ones masked out. Masked slots add no
probability mass, so a step gives the tokens of the eager step; segments
(``SEGMENT`` steps each, one graph per segment) bound the wasted reads.
Where attention is ragged (:mod:`.ragged`: on CUDA, under
``transferlab_sdpa``) each row reads only its own written slots whatever the
span, so the whole generation is one segment and one graph.

The static loop needs full-attention layers whose cache is a plain
``DynamicLayer`` and an attention that takes a boolean 4D mask (``sdpa`` or
``transferlab_sdpa``); anything else decodes eagerly. ``TRANSFERLAB_DECODE``
= ``auto`` (default: static with CUDA graphs on CUDA, eager elsewhere) |
``eager`` | ``static`` (static without graphs: CPU tests) | ``graph``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicLayer

from ..decode_paths import path as decode_path
from ..models.cache import cache_kwargs, output_cache
from ..timings import stage
from . import ragged
from .fastpath import NAME as FAST_ATTENTION
from .fastpath import preallocate

SEGMENT = 32  # decode steps per static segment (one CUDA graph each)
MODES = ("auto", "eager", "static", "graph")


@dataclass
class DecodeState:
    """Everything the loop reads and writes, on the device (filled by the prompt phase)."""

    logits: torch.Tensor  # [B, V] logits of the last prompt position: new token 0 comes from them
    cache: object
    attn: torch.Tensor  # [B, slots] 2D attention mask over the prompt phase's cache (1 = real slot)
    next_pos: torch.Tensor  # [B] model position of the first token fed back
    target_pos: torch.Tensor  # [B] target-coordinate position of that token (hooks' ctx.positions)
    keys: torch.Tensor  # [B] sampling stream keys
    generated: torch.Tensor  # [B, max_new] output, pre-filled with the fill id
    finished: torch.Tensor  # [B] bool
    mass: dict = field(default_factory=dict)  # name -> [B, max_new] float64
    masks: dict = field(default_factory=dict)  # name -> [B, V] bool
    # teacher forcing (``generate(forced=...)``): [B, max_new] the token each row takes at each step, -1 = its
    # sampler's; a forced row ends after its ``forced_len`` [B] tokens (unforced rows: max_new)
    forced: torch.Tensor | None = None
    forced_len: torch.Tensor | None = None
    logprob: torch.Tensor | None = None  # [B, max_new] float64: log p(token taken) under the untempered logits
    logits_out: torch.Tensor | None = None  # [B, max_new, V] float32: each new token's logits (return_logits)


def mode() -> str:
    value = os.environ.get("TRANSFERLAB_DECODE", "auto")
    if value not in MODES:
        raise ValueError(f"TRANSFERLAB_DECODE={value!r}: use one of {', '.join(MODES)}")
    return value


def static_ok(hf, cache, total_slots: int) -> bool:
    """Whether the static loop can run this model and cache (see module docstring)."""
    impl = getattr(hf.config, "_attn_implementation", None)
    if impl not in ("sdpa", FAST_ATTENTION):
        return False
    window = getattr(hf.config, "sliding_window", None)
    if window is not None and window < total_slots:
        return False
    layers = getattr(cache, "layers", None)
    if not layers:
        return False
    if not all(type(lay) is DynamicLayer for lay in layers):  # as the prompt phase left them
        return False
    devices = {lay.keys.device for lay in layers}  # a model split over devices: each layer writes its own slot
    return len(devices) == 1


def run(
    hf, ctx, sampler, state: DecodeState, max_new: int, stop_at_eos: bool, eos, fill, how: str | None = None
) -> str:
    """Sample ``max_new`` tokens into ``state.generated`` (the prompt phase is done); returns the decode path.

    The decode path (:mod:`transferlab.decode_paths`) names the loop and the
    attention kernel that made the tokens (``graph/ragged``, ``eager/sdpa``,
    ...): in bf16 their rounding differs, so a run records it per row.
    """
    how = how or mode()
    device = state.logits.device
    total = state.attn.shape[1] + max_new - 1
    if how == "auto":
        how = "graph" if device.type == "cuda" else "eager"
    if how in ("static", "graph") and max_new > 1 and static_ok(hf, state.cache, total):
        graphs = how == "graph" and device.type == "cuda"
        wide = ragged.padded(total)
        rag = static_ok(hf, state.cache, wide) and _ragged(hf, state, wide)
        total = wide if rag else total
        return _static(hf, ctx, sampler, state, max_new, stop_at_eos, eos, fill, graphs=graphs, total=total, rag=rag)
    return _eager(hf, ctx, sampler, state, max_new, stop_at_eos, eos, fill)


def _ragged(hf, state: DecodeState, slots: int) -> bool:
    """Whether the static loop attends raggedly (:mod:`.ragged`): the model runs ``transferlab_sdpa`` (which
    hands a block mask over) with plain softmax attention, and ragged attention is wanted for this shape."""
    cfg = hf.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg  # a multimodal model's text side
    if getattr(cfg, "_attn_implementation", None) != FAST_ATTENTION or not ragged.supports(text):
        return False
    keys = state.cache.layers[0].keys
    heads = getattr(text, "num_attention_heads", None)
    scaling = getattr(text, "query_pre_attn_scalar", None)  # a scale other than head size ** -0.5 compiles anew
    shape = (keys.shape[0], slots, keys.shape[1], keys.shape[-1], heads, scaling, keys.dtype, keys.device)
    return ragged.wanted(keys.device, shape)


def _sample_into(sampler, state: DecodeState, logits, step, stop_at_eos, eos, fill):
    """Draw new token ``step`` (an int, or a 0-dim device tensor) and record it; returns the token."""
    finished = state.finished
    for name, m in state.masks.items():
        lp = sampler.log_probs(logits)
        val = torch.logsumexp(lp.masked_fill(~m, float("-inf")), dim=-1).double()
        val = torch.where(finished, torch.full_like(val, float("nan")), val)
        _put(state.mass[name], step, val)
    if state.logits_out is not None:
        if isinstance(step, torch.Tensor):
            state.logits_out.index_copy_(1, step.view(1), logits[:, None].float())
        else:
            state.logits_out[:, step] = logits.float()
    token = sampler.sample(logits, state.keys, step)
    if state.forced is not None:
        wanted = _column(state.forced, step)
        token = torch.where(wanted >= 0, wanted, token)
    token = torch.where(finished, torch.full_like(token, fill), token)
    if state.logprob is not None:
        lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, token[:, None]).squeeze(-1).double()
        _put(state.logprob, step, torch.where(finished, torch.full_like(lp, float("nan")), lp))
    _put(state.generated, step, token)
    if stop_at_eos and eos is not None:
        finished |= token == eos
    if state.forced_len is not None:
        finished |= state.forced_len <= step + 1  # a forced row ends with its last forced token
    return token


def _column(table: torch.Tensor, step) -> torch.Tensor:
    """``table[:, step]`` for an int step or a 0-dim device tensor (read inside a CUDA graph)."""
    if isinstance(step, torch.Tensor):
        return table.index_select(1, step.view(1)).squeeze(1)
    return table[:, step]


def _put(table: torch.Tensor, step, column: torch.Tensor) -> None:
    if isinstance(step, torch.Tensor):
        table.index_copy_(1, step.view(1), column[:, None].to(table.dtype))
    else:
        table[:, step] = column


def _attention(hf) -> str:
    """The model's attention implementation, as a decode path names it (``sdpa``, ``transferlab_sdpa``, ...)."""
    return str(getattr(hf.config, "_attn_implementation", None) or "default")


def _eager(hf, ctx, sampler, state, max_new, stop_at_eos, eos, fill) -> str:
    label = decode_path("eager", _attention(hf))
    B, device = state.logits.shape[0], state.logits.device
    attn, logits, cache, next_pos = state.attn, state.logits, state.cache, state.next_pos
    if max_new > 1:
        preallocate(cache, max_new)
    for step in range(max_new):
        token = _sample_into(sampler, state, logits, step, stop_at_eos, eos, fill)
        if step == max_new - 1:
            break
        if stop_at_eos and step % 8 == 7 and bool(state.finished.all()):
            break
        ctx.phase, ctx.step = "decode", step
        ctx.positions = (state.target_pos + step)[:, None]
        ctx.valid = ~state.finished[:, None] if stop_at_eos else torch.ones(B, 1, dtype=torch.bool, device=device)
        attn = torch.cat([attn, torch.ones(B, 1, dtype=attn.dtype, device=device)], dim=1)
        out = hf(
            input_ids=token[:, None],
            attention_mask=attn,
            position_ids=next_pos[:, None],
            use_cache=True,
            **cache_kwargs(hf, cache),
        )
        cache = output_cache(out)
        logits = out.logits[:, -1]
        next_pos = next_pos + 1
    return label


class StaticLayer(DynamicLayer):
    """A full-attention cache layer over a fixed buffer: writes at a device-side slot, reads a fixed span."""

    @classmethod
    def from_layer(cls, layer, total: int, slot: torch.Tensor, span: list) -> "StaticLayer":
        new = cls.__new__(cls)
        new.__dict__.update(layer.__dict__)
        k, v = layer.keys, layer.values
        B, H, T, d = k.shape
        new._kbuf = k.new_zeros(B, H, total, d)
        new._vbuf = v.new_zeros(B, H, total, v.shape[-1])
        new._kbuf[:, :, :T].copy_(k)
        new._vbuf[:, :, :T].copy_(v)
        new._slot, new._span = slot, span
        new.keys, new.values = new._kbuf, new._vbuf
        return new

    def update(self, key_states, value_states, *args, **kwargs):
        self._kbuf.index_copy_(2, self._slot.view(1), key_states)
        self._vbuf.index_copy_(2, self._slot.view(1), value_states)
        end = self._span[0]
        return self._kbuf[:, :, :end], self._vbuf[:, :, :end]

    def get_seq_length(self, *args, **kwargs) -> int:
        return self._span[0]


def _static(
    hf, ctx, sampler, state, max_new, stop_at_eos, eos, fill, graphs: bool, total: int, rag: bool = False
) -> str:
    """The static loop over ``total`` cache slots (at least the prompt's and the fed tokens'); ``rag``: attend
    raggedly (``total`` is then whole blocks). Returns the decode path (:func:`run`)."""
    B, device = state.logits.shape[0], state.logits.device
    prompt_slots = state.attn.shape[1]
    cache = state.cache
    slot = torch.tensor(prompt_slots, dtype=torch.long, device=device)  # the cache slot the next fed token writes
    span = [total]  # slots attention reads this segment (a list: shared with every layer, set per segment)
    for i, lay in enumerate(cache.layers):
        cache.layers[i] = StaticLayer.from_layer(lay, total, slot, span)
    mask = torch.zeros(B, total, dtype=torch.bool, device=device)
    mask[:, :prompt_slots] = state.attn.bool()
    token = torch.empty(B, dtype=torch.long, device=device)
    pos = state.next_pos.clone()
    step_t = torch.zeros((), dtype=torch.long, device=device)  # index of the token being fed
    ctx.phase = "decode"
    ctx.step = step_t
    ctx.positions = torch.empty(B, 1, dtype=torch.long, device=device)
    ctx.valid = torch.ones(B, 1, dtype=torch.bool, device=device)
    kwargs = cache_kwargs(hf, cache)
    blocks = ragged.RaggedBlocks(mask, slot) if rag else None
    segment = max_new if blocks else SEGMENT  # ragged: nothing unwritten is read, so one segment

    def step_fn():
        """Feed token ``step_t``, draw token ``step_t + 1``, advance every buffer: no host value involved."""
        ctx.positions.copy_((state.target_pos + step_t)[:, None])
        if stop_at_eos:
            ctx.valid.copy_(~state.finished[:, None])
        mask.index_fill_(1, slot.view(1), True)
        if blocks:
            blocks.advance()
        out = hf(
            input_ids=token[:, None],
            attention_mask=blocks.block_mask if blocks else mask[:, None, None, : span[0]],
            position_ids=pos[:, None],
            use_cache=True,
            **kwargs,
        )
        nxt = _sample_into(sampler, state, out.logits[:, -1], step_t + 1, stop_at_eos, eos, fill)
        token.copy_(nxt)
        pos.add_(1)
        slot.add_(1)
        step_t.add_(1)

    token.copy_(_sample_into(sampler, state, state.logits, 0, stop_at_eos, eos, fill))
    state.logits = None
    loops: list[str] = []  # how each segment ran: "graph" (replayed) or "static" (step by step)
    fallbacks = ragged.fallbacks()
    step = 0  # index of the next token to feed
    while step < max_new - 1:
        seg_end = min(step + segment, max_new - 1)  # this segment feeds tokens step .. seg_end-1
        span[0] = total if blocks else prompt_slots + seg_end  # ragged: the block mask has ``total`` slots
        graphed = graphs and not getattr(hf, GRAPHS_OFF, False)
        if graphed and seg_end - step > 2:
            step, captured = _replay_segment(hf, step_fn, step, seg_end, stop_at_eos, state)
            loops.append("graph" if captured else "static")
        else:  # without graphs, or a tail of at most 2 steps (not worth a capture: the graph's kernels, unrecorded)
            loops.append("graph" if graphed else "static")
            for _ in range(step, seg_end):
                step_fn()
                step += 1
                if stop_at_eos and step % 8 == 0 and bool(state.finished.all()):
                    break
        if stop_at_eos and bool(state.finished.all()):
            break
    loop = "+".join(dict.fromkeys(loops)) or "static"
    if not blocks:
        return decode_path(loop, _attention(hf))
    return decode_path(loop, "ragged-fallback" if ragged.fallbacks() > fallbacks else "ragged")


GRAPHS_OFF = "_transferlab_graphs_off"  # set on a model whose step could not be captured (a MoE router's
# host-side expert loop, no memory for the graph's pool, ...): that model decodes without graphs from then on


def _graphs_failed(hf, exc: Exception) -> None:
    import warnings

    warnings.warn(
        f"transferlab.engine.decode: capturing a CUDA graph of {type(hf).__name__} failed ({type(exc).__name__}: "
        f"{str(exc)[:200]}); this model decodes without graphs from now on (same tokens, slower)",
        RuntimeWarning,
        stacklevel=3,
    )
    setattr(hf, GRAPHS_OFF, True)


def _replay_segment(hf, step_fn, step: int, seg_end: int, stop_at_eos: bool, state) -> tuple[int, bool]:
    """Run steps ``step .. seg_end-1``: one eager step (warm-up, on a side stream), then a captured graph;
    returns the next step to run (after the warm-up only, when the capture failed) and whether the graph ran.

    The graph (and its private memory pool) is released when the segment ends, before the next capture.
    """
    with stage("graph_capture"):  # the warm-up step and the recording, not the replays
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step_fn()
        torch.cuda.current_stream().wait_stream(side)
        step += 1
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                step_fn()  # recorded, not run
        except RuntimeError as exc:  # out of memory for the graph's pool, an op that cannot be captured, ...
            _graphs_failed(hf, exc)  # the caller's loop goes on from ``step`` without graphs
            torch.cuda.synchronize()
            return step, False
    while step < seg_end:
        graph.replay()
        step += 1
        if stop_at_eos and step % 8 == 0 and bool(state.finished.all()):
            break
    return step, True


__all__ = ["run", "DecodeState", "StaticLayer", "static_ok", "mode", "SEGMENT", "MODES"]
