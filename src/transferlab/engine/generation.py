"""``generate``: batched generation under per-example plans and sources.

``generate(model, targets, sources=..., plan=...)`` runs every example's own
plan with its own source, many examples per batch (left-padded, sorted by
length), and returns a :class:`Generation` with the texts, the token ids, why
each example stopped, and the audit of every intervention.

Each batch goes through four steps (:mod:`.steps`), corrected flavour (default):

1. capture the batch's sources (every hook point the plans read, plus the KV
   cache if any plan splices; each distinct source once: :mod:`.sources`);
2. process each target's prefix (all tokens but the last) with prompt-phase
   interventions in place; apply KV splices to that prefix cache;
3. process the last prompt token on top of it; its logits give new token 0;
4. feed each new token once (decode phase) until ``max_new_tokens`` tokens
   exist or every example has ended; decode-phase interventions act at every
   such forward, i.e. on new tokens 0 .. n-2 (the last sampled token is never
   fed) (:mod:`.decode`).

**Teacher forcing.** ``forced=[tokens or None, ...]`` runs the same four
steps, but an example with forced tokens takes them instead of sampling and
ends after the last one: its prompt-phase interventions, KV splices and
decode-phase interventions act exactly as in a free generation, and
``Generation.token_logprobs`` holds the log-probability the intervened model
gave each forced token. It scores a given continuation under a plan (the
experiments' ``target_answer_logprob``); a forced decode of a generation's own
sampled tokens reproduces that generation's ``token_logprobs``.

The seed flavour reproduces the seed's code: it replaces steps 2-3 and
patches the seed's way; :mod:`.seed` holds every difference.

Everything about an example -- its tokens, its sampling stream, its noise --
depends only on that example, never on the batch it shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..interventions.audit import audit_rows, audit_table, never_fired
from ..interventions.survival import kept_shares
from ..models.context import check_generation
from ..timings import stage
from .arguments import examples
from .batching import encode, message_spans, resolve_format
from .rows import BatchRows
from .sampling import Sampler
from .sizing import auto_batch_size, tokens_per_example
from .steps import Decoding, generate_batch

FLAVOURS = ("corrected", "seed")


@dataclass
class Generation:
    """What ``generate`` returns, in the order the targets were given."""

    texts: list[str]
    token_ids: list[list[int]]
    finish_reasons: list[str]  # "eos", "length", or "forced" (a teacher-forced example: see ``forced``)
    audit: pd.DataFrame
    example_ids: list
    prompt_lengths: list[int]
    flavour: str
    logmass: dict[str, np.ndarray] = field(default_factory=dict)
    # per example, the loop and attention kernel that decoded it (``"graph/ragged"``, ``"eager/sdpa"``, ...:
    # :func:`transferlab.engine.decode.run`); bf16 rounding differs between them, float32 tokens do not
    decode_paths: list[str] = field(default_factory=list)
    # per example (with ``record_logprobs`` or ``forced``): the natural log-probability of each of its tokens
    # under the (intervened) model's untempered next-token distribution; float64, one entry per token_ids entry
    token_logprobs: list[np.ndarray] = field(default_factory=list)
    prompt_format: str = "raw"  # how text prompts were encoded: "raw" or "chat" (the model's template)
    # return_logits=True: per example, ``[new tokens drawn, V]`` float32 logits each new token was drawn from
    # (the EOS that ended a row included: one row more than its token_ids then); None otherwise
    logits: list[torch.Tensor] | None = None
    # target survival (:mod:`transferlab.interventions.survival`): per example, ``[layers, prompt tokens]`` True
    # where the slot kept the target's own key and value, and the example's message span (start, stop)
    kept: list[np.ndarray] = field(default_factory=list)
    target_spans: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def ended_at_once(self) -> list[bool]:
        """Per example: whether the first new token was EOS (an empty continuation; in raw format an instruct
        model often does this: try ``prompt_format="chat"``)."""
        return [r == "eos" and not t for r, t in zip(self.finish_reasons, self.token_ids)]

    def target_kept(self) -> tuple[list[float], list[float]]:
        """``(target_kept, target_kept_any)`` per example: the share of its message tokens whose slots kept the
        target's own keys and values in every layer / in at least one."""
        shares = [kept_shares(k, span) for k, span in zip(self.kept, self.target_spans)]
        return [a for a, _ in shares], [b for _, b in shares]

    def never_fired(self) -> pd.DataFrame:
        return never_fired(self.audit)


def generate(
    model,
    targets,
    *,
    sources=None,
    plan=None,
    max_new_tokens: int = 150,
    temperature: float = 0.8,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    seed: int = 0,
    stop_at_eos: bool = True,
    batch_size: int | None = None,
    flavour: str = "corrected",
    example_ids: list | None = None,
    streams: list | None = None,
    record_logits: dict | None = None,
    progress: bool = False,
    forced: list | None = None,
    record_logprobs: bool = False,
    prompt_format: str | None = None,
    return_logits: bool = False,
    target_spans: list | None = None,
    source_spans: list | None = None,
) -> Generation:
    """Generate continuations of ``targets`` under ``plan`` (see module docstring).

    ``plan`` and ``sources`` are either one for all targets or a list with one
    per target (``None`` entries allowed where the plan needs no source).
    ``example_ids`` name the examples in the audit and, unless ``streams``
    is given, key their random streams (default: the index). ``streams``
    keys the sampling and noise streams separately: examples given the same
    stream draw the same random numbers (an experiment gives every condition
    of a pair one stream, so paired differences carry no extra sampling noise).
    ``record_logits`` maps a name to token ids (one list for all, or one list
    per example); ``Generation.logmass[name]`` then holds, per example and
    step, the log-probability mass the tempered next-token distribution puts
    on those ids (NaN after the example ended).
    ``forced``: one token-id list (or None: sampled as usual) per target; those
    examples take their tokens instead of sampling and stop after them (finish
    reason ``"forced"``; see the module docstring). ``record_logprobs`` (implied by
    ``forced``) fills ``Generation.token_logprobs``.

    ``prompt_format``: how text prompts (targets and sources) become tokens,
    ``raw`` or ``chat`` (the user turn of the model's chat template); None
    takes chat when the model has a chat template, raw otherwise
    (:func:`~transferlab.engine.batching.default_format`). Token-id prompts are
    used as given. ``return_logits``: keep the logits every new token was drawn
    from (``Generation.logits``; ``max_new_tokens x vocabulary`` floats per
    example, so mind the memory on long runs).

    ``target_spans``/``source_spans`` give, per example, the ``(start, stop)``
    token positions of each prompt's own message (the rest: BOS and chat
    template tokens; :func:`~transferlab.engine.batching.message_spans`);
    default: the message of each text prompt in its format, every token after
    BOS of a token-id prompt. They decide what ``target_kept`` counts and
    where an ``insert`` splice puts the source's message.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}; got {flavour!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    ex = examples(model, targets, plan, sources, flavour, example_ids, streams)
    n, ids, plans = len(ex), ex.ids, ex.plans
    keys = ex.keys(seed)
    sampler = Sampler(temperature=temperature, top_p=top_p, top_k=top_k, greedy=greedy)
    fmt = resolve_format(model.tokenizer, prompt_format)
    with stage("tokenize"):
        tgt_ids = encode(model.tokenizer, ex.targets, fmt)
        src_ids = [encode(model.tokenizer, [s], fmt)[0] if s is not None else None for s in ex.sources]
    check_generation(model, tgt_ids, src_ids, plans, max_new_tokens, flavour, ex.targets)  # refused, not truncated
    tgt_spans = _spans(model, target_spans, ex.targets, tgt_ids, fmt, "target_spans")
    src_spans = _spans(model, source_spans, ex.sources, [s or [] for s in src_ids], fmt, "source_spans")
    per_row_sets = _logit_sets(record_logits, n, model)
    forced = _forced_tokens(forced, n, max_new_tokens, model)
    order = sorted(range(n), key=lambda i: (len(tgt_ids[i]), len(src_ids[i] or ())))
    bs = batch_size or auto_batch_size(model, n, tokens_per_example(tgt_ids, src_ids, max_new_tokens))
    out_tokens: list = [None] * n
    out_reason: list = [None] * n
    out_path: list = [""] * n
    out_lp: list = [None] * n
    out_kept: list = [None] * n
    out_mass = {name: np.full((n, max_new_tokens), np.nan) for name in per_row_sets}
    out_logits: list = [None] * n
    audit: list[dict] = []
    how = Decoding(sampler, max_new_tokens, stop_at_eos, flavour, return_logits)
    chunks = [order[i : i + bs] for i in range(0, n, bs)]
    bar = _progress(progress, len(chunks))
    for chunk in chunks:
        rows = BatchRows.of(chunk, tgt_ids, src_ids, plans, keys, tgt_spans, src_spans)
        out = generate_batch(model, rows, how, per_row_sets, ex.precomputed, forced, record_logprobs)
        for b, i in enumerate(chunk):
            out_tokens[i], out_reason[i], out_path[i] = out.tokens[b], out.reasons[b], out.decode_path
            if out.logprobs is not None:
                out_lp[i] = out.logprobs[b]
            out_kept[i] = out.kept[b]
            for name in out_mass:
                out_mass[name][i] = out.mass[name][b]
            if out.logits is not None:
                drawn = len(out.tokens[b]) + int(out.reasons[b] == "eos")
                out_logits[i] = out.logits[b, :drawn].clone()
        with stage("audit"):
            audit.extend(audit_rows(ids, chunk, out.audit))
        if bar is not None:
            bar.advance(bar.task_ids[0])
    if bar is not None:
        bar.stop()
    with stage("detokenize"):
        texts = [model.tokenizer.decode(t, skip_special_tokens=True) for t in out_tokens]
    with stage("audit"):
        table = audit_table(audit)
    lengths = [len(t) for t in tgt_ids]
    lps = out_lp if forced is not None or record_logprobs else []
    return Generation(
        texts,
        out_tokens,
        out_reason,
        table,
        list(ids),
        lengths,
        flavour,
        out_mass,
        out_path,
        lps,
        fmt,
        out_logits if return_logits else None,
        out_kept,
        tgt_spans,
    )


def _forced_tokens(forced, n: int, max_new: int, model) -> list | None:
    """``forced`` checked: one token-id list (non-empty, ids in the vocabulary, at most ``max_new``) or None per
    target."""
    if forced is None:
        return None
    forced = list(forced)
    if len(forced) != n:
        raise ValueError(f"forced: got {len(forced)} token lists for {n} targets; give one (or None) per target")
    vocab = int(model.hf.config.vocab_size)
    out = []
    for i, toks in enumerate(forced):
        if toks is None:
            out.append(None)
            continue
        toks = [int(t) for t in toks]
        if not toks:
            raise ValueError(f"forced[{i}] is empty; give None for an example that samples")
        if len(toks) > max_new:
            raise ValueError(f"forced[{i}] has {len(toks)} tokens, more than max_new_tokens={max_new}")
        bad = [t for t in toks if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"forced[{i}]: token ids {bad[:5]} outside the vocabulary (0..{vocab - 1})")
        out.append(toks)
    return out


def _spans(model, given, prompts: list, ids: list[list[int]], fmt: str, what: str) -> list[tuple[int, int]]:
    """Message spans: as given (checked against the prompts' lengths), else the message as ``fmt`` defines it
    for text prompts (:func:`~transferlab.engine.batching.message_spans`) and every token after BOS for
    token-id prompts."""
    if given is None:
        return message_spans(model.tokenizer, [[] if p is None else p for p in prompts], fmt)
    given = [tuple(int(x) for x in s) for s in given]
    if len(given) != len(ids):
        raise ValueError(f"{what}: got {len(given)} for {len(ids)} prompts; give one (start, stop) per prompt")
    for i, ((a, b), t) in enumerate(zip(given, ids)):
        if t and not 0 <= a <= b <= len(t):
            raise ValueError(f"{what}[{i}] = ({a}, {b}) is not a span of a {len(t)}-token prompt")
    return given


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from rich.progress import Progress

    bar = Progress(transient=True)
    bar.add_task("generating", total=total)
    bar.start()
    return bar


def _logit_sets(record, n: int, model) -> dict[str, list[list[int]]]:
    if not record:
        return {}
    out = {}
    vocab = int(model.hf.config.vocab_size)
    for name, value in record.items():
        value = list(value)
        per_row = value if value and isinstance(value[0], (list, tuple)) else [value] * n
        if len(per_row) != n:
            raise ValueError(f"record_logits[{name!r}]: one id list for all, or one per target ({n})")
        for ids in per_row:
            bad = [i for i in ids if not 0 <= int(i) < vocab]
            if bad:
                raise ValueError(
                    f"record_logits[{name!r}]: token ids {bad[:5]} outside the vocabulary (0..{vocab - 1})"
                )
        out[name] = [list(map(int, r)) for r in per_row]
    return out
