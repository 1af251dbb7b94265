"""Logit-based scores on fake tokenizers and hand-built records."""

from __future__ import annotations

import numpy as np
import pytest

from transferlab.metrics.logit_scores import (
    LOGIT_SCORES,
    log_mass,
    logit_mass_score,
    logit_score_table,
    marker_token_ids,
    register_logit_score,
    validate_record,
)

VOCAB = ["<s>", "▁mirror", "mir", "mi", "▁Mirror", "mirrors", "▁self", "elf", "▁its", "▁fixed", "point", "Loop", "▁cat"]


class DecodeTokenizer:
    """Like an HF tokenizer: get_vocab + decode, special ids."""

    all_special_ids = [0]

    def get_vocab(self):
        return {t: i for i, t in enumerate(VOCAB)}

    def decode(self, ids):
        return "".join(VOCAB[i] for i in ids).replace("▁", " ")


class TokensOnlyTokenizer:
    """Only get_vocab + convert_ids_to_tokens (no decode)."""

    def get_vocab(self):
        return {t: i for i, t in enumerate(VOCAB)}

    def convert_ids_to_tokens(self, ids):
        return [VOCAB[i] for i in ids]


def names(ids):
    return sorted(VOCAB[i] for i in ids)


@pytest.mark.parametrize("tok", [DecodeTokenizer(), TokensOnlyTokenizer()])
def test_marker_token_ids(tok):
    ids = marker_token_ids(tok, ["Mirror", "itself", "loop", "fixed point"])
    # "mirror"/"Mirror" exact, "mir" a 3-char prefix, "Loop" exact after lowercasing,
    # "fixed" a prefix of "fixed point"; not "mi" (too short), "mirrors" (longer than
    # the marker), "elf" (inside, not a prefix), "point" (second word).
    # "its" is a 3-char prefix of "itself"; "self" is a prefix of no marker
    assert names(ids) == sorted(["▁mirror", "mir", "▁Mirror", "Loop", "▁fixed", "▁its"])
    assert ids == sorted(ids)


def test_marker_token_ids_skips_special_and_rejects_empty():
    class T(DecodeTokenizer):
        def decode(self, ids):
            return "mirror" if ids == [0] else super().decode(ids)

    assert 0 not in marker_token_ids(T(), ["mirror"])
    with pytest.raises(ValueError):
        marker_token_ids(DecodeTokenizer(), ["  "])
    with pytest.warns(UserWarning, match="no vocabulary token"):
        assert marker_token_ids(DecodeTokenizer(), ["zebra"]) == []


def test_log_mass_matches_softmax_sum():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 50)) * 3
    ids = [1, 7, 7, 20]
    for temp in (1.0, 0.8):
        p = np.exp(logits / temp)
        p /= p.sum(axis=1, keepdims=True)
        want = np.log(p[:, [1, 7, 20]].sum(axis=1))
        np.testing.assert_allclose(log_mass(logits, ids, temp), want, rtol=1e-12)
    assert np.all(np.isneginf(log_mass(logits, [])))
    np.testing.assert_allclose(log_mass(logits, range(50)), 0.0, atol=1e-12)


def _record(n=4, steps=6, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, steps, 30)) * 2
    rec = {
        "markers": log_mass(logits, [0, 1, 2]),
        "target_top": log_mass(logits, [3, 4, 5, 6, 7]),
    }
    lengths = [6, 3, 1, 0]  # example 3 finished before its first step
    for i, length in enumerate(lengths):
        rec["markers"][i, length:] = np.nan
        rec["target_top"][i, length:] = np.nan
    return rec, lengths


def test_logit_mass_score_reference():
    rec, lengths = _record()
    got = logit_mass_score(rec)
    for i, length in enumerate(lengths):
        if length == 0:
            assert np.isnan(got[i])
        else:
            diffs = [rec["markers"][i, s] - rec["target_top"][i, s] for s in range(length)]
            assert got[i] == pytest.approx(sum(diffs) / length)
    swapped = logit_mass_score(rec, "target_top", "markers")
    np.testing.assert_allclose(swapped[:3], -got[:3])


def test_logit_mass_score_nan_in_one_name_only_invalidates_the_step():
    rec = {"markers": np.log([[0.5, 0.25, np.nan]]), "target_top": np.log([[0.25, np.nan, 0.5]])}
    assert logit_mass_score(rec)[0] == pytest.approx(np.log(2.0))


def test_validate_record_errors():
    ok = {"markers": np.full((2, 3), -1.0), "target_top": np.full((2, 3), -2.0)}
    assert validate_record(ok, ["markers"]) == (2, 3)
    with pytest.raises(KeyError, match="target_top"):
        logit_mass_score({"markers": ok["markers"]})
    with pytest.raises(ValueError, match="shape"):
        validate_record({"markers": ok["markers"], "target_top": np.zeros((2, 4)) - 1})
    with pytest.raises(ValueError, match="2-D"):
        validate_record({"markers": np.zeros(3) - 1})
    with pytest.raises(ValueError, match="probability above 1"):
        validate_record({"markers": np.full((1, 1), 0.5)})


def test_logit_score_table_and_registry():
    rec, _ = _record()
    table = logit_score_table(rec)
    assert list(table.columns) == [*LOGIT_SCORES, "logit_valid_steps"]
    assert table["logit_valid_steps"].tolist() == [6, 3, 1, 0]
    np.testing.assert_allclose(table["logit_markers_vs_target"], logit_mass_score(rec), equal_nan=True)
    register_logit_score("mean_markers", lambda r: np.zeros(4))
    try:
        assert "mean_markers" in logit_score_table(rec).columns
        with pytest.raises(ValueError, match="already registered"):
            register_logit_score("mean_markers", lambda r: np.zeros(4))
    finally:
        LOGIT_SCORES.pop("mean_markers")
    with pytest.raises(KeyError):
        logit_score_table(rec, ["nope"])
