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
def server(tmp_path):
    sock = tmp_path / "s.sock"
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


def test_no_server_is_named_with_the_fix(tmp_path):
    res = _run("demo", "--server", "--socket", tmp_path / "nobody.sock")
    assert res.exit_code == 2 and "start one with: transferlab serve" in res.output
    with pytest.raises(ServerError):
        request({"op": "ping"}, tmp_path / "nobody.sock")


def test_a_live_server_is_not_replaced_but_a_stale_socket_is(server, tmp_path):
    with pytest.raises(ServerError, match="already listens"):
        Server(server).bind()
    assert ping(server)  # the probe (connect, then leave without a word) did not hurt the server
    stale = tmp_path / "stale.sock"
    stale.write_text("")  # left by a killed server
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


def test_a_busy_server_is_not_taken_for_a_dead_one(tmp_path):
    """Something listens but does not answer (a server in the middle of a run): a second server refuses to
    start there, and a stopping server never removes a socket file it did not create."""
    import socket

    path = tmp_path / "busy.sock"
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


def test_a_stopping_server_leaves_a_successors_socket_alone(tmp_path):
    """If another server took the path meanwhile, the first one's exit must not delete the second's socket."""
    import socket

    path = tmp_path / "s.sock"
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
    the ledger lists it once, complete (the resume path goes as the user gave it, relative to their directory)."""
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
    assert latest == {str(relative): "complete"}
