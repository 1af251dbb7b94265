"""The steering dose-response: the steer_dose sweep (coefficient x depth), its preset, figure and report table."""

from __future__ import annotations

import hashlib
import json

import pytest

from transferlab.engine.steering import build_steering_from_bank
from transferlab.experiments import ConfigError, load_config, run_experiment
from transferlab.experiments.units import expand_conditions
from transferlab.interventions import save_steering
from transferlab.report.dose import dose_points

pytestmark = pytest.mark.filterwarnings("ignore:no vocabulary token spells:UserWarning")


def _small(tmp_path, vector, *extra):
    return [
        f"output_dir={tmp_path / 'runs'}",
        "model=stories260K",
        "prompts.bank=stories",
        "prompts.sources=['story_source']",
        "prompts.targets=['story_target']",
        "prompts.format=raw",
        "prompts.n=4",
        "generation.max_new_tokens=6",
        "generation.greedy=true",
        "scoring.scorers=['source_lexicon', 'source_overlap', 'target_overlap']",
        "scoring.target_logprob=false",
        "scoring.logit=false",
        f"sweeps.0.file={vector}",
        *extra,
    ]


@pytest.fixture(scope="module")
def vector(tmp_path_factory, stories):
    path = tmp_path_factory.mktemp("dose") / "stories.safetensors"
    save_steering(path, build_steering_from_bank(stories, "stories", layers=[2, 4]))
    return path


def test_the_sweep_generates_coefficient_x_depth(tmp_path, vector):
    cfg = load_config(
        "steer_dose", _small(tmp_path, vector, "sweeps.0.layers=[2, 0.8]", "sweeps.0.coefficients=[0, 3]")
    )
    conds = expand_conditions(cfg, 5)
    assert [c.name for c in conds] == ["baseline", "steer@2:a0", "steer@2:a3", "steer@0.8:a0", "steer@0.8:a3"]
    (steer,) = conds[-1].parsed_plan()
    assert (steer.layer, steer.alpha) == (4, 3.0)  # 0.8 of 5 layers is the file's layer 4


def test_dose_response_run_on_stories(tmp_path, vector):
    cfg = load_config(
        "steer_dose", _small(tmp_path, vector, "sweeps.0.layers=[2, 4]", "sweeps.0.coefficients=[0, 2, 8]")
    )
    run_dir = run_experiment(cfg, progress=False, report=True)
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 7 * 4
    text = {(r["condition"], r["pair_id"]): r["text"] for r in rows}
    for pair in range(4):  # coefficient 0 adds nothing: greedy tokens equal the target alone's
        assert text[("steer@2:a0", pair)] == text[("baseline", pair)] == text[("steer@4:a0", pair)]
    assert any(text[("steer@4:a8", p)] != text[("baseline", p)] for p in range(4))  # a large dose does act
    summary = json.loads((run_dir / "summary.json").read_text())
    points = dose_points(summary)
    assert sorted((p["layer"], p["coef"]) for p in points) == [
        (layer, coef) for layer in ("2", "4") for coef in (0.0, 2.0, 8.0)
    ]
    means = {(r["condition"], r["score"]): r["mean"] for r in summary["conditions_table"]}
    for p in points:  # the figure's numbers are the condition table's
        assert p["source_lexicon_mean"] == means[(p["condition"], "source_lexicon")]
        assert p["target_overlap_mean"] == means[(p["condition"], "target_overlap")]
    assert (run_dir / "figures" / "dose_response.png").stat().st_size > 0
    meta = json.loads((run_dir / "metadata.json").read_text())
    recorded = meta["steering_vectors"][str(vector)]
    assert recorded["sha256"] == hashlib.sha256(vector.read_bytes()).hexdigest() and recorded["layers"] == [2, 4]
    report = (run_dir / "report.md").read_text()
    assert "## Steering dose-response" in report and "dose_response.png" in report
    table = report.split("## Steering dose-response")[1].split("\n## ")[0]
    assert sum(line.startswith("| stories.safetensors |") for line in table.splitlines()) == 6


def test_a_missing_vector_is_refused_before_the_run_directory(tmp_path):
    cfg = load_config("steer_dose", _small(tmp_path, tmp_path / "absent.safetensors"))
    with pytest.raises(ConfigError, match="sweeps.0.file: steering vector file not found"):
        run_experiment(cfg, progress=False, report=False)
    assert not (tmp_path / "runs").exists()


def test_a_layer_the_file_lacks_is_refused(tmp_path, vector):
    cfg = load_config("steer_dose", _small(tmp_path, vector, "sweeps.0.layers=[3]"))
    with pytest.raises(ConfigError, match="sweeps.0.file: .*holds layers \\[2, 4\\]"):
        run_experiment(cfg, progress=False, report=False)
    assert not (tmp_path / "runs").exists()
