"""Randomly initialised models of real shapes, built directly on a device (speed work).

Speed does not depend on weight values, so benchmarks use a random model with
the exact shape of a real one (``mistral-7b``: Mistral-7B-Instruct-v0.2's
config), created on the GPU without any download (``load_model("random:mistral-7b")``).
Such a model has no vocabulary of words: its "text" is token ids written as
integers. :class:`IdTokenizer` reads ``"1 523 88"`` as ``[1, 523, 88]`` and
writes ids back the same way, so prompt banks, the experiment runner and the
text scorers work on it unchanged.
"""

from __future__ import annotations

import re

import torch

from .adapters import make_adapter
from .model import Model

SHAPES = {
    "mistral-7b": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=32768,
        rms_norm_eps=1e-5,
        rope_theta=1000000.0,
        sliding_window=None,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    ),
    "tiny-mistral": dict(
        vocab_size=32000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=32,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=1000000.0,
        sliding_window=None,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    ),
}


class TokenIdError(ValueError):
    """Text that an :class:`IdTokenizer` cannot read as token ids of its vocabulary."""


_ID = re.compile(r"[0-9]+")


class IdTokenizer:
    """The tokenizer of a random model: text is token ids written as integers.

    ``"1 523 88"`` (integers separated by whitespace) encodes to exactly
    ``[1, 523, 88]``: nothing is added, so a prompt starts with BOS (id 1) when
    its text starts with ``1``. Decoding writes every id, special ones
    included, as space-separated integers, so ``encode(decode(ids)) == ids``
    (``skip_special_tokens`` is accepted and ignored: an id is never dropped).
    Any other text, or an id outside ``[0, vocab_size)``, is a
    :class:`TokenIdError` naming what is wrong. Besides ``__call__``,
    ``encode`` and ``decode`` it answers what the rest of the package asks of
    a Hugging Face tokenizer: ``bos/eos/pad/unk_token_id``,
    ``all_special_ids``, ``get_vocab`` (id as text -> id), ``batch_decode``,
    ``convert_ids_to_tokens`` and ``len``.
    """

    def __init__(self, vocab_size: int, bos: int = 1, eos: int = 2, pad: int = 0):
        self.vocab_size, self.bos_token_id, self.eos_token_id, self.pad_token_id = vocab_size, bos, eos, pad
        self.unk_token_id = None

    @property
    def all_special_ids(self) -> list[int]:
        return sorted({self.pad_token_id, self.bos_token_id, self.eos_token_id})

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, **_ignored) -> list[int]:
        """The ids written in ``text`` (whitespace-separated non-negative integers), in order."""
        if not isinstance(text, str):
            raise TypeError(f"IdTokenizer encodes text (token ids written as integers), got {type(text).__name__}")
        parts = text.split()
        bad = [p for p in parts if not _ID.fullmatch(p)]
        if bad:
            shown = ", ".join(repr(p) for p in bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise TokenIdError(
                f'a random model reads prompts written as token ids like "1 523 88" '
                f"(whitespace-separated non-negative integers); this text has {len(bad)} other word(s): {shown} "
                f"(text starts {text[:60]!r})"
            )
        ids = [int(p) for p in parts]
        out = sorted({i for i in ids if i >= self.vocab_size})
        if out:
            shown = ", ".join(map(str, out[:10])) + (", ..." if len(out) > 10 else "")
            raise TokenIdError(f"token id(s) {shown} are outside the vocabulary (ids 0..{self.vocab_size - 1})")
        return ids

    def __call__(self, text, **_ignored) -> dict:
        """``{"input_ids": ids}`` as a Hugging Face tokenizer answers (a list of texts: a list of id lists)."""
        if isinstance(text, (list, tuple)):
            return {"input_ids": [self.encode(t) for t in text]}
        return {"input_ids": self.encode(text)}

    def decode(self, ids, skip_special_tokens: bool = True, **_ignored) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return " ".join(str(int(i)) for i in ids)

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **_ignored) -> list[str]:
        return [self.decode(s) for s in sequences]

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return str(ids)
        return [str(int(i)) for i in ids]

    def get_vocab(self) -> dict:
        return {str(i): i for i in range(self.vocab_size)}


def build_random(
    shape: str = "mistral-7b",
    *,
    device="cuda",
    dtype=torch.bfloat16,
    n_layers: int | None = None,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> Model:
    from transformers import MistralConfig, MistralForCausalLM

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    kw = dict(SHAPES[shape])
    if n_layers is not None:
        kw["num_hidden_layers"] = n_layers
    config = MistralConfig(**kw)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            hf = MistralForCausalLM(config)
    finally:
        torch.set_default_dtype(old)
    hf.eval()
    with torch.no_grad():  # random normal weights with a sane scale (init may leave some at zero)
        for p in hf.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    return Model(
        hf=hf,
        tokenizer=IdTokenizer(kw["vocab_size"]),
        adapter=make_adapter(hf),
        name=f"random:{shape}",
        source={"kind": "random", "shape": shape, "seed": seed},
    )
