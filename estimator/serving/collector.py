"""zest's Prometheus exporter: per-job Z_e, break-even figures and verdicts, and its own health.

Three parts, each plain:

* :func:`estimate_jobs` turns the GPU summary of many jobs into a
  :class:`Snapshot` (features, Z_e, the break-even decision of every job, and
  the bounds its elapsed time gives whatever T is: :class:`ElapsedBounds`);
  :class:`FirstSamples` remembers when each running job began, asking the
  source once per job;
* :class:`ExporterState` holds the last good snapshot and the health of the
  cycles that make them (duration, errors by source, last success, stale);
* :class:`ZestCollector`, a ``prometheus_client`` custom collector over a
  state, renders it. Snapshots are replaced whole, so a scrape during a cycle
  sees the previous snapshot, never half of the next; a job missing from the
  new snapshot (it ended) loses its series.

Metric names come from :mod:`estimator.serving.metrics`; ratios of shares are 0-1, GPU time
is in GPU-seconds. By default a job has the series its verdicts, the fleet's ranking and the dashboards'
default panels read (about 25); ``[serve] detail = true`` adds the features, the per-GPU means, each
algorithm's Z interval and exploration GPU time, the elapsed time and the diagnoses checked and silent.
"""

from __future__ import annotations

import math
import platform
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import pandas as pd
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collectors.errors import TelemetryError
from collectors.schema import GPU, GPU_MODEL, HOST, JOB_ID, SIGNALS, WINDOW_END, WINDOW_START, summary_column
from collectors.util import zest_version
from estimator import pipeline
from estimator.decision.algorithms import CaptureShares
from estimator.decision.breakeven import Decision, Job, ZInterval, assess, speedup_hours_per_run
from estimator.features.diagnoses import checked_rules
from estimator.features.extract import FEATURES, NoFiniteTelemetry, has_finite_signal
from estimator.pipeline import JobEstimate, ZEstimator
from estimator.serving import metrics as m
from estimator.serving.config import T_CONFIG, T_DEFAULT, T_SLURM, ServeConfig

SECONDS_PER_HOUR = 3600.0
PERCENT_PER_RATIO = 100.0
BOUNDS = ("low", "mid", "high")
#: Failure reasons counted from 0 before any failure, so that rate() has a series from the first
#: scrapes: the two every source can fail with (it cannot be reached; it answered with an error).
#: A reason is the error class in snake case (runner.failure_reason); others appear when first counted.
INITIAL_REASONS = ("source_unavailable", "source_query_error")


FEATURE_HELP: Mapping[str, str] = {
    "idle_share_ratio": "Share of samples with almost no SM activity, mean over the job's GPUs (0-1)",
    "busy_not_working_ratio": "GPU utilization minus SM activity: busy but not computing (0-1)",
    "straggler_spread_ratio": "Max minus min over the job's GPUs of mean SM activity (0-1)",
    "straggler_cv_ratio": "Coefficient of variation over the job's GPUs of mean SM activity",
    "mem_headroom_min_ratio": "Smallest share of GPU memory left unused at peak, over the job's GPUs (0-1)",
    "power_mean_watts": "Mean power per GPU in watts",
    "pcie_mean_bytes_per_second": "Mean PCIe traffic (TX+RX) per GPU in bytes per second",
    "nvlink_mean_bytes_per_second": "Mean NVLink traffic per GPU in bytes per second",
    "pcie_share_ratio": "PCIe traffic over the GPU model's peak, mean over GPUs (0-1)",
    "nvlink_share_ratio": "NVLink traffic over the GPU model's peak, mean over GPUs (0-1)",
    "gpus": "GPUs seen in the job's telemetry window",
    "hosts": "Hosts seen in the job's telemetry window",
    "samples_per_gpu_min": "Fewest samples of one GPU in the window",
    "window_seconds": "Seconds from the first to the last sample of the window the features cover",
    "coverage_ratio": "Share of the canonical signals with any data (0-1)",
}


def _feature_help(feature: str) -> str:
    if feature in FEATURE_HELP:
        return FEATURE_HELP[feature]
    signal, _, statistic = feature.removesuffix("_ratio").rpartition("_")
    return f"Per-GPU {statistic} of {signal} over the window, mean over the job's GPUs (0-1)"


@dataclass(frozen=True)
class ElapsedBounds:
    """What a running job's elapsed time tells whatever its T: it has run that long, so T >= elapsed.

    ``r_break_at_elapsed``: each algorithm's R_break at T = elapsed (Z mid), an upper bound of its
    R_break (R_break falls as T grows: tuning pays within at most that many runs);
    ``run_saving_lower_bound_gpu_hours``: G · elapsed · Z_e low / 100, GPU-hours one run of a thorough
    search's configuration saves at least (at the low end of Z_e's interval).
    """

    elapsed_seconds: float
    r_break_at_elapsed: Mapping[str, float]
    run_saving_lower_bound_gpu_hours: float


@dataclass(frozen=True)
class Snapshot:
    """What one cycle produced: every running job's estimate and, optionally, per-GPU signal means.

    ``duration_sources``: where each weighed job's T came from (``t_source``: default, config, slurm);
    ``elapsed``: the bounds of each weighed job that has run for some time (two samples or more);
    ``detail``: render the detail series too (the config's ``detail``).
    """

    jobs: tuple[JobEstimate, ...] = ()
    gpu_means: pd.DataFrame | None = None  # columns: job_id, host, gpu, gpu_model, then SIGNALS
    taken_at_seconds: float = math.nan
    duration_sources: Mapping[str, str] = field(default_factory=dict)
    elapsed: Mapping[str, ElapsedBounds] = field(default_factory=dict)
    detail: bool = False
    recording_rules_used: bool | None = None  # a Prometheus source: read from recorded tiles, or raw


def elapsed_bounds(
    decision: Decision, z_expected: ZInterval, first_seconds: float, last_seconds: float
) -> ElapsedBounds | None:
    """The bounds of a job that has run from ``first_seconds`` to ``last_seconds`` (Unix seconds), with the
    algorithms, G and costs of its ``decision``; None when it has not run (a single sample)."""
    elapsed_seconds = last_seconds - first_seconds
    if not elapsed_seconds > 0:
        return None
    elapsed_hours = elapsed_seconds / SECONDS_PER_HOUR
    so_far = Job(elapsed_hours, decision.job.gpus)
    return ElapsedBounds(
        elapsed_seconds=elapsed_seconds,
        r_break_at_elapsed={
            a.candidate.name: assess(a.candidate, so_far, decision.costs).r_break
            for a in decision.assessments
        },
        run_saving_lower_bound_gpu_hours=so_far.gpus * speedup_hours_per_run(elapsed_hours, z_expected.low),
    )


def _window_edges(summary: pd.DataFrame) -> tuple[dict[str, float], dict[str, float]]:
    """Each job's first and last sample in the summary's window, in Unix seconds (jobs without: left out)."""
    by_job = summary.groupby(JOB_ID, sort=False)
    return (
        _seconds(by_job[WINDOW_START].min()),
        _seconds(by_job[WINDOW_END].max()),
    )


def _seconds(moments: pd.Series) -> dict[str, float]:
    return {str(job): moment.timestamp() for job, moment in moments.items() if not pd.isna(moment)}


@runtime_checkable
class LooksBack(Protocol):
    """A summary source that can tell when jobs began, further back than its window (Prometheus)."""

    def first_samples(self, job_ids: Sequence[str]) -> Mapping[str, float]: ...


@dataclass
class FirstSamples:
    """When each running job began (Unix seconds), found once per job and kept while it runs.

    New jobs are asked of a source that :class:`LooksBack`, up to ``batch`` of them in one query per
    cycle (more wait for the next cycles); a query that fails is asked again next cycle, and does not fail
    the cycle. Until then, without such a source, and where it finds nothing, a job's first sample is
    the earliest the service has held for it (a node agent: since the agent, or the job, started). A job
    gone from the summary is forgotten.
    """

    batch: int = 500
    _known: dict[str, float] = field(default_factory=dict)
    _asked: set[str] = field(default_factory=set)

    def update(self, summary: pd.DataFrame, source: object = None) -> dict[str, float]:
        """The first sample time of every job of ``summary`` (the GPU-summary schema)."""
        seen, _ = _window_edges(summary)
        self._known = {job: t for job, t in self._known.items() if job in seen}
        self._asked &= set(seen)
        looked: Mapping[str, float] = {}
        new = sorted(set(seen) - self._asked)[: self.batch]
        if new and isinstance(source, LooksBack):
            try:
                looked = source.first_samples(new)
            except TelemetryError:
                pass  # a heavy look back that timed out: the window stands in, asked again next cycle
            else:
                self._asked.update(new)
        for job, earliest in seen.items():
            self._known[job] = min(earliest, self._known.get(job, earliest), looked.get(job, earliest))
        return dict(self._known)


def estimate_jobs(
    summary: pd.DataFrame,
    config: ServeConfig,
    z_estimator: ZEstimator,
    shares: CaptureShares,
    *,
    taken_at_seconds: float,
    scheduled: Mapping[str, Mapping[str, float]] | None = None,
    first_samples: Mapping[str, float] | None = None,
) -> Snapshot:
    """A snapshot of every job in ``summary`` (the GPU-summary schema, many jobs), through the pipeline.

    Each job is weighed with the plan ``config`` gives it, after what its scheduler says of it
    (``scheduled``, by job id: ``duration_hours``, ``reuse``); ``shares``: each algorithm's share
    of Z_e. Per-GPU means are kept, and the detail series rendered, when ``config.detail`` is set.
    Each job's elapsed time runs from its first sample (``first_samples``, Unix seconds by job id, else
    the first of the window, whichever is earlier) to its last sample in the window.

    A job whose every signal is NaN is left out (it has no telemetry to estimate
    from); when that leaves none of the jobs, :class:`NoFiniteTelemetry` is raised,
    so the cycle fails and the last estimates stay, marked stale.
    """
    finite = has_finite_signal(summary)
    if not summary.empty and not finite.any():
        count = summary[JOB_ID].nunique(dropna=False)
        raise NoFiniteTelemetry(f"every signal of the {count} running job(s) is NaN: nothing to estimate")
    summary = summary[finite].reset_index(drop=True)
    gpu_means = _gpu_means(summary) if config.detail else None
    if summary.empty:
        return Snapshot(gpu_means=gpu_means, taken_at_seconds=taken_at_seconds, detail=config.detail)
    known = scheduled or {}
    jobs = pipeline.estimate(
        summary,
        z_estimator=z_estimator,
        plan_for=lambda job: config.for_job(job, known.get(job)).plan(),
        shares=shares,
    )
    first, last = _window_edges(summary)
    began = first_samples or {}
    sources, elapsed = {}, {}
    for estimate in jobs:
        jid, decision, z_percent = estimate.job_id, estimate.decision, estimate.z_percent
        if decision is None or z_percent is None:
            continue
        sources[jid] = config.for_job(jid, known.get(jid)).duration_source
        if jid in first and jid in last:
            bounds = elapsed_bounds(
                decision, z_percent, min(first[jid], began.get(jid, first[jid])), last[jid]
            )
            if bounds is not None:
                elapsed[jid] = bounds
    return Snapshot(tuple(jobs), gpu_means, taken_at_seconds, sources, elapsed, config.detail)


def _gpu_means(summary: pd.DataFrame) -> pd.DataFrame:
    means = summary[[JOB_ID, HOST, GPU, GPU_MODEL, *(summary_column(s, "mean") for s in SIGNALS)]]
    return means.set_axis([JOB_ID, HOST, GPU, GPU_MODEL, *SIGNALS], axis=1)


# --- state ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    """The exporter's own state at one moment (a copy: safe to read while cycles go on)."""

    snapshot: Snapshot
    stale: bool
    cycles: int
    errors: Mapping[tuple[str, str], int]  # (source, reason) -> count
    last_success_seconds: float | None
    last_cycle_seconds: float | None


@dataclass
class ExporterState:
    """The last good snapshot and the health of the cycles, shared by the cycle thread and scrapes.

    ``source`` names the source kind in error counts (``prometheus``, ``nvml``).
    """

    source: str
    clock: Callable[[], float] = time.time
    _snapshot: Snapshot = field(default_factory=Snapshot)
    _stale: bool = False
    _cycles: int = 0
    _errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    _last_success: float | None = None
    _last_duration: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, snapshot: Snapshot, duration_seconds: float) -> None:
        """A cycle succeeded: its snapshot replaces the previous one whole."""
        with self._lock:
            self._snapshot = snapshot
            self._stale = False
            self._cycles += 1
            self._last_success = self.clock()
            self._last_duration = duration_seconds

    def fail(self, reason: str, duration_seconds: float, source: str | None = None) -> None:
        """A cycle failed: keep the last snapshot, mark it stale, count the error by source and reason."""
        with self._lock:
            self._stale = True
            self._cycles += 1
            self._errors[(source or self.source, reason)] += 1
            self._last_duration = duration_seconds

    def health(self) -> Health:
        with self._lock:
            return Health(
                self._snapshot,
                self._stale,
                self._cycles,
                dict(self._errors),
                self._last_success,
                self._last_duration,
            )


# --- the collector -----------------------------------------------------------------------------


def _counter(name: str, documentation: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name.removesuffix("_total"), documentation, labels=labels)


class ZestCollector(Collector):
    """Renders an :class:`ExporterState`; register it in the registry the HTTP server serves."""

    def __init__(
        self, state: ExporterState, *, coverage_ratio: float | None = None, version: str | None = None
    ) -> None:
        self._state = state
        self._coverage = coverage_ratio
        self._version = version if version is not None else zest_version()

    def describe(self) -> list[Metric]:
        return []  # names vary with the features; registering must not run a collection

    def collect(self) -> Iterator[Metric]:
        health = self._state.health()
        yield from self._self_metrics(health)
        snapshot = health.snapshot
        yield from self._job_metrics(snapshot.jobs, snapshot.duration_sources, detail=snapshot.detail)
        yield from self._elapsed_metrics(snapshot.elapsed, detail=snapshot.detail)
        if snapshot.gpu_means is not None:
            yield from self._gpu_metrics(snapshot.gpu_means)

    def _self_metrics(self, health: Health) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            m.ZEST_BUILD_INFO, "zest's version, with value 1", labels=["version", "python_version"]
        )
        info.add_metric([self._version, platform.python_version()], 1.0)
        yield info
        if self._coverage is not None:
            coverage = GaugeMetricFamily(
                m.ZEST_Z_COVERAGE, "Share of jobs whose true Z the Z_e interval is calibrated to hold (0-1)"
            )
            coverage.add_metric([], self._coverage)
            yield coverage
        cycles = _counter(
            m.ZEST_CYCLES,
            "Estimation cycles run, successful or not, by telemetry source",
            [m.ZEST_SOURCE_LABEL],
        )
        cycles.add_metric([self._state.source], float(health.cycles))
        yield cycles
        errors = _counter(
            m.ZEST_SOURCE_ERRORS,
            "Cycles that failed, by telemetry source and reason",
            [m.ZEST_SOURCE_LABEL, m.ZEST_REASON_LABEL],
        )
        counts = {(self._state.source, reason): 0 for reason in INITIAL_REASONS} | dict(health.errors)
        for (source, reason), count in sorted(counts.items()):
            errors.add_metric([source, reason], float(count))
        yield errors
        stale = GaugeMetricFamily(
            m.ZEST_STALE, "1 when the last cycle failed and the estimates shown are from an earlier one"
        )
        stale.add_metric([], 1.0 if health.stale else 0.0)
        yield stale
        if health.last_success_seconds is not None:
            success = GaugeMetricFamily(m.ZEST_LAST_SUCCESS, "Unix time of the last successful cycle")
            success.add_metric([], health.last_success_seconds)
            yield success
        if health.last_cycle_seconds is not None:
            duration = GaugeMetricFamily(m.ZEST_CYCLE_DURATION, "Seconds the last cycle took")
            duration.add_metric([], health.last_cycle_seconds)
            yield duration
        if health.snapshot.recording_rules_used is not None:
            rules = GaugeMetricFamily(
                m.ZEST_RECORDING_RULES_USED,
                "1 when the last cycle read zest's recording rules (grafana/zest-gpu.rules.yml), 0 when it "
                "read raw samples (the rules absent, or not covering the window)",
            )
            rules.add_metric([], 1.0 if health.snapshot.recording_rules_used else 0.0)
            yield rules
        running = GaugeMetricFamily(m.ZEST_RUNNING_JOBS, "Running jobs zest estimates")
        running.add_metric([], float(len(health.snapshot.jobs)))
        yield running

    def _job_metrics(
        self, jobs: Sequence[JobEstimate], sources: Mapping[str, str], *, detail: bool
    ) -> Iterator[Metric]:
        job, alg = m.ZEST_JOB_LABEL, m.ZEST_ALGORITHM_LABEL
        z = GaugeMetricFamily(
            m.ZEST_Z_EXPECTED,
            "Z_e: share of training time a thorough tuning search is expected to save (0-1), "
            "low/mid/high of its interval",
            labels=[job, m.ZEST_BOUND_LABEL],
        )
        duration = GaugeMetricFamily(
            m.ZEST_DURATION,
            f"T: the job's training duration the break-even assumes, in seconds; t_source: where it came "
            f"from, {T_CONFIG} or {T_SLURM} (configured), {T_DEFAULT} (the built-in default: not configured, "
            f"rank by the bounds from the elapsed time)",
            labels=[job, m.ZEST_T_SOURCE_LABEL],
        )
        reuse = GaugeMetricFamily(m.ZEST_REUSE, "R: runs of the tuned configuration assumed", labels=[job])
        gpus = GaugeMetricFamily(m.ZEST_BREAKEVEN_GPUS, "G: GPUs the break-even assumes", labels=[job])
        at_stake = GaugeMetricFamily(
            m.ZEST_GPU_TIME_AT_STAKE,
            f"G·T·R: GPU time tuning acts on, in GPU-seconds; recommendation: the algorithm zest "
            f"recommends, {m.NO_RECOMMENDATION} when none proceeds",
            labels=[job, m.ZEST_RECOMMENDATION_LABEL],
        )
        z_algorithm = GaugeMetricFamily(
            m.ZEST_Z_ALGORITHM,
            "Z: share of training time the algorithm is expected to save (0-1), mid of its interval "
            "(low/high too with [serve] detail); the verdict compares it with the algorithm's Z_break",
            labels=[job, alg, m.ZEST_BOUND_LABEL],
        )
        z_break = GaugeMetricFamily(
            m.ZEST_Z_BREAK,
            "Z_break: improvement at which tuning with the algorithm just pays, as a ratio of training "
            "time; above 1 where no improvement can pay (tuning cannot save more than the whole run)",
            labels=[job, alg],
        )
        r_break = GaugeMetricFamily(
            m.ZEST_R_BREAK,
            "R_break: runs after which tuning pays at the mid Z_e (+Inf: never)",
            labels=[job, alg],
        )
        exploration = GaugeMetricFamily(
            m.ZEST_EXPLORATION,
            "GPU time the algorithm's trials cost (G·N·t), in GPU-seconds",
            labels=[job, alg],
        )
        saving = GaugeMetricFamily(
            m.ZEST_NET_SAVING,
            "Expected net saving at the mid Z_e over R runs, less exploration and engineering (GPU-seconds)",
            labels=[job, alg],
        )
        verdict = GaugeMetricFamily(
            m.ZEST_VERDICT,
            "1, labelled with the algorithm's verdict (proceed, marginal, does-not-pay): one series per "
            "algorithm",
            labels=[job, alg, m.ZEST_VERDICT_LABEL],
        )
        features = {
            f: GaugeMetricFamily(m.zest_feature_metric(f), _feature_help(f), labels=[job]) for f in FEATURES
        }
        diagnosis = GaugeMetricFamily(
            m.ZEST_DIAGNOSIS,
            "1 when the named diagnosis fits the job's telemetry; no series when it does not or its signals "
            "are missing (with [serve] detail, 0 when checked and not seen)",
            labels=[job, m.ZEST_DIAGNOSIS_LABEL],
        )
        bounds = BOUNDS if detail else ("mid",)
        for estimate in jobs:
            jid, z_percent, decision = estimate.job_id, estimate.z_percent, estimate.decision
            found = {d.name for d in estimate.diagnoses}
            for rule in checked_rules(estimate.features):
                if rule in found or detail:
                    diagnosis.add_metric([jid, rule], 1.0 if rule in found else 0.0)
            if detail:
                for feature, family in features.items():
                    value = estimate.features.get(feature, math.nan)
                    if not math.isnan(value):
                        family.add_metric([jid], value)
            if z_percent is None or decision is None:
                continue  # a job the pipeline did not weigh has no break-even series
            for bound in BOUNDS:
                z.add_metric([jid, bound], getattr(z_percent, bound) / PERCENT_PER_RATIO)
            source = sources.get(jid, T_DEFAULT)
            duration.add_metric([jid, source], decision.job.duration_hours * SECONDS_PER_HOUR)
            reuse.add_metric([jid], decision.job.reuse)
            gpus.add_metric([jid], float(decision.job.gpus))
            at_stake.add_metric(
                [jid, decision.recommendation or m.NO_RECOMMENDATION],
                decision.job.gpus * decision.job.duration_hours * decision.job.reuse * SECONDS_PER_HOUR,
            )
            for a in decision.assessments:
                name = a.candidate.name
                for bound in bounds:
                    z_algorithm.add_metric(
                        [jid, name, bound], getattr(a.candidate.z_percent, bound) / PERCENT_PER_RATIO
                    )
                z_break.add_metric([jid, name], a.z_break_percent / PERCENT_PER_RATIO)
                r_break.add_metric([jid, name], a.r_break)
                saving.add_metric([jid, name], a.net_saving_gpu_hours * SECONDS_PER_HOUR)
                verdict.add_metric([jid, name, a.verdict.value], 1.0)
                if detail:
                    exploration.add_metric([jid, name], a.exploration_gpu_hours * SECONDS_PER_HOUR)
        yield from (z, duration, reuse, gpus, at_stake, z_algorithm, z_break, r_break, saving, verdict)
        yield diagnosis
        if detail:
            yield exploration
            yield from features.values()

    def _elapsed_metrics(self, bounds: Mapping[str, ElapsedBounds], *, detail: bool) -> Iterator[Metric]:
        job = m.ZEST_JOB_LABEL
        elapsed = GaugeMetricFamily(
            m.ZEST_ELAPSED,
            "Seconds the job has run: from its first sample in the source (Prometheus: its current run, "
            "looking back up to 30 days; node agent: since the agent first saw it) to its latest. "
            "T is at least this long",
            labels=[job],
        )
        r_break = GaugeMetricFamily(
            m.ZEST_R_BREAK_AT_ELAPSED,
            "R_break at T = the elapsed time, at the mid Z_e: an upper bound of R_break whatever T is "
            "(T is at least the elapsed time): tuning pays within at most this many runs (+Inf: never); "
            "the least over the algorithms, labelled with that algorithm",
            labels=[job, m.ZEST_ALGORITHM_LABEL],
        )
        saving = GaugeMetricFamily(
            m.ZEST_RUN_SAVING_LOWER_BOUND,
            "Lower bound of the GPU time one run saves after a thorough search: G · elapsed time · the low "
            "end of Z_e, in GPU-seconds (T is at least the elapsed time)",
            labels=[job],
        )
        for jid, bound in bounds.items():
            saving.add_metric([jid], bound.run_saving_lower_bound_gpu_hours * SECONDS_PER_HOUR)
            if bound.r_break_at_elapsed:
                best = min(bound.r_break_at_elapsed, key=lambda name: bound.r_break_at_elapsed[name])
                r_break.add_metric([jid, best], bound.r_break_at_elapsed[best])
            if detail:
                elapsed.add_metric([jid], bound.elapsed_seconds)
        yield from (r_break, saving)
        if detail:
            yield elapsed

    def _gpu_metrics(self, means: pd.DataFrame) -> Iterator[Metric]:
        labels = [m.ZEST_JOB_LABEL, m.ZEST_HOST_LABEL, m.ZEST_GPU_LABEL, m.ZEST_GPU_MODEL_LABEL]
        keys = [
            [str(v) if v is not None and v is not pd.NA else "" for v in row]
            for row in means[[JOB_ID, HOST, GPU, GPU_MODEL]].itertuples(index=False, name=None)
        ]
        for signal in SIGNALS:
            family = GaugeMetricFamily(
                m.zest_gpu_metric(signal),
                f"Mean of {signal} over the window, per GPU of each job (unit in the name)",
                labels=labels,
            )
            for key, value in zip(keys, means[signal].to_numpy(dtype=float), strict=True):
                if not math.isnan(value):
                    family.add_metric(key, float(value))
            yield family
