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

The protocol is JSON lines. A request (one line, at most :data:`MAX_REQUEST`
bytes, sent within ``read_timeout`` seconds of connecting): ``{"op": "run", "cwd",
"config", "set", "resume", "no_report", "timings", "engine"}`` (``timings``: true to get the server's stage
table back; the clock synchronises with the GPU at every stage, so only when asked; ``engine``: the client's
engine switches, :mod:`transferlab.engine_settings`, which the run uses as a local run would), ``{"op":
"ping"}`` or ``{"op": "stop"}``. While a run goes, the server sends ``{"event": "started", "run_dir"}`` as soon
as its directory exists; the answer is ``{"ok": true, ...}`` or ``{"ok": false, "error": message}``. A server
that dies mid-run leaves the client the run's directory and the command that finishes it. Every client has its
own thread: one that sends half a request, nothing, or too much is answered (or dropped) alone, and runs take
their turn one at a time. The server prints its own progress; a client that is
interrupted leaves the run going (resume it with ``--resume`` if the server
is stopped). The model a server holds stays in GPU memory until it stops
(``transferlab serve --stop``, Ctrl-C, or ``--idle`` seconds without a request).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

ENV_SOCKET = "TRANSFERLAB_SOCKET"
MAX_REQUEST = 1 << 20
"""Bytes a request line may take (a run request is a few hundred; the limit keeps a flood out of memory)."""
READ_TIMEOUT = 30.0
"""Seconds a client has, from connecting, to send its whole request line."""
SOCKET_PATH_MAX = 107
"""Bytes of a Unix socket's path that the system holds (``sun_path`` is 108 with the closing zero)."""


class ServerError(RuntimeError):
    """No server answers at the socket, or it answered something that is not the protocol."""


def default_socket() -> Path:
    """``$TRANSFERLAB_SOCKET``, else ``~/.cache/transferlab/serve.sock``."""
    given = os.environ.get(ENV_SOCKET)
    if given:
        return Path(given)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "transferlab" / "serve.sock"


def _check_length(path: Path) -> None:
    if len(os.fsencode(str(path))) > SOCKET_PATH_MAX:
        raise ServerError(
            f"the socket path {path} is {len(os.fsencode(str(path)))} bytes long; a Unix socket's path holds at most "
            f"{SOCKET_PATH_MAX}: give a shorter one with --socket (or {ENV_SOCKET})"
        )


def _send(sock: socket.socket, data: dict) -> None:
    sock.sendall(json.dumps(data).encode("utf-8") + b"\n")


def _parse(raw: bytes, what: str = "answer"):
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError:
        raise ServerError(f"not a transferlab {what}: {raw[:200]!r}") from None


def _read_line(sock: socket.socket, limit: int | None = None, timeout: float | None = None) -> bytes:
    """One line from ``sock`` (without its newline); b"" if the other side closed first. With ``limit``, a line
    longer than that many bytes is refused unread; with ``timeout``, the whole line must come within it."""
    deadline = None if timeout is None else time.monotonic() + timeout
    chunks, size = [], 0
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerError(f"no complete request within {timeout:g} s (half a request, or none)")
            sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except socket.timeout:
            raise ServerError(f"no complete request within {timeout:g} s (half a request, or none)") from None
        if not chunk:
            return b"".join(chunks)
        end = chunk.find(b"\n")
        if end >= 0:
            chunks.append(chunk[:end])
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if limit is not None and size > limit:
            raise ServerError(f"a request larger than {limit} bytes without a line end; refused unread")


RESUME_HINT = "transferlab run --resume DIR"


def request(payload: dict, path: str | Path | None = None, timeout: float | None = None) -> dict:
    """Send one request to the server at ``path`` and return its answer.

    A server that goes away before answering (stopped, killed) raises
    :class:`ServerError`; for a run, the message names the run's directory if the
    server had said it, and the command that finishes the run."""
    path = Path(path) if path is not None else default_socket()
    _check_length(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise ServerError(f"no transferlab server at {path}; start one with: transferlab serve") from None
    except OSError:
        sock.close()
        raise
    started = None
    try:
        _send(sock, payload)
        while True:
            raw = _read_line(sock)
            if not raw:
                break
            answer = _parse(raw)
            if isinstance(answer, dict) and answer.get("event") == "started":
                started = answer.get("run_dir")
                continue
            if not isinstance(answer, dict):
                raise ServerError(f"not a transferlab answer: {raw[:200]!r}")
            return answer
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server went away: said below
    finally:
        sock.close()
    if payload.get("op") != "run":
        raise ServerError(f"the server at {path} closed the connection without an answer (stopped or killed?)")
    if started:
        raise ServerError(
            f"the server at {path} stopped during the run (killed?) without finishing it; the run's directory is "
            f"{started}; finish it with: transferlab run --resume {started}"
        )
    raise ServerError(
        f"the server at {path} closed the connection without an answer (stopped or killed?); if a run had started, "
        f"finish it with: {RESUME_HINT} (DIR: its directory under the config's output_dir)"
    )


def ping(path: str | Path | None = None) -> bool:
    """Whether a server answers at ``path`` within 5 s."""
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


@contextmanager
def _engine_environment(settings: dict | None):
    """The client's engine switches in this process's environment for the run (the engine reads them there), the
    server's own put back afterwards; ``None`` (a client that sent none) leaves the server's."""
    from .engine_settings import NAMES

    if settings is None:
        yield
        return
    saved = {name: os.environ.get(name) for name in NAMES}
    for name in NAMES:
        if name in settings:
            os.environ[name] = str(settings[name])
        else:
            os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_FIELDS = {  # a run request's fields and the JSON types each may take
    "cwd": (str, type(None)),
    "config": (str, type(None)),
    "resume": (str, type(None)),
    "no_report": (bool, type(None)),
    "timings": (bool, type(None)),
    "engine": (dict, type(None)),
}


def _request_problem(req) -> str | None:
    """Why ``req`` is not a request this server can act on (None if it is one)."""
    if not isinstance(req, dict):
        return f'a request is a JSON object such as {{"op": "ping"}}; got {type(req).__name__}'
    if not isinstance(req.get("op"), str):
        return "a request names its op: run, ping or stop"
    if req["op"] != "run":
        return None
    for key, types in _FIELDS.items():
        if not isinstance(req.get(key), types):
            return f"the run request's {key!r} is a {type(req.get(key)).__name__}, not what the protocol says"
    given = req.get("set")
    if given is not None and not (isinstance(given, list) and all(isinstance(x, str) for x in given)):
        return "the run request's 'set' is a list of key=value strings"
    engine = req.get("engine") or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in engine.items()):
        return "the run request's 'engine' maps switch names to strings"
    return None


class Server:
    """Runs ``run_experiment`` for clients, one run at a time, with one executor kept across runs; each client is
    read and answered on its own thread."""

    def __init__(
        self,
        path: str | Path | None = None,
        idle: float | None = None,
        console=None,
        read_timeout: float = READ_TIMEOUT,
        max_request: int = MAX_REQUEST,
    ):
        self.path = Path(path) if path is not None else default_socket()
        self._inode = None
        self.idle = idle
        self.console = console
        self.read_timeout, self.max_request = read_timeout, max_request
        self.executor = None
        self.runs = 0
        self._run_lock = threading.Lock()  # one run at a time: the executor and the working directory are shared
        self._stopping = threading.Event()
        self._busy = 0  # runs in progress or waiting their turn
        self._count = threading.Lock()
        self._last = time.monotonic()
        self._engine = None  # the engine switches the executor's loaded model was prepared under

    # -- one request --------------------------------------------------------
    def handle(self, req, conn: socket.socket | None = None) -> dict:
        problem = _request_problem(req)
        if problem:
            return {"ok": False, "error": problem, "kind": "ProtocolError"}
        op = req.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "runs": self.runs, "busy": self._busy}
        if op == "stop":
            self._stopping.set()
            return {"ok": True, "stopping": True, "busy": bool(self._busy)}
        if op != "run":
            return {"ok": False, "error": f"unknown request {op!r}; this server knows run, ping and stop"}
        with self._count:
            self._busy += 1
        try:
            with self._run_lock:
                if self._stopping.is_set():
                    return {"ok": False, "error": "the server is stopping; start one again with: transferlab serve"}
                return {"ok": True, **self._run(req, conn)}
        except Exception as exc:  # the server outlives a bad config, a missing file, a failed run
            return {"ok": False, "error": str(exc) or type(exc).__name__, "kind": type(exc).__name__}
        finally:
            with self._count:
                self._busy -= 1
            self._last = time.monotonic()

    def _run(self, req: dict, conn: socket.socket | None = None) -> dict:
        from .experiments import load_config, run_experiment
        from .experiments.checks import layer_collisions
        from .experiments.executors import InProcessExecutor
        from .experiments.runner import never_fired_lines
        from .timings import StageClock, cuda_sync, stage

        engine = req.get("engine")
        if engine is not None and engine != self._engine and self.executor is not None:
            self.executor.close()  # its model was prepared (fused, kernels chosen) under other switches
            self.executor = None
        if self.executor is None:
            self.executor = InProcessExecutor()
            self._engine = engine

        def started(run_dir: Path) -> None:  # the client learns the directory before the run's first batch
            if conn is not None:
                try:
                    _send(conn, {"event": "started", "run_dir": str(Path(run_dir).resolve())})
                except OSError:
                    pass  # the client went away; the run goes on in its directory

        notes: list[str] = []
        clock = StageClock(sync=cuda_sync) if req.get("timings") else nullcontext()  # synchronises: only if asked
        with _working_directory(req.get("cwd")), _engine_environment(engine), clock:
            resume = req.get("resume")
            with stage("config"):
                cfg = None if resume else load_config(req.get("config"), list(req.get("set") or []))
            if cfg is not None:
                notes += [f"note: {m}" for m in layer_collisions(cfg)]
            run_dir = run_experiment(
                cfg,
                resume=resume,
                report=not req.get("no_report"),
                executor=self.executor,
                console=self.console,
                on_run_dir=started,
            )
            run_dir = Path(run_dir).resolve()
            warnings = never_fired_lines(run_dir)
        self.runs += 1
        timings = clock.table() if isinstance(clock, StageClock) else None
        return {"run_dir": str(run_dir), "notes": notes, "warnings": warnings, "timings": timings}

    def _client(self, conn: socket.socket) -> None:
        """Read one request from ``conn`` (size limit, time limit), act on it, answer it."""
        with conn:
            try:
                raw = _read_line(conn, limit=self.max_request, timeout=self.read_timeout)
                if not raw:
                    return  # a probe that connected and left (`listening`)
                conn.settimeout(None)
                req = _parse(raw, "request")
            except ServerError as exc:
                try:
                    conn.settimeout(1.0)
                    _send(conn, {"ok": False, "error": str(exc), "kind": "ProtocolError"})
                except OSError:
                    pass  # gone already
                return
            except OSError:
                return
            self._last = time.monotonic()
            answer = self.handle(req, conn)
            try:
                _send(conn, answer)
            except OSError:
                pass  # the client went away; the run is in its directory all the same

    # -- the socket ---------------------------------------------------------
    def bind(self) -> socket.socket:
        """Listen at ``self.path``. Only a stale socket (a socket file nobody answers at) is replaced; a live
        server, or any other file or directory at the path, is an error and is left as it is."""
        path = self.path
        _check_length(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ServerError(
                f"cannot make the socket's folder {path.parent} ({exc.strerror or exc}); give another --socket"
            ) from None
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if not stat.S_ISSOCK(mode):
                what = "a directory" if stat.S_ISDIR(mode) else "a link" if stat.S_ISLNK(mode) else "a file"
                raise ServerError(
                    f"{path} is {what}, not a socket: it is left as it is; give the server another path with "
                    f"--socket (or {ENV_SOCKET})"
                )
            if listening(path):
                raise ServerError(f"a transferlab server already listens at {path} (busy or not)")
            path.unlink()  # a socket nobody answers at: left by a server that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file: this user only
        try:
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            raise ServerError(f"cannot listen at {path} ({exc.strerror or exc}); give another --socket") from None
        finally:
            os.umask(old)
        sock.listen(8)
        self._inode = path.stat().st_ino  # at exit, remove this socket file only, not a successor's
        return sock

    def serve_forever(self, ready=None, poll: float = 0.2) -> None:
        """Answer requests until a ``stop`` request, ``idle`` seconds without one (and no run going), or Ctrl-C."""
        sock = self.bind()
        sock.settimeout(poll)
        self._last = time.monotonic()
        if ready is not None:
            ready()
        asked = False  # a stop request (not Ctrl-C): let a run in progress finish first
        try:
            while not self._stopping.is_set():
                try:
                    conn, _ = sock.accept()
                except socket.timeout:
                    if self.idle is not None and not self._busy and time.monotonic() - self._last > self.idle:
                        return
                    continue
                threading.Thread(target=self._client, args=(conn,), name="transferlab-client", daemon=True).start()
            asked = True
        finally:
            sock.close()
            try:
                if self.path.stat().st_ino == self._inode:
                    self.path.unlink()
            except FileNotFoundError:
                pass
            self._stopping.set()
            # after a stop request a run in progress finishes (and answers its client) first; after Ctrl-C the
            # process ends with it (the run's lock goes with the process: resume it with --resume)
            if self._run_lock.acquire(blocking=asked):
                try:
                    if self.executor is not None:
                        self.executor.close()
                finally:
                    self._run_lock.release()


def wait_for(path: str | Path, timeout: float = 60.0) -> bool:
    """Wait until a server answers at ``path`` (a script that started ``transferlab serve`` in the background)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ping(path):
            return True
        time.sleep(0.1)
    return False


__all__ = [
    "Server",
    "ServerError",
    "request",
    "ping",
    "listening",
    "wait_for",
    "default_socket",
    "ENV_SOCKET",
    "MAX_REQUEST",
    "READ_TIMEOUT",
]
