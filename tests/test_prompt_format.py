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
