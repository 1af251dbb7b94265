"""Shared fixtures: the embedded model and the tiny random models, loaded once per session.

Session-scoped models are shared by many tests: a test must never leave a hook
on them or change their weights. A test that needs to break a model (patch a
forward, change weights) builds its own with ``build_tiny`` (instant).
"""

from __future__ import annotations

import os

import pytest
import torch

from transferlab import load_model
from transferlab.models.tiny import TINY_FAMILIES, build_tiny

# A prompt of 10 tokens with BOS (9 without), and others of different lengths so
# that it is left-padded when batched with them.
PROMPT = "Once upon a time there was a cat"
LONG = "The dog ran to the big red house and played with a ball all day long"
SHORT = "Hi"
# At least 16 tokens without BOS, for R_V's default window.
STORY = "Once upon a time there was a little girl named Lily who loved to play in the park with her dog"
STORY2 = "Tom had a red ball. He liked to throw it high in the sky and catch it with both of his hands"

GREEDY_TEXT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."

SITES = ("q_proj", "k_proj", "v_proj", "attn_out", "resid_pre", "resid_post", "mlp_out")


@pytest.fixture
def short_dir():
    """A directory with a short path, for Unix sockets (whose path is limited to about 100 bytes, whatever the
    length of pytest's --basetemp)."""
    import shutil
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp(prefix="tl-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def stories():
    """The embedded stories260K model (float32, CPU)."""
    return load_model("stories260K", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_models():
    """One tiny random model per family, built lazily."""
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            cache[family] = build_tiny(family)
        return cache[family]

    return get


@pytest.fixture(scope="session", params=TINY_FAMILIES)
def tiny(request, tiny_models):
    """Parametrized over the six tiny families."""
    return tiny_models(request.param)


def hook_snapshot(module: torch.nn.Module) -> set:
    """Every forward hook and pre-hook in ``module``: {(submodule name, kind, hook id)}."""
    out = set()
    for name, m in module.named_modules():
        out |= {(name, "hook", k) for k in m._forward_hooks}
        out |= {(name, "pre", k) for k in m._forward_pre_hooks}
    return out


def all_hooks_removed(module: torch.nn.Module, strict: bool = True) -> bool:
    """No hook left in ``module``.

    ``strict=False`` ignores hooks that ``transformers`` (5.x) installs for good the
    first time a model runs with ``output_hidden_states=True`` and counts only
    hooks whose function comes from transferlab.
    """
    for m in module.modules():
        for fn in list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values()):
            if strict or getattr(fn, "__module__", "").startswith("transferlab"):
                return False
    return True


@pytest.fixture(autouse=True)
def _no_hooks_left(request):
    """After every test, no shared model carries a hook (a leak would corrupt later tests)."""
    yield
    for name in ("stories", "tiny"):
        model = request.node.funcargs.get(name)
        if model is not None:
            assert all_hooks_removed(model.hf, strict=False), f"a transferlab hook was left on {model.name}"


# --------------------------------------------------------------------------- engine test modules


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    """One intra-op thread for the whole suite, chosen on purpose: tiny matmuls gain nothing from
    threads, and two spinning OpenMP threads crawl when the 2-core box is shared (4x slower under
    load; 10x measured on SmolLM2). ``TRANSFERLAB_TEST_THREADS=2`` runs the suite at 2 threads, to
    check that no result depends on the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("TRANSFERLAB_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def engine_single_thread(single_thread):
    """Kept for the engine modules that ask for it by name; the session fixture does the work."""
    yield


@pytest.fixture
def engine_no_hooks_left(tiny_models, stories):
    """After the test, no transferlab hook on ANY shared model (engine tests use ``tiny_models``)."""
    yield
    for model in [tiny_models(f) for f in TINY_FAMILIES] + [stories]:
        assert all_hooks_removed(model.hf, strict=False), f"a transferlab hook was left on {model.name}"
