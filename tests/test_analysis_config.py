"""The confirmatory family in a config (``[analysis]``): presets, refusals, and the command line's exit 2."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from transferlab.cli import app
from transferlab.experiments import ConfigError, list_presets, load_config, preset_path
from transferlab.stats import Family

REAL_MODEL = [
    "smollm2_n300",
    "first_slot",
    "cross_model_real",
    "smollm2_seed_vs_corrected",
    "corrected_n300",
    "cross_model",
]


def flat(text: str) -> str:
    return " ".join(text.split())


def problems(exc: ConfigError) -> dict[str, str]:
    return {where: msg for where, msg in exc.problems}


@pytest.mark.parametrize("name", list_presets())
def test_preset_families_are_well_formed(name):
    cfg = load_config(name)
    family = Family.from_analysis(cfg.analysis.model_dump())
    if family is None:
        return
    names = {c.name for c in cfg.conditions}
    assert all({c.condition, c.reference} <= names for c in family.claims)
    text = preset_path(name).read_text()
    if any(c.margin is not None for c in family.claims):  # every margin says how it was chosen
        comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
        assert re.search(r"\bmargin\b.*(resolution|scale|chosen|fraction)", comments, re.I | re.S), name


@pytest.mark.parametrize("name", REAL_MODEL)
def test_real_model_presets_run_three_seeds_and_name_a_family(name):
    cfg = load_config(name)
    assert len(cfg.seeds) >= 3
    assert Family.from_analysis(cfg.analysis.model_dump()) is not None


def _refused(tmp_path, *sets: str) -> str:
    args = ["run", "stories", "--no-report", "--set", f"output_dir={tmp_path}", "--set", "model=tiny:llama"]
    res = CliRunner().invoke(app, args + [x for s in sets for x in ("--set", s)])
    assert res.exit_code == 2, res.output
    assert not any(tmp_path.iterdir()), "a refused config must not create a run directory"
    return flat(res.output)


def test_equivalence_without_a_margin_is_refused_with_the_fix(tmp_path):
    out = _refused(tmp_path, 'analysis.equivalence=[{contrast="transfer - kv_only"}]')
    assert "analysis.equivalence.0" in out and "claims equivalence without a margin" in out
    assert "margin = <that difference" in out
    out = _refused(tmp_path, 'analysis.equivalence=["transfer - kv_only"]')
    assert "claims equivalence without a margin" in out


@pytest.mark.parametrize(
    "setting,where,words",
    [
        ('analysis.equivalence=[{contrast="transfer - kv_only", margin=0}]', "analysis.equivalence.0.margin", "0"),
        ('analysis.confirmatory=["transfer-baseline"]', "analysis.confirmatory", "must read 'A - B'"),
        ('analysis.confirmatory=["transfer - nosuch"]', "analysis.confirmatory.0", "'nosuch' is not among"),
        (
            'analysis.confirmatory=["transfer - baseline", "transfer - baseline"]',
            "analysis.confirmatory.1",
            "already claimed",
        ),
    ],
)
def test_malformed_families_are_refused(setting, where, words):
    with pytest.raises(ConfigError) as e:
        load_config("stories", [setting])
    assert words in problems(e.value)[where]


def test_claims_need_a_primary_score_that_the_run_computes(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config("stories", ['analysis={confirmatory=["transfer - baseline"]}'])
    assert "need a primary score" in problems(e.value)["analysis.primary"]
    out = _refused(tmp_path, "analysis.primary=nosuch")
    assert "analysis.primary" in out and "'nosuch' is not computed" in out
