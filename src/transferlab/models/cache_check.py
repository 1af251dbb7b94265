"""Checking a converted model directory in the cache before it is loaded.

A pulled or converted model (:mod:`.pull`) is a directory of files written
once; a disk error, a cut copy or an edit can damage one later, and then every
load would fail inside safetensors or transformers with a message that names
neither the cache nor the repair. So the marker file records each file's size,
SHA-256 and modification time when the directory is built
(:func:`record_files`), and :func:`problems` compares:

* on every load, the sizes (a ``stat`` per file: microseconds), and the
  SHA-256 of any file whose modification time moved since it was recorded (an
  edit or a cut copy rewrites it; a file untouched since its conversion is not
  hashed again, which would cost a second per 500 MB on every load);
* with ``full=True`` (``transferlab models pull``, the command that repairs a
  cache), every SHA-256, so damage the modification time does not show (a
  disk's own errors) is found when asked;
* for a directory built before the record existed, what can be checked
  without one: each safetensors file against the length its own header
  declares, and that ``config.json`` is JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def record_files(directory: Path, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """``{name: {size, sha256, mtime_ns}}`` of every file directly in ``directory`` (``skip`` left out)."""
    out = {}
    for path in sorted(Path(directory).iterdir()):
        if path.is_file() and not path.is_symlink() and path.name not in skip:
            st = path.stat()
            out[path.name] = {"size": st.st_size, "sha256": sha256_of(path), "mtime_ns": st.st_mtime_ns}
    return out


def _safetensors_problem(path: Path) -> str | None:
    """Whether a safetensors file is as long as its header says (a cut file is shorter)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return f"{path.name}: its header claims {n} bytes, more than the file's {size}"
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as exc:
        return f"{path.name}: not a readable safetensors file ({type(exc).__name__})"
    if 8 + n + end != size:
        return f"{path.name}: {size:,} bytes where its header implies {8 + n + end:,} (cut short?)"
    return None


def problems(directory: Path, record: dict, full: bool = False) -> tuple[list[str], bool]:
    """What is wrong with ``directory`` against its marker's ``record`` (empty: nothing found), and whether a
    file was hashed and found intact after its modification time moved (the record may be refreshed)."""
    directory = Path(directory)
    files = record.get("files")
    out: list[str] = []
    refreshed = False
    if not isinstance(files, dict):  # built before files were recorded: what the files say of themselves
        for path in sorted(directory.glob("*.safetensors")):
            problem = _safetensors_problem(path)
            if problem:
                out.append(problem)
        try:
            json.loads((directory / "config.json").read_text())
        except (OSError, ValueError) as exc:
            out.append(f"config.json: {type(exc).__name__}")
        return out, False
    for name, want in files.items():
        path = directory / name
        try:
            st = path.stat()
        except OSError:
            out.append(f"{name} is missing")
            continue
        if st.st_size != want.get("size"):
            out.append(f"{name}: {st.st_size:,} bytes where {want.get('size'):,} were written")
            continue
        if full or st.st_mtime_ns != want.get("mtime_ns"):
            got = sha256_of(path)
            if got != want.get("sha256"):
                out.append(f"{name}: its SHA-256 is {got[:12]}..., not the {str(want.get('sha256'))[:12]}... recorded")
            elif st.st_mtime_ns != want.get("mtime_ns"):
                want["mtime_ns"] = st.st_mtime_ns
                refreshed = True
    return out, refreshed


def verify(directory: Path, marker: str, full: bool = False) -> list[str]:
    """:func:`problems` of a cache directory whose marker file is ``marker``; a marker that cannot be read is a
    problem itself. Intact files whose modification time moved get it recorded (when the marker is writable)."""
    path = Path(directory) / marker
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return [f"{marker}: {type(exc).__name__}"]
    if not isinstance(record, dict):
        return [f"{marker}: not a record"]
    found, refreshed = problems(directory, record, full=full)
    if refreshed and not found:
        try:
            tmp = path.with_name(f".{marker}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache: the files are hashed again next time, which costs time only
    return found


__all__ = ["problems", "record_files", "sha256_of", "verify"]
