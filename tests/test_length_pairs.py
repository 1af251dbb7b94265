"""Length-matched pairs: only a source and a target within ±tolerance tokens, counted with the run's tokenizer
in the run's format; how many qualified is recorded; zero (or too few) is refused before a run directory exists."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from typer.testing import CliRunner

from transferlab.experiments import ConfigError, load_config, run_experiment
from transferlab.experiments.checks import model_tokenizer
from transferlab.experiments.pairs import config_pairs, token_lengths
from transferlab.prompts import Prompt, load_bank, make_length_matched_pairs

pytestmark = pytest.mark.filterwarnings("ignore:no vocabulary token spells:UserWarning")


def _pool(prefix: str, lengths: list[int]) -> list[Prompt]:
    return [Prompt(f"{prefix}_{i:02d}", prefix, " ".join(["w"] * n)) for i, n in enumerate(lengths)]


def _words(text: str) -> int:
    return len(text.split())


SOURCES = _pool("s", [3, 5, 8, 8, 12, 20, 21])
TARGETS = _pool("t", [4, 6, 6, 9, 13, 30, 2, 7])


def _brute_force(sources, targets, tol):
    """Qualifying combinations, and the largest set of them with no prompt twice (an assignment problem)."""
    ok = np.array([[abs(_words(s.text) - _words(t.text)) <= tol for t in targets] for s in sources])
    rows, cols = linear_sum_assignment(-ok.astype(float))
    return int(ok.sum()), int(ok[rows, cols].sum())


@pytest.mark.parametrize("tol", [0, 1, 2, 5])
def test_counts_match_a_brute_force(tol):
    qualifying, matchable = _brute_force(SOURCES, TARGETS, tol)
    if qualifying == 0:
        with pytest.raises(ValueError, match=f"no \\(source, target\\) pair has lengths within ±{tol}"):
            make_length_matched_pairs(SOURCES, TARGETS, 1, 0, tol, _words)
        return
    got = make_length_matched_pairs(SOURCES, TARGETS, matchable, 0, tol, _words)
    assert (got.qualifying, got.without_reuse, len(got.pairs)) == (qualifying, matchable, matchable)
    assert all(abs(_words(p.source_text) - _words(p.target_text)) <= tol for p in got.pairs)
    used = [p.source_id for p in got.pairs] + [p.target_id for p in got.pairs]
    assert len(used) == len(set(used))  # without reuse: every prompt at most once
    with pytest.raises(ValueError, match=f"only {matchable} pairs within ±{tol} tokens can be drawn"):
        make_length_matched_pairs(SOURCES, TARGETS, matchable + 1, 0, tol, _words)


def test_reuse_draws_distinct_qualifying_combinations_up_to_all_of_them():
    qualifying, _ = _brute_force(SOURCES, TARGETS, 2)
    got = make_length_matched_pairs(SOURCES, TARGETS, qualifying, 3, 2, _words, reuse=True)
    combos = [(p.source_id, p.target_id) for p in got.pairs]
    assert len(set(combos)) == qualifying  # every qualifying combination once
    with pytest.raises(ValueError, match=f"only {qualifying} distinct"):
        make_length_matched_pairs(SOURCES, TARGETS, qualifying + 1, 3, 2, _words, reuse=True)


def test_seeded_and_independent_of_pool_order():
    a = make_length_matched_pairs(SOURCES, TARGETS, 4, 7, 2, _words)
    b = make_length_matched_pairs(SOURCES[::-1], TARGETS[::-1], 4, 7, 2, _words)
    assert a.pairs == b.pairs
    draws = {tuple(p.target_id for p in make_length_matched_pairs(SOURCES, TARGETS, 4, s, 2, _words).pairs)
             for s in range(8)}  # fmt: skip
    assert len(draws) > 1  # the seed does choose


def test_several_tokenizers_must_all_agree():
    """Lengths as one count per tokenizer: a pair qualifies only when every count is within the tolerance."""
    two = {p.text: (_words(p.text), 2 * _words(p.text)) for p in SOURCES + TARGETS}
    got = make_length_matched_pairs(SOURCES, TARGETS, 1, 0, 2, two.__getitem__, reuse=True)
    for p in got.pairs:
        assert all(abs(a - b) <= 2 for a, b in zip(two[p.source_text], two[p.target_text]))
    want = sum(
        all(abs(a - b) <= 2 for a, b in zip(two[s.text], two[t.text])) for s, t in itertools.product(SOURCES, TARGETS)
    )
    assert got.qualifying == want < _brute_force(SOURCES, TARGETS, 2)[0]


RESEARCH = [
    "prompts.bank=research",
    "prompts.sources=['L3', 'L4', 'L5']",
    "prompts.targets=['math_long', 'factual_long']",
]


def test_config_pairs_count_tokens_with_the_models_tokenizer():
    cfg = load_config("stories", [*RESEARCH, "prompts.n=10", "prompts.length_tolerance=1", "prompts.reuse=false"])
    bank = load_bank("research")
    pairing = config_pairs(cfg, bank, model_tokenizer)
    from transferlab.models import load_model

    tok = load_model("stories260K").tokenizer
    for p in pairing.pairs:  # independent count: the tokenizer itself, BOS included on both sides
        assert abs(len(tok(p.source_text)["input_ids"]) - len(tok(p.target_text)["input_ids"])) <= 1
    info = pairing.info
    assert info["length_tolerance"] == 1 and info["pairs"] == 10 and info["measured_with"] == ["stories260K"]
    src, tgt = bank.select(["L3", "L4", "L5"]), bank.select(["math_long", "factual_long"])
    lengths = token_lengths(cfg, [p.text for p in src + tgt], model_tokenizer)
    want = sum(abs(lengths[s.text][0] - lengths[t.text][0]) <= 1 for s in src for t in tgt)
    assert info["qualifying_combinations"] == want


def test_length_match_and_tolerance_together_are_refused():
    with pytest.raises(ConfigError, match="give length_match .* or length_tolerance"):
        load_config("stories", ["prompts.length_match=true", "prompts.length_tolerance=2"])


def test_zero_pairs_is_refused_before_the_run_directory_exists(tmp_path):
    """stories260K's story sources are 41-60 tokens, its targets 12-25: within ±2 tokens, no pair qualifies."""
    out = tmp_path / "runs"
    sets = [f"output_dir={out}", "prompts.n=4", "prompts.length_tolerance=2"]
    cfg = load_config("stories", sets)
    with pytest.raises(ConfigError, match="prompts.length_tolerance: no \\(source, target\\) pair has lengths within"):
        run_experiment(cfg, progress=False, report=False)
    assert not out.exists()
    from transferlab.cli import app

    cli_args = ["run", "stories", "--no-report"]
    for item in sets:
        cli_args += ["--set", item]
    res = CliRunner().invoke(app, cli_args)
    assert res.exit_code == 2 and "widen the tolerance" in " ".join(res.output.split())
    assert not out.exists()


def test_too_few_is_refused_with_the_count(tmp_path):
    sets = [*RESEARCH, f"output_dir={tmp_path}", "prompts.n=11", "prompts.length_tolerance=0", "prompts.reuse=false"]
    cfg = load_config("stories", sets)
    with pytest.raises(ConfigError, match="only 10 pairs within ±0 tokens can be drawn without reusing a prompt"):
        run_experiment(cfg, progress=False, report=False)
    assert not any(tmp_path.iterdir())


def test_a_run_records_how_many_qualified(tmp_path):
    cfg = load_config(
        "stories",
        [
            *RESEARCH,
            f"output_dir={tmp_path}",
            "model=tiny:llama",
            "prompts.n=4",
            "prompts.length_tolerance=2",
            "generation.max_new_tokens=3",
            "conditions=[{name='baseline'}, {name='transfer', plan='kv:all'}]",
            "rv.enabled=false",
        ],
    )
    run_dir = run_experiment(cfg, progress=False, report=True)
    meta = json.loads((run_dir / "metadata.json").read_text())
    pairing = meta["pairing"]
    assert pairing["pairs"] == 4 and pairing["length_tolerance"] == 2
    assert pairing["qualifying_combinations"] >= pairing["max_pairs_without_reuse"] >= 1
    report = " ".join((run_dir / "report.md").read_text().split())
    assert f"{pairing['qualifying_combinations']} of {pairing['sources']} x {pairing['targets']}" in report
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    bank = load_bank("research")
    text = {r[k]: bank.get(r[k]).text for r in rows for k in ("source_id", "target_id")}
    lengths = token_lengths(cfg, list(text.values()), model_tokenizer)
    assert len(rows) == 8 and all(
        abs(lengths[text[r["source_id"]]][0] - lengths[text[r["target_id"]]][0]) <= 2 for r in rows
    )


def test_the_matching_is_maximum_whatever_the_seed():
    """s_00 (5 words) fits only t_00 (6); s_01 (7) fits both t_00 and t_01 (8): a greedy draw that gives t_00 to
    s_01 first would leave one pair, the maximum matching always finds two."""
    sources, targets = _pool("s", [5, 7]), _pool("t", [6, 8])
    for seed in range(12):
        got = make_length_matched_pairs(sources, targets, 2, seed, 1, _words)
        assert got.without_reuse == 2 and {(p.source_id, p.target_id) for p in got.pairs} == {
            ("s_00", "t_00"),
            ("s_01", "t_01"),
        }


def test_a_pulled_catalog_models_tokenizer_is_read_without_its_weights():
    from transferlab.models.pull import cached_path

    if cached_path("smollm2-135m-instruct") is None:
        pytest.skip("smollm2-135m-instruct is not pulled here")
    cfg = load_config("demo", ["prompts.n=4", "prompts.length_tolerance=2", "prompts.reuse=false"])
    pairing = config_pairs(cfg, load_bank("research"), model_tokenizer)
    assert pairing.info["measured_with"] == ["smollm2-135m-instruct"] and pairing.info["format"] == "chat"
    tok = model_tokenizer("smollm2-135m-instruct")

    def chat_len(text):  # the user turn of the model's own template, generation prompt added
        rendered = tok.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        return len(tok(rendered, add_special_tokens=False)["input_ids"])

    assert all(abs(chat_len(p.source_text) - chat_len(p.target_text)) <= 2 for p in pairing.pairs)
