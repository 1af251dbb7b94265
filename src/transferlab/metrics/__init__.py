"""Metrics: geometry (participation ratio, R_V) and behavior scorers."""

from .geometry import ShortPromptError, participation_ratio, rv

__all__ = ["ShortPromptError", "participation_ratio", "rv"]
