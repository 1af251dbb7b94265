"""A warm process for ``transferlab run``: ``transferlab serve`` and ``transferlab run --server``.

Every ``transferlab run`` pays for a new process before it computes anything:
Python starting and importing torch and transformers (about 6 s on an H200
host), loading the model and preparing its kernels. A researcher who runs
experiment after experiment from a shell can keep that warm instead:

- ``transferlab serve`` starts a **server**: one process that listens on a
  local socket (a Unix domain socket, readable by this user only), runs one
  request at a time with ``run_experiment`` and keeps one in-process executor,
  so the last model stays loaded with its kernels prepared between runs;
- ``transferlab run CONFIG --server`` is a **client**: it starts without torch
  (the package imports lazily), sends the config's path, its ``--set``
  overrides and the working directory, waits, then prints what a local run
  prints (the notes, never-fired warnings and the headline from
  ``summary.json``). Results are the same as a local run's: the same
  ``run_experiment`` writes the same run directory.

The protocol is one JSON line each way. A request: ``{"op": "run", "cwd",
"config", "set", "resume", "no_report", "timings"}`` (``timings``: true to get the server's stage
table back; the clock synchronises with the GPU at every stage, so only when asked), ``{"op": "ping"}`` or
``{"op": "stop"}``. An answer: ``{"ok": true, ...}`` or ``{"ok": false,
"error": message}``. The server prints its own progress; a client that is
interrupted leaves the run going (resume it with ``--resume`` if the server
is stopped). The model a server holds stays in GPU memory until it stops
(``transferlab serve --stop``, Ctrl-C, or ``--idle`` seconds without a request).
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

ENV_SOCKET = "TRANSFERLAB_SOCKET"


class ServerError(RuntimeError):
    """No server answers at the socket, or it answered something that is not the protocol."""


def default_socket() -> Path:
    """``$TRANSFERLAB_SOCKET``, else ``~/.cache/transferlab/serve.sock``."""
    given = os.environ.get(ENV_SOCKET)
    if given:
        return Path(given)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "transferlab" / "serve.sock"


def _send(sock: socket.socket, data: dict) -> None:
    sock.sendall(json.dumps(data).encode("utf-8") + b"\n")


def _receive(sock: socket.socket) -> dict:
    chunks = []
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    raw = b"".join(chunks)
    if not raw:
        raise ServerError("the other side closed the connection without a word")
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError:
        raise ServerError(f"not a transferlab answer: {raw[:200]!r}") from None


def request(payload: dict, path: str | Path | None = None, timeout: float | None = None) -> dict:
    """Send one request to the server at ``path`` and return its answer."""
    path = Path(path) if path is not None else default_socket()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise ServerError(f"no transferlab server at {path}; start one with: transferlab serve") from None
    try:
        _send(sock, payload)
        return _receive(sock)
    finally:
        sock.close()


def ping(path: str | Path | None = None) -> bool:
    """Whether a server answers at ``path`` within 5 s (a server busy with a run answers after it)."""
    try:
        return bool(request({"op": "ping"}, path, timeout=5).get("ok"))
    except (ServerError, OSError):
        return False


def listening(path: str | Path) -> bool:
    """Whether a process listens at ``path``: a connection is accepted, busy or not (a socket file left by a
    killed server refuses it)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        sock.close()


@contextmanager
def _working_directory(path: str | None):
    old = os.getcwd()
    if path:
        os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


class Server:
    """Runs ``run_experiment`` for clients, one at a time, with one executor kept across runs."""

    def __init__(self, path: str | Path | None = None, idle: float | None = None, console=None):
        self.path = Path(path) if path is not None else default_socket()
        self._inode = None
        self.idle = idle
        self.console = console
        self.executor = None
        self.runs = 0

    # -- one request --------------------------------------------------------
    def handle(self, req: dict) -> dict:
        op = req.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "runs": self.runs}
        if op == "stop":
            return {"ok": True, "stopping": True}
        if op != "run":
            return {"ok": False, "error": f"unknown request {op!r}; this server knows run, ping and stop"}
        try:
            return {"ok": True, **self._run(req)}
        except Exception as exc:  # the server outlives a bad config, a missing file, a failed run
            return {"ok": False, "error": str(exc) or type(exc).__name__, "kind": type(exc).__name__}

    def _run(self, req: dict) -> dict:
        from .experiments import load_config, run_experiment
        from .experiments.checks import layer_collisions
        from .experiments.executors import InProcessExecutor
        from .experiments.runner import never_fired_lines
        from .timings import StageClock, cuda_sync, stage

        if self.executor is None:
            self.executor = InProcessExecutor()
        notes: list[str] = []
        clock = StageClock(sync=cuda_sync) if req.get("timings") else nullcontext()  # synchronises: only if asked
        with _working_directory(req.get("cwd")), clock:
            resume = req.get("resume")
            with stage("config"):
                cfg = None if resume else load_config(req.get("config"), list(req.get("set") or []))
            if cfg is not None:
                notes += [f"note: {m}" for m in layer_collisions(cfg)]
            run_dir = run_experiment(
                cfg, resume=resume, report=not req.get("no_report"), executor=self.executor, console=self.console
            )
            run_dir = Path(run_dir).resolve()
            warnings = never_fired_lines(run_dir)
        self.runs += 1
        timings = clock.table() if isinstance(clock, StageClock) else None
        return {"run_dir": str(run_dir), "notes": notes, "warnings": warnings, "timings": timings}

    # -- the socket ---------------------------------------------------------
    def bind(self) -> socket.socket:
        """Listen at ``self.path`` (a stale socket file is replaced; a live server is an error)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.path.exists():
            if listening(self.path):
                raise ServerError(f"a transferlab server already listens at {self.path} (busy or not)")
            self.path.unlink()  # left by a server that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file: this user only
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        sock.listen(8)
        self._inode = self.path.stat().st_ino  # at exit, remove this socket file only, not a successor's
        return sock

    def serve_forever(self, ready=None) -> None:
        """Answer requests until a ``stop`` request, ``idle`` seconds without one, or Ctrl-C."""
        sock = self.bind()
        sock.settimeout(self.idle)
        if ready is not None:
            ready()
        try:
            while True:
                try:
                    conn, _ = sock.accept()
                except socket.timeout:
                    return  # idle
                with conn:
                    conn.settimeout(None)
                    try:
                        req = _receive(conn)
                    except ServerError as exc:
                        try:
                            _send(conn, {"ok": False, "error": str(exc)})
                        except OSError:
                            pass  # a probe that connected and left (`listening`), or a client gone
                        continue
                    except OSError:
                        continue
                    answer = self.handle(req)
                    try:
                        _send(conn, answer)
                    except OSError:
                        pass  # the client went away; the run is in its directory all the same
                if answer.get("stopping"):
                    return
        finally:
            sock.close()
            try:
                if self.path.stat().st_ino == self._inode:
                    self.path.unlink()
            except FileNotFoundError:
                pass
            if self.executor is not None:
                self.executor.close()


def wait_for(path: str | Path, timeout: float = 60.0) -> bool:
    """Wait until a server answers at ``path`` (a script that started ``transferlab serve`` in the background)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ping(path):
            return True
        time.sleep(0.1)
    return False


__all__ = ["Server", "ServerError", "request", "ping", "listening", "wait_for", "default_socket", "ENV_SOCKET"]
