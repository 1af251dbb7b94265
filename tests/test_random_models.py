"""``random:<shape>`` models: their id tokenizer (text = token ids) and ``load_model`` building them.

A random model has no vocabulary of words; its text is token ids written as
integers, so banks, the runner and the text scorers can use it. The
equivalences: text and id lists encode alike and generate alike; the loader
builds exactly the model ``build_random`` builds.
"""

from __future__ import annotations

import pytest
import torch

from transferlab import ModelLoadError, load_model
from transferlab.engine.batching import encode, pad_id_of
from transferlab.engine.capture import tokenizer_fingerprint
from transferlab.experiments.checks import model_depth
from transferlab.models.random import SHAPES, IdTokenizer, TokenIdError, build_random

VOCAB = 32000


@pytest.fixture(scope="module")
def tok():
    return IdTokenizer(VOCAB)


@pytest.fixture(scope="module")
def model():
    return load_model("random:tiny-mistral")


def test_text_of_ids_round_trips(tok):
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 17, 120):
        ids = torch.randint(0, VOCAB, (n,), generator=g).tolist()
        ids[0] = 1
        assert tok.encode(tok.decode(ids)) == ids
        assert tok(tok.decode(ids)) == {"input_ids": ids}
    specials = [0, 1, 2, VOCAB - 1, 2, 1]  # special ids are written and read back too
    assert tok.decode(specials, skip_special_tokens=True) == f"0 1 2 {VOCAB - 1} 2 1"
    assert tok.encode(tok.decode(specials)) == specials
    assert tok(" 1\t523\n88  ")["input_ids"] == [1, 523, 88]  # any whitespace separates
    assert tok(["1 2", "3"]) == {"input_ids": [[1, 2], [3]]}
    assert tok.batch_decode([[1, 2], [3]]) == ["1 2", "3"]
    assert tok.decode(torch.tensor([1, 5])) == "1 5"


@pytest.mark.parametrize(
    "text, named",
    [
        ("Once upon a time", "'Once'"),
        ("1 523 cat 88", "'cat'"),
        ("1 -3 4", "'-3'"),
        ("1 2.5", "'2.5'"),
        ("1 ٣", "'٣'"),  # a non-ASCII digit is not an id
    ],
)
def test_text_that_is_not_ids_is_a_clear_error(tok, text, named):
    with pytest.raises(TokenIdError, match=r'token ids like "1 523 88"') as err:
        tok(text)
    assert named in str(err.value)


def test_ids_outside_the_vocabulary_are_named(tok):
    with pytest.raises(TokenIdError, match=r"token id\(s\) 32000, 40000 are outside the vocabulary \(ids 0\.\.31999\)"):
        tok.encode(f"1 5 40000 {VOCAB} 7")
    with pytest.raises(TypeError):
        tok.encode([1, 2])


def test_what_the_package_asks_of_a_tokenizer(tok):
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
    assert pad_id_of(tok) == 0 and tok.all_special_ids == [0, 1, 2] and len(tok) == VOCAB
    vocab = tok.get_vocab()
    assert len(vocab) == VOCAB and all(vocab[tok.convert_ids_to_tokens(i)] == i for i in (0, 1, 523, VOCAB - 1))
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(IdTokenizer(VOCAB))
    assert tokenizer_fingerprint(tok) != tokenizer_fingerprint(IdTokenizer(VOCAB - 1))
    assert encode(tok, ["1 523 88", [1, 523, 88]]) == [[1, 523, 88], [1, 523, 88]]


def test_prompts_as_text_generate_what_id_lists_generate(model):
    ids = [[1, 523, 88, 9001, 17], [1, 4, 31999]]
    kw = dict(max_new_tokens=5, seed=3, plan=["kv:all + v_proj@27:decode", ""])
    by_ids = model.generate(ids, sources=[[1, 7, 8, 9, 10, 11], None], **kw)
    by_text = model.generate([model.tokenizer.decode(i) for i in ids], sources=["1 7 8 9 10 11", None], **kw)
    assert by_text.token_ids == by_ids.token_ids and by_text.texts == by_ids.texts
    assert [len(t) for t in by_text.token_ids] == [5, 5]
    assert all(len(t.split()) == 5 for t in by_text.texts)


def test_load_model_builds_what_build_random_builds(model):
    assert model.device.type == "cpu" and model.dtype == torch.float32 and model.n_layers == 32
    assert isinstance(model.tokenizer, IdTokenizer)
    ref = build_random("tiny-mistral", device="cpu", dtype=torch.float32)
    x = torch.tensor([[1, 523, 88, 9001, 17, 4]])
    with torch.no_grad():
        got, want = model.hf(x).logits[0, -1], ref.hf(x).logits[0, -1]
        other = load_model("random:tiny-mistral:1").hf(x).logits[0, -1]
    assert torch.equal(got, want)
    assert not torch.allclose(got, other), "the seed after the shape is passed on"
    assert load_model("random:tiny-mistral", dtype="bfloat16").dtype == torch.bfloat16


def test_random_spec_errors():
    with pytest.raises(ModelLoadError, match="unknown random model 'random:llama'.*mistral-7b, tiny-mistral"):
        load_model("random:llama")
    with pytest.raises(ModelLoadError, match="non-negative integer"):
        load_model("random:tiny-mistral:x")
    with pytest.raises(ModelLoadError, match="device_map is not supported"):
        load_model("random:tiny-mistral", device_map="auto")


def test_depth_is_known_before_loading():
    assert model_depth("random:mistral-7b") == model_depth("random:tiny-mistral:3") == 32
    assert set(SHAPES) == {"mistral-7b", "tiny-mistral"}
