"""Run metadata and the ledger of runs (``runs/index.jsonl``).

``metadata.json`` records what a run needs to be reproduced and trusted: the
package version and git commit, the prompt-bank version, each model's id and
the hash of its weights file(s), torch/transformers versions, the device,
the seeds, and start/end times. The ledger is append-only JSONL: one line when
a run starts and one when it ends; ``transferlab runs`` shows the latest line
per run directory.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path

from .. import engine_settings
from ..atomic import write_text


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


ENGINE_SETTINGS = engine_settings.NAMES  # environment variables that choose the engine's kernels (bf16 rounding)


def engine_settings() -> dict:
    """This process's engine switches (:data:`ENGINE_SETTINGS`), unset ones as ``"default"``."""
    return {name: os.environ.get(name, "default") for name in ENGINE_SETTINGS}


def engine_setting_changes(metadata: dict) -> list[str]:
    """How this process's engine switches differ from those a run's ``metadata`` recorded when it started (one
    line each; none where the metadata predates the record)."""
    was = metadata.get("engine_settings")
    if not isinstance(was, dict):
        return []
    current = engine_settings()
    return [
        f"{name}={current[name]} now, {was.get(name, 'default')} when the run started"
        for name in ENGINE_SETTINGS
        if was.get(name, "default") != current[name]
    ]


def command_line() -> str:
    """This process's command line, shell-quoted (``transferlab run demo --set prompts.n=8``; in a notebook, the
    kernel's): the run's metadata records it so a report can say how the run was made."""
    import shlex
    import sys

    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("transferlab", "cli.py", "__main__.py"):
        argv[0] = "transferlab"
    return shlex.join(argv)


def environment() -> dict:
    """Versions, device, threads and the engine's settings (unset ones as ``"default"``) of this process."""
    import torch
    import transformers

    from .. import __version__

    device = "cpu"
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    return {
        "transferlab": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "engine_settings": engine_settings(),
    }


def write_json(path: Path, data: dict) -> None:
    """``data`` as JSON in place of whatever is at ``path`` (a link there is replaced, never written through)."""
    write_text(path, json.dumps(data, indent=2, default=str))


def ledger_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / "index.jsonl"


def ledger_dir(run_dir: str | Path) -> Path:
    """Where a run's ledger lives: beside the run, in its parent folder (the config's ``output_dir`` when the run
    started), wherever the command that resumes or reports it runs from."""
    return Path(run_dir).resolve().parent


def ledger_append(output_dir: str | Path, entry: dict) -> None:
    path = ledger_path(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(entry, default=str) + "\n")


def ledger(output_dir: str | Path, problems: list[str] | None = None) -> list[dict]:
    """Latest ledger entry per run directory, oldest first; each entry's ``run_dir`` is absolute (an older ledger's
    relative one is read as the run of that name beside the ledger, where every run it lists lives).

    A line that is not a JSON entry (a write cut short by a full disk or a
    crash, an edit) is skipped, and said so in ``problems`` if given: one bad
    line must not hide every run.
    """
    path = ledger_path(output_dir)
    if not path.exists():
        return []
    latest: dict[str, dict] = {}
    for i, line in enumerate(path.read_bytes().decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
        except ValueError:
            e = None
        if not isinstance(e, dict) or not isinstance(e.get("run_dir"), str):
            if problems is not None:
                problems.append(f"{path} line {i} is not a ledger entry (cut short or edited); skipped: {line[:60]!r}")
            continue
        if not Path(e["run_dir"]).is_absolute():
            e["run_dir"] = str(path.parent.resolve() / Path(e["run_dir"]).name)
        latest[e["run_dir"]] = {**latest.get(e["run_dir"], {}), **e}
    return list(latest.values())
