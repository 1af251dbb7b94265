"""Activation interventions, observed at the module they edit.

A spy registers two plain forward hooks on the edited module inside the
engine's hook session: one that runs before the engine's hook (the activation
as the model computed it) and one after (what the model went on with). Every
check compares those against source activations recorded by a plain forward
of the source prompt, with no transferlab code involved.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from conftest import LONG, PROMPT, SHORT, STORY, STORY2
from engine_reference import proj_module

from transferlab.engine import steps as steps_mod
from transferlab.engine.generation import generate
from transferlab.interventions import InterventionError, Plan
from transferlab.sites import SiteError

pytestmark = pytest.mark.usefixtures("engine_single_thread", "engine_no_hooks_left")

N_NEW = 5
HD = 8  # tiny models: head_dim 8, 8 query heads, 4 kv heads


def _ids(model, text):
    return model.tokenizer(text)["input_ids"]


def _module(model, site, layer):
    if site in ("q_proj", "k_proj", "v_proj"):
        return proj_module(model.hf, layer, site)
    block = model.hf.model.layers[layer]
    if site == "resid_post":
        return block, None
    if site == "attn_out":
        return block.self_attn.o_proj, None
    raise ValueError(site)


def _out(o, sl):
    o = o[0] if isinstance(o, tuple) else o
    return (o if sl is None else o[..., sl]).detach().clone()


class Spy:
    """Before/after activations of one module for every forward inside generate's hook session."""

    def __init__(self, monkeypatch, model, site, layer):
        self.module, self.sl = _module(model, site, layer)
        self.before: list[torch.Tensor] = []
        self.after: list[torch.Tensor] = []
        real = steps_mod.hooked

        @contextlib.contextmanager
        def spying(pairs):
            with real(pairs):
                h1 = self.module.register_forward_hook(
                    lambda m, a, o: self.before.append(_out(o, self.sl)), prepend=True
                )
                h2 = self.module.register_forward_hook(lambda m, a, o: self.after.append(_out(o, self.sl)))
                try:
                    yield
                finally:
                    h1.remove()
                    h2.remove()

        monkeypatch.setattr(steps_mod, "hooked", spying)

    def prompt(self, which="after") -> torch.Tensor:
        """The prompt's activation [B, T, W] (corrected flavour: prefix call + last-token call)."""
        calls = getattr(self, which)
        return torch.cat(calls[:2], dim=1)

    def decode(self, which="after") -> list[torch.Tensor]:
        return getattr(self, which)[2:]


def plain_activation(model, text, site, layer) -> torch.Tensor:
    """[T, W] activation of an unpadded forward of ``text`` (plain HF + a forward hook)."""
    module, sl = _module(model, site, layer)
    store = []
    h = module.register_forward_hook(lambda m, a, o: store.append(_out(o, sl)))
    try:
        with torch.no_grad():
            model.hf(input_ids=torch.tensor([_ids(model, text)]))
    finally:
        h.remove()
    return store[0][0]


def _run(model, target, source, plan, **kw):
    kw.setdefault("greedy", True)
    return generate(model, [target], sources=[source], plan=plan, max_new_tokens=N_NEW, stop_at_eos=False, **kw)


def _channels(heads):
    out = torch.zeros(32 if max(heads) < 4 else 64, dtype=torch.bool)
    for h in heads:
        out[h * HD : (h + 1) * HD] = True
    return out


# --------------------------------------------------------------------------- head patches


@pytest.mark.parametrize("family", ["llama", "phi3", "qwen2"])
@pytest.mark.parametrize(
    "site,opt,width,channels",
    [
        ("v_proj", "h1", 32, range(8, 16)),
        ("v_proj", "qh5", 32, range(16, 24)),  # query head 5 reads kv head 5 // 2 = 2
        ("k_proj", "qh0,1", 32, range(0, 8)),  # query heads 0 and 1 share kv head 0
        ("k_proj", "h0,3", 32, list(range(0, 8)) + list(range(24, 32))),
        ("q_proj", "h5", 64, range(40, 48)),  # on q_proj heads are query heads
        ("q_proj", "qh2", 64, range(16, 24)),
    ],
)
def test_head_patch_changes_only_its_channels(family, site, opt, width, channels, tiny_models, monkeypatch):
    model = tiny_models(family)
    spy = Spy(monkeypatch, model, site, 2)
    target, source = LONG, STORY  # source longer: the whole target (but BOS) receives the source's last tokens
    g = _run(model, target, source, f"{site}@2:{opt}:prompt")
    before, after = spy.prompt("before")[0], spy.prompt("after")[0]
    src = plain_activation(model, source, site, 2)
    T, S = before.shape[0], src.shape[0]
    assert before.shape[1] == width
    mask = torch.zeros(width, dtype=torch.bool)
    mask[list(channels)] = True
    assert torch.equal(after[:, ~mask], before[:, ~mask])  # other channels untouched, bit for bit
    assert torch.equal(after[0], before[0])  # BOS never written
    torch.testing.assert_close(after[1:, mask], src[S - T + 1 :, mask], atol=1e-5, rtol=0)
    assert (after[1:, mask] - before[1:, mask]).abs().max() > 1e-3
    row = g.audit.iloc[0]
    assert row.positions == T - 1 and row.fired_prompt == 2 and row.fired_decode == 0
    assert all(torch.equal(a, b) for a, b in zip(spy.decode("before"), spy.decode("after")))


def test_head_patch_at_decode_writes_source_last_token_heads(tiny_models, monkeypatch):
    model = tiny_models("mistral")
    spy = Spy(monkeypatch, model, "v_proj", 1)
    _run(model, PROMPT, STORY, "v_proj@1:h3:decode")
    src = plain_activation(model, STORY, "v_proj", 1)
    mask = _channels([3])
    assert torch.equal(spy.prompt("after"), spy.prompt("before"))
    assert len(spy.decode()) == N_NEW - 1
    for b, a in zip(spy.decode("before"), spy.decode("after")):
        assert torch.equal(a[0, 0, ~mask], b[0, 0, ~mask])
        torch.testing.assert_close(a[0, 0, mask], src[-1, mask], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- ablation


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_ablation_zeroes_only_its_target(family, tiny_models, monkeypatch):
    model = tiny_models(family)
    # heads
    spy = Spy(monkeypatch, model, "v_proj", 1)
    _run(model, PROMPT, None, "ablate:v_proj@1:h1,2")
    mask = _channels([1, 2])
    for b, a in zip(spy.before, spy.after):
        assert torch.equal(a[..., ~mask], b[..., ~mask])
    after, before = spy.prompt("after")[0], spy.prompt("before")[0]
    assert torch.equal(after[0], before[0])  # BOS kept
    assert (after[1:, mask] == 0).all()
    assert all((a[..., mask] == 0).all() for a in spy.decode())
    # whole site
    spy = Spy(monkeypatch, model, "resid_post", 2)
    _run(model, PROMPT, None, "ablate:resid_post@2:prompt")
    after, before = spy.prompt("after")[0], spy.prompt("before")[0]
    assert torch.equal(after[0], before[0]) and (after[1:] == 0).all()
    assert all(torch.equal(a, b) for a, b in zip(spy.decode("before"), spy.decode("after")))


def test_mean_ablation_writes_the_source_mean(tiny_models, monkeypatch):
    model = tiny_models("llama")
    spy = Spy(monkeypatch, model, "attn_out", 1)
    _run(model, PROMPT, STORY, "ablate:attn_out@1:mean")
    src = plain_activation(model, STORY, "attn_out", 1)
    mean = src[1:].mean(0)  # BOS excluded
    after = spy.prompt("after")[0]
    torch.testing.assert_close(after[1:], mean.expand_as(after[1:]), atol=1e-5, rtol=0)
    for a in spy.decode():
        torch.testing.assert_close(a[0, 0], mean, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- patch alignment and modes


def test_patch_alignments_and_modes(tiny_models, monkeypatch):
    model = tiny_models("llama")
    target, source = LONG, STORY
    src = plain_activation(model, source, "resid_post", 1)
    tgt = plain_activation(model, target, "resid_post", 1)
    T, S = tgt.shape[0], src.shape[0]
    nt, ns = T - 1, S - 1
    k_frac = math.ceil(0.5 * nt)
    cases = {
        "w4": {T - 4 + j: S - 4 + j for j in range(4)},
        "f0.5": {1 + j: 1 + j for j in range(k_frac)},
        "p2-5": {2: 2, 3: 3, 4: 4},
        "": {T - min(nt, ns) + j: S - min(nt, ns) + j for j in range(min(nt, ns))},
    }
    for opt, mapping in cases.items():
        spy = Spy(monkeypatch, model, "resid_post", 1)
        g = _run(model, target, source, "resid_post@1" + (f":{opt}" if opt else "") + ":prompt")
        after, before = spy.prompt("after")[0], spy.prompt("before")[0]
        torch.testing.assert_close(before, tgt, atol=1e-5, rtol=0)
        for p in range(T):
            if p in mapping:
                torch.testing.assert_close(after[p], src[mapping[p]], atol=1e-5, rtol=0)
            else:
                assert torch.equal(after[p], before[p]), (opt, p)
        assert g.audit.iloc[0].positions == len(mapping)
    for opt, fn in (("add:a0.5", lambda x, s: x + 0.5 * s), ("mix:a0.25", lambda x, s: 0.75 * x + 0.25 * s)):
        spy = Spy(monkeypatch, model, "resid_post", 1)
        _run(model, target, source, f"resid_post@1:w3:{opt}:prompt")
        after, before = spy.prompt("after")[0], spy.prompt("before")[0]
        torch.testing.assert_close(after[-3:], fn(before[-3:], src[-3:]), atol=1e-5, rtol=0)
        assert torch.equal(after[:-3], before[:-3])


def test_decode_values_last_mean_cycle(tiny_models, monkeypatch):
    model = tiny_models("qwen2")
    src = plain_activation(model, STORY2, "v_proj", 3)
    for opt, want in (
        ("last", lambda k: src[-1]),
        ("mean", lambda k: src[-4:].mean(0)),
        ("cycle", lambda k: src[-4:][k % 4]),
    ):
        spy = Spy(monkeypatch, model, "v_proj", 3)
        generate(
            model,
            [PROMPT],
            sources=[STORY2],
            plan=f"v_proj@3:w4:decode:{opt}",
            greedy=True,
            max_new_tokens=8,
            stop_at_eos=False,
        )
        dec = spy.decode()
        assert len(dec) == 7
        for k, a in enumerate(dec):
            torch.testing.assert_close(a[0, 0], want(k), atol=1e-5, rtol=0, msg=f"{opt} step {k}")


# --------------------------------------------------------------------------- noise


def _noise_rows(monkeypatch, model, targets, sources, plan, ids, **kw):
    spy = Spy(monkeypatch, model, "v_proj", 2)
    generate(
        model,
        targets,
        sources=sources,
        plan=plan,
        example_ids=ids,
        greedy=True,
        max_new_tokens=N_NEW,
        stop_at_eos=False,
        **kw,
    )
    return spy


def test_norm_matched_noise_has_the_source_norm(tiny_models, monkeypatch):
    model = tiny_models("llama")
    spy = _noise_rows(monkeypatch, model, [PROMPT], [STORY], "noise:v_proj@2:w3:both", ["a"])
    src = plain_activation(model, STORY, "v_proj", 2)
    after, before = spy.prompt("after")[0], spy.prompt("before")[0]
    assert torch.equal(after[:-3], before[:-3])
    torch.testing.assert_close(after[-3:].norm(dim=-1), src[-3:].norm(dim=-1), atol=1e-4, rtol=1e-5)
    cos = torch.nn.functional.cosine_similarity(after[-3:], src[-3:], dim=-1)
    assert (cos.abs() < 0.9).all()  # a different direction
    for a in spy.decode():  # decode: the norm of the source's last token
        torch.testing.assert_close(a[0, 0].norm(), src[-1].norm(), atol=1e-4, rtol=1e-5)


def test_raw_noise_is_not_norm_matched(tiny_models, monkeypatch):
    model = tiny_models("llama")
    spy = Spy(monkeypatch, model, "resid_post", 2)
    generate(
        model,
        [STORY],
        sources=[PROMPT],
        plan="noise:resid_post@2:w8:raw:sd2.0:prompt",
        greedy=True,
        max_new_tokens=2,
        stop_at_eos=False,
    )
    src = plain_activation(model, PROMPT, "resid_post", 2)
    after = spy.prompt("after")[0][-8:]
    var = after.pow(2).mean().item()
    assert 3.0 < var < 5.3  # N(0, 2^2): 512 draws
    assert abs(after.mean().item()) < 0.3
    assert not torch.allclose(after.norm(dim=-1), src[-8:].norm(dim=-1), rtol=0.05)


def test_noise_is_deterministic_per_seed_and_example(tiny_models, monkeypatch):
    model = tiny_models("llama")
    plan = "noise:v_proj@2:w3:prompt:seed5"

    def rows(targets, ids, plan=plan):
        spy = _noise_rows(monkeypatch, model, targets, [STORY] * len(targets), plan, ids)
        return spy.prompt("after")

    a = rows([PROMPT], ["x"])[0, -3:]
    assert torch.equal(rows([PROMPT], ["x"])[0, -3:], a)  # same seed, same id
    batch = rows([LONG, PROMPT, SHORT], ["y", "x", "z"])  # sorted by length inside: find PROMPT's row
    assert any(torch.allclose(batch[r, -3:], a, atol=1e-6) for r in range(3))
    b = rows([PROMPT], ["other"])[0, -3:]
    assert not torch.allclose(a, b)
    c = rows([PROMPT], ["x"], plan="noise:v_proj@2:w3:prompt:seed6")[0, -3:]
    assert not torch.allclose(a, c)


# --------------------------------------------------------------------------- bad inputs


def test_missing_source_is_a_clear_error(tiny_models):
    model = tiny_models("llama")
    for plan in ("kv:all", "v_proj@1", "noise:v_proj@1", "ablate:v_proj@1:mean"):
        with pytest.raises(InterventionError, match="needs a source prompt"):
            generate(model, [PROMPT], plan=plan, max_new_tokens=2)
    with pytest.raises(InterventionError, match="example 1: .*needs a source"):
        generate(model, [PROMPT, LONG], sources=[STORY, None], plan="kv:all", max_new_tokens=2)
    # plans that need no source run without one
    for plan in ("ablate:v_proj@1", "noise:v_proj@1:raw", None):
        generate(model, [PROMPT], plan=plan, max_new_tokens=2)


def test_window_longer_than_the_source(tiny_models):
    model = tiny_models("llama")
    with pytest.raises(InterventionError, match=r"window 20 is longer than the source \(2 tokens without BOS\)"):
        generate(model, [LONG], sources=[SHORT], plan="v_proj@1:w20", max_new_tokens=2)


def test_unknown_site_and_layer_out_of_range(tiny_models):
    model = tiny_models("llama")
    with pytest.raises(SiteError, match="unknown site 'foo'"):
        Plan.parse("foo@1")
    with pytest.raises(SiteError, match="unknown site 'kv'"):
        Plan.parse("kv@1")
    with pytest.raises(SiteError, match="the model has 4 layers"):
        generate(model, [PROMPT], sources=[STORY], plan="v_proj@9", max_new_tokens=2)
    with pytest.raises(SiteError, match="the model has 4 layers"):
        generate(model, [PROMPT], sources=[STORY], plan="kv:1,7", max_new_tokens=2)
    with pytest.raises(SiteError, match="the model has 4 layers"):
        generate(model, [PROMPT], plan="ablate:v_proj@-5", max_new_tokens=2)


def test_unknown_flavour_and_bad_sampling(tiny_models):
    model = tiny_models("llama")
    with pytest.raises(ValueError, match="flavour must be one of .*'corrected'.*'seed'"):
        generate(model, [PROMPT], flavour="original", max_new_tokens=2)
    for t in (0, 0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            generate(model, [PROMPT], temperature=t, max_new_tokens=2)
    generate(model, [PROMPT], temperature=0, greedy=True, max_new_tokens=2)  # greedy needs no temperature
    with pytest.raises(ValueError, match="top_p must lie in"):
        generate(model, [PROMPT], top_p=0.0, max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generate(model, [PROMPT], max_new_tokens=0)


def test_positions_out_of_range(tiny_models):
    model = tiny_models("llama")
    with pytest.raises(InterventionError, match="positions 2-40 run past the target"):
        generate(model, [PROMPT], sources=[STORY], plan="v_proj@1:p2-40", max_new_tokens=2)
    with pytest.raises(InterventionError, match="slots 2-40 run past the target prefix"):
        generate(model, [PROMPT], sources=[STORY], plan="kv:all:p2-40", max_new_tokens=2)
    with pytest.raises(InterventionError, match="0 <= start < stop"):
        Plan.parse("v_proj@1:p5-3")


def test_heads_out_of_range(tiny_models):
    model = tiny_models("llama")
    cases = [
        ("v_proj@1:h4", "key/value head 4 does not exist at v_proj: the model has 4 key/value heads"),
        ("v_proj@1:qh8", "query head 8 does not exist: the model has 8 query heads"),
        ("q_proj@1:h8", "query head 8 does not exist at q_proj: the model has 8 query heads"),
        ("ablate:k_proj@1:h-1", "key/value head -1 does not exist"),
    ]
    for plan, msg in cases:
        with pytest.raises(InterventionError, match=msg):
            generate(model, [PROMPT], sources=[STORY], plan=plan, max_new_tokens=2)


def test_prepend_needs_all_layers_and_no_other_splice():
    with pytest.raises(InterventionError, match="needs layers='all'"):
        Plan.parse("kv:1,2:prepend")
    with pytest.raises(InterventionError, match="cannot be combined with another KVSplice"):
        Plan.parse("kv:all:prepend + kv:0:left")


def test_other_argument_errors(tiny_models):
    model = tiny_models("llama")
    with pytest.raises(ValueError, match="plan: got 2 for 3 targets"):
        generate(model, [PROMPT, LONG, SHORT], sources=STORY, plan=["kv:all", None], max_new_tokens=2)
    with pytest.raises(ValueError, match="example_ids: got 1 for 2 targets"):
        generate(model, [PROMPT, LONG], example_ids=["a"], max_new_tokens=2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(model, [PROMPT], record_logits={"x": [1, 9999]}, max_new_tokens=2)
    with pytest.raises(TypeError, match="sources must be strings"):
        generate(model, [PROMPT], sources=[3], plan="kv:all", max_new_tokens=2)
    with pytest.raises(InterventionError, match="vector has 3 dims, resid_post has 64"):
        from transferlab.interventions import Steer

        generate(
            model, [PROMPT], plan=Plan((Steer(site="resid_post", layer=1, vector=(1.0, 2.0, 3.0)),)), max_new_tokens=2
        )


def test_steer_adds_its_vector_at_every_real_position(tiny_models, monkeypatch):
    from transferlab.interventions import Steer

    model = tiny_models("qwen2")
    vec = torch.linspace(-1, 1, 64)
    spy = Spy(monkeypatch, model, "resid_post", 1)
    g = generate(
        model,
        [PROMPT],
        plan=Plan((Steer(site="resid_post", layer=1, vector=tuple(vec.tolist()), alpha=2.0),)),
        greedy=True,
        max_new_tokens=N_NEW,
        stop_at_eos=False,
    )
    after, before = spy.prompt("after")[0], spy.prompt("before")[0]
    assert torch.equal(after[0], before[0])  # BOS is never written
    torch.testing.assert_close(after[1:], before[1:] + 2.0 * vec, atol=1e-5, rtol=0)
    for b, a in zip(spy.decode("before"), spy.decode("after")):
        torch.testing.assert_close(a, b + 2.0 * vec, atol=1e-5, rtol=0)
    assert g.audit.iloc[0].fired_decode == N_NEW - 1
