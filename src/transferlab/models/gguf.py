"""Loading a Llama-architecture GGUF file without going through a model hub.

GGUF is llama.cpp's single-file format: metadata (architecture sizes, the
tokenizer's vocabulary and scores) plus the weight tensors. We read it with the
``gguf`` package and build a ``LlamaForCausalLM`` and a fast tokenizer
ourselves, rather than through ``transformers``' own GGUF path, because:

* the embedded stories260K file sets ``padding_token_id`` and
  ``seperator_token_id`` to 4294967295 (an unset uint32), which makes
  ``transformers`` fail; here any special-token id outside the vocabulary is
  treated as unset, and the shipped file is never modified;
* the result does not depend on private ``transformers`` internals, which move
  between releases.

Only un-quantised tensors (F32, F16, BF16) of the ``llama`` architecture are
supported; anything else is refused with a message that says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .gguf_check import GGUFError, check_gguf, check_llama


def _unpermute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of q/k rows (interleaved -> half-split rotary pairs)."""
    out_dim = w.shape[0]
    head_dim = out_dim // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _build_tokenizer(meta: dict):
    """A fast SentencePiece-BPE tokenizer (byte fallback) from GGUF vocab + scores."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    scores = list(meta.get("tokenizer.ggml.scores", [0.0] * len(tokens)))
    types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    if meta.get("tokenizer.ggml.model", "llama") != "llama":
        raise GGUFError(
            f"tokenizer model {meta.get('tokenizer.ggml.model')!r} is not supported; "
            "only SentencePiece ('llama') vocabularies are. Convert the model to a "
            "Hugging Face directory and load that instead."
        )
    vocab = {tok: i for i, tok in enumerate(tokens)}
    # Merges: a pair (a, b) merges into a+b when a+b is in the vocabulary; SentencePiece
    # BPE applies higher-scored pieces first, so merge rank follows the merged piece's score.
    normal = {t for t, ty in zip(tokens, types) if ty == 1}
    merges = []
    for piece in normal:
        if len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            a, b = piece[:cut], piece[cut:]
            if a in vocab and b in vocab:
                merges.append((scores[vocab[piece]], vocab[a], vocab[b], a, b))
    merges.sort(key=lambda m: (-m[0], m[1], m[2]))
    n = len(tokens)

    def special(key: str):
        idx = meta.get(f"tokenizer.ggml.{key}")
        return int(idx) if idx is not None and 0 <= int(idx) < n else None

    unk, bos, eos = special("unknown_token_id"), special("bos_token_id"), special("eos_token_id")
    bpe = models.BPE(
        vocab=vocab,
        merges=[(a, b) for _, _, _, a, b in merges],
        unk_token=tokens[unk] if unk is not None else None,
        fuse_unk=True,
        byte_fallback=True,
    )
    tk = Tokenizer(bpe)
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", True))
    if add_bos and bos is not None:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A",
            pair=f"{tokens[bos]} $A {tokens[bos]} $B",
            special_tokens=[(tokens[bos], bos)],
        )
    kwargs = {}
    if bos is not None:
        kwargs["bos_token"] = tokens[bos]
    if eos is not None:
        kwargs["eos_token"] = tokens[eos]
    if unk is not None:
        kwargs["unk_token"] = tokens[unk]
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, **kwargs)
    return tok


def _as_float32(t) -> torch.Tensor:
    """A tensor of the reader in float32. gguf's reader gives F32/F16 as numbers but BF16 as its raw bytes
    (numpy has no bfloat16): those go through gguf's own dequantisation."""
    if t.tensor_type.name == "BF16":
        from gguf.quants import dequantize

        data = dequantize(t.data, t.tensor_type)
    else:
        data = np.array(t.data, copy=True)
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32):
    """Read a llama GGUF file and return ``(hf_model, tokenizer)``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    summary = check_gguf(path)  # counts, lengths and tensor extents against the file's size
    reader, meta = summary.reader, summary.metadata
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise GGUFError(
            f"{path.name}: GGUF architecture {arch!r} is not supported by the built-in "
            "GGUF loader (only 'llama'). Convert it to a Hugging Face directory and "
            "pass that directory instead."
        )
    sizes = check_llama(summary)  # declared sizes against the tensors present: before anything is built
    n_heads, n_kv, hidden, n_vocab = sizes["n_heads"], sizes["n_kv_heads"], sizes["hidden"], sizes["vocab"]
    tensors = {}
    for t in reader.tensors:
        if t.tensor_type.name not in ("F32", "F16", "BF16"):
            raise GGUFError(
                f"{path.name}: tensor {t.name} is quantised ({t.tensor_type.name}); "
                "only F32/F16/BF16 GGUF files are supported."
            )
        tensors[t.name] = _as_float32(t)
    tokenizer = _build_tokenizer(meta)

    def special(key: str):
        idx = meta.get(f"tokenizer.ggml.{key}")
        return int(idx) if idx is not None and 0 <= int(idx) < n_vocab else None

    config = LlamaConfig(
        vocab_size=n_vocab,
        hidden_size=hidden,
        intermediate_size=sizes["ffn"],
        num_hidden_layers=sizes["n_layers"],
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        head_dim=sizes["head_dim"],
        max_position_embeddings=sizes["context"],
        rms_norm_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
        bos_token_id=special("bos_token_id"),
        eos_token_id=special("eos_token_id"),
        pad_token_id=None,
        tie_word_embeddings="output.weight" not in tensors,
    )
    model = LlamaForCausalLM(config)
    sd = {"model.embed_tokens.weight": tensors["token_embd.weight"], "model.norm.weight": tensors["output_norm.weight"]}
    if "output.weight" in tensors:
        sd["lm_head.weight"] = tensors["output.weight"]
    names = {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for name, w in tensors.items():
        if not name.startswith("blk."):
            continue
        _, idx, part, _ = name.split(".")
        if part == "attn_q":
            w = _unpermute_rotary(w, n_heads)
        elif part == "attn_k":
            w = _unpermute_rotary(w, n_kv)
        sd[f"model.layers.{idx}.{names[part]}.weight"] = w
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if "rotary_emb" not in m and m != "lm_head.weight"]
    if missing or unexpected:
        raise GGUFError(f"{path.name}: weights do not match the config (missing {missing}, unexpected {unexpected})")
    if config.tie_word_embeddings:
        model.tie_weights()
    model = model.to(dtype).eval()
    return model, tokenizer
