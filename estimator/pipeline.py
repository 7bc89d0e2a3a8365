"""One chain of zest's stages, for one job or many: GPU summary → features → Z_e → decision.

``estimate-z`` (one job), ``zest serve`` (every running job of a cycle) and
``zest record`` (the features of each trial) all call :func:`estimate`; each
stage is optional past the features, so a caller asks only for what it uses.
The chain takes plain data in and gives plain data out: reading telemetry is
the collectors' job, printing and exporting the outer layer's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from collectors.errors import JobNotFound
from collectors.schema import JOB_ID
from estimator.decision.algorithms import CaptureShares, Plan, weigh
from estimator.decision.breakeven import Decision, ZInterval
from estimator.features.diagnoses import Diagnosis, diagnose
from estimator.features.extract import (
    GPU_COUNT,
    NoFiniteTelemetry,
    feature_notes,
    features_frame,
    has_finite_signal,
    summarize_gpus,
)

if TYPE_CHECKING:  # the sources' readers are not needed to chain the stages
    from collectors.sources import Telemetry

#: Estimates Z_e for every row of a features frame (index: job ids), in % of training time.
ZEstimator = Callable[[pd.DataFrame], Sequence[ZInterval]]
#: The plan of a job (T, R, G, algorithms...), by its id; None: the job is not weighed.
PlanFor = Callable[[str], Plan | None]


@dataclass(frozen=True)
class JobEstimate:
    """What the chain found for one job: its features, their named diagnoses, Z_e when asked, and the
    decision when planned."""

    job_id: str
    features: Mapping[str, float]
    z_percent: ZInterval | None = None
    decision: Decision | None = None
    notes: tuple[str, ...] = field(default=())
    diagnoses: tuple[Diagnosis, ...] = field(default=())

    @property
    def gpus_seen(self) -> float:
        return self.features.get(GPU_COUNT, math.nan)


def gpu_summary(telemetry: Telemetry) -> pd.DataFrame:
    """The per-GPU summary of a source's answer (samples or a summary); :class:`JobNotFound` if empty,
    :class:`~estimator.features.extract.NoFiniteTelemetry` if no signal has a finite value."""
    summary = telemetry.summary
    if summary is None:
        if telemetry.frame is None:
            raise JobNotFound(f"{telemetry.source}: gave no telemetry for the job")
        summary = summarize_gpus(telemetry.frame)
    if summary.empty:
        raise JobNotFound(f"{telemetry.source}: no samples for the job in the window read")
    if not has_finite_signal(summary).any():
        raise NoFiniteTelemetry(
            f"{telemetry.source}: every sample of the job's GPU signals in the window is NaN: "
            "nothing to estimate from; check the GPU exporter"
        )
    return summary


def estimate(
    summary: pd.DataFrame,
    *,
    z_estimator: ZEstimator | None = None,
    z_given: ZInterval | None = None,
    plan_for: PlanFor | None = None,
    shares: CaptureShares | None = None,
    requested_window_seconds: float | None = None,
    with_notes: bool = False,
) -> list[JobEstimate]:
    """Every job of ``summary`` (the GPU-summary schema) through the stages, in job-id order.

    Z_e comes from ``z_given`` (one interval for every job) or, when an
    algorithm needs it, from ``z_estimator`` in one call for all jobs; a job
    is weighed when ``plan_for`` gives it a plan (``shares`` then needed).
    ``with_notes`` adds what each job's features rest on (window, missing
    signals, stragglers), against ``requested_window_seconds`` when given.
    Every job gets the diagnoses of :mod:`estimator.features.diagnoses` (cheap).
    """
    features = features_frame(summary)
    plans = {str(job): plan_for(str(job)) if plan_for is not None else None for job in features.index}
    intervals: Sequence[ZInterval | None] = [z_given] * len(features)
    needs_model = any(
        p is not None and any(a.z_percent is None for a in p.algorithms) for p in plans.values()
    )
    if z_given is None and z_estimator is not None and (plan_for is None or needs_model):
        intervals = z_estimator(features)
    by_job = summary.groupby(JOB_ID, sort=False, dropna=False) if with_notes else None
    out = []
    for (job_id, row), z in zip(features.iterrows(), intervals, strict=True):
        values = {str(k): float(v) for k, v in row.items()}
        plan = plans[str(job_id)]
        decision = None
        if plan is not None:
            if shares is None:
                raise ValueError("weighing a plan needs the algorithms' capture shares")
            decision = weigh(plan, z, shares, values.get(GPU_COUNT, math.nan))
        notes: tuple[str, ...] = ()
        if by_job is not None:
            notes = tuple(feature_notes(row, by_job.get_group(job_id), requested_window_seconds))
        out.append(JobEstimate(str(job_id), values, z, decision, notes, diagnose(values)))
    return out
