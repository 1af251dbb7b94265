"""W300 through the experiment runner (issue 7): its bank, its config, and a tiny run on every executor.

The bank's texts must be exactly ``make_workload``'s token ids; the config's
pairs must use every prompt once; a tiny W300 (random:tiny-mistral, 8 pairs,
2 seeds, 6 new tokens) must give the same table in-process and on two Ray CPU
workers, with every intervention firing where W300 says (layers 27 and 5,
every decode step).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import stored_results

from transferlab.experiments import run_experiment
from transferlab.experiments.checks import preflight
from transferlab.experiments.runner import never_fired_summary
from transferlab.experiments.w300 import W300_CONDITIONS, make_workload, w300_config, write_w300_bank
from transferlab.models.random import IdTokenizer
from transferlab.prompts import load_bank

N_PAIRS, SEEDS, NEW = 8, (0, 1), 6
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bank300(tmp_path_factory) -> Path:
    return write_w300_bank(tmp_path_factory.mktemp("w300"))


@pytest.fixture(scope="module")
def tiny_bank(tmp_path_factory) -> Path:
    return write_w300_bank(tmp_path_factory.mktemp("w300_tiny"), n_pairs=N_PAIRS)


def tiny_config(bank: Path, out: Path):
    return w300_config(
        bank,
        model="random:tiny-mistral",
        seeds=SEEDS,
        n_pairs=N_PAIRS,
        output_dir=str(out),
        generation={"max_new_tokens": NEW},
    )


@pytest.fixture(scope="module")
def inprocess(tiny_bank, tmp_path_factory) -> pd.DataFrame:
    run_dir = run_experiment(tiny_config(tiny_bank, tmp_path_factory.mktemp("runs")), progress=False, report=False)
    return stored_results(run_dir).sort_values("unit").reset_index(drop=True)


def test_the_bank_is_make_workload_as_text(bank300):
    bank = load_bank(bank300)  # validates the schema, ids and the groups' length limits
    assert bank.name == "w300" and bank.groups() == ["w300_source", "w300_target"]
    assert {g.pillar for g in bank.group_info.values()} == {"baseline"}
    sources, targets = make_workload(300, 32000, 0)
    tok = IdTokenizer(32000)
    got_s = [tok(p.text)["input_ids"] for p in bank.select(["w300_source"])]
    got_t = [tok(p.text)["input_ids"] for p in bank.select(["w300_target"])]
    assert got_s == sources and got_t == targets
    assert all(60 <= len(s) <= 120 and s[0] == 1 for s in got_s)
    assert all(8 <= len(t) <= 40 and t[0] == 1 for t in got_t)
    assert min(map(len, got_s)) < 70 and max(map(len, got_s)) > 110  # the whole range is used
    assert bank.get("w300_target_299").text == " ".join(map(str, targets[299]))


def test_the_config_pairs_every_prompt_once(bank300):
    config = w300_config(bank300)
    pairs = preflight(config)  # what the runner pairs, checked before any run directory exists
    assert len(pairs) == 300 and len({(p.source_id, p.target_id) for p in pairs}) == 300
    assert sorted(p.source_id for p in pairs) == [f"w300_source_{i:03d}" for i in range(300)]
    assert sorted(p.target_id for p in pairs) == [f"w300_target_{i:03d}" for i in range(300)]
    assert {c.name: c.plan for c in config.conditions} == W300_CONDITIONS
    g = config.generation
    assert (g.max_new_tokens, g.temperature, g.stop_at_eos, g.flavour, g.greedy) == (
        150,
        0.8,
        False,
        "corrected",
        False,
    )
    assert config.seeds == [0, 1, 2, 3] and config.model.spec == "random:mistral-7b" and config.batch_size is None
    assert not config.rv.enabled and not config.scoring.logit and config.scoring.scorers == ["collapse"]
    assert w300_config(bank300, generation={"max_new_tokens": 4}).generation.temperature == 0.8  # tables merge


def test_a_tiny_w300_run_fires_every_intervention(inprocess):
    df = inprocess
    assert len(df) == N_PAIRS * len(W300_CONDITIONS) * len(SEEDS) and df["unit"].is_unique
    assert (df["n_new_tokens"] == NEW).all() and (df["finish_reason"] == "length").all()
    assert all(len(t.split()) == NEW for t in df["text"])  # texts are the new token ids
    assert df["collapse"].notna().all()
    assert never_fired_summary(df).empty
    hooks = {"transfer": "v_proj@27", "noise": "v_proj@27", "wrong_layer": "v_proj@5"}
    for row in df.itertuples():
        audit = json.loads(row.audit)
        if row.condition == "baseline":
            assert audit == [] and row.n_interventions == 0
            continue
        assert row.n_never_fired == 0 and len(audit) == row.n_interventions >= 1
        for a in audit:
            if a["kind"] == "kv_splice":
                assert a["fired_prompt"] == 1
            else:  # a decode patch: every decode step (the first new token comes from the prefill)
                assert a["hook_point"] == hooks[row.condition] and a["fired_decode"] == NEW - 1


def test_two_ray_cpu_workers_give_the_in_process_table(inprocess, tiny_bank, tmp_path):
    ray = pytest.importorskip("ray")
    from transferlab.experiments.executors import RayExecutor

    with RayExecutor(workers=2, gpus_per_worker=0) as executor:  # what --executor ray makes without GPUs
        run_dir = run_experiment(tiny_config(tiny_bank, tmp_path), progress=False, report=False, executor=executor)
        where = ray.get([a.placement.remote() for a in executor.actors])
    got = stored_results(run_dir).sort_values("unit").reset_index(drop=True)
    assert got["text"].tolist() == inprocess["text"].tolist()
    pd.testing.assert_frame_equal(got, inprocess, check_exact=True)
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["executor"]["workers"] == 2 and meta["executor"]["gpus_per_worker"] == 0
    assert len({w["pid"] for w in where}) == 2 and [w["gpus"] for w in where] == [[], []]
    assert [w["model_device"] for w in where] == ["cpu", "cpu"], "each worker loaded the model"


def test_the_scaleout_script_writes_its_json(tiny_bank, tmp_path, monkeypatch):
    """benchmarks/scaleout.py, in-process only and tiny: the file it writes and what it holds."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "relative/dir")  # the script exports it, absolute, for Ray workers
    spec = importlib.util.spec_from_file_location("scaleout", ROOT / "benchmarks" / "scaleout.py")
    scaleout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scaleout)
    import os

    assert os.environ["PYTHONPATH"].split(os.pathsep) == [str(ROOT / "src"), os.path.abspath("relative/dir")]
    out = scaleout.main(
        [
            "--model",
            "random:tiny-mistral",
            "--pairs",
            "4",
            "--seeds",
            "1",
            "--max-new-tokens",
            "2",
            "--modes",
            "inprocess",
            "--out",
            str(tmp_path / "out"),
            "--runs",
            str(tmp_path / "runs"),
        ]
    )
    path = Path(out["path"])
    assert re.fullmatch(r"scaleout_w4x1_cpu_\d{8}-\d{6}\.json", path.name)
    saved = json.loads(path.read_text())
    r = saved["modes"]["inprocess"]
    assert r["rows"] == 4 * len(W300_CONDITIONS) and r["never_fired"] == 0 and r["n_batches"] >= 1
    assert 0 < r["batches_s"] < r["end_to_end_s"] and r["prepare_s"] > 0
    assert saved["workload"] == "W4x1" and saved["generations"] == 16 and "torch" in saved and "ray" in saved
