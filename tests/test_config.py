"""Experiment configs: every mistake is reported with its key path, before any generation.

Schema problems come from ``load_config`` (all at once); problems that need the
prompt bank or the scorer registry stop ``run_experiment`` before a run
directory exists; problems that need the model (a layer out of range, a head
that does not exist, a window longer than the prompts) stop it right after the
model is loaded, naming the condition, before any generation.
"""

from __future__ import annotations

import json

import pytest
from helpers import DEMO_CONDITIONS, flat
from typer.testing import CliRunner

from transferlab.cli import app
from transferlab.experiments import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    list_presets,
    load_config,
    run_experiment,
    validate_config,
)
from transferlab.experiments.config import parse_value
from transferlab.experiments.metadata import ledger
from transferlab.experiments.store import RunStore

# small vocabularies have no token for most marker words (see marker_token_ids)
pytestmark = pytest.mark.filterwarnings("ignore:no vocabulary token spells:UserWarning")


def problems(exc_info) -> dict[str, str]:
    return dict(exc_info.value.problems)


def small(tmp_path, *extra: str) -> list[str]:
    return ["model=tiny:llama", "prompts.n=4", "generation.max_new_tokens=3", f"output_dir={tmp_path}", *extra]


# -- the schema ----------------------------------------------------------------


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_validates_and_round_trips(name):
    cfg = load_config(name)
    assert cfg.conditions or cfg.sweeps
    assert cfg.reference in [c.name for c in cfg.conditions]
    for c in cfg.conditions:
        c.parsed_plan()
    again = validate_config(cfg.to_dict())  # what --resume reads back from config.json
    assert again == cfg


def test_malformed_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[model\nspec = "tiny:llama"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    ((where, msg),) = e.value.problems
    assert where == str(path) and "not valid TOML" in msg and "line 2" in msg
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 2 and "not valid TOML" in flat(res.output)


def test_unknown_key_has_its_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config("stories", ["prompts.nn=3"])
    (message,) = problems(e).values()
    assert list(problems(e)) == ["prompts.nn"] and "did you mean prompts.n?" in message  # the key that was meant
    assert "Extra inputs" not in message and "keys of prompts: bank, sources, targets, n," in message
    path = tmp_path / "c.toml"
    path.write_text('[[conditions]]\nname = "baseline"\nplann = ""\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert problems(e) == {"conditions.0.plann": problems(e)["conditions.0.plann"]}
    assert "did you mean conditions.0.plan?" in problems(e)["conditions.0.plann"]
    with pytest.raises(ConfigError) as e:
        load_config("stories", ["scoring.zzz=1"])  # nothing close: the keys that exist
    from transferlab.experiments.config import Scoring

    assert problems(e)["scoring.zzz"] == f"unknown key; keys of scoring: {', '.join(Scoring.model_fields)}"


def test_several_problems_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(
            "stories",
            ["prompts.n=0", "generation.temperature=-1", "bogus=1", "conditions.1.plan=v_prj@3", "reference=nope"],
        )
    found = problems(e)
    assert set(found) == {"prompts.n", "generation.temperature", "bogus", "conditions.1.plan", "reference"}
    assert "unknown site 'v_prj'" in found["conditions.1.plan"]
    assert "5 problem(s)" in str(e.value)
    for key in found:
        assert f"  - {key}: " in str(e.value)


def test_unknown_reference_condition():
    with pytest.raises(ConfigError) as e:
        load_config("stories", ["reference=nope"])
    msg = problems(e)["reference"]
    assert "'nope'" in msg and "baseline" in msg and "source_direct" in msg
    data = load_config("stories").to_dict()
    data["conditions"].append(dict(data["conditions"][0]))
    with pytest.raises(ConfigError) as e:
        validate_config(data)
    assert "repeated: baseline" in problems(e)["conditions"]


def test_primary_condition():
    assert load_config("minimal_layers").primary is None  # the default 'transfer' is absent: no primary
    assert load_config("stories").primary == "transfer"
    with pytest.raises(ConfigError) as e:
        load_config("stories", ["primary=transfr"])
    assert "'transfr'" in problems(e)["primary"]


def test_unknown_site_in_plan():
    with pytest.raises(ConfigError) as e:
        load_config("stories", ["conditions.1.plan=kv:all + vproj@0.84:w16:both"])
    assert "unknown site 'vproj'" in problems(e)["conditions.1.plan"]


def test_bad_set_without_equals():
    with pytest.raises(ConfigError) as e:
        load_config("stories", ["prompts.n"])
    assert "key=value" in problems(e)["prompts.n"]
    res = CliRunner().invoke(app, ["run", "stories", "--set", "prompts.n"])
    assert res.exit_code == 2 and "key=value" in flat(res.output)


def test_set_index_errors_are_clear():
    with pytest.raises(ConfigError) as e:
        load_config("stories", ["conditions.9.plan=kv:all"])
    assert f"conditions has {DEMO_CONDITIONS} entries" in problems(e)["conditions.9.plan"]
    with pytest.raises(ConfigError) as e:
        load_config("stories", ["seeds.x=1"])
    assert "seeds is a list" in problems(e)["seeds.x"]


def test_unknown_preset():
    with pytest.raises(ConfigError) as e:
        load_config("no_such_preset")
    msg = problems(e)["no_such_preset"]
    assert "no such config file or preset" in msg and "seed_n300" in msg and "demo" in msg
    assert "did you mean" not in msg  # nothing close to suggest
    res = CliRunner().invoke(app, ["run", "no_such_preset"])
    assert res.exit_code == 2 and "no such config file or preset" in res.stderr and res.stdout == ""
    res = CliRunner().invoke(app, ["run", "storeis"])  # a typo: the preset that was meant
    assert res.exit_code == 2 and "did you mean 'stories'?" in res.stderr


def test_override_values_and_shorthands():
    cfg = load_config(
        "stories",
        [
            "seeds=[1, 2]",
            "prompts.reuse=false",
            "model=tiny:llama",
            "generation.temperature=0.5",
            "name=x y",
            "conditions.1.plan=kv:all",
        ],
    )
    assert cfg.seeds == [1, 2] and cfg.prompts.reuse is False and cfg.model.spec == "tiny:llama"
    assert cfg.generation.temperature == 0.5 and cfg.name == "x y" and cfg.conditions[1].plan == "kv:all"
    assert parse_value("[0,1]") == [0, 1] and parse_value("tiny:llama") == "tiny:llama"
    base = {"seeds": [0]}
    assert apply_overrides(base, ["seeds=[3]"]) == {"seeds": [3]} and base == {"seeds": [0]}  # no mutation


def test_cross_model_overrides():
    whole = load_config("cross_model", ['models=[{spec="tiny:llama"},{spec="tiny:qwen2"}]'])
    assert [m.spec for m in whole.model_specs()] == ["tiny:llama", "tiny:qwen2"]
    each = load_config(
        "cross_model", ["models.0.spec=tiny:llama", "models.1.spec=tiny:qwen2", "models.2.spec=tiny:gemma2"]
    )
    assert [m.spec for m in each.model_specs()] == ["tiny:llama", "tiny:qwen2", "tiny:gemma2"]
    # --set model=X on a config with [[models]] would be silently ignored: refuse it
    with pytest.raises(ConfigError) as e:
        load_config("cross_model", ["model=tiny:llama"])
    assert "set models instead" in problems(e)["model"]
    # --set models=[...] on a one-model config replaces its model
    one = load_config("stories", ['models=[{spec="tiny:llama"},{spec="tiny:qwen2"}]'])
    assert [m.spec for m in one.model_specs()] == ["tiny:llama", "tiny:qwen2"]
    # a file with both is ambiguous
    data = load_config("stories").to_dict()
    data["models"] = [{"spec": "tiny:llama"}]
    with pytest.raises(ConfigError) as e:
        validate_config(data)
    assert "either model or models" in problems(e)["model"]


def test_resume_refuses_overrides(tmp_path):
    res = CliRunner().invoke(app, ["run", "--resume", str(tmp_path), "--set", "prompts.n=3"])
    assert res.exit_code == 2 and "own config.json" in flat(res.output)


# -- before the run directory: bank, pairs, scorers ----------------------------


def _no_run_dir(tmp_path):
    assert not [p for p in tmp_path.iterdir() if p.is_dir()], "a run directory was created for a bad config"


def test_n_larger_than_the_pools_without_reuse(tmp_path):
    cfg = load_config("stories", small(tmp_path, "prompts.reuse=false", "prompts.n=100000"))
    with pytest.raises(ConfigError) as e:
        run_experiment(cfg, progress=False, report=False)
    msg = problems(e)["prompts.n"]
    assert "100000" in msg and "lower prompts.n" in msg
    _no_run_dir(tmp_path)
    cfg = load_config("stories", small(tmp_path, "prompts.reuse=false", "prompts.n=100"))  # fewer than distinct pairs
    with pytest.raises(ConfigError) as e:
        run_experiment(cfg, progress=False, report=False)
    assert "prompts.reuse = true" in problems(e)["prompts.n"]
    res = CliRunner().invoke(
        app,
        [
            "run",
            "stories",
            "--no-report",
            *sum([["--set", s] for s in small(tmp_path, "prompts.reuse=false", "prompts.n=100000")], []),
        ],
    )
    assert res.exit_code == 2 and "prompts.n" in flat(res.output)
    _no_run_dir(tmp_path)


def test_unknown_group_scorer_bank(tmp_path):
    for override, key, words in [
        ('prompts.sources=["nope"]', "prompts.sources", "nope"),
        ("prompts.bank=nobank", "prompts.bank", "nobank"),
        ('scoring.scorers=["nosuch"]', "scoring.scorers", "nosuch"),
        ("rv.site=nosite", "rv.site", "nosite"),
    ]:
        cfg = load_config("stories", small(tmp_path, override))
        with pytest.raises(ConfigError) as e:
            run_experiment(cfg, progress=False, report=False)
        assert words in problems(e)[key], (override, e.value)
    cfg = load_config("minimal_layers", small(tmp_path, "sweeps.0.score=seed_v1"))
    with pytest.raises(ConfigError) as e:
        run_experiment(cfg, progress=False, report=False)
    assert "not computed" in problems(e)["sweeps.0.score"]
    _no_run_dir(tmp_path)


# -- plans against the model: from its shape before the run directory, again once it is loaded --------


def _fails_before_generation(tmp_path, overrides, monkeypatch, shape_known: bool = True) -> ConfigError:
    """A plan the model cannot run: refused before the run directory exists when the model's shape is
    readable without loading it (issue 14 item 7), else right after the load, before any generation."""
    import transferlab.engine.generation as generation
    import transferlab.experiments.checks as checks

    def no_generation(*a, **k):
        raise AssertionError("generation ran before the plans were checked")

    monkeypatch.setattr(generation, "generate", no_generation)
    if not shape_known:  # as for a hub model not in the cache: only the loaded model can tell
        monkeypatch.setattr(checks, "model_shape", lambda spec, strict=False: None)
    cfg = load_config("stories", small(tmp_path, *overrides))
    with pytest.raises(ConfigError) as e:
        run_experiment(cfg, progress=False, report=False)
    if shape_known:
        _no_run_dir(tmp_path)
        return e.value
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    store = RunStore(run_dir / "store.sqlite")
    assert store.done_units() == set()
    store.close()
    (entry,) = ledger(tmp_path)
    assert entry["status"] == "failed" and "ConfigError" in entry["error"]
    return e.value


def test_layer_out_of_range_names_condition_and_depth(tmp_path):
    """Known before loading the model (its depth is read from its config): no run directory at all."""
    cfg = load_config(
        "stories", small(tmp_path, "conditions.1.plan=kv:all + v_proj@27:w16:both", "conditions.4.plan=kv:0,9")
    )
    with pytest.raises(ConfigError) as e:
        run_experiment(cfg, progress=False, report=False)
    found = dict(e.value.problems)
    assert set(found) == {"conditions.1.plan", "conditions.4.plan"}
    assert "'transfer'" in found["conditions.1.plan"] and "layer 27" in found["conditions.1.plan"]
    assert "4 layers" in found["conditions.1.plan"]
    assert "'wrong_layer'" in found["conditions.4.plan"] and "layer 9" in found["conditions.4.plan"]
    assert "tiny:llama: " in found["conditions.1.plan"]
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


@pytest.mark.parametrize("shape_known", [True, False])
def test_head_out_of_range(tmp_path, monkeypatch, shape_known):
    err = _fails_before_generation(tmp_path, ["conditions.3.plan=v_proj@1:h7:w4"], monkeypatch, shape_known)
    msg = dict(err.problems)["conditions.3.plan"]
    assert "'patch_only'" in msg and "head" in msg and "[7]" in msg


@pytest.mark.parametrize("shape_known", [True, False])
def test_window_longer_than_the_prompts(tmp_path, monkeypatch, shape_known):
    overrides = ["conditions.1.plan=kv:all + v_proj@0.84:w999:both"]
    err = _fails_before_generation(tmp_path, overrides, monkeypatch, shape_known)
    msg = dict(err.problems)["conditions.1.plan"]
    assert "'transfer'" in msg and "window 999" in msg and "shortest source prompt" in msg


@pytest.mark.parametrize("shape_known", [True, False])
def test_prompts_beyond_the_context(tmp_path, monkeypatch, shape_known):
    """tiny:llama has a 512-token context: 40-token prompts + 500 new tokens do not fit (refused, not truncated)."""
    err = _fails_before_generation(tmp_path, ["generation.max_new_tokens=500"], monkeypatch, shape_known)
    msg = dict(err.problems)["prompts.targets"]
    assert "context of 512 tokens" in msg and "+ 500 new tokens" in msg and "refused, not truncated" in msg


def test_layer_out_of_range_cli(tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "run",
            "stories",
            "--no-report",
            *sum([["--set", s] for s in small(tmp_path, "conditions.1.plan=kv:all + v_proj@27:w16:both")], []),
        ],
    )
    out = flat(res.output)
    assert res.exit_code == 2, out
    assert "transfer" in out and "layer 27" in out and "4 layers" in out


def test_unknown_model_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(
        app, ["run", "stories", "--no-report", *sum([["--set", s] for s in small(tmp_path, "model=tiny:nope")], [])]
    )
    assert res.exit_code == 2 and "unknown tiny model" in flat(res.output)
    assert ledger(tmp_path) == [] and not [p for p in tmp_path.iterdir() if p.is_dir()]  # refused before the run


def test_config_json_is_the_resolved_config(tmp_path):
    cfg = load_config("stories", small(tmp_path))
    run_dir = run_experiment(cfg, progress=False, report=False, max_batches=1)
    saved = json.loads((run_dir / "config.json").read_text())
    assert ExperimentConfig.model_validate(saved) == cfg
    assert saved["model"]["spec"] == "tiny:llama" and saved["prompts"]["n"] == 4


def test_layers_out_of_range_fail_before_a_run_directory_exists(tmp_path):
    """A plan or R_V layer the model does not have is a config error with its key path, and no run dir is made."""
    from transferlab.experiments import ConfigError, load_config, run_experiment

    out = tmp_path / "runs"
    cfg = load_config("stories", ["rv.late=9", "conditions.1.plan=v_proj@12", f"output_dir={out}", "prompts.n=4"])
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, progress=False, report=False)
    paths = {p for p, _ in err.value.problems}
    assert {"rv.late", "conditions.1.plan"} <= paths
    text = str(err.value)
    assert "layer 12 does not exist" in text and "5 layers" in text and "'transfer'" in text
    assert not out.exists()


def test_depth_fractions_landing_on_one_layer_are_reported(tmp_path):
    """On the 5-layer embedded model 25/32 and 27/32 of depth are both layer 4: the CLI says so."""
    from transferlab.experiments.checks import layer_collisions

    notes = layer_collisions(load_config("layer_sweep"))
    assert any("c2_L25V_L27V" in n and "v_proj@4" in n and "5 layers" in n for n in notes)
    assert layer_collisions(load_config("stories")) == []
    res = CliRunner().invoke(
        app,
        [
            "run",
            "layer_sweep",
            "--set",
            "prompts.n=1",
            "--set",
            "generation.max_new_tokens=1",
            "--set",
            f"output_dir={tmp_path}",
            "--no-report",
        ],
    )
    assert "are both v_proj@4" in flat(res.output)


def test_chat_format_on_a_model_without_a_template(tmp_path, monkeypatch):
    """The embedded model has no chat template: prompts.format = 'chat' fails before any generation."""
    err = _fails_before_generation(tmp_path, ["prompts.format=chat"], monkeypatch)
    assert any(path == "prompts.format" and "raw" in msg for path, msg in err.problems)


def test_prompt_format_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="prompts.format"):
        load_config("stories", small(tmp_path, "prompts.format=markdown"))
