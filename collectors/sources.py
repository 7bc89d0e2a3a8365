"""Choose a telemetry source from the ``--source`` text and read one job's telemetry from it.

Sources: ``nvml`` (this host's GPUs, live), ``prometheus=URL`` (a Prometheus
HTTP API holding dcgm-exporter or jobstats series), ``example`` (the captures
bundled with zest) or the path of a capture file. A source gives either raw
samples (the canonical frame) or, when it aggregates at the server, the
per-GPU summary of :mod:`collectors.schema`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import pandas as pd

from collectors.errors import JobNotFound, SourceUnavailable

NVML = "nvml"
EXAMPLE = "example"
PROMETHEUS_PREFIX = "prometheus="
SOURCE_HELP = "nvml, prometheus=URL, example (the bundled captures) or the path of a capture file"
#: dcgm-exporter's job-mapping directory, where a site sets one (no standard path exists).
HPC_JOB_DIR_ENV = "DCGM_HPC_JOB_MAPPING_DIR"


@dataclass(frozen=True)
class Telemetry:
    """One job's telemetry as a source gave it: raw samples, or per-GPU summaries, and notes."""

    source: str  # how to name the source to a person (never with credentials)
    frame: pd.DataFrame | None = None  # canonical telemetry frame
    summary: pd.DataFrame | None = None  # per-GPU summary, from sources that aggregate
    notes: list[str] = field(default_factory=list)


def example_dir() -> Path:
    """The folder of bundled example captures, one ``<job id>.parquet`` each."""
    return Path(str(resources.files("collectors") / "examples"))


def example_jobs() -> list[str]:
    """Job ids of the bundled example captures."""
    return sorted(p.name.removesuffix(".parquet") for p in example_dir().glob("*.parquet"))


def read_job(
    source: str | None,
    job_id: str,
    *,
    window_seconds: float | None = None,
    interval_seconds: float = 1.0,
    end: datetime | None = None,
    raw: bool = False,
    nvml_factory: Callable[[], object] | None = None,
) -> Telemetry:
    """Read ``job_id``'s telemetry from ``source`` (None: NVML where a driver is present).

    ``window_seconds``: how much to read, ending at ``end`` (default now); for
    NVML how long to sample (default 60 s), for Prometheus how far back (default:
    the job's run as far as Prometheus holds it), for files the last part of
    the capture (default all of it). ``raw`` asks Prometheus for samples
    rather than summaries (for ``zest capture``).
    """
    if source is None or source == NVML:
        return _read_nvml(job_id, window_seconds, interval_seconds, nvml_factory, explicit=source is not None)
    if source.startswith(PROMETHEUS_PREFIX):
        return _read_prometheus(source.removeprefix(PROMETHEUS_PREFIX), job_id, window_seconds, end, raw)
    if source == EXAMPLE:
        path = example_dir() / f"{job_id}.parquet"
        if not path.is_file():
            raise JobNotFound(
                f"no bundled example for job {job_id!r}; the examples are: {', '.join(example_jobs())}"
            )
        return _read_file(path, job_id, window_seconds, name=f"example {job_id}")
    return _read_file(Path(source), job_id, window_seconds, name=source)


def _read_file(path: Path, job_id: str, window_seconds: float | None, *, name: str) -> Telemetry:
    from collectors.files import read_capture

    if path.is_dir():
        raise SourceUnavailable(f"{path} is a folder: give one capture file, or one of {SOURCE_HELP}")
    if not path.exists():
        raise SourceUnavailable(f"--source {path}: no such file; give {SOURCE_HELP}")
    capture = read_capture(path, job_id)
    frame, notes = capture.frame, list(capture.notes)
    if window_seconds is not None and not frame.empty:
        start = frame["timestamp"].max() - timedelta(seconds=window_seconds)
        frame = frame[frame["timestamp"] >= start].reset_index(drop=True)
        notes.append(f"read the last {window_seconds:g} s of the capture")
    return Telemetry(source=name, frame=frame, notes=notes)


def _read_nvml(
    job_id: str,
    window_seconds: float | None,
    interval_seconds: float,
    factory: Callable[[], object] | None,
    *,
    explicit: bool,
) -> Telemetry:
    from collectors.jobmap import resolve_job_gpus
    from collectors.nvml import NvmlSource

    nvml = factory() if factory is not None else NvmlSource()
    assert isinstance(nvml, NvmlSource)
    if not explicit and not nvml.available():
        raise SourceUnavailable(
            f"no --source given and no NVML driver on this host: give --source {SOURCE_HELP}"
        )
    mapping_dir = os.environ.get(HPC_JOB_DIR_ENV)
    gpus = resolve_job_gpus(
        job_id,
        gpu_pids=nvml.gpu_pids(),
        hpc_job_dir=Path(mapping_dir) if mapping_dir else None,
        gpu_uuids={d.uuid: d.index for d in nvml.devices()},
    )
    window = 60.0 if window_seconds is None else window_seconds
    capture = nvml.sample(window, interval_seconds, gpu_indices=gpus.gpu_indices, job_id=job_id)
    notes = [f"job {job_id} on GPU(s) {', '.join(map(str, gpus.gpu_indices))} of this host ({gpus.how})"]
    if gpus.shared:
        notes.append(f"GPU(s) {', '.join(map(str, gpus.shared))} are shared with other jobs")
    return Telemetry(source="nvml", frame=capture.frame, notes=notes + list(capture.notes))


def _read_prometheus(
    url: str, job_id: str, window_seconds: float | None, end: datetime | None, raw: bool
) -> Telemetry:
    from collectors.prometheus import PrometheusSource

    if not url:
        raise SourceUnavailable(
            "--source prometheus=URL needs the URL of a Prometheus, e.g. prometheus=http://host:9090"
        )
    prom = PrometheusSource(url)
    stop = end or datetime.now(UTC)
    start = None if window_seconds is None else stop - timedelta(seconds=window_seconds)
    if raw:
        samples = prom.job_samples(job_id, start, stop)
        return Telemetry(source=prom.display_url, frame=samples.frame, notes=list(samples.notes))
    summary = prom.summarize_job(job_id, start, stop)
    return Telemetry(source=prom.display_url, summary=summary.summary, notes=list(summary.notes))
