"""Loading (embedded GGUF, tiny, errors), the GGUF tokenizer, and the six adapters."""

from __future__ import annotations

import hashlib

import pytest
import torch
from conftest import GREEDY_TEXT, PROMPT

from transferlab import ModelLoadError, load_model
from transferlab.engine.batching import pad_id_of
from transferlab.models.adapters import make_adapter
from transferlab.models.embedded import embedded_path
from transferlab.models.tiny import TINY_FAMILIES, build_tiny
from transferlab.sites import ACTIVATION_SITES, HookPoint, SiteError

EMBEDDED_SHA256 = "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d"
UNSET_UINT32 = 4294967295


def _greedy_argmax(hf, bos_id: int, n_new: int) -> list[int]:
    """Plain greedy decoding with full recompute: no cache, no generate(), no transferlab code."""
    ids = torch.tensor([[bos_id]])
    with torch.no_grad():
        for _ in range(n_new):
            logits = hf(input_ids=ids, use_cache=False).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0].tolist()


@pytest.fixture(scope="module")
def greedy_ids(stories):
    return _greedy_argmax(stories.hf, stories.tokenizer.bos_token_id, 32)


# --------------------------------------------------------------------------- embedded model


def test_embedded_greedy_from_bos_reproduces_documented_text(stories, greedy_ids):
    assert greedy_ids[0] == stories.tokenizer.bos_token_id == 1
    text = stories.tokenizer.decode(greedy_ids, skip_special_tokens=True)
    assert text.startswith(GREEDY_TEXT), text


def test_embedded_hf_generate_agrees(stories, greedy_ids):
    ids = torch.tensor([[stories.tokenizer.bos_token_id]])
    out = stories.hf.generate(ids, do_sample=False, max_new_tokens=32, pad_token_id=pad_id_of(stories.tokenizer))
    assert out[0].tolist() == greedy_ids
    assert stories.tokenizer.decode(out[0], skip_special_tokens=True).startswith(GREEDY_TEXT)


def test_embedded_architecture(stories):
    a = stories.adapter
    assert (a.family, a.n_layers, a.n_heads, a.n_kv_heads, a.head_dim, a.hidden_size) == ("llama", 5, 8, 4, 8, 64)
    assert stories.hf.config.vocab_size == 512
    assert stories.dtype == torch.float32 and stories.device.type == "cpu"
    info = stories.info()
    assert info["parameters"] == sum(p.numel() for p in stories.hf.parameters())
    assert info["kv_width (k_proj/v_proj)"] == 32 and info["q_width"] == 64


def test_embedded_source_records_file_hash(stories):
    data = embedded_path().read_bytes()
    assert hashlib.sha256(data).hexdigest() == EMBEDDED_SHA256  # the shipped file is unmodified
    assert stories.source == {"kind": "gguf", "path": str(embedded_path()), "sha256": EMBEDDED_SHA256}
    assert stories.name == "stories260K"


def test_each_load_gets_its_own_weights(stories):
    other = load_model(device="cpu")
    w = other.hf.model.layers[0].self_attn.v_proj.weight
    assert w.data_ptr() != stories.hf.model.layers[0].self_attn.v_proj.weight.data_ptr()
    with torch.no_grad():
        w.add_(1.0)
    assert not torch.equal(w, stories.hf.model.layers[0].self_attn.v_proj.weight)
    fresh = load_model(device="cpu")
    assert torch.equal(
        fresh.hf.model.layers[0].self_attn.v_proj.weight, stories.hf.model.layers[0].self_attn.v_proj.weight
    )


def test_gguf_path_loads_the_same_model(stories):
    m = load_model(str(embedded_path()), device="cpu")
    assert m.name == "stories260K.gguf"
    ids = torch.tensor([[1, 403, 407, 261, 378]])
    with torch.no_grad():
        assert torch.equal(m.hf(ids).logits, stories.hf(ids).logits)


def test_dtype_bfloat16(stories):
    m = load_model(dtype="bf16", device="cpu")
    assert m.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in m.hf.parameters())


# --------------------------------------------------------------------------- tokenizer


def test_gguf_tokenizer_round_trips_greedy_output(stories, greedy_ids):
    tok = stories.tokenizer
    text = tok.decode(greedy_ids, skip_special_tokens=True)
    assert tok(text)["input_ids"] == greedy_ids  # encode(decode(ids)) == ids, BOS re-added
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


@pytest.mark.parametrize("text", ["Hello world", "café ☃ naïve", "  two spaces", "Lily\nand Tom", "a"])
def test_gguf_tokenizer_decode_encode(stories, text):
    tok = stories.tokenizer
    ids = tok(text)["input_ids"]
    assert ids[0] == 1 and 1 not in ids[1:]
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_unset_uint32_pad_id_is_treated_as_unset(stories):
    from gguf import GGUFReader

    fields = GGUFReader(str(embedded_path())).fields
    # The shipped file really carries the unset value (otherwise this test proves nothing).
    assert int(fields["tokenizer.ggml.padding_token_id"].contents()) == UNSET_UINT32
    assert int(fields["tokenizer.ggml.seperator_token_id"].contents()) == UNSET_UINT32
    tok = stories.tokenizer
    assert tok.pad_token_id is None
    assert stories.hf.config.pad_token_id is None
    assert stories.hf.model.embed_tokens.padding_idx is None
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
    assert pad_id_of(tok) == 2  # falls back to eos, never to 4294967295


def test_out_of_vocab_special_id_is_unset_in_built_tokenizer():
    from transferlab.models.gguf import _build_tokenizer

    tokens = ["<unk>", "<s>", "</s>", "▁a", "▁b", "a", "b", "▁"]
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * 3 + [-1.0, -2.0, -3.0, -4.0, -5.0],
        "tokenizer.ggml.token_type": [2, 3, 3, 1, 1, 1, 1, 1],
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": UNSET_UINT32,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.padding_token_id": UNSET_UINT32,
    }
    tok = _build_tokenizer(meta)
    assert tok.bos_token_id is None and tok.pad_token_id is None and tok.eos_token_id == 2
    assert tok("a b")["input_ids"] == [3, 4]  # no BOS is added when BOS is unset


def test_non_llama_gguf_is_refused(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        ModelLoadError, match=r"architecture 'gpt2' is not supported \(supported: llama, qwen2, gemma3\)"
    ):
        load_model(str(path), device="cpu")


# --------------------------------------------------------------------------- load errors


def test_unknown_hub_id_offline_names_id_cache_and_local_dir(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # the env var is read at import time
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError) as info:
        load_model("nonexistent-org/nonexistent-model", device="cpu")
    msg = str(info.value)
    assert "'nonexistent-org/nonexistent-model'" in msg
    assert str(tmp_path) in msg  # the cache that was looked in
    assert "local directory" in msg and "--model /path/to/nonexistent-model" in msg


def test_missing_gguf_path(tmp_path):
    path = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(ModelLoadError, match=f"GGUF file not found: {path}"):
        load_model(str(path))


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")


@pytest.mark.parametrize("dtype", ["float8", "int8", "double"])
def test_unknown_dtype(dtype):
    with pytest.raises(ModelLoadError, match=rf"unknown dtype '{dtype}'; use one of float32, .*bf16"):
        load_model(dtype=dtype)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("tiny:gpt2", r"unknown tiny model 'tiny:gpt2'.*llama, mistral"),
        ("tiny:", r"unknown tiny model"),
        ("tiny:llama:abc", r"seed .* must be a non-negative integer"),
    ],
)
def test_bad_tiny_spec(spec, match):
    with pytest.raises(ModelLoadError, match=match):
        load_model(spec)


def test_unsupported_architecture():
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=16, n_positions=16))
    with pytest.raises(SiteError, match=r"unsupported architecture 'gpt2'.*supported families: llama"):
        make_adapter(hf)


# --------------------------------------------------------------------------- tiny models and adapters


def test_tiny_spec_is_seeded_and_cast():
    a, b, c = load_model("tiny:qwen2"), load_model("tiny:qwen2"), load_model("tiny:qwen2:1")
    wa = a.hf.model.layers[0].self_attn.v_proj.weight
    assert torch.equal(wa, b.hf.model.layers[0].self_attn.v_proj.weight)
    assert not torch.equal(wa, c.hf.model.layers[0].self_attn.v_proj.weight)
    assert a.source == {"kind": "tiny", "family": "qwen2", "seed": 0} and c.source["seed"] == 1
    assert load_model("tiny:llama", dtype="bf16").dtype == torch.bfloat16


def test_build_tiny_does_not_touch_the_global_rng():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    build_tiny("llama", seed=3)
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(123)  # and the weights do not depend on the global RNG
    a = build_tiny("llama", seed=3).hf.model.layers[1].mlp.up_proj.weight
    torch.manual_seed(456)
    assert torch.equal(a, build_tiny("llama", seed=3).hf.model.layers[1].mlp.up_proj.weight)


def test_tiny_adapter_numbers(tiny):
    family = tiny.name.split(":")[1]
    a = tiny.adapter
    assert a.family == family
    assert (a.n_layers, a.n_heads, a.n_kv_heads, a.head_dim, a.hidden_size) == (4, 8, 4, 8, 64)
    assert a.fused_qkv == (family == "phi3")
    # GQA: k/v are n_kv_heads * head_dim wide, not hidden_size.
    assert a.width("q_proj") == 64
    assert a.width("k_proj") == a.width("v_proj") == 32
    for site in ("attn_out", "resid_pre", "resid_post", "mlp_out"):
        assert a.width(site) == 64
    assert a.heads("q_proj") == 8 and a.heads("k_proj") == a.heads("v_proj") == 4
    assert a.rope_theta is not None


def test_tiny_adapter_sites_resolve_to_the_right_modules(tiny):
    a = tiny.adapter
    for layer in range(a.n_layers):
        block = tiny.hf.model.layers[layer]
        attn = block.self_attn
        moe = not hasattr(getattr(block, "mlp", None), "down_proj")  # no mlp_hidden on a mixture of experts
        handles = {
            site: a.handle(HookPoint(site, layer)) for site in ACTIVATION_SITES if not (moe and site == "mlp_hidden")
        }
        if a.fused_qkv:
            qkv = attn.qkv_proj
            assert qkv.out_features == 64 + 2 * 32
            assert (handles["q_proj"].module, handles["q_proj"].start, handles["q_proj"].stop) == (qkv, 0, 64)
            assert (handles["k_proj"].module, handles["k_proj"].start, handles["k_proj"].stop) == (qkv, 64, 96)
            assert (handles["v_proj"].module, handles["v_proj"].start, handles["v_proj"].stop) == (qkv, 96, 128)
        else:
            for site in ("q_proj", "k_proj", "v_proj"):
                assert handles[site].module is getattr(attn, site)
                assert handles[site].start is None and handles[site].where == "output"
            assert attn.k_proj.out_features == attn.v_proj.out_features == 32
            assert attn.q_proj.out_features == 64
        assert handles["attn_out"].module is attn.o_proj
        assert (handles["z"].module, handles["z"].where) == (attn.o_proj, "input")
        if not moe:
            assert (handles["mlp_hidden"].module, handles["mlp_hidden"].where) == (block.mlp.down_proj, "input")
        assert (handles["resid_pre"].module, handles["resid_pre"].where) == (block, "input")
        assert (handles["resid_post"].module, handles["resid_post"].where) == (block, "output")
        mlp = getattr(block, "mlp", None) or getattr(block, "block_sparse_moe")
        assert handles["mlp_out"].module is mlp


def test_tiny_capture_shapes(tiny):
    moe = tiny.adapter.family == "mixtral"  # no mlp_hidden on a mixture of experts
    points = [f"{s}@{layer}" for s in ACTIVATION_SITES for layer in (0, -1) if not (moe and s == "mlp_hidden")]
    acts = tiny.capture([PROMPT], sites=points)
    n = len(acts.token_ids[0])
    for p in points:
        site = p.split("@")[0]
        t = acts[p][0]
        assert t.shape == (n, tiny.adapter.width(site)), p
        assert t.dtype == torch.float32 and torch.isfinite(t).all()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_build_tiny_uses_embedded_tokenizer(family, tiny_models):
    m = tiny_models(family)
    assert m.tokenizer.bos_token_id == 1 and len(m.tokenizer) == 512
    assert m.hf.config.vocab_size == 512


def test_build_tiny_unknown_family():
    with pytest.raises(ValueError, match="unknown tiny family 'nope'"):
        build_tiny("nope")
