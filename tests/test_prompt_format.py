"""Prompt formats: ``raw`` (the text as the tokenizer encodes it) and ``chat`` (the model's own template)."""

from __future__ import annotations

import copy

import pytest
from conftest import PROMPT

from transferlab.engine.batching import encode, left_pad

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


@pytest.fixture
def chat_tokenizer(stories):
    tok = copy.deepcopy(stories.tokenizer)
    tok.chat_template = TEMPLATE
    return tok


def test_chat_is_the_user_turn_with_the_generation_prompt(chat_tokenizer):
    ids = encode(chat_tokenizer, [PROMPT], "chat")[0]
    text = f"{chat_tokenizer.bos_token}[user] {PROMPT}\n[assistant]"
    assert ids == chat_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(chat_tokenizer.bos_token_id) == 1  # the template's BOS, not a second one from the tokenizer
    assert left_pad([ids], 0, chat_tokenizer.bos_token_id).has_bos == [True]


def test_raw_is_unchanged_and_token_ids_pass_through(chat_tokenizer):
    assert encode(chat_tokenizer, [PROMPT], "raw") == [chat_tokenizer(PROMPT)["input_ids"]]
    assert encode(chat_tokenizer, [[5, 6, 7]], "chat") == [[5, 6, 7]]


def test_chat_without_a_template_and_unknown_formats_are_refused(stories):
    with pytest.raises(ValueError, match="prompt_format='raw'"):
        encode(stories.tokenizer, [PROMPT], "chat")
    with pytest.raises(ValueError, match="raw.*chat"):
        encode(stories.tokenizer, [PROMPT], "markdown")


# --------------------------------------------------------------------------- the default rule, everywhere


@pytest.fixture
def chat_model(stories, chat_tokenizer):
    """The embedded model with a chat template on its tokenizer (same weights, same vocabulary)."""
    import dataclasses

    return dataclasses.replace(stories, tokenizer=chat_tokenizer)


def test_default_format_is_chat_exactly_when_the_model_has_a_template(stories, chat_tokenizer):
    from transferlab.engine.batching import default_format, resolve_format

    assert default_format(chat_tokenizer) == "chat" and default_format(stories.tokenizer) == "raw"
    assert resolve_format(chat_tokenizer, None) == "chat" and resolve_format(chat_tokenizer, "raw") == "raw"
    with pytest.raises(ValueError, match="raw.*chat"):
        resolve_format(chat_tokenizer, "markdown")


def test_generate_apply_capture_and_rv_take_the_default_rule(chat_model, stories):
    """Text prompts on a model with a template are its chat turns, unless raw is asked for; the same calls on
    token ids templated by hand give the same tokens, activations and R_V."""
    import torch
    from conftest import STORY

    import transferlab as tl

    tok = chat_model.tokenizer
    chat_ids = encode(tok, [PROMPT], "chat")
    kw = dict(greedy=True, max_new_tokens=5, stop_at_eos=False)
    by_default = chat_model.generate([PROMPT], **kw)
    by_hand = chat_model.generate(chat_ids, prompt_format="raw", **kw)
    raw = chat_model.generate([PROMPT], prompt_format="raw", **kw)
    assert by_default.prompt_format == "chat" and raw.prompt_format == "raw"
    assert by_default.token_ids == by_hand.token_ids
    assert by_default.prompt_lengths == [len(chat_ids[0])] != raw.prompt_lengths
    assert stories.generate([PROMPT], **kw).prompt_format == "raw"  # no template: raw
    # sources follow the targets' format
    moved = chat_model.generate([PROMPT], sources=[STORY], plan="v_proj@1:w4", **kw)
    moved_by_hand = chat_model.generate(
        chat_ids, sources=encode(tok, [STORY], "chat"), plan="v_proj@1:w4", prompt_format="raw", **kw
    )
    assert moved.token_ids == moved_by_hand.token_ids
    acts = chat_model.capture([PROMPT], sites=["v_proj@1"])
    assert acts.prompt_format == "chat" and acts.token_ids == chat_ids
    with torch.inference_mode(), tl.apply(chat_model, "", [PROMPT]) as applied:
        assert applied.inputs["input_ids"][0].tolist() == chat_ids[0]
    rv_default = tl.metrics.rv(chat_model, [STORY], window=8)
    rv_by_hand = tl.metrics.rv(chat_model, encode(tok, [STORY], "chat"), window=8, prompt_format="raw")
    assert rv_default.rv.tolist() == rv_by_hand.rv.tolist()
    assert (
        rv_default.n_tokens.tolist()
        != tl.metrics.rv(chat_model, [STORY], window=8, prompt_format="raw").n_tokens.tolist()
    )


def test_a_continuation_that_ends_at_eos_at_once_is_named(stories):
    from transferlab.engine.generation import Generation

    gen = Generation(["", "a", ""], [[], [7], []], ["eos", "eos", "length"], None, [0, 1, 2], [3, 3, 3], "corrected")
    assert gen.ended_at_once == [True, False, False]


def test_the_commands_say_when_a_continuation_ended_at_eos_at_once(monkeypatch):
    from helpers import flat
    from typer.testing import CliRunner

    from transferlab.cli import app
    from transferlab.engine.generation import Generation
    from transferlab.models.model import Model

    calls = []

    def ends_at_once(self, targets, **kw):
        calls.append(kw.get("prompt_format"))
        return Generation([""], [[]], ["eos"], __import__("pandas").DataFrame(), [0], [3], "corrected")

    monkeypatch.setattr(Model, "generate", ends_at_once)
    runner = CliRunner()
    out = runner.invoke(app, ["generate", PROMPT, "-n", "4", "--greedy"])
    assert out.exit_code == 0, out.output
    assert "prompt 0 ended at EOS at once: 0 new tokens (the prompt was raw text: try --format chat)" in flat(
        out.output
    )
    out = runner.invoke(app, ["transfer", "-s", PROMPT, "-t", PROMPT, "-p", "", "-n", "4", "--format", "raw"])
    assert out.exit_code == 0, out.output
    assert "the transferred continuation ended at EOS at once" in flat(out.output)
    assert calls == ["raw"] * 3  # the embedded model has no template: raw by the default rule, and as asked


def test_chat_format_on_a_model_without_a_template_is_refused_by_the_commands():
    from helpers import flat
    from typer.testing import CliRunner

    from transferlab.cli import app

    out = CliRunner().invoke(app, ["generate", PROMPT, "--format", "chat", "-n", "2"])
    assert out.exit_code == 2 and "has none; use --format raw" in flat(out.output)
    out = CliRunner().invoke(app, ["rv", STORY_TEXT, "--format", "markdown"])
    assert out.exit_code == 2 and "prompt_format must be one of" in flat(out.output)


STORY_TEXT = "Once upon a time there was a little girl named Lily who loved to play in the park with her dog"
