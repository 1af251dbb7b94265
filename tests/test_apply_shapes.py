"""``tl.apply`` with KV splices and with the batch shapes ``hf.generate`` makes (beams, several samples).

Checked against the engine: with a splice, the prompt forward from ``applied.cache()`` gives ``generate``'s
logits at new token 0 and ``applied.generate`` its greedy tokens (splices, prompt and decode patches, a
prepend splice); the user's own forward on ``last_inputs`` equals ``applied.forward()``; a forward that
repeats each prompt's row gives each copy what the single row gets; beams and several samples run under
a plan (and under a prompt patched into itself give what they give without one).
"""

from __future__ import annotations

import pytest
import torch
from conftest import LONG, PROMPT, STORY, STORY2

import transferlab as tl
from transferlab.engine.batching import pad_id_of
from transferlab.interventions import InterventionError
from transferlab.models.cache import cache_kwargs, output_cache

pytestmark = pytest.mark.usefixtures("engine_single_thread", "engine_no_hooks_left")

TARGETS = [PROMPT, LONG]  # different lengths: the batch is left-padded
SOURCES = [STORY, STORY2]
SPLICE_PLANS = [
    "kv:all",
    "kv:0:left + v_proj@1:w4",
    "kv:all:keep:splicefirst + noise:resid_post@1:w3",
    "kv:all:prepend",
    "kv:1:w3 + ablate:attn_out@0:mean + resid_post@2:decode:add:a0.5",
]


@pytest.mark.parametrize("plan", SPLICE_PLANS)
def test_the_prompt_forward_on_the_spliced_cache_equals_generate(tiny_models, plan):
    model = tiny_models("llama")
    gen = model.generate(TARGETS, sources=SOURCES, plan=plan, greedy=True, max_new_tokens=1, seed=5, return_logits=True)
    with torch.inference_mode(), tl.apply(model, plan, TARGETS, sources=SOURCES, seed=5) as applied:
        assert applied.spliced
        logits = applied.forward().logits[:, -1]
        audit = applied.audit  # the block's prefix and one prompt forward: generate's prompt phase
        # the same forward, driven by hand
        own = model.hf(**applied.last_inputs, **cache_kwargs(model.hf, applied.cache())).logits[:, -1]
    expected = torch.stack([g[0] for g in gen.logits])
    scale = expected.abs().max().item()
    torch.testing.assert_close(logits.float(), expected, atol=1e-5 * max(scale, 1.0), rtol=0)
    assert torch.equal(own, logits)
    cols = ["example", "intervention", "kind", "description", "hook_point", "positions", "fired_prompt"]
    assert audit[cols].equals(gen.audit[cols]) and (audit[audit.phase != "decode"].positions > 0).all()
    torch.testing.assert_close(
        torch.tensor(audit.change_norm.values), torch.tensor(gen.audit.change_norm.values), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("plan", SPLICE_PLANS)
def test_hf_generate_from_the_spliced_cache_equals_generate(tiny_models, family, plan):
    model = tiny_models(family)
    n_new = 6
    gen = model.generate(
        TARGETS, sources=SOURCES, plan=plan, greedy=True, max_new_tokens=n_new, seed=2, stop_at_eos=False
    )
    with torch.inference_mode(), tl.apply(model, plan, TARGETS, sources=SOURCES, seed=2) as applied:
        out = applied.generate(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
    width = out.shape[1] - n_new
    assert out[:, width:].tolist() == gen.token_ids
    decode_audit = applied.audit[applied.audit.phase != "prompt"]
    assert (decode_audit.fired_decode == gen.audit[gen.audit.phase != "prompt"].fired_decode).all()


def test_the_prompt_forward_of_a_splice_plan_counts_once_per_forward(tiny_models):
    model = tiny_models("llama")
    with torch.inference_mode(), tl.apply(model, "kv:all + v_proj@1:w4", TARGETS, sources=SOURCES) as applied:
        entered = applied.audit.fired_prompt.tolist()
        applied.forward()
        applied.forward()
    # entering the block splices (once) and runs the prefix (the patch writes its prefix part: once);
    # each prompt forward then writes the last token
    assert entered == [1, 1, 1, 1] and applied.audit.fired_prompt.tolist() == [1, 3, 1, 3]


def _rows(t: torch.Tensor, k: int) -> torch.Tensor:
    return t.repeat_interleave(k, dim=0)


@pytest.mark.parametrize("plan", ["v_proj@1:w4 + noise:resid_post@2:w3", "kv:all + v_proj@0:w2"])
def test_a_forward_repeating_each_row_gives_every_copy_the_single_rows_result(tiny_models, plan):
    """Three copies of each prompt (the layout of num_return_sequences=3), prompt forward and a decode step."""
    model = tiny_models("mistral")
    with torch.inference_mode(), tl.apply(model, plan, TARGETS, sources=SOURCES, seed=1) as applied:
        single = applied.forward(use_cache=True)
        if applied.spliced:
            last = {k: _rows(v, 3) for k, v in applied.last_inputs.items()}
            tripled = model.hf(**last, **cache_kwargs(model.hf, applied.cache(3)), use_cache=True)
            mask = last["attention_mask"]
        else:
            inputs = {k: _rows(v, 3) for k, v in applied.inputs.items()}
            tripled = model.hf(**inputs, use_cache=True)
            mask = inputs["attention_mask"]
        torch.testing.assert_close(tripled.logits[:, -1], _rows(single.logits[:, -1], 3), atol=1e-5, rtol=0)
        token = tripled.logits[:, -1].argmax(-1, keepdim=True)
        step = model.hf(
            input_ids=token,
            attention_mask=torch.cat([mask, torch.ones_like(token)], dim=1),
            **cache_kwargs(model.hf, output_cache(tripled)),
        )
        first = step.logits[:, -1].view(len(TARGETS), 3, -1)
        torch.testing.assert_close(first, first[:, :1].expand_as(first), atol=1e-5, rtol=0)
    with pytest.raises(InterventionError, match="bound to 2 prompts, but this forward has 3 rows"):
        with torch.inference_mode(), tl.apply(model, "v_proj@1:w4", TARGETS, sources=SOURCES) as applied:
            model.hf(input_ids=torch.cat([applied.inputs["input_ids"], applied.inputs["input_ids"][:1]]))


@pytest.mark.parametrize("plan", ["v_proj@1:prompt + resid_post@2:w4:prompt", "kv:all"])
def test_beams_under_a_prompt_patched_into_itself_equal_beams_without_a_plan(tiny_models, plan):
    """Beam search reorders rows within each prompt's beams: a plan that changes nothing stays nothing."""
    model = tiny_models("llama")
    kw = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, num_beams=3, num_return_sequences=2)
    with torch.inference_mode():
        with tl.apply(model, "", TARGETS) as plain:
            want = plain.generate(**kw)
        with tl.apply(model, plan, TARGETS, sources=TARGETS) as applied:
            got = applied.generate(**kw)
    assert got.shape[0] == 2 * len(TARGETS) and got[:, -5:].tolist() == want[:, -5:].tolist()


def test_beams_and_samples_run_under_a_plan_and_are_audited(tiny_models):
    model = tiny_models("qwen2")
    plan = "kv:all + v_proj@1:w4 + resid_post@1:decode:add:a0.5"
    n_new = 4
    with torch.inference_mode(), tl.apply(model, plan, TARGETS, sources=SOURCES) as applied:
        beams = applied.generate(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, num_beams=2)
        after_beams = applied.audit
        samples = applied.generate(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=True, num_return_sequences=3)
    assert beams.shape[0] == len(TARGETS) and samples.shape[0] == 3 * len(TARGETS)
    decode = after_beams[after_beams.description == "resid_post@1:decode:add:a0.5"]
    assert decode.fired_decode.tolist() == [2 * (n_new - 1)] * 2  # two beams per prompt, every fed token
    decode = applied.audit[applied.audit.description == "resid_post@1:decode:add:a0.5"]
    assert decode.fired_decode.tolist() == [5 * (n_new - 1)] * 2  # and three samples more


def test_hf_generate_with_beams_without_a_splice_runs(tiny_models):
    """The reported failure: num_beams=2 under apply ("bound to 1 prompts, but this forward has 2 rows")."""
    model = tiny_models("llama")
    with torch.inference_mode(), tl.apply(model, "v_proj@0.5:w4", [PROMPT], sources=[STORY]) as applied:
        out = model.hf.generate(
            input_ids=applied.inputs["input_ids"],
            attention_mask=applied.inputs["attention_mask"],
            num_beams=2,
            max_new_tokens=4,
            pad_token_id=pad_id_of(model.tokenizer),
        )
    assert out.shape[0] == 1 and (applied.audit.fired_prompt == 2).all()  # one forward, two rows
