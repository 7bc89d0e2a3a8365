"""An Optuna callback that stops a study when its next trials no longer pay: :class:`ZestStopper`.

An edge module: it reads the live study's trials (Optuna ``FrozenTrial``\\ s) and
hands plain data to :func:`estimator.decision.next_trials.advise_next_trials`,
the same arithmetic as ``zest advise``. Optuna itself is not imported: the
study passed in is the caller's.

    study.optimize(objective, n_trials=500,
                   callbacks=[ZestStopper(duration_hours=150, reuse=5, gpus=8)])

ZenithTune's tuners run an Optuna study; pass the stopper wherever the tuner
hands callbacks on to ``study.optimize``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from collectors.errors import InputError
from collectors.studies.optuna import COMPLETE, FINISHED_STATES
from estimator.decision.breakeven import Job
from estimator.decision.next_trials import (
    MIN_COMPLETE_TRIALS,
    NextTrialsAdvice,
    TrialOutcome,
    advise_next_trials,
    search_so_far,
)

__all__ = ["ZestStopper"]


def _outcomes(trials: Sequence[Any]) -> list[TrialOutcome]:
    """Finished Optuna trials as plain outcomes: the value of a COMPLETE trial, each one's seconds."""
    out = []
    for trial in trials:
        state = trial.state.name
        if state not in FINISHED_STATES:
            continue
        start, end = trial.datetime_start, trial.datetime_complete
        seconds = None if start is None or end is None else (end - start).total_seconds()
        value = float(trial.value) if state == COMPLETE and trial.value is not None else None
        out.append(TrialOutcome(int(trial.number), value, seconds))
    return out


class ZestStopper:
    """Calls ``study.stop()`` once the next trial is expected to save less than it costs.

    ``duration_hours`` (T), ``reuse`` (R) and ``gpus`` (G) describe the tuned job as in
    ``estimate-z``; ``objective``: ``time`` or ``throughput`` (default: the study's direction,
    maximize = throughput); ``default_trial``: the trial number of the job's default (default: the
    first COMPLETE trial); ``trial_hours``: t, when the trials' own wall time is not what a trial
    costs (default: their measured mean); ``cluster_improvements``: record improvements of the
    cluster's earlier studies (fractions), pooled in while the study has few of its own. Nothing is
    decided before :data:`~estimator.decision.next_trials.MIN_COMPLETE_TRIALS` trials complete.

    After each call ``advice_`` holds the latest :class:`NextTrialsAdvice` and ``stopped_after_``
    the number of finished trials when it stopped the study (None while it has not).
    """

    def __init__(
        self,
        *,
        duration_hours: float,
        reuse: float = 1.0,
        gpus: int = 1,
        objective: str | None = None,
        default_trial: int | None = None,
        trial_hours: float | None = None,
        next_trials: int = 10,
        cluster_improvements: Sequence[float] = (),
    ) -> None:
        if objective not in (None, "time", "throughput"):
            raise InputError(f"objective must be time or throughput, got {objective!r}")
        if trial_hours is not None and not trial_hours > 0:
            raise InputError(f"trial_hours must be > 0, got {trial_hours!r}")
        self.job = Job(duration_hours, gpus, reuse)  # validates T, G and R
        self.objective = objective
        self.default_trial = default_trial
        self.trial_hours = trial_hours
        self.next_trials = next_trials
        self.cluster_improvements = tuple(cluster_improvements)
        self.advice_: NextTrialsAdvice | None = None
        self.stopped_after_: int | None = None

    def advise(self, study: Any) -> NextTrialsAdvice | None:
        """The advice for ``study`` (an ``optuna.Study``) now; None before any trial completed."""
        if len(study.directions) != 1:
            raise InputError("ZestStopper weighs single-objective studies")
        objective = self.objective or ("throughput" if study.directions[0].name == "MAXIMIZE" else "time")
        outcomes = _outcomes(study.get_trials(deepcopy=False))
        if not any(o.value is not None for o in outcomes):
            return None
        search = search_so_far(outcomes, objective, self.default_trial)
        if self.trial_hours is not None:
            search = replace(search, trial_hours=self.trial_hours)
        return advise_next_trials(
            search,
            self.job,
            next_trials=self.next_trials,
            cluster_improvements=self.cluster_improvements,
            bootstrap_samples=0,  # the decision needs no interval; keep each callback cheap
        )

    def __call__(self, study: Any, trial: Any) -> None:
        """Optuna's callback signature: after each finished trial."""
        advice = self.advise(study)
        self.advice_ = advice
        if advice is None or advice.search.complete < MIN_COMPLETE_TRIALS:
            return
        if advice.decision == "stop":
            self.stopped_after_ = advice.search.finished
            study.stop()
