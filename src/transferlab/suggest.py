""" "Did you mean ...?": the known name closest to a mistyped one.

Every layer that owns a set of names (presets, catalog models, config keys,
sites and plan options, prompt ids, scorers) refuses an unknown one with the
closest known names, so the message names the fix. Closeness is difflib's
ratio (a typo, a swapped letter); a known name that starts with what was typed
(a partial name such as ``smollm2-135m``) comes first.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, known: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` known names close to ``name``, best first: names that extend it, then difflib's matches.

    The comparison ignores case (``stories260k`` finds ``stories260K``); ``name`` itself is never suggested.
    """
    names = sorted({str(k) for k in known if str(k) != name})
    if not name or not names:
        return []
    lower = {k.lower(): k for k in names}
    typed = name.lower()
    out = [k for k in names if k.lower().startswith(typed)]
    out.sort(key=len)  # the shortest extension is the likeliest
    for match in difflib.get_close_matches(typed, list(lower), n=n, cutoff=cutoff):
        if lower[match] not in out:
            out.append(lower[match])
    return out[:n]


def did_you_mean(name: str, known: Iterable[str], n: int = 3) -> str:
    """``"did you mean 'x'?"`` (or ``"'x' or 'y'"``) for the closest known names; ``""`` when none is close."""
    found = closest(name, known, n=n)
    if not found:
        return ""
    return "did you mean " + " or ".join(repr(k) for k in found) + "?"


def unknown(what: str, name: str, known: Iterable[str]) -> str:
    """One line for an unknown name, the known ones in their own order:
    ``unknown preset 'storeis'; did you mean 'stories'? (known presets: demo, stories)``."""
    known = list(dict.fromkeys(str(k) for k in known))
    hint = did_you_mean(name, known)
    listing = f"known {what}s: {', '.join(known)}" if known else f"no {what}s known"
    return f"unknown {what} {name!r}; " + (f"{hint} ({listing})" if hint else listing)
