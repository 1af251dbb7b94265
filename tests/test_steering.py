"""Steering vectors: building (against an independent mean difference), the file, the ``steer:`` plan form,
its refusals (another model, another width), and what it does during generation (coef 0, batches, audit)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import transferlab as tl
from transferlab.engine.steering import build_steering, build_steering_from_bank, message_span
from transferlab.interventions import InterventionError, Plan, Steer, load_steering, save_steering
from transferlab.models.tiny import build_tiny

POSITIVE = ["The cat sat on the warm mat and purred.", "A small dog ran after the red ball.", "Birds sang."]
NEGATIVE = ["Two plus two is four.", "The capital of France is Paris, a large city.", "Seven."]
PROMPTS = ["Once upon a time", "Tom had a big red ball and he liked to play with it every day.", "Hi"]


def _reference(model, prompts, layer, position):
    """Each prompt alone (no padding), through the plain HF forward: resid_post@layer is hidden_states[layer + 1]
    (the decoder layer's output; layer < n_layers - 1, where HF applies no final norm)."""
    rows = []
    for text in prompts:
        ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hs = model.hf(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1][0].float()
        bos = int(ids[0, 0] == model.tokenizer.bos_token_id)
        rows.append(hs[bos:].mean(0) if position == "mean" else hs[-1])
    return torch.stack(rows).mean(0)


@pytest.mark.parametrize("position", ["mean", "last"])
def test_build_equals_an_independent_mean_difference(tiny_models, position):
    model = tiny_models("llama")
    sv = build_steering(model, POSITIVE, NEGATIVE, layers=[1, 2], position=position, batch_size=2)
    assert sv.site == "resid_post" and sv.layers == [1, 2] and sv.width == 64
    for layer in (1, 2):
        want = _reference(model, POSITIVE, layer, position) - _reference(model, NEGATIVE, layer, position)
        scale = float(want.abs().max())
        assert scale > 1e-3  # the groups do differ: the comparison is not between two zeros
        torch.testing.assert_close(sv.vectors[layer], want, atol=1e-4 * scale, rtol=0)
    assert (sv.meta["n_positive"], sv.meta["n_negative"], sv.meta["position"]) == (3, 3, position)


def test_bank_build_records_groups_and_bank_version(tiny_models):
    model = tiny_models("llama")
    sv = build_steering_from_bank(model, "stories", layers=[0.5])
    bank = tl.prompts.load_bank("stories")
    assert sv.meta["positive_groups"] == ["story_source"] and sv.meta["negative_groups"] == ["story_target"]
    assert sv.meta["bank_version"] == bank.version
    assert sv.meta["n_positive"] == len(bank.select(["story_source"]))
    with pytest.raises(ValueError, match="on both sides"):
        build_steering_from_bank(model, "stories", ["story_source"], ["story_source"])


def test_message_span_excludes_the_chat_template(tiny_models):
    tok = tiny_models("llama").tokenizer
    old = getattr(tok, "chat_template", None)
    tok.chat_template = (
        "{% for m in messages %}<|user|> {{ m['content'] }} <|end|>{% endfor %}"
        "{% if add_generation_prompt %} <|assistant|>{% endif %}"
    )
    try:
        prompt = "Tom had a big red ball"
        ids, start, stop = message_span(tok, prompt, "chat")
        assert 0 < start < stop < len(ids)  # template tokens on both sides
        assert tok.decode(ids[start:stop]).strip() == prompt
        raw, a, b = message_span(tok, prompt, "raw")
        assert (a, b) == (1, len(raw)) and raw[0] == tok.bos_token_id
        model = tiny_models("llama")  # the default format follows the engine's: chat where there is a template
        chat = build_steering(model, POSITIVE, NEGATIVE, layers=[1], position="last")
        plain = build_steering(model, POSITIVE, NEGATIVE, layers=[1], position="last", prompt_format="raw")
        assert (chat.meta["prompt_format"], plain.meta["prompt_format"]) == ("chat", "raw")
        assert not torch.allclose(chat.vectors[1], plain.vectors[1])
    finally:
        tok.chat_template = old


@pytest.fixture(scope="module")
def vector_file(tmp_path_factory, tiny_models):
    model = tiny_models("llama")
    path = tmp_path_factory.mktemp("steer") / "vec.safetensors"
    save_steering(path, build_steering(model, POSITIVE, NEGATIVE, layers=[1, 0.5]))
    return path


def test_file_round_trip_and_plan_form(vector_file, tiny_models):
    sv = load_steering(vector_file)
    assert sv.layers == [1, 2] and sv.meta["layers_written"] == {"1": 1, "2": 0.5}
    assert sv.meta["model"]["config"]["hidden_size"] == 64
    plan = Plan.parse(f"steer:{vector_file}@0.5:a4:decode")
    (steer,) = plan
    assert (steer.site, steer.layer, steer.alpha, steer.phase) == ("resid_post", 2, 4.0, "decode")
    assert torch.equal(torch.tensor(steer.vector), sv.vectors[2])
    assert Plan.parse(str(plan)) == plan  # the mini-language round-trips
    assert Plan.from_dicts(plan.to_dicts()) == plan  # and the TOML form, which names the file, not the vector
    assert "vector" not in plan.to_dicts()[0]


@pytest.mark.parametrize(
    "text, match",
    [
        ("steer:{f}", "holds layers \\[1, 2\\]; name one"),
        ("steer:{f}@3", "holds layers \\[1, 2\\].*layer 3"),
        ("steer:{f}@1:zz", "unknown steer option 'zz'"),
        ("steer:{d}/nope.safetensors@1", "steering vector file not found"),
        ("steer:", "expected steer:PATH"),
    ],
)
def test_plan_form_errors(vector_file, text, match):
    with pytest.raises(InterventionError, match=match):
        Plan.parse(text.format(f=vector_file, d=vector_file.parent))


def test_a_file_that_is_not_a_steering_vector(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(3)}, str(other))
    with pytest.raises(InterventionError, match="not a transferlab steering vector"):
        load_steering(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(InterventionError, match="not a readable safetensors file"):
        load_steering(junk)


def test_coefficient_zero_changes_nothing_bitwise(vector_file, tiny_models):
    model = tiny_models("llama")
    with tl.apply(model, "", PROMPTS) as applied:
        inputs = dict(applied.inputs)
        plain = model.hf(**inputs).logits
    with tl.apply(model, f"steer:{vector_file}@1:a0", PROMPTS) as applied:
        zero = model.hf(**applied.inputs).logits
    assert torch.equal(zero.view(torch.int32), plain.view(torch.int32))  # bitwise, signed zeros included
    kw = dict(greedy=True, max_new_tokens=6, stop_at_eos=False)
    assert (
        model.generate(PROMPTS, plan=f"steer:{vector_file}@1:a0", **kw).token_ids
        == model.generate(PROMPTS, **kw).token_ids
    )
    with tl.apply(model, f"steer:{vector_file}@1:a4", PROMPTS) as applied:
        steered = model.hf(**applied.inputs).logits
    assert not torch.equal(steered, plain)  # the vector does act: zero's equality is not vacuous


def test_steering_is_batch_invariant_under_left_padding(vector_file, tiny_models):
    model = tiny_models("llama")
    plan = f"steer:{vector_file}@0.5:a6"
    kw = dict(greedy=True, max_new_tokens=6, stop_at_eos=False, record_logits={"m": [5, 7, 11]})
    together = model.generate(PROMPTS, plan=plan, **kw)
    alone = [model.generate([p], plan=plan, **kw) for p in PROMPTS]
    assert together.token_ids == [g.token_ids[0] for g in alone]
    for i, g in enumerate(alone):
        torch.testing.assert_close(
            torch.as_tensor(together.logmass["m"][i]), torch.as_tensor(g.logmass["m"][0]), atol=1e-4, rtol=0
        )
    unsteered = model.generate(PROMPTS, **kw)
    assert together.token_ids != unsteered.token_ids  # the steer changed something


def test_the_audit_counts_firings(vector_file, tiny_models):
    model = tiny_models("llama")
    n_new = 5
    g = model.generate(PROMPTS, plan=f"steer:{vector_file}@1:a2", greedy=True, max_new_tokens=n_new, stop_at_eos=False)
    tokens = [len(model.tokenizer(p)["input_ids"]) - 1 for p in PROMPTS]  # without BOS
    assert (g.audit.fired_prompt >= 1).all()  # the prompt phase's forward calls (the engine may split it)
    assert g.audit.fired_decode.tolist() == [n_new - 1] * 3  # the last new token is never fed back
    assert g.audit.positions.tolist() == [t + n_new - 1 for t in tokens]
    assert (g.audit.change_norm > 0).all()
    assert g.audit.description.tolist() == [f"steer:{vector_file}@1:a2.0"] * 3


def test_a_vector_from_another_model_is_refused(vector_file, stories):
    other_weights = build_tiny("llama", seed=1)  # same architecture, other weights
    with pytest.raises(InterventionError, match="other weights .*probed weights differ"):
        other_weights.generate(["Hi"], plan=f"steer:{vector_file}@1", max_new_tokens=2)
    with pytest.raises(InterventionError, match="another architecture \\(n_layers 4 vs 5"):
        stories.generate(["Hi"], plan=f"steer:{vector_file}@1", max_new_tokens=2)


def test_another_dtype_of_the_same_weights_is_accepted(vector_file):
    model = build_tiny("llama")  # the weights the vector was built on
    model.hf.to(torch.bfloat16)
    g = model.generate(["Hi"], plan=f"steer:{vector_file}@1:a2", max_new_tokens=2, greedy=True)
    assert g.audit.positions.iloc[0] > 0


def test_another_width_is_refused_before_the_run_directory_exists(tmp_path):
    """A vector of width 32 built on a 5-layer model, used on stories260K (5 layers of width 64): the shape
    read without weights refuses it in the preflight, so no run directory is made."""
    from transferlab.experiments import ConfigError, load_config, run_experiment
    from transferlab.interventions.steering import SteeringVectors

    narrow = tmp_path / "narrow.safetensors"
    meta = {"model": {"spec": "somewhere", "config": {"n_layers": 5, "hidden_size": 32}}}
    save_steering(narrow, SteeringVectors("resid_post", {1: torch.ones(32)}, meta))
    out = tmp_path / "runs"
    cfg = load_config(
        "stories",
        [
            "prompts.n=2",
            f"output_dir={out}",
            f'conditions=[{{name="baseline"}}, {{name="steered", plan="steer:{narrow}:a2"}}]',
            "primary=steered",
        ],
    )
    with pytest.raises(ConfigError, match="another architecture \\(hidden_size 32 vs 64\\)"):
        run_experiment(cfg, progress=False, report=False)
    assert not out.exists()


def test_cli_build_and_refusal_exit_2(tmp_path):
    from transferlab.cli import app

    out = tmp_path / "v.safetensors"
    res = CliRunner().invoke(
        app, ["steer", "build", "--bank", "stories", "--layers", "1,3", "--out", str(out), "--threads", "1"]
    )
    assert res.exit_code == 0, res.output
    sv = load_steering(out)
    assert sv.layers == [1, 3] and sv.meta["model"]["spec"] == "stories260K" and sv.meta["bank"] == "stories"
    shown = CliRunner().invoke(app, ["steer", "show", str(out)])
    assert shown.exit_code == 0 and json.loads(shown.output)["layers"] == [1, 3]
    res = CliRunner().invoke(
        app, ["transfer", "-s", "x", "-t", "Hi", "-m", "tiny:llama", "-p", f"steer:{out}@1", "-n", "2"]
    )
    assert res.exit_code == 2
    assert "built on stories260K, not on tiny" in " ".join(res.output.split())
    bad = CliRunner().invoke(app, ["steer", "build", "--bank", "stories", "--out", str(out), "--position", "first"])
    assert bad.exit_code == 2 and "--position must be one of mean, last" in " ".join(bad.output.split())


def test_coefficient_zero_keeps_signed_zeros():
    """x + 0 * v turns -0.0 into +0.0; a zero coefficient adds nothing at all."""
    from transferlab.interventions.operators import operator_for

    op = operator_for(Steer(vector=(1.0, -2.0, 3.0), alpha=0.0))
    x = torch.tensor([[[-0.0, 1.5, -0.0]]])
    out = op.combine(x, torch.tensor([1.0, -2.0, 3.0]).expand(1, 1, 3))
    assert torch.equal(out.view(torch.int32), x.view(torch.int32))
