"""The context length: prompts that do not fit are refused, not truncated.

A model is trained on sequences up to ``max_position_embeddings`` tokens (its
config says so; GGUF files say ``llama.context_length``). Beyond that its
positions are ones it never saw, and it generates garbage without any error:
4,993 tokens on a 2,048-token model did exactly that. The rule, the same
wherever prompts enter:

- **capture / R_V**: a prompt's tokens (BOS included) must be at most the
  context length;
- **generate**: a target's tokens, plus ``max_new_tokens``, plus one in the
  ``seed`` flavour (its last prompt token is fed twice), plus the source's
  tokens where a ``kv:prepend`` splice puts the source's cache before the
  target's (or a ``kv:insert`` puts its message, counted as the whole source),
  must be at most the context length; each source must fit on its own.

A prompt that breaks it is **refused** with a :class:`ContextError` naming it,
its length, the context and the fix (shorten the prompt, lower
``max_new_tokens``). Truncating silently would change the experiment (which
tokens remain decides what a window or a splice reads), so transferlab never
truncates. A model whose config gives no context length is not checked.
"""

from __future__ import annotations

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


class ContextError(ValueError):
    """A prompt (with the tokens to generate) longer than the model's context."""


def context_length(model_or_config) -> int | None:
    """The context length a model's config declares (None if it declares none)."""
    cfg = getattr(getattr(model_or_config, "hf", None), "config", None) or model_or_config
    for key in CONTEXT_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _label(i: int, labels, text_of) -> str:
    name = labels[i] if labels is not None else f"{i}"
    text = text_of(i) if text_of is not None else None
    if isinstance(text, str):
        shown = text[:40] + ("..." if len(text) > 40 else "")
        return f"{name} ({shown!r})"
    return name


def check_fits(
    context: int | None,
    lengths: list[int],
    *,
    extra: int | list[int] = 0,
    what: str = "prompt",
    labels: list[str] | None = None,
    text_of=None,
    extra_text: str = "",
) -> None:
    """Refuse the first ``lengths[i] + extra[i]`` beyond ``context`` (see the module docstring)."""
    if context is None:
        return
    extras = extra if isinstance(extra, list) else [extra] * len(lengths)
    over = [i for i, (n, e) in enumerate(zip(lengths, extras)) if n + e > context]
    if not over:
        return
    i = over[0]
    more = f" and {len(over) - 1} more" if len(over) > 1 else ""
    plus = f" + {extras[i]} {extra_text} = {lengths[i] + extras[i]}" if extras[i] else ""
    raise ContextError(
        f"{what} {_label(i, labels, text_of)}{more}: {lengths[i]} tokens{plus}, beyond "
        f"the model's context of {context} tokens (max_position_embeddings); prompts that do not fit are refused, "
        f"not truncated: shorten the prompt" + (" or lower max_new_tokens" if extras[i] else "")
    )


def check_generation(model, tgt_ids, src_ids, plans, max_new_tokens: int, flavour: str, texts=None) -> None:
    """:func:`check_fits` for one ``generate`` call (targets, their sources, plans, new tokens)."""
    context = context_length(model)
    if context is None:
        return
    check_fits(context, [len(s) for s in src_ids if s is not None], what="source")
    seed = 1 if flavour == "seed" else 0
    extras, prepends = [], False
    for s, plan in zip(src_ids, plans):
        # prepend and insert lengthen the cache by the source (insert: by its message, at most the source)
        prepend = s is not None and any(getattr(i, "align", None) in ("prepend", "insert") for i in plan)
        prepends |= prepend
        extras.append(max_new_tokens + seed + (len(s) if prepend else 0))
    text_of = (lambda i: texts[i]) if texts is not None else None
    check_fits(
        context,
        [len(t) for t in tgt_ids],
        extra=extras,
        what="target",
        text_of=text_of,
        extra_text="new and prepended source tokens" if prepends else "new tokens",
    )
