"""The two real catalog models, end to end: SmolLM2-135M-Instruct (llama) and Gemma-3-270M (gemma3).

Both are loaded once per module with ``load_model(name)`` (pulled first when
not cached: the behaviour CI relies on). Their logits are checked against
``gguf_reference`` -- an independent numpy forward read straight from the
GGUF kept beside the converted weights, sharing no code with transformers or
transferlab -- and the engine's behaviour (prompt formats, padding, Gemma-3's
per-layer RoPE and sliding window, KV splicing) is checked on the real weights.

Tolerances are relative to the values' own scale (``max |logit|`` ~25-45,
``max |activation|``), set from measured differences with a margin of ~4-10x:

* engine vs reference, short prompts: measured <= 1.0e-4 on logits of ~30-40
  (3.4e-6 relative) -> ``REF_REL = 2e-5`` (6x);
* Gemma past the 512-token window: the reference computes RoPE angles in
  float64, transformers in float32, so the difference grows with position:
  measured 3.8e-4 at 534 tokens (1.4e-5 relative) -> ``LONG_REL = 1e-4`` (7x);
* the same model run two ways (batched vs alone, keys rotated vs recomputed):
  only float32 summation order differs -> ``SAME_REL = 3e-5``; measured <= 4.6e-6
  relative (SmolLM2's last residual, whose scale is set by its ~3600-sized
  first-token activations), 2.9e-6 (rotated Gemma keys).

Tolerances do not depend on the thread count (``TRANSFERLAB_TEST_THREADS=2``
gives the same measured differences). All of them are far below what a real
fault produces (a wrong RoPE base: ~10-50% of the keys' scale; ignoring the
window: 7 on a logit of 25).
"""

from __future__ import annotations

import copy

import gguf_reference
import numpy as np
import pytest
import torch
from conftest import all_hooks_removed
from engine_reference import prompt_cache
from gguf_reference import GEMMA3_LOCAL_ROPE_BASE, load_gguf, reference_logits

from transferlab import load_model
from transferlab.engine.batching import encode, left_pad, pad_id_of
from transferlab.interventions.plan import as_plan
from transferlab.interventions.rope import inverse_frequencies, rotate_keys
from transferlab.models.pull import cached_path

SMOLLM, GEMMA = "smollm2-135m-instruct", "gemma-3-270m"

REF_REL = 2e-5  # engine vs independent reference, short prompts
LONG_REL = 1e-4  # ... past Gemma's 512-token window (float32 vs float64 RoPE angles)
SAME_REL = 3e-5  # the same model computed two ways (float32 summation order only)

QUESTION = "What is the capital of France?"
SHORT_TEXT = "The quick brown fox jumps over the lazy dog because it"
PAD_PROMPTS = ["Hi there", "Once upon a time there was a cat who", "The dog ran to the big red house and played"]

# Gemma 3's chat template (the user/model turns of google/gemma-3-*-it's template, system turn left out).
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

_LOADED: dict = {}


def _model(name):
    if name not in _LOADED:
        _LOADED[name] = load_model(name)  # pulls (download + convert) when the cache has no copy
    return _LOADED[name]


@pytest.fixture(scope="module")
def smollm():
    return _model(SMOLLM)


@pytest.fixture(scope="module")
def gemma():
    return _model(GEMMA)


@pytest.fixture(scope="module", params=[SMOLLM, GEMMA], ids=["smollm2", "gemma3"])
def real(request):
    return _model(request.param)


def _gguf(model):
    """The model's GGUF (kept beside the converted weights), dequantised once by the reference."""
    path = cached_path(model.name) / "model.gguf"
    load_gguf(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def _release_models():
    """Free both models and both references (~3.3 GB) once this module is done."""
    yield
    _LOADED.clear()
    gguf_reference._load.cache_clear()


@pytest.fixture(autouse=True)
def _no_hooks_left_on_real_models():
    yield
    for model in _LOADED.values():
        assert all_hooks_removed(model.hf, strict=False), f"a transferlab hook was left on {model.name}"


def _assert_within(a, b, atol, what=""):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    d = float(np.abs(a - b).max())
    assert d <= atol, f"{what}: max |diff| {d:.3g} > {atol:.3g}"


def _assert_close(a, b, rel, what=""):
    """max |a - b| <= rel * max |b| (floor 1)."""
    _assert_within(a, b, rel * max(1.0, float(np.abs(np.asarray(b, dtype=np.float64)).max())), what)


def _log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------- 1. logits vs the reference


def test_logits_equal_the_gguf_reference(real):
    """Every position of a short prompt (SmolLM2 in chat format, from its BOS; Gemma raw with <bos>)."""
    fmt = "chat" if real.name == SMOLLM else "raw"
    ids = encode(real.tokenizer, [SHORT_TEXT], fmt)[0]
    ref = reference_logits(_gguf(real), ids, threads=torch.get_num_threads())
    with torch.no_grad():
        ours = real.hf(input_ids=torch.tensor([ids])).logits[0].numpy()
    _assert_close(ours, ref, REF_REL, real.name)
    top2 = np.sort(ref, axis=-1)[:, -2:]
    assert (ours.argmax(-1) == ref.argmax(-1)).all(), f"min top-2 gap {np.min(top2[:, 1] - top2[:, 0]):.3g}"


# --------------------------------------------------------------------------- 2. prompt formats


@pytest.fixture(scope="module")
def smollm_answer(smollm):
    """The greedy chat answer to QUESTION (shared by the answer and the splice tests)."""
    ids = encode(smollm.tokenizer, [QUESTION], "chat")[0]
    return ids, smollm.generate([ids], greedy=True, max_new_tokens=12)


def test_smollm2_chat_is_chatml_from_its_bos_and_raw_has_none(smollm):
    tok = smollm.tokenizer
    chat, raw = encode(tok, [QUESTION], "chat")[0], encode(tok, [QUESTION], "raw")[0]
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert tok.unk_token_id not in (im_start, im_end)
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assistant = tok("assistant", add_special_tokens=False)["input_ids"]  # 2 tokens: 'ass', 'istant'
    generation_prompt = [im_end, *newline, im_start, *assistant, *newline]
    assert chat[-len(generation_prompt) :] == generation_prompt
    assert tok.decode(generation_prompt) == "<|im_end|>\n<|im_start|>assistant\n"
    assert chat[-len(generation_prompt) - len(raw) : -len(generation_prompt)] == raw  # the message, as raw encodes it
    # The BOS rule: <|im_start|> is SmolLM2's bos_token, so a chat prompt starts with BOS; raw text has none.
    assert tok.bos_token_id == im_start and chat[0] == im_start and im_start not in raw
    assert left_pad([chat, raw], pad_id_of(tok), tok.bos_token_id).has_bos == [True, False]


def test_smollm2_answers_paris(smollm_answer):
    _, g = smollm_answer
    assert "Paris" in g.texts[0], g.texts[0]


def test_gemma_raw_has_one_bos_and_chat_writes_its_own(gemma):
    tok = gemma.tokenizer
    bos, start, end = tok.convert_tokens_to_ids(["<bos>", "<start_of_turn>", "<end_of_turn>"])
    assert tok.unk_token_id not in (bos, start, end) and tok.bos_token_id == bos
    raw = encode(tok, [QUESTION], "raw")[0]
    assert raw[0] == bos and raw.count(bos) == 1
    templated = tok
    if not tok.chat_template:
        # The catalog's Gemma-3-270M is the base model and its GGUF carries no chat template: chat
        # format is refused, with the reason. Gemma 3's own template then stands in for it.
        with pytest.raises(ValueError, match="chat template"):
            encode(tok, [QUESTION], "chat")
        templated = copy.copy(tok)  # shallow: shares the vocabulary, has its own chat_template
        templated.chat_template = GEMMA3_CHAT_TEMPLATE
    # The template writes <bos> itself; encode must not add a second one.
    chat = encode(templated, [QUESTION], "chat")[0]
    assert chat[0] == bos and chat.count(bos) == 1
    generation_prompt = [end, *tok("\n", add_special_tokens=False)["input_ids"], start]
    generation_prompt += tok("model\n", add_special_tokens=False)["input_ids"]
    assert chat[-len(generation_prompt) :] == generation_prompt
    assert tok.decode(generation_prompt) == "<end_of_turn>\n<start_of_turn>model\n"
    message_end = len(chat) - len(generation_prompt)
    message_start = message_end - (len(raw) - 1)
    assert chat[message_start:message_end] == raw[1:]  # the message, as raw encodes it (less its <bos>)
    assert tok.decode(chat[:message_start]) == "<bos><start_of_turn>user\n"
    assert left_pad([chat, raw], pad_id_of(tok), tok.bos_token_id).has_bos == [True, True]


# --------------------------------------------------------------------------- 3. padding invariance


def test_left_padded_batch_equals_each_prompt_alone(real):
    """Greedy tokens, per-step log-probabilities (record_logits) and activations (capture) of a
    left-padded batch of three prompts of different lengths equal those of each prompt alone.
    SmolLM2's batch mixes a chat prompt (BOS) with raw ones (no BOS)."""
    tok = real.tokenizer
    prompts = encode(tok, PAD_PROMPTS, "raw")
    if real.name == SMOLLM:
        prompts[1] = encode(tok, [PAD_PROMPTS[1]], "chat")[0]
    assert len({len(p) for p in prompts}) == 3
    # Log-probabilities of a few common tokens at every step (each depends on all the step's logits).
    watched = sorted(set(tok(" the, and. a", add_special_tokens=False)["input_ids"]) | {tok.eos_token_id})
    record = {f"id{t}": [t] for t in watched}
    kw = dict(greedy=True, max_new_tokens=4, stop_at_eos=False, record_logits=record)
    alone = [real.generate([p], **kw) for p in prompts]
    batch = real.generate(prompts, **kw)
    assert batch.token_ids == [g.token_ids[0] for g in alone]
    for name in record:
        _assert_close(batch.logmass[name], np.concatenate([g.logmass[name] for g in alone]), SAME_REL, name)

    sites = ["v_proj@0", f"resid_post@{real.n_layers // 2}", "resid_post@-1"]
    together = real.capture(prompts, sites=sites)
    for i, p in enumerate(prompts):
        one = real.capture([p], sites=sites)
        for site in sites:
            _assert_close(together[site][i], one[site][0], SAME_REL, f"prompt {i} {site}")


# --------------------------------------------------------------------------- 4. Gemma-3 per-layer RoPE


def test_gemma_keys_rerotate_with_their_own_layer_frequencies(gemma):
    """Keys computed at positions shifted by 37 equal rotate_keys(keys, 37, that layer's inv_freq), in
    every layer, local and global; the other layer type's frequencies do not match. The frequencies
    themselves are the GGUF's: base 1e4 (local) and rope.freq_base (global)."""
    types = gemma.hf.config.layer_types
    local, glob = types.index("sliding_attention"), types.index("full_attention")
    d = gemma.adapter.head_dim
    steps = torch.arange(0, d, 2, dtype=torch.float64) / d
    global_base = float(load_gguf(_gguf(gemma)).meta("rope.freq_base"))
    assert global_base != GEMMA3_LOCAL_ROPE_BASE
    for layer, base in ((local, GEMMA3_LOCAL_ROPE_BASE), (glob, global_base)):
        torch.testing.assert_close(inverse_frequencies(gemma, layer).double(), base**-steps, rtol=1e-6, atol=0)

    delta = 37
    ids = encode(gemma.tokenizer, [SHORT_TEXT], "raw")[0]
    with torch.no_grad():
        at0, shifted = prompt_cache(gemma.hf, ids, 0), prompt_cache(gemma.hf, ids, delta)
    assert {types[layer] for layer in range(len(at0))} == {"sliding_attention", "full_attention"}
    for layer, ((k0, _), (k1, _)) in enumerate(zip(at0, shifted)):
        _assert_close(rotate_keys(k0, delta, inverse_frequencies(gemma, layer)), k1, SAME_REL, f"layer {layer}")
        other = glob if types[layer] == "sliding_attention" else local
        wrong = rotate_keys(k0, delta, inverse_frequencies(gemma, other))
        assert (wrong - k1).abs().max() > 0.05 * k1.abs().max(), layer


# --------------------------------------------------------------------------- 5. Gemma-3 past its sliding window


def _long_text(n_lines: int) -> str:
    """Varied sentences (names, places, numbers change from line to line)."""
    names = ["Anna", "Bruno", "Chen", "Dalia", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jun"]
    places = ["market", "harbour", "library", "station", "bakery", "garden", "museum", "school", "bridge", "river"]
    things = ["apples", "maps", "letters", "candles", "stones", "shells", "books", "lamps", "ropes", "coins"]
    lines = []
    for i in range(n_lines):
        who, where, what = names[i % 10], places[3 * i % 10], things[7 * i % 10]
        lines.append(f"On day {i + 1}, {who} walked to the {where} and counted {7 * i + 3} {what}.")
    return " ".join(lines)


def test_gemma_past_the_sliding_window_equals_transformers_and_the_reference(gemma):
    """A ~535-token prompt: the local layers' 512-token window excludes the first tokens from the last
    position's view. The engine's greedy tokens equal transformers' generate; the engine's and
    transformers' last-position logits equal the reference's (which honours the window: without it the
    reference's logits move by ~7, far beyond the tolerance)."""
    window = gemma.hf.config.sliding_window
    assert window == int(load_gguf(_gguf(gemma)).meta("attention.sliding_window")) == 512
    text = _long_text(29)
    ids = encode(gemma.tokenizer, [text], "raw")[0]
    assert window + 10 < len(ids) < 600, len(ids)

    ref = reference_logits(_gguf(gemma), ids, rows=[-1], threads=torch.get_num_threads())[0]
    watched = np.argsort(ref)[-8:].tolist()  # the reference's 8 most likely next tokens
    n_new = 3
    record = {f"id{t}": [t] for t in watched}
    ours = gemma.generate([text], greedy=True, max_new_tokens=n_new, stop_at_eos=False, record_logits=record)
    with torch.no_grad():
        hf = gemma.hf.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            do_sample=False,
            pad_token_id=pad_id_of(gemma.tokenizer),
            output_logits=True,
            return_dict_in_generate=True,
        )
    assert ours.token_ids[0] == hf.sequences[0, len(ids) :].tolist()
    assert ours.token_ids[0][0] == int(ref.argmax())
    _assert_close(hf.logits[0][0].numpy(), ref, LONG_REL, "transformers' last-position logits")
    # The engine's log-probabilities of the reference's top tokens at the prompt's last position.
    # (a log-probability combines a logit and the log-normaliser: twice the logits' tolerance)
    engine = np.array([ours.logmass[f"id{t}"][0, 0] for t in watched])
    _assert_within(engine, _log_softmax(ref)[watched], 2 * LONG_REL * np.abs(ref).max(), "engine log-probs")


# --------------------------------------------------------------------------- 6. KV splice on a real model


@pytest.mark.parametrize("plan", ["kv:all", "kv:all:splicefirst"])
def test_smollm2_self_splice_reproduces_the_answer(smollm, smollm_answer, plan):
    """kv:all with the target as its own source (corrected flavour, chat format): the spliced prefix
    cache is the target's own, so the greedy answer is unchanged, whether the splice keeps the first
    slot (<|im_start|>, the BOS) or overwrites it too. The splice did act (audited: every prefix slot
    but, under first="keep", the first), and a source one word different ("Italy") changes the answer."""
    ids, plain = smollm_answer
    kw = dict(plan=plan, flavour="corrected", greedy=True, max_new_tokens=12)
    same = smollm.generate([ids], sources=[ids], **kw)
    assert same.token_ids == plain.token_ids and same.finish_reasons == plain.finish_reasons
    (splice,) = as_plan(plan)
    row = same.audit[same.audit.kind == "kv_splice"].iloc[0]
    assert row.fired and row.positions == len(ids) - 1 - (splice.first == "keep")
    other = encode(smollm.tokenizer, ["What is the capital of Italy?"], "chat")[0]
    assert len(other) == len(ids)
    moved = smollm.generate([ids], sources=[other], **kw)
    assert moved.token_ids != plain.token_ids, moved.texts
    # The self-splice wrote the cache's own values back (change ~0), a one-word-different source did not.
    moved_row = moved.audit[moved.audit.kind == "kv_splice"].iloc[0]
    assert row.change_norm <= SAME_REL * moved_row.change_norm, (row.change_norm, moved_row.change_norm)
