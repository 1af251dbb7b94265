"""Where a run's wall time goes: a stage clock that the library's own code reports to.

A **stage** is a named span of the user's path (``model_load``, ``source_capture``,
``decode``, ``statistics``, ...). Code marks its stages with ``with stage(name):``;
that costs nothing unless a :class:`StageClock` is running, which the speed
benchmark of the user's path (``transferlab bench --path run``) and
``transferlab run --timings FILE`` start. (The word is not *phase*: a phase is
when an intervention acts, prompt or decode.)

Stage times are **exclusive**: a stage entered inside another pauses the outer
one, so the stages of one clock add up to the time spent inside any of them,
and ``other`` is what the clock saw outside every stage. A clock may be given
a ``sync`` function (``torch.cuda.synchronize``): it is called at every stage
boundary, so that work queued on a GPU is charged to the stage that queued it
and not to whichever stage first waits for it. Without a clock nothing is
synchronised and nothing is recorded.
"""

from __future__ import annotations

import contextvars
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

_CLOCK: contextvars.ContextVar = contextvars.ContextVar("transferlab_stage_clock", default=None)


class StageClock:
    """Seconds and entries per stage, exclusive of nested stages; use as a context manager."""

    def __init__(self, sync: Callable[[], None] | None = None):
        self.sync = sync
        self.seconds: dict[str, float] = {}
        self.entries: dict[str, int] = {}
        self.inclusive: dict[str, float] = {}  # seconds per stage with its nested stages
        self._stack: list[list] = []  # [name, start of its current slice, start of the entry]
        self._token = None
        self.started = self.stopped = None

    def __enter__(self) -> "StageClock":
        self._token = _CLOCK.set(self)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.stopped = time.perf_counter()
        _CLOCK.reset(self._token)

    def _sync(self) -> None:
        if self.sync is not None:
            self.sync()

    def _charge(self, name: str, since: float, now: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + (now - since)

    def enter(self, name: str) -> None:
        self._sync()
        now = time.perf_counter()
        if self._stack:  # pause the enclosing stage
            outer = self._stack[-1]
            self._charge(outer[0], outer[1], now)
        self._stack.append([name, now, now])
        self.entries[name] = self.entries.get(name, 0) + 1

    def leave(self) -> None:
        self._sync()
        now = time.perf_counter()
        name, since, entered = self._stack.pop()
        self._charge(name, since, now)
        if all(frame[0] != name for frame in self._stack):  # a stage inside itself counts once
            self.inclusive[name] = self.inclusive.get(name, 0.0) + (now - entered)
        if self._stack:  # resume the enclosing stage
            self._stack[-1][1] = now

    @property
    def wall(self) -> float:
        end = self.stopped if self.stopped is not None else time.perf_counter()
        return end - self.started if self.started is not None else 0.0

    def table(self) -> dict:
        """``{"wall_s", "stages": {name: {"s", "entries"}}, "other_s", "inclusive": {name: {"s"}}}``: stages
        in the order first entered, exclusive seconds (they add up with ``other_s`` to ``wall_s``), then the
        seconds of each stage with its nested stages."""
        inside = sum(self.seconds.values())
        return {
            "wall_s": self.wall,
            "stages": {n: {"s": s, "entries": self.entries.get(n, 0)} for n, s in self.seconds.items()},
            "other_s": self.wall - inside,
            "inclusive": {n: {"s": s} for n, s in self.inclusive.items()},
        }

    def write(self, path: str | Path, **extra) -> Path:
        """The table (with ``extra`` fields) as JSON at ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**extra, **self.table()}, indent=2))
        return path


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Charge the time inside to stage ``name`` of the running clock (none running: nothing happens)."""
    clock = _CLOCK.get()
    if clock is None:
        yield
        return
    clock.enter(name)
    try:
        yield
    finally:
        clock.leave()


def cuda_sync() -> None:
    """Wait for the GPU if this process has started CUDA (never imports torch or starts CUDA itself)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def process_age() -> float | None:
    """Seconds since this process started (Linux: from /proc, 10 ms resolution); None where unknown."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5), counted after the command name
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def running() -> StageClock | None:
    """The clock that is running in this context, if any."""
    return _CLOCK.get()


__all__ = ["StageClock", "stage", "running", "cuda_sync", "process_age"]
