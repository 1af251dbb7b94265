"""Ragged decode attention: at each decode step, every row reads only its own cache slots.

A batch's cache is left-padded to its longest prompt, and the static decode
loop (:mod:`.decode`) keeps slots for tokens not yet decoded. SDPA's kernels
read every slot of every row and mask the unused ones: on the W300 batch
(1,200 rows, a cache padded to 121 prompt slots of which short targets use
8-40) the memory-efficient kernel took 18.7-27.4 ms of a ~43 ms Mistral-7B
decode step, FlexAttention 4.8-7.7 ms (``benchmarks/decode_attention.py``,
one H200, ``decode_attention_NVIDIA_H200_20261129-163051.json``).

FlexAttention (PyTorch's own, compiled to Triton) takes a **block mask**: per
row, the cache blocks (:data:`BLOCK` slots each) it visits. Here a row visits
the blocks from the one holding its first real slot to the one holding the
slot this step writes; padding before it and the slots after it are never
read. Inside a visited block the decode loop's own boolean mask decides, slot
by slot, so the result is the masked softmax SDPA computes (the same
arithmetic, summed in another order). Grouped-query attention is done in the
kernel (no ``repeat_kv``).

:class:`RaggedBlocks` owns the block mask. Its per-row block counts are
advanced *on the device* from the loop's slot counter, so one CUDA graph
serves every step of a generation (the static loop then needs no segments).
The block mask travels to the attention function as the model's
``attention_mask`` (``transformers`` hands a 4D mask through untouched);
``transferlab_sdpa`` (:mod:`.fastpath`) sends it here.

``TRANSFERLAB_DECODE_ATTENTION`` = ``auto`` (default: ragged on CUDA where
FlexAttention imports) | ``ragged`` (also on CPU, uncompiled: slow, for
tests) | ``sdpa`` (the masked SDPA over all slots).
"""

from __future__ import annotations

import os
import threading
import warnings

import torch

BLOCK = 32  # cache slots per block: 16 and 32 measured alike at W300 (32 keeps the block tables shorter)
MODES = ("auto", "ragged", "sdpa")
_compiled = None


def mode() -> str:
    value = os.environ.get("TRANSFERLAB_DECODE_ATTENTION", "auto")
    if value not in MODES:
        raise ValueError(f"TRANSFERLAB_DECODE_ATTENTION={value!r}: use one of {', '.join(MODES)}")
    return value


SHAPES = 64  # kernels compiled per process (one per batch size and cache width); past that, SDPA decodes
MIN_TORCH = (2, 7)  # BlockMask.from_kv_blocks(seq_lengths=...), Dynamo's recompile_limit
_shapes: set = set()  # decode shapes given the ragged path (wanted)
_ready: set = set()  # call shapes whose kernel has run (attend)
_failed: set = set()  # call shapes whose kernel failed to compile or run: SDPA over the same mask
_calls = threading.local()  # per thread: calls answered by that fallback (see fallbacks())


def fallbacks() -> int:
    """How many calls this thread's ragged attention answered with its SDPA fallback: a decode loop that sees
    this count grow used the fallback (every call of a shape after its kernel failed is one). Per thread, so
    loops decoding in other threads cannot mislabel each other."""
    return getattr(_calls, "fallbacks", 0)


def _fell_back() -> None:
    _calls.fallbacks = fallbacks() + 1


def wanted(device: torch.device, shape: tuple = ()) -> bool:
    """Whether the static decode loop on ``device`` should attend raggedly (see module docstring).

    On CUDA the kernel is compiled for each ``shape`` (batch size, cache slots,
    heads, dtype): a kernel compiled for a symbolic batch size is the
    prefill kernel, several times slower at decode. A process compiles at most
    :data:`SHAPES` of them (0.2-1.4 s each from the compile cache, up to 4 s
    cold); a new shape past that decodes with SDPA, with a warning (bf16
    rounding differs between the two).
    """
    choice = mode()
    if choice == "sdpa" or (choice == "auto" and device.type != "cuda"):
        return False
    if _torch_version() < MIN_TORCH:
        return False
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
        from torch.utils._triton import has_triton
    except ImportError:  # a PyTorch without FlexAttention
        return False
    if device.type != "cuda":
        return True
    if not has_triton():
        return False
    if shape in _shapes or len(_shapes) < SHAPES:
        _shapes.add(shape)
        return True
    warnings.warn(
        f"transferlab.engine.ragged: this process compiled ragged decode attention for {SHAPES} batch shapes; "
        "new shapes decode with SDPA (same tokens in float32; bf16 rounding differs)",
        RuntimeWarning,
        stacklevel=2,
    )
    return False


def _torch_version() -> tuple:
    import re

    return tuple(int(x) for x in re.findall(r"\d+", torch.__version__)[:2])


def padded(slots: int) -> int:
    """``slots`` rounded up to whole blocks (the kernel reads whole blocks; the extra slots stay masked)."""
    return -(-slots // BLOCK) * BLOCK


class RaggedBlocks:
    """The block mask of a static decode loop (see module docstring).

    ``mask``: the loop's ``[B, slots]`` boolean mask (real slots True), updated
    by the loop in place; ``slot``: the loop's 0-dim counter of the slot the
    next fed token writes. ``slots`` must be whole blocks (:func:`padded`).
    """

    def __init__(self, mask: torch.Tensor, slot: torch.Tensor):
        from torch.nn.attention.flex_attention import BlockMask

        B, slots = mask.shape
        if slots % BLOCK:
            raise ValueError(f"RaggedBlocks needs whole blocks of {BLOCK} slots; got {slots}")
        n_blocks = slots // BLOCK
        self.slot = slot
        self.first = (mask.int().argmax(dim=1) // BLOCK).to(torch.int32)  # each row's first real slot's block
        steps = torch.arange(n_blocks, dtype=torch.int32, device=mask.device)
        indices = (self.first[:, None] + steps).clamp(max=n_blocks - 1).view(B, 1, 1, n_blocks).contiguous()
        self.counts = torch.zeros(B, 1, 1, dtype=torch.int32, device=mask.device)
        self.advance()

        def element_mask(b, h, q_idx, kv_idx):
            return mask[b, kv_idx]

        import inspect

        forward_only = {}
        if "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters:
            forward_only["compute_q_blocks"] = False  # the backward pass's tables: never used, stale once advanced
        self.block_mask = BlockMask.from_kv_blocks(
            self.counts, indices, BLOCK_SIZE=(128, BLOCK), mask_mod=element_mask, seq_lengths=(1, slots), **forward_only
        )

    def advance(self) -> None:
        """Visit the blocks up to the one holding ``slot`` (device-side: safe inside a CUDA graph)."""
        self.counts.copy_((self.slot // BLOCK - self.first + 1).view(-1, 1, 1))


UNSUPPORTED = ("softcap", "sinks", "s_aux", "position_bias")  # attention variants the ragged call does not compute


def supports(config) -> bool:
    """Whether the model's attention is plain softmax attention (no logit soft-capping, no sinks)."""
    return getattr(config, "attn_logit_softcapping", None) is None and not getattr(config, "sinks", None)


def attend(query, key, value, block_mask, scale, dropout=0.0, **kwargs):
    """One decode step's attention under ``block_mask``: ``[B, Hq, 1, d]`` -> ``[B, 1, Hq, d]``."""
    extra = [k for k in UNSUPPORTED if kwargs.get(k) is not None]
    if extra or dropout or query.shape[2] != 1:
        raise NotImplementedError(
            f"ragged decode attention computes plain softmax attention of one new token; this call has "
            f"{extra or ('dropout' if dropout else f'{query.shape[2]} query positions')}: decode with "
            "TRANSFERLAB_DECODE_ATTENTION=sdpa"
        )
    # the compiled kernel is specialised on strides too (Dynamo guards on them): a query laid out otherwise
    # compiles anew, and must do so in-process and with the fallback
    shape = (tuple(query.shape), tuple(key.shape), query.dtype, query.device, scale, query.stride())
    if shape in _failed:
        _fell_back()
        return _masked_sdpa(query, key, value, block_mask, scale)
    call = {
        "block_mask": block_mask,
        "scale": scale,
        "enable_gqa": key.shape[1] != query.shape[1],
        "kernel_options": _OPTIONS if query.device.type == "cuda" else None,
    }
    if shape in _ready:
        return _kernel(query.device)(query, key, value, **call).transpose(1, 2).contiguous()
    try:  # the first call of a shape compiles (on CUDA): a failure falls back instead of ending the run
        with _compiling_here(query.device):
            out = _kernel(query.device)(query, key, value, **call)
    except Exception as exc:  # noqa: BLE001 (Dynamo, Inductor and Triton raise many kinds)
        _failed.add(shape)
        warnings.warn(
            f"transferlab.engine.ragged: the ragged decode attention failed for shape {shape[:2]} "
            f"({type(exc).__name__}: {str(exc)[:200]}); it decodes with SDPA over the same mask instead",
            RuntimeWarning,
            stacklevel=2,
        )
        _fell_back()
        return _masked_sdpa(query, key, value, block_mask, scale)
    _ready.add(shape)
    return out.transpose(1, 2).contiguous()


def _masked_sdpa(query, key, value, block_mask, scale):
    """The same attention from the element mask alone (SDPA reads every slot): exact, slower; the fallback.

    Every written slot lies in a visited block (:class:`RaggedBlocks`), so the
    element mask alone selects the same slots.
    """
    from .grouped import grouped_decode

    dev = query.device
    rows = torch.arange(query.shape[0], device=dev)[:, None]
    slots = torch.arange(key.shape[2], device=dev)[None, :]
    zero = torch.zeros((), dtype=torch.long, device=dev)
    mask = block_mask.mask_mod(rows, zero, zero, slots)  # [B, slots]
    return grouped_decode(query, key, value, mask[:, None, None, :], scale)


_OPTIONS = {"BLOCK_N": BLOCK}  # the kernel's key tile: the block mask's blocks are whole tiles


def _compiling_here(device):
    """Compile in this process, not in a pool of worker processes (unless TORCHINDUCTOR_COMPILE_THREADS says
    otherwise): one small kernel compiles faster than a pool starts, and a started pool cost the command line
    seconds at exit (measured on the H200 host: exit 5.3-6.2 s with a pool, 1.8 s before)."""
    import contextlib

    if device.type != "cuda" or "TORCHINDUCTOR_COMPILE_THREADS" in os.environ:  # nothing compiles off CUDA
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(compile_threads=1)


def _kernel(device):
    """FlexAttention compiled (once per process) on CUDA; its uncompiled reference elsewhere (tests)."""
    global _compiled
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return _quiet(flex_attention)
    if _compiled is None:
        limit = max(torch._dynamo.config.recompile_limit, 2 * SHAPES + 8)  # margin: scale or device may differ
        torch._dynamo.config.recompile_limit = limit
        _compiled = torch.compile(flex_attention, dynamic=False)  # see wanted(): one kernel per shape
    return _compiled


def _quiet(fn):
    def call(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            warnings.filterwarnings("ignore", message=".*without torch.compile.*")
            return fn(*args, **kwargs)

    return call


__all__ = ["BLOCK", "MODES", "SHAPES", "RaggedBlocks", "attend", "fallbacks", "mode", "padded", "supports", "wanted"]
