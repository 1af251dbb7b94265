"""The prompts a run fed its model, as token texts: what the HTML report's drilldown shows.

:func:`prompt_tokens` encodes each prompt the way the worker feeds it (raw, or
in the model's chat format) and turns every token id into the text it adds, so
a reader sees the positions an intervention wrote. The texts are for display
only: nothing is computed from them.
"""

from __future__ import annotations

import re

_BYTE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """The text each token id adds: a sentencepiece word start (``▁``) as a space, a byte fallback token as
    ``<0xNN>``, anything else as the tokenizer decodes it alone (``Ġthe`` -> `` the``, specials as named)."""
    pieces = tokenizer.convert_ids_to_tokens(list(ids))
    out = []
    for i, piece in zip(ids, pieces):
        piece = "" if piece is None else str(piece)
        if _BYTE.match(piece):
            out.append(piece)
        elif piece.startswith("▁"):
            out.append(piece.replace("▁", " "))
        else:
            out.append(tokenizer.decode([i]))
    return out


def prompt_tokens(tokenizer, texts: dict[str, str], prompt_format: str = "raw") -> dict[str, list[str]]:
    """``{prompt id: token texts}`` of each prompt encoded as the run feeds it (``prompt_format``: raw or chat)."""
    from ..engine.batching import encode

    ids = sorted(texts)
    if not ids:
        return {}
    encoded = encode(tokenizer, [texts[i] for i in ids], prompt_format)
    return {i: token_texts(tokenizer, e) for i, e in zip(ids, encoded)}
