"""Metrics: geometry (participation ratio, R_V), behavior scorers, logit-based scores."""

from .geometry import ShortPromptError, participation_ratio, rv
from .logit_scores import logit_mass_score, marker_token_ids
from .scorers import SCORERS, get_scorer, register_scorer, score_table

__all__ = [
    "ShortPromptError",
    "participation_ratio",
    "rv",
    "logit_mass_score",
    "marker_token_ids",
    "SCORERS",
    "get_scorer",
    "register_scorer",
    "score_table",
]
