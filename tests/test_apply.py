"""``tl.apply``: a plan's activation interventions on the model for the user's own forwards and ``hf.generate``.

Checked against the engine: a plain HF forward of the prompts under ``apply``
gives the next-token distribution ``generate`` gives at new token 0 (its
prompt phase), and ``hf.generate`` under ``apply`` gives ``generate``'s
greedy tokens with decode patches; a prompt patched into itself changes
nothing; the audit counts every forward an intervention wrote in; the hooks
are gone after the block, however it ends; what ``apply`` cannot do is refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LONG, PROMPT, STORY, STORY2, hook_snapshot

import transferlab as tl
from transferlab.engine.batching import pad_id_of
from transferlab.interventions import InterventionError
from transferlab.models.cache import cache_kwargs, output_cache

pytestmark = pytest.mark.usefixtures("engine_single_thread", "engine_no_hooks_left")

TARGETS = [PROMPT, LONG]  # different lengths: the batch is left-padded
SOURCES = [STORY, STORY2]
PLANS = [
    "v_proj@1:w4",
    "resid_post@2:f0.5:mix:a0.5",
    "noise:v_proj@1:w3",
    "noise:resid_post@1:raw:sd0.5:w2",
    "ablate:attn_out@1:mean",
    "k_proj@2:h1:prompt",
    "v_proj@0 + resid_post@1:w2:add:a0.5 + ablate:v_proj@2:h0",
]


def _generate_step0(model, plan, **kw) -> np.ndarray:
    """``[examples, vocab]`` log-probabilities of new token 0 under ``generate`` (its prompt phase)."""
    vocab = model.hf.config.vocab_size
    gen = model.generate(
        TARGETS,
        sources=SOURCES,
        plan=plan,
        greedy=True,
        max_new_tokens=1,
        record_logits={str(i): [i] for i in range(vocab)},
        **kw,
    )
    return np.stack([gen.logmass[str(i)][:, 0] for i in range(vocab)], axis=1), gen


@pytest.mark.parametrize("plan", PLANS)
def test_a_prompt_forward_under_apply_equals_generate(tiny_models, plan):
    model = tiny_models("llama")
    expected, gen = _generate_step0(model, plan, seed=4)
    with torch.inference_mode(), tl.apply(model, plan, TARGETS, sources=SOURCES, seed=4) as applied:
        logits = model.hf(**applied.inputs).logits[:, -1]
    got = torch.log_softmax(logits.float(), dim=-1).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)
    # the same positions written with the same change (generate's prompt phase is two forwards, prefix + last token)
    cols = ["example", "intervention", "kind", "description", "hook_point", "positions"]
    assert applied.audit[cols].equals(gen.audit[cols])
    np.testing.assert_allclose(applied.audit.change_norm, gen.audit.change_norm, rtol=1e-4, atol=1e-5)
    assert (applied.audit.positions > 0).all() and (applied.audit.fired_decode == 0).all()


def test_captured_sources_equal_text_sources(tiny_models):
    model = tiny_models("qwen2")
    plan = "v_proj@1:w4 + ablate:resid_post@0:mean"
    captured = model.capture(SOURCES, sites=["v_proj@1", "resid_post@0"])
    with torch.inference_mode():
        with tl.apply(model, plan, TARGETS, sources=SOURCES) as applied:
            by_text = model.hf(**applied.inputs).logits
        with tl.apply(model, plan, TARGETS, sources=captured) as applied:
            by_capture = model.hf(**applied.inputs).logits
    torch.testing.assert_close(by_capture, by_text, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["llama", "mistral", "phi3"])
def test_hf_generate_under_apply_equals_generate(tiny_models, family):
    """Decode patches (last, cycle), noise and an ablation at every new token, as generate writes them."""
    model = tiny_models(family)
    plan = "v_proj@1:w4 + noise:resid_post@2:w2 + resid_post@1:w3:decode:cycle:add:a0.5 + ablate:v_proj@0:h1"
    n_new = 6
    gen = model.generate(TARGETS, sources=SOURCES, plan=plan, greedy=True, max_new_tokens=n_new, seed=2)
    tok = model.tokenizer
    with torch.inference_mode(), tl.apply(model, plan, TARGETS, sources=SOURCES, seed=2) as applied:
        out = model.hf.generate(
            input_ids=applied.inputs["input_ids"],
            attention_mask=applied.inputs["attention_mask"],
            max_new_tokens=n_new,
            do_sample=False,
            pad_token_id=pad_id_of(tok),
        )
    new = out[:, applied.inputs["input_ids"].shape[1] :].tolist()
    for row, expected in zip(new, gen.token_ids):
        cut = row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)
        assert row[:cut] == expected
    if all(len(t) == n_new for t in gen.token_ids):  # no row ended: every decode forward wrote in both
        assert applied.audit.fired_decode.tolist() == gen.audit.fired_decode.tolist()
        assert (applied.audit.fired_decode == n_new - 1).all()


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_a_prompt_patched_into_itself_changes_nothing(tiny_models, family):
    model = tiny_models(family)
    plan = "v_proj@1 + resid_post@2:w4 + attn_out@0:f0.5 + k_proj@1:h0:mix:a0.3"
    with torch.inference_mode():
        plain = model.hf(**_inputs(model)).logits
        with tl.apply(model, plan, TARGETS, sources=TARGETS) as applied:
            patched = model.hf(**applied.inputs).logits
    valid = applied.inputs["attention_mask"].bool()
    torch.testing.assert_close(patched[valid], plain[valid], atol=1e-5, rtol=0)
    assert (applied.audit.positions > 0).all()  # it wrote: the identity is not vacuous
    assert (applied.audit.change_norm < 1e-4).all()


def _inputs(model):
    with tl.apply(model, "", TARGETS) as applied:  # an empty plan: the same padded inputs, no hook at a site
        return dict(applied.inputs)


def test_the_audit_counts_every_forward_it_wrote_in(tiny_models):
    model = tiny_models("llama")
    steer = tl.Steer("resid_post", 0, vector=(0.25,) * model.hf.config.hidden_size, alpha=2.0)
    plan = tl.Plan.parse("v_proj@1:w4:prompt + resid_post@2:decode") + steer
    with torch.inference_mode(), tl.apply(model, plan, [PROMPT], sources=[STORY]) as applied:
        out = model.hf(**applied.inputs, use_cache=True)
        model.hf(**applied.inputs)  # a second prompt forward
        first = applied.audit
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([applied.inputs["attention_mask"], torch.ones_like(token)], dim=1)
        model.hf(input_ids=token, attention_mask=mask, use_cache=True, **cache_kwargs(model.hf, output_cache(out)))
    n_tokens = len(model.tokenizer(PROMPT)["input_ids"]) - 1  # without BOS
    patch, decode_only, steered = first.itertuples()
    assert (patch.fired_prompt, patch.positions, patch.fired_decode) == (2, 8, 0)
    assert decode_only.fired == 0 and decode_only.never_fired
    assert (steered.fired_prompt, steered.positions) == (2, 2 * n_tokens)
    assert first.description.tolist() == [
        "v_proj@1:w4:prompt",
        "resid_post@2:decode",
        f"steer:resid_post@0({model.hf.config.hidden_size}-dim, alpha 2.0)",
    ]
    after = applied.audit  # still readable after the block; the decode forward counted
    assert after.fired_decode.tolist() == [0, 1, 1] and after.fired_prompt.tolist() == [2, 0, 2]
    assert applied.never_fired().empty


def test_hooks_are_removed_after_the_block_however_it_ends(tiny_models):
    model = tiny_models("llama")
    before = hook_snapshot(model.hf)
    with tl.apply(model, "v_proj@1:w4 + noise:resid_post@2", TARGETS, sources=SOURCES) as applied:
        assert hook_snapshot(model.hf) != before  # the site hooks and the call classifier are in place
        with torch.inference_mode():
            model.hf(**applied.inputs)
    assert hook_snapshot(model.hf) == before
    with pytest.raises(RuntimeError, match="boom"):
        with tl.apply(model, "v_proj@1:w4", TARGETS, sources=SOURCES):
            raise RuntimeError("boom")
    assert hook_snapshot(model.hf) == before
    with pytest.raises(InterventionError, match="bound to 2 prompts, but this forward has 1 rows"):
        with torch.inference_mode(), tl.apply(model, "v_proj@1:w4", TARGETS, sources=SOURCES) as applied:
            model.hf(input_ids=applied.inputs["input_ids"][:1])
    assert hook_snapshot(model.hf) == before


def test_autograd_flows_through_the_edits_and_not_into_the_audit(tiny_models):
    model = tiny_models("llama")
    with tl.apply(model, "resid_post@1:w4:add:a0.5", [PROMPT], sources=[STORY]) as applied:
        logits = model.hf(**applied.inputs).logits
        logits[0, -1].logsumexp(-1).backward()
    grads = [p.grad for p in model.hf.parameters() if p.grad is not None]
    model.hf.zero_grad(set_to_none=True)
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert not applied.bound.activations[0].counters.sq_change.requires_grad
    assert applied.audit.positions.tolist() == [4]


def test_what_apply_cannot_do_is_refused(tiny_models):
    model = tiny_models("llama")
    before = hook_snapshot(model.hf)
    with pytest.raises(InterventionError, match="starts from the spliced cache: use applied.forward"):
        with torch.inference_mode(), tl.apply(model, "kv:all + v_proj@1", TARGETS, sources=SOURCES) as applied:
            model.hf(**applied.inputs)  # a splice plan's prompt forward from an empty cache
    with pytest.raises(InterventionError, match="lockstep decode patch"):
        with tl.apply(model, "v_proj@1:lockstep", TARGETS, sources=SOURCES):
            pass
    with pytest.raises(InterventionError, match="needs a source prompt"):
        with tl.apply(model, "v_proj@1", TARGETS):
            pass
    with torch.inference_mode(), tl.apply(model, "v_proj@1:w4", TARGETS, sources=SOURCES) as applied:
        ids, mask = applied.inputs["input_ids"], applied.inputs["attention_mask"]
        with pytest.raises(InterventionError, match="whole prompt batch"):
            model.hf(input_ids=ids[:, 1:], attention_mask=mask[:, 1:])
        with pytest.raises(InterventionError, match="attention mask is not the prompts'"):
            model.hf(input_ids=ids)  # padded prompts without their mask
        out = model.hf(**applied.inputs, use_cache=True)
        with pytest.raises(InterventionError, match="one new token per row; this one feeds 2"):
            model.hf(
                input_ids=ids[:, -2:],
                attention_mask=torch.cat([mask, mask[:, -2:]], dim=1),
                **cache_kwargs(model.hf, output_cache(out)),
            )
    assert hook_snapshot(model.hf) == before
