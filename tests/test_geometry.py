"""Participation ratio and R_V, checked against independent numpy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import PROMPT, STORY, STORY2

from transferlab.metrics import ShortPromptError, participation_ratio, rv
from transferlab.metrics.geometry import default_rv_layers
from transferlab.sites import SiteError

FORMULAS = ("squared", "unsquared")


def _pr_reference(x: np.ndarray, formula: str = "squared") -> float:
    s = np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)
    if formula == "squared":
        return float((s**2).sum() ** 2 / (s**4).sum())
    return float(s.sum() ** 2 / (s**2).sum())


def _orthogonal_rows(w: int, d: int, norm: float = 3.0, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, w)))
    return norm * q.T  # w orthonormal rows of length d, scaled


# --------------------------------------------------------------------------- participation ratio


@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("w", [2, 5, 16])
def test_pr_of_w_orthogonal_equal_norm_rows_is_w(formula, w):
    x = _orthogonal_rows(w, 32)
    assert participation_ratio(x, formula) == pytest.approx(w, rel=1e-12)
    assert participation_ratio(torch.tensor(x, dtype=torch.float32), formula) == pytest.approx(w, rel=1e-5)


@pytest.mark.parametrize("formula", FORMULAS)
def test_pr_of_rank_one_is_one(formula):
    rng = np.random.default_rng(1)
    x = np.outer(rng.normal(size=16), rng.normal(size=32))
    assert participation_ratio(x, formula) == pytest.approx(1.0, rel=1e-9)


def test_the_two_formulas_differ_as_documented():
    x = np.diag([2.0, 1.0])  # singular values 2 and 1
    assert participation_ratio(x, "squared") == pytest.approx(25 / 17, rel=1e-14)  # (4+1)^2/(16+1)
    assert participation_ratio(x, "unsquared") == pytest.approx(9 / 5, rel=1e-14)  # (2+1)^2/(4+1)
    assert participation_ratio(x) == participation_ratio(x, "squared")  # squared is the default


@pytest.mark.parametrize("formula", FORMULAS)
def test_pr_center(formula):
    # w orthogonal rows plus a large common offset orthogonal to them: uncentred, the offset
    # dominates (PR near 1); centred, the rows span w-1 equal directions (PR = w-1).
    w = 6
    rows = _orthogonal_rows(w + 1, 32, norm=1.0)
    x = rows[:w] + 50.0 * rows[w]
    assert participation_ratio(x, formula, center=False) < 1.1
    assert participation_ratio(x, formula, center=True) == pytest.approx(w - 1, rel=1e-9)
    assert participation_ratio(x, formula, center=True) == pytest.approx(
        _pr_reference(x - x.mean(axis=0), formula), rel=1e-12
    )


def test_pr_is_float64_from_float32_and_bf16():
    x32 = torch.randn(12, 24, generator=torch.Generator().manual_seed(0))
    got = participation_ratio(x32)
    assert type(got) is float
    # float64 arithmetic on the float32 values: float32 arithmetic would be off by ~1e-7.
    assert got == pytest.approx(_pr_reference(x32.double().numpy()), rel=1e-13, abs=0)
    xb = x32.to(torch.bfloat16)
    got_b = participation_ratio(xb)
    assert type(got_b) is float
    assert got_b == pytest.approx(_pr_reference(xb.double().numpy()), rel=1e-13, abs=0)
    assert got_b == pytest.approx(got, rel=2e-2)


@pytest.mark.parametrize("shape", [(16,), (2, 3, 4), ()])
def test_pr_needs_a_2d_matrix(shape):
    with pytest.raises(ValueError, match=r"2-D \(tokens x features\) matrix, got shape"):
        participation_ratio(np.ones(shape))
    with pytest.raises(ValueError, match="2-D"):
        participation_ratio(torch.ones(shape))


def test_pr_unknown_formula():
    with pytest.raises(ValueError, match="unknown PR formula 'cubed'"):
        participation_ratio(np.eye(3), "cubed")


def test_pr_of_zero_matrix_is_nan():
    assert math.isnan(participation_ratio(np.zeros((4, 8))))


# --------------------------------------------------------------------------- R_V


def test_default_rv_layers():
    assert default_rv_layers(32) == (5, 27)
    assert default_rv_layers(64) == (10, 54)
    assert default_rv_layers(5) == (1, 4)
    assert default_rv_layers(16) == (3, 14)  # 2.5 and 13.5 both round up
    assert default_rv_layers(32, 3, -2) == (3, 30)


def _v_proj_reference(model, text: str, layers: tuple[int, int]) -> dict[int, np.ndarray]:
    """v_proj outputs at ``layers`` from our own hooks and an unpadded forward (all tokens)."""
    ids = model.tokenizer(text)["input_ids"]
    got: dict[int, np.ndarray] = {}
    handles = [
        model.hf.model.layers[layer].self_attn.v_proj.register_forward_hook(
            lambda mod, args, out, layer=layer: got.__setitem__(layer, out[0].detach().double().numpy())
        )
        for layer in layers
    ]
    try:
        with torch.no_grad():
            model.hf(input_ids=torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    assert ids[0] == model.tokenizer.bos_token_id
    return got


def _rv_reference(model, text: str, early: int, late: int, window: int = 16, formula: str = "squared") -> float:
    v = _v_proj_reference(model, text, (early, late))
    no_bos = {layer: x[1:] for layer, x in v.items()}  # drop BOS, then the last `window` tokens
    return _pr_reference(no_bos[late][-window:], formula) / _pr_reference(no_bos[early][-window:], formula)


def test_rv_equals_independent_computation(stories):
    # Batched with prompts of other lengths, so STORY2 and PROMPT are left-padded.
    df = rv(stories, [STORY, STORY2, PROMPT], short="nan")
    # Five layers: early = round(5/32 * 5) = 1, late = round(27/32 * 5) = 4.
    assert list(df.layer_early) == [1, 1, 1] and list(df.layer_late) == [4, 4, 4]
    for i, text in enumerate([STORY, STORY2]):
        assert df.n_tokens[i] >= 16 and df.status[i] == "ok"
        v = _v_proj_reference(stories, text, (1, 4))
        assert df.pr_early[i] == pytest.approx(_pr_reference(v[1][1:][-16:]), rel=1e-5)
        assert df.pr_late[i] == pytest.approx(_pr_reference(v[4][1:][-16:]), rel=1e-5)
        assert df.rv[i] == pytest.approx(_rv_reference(stories, text, 1, 4), rel=1e-5)
    assert list(df.columns) == [
        "prompt",
        "n_tokens",
        "layer_early",
        "layer_late",
        "pr_early",
        "pr_late",
        "rv",
        "status",
    ]


def test_rv_options_match_reference(stories):
    df = rv(stories, [STORY], early=0, late=-2, window=8, formula="unsquared")
    assert (df.layer_early[0], df.layer_late[0]) == (0, 3)
    assert df.rv[0] == pytest.approx(_rv_reference(stories, STORY, 0, 3, window=8, formula="unsquared"), rel=1e-5)
    centred = rv(stories, [STORY], center=True)
    v = _v_proj_reference(stories, STORY, (1, 4))
    early, late = v[1][1:][-16:], v[4][1:][-16:]
    expected = _pr_reference(late - late.mean(0)) / _pr_reference(early - early.mean(0))
    assert centred.rv[0] == pytest.approx(expected, rel=1e-5)
    assert centred.rv[0] != pytest.approx(rv(stories, [STORY]).rv[0], rel=1e-3)


def test_rv_on_tiny_model_default_layers(tiny_models):
    m = tiny_models("qwen2")
    df = rv(m, [STORY])
    # Four layers: round(0.625) = 1 and round(3.375) = 3.
    assert (df.layer_early[0], df.layer_late[0]) == (1, 3)
    assert df.rv[0] == pytest.approx(_rv_reference(m, STORY, 1, 3), rel=1e-5)


def test_rv_short_error_names_prompt_and_length(stories):
    n = len(stories.tokenizer(PROMPT)["input_ids"]) - 1
    with pytest.raises(ShortPromptError) as info:
        rv(stories, [STORY, PROMPT])
    msg = str(info.value)
    assert "prompt 1" in msg and repr(PROMPT) in msg
    assert f"has {n} tokens (BOS excluded)" in msg and "window of 16" in msg


def test_rv_short_nan_reports_status(stories):
    n = len(stories.tokenizer(PROMPT)["input_ids"]) - 1
    df = rv(stories, [PROMPT, STORY], short="nan")
    assert math.isnan(df.rv[0]) and math.isnan(df.pr_early[0]) and math.isnan(df.pr_late[0])
    assert df.status[0] == f"short: {n} < window 16"
    assert df.n_tokens[0] == n
    assert df.status[1] == "ok" and np.isfinite(df.rv[1])


def test_rv_short_shrink_uses_all_tokens_and_says_so(stories):
    n = len(stories.tokenizer(PROMPT)["input_ids"]) - 1
    assert 2 <= n < 16
    df = rv(stories, [PROMPT], short="shrink")
    assert df.status[0] == f"shrunk: window {n} < 16"
    # every non-BOS token is used: the reference takes the last n (= all) tokens after BOS
    assert df.rv[0] == pytest.approx(_rv_reference(stories, PROMPT, 1, 4, window=n), rel=1e-5)


def test_rv_shrink_of_a_one_token_prompt_is_nan(stories):
    df = rv(stories, ["a"], short="shrink")  # one token after BOS
    assert df.n_tokens[0] == 1 and math.isnan(df.rv[0]) and df.status[0].startswith("short")


@pytest.mark.parametrize("window", [1, 0, -3])
def test_rv_window_below_two(stories, window):
    with pytest.raises(ValueError, match=f"R_V window must be at least 2 tokens, got {window}"):
        rv(stories, [STORY], window=window)


def test_rv_bad_policy_and_layer(stories):
    with pytest.raises(ValueError, match=r"short must be one of \('error', 'nan', 'shrink'\), got 'skip'"):
        rv(stories, [STORY], short="skip")
    with pytest.raises(SiteError, match="the model has 5 layers"):
        rv(stories, [STORY], late=5)
    with pytest.raises(SiteError, match="fraction of depth"):
        rv(stories, [STORY], late=1.5)


def test_rv_accepts_a_single_string(stories):
    df = rv(stories, STORY)
    assert len(df) == 1 and df.prompt[0] == STORY
