"""The generation loop: invariances that pin down what the engine computes.

* a patch of a prompt into itself changes nothing (tokens and logits);
* a corrected whole-prefix splice between equal-length prompts with the same
  last token reproduces the source's own continuation;
* which ids are fed at each forward (the seed's duplicated last token), and
  how often each intervention fires;
* batching never changes an example's result.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LONG, PROMPT, SHORT, SITES, STORY, STORY2

from transferlab.engine.generation import generate
from transferlab.interventions import InterventionError
from transferlab.models.tiny import TINY_FAMILIES

pytestmark = pytest.mark.usefixtures("engine_single_thread", "engine_no_hooks_left")

N_NEW = 8
MASS = {"low": list(range(50))}
TOL = 1e-5


def _mass_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference of two log-mass rows, relative to max(1, |value|) (float32 logits near -20)."""
    return float((np.abs(a - b) / np.maximum(1.0, np.abs(b))).max())


def _ids(model, text):
    return model.tokenizer(text)["input_ids"]


def _greedy(model, targets, **kw):
    kw.setdefault("max_new_tokens", N_NEW)
    return generate(model, targets, greedy=True, stop_at_eos=False, record_logits=MASS, **kw)


def _assert_same(a, b, what, rows_a=None, rows_b=None):
    rows_a = rows_a if rows_a is not None else range(len(a))
    rows_b = rows_b if rows_b is not None else range(len(b))
    for i, j in zip(rows_a, rows_b):
        assert a.token_ids[i] == b.token_ids[j], (what, i, j)
        diff = _mass_diff(a.logmass["low"][i], b.logmass["low"][j])
        assert diff <= TOL, (what, i, j, diff)


# --------------------------------------------------------------------------- self-invariance

SELF_TARGETS = [PROMPT, LONG, SHORT]
SELF_FAMILIES = list(TINY_FAMILIES) + ["stories260K"]


def _model(family, tiny_models, stories):
    return stories if family == "stories260K" else tiny_models(family)


def _self_plans(model) -> list[str]:
    plans = [f"{site}@{layer}:prompt" for site in SITES for layer in range(model.n_layers)]
    L = model.n_layers // 2
    plans += [
        f"v_proj@{L}:w2:prompt",
        f"resid_post@{L}:f0.5:prompt",
        f"k_proj@{L}:p1-3:prompt",
        f"q_proj@{L}:h3:prompt",
        f"v_proj@{L}:qh5:prompt",
        f"mlp_out@{L}:w1:prompt + attn_out@0:prompt",
        "kv:all",
        "kv:all:keep",
        "kv:all:left",
        "kv:all:p0-1",
        "kv:0,2:w1",
        "kv:all:left:w2",
        f"kv:all + v_proj@{L}:prompt + resid_pre@{L + 1}:prompt",
    ]
    return plans


@pytest.mark.parametrize("family", SELF_FAMILIES)
def test_patching_a_prompt_into_itself_changes_nothing(family, tiny_models, stories):
    model = _model(family, tiny_models, stories)
    base = _greedy(model, SELF_TARGETS)
    plans = _self_plans(model)
    targets = [t for _ in plans for t in SELF_TARGETS]
    per_plan = [p for p in plans for _ in SELF_TARGETS]
    g = _greedy(model, targets, sources=targets, plan=per_plan)
    assert not g.audit.never_fired.any(), g.never_fired()
    assert (g.audit.change_norm < 1e-3).all()
    for k, p in enumerate(per_plan):
        i = SELF_TARGETS.index(targets[k])
        assert g.token_ids[k] == base.token_ids[i], (family, p, targets[k])
        diff = _mass_diff(g.logmass["low"][k], base.logmass["low"][i])
        assert diff <= TOL, (family, p, targets[k], diff)


def test_self_invariance_is_not_vacuous(tiny_models):
    """The same plans with another prompt as source do change logits."""
    model = tiny_models("llama")
    base = _greedy(model, [PROMPT])
    for plan in ("v_proj@1:prompt", "resid_post@2:prompt", "kv:all", "kv:all:left:w2", "q_proj@1:h3:prompt"):
        g = _greedy(model, [PROMPT], sources=[LONG], plan=plan)
        assert np.abs(g.logmass["low"][0] - base.logmass["low"][0]).max() > 1e-4, plan  # well above the 1e-5 tolerance


# --------------------------------------------------------------------------- equal-length splice

# token lengths (with BOS): 13, 13, 13 and 10, 10; all end with the tokens of " cat"
EQUAL_13 = ["The dog ran to the big red cat", "Tom had a red ball and a cat", "She went to the park with her cat"]
EQUAL_10 = [PROMPT, "He liked to play with his cat"]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "gemma2", "gemma3", "stories260K"])
def test_whole_prefix_splice_reproduces_the_source_run(family, tiny_models, stories):
    model = _model(family, tiny_models, stories)
    pairs = [(EQUAL_13[0], EQUAL_13[1]), (EQUAL_13[2], EQUAL_13[0]), (EQUAL_10[1], EQUAL_10[0])]
    for t, s in pairs:  # the precondition, at the token level
        ti, si = _ids(model, t), _ids(model, s)
        assert len(ti) == len(si) and ti[-1] == si[-1] and ti != si
    targets, sources = [t for t, _ in pairs], [s for _, s in pairs]
    own = _greedy(model, sources)
    tgt_own = _greedy(model, targets)
    assert any(a != b for a, b in zip(own.token_ids, tgt_own.token_ids)) or family == "stories260K"
    every_layer = ",".join(str(i) for i in range(model.n_layers))
    for plan in ("kv:all", "kv:all:keep", "kv:all:left", f"kv:{every_layer}:right"):
        g = _greedy(model, targets, sources=sources, plan=plan)
        _assert_same(g, own, (family, plan))
    # range over the whole prefix of the 13-token pair
    g = _greedy(model, [pairs[0][0]], sources=[pairs[0][1]], plan="kv:all:p0-12")
    _assert_same(g, own, (family, "range"), [0], [0])


def test_partial_splice_does_not_reproduce_the_source_run(tiny_models):
    model = tiny_models("llama")
    t, s = EQUAL_13[0], EQUAL_13[1]
    own = _greedy(model, [s])
    g = _greedy(model, [t], sources=[s], plan="kv:0,1")
    assert np.abs(g.logmass["low"][0] - own.logmass["low"][0]).max() > 1e-3


# --------------------------------------------------------------------------- what is fed, what fires


class _FedIds:
    """Records the input ids of every forward (one list per call, row 0 by default)."""

    def __init__(self, model):
        self.calls: list[torch.Tensor] = []
        self.h = model.hf.model.embed_tokens.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.calls.append(args[0].detach().clone())

    def close(self):
        self.h.remove()

    def real(self, row: int) -> list[list[int]]:
        return [c[row].tolist() for c in self.calls]


@pytest.mark.parametrize("flavour", ["seed", "corrected"])
def test_ids_fed_at_each_forward(flavour, tiny_models):
    model = tiny_models("llama")
    t, s = PROMPT, LONG
    ti, si = _ids(model, t), _ids(model, s)
    rec = _FedIds(model)
    try:
        g = _greedy(model, [t], sources=[s], plan="kv:all + v_proj@2:w16:both", flavour=flavour)
    finally:
        rec.close()
    toks = g.token_ids[0]
    calls = rec.real(0)
    assert calls[0] == si  # the source's capture forward
    if flavour == "seed":
        # whole prompt, then the last prompt token AGAIN, then new tokens 0..n-2
        assert calls[1:] == [ti, [ti[-1]]] + [[x] for x in toks[:-1]]
    else:
        # prefix, then the last prompt token once, then new tokens 0..n-2
        assert calls[1:] == [ti[:-1], [ti[-1]]] + [[x] for x in toks[:-1]]


def test_seed_flavour_empty_plan_feeds_last_token_once(tiny_models):
    """The seed's baselines used model.generate: no duplicated token without a plan."""
    model = tiny_models("llama")
    ti = _ids(model, PROMPT)
    rec = _FedIds(model)
    try:
        g = _greedy(model, [PROMPT], plan=None, flavour="seed")
    finally:
        rec.close()
    assert rec.real(0) == [ti] + [[x] for x in g.token_ids[0][:-1]]


def test_seed_flavour_batch_refeeds_only_rows_with_a_plan(tiny_models):
    model = tiny_models("llama")
    targets = [PROMPT, LONG]
    rec = _FedIds(model)
    try:
        _greedy(model, targets, sources=[None, STORY], plan=[None, "kv:all"], flavour="seed")
    finally:
        rec.close()
    # calls: source capture, prompt, the refeed (masked for the row without a plan), N-1 decode
    assert len(rec.calls) == 2 + 1 + (N_NEW - 1)
    refeed = rec.calls[2]
    li = _ids(model, LONG)
    assert refeed[:, 0].tolist()[1] == li[-1]


@pytest.mark.parametrize("family", ["llama", "phi3", "stories260K"])
def test_decode_patch_fires_every_step_in_corrected_and_never_in_seed(family, tiny_models, stories):
    model = _model(family, tiny_models, stories)
    L = model.n_layers - 2
    targets = [PROMPT, LONG, SHORT, STORY]
    sources = [STORY, STORY2, LONG, STORY]
    plan = f"kv:all + v_proj@{L}:w16:both"
    n = 7
    g = _greedy(model, targets, sources=sources, plan=plan, max_new_tokens=n)
    v = g.audit[g.audit.kind == "patch"]
    assert len(v) == len(targets)
    assert (v.fired_decode == n - 1).all()  # every decode forward = len(tokens) - 1
    assert all(len(t) == n for t in g.token_ids)
    assert (v.fired_prompt > 0).all() and not v.never_fired.any()
    assert g.never_fired().empty
    kv = g.audit[g.audit.kind == "kv_splice"]
    assert (kv.fired_prompt == 1).all() and (kv.fired_decode == 0).all()

    s = _greedy(model, targets, sources=sources, plan=plan, max_new_tokens=n, flavour="seed")
    v = s.audit[s.audit.kind == "patch"]
    assert (v.fired == 0).all() and v.never_fired.all()
    nf = s.never_fired()
    assert len(nf) == 1 and nf.examples_never_fired.iloc[0] == len(targets)
    assert nf.hook_point.iloc[0] == f"v_proj@{L}"


def test_phase_restricts_firing(tiny_models):
    model = tiny_models("mistral")
    n = 6
    for phase, want_prompt, want_decode in (("prompt", True, False), ("decode", False, True), ("both", True, True)):
        g = _greedy(model, [PROMPT, LONG], sources=[STORY, STORY], plan=f"resid_post@1:w3:{phase}", max_new_tokens=n)
        a = g.audit
        assert ((a.fired_prompt > 0) == want_prompt).all(), phase
        assert (a.fired_decode == (n - 1 if want_decode else 0)).all(), phase


def test_decode_patch_with_eos_stops_firing_after_the_end():
    """With stop_at_eos, an ended example is not written any more: fired_decode == tokens fed."""
    from transferlab.models.tiny import build_tiny

    model = build_tiny("llama")  # our own copy: its lm_head is edited below
    plan, n = "v_proj@1:decode", 12
    before = generate(model, [PROMPT, LONG], sources=STORY, plan=plan, greedy=True, max_new_tokens=n)
    # a token that first appears at step k >= 2 of one row and never in the other row
    r, k = next(
        (r, j)
        for r in (1, 0)
        for j in range(2, n)
        if before.token_ids[r][j] not in before.token_ids[r][:j] + before.token_ids[1 - r]
    )
    row = before.token_ids[r]
    with torch.no_grad():  # make eos win exactly where that token did
        w = model.hf.lm_head.weight
        w[model.tokenizer.eos_token_id] = w[row[k]] * 1.001
    g = generate(model, [PROMPT, LONG], sources=STORY, plan=plan, greedy=True, max_new_tokens=n)
    assert g.finish_reasons[r] == "eos" and g.token_ids[r] == row[:k]
    assert g.finish_reasons[1 - r] == "length"  # one ends early, the other runs on in the same batch
    for i, toks in enumerate(g.token_ids):
        row = g.audit[g.audit.example == i].iloc[0]
        if g.finish_reasons[i] == "eos":
            assert row.fired_decode == len(toks)  # tokens 0..k-1 fed; the eos itself is never written
        else:
            assert row.fired_decode == n - 1
    # stop_at_eos=False: the eos is an ordinary token
    h = generate(model, [[PROMPT, LONG][r]], sources=STORY, plan=plan, greedy=True, max_new_tokens=n, stop_at_eos=False)
    assert h.finish_reasons == ["length"] and len(h.token_ids[0]) == n
    assert h.token_ids[0][k] == model.tokenizer.eos_token_id and h.audit.fired_decode.item() == n - 1


# --------------------------------------------------------------------------- batch invariance

CASES = [
    (PROMPT, None, None),
    (LONG, STORY, "kv:all"),
    (SHORT, LONG, "kv:all + v_proj@2:w4:both"),
    (STORY, PROMPT, "noise:v_proj@1:w3"),
    (PROMPT, STORY2, "resid_post@1:f0.5:prompt"),
    (STORY2, None, "ablate:v_proj@2:h1"),
    (LONG, SHORT, "kv:all:prepend"),
    (PROMPT, LONG, "v_proj@0:h2:decode:cycle + k_proj@3:qh5:w2"),
    (STORY, SHORT, "kv:1,3:left:keep + attn_out@1:mix:a0.5"),
    (SHORT, PROMPT, "noise:resid_pre@2:raw:sd0.5"),
    (LONG, STORY, "kv:all:w3 + v_proj@1:w3:decode:mean"),
]
IDS = [f"ex{i}" for i in range(len(CASES))]


def _run_cases(model, order, **kw):
    cases = [CASES[i] for i in order]
    return generate(
        model,
        [c[0] for c in cases],
        sources=[c[1] for c in cases],
        plan=[c[2] for c in cases],
        example_ids=[IDS[i] for i in order],
        max_new_tokens=N_NEW,
        stop_at_eos=False,
        record_logits=MASS,
        **kw,
    )


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3", "phi3", "stories260K"])
@pytest.mark.parametrize("sampling", [dict(greedy=True), dict(temperature=0.8, seed=7)])
def test_batch_equals_each_example_alone(family, sampling, tiny_models, stories):
    model = _model(family, tiny_models, stories)
    n = len(CASES)
    alone = [_run_cases(model, [i], **sampling) for i in range(n)]
    together = _run_cases(model, list(range(n)), **sampling)
    ones = _run_cases(model, list(range(n)), batch_size=1, **sampling)
    threes = _run_cases(model, list(range(n)), batch_size=3, **sampling)
    perm = [5, 2, 9, 0, 7, 10, 1, 3, 8, 4, 6]
    shuffled = _run_cases(model, perm, **sampling)
    for i in range(n):
        for name, g, row in (
            ("batch", together, i),
            ("bs1", ones, i),
            ("bs3", threes, i),
            ("shuffled", shuffled, perm.index(i)),
        ):
            assert g.token_ids[row] == alone[i].token_ids[0], (family, name, CASES[i])
            diff = _mass_diff(g.logmass["low"][row], alone[i].logmass["low"][0])
            assert diff <= TOL, (family, name, CASES[i], diff)
    # audits agree too
    a = together.audit.set_index(["example", "intervention"]).sort_index()
    b = shuffled.audit.set_index(["example", "intervention"]).sort_index()
    assert a[["fired_prompt", "fired_decode", "positions"]].equals(b[["fired_prompt", "fired_decode", "positions"]])
    assert np.allclose(a.change_norm, b.change_norm, rtol=1e-4, atol=1e-4)


def _seed_expressible(plan) -> bool:
    from transferlab.engine.seed import check_seed_plan
    from transferlab.interventions import as_plan

    try:
        check_seed_plan(as_plan(plan))
        return True
    except InterventionError:
        return False


def test_seed_flavour_batch_equals_alone(tiny_models):
    model = tiny_models("mistral")
    cases = [i for i, c in enumerate(CASES) if _seed_expressible(c[2])]
    assert len(cases) >= 6
    alone = [_run_cases(model, [i], greedy=True, flavour="seed") for i in cases]
    together = _run_cases(model, cases, greedy=True, flavour="seed")
    for j, i in enumerate(cases):
        assert together.token_ids[j] == alone[j].token_ids[0], CASES[i]


@pytest.mark.parametrize(
    "plan, what",
    [
        ("kv:all:left", "align/window/positions"),
        ("kv:all:prepend", "align/window/positions"),
        ("kv:all:p0-3", "align/window/positions"),
        ("kv:all:w3", "align/window/positions"),
        ("v_proj@1:f0.25:prompt", "fraction/positions"),
        ("v_proj@1:p1-3:prompt", "fraction/positions"),
        ("v_proj@1:w2:decode:lockstep", "decode value"),
    ],
)
def test_seed_flavour_refuses_what_the_seed_could_not_express(tiny_models, plan, what):
    """The seed flavour never silently runs something other than the plan says."""
    model = tiny_models("mistral")
    with pytest.raises(InterventionError, match="flavour='seed'") as err:
        generate(model, [LONG], sources=[STORY], plan=plan, flavour="seed", max_new_tokens=2)
    assert what in str(err.value) and "flavour='corrected'" in str(err.value)


def test_sampling_depends_on_example_id_not_position(tiny_models):
    model = tiny_models("llama")
    kw = dict(max_new_tokens=12, temperature=1.5, stop_at_eos=False, seed=11)
    a = generate(model, [PROMPT, PROMPT], example_ids=["a", "b"], **kw)
    b = generate(model, [PROMPT, PROMPT], example_ids=["b", "a"], **kw)
    assert a.token_ids[0] == b.token_ids[1] and a.token_ids[1] == b.token_ids[0]
    assert a.token_ids[0] != a.token_ids[1]
    c = generate(model, [PROMPT], example_ids=["a"], **{**kw, "seed": 12})
    assert c.token_ids[0] != a.token_ids[0]


# --------------------------------------------------------------------------- plan order and repeats in a batch


def test_each_row_keeps_its_own_plan_order_at_a_shared_hook_point(tiny_models):
    """Replace-then-add and add-then-replace differ; mixing both orders in one batch must not reorder either."""
    model = tiny_models("llama")
    p1 = "v_proj@1:w3:prompt + v_proj@1:w3:add:a1.0:prompt"
    p2 = "v_proj@1:w3:add:a1.0:prompt + v_proj@1:w3:prompt"
    a1 = _greedy(model, [PROMPT], sources=[STORY], plan=p1)
    a2 = _greedy(model, [PROMPT], sources=[STORY], plan=p2)
    assert _mass_diff(a1.logmass["low"][0], a2.logmass["low"][0]) > 1e-4  # the order matters
    both = _greedy(model, [PROMPT, PROMPT], sources=[STORY, STORY], plan=[p1, p2])
    _assert_same(both, a1, "row 0", [0], [0])
    _assert_same(both, a2, "row 1", [1], [0])
    # a row that shares its second item with an earlier row must still apply its first item first
    p3 = "v_proj@1:w3:mix:a0.5:prompt + v_proj@1:w3:add:a1.0:prompt + v_proj@1:w3:add:a0.5:prompt"
    a3 = _greedy(model, [PROMPT], sources=[STORY], plan=p3)
    three = _greedy(model, [PROMPT, PROMPT], sources=[STORY, STORY], plan=[p1, p3])
    _assert_same(three, a1, "row 0 of [p1, p3]", [0], [0])
    _assert_same(three, a3, "row 1 of [p1, p3]", [1], [0])
    # the audit numbers each row's interventions by their place in ITS plan
    ab = both.audit
    assert ab[(ab.example == 1) & (ab.intervention == 0)].description.item() == "v_proj@1:w3:prompt:add"


def test_a_repeated_intervention_acts_twice(tiny_models):
    model = tiny_models("llama")
    twice = _greedy(model, [PROMPT], sources=[STORY], plan="v_proj@1:add:prompt + v_proj@1:add:prompt")
    double = _greedy(model, [PROMPT], sources=[STORY], plan="v_proj@1:add:a2.0:prompt")
    once = _greedy(model, [PROMPT], sources=[STORY], plan="v_proj@1:add:prompt")
    _assert_same(twice, double, "add twice = alpha 2")
    assert _mass_diff(twice.logmass["low"][0], once.logmass["low"][0]) > 1e-4
    assert len(twice.audit) == 2 and (twice.audit.fired_prompt > 0).all()


def test_a_list_of_interventions_is_one_plan_for_all_targets(tiny_models):
    from transferlab.interventions import KVSplice, Patch, Plan

    model = tiny_models("llama")
    items = [KVSplice(), Patch(site="v_proj", layer=1)]
    as_list = _greedy(model, [PROMPT, LONG], sources=STORY, plan=items)
    as_plan = _greedy(model, [PROMPT, LONG], sources=STORY, plan=Plan(tuple(items)))
    _assert_same(as_list, as_plan, "list == Plan")
    assert len(as_list.audit) == 4
    as_dicts = _greedy(model, [PROMPT, LONG], sources=STORY, plan=Plan(tuple(items)).to_dicts())
    _assert_same(as_dicts, as_plan, "dicts == Plan")


def test_one_token_target_with_a_splice_is_the_same_alone_and_batched(tiny_models):
    """A BOS-only target has an empty prefix: the splice cannot act (audited), whatever the batch."""
    model = tiny_models("llama")
    assert _ids(model, "") == [model.tokenizer.bos_token_id]
    plan = "kv:all + v_proj@1:w2"
    alone = _greedy(model, [""], sources=[STORY], plan=plan)
    batch = _greedy(model, ["", PROMPT], sources=[STORY, STORY], plan=plan)
    _assert_same(batch, alone, "bos-only target", [0], [0])
    kv = alone.audit[alone.audit.kind == "kv_splice"].iloc[0]
    assert kv.never_fired and kv.positions == 0
    assert not alone.never_fired().empty
    seed = generate(model, [""], sources=[STORY], plan=plan, flavour="seed", greedy=True, max_new_tokens=4)
    assert seed.audit[seed.audit.kind == "kv_splice"].iloc[0].positions == 1  # the seed overwrites the BOS slot


# --------------------------------------------------------------------------- sources given as captured activations


@pytest.mark.parametrize("flavour", ["corrected", "seed"])
def test_captured_sources_equal_text_sources(flavour, tiny_models):
    from transferlab import capture

    model = tiny_models("phi3")
    cases = [c for c in CASES if c[1] is not None and (flavour == "corrected" or _seed_expressible(c[2]))]
    targets, sources, plans = [c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases]
    points = sorted({f"{s}@{layer}" for s in SITES for layer in range(model.n_layers)})
    acts = capture(model, sources, sites=points + ["kv"])
    kw = dict(
        plan=plans,
        max_new_tokens=N_NEW,
        flavour=flavour,
        temperature=0.8,
        seed=3,
        stop_at_eos=False,
        record_logits=MASS,
    )
    a = generate(model, targets, sources=acts, **kw)
    b = generate(model, targets, sources=sources, **kw)
    _assert_same(a, b, f"captured vs text ({flavour})")


def test_captured_sources_errors(tiny_models):
    from transferlab import capture
    from transferlab.interventions import InterventionError

    model = tiny_models("llama")
    with pytest.raises(InterventionError, match="without 'kv'"):
        generate(model, [PROMPT], sources=capture(model, [STORY], sites=["v_proj@1"]), plan="kv:all", max_new_tokens=2)
    with pytest.raises(InterventionError, match="did not capture"):
        generate(
            model, [PROMPT], sources=capture(model, [STORY], sites=["v_proj@1"]), plan="v_proj@2", max_new_tokens=2
        )
    with pytest.raises(InterventionError, match="window"):
        generate(
            model,
            [PROMPT],
            sources=capture(model, [STORY], sites=["v_proj@1"], window=4),
            plan="v_proj@1",
            max_new_tokens=2,
        )
    with pytest.raises(ValueError, match="2 captured prompts for 1 targets"):
        generate(
            model,
            [PROMPT],
            sources=capture(model, [STORY, LONG], sites=["v_proj@1"]),
            plan="v_proj@1",
            max_new_tokens=2,
        )
