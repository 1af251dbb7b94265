"""Hostile inputs (issue 14): each ends in a clear message, a non-zero exit code, and nothing lost or half-written.

The probes of an adversarial user, kept in the suite: markup in prompts and
plans, traversal run names, crafted GGUF headers and truncated files, edited
and damaged run directories, files that are not what their names say. Every
case goes through the command line the way a user would, and checks the exit
code, that the message names the problem, and that no traceback is printed.
"""

from __future__ import annotations

import pytest
from helpers import flat
from typer.testing import CliRunner

from transferlab.cli import app

# small vocabularies have no token for most marker words (see marker_token_ids)
pytestmark = pytest.mark.filterwarnings("ignore:no vocabulary token spells:UserWarning")

STORY = "Once upon a time there was a little girl named Lily who loved to play in the park with her dog"


def cli(*args: str, code: int = 0):
    """Invoke the CLI; the exit code must be ``code`` and, on failure, no traceback may leak."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == code, (res.output, res.exception)
    assert "Traceback" not in res.output
    if code:
        assert isinstance(res.exception, SystemExit), f"{type(res.exception).__name__}: {res.exception}"
    return res


# --------------------------------------------------------------------------- item 3: markup


def test_transfer_prompt_with_inst_tags_is_shown_as_written():
    res = cli("transfer", "-s", STORY, "-t", "[INST] Tell me a story about a frog. [/INST]", "-p", "kv:all", "-n", "3")
    assert "[INST]" in res.output and "[/INST]" in res.output


def test_bold_tag_in_a_prompt_is_not_swallowed():
    res = cli("transfer", "-s", STORY, "-t", "The [bold]frog[/bold] sat", "-p", "kv:all", "-n", "3")
    assert "[bold]frog[/bold]" in res.output


def test_rv_prompt_with_closing_tag():
    res = cli("rv", "a [/] b")
    assert "a [/] b" in res.output


def test_bad_plan_with_markup_reaches_the_error_printer():
    res = cli("transfer", "-s", "a", "-t", "b", "-p", "v_proj@[/]", code=2)
    assert "v_proj@[/]" in flat(res.output) and "error:" in res.output


def test_bank_with_markup_in_its_name_and_texts(tmp_path):
    (tmp_path / "b.main.yaml").write_text(
        "bank: '[red]x'\nschema: 1\ngroups:\n  g:\n    pillar: baseline\n    description: 'a [/] desc'\n"
        "    prompts:\n      - id: g_01\n        text: 'The [bold]cat[/bold] sat'\n"
    )
    res = cli("prompts", "list", "--bank", tmp_path / "b.main.yaml")
    assert "[red]x" in res.output and "[bold]cat[/bold]" in res.output
    res = cli("prompts", "groups", "--bank", tmp_path / "b.main.yaml")
    assert "a [/] desc" in res.output


# --------------------------------------------------------------------------- item 5: run names


@pytest.mark.parametrize("name", ["../../../x", "a/b", "", ".", "..", "/abs", "a\\b", "x.", "a:b", "\x00"])
def test_run_names_that_are_not_one_path_component_are_refused(tmp_path, name):
    out = tmp_path / "deep" / "runs"
    res = cli("run", "demo", "--set", f"name={name}", "--set", f"output_dir={out}", "--set", "prompts.n=2", code=2)
    assert "name:" in flat(res.output) and "cannot name a run directory" in flat(res.output)
    assert sorted(p.name for p in tmp_path.rglob("*")) == []  # nothing written, inside output_dir or out of it


def test_run_name_in_a_config_file_is_checked_too(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'name = "../escape"\noutput_dir = "{tmp_path / "runs"}"\n[[conditions]]\nname = "baseline"\n')
    res = cli("run", cfg, code=2)
    assert "cannot name a run directory" in flat(res.output)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escape").exists()


def test_building_a_run_directory_refuses_an_unchecked_name(tmp_path):
    from transferlab.experiments import ConfigError, load_config
    from transferlab.experiments.runner import new_run_dir

    cfg = load_config("demo", [f"output_dir={tmp_path / 'runs'}"]).model_copy(update={"name": "../../out"})
    with pytest.raises(ConfigError, match="cannot name a run directory"):
        new_run_dir(cfg)
    assert list(tmp_path.iterdir()) == []
