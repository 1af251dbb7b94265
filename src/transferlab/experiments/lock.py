"""One process per run directory: the run lock.

A run (new or resumed) holds an exclusive ``flock`` on ``<run_dir>/run.lock``
from the moment it claims the directory until it has written its last file;
the file also says who holds it (pid, host, since). A second
``transferlab run --resume`` of the same directory is refused at once with
that holder, instead of computing the remaining units a second time. The
operating system drops the lock when its process dies, however it dies, so a
killed run leaves no stale lock: :func:`lock_holder` tells a live run
(``transferlab runs`` shows it as running) from one whose process is gone.

Locks are advisory ``flock`` locks on the local machine (and on file systems
that support them across machines, such as NFSv4); where ``fcntl`` is missing
(Windows) the lock is a no-op and :func:`lock_holder` falls back to the pid.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

from .metadata import now
from .store import RunDirError

LOCK_FILE = "run.lock"


class RunLocked(RunDirError):
    """The run directory is being run by another process."""


def _holder_text(info: dict) -> str:
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on host {info.get('host')} since {info.get('since')}"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class RunLock:
    """Exclusive lock on a run directory; ``with RunLock(d):`` or ``acquire()`` / ``release()``."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(
                f"cannot lock the run directory {self.run_dir} ({exc.strerror}: {self.path}); "
                "it must be writable to run or resume"
            ) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise RunLocked(
                    f"{self.run_dir} is already running ({_holder_text(_read(self.path))}); "
                    "wait for it to finish (transferlab runs shows it), or stop that process first"
                ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        if fcntl is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(run_dir: str | Path) -> dict | None:
    """Who runs ``run_dir`` now (pid, host, since), or None if no live process holds it."""
    path = Path(run_dir) / LOCK_FILE
    if not path.exists():
        return None
    info = _read(path)
    if fcntl is None:  # pragma: no cover - Windows: the pid, on this host only
        if info.get("host") == socket.gethostname() and info.get("pid"):
            try:
                os.kill(int(info["pid"]), 0)
                return info
            except OSError:
                return None
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return info or {"pid": None, "host": None, "since": None}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
