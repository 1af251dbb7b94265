"""transformers' own progress bars, silenced while transferlab loads a model.

``from_pretrained`` draws a "Loading weights" bar (transformers 5) or a
"Loading checkpoint shards" bar on standard error; in a ``transferlab``
command it broke into the command's own output (the run's progress bar, the
headline). Inside :func:`no_load_bars` every bar transformers itself creates
is an empty one; the hub's download bars (huggingface_hub's own) are left as
they are, so a long download still shows its progress.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def no_load_bars() -> Iterator[None]:
    """Within the block, transformers' progress bars draw nothing (a no-op where transformers has no hook)."""
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is None:  # an older transformers: no way to silence its bars alone
        yield
        return

    def silent(factory, args, kwargs):
        return hf_logging.EmptyTqdm(*args, **kwargs)

    previous = set_hook(silent)
    try:
        yield
    finally:
        set_hook(previous)
