"""Plans: the mini-language, dict and TOML forms, and malformed items."""

from __future__ import annotations

import tomllib

import pytest

from transferlab.interventions import (
    Ablate,
    HeadPatch,
    InterventionError,
    KVSplice,
    Noise,
    Patch,
    Plan,
    Steer,
    as_plan,
    intervention_from_dict,
    parse_intervention,
)
from transferlab.sites import SiteError

# text -> its canonical form (defaults dropped)
CANONICAL = {
    "kv:all + v_proj@27:w16:both": "kv:all + v_proj@27:w16",
    "kv": "kv:all",
    "kv:18,25,27": "kv:18,25,27",
    "kv:0.5,0.75:left:keep:w4": "kv:0.5,0.75:left:keep:w4",
    "kv:all:right:reposition": "kv:all",
    "kv:all:prepend": "kv:all:prepend",
    "kv:all:p2-6": "kv:all:p2-6",
    "kv:-1,-2": "kv:-1,-2",
    "v_proj@0.84": "v_proj@0.84",
    "v_proj@-1:prompt": "v_proj@-1:prompt",
    "resid_post@18:f0.25:decode:mean": "resid_post@18:f0.25:decode:mean",
    "resid_pre@3:p2-9:add:a0.5": "resid_pre@3:p2-9:add:a0.5",
    "attn_out@2:mix:a0.25:cycle:w8": "attn_out@2:w8:mix:a0.25:cycle",
    "mlp_out@1:replace:last:both": "mlp_out@1",
    "v_proj@27:h11,1,22": "v_proj@27:h11,1,22",
    "k_proj@5:qh3:w4:prompt": "k_proj@5:qh3:w4:prompt",
    "q_proj@0:h0": "q_proj@0:h0",
    "ablate:v_proj@27": "ablate:v_proj@27",
    "ablate:v_proj@27:mean:h1,2:decode": "ablate:v_proj@27:mean:h1,2:decode",
    "ablate:q_proj@1:qh7:prompt": "ablate:q_proj@1:qh7:prompt",
    "noise:v_proj@27:w16": "noise:v_proj@27:w16",
    "noise:v_proj@27:raw:seed42:sd0.5:w16:prompt": "noise:v_proj@27:raw:seed42:sd0.5:w16:prompt",
    "noise:resid_post@0.5:f0.5:decode:cycle": "noise:resid_post@0.5:f0.5:decode:cycle",
    " kv:all  +  v_proj@27 : w16 ": "kv:all + v_proj@27:w16",
    "kv:all + resid_post@18:w16 + resid_post@25:w16 + v_proj@27:w16": (
        "kv:all + resid_post@18:w16 + resid_post@25:w16 + v_proj@27:w16"
    ),
}


@pytest.mark.parametrize("text", sorted(CANONICAL))
def test_parse_format_round_trip(text):
    plan = Plan.parse(text)
    assert str(plan) == CANONICAL[text]
    assert Plan.parse(str(plan)) == plan
    assert Plan.from_dicts(plan.to_dicts()) == plan
    assert as_plan(text) == plan and as_plan(plan.to_dicts()) == plan and as_plan(list(plan)) == plan


def test_parse_gives_the_declared_objects():
    assert Plan.parse("kv:all + v_proj@27:w16:both") == Plan((KVSplice(), Patch(site="v_proj", layer=27, window=16)))
    assert parse_intervention("kv:18,25:left:keep:w4") == KVSplice(layers=(18, 25), align="left", rope="keep", window=4)
    assert parse_intervention("kv:all:p2-6") == KVSplice(align="range", positions=(2, 6))
    assert parse_intervention("v_proj@0.84:qh5") == HeadPatch(site="v_proj", layer=0.84, heads=(5,), head_kind="query")
    assert parse_intervention("ablate:k_proj@2:mean:h1") == Ablate(site="k_proj", layer=2, how="mean", heads=(1,))
    assert parse_intervention("noise:v_proj@27:raw:sd2.0") == Noise(
        site="v_proj", layer=27, norm_matched=False, std=2.0
    )
    assert parse_intervention("resid_post@1:f0.25:mix:a0.5:decode:cycle") == Patch(
        site="resid_post", layer=1, fraction=0.25, mode="mix", alpha=0.5, phase="decode", decode="cycle"
    )
    for empty in ("", "none", "baseline", "(none)", "  "):
        assert Plan.parse(empty) == Plan() and len(Plan.parse(empty)) == 0
    assert str(Plan()) == "(none)"


def test_needs_source():
    assert not Plan().needs_source
    assert Plan.parse("kv:all").needs_source
    assert Plan.parse("v_proj@1").needs_source
    assert Plan.parse("noise:v_proj@1").needs_source  # norm-matched reads the source's norms
    assert not Plan.parse("noise:v_proj@1:raw").needs_source
    assert not Plan.parse("ablate:v_proj@1").needs_source
    assert Plan.parse("ablate:v_proj@1:mean").needs_source
    assert not Plan((Steer(vector=(1.0,)),)).needs_source


ALL_KINDS = Plan(
    (
        KVSplice(layers=(1, 0.5, -1), align="left", rope="keep", window=3),
        KVSplice(align="range", positions=(1, 4)),
        Patch(site="resid_pre", layer=0.5, fraction=0.25, phase="prompt", mode="add", alpha=0.5, decode="mean"),
        HeadPatch(site="k_proj", layer=-1, heads=(0, 3), head_kind="query", positions=(2, 5)),
        Ablate(site="v_proj", layer=2, heads=(1,), how="mean", phase="decode"),
        Noise(site="attn_out", layer=1, window=4, norm_matched=False, seed=9, std=0.25),
        Steer(site="resid_post", layer=1, vector=(0.5, -1.0, 2.0), alpha=3.0, phase="prompt"),
    )
)


def test_dict_round_trip_of_every_kind():
    dicts = ALL_KINDS.to_dicts()
    assert [d["kind"] for d in dicts] == ["kv_splice", "kv_splice", "patch", "head_patch", "ablate", "noise", "steer"]
    assert Plan.from_dicts(dicts) == ALL_KINDS
    for d in dicts:  # plain data only: lists, not tuples
        assert all(not isinstance(v, tuple) for v in d.values())
    # a writer that drops None (TOML has no null) still round-trips: None is every field's default
    assert Plan.from_dicts([{k: v for k, v in d.items() if v is not None} for d in dicts]) == ALL_KINDS


TOML = """
[[plan]]
kind = "kv_splice"
layers = "all"
rope = "keep"

[[plan]]
kind = "kv_splice"
layers = [18, 0.75, -1]
align = "left"
window = 4

[[plan]]
kind = "patch"
site = "v_proj"
layer = 27
window = 16
phase = "both"

[[plan]]
kind = "head_patch"
site = "v_proj"
layer = 0.84
heads = [1, 3]
head_kind = "query"
positions = [2, 6]

[[plan]]
kind = "ablate"
site = "k_proj"
layer = -2
heads = [0]
how = "mean"

[[plan]]
kind = "noise"
site = "v_proj"
layer = 27
window = 16
norm_matched = false
seed = 3
std = 0.5

[[plan]]
kind = "steer"
site = "resid_post"
layer = -1
vector = [0.5, -1.0]
alpha = 2.0
"""


def test_toml_table_parses_into_the_plan():
    data = tomllib.loads(TOML)
    plan = Plan.from_dicts(data["plan"])
    expected = Plan(
        (
            KVSplice(rope="keep"),
            KVSplice(layers=(18, 0.75, -1), align="left", window=4),
            Patch(site="v_proj", layer=27, window=16),
            HeadPatch(site="v_proj", layer=0.84, heads=(1, 3), head_kind="query", positions=(2, 6)),
            Ablate(site="k_proj", layer=-2, heads=(0,), how="mean"),
            Noise(site="v_proj", layer=27, window=16, norm_matched=False, seed=3, std=0.5),
            Steer(site="resid_post", layer=-1, vector=(0.5, -1.0), alpha=2.0),
        )
    )
    assert plan == expected
    assert str(Plan(plan.interventions[:-1])) == (
        "kv:all:keep + kv:18,0.75,-1:left:w4 + v_proj@27:w16 + v_proj@0.84:qh1,3:p2-6 + "
        "ablate:k_proj@-2:mean:h0 + noise:v_proj@27:raw:seed3:sd0.5:w16"
    )
    assert Plan.parse(str(Plan(plan.interventions[:-1]))) == Plan(plan.interventions[:-1])


@pytest.mark.parametrize(
    "text,error,match",
    [
        ("v_proj", InterventionError, r"expected SITE@LAYER \(e.g. v_proj@27\)"),
        ("v_proj@x", InterventionError, "layer 'x' is not a number"),
        ("v_proj@1:zz", InterventionError, "unknown option 'zz'"),
        ("v_proj@1:p3", InterventionError, "unknown option 'p3'"),
        ("v_proj@1:pa-b", InterventionError, "v_proj@1:pa-b"),
        ("v_proj@1:fx", InterventionError, "v_proj@1:fx"),
        ("v_proj@1:ax", InterventionError, "v_proj@1:ax"),
        ("noise:v_proj@1:seedx", InterventionError, "noise:v_proj@1:seedx"),
        ("kv:1,x", InterventionError, "kv:1,x"),
        ("kv:foo", InterventionError, "unknown kv option 'foo'"),
        ("kv:all:w0", InterventionError, "window must be >= 1"),
        ("ablate", InterventionError, "expected ablate:SITE@LAYER"),
        ("ablate:v_proj@1:half", InterventionError, "unknown ablate option 'half'"),
        ("ablate:v_proj@1:hx", InterventionError, "unknown ablate option 'hx'"),
        ("ablate:v_proj@1:h1,x", InterventionError, "heads must be integers, got '1,x'"),
        ("v_proj@1:h1,x", InterventionError, "heads must be integers"),
        ("ablate:resid_post@1:h1", InterventionError, "acts on q_proj, k_proj, v_proj, z"),
        ("attn_out@1:h1", InterventionError, "HeadPatch acts on q_proj, k_proj, v_proj, z"),
        ("v_proj@1:qh", InterventionError, "needs at least one head"),
        ("noise", InterventionError, "expected noise:SITE@LAYER"),
        ("noise:v_proj@1:h1", InterventionError, "noise does not take heads"),
        ("steer:resid_post@1", InterventionError, "is a site, not a steering vector file"),
        ("v_proj@1:w0", InterventionError, "window must be >= 1"),
        ("v_proj@1:f1.5", InterventionError, r"fraction must lie in \(0, 1\]"),
        ("v_proj@1:f0", InterventionError, r"fraction must lie in \(0, 1\]"),
        ("v_proj@1:w4:f0.5", InterventionError, "at most one of window, positions, fraction"),
        ("v_proj@1:p5-3", InterventionError, "0 <= start < stop"),
        ("kv:all:p4-4", InterventionError, "0 <= start < stop"),
        ("kv:1:prepend", InterventionError, "needs layers='all'"),
        ("kv:all:prepend + kv:all", InterventionError, "cannot be combined"),
        ("kv:all:p1-3:w2", InterventionError, "window"),
        ("kv:all:prepend:w2", InterventionError, "window"),
        ("foo@1", SiteError, "unknown site 'foo'"),
        ("kv@3", SiteError, "unknown site 'kv'"),
        ("v_proj@1 + + kv", InterventionError, "expected SITE@LAYER"),
    ],
)
def test_malformed_items(text, error, match):
    with pytest.raises(error, match=match):
        Plan.parse(text)


def test_malformed_dicts():
    with pytest.raises(InterventionError, match="unknown intervention kind 'splice'"):
        intervention_from_dict({"kind": "splice"})
    with pytest.raises(InterventionError, match="unknown field.*heads"):
        intervention_from_dict({"kind": "patch", "site": "v_proj", "heads": [1]})
    with pytest.raises(InterventionError, match="KVSplice.align must be one of"):
        intervention_from_dict({"kind": "kv_splice", "align": "middle"})
    with pytest.raises(InterventionError, match="Patch.phase must be one of"):
        intervention_from_dict({"kind": "patch", "phase": "always"})
    with pytest.raises(InterventionError, match="Steer needs a non-empty vector"):
        intervention_from_dict({"kind": "steer"})
    with pytest.raises(InterventionError, match="a plan holds interventions"):
        Plan(("kv:all",))
