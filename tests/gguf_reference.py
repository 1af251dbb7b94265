"""An independent reference forward pass, in numpy, read straight from a GGUF file.

Nothing here imports ``torch``, ``transformers`` or ``transferlab``: the only
dependencies are ``numpy`` and the ``gguf`` package (llama.cpp's, for its
dequantisers; the file's header is parsed here). The
tests compare the logits of our loaded Hugging Face models against
:func:`reference_logits`, so the two computations share no code.

Two architectures are covered, each written out as plainly as possible:

``llama`` (e.g. SmolLM2-135M)
    RMSNorm -> GQA attention with RoPE -> residual; RMSNorm -> SwiGLU MLP ->
    residual; final RMSNorm; lm head = ``output.weight`` or, when absent (tied
    embeddings), ``token_embd.weight``.

    llama.cpp's converter *permutes the rows* of ``attn_q``/``attn_k`` within each
    head: Hugging Face's "rotate half" layout (dims ``i`` and ``i + d/2`` form a
    rotary pair) becomes an interleaved layout (dims ``2i`` and ``2i + 1`` form
    the pair), and llama.cpp then uses the GPT-J ("normal") rope. We keep the
    GGUF layout and rotate adjacent pairs (``rope="interleaved"``). Because q and
    k are permuted identically within each head, q.k (hence the attention) is
    unchanged, and v/o are not permuted, so the logits are the same as with the
    HF layout. ``unpermute_qk=True`` instead undoes the permutation and uses the
    half-split (NeoX) rotation: both paths are kept so a test can check that
    they agree.

``gemma3`` (e.g. Gemma-3-270M)
    token embeddings scaled by ``sqrt(hidden)``; per layer
    ``x += post_attention_norm(attn(attn_norm(x)))`` and
    ``x += post_ffw_norm(mlp(ffn_norm(x)))``; q_norm/k_norm (RMSNorm over
    head_dim) before RoPE; queries scaled by ``query_pre_attn_scalar ** -0.5``;
    GELU(tanh)-gated MLP; sliding-window attention on local layers and full
    causal attention on global layers (``il % 6 == 5``); RoPE base 10 000 on
    local layers and ``gemma3.rope.freq_base`` on global layers; optional final
    logit soft-capping; tied embeddings.

    Gemma's RMSNorm multiplies by ``(1 + w)``; llama.cpp's converter stores
    ``w + 1`` in the GGUF (and transformers' GGUF loader subtracts 1 again), so
    here the stored norm weights are used as plain multipliers. llama.cpp does
    not permute gemma3's q/k rows and uses NeoX rope: half-split rotation on the
    stored layout.

Reading: the file is read in one go and its header parsed here (``_HeaderReader``,
a few dozen lines after the GGUF spec): metadata scalars and short arrays are
kept, the vocabulary arrays are stepped over, and each tensor's bytes are handed
to ``gguf.quants.dequantize`` (llama.cpp's Python dequantisers, the only thing
used from the ``gguf`` package). Shapes: a ggml tensor with ``ne = [n_in,
n_out]`` (innermost first) becomes a numpy ``[n_out, n_in]`` array, the same
layout as a ``torch.nn.Linear`` weight, so a projection is ``x @ W.T``.

Checked (SmolLM2-135M-Instruct Q4_1, Gemma-3-270M Q4_K_M, transformers 5.x GGUF
loading in float32): max |logit diff| ~1e-4 (SmolLM2, 16 and 620 tokens) and
~4e-5 (Gemma, 20 tokens); for Gemma at 620 tokens ~7e-4 below position 512 and
~4e-3 beyond it, almost all of it because transformers computes the RoPE angles
``pos * inv_freq`` in float32 whereas this file uses float64 angles (emulating
the float32 angles brings it to ~1.4e-3). Logits are O(30), so a tolerance of
~1e-2 absolute is comfortable for prompts of a few hundred tokens.
(``tests/test_real_models.py`` measures ~1e-4 on short prompts of both models
and ~4e-4 at 534 Gemma tokens, and sets its tolerances from those.)

Cost: the first :func:`load_gguf` of a file takes ~2 s (SmolLM2) / ~3-5 s (Gemma),
nearly all of it dequantisation, and keeps float32 weights (~0.55 GB SmolLM2,
~1.1 GB Gemma); later calls are free. The lm head dominates a forward's cost
(Gemma: 262k x 640 per position): pass ``rows`` to compute logits only where
they are needed. Pass ``threads`` (the test suite passes torch's thread count)
to pin numpy's OpenBLAS: left alone it spins one thread per core, and on a
small shared machine that made the forward 20x slower.

API::

    reference_logits(gguf_path, token_ids, rows=None, threads=None) -> np.ndarray [len(rows or token_ids), vocab]
    load_gguf(gguf_path) -> GGUFModel  (cached: dequantises each file once)
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import struct
from dataclasses import dataclass, field

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

__all__ = ["GGUFModel", "blas_threads", "load_gguf", "reference_logits"]

SUPPORTED_ARCHS = ("llama", "gemma3")


# --------------------------------------------------------------------------- loading


@dataclass
class GGUFModel:
    """Hyper-parameters and dequantised (float32) tensors of one GGUF file."""

    path: str
    arch: str
    metadata: dict  # every scalar / small-array key of the file, as Python values
    tensors: dict = field(repr=False)  # GGUF name -> float32 array (read-only)

    # -- hyper-parameters, read from ``{arch}.*`` keys --

    def meta(self, key: str, default=None):
        return self.metadata.get(f"{self.arch}.{key}", default)

    @property
    def n_layer(self) -> int:
        return int(self.meta("block_count"))

    @property
    def hidden(self) -> int:
        return int(self.meta("embedding_length"))

    @property
    def n_head(self) -> int:
        return int(self.meta("attention.head_count"))

    @property
    def n_kv_head(self) -> int:
        return int(self.meta("attention.head_count_kv", self.n_head))

    @property
    def head_dim(self) -> int:
        return int(self.meta("attention.key_length", self.hidden // self.n_head))

    @property
    def eps(self) -> float:
        return float(self.meta("attention.layer_norm_rms_epsilon"))

    @property
    def vocab(self) -> int:
        return self.tensors["token_embd.weight"].shape[0]

    def lm_head(self) -> np.ndarray:
        """``output.weight`` if the file has one, else the tied embeddings."""
        return self.tensors.get("output.weight", self.tensors["token_embd.weight"])


# GGUF metadata value types (ggml's ``gguf_type``) -> struct format; 8 = string, 9 = array.
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_BIG_ARRAY = 1024  # arrays longer than this (the vocabulary: tokens, scores, types, merges) are skipped
_DEQUANT_ROWS = 8192  # dequantise big matrices in row chunks (small temporaries: ~2x faster)


@dataclass
class TensorInfo:
    name: str
    ne: list  # ggml's dimensions, innermost first
    ggml_type: int
    offset: int  # from the start of the data section


class _HeaderReader:
    """A minimal GGUF header parser (spec: ggml/docs/gguf.md), versions 2 and 3.

    It reads the metadata key/values and the tensor infos, and *skips* the long
    arrays (the vocabulary) by stepping over them instead of building Python
    objects for each entry, which is where ``GGUFReader`` spends its time.
    """

    def __init__(self, buf):
        self.buf = buf
        self.off = 0

    def scalar(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.buf, self.off)
        self.off += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        value = bytes(self.buf[self.off : self.off + n]).decode("utf-8")
        self.off += n
        return value

    def skip_values(self, vtype: int, count: int) -> None:
        if vtype == _STRING:
            for _ in range(count):
                self.off += 8 + struct.unpack_from("<Q", self.buf, self.off)[0]
        elif vtype == _ARRAY:
            for _ in range(count):
                self.value(_ARRAY, keep=False)
        else:
            self.off += count * struct.calcsize(_SCALAR_FORMATS[vtype])

    def value(self, vtype: int, keep: bool = True):
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.scalar("<I"), self.scalar("<Q")
            if not keep or count > _BIG_ARRAY:
                self.skip_values(item_type, count)
                return None
            return [self.value(item_type) for _ in range(count)]
        return self.scalar(_SCALAR_FORMATS[vtype])

    def read(self) -> tuple[dict, list[TensorInfo], int]:
        """``(metadata, tensor infos, absolute offset of the data section)``."""
        if bytes(self.buf[:4]) != b"GGUF":
            raise ValueError("not a GGUF file (bad magic)")
        self.off = 4
        version = self.scalar("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} not supported (2 or 3)")
        n_tensors, n_kv = self.scalar("<Q"), self.scalar("<Q")
        metadata = {}
        for _ in range(n_kv):
            key = self.string()
            value = self.value(self.scalar("<I"))
            if value is not None:
                metadata[key] = value
        infos = []
        for _ in range(n_tensors):
            name = self.string()
            ne = [self.scalar("<Q") for _ in range(self.scalar("<I"))]
            infos.append(TensorInfo(name, ne, self.scalar("<I"), self.scalar("<Q")))
        align = int(metadata.get("general.alignment", 32))
        return metadata, infos, -(-self.off // align) * align


def _dequantize(buf, start: int, info: TensorInfo) -> np.ndarray:
    """One tensor as a float32 numpy array of shape ``ne[::-1]`` (a fresh copy, not a view of the file)."""
    qtype = GGMLQuantizationType(info.ggml_type)
    block, type_size = GGML_QUANT_SIZES[qtype]
    ne = [int(n) for n in info.ne]
    if ne[0] % block:
        raise ValueError(f"{info.name}: row of {ne[0]} values is not a whole number of {qtype.name} blocks")
    n_rows, row_bytes = math.prod(ne[1:]), ne[0] // block * type_size
    raw = np.frombuffer(buf, dtype=np.uint8, count=n_rows * row_bytes, offset=start + info.offset)
    raw = raw.reshape(n_rows, row_bytes)
    out = np.empty((n_rows, ne[0]), dtype=np.float32)
    for s in range(0, n_rows, _DEQUANT_ROWS):
        out[s : s + _DEQUANT_ROWS] = dequantize(raw[s : s + _DEQUANT_ROWS], qtype).reshape(-1, ne[0])
    return out.reshape(ne[::-1])


@functools.lru_cache(maxsize=4)
def _load(path: str, size: int, mtime_ns: int) -> GGUFModel:
    # One sequential read (a memory map page-faults its way through the file, slow on a busy disk).
    with open(path, "rb") as f:
        buf = f.read()
    metadata, infos, start = _HeaderReader(buf).read()
    arch = metadata["general.architecture"]
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(f"{path}: architecture {arch!r} not supported (only {SUPPORTED_ARCHS})")
    tensors = {}
    for info in infos:
        w = _dequantize(buf, start, info)
        w.flags.writeable = False
        tensors[info.name] = w
    return GGUFModel(path=path, arch=arch, metadata=metadata, tensors=tensors)


def load_gguf(gguf_path) -> GGUFModel:
    """Read and dequantise a GGUF file; cached per (path, size, mtime)."""
    path = os.path.realpath(os.fspath(gguf_path))
    st = os.stat(path)
    return _load(path, st.st_size, st.st_mtime_ns)


# --------------------------------------------------------------------------- building blocks


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """``x / sqrt(mean(x**2) + eps) * w`` over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def rope(x: np.ndarray, positions: np.ndarray, base: float, style: str) -> np.ndarray:
    """Rotary position embedding of ``x [heads, T, d]`` (all ``d`` dims rotated).

    Pair ``i`` (``i < d/2``) turns by ``pos * base ** (-2i/d)``. ``style`` says
    which two dims form pair ``i``: ``"neox"`` (half-split, HF's rotate_half):
    ``(i, i + d/2)``; ``"interleaved"`` (GPT-J, llama.cpp's normal rope):
    ``(2i, 2i + 1)``.
    """
    d = x.shape[-1]
    inv_freq = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # [d/2]
    angle = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # [T, d/2]
    cos, sin = np.cos(angle).astype(x.dtype), np.sin(angle).astype(x.dtype)
    if style == "neox":
        a, b = x[..., : d // 2], x[..., d // 2 :]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
    if style == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = b * cos + a * sin
        return out
    raise ValueError(style)


def causal_mask(T: int, window: int | None = None) -> np.ndarray:
    """Boolean ``[T, T]``: query ``i`` may see key ``j`` iff ``j <= i`` (and ``i - j < window``)."""
    i = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    allowed = j <= i
    if window is not None:
        allowed &= (i - j) < window
    return allowed


def attention(q, k, v, allowed, scale):
    """Grouped-query attention. ``q [Hq, T, d]``, ``k, v [Hkv, T, d]`` -> ``[T, Hq * d]``.

    Query head ``h`` reads kv head ``h // (Hq // Hkv)``.
    """
    n_q, T, d = q.shape
    group = n_q // k.shape[0]
    k = np.repeat(k, group, axis=0)
    v = np.repeat(v, group, axis=0)
    scores = (q * scale) @ k.transpose(0, 2, 1)  # [Hq, T, T]
    scores = np.where(allowed[None], scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    out = p @ v  # [Hq, T, d]
    return out.transpose(1, 0, 2).reshape(T, n_q * d)


def split_heads(x: np.ndarray, n: int) -> np.ndarray:
    """``[T, n * d]`` -> ``[n, T, d]``."""
    T = x.shape[0]
    return x.reshape(T, n, -1).transpose(1, 0, 2)


def unpermute_qk_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: interleaved pairs -> half-split (HF) layout.

    The converter does ``w.reshape(n, 2, d/2, in).swapaxes(1, 2)``; this is its inverse.
    """
    out_dim = w.shape[0]
    d = out_dim // n_head
    return w.reshape(n_head, d // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def _linear(x, w, dtype):
    return x @ np.asarray(w, dtype=dtype).T


def _logits(h, m: GGUFModel, dtype):
    """``h @ lm_head.T``, in vocab chunks so a float64 run never copies the whole head."""
    head = m.lm_head()
    out = np.empty((h.shape[0], head.shape[0]), dtype=dtype)
    step = 32768
    for s in range(0, head.shape[0], step):
        out[:, s : s + step] = h @ np.asarray(head[s : s + step], dtype=dtype).T
    return out


# --------------------------------------------------------------------------- architectures


def _llama_forward(m: GGUFModel, ids: np.ndarray, dtype, unpermute: bool) -> np.ndarray:
    """The final (normed) hidden states ``[T, hidden]``."""
    t = m.tensors
    nh, nkv, hd, eps = m.n_head, m.n_kv_head, m.head_dim, m.eps
    base = float(m.meta("rope.freq_base", 10000.0))
    assert int(m.meta("rope.dimension_count", hd)) == hd, "partial rotary not supported"
    assert m.meta("rope.scaling.type") in (None, "none"), "rope scaling not supported"
    T = len(ids)
    pos = np.arange(T)
    allowed = causal_mask(T)
    style = "neox" if unpermute else "interleaved"

    x = np.asarray(t["token_embd.weight"][ids], dtype=dtype)
    for il in range(m.n_layer):
        p = f"blk.{il}."
        wq, wk = t[p + "attn_q.weight"], t[p + "attn_k.weight"]
        if unpermute:
            wq, wk = unpermute_qk_rows(wq, nh), unpermute_qk_rows(wk, nkv)

        h = rms_norm(x, t[p + "attn_norm.weight"], eps)
        q = rope(split_heads(_linear(h, wq, dtype), nh), pos, base, style)
        k = rope(split_heads(_linear(h, wk, dtype), nkv), pos, base, style)
        v = split_heads(_linear(h, t[p + "attn_v.weight"], dtype), nkv)
        a = attention(q, k, v, allowed, hd**-0.5)
        x = x + _linear(a, t[p + "attn_output.weight"], dtype)

        h = rms_norm(x, t[p + "ffn_norm.weight"], eps)
        g = _linear(h, t[p + "ffn_gate.weight"], dtype)
        u = _linear(h, t[p + "ffn_up.weight"], dtype)
        x = x + _linear(silu(g) * u, t[p + "ffn_down.weight"], dtype)

    return rms_norm(x, t["output_norm.weight"], eps)


GEMMA3_SWA_PATTERN = 6  # llama.cpp: hparams.set_swa_pattern(6); HF: sliding_window_pattern=6
GEMMA3_LOCAL_ROPE_BASE = 10000.0  # llama.cpp: rope_freq_base_train_swa; HF: rope_local_base_freq


def gemma3_is_global(il: int) -> bool:
    """Layers ``5, 11, 17, ...`` use full attention; the others sliding-window attention."""
    return il % GEMMA3_SWA_PATTERN == GEMMA3_SWA_PATTERN - 1


def _gemma3_forward(m: GGUFModel, ids: np.ndarray, dtype) -> np.ndarray:
    """The final (normed) hidden states ``[T, hidden]``; logit soft-capping is applied by the caller."""
    t = m.tensors
    nh, nkv, hd, eps, H = m.n_head, m.n_kv_head, m.head_dim, m.eps, m.hidden
    global_base = float(m.meta("rope.freq_base", 1_000_000.0))
    assert m.meta("rope.scaling.type") in (None, "none"), "rope scaling not supported"
    window = int(m.meta("attention.sliding_window"))
    scale = float(m.meta("attention.query_pre_attn_scalar", hd)) ** -0.5  # 256 -> 1/16
    assert m.meta("attn_logit_softcapping") is None, "attention soft-capping not implemented"
    T = len(ids)
    pos = np.arange(T)
    masks = {True: causal_mask(T), False: causal_mask(T, window)}

    x = np.asarray(t["token_embd.weight"][ids], dtype=dtype) * np.asarray(math.sqrt(H), dtype=dtype)
    for il in range(m.n_layer):
        p = f"blk.{il}."
        is_global = gemma3_is_global(il)
        base = global_base if is_global else GEMMA3_LOCAL_ROPE_BASE

        h = rms_norm(x, t[p + "attn_norm.weight"], eps)  # stored weight is already 1 + w
        q = split_heads(_linear(h, t[p + "attn_q.weight"], dtype), nh)
        k = split_heads(_linear(h, t[p + "attn_k.weight"], dtype), nkv)
        v = split_heads(_linear(h, t[p + "attn_v.weight"], dtype), nkv)
        q = rope(rms_norm(q, t[p + "attn_q_norm.weight"], eps), pos, base, "neox")
        k = rope(rms_norm(k, t[p + "attn_k_norm.weight"], eps), pos, base, "neox")
        a = attention(q, k, v, masks[is_global], scale)
        a = _linear(a, t[p + "attn_output.weight"], dtype)
        x = x + rms_norm(a, t[p + "post_attention_norm.weight"], eps)

        h = rms_norm(x, t[p + "ffn_norm.weight"], eps)
        g = _linear(h, t[p + "ffn_gate.weight"], dtype)
        u = _linear(h, t[p + "ffn_up.weight"], dtype)
        f = _linear(gelu_tanh(g) * u, t[p + "ffn_down.weight"], dtype)
        x = x + rms_norm(f, t[p + "post_ffw_norm.weight"], eps)

    return rms_norm(x, t["output_norm.weight"], eps)


# --------------------------------------------------------------------------- BLAS threads


@functools.lru_cache(maxsize=1)
def _openblas_thread_functions():
    """(get, set) of the OpenBLAS that numpy loaded, or None (found as threadpoolctl finds it)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line})
    except OSError:  # not Linux
        return None
    for path in paths:
        lib = ctypes.CDLL(path)
        for get, set_ in (
            ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),  # numpy >= 2 wheels
            ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
            ("openblas_get_num_threads", "openblas_set_num_threads"),
        ):
            if hasattr(lib, get) and hasattr(lib, set_):
                return getattr(lib, get), getattr(lib, set_)
    return None


@contextlib.contextmanager
def blas_threads(n: int):
    """Run numpy's OpenBLAS with ``n`` threads inside the block, then restore its count.

    Matters on a small shared machine: OpenBLAS spins up one thread per core,
    and two spinning threads competing with other processes made a 40-token
    SmolLM2 forward 20x slower (7.5 s instead of 0.36 s). A no-op where numpy's
    BLAS is not an OpenBLAS this can find.
    """
    funcs = _openblas_thread_functions()
    if funcs is None:
        yield
        return
    get, set_ = funcs
    before = get()
    set_(int(n))
    try:
        yield
    finally:
        set_(before)


# --------------------------------------------------------------------------- entry point


def reference_logits(
    gguf_path, token_ids, *, rows=None, threads: int | None = None, dtype=np.float32, unpermute_qk: bool = False
) -> np.ndarray:
    """Logits ``[len(token_ids), vocab]`` at every position of one unpadded sequence.

    ``rows`` (positions, e.g. ``[-1]``): return only those positions' logits,
    ``[len(rows), vocab]`` (the forward is the same; only the lm head is skipped elsewhere).
    ``threads``: run numpy's BLAS with that many threads (see :func:`blas_threads`).

    ``token_ids`` are used as given (add BOS yourself if the model wants it).
    ``dtype``: float32 (default) or float64 compute; weights are dequantised to
    float32 once and cached. ``unpermute_qk`` (llama only): undo llama.cpp's q/k
    row permutation and use half-split rope instead of interleaved rope on the
    stored layout; the logits must be the same either way.
    """
    m = load_gguf(gguf_path)
    ids = np.asarray(list(token_ids), dtype=np.int64)
    if ids.ndim != 1 or len(ids) == 0:
        raise ValueError("token_ids must be a non-empty flat list of ints")
    if ids.min() < 0 or ids.max() >= m.vocab:
        raise ValueError(f"token id out of range [0, {m.vocab})")
    dtype = np.dtype(dtype)
    if unpermute_qk and m.arch != "llama":
        raise ValueError("unpermute_qk only applies to llama GGUFs (gemma3 q/k are not permuted)")
    with blas_threads(threads) if threads else contextlib.nullcontext():
        if m.arch == "llama":
            h = _llama_forward(m, ids, dtype, unpermute_qk)
        else:
            h = _gemma3_forward(m, ids, dtype)
        if rows is not None:
            h = h[np.asarray(list(rows), dtype=np.int64)]
        logits = _logits(h, m, dtype)
    softcap = m.meta("final_logit_softcapping")
    if softcap:
        logits = np.tanh(logits / softcap) * softcap
    return logits
