"""Shared q/k/v products (transferlab.engine.shared) compute what three separate projections compute.

Each test builds the same tiny model twice (same seed), shares the projections
of one, and compares the two: logits, greedy tokens under a plan that splices
and patches ``v_proj``, captured q/k/v activations, hook calls, and what
happens after a weight is edited in place or replaced, under a pre-hook, and
with gradients. The RoPE launcher for private products is checked against the
model family's own RoPE through a stand-in for Liger's kernel that honours the
kernel's documented arguments (no Triton here).
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from conftest import LONG, PROMPT, STORY

from transferlab.engine import liger, shared
from transferlab.engine.capture import capture
from transferlab.engine.fused import _rope
from transferlab.models.loading import load_model

IDS = torch.tensor([[1, 5, 9, 22, 7, 3, 40, 2], [1, 8, 8, 31, 4, 6, 12, 90]])
SHARING = ["llama", "mistral", "qwen2", "gemma2", "mixtral", "gemma3"]


def _pair(family):
    """The same tiny model twice: one left apart, one shared (and how many layers share)."""
    apart, joined = load_model(f"tiny:{family}", fuse=False), load_model(f"tiny:{family}", fuse=False)
    return apart, joined, shared.share_projections(joined)


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model.hf(ids).logits


def _close(a, b):
    """Equal up to float32 rounding, relative to the values' scale (the stacked product sums in another order)."""
    return bool((a - b).abs().max() <= 1e-5 * b.abs().max().clamp(min=1.0))


@pytest.mark.parametrize("family", SHARING)
def test_a_shared_model_computes_what_the_model_computed(family):
    apart, joined, n = _pair(family)
    assert n == apart.n_layers
    assert _close(_logits(joined), _logits(apart))
    kw = dict(
        sources=[STORY, None], plan=["kv:all + v_proj@0.5:decode", ""], max_new_tokens=8, greedy=True, batch_size=2
    )
    want = apart.generate([PROMPT, LONG], **kw)
    got = joined.generate([PROMPT, LONG], **kw)
    assert got.token_ids == want.token_ids
    assert got.audit.equals(want.audit)


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_the_static_loop_attending_raggedly_over_shared_projections(family, monkeypatch):
    """The decode path the GPU takes (static buffers, ragged attention through ``transferlab_sdpa``), whose
    queries and keys are now columns of one product, gives the separate projections' eager tokens."""
    from transferlab.engine import ragged
    from transferlab.engine.fastpath import use_fast_attention

    apart, joined, _ = _pair(family)
    kw = dict(sources=[STORY, None], plan=["kv:all + v_proj@0.5:decode", ""], max_new_tokens=8, greedy=True)
    want = apart.generate([PROMPT, LONG], batch_size=2, **kw)
    assert use_fast_attention(joined.hf)
    monkeypatch.setenv("TRANSFERLAB_DECODE", "static")
    monkeypatch.setenv("TRANSFERLAB_DECODE_ATTENTION", "ragged")
    calls = []
    real = ragged.attend
    monkeypatch.setattr(ragged, "attend", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = joined.generate([PROMPT, LONG], batch_size=2, **kw)
    assert calls and got.token_ids == want.token_ids


def test_phi3_keeps_its_own_fused_projection():
    model = load_model("tiny:phi3", fuse=False)
    assert shared.share_projections(model) == 0
    assert "forward" not in vars(model.hf.model.layers[0].self_attn.qkv_proj)


def test_the_weights_are_views_of_the_stacked_weight_and_nothing_is_shared_twice():
    _, joined, _ = _pair("qwen2")  # q/k/v biases: stacked too
    attn = joined.hf.model.layers[0].self_attn
    product = attn._transferlab_shared
    base = product.weight.untyped_storage().data_ptr()
    for name in shared.NAMES:
        mod = getattr(attn, name)
        assert mod.weight.untyped_storage().data_ptr() == base
        assert mod.bias.untyped_storage().data_ptr() == product.bias.untyped_storage().data_ptr()
    assert shared.share_projections(joined) == 0


def test_captures_and_hooks_see_the_same_projections():
    apart, joined, _ = _pair("mistral")
    sites = ["q_proj@1", "k_proj@1", "v_proj@0"]
    a, b = capture(apart, [PROMPT, LONG], sites), capture(joined, [PROMPT, LONG], sites)
    for site in a.points:
        for x, y in zip(a.points[site], b.points[site]):
            assert _close(y, x)
    calls = {"apart": [], "joined": []}
    handles = []
    for key, model in (("apart", apart), ("joined", joined)):
        for name in shared.NAMES:
            mod = getattr(model.hf.model.layers[1].self_attn, name)
            handles.append(mod.register_forward_hook(lambda m, i, o, k=key, n=name: calls[k].append((n, o.shape))))
    try:
        _logits(apart), _logits(joined)
    finally:
        for h in handles:
            h.remove()
    assert calls["joined"] == calls["apart"] and len(calls["apart"]) == 3


def test_a_hook_that_edits_its_output_in_place_touches_its_own_columns_only():
    apart, joined, _ = _pair("llama")

    def zero(m, i, o):
        o.mul_(0)

    for model in (apart, joined):
        model.hf.model.layers[0].self_attn.v_proj.register_forward_hook(zero)
    try:
        assert _close(_logits(joined), _logits(apart))
    finally:
        for model in (apart, joined):
            model.hf.model.layers[0].self_attn.v_proj._forward_hooks.clear()


def test_a_weight_edited_in_place_or_replaced_is_used():
    apart, joined, _ = _pair("mistral")
    for model in (apart, joined):
        with torch.no_grad():
            model.hf.model.layers[0].self_attn.k_proj.weight[:3] = 0  # in place: the stacked weight sees it
    assert _close(_logits(joined), _logits(apart))
    new = torch.nn.Parameter(torch.randn_like(apart.hf.model.layers[1].self_attn.q_proj.weight))
    for model in (apart, joined):
        model.hf.model.layers[1].self_attn.q_proj.weight = torch.nn.Parameter(new.detach().clone())
    assert _close(_logits(joined), _logits(apart))
    assert not _close(_logits(joined), _logits(load_model("tiny:mistral", fuse=False)))  # the edits did change it


def test_a_pre_hook_that_changes_the_input_is_honoured():
    """In place, so that the input keeps its identity (a replaced input computes anew anyway); in the model
    left apart ``v_proj`` then reads the doubled input too."""
    apart, joined, _ = _pair("llama")

    def double(m, args):
        args[0].mul_(2)

    handles = [m.hf.model.layers[0].self_attn.k_proj.register_forward_pre_hook(double) for m in (apart, joined)]
    try:
        assert _close(_logits(joined), _logits(apart))
    finally:
        for h in handles:
            h.remove()


def test_gradients_reach_the_projection_weights():
    apart, joined, _ = _pair("llama")
    grads = []
    for model in (apart, joined):
        model.hf.zero_grad()
        model.hf(IDS).logits.sum().backward()
        grads.append(model.hf.model.layers[0].self_attn.v_proj.weight.grad)
    assert grads[1] is not None and _close(grads[1], grads[0])


def test_a_projection_called_again_with_the_same_input_computes_anew():
    _, joined, _ = _pair("mistral")
    q = joined.hf.model.layers[0].self_attn.q_proj
    x = torch.randn(2, 3, joined.adapter.hidden_size)
    with torch.no_grad():
        first = q(x).clone()
        q.weight.mul_(2)  # between two calls of the same module: its columns of the held product are stale
        assert _close(q(x), 2 * first)


def test_nothing_is_held_between_forwards():
    _, joined, _ = _pair("mistral")
    _logits(joined)
    for block in joined.hf.model.layers:
        product = block.self_attn._transferlab_shared
        assert product._x is None and product._y is None


def _qk(model, x):
    """A layer's query and key as its attention shapes them ([B, H, T, d]), taken from shared products."""
    attn = model.hf.model.layers[0].self_attn
    B, T, _ = x.shape
    d = model.adapter.head_dim
    q = attn.q_proj(x).view(B, T, -1, d).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, -1, d).transpose(1, 2)
    attn.v_proj(x)
    return q, k


def test_a_product_is_private_only_while_no_hook_can_hold_its_query_or_key():
    _, joined, _ = _pair("mistral")
    x = torch.randn(2, 3, joined.adapter.hidden_size)
    with torch.no_grad():
        assert shared.private(*_qk(joined, x))
        h = joined.hf.model.layers[0].self_attn.k_proj.register_forward_hook(lambda m, i, o: None)
        try:
            assert not shared.private(*_qk(joined, x))
        finally:
            h.remove()
        g = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
        try:
            assert not shared.private(*_qk(joined, x))
        finally:
            g.remove()
        q = torch.randn(2, 4, 3, 8)
        assert not shared.private(q, q.clone())  # tensors of no shared product


class _Kernel:
    """Stands in for Liger's ``_triton_rope``: rotates, in place, the rows its arguments describe."""

    launches = 0

    def __getitem__(self, grid):
        def launch(q, q_row, k, k_row, cos, cos_row, sin, sin_row, sl, bs, cos_bs, nqh, nkh, hd, *pads, **kw):
            rd = pads[-1]
            assert not kw.get("BACKWARD_PASS") and grid == (bs * sl,)
            _Kernel.launches += 1
            for x, row, heads in ((q, q_row, nqh), (k, k_row, nkh)):
                rows = torch.as_strided(x, (bs * sl, heads, hd), (row, hd, 1), x.storage_offset())
                for pid in range(bs * sl):
                    c = cos.reshape(-1, rd)[(pid // sl) * sl * (cos_bs > 1) + pid % sl]
                    s = sin.reshape(-1, rd)[(pid // sl) * sl * (cos_bs > 1) + pid % sl]
                    a, b = rows[pid, :, : rd // 2].clone(), rows[pid, :, rd // 2 : rd].clone()
                    rows[pid, :, : rd // 2] = a * c[: rd // 2] - b * s[: rd // 2]
                    rows[pid, :, rd // 2 : rd] = b * c[: rd // 2] + a * s[: rd // 2]

        return launch


@pytest.fixture
def fake_liger(monkeypatch):
    """``liger_kernel.ops.rope`` with the stand-in kernel, and a ``rope_forward`` that must not be reached."""

    def refuse(*a, **k):
        raise AssertionError("rope_forward copies; a private product must be rotated where it lies")

    mod = types.ModuleType("liger_kernel.ops.rope")
    mod._triton_rope, mod.rope_forward = _Kernel(), refuse
    for name in ("liger_kernel", "liger_kernel.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "liger_kernel.ops.rope", mod)
    monkeypatch.setattr(torch.cuda, "device", lambda d: __import__("contextlib").nullcontext())
    _Kernel.launches = 0
    return mod


@pytest.mark.parametrize("T", [1, 3])
def test_a_private_product_is_rotated_in_place_like_the_model_rotates(fake_liger, T):
    _, joined, _ = _pair("mistral")
    d = joined.adapter.head_dim
    x = torch.randn(2, T, joined.adapter.hidden_size)
    half = torch.randn(2, T, d // 2)
    cos, sin = torch.cat([half.cos()] * 2, -1), torch.cat([half.sin()] * 2, -1)
    with torch.no_grad():
        q, k = _qk(joined, x)
        want = _rope(q.clone(), k.clone(), cos, sin)
        got = liger.rope(q, k, cos, sin)
    assert _Kernel.launches == 1
    assert got[0] is q and got[1] is k  # rotated where they lie
    assert _close(got[0], want[0]) and _close(got[1], want[1])


def test_rows_are_found_only_for_evenly_spaced_runs_of_heads():
    x = torch.randn(2, 5, 4, 8)  # [B, T, H, d] contiguous, as a projection's output viewed per head
    assert liger._rows(x.transpose(1, 2)) == 32
    wide = torch.randn(2, 1, 48)[..., :32].view(2, 1, 4, 8)  # one shared product's columns, one position
    assert liger._rows(wide.transpose(1, 2)) == 48
    assert liger._rows(torch.randn(2, 4, 5, 8)) is None  # heads not adjacent in memory
    assert liger._rows(torch.randn(2, 5, 4, 16)[..., :8].transpose(1, 2)) is None  # gaps between heads
