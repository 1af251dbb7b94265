"""Sites, hook points and layer resolution (no model needed, except for the adapter errors)."""

from __future__ import annotations

import pytest

from transferlab.sites import (
    ACTIVATION_SITES,
    SITES,
    HookPoint,
    SiteError,
    check_site,
    parse_hook_point,
    resolve_layer,
)


@pytest.mark.parametrize(
    "layer, n_layers, expected",
    [
        (0.84, 32, 27),
        (5 / 32, 32, 5),
        (27 / 32, 32, 27),
        (0.5, 32, 16),
        (0.0, 32, 0),
        (0.99, 32, 31),  # round(31.68) = 32 is clamped to the last layer
        (5, 32, 5),
        (0, 32, 0),
        (31, 32, 31),
        (-1, 32, 31),
        (-32, 32, 0),
        ("27", 32, 27),
        (" 27 ", 32, 27),
        ("-1", 32, 31),
        ("0.84", 32, 27),
        (27.0, 32, 27),  # an integral float other than 1.0 is an index
        (0.84, 5, 4),
        (5 / 32, 5, 1),
        (27 / 32, 5, 4),
        (-1, 4, 3),
        # ties round half up (Python's round() would go to even: 2.5 -> 2 but 13.5 -> 14)
        (0.5, 5, 3),
        (5 / 32, 16, 3),
        (27 / 32, 16, 14),
        (5 / 32, 48, 8),
        (27 / 32, 48, 41),
    ],
)
def test_resolve_layer(layer, n_layers, expected):
    got = resolve_layer(layer, n_layers)
    assert got == expected
    assert isinstance(got, int)


@pytest.mark.parametrize("layer", [32, 100, -33, "32", "-33"])
def test_layer_that_does_not_exist_says_how_many_layers(layer):
    with pytest.raises(SiteError, match=r"does not exist: the model has 32 layers"):
        resolve_layer(layer, 32)


@pytest.mark.parametrize("layer", [1.5, 2.7, -0.5, "1.5", 1.0, "1.0"])
def test_fraction_out_of_range_errors(layer):
    with pytest.raises(SiteError, match=r"fraction of depth must lie in \[0, 1\).*32 layers"):
        resolve_layer(layer, 32)


def test_fraction_one_is_refused_not_read_as_layer_one():
    # 1.0 could mean "the end of depth" or "layer 1": it must not silently become layer 1.
    with pytest.raises(SiteError, match="ambiguous"):
        resolve_layer(1.0, 32)


@pytest.mark.parametrize("layer", ["abc", "", "27x", "late"])
def test_layer_not_a_number(layer):
    with pytest.raises(SiteError, match=r"not a number.*32 layers"):
        resolve_layer(layer, 32)


def test_bool_is_not_a_layer():
    with pytest.raises(SiteError, match="not a layer index"):
        resolve_layer(True, 32)


def test_site_vocabulary():
    assert ACTIVATION_SITES == (
        "q_proj",
        "k_proj",
        "v_proj",
        "z",
        "attn_out",
        "resid_pre",
        "resid_post",
        "mlp_out",
        "mlp_hidden",
    )
    assert SITES == ACTIVATION_SITES + ("kv",)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("v_proj@27", HookPoint("v_proj", 27)),
        ("v_proj@-1", HookPoint("v_proj", 31)),
        (" resid_post@0.5 ", HookPoint("resid_post", 16)),
        ("q_proj @ 0.84", HookPoint("q_proj", 27)),
        ("mlp_out@0", HookPoint("mlp_out", 0)),
        ("kv", HookPoint("kv", -1)),
        (HookPoint("k_proj", -2), HookPoint("k_proj", 30)),
        (HookPoint("kv", -1), HookPoint("kv", -1)),
    ],
)
def test_parse_hook_point(text, expected):
    assert parse_hook_point(text, 32) == expected


def test_hook_point_str_round_trips():
    point = HookPoint("v_proj", 27)
    assert str(point) == "v_proj@27"
    assert parse_hook_point(str(point), 32) == point


@pytest.mark.parametrize("text", ["v_proj", "v_proj27", "resid_post:3", ""])
def test_malformed_hook_point(text):
    with pytest.raises(SiteError, match=r"must be written site@layer.*known sites: q_proj"):
        parse_hook_point(text, 32)


@pytest.mark.parametrize("text", ["attn@3", "@3", "V_PROJ@3", "hidden@0.5"])
def test_unknown_site_lists_known_sites(text):
    with pytest.raises(SiteError, match=r"unknown site .*known sites: q_proj, k_proj, v_proj"):
        parse_hook_point(text, 32)


def test_unknown_site_in_a_hook_point_object():
    with pytest.raises(SiteError, match="unknown site 'bogus'"):
        parse_hook_point(HookPoint("bogus", 1), 32)


@pytest.mark.parametrize("text", ["v_proj@", "v_proj@1@2", "v_proj@layer"])
def test_bad_layer_in_hook_point(text):
    with pytest.raises(SiteError, match="not a number"):
        parse_hook_point(text, 32)


def test_hook_point_layer_out_of_range():
    with pytest.raises(SiteError, match="the model has 32 layers"):
        parse_hook_point("v_proj@32", 32)
    with pytest.raises(SiteError, match="fraction of depth"):
        parse_hook_point("v_proj@1.2", 32)


def test_check_site():
    assert check_site("kv") == "kv"
    with pytest.raises(SiteError, match="unknown site 'kv'"):
        check_site("kv", ACTIVATION_SITES)


def test_model_layer_and_hook_point(stories):
    assert stories.n_layers == 5
    assert stories.layer(-1) == 4
    assert stories.layer("0.84") == 4
    assert stories.hook_point("v_proj@-1") == HookPoint("v_proj", 4)
    with pytest.raises(SiteError, match="the model has 5 layers"):
        stories.layer(5)


def test_adapter_rejects_layer_and_site(tiny_models):
    adapter = tiny_models("llama").adapter
    with pytest.raises(SiteError, match="layer 4 does not exist: the model has 4 layers"):
        adapter.handle(HookPoint("v_proj", 4))
    with pytest.raises(SiteError, match="unknown site 'kv'"):
        adapter.handle(HookPoint("kv", 0))
    with pytest.raises(SiteError, match="unknown site"):
        adapter.width("values")
    with pytest.raises(SiteError, match="has no heads"):
        adapter.heads("resid_post")
