"""``transferlab steer``: steering vectors from contrastive prompt groups.

    transferlab steer build --model M --out vec.safetensors [--layers 0.5,0.75] [--positive L4,L5] ...
    transferlab steer show vec.safetensors

The library does the work (:func:`transferlab.engine.steering.build_steering_from_bank`,
:mod:`transferlab.interventions.steering`); a plan adds a saved vector with
``steer:vec.safetensors@LAYER:aALPHA``.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from transferlab.cli_output import console, fail

steer_app = typer.Typer(
    help="Steering vectors from contrastive prompt groups (build, show).", no_args_is_help=True, rich_markup_mode=None
)


def _fail(exc: Exception | str) -> None:
    """Refuse: ``error: <exc>`` on standard error, exit 2 (see :mod:`transferlab.cli_output`)."""
    fail(exc)


def _split(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _layer(text: str):
    return float(text) if any(c in text for c in ".eE") else int(text)


@steer_app.command("build")
def build(
    out: Annotated[str, typer.Option("--out", "-o", help="Where to write the vector (.safetensors).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model spec (as for transferlab run).")] = "stories260K",
    bank: Annotated[str, typer.Option("--bank", "-b", help="Prompt bank name or path.")] = "research",
    positive: Annotated[
        str | None,
        typer.Option(
            help="Groups with the behavior, comma-separated (default: the recursion pillar; stories: story_source)."
        ),
    ] = None,  # fmt: skip
    negative: Annotated[
        str | None,
        typer.Option(help="Groups without it (default: the baseline pillar; stories: story_target)."),
    ] = None,
    site: Annotated[str, typer.Option(help="Activation site.")] = "resid_post",
    layers: Annotated[str, typer.Option(help="Layers, comma-separated: indices or depth fractions.")] = "0.5",
    prompt_format: Annotated[
        str, typer.Option("--format", help="raw, chat or auto (chat where the model has a chat template).")
    ] = "auto",
    position: Annotated[
        str, typer.Option(help="mean (over the message's tokens, template excluded) or last (the last token).")
    ] = "mean",
    dtype: Annotated[str | None, typer.Option(help="Model dtype (default: the loader's).")] = None,
    device: Annotated[str | None, typer.Option(help="Device (default: the loader's).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch intra-op threads (1 on a small shared CPU box).")] = None,
) -> None:
    """Build a steering vector: mean activation of the positive groups minus the negative groups, per layer."""
    from transferlab.engine.steering import POSITIONS, build_steering_from_bank
    from transferlab.interventions import InterventionError, save_steering
    from transferlab.models import ModelLoadError, load_model
    from transferlab.sites import ACTIVATION_SITES, SiteError
    from transferlab.suggest import unknown

    if site not in ACTIVATION_SITES:
        _fail(unknown("site", site, ACTIVATION_SITES))
    if position not in POSITIONS:
        _fail(f"--position must be one of {', '.join(POSITIONS)}; got {position!r}")
    if prompt_format not in ("raw", "chat", "auto"):
        _fail(f"--format must be raw, chat or auto; got {prompt_format!r}")
    try:
        wanted = [_layer(x) for x in _split(layers) or []]
    except ValueError:
        _fail(f"--layers must be comma-separated indices or depth fractions, e.g. 0.5,12; got {layers!r}")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        m = load_model(model, dtype=dtype, device=device)
        vectors = build_steering_from_bank(
            m,
            bank,
            _split(positive),
            _split(negative),
            site=site,
            layers=wanted,
            prompt_format=None if prompt_format == "auto" else prompt_format,
            position=position,
        )
        path = save_steering(out, vectors)
    except (ModelLoadError, InterventionError, SiteError, FileNotFoundError, KeyError, ValueError) as exc:
        _fail(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
    except OSError as exc:
        _fail(f"cannot write {out}: {exc.strerror or exc}")
    meta = vectors.meta
    console.print(
        f"{escape(str(path))}: {escape(vectors.site)} at layers {vectors.layers} of {escape(m.name)} "
        f"(width {vectors.width}), {meta['n_positive']} positive {escape(','.join(meta['positive_groups']))} - "
        f"{meta['n_negative']} negative {escape(','.join(meta['negative_groups']))}, {position} over tokens, "
        f"{meta['prompt_format']} format"
    )
    for index in vectors.layers:
        norm = meta["norms"][str(index)]
        console.print(f"  layer {index}: norm {norm:.4g}   plan: steer:{escape(str(path))}@{index}:a4")


@steer_app.command("show")
def show(path: Annotated[str, typer.Argument(help="A steering vector file.")]) -> None:
    """Print a steering vector file's metadata (the fingerprint's weight probe left out) as JSON."""
    from transferlab.interventions import InterventionError, load_steering

    try:
        vectors = load_steering(path)
    except InterventionError as exc:
        _fail(exc)
    meta = json.loads(json.dumps(vectors.meta))
    meta.get("model", {}).pop("probe", None)
    console.print_json(json.dumps(meta, sort_keys=True))
