"""``generate(..., return_logits=True)``: the logits every new token was drawn from."""

from __future__ import annotations

import pytest
import torch
from conftest import LONG, PROMPT, STORY, STORY2

from transferlab.engine.batching import encode

pytestmark = pytest.mark.usefixtures("engine_single_thread")


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_the_logits_equal_a_plain_forward_of_each_sequence(tiny_models, family):
    """Left-padded batch, eager decode: every step's logits are the unpadded forward's at that position."""
    model = tiny_models(family)
    n_new = 6
    gen = model.generate([PROMPT, LONG], greedy=True, max_new_tokens=n_new, stop_at_eos=False, return_logits=True)
    for ids, new, logits in zip(encode(model.tokenizer, [PROMPT, LONG]), gen.token_ids, gen.logits):
        assert logits.shape == (n_new, model.hf.config.vocab_size) and logits.dtype == torch.float32
        with torch.inference_mode():
            ref = model.hf(input_ids=torch.tensor([ids + new])).logits[0, len(ids) - 1 : len(ids) - 1 + n_new]
        scale = ref.abs().max().item()
        torch.testing.assert_close(logits, ref.float(), atol=1e-5 * max(scale, 1.0), rtol=0)
        assert logits.argmax(-1).tolist() == new  # greedy: each token is its step's argmax


def test_the_logits_under_a_plan_agree_with_the_recorded_log_mass(tiny_models):
    """With a plan in place and sampling at temperature 0.7: the log-mass generate records on a token set is
    the log-sum-exp of the tempered log-softmax of the returned logits over that set."""
    model = tiny_models("qwen2")
    ids = [3, 17, 250]
    gen = model.generate(
        [PROMPT, LONG],
        sources=[STORY, STORY2],
        plan="kv:all + v_proj@1:w4 + resid_post@0:decode:add:a0.5",
        temperature=0.7,
        max_new_tokens=5,
        seed=4,
        stop_at_eos=False,
        return_logits=True,
        record_logits={"set": ids},
    )
    for b, logits in enumerate(gen.logits):
        lp = torch.log_softmax(logits.double() / 0.7, dim=-1)
        expected = torch.logsumexp(lp[:, ids], dim=-1).numpy()
        torch.testing.assert_close(
            torch.from_numpy(gen.logmass["set"][b]), torch.from_numpy(expected), atol=1e-4, rtol=0
        )


def test_no_logits_unless_asked(tiny_models):
    assert tiny_models("llama").generate([PROMPT], max_new_tokens=2).logits is None
