"""``answer``: whether a continuation contains a known answer of its target prompt.

A target-fidelity score for prompts with a short known answer (the research
bank's ``math`` and ``factual`` prompts, short and long, carry ``answer:``
lists; :attr:`transferlab.prompts.Prompt.answers`). 1.0 when the text contains
any accepted answer, 0.0 when it contains none, NaN for a prompt without an
answer (never a silent 0).

**Matching.** Text and answers go through the same normalisation into
*answer tokens* (:func:`answer_tokens`), and an answer matches when its
tokens occur as a contiguous run of the text's tokens:

- lowercase; typographic minus and times signs, superscript and subscript
  digits and ``pi`` made plain (``−`` -> ``-``, ``x²`` -> ``x ^ 2``,
  ``CO₂`` -> ``co 2``, ``pi`` -> ``π``);
- numbers are whole tokens: thousands separators dropped (``1,764`` ->
  ``1764``), a decimal point kept (``3.14``), a sentence's full stop not
  (``391.`` -> ``391``); ``36`` does not match inside ``360`` or ``3.6``;
- number words become digits (``forty-two``, ``forty two`` -> ``42``;
  ``six`` -> ``6``; 0-99, plus ``hundred``/``thousand`` multiples such as
  ``two hundred and six`` -> ``206``);
- words are letter runs (``Ottawa's`` gives ``ottawa``, ``s``); the math
  symbols ``+ - * / ^ = ( ) % π`` are tokens of their own; other
  punctuation and all whitespace separate tokens and are dropped.

So ``"x = -1/2"`` matches ``x=−1/2``, ``"(x - 3)(x + 3)"`` matches
``(x-3)(x+3)``, ``"8"`` matches ``eight planets`` but not ``18``. No
stemming: list plural forms as answers of their own where both are right.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from transferlab.metrics.text import check_texts

_UNITS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i >= 2}
_PLAIN = str.maketrans(
    {
        "−": "-",
        "–": "-",
        "×": "*",
        "·": "*",
        "÷": "/",
        "⁄": "/",
        "²": "^2",
        "³": "^3",
        "₀": "0",
        "₁": "1",
        "₂": "2",
        "₃": "3",
        "₄": "4",
    }
)
_TOKEN_RE = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|[^\W\d_]+|[-+*/^=()%π]")


def _number_words(tokens: list[str]) -> list[str]:
    """Runs of number words (``forty two``, ``two hundred and six``) as one digit token each."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        value, j = _read_number(tokens, i)
        if j > i:
            out.append(str(value))
            i = j
        else:
            out.append(tokens[i])
            i += 1
    return out


def _read_number(tokens: list[str], i: int) -> tuple[int, int]:
    """The number spelled by the words from ``tokens[i]`` on, and the index after them (``i``: none).

    A small grammar, so that adjacent numbers stay apart (``two, ninety`` is 2 and 90, not 92): a unit or teen
    follows nothing, a ten, ``hundred``, ``thousand`` or ``and``; a ten follows nothing, ``hundred``,
    ``thousand`` or ``and``; ``hundred`` follows a unit or teen; ``thousand`` any of those once; ``and`` joins
    ``hundred``/``thousand`` to a following unit, teen or ten.
    """
    total, current, last, j = 0, 0, None, i
    while j < len(tokens):
        w = tokens[j]
        if w in _UNITS and (last in (None, "hundred", "thousand", "and") or (last == "tens" and 0 < _UNITS[w] < 10)):
            current += _UNITS[w]
            last = "unit"
        elif w in _TENS and last in (None, "hundred", "thousand", "and"):
            current += _TENS[w]
            last = "tens"
            if j + 2 < len(tokens) and tokens[j + 1] == "-" and 0 < _UNITS.get(tokens[j + 2], 0) < 10:  # forty-two
                current += _UNITS[tokens[j + 2]]
                last = "unit"
                j += 2
        elif w == "hundred" and last == "unit" and 0 < current < 100:
            current *= 100
            last = "hundred"
        elif w == "thousand" and last in ("unit", "tens", "hundred") and total == 0 and current > 0:
            total, current, last = current * 1000, 0, "thousand"
        elif (
            w == "and"
            and last in ("hundred", "thousand")
            and j + 1 < len(tokens)
            and (tokens[j + 1] in _UNITS or tokens[j + 1] in _TENS)
        ):
            last = "and"
        else:
            break
        j += 1
    if last is None:
        return 0, i
    return total + current, j


def answer_tokens(text: str) -> list[str]:
    """``text`` as answer tokens (see the module docstring): the normalisation both sides of a match go through."""
    text = text.lower().translate(_PLAIN)
    text = re.sub(r"(?<![a-z])pi(?![a-z])", "π", text)
    tokens = [t.replace(",", "") if t[0].isdigit() else t for t in _TOKEN_RE.findall(text)]
    return _number_words(tokens)


def contains_answer(text: str, answers: Sequence[str]) -> bool:
    """Whether ``text`` contains any of ``answers`` as a contiguous run of answer tokens."""
    have = answer_tokens(text)
    for answer in answers:
        want = answer_tokens(answer)
        if not want:
            raise ValueError(f"answer {answer!r} has no answer tokens (letters, digits or math symbols)")
        n = len(want)
        if any(have[i : i + n] == want for i in range(len(have) - n + 1)):
            return True
    return False


class AnswerScorer:
    """``answer``: 1.0 if the continuation contains an accepted answer of its target, 0.0 if not, NaN where the
    target has no known answer. Call as ``scorer(texts, answers=[[...] or None, ...])``, one list per text."""

    name = "answer"
    needs: frozenset[str] = frozenset({"answers"})
    bounds = (0.0, 1.0)

    def __call__(
        self, texts: Sequence[str], sources: Sequence[str] | None = None, answers: Sequence | None = None
    ) -> list[float]:
        texts = check_texts(texts)
        if answers is None:
            raise ValueError("answer needs answers= (the accepted answers of each text's target, or None)")
        if len(answers) != len(texts):
            raise ValueError(f"got {len(answers)} answer lists for {len(texts)} texts")
        out = []
        for i, (t, accepted) in enumerate(zip(texts, answers)):
            if accepted is None or (not isinstance(accepted, str) and len(accepted) == 0):
                out.append(math.nan)
                continue
            if isinstance(accepted, str):
                raise TypeError(f"answers[{i}] must be a list of strings (or None), not a single string")
            out.append(1.0 if contains_answer(t, accepted) else 0.0)
        return out
