"""The ``transferlab`` command line: thin wrappers over the library."""

from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Activation-patching behavior-transfer experiments.")
console = Console()

MODEL_HELP = "Model: 'stories260K' (embedded, default), 'tiny:<family>', a .gguf file, a local HF directory or a hub id."


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


def _load(model: str, dtype: Optional[str] = None, device: Optional[str] = None):
    from .models import ModelLoadError, load_model

    try:
        return load_model(model, dtype=dtype, device=device)
    except (ModelLoadError, ValueError) as exc:
        _fail(exc)


@app.command()
def info(model: str = typer.Option("stories260K", "--model", "-m", help=MODEL_HELP)) -> None:
    """Print a model's architecture and the sites transferlab can hook."""
    from .sites import ACTIVATION_SITES

    m = _load(model)
    table = Table(title=f"{m.name}", show_header=False)
    for key, value in m.info().items():
        table.add_row(key, str(value))
    console.print(table)
    sites = Table(title="sites (hook points are site@layer; layer = index, -index or depth fraction)")
    sites.add_column("site")
    sites.add_column("width")
    sites.add_column("module (layer 0)")
    for site in ACTIVATION_SITES:
        h = m.adapter.handle(m.hook_point(f"{site}@0"))
        where = type(h.module).__name__ + (f"[{h.start}:{h.stop}]" if h.start is not None else "") + f" ({h.where})"
        sites.add_row(site, str(m.adapter.width(site)), where)
    sites.add_row("kv", f"{m.adapter.n_kv_heads} heads x {m.adapter.head_dim}", "cache (keys after RoPE)")
    console.print(sites)


@app.command("rv")
def rv_cmd(
    prompts: List[str] = typer.Argument(..., help="Prompts to measure."),
    model: str = typer.Option("stories260K", "--model", "-m", help=MODEL_HELP),
    window: int = typer.Option(16, help="Last W tokens (BOS excluded)."),
    early: str = typer.Option("0.15625", help="Early layer (index or depth fraction; 5/32 by default)."),
    late: str = typer.Option("0.84375", help="Late layer (index or depth fraction; 27/32 by default)."),
    formula: str = typer.Option("squared", help="PR formula: squared (seed code) or unsquared."),
    short: str = typer.Option("nan", help="Prompts shorter than the window: error, nan or shrink."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows instead of a table."),
) -> None:
    """Print R_V = PR(late)/PR(early) of v_proj for each prompt."""
    from .metrics import rv

    m = _load(model)
    try:
        df = rv(m, list(prompts), early=early, late=late, window=window, formula=formula, short=short)
    except ValueError as exc:
        _fail(exc)
    if as_json:
        console.print_json(json.dumps(df.to_dict(orient="records")))
        return
    table = Table(title=f"R_V on {m.name} (v_proj@{df.layer_late.iloc[0]} / v_proj@{df.layer_early.iloc[0]}, window {window})")
    for col in ("prompt", "n_tokens", "pr_early", "pr_late", "rv", "status"):
        table.add_column(col)
    for r in df.itertuples():
        table.add_row(r.prompt[:50], str(r.n_tokens), f"{r.pr_early:.3f}", f"{r.pr_late:.3f}", f"{r.rv:.3f}", r.status)
    console.print(table)


def _register_optional() -> None:
    try:
        from .cli_prompts import prompts_app
    except ImportError:  # pragma: no cover - during development only
        return
    app.add_typer(prompts_app, name="prompts", help="Browse the prompt banks.")


_register_optional()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
