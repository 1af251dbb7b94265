"""The console script's end (transferlab.cli.leave): a normal exit's effects, without the interpreter's teardown."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = """
import atexit, sys, threading, time
{torch}
from transferlab.cli import leave

out = sys.argv[1]
atexit.register(lambda: open(out + ".atexit", "w").write("ran"))
def late():
    time.sleep(0.3)
    open(out + ".thread", "w").write("done")
threading.Thread(target=late).start()  # not a daemon: a normal exit waits for it
from concurrent.futures import ThreadPoolExecutor
pool = ThreadPoolExecutor(2)  # alive, idle, never shut down (as Inductor keeps one): must not hang the exit
pool.submit(lambda: None).result()
sys.stdout.write("unflushed line")  # no newline, no flush: must still reach the pipe
leave({code})
"""


@pytest.mark.parametrize("with_torch", [True, False])
@pytest.mark.parametrize("code,rc", [(None, 0), (3, 3), ("bad config", 1)])
def test_leave_keeps_what_a_normal_exit_does(tmp_path, with_torch, code, rc):
    script = SCRIPT.format(torch="import torch" if with_torch else "", code=repr(code))
    out = tmp_path / "mark"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(out)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == rc, done.stderr
    assert done.stdout == "unflushed line"
    assert (tmp_path / "mark.atexit").read_text() == "ran"
    assert (tmp_path / "mark.thread").read_text() == "done"
    if isinstance(code, str):
        assert code in done.stderr


def test_the_console_script_ends_through_leave(monkeypatch):
    from transferlab import cli

    codes = []
    monkeypatch.setattr(cli, "leave", codes.append)
    monkeypatch.setattr(sys, "argv", ["transferlab", "--help"])
    cli.main()
    assert codes == [0]
    monkeypatch.setattr(sys, "argv", ["transferlab", "no-such-command"])
    cli.main()
    assert codes[-1] == 2
