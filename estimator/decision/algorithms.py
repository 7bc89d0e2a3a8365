"""The tuning algorithms zest weighs by default, and the share of a thorough search's gain each captures.

Z_e, as estimated for a job, is the improvement a thorough search would reach;
an algorithm with fewer trials captures a share of it. The shares come from
the default model's metadata, measured on the vTrain tuning studies
(``zest train``, models/README.md); the ratios of the reference's worked
example 3 (Z = 10, 25 and 35 % for N = 30, 500 and 2000) are the fallback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from estimator.decision.breakeven import Candidate, Costs, Decision, Job, ZInterval, decide


@dataclass(frozen=True)
class AlgorithmDefaults:
    name: str
    trials: int
    reference_share: float  # share of the thorough-search Z in the reference example
    description: str


DEFAULT_ALGORITHMS: tuple[AlgorithmDefaults, ...] = (
    AlgorithmDefaults("heuristic", 30, 10 / 35, "rules of thumb and a short manual sweep"),
    AlgorithmDefaults("black-box", 500, 25 / 35, "black-box optimization, e.g. Optuna's TPE"),
    AlgorithmDefaults("exhaustive", 2000, 35 / 35, "exhaustive grid search"),
)
ALGORITHMS_BY_NAME: dict[str, AlgorithmDefaults] = {a.name: a for a in DEFAULT_ALGORITHMS}
DEFAULT_TRIAL_MINUTES = 25.0
#: What an estimated Z_e is relative to: the definition of the model's measured labels (vTrain's
#: 108 studies measure 2-26 configurations each, a median of 9), said with every estimate.
Z_E_RELATIVE_TO = (
    "the best of the ~9 configurations a tuning study measures: a lower bound of the best in the whole space"
)


@dataclass(frozen=True)
class CaptureShares:
    """Share of the thorough-search Z_e each algorithm reaches, by name, and where the shares come from."""

    shares: Mapping[str, float]
    note: str


REFERENCE_SHARES = CaptureShares(
    {a.name: a.reference_share for a in DEFAULT_ALGORITHMS},
    "Z per algorithm = its share of the thorough-search Z_e: heuristic 10/35, black-box 25/35, "
    "exhaustive 35/35, the ratios of the reference example (breakeven.md, example 3), "
    "not measured from tuning data",
)


def capture_shares(
    measured: Mapping[str, float] | None, origin: str = "measured on the vTrain tuning studies"
) -> CaptureShares:
    """The measured shares (default model metadata) when they cover every algorithm, else the reference's."""
    if not measured or any(a.name not in measured for a in DEFAULT_ALGORITHMS):
        return REFERENCE_SHARES
    listed = ", ".join(f"{a.name} {measured[a.name]:.2f}" for a in DEFAULT_ALGORITHMS)
    return CaptureShares(
        dict(measured),
        f"Z per algorithm = its share of the thorough-search Z_e, {origin}: {listed}",
    )


@dataclass(frozen=True)
class AlgorithmChoice:
    """An algorithm to weigh: its name, trials N, and its Z in % when given, a point or an interval (else
    its share of Z_e)."""

    name: str
    trials: int
    z_percent: float | ZInterval | None = None


DEFAULT_CHOICES: tuple[AlgorithmChoice, ...] = tuple(
    AlgorithmChoice(a.name, a.trials) for a in DEFAULT_ALGORITHMS
)


def candidates(
    chosen: Sequence[AlgorithmChoice],
    z_thorough: ZInterval | None,
    shares: CaptureShares,
    trial_hours: float,
) -> list[Candidate]:
    """The break-even candidates: a given Z as a point, otherwise the algorithm's share of ``z_thorough``."""
    out = []
    for choice in chosen:
        if isinstance(choice.z_percent, ZInterval):
            z = choice.z_percent
        elif choice.z_percent is not None:
            z = ZInterval.point(choice.z_percent)
        elif z_thorough is None:
            raise ValueError(f"{choice.name} has no Z and no thorough-search Z_e was given")
        else:
            z = z_thorough.scaled(shares.shares[choice.name])
        out.append(Candidate(choice.name, choice.trials, trial_hours, z))
    return out


@dataclass(frozen=True)
class Plan:
    """What one job's decision weighs besides Z_e: T, R, G (None: the GPUs seen), t, costs, algorithms."""

    duration_hours: float
    reuse: float = 1.0
    gpus: int | None = None
    trial_hours: float = DEFAULT_TRIAL_MINUTES / 60.0
    costs: Costs = field(default_factory=Costs)
    algorithms: tuple[AlgorithmChoice, ...] = DEFAULT_CHOICES

    def job(self, gpus_seen: float = math.nan) -> Job:
        """The break-even job: G as planned, else the GPUs seen in the telemetry, else 1."""
        gpus = self.gpus if self.gpus is not None else (int(gpus_seen) if math.isfinite(gpus_seen) else 1)
        return Job(self.duration_hours, max(gpus, 1), self.reuse)


def weigh(
    plan: Plan, z_thorough: ZInterval | None, shares: CaptureShares, gpus_seen: float = math.nan
) -> Decision:
    """One job's decision: each planned algorithm's candidate (its share of Z_e, or its given Z), decided."""
    return decide(
        candidates(plan.algorithms, z_thorough, shares, plan.trial_hours), plan.job(gpus_seen), plan.costs
    )
