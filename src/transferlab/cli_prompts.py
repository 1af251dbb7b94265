"""``transferlab prompts``: browse the prompt banks.

    transferlab prompts list [--group G] [--bank B]   prompts as a table
    transferlab prompts groups [--bank B]             groups with counts
    transferlab prompts show ID [--bank B]            one prompt in full

``--bank`` takes a shipped bank name (``research``, ``stories``) or a path
to a bank file or folder; without it, every shipped bank is searched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from transferlab.cli_output import console, fail
from transferlab.suggest import unknown

if TYPE_CHECKING:  # the banks are imported when a command runs (pandas, pydantic): the CLI starts light
    from transferlab.prompts import PromptBank

prompts_app = typer.Typer(
    help="Browse the prompt banks (list, groups, show).", no_args_is_help=True, rich_markup_mode=None
)

BankOpt = Annotated[
    str | None,
    typer.Option("--bank", "-b", help="Bank name (research, stories) or path; default: all shipped banks."),
]


def _banks(bank: str | None) -> list[PromptBank]:
    from transferlab.prompts import BankError, available_banks, load_bank

    try:
        return [load_bank(bank)] if bank else [load_bank(name) for name in available_banks()]
    except (BankError, FileNotFoundError) as exc:
        fail(exc)


@prompts_app.command("list")
def list_prompts(
    group: Annotated[str | None, typer.Option("--group", "-g", help="Only this group.")] = None,
    bank: BankOpt = None,
    width: Annotated[int, typer.Option(help="Characters of text to show (0: all).")] = 70,
) -> None:
    """List prompts: id, group, word count and text."""
    banks = _banks(bank)
    if group is not None and not any(group in b.group_info for b in banks):
        known = sorted({g for b in banks for g in b.groups()})
        fail(unknown("group", group, known))
    table = Table(show_lines=False)
    for col, kw in (
        ("bank", {}),
        ("id", {"no_wrap": True, "overflow": "fold"}),
        ("group", {"no_wrap": True, "overflow": "fold"}),
        ("words", {"justify": "right"}),
        ("text", {"overflow": "fold"}),
    ):
        table.add_column(col, **kw)
    shown: list[tuple[PromptBank, int]] = []
    for b in banks:
        prompts = b.select([group]) if group in b.group_info else ([] if group else list(b))
        for p in prompts:
            text = p.text if not width or len(p.text) <= width else p.text[: width - 1] + "…"
            table.add_row(Text(b.name), Text(p.id), Text(p.group), str(p.n_words), Text(text))
        if prompts:
            shown.append((b, len(prompts)))
    console.print(table)
    for b, n in shown:
        console.print(f"{n} prompts from bank {escape(b.name)}, version {b.version}")


@prompts_app.command("groups")
def list_groups(bank: BankOpt = None) -> None:
    """List groups: pillar, size, length range and description."""
    table = Table()
    for col in ("bank", "group", "pillar", "n", "words", "description"):
        table.add_column(col, overflow="fold")
    for b in _banks(bank):
        for g, info in b.group_info.items():
            lens = [p.n_words for p in b.select([g])]
            table.add_row(
                Text(b.name), Text(g), info.pillar, str(len(lens)), f"{min(lens)}-{max(lens)}", Text(info.description)
            )
    console.print(table)


@prompts_app.command("show")
def show(
    prompt_id: Annotated[str, typer.Argument(metavar="ID", help="A prompt id, e.g. L5_07.")], bank: BankOpt = None
) -> None:
    """Show one prompt in full, with its group, markers and the bank version."""
    banks = _banks(bank)
    for b in banks:
        if prompt_id in b:
            p = b.get(prompt_id)
            info = b.group_info[p.group]
            rows = [
                ("id", p.id),
                ("bank", b.name),
                ("group", p.group),
                ("pillar", info.pillar),
                ("level", "" if p.level is None else str(p.level)),
                ("words", str(p.n_words)),
                ("markers", ", ".join(p.markers) if p.markers else ""),
                ("meta", ", ".join(f"{k}={v}" for k, v in p.meta.items() if k != "pillar")),
                ("file", info.file),
                ("version", b.version),
                ("text", p.text),
            ]
            for k, v in rows:  # "key  value" lines, soft-wrapped: an id, a path or the version copies whole
                if v:
                    console.print(Text.assemble((f"{k:<8}", "bold"), " ", v))
            return
    messages = []
    for b in banks:
        try:
            b.get(prompt_id)
        except KeyError as exc:
            messages.append(str(exc.args[0]))
    fail("; ".join(messages))
