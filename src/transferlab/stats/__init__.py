"""Paired statistics for behavior-transfer experiments, one concept per module.

- :mod:`.paired`: two conditions compared unit by unit (:func:`paired_compare`, :func:`compare_all`);
- :mod:`.bootstrap`: bootstrap distributions of a mean under the design's clustering (two-way
  source x target, one-way, or pairs with their seeds);
- :mod:`.inference`: intervals and p-values read from one set of draws, consistent with each other,
  and the floors of resampled p-values;
- :mod:`.multiplicity`: Holm's step-down and the level it tested each hypothesis at;
- :mod:`.family`: the confirmatory family a preset names (primary score, contrasts, margins);
- :mod:`.equivalence`: "no effect" as a TOST against a stated margin, and its verdict;
- :mod:`.describe`: per-group means, SDs and counts.

Distributions come from scipy; Holm's step-down and the bootstrap samplers are written here and
tested against statsmodels, scipy and brute-force enumeration.
"""

from .bootstrap import Design, bootstrap_mean_ci, choose_design, design_draws, oneway_draws, twoway_draws
from .common import DDOF, P_COLUMNS
from .describe import describe_scores
from .equivalence import DIFFERENT, EQUIVALENT, INCONCLUSIVE, tost_t, verdict, verdict_text
from .family import Claim, ContrastError, Family, parse_contrast
from .inference import boot_p, boot_p_floor, order_ci, perm_p_floor, rule_of_three, tost_p
from .multiplicity import holm, holm_levels
from .paired import compare_all, paired_compare, paired_table

__all__ = [
    "DDOF",
    "DIFFERENT",
    "EQUIVALENT",
    "INCONCLUSIVE",
    "P_COLUMNS",
    "Claim",
    "ContrastError",
    "Design",
    "Family",
    "boot_p",
    "boot_p_floor",
    "bootstrap_mean_ci",
    "choose_design",
    "compare_all",
    "describe_scores",
    "design_draws",
    "holm",
    "holm_levels",
    "oneway_draws",
    "order_ci",
    "paired_compare",
    "paired_table",
    "parse_contrast",
    "perm_p_floor",
    "rule_of_three",
    "tost_p",
    "tost_t",
    "twoway_draws",
    "verdict",
    "verdict_text",
]
