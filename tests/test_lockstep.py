"""Lockstep decode patches: the source generates alongside, token k gets the source's token-k activation.

Checked three ways: a prompt patched into itself in lockstep changes nothing
(greedy and sampled, every site); what the hook writes at each decode step
equals the source's own activation at that step, recorded from a plain run of
the source alone; and the lockstep patch fires once per decode forward.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LONG, PROMPT, SHORT, SITES, STORY

from transferlab.interventions import Patch, Plan

PROMPTS = [PROMPT, LONG, SHORT, STORY]


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("greedy", [True, False])
def test_self_lockstep_is_identity(tiny_models, site, greedy):
    model = tiny_models("mistral")
    mass = {"low": list(range(50)), "high": list(range(300, 512))}  # next-token log-mass at every step
    plain = model.generate(PROMPTS, greedy=greedy, max_new_tokens=10, seed=3, stop_at_eos=False, record_logits=mass)
    moved = model.generate(
        PROMPTS,
        sources=PROMPTS,
        plan=f"kv:all + {site}@1:both:lockstep",
        greedy=greedy,
        max_new_tokens=10,
        seed=3,
        stop_at_eos=False,
        record_logits=mass,
    )
    assert moved.token_ids == plain.token_ids
    for name in mass:  # the logits too, not only the argmax/sample
        np.testing.assert_allclose(moved.logmass[name], plain.logmass[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "gemma3", "phi3"])
def test_self_lockstep_identity_other_families(tiny_models, family):
    model = tiny_models(family)
    plain = model.generate(PROMPTS, greedy=True, max_new_tokens=8)
    moved = model.generate(PROMPTS, sources=PROMPTS, plan="v_proj@-1:decode:lockstep", greedy=True, max_new_tokens=8)
    assert moved.token_ids == plain.token_ids


def _record(model, layer, fn):
    """Run ``fn`` while recording every v_proj@layer output (after any patch hook)."""
    seen = []
    handle = model.adapter.layers[layer].self_attn.v_proj.register_forward_hook(
        lambda m, i, o: seen.append(o.detach().clone())
    )
    try:
        out = fn()
    finally:
        handle.remove()
    return out, seen


def test_writes_the_source_own_activation_at_each_step(stories, monkeypatch):
    """Token k of the target receives v_proj of the source's own token k (source generating alone)."""
    from transferlab.interventions.binding import BoundActivation

    source, target, layer, n = STORY, "Tom had a toy car. He", 3, 8
    own, own_acts = _record(
        stories,
        layer,
        lambda: stories.generate([source], greedy=True, max_new_tokens=n, stop_at_eos=False, example_ids=[7]),
    )
    # the source's decode forwards are the last n-1 calls, one position each
    src_steps = [a[0, -1] for a in own_acts[-(n - 1) :]]
    written = []
    call = BoundActivation.__call__

    def spy(self, x):
        out = call(self, x)
        if self.ctx.phase == "decode":
            written.append((out if out is not None else x)[:, -1].detach().clone())
        return out

    monkeypatch.setattr(BoundActivation, "__call__", spy)
    plan = Plan((Patch("v_proj", layer, phase="decode", decode="lockstep"),))
    gen = stories.generate(
        [target], sources=[source], plan=plan, greedy=True, max_new_tokens=n, stop_at_eos=False, example_ids=[7]
    )
    assert len(written) == n - 1
    for k in range(n - 1):
        # row 0 is the target, row 1 its source's shadow: both now hold the source's own activation
        torch.testing.assert_close(written[k][1], src_steps[k], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(written[k][0], src_steps[k], atol=1e-5, rtol=1e-5)
    assert gen.audit.fired_decode.tolist() == [n - 1]
    assert gen.audit.fired_prompt.tolist() == [0]
    assert len(gen.token_ids) == 1  # the shadow row is not returned


def test_lockstep_with_another_source_changes_the_output(stories):
    target = "One day, a little girl went to the park."
    plain = stories.generate([target], greedy=True, max_new_tokens=20)
    moved = stories.generate(
        [target],
        sources=[STORY],
        plan="kv:all + v_proj@-1:both:lockstep + resid_post@2:decode:lockstep",
        greedy=True,
        max_new_tokens=20,
    )
    assert moved.token_ids != plain.token_ids
    assert not moved.audit.never_fired.any()


def test_lockstep_mixed_batch_equals_alone(stories):
    targets = [PROMPT, LONG, SHORT]
    sources = [STORY, None, LONG]
    plans = ["v_proj@2:decode:lockstep", "", "kv:all + resid_post@1:both:lockstep"]
    batch = stories.generate(targets, sources=sources, plan=plans, max_new_tokens=10, seed=1)
    alone = [
        stories.generate([t], sources=[s], plan=[p], max_new_tokens=10, seed=1, example_ids=[i]).token_ids[0]
        for i, (t, s, p) in enumerate(zip(targets, sources, plans))
    ]
    assert batch.token_ids == alone
