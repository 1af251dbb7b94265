"""Seed flavour == the seed write-up's Quick Start loop, restated in plain transformers.

The reference (:func:`engine_reference.seed_quickstart`) prefills the target,
builds the spliced ``DynamicCache`` exactly as the seed did (clone the
target's cache, overwrite its last min(T_t, T_s) slots with the source's last
slots, keys not re-rotated), registers the seed's ``v_hook`` (window 16) on
``v_proj`` and then feeds ``generated_ids[:, -1:]`` step by step, greedily.
The engine's ``flavour="seed"`` with ``kv:all + v_proj@L:w16:both`` must give
the same tokens, alone and in a left-padded batch.
"""

from __future__ import annotations

import pytest
from conftest import LONG, PROMPT, SHORT, STORY, STORY2
from engine_reference import greedy_plain, seed_quickstart

from transferlab.engine.generation import generate
from transferlab.models.tiny import TINY_FAMILIES

pytestmark = pytest.mark.usefixtures("engine_single_thread", "engine_no_hooks_left")

N_NEW = 10
LAYER = 2

# (target, source): source longer, shorter, both >= 16 tokens, a 2-token target
PAIRS = [(PROMPT, LONG), (LONG, PROMPT), (STORY, STORY2), (STORY2, SHORT), (SHORT, STORY)]


def _ids(model, text):
    return model.tokenizer(text)["input_ids"]


def _models(tiny_models, stories):
    return [tiny_models(f) for f in TINY_FAMILIES] + [stories]


def test_pairs_cover_longer_and_shorter_sources(stories):
    lens = [(len(_ids(stories, t)), len(_ids(stories, s))) for t, s in PAIRS]
    assert any(s > t for t, s in lens) and any(s < t for t, s in lens)
    assert any(t >= 16 and s >= 16 for t, s in lens)


@pytest.mark.parametrize("family", TINY_FAMILIES + ("stories260K",))
def test_seed_flavour_matches_quickstart(family, tiny_models, stories):
    model = stories if family == "stories260K" else tiny_models(family)
    layer = LAYER if family != "stories260K" else 3
    plan = f"kv:all + v_proj@{layer}:w16:both"
    refs = [seed_quickstart(model.hf, _ids(model, t), _ids(model, s), layer, N_NEW) for t, s in PAIRS]
    for ref in refs:
        assert ref["v_fired"] == 0  # the seed's patcher never fires on 1-token decode calls
    targets, sources = [t for t, _ in PAIRS], [s for _, s in PAIRS]
    # alone
    for (t, s), ref in zip(PAIRS, refs):
        g = generate(
            model, [t], sources=[s], plan=plan, flavour="seed", greedy=True, max_new_tokens=N_NEW, stop_at_eos=False
        )
        assert g.token_ids[0] == ref["tokens"], (family, t, s)
    # one left-padded batch
    g = generate(
        model, targets, sources=sources, plan=plan, flavour="seed", greedy=True, max_new_tokens=N_NEW, stop_at_eos=False
    )
    assert g.token_ids == [r["tokens"] for r in refs], family
    audit = g.audit
    vrows = audit[audit.kind == "patch"]
    assert (vrows.fired == 0).all() and vrows.never_fired.all()
    assert len(g.never_fired()) == 1


@pytest.mark.parametrize("family", ["llama", "phi3", "gemma2", "gemma3", "stories260K"])
def test_seed_flavour_prompt_phase_patch_matches_seed_hook_at_prefill(family, tiny_models, stories):
    """``v_proj@L:w16:prompt`` in seed flavour = the seed's v_hook registered during the target's prefill."""
    model = stories if family == "stories260K" else tiny_models(family)
    plan = f"kv:all + v_proj@{LAYER}:w16:prompt"
    refs = [
        seed_quickstart(model.hf, _ids(model, t), _ids(model, s), LAYER, N_NEW, v_hook_at_prefill=True)
        for t, s in PAIRS
    ]
    g = generate(
        model,
        [t for t, _ in PAIRS],
        sources=[s for _, s in PAIRS],
        plan=plan,
        flavour="seed",
        greedy=True,
        max_new_tokens=N_NEW,
        stop_at_eos=False,
    )
    assert g.token_ids == [r["tokens"] for r in refs], family
    fired = g.audit[g.audit.kind == "patch"].sort_values("example").fired_prompt.tolist()
    assert fired == [r["v_fired"] for r in refs]
    assert 1 in fired and 0 in fired  # the pairs exercise both sides of the seed's ">= 16" rule


def test_seed_reference_splice_actually_matters(tiny_models):
    """Guard against a vacuous parity: the seed's splice changes the continuation."""
    model = tiny_models("llama")
    t, s = PAIRS[0]
    ref = seed_quickstart(model.hf, _ids(model, t), _ids(model, s), LAYER, N_NEW)
    assert ref["tokens"] != greedy_plain(model.hf, _ids(model, t), N_NEW)
    g = generate(model, [t], plan=None, flavour="seed", greedy=True, max_new_tokens=N_NEW, stop_at_eos=False)
    assert g.token_ids[0] != ref["tokens"]


@pytest.mark.parametrize("flavour", ["seed", "corrected"])
def test_empty_plan_is_plain_greedy(flavour, tiny_models, stories):
    """No plan: both flavours are a plain cached greedy loop (the seed's baselines used model.generate)."""
    for model in (tiny_models("mistral"), tiny_models("qwen2"), stories):
        texts = [PROMPT, LONG, SHORT]
        g = generate(model, texts, plan=None, flavour=flavour, greedy=True, max_new_tokens=N_NEW, stop_at_eos=False)
        assert g.token_ids == [greedy_plain(model.hf, _ids(model, t), N_NEW) for t in texts], model.name
