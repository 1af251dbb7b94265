"""Target-fidelity text scores: ``target_overlap`` and ``answer``, and the bank's known answers."""

from __future__ import annotations

import math

import pytest

from transferlab.metrics import get_scorer, score_table
from transferlab.metrics.answers import answer_tokens, contains_answer
from transferlab.metrics.scorers import SCORERS
from transferlab.prompts import BankError, load_bank

# --------------------------------------------------------------------------- target_overlap


def test_target_overlap_mirrors_source_overlap():
    """target_overlap with targets=X equals source_overlap with sources=X, text by text (one computation)."""
    prompts = ["The purple dragon Zog loves shiny balloons.", "What is the capital of Canada?", "it is the one"]
    texts = ["Zog the dragon flew.", "Ottawa is the capital city of Canada.", "anything"]
    src = get_scorer("source_overlap")(texts, prompts)
    tgt = get_scorer("target_overlap")(texts, targets=prompts)
    assert src[:2] == tgt[:2] and math.isnan(src[2]) and math.isnan(tgt[2])
    assert tgt[:2] == [pytest.approx(2 / 6), pytest.approx(2 / 2)]  # {capital, canada} both used


def test_target_overlap_reads_targets_not_sources():
    table = score_table(
        ["the capital of canada"],
        ["dragons and balloons"],
        ["source_overlap", "target_overlap"],
        targets=["What is the capital of Canada?"],
    )
    assert table["source_overlap"][0] == 0.0 and table["target_overlap"][0] == 1.0
    direct = get_scorer("target_overlap")(["the capital of canada"], ["dragons"], targets=["Capital of Canada?"])
    assert direct == [1.0]
    assert SCORERS["target_overlap"].needs == {"targets"}
    with pytest.raises(ValueError, match="'target_overlap' needs targets"):
        score_table(["x"], ["y"], ["target_overlap"])
    with pytest.raises(ValueError, match="2 targets for 1 texts"):
        get_scorer("target_overlap")(["x"], targets=["a", "b"])


# --------------------------------------------------------------------------- answer normalisation


@pytest.mark.parametrize(
    "text, answer, found",
    [
        ("The product is 391.", "391", True),
        ("It is 3910.", "391", False),  # numbers are whole tokens
        ("There are eight planets.", "8", True),
        ("There are 18 planets.", "8", False),
        ("About 3.6 of them", "36", False),
        ("The root of 1,764 is forty-two", "42", True),
        ("two hundred and six bones", "206", True),
        ("So x = −1/2 or x=3", "-1/2", True),
        ("It factors as (x-3)(x+3).", "(x - 3)(x + 3)", True),
        ("It factors as (x-3)(x-3).", "(x - 3)(x + 3)", False),
        ("The derivative is 3x².", "3x^2", True),
        ("Plants take in CO₂", "CO2", True),
        ("OTTAWA, of course", "Ottawa", True),
        ("about 25 pi square units", "25π", True),
        ("Ottawan culture", "Ottawa", False),  # whole words, no stemming
    ],
)
def test_contains_answer_normalises_both_sides(text, answer, found):
    assert contains_answer(text, [answer]) is found


def test_answer_tokens_number_words():
    assert answer_tokens("forty two, ninety-nine and one thousand two hundred") == ["42", "99", "and", "1200"]
    assert answer_tokens("one hundred and") == ["100", "and"]  # a trailing "and" is the text's


def test_answer_scorer_nan_without_answer_and_refuses_a_bare_string():
    s = get_scorer("answer")
    assert s(["It is Ottawa.", "Toronto!"], answers=[["Ottawa"], ["Ottawa"]]) == [1.0, 0.0]
    out = s(["anything", "anything"], answers=[None, []])
    assert all(math.isnan(v) for v in out)
    with pytest.raises(TypeError, match="answers\\[0\\] must be a list"):
        s(["x"], answers=["Ottawa"])
    with pytest.raises(ValueError, match="no answer tokens"):
        s(["x"], answers=[["..."]])
    with pytest.raises(ValueError, match="'answer' needs answers"):
        score_table(["x"], None, ["answer"])


# --------------------------------------------------------------------------- the bank's answers


@pytest.fixture(scope="module")
def research():
    return load_bank("research")


def test_math_and_factual_prompts_carry_answers(research):
    for group in ("math", "math_long", "factual", "factual_long"):
        prompts = research.select([group])
        have = [p for p in prompts if p.answers]
        assert len(have) >= len(prompts) // 2, group  # explanation-only prompts have none
        for p in have:
            assert isinstance(p.answers, tuple) and all(isinstance(a, str) and a for a in p.answers)
    for p in research:  # answers belong to the math and factual groups only
        if p.answers:
            assert p.group in ("math", "math_long", "factual", "factual_long"), p.id
    assert research.get("math_01").answers == ("391",)
    assert research.get("factual_01").answers == ("Ottawa",)
    assert research.get("factual_long_01").answers == ("1914",)


def test_no_prompt_contains_its_own_answer(research):
    """A continuation that merely restates its question must not score as answered."""
    for p in research:
        if p.answers:
            assert not contains_answer(p.text, p.answers), p.id


GOOD = """bank: tiny
schema: 1
groups:
  g:
    pillar: baseline
    description: tiny
    prompts:
      - {id: g_01, text: "What is 2 plus 2?", answer: "4"}
      - {id: g_02, text: "Name a primary colour.", answer: [red, blue, yellow]}
      - {id: g_03, text: "hello there"}
"""


def test_answer_field_one_string_or_a_list(tmp_path):
    path = tmp_path / "tiny.good.yaml"
    path.write_text(GOOD)
    bank = load_bank(path)
    assert bank.get("g_01").answers == ("4",)
    assert bank.get("g_02").answers == ("red", "blue", "yellow")
    assert bank.get("g_03").answers is None
    version = bank.version
    path.write_text(GOOD.replace('answer: "4"', 'answer: "four"'))
    assert load_bank(path).version != version  # an answer is part of the bank's version


@pytest.mark.parametrize("bad", ['answer: ""', "answer: []", 'answer: [" red"]', "answer: 4"])
def test_bad_answers_name_the_field(tmp_path, bad):
    path = tmp_path / "tiny.bad.yaml"
    path.write_text(GOOD.replace('answer: "4"', bad))
    with pytest.raises(BankError) as err:
        load_bank(path)
    assert err.value.field.startswith("answer") and "g_01" in err.value.entry
