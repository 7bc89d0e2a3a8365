"""The tuning algorithms zest weighs by default, and the share of a thorough search's gain each captures.

Z_e, as estimated for a job, is the improvement a thorough search would reach;
an algorithm with fewer trials captures a share of it. Until measured
learning curves replace them, the shares are the ratios of the reference's
worked example 3 (Z = 10, 25 and 35 % for N = 30, 500 and 2000).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AlgorithmDefaults:
    name: str
    trials: int
    capture_share: float  # share of the thorough-search Z_e this algorithm reaches
    description: str


DEFAULT_ALGORITHMS: tuple[AlgorithmDefaults, ...] = (
    AlgorithmDefaults("heuristic", 30, 10 / 35, "rules of thumb and a short manual sweep"),
    AlgorithmDefaults("black-box", 500, 25 / 35, "black-box optimization, e.g. Optuna's TPE"),
    AlgorithmDefaults("exhaustive", 2000, 35 / 35, "exhaustive grid search"),
)
ALGORITHMS_BY_NAME: dict[str, AlgorithmDefaults] = {a.name: a for a in DEFAULT_ALGORITHMS}
DEFAULT_TRIAL_MINUTES = 25.0

SHARES_NOTE = (
    "Z per algorithm = its share of the thorough-search Z_e: heuristic 10/35, black-box 25/35, "
    "exhaustive 35/35, the ratios of the reference example (breakeven.md, example 3), "
    "not yet measured from tuning data"
)
