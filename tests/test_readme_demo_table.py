"""scripts/readme_demo_table.py: the README's demo output comes from a run directory, not from a hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from transferlab.cli import app

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "readme_demo_table.py"

pytestmark = pytest.mark.filterwarnings("ignore:no vocabulary token spells:UserWarning")


def _script():
    spec = importlib.util.spec_from_file_location("readme_demo_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    sets = ["model=tiny:llama", "prompts.n=4", "generation.max_new_tokens=3", f"output_dir={out}", "rv.enabled=false"]
    res = CliRunner().invoke(app, ["run", "stories", *[a for s in sets for a in ("--set", s)]])
    assert res.exit_code == 0, (res.output, res.exception)
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def test_the_block_is_the_runs_own_headline(small_run):
    script = _script()
    block = script.demo_block(small_run)
    lines = block.splitlines()
    assert lines[0] == script.BEGIN and lines[1] == "```" and lines[-2] == "```" and lines[-1] == script.END
    assert lines[2].startswith("stories: ") and "pairs x 1 seed(s) on tiny:llama" in lines[2]
    assert f"run directory: {small_run}" in lines and f"report: {small_run / 'report.md'}" in lines
    tables = [line for line in lines if "│" in line or "┃" in line]
    assert tables and max(map(len, tables)) <= script.WIDTH  # drawn at the README's width, whatever the terminal
    summary = json.loads((small_run / "summary.json").read_text())
    score = summary["primary_score"]
    first_table = block.split("paired Δ")[0]  # the conditions table: condition, primary score, CI, ...
    rows = {cells[1].strip(): cells for line in first_table.splitlines() if len(cells := line.split("│")) > 3}
    for r in summary["conditions_table"]:  # every condition's mean, as the summary holds it
        if r["score"] == score:
            assert f"{r['mean']:.3f}" in rows[r["condition"]][2], r["condition"]


def test_the_readme_is_rewritten_between_its_markers_only(small_run, tmp_path):
    script = _script()
    readme = tmp_path / "README.md"
    before, after = "# title\n\ntext before\n", "\ntext after\n"
    readme.write_text(f"{before}{script.BEGIN}\nold numbers: 0.170\n{script.END}{after}")
    script.main([str(small_run), "--readme", str(readme)])
    text = readme.read_text()
    assert text == before + script.demo_block(small_run) + after
    figure = (small_run / "figures" / "condition_means.png").read_bytes()
    assert (tmp_path / script.FIGURE).read_bytes() == figure  # the README's figure is the same run's
    script.main([str(small_run), "--readme", str(readme)])
    assert readme.read_text() == text  # regenerating from the same run changes nothing
    readme.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="needs one"):
        script.main([str(small_run), "--readme", str(readme)])


def test_the_repository_readme_carries_one_generated_block():
    script = _script()
    text = (ROOT / "README.md").read_text()
    assert text.count(script.BEGIN) == 1 and text.count(script.END) == 1
    block = text.split(script.BEGIN)[1].split(script.END)[0]
    assert "run directory: runs/demo-" in block and "smollm2-135m-instruct" in block


def test_the_makefile_names_the_demo_it_runs():
    """`make demo` runs `transferlab run`, which is configs/demo.toml: its comment says which model that is."""
    from transferlab.experiments import load_config

    comment = " ".join(
        line.lstrip("# ") for line in (ROOT / "Makefile").read_text().splitlines()[:3] if line.startswith("#")
    )
    assert load_config(None).model.spec == "smollm2-135m-instruct"
    assert "configs/demo.toml" in comment and "SmolLM2-135M-Instruct" in comment and "embedded" not in comment
