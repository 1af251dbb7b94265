"""Prompt banks (content, schema, versioning) and pairing."""

from __future__ import annotations

import hashlib
import re
import shutil
from collections import Counter

import numpy as np
import pytest

from transferlab.prompts import (
    BankError,
    Prompt,
    available_banks,
    load_bank,
    make_pairs,
    max_pairs_without_reuse,
    pairs_table,
)
from transferlab.prompts.bank import DATA_DIR

SEED_MARKERS = (
    """itself self recursive loop process cycle return eigen writing mirror awareness
consciousness observer observing generating emerging simultaneous""".split()
    + ["fixed point", "solution", "answerer", "answer is"]
)

BASELINES = ["math", "factual", "creative", "impossible", "personal", "instructional"]


@pytest.fixture(scope="module")
def research_bank():
    return load_bank("research")


@pytest.fixture(scope="module")
def stories_bank():
    return load_bank("stories")


# --------------------------------------------------------------------------- research bank


def test_shipped_banks():
    assert set(available_banks()) == {"research", "stories"}


def test_research_groups_and_sizes(research_bank):
    sizes = Counter(p.group for p in research_bank)
    for g in ["L1", "L2", "L3", "L4", "L5", *BASELINES, "long_nonrecursive", "pseudo_recursive", "repetitive"]:
        assert sizes[g] >= 20, g
    for g in BASELINES:
        assert sizes[f"{g}_long"] >= 20
    for g in ["kill_repetition", "kill_ood", "kill_surreal_first", "kill_surreal_third"]:
        assert sizes[g] >= 10, g
    assert set(research_bank.groups()) == set(sizes)


def test_ids_levels_and_pillars(research_bank):
    for p in research_bank:
        assert re.fullmatch(rf"{re.escape(p.group)}_\d\d+", p.id), p.id
    assert [p.level for p in research_bank.select(["L3"])] == [3] * 20
    assert all(p.level is None for p in research_bank.select(["math"]))
    assert {p.group for p in research_bank.select(pillar="kill_switch")} == {
        "kill_repetition",
        "kill_ood",
        "kill_surreal_first",
        "kill_surreal_third",
    }
    assert research_bank.get("L5_07").group == "L5"
    assert research_bank.get("math_long_03").group == "math_long"


def test_long_variants_are_long_enough_for_the_rv_window(research_bank):
    for g in BASELINES:
        info = research_bank.group_info[f"{g}_long"]
        assert info.length_variant_of == g
        # 16 words is >= 16 tokens for any tokenizer (about 1.3 tokens per word)
        assert min(len(p.text.split()) for p in research_bank.select([f"{g}_long"])) >= 16
    # the recursion levels and controls are long enough too
    for g in ["L1", "L2", "L3", "L4", "L5", "pseudo_recursive", "repetitive", "kill_ood"]:
        assert min(len(p.text.split()) for p in research_bank.select([g])) >= 16, g


def test_baselines_carry_no_seed_markers(research_bank):
    groups = (
        BASELINES
        + [f"{g}_long" for g in BASELINES]
        + ["long_nonrecursive", "kill_ood", "kill_surreal_first", "kill_surreal_third"]
    )
    for p in research_bank.select(groups):
        low = p.text.lower()
        assert not [m for m in SEED_MARKERS if m in low], p.id


def test_recursion_levels_are_a_dose(research_bank):
    """Marker density of the prompts themselves grows with the level (the
    confound source_overlap measures); L1 and L2 carry none."""

    def mean_hits(g):
        return np.mean([sum(m in p.text.lower() for m in SEED_MARKERS) for p in research_bank.select([g])])

    dose = [mean_hits(g) for g in ["L1", "L2", "L3", "L4", "L5"]]
    assert dose[0] == dose[1] == 0
    assert dose[4] > dose[2] > 0 and dose[4] > dose[3] > 0


def test_texts_are_unique(research_bank, stories_bank):
    for bank in (research_bank, stories_bank):
        texts = [p.text for p in bank]
        assert len(set(texts)) == len(texts)


# --------------------------------------------------------------------------- stories bank


def _words(text):
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


def _mentions(text, marker):
    ws = _words(text)
    m = marker.lower()
    return m in ws or m + "s" in ws or m + "es" in ws


def test_stories_sizes_and_lexicons(stories_bank):
    src = stories_bank.select(["story_source"])
    tgt = stories_bank.select(["story_target"])
    assert len(src) >= 40 and len(tgt) >= 60
    for p in src:
        assert 4 <= len(p.markers) <= 8, p.id
        missing = [m for m in p.markers if not _mentions(p.text, m)]
        assert not missing, (p.id, missing)
        assert 12 <= len(p.text.split()) <= 32
    for p in tgt:
        assert p.markers is None
        assert 5 <= len(p.text.split()) <= 14


def test_no_target_contains_any_source_marker(stories_bank):
    markers = {m for p in stories_bank.select(["story_source"]) for m in p.markers}
    for p in stories_bank.select(["story_target"]):
        leaked = [m for m in markers if _mentions(p.text, m)]
        assert not leaked, (p.id, leaked)


def test_sources_are_distinguishable_by_their_lexicons(stories_bank):
    """Each source mentions more of its own lexicon than of any other's,
    so the source_lexicon score can tell pairs apart."""
    src = stories_bank.select(["story_source"])
    for p in src:
        own = np.mean([_mentions(p.text, m) for m in p.markers])
        others = max(np.mean([_mentions(p.text, m) for m in q.markers]) for q in src if q.id != p.id)
        assert own > others, p.id


# --------------------------------------------------------------------------- versioning and errors


def test_version_is_sha256_of_files_and_changes_with_content(tmp_path, stories_bank):
    h = hashlib.sha256()
    for f in sorted(DATA_DIR.glob("stories.*.yaml"), key=lambda p: p.name):
        data = f.read_bytes()
        h.update(f.name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    assert stories_bank.version == h.hexdigest()
    assert load_bank("stories").version == stories_bank.version
    for f in DATA_DIR.glob("stories.*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    copy = load_bank(tmp_path)
    assert copy.version == stories_bank.version and len(copy) == len(stories_bank)
    t = tmp_path / "stories.targets.yaml"
    t.write_text(t.read_text().replace("went to the park.", "went to the zoo."))
    changed = load_bank(tmp_path)
    assert changed.version != stories_bank.version
    assert changed.get("story_target_01").text == "One day, a little boy went to the zoo."


GOOD = """\
bank: tiny
schema: 1
groups:
  g:
    pillar: baseline
    description: a group
    min_words: 2
    prompts:
      - {id: g_01, text: "hello there"}
      - {id: g_02, text: "good morning"}
"""


def _bad(tmp_path, text, name="tiny.bad.yaml"):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(BankError) as err:
        load_bank(path)
    return err.value


def test_good_file_loads(tmp_path):
    path = tmp_path / "tiny.good.yaml"
    path.write_text(GOOD)
    bank = load_bank(path)
    assert bank.name == "tiny" and [p.id for p in bank] == ["g_01", "g_02"]
    assert bank.get("g_02") == Prompt("g_02", "g", "good morning")


@pytest.mark.parametrize(
    "edit, entry, field, message",
    [
        (('{id: g_02, text: "good morning"}', "{id: g_02}"), "g_02", "text", "Field required"),
        (('{id: g_02, text: "good morning"}', "{id: g_02, text: 5}"), "g_02", "text", "string"),
        (("id: g_02", "id: g-2"), "g-2", "id", "must be 'g_<NN>'"),
        (("id: g_02", "id: g_01"), "g_01", "id", "duplicate id"),
        (('"good morning"', '"morning"'), "g_02", "text", "at least 2"),
        (('"good morning"', '"good morning", colour: red'), "g_02", "colour", "Extra inputs"),
        (('"good morning"', '"good morning", markers: fox'), "g_02", "markers", "list"),
        (('"good morning"', '"  good morning"'), "g_02", "text", "whitespace"),
    ],
)
def test_malformed_entries_name_file_entry_and_field(tmp_path, edit, entry, field, message):
    err = _bad(tmp_path, GOOD.replace(*edit))
    assert err.file.endswith("tiny.bad.yaml")
    assert entry in err.entry and "prompts[1]" in err.entry
    assert err.field == field
    assert message in err.message
    assert "tiny.bad.yaml" in str(err) and field in str(err) and entry in str(err)


def test_malformed_groups_and_files(tmp_path):
    err = _bad(tmp_path, GOOD.replace("pillar: baseline", "pillar: nonsense"))
    assert err.entry == "group g" and err.field == "pillar"
    err = _bad(tmp_path, GOOD.replace("min_words: 2", "min_words: 2\n    requires_markers: true"))
    assert err.entry.startswith("g_01") and err.field == "markers"
    err = _bad(tmp_path, GOOD.replace("schema: 1", "schema: 2"))
    assert err.field == "schema"
    err = _bad(tmp_path, GOOD.replace("    prompts:", "    prompts: [", 1))
    assert err.field == "(syntax)" and "line" in err.entry
    err = _bad(tmp_path, "- just\n- a list\n")
    assert err.entry == "(file)"
    err = _bad(tmp_path, GOOD.replace("min_words: 2", "length_variant_of: nothing"))
    assert err.field == "length_variant_of"


def test_lookup_errors(research_bank):
    with pytest.raises(KeyError, match="L5_07"):
        research_bank.get("L5_7")
    with pytest.raises(KeyError, match="unknown groups"):
        research_bank.select(["nope"])
    with pytest.raises(FileNotFoundError, match="research, stories"):
        load_bank("no_such_bank")


# --------------------------------------------------------------------------- pairing


def pool(prefix, n, words=None):
    return [Prompt(f"{prefix}_{i:02d}", prefix, " ".join(["w"] * (words[i] if words else 3))) for i in range(n)]


def test_pairs_are_deterministic_and_order_independent():
    s, t = pool("s", 8), pool("t", 12)
    a = make_pairs(s, t, 8, seed=3)
    assert a == make_pairs(list(reversed(s)), t[::-1], 8, seed=3)
    assert a != make_pairs(s, t, 8, seed=4)
    assert [p.pair_id for p in a] == list(range(8))


def test_without_replacement():
    s, t = pool("s", 8), pool("t", 12)
    pairs = make_pairs(s, t, 8, seed=0)
    assert len({p.source_id for p in pairs}) == 8
    assert len({p.target_id for p in pairs}) == 8
    assert max_pairs_without_reuse(s, t) == 8
    with pytest.raises(ValueError, match=r"only 8 are possible.*reuse=True"):
        make_pairs(s, t, 9, seed=0)


def test_balanced_reuse_and_no_repeats():
    s, t = pool("s", 9), pool("t", 13)
    pairs = make_pairs(s, t, 100, seed=1, reuse=True)
    sc = Counter(p.source_id for p in pairs)
    tc = Counter(p.target_id for p in pairs)
    assert set(sc.values()) == {100 // 9, 100 // 9 + 1} and len(sc) == 9
    assert set(tc.values()) == {100 // 13, 100 // 13 + 1} and len(tc) == 13
    assert len({(p.source_id, p.target_id) for p in pairs}) == 100
    first = pairs[:9]  # the smaller pool is exhausted only after 9 pairs
    assert len({p.source_id for p in first}) == 9 and len({p.target_id for p in first}) == 9
    assert len(make_pairs(s, t, 117, seed=1, reuse=True)) == 117  # every combination once
    with pytest.raises(ValueError, match="only 117 distinct"):
        make_pairs(s, t, 118, seed=1, reuse=True)


def test_never_pairs_a_prompt_with_itself():
    p = pool("x", 5)
    for seed in range(20):
        pairs = make_pairs(p, p, 20, seed=seed, reuse=True)
        assert all(q.source_id != q.target_id for q in pairs)
        assert len({(q.source_id, q.target_id) for q in pairs}) == 20
        assert set(Counter(q.source_id for q in pairs).values()) == {4}
        assert set(Counter(q.target_id for q in pairs).values()) == {4}
    with pytest.raises(ValueError, match="distinct"):
        make_pairs(p, p, 21, seed=0, reuse=True)


def test_length_matching_reduces_length_gaps():
    rng = np.random.default_rng(0)
    s = pool("s", 30, rng.integers(5, 60, 30).tolist())
    t = pool("t", 40, rng.integers(5, 60, 40).tolist())

    def gap(pairs):
        return np.mean([abs(len(p.source_text.split()) - len(p.target_text.split())) for p in pairs])

    plain = make_pairs(s, t, 90, seed=2, reuse=True)
    matched = make_pairs(s, t, 90, seed=2, reuse=True, length_match=True)
    assert gap(matched) < 0.5 * gap(plain)
    assert Counter(p.source_id for p in matched) == Counter(p.source_id for p in plain)
    # a custom length function is used: by characters of the id digits, say
    odd = make_pairs(s, t, 30, seed=2, length_match=True, tokenizer_len=lambda text: -len(text))
    lens = [(len(p.source_text), len(p.target_text)) for p in odd]
    assert [a for a, _ in lens] == sorted(a for a, _ in lens)[::-1]
    assert [b for _, b in lens] == sorted(b for _, b in lens)[::-1]


def test_stories_support_300_pairs(stories_bank):
    src, tgt = stories_bank.select(["story_source"]), stories_bank.select(["story_target"])
    pairs = make_pairs(src, tgt, 300, seed=42, reuse=True)
    table = pairs_table(pairs)
    assert list(table.columns) == ["pair_id", "source_id", "target_id", "source_text", "target_text"]
    assert len(table) == 300 and table["source_id"].nunique() == len(src)
    assert table["source_id"].value_counts().max() - table["source_id"].value_counts().min() <= 1
    assert not table.duplicated(["source_id", "target_id"]).any()


def test_bad_arguments():
    s, t = pool("s", 3), pool("t", 3)
    with pytest.raises(ValueError, match="positive"):
        make_pairs(s, t, 0, seed=0)
    with pytest.raises(ValueError, match="empty"):
        make_pairs([], t, 1, seed=0)
    with pytest.raises(ValueError, match="duplicate ids"):
        make_pairs(s + s[:1], t, 1, seed=0)


def test_story_token_lengths_with_the_embedded_tokenizer(stories_bank):
    """Sources 20-60 tokens, targets 8-25 (BOS included) for the shipped model."""
    from transferlab.models.embedded import embedded_tokenizer

    tok = embedded_tokenizer()
    for group, lo, hi in (("story_source", 20, 60), ("story_target", 8, 25)):
        lens = [len(tok(p.text)["input_ids"]) for p in stories_bank.select([group])]
        assert lo <= min(lens) and max(lens) <= hi, (group, min(lens), max(lens))


def test_a_marker_absent_from_its_own_source_is_an_error(tmp_path):
    """A source's lexicon must be words the source uses: the loader checks it, naming file, entry and field."""
    from pathlib import Path

    import transferlab.prompts.bank as bank_mod
    from transferlab.prompts import BankError, load_bank

    data = Path(bank_mod.__file__).parent / "data"
    text = (data / "stories.sources.yaml").read_text()
    bad = text.replace(
        "markers: [Daisy, bunny, fluffy, carrot, rock, farm]", "markers: [Daisy, bunny, fluffy, carrot, rock, banana]"
    )
    assert bad != text
    (tmp_path / "stories.sources.yaml").write_text(bad)
    (tmp_path / "stories.targets.yaml").write_text((data / "stories.targets.yaml").read_text())
    with pytest.raises(BankError) as err:
        load_bank(tmp_path)
    assert "story_source_05" in str(err.value) and "'markers'" in str(err.value) and "banana" in str(err.value)


def test_bank_files_parse_alike_with_libyaml_and_pure_python_yaml(tmp_path):
    """Banks are parsed with libyaml's safe loader where PyYAML has it: every shipped bank file and W300's bank
    read the same as with the pure-Python safe loader."""
    from pathlib import Path

    import yaml

    from transferlab.experiments.w300 import write_w300_bank
    from transferlab.prompts import bank as bank_module

    if yaml.__with_libyaml__:  # PyYAML's wheels have it: the fast loader is the one in use
        assert bank_module.LOADER is yaml.CSafeLoader
    files = sorted((Path(bank_module.__file__).parent / "data").glob("*.yaml"))
    files += sorted(write_w300_bank(tmp_path, n_pairs=20).glob("*.yaml"))
    assert len(files) >= 6
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert yaml.load(text, Loader=bank_module.LOADER) == yaml.load(text, Loader=yaml.SafeLoader), path.name
