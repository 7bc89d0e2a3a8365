"""The break-even model of tuning: every formula of ``shared/reference/breakeven.md``, once.

Symbols as in the reference: T job duration (hours), G GPUs, Z improvement
(% of training time), N trials, t trial time (hours), R reuse count, E
engineer-hours, c_g cost of a GPU-hour, c_e cost of an engineer-hour.
Per-GPU quantities are in hours; ``*_gpu_hours`` multiply by G.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from collectors.errors import InputError

_Reuse = TypeVar("_Reuse", float, npt.NDArray[np.float64])

# --- the formulas -----------------------------------------------------------


def gain_percent(best_seconds: Any, seconds: Any) -> Any:
    """Z: the share of time that tuning a configuration taking ``seconds`` to one taking ``best_seconds``
    saves, 100 · (1 − t_best / t), in % (numbers or arrays alike). zest's one copy of the formula."""
    return 100.0 * (1.0 - best_seconds / seconds)


def exploration_hours(trials: int, trial_hours: float) -> float:
    """Per-GPU exploration time ``N · t`` in hours (the GPU-hours divided by G)."""
    return trials * trial_hours


def speedup_hours_per_run(duration_hours: float, z_percent: float) -> float:
    """Time one run saves, ``ΔT = T · Z/100`` hours (per GPU)."""
    return duration_hours * z_percent / 100.0


def total_speedup_hours(duration_hours: float, z_percent: float, reuse: _Reuse) -> _Reuse:
    """Time saved over R uses, ``R · T · Z/100`` hours (per GPU); R may be an array of reuse counts."""
    return reuse * speedup_hours_per_run(duration_hours, z_percent)


def implementation_hours(gpus: int, costs: Costs) -> float:
    """Engineering cost expressed in per-GPU hours of the job: ``c_e · E / (c_g · G)``."""
    if costs.engineer_hours == 0:
        return 0.0
    assert costs.gpu_hour_cost is not None and costs.engineer_hour_cost is not None  # checked by Costs
    return costs.engineer_hour_cost * costs.engineer_hours / (costs.gpu_hour_cost * gpus)


def r_explore(trials: int, trial_hours: float, duration_hours: float, z_percent: float) -> float:
    """Reuse count that recovers the exploration: ``N · t / (T · Z/100)``; infinite for Z = 0."""
    slope = speedup_hours_per_run(duration_hours, z_percent)
    return math.inf if slope == 0 else exploration_hours(trials, trial_hours) / slope


def r_impl(gpus: int, costs: Costs, duration_hours: float, z_percent: float) -> float:
    """Reuse count that recovers the engineering: ``c_e · E / (c_g · G · T · Z/100)``."""
    cost = implementation_hours(gpus, costs)
    if cost == 0:
        return 0.0
    slope = speedup_hours_per_run(duration_hours, z_percent)
    return math.inf if slope == 0 else cost / slope


def z_break_percent(
    trials: int, trial_hours: float, duration_hours: float, reuse: float, gpus: int, costs: Costs
) -> float:
    """Improvement that just pays at R uses: ``100 · (N · t + c_e · E / (c_g · G)) / (T · R)``."""
    cost = exploration_hours(trials, trial_hours) + implementation_hours(gpus, costs)
    return 100.0 * cost / (duration_hours * reuse)


# --- inputs -----------------------------------------------------------------


@dataclass(frozen=True)
class Costs:
    """Engineering effort and prices; with ``engineer_hours == 0`` prices are optional."""

    engineer_hours: float = 0.0
    gpu_hour_cost: float | None = None
    engineer_hour_cost: float | None = None

    def __post_init__(self) -> None:
        _check_at_least("engineer_hours", self.engineer_hours, 0.0)
        for name in ("gpu_hour_cost", "engineer_hour_cost"):
            value = getattr(self, name)
            if value is not None:
                _check_positive(name, value)
        if self.engineer_hours > 0 and (self.gpu_hour_cost is None or self.engineer_hour_cost is None):
            raise InputError(
                "engineer_hours > 0 needs both gpu_hour_cost and engineer_hour_cost "
                "to weigh engineering time against GPU time"
            )


@dataclass(frozen=True)
class ZInterval:
    """Expected improvement as a low / mid / high interval, in % of training time, each in [0, 100)."""

    low: float
    mid: float
    high: float

    def __post_init__(self) -> None:
        for value in (self.low, self.mid, self.high):
            if not 0.0 <= value < 100.0:
                raise InputError(f"Z must be in [0, 100) percent, got {value:g}")
        if not self.low <= self.mid <= self.high:
            raise InputError(
                f"Z interval must satisfy low <= mid <= high, got {self.low:g}, {self.mid:g}, {self.high:g}"
            )

    @classmethod
    def point(cls, z_percent: float) -> ZInterval:
        return cls(z_percent, z_percent, z_percent)

    def scaled(self, share: float) -> ZInterval:
        """The interval an algorithm that captures ``share`` of the improvement reaches."""
        return ZInterval(self.low * share, self.mid * share, self.high * share)


@dataclass(frozen=True)
class Job:
    """The job whose tuning is considered: T hours on G GPUs, to be run R times."""

    duration_hours: float
    gpus: int = 1
    reuse: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("duration_hours", self.duration_hours)
        if self.gpus < 1:
            raise InputError(f"gpus must be a whole number >= 1, got {self.gpus}")
        _check_at_least("reuse", self.reuse, 1.0)


@dataclass(frozen=True)
class Candidate:
    """A tuning algorithm to weigh: N trials of t hours reaching an improvement Z."""

    name: str
    trials: int
    trial_hours: float
    z_percent: ZInterval

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise InputError(f"trials of {self.name} must be a whole number >= 1, got {self.trials}")
        _check_positive(f"trial_hours of {self.name}", self.trial_hours)


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a finite number > 0, got {value:g}")


def _check_at_least(name: str, value: float, minimum: float) -> None:
    if not (math.isfinite(value) and value >= minimum):
        raise InputError(f"{name} must be a finite number >= {minimum:g}, got {value:g}")


# --- the decision -----------------------------------------------------------


class Verdict(StrEnum):
    PROCEED = "proceed"  # even the low end of Z_e clears Z_break
    MARGINAL = "marginal"  # Z_break falls inside the interval: consider a cheaper algorithm
    DOES_NOT_PAY = "does-not-pay"  # even the high end of Z_e is below Z_break


def verdict(z: ZInterval, z_break: float) -> Verdict:
    """Compare the interval of Z_e with Z_break (a point Z equal to Z_break is marginal)."""
    if z.low > z_break:
        return Verdict.PROCEED
    if z.high < z_break:
        return Verdict.DOES_NOT_PAY
    return Verdict.MARGINAL


@dataclass(frozen=True)
class Assessment:
    """The break-even figures of one candidate for one job."""

    candidate: Candidate
    exploration_hours: float  # per GPU: N · t
    exploration_gpu_hours: float  # G · N · t
    speedup_hours_per_run: float  # T · Z_mid/100
    r_explore: float
    r_impl: float
    r_break: float  # R_explore + R_impl at Z mid; inf when Z mid is 0
    r_break_range: tuple[float, float]  # R_break at Z high and at Z low
    z_break_percent: float
    net_saving_gpu_hours: float  # G · (R · T · Z_mid/100 − N · t) − engineering in GPU-hours
    net_saving_cost: float | None  # the same in currency, when prices are given
    verdict: Verdict

    @property
    def first_paying_reuse(self) -> int | None:
        """The smallest whole R with a positive net saving at Z mid; None when none exists."""
        if not math.isfinite(self.r_break):
            return None
        return math.floor(self.r_break) + 1


@dataclass(frozen=True)
class Decision:
    """Every candidate's assessment and the recommended one (None when none proceeds).

    ``marginal_choice``: when none proceeds, the marginal candidate that pays at the mid Z (a positive
    net saving; the best one), which is worth starting with and measuring; None otherwise.
    """

    job: Job
    costs: Costs
    assessments: tuple[Assessment, ...]
    recommendation: str | None
    notes: tuple[str, ...] = field(default=())
    marginal_choice: str | None = None


def recommendation_text(recommendation: str | None, marginal_choice: str | None) -> str:
    """The decision in words, as the table's ``recommendation:`` line says it."""
    if recommendation is not None:
        return recommendation
    if marginal_choice is not None:
        return (
            f"none for sure; {marginal_choice} is marginal: it pays at the mid Z, not at the low end: "
            f"start with the {marginal_choice} search and measure"
        )
    return "none pays off at the mid Z; do not tune"


def assess(candidate: Candidate, job: Job, costs: Costs) -> Assessment:
    """Apply the break-even formulas to one candidate."""
    n, t, z = candidate.trials, candidate.trial_hours, candidate.z_percent
    impl = implementation_hours(job.gpus, costs)

    def r_break_at(z_percent: float) -> float:
        return r_explore(n, t, job.duration_hours, z_percent) + r_impl(
            job.gpus, costs, job.duration_hours, z_percent
        )

    z_break = z_break_percent(n, t, job.duration_hours, job.reuse, job.gpus, costs)
    net_hours = total_speedup_hours(job.duration_hours, z.mid, job.reuse) - exploration_hours(n, t) - impl
    net_cost = None if costs.gpu_hour_cost is None else costs.gpu_hour_cost * job.gpus * net_hours
    return Assessment(
        candidate=candidate,
        exploration_hours=exploration_hours(n, t),
        exploration_gpu_hours=job.gpus * exploration_hours(n, t),
        speedup_hours_per_run=speedup_hours_per_run(job.duration_hours, z.mid),
        r_explore=r_explore(n, t, job.duration_hours, z.mid),
        r_impl=r_impl(job.gpus, costs, job.duration_hours, z.mid),
        r_break=r_break_at(z.mid),
        r_break_range=(r_break_at(z.high), r_break_at(z.low)),
        z_break_percent=z_break,
        net_saving_gpu_hours=job.gpus * net_hours,
        net_saving_cost=net_cost,
        verdict=verdict(z, z_break),
    )


def decide(candidates: Sequence[Candidate], job: Job, costs: Costs | None = None) -> Decision:
    """Assess every candidate and recommend one.

    Among the candidates that proceed, the best expected net saving wins; ties
    go to the cheaper exploration. None is recommended when none proceeds; then
    the marginal candidate with the best positive net saving at the mid Z, if
    any, is the one to start with and measure (``marginal_choice``).
    """
    if not candidates:
        raise InputError("at least one tuning algorithm is needed")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise InputError(f"each algorithm may be given once, got {', '.join(names)}")
    costs = costs or Costs()
    assessments = tuple(assess(c, job, costs) for c in candidates)

    def best_of(among: list[Assessment]) -> Assessment | None:
        return min(among, key=lambda a: (-a.net_saving_gpu_hours, a.exploration_gpu_hours), default=None)

    best = best_of([a for a in assessments if a.verdict is Verdict.PROCEED])
    if best is not None:
        return Decision(job, costs, assessments, best.candidate.name)
    lead = best_of([a for a in assessments if a.verdict is Verdict.MARGINAL and a.net_saving_gpu_hours > 0])
    return Decision(job, costs, assessments, None, marginal_choice=lead.candidate.name if lead else None)
