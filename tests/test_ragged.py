"""The ragged decode attention's block mask visits exactly the blocks a row needs.

On CPU FlexAttention runs its reference code, which applies the element mask
but not the block tables, so the decode-loop tests (``test_decode.py``) cannot
see a wrong table; these tests read the tables themselves: every real,
written slot lies in a visited block; no visited block lies after the block
of the slot being written, nor wholly before the row's first real slot.
"""

from __future__ import annotations

import pytest
import torch

from transferlab.engine import ragged


def _mask(B=6, slots=48, prompt=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, slots, dtype=torch.bool)
    for b in range(B):
        start = int(torch.randint(0, prompt, (1,), generator=g))
        mask[b, start:prompt] = True
    mask[1, 15] = False  # a hole inside a prompt: decided slot by slot, not by block
    return mask


def _visited(blocks: ragged.RaggedBlocks, slots: int) -> torch.Tensor:
    dense = blocks.block_mask.to_dense()[:, 0, 0, :].bool()  # [B, n_blocks]
    return dense.repeat_interleave(ragged.BLOCK, dim=1)[:, :slots]


@pytest.mark.parametrize("block", [4, 8, 32])
def test_blocks_cover_real_slots_and_nothing_after(monkeypatch, block):
    monkeypatch.setattr(ragged, "BLOCK", block)
    prompt = 20
    slots = ragged.padded(prompt + 25)
    mask = _mask(slots=slots, prompt=prompt)
    slot = torch.tensor(prompt)
    blocks = ragged.RaggedBlocks(mask, slot)
    idx = torch.arange(slots)
    first = mask.int().argmax(dim=1)
    for _ in range(25):  # the decode loop: write the slot, advance the tables, attend
        mask[:, int(slot)] = True
        blocks.advance()
        seen = _visited(blocks, slots)
        written = mask & (idx <= slot)
        assert not (written & ~seen).any(), "a real slot lies in a block the kernel skips"
        assert not (seen & (idx[None] // block > int(slot) // block)).any(), "a block after the written slot"
        assert not (seen & (idx[None] // block < first[:, None] // block)).any(), "a block of padding only"
        slot += 1


def test_padded_and_refusals(monkeypatch):
    monkeypatch.setattr(ragged, "BLOCK", 8)
    assert [ragged.padded(n) for n in (1, 8, 9, 16)] == [8, 8, 16, 16]
    with pytest.raises(ValueError, match="whole blocks of 8"):
        ragged.RaggedBlocks(torch.ones(2, 12, dtype=torch.bool), torch.tensor(3))
    q, kv = torch.randn(1, 2, 2, 4), torch.randn(1, 2, 8, 4)
    blocks = ragged.RaggedBlocks(torch.ones(1, 8, dtype=torch.bool), torch.tensor(3))
    with pytest.raises(NotImplementedError, match="2 query positions"):
        ragged.attend(q, kv, kv, blocks.block_mask, 0.5)
    with pytest.raises(NotImplementedError, match="softcap"):
        ragged.attend(q[:, :, :1], kv, kv, blocks.block_mask, 0.5, softcap=30.0)


def test_mode_from_the_environment(monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_DECODE_ATTENTION", "sdpa")
    assert not ragged.wanted(torch.device("cpu"))
    monkeypatch.setenv("TRANSFERLAB_DECODE_ATTENTION", "ragged")
    assert ragged.wanted(torch.device("cpu"))
    monkeypatch.setenv("TRANSFERLAB_DECODE_ATTENTION", "auto")
    assert not ragged.wanted(torch.device("cpu"))  # auto: CUDA only
    monkeypatch.setenv("TRANSFERLAB_DECODE_ATTENTION", "flash")
    with pytest.raises(ValueError, match="TRANSFERLAB_DECODE_ATTENTION='flash'"):
        ragged.wanted(torch.device("cpu"))


def test_a_process_compiles_a_bounded_number_of_shapes(monkeypatch):
    """Each CUDA shape is a compiled kernel: past SHAPES of them a new shape decodes with SDPA; known ones stay."""
    import torch.utils._triton as triton_utils

    monkeypatch.setattr(triton_utils, "has_triton", lambda: True)
    monkeypatch.setattr(ragged, "_shapes", set())
    monkeypatch.setattr(ragged, "SHAPES", 2)
    cuda = torch.device("cuda")
    assert ragged.wanted(cuda, (8, 64)) and ragged.wanted(cuda, (8, 96))
    with pytest.warns(RuntimeWarning, match="for 2 batch shapes; new shapes decode with SDPA"):
        assert not ragged.wanted(cuda, (4, 64))  # a third shape
    assert ragged.wanted(cuda, (8, 64))  # compiled already
    monkeypatch.setattr(ragged, "_torch_version", lambda: (2, 6))  # before FlexAttention's decode API
    assert not ragged.wanted(cuda, (8, 64))
    assert ragged.wanted(torch.device("cpu"), (4, 64)) is False  # auto: not on CPU at all


def test_fallbacks_are_counted_per_thread():
    """A decode loop labels its rows from the fallbacks counted in its own thread: another thread's do not show."""
    import threading

    from transferlab.engine import ragged

    before = ragged.fallbacks()
    other = threading.Thread(target=lambda: [ragged._fell_back() for _ in range(3)])
    other.start()
    other.join()
    assert ragged.fallbacks() == before
    ragged._fell_back()
    assert ragged.fallbacks() == before + 1
