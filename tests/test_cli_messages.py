"""What the command line says when it refuses, and how: one plain line per problem on standard error, exit 2,
the fix named ("did you mean ...?"), paths and commands whole at any terminal width; Ctrl-C as exit 130; help
texts that are whole sentences about the tool, with the defaults it really uses."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
from helpers import flat, nows, table_columns
from typer.testing import CliRunner

from transferlab.cli import app

# every leaf command, and one bad input for it: (arguments, what the one-line message must say)
BAD_INPUT = {
    "info": (["-m", "smollm2-135m"], "did you mean 'smollm2-135m-instruct'?"),
    "rv": (["Once upon a time", "--formula", "cubed"], "unknown PR formula 'cubed'"),
    "rv-study": (["-m", "tiny:llama", "--format", "bogus"], "prompt_format must be one of"),
    "transfer": (["-s", "a", "-t", "b", "-p", "v_proj@2:w4:decode:foo"], "unknown option 'foo'"),
    "generate": (["Once upon a time", "-p", "v_proj@2:decod"], "did you mean 'decode'?"),
    "steer build": (["--out", "{short}/v.safetensors", "--site", "v_prj"], "did you mean 'v_proj'"),
    "steer show": (["{long}/v.safetensors"], "steering vector file not found"),
    "run": (["storeis"], "did you mean 'stories'?"),
    "serve": (["--stop", "--socket", "{short}/nobody.sock"], "start one with: transferlab serve"),
    "report": (["{long}/not-a-run"], "is not a run directory"),
    "runs": (["--output-dir", "{file}"], "is a file"),
    "bench": (["--skip", "gpu"], "unknown part(s) gpu"),
    "prompts list": (["--group", "L55"], "did you mean 'L5'"),
    "prompts groups": (["--bank", "{long}/no-bank.yaml"], "no bank"),
    "prompts show": (["L5_99"], "no prompt 'L5_99'"),
    "models pull": (["smollm2"], "did you mean 'smollm2-135m-instruct'?"),
}
NO_USER_INPUT = {"presets", "models list"}  # nothing a user types can be refused


def _leaves(command, path=()):
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _leaves(sub, (*path, name))
    else:
        yield " ".join(path), command


LEAVES = dict(_leaves(typer.main.get_command(app)))


def test_every_command_is_walked():
    assert set(LEAVES) == set(BAD_INPUT) | NO_USER_INPUT, "a new command needs its bad input in BAD_INPUT"


@pytest.mark.parametrize("command", sorted(BAD_INPUT))
def test_every_refusal_exits_2_with_one_plain_line_on_stderr(command, tmp_path, short_dir):
    long = tmp_path / ("deep-" * 12 + "folder")  # a path longer than a 60-column line
    (tmp_path / "a-file").write_text("")
    args, expected = BAD_INPUT[command]
    args = [a.format(short=short_dir, long=long, file=tmp_path / "a-file") for a in args]
    res = CliRunner().invoke(app, [*command.split(), *args])
    assert res.exit_code == 2, (res.output, res.exception)
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr  # one problem, one line
    assert expected in lines[0] and "error" not in res.stdout
    for arg in args:  # a path the user gave is quoted whole, never broken across lines
        if str(tmp_path) in arg:
            assert arg in lines[0]


def test_a_partial_catalog_name_is_answered_before_any_talk_of_the_hub(monkeypatch):
    from transferlab.models import ModelLoadError, load_model, loading

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked about a near-miss of a known name")

    monkeypatch.setattr(loading, "_hub_reachable", no_hub)
    with pytest.raises(ModelLoadError) as e:
        load_model("smollm2-135m")
    assert str(e.value).startswith("unknown model 'smollm2-135m'; did you mean 'smollm2-135m-instruct'?")
    with pytest.raises(ModelLoadError, match="did you mean 'stories260K'"):
        load_model("stories260k")
    with pytest.raises(ModelLoadError, match="did you mean 'llama'"):
        load_model("tiny:lama")


@pytest.mark.parametrize(
    "plan, said",
    [
        ("v_proj@2:w4:decode:foo", "unknown option 'foo'; options: prompt, decode, both,"),
        ("v_proj@2:decod", "unknown option 'decod'; did you mean 'decode'?"),
        ("v_proj@2:fx", "unknown option 'fx'"),  # not float('x')
        ("noise:v_proj@1:sdx", "unknown noise option 'sdx'"),
        ("kv:all:rigth", "unknown kv option 'rigth'; did you mean 'right'?"),
        ("ablate:v_proj@1:zeor", "unknown ablate option 'zeor'; did you mean 'zero'?"),
        ("v_prj@2", "unknown site 'v_prj'; did you mean 'v_proj'"),
    ],
)
def test_plan_options_and_sites_suggest_what_was_meant(plan, said):
    from transferlab.interventions import InterventionError, parse_plan
    from transferlab.sites import SiteError

    with pytest.raises((InterventionError, SiteError)) as e:
        parse_plan(plan)
    assert said in str(e.value) and "could not convert" not in str(e.value)


def test_a_valid_plan_with_every_number_form_still_parses():
    from transferlab.interventions import parse_plan

    plan = parse_plan("v_proj@2:f0.25:a1e-1:decode + noise:v_proj@1:sd0.5:seed3:raw + kv:p1-4")
    assert [type(i).__name__ for i in plan] == ["Patch", "Noise", "KVSplice"]
    assert plan.interventions[0].fraction == 0.25 and plan.interventions[0].alpha == 0.1


def test_unknown_scorers_suggest_the_registered_name(tmp_path):
    from transferlab.metrics.scorers import get_scorer

    with pytest.raises(KeyError, match="did you mean 'seed_v1'"):
        get_scorer("seed_v2")
    res = CliRunner().invoke(
        app, ["run", "stories", "--set", "scoring.scorers=['strickt']", "--set", f"output_dir={tmp_path}"]
    )
    assert res.exit_code == 2 and "unknown scorer 'strickt'; did you mean 'strict'?" in res.stderr
    assert list(tmp_path.iterdir()) == []  # refused before the run directory


def test_the_run_directory_line_is_never_broken_inside_the_path(tmp_path, capsys, monkeypatch):
    from transferlab import cli

    run_dir = tmp_path / ("a-rather-long-run-directory-name-" * 3 + "20260101")
    run_dir.mkdir()
    (run_dir / "report.md").write_text("")
    monkeypatch.setattr(cli.console, "_width", 40)  # narrower than the path
    cli._print_outcome(run_dir, [])
    lines = capsys.readouterr().out.splitlines()
    assert f"run directory: {run_dir}" in lines and f"report: {run_dir / 'report.md'}" in lines


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_during_a_run_exits_130_with_the_command_that_resumes_it(tmp_path, monkeypatch):
    from transferlab.experiments import runner
    from transferlab.experiments.metadata import ledger

    monkeypatch.setattr(runner.Runner, "run", _interrupt)
    out = tmp_path / "my runs"  # a space: the resume command quotes it
    res = CliRunner().invoke(app, ["run", "stories", "--set", f"output_dir={out}", "--set", "prompts.n=2"])
    assert res.exit_code == 130 and "Traceback" not in res.output
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    assert res.stderr == f"interrupted; resume with: transferlab run --resume {shlex.quote(str(run_dir))}\n"
    assert ledger(out)[-1]["status"] == "interrupted"


def test_ctrl_c_before_the_run_directory_exists_says_so_in_one_line(monkeypatch):
    from transferlab import experiments

    monkeypatch.setattr(experiments, "load_config", _interrupt)
    res = CliRunner().invoke(app, ["run", "stories"])
    assert res.exit_code == 130 and res.stderr == "interrupted\n"


def test_ctrl_c_in_any_other_command_exits_130_with_a_line(monkeypatch, capsys):
    import sys

    from transferlab import cli
    from transferlab.experiments import presets

    codes = []
    monkeypatch.setattr(presets, "list_presets", _interrupt)
    monkeypatch.setattr(cli, "leave", codes.append)
    monkeypatch.setattr(sys, "argv", ["transferlab", "presets"])
    cli.main()
    assert codes == [130] and capsys.readouterr().err == "interrupted\n"


# --------------------------------------------------------------------------- help texts and presets

WORK_ITEM = re.compile(r"\b(issue|item)\s+\d", re.IGNORECASE)


def _claimed_defaults(help_text: str) -> list[str]:
    """Values a help text calls the default: ``'x' (..., default)`` or ``x (default)``."""
    quoted = [m[0] for m in re.findall(r"'([^']+)'\s*\(([^)]*\bdefault\b[^)]*)\)", help_text)]
    return quoted + re.findall(r"([\w.:-]+) \(default\)", help_text)


@pytest.mark.parametrize("command", sorted(LEAVES))
def test_help_texts_are_whole_sentences_with_the_defaults_used(command):
    cmd = LEAVES[command]
    assert cmd.help and not WORK_ITEM.search(cmd.help) and cmd.help.rstrip().endswith("."), cmd.help
    for param in cmd.params:
        if param.name == "help":
            continue
        text = getattr(param, "help", None) or ""
        assert text.rstrip().endswith((".", ")")), f"{command} {param.name}: {text!r}"
        assert not WORK_ITEM.search(text), text
        for claimed in _claimed_defaults(text):
            assert param.default is None or claimed == str(param.default), (
                f"{command} --{param.name} says the default is {claimed!r}; it is {param.default!r}"
            )


def test_the_default_check_catches_a_help_text_that_claims_another_default():
    assert _claimed_defaults("Model: 'stories260K' (embedded, default), 'tiny:<family>'.") == ["stories260K"]
    assert _claimed_defaults("Where: inprocess (default) or ray.") == ["inprocess"]


def test_the_ray_extra_is_named_in_the_rendered_help():
    res = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "40"})
    assert "pip install 'transferlab[ray]'" in flat(res.output)  # not eaten as markup, not cut


@pytest.mark.parametrize("group", [[], ["prompts"], ["models"], ["steer"]])
def test_command_lists_show_each_summary_whole_at_a_narrow_width(group):
    res = CliRunner().invoke(app, [*group, "--help"], env={"COLUMNS": "40"})
    listing = res.output.split("Commands:")[1]
    assert res.exit_code == 0 and "..." not in listing and "…" not in listing
    for name, cmd in LEAVES.items():
        if name.startswith(" ".join(group)) and len(name.split()) == len(group) + 1:
            assert " ".join(cmd.help.split("\n\n")[0].split()) in flat(res.output), name


def test_preset_descriptions_are_whole_sentences_about_the_tool():
    from transferlab.experiments import load_config
    from transferlab.experiments.presets import list_presets, preset_description, preset_path

    for name in list_presets():
        text = preset_description(name)
        assert text.endswith(".") and text[0].isupper() and len(text) > 40, (name, text)
        assert load_config(name).description == text
        assert not WORK_ITEM.search(preset_path(name).read_text()), name  # comments included


def test_error_lines_hold_whatever_the_width(tmp_path):
    """The same refusal at 40 and 300 columns: the same bytes (nothing is laid out to the terminal)."""
    long = tmp_path / ("deep-" * 20)
    outputs = set()
    for columns in ("40", "300"):
        res = CliRunner().invoke(app, ["report", str(long)], env={"COLUMNS": columns})
        outputs.add(res.stderr)
    (only,) = outputs
    assert str(long) in only.splitlines()[0]


def test_the_python_floor_matches_what_the_code_imports():
    """tomllib is standard from 3.11: pyproject's requires-python and ruff's target say so."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    floor = re.fullmatch(r">=\s*3\.(\d+)", meta["project"]["requires-python"].strip())
    assert floor, meta["project"]["requires-python"]
    minor = int(floor[1])
    assert meta["tool"]["ruff"]["target-version"] == f"py3{minor}"
    needs = {"tomllib": 11}  # standard-library modules newer than 3.10, and the minor version that brought them
    for path in (root / "src").rglob("*.py"):
        text = path.read_text()
        for module, since in needs.items():
            if re.search(rf"^\s*(import|from) {module}\b", text, re.MULTILINE):
                assert minor >= since, f"{path.name} imports {module} (3.{since}+), requires-python says 3.{minor}"


def test_transformers_loading_bar_stays_out_of_the_console(tmp_path, capfd):
    """Loading a model directory draws no "Loading weights" bar; transformers' bars work again afterwards."""
    from transformers.utils import logging as hf_logging

    from transferlab import load_model
    from transferlab.models.tiny import build_tiny

    tiny = build_tiny("llama")
    tiny.hf.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    capfd.readouterr()
    model = load_model(str(tmp_path))
    assert model.adapter.n_layers == tiny.adapter.n_layers
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s]" not in err, err
    if hf_logging.is_progress_bar_enabled():  # unless the environment turned them off
        for _ in hf_logging.tqdm(range(2), desc="after the load"):
            pass
        assert "after the load" in capfd.readouterr().err  # only the load was silenced


def test_the_audit_table_folds_long_cells_at_80_columns():
    """Every cell whole (folded, never cut with an ellipsis) in a terminal of 80 columns."""
    import io

    import pandas as pd
    from rich.console import Console

    from transferlab.cli import audit_table_view

    description = "noise:v_proj@0.84375:w16:both:sd1.0:seed7 + kv:all:keepfirst:reposition"
    audit = pd.DataFrame(
        [
            {
                "example": "pair_0012-seed_0",
                "description": description,
                "hook_point": "v_proj@25",
                "phase": "both",
                "fired_prompt": 16,
                "fired_decode": 40,
                "positions": "[12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27]",
                "change_norm": 1.23456789,
                "never_fired": False,
            }
        ]
    )
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(audit_table_view(audit))
    columns = table_columns(out.getvalue())
    assert "…" not in out.getvalue() and max(map(len, out.getvalue().splitlines())) <= 80
    assert nows(description) in columns[1] and "pair_0012-seed_0" in columns[0] and "1.235" in columns[-1]
