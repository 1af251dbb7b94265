"""The confirmatory family: contrasts named before the data, on one primary score.

A **contrast** is written ``"A - B"`` (condition A minus condition B, a
space on each side of the minus so names may contain hyphens). A preset
names its primary score, the contrasts it claims differ (``confirmatory``)
and the contrasts it claims do not differ by more than a margin
(``equivalence``, each ``{contrast, margin}``). Holm's adjustment runs over
these claims only (per model, all models of a run in one family); every
other comparison of a report is exploratory, with unadjusted p.
"""

from __future__ import annotations

from dataclasses import dataclass


class ContrastError(ValueError):
    """A contrast that is not written ``"A - B"``."""


def parse_contrast(text: str) -> tuple[str, str]:
    """``"transfer - baseline"`` -> ``("transfer", "baseline")``."""
    if not isinstance(text, str) or text.count(" - ") != 1:
        raise ContrastError(
            f"contrast {text!r} must read 'A - B' (condition A minus condition B, spaces around the minus), "
            'e.g. "transfer - baseline"'
        )
    a, b = (part.strip() for part in text.split(" - "))
    if not a or not b or a == b:
        raise ContrastError(f'contrast {text!r} needs two different condition names, e.g. "transfer - baseline"')
    return a, b


@dataclass(frozen=True)
class Claim:
    """One member of the family: ``condition - reference`` differs (``margin`` None) or is equivalent
    within ``±margin`` on the primary score."""

    condition: str
    reference: str
    margin: float | None = None

    @property
    def role(self) -> str:
        return "equivalence" if self.margin is not None else "confirmatory"


@dataclass(frozen=True)
class Family:
    """The confirmatory family of a run: its primary score, level and claims."""

    primary: str
    claims: tuple[Claim, ...]
    alpha: float = 0.05

    @classmethod
    def from_analysis(cls, analysis: dict | None) -> Family | None:
        """From a config's ``[analysis]`` table (already validated); None when it names no claim."""
        if not analysis or not analysis.get("primary"):
            return None
        claims = [Claim(*parse_contrast(c)) for c in analysis.get("confirmatory") or []]
        for e in analysis.get("equivalence") or []:
            claims.append(Claim(*parse_contrast(e["contrast"]), margin=float(e["margin"])))
        if not claims:
            return None
        return cls(str(analysis["primary"]), tuple(claims), float(analysis.get("alpha", 0.05)))

    def claim(self, condition: str, reference: str, score: str) -> Claim | None:
        """The family's claim about this comparison, if it makes one."""
        if score != self.primary:
            return None
        for c in self.claims:
            if (c.condition, c.reference) == (condition, reference):
                return c
        return None
