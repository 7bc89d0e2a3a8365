"""The cycles of ``zest serve``: read telemetry, estimate every running job, publish the snapshot.

One code path, two sources of the GPU summary:

* :class:`ClusterSummaries` (``--source prometheus=URL``): the running jobs in
  a Prometheus, all summarized with a fixed number of batched queries; with a
  :class:`Shard` (``--shard I/N``), only the jobs whose id hashes to ``I`` of
  ``N``, so that N replicas split a fleet;
* :class:`NodeSummaries` (``--source nvml``): this node's GPUs sampled through
  NVML, mapped to jobs (:mod:`collectors.jobmap`), kept in a rolling window
  per job.

:class:`Runner` runs a cycle at an interval and publishes into an
:class:`~estimator.serving.collector.ExporterState`; a failed cycle keeps the last
snapshot, marked stale, and the next one recovers by itself. With
:class:`SlurmInputs`, each running Slurm job is weighed with its own T (time
limit) and R (history) instead of the config's defaults.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Protocol

import pandas as pd

from collectors.errors import (
    InputError,
    JobNotFound,
    ModelError,
    SchedulerError,
    SlurmAccountingUnavailable,
    SlurmJobNotFound,
    TelemetryError,
)
from collectors.jobmap import GpuId, job_ids_on_node, resolve_job_gpus
from collectors.nvml import NvmlSource
from collectors.prometheus import PrometheusSource
from collectors.schema import GPU, JOB_ID, TIMESTAMP, conform, empty_frame
from collectors.slurm import Slurm, defaults_from_slurm, is_slurm_job_id
from collectors.util import one_line
from estimator.decision.algorithms import CaptureShares
from estimator.features.extract import summarize_gpus
from estimator.pipeline import ZEstimator
from estimator.serving.collector import ExporterState, FirstSamples, estimate_jobs
from estimator.serving.config import ServeConfig

log = logging.getLogger(__name__)


class SummarySource(Protocol):
    """Gives the GPU summary (:data:`collectors.schema.SUMMARY_COLUMNS`) of every running job."""

    kind: str  # names the source in error counts: "prometheus", "nvml"
    #: Whether the last summaries came from zest's recording rules (True), raw samples (False), or a
    #: source that has none (None: NVML).
    recording_rules_used: bool | None

    def summaries(self) -> pd.DataFrame: ...


def hashmod(value: str, modulus: int) -> int:
    """Prometheus' relabel ``hashmod`` of ``value``: the low 64 bits of its MD5 digest, read big-endian
    (Go's ``sum64(md5.Sum(...))`` in ``model/relabel/relabel.go``), modulo ``modulus``."""
    digest = hashlib.md5(value.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[8:], "big") % modulus


@dataclass(frozen=True)
class Shard:
    """Replica ``index`` of ``count``: it serves the jobs whose id's :func:`hashmod` ``count`` is ``index``.

    The split is the one a relabel rule ``action: hashmod, modulus: count`` on the
    job label (``hpc_job``, jobstats' ``jobid``; ``namespace`` and ``pod`` with
    ``separator: /``) makes, so a site can split its scrapes or rules the same way.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise InputError(f"shard {self}: I/N needs N >= 1 and 0 <= I <= N-1")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, job_id: str) -> bool:
        """Whether this replica serves ``job_id``."""
        return hashmod(job_id, self.count) == self.index


@dataclass
class ClusterSummaries:
    """Every running job in a Prometheus, summarized over the last ``window_seconds`` by batched queries.

    With ``shard``, only this replica's running jobs are kept, before they are estimated. ``now``
    gives the end of the window (tests pin it).
    """

    source: PrometheusSource
    window_seconds: float
    kind: str = "prometheus"
    shard: Shard | None = None
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    #: Whether the last cycle read zest's recording rules (grafana/zest-gpu.rules.yml) or raw samples.
    recording_rules_used: bool | None = None

    def running_jobs(self) -> set[str]:
        """The ids of the running jobs this replica serves: all of them without a shard."""
        running = self.source.running_jobs()
        if self.shard is None:
            return set(running)
        return {job_id for job_id in running if self.shard.owns(job_id)}

    def summaries(self) -> pd.DataFrame:
        running = self.running_jobs()
        # A shard asks only for its jobs (PromQL has no hashmod: their ids are matched); jobs whose labels
        # look alike may come too, and are dropped here with those that ended within the window.
        shard_jobs = None if self.shard is None else sorted(running)
        answer = self.source.summarize_jobs(self.window_seconds, self.now(), shard_jobs)
        self.recording_rules_used = answer.recording_rules_used
        summary = answer.summary
        return summary[summary[JOB_ID].isin(running)].reset_index(drop=True)

    def first_samples(self, job_ids: Sequence[str]) -> Mapping[str, float]:
        """When each job's current run began (Unix seconds), looking back 30 days: one query for all."""
        return self.source.first_samples(job_ids, self.now()).first_sample_seconds


@dataclass
class NodeSummaries:
    """This node's GPUs through NVML, each sample tagged with the jobs on its GPU, in a rolling window.

    Each call samples for ``sample_seconds`` every ``interval_seconds``, then
    summarizes the last ``window_seconds`` of every job still on the node.
    Jobs are those the mapping files (dcgm-exporter's ``hpc_job_dir``,
    jobstats' ``gpustat_dir``) or the cgroups of the GPU processes name.
    """

    nvml: NvmlSource
    window_seconds: float
    sample_seconds: float
    interval_seconds: float = 1.0
    hpc_job_dir: Path | None = None
    gpustat_dir: Path = Path("/run/gpustat")
    recording_rules_used: bool | None = None  # NVML: no recording rules
    proc_root: Path = Path("/proc")
    kind: str = "nvml"
    _window: pd.DataFrame = field(default_factory=empty_frame)

    def summaries(self) -> pd.DataFrame:
        jobs = self.jobs_on_node()
        capture = self.nvml.sample(self.sample_seconds, self.interval_seconds)
        tagged = _tag_jobs(capture.frame, jobs)
        frame = pd.concat([self._window, tagged], ignore_index=True) if not self._window.empty else tagged
        frame = frame[frame[JOB_ID].isin(list(jobs))]
        if not frame.empty:
            newest = frame[TIMESTAMP].max()
            frame = frame[frame[TIMESTAMP] > newest - pd.Timedelta(seconds=self.window_seconds)]
        self._window = conform(frame.reset_index(drop=True), sort=False)
        return summarize_gpus(self._window)

    def jobs_on_node(self) -> dict[str, tuple[GpuId, ...]]:
        """Every job on this node and its GPUs (ids as in the telemetry frame)."""
        gpu_pids = self.nvml.gpu_pids()
        uuids = self.nvml.gpu_uuids()
        found: dict[str, tuple[GpuId, ...]] = {}
        named = job_ids_on_node(
            gpu_pids, proc_root=self.proc_root, hpc_job_dir=self.hpc_job_dir, gpustat_dir=self.gpustat_dir
        )
        for job_id in sorted(named):
            try:
                mapped = resolve_job_gpus(
                    job_id,
                    gpu_pids=gpu_pids,
                    proc_root=self.proc_root,
                    hpc_job_dir=self.hpc_job_dir,
                    gpustat_dir=self.gpustat_dir,
                    gpu_uuids=uuids,
                )
            except JobNotFound:
                continue  # named by a file its epilog is removing
            found[job_id] = mapped.gpu_indices
        return found


def _tag_jobs(frame: pd.DataFrame, jobs: Mapping[str, Sequence[GpuId]]) -> pd.DataFrame:
    """One copy of each GPU's rows per job on that GPU, its job id filled in."""
    parts = []
    for job_id, gpus in jobs.items():
        mine = frame[frame[GPU].isin([str(g) for g in gpus])].copy()
        mine[JOB_ID] = job_id
        parts.append(mine)
    if not parts:
        return empty_frame()
    return conform(pd.concat(parts, ignore_index=True), sort=False)


#: Per-job break-even inputs a scheduler gives (``duration_hours``, ``reuse``), by job id.
JobInputs = Callable[[Iterable[str]], Mapping[str, Mapping[str, float]]]


@dataclass
class SlurmInputs:
    """T and R of every running Slurm job: T its time limit, R its user's earlier jobs of its name.

    The same questions ``estimate-z`` asks (:meth:`Slurm.job`, :func:`defaults_from_slurm`,
    :meth:`Slurm.reuse_from_history`), asked once per job while it runs, not every cycle. A job id
    Slurm does not hold, or not of a Slurm job's shape, gets nothing (the config's values); without
    accounting there is no R. Any other Slurm error fails the cycle (:class:`SchedulerError`).
    """

    slurm: Slurm
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    _known: dict[str, Mapping[str, float]] = field(default_factory=dict, init=False, repr=False)

    def __call__(self, job_ids: Iterable[str]) -> Mapping[str, Mapping[str, float]]:
        running = {job_id for job_id in job_ids if is_slurm_job_id(job_id)}
        self._known = {job_id: v for job_id, v in self._known.items() if job_id in running}  # ended: forgot
        for job_id in sorted(running - set(self._known)):
            self._known[job_id] = self._ask(job_id)
        return dict(self._known)

    def _ask(self, job_id: str) -> Mapping[str, float]:
        try:
            job = self.slurm.job(job_id)
        except SlurmJobNotFound:
            return {}
        inputs: dict[str, float] = {}
        duration_hours = defaults_from_slurm(job, self.now()).duration_hours
        if duration_hours is not None:
            inputs["duration_hours"] = duration_hours
        try:
            reuse = self.slurm.reuse_from_history(job.user, job.name, exclude_job_id=job.job_id)
        except SlurmAccountingUnavailable:
            return inputs
        inputs["reuse"] = reuse.runs
        return inputs


#: The ``reason`` of a cycle that failed of an error zest does not expect (a bug), not of its source.
INTERNAL_ERROR: Final = "internal_error"


def failure_reason(error: Exception) -> str:
    """The ``reason`` label of a failed cycle: the error class in snake case (``source_unavailable``)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()


@dataclass
class Runner:
    """Runs cycles: summaries from ``source``, estimates of every job, published into ``state``."""

    source: SummarySource
    state: ExporterState
    config: ServeConfig
    z_estimator: ZEstimator
    shares: CaptureShares
    interval_seconds: float
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    after_cycle: Callable[[], None] | None = None  # e.g. render /metrics once for the new estimates
    job_inputs: JobInputs | None = None  # e.g. SlurmInputs: T and R of each job from its scheduler
    _failing: str | None = field(default=None, init=False, repr=False)  # reason of the failing cycles
    _failed_cycles: int = field(default=0, init=False, repr=False)
    _first_samples: FirstSamples = field(default_factory=FirstSamples, init=False, repr=False)

    def run_once(self) -> bool:
        """One cycle; True when it succeeded. Expected errors of the source and model are counted.

        A change of state is logged once (``estimator.serving.runner``): the first
        failure ("source down") and each change of its reason ("source still down") as a
        warning, the recovery ("source up") as info; a repeated failure is counted, not
        logged again. Each line carries ``source`` and ``reason`` or ``failed_cycles`` as fields.
        """
        started = self.clock()
        try:
            summary = self.source.summaries()
            scheduled = self.job_inputs(summary[JOB_ID].unique()) if self.job_inputs is not None else None
            snapshot = estimate_jobs(
                summary,
                self.config,
                self.z_estimator,
                self.shares,
                taken_at_seconds=self.wall_clock(),
                scheduled=scheduled,
                first_samples=self._first_samples.update(summary, self.source),  # asked once per job
            )
        except (TelemetryError, SchedulerError, ModelError) as exc:  # the source or the model, not a bug
            return self._failed(failure_reason(exc), exc, started)
        except Exception as exc:  # a bug: counted and logged with its traceback; the exporter keeps serving
            return self._failed(INTERNAL_ERROR, exc, started, bug=True)
        snapshot = replace(snapshot, recording_rules_used=self.source.recording_rules_used)
        self.state.publish(snapshot, self.clock() - started)
        if self._failing is not None:
            log.info(
                "source up: %s recovered after %d failed cycle(s); estimates are current",
                self.source.kind,
                self._failed_cycles,
                extra={"source": self.source.kind, "failed_cycles": self._failed_cycles},
            )
            self._failing, self._failed_cycles = None, 0
        self._after_cycle()
        return True

    def _failed(self, reason: str, exc: Exception, started: float, *, bug: bool = False) -> bool:
        """Count a failed cycle under ``reason`` (the last estimates stay, marked stale); log a change.

        A scheduler's error is counted under the source ``slurm``, not under the telemetry source.
        """
        source = "slurm" if isinstance(exc, SchedulerError) else self.source.kind
        self.state.fail(reason, self.clock() - started, source)
        if reason != self._failing:
            log.warning(
                "%s: %s cycle failed (%s): %s; serving the last estimates, marked stale",
                "source down" if self._failing is None else "source still down",
                source,
                reason,
                one_line(exc),
                exc_info=exc if bug else None,
                extra={"source": source, "reason": reason},
            )
        self._failing = reason
        self._failed_cycles += 1
        self._after_cycle()
        return False

    def _after_cycle(self) -> None:
        if self.after_cycle is not None:
            self.after_cycle()

    def run_forever(self, stop: threading.Event) -> None:
        """Cycles every ``interval_seconds`` (a cycle's own time counts) until ``stop`` is set."""
        while not stop.is_set():
            started = self.clock()
            self.run_once()
            stop.wait(max(0.0, self.interval_seconds - (self.clock() - started)))
