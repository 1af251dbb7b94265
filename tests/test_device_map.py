"""Models split over devices: ``load_model(device_map=...)`` and interventions that follow the activation's device.

On a model split with accelerate, each layer's activations and KV cache live
on that layer's device. Every intervention must move what it writes (source
activations, decode tables, means, steering vectors, index tables, spliced
keys/values) to the device of the activation or cache layer it edits.

A CPU machine has one real device, so the CPU tests use PyTorch's ``meta``
device as the "other" device: ``meta`` and ``cpu`` tensors cannot be mixed in
one operation, so any table left behind raises, while a complete move runs
(shapes only). What they cannot show, the numbers on a real second device, the
GPU test at the end checks where two CUDA devices exist (skipped otherwise):
a tiny model split over ``cuda:0`` and ``cuda:1`` must generate exactly what
the same model on one card generates, with the same audit.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from transferlab import load_model
from transferlab.engine import plans as engine_plans
from transferlab.interventions import KVSplice, Plan, Steer
from transferlab.interventions.audit import Counters
from transferlab.interventions.binding import BoundActivation
from transferlab.interventions.splice import SourceKV, apply_lengthening, apply_splice
from transferlab.models import ModelLoadError
from transferlab.models.tiny import build_tiny

META = torch.device("meta")
TARGETS = ["Once upon a time there was a cat", "The dog ran to the big red house and played with a ball"]
SOURCES = [
    "Tom had a red ball. He liked to throw it high in the sky",
    "Once upon a time, a frog named Pip sat on a log",
]
PLANS = [
    "v_proj@2:w4:both",  # decode "last"
    "v_proj@2:w4:both:mean",
    "resid_post@1:w4:both:cycle:add:a0.5",
    "v_proj@1:both:lockstep",
    "v_proj@3:w4:both:h0",  # head patch: a channel mask
    "ablate:attn_out@1:mean",
    "noise:v_proj@2:w4:both",  # norm-matched: reads the source
]
# the seed flavour reproduces the seed's patcher: decode "last" only (mean/cycle/lockstep are refused)
SEED_PLANS = [p for p in PLANS if not any(x in p for x in ("both:mean", ":cycle", ":lockstep"))]


@pytest.fixture(scope="module")
def llama():
    return build_tiny("llama")


def test_device_map_loads_and_generates_the_same():
    split = load_model("tiny:llama", device_map="auto")  # a tiny model fits one device: all of it goes there
    whole = load_model("tiny:llama")
    assert len(set(split.hf.hf_device_map.values())) == 1
    by_hand = load_model("stories260K", device_map={"": "cpu"})
    assert by_hand.device.type == "cpu"
    kw = dict(sources=SOURCES, plan="kv:all + v_proj@2:w4:both", max_new_tokens=6, seed=0)
    assert split.generate(TARGETS, **kw).texts == whole.generate(TARGETS, **kw).texts
    with pytest.raises(ModelLoadError, match="unknown device_map 'everywhere'"):
        load_model("tiny:llama", device_map="everywhere")


def _bound(model, monkeypatch, plans, flavour="corrected") -> list[BoundActivation]:
    """The bound interventions of one generate call (recorded as the loop binds them)."""
    made: list[BoundActivation] = []

    class Recording(BoundActivation):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(engine_plans, "BoundActivation", Recording)
    model.generate(
        TARGETS * len(plans),
        sources=SOURCES * len(plans),
        plan=[p for p in plans for _ in TARGETS],
        max_new_tokens=3,
        seed=0,
        flavour=flavour,
    )
    monkeypatch.undo()
    return made


def _call_on(bi: BoundActivation, device: torch.device, phase: str):
    """Call a bound intervention as its hook would be called on ``device``; the loop's context stays on CPU."""
    B = bi.tables.rows.shape[0]
    T = bi.tables.index.shape[1] if phase == "prompt" else 1
    W = bi.width  # the activation width at the hook point
    ctx = bi.ctx
    ctx.phase, ctx.step = phase, 1
    ctx.positions = torch.arange(T).expand(B, T) if phase == "prompt" else torch.full((B, 1), T + 5)
    ctx.valid = torch.ones(B, T, dtype=torch.bool)
    bi.counters = Counters(B, device)  # the audit's counters live with the activation here
    x = torch.zeros(B, T, W, device=device)
    return bi(x)


@pytest.mark.parametrize("flavour", ["corrected", "seed"])
def test_bound_interventions_move_their_tables_to_the_activation(llama, monkeypatch, flavour):
    plans = [Plan.parse(p) for p in (PLANS if flavour == "corrected" else SEED_PLANS)]
    plans.append(Plan([Steer("resid_post", 2, vector=(0.1,) * 64, alpha=2.0)]))
    bound = _bound(llama, monkeypatch, plans, flavour)
    assert len(bound) == len(plans)
    for bi in bound:
        assert bi.device == torch.device("cpu") and not bi._copies
        for phase in ("prompt", "decode"):
            out = _call_on(bi, META, phase)  # raises if any table stayed on the CPU
            if out is not None:
                assert out.device == META
        assert set(bi._copies) == {META}  # copied once for the batch, not per call
        tables = bi._copies[META]
        _call_on(bi, META, "decode")
        assert bi._copies[META] is tables
        for phase in ("prompt", "decode"):  # on its own device: no copy at all
            out = _call_on(bi, torch.device("cpu"), phase)
            assert out is None or out.device.type == "cpu"
        assert set(bi._copies) == {META}


def _fake_cache(keys, values):
    return SimpleNamespace(layers=[SimpleNamespace(keys=k, values=v) for k, v in zip(keys, values)])


@pytest.mark.parametrize("align", ["right", "prepend"])
def test_splice_writes_each_cache_layer_on_its_own_device(align):
    """Layers 0-1 on the CPU, 2-3 on the other device (target cache and source cache alike, as captured)."""
    g = torch.Generator().manual_seed(0)
    B, H, P, S, hd, n = 2, 2, 5, 7, 8, 4
    tk = [torch.randn(B, H, P, hd, generator=g) for _ in range(n)]
    tv = [torch.randn(B, H, P, hd, generator=g) for _ in range(n)]
    sk = [torch.randn(B, H, S, hd, generator=g) for _ in range(n)]
    sv = [torch.randn(B, H, S, hd, generator=g) for _ in range(n)]
    rows = torch.tensor([True, False])
    splice = KVSplice(align=align, rope="keep")

    def run(devices):
        cache = _fake_cache([k.to(d) for k, d in zip(tk, devices)], [v.to(d) for v, d in zip(tv, devices)])
        source = SourceKV(
            [k.to(d) for k, d in zip(sk, devices)],
            [v.to(d) for v, d in zip(sv, devices)],
            [S - 1, S - 1],
            S - 1,
            rows=torch.tensor([1, 0]),
        )
        counters = Counters(B, devices[-1])
        if align == "prepend":
            apply_lengthening(None, cache, [(splice, rows, counters)], source, [P, P])
        else:
            apply_splice(None, cache, splice, rows, source, [P, P], "corrected", counters)
        return cache, counters

    ref, _ = run([torch.device("cpu")] * n)
    split, counters = run([torch.device("cpu")] * 2 + [META] * 2)
    for layer in range(n):
        got = split.layers[layer]
        if layer < 2:
            assert torch.equal(got.keys, ref.layers[layer].keys) and torch.equal(got.values, ref.layers[layer].values)
        else:
            assert got.keys.device == META and got.keys.shape == ref.layers[layer].keys.shape
    assert counters.positions.device == META


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


@two_gpus
@pytest.mark.parametrize("flavour", ["corrected", "seed"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_split_over_two_gpus_generates_what_one_gpu_does(family, flavour):
    half = {
        "model.embed_tokens": 0,
        "model.rotary_emb": 0,
        "model.layers.0": 0,
        "model.layers.1": 0,
        "model.layers.2": 1,
        "model.layers.3": 1,
        "model.norm": 1,
        "lm_head": 1,
    }
    one = load_model(f"tiny:{family}", device="cuda:0", dtype="float32")
    split = load_model(f"tiny:{family}", device_map=half, dtype="float32")
    assert {p.device.index for p in split.hf.parameters()} == {0, 1}
    plans = ["kv:all", "kv:1,3:reposition + v_proj@3:w4:both", "ablate:v_proj@2:zero:h1"]
    plans += PLANS + ["kv:all:prepend"] if flavour == "corrected" else SEED_PLANS
    for greedy in (True, False):
        kw = dict(
            sources=SOURCES * len(plans),
            plan=[p for p in plans for _ in TARGETS],
            max_new_tokens=8,
            seed=0,
            greedy=greedy,
            flavour=flavour,
        )
        want = one.generate(TARGETS * len(plans), **kw)
        got = split.generate(TARGETS * len(plans), **kw)
        assert got.texts == want.texts
        assert got.audit.drop(columns="change_norm").equals(want.audit.drop(columns="change_norm"))
        assert torch.allclose(
            torch.tensor(got.audit.change_norm.values),
            torch.tensor(want.audit.change_norm.values),
            rtol=1e-4,
            atol=1e-5,
        )
