"""KV splicing: RoPE re-rotation and the alignments, checked against caches recomputed by plain HF.

The spliced cache is read as the engine hands it to the model: a forward
pre-hook on the HF model records the cache (and mask, positions) of the first
forward that receives one -- in the corrected flavour the last prompt token's
forward, right after the splice.
"""

from __future__ import annotations

import pytest
import torch
from conftest import LONG, PROMPT, SHORT, STORY, STORY2
from engine_reference import greedy_on_cache, prompt_cache

from transferlab.engine.generation import generate
from transferlab.interventions.rope import inverse_frequencies, rotate_keys
from transferlab.models.tiny import TINY_FAMILIES

pytestmark = pytest.mark.usefixtures("engine_single_thread", "engine_no_hooks_left")

REL = 1e-5  # float32 rounding of a few ops, relative to the values' own scale
N_NEW = 8


def _ids(model, text):
    return model.tokenizer(text)["input_ids"]


def _model(family, tiny_models, stories):
    return stories if family == "stories260K" else tiny_models(family)


class CacheSpy:
    """Records the cache, attention mask and position ids of the first forward given a cache."""

    def __init__(self, model):
        self.model = model
        self.kv = None
        self.mask = None
        self.pos = None
        self.h = model.hf.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None or self.kv is not None:
            return None
        self.kv = [(lay.keys.detach().clone(), lay.values.detach().clone()) for lay in cache.layers]
        self.mask = kwargs.get("attention_mask").detach().clone()
        self.pos = kwargs.get("position_ids").detach().clone()
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.h.remove()


def _spliced(model, target, source, plan, **kw):
    with CacheSpy(model) as spy:
        g = generate(
            model, [target], sources=[source], plan=plan, greedy=True, max_new_tokens=N_NEW, stop_at_eos=False, **kw
        )
    return spy, g


def _close(a, b, rel=REL):
    """Equal up to float rounding: the largest difference within ``rel`` of the largest magnitude (floor 1)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.numel() == 0:
        return
    scale = max(1.0, b.float().abs().max().item())
    d = (a.float() - b.float()).abs().max().item()
    assert d <= rel * scale, (d, scale)


# --------------------------------------------------------------------------- rotate_keys


@pytest.mark.parametrize("family", TINY_FAMILIES + ("stories260K",))
def test_rotate_keys_equals_keys_recomputed_at_shifted_positions(family, tiny_models, stories):
    model = _model(family, tiny_models, stories)
    inv = inverse_frequencies(model, 0)
    ids = _ids(model, PROMPT)
    at0 = prompt_cache(model.hf, ids, 0)
    for delta in (3, 17):
        shifted = prompt_cache(model.hf, ids, delta)
        for layer, ((k0, v0), (k1, v1)) in enumerate(zip(at0, shifted)):
            inv = inverse_frequencies(model, layer)  # each layer's own (Gemma-3: local and global bases)
            _close(rotate_keys(k0, delta, inv), k1)
            _close(v0, v1)  # values do not carry positions (relative positions are unchanged)
            _close(rotate_keys(k1, -delta, inv), k0)  # and back
    # a per-position shift: each slot to its own offset
    inv = inverse_frequencies(model, 0)
    k0 = at0[0][0]
    deltas = torch.arange(k0.shape[2])  # slot j moves by j: position j -> 2j
    expect = torch.stack([rotate_keys(k0[:, :, j : j + 1], int(j), inv)[:, :, 0] for j in range(k0.shape[2])], dim=2)
    _close(rotate_keys(k0, deltas[None, None, :], inv), expect)


def test_rotate_keys_partial_rotary_leaves_the_rest():
    inv = torch.tensor([1.0, 0.1])  # rotates the first 4 of 6 dims
    k = torch.randn(1, 2, 3, 6)
    r = rotate_keys(k, 5, inv)
    assert torch.equal(r[..., 4:], k[..., 4:])
    assert not torch.allclose(r[..., :4], k[..., :4])
    assert torch.allclose(r.norm(dim=-1), k.norm(dim=-1), atol=1e-5)


# --------------------------------------------------------------------------- right alignment


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "gemma3", "phi3", "stories260K"])
@pytest.mark.parametrize("target,source", [(LONG, PROMPT), (PROMPT, LONG)])
def test_right_splice_reposition_gives_the_shifted_source_cache(family, target, source, tiny_models, stories):
    model = _model(family, tiny_models, stories)
    ti, si = _ids(model, target), _ids(model, source)
    P, S = len(ti) - 1, len(si) - 1  # prefixes (the last token is processed on top of the splice)
    n = min(P, S)
    delta = P - S
    tgt = prompt_cache(model.hf, ti[:-1])
    src_shifted = prompt_cache(model.hf, si[:-1], delta)  # the source prefix computed at the landing positions
    src_plain = prompt_cache(model.hf, si[:-1])
    # the whole overlap, first slot included (splicefirst): the seed's alignment with re-rotated keys
    spy, g = _spliced(model, target, source, "kv:all:splicefirst")
    keep, gk = _spliced(model, target, source, "kv:all:keep:splicefirst")
    for layer in range(model.n_layers):
        k, v = spy.kv[layer]
        assert k.shape[2] == P
        _close(k[:, :, P - n :], src_shifted[layer][0][:, :, S - n :])
        _close(v[:, :, P - n :], src_plain[layer][1][:, :, S - n :])
        _close(k[:, :, : P - n], tgt[layer][0][:, :, : P - n])  # untouched target slots
        _close(v[:, :, : P - n], tgt[layer][1][:, :, : P - n])
        kk, kv_ = keep.kv[layer]
        _close(kk[:, :, P - n :], src_plain[layer][0][:, :, S - n :])  # keep: the source's own rotation
        _close(kk[:, :, : P - n], tgt[layer][0][:, :, : P - n])
        _close(kv_, v)
    assert spy.pos.tolist() == [[P]]
    # end to end: the continuation a hand-built shifted-source cache gives
    layers = []
    for layer in range(model.n_layers):
        k = torch.cat([tgt[layer][0][:, :, : P - n], src_shifted[layer][0][:, :, S - n :]], dim=2)
        v = torch.cat([tgt[layer][1][:, :, : P - n], src_shifted[layer][1][:, :, S - n :]], dim=2)
        layers.append((k, v))
    assert g.token_ids[0] == greedy_on_cache(model.hf, layers, ti[-1], P, N_NEW)
    if delta != 0:
        assert not torch.allclose(spy.kv[0][0], keep.kv[0][0])


def test_right_splice_window_and_layer_subset(tiny_models):
    model = tiny_models("llama")
    ti, si = _ids(model, LONG), _ids(model, STORY)
    P, S = len(ti) - 1, len(si) - 1
    spy, _ = _spliced(model, LONG, STORY, "kv:1,3:w3")
    tgt = prompt_cache(model.hf, ti[:-1])
    src = prompt_cache(model.hf, si[:-1], P - S)
    for layer in range(model.n_layers):
        k, v = spy.kv[layer]
        if layer in (1, 3):
            _close(k[:, :, -3:], src[layer][0][:, :, -3:])
            _close(v[:, :, -3:], src[layer][1][:, :, -3:])
            _close(k[:, :, :-3], tgt[layer][0][:, :, :-3])
        else:
            _close(k, tgt[layer][0])
            _close(v, tgt[layer][1])


# --------------------------------------------------------------------------- left, range, prepend


@pytest.mark.parametrize("family", ["llama", "phi3", "stories260K"])
def test_left_splice_and_window(family, tiny_models, stories):
    model = _model(family, tiny_models, stories)
    for target, source in ((LONG, PROMPT), (PROMPT, LONG)):
        ti, si = _ids(model, target), _ids(model, source)
        P, S = len(ti) - 1, len(si) - 1
        tgt, src = prompt_cache(model.hf, ti[:-1]), prompt_cache(model.hf, si[:-1])
        for plan, n in (
            ("kv:all:left:splicefirst", min(P, S)),
            ("kv:all:left:w2:splicefirst", 2),
            ("kv:all:left:keep:splicefirst", min(P, S)),
        ):
            spy, _ = _spliced(model, target, source, plan)
            for layer in range(model.n_layers):
                k, v = spy.kv[layer]
                _close(k[:, :, :n], src[layer][0][:, :, :n])  # same positions: no rotation either way
                _close(v[:, :, :n], src[layer][1][:, :, :n])
                _close(k[:, :, n:], tgt[layer][0][:, :, n:])
                _close(v[:, :, n:], tgt[layer][1][:, :, n:])


@pytest.mark.parametrize("family", ["llama", "gemma3", "stories260K"])
@pytest.mark.parametrize("target,source", [(LONG, PROMPT), (PROMPT, LONG), (PROMPT, PROMPT)])
def test_keepfirst_leaves_both_first_slots_out(family, target, source, tiny_models, stories):
    """``keepfirst``: the target keeps its first slot (the sink) and the source's first slot is not moved;
    the other min(P, S) - 1 slots are spliced (right: re-rotated to where they land; left: from slot 1)."""
    model = _model(family, tiny_models, stories)
    ti, si = _ids(model, target), _ids(model, source)
    P, S = len(ti) - 1, len(si) - 1
    n = min(P, S) - 1
    tgt = prompt_cache(model.hf, ti[:-1])
    src_shifted, src = prompt_cache(model.hf, si[:-1], P - S), prompt_cache(model.hf, si[:-1])
    spy, g = _spliced(model, target, source, "kv:all:keepfirst")
    left, gl = _spliced(model, target, source, "kv:all:left:keepfirst")
    for layer in range(model.n_layers):
        k, v = spy.kv[layer]
        _close(k[:, :, : P - n], tgt[layer][0][:, :, : P - n])  # slot 0 among the target's own
        _close(k[:, :, P - n :], src_shifted[layer][0][:, :, S - n :])
        _close(v[:, :, P - n :], src[layer][1][:, :, S - n :])
        kl, vl = left.kv[layer]
        _close(kl[:, :, :1], tgt[layer][0][:, :, :1])
        _close(kl[:, :, 1 : n + 1], src[layer][0][:, :, 1 : n + 1])
        _close(vl[:, :, n + 1 :], tgt[layer][1][:, :, n + 1 :])
    assert g.audit.iloc[0].positions == n and gl.audit.iloc[0].positions == n


def test_range_splice(tiny_models):
    model = tiny_models("mistral")
    ti, si = _ids(model, LONG), _ids(model, STORY)
    tgt, src = prompt_cache(model.hf, ti[:-1]), prompt_cache(model.hf, si[:-1])
    spy, g = _spliced(model, LONG, STORY, "kv:all:p2-6")
    for layer in range(model.n_layers):
        k, v = spy.kv[layer]
        _close(k[:, :, 2:6], src[layer][0][:, :, 2:6])
        _close(v[:, :, 2:6], src[layer][1][:, :, 2:6])
        _close(k[:, :, :2], tgt[layer][0][:, :, :2])
        _close(k[:, :, 6:], tgt[layer][0][:, :, 6:])
    row = g.audit.iloc[0]
    assert row.positions == 4 and row.fired_prompt == 1


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3", "phi3", "stories260K"])
@pytest.mark.parametrize("rope", ["reposition", "keep"])
def test_prepend_cache_layout_and_continuation(family, rope, tiny_models, stories):
    model = _model(family, tiny_models, stories)
    target, source = PROMPT, STORY2
    ti, si = _ids(model, target), _ids(model, source)
    P, S = len(ti) - 1, len(si) - 1
    plan = "kv:all:prepend" + (":keep" if rope == "keep" else "")
    spy, g = _spliced(model, target, source, plan)
    src = prompt_cache(model.hf, si[:-1])
    # the target prefix was computed without seeing the source; reposition moves it S slots later
    tgt = prompt_cache(model.hf, ti[:-1], S if rope == "reposition" else 0)
    layers = []
    for layer in range(model.n_layers):
        k, v = spy.kv[layer]
        assert k.shape[2] == S + P
        _close(k[:, :, :S], src[layer][0])
        _close(v[:, :, :S], src[layer][1])
        _close(k[:, :, S:], tgt[layer][0])
        _close(v[:, :, S:], tgt[layer][1])
        layers.append((torch.cat([src[layer][0], tgt[layer][0]], 2), torch.cat([src[layer][1], tgt[layer][1]], 2)))
    assert spy.pos.tolist() == [[S + P]]  # the last target token comes after both prefixes
    assert spy.mask.tolist() == [[1] * (S + P + 1)]
    assert g.token_ids[0] == greedy_on_cache(model.hf, layers, ti[-1], S + P, N_NEW)
    assert g.audit.iloc[0].positions == S


def test_prepend_in_a_batch_pads_the_other_rows(tiny_models):
    model = tiny_models("llama")
    targets, sources = [PROMPT, LONG, SHORT], [STORY, None, PROMPT]
    plans = ["kv:all:prepend", None, "kv:all:prepend"]
    with CacheSpy(model) as spy:
        g = generate(model, targets, sources=sources, plan=plans, greedy=True, max_new_tokens=N_NEW, stop_at_eos=False)
    # rows are sorted by length inside the engine; find each row by its mask length
    lens = {t: len(_ids(model, t)) - 1 for t in targets}
    extra = {PROMPT: len(_ids(model, STORY)) - 1, LONG: 0, SHORT: len(_ids(model, PROMPT)) - 1}
    widths = sorted(spy.mask.sum(1).tolist())
    assert widths == sorted(lens[t] + extra[t] + 1 for t in targets)
    assert sorted(spy.pos[:, 0].tolist()) == sorted(lens[t] + extra[t] for t in targets)
    for i, t in enumerate(targets):
        alone = generate(
            model, [t], sources=[sources[i]], plan=plans[i], greedy=True, max_new_tokens=N_NEW, stop_at_eos=False
        )
        assert g.token_ids[i] == alone.token_ids[0]


# --------------------------------------------------------------------------- seed flavour


@pytest.mark.parametrize("target,source", [(LONG, PROMPT), (PROMPT, LONG)])
def test_seed_splice_is_right_aligned_and_not_rerotated(target, source, tiny_models):
    model = tiny_models("qwen2")
    ti, si = _ids(model, target), _ids(model, source)
    T, S = len(ti), len(si)
    n = min(T, S)
    tgt, src = prompt_cache(model.hf, ti), prompt_cache(model.hf, si)
    spy, g = _spliced(model, target, source, "kv:all", flavour="seed")
    for layer in range(model.n_layers):
        k, v = spy.kv[layer]
        assert k.shape[2] == T  # the whole prompt, then the refeed
        _close(k[:, :, T - n :], src[layer][0][:, :, S - n :])
        _close(v[:, :, T - n :], src[layer][1][:, :, S - n :])
        _close(k[:, :, : T - n], tgt[layer][0][:, :, : T - n])
    assert spy.pos.tolist() == [[T]]  # the re-fed last token sits one slot past the prompt
    # rope is moot in the seed flavour (keys keep their source rotations either way) ...
    for plan in ("kv:all:keep", "kv:all:reposition"):
        other = generate(
            model,
            [target],
            sources=[source],
            plan=plan,
            greedy=True,
            max_new_tokens=N_NEW,
            stop_at_eos=False,
            flavour="seed",
        )
        assert other.token_ids == g.token_ids, plan
    # ... while an alignment the seed never had is refused, not silently replaced
    from transferlab.interventions import InterventionError

    with pytest.raises(InterventionError, match="flavour='seed'"):
        generate(model, [target], sources=[source], plan="kv:all:left", flavour="seed", max_new_tokens=2)


def test_prepend_reposition_rejects_sequence_dependent_rope(tiny_models):
    """rope types whose frequencies depend on length cannot be re-rotated: a clear error."""
    import dataclasses

    from transferlab.interventions import InterventionError

    model = tiny_models("llama")
    broken = dataclasses.replace(
        model, adapter=dataclasses.replace(model.adapter, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    )
    with pytest.raises(InterventionError, match="dynamic"):
        generate(broken, [LONG], sources=[PROMPT], plan="kv:all", greedy=True, max_new_tokens=2)
    g = generate(broken, [LONG], sources=[PROMPT], plan="kv:all:keep", greedy=True, max_new_tokens=2)
    assert len(g.token_ids[0]) == 2


# --------------------------------------------------------------------------- sliding-window layers


def _sliding_gemma2(window: int):
    from transformers import AutoModelForCausalLM

    from transferlab.models.adapters import make_adapter
    from transferlab.models.embedded import embedded_tokenizer
    from transferlab.models.model import Model
    from transferlab.models.tiny import tiny_config

    cfg = tiny_config("gemma2")
    cfg.sliding_window = window
    cfg._attn_implementation = "eager"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_config(cfg).eval()
    return Model(hf=hf, tokenizer=embedded_tokenizer(), adapter=make_adapter(hf), name="gemma2-sw")


def test_splice_refuses_sliding_layers_that_dropped_positions():
    """Layers 0 and 2 keep only window-1 positions of a longer prompt: a clear error, not a shape crash."""
    from transferlab.interventions import InterventionError

    model = _sliding_gemma2(6)
    assert len(_ids(model, PROMPT)) > 6 and len(_ids(model, LONG)) > 6
    for plan, flavour in (
        ("kv:all", "corrected"),
        ("kv:all", "seed"),
        ("kv:all:left", "corrected"),
        ("kv:all:prepend", "corrected"),
        ("kv:0", "corrected"),
    ):
        with pytest.raises(InterventionError, match="sliding-window layer"):
            generate(model, [PROMPT], sources=[LONG], plan=plan, greedy=True, max_new_tokens=3, flavour=flavour)
    # full-attention layers keep every position: splicing them works, batched or alone
    spy, g = _spliced(model, LONG, PROMPT, "kv:1,3:splicefirst")
    ti, si = _ids(model, LONG), _ids(model, PROMPT)
    P, S = len(ti) - 1, len(si) - 1
    src = prompt_cache(model.hf, si[:-1], P - S)
    for layer in (1, 3):
        _close(spy.kv[layer][0][:, :, P - S :], src[layer][0])
    both = generate(
        model,
        [LONG, PROMPT],
        sources=[PROMPT, LONG],
        plan="kv:1,3:splicefirst",
        greedy=True,
        max_new_tokens=N_NEW,
        stop_at_eos=False,
    )
    assert both.token_ids[0] == g.token_ids[0]
    # prompts inside the window splice every layer as usual
    short = _sliding_gemma2(64)
    spy, _ = _spliced(short, LONG, PROMPT, "kv:all")
    assert all(k.shape[2] == P for k, _ in spy.kv)
