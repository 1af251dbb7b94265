"""``transferlab serve`` / ``transferlab run --server``: a warm process runs the same experiment a local run does."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pandas as pd
import pytest
from typer.testing import CliRunner

from transferlab.cli import app
from transferlab.serve import Server, ServerError, ping, request


@pytest.fixture
def workload(tmp_path, monkeypatch):
    from transferlab.experiments.w300 import write_w300_bank, write_w300_config

    monkeypatch.chdir(tmp_path)
    bank = write_w300_bank(tmp_path / "bank", n_pairs=4)
    return write_w300_config(
        tmp_path / "w.toml",
        bank,
        model="random:tiny-mistral",
        seeds=(0,),
        n_pairs=4,
        output_dir="runs",  # relative: the server resolves it in the client's directory
        generation={"max_new_tokens": 3},
    )


@pytest.fixture
def server(short_dir):
    sock = short_dir / "s.sock"
    srv = Server(sock)
    ready = threading.Event()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"ready": ready.set}, daemon=True)
    thread.start()
    assert ready.wait(30)
    yield sock
    if ping(sock):
        request({"op": "stop"}, sock, timeout=30)
    thread.join(30)
    assert not thread.is_alive() and not sock.exists()  # stopped and cleaned up


def _run(*args):
    return CliRunner().invoke(app, ["run", *map(str, args)])


def test_a_run_through_the_server_equals_a_local_run_and_the_second_finds_the_model_loaded(workload, server, tmp_path):
    first = _run(workload, "--server", "--socket", server, "--timings", tmp_path / "t1.json")
    assert first.exit_code == 0, first.output
    second = _run(workload, "--server", "--socket", server, "--timings", tmp_path / "t2.json")
    assert second.exit_code == 0, second.output
    local = _run(workload)
    assert local.exit_code == 0, local.output
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert len(runs) == 3 and all((p / "report.md").exists() for p in runs)
    tables = [pd.read_csv(p / "results.csv").sort_values("unit").reset_index(drop=True) for p in runs]
    for t in tables[1:]:
        assert t["text"].tolist() == tables[0]["text"].tolist()  # same tokens whoever ran it
    t1, t2 = (json.loads((tmp_path / f"t{i}.json").read_text()) for i in (1, 2))
    assert t1["server"]["stages"]["model_load"]["entries"] == 1
    assert "model_load" not in t2["server"]["stages"]  # the executor kept the model
    assert t2["run_dir"] and "transfer" in second.output  # the headline, printed by the client


def test_a_bad_config_is_the_clients_error_and_the_server_lives_on(workload, server, tmp_path):
    res = _run(workload, "--server", "--socket", server, "--set", "prompts.n=0")
    assert res.exit_code == 2 and "the server refused or failed the run" in res.output
    assert ping(server)
    assert request({"op": "dance"}, server)["ok"] is False


def test_no_server_is_named_with_the_fix(short_dir):
    """One plain line on standard error, the path and the command whole at any terminal width."""
    nobody = short_dir / "nobody.sock"
    res = _run("demo", "--server", "--socket", nobody)
    assert res.exit_code == 2 and res.stdout == ""
    (line,) = res.stderr.splitlines()
    assert line.startswith("error: ") and str(nobody) in line and "start one with: transferlab serve" in line
    with pytest.raises(ServerError):
        request({"op": "ping"}, nobody)


def test_a_live_server_is_not_replaced_but_a_stale_socket_is(server, short_dir):
    with pytest.raises(ServerError, match="already listens"):
        Server(server).bind()
    assert ping(server)  # the probe (connect, then leave without a word) did not hurt the server
    import socket

    stale = short_dir / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(stale))  # a socket file whose server is gone (closed without removing it, as a kill leaves it)
    dead.close()
    sock = Server(stale).bind()
    sock.close()


def test_the_command_line_starts_without_torch():
    """The client of --server (and --help, presets, runs) never imports torch: the package imports lazily."""
    heavy = "{'torch', 'transformers', 'pandas'}"
    code = f"import sys, transferlab, transferlab.cli; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    import transferlab as tl

    assert callable(tl.load_model) and tl.metrics.rv is not None  # first use imports them


def test_a_busy_server_is_not_taken_for_a_dead_one(short_dir):
    """Something listens but does not answer (a server in the middle of a run): a second server refuses to
    start there, and a stopping server never removes a socket file it did not create."""
    import socket

    path = short_dir / "busy.sock"
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.bind(str(path))
    busy.listen(1)
    try:
        with pytest.raises(ServerError, match="already listens"):
            Server(path).bind()
    finally:
        busy.close()


def test_the_package_reaches_its_subpackages_on_first_use():
    """In a fresh interpreter (here the test process has imported everything already): every subpackage by
    attribute, and a model loaded through the lazy name generates (the engine installed on first use)."""
    code = (
        "import transferlab as tl\n"
        "m = tl.load_model('tiny:llama')\n"  # before anything names the engine
        "n = len(m.generate(['Once upon a time'], max_new_tokens=2).token_ids[0])\n"
        "assert tl.engine.generate is tl.generate and tl.models.load_model is tl.load_model\n"
        "assert tl.interventions.Plan is tl.Plan and tl.sites.HookPoint is tl.HookPoint and tl.__version__\n"
        "assert tl.timings.stage and tl.prompts.load_bank and tl.experiments.run_experiment\n"
        "print(n)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "2"


def test_a_stopping_server_leaves_a_successors_socket_alone(short_dir):
    """If another server took the path meanwhile, the first one's exit must not delete the second's socket."""
    import socket

    path = short_dir / "s.sock"
    first = Server(path, idle=1.0)  # stops after a second without a request
    ready = threading.Event()
    thread = threading.Thread(target=first.serve_forever, kwargs={"ready": ready.set}, daemon=True)
    thread.start()
    assert ready.wait(30)
    path.unlink()
    successor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    successor.bind(str(path))  # another server's socket file at the same path
    try:
        thread.join(30)
        assert not thread.is_alive()
        assert path.exists()  # the first server removed only its own file, which was gone already
    finally:
        successor.close()


def test_a_killed_run_resumes_through_the_server_into_one_ledger_entry(workload, server, tmp_path):
    """A run stopped after one batch (as a killed one is) finishes through the server with every unit once, and
    the ledger lists it once, complete (the resume path goes as the user gave it, relative to their directory; the
    ledger keeps it absolute)."""
    from transferlab.experiments import load_config, run_experiment
    from transferlab.experiments.metadata import ledger

    partial = run_experiment(load_config(str(workload), ["batch_size=4"]), max_batches=1, progress=False)
    relative = partial  # output_dir is relative: so is the run directory
    assert not relative.is_absolute()
    from transferlab.experiments.store import RunStore

    store = RunStore(partial / "store.sqlite")
    assert len(store.done_units()) == 4  # one batch of 16 units stored
    store.close()
    res = _run("--resume", relative, "--server", "--socket", server)
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / partial / "results.csv")
    assert len(rows) == 16 and rows["unit"].is_unique
    latest = {}
    for entry in ledger("runs"):
        latest[entry["run_dir"]] = entry["status"]
    assert latest == {str((tmp_path / relative).resolve()): "complete"}  # one entry, absolute


# --------------------------------------------------------------------------- issue 24: hostile clients and paths


def test_serve_never_removes_what_is_not_its_own_stale_socket(tmp_path, short_dir):
    """A file, a directory or a link at --socket is left as it is, with a clear error (the probe: `serve --socket
    FILE` deleted the file); a path longer than a socket can hold is named, not a traceback."""
    import os

    target = short_dir / "precious.txt"  # short paths: a socket path is limited (the case below)
    target.write_text("keep me")
    folder = short_dir / "folder"
    folder.mkdir()
    link = short_dir / "link"
    link.symlink_to(target)
    for path in (target, folder, link):
        res = CliRunner().invoke(app, ["serve", "--socket", str(path)])
        out = " ".join(res.output.split())
        assert res.exit_code == 2 and "not a socket" in out and "Traceback" not in res.output, res.output
    assert target.read_text() == "keep me" and folder.is_dir() and link.is_symlink()
    long = tmp_path / ("d" * 60) / ("s" * 60 + ".sock")
    res = CliRunner().invoke(app, ["serve", "--socket", str(long)])
    assert res.exit_code == 2 and "at most 107" in " ".join(res.output.split()), res.output
    res = _run("demo", "--server", "--socket", long)
    assert res.exit_code == 2 and "at most 107" in " ".join(res.output.split()), res.output
    assert not os.path.exists(long.parent)


def _raw(path, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` as it is and read until the server closes the connection or a line ends."""
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    try:
        s.sendall(data)
        out = b""
        while not out.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


@pytest.mark.parametrize(
    "body", [b"[1, 2]", b'"x"', b"null", b"3", b'{"op": 5}', b"{not json", b'{"op": "run", "set": "x"}']
)
def test_a_malformed_request_is_answered_and_the_server_lives_on(server, body):
    answer = json.loads(_raw(server, body + b"\n"))
    assert answer["ok"] is False and answer["error"]
    assert ping(server)


@pytest.fixture
def strict_server(short_dir):
    """A server that gives a client 1 s for its request and takes at most 64 KiB."""
    sock = short_dir / "t.sock"
    srv = Server(sock, read_timeout=1.0, max_request=1 << 16)
    ready = threading.Event()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"ready": ready.set}, daemon=True)
    thread.start()
    assert ready.wait(30)
    yield sock
    request({"op": "stop"}, sock, timeout=30)
    thread.join(30)
    assert not thread.is_alive()


def test_half_a_request_or_none_blocks_no_other_client(strict_server):
    """Two clients hold connections (one sent half a request, one nothing): a third is answered at once, and each
    of the two gets its own timeout answer."""
    import socket

    half, idle = (socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2))
    for s in (half, idle):
        s.settimeout(10)
        s.connect(str(strict_server))
    half.sendall(b'{"op": "pi')
    try:
        assert request({"op": "ping"}, strict_server, timeout=0.9)["ok"]  # before either one's 1 s is up
        for s in (half, idle):
            answer = json.loads(s.recv(1 << 16))
            assert answer["ok"] is False and "within 1 s" in answer["error"]
    finally:
        half.close()
        idle.close()
    assert ping(strict_server)


def test_an_oversized_request_is_refused_unread(strict_server):
    """4 MiB without a line end against a 64 KiB limit: the server stops reading past the limit, answers (or
    drops) that client, and serves the next."""
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(strict_server))
    sent, answer = 0, b""
    try:
        while sent < 4 << 20:
            sent += s.send(b"x" * (1 << 16))
    except OSError:
        pass  # the server closed its end: it stopped reading
    try:
        answer = s.recv(1 << 16)
    except OSError:
        pass
    s.close()
    assert sent < 4 << 20 or b"larger than 65536 bytes" in answer
    assert ping(strict_server)


def test_the_read_limit_itself():
    """``_read_line`` keeps at most the limit (plus one chunk) in memory, and a whole line under it comes back."""
    import socket

    from transferlab.serve import _read_line

    a, b = socket.socketpair()

    def write():
        try:
            a.sendall(b"y" * (1 << 20))
        except OSError:
            pass  # the reader stopped and closed: what the limit is for
        a.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with pytest.raises(ServerError, match="larger than 1000 bytes"):
        _read_line(b, limit=1000, timeout=5)
    b.close()
    writer.join(10)
    a, b = socket.socketpair()
    a.sendall(b'{"op": "ping"}\nrest')
    assert _read_line(b, limit=1000, timeout=5) == b'{"op": "ping"}'
    a.close()
    b.close()


def test_the_clients_engine_settings_are_the_runs(workload, server, tmp_path, monkeypatch):
    """The client sends its engine switches; the server refuses a bad one as the local command does (exit 2, no
    run directory) and leaves its own environment as it was."""
    import os

    import transferlab.serve as serve_mod

    sent = {}
    real = serve_mod.request

    def spy(payload, *a, **k):
        sent.update(payload)
        return real(payload, *a, **k)

    monkeypatch.setattr(serve_mod, "request", spy)
    monkeypatch.setenv("TRANSFERLAB_DECODE", "bogus")
    res = _run(workload, "--server", "--socket", server)
    assert sent["engine"] == {"TRANSFERLAB_DECODE": "bogus"}
    assert res.exit_code == 2 and "TRANSFERLAB_DECODE" in res.output and "bogus" in res.output
    monkeypatch.delenv("TRANSFERLAB_DECODE")
    answer = real(
        {"op": "run", "cwd": str(tmp_path), "config": str(workload), "set": [], "engine": {"TRANSFERLAB_KERNELS": "x"}},
        server,
    )
    assert answer["ok"] is False and "TRANSFERLAB_KERNELS" in answer["error"]
    assert "TRANSFERLAB_KERNELS" not in os.environ and "TRANSFERLAB_DECODE" not in os.environ
    assert not (tmp_path / "runs").exists()  # refused before any run directory


def test_the_server_says_where_the_run_is_before_it_ends(workload, server, tmp_path):
    """A run request is answered first with the run's directory (what a client needs if the server dies), then
    with the outcome."""
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(300)
    s.connect(str(server))
    req = {"op": "run", "cwd": str(tmp_path), "config": str(workload), "set": [], "no_report": True}
    s.sendall(json.dumps(req).encode() + b"\n")
    reader = s.makefile("rb")
    first, second = json.loads(reader.readline()), json.loads(reader.readline())
    s.close()
    assert first["event"] == "started" and second["ok"] is True and first["run_dir"] == second["run_dir"]


def test_a_server_that_dies_mid_run_leaves_the_resume_command(short_dir):
    """A server killed during a run closes the connection: the client names the run's directory (if the server had
    said it) and the command that finishes it, exit 2."""
    import socket

    def fake_server(path, lines: list[bytes]):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.listen(1)

        def serve():
            conn, _ = s.accept()
            conn.recv(1 << 16)
            for line in lines:
                conn.sendall(line)
            conn.close()  # dies
            s.close()

        threading.Thread(target=serve, daemon=True).start()

    path = short_dir / "dies.sock"
    fake_server(path, [b'{"event": "started", "run_dir": "/data/runs/demo-1"}\n'])
    res = _run("demo", "--server", "--socket", path)
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "transferlab run --resume /data/runs/demo-1" in out, res.output
    path2 = short_dir / "dies2.sock"
    fake_server(path2, [])
    res = _run("demo", "--server", "--socket", path2)
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "transferlab run --resume DIR" in out and "without a word" not in out
