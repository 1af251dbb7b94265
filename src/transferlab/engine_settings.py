"""The engine's switches: environment variables that choose its kernels, and the values each accepts.

Each is read where it acts (``TRANSFERLAB_DECODE`` by the decode loop,
``TRANSFERLAB_KERNELS`` by the fused kernels, ...); this leaf names them all,
so that a run can refuse a misspelt value before its run directory exists, a
``--server`` client can carry its own to the server, and a run's metadata can
record them (in bf16 they move rounding; in float32 they cannot change a
token).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

SETTINGS: dict[str, tuple[str, ...] | None] = {
    "TRANSFERLAB_DECODE": ("auto", "eager", "static", "graph"),
    "TRANSFERLAB_DECODE_ATTENTION": ("auto", "ragged", "sdpa"),
    "TRANSFERLAB_FUSE": None,  # "0" turns fusion off; any other value leaves it on
    "TRANSFERLAB_KERNELS": ("auto", "liger", "compile"),
    "TRANSFERLAB_SDPA_BACKEND": ("efficient", "cudnn", "flash", "math", "auto"),
}
"""``{name: accepted values}`` (``None``: any value)."""

NAMES: tuple[str, ...] = tuple(SETTINGS)


def current(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The switches set in ``environ`` (default: this process's environment), unset ones left out."""
    env = os.environ if environ is None else environ
    return {name: env[name] for name in NAMES if name in env}


def problems(environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``(name, message)`` for each switch set to a value it does not accept."""
    out = []
    for name, value in current(environ).items():
        allowed = SETTINGS[name]
        if allowed is not None and value not in allowed:
            out.append(
                (name, f"{value!r} is not a value of this engine switch; use one of {', '.join(allowed)} (or unset it)")
            )
    return out


__all__ = ["NAMES", "SETTINGS", "current", "problems"]
