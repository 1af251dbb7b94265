"""Rows sharing a target compute its prefix once, when nothing acts at the prompt phase.

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

from transferlab.generation import generate

from conftest import LONG, PROMPT, STORY, STORY2

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
