"""Fused elementwise kernels (transferlab.engine.fused) compute what the model's own modules compute.

``fuse`` swaps RMSNorm, SiLU(gate) * up and RoPE for compiled functions, each
checked against the original on random inputs first. These tests use the
identity as the "compiler" (the plumbing and the checks, fast) and one real
``torch.compile`` run, and check that parts whose arithmetic differs (Gemma-2's
``1 + w`` norm, a GELU MLP) or whose compilation fails keep their eager code.
"""

from __future__ import annotations

import pytest
import torch
from conftest import LONG, PROMPT

from transferlab.engine.fused import fuse
from transferlab.engine.generation import generate
from transferlab.models.loading import load_model

IDS = torch.tensor([[1, 5, 9, 22, 7, 3, 40, 2]])


@pytest.fixture(autouse=True)
def _restore_rope(monkeypatch):
    """RoPE fusion replaces a module-level function of the model family: put every original back after."""
    import sys

    for name, mod in list(sys.modules.items()):
        if name.startswith("transformers.models.") and hasattr(mod, "apply_rotary_pos_emb"):
            monkeypatch.setattr(mod, "apply_rotary_pos_emb", mod.apply_rotary_pos_emb)


def _logits(model):
    with torch.no_grad():
        return model.hf(IDS).logits


@pytest.mark.parametrize(
    "family,want",
    [
        ("mistral", {"norm": 9, "mlp": 4, "rope": 1}),
        ("qwen2", {"norm": 9, "mlp": 4, "rope": 1}),
        ("gemma2", {"norm": 0, "mlp": 0, "rope": 1}),  # 1 + w norms, GELU MLP: kept eager
        ("phi3", {"norm": 9, "mlp": 0, "rope": 1}),  # fused gate_up_proj: kept eager
    ],
)
def test_identity_fusion_changes_nothing(family, want):
    model = load_model(f"tiny:{family}", fuse=False)
    ref = _logits(model)
    assert fuse(model.hf, compiler=lambda f: f) == want
    assert torch.equal(_logits(model), ref)
    assert fuse(model.hf, compiler=lambda f: f)["norm"] == 0  # already fused: nothing twice


def test_a_fused_function_that_differs_is_refused():
    model = load_model("tiny:llama", fuse=False)
    ref = _logits(model)
    wrong = lambda f: lambda *a: f(*a) * 1.1 if not isinstance(f(*a), tuple) else f(*a)  # noqa: E731
    done = fuse(model.hf, parts=("norm", "mlp"), compiler=wrong)
    assert done == {"norm": 0, "mlp": 0, "rope": 0}
    assert torch.equal(_logits(model), ref)


def test_a_compiler_that_fails_keeps_eager_code():
    model = load_model("tiny:llama", fuse=False)
    ref = _logits(model)

    def broken(fn):
        def run(*a, **k):
            raise RuntimeError("no compiler here")

        return run

    with pytest.warns(RuntimeWarning, match="keeps its eager code"):
        done = fuse(model.hf, parts=("norm", "mlp"), compiler=broken)
    assert done == {"norm": 0, "mlp": 0, "rope": 0}
    assert torch.equal(_logits(model), ref)


def test_fusion_is_off_on_cpu_by_default_and_recorded_when_asked(monkeypatch):
    assert "fused" not in (load_model("tiny:llama").source or {})
    import transferlab.engine.fused as fused_mod

    monkeypatch.setattr(fused_mod, "default_compiler", lambda f: f)
    model = load_model("tiny:llama", fuse=True)
    assert model.source["fused"]["norm"] == 9


def test_compiled_fusion_generates_the_same_tokens():
    """A real torch.compile (C++ on CPU): same greedy tokens, logits within float32 rounding."""
    model = load_model("tiny:llama", fuse=False)
    ref = _logits(model)
    before = generate(model, [PROMPT, LONG], greedy=True, max_new_tokens=6)
    done = fuse(model.hf, parts=("norm", "mlp"))
    if done["norm"] == 0:
        pytest.skip("torch.compile is not usable on this machine (the fallback is tested above)")
    assert done == {"norm": 9, "mlp": 4, "rope": 0}
    assert torch.allclose(_logits(model), ref, atol=1e-5, rtol=1e-5)
    after = generate(model, [PROMPT, LONG], greedy=True, max_new_tokens=6)
    assert after.token_ids == before.token_ids


def test_partial_rotary_rope_is_fused_exactly():
    """Phi-3-family models with ``partial_rotary_factor`` rotate only part of each head: so does the fused RoPE."""
    import transformers as tf
    from transformers import AutoModelForCausalLM

    from transferlab.models.tiny import _COMMON

    torch.manual_seed(0)
    config = tf.Phi3Config(
        **_COMMON,
        partial_rotary_factor=0.5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        sliding_window=None,
    )
    config._attn_implementation = "sdpa"
    hf = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        ref = hf(IDS).logits
        assert fuse(hf, parts=("rope",), compiler=lambda f: f)["rope"] == 1
        assert torch.allclose(hf(IDS).logits, ref, atol=1e-6, rtol=1e-6)
        full = load_model("tiny:phi3", fuse=False)  # the module-level function now serves full width too
        assert torch.allclose(_logits(full), _logits(load_model("tiny:phi3", fuse=False)))


def test_fused_rope_that_fails_hands_back_to_the_original(monkeypatch):
    """A compiled RoPE that raises at some call (another device, a shape it cannot serve) falls back."""
    import sys

    model = load_model("tiny:llama", fuse=False)
    ref = _logits(model)
    calls = []

    def flaky(fn):
        def run(*a, **k):
            calls.append(1)
            if len(calls) > 2:  # passes the install-time checks, then fails
                raise RuntimeError("cannot compile for this device")
            return fn(*a, **k)

        return run

    assert fuse(model.hf, parts=("rope",), compiler=flaky)["rope"] == 1
    with pytest.warns(RuntimeWarning, match="keeps its eager code"):
        out = _logits(model)
    assert torch.equal(out, ref)
    module = sys.modules[type(model.hf).__module__]
    assert getattr(module.apply_rotary_pos_emb, "_transferlab_fused", False)


def test_modules_alike_are_checked_once(monkeypatch):
    """Every RMSNorm of a model has the same class, shape and eps: one check stands for all of them."""
    import transferlab.engine.fused as fused_mod

    checked = []
    real = fused_mod._agrees

    def counting(new, old, *args, **kw):
        checked.append(new)
        return real(new, old, *args, **kw)

    monkeypatch.setattr(fused_mod, "_agrees", counting)
    model = load_model("tiny:llama", fuse=False)
    done = fuse(model.hf, parts=("norm", "mlp"), compiler=lambda f: f)
    assert done["norm"] == 9 and done["mlp"] > 1
    assert len(checked) == 2  # one norm, one MLP


def test_the_kernels_source_is_chosen_by_device_and_environment(monkeypatch):
    """Liger's Triton kernels on CUDA where liger-kernel imports, torch.compile otherwise; a bad choice is named."""
    import transferlab.engine.fused as fused_mod
    import transferlab.engine.liger as liger_mod

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("TRANSFERLAB_KERNELS", raising=False)
    assert fused_mod.choose_compiler(cpu)[1] == "torch.compile"
    monkeypatch.setattr(liger_mod, "available", lambda: True)
    assert fused_mod.choose_compiler(cuda) == (liger_mod.liger_compiler, "liger")
    monkeypatch.setenv("TRANSFERLAB_KERNELS", "compile")
    assert fused_mod.choose_compiler(cuda)[1] == "torch.compile"
    monkeypatch.setattr(liger_mod, "available", lambda: False)
    monkeypatch.setenv("TRANSFERLAB_KERNELS", "auto")
    assert fused_mod.choose_compiler(cuda)[1] == "torch.compile"  # not installed: the compiled functions
    monkeypatch.setenv("TRANSFERLAB_KERNELS", "liger")
    with pytest.raises(RuntimeError, match="pip install liger-kernel"):
        fused_mod.choose_compiler(cuda)
    monkeypatch.setenv("TRANSFERLAB_KERNELS", "triton")
    with pytest.raises(ValueError, match="auto, liger or compile"):
        fused_mod.choose_compiler(cuda)


def test_liger_serves_exactly_our_three_reference_functions():
    import transferlab.engine.fused as fused_mod
    from transferlab.engine.liger import liger_compiler, rms, rope, silu_mul

    assert liger_compiler(fused_mod._rms) is rms
    assert liger_compiler(fused_mod._silu_mul) is silu_mul
    assert liger_compiler(fused_mod._rope) is rope
    with pytest.raises(ValueError, match="no Liger kernel"):
        liger_compiler(torch.tanh)
