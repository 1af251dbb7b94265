"""Teacher forcing through the engine (``generate(forced=...)``): the log-probability an intervened model gives a
given continuation, computed by the same four steps as a free generation.

* equivalence: a forced decode of a generation's own sampled tokens, under the same plans (KV splices, prompt and
  decode patches, noise, lockstep), reproduces that generation's per-token log-probabilities, in the eager and the
  static decode loop;
* invariance: under an empty plan, a forced decode gives the plain model's log-probabilities of the tokens (one
  full forward over prompt + tokens, computed independently);
* a forced example takes exactly its tokens and stops after them; an unforced example in the same call is the
  plain generation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LONG, PROMPT, SHORT, STORY, STORY2

from transferlab.engine.batching import encode
from transferlab.engine.generation import generate

pytestmark = pytest.mark.usefixtures("engine_single_thread", "engine_no_hooks_left")

TARGETS = [PROMPT, LONG, SHORT, STORY, PROMPT]
SOURCES = [STORY2, STORY, LONG, PROMPT, STORY]
PLANS = ["", "kv:all + v_proj@1:decode", "noise:v_proj@1:both", "v_proj@1:decode:lockstep", "kv:all:left:w2"]
TOL = 1e-5  # float32 logits: per-token log-probs of order 1-10 agree to ~1e-6 between batch shapes


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float((np.abs(a - b) / np.maximum(1.0, np.abs(b))).max())


@pytest.mark.parametrize("how", ["eager", "static"])
def test_forced_decode_of_the_sampled_tokens_reproduces_their_logprobs(how, tiny_models, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_DECODE", how)
    model = tiny_models("llama")
    kw = dict(sources=SOURCES, plan=PLANS, seed=3, temperature=0.9)
    free = generate(model, TARGETS, max_new_tokens=10, record_logprobs=True, **kw)
    assert [len(lp) for lp in free.token_logprobs] == [len(t) for t in free.token_ids]
    assert all(np.isfinite(lp).all() and (lp <= 0).all() for lp in free.token_logprobs)
    forced = generate(model, TARGETS, max_new_tokens=10, forced=free.token_ids, batch_size=2, **kw)
    assert forced.token_ids == free.token_ids
    assert set(forced.finish_reasons) == {"forced"}
    for i, (a, b) in enumerate(zip(forced.token_logprobs, free.token_logprobs)):
        assert _rel(a, b) <= TOL, (PLANS[i], a, b)
    # the interventions acted in the forced decode as in the free one: same rows of the audit fired
    fired = free.audit.groupby("example").never_fired.sum().to_dict()
    assert forced.audit.groupby("example").never_fired.sum().to_dict() == fired


def test_forced_decode_without_a_plan_is_the_plain_model(tiny_models):
    """Invariance: log p(token) from the engine's forced decode = one full forward of prompt + tokens."""
    model = tiny_models("qwen2")
    continuations = [[5, 17, 230, 9], [40, 41], [7, 7, 7, 7, 7, 100]]
    prompts = [PROMPT, LONG, SHORT]
    gen = generate(model, prompts, max_new_tokens=6, forced=continuations, stop_at_eos=False)
    for p, cont, lp in zip(prompts, continuations, gen.token_logprobs):
        ids = encode(model.tokenizer, [p])[0]
        with torch.inference_mode():
            logits = model.hf(input_ids=torch.tensor([ids + cont])).logits[0].double()
        ref = torch.log_softmax(logits, -1)[len(ids) - 1 : -1].gather(-1, torch.tensor(cont)[:, None])[:, 0]
        assert len(lp) == len(cont)
        assert _rel(lp, ref.numpy()) <= TOL, (p, lp, ref)


def test_forced_logprobs_change_under_an_intervention(tiny_models):
    """Not vacuous: the same forced tokens under a splice from another prompt get other log-probs."""
    model = tiny_models("llama")
    cont = [[11, 12, 13, 14, 15]]
    plain = generate(model, [PROMPT], max_new_tokens=5, forced=cont)
    spliced = generate(model, [PROMPT], sources=[LONG], plan="kv:all", max_new_tokens=5, forced=cont)
    assert np.abs(plain.token_logprobs[0] - spliced.token_logprobs[0]).max() > 1e-3


def test_forced_and_free_examples_share_a_call(tiny_models):
    model = tiny_models("llama")
    free = generate(model, [PROMPT, LONG], max_new_tokens=7, seed=1, greedy=True, stop_at_eos=False)
    mixed = generate(
        model, [PROMPT, LONG], max_new_tokens=7, seed=1, greedy=True, stop_at_eos=False, forced=[[3, 4], None]
    )
    assert mixed.token_ids[0] == [3, 4] and mixed.finish_reasons[0] == "forced"
    assert mixed.token_ids[1] == free.token_ids[1] and mixed.finish_reasons[1] == "length"
    assert len(mixed.token_logprobs[1]) == 7  # the free example's own tokens, recorded too
    assert free.token_logprobs == []  # not asked for


@pytest.mark.parametrize(
    "forced, message",
    [
        ([[1, 2]], "got 1 token lists for 2 targets"),
        ([[], None], "forced\\[0\\] is empty"),
        ([[1] * 9, None], "more than max_new_tokens=8"),
        ([[10**9], None], "outside the vocabulary"),
    ],
)
def test_bad_forced_tokens_are_refused(tiny_models, forced, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_models("llama"), [PROMPT, SHORT], max_new_tokens=8, forced=forced)
