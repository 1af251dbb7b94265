"""Tiny random models of every supported family, for tests (nothing downloaded).

``build_tiny("mistral")`` returns a :class:`Model` with 4 layers, 8 query heads
and 4 key/value heads (GQA), random float32 weights from a fixed seed, and the
embedded stories260K tokenizer (vocabulary of 512), so text prompts work.
"""

from __future__ import annotations

import torch

from .adapters import make_adapter
from .model import Model

TINY_FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "gemma2", "gemma3", "phi3")

_COMMON = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=8,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=None,
    tie_word_embeddings=False,
)


def tiny_config(family: str):
    """The HF config of the tiny model of ``family``."""
    import transformers as tf

    kw = dict(_COMMON)
    if family == "llama":
        return tf.LlamaConfig(**kw)
    if family == "mistral":
        return tf.MistralConfig(**kw, sliding_window=None)
    if family == "mixtral":
        return tf.MixtralConfig(**kw, num_local_experts=4, num_experts_per_tok=2, sliding_window=None)
    if family == "qwen2":
        return tf.Qwen2Config(**kw, use_sliding_window=False)
    if family == "gemma2":
        kw["tie_word_embeddings"] = True
        return tf.Gemma2Config(
            **kw,
            sliding_window=4096,
            query_pre_attn_scalar=8,
            final_logit_softcapping=30.0,
            attn_logit_softcapping=50.0,
            hidden_activation="gelu_pytorch_tanh",
        )
    if family == "gemma3":
        return gemma3_config(kw)
    if family == "phi3":
        return tf.Phi3Config(**kw, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, sliding_window=None)
    raise ValueError(f"unknown tiny family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")


def gemma3_config(kw: dict, sliding_window: int = 4096):
    """A tiny Gemma-3: local (sliding-window) layers with RoPE base 1e4 and a last global layer with base 1e6,
    QK-norm, scaled embeddings and sandwich norms, as the real model has (at 4 layers instead of 18)."""
    import transformers as tf

    kw = {**kw, "tie_word_embeddings": True}
    n = kw["num_hidden_layers"]
    return tf.Gemma3TextConfig(
        **kw,
        sliding_window=sliding_window,
        query_pre_attn_scalar=8,
        hidden_activation="gelu_pytorch_tanh",
        layer_types=["sliding_attention"] * (n - 1) + ["full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        },
    )


def build_tiny(family: str = "llama", seed: int = 0, attn_implementation: str = "sdpa") -> Model:
    """A seeded random ``family`` model with the stories260K tokenizer."""
    from transformers import AutoModelForCausalLM

    from .embedded import embedded_tokenizer

    config = tiny_config(family)
    if family == "gemma2":  # softcapped attention: HF supports only the eager kernel
        attn_implementation = "eager"
    config._attn_implementation = attn_implementation
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        # Random init gives near-uniform logits; widen them so greedy decoding is decisive.
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.08)
    hf.eval()
    return Model(
        hf=hf,
        tokenizer=embedded_tokenizer(),
        adapter=make_adapter(hf),
        name=f"tiny:{family}",
        source={"kind": "tiny", "family": family, "seed": seed},
    )
