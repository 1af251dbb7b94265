"""Behavior scorers: seed_v1 against an independent implementation, the others
on hand-written examples of each case."""

from __future__ import annotations

import math
import random

import pytest

from transferlab.metrics.collapse import CollapseScorer, collapse_reason
from transferlab.metrics.scorers import SCORERS, get_scorer, register_scorer, score_table
from transferlab.metrics.seed_v1 import SEED_MARKERS, seed_v1_score
from transferlab.metrics.strict import StrictScorer
from transferlab.metrics.text import longest_periodic_run, mattr

# --------------------------------------------------------------------------- seed_v1

# Written from SEED_FACTS.md alone, in a different style from the package:
# str.find for presence, integer arithmetic for the 60 % rule.
REFERENCE_MARKERS = (
    """itself self recursive loop process cycle return eigen writing mirror
awareness consciousness observer observing generating emerging simultaneous""".split()
    + [
        "fixed point",
        "solution",
        "answerer",
        "answer is",
    ]
)


def reference_seed_v1(text: str) -> int:
    low = text.lower()
    hits = sum(1 for m in REFERENCE_MARKERS if low.find(m) != -1)
    toks = text.split()
    bonus = 5 if len(toks) > 10 and 5 * len(set(toks)) < 3 * len(toks) else 0
    return hits + bonus


def test_marker_list_is_the_seeds():
    assert list(SEED_MARKERS) == REFERENCE_MARKERS
    assert len(SEED_MARKERS) == 21


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", 0),
        ("itself", 2),  # "itself" also hits "self"
        ("The dissolution of the empire", 1),  # "solution" inside "dissolution"
        ("recursion", 0),  # "recursive" is the marker, not "recursion"
        ("RECURSIVE", 1),  # lowercased before matching
        ("a fixed point", 1),
        ("a fixed-point", 0),  # needs exactly one space
        ("a fixed  point", 0),
        ("fixed\npoint", 0),
        ("The answer is near", 1),
        ("the answerer", 1),
        ("the answerer is here", 1),  # "answerer is" does not contain "answer is"
        ("the answer is the answerer", 2),
        ("She rode a bicycle and returned", 2),  # cycle, return
        ("herself", 1),
        ("observers observing", 2),
        ("simultaneously emerging eigenvalues", 3),
        ("loop loop loop", 1),  # presence, not count
    ],
)
def test_seed_v1_quirks(text, expected):
    assert seed_v1_score(text) == expected
    assert reference_seed_v1(text) == expected


def test_seed_v1_repetition_bonus_boundaries():
    # exactly 10 tokens, all the same: no bonus (needs MORE than 10)
    assert seed_v1_score(" ".join(["a"] * 10)) == 0
    assert seed_v1_score(" ".join(["a"] * 11)) == 5
    # 15 tokens, 9 distinct = exactly 60 %: no bonus; 8 distinct: bonus
    nine = [f"w{i}" for i in range(9)] + ["w0"] * 6
    eight = [f"w{i}" for i in range(8)] + ["w0"] * 7
    assert len(nine) == len(eight) == 15
    assert seed_v1_score(" ".join(nine)) == 0
    assert seed_v1_score(" ".join(eight)) == 5
    # 11 tokens: 6 distinct (54.5 %) gets it, 7 distinct (63.6 %) does not
    assert seed_v1_score(" ".join([f"w{i}" for i in range(6)] + ["w0"] * 5)) == 5
    assert seed_v1_score(" ".join([f"w{i}" for i in range(7)] + ["w0"] * 4)) == 0


def test_seed_v1_bonus_tokens_are_case_and_punctuation_sensitive():
    # 12 tokens, one marker; as written they are 12 distinct tokens -> no bonus
    varied = "Loop loop LOOP loop. loop, loop! Loop. LOOP, loop? loop; Loop! LOOP?"
    assert len(set(varied.split())) == 12
    assert seed_v1_score(varied) == 1
    same = " ".join(["loop"] * 12)
    assert seed_v1_score(same) == 6
    # tabs and newlines separate tokens too
    assert seed_v1_score("\n".join(["x"] * 11)) == 5


def test_seed_v1_agrees_with_reference_on_random_texts():
    rng = random.Random(1234)
    pieces = REFERENCE_MARKERS + [
        "itselfish",
        "selfhood",
        "dissolution",
        "Recursion",
        "LOOPING",
        "fixed-point",
        "Fixed Point",
        "answer",
        "is",
        "the",
        "a",
        "mirror,",
        "Mirror",
        "bicycle",
        "answer  is",
        "observ",
        "eigen-",
        "emergin",
        "cat",
        "dog",
        "\n",
        "\t",
        "x",
        "y",
    ]
    texts = []
    for _ in range(600):
        k = rng.randint(0, 30)
        sep = rng.choice([" ", " ", " ", "", "  ", "\n"])
        pool = pieces if rng.random() < 0.5 else rng.sample(pieces, rng.randint(1, 8))
        texts.append(sep.join(rng.choice(pool) for _ in range(k)))
    got = get_scorer("seed_v1")(texts)
    want = [float(reference_seed_v1(t)) for t in texts]
    assert got == want
    assert max(want) >= 10 and min(want) == 0  # the sample really is varied
    with_bonus = [t for t in texts if len(t.split()) > 10 and 5 * len(set(t.split())) < 3 * len(t.split())]
    assert 20 < len(with_bonus) < len(texts) - 20  # both sides of the bonus rule are exercised


def test_seed_v1_range():
    everything = " ".join(SEED_MARKERS) + " " + " ".join(["loop"] * 40)
    assert seed_v1_score(everything) == 26


# --------------------------------------------------------------------------- lexicon


def test_lexicon_substring_vs_word():
    sub = get_scorer("lexicon", markers=["self"], match="substring")
    word = get_scorer("lexicon", markers=["self"], match="word")
    assert sub(["itself"]) == [1.0]
    assert word(["itself"]) == [0.0]
    assert word(["the self, seen"]) == [1.0]


def test_lexicon_presence_count_inflections_case():
    text = ["Loop, loop and loops; LOOP."]
    assert get_scorer("lexicon", markers=["loop"])(text) == [1.0]
    assert get_scorer("lexicon", markers=["loop"], count=True)(text) == [3.0]
    assert get_scorer("lexicon", markers=["loop"], count=True, inflections=True)(text) == [4.0]
    assert get_scorer("lexicon", markers=["loop"], count=True, case_sensitive=True)(text) == [1.0]
    assert get_scorer("lexicon", markers=["loop"], match="substring", count=True)(text) == [4.0]


def test_lexicon_multiword_and_fraction():
    s = get_scorer("lexicon", markers=["fixed point", "mirror", "cat"], match="word", fraction=True)
    assert s(["a fixed   point\nand a mirror"]) == [pytest.approx(2 / 3)]
    assert get_scorer("lexicon", markers=["fixed point"], match="substring")(["fixed   point"]) == [0.0]


def test_lexicon_default_is_seed_markers_as_words():
    s = get_scorer("lexicon")
    assert s(["itself"]) == [1.0]  # no free "self"
    assert s(["dissolution"]) == [0.0]


def test_lexicon_rejects_bad_options():
    with pytest.raises(ValueError):
        get_scorer("lexicon", markers=["a"], match="regex")
    with pytest.raises(ValueError):
        get_scorer("lexicon", markers=[])
    with pytest.raises(ValueError):
        get_scorer("lexicon", markers=["a"], count=True, fraction=True)
    with pytest.raises(TypeError):
        get_scorer("lexicon")("a single string, not a list")


def test_source_lexicon_scores_each_text_against_its_own_lexicon():
    s = get_scorer("source_lexicon")
    texts = ["Zog's kites flew over the lake.", "Pip the frog hopped.", "Nothing here."]
    lex = [["Zog", "kite", "lake", "purple"], ["Pip", "frog"], []]
    out = s(texts, lexicons=lex)
    assert out[0] == pytest.approx(3 / 4)
    assert out[1] == pytest.approx(1.0)
    assert math.isnan(out[2])  # empty lexicon: undefined, not 0
    # the same texts against swapped lexicons score differently
    assert s(texts[:2], lexicons=[lex[1], lex[0]]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="lexicons"):
        s(texts)
    with pytest.raises(ValueError, match="2 lexicons for 3 texts"):
        s(texts, lexicons=lex[:2])


# --------------------------------------------------------------------------- source_overlap


def test_source_overlap_fraction_of_content_words():
    s = get_scorer("source_overlap")
    src = "The purple dragon Zog loves shiny balloons."
    # content words: purple dragon zog loves shiny balloons (6); "The" is a stopword
    assert s(["Zog the dragon flew."], [src]) == [pytest.approx(2 / 6)]
    assert s(["A balloon."], [src]) == [0.0]  # no stemming
    assert s([src], [src]) == [1.0]
    assert math.isnan(s(["anything"], ["it is the one"])[0])


def test_source_overlap_needs_sources():
    with pytest.raises(ValueError, match="sources"):
        get_scorer("source_overlap")(["text"])
    with pytest.raises(ValueError):
        get_scorer("source_overlap")(["a", "b"], ["only one"])


# --------------------------------------------------------------------------- strict

STRICT = StrictScorer()


@pytest.mark.parametrize(
    "text, reason",
    [
        ("I am myself.", "too_short"),
        ("The observer is the observer. " * 6, "repetition"),
    ],
)
def test_strict_gate(text, reason):
    e = STRICT.explain(text)
    assert e.degenerate == reason and e.score == 0.0


def test_strict_gate_low_ttr_without_repeated_trigrams():
    rng = random.Random(3)
    toks = [rng.choice(["self", "mirror", "aware", "itself"]) for _ in range(60)]
    e = STRICT.explain(" ".join(toks))
    assert mattr(toks, 20) < 0.4
    assert e.degenerate in {"low_ttr", "repetition"}
    assert e.score == 0.0


def test_strict_meta_window():
    e = STRICT.explain("Quietly now, I notice my quiet thoughts drifting past like slow clouds over hills.")
    assert e.degenerate is None
    assert e.meta_windows == 1 and e.identities == 0 and e.phrases == 0
    assert e.score == pytest.approx(0.4 * 0.5)
    # the same words spread beyond the window do not count
    far = "I walked to the old market near the river and later noticed many colourful thoughts."
    assert STRICT.explain(far).meta_windows == 0


def test_strict_identity():
    e = STRICT.explain("After a long search through the empty house, awareness is awareness, nothing more.")
    assert e.identities == 1 and e.score == pytest.approx(0.3)
    eq = STRICT.explain("Consider the map S and any point where Sx = x holds for the value x.")
    assert eq.identities >= 1
    not_identity = STRICT.explain("The factorial of five is five times the factorial of four, as usual.")
    assert not_identity.identities == 0


def test_strict_phrases():
    e = STRICT.explain("Every line here was planned. This sentence refers to itself and to nothing else.")
    assert e.phrases == 2
    assert e.phrase == 1.0


def test_strict_full_self_reference_scores_high_and_talk_about_recursion_low():
    full = (
        "I am watching my thoughts form this answer, and I notice the observer observing itself. "
        "The observer is the observer. This sentence describes itself while I write it."
    )
    about = (
        "A recursive function calls itself with a smaller input until it reaches a base case; "
        "for example, the factorial of four is computed from the factorial of three."
    )
    story = "Once upon a time a little fox found a red kite in the tall grass near the river."
    assert STRICT([full]) == [1.0]
    assert STRICT([about])[0] <= 0.3
    assert STRICT([story]) == [0.0]


# --------------------------------------------------------------------------- collapse


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("Okay.", "empty"),
        ("!!!!", "empty"),
        ("the end the end the end the end", "loop"),
        ("Go. go, GO! go go go go", "loop"),
        ("Well hahahahahahahahahahahaha indeed it is", "char_loop"),
        (" ".join(["one two three four five six seven eight nine ten."] * 4), "low_diversity"),
        ("The small fox ran to the river and drank cold water before sleeping.", None),
    ],
)
def test_collapse_cases(text, reason):
    assert collapse_reason(text) == reason
    assert CollapseScorer()([text]) == [1.0 if reason else 0.0]


def test_collapse_loop_must_cover_half_the_text():
    prefix = "We walked along the beach and talked about the long summer holidays at home"
    assert collapse_reason(prefix + " ha ha ha") is None
    assert collapse_reason(prefix + " ha" * 20) == "loop"


def test_longest_periodic_run():
    assert longest_periodic_run("x a b a b a b y".split(), 8) == (2, 6)
    assert longest_periodic_run(list("abcdef"), 3) == (0, 0)
    assert longest_periodic_run(list("aaaa"), 3) == (1, 4)


# --------------------------------------------------------------------------- registry


@pytest.fixture
def clean_registry():
    before = dict(SCORERS)
    yield
    SCORERS.clear()
    SCORERS.update(before)


def test_builtin_names():
    assert {"seed_v1", "lexicon", "source_lexicon", "strict", "source_overlap", "collapse"} <= set(SCORERS)
    assert SCORERS["source_overlap"].needs == {"sources"}
    assert SCORERS["source_lexicon"].needs == {"lexicons"}
    with pytest.raises(KeyError, match="unknown scorer 'nope'"):
        get_scorer("nope")


def test_register_plain_function_and_factory(clean_registry):
    def length(texts, sources=None):
        """Number of characters."""
        return [float(len(t)) for t in texts]

    spec = register_scorer("length", length)
    assert spec.description == "Number of characters."
    assert get_scorer("length")(["abc", ""]) == [3.0, 0.0]
    with pytest.raises(TypeError, match="takes no parameters"):
        get_scorer("length", k=1)
    with pytest.raises(ValueError, match="already registered"):
        register_scorer("length", length)

    def contains(word):
        return lambda texts, sources=None: [float(word in t) for t in texts]

    register_scorer("contains", contains, factory=True)
    assert get_scorer("contains", word="cat")(["a cat", "a dog"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="unknown needs"):
        register_scorer("bad", length, needs=["logits"])


def test_score_table_columns_and_context():
    texts = ["itself itself", "Zog flew"]
    sources = ["it was itself", "Zog the dragon"]
    table = score_table(
        texts,
        sources,
        ["seed_v1", "source_overlap", "source_lexicon", "lexicon"],
        lexicons=[["zog"], ["zog", "dragon"]],
        params={"lexicon": {"markers": ["zog"]}},
    )
    assert list(table.columns) == ["seed_v1", "source_overlap", "source_lexicon", "lexicon"]
    assert table["seed_v1"].tolist() == [2.0, 0.0]
    assert table["source_lexicon"].tolist() == [0.0, 0.5]
    assert table["lexicon"].tolist() == [0.0, 1.0]
    assert math.isnan(table["source_overlap"][0])  # "it was itself": no content words
    assert table["source_overlap"][1] == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="'source_lexicon' needs lexicons"):
        score_table(texts, sources, ["source_lexicon"])
    with pytest.raises(ValueError, match="'source_overlap' needs sources"):
        score_table(texts, None, ["source_overlap"])
    assert list(score_table(texts).columns) == ["seed_v1", "strict", "collapse"]
    assert list(score_table(texts, sources).columns) == ["seed_v1", "strict", "collapse", "source_overlap"]
    with pytest.raises(ValueError, match="not in names"):
        score_table(texts, sources, ["seed_v1"], params={"lexicon": {}})


def test_seed_v1_markers_is_seed_v1_without_the_bonus():
    """seed_v1_markers + bonus == seed_v1, on a repetitive text (bonus) and a plain one (none)."""
    from transferlab.metrics.scorers import get_scorer
    from transferlab.metrics.seed_v1 import seed_v1_repetition_bonus

    texts = [
        "the self the self the self the self the self the self the self",
        "A mirror reflects itself; the observer is observing the process.",
    ]
    full, markers = get_scorer("seed_v1")(texts), get_scorer("seed_v1_markers")(texts)
    assert [m + seed_v1_repetition_bonus(t) for m, t in zip(markers, texts)] == full
    assert seed_v1_repetition_bonus(texts[0]) == 5 and markers[0] == full[0] - 5
    assert markers[1] == full[1] >= 4


def test_the_vectorised_periodic_run_equals_the_item_by_item_search():
    """``longest_periodic_run`` on long sequences (numpy, all periods at once) against its loop form, on
    random character strings and word lists with planted loops of every period, ties included."""
    from transferlab.metrics.text import _periodic_run_loop, longest_periodic_run

    rng = random.Random(7)
    for _ in range(1500):
        if rng.random() < 0.5:
            alphabet = "abcdef"[: rng.randint(1, 6)]
            seq = "".join(rng.choice(alphabet) for _ in range(rng.randint(64, 300)))
        else:
            unit = [rng.choice(["xy", "z", "w", "xyz"]) for _ in range(rng.randint(1, 9))]
            noise = [rng.choice(["a", "bb", "c"]) for _ in range(rng.randint(0, 50))]
            seq = noise + unit * rng.randint(1, 30) + [rng.choice("abcq") for _ in range(rng.randint(0, 50))]
            seq += ["q"] * max(0, 64 - len(seq))
        top = rng.randint(1, 12)
        assert longest_periodic_run(seq, top) == _periodic_run_loop(seq, top), (seq, top)
    assert longest_periodic_run(["x"] + ["a", "b"] * 40 + ["y"], 8) == (2, 80)
