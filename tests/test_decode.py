"""The static decode loop (CUDA-graph ready) gives the eager loop's results, token for token.

The static loop keeps every per-step input in a fixed buffer, writes the cache
at a device-side slot, attends over a fixed segment of slots with the unfilled
ones masked, and hands the model a ready 4D mask. On CPU it runs without
graphs; these tests pin it to the eager loop: same tokens (greedy and
sampled), same log-mass, same audit, under every decode-phase intervention,
with segments shorter than the generation (so masked future slots and segment
changes are exercised), and with examples ending early at EOS.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import LONG, PROMPT, SHORT, STORY, STORY2

from transferlab.engine import decode
from transferlab.engine.generation import generate

pytestmark = pytest.mark.usefixtures("engine_single_thread", "engine_no_hooks_left")

TARGETS = [PROMPT, LONG, SHORT, STORY]
SOURCES = [STORY2, STORY, LONG, PROMPT]
PLANS = [
    "",
    "kv:all + v_proj@1:decode",
    "noise:v_proj@1:decode",
    "v_proj@0:both:cycle",
    "resid_post@1:decode:mean",
    "v_proj@1:decode:lockstep",
    "ablate:mlp_out@0:decode",
]


def _count_calls(monkeypatch, module, name: str) -> list:
    """Replace ``module.name`` by a wrapper that counts its calls; returns the counter (a one-item list)."""
    calls = [0]
    real = getattr(module, name)

    def spy(*a, **k):
        calls[0] += 1
        return real(*a, **k)

    monkeypatch.setattr(module, name, spy)
    return calls


def _run(model, how, monkeypatch, segment=None, **kw):
    monkeypatch.setenv("TRANSFERLAB_DECODE", how)
    if segment is not None:
        monkeypatch.setattr(decode, "SEGMENT", segment)
    calls = _count_calls(monkeypatch, decode, "_static")
    kw.setdefault("max_new_tokens", 9)
    gen = generate(
        model,
        TARGETS * 2,
        sources=SOURCES * 2,
        plan=PLANS[:4] + PLANS[3:],
        record_logits={"low": list(range(40))},
        **kw,
    )
    return gen, calls[0]


def _same(a, b):
    assert a.token_ids == b.token_ids
    assert a.finish_reasons == b.finish_reasons
    ma, mb = a.logmass["low"], b.logmass["low"]
    assert np.array_equal(np.isnan(ma), np.isnan(mb))
    ok = ~np.isnan(ma)
    assert np.allclose(ma[ok], mb[ok], atol=1e-5, rtol=1e-5)
    cols = ["example", "intervention", "fired_prompt", "fired_decode", "positions"]
    assert a.audit[cols].equals(b.audit[cols])
    assert np.allclose(a.audit.change_norm, b.audit.change_norm, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "phi3"])
@pytest.mark.parametrize("greedy", [True, False])
def test_static_equals_eager(tiny_models, monkeypatch, family, greedy):
    model = tiny_models(family)
    eager, n_eager = _run(model, "eager", monkeypatch, greedy=greedy, stop_at_eos=False)
    static, n_static = _run(model, "static", monkeypatch, segment=4, greedy=greedy, stop_at_eos=False)
    assert (n_eager, n_static) == (0, 1)  # the static loop really ran (once: one batch)
    _same(eager, static)
    impl = model.hf.config._attn_implementation
    assert set(eager.decode_paths) == {f"eager/{impl}"} and set(static.decode_paths) == {f"static/{impl}"}
    assert len(static.decode_paths) == len(static.texts)
    # every decode-phase intervention fired on every decode forward, in both loops
    dec = static.audit[static.audit.phase.isin(["decode", "both"])]
    assert len(dec) and (dec.fired_decode == 8).all()


class _EosAs:
    """The stories tokenizer with another token (a full stop) as EOS, so sampled examples end early."""

    def __init__(self, tok, eos):
        self._tok, self.eos_token_id = tok, eos

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, *args, **kwargs):
        return self._tok(*args, **kwargs)


@pytest.mark.parametrize("attention", ["sdpa", "ragged"])
def test_static_equals_eager_with_early_eos(stories, monkeypatch, fast_attention, attention):
    """Examples stop at EOS at different steps; finished rows stay filled and unpatched alike (ragged: in one
    segment, whose loop checks for the end every 8 steps)."""
    stop = stories.tokenizer("Hi.")["input_ids"][-1]
    stories = dataclasses.replace(stories, tokenizer=_EosAs(stories.tokenizer, stop))
    if attention == "ragged":
        fast_attention(stories)
    eager, _ = _run(stories, "eager", monkeypatch, max_new_tokens=40, temperature=1.0, stop_at_eos=True)
    monkeypatch.setenv("TRANSFERLAB_DECODE_ATTENTION", attention)
    from transferlab.engine import ragged

    calls = _count_calls(monkeypatch, ragged, "attend")
    static, n = _run(stories, "static", monkeypatch, segment=7, max_new_tokens=40, temperature=1.0, stop_at_eos=True)
    assert (calls[0] > 0) == (attention == "ragged")
    assert n == 1
    assert "eos" in eager.finish_reasons and "length" in eager.finish_reasons  # the test covers both
    _same(eager, static)


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")  # raised through the spy
@pytest.mark.parametrize("segment", [7, 32])
def test_the_static_loop_stops_once_every_row_has_ended(stories, monkeypatch, segment):
    """When every row has met EOS the loop stops (checked every 8 steps and at each segment's end), inside a
    segment or at its end, with the eager loop's tokens."""
    stop = stories.tokenizer("Hi.")["input_ids"][-1]
    stories = dataclasses.replace(stories, tokenizer=_EosAs(stories.tokenizer, stop))
    kw = dict(max_new_tokens=120, temperature=1.0, stop_at_eos=True)
    eager, _ = _run(stories, "eager", monkeypatch, **kw)
    forwards = _count_calls(monkeypatch, type(stories.hf), "forward")
    static, _ = _run(stories, "static", monkeypatch, segment=segment, **kw)
    assert set(eager.finish_reasons) == {"eos"}  # every row ends well before 120 tokens
    _same(eager, static)
    longest = max(len(t) for t in static.token_ids)
    assert longest + 8 < 120 and forwards[0] <= longest + 8  # stopped within a check of the last EOS


def test_one_segment_longer_than_generation(tiny_models, monkeypatch):
    model = tiny_models("llama")
    eager, _ = _run(model, "eager", monkeypatch, stop_at_eos=False)
    static, _ = _run(model, "static", monkeypatch, segment=1000, stop_at_eos=False)
    _same(eager, static)


def test_sliding_window_models_decode_eagerly(tiny_models, monkeypatch):
    """Gemma-2 (sliding-window layers, eager attention) cannot take the ready 4D mask: the eager loop runs."""
    model = tiny_models("gemma2")
    static, n = _run(model, "static", monkeypatch, stop_at_eos=False)
    assert n == 0
    eager, _ = _run(model, "eager", monkeypatch, stop_at_eos=False)
    _same(eager, static)


def test_unknown_mode_is_refused(tiny_models, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_DECODE", "fast")
    with pytest.raises(ValueError, match="TRANSFERLAB_DECODE='fast'"):
        generate(tiny_models("llama"), PROMPT, max_new_tokens=3)


def test_a_graph_that_cannot_be_captured_falls_back_to_plain_steps(tiny_models, monkeypatch):
    """Where capture fails (a MoE router's host loop, no memory for the graph's pool), the steps run one by
    one: same tokens, a warning, and that model (only) decodes without graphs from then on.

    CUDA is faked on CPU: streams are no-ops and every capture raises.
    """
    import contextlib
    import types

    import torch

    model, other = tiny_models("llama"), tiny_models("qwen2")
    eager, _ = _run(model, "eager", monkeypatch, stop_at_eos=False)
    stream = types.SimpleNamespace(wait_stream=lambda s: None)
    attempts = []

    def graph(g):
        attempts.append(1)
        raise RuntimeError("CUDA out of memory (faked)")

    fake = types.SimpleNamespace(
        Stream=lambda: stream,
        stream=lambda s: contextlib.nullcontext(),
        synchronize=lambda *a: None,
        current_stream=lambda: stream,
        CUDAGraph=lambda: None,
        graph=graph,
    )
    monkeypatch.setattr(torch, "cuda", fake)
    for m in (model, other):  # the session's shared models: the flag is removed after the test
        monkeypatch.setattr(m.hf, decode.GRAPHS_OFF, False, raising=False)
    real = decode._static
    monkeypatch.setattr(decode, "_static", lambda *a, graphs=False, **k: real(*a, graphs=True, **k))
    monkeypatch.setenv("TRANSFERLAB_DECODE", "static")
    monkeypatch.setattr(decode, "SEGMENT", 4)
    kw = dict(
        sources=SOURCES * 2,
        plan=PLANS[:4] + PLANS[3:],
        record_logits={"low": list(range(40))},
        max_new_tokens=9,
        stop_at_eos=False,
    )
    with pytest.warns(RuntimeWarning, match="decodes without graphs from now on"):
        got = generate(model, TARGETS * 2, **kw)
    _same(eager, got)
    assert set(got.decode_paths) == {f"static/{model.hf.config._attn_implementation}"}  # no graph ran
    assert len(attempts) == 1 and getattr(model.hf, decode.GRAPHS_OFF)  # tried once, then not again
    with pytest.warns(RuntimeWarning):
        generate(other, TARGETS * 2, **kw)
    assert len(attempts) == 2  # another model still tries
    generate(model, TARGETS * 2, **kw)
    assert len(attempts) == 2


@pytest.mark.parametrize("max_new", [9, 10])
def test_graph_segments_are_labelled_graph(tiny_models, monkeypatch, max_new):
    """Segments replayed as graphs label the rows ``graph/...``, also when a tail of at most 2 steps runs
    uncaptured (same kernels: no second loop kind). CPU: a stand-in replay runs each step of the segment."""
    model = tiny_models("llama")
    eager, _ = _run(model, "eager", monkeypatch, stop_at_eos=False, max_new_tokens=max_new)
    replays = []

    def replay(hf, step_fn, step, seg_end, stop_at_eos, state):
        replays.append((step, seg_end))
        for _ in range(step, seg_end):
            step_fn()
        return seg_end, True

    monkeypatch.setattr(decode, "_replay_segment", replay)
    real = decode._static
    monkeypatch.setattr(decode, "_static", lambda *a, graphs=False, **k: real(*a, graphs=True, **k))
    got, _ = _run(model, "static", monkeypatch, segment=4, stop_at_eos=False, max_new_tokens=max_new)
    _same(eager, got)
    assert replays == [(0, 4), (4, 8)]  # 10 tokens: fed 0..8, the last one (8) without a graph
    assert set(got.decode_paths) == {f"graph/{model.hf.config._attn_implementation}"}


def test_a_model_split_over_devices_decodes_eagerly():
    """Each layer of a split model keeps its cache on its own device: one device-side slot cannot serve them."""
    import torch
    from transformers.cache_utils import DynamicCache

    class FakeHF:
        config = type("C", (), {"_attn_implementation": "sdpa", "sliding_window": None})()

    cache = DynamicCache()
    for layer, dev in enumerate(["cpu", "cpu", "meta", "meta"]):
        cache.update(torch.zeros(2, 4, 5, 8, device=dev), torch.zeros(2, 4, 5, 8, device=dev), layer)
    assert not decode.static_ok(FakeHF(), cache, 20)
    one = DynamicCache()
    for layer in range(4):
        one.update(torch.zeros(2, 4, 5, 8), torch.zeros(2, 4, 5, 8), layer)
    assert decode.static_ok(FakeHF(), one, 20)


@pytest.fixture
def fast_attention(monkeypatch):
    """A model switched to ``transferlab_sdpa`` for one test (the session's models are shared)."""
    from transferlab.engine.fastpath import use_fast_attention

    def switch(model):
        monkeypatch.setattr(model.hf.config, "_attn_implementation", model.hf.config._attn_implementation)
        for sub in model.hf.modules():  # transformers keeps a copy of the choice on every sub-config it built
            cfg = getattr(sub, "config", None)
            if cfg is not None and cfg is not model.hf.config and hasattr(cfg, "_attn_implementation"):
                monkeypatch.setattr(cfg, "_attn_implementation", cfg._attn_implementation)
        assert use_fast_attention(model.hf)
        return model

    return switch


def _tables_reference(query, key, value, block_mask, scale, enable_gqa, kernel_options):
    """Attention as the CUDA kernel reads it: only the visited blocks (the block tables, which CPU FlexAttention
    ignores), and inside them the element mask; computed with plain SDPA."""
    from transferlab.engine import ragged

    B, Hq, _, d = query.shape
    slots = key.shape[2]
    visited = block_mask.to_dense()[:, 0, 0, :].bool().repeat_interleave(ragged.BLOCK, dim=1)[:, :slots]
    zero = torch.zeros((), dtype=torch.long)
    element = block_mask.mask_mod(torch.arange(B)[:, None], zero, zero, torch.arange(slots)[None, :])
    group = Hq // key.shape[1]
    k, v = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    mask = (visited & element)[:, None, None, :]
    return torch.nn.functional.scaled_dot_product_attention(query, k, v, attn_mask=mask, scale=scale)


@pytest.mark.parametrize("kernel", ["flex", "tables"])
@pytest.mark.parametrize("block", [4, 32])
@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "phi3"])
def test_ragged_attention_equals_eager(tiny_models, monkeypatch, fast_attention, family, block, kernel):
    """Static decode attending raggedly gives the eager loop's tokens, log-mass and audit; the ragged path
    really ran. ``flex``: FlexAttention uncompiled (CPU). ``tables``: a reference that reads only the blocks the
    block tables list, as the CUDA kernel does, so tables the loop fails to advance cannot pass. Blocks of 4
    slots: short rows skip blocks of left padding, and every few steps a new block opens."""
    from transferlab.engine import ragged

    monkeypatch.setattr(ragged, "BLOCK", block)
    if kernel == "tables":
        monkeypatch.setattr(ragged, "_kernel", lambda device: _tables_reference)
    model = fast_attention(tiny_models(family))
    eager, _ = _run(model, "eager", monkeypatch, stop_at_eos=False, max_new_tokens=12)
    monkeypatch.setenv("TRANSFERLAB_DECODE_ATTENTION", "ragged")
    calls = _count_calls(monkeypatch, ragged, "attend")
    static, n = _run(model, "static", monkeypatch, stop_at_eos=False, max_new_tokens=12)
    assert n == 1 and calls[0] == 11 * model.hf.config.num_hidden_layers  # every fed token, every layer
    _same(eager, static)
    assert set(static.decode_paths) == {"static/ragged"}


def test_a_ragged_kernel_that_fails_falls_back_to_sdpa(tiny_models, monkeypatch, fast_attention):
    """A kernel that cannot compile (or run) for a shape: a warning, then SDPA over the same mask; same tokens."""
    from transferlab.engine import ragged

    def broken(device):
        def fail(*args, **kwargs):
            raise RuntimeError("no kernel for this shape")

        return fail

    model = fast_attention(tiny_models("mistral"))
    eager, _ = _run(model, "eager", monkeypatch, stop_at_eos=False, max_new_tokens=12)
    monkeypatch.setenv("TRANSFERLAB_DECODE_ATTENTION", "ragged")
    real_kernel = ragged._kernel
    monkeypatch.setattr(ragged, "_kernel", broken)
    monkeypatch.setattr(ragged, "_failed", set())
    monkeypatch.setattr(ragged, "_ready", set())
    with pytest.warns(RuntimeWarning, match="no kernel for this shape.*decodes with SDPA over the same mask"):
        static, n = _run(model, "static", monkeypatch, stop_at_eos=False, max_new_tokens=12)
    assert n == 1 and ragged._failed
    _same(eager, static)
    assert set(static.decode_paths) == {"static/ragged-fallback"}  # the rows say which kernel made them
    again, _ = _run(model, "static", monkeypatch, stop_at_eos=False, max_new_tokens=12)  # the shape failed before
    assert set(again.decode_paths) == {"static/ragged-fallback"}
    monkeypatch.setattr(ragged, "_kernel", real_kernel)  # a working kernel again: a later loop is labelled by
    monkeypatch.setattr(ragged, "_failed", set())  # its own calls, not by the fallbacks counted before it
    working, _ = _run(model, "static", monkeypatch, stop_at_eos=False, max_new_tokens=12)
    assert set(working.decode_paths) == {"static/ragged"}


def test_when_the_loop_attends_raggedly(monkeypatch):
    """Ragged only under transferlab_sdpa, for plain softmax attention, and only where the padded cache still fits
    the sliding window: otherwise the static loop keeps masked SDPA over its exact width."""
    from transformers.cache_utils import DynamicCache

    from transferlab.engine import ragged

    monkeypatch.setenv("TRANSFERLAB_DECODE_ATTENTION", "ragged")

    def hf(impl="transferlab_sdpa", window=None, softcap=None):
        cfg = type("C", (), {"_attn_implementation": impl, "sliding_window": window, "num_attention_heads": 4})()
        cfg.attn_logit_softcapping = softcap
        return type("HF", (), {"config": cfg})()

    cache = DynamicCache()
    for layer in range(2):
        cache.update(torch.zeros(2, 2, 5, 8), torch.zeros(2, 2, 5, 8), layer)
    state = decode.DecodeState(*([None] * 9))
    state.cache = cache
    wide = ragged.padded(20)
    assert decode._ragged(hf(), state, wide)
    assert not decode._ragged(hf(impl="sdpa"), state, wide)  # plain SDPA cannot take a block mask
    assert not decode._ragged(hf(softcap=30.0), state, wide)  # soft-capped logits: not plain softmax
    # the loop's choice: 5 prompt slots + 15 fed tokens = 20 slots, 32 padded to whole blocks
    seen = []
    monkeypatch.setattr(decode, "_static", lambda *a, **k: seen.append((k["rag"], k["total"])))
    state.logits, state.attn = torch.zeros(2, 10), torch.ones(2, 5)
    for model in (hf(), hf(window=24), hf(window=40)):  # a window between 20 and 32: masked SDPA over 20 slots
        decode.run(model, None, None, state, 16, False, None, 0, how="static")
    assert seen == [(True, wide), (False, 20), (True, wide)]
