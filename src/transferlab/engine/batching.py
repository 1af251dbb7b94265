"""Left-padded batches of token ids, with the BOS rule used everywhere.

**The BOS rule.** A prompt is encoded exactly as the model's tokenizer encodes
it, so it starts with BOS when the tokenizer adds one (Llama, Mistral and the
embedded stories260K do). That BOS is a real token: it is attended to, it holds
position 0, and capture returns its activation when no window is asked for.
Windows (capture's ``window``, R_V's window, a patch's window) count back from
the last token and **never include BOS**: a prompt has ``n_tokens`` = its
tokens without BOS, and a window longer than that is "short" (R_V reports it).

**Left padding.** Prompts of different lengths are padded on the left, masked
out with ``attention_mask``, and given explicit ``position_ids`` that count
only real tokens (``cumsum(mask) - 1``), so every real token sits at the same
position it would have alone. Padded slots get position 0 and are never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """A left-padded batch: ``input_ids``/``attention_mask``/``position_ids`` are ``[B, T]``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    lengths: list[int]  # real tokens per row (BOS included)
    has_bos: list[bool]

    @property
    def width(self) -> int:
        return self.input_ids.shape[1]

    def to(self, device) -> "Batch":
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.lengths,
            self.has_bos,
        )


def pad_id_of(tokenizer) -> int:
    """The id used in padded slots (never attended to): pad, else eos, else 0."""
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        idx = getattr(tokenizer, name, None)
        if isinstance(idx, int) and idx >= 0:
            return idx
    return 0


def encode(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids per prompt, with the tokenizer's own special tokens (BOS).

    A prompt may also be given as a list of token ids, used as is (BOS is
    then whatever the list starts with).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    out = []
    for p in prompts:
        if isinstance(p, (list, tuple)) and p and all(isinstance(t, int) for t in p):
            out.append(list(p))
            continue
        if not isinstance(p, str):
            raise TypeError(f"prompts must be strings or lists of token ids, got {type(p).__name__}")
        ids = tokenizer(p)["input_ids"]
        if len(ids) == 0:
            raise ValueError(f"prompt {p!r} encodes to zero tokens")
        out.append(list(ids))
    return out


def left_pad(seqs: list[list[int]], pad_id: int, bos_id: int | None, device=None) -> Batch:
    """Left-pad token-id lists into a :class:`Batch`."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    batch = Batch(ids, mask, pos, [len(s) for s in seqs], [bos_id is not None and s[0] == bos_id for s in seqs])
    return batch.to(device) if device is not None else batch
