"""Rewrite the README's demo output from a run directory: ``python scripts/readme_demo_table.py RUN_DIR``.

The block between ``<!-- demo-output:begin -->`` and ``<!-- demo-output:end -->`` in
README.md is what ``transferlab run`` prints for the demo: the config line, the
headline tables (from the run's ``summary.json``, drawn at 100 columns) and where
the run directory and report are. It is generated from a fresh run's files, never
typed by hand, so the numbers in the README are numbers a run produced::

    transferlab run                                     # configs/demo.toml
    python scripts/readme_demo_table.py runs/demo-...   # the run directory it printed

The README's figure of condition means (``docs/demo_condition_means.png``, beside
the README) is copied from the same run's ``figures/condition_means.png``.
``--readme PATH`` rewrites another file (and the figure beside it); ``--print``
writes the block to standard output and leaves every file alone.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
from pathlib import Path

BEGIN, END = "<!-- demo-output:begin -->", "<!-- demo-output:end -->"
FIGURE = Path("docs") / "demo_condition_means.png"  # relative to the README
WIDTH = 100  # the README's width (the deltas table needs it), whatever the terminal running this


def demo_block(run_dir: Path) -> str:
    """The README block for ``run_dir``: a fenced block of what ``transferlab run`` printed, less the progress bar."""
    from rich.console import Console

    from transferlab.cli import _print_headline, config_line
    from transferlab.experiments.config import validate_config

    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").is_file():
        raise SystemExit(f"error: {run_dir} has no summary.json (a finished run with its report is needed)")
    cfg = validate_config(json.loads((run_dir / "config.json").read_text()), str(run_dir / "config.json"))
    out = io.StringIO()
    console = Console(file=out, width=WIDTH, color_system=None, soft_wrap=True)
    console.print(config_line(cfg), markup=False, highlight=False)
    _print_headline(run_dir, console=console)
    console.print(f"run directory: {run_dir}", markup=False, highlight=False)
    console.print(f"report: {run_dir / 'report.md'}", markup=False, highlight=False)
    body = "\n".join(line.rstrip() for line in out.getvalue().splitlines())
    return f"{BEGIN}\n```\n{body}\n```\n{END}"


def rewrite(readme: Path, block: str) -> None:
    """Replace the one marked block of ``readme`` with ``block``; everything else stays byte for byte."""
    text = readme.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"error: {readme} needs one {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + block + tail, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished demo run's directory")
    parser.add_argument("--readme", type=Path, default=Path(__file__).resolve().parents[1] / "README.md")
    parser.add_argument("--print", action="store_true", help="print the block instead of rewriting the README")
    args = parser.parse_args(argv)
    block = demo_block(args.run_dir)
    if args.print:
        sys.stdout.write(block + "\n")
    else:
        rewrite(args.readme, block)
        figure = args.run_dir / "figures" / "condition_means.png"
        if figure.is_file():
            (args.readme.parent / FIGURE).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(figure, args.readme.parent / FIGURE)
        print(f"rewrote the demo output in {args.readme} (and {FIGURE}) from {args.run_dir}")


if __name__ == "__main__":
    main()
