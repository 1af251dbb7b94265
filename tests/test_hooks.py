"""User interventions (``tl.Hook``) and the per-head (``z``) and MLP-neuron (``mlp_hidden``) sites.

Checked against independent references: zeroing one neuron of ``mlp_hidden`` is zeroing that column of
``down_proj``'s weight; ablating a head at ``z`` is zeroing that head's columns of ``o_proj``'s weight;
an identity hook changes nothing bitwise; a position-wise hook gives a left-padded batch what it gives
each prompt alone; the audit counts what the hook ran at.
"""

from __future__ import annotations

import pytest
import torch
from conftest import LONG, PROMPT, SHORT, STORY

import transferlab as tl
from transferlab.engine.batching import encode
from transferlab.interventions import InterventionError
from transferlab.models.tiny import build_tiny

pytestmark = pytest.mark.usefixtures("engine_single_thread", "engine_no_hooks_left")

KW = dict(greedy=True, max_new_tokens=5, stop_at_eos=False, return_logits=True)
TARGETS = [PROMPT, LONG, SHORT]


def _same_bitwise(a, b):
    assert a.token_ids == b.token_ids
    assert all(torch.equal(x, y) for x, y in zip(a.logits, b.logits))


@pytest.mark.parametrize("site", ["resid_post@1", "z@0", "mlp_hidden@1", "v_proj@1"])
def test_an_identity_hook_changes_nothing_bitwise_and_is_audited(tiny_models, site):
    model = tiny_models("llama")
    name, layer = site.split("@")
    plain = model.generate(TARGETS, **KW)
    hooked = model.generate(TARGETS, plan=tl.Hook(name, int(layer), lambda x: x), **KW)
    _same_bitwise(hooked, plain)
    n_tokens = [len(ids) - 1 for ids in encode(model.tokenizer, TARGETS)]  # BOS is never handed over
    audit = hooked.audit
    assert audit.kind.tolist() == ["hook"] * 3 and audit.description.tolist() == [f"fn:<lambda>:{site}"] * 3
    # generate's prompt phase is two forwards (the prefix, then the last token); a prefix of BOS alone holds
    # nothing the hook is given
    assert audit.fired_prompt.tolist() == [1 + int(n > 1) for n in n_tokens]
    assert audit.fired_decode.tolist() == [4, 4, 4]
    assert audit.positions.tolist() == [n + 4 for n in n_tokens]
    assert (audit.change_norm == 0).all() and hooked.never_fired().empty


def test_an_identity_hook_under_apply_changes_nothing_bitwise(tiny_models):
    model = tiny_models("qwen2")
    with torch.inference_mode():
        with tl.apply(model, "", TARGETS) as applied:
            plain = model.hf(**applied.inputs).logits
        with tl.apply(model, tl.Hook("mlp_hidden", 0, lambda x, call: None), TARGETS) as applied:
            hooked = model.hf(**applied.inputs).logits
    assert torch.equal(plain, hooked)
    assert applied.audit.fired_prompt.tolist() == [1, 1, 1]


def _positionwise(x, call):
    """Scale each position by a factor of its absolute position: depends on the position, not the batch."""
    return x * (1.0 + 0.05 * call.positions[..., None].to(x.dtype))


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_a_left_padded_batch_equals_each_prompt_alone(tiny_models, family):
    model = tiny_models(family)
    plan = tl.Plan.parse("v_proj@0:w4") + tl.Hook("resid_post", 1, _positionwise)
    kw = dict(KW, temperature=0.9, greedy=False, seed=2)
    batch = model.generate(TARGETS, sources=[STORY] * 3, plan=plan, **kw)
    for i, t in enumerate(TARGETS):
        alone = model.generate([t], sources=[STORY], plan=plan, example_ids=[i], **kw)
        assert alone.token_ids[0] == batch.token_ids[i]
        torch.testing.assert_close(alone.logits[0], batch.logits[i], atol=2e-5, rtol=0)
        cols = ["fired_prompt", "fired_decode", "positions"]
        assert alone.audit[cols].values.tolist() == batch.audit[batch.audit.example == i][cols].values.tolist()
    assert (batch.audit.change_norm > 0).all()


def test_a_hook_that_zeros_a_neuron_equals_zeroing_its_down_proj_column():
    """Reference: that column of down_proj's weight zeroed in a copy, BOS's MLP output kept (an intervention
    never writes BOS); each sequence generate made, in one unpadded forward."""
    model, reference = build_tiny("llama"), build_tiny("llama")
    neuron = 5

    def zero_neuron(x):
        x = x.clone()
        x[..., neuron] = 0
        return x

    with torch.no_grad():
        reference.hf.model.layers[1].mlp.down_proj.weight[:, neuron] = 0
    ids = encode(model.tokenizer, TARGETS)
    got = model.generate(ids, plan=tl.Hook("mlp_hidden", 1, zero_neuron), **KW)
    assert got.audit.change_norm.gt(0).all()
    mlp = lambda m: m.hf.model.layers[1].mlp.down_proj  # noqa: E731
    with torch.no_grad():
        for prompt, new, logits in zip(ids, got.token_ids, got.logits):
            ref = _forward_with_bos_unedited(model, reference, prompt + new, mlp)
            n = len(prompt)
            torch.testing.assert_close(logits, ref[n - 1 : n - 1 + len(logits)], atol=1e-5, rtol=0)


@pytest.mark.parametrize("how", ["plan", "hook"])
def test_ablating_a_head_at_z_equals_zeroing_its_o_proj_columns(how):
    """Reference: the head's o_proj columns zeroed in a copy of the weights, BOS's attention output kept
    (an intervention never writes BOS); each sequence generate made, in one unpadded forward."""
    model, reference = build_tiny("mistral"), build_tiny("mistral")
    hd, head = model.adapter.head_dim, 2
    with torch.no_grad():
        reference.hf.model.layers[1].self_attn.o_proj.weight[:, head * hd : (head + 1) * hd] = 0

    def zero_head(x):
        x = x.clone()
        x[..., head * hd : (head + 1) * hd] = 0
        return x

    plan = f"ablate:z@1:h{head}" if how == "plan" else tl.Hook("z", 1, zero_head)
    ids = encode(model.tokenizer, TARGETS)
    got = model.generate(ids, plan=plan, **KW)
    assert got.audit.change_norm.gt(0).all()
    with torch.no_grad():
        for prompt, new, logits in zip(ids, got.token_ids, got.logits):
            ref = _forward_with_bos_unedited(
                model, reference, prompt + new, lambda m: m.hf.model.layers[1].self_attn.o_proj
            )
            n = len(prompt)
            torch.testing.assert_close(logits, ref[n - 1 : n - 1 + len(logits)], atol=1e-5, rtol=0)


def _forward_with_bos_unedited(model, reference, seq, module_of) -> torch.Tensor:
    """Logits of ``seq`` under ``reference`` (weights of ``module_of(reference)`` edited) with that module's
    output at BOS taken from the unedited ``model``: what an intervention that never writes BOS computes."""
    ids = torch.tensor([seq])
    saved = {}
    h1 = module_of(model).register_forward_hook(lambda mod, args, out: saved.__setitem__("bos", out[:, :1].clone()))
    try:
        model.hf(input_ids=ids)
    finally:
        h1.remove()

    def put_bos(mod, args, out):
        out = out.clone()
        out[:, :1] = saved["bos"]
        return out

    h2 = module_of(reference).register_forward_hook(put_bos)
    try:
        return reference.hf(input_ids=ids).logits[0].float()
    finally:
        h2.remove()


def test_a_hook_returning_another_shape_is_refused(tiny_models):
    model = tiny_models("llama")
    with pytest.raises(InterventionError, match=r"must return a tensor of the activation's shape"):
        model.generate([PROMPT], plan=tl.Hook("resid_post", 0, lambda x: x[..., :3]), max_new_tokens=2)
    with pytest.raises(InterventionError, match="Hook needs a function"):
        tl.Hook("resid_post", 0, "not a function")


def test_z_and_mlp_hidden_capture_what_o_proj_and_down_proj_read(tiny_models):
    model = tiny_models("qwen2")
    acts = model.capture([PROMPT], sites=["z@1", "attn_out@1", "mlp_hidden@0", "mlp_out@0"])
    layers = model.hf.model.layers
    with torch.no_grad():
        torch.testing.assert_close(layers[1].self_attn.o_proj(acts[0, "z@1"]), acts[0, "attn_out@1"])
        torch.testing.assert_close(layers[0].mlp.down_proj(acts[0, "mlp_hidden@0"]), acts[0, "mlp_out@0"])
    assert acts[0, "z@1"].shape[-1] == model.adapter.n_heads * model.adapter.head_dim
    assert acts[0, "mlp_hidden@0"].shape[-1] == model.hf.config.intermediate_size


def test_mlp_hidden_on_a_mixture_of_experts_block_is_refused(tiny_models):
    from transferlab.sites import SiteError

    with pytest.raises(SiteError, match="no mlp_hidden site; use mlp_out"):
        tiny_models("mixtral").capture([PROMPT], sites=["mlp_hidden@0"])


def test_the_fn_plan_form_runs_an_importable_function_as_a_hook(tiny_models):
    model = tiny_models("llama")
    text = "fn:torch.nn.functional.relu:mlp_hidden@1:prompt"
    plan = tl.Plan.parse(text)
    assert str(plan) == text and isinstance(plan.interventions[0], tl.Hook)
    by_text = model.generate(TARGETS, plan=text, **KW)
    by_python = model.generate(TARGETS, plan=tl.Hook("mlp_hidden", 1, torch.nn.functional.relu, phase="prompt"), **KW)
    _same_bitwise(by_text, by_python)
    assert (by_text.audit.change_norm > 0).all() and (by_text.audit.fired_decode == 0).all()
    assert by_text.audit.description.tolist() == [text] * 3


@pytest.mark.parametrize(
    "text, message",
    [
        ("fn:nowhere.nothing:resid_post@1", "cannot import 'nowhere.nothing'"),
        ("fn:math.pi:resid_post@1", "math.pi is not a function"),
        ("fn:torch.relu", "expected fn:MODULE.FUNCTION:SITE@LAYER"),
        ("fn:torch.relu:resid_post@1:twice", "unknown fn option 'twice'"),
    ],
)
def test_a_malformed_fn_item_is_refused(text, message):
    with pytest.raises(InterventionError, match=message):
        tl.Plan.parse(text)


def test_a_hook_may_change_its_argument_in_place(tiny_models):
    """The function gets a copy: changing it in place and returning None is changing it and returning it,
    and the audit measures the change against the activation before."""
    model = tiny_models("llama")

    def doubled_in_place(x):
        x.mul_(2.0)

    in_place = model.generate(TARGETS, plan=tl.Hook("resid_post", 0, doubled_in_place), **KW)
    returned = model.generate(TARGETS, plan=tl.Hook("resid_post", 0, lambda x: x * 2.0), **KW)
    _same_bitwise(in_place, returned)
    assert (in_place.audit.change_norm > 0).all()
    assert in_place.audit.change_norm.tolist() == returned.audit.change_norm.tolist()
