"""Work shared or split inside a batch changes no result: shared target prefixes, bucketed sources.

An experiment batches one pair under several conditions: the same target
appears in several rows. When no intervention of the batch acts at the prompt
phase, the prefix forward is the same for all of them, so the engine computes
each distinct prefix once and copies its cache. These tests pin that it is an
optimisation only: every row equals the same example generated alone, and the
copy is skipped when a prompt-phase intervention makes rows differ.
"""

from __future__ import annotations

import functools

import pytest
from conftest import LONG, PROMPT, STORY, STORY2

from transferlab.engine.generation import generate

pytestmark = pytest.mark.usefixtures("engine_single_thread", "engine_no_hooks_left")

DECODE_ONLY = ["", "kv:all + v_proj@1:decode", "noise:v_proj@1:decode", "kv:all"]


def _rows_seen(model, monkeypatch):
    """Batch sizes of the prompt-phase forwards with more than one column (the prefix forwards)."""
    seen = []
    real = model.hf.forward

    @functools.wraps(real)
    def spy(*args, **kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] > 1:
            seen.append(ids.shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(model.hf, "forward", spy)
    return seen


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_shared_targets_equal_each_example_alone(tiny_models, monkeypatch, family):
    model = tiny_models(family)
    targets = [PROMPT, LONG] * len(DECODE_ONLY)
    plans = [p for p in DECODE_ONLY for _ in range(2)]
    sources = [STORY, STORY2] * len(DECODE_ONLY)
    sources = [s if p else None for s, p in zip(sources, plans)]
    seen = _rows_seen(model, monkeypatch)
    batch = generate(model, targets, sources=sources, plan=plans, max_new_tokens=6, seed=3, streams=list(range(8)))
    # the target prefixes were computed for the 2 distinct targets; the sources' capture is the other forward
    assert 2 in seen and len(targets) not in seen
    for i in range(len(targets)):
        alone = generate(model, targets[i], sources=sources[i], plan=plans[i], max_new_tokens=6, seed=3, streams=[i])
        assert batch.token_ids[i] == alone.token_ids[0], i
        assert batch.audit[batch.audit.example == i].fired_decode.tolist() == alone.audit.fired_decode.tolist()


def test_prompt_phase_intervention_keeps_every_row(tiny_models, monkeypatch):
    model = tiny_models("llama")
    targets = [PROMPT, PROMPT, PROMPT]
    plans = ["", "v_proj@1:prompt", "kv:all"]
    sources = [None, STORY, STORY2]
    seen = _rows_seen(model, monkeypatch)
    batch = generate(model, targets, sources=sources, plan=plans, max_new_tokens=5, greedy=True)
    assert 3 in seen  # no copy: the patched row's prefix differs
    alone = generate(model, PROMPT, sources=STORY, plan="v_proj@1:prompt", max_new_tokens=5, greedy=True)
    assert batch.token_ids[1] == alone.token_ids[0]


def test_sources_captured_in_length_buckets_equal_one_forward(tiny_models, monkeypatch):
    """Many sources of varied lengths are captured in a few length-sorted forwards, merged left-padded:
    the same generations as one padded forward over all of them."""
    from transferlab.engine import sources as engine_sources

    model = tiny_models("mistral")
    words = LONG.split()
    sources = [" ".join(words[: 2 + i]) for i in range(12)]  # 12 distinct lengths
    targets = [PROMPT, STORY, LONG] * 4
    plans = ["kv:all + v_proj@1:decode", "v_proj@0:both:cycle", "noise:resid_post@1:both", "kv:0,1"] * 3
    kw = dict(sources=sources, plan=plans, max_new_tokens=6, seed=1)
    monkeypatch.setattr(engine_sources, "BUCKET_ROWS", 10**6)
    one = generate(model, targets, **kw)
    forwards = []
    real = engine_sources.forward_capture
    monkeypatch.setattr(engine_sources, "forward_capture", lambda *a, **k: forwards.append(a[1].width) or real(*a, **k))
    monkeypatch.setattr(engine_sources, "BUCKET_ROWS", 3)
    split = generate(model, targets, **kw)
    assert len(forwards) == 4 and len(set(forwards)) == 4  # four buckets, each padded to its own longest
    assert split.token_ids == one.token_ids
    assert split.audit[["fired_prompt", "fired_decode", "positions"]].equals(
        one.audit[["fired_prompt", "fired_decode", "positions"]]
    )
    assert (abs(split.audit.change_norm - one.audit.change_norm) <= 1e-4 * (1 + one.audit.change_norm)).all()


def test_bucketed_sources_on_a_sliding_window_model_fall_back_to_one_forward(monkeypatch):
    """A sliding-window layer keeps fewer slots than a bucket is wide: the sources are captured in one forward."""
    import torch
    from transformers import AutoModelForCausalLM

    from transferlab.engine import sources as engine_sources
    from transferlab.models.adapters import make_adapter
    from transferlab.models.embedded import embedded_tokenizer
    from transferlab.models.model import Model
    from transferlab.models.tiny import tiny_config

    config = tiny_config("gemma2")
    config.sliding_window, config._attn_implementation = 6, "eager"
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config).eval()
    model = Model(hf=hf, tokenizer=embedded_tokenizer(), adapter=make_adapter(hf), name="g2", source={})
    words = LONG.split()
    sources = [" ".join(words[: 2 + i]) for i in range(12)]
    kw = dict(sources=sources, plan="kv:1", max_new_tokens=3, seed=2)
    monkeypatch.setattr(engine_sources, "BUCKET_ROWS", 10**6)
    one = generate(model, [PROMPT] * 12, **kw)
    monkeypatch.setattr(engine_sources, "BUCKET_ROWS", 3)
    split = generate(model, [PROMPT] * 12, **kw)
    assert split.token_ids == one.token_ids
