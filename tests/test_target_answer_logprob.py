"""``target_answer_logprob`` in a run: every row scores the reference's continuation of its pair under its own
condition's model, teacher forced by the engine.

* invariance: the baseline row's score is the mean log-probability of its own first k tokens under the plain model
  (one full forward, computed here independently);
* the score does not depend on where the baseline's tokens came from: the same batch, an earlier batch, or a
  regeneration by a fresh worker (a resumed run);
* the intervened conditions score the same tokens otherwise, and the target-fidelity text scores land in the rows;
* a reference that is not the target alone is refused before the run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from transferlab.engine.batching import encode
from transferlab.experiments import ConfigError, load_config, run_experiment
from transferlab.experiments.store import RunStore
from transferlab.models.tiny import build_tiny
from transferlab.prompts import load_bank, make_pairs

pytestmark = pytest.mark.filterwarnings("ignore:no vocabulary token spells:UserWarning")

K = 4
SETTINGS = [
    "model=tiny:llama",
    "prompts.n=4",
    "generation.max_new_tokens=6",
    "seeds=[0, 1]",
    "scoring.logit=false",
    "scoring.target_logprob=true",
    f"scoring.target_logprob_k={K}",
    'scoring.scorers=["source_overlap", "target_overlap"]',
    "rv.enabled=false",
]


def _results(run_dir) -> pd.DataFrame:
    store = RunStore(run_dir / "store.sqlite")
    try:
        return store.results().sort_values("unit").reset_index(drop=True)
    finally:
        store.close()


@pytest.fixture(scope="module")
def one_batch(tmp_path_factory):
    cfg = load_config("stories", [f"output_dir={tmp_path_factory.mktemp('one')}", *SETTINGS, "batch_size=64"])
    return cfg, _results(run_experiment(cfg, progress=False, report=False))


def test_the_baseline_row_scores_its_own_tokens_under_the_plain_model(one_batch):
    cfg, df = one_batch
    model = build_tiny("llama")
    bank = load_bank("stories")
    pairs = make_pairs(bank.select(["story_source"]), bank.select(["story_target"]), 4, 0, reuse=True)
    base = df[df.condition == "baseline"]
    g = cfg.generation
    for seed in (0, 1):
        rows = base[base.seed == seed]
        targets = [pairs[p].target_text for p in rows.pair_id]
        gen = model.generate(
            targets,
            seed=seed,
            streams=[f"tiny:llama|{seed}|{p}" for p in rows.pair_id],
            max_new_tokens=g.max_new_tokens,
            temperature=g.temperature,
        )
        assert gen.texts == rows.text.tolist()  # the tokens the row was generated with
        for text, tokens, value in zip(targets, gen.token_ids, rows.target_answer_logprob):
            ids, cont = encode(model.tokenizer, [text])[0], tokens[:K]
            with torch.inference_mode():
                logits = model.hf(input_ids=torch.tensor([ids + cont])).logits[0].double()
            lp = torch.log_softmax(logits, -1)[len(ids) - 1 : -1].gather(-1, torch.tensor(cont)[:, None])
            assert value == pytest.approx(lp.mean().item(), rel=1e-5, abs=1e-5)


def test_where_the_baselines_tokens_come_from_changes_nothing(one_batch, tmp_path):
    """Batches of 3 (the baseline's units in earlier batches than the pair's other units), stopped after two
    batches and resumed by a fresh worker (which regenerates the baselines it never saw): the same scores."""
    cfg, df = one_batch
    small = load_config("stories", [f"output_dir={tmp_path}", *SETTINGS, "batch_size=3"])
    run_dir = run_experiment(small, progress=False, report=False, max_batches=2)
    run_experiment(resume=run_dir, progress=False, report=False)
    other = _results(run_dir)
    assert other.unit.tolist() == df.unit.tolist() and other.text.tolist() == df.text.tolist()
    np.testing.assert_allclose(other.target_answer_logprob, df.target_answer_logprob, rtol=1e-6, atol=1e-6)


def test_conditions_score_the_same_tokens_differently(one_batch):
    _, df = one_batch
    assert df.target_answer_logprob.notna().all() and (df.target_answer_logprob < 0).all()
    wide = df.pivot_table(index=["seed", "pair_id"], columns="condition", values="target_answer_logprob")
    assert (wide["kv_only"] - wide["baseline"]).abs().max() > 1e-3  # the splice changes the target's odds
    # the baseline's own continuation is likelier under the plain model than under the source's prompt
    assert (wide["baseline"] > wide["source_direct"]).mean() >= 0.5
    assert df.target_overlap.between(0, 1).all()
    assert list(df.columns).index("target_answer_logprob") > list(df.columns).index("target_overlap")


def test_a_reference_that_is_not_the_target_alone_is_refused(tmp_path):
    with pytest.raises(ConfigError) as err:
        cfg = load_config("stories", [f"output_dir={tmp_path}", *SETTINGS, "reference=kv_only"])
        run_experiment(cfg, progress=False, report=False)
    assert any(path == "scoring.target_logprob" and "'kv_only'" in msg for path, msg in err.value.problems)
    assert not any(tmp_path.iterdir())  # refused before a run directory exists


def test_raw_format_stays_raw_on_a_model_with_a_chat_template(tmp_path, monkeypatch):
    """The forced rescoring feeds the rows' prompts as they were fed: a raw-format run on a model whose tokenizer
    has a chat template scores the baseline's tokens after the raw prompt, not after its chat turn."""
    import copy
    import dataclasses

    import transferlab.models as models

    model = build_tiny("llama")
    tok = copy.deepcopy(model.tokenizer)
    tok.chat_template = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    chat = dataclasses.replace(model, tokenizer=tok)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: chat)
    cfg = load_config("stories", [f"output_dir={tmp_path}", *SETTINGS, "prompts.n=2", "seeds=[0]"])
    df = _results(run_experiment(cfg, progress=False, report=False))
    bank = load_bank("stories")
    base = df[df.condition == "baseline"]
    gen = chat.generate(
        [bank.get(i).text for i in base.target_id],
        seed=0,
        streams=[f"tiny:llama|0|{p}" for p in base.pair_id],
        max_new_tokens=cfg.generation.max_new_tokens,
        temperature=cfg.generation.temperature,
        prompt_format="raw",
    )
    assert gen.texts == base.text.tolist()
    for text, tokens, value in zip(base.target_id, gen.token_ids, base.target_answer_logprob):
        ids, cont = encode(tok, [bank.get(text).text], "raw")[0], tokens[:K]
        with torch.inference_mode():
            logits = chat.hf(input_ids=torch.tensor([ids + cont])).logits[0].double()
        lp = torch.log_softmax(logits, -1)[len(ids) - 1 : -1].gather(-1, torch.tensor(cont)[:, None])
        assert value == pytest.approx(lp.mean().item(), rel=1e-5, abs=1e-5)
