"""Devices named by the user (``--device``, ``model.device``), checked before anything is loaded.

``torch.device("banana")`` raises a RuntimeError about device strings, and
``cuda:7`` on a machine with one GPU (or none) fails deep inside the first
``.to()``; :func:`resolve_device` says which devices exist here instead.
"""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device that does not exist on this machine."""


def resolve_device(device) -> torch.device:
    """``device`` (None/"auto": CUDA if available, else CPU) as a torch.device that exists here."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(str(device))
        except (RuntimeError, ValueError, TypeError):
            raise DeviceError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r}: CUDA is not available here (no GPU visible to torch); use cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise DeviceError(f"device {device!r}: this machine has {n} GPU(s) visible (cuda:0..cuda:{n - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"device {device!r}: MPS is not available here; use cpu")
    elif dev.type not in ("cpu", "meta"):
        raise DeviceError(f"device {device!r}: {dev.type} devices are not supported; use cpu, cuda, cuda:N or auto")
    return dev
