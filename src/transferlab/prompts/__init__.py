"""Prompt banks (versioned data files) and seeded (source, target) pairing.

``load_bank("research" | "stories" | path)`` loads and validates a bank;
``make_pairs(sources, targets, n, seed, ...)`` draws pairs from two pools.
See :mod:`transferlab.prompts.bank` and :mod:`transferlab.prompts.pairing`.
"""

from transferlab.prompts.bank import (
    PILLARS,
    BankError,
    GroupInfo,
    Prompt,
    PromptBank,
    available_banks,
    bank_identity,
    bank_version,
    load_bank,
)
from transferlab.prompts.pairing import (
    MatchedPairing,
    Pair,
    make_length_matched_pairs,
    make_pairs,
    max_pairs_without_reuse,
    pairs_table,
)

__all__ = [
    "PILLARS",
    "BankError",
    "GroupInfo",
    "Pair",
    "Prompt",
    "PromptBank",
    "available_banks",
    "bank_identity",
    "bank_version",
    "load_bank",
    "make_pairs",
    "make_length_matched_pairs",
    "MatchedPairing",
    "max_pairs_without_reuse",
    "pairs_table",
]
