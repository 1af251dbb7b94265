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


SHAPES = 16  # kernels compiled per process (one per batch size and cache width); past that, SDPA decodes
_shapes: set = set()


def wanted(device: torch.device, shape: tuple = ()) -> bool:
    """Whether the static decode loop on ``device`` should attend raggedly (see module docstring).

    On CUDA the kernel is compiled for each ``shape`` (batch size, cache slots,
    heads, dtype): a kernel compiled for a symbolic batch size is the
    prefill kernel, several times slower at decode. A process compiles at most
    :data:`SHAPES` of them (1-2.5 s each, less from the compile cache); a new
    shape past that decodes with SDPA.
    """
    choice = mode()
    if choice == "sdpa" or (choice == "auto" and device.type != "cuda"):
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
    return False


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

        self.block_mask = BlockMask.from_kv_blocks(
            self.counts, indices, BLOCK_SIZE=(128, BLOCK), mask_mod=element_mask, seq_lengths=(1, slots)
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
    fn = _kernel(query.device)
    with _compiling_here(query.device):
        out = fn(
            query,
            key,
            value,
            block_mask=block_mask,
            scale=scale,
            enable_gqa=key.shape[1] != query.shape[1],
            kernel_options=_OPTIONS if query.device.type == "cuda" else None,
        )
    return out.transpose(1, 2).contiguous()


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
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, SHAPES + 1)
        _compiled = torch.compile(flex_attention, dynamic=False)  # see wanted(): one kernel per shape
    return _compiled


def _quiet(fn):
    def call(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            warnings.filterwarnings("ignore", message=".*without torch.compile.*")
            return fn(*args, **kwargs)

    return call


__all__ = ["BLOCK", "MODES", "SHAPES", "RaggedBlocks", "attend", "mode", "padded", "supports", "wanted"]
