"""Randomly initialised models of real shapes, built directly on a device (speed work).

Speed does not depend on weight values, so benchmarks use a random model with
the exact shape of a real one (``mistral-7b``: Mistral-7B-Instruct-v0.2's
config), created on the GPU without any download. Such a model has no
tokenizer: prompts are token-id lists and :class:`IdTokenizer` decodes ids to
space-separated numbers.
"""

from __future__ import annotations

import torch

from .adapters import make_adapter
from .model import Model

SHAPES = {
    "mistral-7b": dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
        rms_norm_eps=1e-5, rope_theta=1000000.0, sliding_window=None, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
    ),
    "tiny-mistral": dict(
        vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=32,
        num_attention_heads=8, num_key_value_heads=2, head_dim=8, max_position_embeddings=4096,
        rms_norm_eps=1e-5, rope_theta=1000000.0, sliding_window=None, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
    ),
}


class IdTokenizer:
    """A stand-in tokenizer for random models: ids in, ids out."""

    def __init__(self, vocab_size: int, bos: int = 1, eos: int = 2, pad: int = 0):
        self.vocab_size, self.bos_token_id, self.eos_token_id, self.pad_token_id = vocab_size, bos, eos, pad
        self.unk_token_id = None

    def __call__(self, text):
        raise TypeError("a random model has no tokenizer: give prompts as lists of token ids")

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(int(i)) for i in ids)

    def get_vocab(self) -> dict:
        return {str(i): i for i in range(self.vocab_size)}


def build_random(shape: str = "mistral-7b", *, device="cuda", dtype=torch.bfloat16, n_layers: int | None = None,
                 attn_implementation: str = "sdpa", seed: int = 0) -> Model:
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
    if attn_implementation == "sdpa" and torch.device(device).type == "cuda":
        from ..fastpath import use_fast_attention

        use_fast_attention(hf)
    with torch.no_grad():  # random normal weights with a sane scale (init may leave some at zero)
        for p in hf.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    return Model(hf=hf, tokenizer=IdTokenizer(kw["vocab_size"]), adapter=make_adapter(hf), name=f"random:{shape}",
                 source={"kind": "random", "shape": shape, "seed": seed})
