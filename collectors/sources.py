"""Choose a telemetry source from the ``--source`` text and read one job's telemetry from it.

Sources: ``nvml`` (this host's GPUs, live), ``prometheus=URL`` (a Prometheus
HTTP API holding dcgm-exporter or jobstats series), ``example`` (the captures
bundled with zest) or the path of a capture file. A source gives either raw
samples (the canonical frame) or, when it aggregates at the server, the
per-GPU summary of :mod:`collectors.schema`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from collectors.errors import InputError, JobNotFound, SourceUnavailable
from collectors.util import iso_utc, short_host

if TYPE_CHECKING:  # pandas loads with the first telemetry read, not with the command line
    import pandas as pd

    from collectors.prometheus import PrometheusAuth

NVML = "nvml"
EXAMPLE = "example"
PROMETHEUS_PREFIX = "prometheus="
#: How long NVML samples when no --window is given.
DEFAULT_NVML_WINDOW_SECONDS = 60.0
SOURCE_HELP = "nvml, prometheus=URL, example (the bundled captures) or the path of a capture file"


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


def example_spec(job_id: str) -> Path | None:
    """The job spec a bundled example capture was simulated from (``<job id>.json``), if there is one."""
    path = example_dir() / f"{job_id}.json"
    return path if path.is_file() else None


def read_job(
    source: str | None,
    job_id: str,
    *,
    window_seconds: float | None = None,
    interval_seconds: float = 1.0,
    end: datetime | None = None,
    raw: bool = False,
    placement: Mapping[str, Sequence[int]] | None = None,
    prometheus_auth: PrometheusAuth | None = None,
    hpc_job_dir: Path | None = None,
    nvml_factory: Callable[[], object] | None = None,
    fields: Sequence[str] | None = None,
) -> Telemetry:
    """Read ``job_id``'s telemetry from ``source`` (None: NVML where a driver is present).

    ``window_seconds``: how much to read, ending at ``end`` (default now); for
    NVML how long to sample (default 60 s), for Prometheus how far back (default:
    the job's run as far as Prometheus holds it), for files the last part of
    the capture (default all of it). ``raw`` asks Prometheus for samples
    rather than summaries (for ``zest capture``). ``placement``: the job's
    nodes and GPU indices on each, known from the scheduler: NVML samples the
    job's GPUs on this node without job mapping, and a capture is narrowed to
    them. ``prometheus_auth``: credentials for a Prometheus. ``hpc_job_dir``:
    dcgm-exporter's job mapping directory, where NVML looks for the job's GPUs
    (None: not looked at). ``fields``: the columns of a capture file written
    without its header (nvidia-smi ``--format=csv,noheader``).
    """
    if fields is not None and (
        source is None or source in (NVML, EXAMPLE) or source.startswith(PROMETHEUS_PREFIX)
    ):
        raise InputError(
            f"--fields names the columns of a capture file without its header, not of {source or NVML}: "
            "drop --fields, or give the file as --source"
        )
    if source is None or source == NVML:
        local = None if placement is None else placement.get(short_host(socket.gethostname()))
        return _read_nvml(
            job_id,
            window_seconds,
            interval_seconds,
            nvml_factory,
            local,
            explicit=source is not None,
            hpc_job_dir=hpc_job_dir,
        )
    if source.startswith(PROMETHEUS_PREFIX):
        url = source.removeprefix(PROMETHEUS_PREFIX)
        return _read_prometheus(url, job_id, window_seconds, end, raw, placement, prometheus_auth)
    if source == EXAMPLE:
        path = example_dir() / f"{job_id}.parquet"
        if not path.is_file():
            raise JobNotFound(
                f"no bundled example for job {job_id!r}; the examples are: {', '.join(example_jobs())}"
            )
        return _read_file(path, job_id, window_seconds, end, placement, name=f"example {job_id}")
    return _read_file(Path(source), job_id, window_seconds, end, placement, name=source, fields=fields)


def _read_file(
    path: Path,
    job_id: str,
    window_seconds: float | None,
    end: datetime | None,
    placement: Mapping[str, Sequence[int]] | None,
    *,
    name: str,
    fields: Sequence[str] | None = None,
) -> Telemetry:
    import pandas as pd

    from collectors.files import read_capture
    from collectors.schema import EARLIEST

    if path.is_dir():
        raise SourceUnavailable(f"{path} is a folder: give one capture file, or one of {SOURCE_HELP}")
    if not path.exists():
        raise SourceUnavailable(f"--source {path}: no such file; give {SOURCE_HELP}")
    capture = read_capture(path, job_id, fields=fields)
    frame, notes = capture.frame, list(capture.notes)
    if placement:
        frame = _on_placement(frame, placement)
        notes.append(f"narrowed to the job's GPUs: {_placed(placement)}")
    if window_seconds is not None and not frame.empty:
        stop = pd.Timestamp(end) if end is not None else frame["timestamp"].max()
        # A window reaching before the earliest time a sample can have keeps all of them (and no overflow).
        reach = min(window_seconds, (stop - pd.Timestamp(EARLIEST)).total_seconds())
        start = stop - timedelta(seconds=max(reach, 0.0))
        frame = frame[frame["timestamp"].between(start, stop)].reset_index(drop=True)
        notes.append(
            f"read {window_seconds:g} s of the capture up to {iso_utc(stop)}"
            if end is not None
            else f"read the last {window_seconds:g} s of the capture"
        )
    return Telemetry(source=name, frame=frame, notes=notes)


def _placed(placement: Mapping[str, Sequence[int]]) -> str:
    return "; ".join(f"{node} GPU(s) {_listed(indices) or '?'}" for node, indices in placement.items())


def _on_placement(frame: pd.DataFrame, placement: Mapping[str, Sequence[int]]) -> pd.DataFrame:
    """The rows of ``frame`` on the job's nodes and GPUs; a file that names no host is taken as the job's node
    when the job has one."""
    import pandas as pd

    hosts = frame["host"].fillna("").map(short_host)
    keep = pd.Series(False, index=frame.index)
    for node, indices in placement.items():
        on_node = hosts.eq(short_host(node)) | (hosts.eq("") & (len(placement) == 1))
        gpu_ok = frame["gpu"].str.split("/").str[0].isin([str(i) for i in indices]) if indices else True
        keep |= on_node & gpu_ok
    return frame[keep].reset_index(drop=True)


def _read_nvml(
    job_id: str,
    window_seconds: float | None,
    interval_seconds: float,
    factory: Callable[[], object] | None,
    gpu_indices: Sequence[int | str] | None,
    *,
    explicit: bool,
    hpc_job_dir: Path | None,
) -> Telemetry:
    from collectors.jobmap import resolve_job_gpus
    from collectors.nvml import NvmlSource

    window = DEFAULT_NVML_WINDOW_SECONDS if window_seconds is None else window_seconds
    if interval_seconds > window:
        raise InputError(
            f"--window {window:g} s is shorter than --interval {interval_seconds:g} s: "
            "give a window of at least one interval"
        )
    nvml = factory() if factory is not None else NvmlSource()
    assert isinstance(nvml, NvmlSource)
    if not explicit and not nvml.available():
        raise SourceUnavailable(
            f"no --source given and no NVML driver on this host: give --source {SOURCE_HELP}"
        )
    if gpu_indices is not None:
        indices, notes = tuple(gpu_indices), [f"job {job_id} on GPU(s) {_listed(gpu_indices)} of this host"]
    else:
        gpus = resolve_job_gpus(
            job_id,
            gpu_pids=nvml.gpu_pids(),
            hpc_job_dir=hpc_job_dir,
            gpu_uuids=nvml.gpu_uuids(),
        )
        indices = gpus.gpu_indices
        notes = [f"job {job_id} on GPU(s) {_listed(indices)} of this host ({gpus.how})"]
        if gpus.shared:
            notes.append(f"GPU(s) {_listed(gpus.shared)} are shared with other jobs")
    capture = nvml.sample(window, interval_seconds, gpu_indices=indices, job_id=job_id)
    return Telemetry(source="nvml", frame=capture.frame, notes=notes + list(capture.notes))


def _listed(items: Sequence[object]) -> str:
    return ", ".join(map(str, items))


def _read_prometheus(
    url: str,
    job_id: str,
    window_seconds: float | None,
    end: datetime | None,
    raw: bool,
    placement: Mapping[str, Sequence[int]] | None,
    auth: PrometheusAuth | None,
) -> Telemetry:
    from collectors.prometheus import PrometheusSource

    if not url:
        raise SourceUnavailable(
            "--source prometheus=URL needs the URL of a Prometheus, e.g. prometheus=http://host:9090"
        )
    prom = PrometheusSource(url, auth=auth)
    stop = end or datetime.now(UTC)
    start = None if window_seconds is None else stop - timedelta(seconds=window_seconds)
    if raw:
        samples = prom.job_samples(job_id, start, stop, placement)
        return Telemetry(source=prom.display_url, frame=samples.frame, notes=list(samples.notes))
    summary = prom.summarize_job(job_id, start, stop, placement)
    return Telemetry(source=prom.display_url, summary=summary.summary, notes=list(summary.notes))
