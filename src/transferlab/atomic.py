"""Writing a file in place of whatever is at its name: a new file, renamed over the name at the end.

A run directory's outputs (``results.csv``, ``summary.json``, ``report.md``,
``figures/*.png``, ...) are rewritten by ``transferlab report`` and every
resume. Opening ``report.md`` for writing would follow a symbolic link put
there (or a hard link's other name) and overwrite a file outside the run
directory. Here each file is written to a fresh temporary file in the same
folder (created exclusively, so nothing already there is opened) and then
renamed over the name: the rename replaces a link itself, never its target,
and a reader never sees half a file. A folder of outputs that is a link is
replaced by a real folder (:func:`own_folder`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def replace_file(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Have ``write(tmp)`` write the file's content to ``tmp``, then rename ``tmp`` over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644 & ~_umask())  # mkstemp makes it 0600; an output is as readable as any other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` (UTF-8) in place of whatever is at ``path``."""
    return replace_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def own_folder(path: str | os.PathLike) -> Path:
    """``path`` as a real folder: a link there (to a folder or anything else) is removed first, never followed."""
    path = Path(path)
    if path.is_symlink():
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["own_folder", "replace_file", "write_text"]
