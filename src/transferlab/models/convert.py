"""Converting a GGUF file (quantised or not) into a Hugging Face model directory.

GGUF is llama.cpp's single-file format: metadata (sizes, RoPE settings, the
tokenizer's vocabulary, merges and chat template) plus weight tensors, usually
block-quantised (Q4_K, Q8_0, ...). The rest of ``transferlab`` (and any
``transformers`` user) wants a plain directory instead, which loads in seconds
with ``AutoModelForCausalLM.from_pretrained(dir)``:

* ``config.json`` and ``generation_config.json``;
* ``model.safetensors``, **float32** (the dequantised values are kept exactly:
  every GGUF block format decodes to values that float32 holds without
  rounding, and at 135M/270M parameters the file is 0.5/1.1 GB); tied
  embeddings are stored once, as ``save_pretrained`` would;
* ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``
  and, when the GGUF has one, ``chat_template.jinja`` with
  ``tokenizer.chat_template`` from the file, so ``apply_chat_template`` works.

How: the heavy lifting is ``transformers``' own, maintained GGUF support,
reached only through public entry points:

* ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32,
  quantization_config=GgufConfig(dequantize=True), output_loading_info=True)``
  builds the config from the GGUF metadata and dequantises every tensor with
  the ``gguf`` package (``gguf.quants.dequantize``). For the architectures
  handled here (transformers 5.24: its "legacy" GGUF loader,
  ``modeling_gguf_pytorch_utils.load_gguf_checkpoint``) it also undoes
  llama.cpp's changes to the weights: the q/k row permutation of ``llama``
  (llama.cpp interleaves the rotary pairs; HF splits them in halves) and the
  ``+1`` llama.cpp adds to every Gemma RMSNorm weight (llama.cpp stores
  ``1 + w``; HF's ``Gemma3RMSNorm`` computes ``x * (1 + w)`` itself).
  ``GgufConfig(dequantize=True)`` keeps the result a plain dense model even on
  a transformers version whose GGUF path would otherwise keep weights packed.
* ``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` rebuilds the fast
  tokenizer (byte-level BPE for ``gpt2`` vocabularies such as SmolLM2's and
  Qwen2's, SentencePiece-style BPE with byte fallback for Gemma's).

A GGUF-loaded model refuses ``save_pretrained`` ("not serializable", its
quantizer says so), so this module saves the pieces itself: the config without
its ``quantization_config``, the state dict with ``safetensors``, the tokenizer
with ``save_pretrained``. Two small corrections are applied on top:

* SmolLM2's vocabulary (``tokenizer.ggml.pre = "smollm"``) was trained with
  every digit split off on its own; transformers' generic byte-level
  pre-tokenizer does not do that, so ``Digits(individual_digits=True)`` is put
  in front, as in llama.cpp's ``smollm`` pre-tokenizer and the original
  ``tokenizer.json``. (For SmolLM2's own vocabulary the ids come out the same
  either way, since no token or merge holds a digit next to anything else; the
  saved ``tokenizer.json`` then matches the original's pre-tokenizer.)
* ``tokenizer_class`` ``TokenizersBackend`` (a transformers 5 name) is saved as
  ``PreTrainedTokenizerFast``, which both transformers 4.x and 5.x load.

Before anything is loaded, the file's header is read here (a few dozen lines
of the GGUF spec, because ``gguf.GGUFReader`` spends ~25 s parsing a 262k
vocabulary) and anything that is not ``llama``, ``qwen2`` or ``gemma3``, or
holds a tensor type outside :data:`SUPPORTED_TENSOR_TYPES`, lacks what its
vocabulary needs (a ``gpt2`` one without merges, a ``llama`` one without
scores), or declares a model larger than its tensors hold (a crafted header
would have transformers allocate the declared size first), is refused with one
line naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .quiet import no_load_bars

SUPPORTED_ARCHITECTURES: tuple[str, ...] = ("llama", "qwen2", "gemma3")

SUPPORTED_TENSOR_TYPES: frozenset[str] = frozenset(
    {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}
)
"""ggml tensor types accepted: the float types and the classic and K-quant block formats."""


class ConversionError(ValueError):
    """A GGUF file that cannot be converted, with the reason in one line."""


# --------------------------------------------------------------------------- header


@dataclass
class GGUFSummary:
    """What the header of a GGUF file says, without reading any tensor data."""

    path: Path
    version: int
    architecture: str
    metadata: dict = field(repr=False)
    """Scalar and string values; arrays are recorded as their length (``int``)."""
    tensor_types: dict[str, str] = field(repr=False)
    """``{tensor name: ggml type name}``, in file order."""
    scan: object = field(default=None, repr=False)
    """The bounds-checked scan itself (:class:`.gguf_check.GGUFSummary`: tensor shapes and extents)."""


def read_summary(path: str | os.PathLike) -> GGUFSummary:
    """The file's header as :class:`GGUFSummary`, from the bounds-checked scan of :mod:`.gguf_check` (one GGUF
    header reader in the package). Raises :class:`ConversionError` (one line) for a file that is not GGUF, is cut
    short, or has no architecture."""
    from .gguf_check import GGUFError, check_gguf

    try:
        scan = check_gguf(path, open_reader=False)  # every count, length and tensor extent against the file's size
    except GGUFError as exc:
        raise ConversionError(str(exc)) from None
    arch = scan.header.get("general.architecture")
    if not isinstance(arch, str):
        raise ConversionError(f"{scan.path}: GGUF metadata has no general.architecture")
    types = {name: t.type_name for name, t in scan.tensors.items()}
    return GGUFSummary(scan.path, scan.version, arch, scan.header, types, scan)


def check_convertible(path: str | os.PathLike) -> GGUFSummary:
    """The file's summary if it can be converted; :class:`ConversionError` (one line) if not."""
    summary = read_summary(path)
    if summary.architecture not in SUPPORTED_ARCHITECTURES:
        raise ConversionError(
            f"{summary.path}: architecture {summary.architecture!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    bad: dict[str, list[str]] = {}
    for name, ttype in summary.tensor_types.items():
        if ttype not in SUPPORTED_TENSOR_TYPES:
            bad.setdefault(ttype, []).append(name)
    if bad:
        what = "; ".join(f"{t} ({len(v)} tensors, e.g. {v[0]})" for t, v in sorted(bad.items()))
        raise ConversionError(
            f"{summary.path}: unsupported tensor type(s) {what}; supported: {', '.join(sorted(SUPPORTED_TENSOR_TYPES))}"
        )
    vocabulary = summary.metadata.get("tokenizer.ggml.model")
    if vocabulary is None:
        raise ConversionError(f"{summary.path}: no tokenizer in the GGUF metadata (tokenizer.ggml.model missing)")
    # what each vocabulary kind needs to become a tokenizer (arrays are recorded as their length)
    needs = {"gpt2": ("tokens", "merges"), "llama": ("tokens", "scores")}.get(vocabulary, ("tokens",))
    for part in needs:
        if not summary.metadata.get(f"tokenizer.ggml.{part}"):
            raise ConversionError(
                f"{summary.path}: its {vocabulary!r} vocabulary has no tokenizer.ggml.{part} (missing or empty), "
                "so no tokenizer can be built from it"
            )
    from .gguf_check import GGUFError, check_declared_size

    try:  # the model's declared size against the tensors present: before transformers builds a model that big
        check_declared_size(summary.scan)
    except GGUFError as exc:
        raise ConversionError(str(exc)) from None
    return summary


# --------------------------------------------------------------------------- conversion


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings and tqdm bars (the caller shows its own progress)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        # the GGUF loader's own tqdm bar writes to sys.stderr and has no switch
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _load_dense(gguf_path: Path):
    """The model as transformers builds it from the GGUF, every weight dequantised to float32."""
    import transformers
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"gguf_file": gguf_path.name, "dtype": torch.float32, "local_files_only": True}
    if hasattr(transformers, "GgufConfig"):  # transformers >= 5.2x: ask for a dense model explicitly
        kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    with no_load_bars():
        model, info = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), output_loading_info=True, **kwargs)
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise ConversionError(
            f"{gguf_path}: transformers found no GGUF tensor for {len(missing)} weight(s), e.g. {missing[:3]}"
        )
    return model


def _state_dict_once(model, path: Path) -> dict[str, torch.Tensor]:
    """The float state dict, with tied tensors (shared storage) stored once, first name kept."""
    seen: dict[tuple, str] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if tensor.device.type == "meta" or not tensor.is_floating_point():
            raise ConversionError(
                f"{path}: weight {name} came out as {tensor.dtype} on {tensor.device}, not dequantised"
            )
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen[key] = name
        out[name] = tensor.detach().contiguous()
    return out


def _save_config(model, out_dir: Path, dtype: torch.dtype) -> None:
    import copy

    from transformers import GenerationConfig

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(model).__name__]
    try:
        config.dtype = dtype
    except Exception:  # pragma: no cover - transformers 4.x spells it torch_dtype
        config.torch_dtype = dtype
    config.save_pretrained(out_dir)
    gen = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=getattr(config, "pad_token_id", None),
    )
    gen.save_pretrained(out_dir)


def _save_tokenizer(summary: GGUFSummary, out_dir: Path) -> None:
    from transformers import AutoTokenizer

    path = summary.path
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    if summary.metadata.get("tokenizer.ggml.pre") == "smollm":
        from tokenizers import pre_tokenizers

        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    template = summary.metadata.get("tokenizer.chat_template")
    if isinstance(template, str) and template and tok.chat_template != template:
        tok.chat_template = template
    tok.save_pretrained(out_dir)

    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):  # load-time flags, not properties of the tokenizer
        cfg.pop(key, None)
    add_bos = summary.metadata.get("tokenizer.ggml.add_bos_token")
    if isinstance(add_bos, bool):
        cfg.setdefault("add_bos_token", add_bos)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")

    special = {
        key: str(getattr(tok, key))
        for key in ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token")
        if getattr(tok, key, None) is not None
    }
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False) + "\n")


def convert_gguf(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    on_phase: Callable[[str], None] | None = None,
) -> Path:
    """Convert ``gguf_path`` into a Hugging Face model directory at ``out_dir`` (float32 weights).

    ``out_dir`` is created if needed; files already in it (e.g. the GGUF itself) are
    left alone. ``on_phase`` is called with a short description as each step starts.
    Returns ``out_dir``. Raises :class:`ConversionError` for an unsupported file.
    """
    from safetensors.torch import save_file

    gguf_path = Path(gguf_path).resolve()
    out_dir = Path(out_dir)
    say = on_phase or (lambda _msg: None)
    summary = check_convertible(gguf_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _quiet_transformers():
        say(f"dequantising {summary.architecture} weights")
        model = _load_dense(gguf_path)
        say("writing model.safetensors")
        tensors = _state_dict_once(model, gguf_path)
        save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        os.chmod(out_dir / "model.safetensors", 0o644)  # safetensors creates it 0600
        _save_config(model, out_dir, torch.float32)
        del model, tensors
        say("building the tokenizer")
        _save_tokenizer(summary, out_dir)
    return out_dir
