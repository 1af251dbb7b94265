"""``transferlab models list|pull``: the catalog from the command line (no download here)."""

from __future__ import annotations

from typer.testing import CliRunner

from transferlab.cli import app
from transferlab.models.catalog import names


def test_list_names_every_catalog_model_and_its_cache_state(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    out = CliRunner().invoke(app, ["models", "list"])
    assert out.exit_code == 0, out.output
    for name in names():
        assert name in out.output and f"transferlab models pull {name}" in out.output  # nothing cached here


def test_pull_of_an_unknown_name_says_which_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path))
    out = CliRunner().invoke(app, ["models", "pull", "gpt-5"])
    assert out.exit_code == 2
    assert "gpt-5" in out.output and all(n in out.output for n in names())
    assert list(tmp_path.iterdir()) == []  # nothing half-written
