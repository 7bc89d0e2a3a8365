"""Is the next batch of a running tuning study worth its GPU time? The record model, priced.

Pure: plain data in (each finished trial's objective value and duration), plain
data out (:class:`NextTrialsAdvice`); no I/O. The pricing is the break-even
engine's (:func:`estimator.decision.breakeven.assess`, ``exploration_hours``,
``total_speedup_hours``); Z is :func:`estimator.decision.breakeven.gain_percent`.

The model of the expected further gain (the *record model*):

- Values are made time-like (``s = value`` for a time objective, ``1/value``
  for a throughput), so lower is better. After the study's finished trials,
  ``n`` of them COMPLETE, the best so far is ``b_n``; the default's value is
  ``s_0``; the measured Z so far is ``Z_found = 100 · (1 − b_n/s_0)``.
- Trials are taken as exchangeable (the classical record argument): the
  ``j``-th next trial completes with the study's measured success rate ``q``
  (COMPLETE / finished) and, given it completes, beats the best of the
  ``n + q·(j−1)`` trials before it with probability ``1/(n + q·(j−1) + 1)``;
  so ``p_j = q / (n + q·(j−1) + 1)``.
- A new best improves on the old one by a relative amount ``r``
  (``1 − b_new/b_old``) drawn from the record improvements this study made
  (each new best after its first finished trial). While the study has made
  fewer than :data:`MIN_OWN_RECORDS`, they are pooled with the cluster's
  recorded studies' record improvements, or, without those, with the study's
  spread: the relative gaps ``1 − s_(i)/s_(i+1)`` between its sorted values
  (a new best is taken to lie below the best as the values lie apart; all
  equal values give 0). ``μ`` is their mean.
- With independent records and sizes the expected relative improvement of the
  best after ``k`` more trials is ``g(k) = 1 − Π_{j=1..k} (1 − μ · p_j)``, and
  in % of the job's untuned duration T it is
  ``ΔZ(k) = (100 − Z_found) · g(k)`` (the same T the break-even formulas use).
- The interval (80 %): ``μ`` bootstrapped (the improvements resampled,
  :data:`BOOTSTRAP_SAMPLES` times, seeded), ``ΔZ(k)`` at the 10th and 90th
  percentile of the resampled means.

The ceiling. ``Σ p_j`` grows like ``q · ln k`` without limit (the chance of a
record decays only harmonically), so ``g(k) → 1``: far enough out, the record
model promises the whole remaining ``100 − Z_found`` % of T, a run that takes no
time. No tuning does that; the configurations a search can reach have a best
one. So the gain is capped at what is attainable, ``Z_max``::

    ΔZ(k) = min((100 − Z_found) · g(k), max(Z_max − Z_found, 0))

and the advice says what ``Z_max`` rests on (:class:`ZCeiling`): a ceiling the
caller gives (``zest advise --z-max``, e.g. estimate-z's Z_e high bound for the
job), else the highest Z found by the cluster's recorded studies
(:func:`cluster_ceiling`, when this study has not already passed it), else none
(``Z_max = 100``: the model's own limit, which bounds nothing in practice).

Pricing at the job's T, R and G: the next ``k`` trials cost ``k · t`` hours per
GPU (t: the study's mean finished-trial duration) and save ``R · T · ΔZ(k)/100``.
``ΔZ`` is concave in ``k`` (each trial is less likely to set a record), so the
expected net saving rises to a peak (``best_trials``) and then falls below
zero after ``trials_that_pay``: continue while the next trial pays, stop
otherwise. A study whose values are all equal has ``μ = 0``: the model
expects nothing more, and says so.

The horizon. ``trials_that_pay`` and ``best_trials`` are searched for in
``1..horizon`` (:data:`HORIZON_TRIALS`). With a ceiling below 100 % the net
saving falls by ``t`` per trial once ``ΔZ`` reaches it, so both are found
(at most ``R · T · (Z_max − Z_found) / (100 · t)``). Without one, a long, much
reused job can still pay at the horizon; then the count is not a finding and
the advice says so (``beyond_horizon``: more than ``horizon`` trials pay under
the model, a figure that only its missing ceiling makes that large).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from estimator.decision.breakeven import (
    Assessment,
    Candidate,
    Costs,
    Job,
    ZInterval,
    assess,
    exploration_hours,
    gain_percent,
    total_speedup_hours,
)

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "HORIZON_TRIALS",
    "MIN_COMPLETE_TRIALS",
    "MIN_OWN_RECORDS",
    "NO_CEILING",
    "NextTrialsAdvice",
    "OnTopAdvice",
    "SearchSoFar",
    "TrialOutcome",
    "ZCeiling",
    "advise_next_trials",
    "cluster_ceiling",
    "expected_gain_percent",
    "found_z_percent",
    "record_improvements",
    "search_on_top",
    "search_so_far",
    "value_spacings",
]

#: COMPLETE trials (the default among them) needed before the curve says anything.
MIN_COMPLETE_TRIALS: Final = 3
#: Own record improvements below which the cluster's recorded ones are pooled in.
MIN_OWN_RECORDS: Final = 2
#: Resamples of the record improvements for the interval of the expected gain.
BOOTSTRAP_SAMPLES: Final = 1000
#: Quantiles of the interval: 80 %, as zest's Z_e interval.
INTERVAL_QUANTILES: Final = (0.1, 0.9)
#: The most further trials weighed (the search for ``trials_that_pay`` stops there; past it the advice
#: says "more than", never a count).
HORIZON_TRIALS: Final = 100_000
OBJECTIVES: Final = ("throughput", "time")


@dataclass(frozen=True)
class TrialOutcome:
    """One finished trial: its number, objective value (None unless COMPLETE) and duration in seconds."""

    number: int
    value: float | None
    duration_seconds: float | None


@dataclass(frozen=True)
class SearchSoFar:
    """A study so far, time-like: each finished trial's seconds (None: failed or pruned), in trial order."""

    seconds: tuple[float | None, ...]
    default_seconds: float  # s_0: the default's time-like value
    default_number: int
    trial_hours: float  # t: mean duration of the finished trials (nan when none has one)

    @property
    def finished(self) -> int:
        return len(self.seconds)

    @property
    def complete(self) -> int:
        return sum(s is not None for s in self.seconds)

    @property
    def success_rate(self) -> float:
        """q: the share of finished trials that completed."""
        return self.complete / self.finished if self.finished else 0.0

    @property
    def best_seconds(self) -> float:
        return min(s for s in self.seconds if s is not None)

    @property
    def z_found_percent(self) -> float:
        """Z so far: 100 · (1 − b_n / s_0), the best against the default."""
        return float(gain_percent(self.best_seconds, self.default_seconds))


def search_so_far(
    trials: Sequence[TrialOutcome], objective: str, default_number: int | None = None
) -> SearchSoFar:
    """The time-like view of ``trials`` (finished ones, any order): ``objective`` ``time`` or ``throughput``.

    The default is trial ``default_number``, else the first COMPLETE trial (as ``zest record`` takes it).
    Raises ValueError for an unknown objective, no COMPLETE trial, or a default that is not a COMPLETE trial.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    ordered = sorted(trials, key=lambda t: t.number)

    def time_like(value: float | None) -> float | None:
        if value is None or not (math.isfinite(value) and value > 0):
            return None
        return value if objective == "time" else 1.0 / value

    seconds = tuple(time_like(t.value) for t in ordered)
    complete = [(t.number, s) for t, s in zip(ordered, seconds, strict=True) if s is not None]
    if not complete:
        raise ValueError("the study has no COMPLETE trial with a value > 0")
    if default_number is None:
        default_number, default = complete[0]
    else:
        named = dict(complete)
        if default_number not in named:
            raise ValueError(f"trial {default_number} is not a COMPLETE trial of the study")
        default = named[default_number]
    durations = [t.duration_seconds for t in ordered if t.duration_seconds is not None]
    trial_hours = float(np.mean(durations)) / 3600.0 if durations else math.nan
    return SearchSoFar(seconds, default, default_number, trial_hours)


def record_improvements(seconds: Sequence[float | None]) -> list[float]:
    """Relative improvement ``1 − b_new/b_old`` of each new best after the first COMPLETE trial."""
    best = math.inf
    out = []
    for s in seconds:
        if s is None:
            continue
        if s < best:
            if math.isfinite(best):
                out.append(1.0 - s / best)
            best = s
    return out


def value_spacings(seconds: Sequence[float | None]) -> list[float]:
    """Relative gaps ``1 − s_(i)/s_(i+1)`` between the study's sorted COMPLETE values (ties give 0)."""
    ordered = sorted(s for s in seconds if s is not None)
    return [1.0 - low / high for low, high in itertools.pairwise(ordered)]


def found_z_percent(seconds: Sequence[float | None]) -> float:
    """Z a recorded study found: its best COMPLETE value against its first (as ``zest record`` takes the
    default), in %; NaN when none completed."""
    complete = [s for s in seconds if s is not None]
    return float(gain_percent(min(complete), complete[0])) if complete else math.nan


@dataclass(frozen=True)
class ZCeiling:
    """The most Z (% of T) tuning this job can reach, and what that rests on (one line, for the reader)."""

    percent: float
    source: str

    def __post_init__(self) -> None:
        if not (math.isfinite(self.percent) and 0.0 <= self.percent <= 100.0):
            raise ValueError(f"a Z ceiling must be within 0..100 %, got {self.percent!r}")


#: No ceiling: the record model's own limit, a run that takes no time.
NO_CEILING: Final = ZCeiling(100.0, "none: the model's own limit, a run taking no time")


def cluster_ceiling(recorded_z_percent: Sequence[float], z_found_percent: float) -> ZCeiling | None:
    """The highest Z the cluster's recorded studies found, as a ceiling for a study at ``z_found_percent``.

    None without a recorded study that found a gain, or when this study has already passed them all (their
    best is then no bound on this job).
    """
    found = [z for z in recorded_z_percent if math.isfinite(z) and z > 0]
    if not found or max(found) <= z_found_percent:
        return None
    return ZCeiling(max(found), f"the highest Z found by the cluster's {len(found)} recorded studies")


def _record_probabilities(complete: int, success_rate: float, trials: int) -> np.ndarray:
    """p_j = q / (n + q·(j−1) + 1), j = 1..trials."""
    j = np.arange(1, trials + 1, dtype=np.float64)
    return success_rate / (complete + success_rate * (j - 1.0) + 1.0)


def expected_gain_percent(
    trials: int,
    complete: int,
    success_rate: float,
    mean_improvement: float,
    z_found_percent: float,
    ceiling_percent: float = 100.0,
) -> float:
    """ΔZ(k) = min((100 − Z_found) · (1 − Π_{j=1..k} (1 − μ · p_j)), max(Z_max − Z_found, 0)), in % of the
    untuned duration T; ``ceiling_percent`` is Z_max (100: none)."""
    if trials <= 0 or mean_improvement <= 0 or success_rate <= 0:
        return 0.0
    p = _record_probabilities(complete, success_rate, trials)
    kept = float(np.prod(1.0 - mean_improvement * p))
    return min((100.0 - z_found_percent) * (1.0 - kept), max(ceiling_percent - z_found_percent, 0.0))


@dataclass(frozen=True)
class NextTrialsAdvice:
    """What the next trials are worth at the job's T, R and G, and the decision.

    ``expected_gain``: ΔZ of the next ``next_trials`` trials in % of T (low/mid/high, 80 %);
    ``assessment``: the break-even engine's figures for that batch (its N = ``next_trials``);
    ``trials_that_pay``: the most further trials whose expected saving still exceeds their cost (0: none);
    ``best_trials``: how many further trials maximise the expected net saving (the batch to run, then
    ask again); ``ceiling``: the Z_max the gain is capped at, and what it rests on; ``horizon``: the most
    further trials weighed. ``beyond_horizon``: the next ``horizon`` trials all still pay, so
    ``trials_that_pay`` (= ``horizon``) is a lower bound, not a count; ``best_beyond_horizon``: likewise
    for ``best_trials`` (the net saving still rises at the horizon).
    """

    search: SearchSoFar
    job: Job
    improvements: tuple[float, ...]  # the record improvements the model uses (fractions)
    improvements_from: str  # "study", "study and cluster", "cluster", "study and spread" or "spread"
    mean_improvement: float  # μ
    next_trials: int
    expected_gain: ZInterval
    assessment: Assessment | None  # None when t is unknown or too few trials completed
    trials_that_pay: int
    best_trials: int
    best_net_saving_gpu_hours: float
    decision: str  # "continue" or "stop"
    reason: str
    ceiling: ZCeiling = NO_CEILING
    horizon: int = HORIZON_TRIALS
    beyond_horizon: bool = False
    best_beyond_horizon: bool = False


def _last_true(predicate: Callable[[int], bool], horizon: int) -> int:
    """The largest k in 1..horizon with ``predicate(k)`` for a predicate true on a prefix; 0 when none."""
    if horizon < 1 or not predicate(1):
        return 0
    low, high = 1, horizon
    while low < high:
        mid = (low + high + 1) // 2
        if predicate(mid):
            low = mid
        else:
            high = mid - 1
    return low


def advise_next_trials(
    search: SearchSoFar,
    job: Job,
    *,
    next_trials: int = 10,
    cluster_improvements: Sequence[float] = (),
    ceiling: ZCeiling = NO_CEILING,
    horizon: int = HORIZON_TRIALS,
    bootstrap_samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> NextTrialsAdvice:
    """Price the next ``next_trials`` trials of ``search`` for ``job`` and decide: continue or stop.

    Continue when the next trial's expected saving over R runs exceeds its cost (per GPU:
    ``R · T · ΔZ(1)/100 > t``); equivalently ``trials_that_pay >= 1``. The gain is capped at
    ``ceiling`` (see the module's docstring); ``trials_that_pay`` and ``best_trials`` are searched for up
    to ``horizon`` further trials, and flagged (``beyond_horizon``) when they reach it.
    ``bootstrap_samples`` 0: no interval (low = mid = high), for replays that need only the decision.
    Fewer than :data:`MIN_COMPLETE_TRIALS` COMPLETE trials, or no trial duration: continue, with the
    reason.
    """
    if next_trials < 1:
        raise ValueError(f"next_trials must be >= 1, got {next_trials}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    own = record_improvements(search.seconds)
    if len(own) >= MIN_OWN_RECORDS:
        sizes, origin = own, "study"
    elif cluster_improvements:
        sizes, origin = [*own, *cluster_improvements], ("study and cluster" if own else "cluster")
    else:  # the study's spread: how far its values lie apart, as a new best would lie below the best
        sizes, origin = [*own, *value_spacings(search.seconds)], ("study and spread" if own else "spread")
    mu = float(np.mean(sizes)) if sizes else 0.0
    n, q, z_found = search.complete, search.success_rate, search.z_found_percent

    def gain(k: int, mean: float = mu) -> float:
        return expected_gain_percent(k, n, q, mean, z_found, ceiling.percent)

    low, high = mu, mu
    if len(sizes) > 1 and bootstrap_samples > 0:
        rng = np.random.default_rng(seed)
        means = rng.choice(np.asarray(sizes), size=(bootstrap_samples, len(sizes))).mean(axis=1)
        low, high = (float(v) for v in np.quantile(means, INTERVAL_QUANTILES))
    interval = ZInterval(gain(next_trials, low), gain(next_trials, mu), gain(next_trials, high))
    t = search.trial_hours
    if not (math.isfinite(t) and t >= 0) or n < MIN_COMPLETE_TRIALS:
        why = (
            "the trials have no start and end times: their cost is unknown; give the trial time"
            if not (math.isfinite(t) and t >= 0)
            else f"{n} COMPLETE trial(s): at least {MIN_COMPLETE_TRIALS} are needed to judge the curve"
        )
        return NextTrialsAdvice(
            search, job, tuple(sizes), origin, mu, next_trials, interval, None, 0, 0, math.nan, "continue",
            why, ceiling, horizon,
        )  # fmt: skip

    def net_hours(k: int) -> float:  # per GPU, at the mid gain
        return total_speedup_hours(job.duration_hours, gain(k), job.reuse) - exploration_hours(k, t)

    trials_that_pay = _last_true(lambda k: net_hours(k) > 0, horizon)
    best = _last_true(lambda k: net_hours(k) > net_hours(k - 1), horizon)
    # the engine's figures for the batch; a trial of no measurable time (t = 0) has none
    assessment = assess(Candidate("next trials", next_trials, t, interval), job, Costs()) if t > 0 else None
    beyond, best_beyond = trials_that_pay == horizon, best == horizon
    capped = f"Z at most {ceiling.percent:g} % ({ceiling.source})"
    if beyond:
        decision = "continue"
        reason = (
            f"the next trial is expected to save more than it costs; more than {horizon:,} more pay in "
            f"expectation ({horizon:,} is the horizon weighed, not a count); {capped}"
            + (
                ""
                if ceiling.percent < 100
                else ": without a ceiling the record model's gain grows with the log of the trials; "
                "give one (e.g. the job's Z_e high bound) to bound the count"
            )
        )
    elif trials_that_pay >= 1:
        decision = "continue"
        reason = (
            f"the next trial is expected to save more than it costs; up to {trials_that_pay:,} more pay in "
            f"expectation, {best:,} maximise the net saving; {capped}"
        )
    else:
        decision = "stop"
        reason = "the next trial is expected to save less than it costs" + (
            ": the trials' values do not differ, so the model expects no gain"
            if mu <= 0
            else f": Z so far ({z_found:.3g} %) already reaches Z_max ({ceiling.source})"
            if z_found >= ceiling.percent
            else ""
        )
    return NextTrialsAdvice(
        search, job, tuple(sizes), origin, mu, next_trials, interval, assessment, trials_that_pay, best,
        job.gpus * net_hours(best) if best else 0.0, decision, reason, ceiling, horizon, beyond, best_beyond,
    )  # fmt: skip


@dataclass(frozen=True)
class OnTopAdvice:
    """Whether a broader search (``name``, N trials of t hours) pays on top of a cheap study's found Z.

    ``z_percent``: the further gain in % of T, ``Z_found · (s_then / s_cheap − 1)`` (0 when the ratio
    is <= 1); ``assessment``: the break-even engine's figures for it.
    """

    name: str
    cheap_share: float
    then_share: float
    z_percent: float
    assessment: Assessment


def search_on_top(
    z_found_percent: float,
    *,
    name: str,
    trials: int,
    trial_hours: float,
    cheap_share: float,
    then_share: float,
    job: Job,
) -> OnTopAdvice:
    """The seed's sequence: after a cheap study found ``z_found_percent``, does ``name`` on top pay?

    Capture shares (:mod:`estimator.decision.algorithms`): the cheap search reaches ``cheap_share`` of the
    thorough search's Z, the broader one ``then_share``; so the thorough Z is about
    ``Z_found / cheap_share``, the broader search reaches ``Z_found · then_share / cheap_share`` and adds
    ``Z_found · (then_share / cheap_share − 1)`` % of T. Priced with its N trials of t hours.
    """
    if not (cheap_share > 0 and then_share > 0):
        raise ValueError("capture shares must be > 0")
    further = max(0.0, z_found_percent * (then_share / cheap_share - 1.0))
    further = min(further, 100.0 - z_found_percent - 1e-9)  # what is left of T, at most
    candidate = Candidate(name, trials, trial_hours, ZInterval.point(max(further, 0.0)))
    return OnTopAdvice(name, cheap_share, then_share, further, assess(candidate, job, Costs()))
