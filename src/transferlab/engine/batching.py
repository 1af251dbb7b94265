"""Prompt formats, and left-padded batches of token ids with the BOS rule used everywhere.

**Prompt formats.** ``raw`` (the seed's): the prompt text is encoded as the
tokenizer encodes it, special tokens (BOS) added as the tokenizer adds them.
``chat``: the prompt is the user turn of the model's own chat template, with
the generation prompt added (SmolLM2's ChatML: ``<|im_start|>system\n...
<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n``,
its template writing a default system prompt first); the templated text is
then encoded without adding special tokens again (a template that writes its
own BOS gets exactly one). A model without a template (Gemma-3-270M, a base
model) is refused in chat format. Token-id prompts are used as given.

**Which format, by default.** A config names its format (``prompts.format``,
``raw`` unless set). Everywhere else -- ``generate``, ``apply``, ``capture``,
``metrics.rv`` and the ``transfer``/``generate``/``rv`` commands -- the format
is an argument (``prompt_format=`` / ``--format``) whose default is
:func:`default_format`: ``chat`` when the model's tokenizer has a chat template
(an instruct model answers a user turn; fed raw text, SmolLM2-135M-Instruct
often ends at EOS at once), ``raw`` when it has none. :func:`resolve_format`
applies that rule; :func:`encode` itself never guesses.

**Positions and windows count the tokens the model sees**, template tokens
included. A window counts back from the last token, so in chat format it
first covers the generation prompt -- 6 tokens on SmolLM2: ``<|im_end|>``,
``\n``, ``<|im_start|>``, ``ass``, ``istant``, ``\n`` (its vocabulary has no
``assistant`` without a leading space) -- and then the end of the user's
message: a 16-token window holds 10 tokens of the message. R_V's window is
such a window too: in chat format it measures the geometry over the
template's closing tokens and the message's end, which is where the model
reads from when it starts answering.

**The message.** A prompt's *message* is the user's own text: in raw format
every token but BOS, in chat format the tokens that overlap the user turn's
text (not the system prompt, role markers or generation prompt; SmolLM2's
default template puts 24 tokens before it). :func:`message_spans` gives each
prompt's ``(start, stop)``; target survival counts only these tokens, and an
``insert`` splice places the source's message before the target's.

**The BOS rule.** A prompt's first token is its BOS when it is the tokenizer's
``bos_token`` -- whether the tokenizer added it (Llama, Mistral, Gemma and the
embedded stories260K do) or a chat template wrote it (SmolLM2's tokenizer adds
none, but its ``bos_token`` is ``<|im_start|>``, the first token of every
ChatML prompt). It is decided by id, the same way everywhere. BOS is a real
token: it is attended to (trained models use it as an attention sink), it
holds position 0, and capture returns its activation when no window is asked
for. Windows (capture's ``window``, R_V's window, a patch's window) count back
from the last token and **never include BOS**: a prompt has ``n_tokens`` = its
tokens without BOS, and a window longer than that is "short" (R_V reports it).
A raw prompt whose first token is not the BOS token (SmolLM2 in raw format)
has no BOS: its first text token is position 0 and windows may reach it.

**Left padding.** Prompts of different lengths are padded on the left, masked
out with ``attention_mask``, and given explicit ``position_ids`` that count
only real tokens (``cumsum(mask) - 1``), so every real token sits at the same
position it would have alone. Padded slots get position 0 and are never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """A left-padded batch: ``input_ids``/``attention_mask``/``position_ids`` are ``[B, T]``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    lengths: list[int]  # real tokens per row (BOS included)
    has_bos: list[bool]

    @property
    def width(self) -> int:
        return self.input_ids.shape[1]

    def to(self, device) -> "Batch":
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.lengths,
            self.has_bos,
        )


def pad_id_of(tokenizer) -> int:
    """The id used in padded slots (never attended to): pad, else eos, else 0."""
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        idx = getattr(tokenizer, name, None)
        if isinstance(idx, int) and idx >= 0:
            return idx
    return 0


PROMPT_FORMATS = ("raw", "chat")


def default_format(tokenizer) -> str:
    """``"chat"`` when ``tokenizer`` has a chat template, else ``"raw"`` (see the module docstring)."""
    return "chat" if getattr(tokenizer, "chat_template", None) else "raw"


def resolve_format(tokenizer, prompt_format: str | None) -> str:
    """``prompt_format`` checked, or the default rule's choice when it is None (or ``"auto"``)."""
    if prompt_format is None or prompt_format == "auto":
        return default_format(tokenizer)
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(
            f"prompt_format must be one of {PROMPT_FORMATS} (or None: chat when the model has a "
            f"chat template); got {prompt_format!r}"
        )
    return prompt_format


def chat_text(tokenizer, prompt: str) -> str:
    """``prompt`` as the user turn of the tokenizer's chat template, generation prompt added (text)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "prompt_format='chat' needs the model's chat template, and this tokenizer has none; "
            "use prompt_format='raw' (or a model that ships a template)"
        )
    return within_time(
        TEMPLATE_SECONDS,
        "the model's chat template",
        tokenizer.apply_chat_template,
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        tokenize=False,
    )


TEMPLATE_SECONDS = 10.0
"""How long one chat template may take to render one prompt (a real one takes well under a millisecond)."""


class TemplateTimeError(ValueError):
    """A chat template (the model's own metadata: code we did not write) that did not finish in time."""


def within_time(seconds: float, what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, stopped with :class:`TemplateTimeError` once it has run ``seconds``.

    A chat template comes with the model's files and is a program (Jinja): one
    that loops 1e10 times would hang every run in chat format. Jinja's sandbox
    caps a single ``range`` but not loops inside loops, so the render is
    watched from the inside: a trace function (this thread only, for this call
    only; any tracer already set, a debugger's or coverage's, is put back
    after) checks the clock at each line of the compiled template and raises
    once time is up, which ends the render where it stands.
    """
    import sys
    import time

    deadline = time.monotonic() + seconds

    def tracer(frame, event, arg):
        if time.monotonic() > deadline:
            raise TemplateTimeError(
                f"{what} did not finish within {seconds:g} s (a loop that runs too long?); fix the template, or use "
                "the raw prompt format"
            )
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        return fn(*args, **kwargs)
    finally:
        sys.settrace(previous)


def encode(tokenizer, prompts: list[str], prompt_format: str = "raw") -> list[list[int]]:
    """Token ids per prompt in ``prompt_format`` (see the module docstring).

    A prompt may also be given as a list of token ids, used as is (BOS is
    then whatever the list starts with).
    """
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}; got {prompt_format!r}")
    if isinstance(prompts, str):
        prompts = [prompts]
    out = []
    for p in prompts:
        if isinstance(p, (list, tuple)) and p and all(isinstance(t, int) for t in p):
            out.append(list(p))
            continue
        if not isinstance(p, str):
            raise TypeError(f"prompts must be strings or lists of token ids, got {type(p).__name__}")
        if prompt_format == "chat":
            ids = tokenizer(chat_text(tokenizer, p), add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(p)["input_ids"]
        if len(ids) == 0:
            raise ValueError(f"prompt {p!r} encodes to zero tokens")
        out.append(list(ids))
    return out


def message_spans(tokenizer, prompts: list, prompt_format: str = "raw") -> list[tuple[int, int]]:
    """``(start, stop)`` per prompt: the token positions of the user's own message, the rest being BOS and,
    in chat format, the template's tokens (system prompt, role markers, generation prompt).

    The span covers every token whose characters overlap the message's text in the formatted prompt (a
    token that merges the message's first character with a template character counts as the message's).
    A prompt given as token ids is all message but its BOS. Tokenizers without character offsets (slow
    ones) give every token but BOS in raw format and are refused in chat format.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    bos = getattr(tokenizer, "bos_token_id", None)
    out = []
    for p in prompts:
        if isinstance(p, (list, tuple)):
            out.append((int(bool(p) and p[0] == bos), len(p)))
            continue
        if prompt_format == "chat":
            text = chat_text(tokenizer, p)
            if p.strip() and text.rfind(p) < 0:  # a template that strips the message's whitespace
                p = p.strip()
            start = text.rfind(p)  # the user turn is the template's last message
            if start < 0:
                raise ValueError(f"prompt {p[:40]!r}: the chat template does not write the message verbatim")
            kw = {"add_special_tokens": False}
        else:
            text, start, kw = p, 0, {}
        if not getattr(tokenizer, "is_fast", False):
            if prompt_format == "chat":
                raise ValueError("message spans in chat format need a fast tokenizer (character offsets)")
            ids = tokenizer(p)["input_ids"]
            out.append((int(bool(ids) and ids[0] == bos), len(ids)))
            continue
        enc = tokenizer(text, return_offsets_mapping=True, **kw)
        stop = start + len(p)
        offsets = enc["offset_mapping"]
        inside = [j for j, (a, b) in enumerate(offsets) if b > a and a < stop and b > start]
        if not inside:  # an empty message: an empty span where it would start
            before = sum(1 for a, b in offsets if b <= start and b > a) + sum(1 for a, b in offsets if a == b == 0)
            out.append((before, before))
            continue
        out.append((inside[0], inside[-1] + 1))
    return out


def left_pad(seqs: list[list[int]], pad_id: int, bos_id: int | None, device=None) -> Batch:
    """Left-pad token-id lists into a :class:`Batch`."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    batch = Batch(ids, mask, pos, [len(s) for s in seqs], [bos_id is not None and s[0] == bos_id for s in seqs])
    return batch.to(device) if device is not None else batch
