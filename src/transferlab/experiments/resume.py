"""What a run records so that ``--resume`` can refuse to mix two experiments in one table.

A resumed run adds rows to those already stored; the table is only one
experiment if everything that decides a row is what it was. When a run
starts, its store records a *fingerprint*:

- the config as written to ``config.json`` (every key, so a change is named);
- the prompt bank's name and content hash (``PromptBank.version``: any edit
  to its files changes it);
- the code's results version (:data:`.schema.RESULTS_VERSION`);
- per model, once it is loaded: what identifies its weights (the GGUF's
  sha256, a local directory's weight-file hashes, a hub revision, a tiny or
  random model's seed) and the dtype and device type it computes in.

``--resume`` compares each with what it would use now and refuses, naming
every difference, before it writes anything (the config, bank and version)
or before it generates anything (a model, once loaded). A run directory
whose store has rows but no fingerprint (made before fingerprints) is
refused too: nothing proves its rows and new ones belong together.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .schema import RESULTS_VERSION
from .store import RunDirError, RunStore

FINGERPRINT = "fingerprint"
_FIX = (
    "resuming would mix two experiments in one table. Restore what changed, or start a new run with the new "
    "settings (transferlab run CONFIG)"
)


class ResumeRefused(RunDirError):
    """``--resume`` of a run whose config, bank, model or code changed since it started."""


def read_run_config(run_dir: str | Path) -> dict:
    """``config.json`` of a run directory as plain data, or a :class:`RunDirError` naming what is wrong."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a run directory (no such directory)")
    if not path.is_file():
        store = (
            " (it has a store.sqlite: restore config.json from a copy)" if (run_dir / "store.sqlite").exists() else ""
        )
        raise RunDirError(f"{run_dir} is not a run directory (no config.json){store}")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RunDirError(f"{path}: not UTF-8 text (byte {exc.start}); restore the file from a copy") from None
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path}: not valid JSON ({exc}); restore the file from a copy") from None
    except OSError as exc:
        raise RunDirError(f"{path}: cannot be read ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: not a config (a JSON object was expected)")
    return data


def _sha(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def fingerprint(config: dict, bank_name: str, bank_version: str) -> dict:
    return {
        "config_sha256": _sha(config),
        "config": config,
        "bank": {"name": bank_name, "version": bank_version},
        "results_version": RESULTS_VERSION,
        "models": {},
    }


def model_identity(source: dict, dtype: str, device: str) -> dict:
    """What identifies a loaded model's numbers: its weights (hashes, revision, seed), dtype and device type."""
    keep = ("kind", "sha256", "files_sha256", "revision", "family", "shape", "seed")
    out = {k: source[k] for k in keep if source.get(k) is not None}
    if source.get("kind") == "hf" and not source.get("files_sha256"):
        out["id"] = source.get("id")  # a hub model: its id and revision
    out["dtype"] = str(dtype).replace("torch.", "")
    out["device"] = str(device).split(":")[0]
    return out


def _flat(data, prefix: str = "") -> dict:
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    if isinstance(data, list) and data and any(isinstance(v, (dict, list)) for v in data):
        out = {}
        for i, v in enumerate(data):
            out.update(_flat(v, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): data}


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def config_changes(recorded: dict, current: dict) -> list[str]:
    a, b = _flat(recorded), _flat(current)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, ...) != b.get(key, ...):
            was = _short(a[key]) if key in a else "(absent)"
            now = _short(b[key]) if key in b else "(absent)"
            out.append(f"config.json {key}: {was} when the run started, {now} now")
    return out


def differences(recorded: dict, config: dict, bank_name: str, bank_version: str | None) -> list[str]:
    """What differs between a run's recorded fingerprint and what a resume would use (empty: nothing)."""
    out = []
    if recorded.get("config_sha256") != _sha(config):
        out += config_changes(recorded.get("config", {}), config) or ["config.json: its content changed"]
    bank = recorded.get("bank", {})
    if bank_version is not None and (bank.get("name"), bank.get("version")) != (bank_name, bank_version):
        out.append(
            f"prompt bank {bank_name!r}: content hash {str(bank.get('version'))[:12]}... when the run started "
            f"({bank.get('name')!r}), {bank_version[:12]}... now (its files were edited)"
        )
    if recorded.get("results_version") != RESULTS_VERSION:
        out.append(
            f"code: the run's rows were made by results version {recorded.get('results_version')}, this "
            f"transferlab makes version {RESULTS_VERSION} (a change since then alters the rows)"
        )
    return out


def model_differences(recorded: dict, spec: str, identity: dict) -> list[str]:
    was = (recorded.get("models") or {}).get(spec)
    if was is None or was == identity:
        return []
    out = []
    for key in sorted(set(was) | set(identity)):
        if was.get(key) != identity.get(key):
            out.append(
                f"model {spec} {key}: {_short(was.get(key))} when the run started, {_short(identity.get(key))} now"
            )
    return out


def refuse(run_dir: Path, problems: list[str]) -> ResumeRefused:
    lines = "\n".join(f"  - {p}" for p in problems)
    return ResumeRefused(
        f"cannot resume {run_dir}: {len(problems)} difference(s) from the run as it started:\n{lines}\n{_FIX}"
    )


def check_resumable(run_dir: str | Path, config: dict, bank_name: str, bank_version: str | None) -> None:
    """Refuse (:class:`ResumeRefused`) a resume whose config, bank or code differ from the run's record."""
    run_dir = Path(run_dir)
    if not (run_dir / "store.sqlite").exists():
        return  # killed before its store existed: nothing stored, nothing to mix
    store = RunStore(run_dir / "store.sqlite", create=False)
    try:
        recorded = store.get(FINGERPRINT)
        if recorded is None:
            if store.done_units():
                raise refuse(
                    run_dir,
                    [
                        "the run records no fingerprint (it was made by an older transferlab), so nothing shows "
                        "that its stored rows and new ones would come from the same config, bank, model and code"
                    ],
                )
            return
        problems = differences(recorded, config, bank_name, bank_version)
    finally:
        store.close()
    if problems:
        raise refuse(run_dir, problems)
