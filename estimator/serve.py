"""The cycles of ``zest serve``: read telemetry, estimate every running job, publish the snapshot.

One code path, two sources of the GPU summary:

* :class:`ClusterSummaries` (``--source prometheus=URL``): the running jobs in
  a Prometheus, all summarized with a fixed number of batched queries;
* :class:`NodeSummaries` (``--source nvml``): this node's GPUs sampled through
  NVML, mapped to jobs (:mod:`collectors.jobmap`), kept in a rolling window
  per job.

:class:`Runner` runs a cycle at an interval and publishes into an
:class:`~estimator.exporter.ExporterState`; a failed cycle keeps the last
snapshot, marked stale, and the next one recovers by itself.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pandas as pd

from collectors.errors import CollectorError, JobNotFound
from collectors.jobmap import GpuId, cgroup_owner, resolve_job_gpus
from collectors.nvml import NvmlSource
from collectors.prometheus import PrometheusSource
from collectors.schema import GPU, JOB_ID, TIMESTAMP, SchemaError, conform, empty_frame
from estimator.algorithms import CaptureShares
from estimator.exporter import ExporterState, ZEstimator, estimate_jobs
from estimator.features import summarize_gpus
from estimator.serve_config import ServeConfig


class SummarySource(Protocol):
    """Gives the GPU summary (:data:`collectors.schema.SUMMARY_COLUMNS`) of every running job."""

    kind: str  # names the source in error counts: "prometheus", "nvml"

    def summaries(self) -> pd.DataFrame: ...


@dataclass
class ClusterSummaries:
    """Every running job in a Prometheus, summarized over the last ``window_seconds`` by batched queries."""

    source: PrometheusSource
    window_seconds: float
    kind: str = "prometheus"

    def summaries(self) -> pd.DataFrame:
        running = set(self.source.running_jobs())
        summary = self.source.summarize_jobs(self.window_seconds).summary
        # A job that ended within the window still has samples: only running ones are exported.
        return summary[summary[JOB_ID].isin(running)].reset_index(drop=True)


_DCGM_MAPPING_FILE = re.compile(r"^\d+(?:\.\d+)?$")


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
        uuids = {d.uuid: d.index for d in self.nvml.devices()}
        found: dict[str, tuple[GpuId, ...]] = {}
        for job_id in sorted(self._candidates(gpu_pids)):
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

    def _candidates(self, gpu_pids: Mapping[GpuId, Sequence[int]]) -> set[str]:
        """Job ids named on this node; :func:`collectors.jobmap.resolve_job_gpus` finds their GPUs."""
        names: set[str] = set()
        for pids in gpu_pids.values():
            for pid in pids:
                owner = cgroup_owner(pid, self.proc_root)
                if owner is not None and owner.slurm_job is not None:
                    names.add(owner.slurm_job)
                elif owner is not None and owner.pod_uid is not None:
                    names.add(f"pod:{owner.pod_uid}")
        if self.hpc_job_dir is not None:
            for path in _files(self.hpc_job_dir):
                if _DCGM_MAPPING_FILE.match(path.name):
                    names.update(line.strip() for line in _lines(path) if line.strip())
        for path in _files(self.gpustat_dir):
            names.update(line.split()[0] for line in _lines(path)[:1] if line.split())
        return names


def _files(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.is_file())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        return []  # written and removed by prolog and epilog scripts while we read


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

    def run_once(self) -> bool:
        """One cycle; True when it succeeded. Expected errors of the source and model are counted."""
        started = self.clock()
        try:
            summary = self.source.summaries()
            snapshot = estimate_jobs(
                summary, self.config, self.z_estimator, self.shares, taken_at_seconds=self.wall_clock()
            )
        except (CollectorError, SchemaError) as exc:
            self.state.fail(failure_reason(exc), self.clock() - started, self.source.kind)
            return False
        self.state.publish(snapshot, self.clock() - started)
        return True

    def run_forever(self, stop: threading.Event) -> None:
        """Cycles every ``interval_seconds`` (a cycle's own time counts) until ``stop`` is set."""
        while not stop.is_set():
            started = self.clock()
            self.run_once()
            stop.wait(max(0.0, self.interval_seconds - (self.clock() - started)))
