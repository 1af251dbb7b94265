"""The runner: results rows, batch independence, and every preset run small on tiny models.

The shipped presets are full-size (Mistral-7B, n=300); each is run here with
``--set`` overrides that shrink it to seconds, as a user would try it first.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import DEMO_CONDITIONS, flat
from typer.testing import CliRunner

from transferlab.cli import app
from transferlab.engine.batching import encode
from transferlab.experiments import load_config, run_experiment
from transferlab.experiments.schema import BASE_COLUMNS, TAIL_COLUMNS, unit_key
from transferlab.experiments.store import RunStore
from transferlab.models.tiny import build_tiny
from transferlab.prompts import load_bank, make_pairs

# small vocabularies have no token for most marker words (see marker_token_ids)
pytestmark = pytest.mark.filterwarnings("ignore:no vocabulary token spells:UserWarning")


def results(run_dir) -> pd.DataFrame:
    store = RunStore(run_dir / "store.sqlite")
    try:
        return store.results()
    finally:
        store.close()


def run_small(preset: str, tmp_path, *extra: str, **kw):
    cfg = load_config(preset, [f"output_dir={tmp_path}", *extra])
    run_dir = run_experiment(cfg, progress=False, report=False, **kw)
    return cfg, run_dir, results(run_dir)


def cli_run(preset: str, tmp_path, *extra: str):
    args = ["run", preset, "--no-report"]
    for item in (f"output_dir={tmp_path}", *extra):
        args += ["--set", item]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    return flat(res.output), run_dir, results(run_dir)


def audit_rows(row) -> list[dict]:
    return json.loads(row["audit"])


DEMO = ["model=tiny:llama", "prompts.n=6", "generation.max_new_tokens=5", "seeds=[0, 1]", "scoring.logit=true"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo design on tiny:llama, 6 pairs x every demo condition x 2 seeds, batch size 4."""
    return run_small("stories", tmp_path_factory.mktemp("demo"), *DEMO, "batch_size=4")


# -- rows ------------------------------------------------------------------------


def test_one_row_per_pair_condition_seed(demo):
    cfg, _, df = demo
    names = [c.name for c in cfg.conditions]
    assert len(df) == 6 * len(names) * 2 and df["unit"].is_unique
    assert sorted(df["unit"]) == sorted(
        unit_key("tiny:llama", s, p, c) for s in (0, 1) for p in range(6) for c in names
    )
    counts = df.groupby(["pair_id", "condition", "seed"]).size()
    assert (counts == 1).all() and len(counts) == len(df)
    for r in df.itertuples():
        assert r.unit == unit_key(r.model, r.seed, r.pair_id, r.condition)


def test_schema_columns(demo):
    cfg, _, df = demo
    cols = list(df.columns)
    assert cols[: len(BASE_COLUMNS)] == BASE_COLUMNS
    assert cols[-len(TAIL_COLUMNS) :] == TAIL_COLUMNS
    assert cols[len(BASE_COLUMNS) : -len(TAIL_COLUMNS)] == cfg.scoring.scorers + ["logit_markers"]
    assert set(df["finish_reason"]) <= {"eos", "length"}
    assert set(df["decode_path"]) == {"eager/sdpa"}  # CPU: the plain loop, the model's SDPA
    assert (df["n_new_tokens"] <= 5).all() and (df["n_new_tokens"] >= 1).all()
    for col in cfg.scoring.scorers:
        assert pd.api.types.is_float_dtype(df[col]), col


def test_pairs_plans_and_audit(demo):
    cfg, _, df = demo
    bank = load_bank("stories")
    pairs = make_pairs(bank.select(["story_source"]), bank.select(["story_target"]), 6, 0, reuse=True)
    plans = {c.name: c.parsed_plan() for c in cfg.conditions}
    for _, r in df.iterrows():
        p = pairs[r["pair_id"]]
        assert (r["source_id"], r["target_id"]) == (p.source_id, p.target_id)
        assert r["source_group"] == "story_source" and r["target_group"] == "story_target"
        assert r["plan"] == str(plans[r["condition"]])
        assert r["n_interventions"] == len(plans[r["condition"]])
        audit = audit_rows(r)
        assert len(audit) == len(plans[r["condition"]])
        assert r["n_never_fired"] == sum(a["never_fired"] for a in audit)
    assert (df.loc[df.condition == "transfer", "n_never_fired"] == 0).all()
    assert (df.loc[df.condition == "baseline", "n_interventions"] == 0).all()


def test_source_direct_generates_from_the_source(demo):
    cfg, _, df = demo
    bank = load_bank("stories")
    model = build_tiny("llama")
    direct = df[df.condition == "source_direct"]
    assert len(direct) == 12 and (direct["prompt_role"] == "source").all()
    assert (df.loc[df.condition != "source_direct", "prompt_role"] == "target").all()
    texts = [bank.get(i).text for i in direct["source_id"]]
    assert direct["n_prompt_tokens"].tolist() == [len(ids) for ids in encode(model.tokenizer, texts)]
    others = df[df.condition == "baseline"]
    targets = [bank.get(i).text for i in others["target_id"]]
    assert others["n_prompt_tokens"].tolist() == [len(ids) for ids in encode(model.tokenizer, targets)]
    # the same text as generating from the source directly, unit by unit
    g = cfg.generation
    for seed in (0, 1):
        rows = direct[direct.seed == seed]
        streams = [f"tiny:llama|{seed}|{p}" for p in rows["pair_id"]]  # a pair's conditions share one stream
        gen = model.generate(
            [bank.get(i).text for i in rows["source_id"]],
            seed=seed,
            example_ids=rows["unit"].tolist(),
            streams=streams,
            max_new_tokens=g.max_new_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
            top_k=g.top_k,
            greedy=g.greedy,
            flavour=g.flavour,
        )
        assert gen.texts == rows["text"].tolist()


def test_batch_size_does_not_change_any_unit(demo, tmp_path):
    _, _, small_batches = demo
    _, _, big = run_small("stories", tmp_path, *DEMO, "batch_size=64")
    a = small_batches.sort_values("unit").reset_index(drop=True)
    b = big.sort_values("unit").reset_index(drop=True)
    assert a["unit"].tolist() == b["unit"].tolist()
    assert a["text"].tolist() == b["text"].tolist()
    cols = [c for c in a.columns if c not in ("audit",)]
    pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=False, rtol=1e-6)
    # seeds give different samples (the seed is not ignored)
    assert (a[a.seed == 0]["text"].to_numpy() != a[a.seed == 1]["text"].to_numpy()).any()


# -- the presets, small ----------------------------------------------------------

N300 = ["model=tiny:mistral", "seeds=[42]", "prompts.n=6", "generation.max_new_tokens=4", "rv.window=8"]


def test_seed_n300_patch_never_fires(tmp_path):
    out, _, df = cli_run("seed_n300", tmp_path, *N300)
    assert len(df) == 6 * 4 and set(df.condition) == {"baseline", "transfer", "random", "wrong_layer"}
    transfer = df[df.condition == "transfer"]
    assert (transfer["n_never_fired"] > 0).all()
    for _, r in transfer.iterrows():
        kv, patch = audit_rows(r)
        assert kv["hook_point"] == "kv" and not kv["never_fired"]  # the splice acted ...
        assert patch["hook_point"] == "v_proj@3" and patch["never_fired"]  # ... the v_proj patch never did
    assert "WARNING: intervention v_proj@3:w16 (v_proj@3) never fired in 6 of 6 example(s)" in out
    assert "WARNING: intervention noise:v_proj@3" in out  # the seed's "random" control is dead too
    assert (df.loc[df.condition == "baseline", "n_interventions"] == 0).all()


def test_corrected_n300_patch_fires(tmp_path):
    out, _, df = cli_run("corrected_n300", tmp_path, *N300)
    assert len(df) == 6 * DEMO_CONDITIONS
    assert (df.loc[df.condition == "transfer", "n_never_fired"] == 0).all()
    assert (df.loc[df.condition == "transfer", "n_interventions"] == 2).all()
    assert (df["n_never_fired"] == 0).all()
    assert "WARNING" not in out
    assert (df.loc[df.condition == "source_direct", "prompt_role"] == "source").all()


def test_layer_sweep(tmp_path):
    cfg, _, df = run_small(
        "layer_sweep", tmp_path, "model=tiny:llama", "prompts.n=3", "generation.max_new_tokens=3", "rv.enabled=false"
    )
    sweep = {"kv@2:w16", "kv@2:w32", "kv@3:w16", "kv@3:w32"}  # 0.5625, 0.78125, 0.84375 of 4 layers -> 2, 3, 3
    assert set(df.condition) == {c.name for c in cfg.conditions} | sweep
    assert len(df) == 3 * (len(cfg.conditions) + len(sweep))
    assert df.loc[df.condition == "kv@3:w16", "plan"].iloc[0] == "kv:3:w16"
    assert df["rv_source"].isna().all()  # R_V disabled


def test_minimal_layers_records_its_path(tmp_path):
    cfg, run_dir, df = run_small(
        "minimal_layers", tmp_path, "prompts.n=16", "generation.max_new_tokens=16", "rv.enabled=false"
    )
    store = RunStore(run_dir / "store.sqlite")
    info = store.get("minimal_layers")
    store.close()
    assert info is not None and info["kind"] == "minimal_layers" and info["score"] == "source_lexicon"
    assert info["path"][0]["layers"] == [0, 1, 2, 3, 4]  # stories260K has 5 layers
    evaluated = {c for c in df.condition if c.startswith("kv[")}
    assert "kv[0,1,2,3,4]" in evaluated
    ref = df[df.condition == "baseline"].set_index("pair_id")["source_lexicon"]
    full = df[df.condition == "kv[0,1,2,3,4]"].set_index("pair_id")["source_lexicon"]
    assert info["full_effect"] == pytest.approx((full - ref).mean())
    if info["full_effect"] > 0:  # the search ran: each round tried every one-layer removal
        assert len(info["path"]) >= 2
        for step in info["path"][1:]:
            assert set(step["tried"]) <= evaluated
            for name, effect in step["tried"].items():
                arm = df[df.condition == name].set_index("pair_id")["source_lexicon"]
                assert effect == pytest.approx((arm - ref).mean())
        assert set(info["minimal"]) < {0, 1, 2, 3, 4} or info["path"][-1].get("stopped")
    else:
        assert info["note"] and len(info["path"]) == 1
    assert df["unit"].is_unique and set(df.condition) == {"baseline", "kv_all"} | evaluated


def test_minimal_layers_partial_run_stores_no_path(tmp_path):
    _, run_dir, _ = run_small(
        "minimal_layers",
        tmp_path,
        "model=tiny:llama",
        "prompts.n=4",
        "generation.max_new_tokens=3",
        "rv.enabled=false",
        "batch_size=4",
        max_batches=3,
    )
    store = RunStore(run_dir / "store.sqlite")
    assert store.get("minimal_layers") is None  # an incomplete search is not recorded as a result
    store.close()


def test_seeds_x10_reduced(tmp_path):
    cfg, _, df = run_small(
        "seeds_x10", tmp_path, "model=tiny:llama", "seeds=[0,1]", "prompts.n=4", "generation.max_new_tokens=4"
    )
    assert sorted(df.seed.unique()) == [0, 1]
    assert len(df) == 4 * 3 * 2 and df["unit"].is_unique


def test_cross_model_on_tiny_models(tmp_path):
    models = 'models=[{spec="tiny:llama"},{spec="tiny:qwen2"}]'
    cfg, run_dir, df = run_small(
        "cross_model", tmp_path, models, "seeds=[42]", "prompts.n=4", "generation.max_new_tokens=4", "rv.window=8"
    )
    assert sorted(df.model.unique()) == ["tiny:llama", "tiny:qwen2"]
    assert len(df) == 2 * 4 * len(cfg.conditions) and df["unit"].is_unique
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert [m["spec"] for m in meta["models"]] == ["tiny:llama", "tiny:qwen2"]
    assert "model" not in json.loads((run_dir / "config.json").read_text())  # unused when models is set
    assert pd.api.types.is_float_dtype(df["logit_markers"])  # all NaN here (no marker token), still numeric


def test_models_do_not_share_state(tmp_path, monkeypatch):
    """Each model's rows are what a run of that model alone gives, and the logit score's
    "target_top" ids (the target's own top-k next tokens) come from the model that generates."""
    from transferlab.models.model import Model

    seen: dict[str, dict[str, list[int]]] = {}
    original = Model.generate

    def spy(model, targets, **kw):
        top = seen.setdefault(model.name, {})
        for text, ids in zip(targets, kw["record_logits"]["target_top"]):
            top[text] = list(ids)
        return original(model, targets, **kw)

    monkeypatch.setattr(Model, "generate", spy)
    small = ["prompts.n=4", "generation.max_new_tokens=4", "rv.window=8", "scoring.logit=true"]
    cfg, _, both = run_small("stories", tmp_path / "both", 'models=[{spec="tiny:llama"},{spec="tiny:qwen2"}]', *small)
    for name in ("tiny:llama", "tiny:qwen2"):
        model = build_tiny(name.split(":")[1])
        for text, ids in seen[name].items():
            with torch.no_grad():
                logits = model.hf(torch.tensor([encode(model.tokenizer, [text])[0]])).logits[0, -1]
            assert ids == torch.topk(logits.float(), cfg.scoring.logit_top_k).indices.tolist(), (name, text)
    assert seen["tiny:llama"] != seen["tiny:qwen2"]
    _, _, alone = run_small("stories", tmp_path / "alone", 'models=[{spec="tiny:qwen2"}]', *small)
    a = both[both.model == "tiny:qwen2"].sort_values("unit").reset_index(drop=True)
    b = alone.sort_values("unit").reset_index(drop=True)
    assert len(a) == len(b) == 4 * DEMO_CONDITIONS
    assert a["text"].tolist() == b["text"].tolist()
    cols = [c for c in a.columns if pd.api.types.is_float_dtype(b[c])]
    np.testing.assert_allclose(a[cols].to_numpy(float), b[cols].to_numpy(float), rtol=1e-6, equal_nan=True)


def test_cross_model_per_index_override(tmp_path):
    cfg, _, df = run_small(
        "cross_model",
        tmp_path,
        "models.0.spec=tiny:llama",
        "models.1.spec=tiny:phi3",
        "models.2.spec=tiny:gemma2",
        "seeds=[42]",
        "prompts.n=2",
        "generation.max_new_tokens=2",
        "rv.enabled=false",
    )
    assert sorted(df.model.unique()) == ["tiny:gemma2", "tiny:llama", "tiny:phi3"]
    assert len(df) == 3 * 2 * len(cfg.conditions)


def test_extra_comparisons_reach_the_summary(tmp_path):
    """``comparisons`` adds paired deltas beside every condition vs the reference (the seed's own baseline)."""
    cfg = load_config(
        "stories",
        [
            f"output_dir={tmp_path}",
            "model=tiny:llama",
            "prompts.n=4",
            "generation.max_new_tokens=3",
            'comparisons=[["noise","patch_only"]]',
        ],
    )
    run_dir = run_experiment(cfg, progress=False, report=True)
    deltas = json.loads((run_dir / "summary.json").read_text())["deltas"]
    pairs = {(d["condition"], d["reference"]) for d in deltas}
    assert ("noise", "patch_only") in pairs and ("noise", "baseline") in pairs


def test_the_runners_batch_size_fills_the_workers_gpu_and_shares_it_among_workers():
    """With ``batch_size`` unset: the worker's suggestion (what its GPU holds), split so no Ray worker idles;
    256 on a GPU without a suggestion; 64 on the CPU."""
    from dataclasses import replace

    from transferlab.experiments.runner import Runner
    from transferlab.experiments.worker import ModelFacts

    class Executor:
        def __init__(self, workers):
            self.workers = workers

        def describe(self):
            return {"kind": "ray", "workers": self.workers}

    runner = Runner.__new__(Runner)
    facts = ModelFacts("m", 4, "cuda:0", {}, [], batch_size=1000)
    runner.executor = Executor(1)
    assert runner.auto_batch_size(facts, 1200) == 1000
    assert runner.auto_batch_size(facts, 300) == 300
    runner.executor = Executor(2)
    assert runner.auto_batch_size(facts, 1200) == 600
    assert runner.auto_batch_size(replace(facts, batch_size=0), 1200) == 256
    assert runner.auto_batch_size(replace(facts, device="cpu"), 1200) == 64


def test_workers_sharing_a_card_get_their_share_of_its_memory():
    from transferlab.experiments.runner import Runner
    from transferlab.experiments.worker import ModelFacts

    class Executor:
        def describe(self):
            return {"kind": "ray", "workers": 2, "gpus_per_worker": 0.5}

    runner = Runner.__new__(Runner)
    runner.executor = Executor()
    assert runner.auto_batch_size(ModelFacts("m", 4, "cuda:0", {}, [], batch_size=1000), 4000) == 500


def test_the_workers_prompts_follow_the_bank_files_not_only_the_config(tmp_path, monkeypatch):
    """A kept worker (a notebook's executor, `transferlab serve`) rebuilds its pairs when the bank file changes
    or when the same relative path leads to another bank from another directory."""
    from transferlab.experiments.w300 import w300_data, write_w300_bank
    from transferlab.experiments.worker import Worker

    for d, seed in (("a", 0), ("b", 1)):
        write_w300_bank(tmp_path / d / "bank", n_pairs=4, seed=seed)
    config = w300_data("bank", model="random:tiny-mistral", seeds=(0,), n_pairs=4)
    worker = Worker()
    monkeypatch.chdir(tmp_path / "a")
    first = worker.context(config).pairs[0].source_text
    assert worker.context(config).pairs[0].source_text == first  # kept
    monkeypatch.chdir(tmp_path / "b")
    other = worker.context(config).pairs[0].source_text
    assert other != first  # same config text, another directory: another bank
    write_w300_bank(tmp_path / "b" / "bank", n_pairs=4, seed=2)  # edited in place
    assert worker.context(config).pairs[0].source_text not in (other,)


def test_a_self_patch_that_changes_nothing_is_no_warning(tmp_path):
    """The self-patch control writes the target's own values back: "fired but changed nothing" is its point,
    so the summary does not warn about it (the same table without that knowledge does)."""
    from transferlab.experiments.runner import finalize
    from transferlab.report import build_summary

    cfg, run_dir, table = run_small(
        "corrected_n300", tmp_path, "model=tiny:llama", "seeds=[42]", "prompts.n=4", "generation.max_new_tokens=3"
    )
    summary = finalize(run_dir)
    kinds = {(w["kind"], w.get("condition")) for w in summary["warnings"]}
    assert ("no_effect", "self_patch") not in kinds
    scores = [s for s in summary["scores"]]
    bare = build_summary(table, scores, reference="baseline")  # not told which conditions are self-sourced
    assert ("no_effect", "self_patch") in {(w["kind"], w.get("condition")) for w in bare["warnings"]}
