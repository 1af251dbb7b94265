"""Counter-based random numbers: every draw is a pure function of its keys.

Sampling and noise must not depend on batch size or on what else is in the
batch, so no stateful generator is shared between examples. Instead each draw
hashes ``(seed, example id, step, index)`` with SplitMix64 (done in int64
tensor arithmetic, identical on CPU and GPU) into a uniform number in [0, 1).
An example's tokens are then a function of its own inputs and keys only.
"""

from __future__ import annotations

import hashlib

import torch

_MASK64 = (1 << 64) - 1


def _signed(c: int) -> int:
    c &= _MASK64
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)


def _srl(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def mix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on an int64 tensor (wrapping arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ _srl(z, 30)) * _M1
    z = (z ^ _srl(z, 27)) * _M2
    return z ^ _srl(z, 31)


def combine(*keys) -> torch.Tensor:
    """Hash several int64 keys (tensors broadcast) into one."""
    out = None
    for k in keys:
        k = torch.as_tensor(k, dtype=torch.int64)
        out = mix(k) if out is None else mix(out ^ mix(k))
    return out


def uniform(key: torch.Tensor) -> torch.Tensor:
    """Float64 uniform in [0, 1) from an int64 key tensor."""
    return _srl(mix(key), 11).to(torch.float64) * (2.0**-53)


def normal(key: torch.Tensor) -> torch.Tensor:
    """Standard normal (float32) from an int64 key tensor (Box-Muller)."""
    u1 = uniform(key ^ 0x1234567).clamp(min=2.0**-53)
    u2 = uniform(key ^ 0x7654321)
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)).to(torch.float32)


def example_key(example_id) -> int:
    """A stable int63 for an example id (ints are kept, strings hashed)."""
    if isinstance(example_id, bool):
        raise TypeError("example id must be an int or a string")
    if isinstance(example_id, int):
        return _signed(example_id)
    digest = hashlib.sha256(str(example_id).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
