"""Captured activations in a notebook: indexing by prompt and by hook point, files, windowed captures as sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LONG, PROMPT, STORY, STORY2

import transferlab as tl
from transferlab.interventions import InterventionError

SITES = ["v_proj@1", "resid_post@-1", "kv"]


@pytest.fixture(scope="module")
def acts(tiny_models):
    return tiny_models("llama").capture([PROMPT, LONG, STORY], sites=SITES)


def test_indexing_by_prompt_and_by_hook_point_agree(acts, tiny_models):
    last = f"resid_post@{tiny_models('llama').n_layers - 1}"
    for i in range(len(acts)):
        one = acts[i]
        assert one.prompt == acts.prompts[i] and one.token_ids == acts.token_ids[i]
        assert one["v_proj@1"] is acts["v_proj@1"][i]
        assert one["resid_post@-1"] is acts[last][i]  # layers resolve as in plans
        assert acts[i, "v_proj@1"] is acts["v_proj@1"][i]
        assert one["kv"] is acts.kv[i]
    assert acts[-1].prompt == STORY and acts[np.int64(1)].prompt == LONG and acts[torch.tensor(2)].prompt == STORY
    assert acts.keys() == ["v_proj@1", last, "kv"] and set(acts[0].keys()) == set(acts.keys())
    with pytest.raises(IndexError, match="prompt 3 does not exist: 3 prompt"):
        acts[3]
    with pytest.raises(KeyError, match="was not captured"):
        acts[0]["q_proj@0"]
    with pytest.raises(TypeError, match="index Activations by hook point"):
        acts[1.5]


def test_a_slice_or_list_selects_prompts(acts):
    some = acts[1:]
    assert len(some) == 2 and some.prompts == [LONG, STORY] and some.window == acts.window
    assert some["v_proj@1"][0] is acts["v_proj@1"][1]
    picked = acts[[2, 0]]
    assert picked.prompts == [STORY, PROMPT] and picked.kv[1] is acts.kv[0]


def test_save_and_load_give_back_what_was_captured(acts, tmp_path):
    path = acts.save(tmp_path / "sub" / "acts.safetensors")
    back = tl.load_activations(path)
    assert back.metadata() == acts.metadata()
    for name in acts.points:
        for a, b in zip(acts[name], back[name]):
            assert a.dtype == b.dtype and torch.equal(a, b)
    for a, b in zip(acts.positions, back.positions):
        assert torch.equal(a, b)
    for per_a, per_b in zip(acts.kv, back.kv):
        assert len(per_a) == len(per_b)
        for (ka, va), (kb, vb) in zip(per_a, per_b):
            assert torch.equal(ka, kb) and torch.equal(va, vb)
    plain = acts.to_dict()
    assert plain["prompts"] == acts.prompts and plain["points"]["v_proj@1"][0] is acts["v_proj@1"][0]
    assert plain["kv"][0][0][0] is acts.kv[0][0][0]


def test_a_loaded_capture_serves_as_sources_like_the_original(tiny_models, tmp_path):
    model = tiny_models("llama")
    captured = model.capture([STORY, STORY2], sites=["v_proj@1", "kv"])
    back = tl.load_activations(captured.save(tmp_path / "a.safetensors"))
    kw = dict(plan="kv:all + v_proj@1:w4", greedy=True, max_new_tokens=4, stop_at_eos=False)
    assert (
        model.generate([PROMPT, LONG], sources=back, **kw).token_ids
        == model.generate([PROMPT, LONG], sources=[STORY, STORY2], **kw).token_ids
    )


def test_loading_refuses_other_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not one Activations.save wrote"):
        tl.load_activations(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="no activations file"):
        tl.load_activations(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    "plan",
    [
        "v_proj@1:w4",  # prompt: the last 4 tokens; decode: the source's last token
        "resid_post@0:w6:decode:mean + v_proj@1:w3:decode:cycle",
        "noise:v_proj@1:w5",
    ],
)
def test_a_windowed_capture_covering_the_plans_window_equals_a_whole_one(tiny_models, plan):
    model = tiny_models("llama")
    targets, sources = [PROMPT, LONG], [STORY, STORY2]
    sites = ["v_proj@1", "resid_post@0"]
    whole = model.capture(sources, sites=sites)
    windowed = model.capture(sources, sites=sites, window=6)
    kw = dict(plan=plan, greedy=False, temperature=0.9, max_new_tokens=5, stop_at_eos=False, seed=3)
    a = model.generate(targets, sources=windowed, **kw)
    b = model.generate(targets, sources=whole, **kw)
    assert a.token_ids == b.token_ids
    cols = ["positions", "fired_prompt", "fired_decode"]
    assert a.audit[cols].equals(b.audit[cols]) and (a.audit.positions > 0).all()
    torch.testing.assert_close(
        torch.tensor(a.audit.change_norm.values), torch.tensor(b.audit.change_norm.values), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize(
    "plan, what",
    [
        ("v_proj@1:w8", "its prompt phase reads source position"),
        ("v_proj@1", "its prompt phase reads source position"),  # the last min(n_target, n_source) tokens
        ("resid_post@0:w8:decode:mean", r"its decode value \(mean\)"),
        ("ablate:v_proj@1:mean", "its mean over the source's tokens"),
        ("kv:all", "window=6; capture them without a window"),
    ],
)
def test_a_windowed_capture_shorter_than_what_the_plan_reads_is_refused(tiny_models, plan, what):
    model = tiny_models("llama")
    windowed = model.capture([STORY], sites=["v_proj@1", "resid_post@0", "kv"], window=6)
    with pytest.raises(InterventionError, match=what):
        model.generate([LONG], sources=windowed, plan=plan, max_new_tokens=2)
