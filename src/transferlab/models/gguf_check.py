"""Checking a GGUF file before anything is allocated from what it declares.

A GGUF file is a header (magic, version, tensor and key counts), key/value
metadata, tensor descriptions (name, dims, type, offset) and the tensor data.
Every count, length and offset in it is a claim; a truncated or crafted file
can claim 2^60 keys, an 8e9-long array, a tensor past the end of the file, or
a hidden size of 16384 beside 64-wide tensors (which made the loader build an
8 GB model from a 1.2 MB file). Loaders call, in order:

- :func:`check_gguf` (any architecture, any tensor type): walks the header
  with every count and length checked against the bytes that remain, checks
  that each tensor's data lies inside the file, and only then opens the
  ``gguf`` package's ``GGUFReader``; returns a :class:`GGUFSummary`
  (metadata, tensor shapes and types, the reader);
- :func:`check_llama` (the llama architecture, quantised or not): the
  hyperparameters the metadata declares against the shapes of the tensors
  actually present, before a model of that size is built;
- :func:`check_declared_size` (the converter's architectures, from the scan
  alone): the weights the metadata's sizes imply against the values the
  tensors hold, before a converter builds a model of the declared size.

Either raises :class:`GGUFError` with one line naming the file and what is
wrong with it.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class GGUFError(ValueError):
    """A GGUF file that this loader cannot turn into a model."""


# GGUF value types: id -> (name, size in bytes) for the scalars; 8 = string, 9 = array
_SCALARS = {
    0: ("uint8", 1),
    1: ("int8", 1),
    2: ("uint16", 2),
    3: ("int16", 2),
    4: ("uint32", 4),
    5: ("int32", 4),
    6: ("float32", 4),
    7: ("bool", 1),
    10: ("uint64", 8),
    11: ("int64", 8),
    12: ("float64", 8),
}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_KEY = 1 << 16
_MAX_NESTING = 4
HEADER_BYTES = 24  # magic, version, tensor count, key count
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, a 1-byte key, value type, a 1-byte value
_MIN_TENSOR_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # name length, a 1-byte name, n_dims, one dim, type, offset


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the file describes it; ``shape`` in PyTorch order (GGUF stores dims reversed)."""

    name: str
    shape: tuple[int, ...]
    type_name: str
    type_id: int
    offset: int  # absolute, in the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class GGUFSummary:
    """What :func:`check_gguf` found: the file's metadata and tensors, all checked against its size."""

    path: Path
    size: int
    version: int
    alignment: int
    data_offset: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    reader: Any = field(default=None, repr=False)  # gguf.GGUFReader over the same file
    header: dict[str, Any] = field(default_factory=dict, repr=False)
    """What the scan itself read: scalar and string values; an array as its length (no reader needed)."""

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")


class _Scan:
    """A bounds-checked cursor over the file's bytes."""

    def __init__(self, path: Path, buf, size: int):
        self.path, self.buf, self.size, self.pos = path, buf, size, 0

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: not a valid GGUF file: {what}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(
                f"{what} at byte {self.pos} needs {n} bytes but the file ends at byte {self.size} "
                "(truncated or corrupt)"
            )

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return out[0]

    def string(self, what: str, limit: int | None = None) -> str:
        n = self.unpack("<Q", f"the length of {what}")
        if limit is not None and n > limit:
            raise self.fail(f"{what} at byte {self.pos - 8} claims {n} bytes (at most {limit} allowed)")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at byte {self.pos - n} is not UTF-8") from None

    def skip_string(self, what: str) -> None:
        """Step over a string without decoding it (a vocabulary holds 100k of them; only bounds matter)."""
        n = self.unpack("<Q", f"the length of {what}")
        self.need(n, what)
        self.pos += n

    def skip_value(self, vtype: int, key: str, depth: int = 0):
        """Step over one value of type ``vtype``; returns it for scalars and top-level strings, and an array's
        length for a top-level array (the header's summary); nested values are only bounds-checked."""
        if vtype in _SCALARS:
            name, n = _SCALARS[vtype]
            fmt = {"uint8": "<B", "int8": "<b", "uint16": "<H", "int16": "<h", "uint32": "<I", "int32": "<i"}
            fmt.update({"float32": "<f", "bool": "<?", "uint64": "<Q", "int64": "<q", "float64": "<d"})
            return self.unpack(fmt[name], f"the value of key {key!r}")
        if vtype == _STRING:
            if depth == 0:
                return self.string(f"the string value of key {key!r}")
            self.skip_string(f"a string value of key {key!r}")
            return None
        if vtype == _ARRAY:
            if depth >= _MAX_NESTING:
                raise self.fail(f"key {key!r}: arrays nested more than {_MAX_NESTING} deep")
            item = self.unpack("<I", f"the item type of array {key!r}")
            count = self.unpack("<Q", f"the length of array {key!r}")
            left = self.size - self.pos
            if item in _SCALARS:
                if count * _SCALARS[item][1] > left:
                    raise self.fail(
                        f"array {key!r} claims {count} items of {_SCALARS[item][1]} bytes, "
                        f"more than the {left} bytes left in the file"
                    )
                self.pos += count * _SCALARS[item][1]
                return count
            if item not in (_STRING, _ARRAY):
                raise self.fail(f"array {key!r} has unknown item type {item}")
            if count * 8 > left:  # every string or array item takes at least 8 bytes
                raise self.fail(f"array {key!r} claims {count} items, more than the {left} bytes left can hold")
            for _ in range(count):
                self.skip_value(item, key, depth + 1)
            return count
        raise self.fail(f"key {key!r} has unknown value type {vtype}")


def _quant_sizes() -> dict[int, tuple[str, int, int]]:
    """ggml type id -> (name, block size in elements, bytes per block)."""
    from gguf.constants import GGML_QUANT_SIZES

    return {int(t): (t.name, b, s) for t, (b, s) in GGML_QUANT_SIZES.items()}


def check_gguf(path: str | Path, *, open_reader: bool = True) -> GGUFSummary:
    """Check a GGUF file's structure against its size; return its metadata, tensors and reader.

    Nothing proportional to a declared count is allocated before that count
    has been checked against the bytes left in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"GGUF file not found: {path}" if not path.exists() else f"{path}: not a file")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise GGUFError(f"{path}: not a valid GGUF file: {size} bytes, shorter than a GGUF header ({HEADER_BYTES})")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        s = _Scan(path, buf, size)
        magic = bytes(buf[:4])
        if magic != b"GGUF":
            raise s.fail(f"it starts with {magic!r}, not the GGUF magic b'GGUF'")
        s.pos = 4
        version = s.unpack("<I", "the version")
        if version & 0xFFFF == 0:
            raise s.fail("big-endian GGUF files are not supported")
        if version not in (2, 3):
            raise s.fail(f"GGUF version {version} is not supported (2 or 3)")
        n_tensors = s.unpack("<Q", "the tensor count")
        n_kv = s.unpack("<Q", "the key count")
        left = size - s.pos
        if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_BYTES > left:
            raise s.fail(
                f"the header declares {n_kv} metadata keys and {n_tensors} tensors, "
                f"more than the {left} bytes after it can hold"
            )
        alignment = 32
        header: dict[str, Any] = {}
        for i in range(n_kv):
            key = s.string(f"the name of metadata key {i}", _MAX_KEY)
            if key in header:
                raise s.fail(f"metadata key {key!r} appears twice")
            vtype = s.unpack("<I", f"the value type of key {key!r}")
            value = header[key] = s.skip_value(vtype, key)
            if key == "general.alignment":
                if vtype != 4 or not value or value & (value - 1):
                    raise s.fail(f"general.alignment must be a uint32 power of two; got {value!r}")
                alignment = int(value)
        sizes = _quant_sizes()
        infos = []
        for i in range(n_tensors):
            name = s.string(f"the name of tensor {i}", _MAX_KEY)
            n_dims = s.unpack("<I", f"the dimension count of tensor {name!r}")
            if not 1 <= n_dims <= _MAX_DIMS:
                raise s.fail(f"tensor {name!r} has {n_dims} dimensions (1 to {_MAX_DIMS} allowed)")
            dims = [s.unpack("<Q", f"a dimension of tensor {name!r}") for _ in range(n_dims)]
            type_id = s.unpack("<I", f"the type of tensor {name!r}")
            offset = s.unpack("<Q", f"the data offset of tensor {name!r}")
            if type_id not in sizes:
                raise s.fail(f"tensor {name!r} has unknown type id {type_id}")
            type_name, block, block_bytes = sizes[type_id]
            if any(d < 1 for d in dims):
                raise s.fail(f"tensor {name!r} has a zero dimension {dims}")
            if dims[0] % block:
                raise s.fail(f"tensor {name!r}: a row of {dims[0]} is not a whole number of {type_name} blocks")
            n_elements = 1
            for d in dims:
                n_elements *= d
            n_bytes = n_elements // block * block_bytes
            if n_bytes > size:
                raise s.fail(
                    f"tensor {name!r} of shape {tuple(reversed(dims))} needs {n_bytes} bytes; the whole file has {size}"
                )
            infos.append((name, tuple(reversed(dims)), type_name, type_id, offset, n_bytes))
        data_offset = s.pos + (-s.pos) % alignment
        tensors: dict[str, TensorInfo] = {}
        for name, shape, type_name, type_id, offset, n_bytes in infos:
            if name in tensors:
                raise s.fail(f"tensor {name!r} appears twice")
            start = data_offset + offset
            if start + n_bytes > size:
                raise s.fail(
                    f"tensor {name!r} ({type_name}, shape {shape}) lies at bytes {start}..{start + n_bytes} "
                    f"but the file ends at byte {size} (truncated?)"
                )
            tensors[name] = TensorInfo(name, shape, type_name, type_id, start, n_bytes)
        claimed = sum(t.n_bytes for t in tensors.values())
        if claimed > size - data_offset:  # tensors that overlap: each lies in the file, together they claim more
            raise s.fail(
                f"its {len(tensors)} tensors claim {claimed} bytes together, more than the {size - data_offset} "
                "bytes of tensor data in the file (overlapping tensors)"
            )
    summary = GGUFSummary(path, size, version, alignment, data_offset, {}, tensors, header=header)
    if open_reader:
        from gguf import GGUFReader

        try:  # safe now: every count and offset it will follow was checked above
            reader = GGUFReader(str(path))
        except Exception as exc:  # a backstop: one line, never a traceback
            raise GGUFError(f"{path}: not a valid GGUF file: {type(exc).__name__}: {exc}") from None
        summary.reader = reader
        summary.metadata = _metadata(reader)
    return summary


def _metadata(reader) -> dict[str, Any]:
    out = {}
    for key, fld in reader.fields.items():
        try:
            out[key] = fld.contents()
        except Exception:  # pragma: no cover - exotic field types we do not need
            continue
    return out


def _positive_int(summary: GGUFSummary, key: str, required: bool = True, limit: int = 1 << 24) -> int | None:
    value = summary.metadata.get(key)
    if value is None:
        if required:
            raise GGUFError(f"{summary.path}: metadata key {key} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise GGUFError(f"{summary.path}: metadata {key} = {value!r} is not a whole number in 1..{limit}")
    return int(value)


def _declared(summary: GGUFSummary, key: str, required: bool = True, limit: int = 1 << 24) -> int | None:
    """A size the header declares (from the scan, no reader needed), checked to be a whole number in range."""
    value = summary.header.get(key)
    if value is None:
        if required:
            raise GGUFError(
                f"{summary.path}: metadata key {key} is missing (a model built without it would take its "
                "library's default size, unrelated to the tensors in the file)"
            )
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise GGUFError(f"{summary.path}: metadata {key} = {value!r} is not a whole number in 1..{limit}")
    return int(value)


def check_declared_size(summary: GGUFSummary) -> int:
    """The number of weights the metadata's sizes imply, checked against the values the file's tensors hold.

    A converter builds the model its metadata declares (hidden size, layers,
    feed-forward width, heads, vocabulary) before it reads a tensor; a 100 KB
    file declaring a 200-billion-weight model would have it allocate 800 GB.
    The count here is a lower bound for the dense architectures converted
    (llama, qwen2, gemma3: embeddings, four attention and three feed-forward
    matrices per layer; norms and biases left out), and every weight of the
    built model comes from a tensor of the file, so a file whose tensors hold
    fewer values than that bound cannot describe its model: refused with
    :class:`GGUFError` before anything is allocated. Returns the bound.
    """
    arch = summary.header.get("general.architecture")
    hidden = _declared(summary, f"{arch}.embedding_length")
    layers = _declared(summary, f"{arch}.block_count", limit=4096)
    ffn = _declared(summary, f"{arch}.feed_forward_length")
    heads = _declared(summary, f"{arch}.attention.head_count", limit=4096)
    kv = _declared(summary, f"{arch}.attention.head_count_kv", required=False, limit=4096) or heads
    key_len = _declared(summary, f"{arch}.attention.key_length", required=False) or max(1, hidden // heads)
    value_len = _declared(summary, f"{arch}.attention.value_length", required=False) or key_len
    tokens = summary.header.get("tokenizer.ggml.tokens")  # the scan records an array as its length
    vocab = max(tokens if isinstance(tokens, int) else 0, _declared(summary, f"{arch}.vocab_size", False) or 0)
    per_layer = hidden * (heads * key_len + kv * key_len + kv * value_len + heads * value_len) + 3 * hidden * ffn
    declared = vocab * hidden + layers * per_layer
    present = sum(t.n_elements for t in summary.tensors.values())
    if declared > present:
        raise GGUFError(
            f"{summary.path}: the metadata declares a model of at least {declared:,} weights "
            f"({declared * 4 / 1e9:,.1f} GB in float32: hidden size {hidden}, {layers} layers, feed-forward {ffn}, "
            f"{heads} heads, vocabulary {vocab}) but the file's tensors hold {present:,} values; the metadata "
            "does not describe the tensors in the file"
        )
    return declared


LLAMA_LAYER_TENSORS = (
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "attn_norm",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
)


def check_llama(summary: GGUFSummary, extra_ok: tuple[str, ...] = ()) -> dict[str, int]:
    """The llama hyperparameters of a checked file, each matched against the tensors present.

    Returns ``hidden``, ``n_layers``, ``n_heads``, ``n_kv_heads``, ``head_dim``,
    ``ffn``, ``vocab``, ``context``; raises :class:`GGUFError` naming the first
    declared size that the tensors contradict, a missing tensor or an unexpected one.
    A tensor outside the dense llama layout is an error (a loader that ignored it
    would compute something else), unless its name is in ``extra_ok`` (e.g.
    ``("rope_freqs.weight",)`` for a loader that applies Llama 3's RoPE scaling).
    """
    p = summary.path
    hidden = _positive_int(summary, "llama.embedding_length")
    n_layers = _positive_int(summary, "llama.block_count", limit=4096)
    n_heads = _positive_int(summary, "llama.attention.head_count", limit=4096)
    n_kv = _positive_int(summary, "llama.attention.head_count_kv", required=False, limit=4096) or n_heads
    ffn = _positive_int(summary, "llama.feed_forward_length")
    context = _positive_int(summary, "llama.context_length", required=False, limit=1 << 30) or 2048
    if n_heads % n_kv:
        raise GGUFError(f"{p}: {n_heads} attention heads cannot be shared by {n_kv} key/value heads")
    head_dim = _positive_int(summary, "llama.attention.key_length", required=False)
    if head_dim is None:
        if hidden % n_heads:
            raise GGUFError(f"{p}: embedding length {hidden} is not a multiple of the {n_heads} heads")
        head_dim = hidden // n_heads
    tokens = summary.metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise GGUFError(f"{p}: metadata key tokenizer.ggml.tokens (the vocabulary) is missing or empty")
    vocab = len(tokens)
    want = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    if "output.weight" in summary.tensors:
        want["output.weight"] = (vocab, hidden)
    q, kv = n_heads * head_dim, n_kv * head_dim
    layer_shapes = {
        "attn_q": (q, hidden),
        "attn_k": (kv, hidden),
        "attn_v": (kv, hidden),
        "attn_output": (hidden, q),
        "attn_norm": (hidden,),
        "ffn_norm": (hidden,),
        "ffn_gate": (ffn, hidden),
        "ffn_up": (ffn, hidden),
        "ffn_down": (hidden, ffn),
    }
    for i in range(n_layers):
        for part, shape in layer_shapes.items():
            want[f"blk.{i}.{part}.weight"] = shape
    declared = (
        f"(the metadata declares hidden size {hidden}, {n_layers} layers, {n_heads} heads of {head_dim}, "
        f"{n_kv} key/value heads, feed-forward {ffn}, vocabulary {vocab})"
    )
    missing = [n for n in want if n not in summary.tensors]
    if missing:
        have = sum(1 for n in summary.tensors if n.startswith("blk."))
        raise GGUFError(
            f"{p}: {len(missing)} tensor(s) the metadata implies are absent, e.g. {missing[0]}; the file holds "
            f"{have} layer tensors for {n_layers} declared layers {declared}"
        )
    extra = sorted(n for n in summary.tensors if n not in want and n not in extra_ok)
    if extra:
        raise GGUFError(f"{p}: unexpected tensor(s) {', '.join(extra[:3])} for a llama model {declared}")
    for name, shape in want.items():
        got = summary.tensors[name].shape
        if got != shape:
            raise GGUFError(
                f"{p}: tensor {name} has shape {got} where the metadata implies {shape} {declared}; "
                "the metadata does not describe the tensors in the file"
            )
    return dict(
        hidden=hidden,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        ffn=ffn,
        vocab=vocab,
        context=context,
    )


__all__ = ["GGUFError", "GGUFSummary", "TensorInfo", "check_declared_size", "check_gguf", "check_llama"]
