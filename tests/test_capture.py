"""Capture: padding invariance, independent references, the BOS rule, and hook hygiene."""

from __future__ import annotations

import pytest
import torch
from conftest import LONG, PROMPT, SHORT, SITES, all_hooks_removed, hook_snapshot

from transferlab import capture, load_model
from transferlab.engine.batching import left_pad
from transferlab.engine.capture import forward_capture
from transferlab.hooks import hooked
from transferlab.models.tiny import build_tiny
from transferlab.sites import HookPoint, SiteError

TOL = 1e-5


def _all_points(model) -> list[str]:
    return [f"{s}@{layer}" for s in SITES for layer in range(model.n_layers)]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def _reference_forward(model, ids: list[int], taps: dict[str, tuple[torch.nn.Module, slice | None]]):
    """One unpadded forward of ``ids`` with hand-registered hooks; returns {name: [T, W]}."""
    out: dict[str, torch.Tensor] = {}
    handles = []
    for name, (module, sl) in taps.items():

        def hook(mod, args, output, name=name, sl=sl):
            y = output[0] if isinstance(output, tuple) else output
            out[name] = (y if sl is None else y[..., sl])[0].detach().clone()

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            res = model.hf(input_ids=torch.tensor([ids]), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return out, res


def _qkv_taps(model, layer: int) -> dict:
    """q/k/v modules (and slices) at ``layer``, from the HF config, not from our adapter."""
    cfg = model.hf.config
    attn = model.hf.model.layers[layer].self_attn
    if hasattr(attn, "qkv_proj"):
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        q_w = cfg.num_attention_heads * head_dim
        kv_w = cfg.num_key_value_heads * head_dim
        return {
            "q_proj": (attn.qkv_proj, slice(0, q_w)),
            "k_proj": (attn.qkv_proj, slice(q_w, q_w + kv_w)),
            "v_proj": (attn.qkv_proj, slice(q_w + kv_w, q_w + 2 * kv_w)),
        }
    return {s: (getattr(attn, s), None) for s in ("q_proj", "k_proj", "v_proj")}


# --------------------------------------------------------------------------- padding invariance


@pytest.mark.parametrize("window", [None, 4])
def test_capture_is_padding_invariant(tiny, window):
    points = _all_points(tiny) + ["kv"]
    alone = capture(tiny, [PROMPT], sites=points, window=window)
    batch = capture(tiny, [LONG, PROMPT, SHORT], sites=points, window=window)
    n = len(alone.token_ids[0])
    assert len(batch.token_ids[0]) > n > len(batch.token_ids[2])  # PROMPT and SHORT are left-padded
    for p in _all_points(tiny):
        a, b = alone[p][0], batch[p][1]
        assert a.shape[0] == (n if window is None else window)
        assert _max_diff(a, b) <= TOL, (tiny.name, p, window)
    assert len(alone.kv[0]) == tiny.n_layers
    for layer in range(tiny.n_layers):
        for j, what in enumerate(("keys", "values")):
            a, b = alone.kv[0][layer][j], batch.kv[1][layer][j]
            assert a.shape == (tiny.adapter.n_kv_heads, n if window is None else window, tiny.adapter.head_dim)
            assert _max_diff(a, b) <= TOL, (tiny.name, layer, what, window)
    assert torch.equal(alone.positions[0], batch.positions[1])


def test_padding_invariance_on_embedded_model_float64():
    """The trained model has activations up to ~10, where float32 batch-shape noise reaches
    ~1e-5; in float64 any real padding leak would stand out against ~1e-14 of noise."""
    model = load_model(device="cpu")
    model.hf.double()
    points = _all_points(model) + ["kv"]
    alone = [capture(model, [p], sites=points, window=8) for p in (LONG, PROMPT, SHORT)]
    batch = capture(model, [LONG, PROMPT, SHORT], sites=points, window=8)
    for i, a in enumerate(alone):
        for p in _all_points(model):
            assert a[p][0].dtype == torch.float64
            assert (a[p][0] - batch[p][i]).abs().max().item() <= 1e-10, (p, i)
        for layer in range(model.n_layers):
            for j in range(2):
                assert (a.kv[0][layer][j] - batch.kv[i][layer][j]).abs().max().item() <= 1e-10


def test_batch_size_chunks_give_the_same_result(tiny_models):
    m = tiny_models("llama")
    prompts = [LONG, PROMPT, SHORT, "The cat sat"]
    one = capture(m, prompts, sites=["v_proj@1", "resid_post@-1"], batch_size=8)
    chunked = capture(m, prompts, sites=["v_proj@1", "resid_post@-1"], batch_size=3)
    for p in ("v_proj@1", "resid_post@3"):
        for i in range(len(prompts)):
            assert _max_diff(one[p][i], chunked[p][i]) <= TOL
    assert one.token_ids == chunked.token_ids and one.has_bos == chunked.has_bos


# --------------------------------------------------------------------------- independent references


def test_qkv_capture_equals_hand_registered_hook(tiny):
    """v_proj (and q/k) against our own hook on the module (phi3: our own qkv_proj slicing)."""
    points = [f"{s}@{layer}" for s in ("q_proj", "k_proj", "v_proj") for layer in range(tiny.n_layers)]
    acts = capture(tiny, [LONG, PROMPT], sites=points)  # PROMPT is left-padded
    taps = {f"{s}@{layer}": t for layer in range(tiny.n_layers) for s, t in _qkv_taps(tiny, layer).items()}
    ref, _ = _reference_forward(tiny, acts.token_ids[1], taps)
    for p in points:
        assert ref[p].shape[-1] == (64 if p.startswith("q_proj") else 32)
        assert _max_diff(acts[p][1], ref[p]) <= TOL, (tiny.name, p)


def test_v_proj_capture_on_embedded_equals_hook(stories):
    acts = capture(stories, [LONG, PROMPT], sites=[f"v_proj@{layer}" for layer in range(5)])
    taps = {f"v_proj@{layer}": (stories.hf.model.layers[layer].self_attn.v_proj, None) for layer in range(5)}
    ref, _ = _reference_forward(stories, acts.token_ids[1], taps)
    for p in taps:
        assert _max_diff(acts[p][1], ref[p]) <= TOL


def test_resid_equals_output_hidden_states(tiny):
    """resid_pre@L == hidden_states[L]; resid_post@L == hidden_states[L+1] for L < n_layers-1.

    HF's last hidden state is taken after the final norm, so for the last layer we
    compare norm(resid_post@last) with it instead.
    """
    n = tiny.n_layers
    points = [f"resid_pre@{layer}" for layer in range(n)] + [f"resid_post@{layer}" for layer in range(n)]
    acts = capture(tiny, [LONG, PROMPT], sites=points)
    _, res = _reference_forward(tiny, acts.token_ids[1], {})
    hs = res.hidden_states
    assert len(hs) == n + 1
    for layer in range(n):
        assert _max_diff(acts[f"resid_pre@{layer}"][1], hs[layer][0]) <= TOL, layer
    for layer in range(n - 1):
        assert _max_diff(acts[f"resid_post@{layer}"][1], hs[layer + 1][0]) <= TOL, layer
    with torch.no_grad():
        normed = tiny.hf.model.norm(acts[f"resid_post@{n - 1}"][1])
    assert _max_diff(normed, hs[n][0]) <= TOL


def test_attn_out_and_mlp_out_sum_to_the_residual_update(tiny):
    """resid_post = resid_pre + attn_out + mlp_out (Gemma-2/3: each through its post-norm)."""
    points = [
        f"{s}@{layer}" for s in ("resid_pre", "resid_post", "attn_out", "mlp_out") for layer in range(tiny.n_layers)
    ]
    acts = capture(tiny, [PROMPT, LONG], sites=points)
    for layer in range(tiny.n_layers):
        pre, post = acts[f"resid_pre@{layer}"][0], acts[f"resid_post@{layer}"][0]
        attn, mlp = acts[f"attn_out@{layer}"][0], acts[f"mlp_out@{layer}"][0]
        block = tiny.hf.model.layers[layer]
        if hasattr(block, "post_feedforward_layernorm"):  # Gemma-2/3's sandwich norms
            with torch.no_grad():
                attn, mlp = block.post_attention_layernorm(attn), block.post_feedforward_layernorm(mlp)
        assert _max_diff(pre + attn + mlp, post) <= 1e-4, (tiny.name, layer)


def test_kv_values_are_v_proj_split_into_heads(tiny):
    """Cached values are v_proj (no RoPE on V) split into [n_kv_heads, T, head_dim]."""
    a = tiny.adapter
    acts = capture(tiny, [PROMPT, LONG], sites=["kv"] + [f"v_proj@{layer}" for layer in range(a.n_layers)])
    for i in range(2):
        for layer in range(a.n_layers):
            v = acts[f"v_proj@{layer}"][i]
            heads = v.reshape(v.shape[0], a.n_kv_heads, a.head_dim).transpose(0, 1)
            assert _max_diff(acts.kv[i][layer][1], heads) <= TOL


# --------------------------------------------------------------------------- BOS rule and positions


def test_without_window_bos_is_kept_and_positions_are_absolute(stories):
    acts = capture(stories, [LONG, PROMPT, SHORT], sites=["v_proj@0", "kv"])
    bos = stories.tokenizer.bos_token_id
    for i, ids in enumerate(acts.token_ids):
        assert ids[0] == bos and acts.has_bos[i]
        assert acts["v_proj@0"][i].shape[0] == len(ids)
        assert acts.kv[i][0][0].shape[1] == len(ids)
        assert acts.positions[i].tolist() == list(range(len(ids)))  # even for left-padded rows
        assert acts.n_tokens(i) == len(ids) - 1


def test_window_never_includes_bos(stories):
    acts = capture(stories, [LONG, PROMPT, SHORT], sites=["v_proj@0"], window=5)
    assert acts.window == 5
    for i, ids in enumerate(acts.token_ids):
        n = len(ids)
        kept = min(5, n - 1)
        assert acts["v_proj@0"][i].shape[0] == kept
        assert acts.positions[i].tolist() == list(range(n - kept, n))
        assert 0 not in acts.positions[i].tolist()  # position 0 is BOS


def test_window_longer_than_prompt_keeps_all_but_bos(stories):
    full = capture(stories, [PROMPT], sites=["v_proj@2"])
    win = capture(stories, [PROMPT], sites=["v_proj@2"], window=100)
    n = len(full.token_ids[0])
    assert win["v_proj@2"][0].shape[0] == n - 1
    assert torch.equal(win["v_proj@2"][0], full["v_proj@2"][0][1:])
    assert win.positions[0].tolist() == list(range(1, n))


def test_window_keeps_the_last_tokens(stories):
    full = capture(stories, [LONG], sites=["resid_post@1"])
    win = capture(stories, [LONG], sites=["resid_post@1"], window=3)
    assert torch.equal(win["resid_post@1"][0], full["resid_post@1"][0][-3:])


def test_left_pad_positions_count_only_real_tokens():
    batch = left_pad([[1, 5, 6, 7], [1, 9]], pad_id=2, bos_id=1)
    assert batch.input_ids.tolist() == [[1, 5, 6, 7], [2, 2, 1, 9]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3], [0, 0, 0, 1]]
    assert batch.lengths == [4, 2] and batch.has_bos == [True, True]
    assert left_pad([[5, 6]], pad_id=2, bos_id=1).has_bos == [False]


# --------------------------------------------------------------------------- API details and errors


def test_sites_may_be_a_single_string_or_hook_point(tiny_models):
    m = tiny_models("llama")
    a = capture(m, [PROMPT], sites="v_proj@1")
    b = capture(m, [PROMPT], sites=HookPoint("v_proj", 1))
    c = m.capture(PROMPT, sites=["v_proj@1"])
    assert list(a.points) == list(b.points) == ["v_proj@1"]
    assert torch.equal(a["v_proj@1"][0], c["v_proj@1"][0])


def test_default_site_is_last_layer_v_proj_and_aliases_resolve(tiny_models):
    m = tiny_models("llama")
    acts = m.capture([PROMPT])
    assert list(acts.points) == ["v_proj@3"]
    assert acts["v_proj@-1"] is acts["v_proj@3"] and acts[HookPoint("v_proj", 3)] is acts["v_proj@3"]
    with pytest.raises(KeyError, match="'v_proj@0' was not captured; captured: v_proj@3"):
        acts["v_proj@0"]
    assert acts.kv is None


def test_duplicate_points_are_captured_once(tiny_models):
    acts = capture(tiny_models("llama"), [PROMPT], sites=["v_proj@3", "v_proj@-1", "v_proj@0.99"])
    assert list(acts.points) == ["v_proj@3"]


@pytest.mark.parametrize(
    "sites, match",
    [
        (["v_proj@4"], "layer 4 does not exist: the model has 4 layers"),
        (["values@1"], "unknown site 'values'"),
        (["v_proj"], "must be written site@layer"),
        (["v_proj@1.0"], "fraction of depth"),
    ],
)
def test_capture_bad_sites(tiny_models, sites, match):
    with pytest.raises(SiteError, match=match):
        capture(tiny_models("llama"), [PROMPT], sites=sites)


def test_capture_bad_window(tiny_models):
    with pytest.raises(ValueError, match="window must be a positive number of tokens, got 0"):
        capture(tiny_models("llama"), [PROMPT], window=0)


# --------------------------------------------------------------------------- hooks hygiene


def test_hooks_removed_after_capture(tiny):
    before = hook_snapshot(tiny.hf)  # may hold transformers' own output-capturing hooks
    capture(tiny, [PROMPT, SHORT], sites=_all_points(tiny) + ["kv"])
    assert hook_snapshot(tiny.hf) == before
    fresh = build_tiny(tiny.adapter.family)
    capture(fresh, [PROMPT, SHORT], sites=_all_points(fresh) + ["kv"])
    assert all_hooks_removed(fresh.hf)


def test_transformers_own_hooks_are_not_transferlab_hooks():
    """Guard for the conftest helper: HF's output-capturing hooks are ignored, ours are not."""
    m = build_tiny("llama")
    with torch.no_grad():
        m.hf(input_ids=torch.tensor([[1, 5, 6]]), output_hidden_states=True)
    assert all_hooks_removed(m.hf, strict=False)
    with hooked([(m.adapter.handle(HookPoint("v_proj", 0)), lambda x: None)]):
        assert not all_hooks_removed(m.hf, strict=False)
    assert all_hooks_removed(m.hf, strict=False)


def test_hooks_removed_when_forward_raises_on_bad_input():
    m = build_tiny("phi3")
    batch = left_pad([[1, 5, 10_000]], pad_id=2, bos_id=1)  # id outside the 512-token vocabulary
    points = [HookPoint(s, layer) for s in SITES for layer in range(m.n_layers)]
    with pytest.raises(IndexError):
        forward_capture(m, batch, points, want_kv=True)
    assert all_hooks_removed(m.hf)


def test_hooks_removed_when_a_layer_raises_mid_forward(monkeypatch):
    m = build_tiny("llama")
    fired = []

    def boom(*args, **kwargs):
        fired.append(True)
        raise RuntimeError("boom in layer 2")

    monkeypatch.setattr(m.hf.model.layers[2].mlp, "forward", boom)
    with pytest.raises(RuntimeError, match="boom in layer 2"):
        capture(m, [PROMPT, SHORT], sites=_all_points(m) + ["kv"])
    assert fired and all_hooks_removed(m.hf)


def test_hooked_removes_hooks_when_the_body_raises():
    m = build_tiny("mixtral")
    handle = m.adapter.handle(HookPoint("mlp_out", 0))
    with pytest.raises(ZeroDivisionError):
        with hooked([(handle, lambda x: None), (m.adapter.handle(HookPoint("resid_pre", 1)), lambda x: None)]):
            assert not all_hooks_removed(m.hf)
            1 / 0
    assert all_hooks_removed(m.hf)


# --------------------------------------------------------------------------- hooks on toy modules


class _TupleOut(torch.nn.Module):
    """Returns (hidden, extra) like older decoder layers; reads hidden_states by keyword."""

    def forward(self, hidden_states, scale=1.0):
        return hidden_states * scale, torch.zeros(1)


def test_hooks_read_and_write_tuple_outputs_and_keyword_inputs():
    from transferlab.hooks import add_hook
    from transferlab.models.adapters import SiteHandle

    mod, x = _TupleOut(), torch.arange(12.0).reshape(1, 3, 4)
    seen = {}
    with hooked([(SiteHandle(mod, "output"), lambda t: seen.setdefault("out", t.clone()))]):
        mod(x, scale=2.0)
    assert torch.equal(seen["out"], 2 * x)  # the hidden part of the tuple, not the extra
    with hooked([(SiteHandle(mod, "output"), lambda t: t + 1)]):
        out, extra = mod(x)
    assert torch.equal(out, x + 1) and torch.equal(extra, torch.zeros(1))
    # input hooks: positional and keyword hidden_states
    for call in (lambda: mod(x), lambda: mod(hidden_states=x)):
        h = add_hook(SiteHandle(mod, "input"), lambda t: -t)
        try:
            assert torch.equal(call()[0], -x)
        finally:
            h.remove()
    assert all_hooks_removed(mod)


def test_hook_on_a_fused_slice_writes_only_that_slice():
    from transferlab.models.adapters import SiteHandle

    lin = torch.nn.Linear(4, 10, bias=False)
    x = torch.randn(1, 2, 4)
    with torch.no_grad():
        plain = lin(x)
        with hooked([(SiteHandle(lin, "output", 6, 8), lambda t: torch.zeros_like(t))]):
            patched = lin(x)
    assert torch.equal(patched[..., 6:8], torch.zeros(1, 2, 2))
    assert torch.equal(patched[..., :6], plain[..., :6]) and torch.equal(patched[..., 8:], plain[..., 8:])


def test_pad_id_of():
    from types import SimpleNamespace

    from transferlab.engine.batching import pad_id_of

    assert pad_id_of(SimpleNamespace(pad_token_id=7, eos_token_id=2)) == 7
    assert pad_id_of(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
    assert pad_id_of(SimpleNamespace(pad_token_id=-1, eos_token_id=None, unk_token_id=0)) == 0
    assert pad_id_of(SimpleNamespace()) == 0
