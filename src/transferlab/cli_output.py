"""What the command line prints, and where: output that can be copied at any terminal width.

- **Errors** go to standard error as plain text, one line per problem
  (``error: ...``): never wrapped by the tool, so a path, a command or a key in
  the message stays whole when the terminal folds the line, and nothing in it
  is read as rich markup. A refusal of user input exits 2.
- **Messages** (notes, warnings, ``run directory: DIR``) go through
  :data:`console`, which soft-wraps: a line longer than the terminal is left
  to the terminal to fold, never broken inside a path. Tables still fit the
  width (their cells fold; nothing is cut with an ellipsis where it matters).
- **Ctrl-C** ends a command with exit code 130 and one line saying so
  (:func:`interrupted`); ``transferlab run`` names the run directory to resume.
"""

from __future__ import annotations

import shlex
import sys
from typing import NoReturn

import typer
from rich.console import Console

# soft_wrap: print never inserts line breaks (tables are laid out to the width all the same)
console = Console(soft_wrap=True)

INTERRUPTED = 130  # the shell's code for a process ended by SIGINT (128 + 2)
_said = {"interrupted": False}


def error_line(message: object) -> str:
    """``error: <message>``, plain text (the message may quote user text: a prompt, a plan, a path)."""
    return f"{typer.style('error:', fg='red', bold=True)} {message}"


def fail(message: object, code: int = 2) -> NoReturn:
    """Print ``error: message`` on standard error and end the command with ``code`` (2: the input was refused)."""
    typer.echo(error_line(message), err=True)
    raise typer.Exit(code)


def interrupted(run_dir: object | None = None, *, server: bool = False) -> NoReturn:
    """Ctrl-C: one line on standard error, exit 130; with the run directory, the command that resumes it."""
    if run_dir is not None:
        line = f"interrupted; resume with: transferlab run --resume {shlex.quote(str(run_dir))}"
    elif server:
        line = "interrupted; the server goes on with the run (transferlab runs lists it)"
    else:
        line = "interrupted"
    typer.echo(line, err=True)
    _said["interrupted"] = True
    raise typer.Exit(INTERRUPTED)


def begin_command() -> None:
    """A new command starts: nothing said about an interruption yet."""
    _said["interrupted"] = False


def say_interrupted_once() -> None:
    """For the console script's end: a command that was interrupted without a word (typer turns Ctrl-C into
    exit 130 silently) still says so."""
    if not _said["interrupted"]:
        print("interrupted", file=sys.stderr)
        _said["interrupted"] = True
