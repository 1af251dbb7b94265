"""``transferlab models list|pull``: the catalog from the command line (no download here)."""

from __future__ import annotations

from helpers import table_columns
from typer.testing import CliRunner

from transferlab.cli import app
from transferlab.models.catalog import names


def test_list_names_every_catalog_model_and_its_cache_state(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path))
    out = CliRunner().invoke(app, ["models", "list"])
    assert out.exit_code == 0, out.output
    name_column, cached_column = table_columns(out.output)[0], table_columns(out.output)[-1]
    for name in names():  # folded at a narrow width, never cut
        assert name in name_column and f"transferlabmodelspull{name}" in cached_column  # nothing cached here


def test_pull_of_an_unknown_name_says_which_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path))
    out = CliRunner().invoke(app, ["models", "pull", "gpt-5"])
    assert out.exit_code == 2 and out.stdout == ""
    assert "gpt-5" in out.stderr and all(n in out.stderr for n in names())
    out = CliRunner().invoke(app, ["models", "pull", "smollm2-135m"])  # a partial name: the entry it begins
    assert out.exit_code == 2 and "did you mean 'smollm2-135m-instruct'?" in out.stderr
    assert list(tmp_path.iterdir()) == []  # nothing half-written
