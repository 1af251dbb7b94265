"""`transferlab prompts` commands, driven through typer's test runner."""

from __future__ import annotations

import pytest
from helpers import table_columns
from typer.testing import CliRunner

from transferlab.cli_prompts import prompts_app
from transferlab.prompts import load_bank

runner = CliRunner()


def invoke(*args):
    return runner.invoke(prompts_app, list(args))


def test_list_group_shows_exactly_that_group():
    res = invoke("list", "--group", "L5", "--width", "0")
    assert res.exit_code == 0, res.output
    bank = load_bank("research")
    for p in bank.select(["L5"]):
        assert p.id in res.output
    assert "L4_01" not in res.output and "story_source_01" not in res.output
    assert f"20 prompts from bank research, version {bank.version}" in res.output


def test_list_all_covers_both_banks():
    res = invoke("list")
    assert res.exit_code == 0
    assert "math_long_03" in res.output and "story_target_64" in res.output
    assert "bank stories" in res.output and "bank research" in res.output


def test_list_text_with_brackets_is_not_markup():
    res = invoke("list", "--group", "kill_ood", "--width", "0")
    assert res.exit_code == 0
    assert "}{ ][ )(" in res.output


def test_list_unknown_group_fails_with_the_known_groups():
    res = invoke("list", "--group", "nope")
    assert res.exit_code == 2 and res.stdout == ""
    assert "unknown group 'nope'" in res.stderr and "kill_surreal_third" in res.stderr
    res = invoke("list", "--group", "L55")
    assert res.exit_code == 2 and "did you mean 'L5'" in res.stderr


def test_show_prints_the_prompt_its_markers_and_version():
    res = invoke("show", "story_source_03")
    assert res.exit_code == 0
    p = load_bank("stories").get("story_source_03")
    assert p.text in " ".join(res.output.split())
    assert "Zog, dragon, cave" in res.output
    assert f"version  {load_bank('stories').version}" in res.output.splitlines()  # one line, whole at any width


def test_show_unknown_id_suggests_close_ids():
    res = invoke("show", "L5_7", "--bank", "research")
    assert res.exit_code == 2 and res.stdout == ""
    assert "did you mean" in res.stderr and "'L5_07'" in res.stderr


def test_groups_and_bad_bank():
    res = invoke("groups", "--bank", "stories")
    assert res.exit_code == 0
    bank, group, _, n = table_columns(res.output)[:4]
    assert "story_source" in group and "46" in n
    res = invoke("groups", "--bank", "/no/such/place")
    assert res.exit_code == 2 and "no bank" in res.stderr


@pytest.mark.parametrize("args", [["list", "--help"], ["show", "--help"]])
def test_help(args):
    assert invoke(*args).exit_code == 0
