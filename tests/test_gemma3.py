"""Gemma-3 specifics, on a tiny Gemma-3 (local sliding-window layers + a global layer, as the real one).

- Local and global layers rotate with different RoPE bases (1e4 and 1e6): the
  corrected splice re-rotates each layer's keys with that layer's own base.
- Local layers attend within a sliding window; generation stays correct when
  the cache grows past it (checked against transformers' own ``generate``).
- QK-norm: the ``k_proj`` site is the projection's output, *before* the
  per-head RMSNorm and RoPE; the cache (what a KV splice moves) holds keys
  after both. So a ``k_proj`` patch changes the cached key only through the
  norm and the rotation, and a splice moves normed, rotated keys.
"""

from __future__ import annotations

import pytest
import torch
from conftest import LONG, PROMPT, STORY
from engine_reference import prompt_cache
from test_splice import CacheSpy

from transferlab import capture, generate
from transferlab.interventions.rope import inverse_frequencies, rotate_keys
from transferlab.models.adapters import make_adapter
from transferlab.models.embedded import embedded_tokenizer
from transferlab.models.model import Model
from transferlab.models.tiny import _COMMON, gemma3_config


def _gemma3(window: int = 4096) -> Model:
    from transformers import AutoModelForCausalLM

    cfg = gemma3_config(dict(_COMMON), sliding_window=window)
    cfg._attn_implementation = "eager"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_config(cfg).eval()
        with torch.no_grad():
            for p in hf.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.08)
    return Model(hf=hf, tokenizer=embedded_tokenizer(), adapter=make_adapter(hf), name=f"gemma3-w{window}")


@pytest.fixture(scope="module")
def gemma3():
    return _gemma3()


def _ids(model, text):
    return model.tokenizer(text)["input_ids"]


def _close(a, b, rel=1e-5):
    scale = max(1.0, b.float().abs().max().item())
    d = (a.float() - b.float()).abs().max().item()
    assert d <= rel * scale, (d, scale)


def test_local_and_global_layers_have_their_own_bases(gemma3):
    types = gemma3.hf.config.layer_types
    local, glob = types.index("sliding_attention"), types.index("full_attention")
    d = gemma3.adapter.head_dim
    steps = torch.arange(0, d, 2, dtype=torch.float32) / d
    assert torch.allclose(inverse_frequencies(gemma3, local), 1.0 / 10_000.0**steps)
    assert torch.allclose(inverse_frequencies(gemma3, glob), 1.0 / 1_000_000.0**steps)


def test_each_layer_is_rerotated_with_its_own_base(gemma3):
    """rotate_keys with the layer's own frequencies reproduces keys computed at shifted positions;
    the other layer type's frequencies do not (so a single model-wide base would be wrong)."""
    ids = _ids(gemma3, PROMPT)
    at0, shifted = prompt_cache(gemma3.hf, ids, 0), prompt_cache(gemma3.hf, ids, 9)
    types = gemma3.hf.config.layer_types
    for layer, ((k0, _), (k1, _)) in enumerate(zip(at0, shifted)):
        _close(rotate_keys(k0, 9, inverse_frequencies(gemma3, layer)), k1)
        other = types.index("full_attention" if types[layer] == "sliding_attention" else "sliding_attention")
        wrong = rotate_keys(k0, 9, inverse_frequencies(gemma3, other))
        assert (wrong - k1).abs().max() > 1e-3 * k1.abs().max(), layer


def test_corrected_splice_lands_keys_at_their_new_positions(gemma3):
    """A right splice of a longer target: the spliced keys equal the source computed at the landing positions,
    in every layer (local and global)."""
    ti, si = _ids(gemma3, LONG), _ids(gemma3, PROMPT)
    P, S = len(ti) - 1, len(si) - 1
    src_shifted = prompt_cache(gemma3.hf, si[:-1], P - S)
    with CacheSpy(gemma3) as spy:
        plan = "kv:all:splicefirst"  # every source slot, the first too, lands P - S later
        generate(gemma3, [LONG], sources=[PROMPT], plan=plan, greedy=True, max_new_tokens=2, stop_at_eos=False)
    for layer in range(gemma3.n_layers):
        k, _ = spy.kv[layer]
        _close(k[:, :, P - S :], src_shifted[layer][0])


@pytest.mark.parametrize("prompt", [PROMPT, STORY], ids=["shorter-than-window", "longer-than-window"])
def test_generation_past_the_sliding_window_equals_transformers(prompt):
    """Window 6: the cache outgrows the local layers' window while decoding 24 tokens; greedy tokens equal
    transformers' own generate, and a lockstep self-patch at a local layer changes nothing."""
    model = _gemma3(window=6)
    ids = _ids(model, prompt)
    want = model.hf.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=24,
        min_new_tokens=24,
        do_sample=False,
        pad_token_id=0,
    )[0, len(ids) :].tolist()
    got = generate(model, [prompt], greedy=True, max_new_tokens=24, stop_at_eos=False)
    assert got.token_ids[0] == want
    same = generate(
        model,
        [prompt],
        sources=[prompt],
        plan="v_proj@0:decode:lockstep",
        greedy=True,
        max_new_tokens=24,
        stop_at_eos=False,
    )
    assert same.token_ids[0] == want
    assert same.audit["fired_decode"].iloc[0] == 23


def test_a_batch_with_prompts_on_both_sides_of_the_window_equals_each_alone():
    model = _gemma3(window=6)
    alone = [
        generate(model, [p], greedy=True, max_new_tokens=12, stop_at_eos=False).token_ids[0] for p in (PROMPT, STORY)
    ]
    both = generate(model, [PROMPT, STORY], greedy=True, max_new_tokens=12, stop_at_eos=False).token_ids
    assert both == alone


def test_cached_key_is_k_proj_after_qk_norm_and_rope(gemma3):
    """kv keys = RoPE(k_norm(k_proj)) per head: k_proj is the pre-norm projection, not the cached key."""
    a = gemma3.adapter
    acts = capture(gemma3, [PROMPT], sites=["kv"] + [f"k_proj@{layer}" for layer in range(a.n_layers)])
    for layer in range(a.n_layers):
        kp = acts[f"k_proj@{layer}"][0]  # [positions, kv_width]
        heads = kp.reshape(kp.shape[0], a.n_kv_heads, a.head_dim).transpose(0, 1)  # [kv heads, positions, head_dim]
        with torch.no_grad():
            normed = gemma3.hf.model.layers[layer].self_attn.k_norm(heads)
        positions = torch.arange(kp.shape[0])[None, :]
        expect = rotate_keys(normed, positions, inverse_frequencies(gemma3, layer))
        cached = acts.kv[0][layer][0]
        _close(cached, expect)
        assert (cached - heads).abs().max() > 1e-2 * cached.abs().max()  # the raw projection is not the key


def test_the_window_refusal_names_the_prompt_whose_cache_is_cut():
    """A long target and a short source under kv:all on a window-6 model: the local layers' cache of the target
    is cut, the source's is whole. The refusal says so with the target's numbers (before, it said 'keeps only
    <the short source's length> positions', as if the source were cut)."""
    import re

    from transferlab.interventions import InterventionError

    model = _gemma3(window=6)
    short = "Once upon"
    assert len(_ids(model, short)) <= 5 < len(_ids(model, STORY))
    with pytest.raises(InterventionError) as err:
        generate(model, [STORY], sources=[short], plan="kv:all", greedy=True, max_new_tokens=2)
    msg = str(err.value)
    found = re.search(r"the target's cache keeps only (\d+) of its (\d+) positions", msg)
    # the prompt phase caches every target token but the last (fed at the first decode step)
    assert found and int(found.group(2)) == len(_ids(model, STORY)) - 1 and int(found.group(1)) < int(found.group(2))
    assert "source's" not in msg
