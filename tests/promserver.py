"""A real Prometheus server holding simulated GPU jobs, for the Prometheus source's tests and benchmark.

The simulated exporters publish what dcgm-exporter and the jobstats exporter
publish (names and labels as written in the wild, not read from
``collectors.metrics``, so a wrong name there fails the tests). Samples are
written as OpenMetrics text, backfilled with ``promtool tsdb
create-blocks-from openmetrics`` and served by ``prometheus`` from the
distribution's package. Timestamps are whole multiples of the 30 s scrape
interval.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from collectors.metrics import DCGM_FB_FREE, DCGM_METRICS, MIB

INSTALL_HINT = "install Prometheus and promtool: sudo apt-get install prometheus"
SCRAPE_SECONDS = 30
READY_TIMEOUT_SECONDS = 60.0


@dataclass
class Series:
    """One simulated series: a metric name, its labels, sample times (Unix s) and values."""

    name: str
    labels: dict[str, str]
    times: np.ndarray
    values: np.ndarray


@dataclass
class SimJob:
    """The series of one simulated job and the id zest should find it by."""

    job_id: str
    family: str  # "dcgm" or "jobstats"
    series: list[Series] = field(default_factory=list)


@dataclass
class PromServer:
    """A running Prometheus: its URL and the process serving it."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


def require_binaries() -> tuple[str, str]:
    """Paths of ``prometheus`` and ``promtool``; fails the test run (never skips) when absent."""
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        pytest.fail(f"the Prometheus source's tests need a real server: {INSTALL_HINT}", pytrace=False)
    return prometheus, promtool


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- OpenMetrics and backfill --------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_openmetrics(path: Path, series: Iterable[Series]) -> int:
    """Write ``series`` as OpenMetrics (families contiguous, ``# EOF`` last); returns the sample count."""
    by_name: dict[str, list[Series]] = {}
    for one in series:
        by_name.setdefault(one.name, []).append(one)
    written = 0
    with path.open("w", encoding="utf-8") as out:
        for name, members in by_name.items():
            counter = name.endswith("_total")
            family = name.removesuffix("_total") if counter else name
            out.write(f"# TYPE {family} {'counter' if counter else 'gauge'}\n")
            for one in members:
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in one.labels.items())
                prefix = f"{name}{{{labels}}} "
                out.writelines(
                    f"{prefix}{value!r} {stamp}\n"
                    for stamp, value in zip(one.times.tolist(), one.values.tolist(), strict=True)
                )
                written += len(one.times)
        out.write("# EOF\n")
    return written


def backfill(promtool: str, openmetrics: Path, data_dir: Path) -> None:
    result = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(openmetrics), str(data_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"promtool could not backfill {openmetrics}: {result.stderr.strip()[-2000:]}", pytrace=False
        )


def start_prometheus(
    prometheus: str,
    data_dir: Path,
    work_dir: Path,
    *,
    config_text: str = "global:\n  scrape_interval: 1h\n",  # no scrape targets
    port: int | None = None,
) -> PromServer:
    """Start ``prometheus`` on ``port`` (default: a free one) over ``data_dir``; wait until it is ready."""
    config = work_dir / "prometheus.yml"
    config.write_text(config_text, encoding="utf-8")
    port = free_port() if port is None else port
    log_path = work_dir / "prometheus.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                prometheus,
                f"--storage.tsdb.path={data_dir}",
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=3650d",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = PromServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if requests.get(f"{server.url}/-/ready", timeout=1).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    server.stop()
    tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
    pytest.fail(f"prometheus did not become ready on port {port}:\n{tail}", pytrace=False)


@contextmanager
def served(series: Iterable[Series], work: Path, name: str = "series") -> Iterator[PromServer]:
    """A real Prometheus over ``series``: written as OpenMetrics in ``work``, backfilled into its data folder
    there, started, and stopped when the block ends."""
    prometheus, promtool = require_binaries()
    openmetrics = work / f"{name}.om"
    write_openmetrics(openmetrics, series)
    backfill(promtool, openmetrics, work / "data")
    server = start_prometheus(prometheus, work / "data", work)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Dataset:
    """A running Prometheus holding ``jobs``."""

    url: str
    jobs: dict[str, SimJob]
    samples: int


# --- simulated exporters ------------------------------------------------------------------------


def _times(start: int, count: int) -> np.ndarray:
    return start + SCRAPE_SECONDS * np.arange(count, dtype=np.int64)


def _sm_active(rng: np.random.Generator, count: int) -> np.ndarray:
    """SM activity with an idle start (data loading) and a busy rest, six decimals like dcgm-exporter."""
    idle = max(1, count // 7)
    values = np.concatenate([rng.uniform(0.0, 0.049, idle), rng.uniform(0.2, 0.95, count - idle)])
    return np.round(values, 6)


def dcgm_gpu(
    rng: np.random.Generator,
    start: int,
    count: int,
    labels: dict[str, str],
    *,
    profiling: bool = True,
    mig: bool = False,
    reserved: bool = True,
    nvlink: str = "total",  # "total": BANDWIDTH_TOTAL; "dcp": PROF_NVLINK_TX/RX_BYTES; "": none
    memory_mib: int = 81559,
) -> list[Series]:
    """dcgm-exporter series of one GPU (or MIG instance) for ``count`` scrapes from ``start``."""
    times = _times(start, count)
    used = rng.integers(2000, memory_mib - 4000, count).astype(float)
    reserved_mib = 512.0 if reserved else 0.0
    values: dict[str, np.ndarray] = {
        "DCGM_FI_DEV_FB_USED": used,
        "DCGM_FI_DEV_FB_FREE": memory_mib - reserved_mib - used,
        "DCGM_FI_DEV_POWER_USAGE": np.round(rng.uniform(80.0, 690.0, count), 3),
    }
    if reserved:
        values["DCGM_FI_DEV_FB_RESERVED"] = np.full(count, reserved_mib)
    if not mig:  # MIG instances do not report GPU_UTIL
        values["DCGM_FI_DEV_GPU_UTIL"] = rng.integers(0, 101, count).astype(float)
    if profiling:
        values["DCGM_FI_PROF_SM_ACTIVE"] = _sm_active(rng, count)
        values["DCGM_FI_PROF_SM_OCCUPANCY"] = np.round(rng.uniform(0.05, 0.6, count), 6)
        values["DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"] = np.round(rng.uniform(0.0, 0.7, count), 6)
        values["DCGM_FI_PROF_DRAM_ACTIVE"] = np.round(rng.uniform(0.05, 0.8, count), 6)
        values["DCGM_FI_PROF_PCIE_TX_BYTES"] = rng.integers(10**6, 10**9, count).astype(float)
        values["DCGM_FI_PROF_PCIE_RX_BYTES"] = rng.integers(10**6, 10**9, count).astype(float)
    if nvlink == "total":
        values["DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"] = rng.integers(0, 250_000, count).astype(float)
    elif nvlink == "dcp":
        values["DCGM_FI_PROF_NVLINK_TX_BYTES"] = rng.integers(0, 2 * 10**11, count).astype(float)
        values["DCGM_FI_PROF_NVLINK_RX_BYTES"] = rng.integers(0, 2 * 10**11, count).astype(float)
    return [Series(name, dict(labels), times, v) for name, v in values.items()]


def dcgm_from_telemetry(frame: pd.DataFrame, start: int, count: int, labels: dict[str, str]) -> list[Series]:
    """dcgm-exporter series of one GPU for ``count`` scrapes from ``start``, its values those of a canonical
    telemetry frame of one GPU (e.g. a bundled example's), cycled: a job whose telemetry looks like one."""
    rows = frame.iloc[np.arange(count) % len(frame)]
    times = _times(start, count)
    out = [
        Series(m.name, dict(labels), times, rows[m.signal].to_numpy(dtype=float) / m.scale)
        for m in DCGM_METRICS
    ]
    free = (rows["mem_total_bytes"] - rows["mem_used_bytes"]).to_numpy(dtype=float) / MIB
    out.append(Series(DCGM_FB_FREE, dict(labels), times, free))
    return out


def dcgm_labels(host: str, gpu: int, job: dict[str, str], *, host_label: str = "Hostname") -> dict[str, str]:
    return {
        "gpu": str(gpu),
        "UUID": f"GPU-{zlib.crc32(host.encode()):08x}-1c2d-3e4f-5a6b-7c8d9e0f{gpu:04x}",
        "pci_bus_id": f"00000000:{0x18 + 0x10 * gpu:02X}:00.0",
        "device": f"nvidia{gpu}",
        "modelName": "NVIDIA H100 80GB HBM3",
        host_label: host,
        **job,
    }


def jobstats_gpu(rng: np.random.Generator, start: int, count: int, labels: dict[str, str]) -> list[Series]:
    """The jobstats exporter's series of one GPU: GPM ``_percent`` series hold 0-1 fractions."""
    times = _times(start, count)
    total = 85520809984.0
    values = {
        "nvidia_gpu_duty_cycle": rng.integers(0, 101, count).astype(float),
        "nvidia_gpu_memory_used_bytes": rng.integers(10**9, 8 * 10**10, count).astype(float),
        "nvidia_gpu_memory_total_bytes": np.full(count, total),
        "nvidia_gpu_power_usage_milliwatts": rng.integers(70_000, 700_000, count).astype(float),
        "nvidia_gpu_sm_util_percent": _sm_active(rng, count),
        "nvidia_gpu_sm_occupancy_percent": np.round(rng.uniform(0.05, 0.6, count), 6),
        "nvidia_gpu_any_tensor_util_percent": np.round(rng.uniform(0.0, 0.7, count), 6),
        "nvidia_gpu_dram_bw_util_percent": np.round(rng.uniform(0.05, 0.8, count), 6),
    }
    return [Series(name, dict(labels), times, v) for name, v in values.items()]


def jobstats_labels(instance: str, minor: int, jobid: str) -> dict[str, str]:
    return {
        "cluster": "della",
        "instance": instance,
        "job": "nvidia_gpu_prometheus_exporter",
        "jobid": jobid,
        "minor_number": str(minor),
        "name": "NVIDIA H100 80GB HBM3",
        "ordinal": str(minor),
        "userid": "271828",
        "uuid": f"GPU-0a1b2c3d-{minor:04d}-4e5f-8a9b-0c1d2e3f4a5b",
    }


WEIRD_JOB = 'we"ird}\\job'
ENERGY_COUNTER = "zest_test_energy_millijoules_total"
ENERGY_POWER_WATTS = 300.0


def simulated_jobs(now: float, seed: int = 20260611) -> dict[str, SimJob]:
    """The jobs the tests read, placed in the last ten hours before ``now``; three are still running."""
    rng = np.random.default_rng(seed)
    t0 = int(now // 3600) * 3600 - 10 * 3600
    jobs: dict[str, SimJob] = {}

    # Slurm, two nodes x two GPUs, 3 h; the second node starts 60 s later and stops 10 minutes earlier.
    job = SimJob("slurm-4242", "dcgm")
    for node, (delay, count) in enumerate([(0, 361), (60, 339)]):
        for gpu in range(2):
            labels = dcgm_labels(f"gpu-a0{node + 1}", gpu, {"hpc_job": job.job_id})
            job.series += dcgm_gpu(rng, t0 + 90 + delay, count, labels)
    # A counter on one GPU: energy at a constant 300 W.
    energy_times = _times(t0 + 90, 361)
    energy = ENERGY_POWER_WATTS * 1000.0 * SCRAPE_SECONDS * np.arange(361, dtype=float)
    labels = dcgm_labels("gpu-a01", 0, {"hpc_job": job.job_id})
    job.series.append(Series(ENERGY_COUNTER, labels, energy_times, energy))
    jobs[job.job_id] = job

    # A job sharing gpu-a01's GPU 1 with slurm-4242 (dcgm-exporter then writes one copy per job),
    # its id holding every character PromQL strings must escape.
    job = SimJob(WEIRD_JOB, "dcgm")
    job.series += dcgm_gpu(rng, t0 + 1800, 120, dcgm_labels("gpu-a01", 1, {"hpc_job": WEIRD_JOB}))
    jobs[job.job_id] = job

    # Kubernetes pod, the newer lower-case hostname label, no FB_RESERVED, NVLink from the DCP pair.
    job = SimJob("ml/bert-train-0", "dcgm")
    pod = {"namespace": "ml", "pod": "bert-train-0", "container": "trainer"}
    for gpu in range(2):
        labels = dcgm_labels("k8s-node-7", gpu, pod, host_label="hostname")
        job.series += dcgm_gpu(rng, t0 + 1830, 240, labels, reserved=False, nvlink="dcp")
    jobs[job.job_id] = job

    # Two MIG instances of one A100 for one Slurm job.
    job = SimJob("slurm-5001", "dcgm")
    for instance in ("1", "2"):
        labels = dcgm_labels("gpu-b01", 0, {"hpc_job": job.job_id})
        labels |= {"modelName": "NVIDIA A100-SXM4-80GB", "GPU_I_PROFILE": "3g.40gb", "GPU_I_ID": instance}
        job.series += dcgm_gpu(rng, t0 + 3600, 200, labels, mig=True, nvlink="", memory_mib=40192)
    jobs[job.job_id] = job

    # dcgm-exporter's default counters only: no profiling metrics.
    job = SimJob("slurm-6001", "dcgm")
    labels = dcgm_labels("gpu-c01", 3, {"hpc_job": job.job_id})
    job.series += dcgm_gpu(rng, t0 + 7200, 150, labels, profiling=False)
    jobs[job.job_id] = job

    # jobstats exporter, two GPUs of one node.
    job = SimJob("880123", "jobstats")
    for minor in range(2):
        job.series += jobstats_gpu(rng, t0 + 600, 300, jobstats_labels("della-l01g3:9445", minor, "880123"))
    jobs[job.job_id] = job

    # Still running: their last sample is one scrape before now.
    last = int(now // SCRAPE_SECONDS) * SCRAPE_SECONDS - SCRAPE_SECONDS
    running_start = last - 119 * SCRAPE_SECONDS
    job = SimJob("slurm-7001", "dcgm")
    job.series += dcgm_gpu(rng, running_start, 120, dcgm_labels("gpu-d01", 0, {"hpc_job": job.job_id}))
    jobs[job.job_id] = job
    job = SimJob("ml/live-pod-1", "dcgm")
    pod = {"namespace": "ml", "pod": "live-pod-1", "container": "trainer"}
    job.series += dcgm_gpu(rng, running_start, 120, dcgm_labels("k8s-node-8", 0, pod, host_label="hostname"))
    jobs[job.job_id] = job
    job = SimJob("880999", "jobstats")
    job.series += jobstats_gpu(rng, running_start, 120, jobstats_labels("della-l02g1:9445", 0, "880999"))
    jobs[job.job_id] = job
    return jobs


@pytest.fixture(scope="session")
def prometheus_dataset(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dataset]:
    """A real Prometheus serving :func:`simulated_jobs`, stopped by pid at the end of the session."""
    prometheus, promtool = require_binaries()
    work = tmp_path_factory.mktemp("prometheus")
    jobs = simulated_jobs(time.time())
    openmetrics = work / "jobs.om"
    samples = write_openmetrics(openmetrics, (s for job in jobs.values() for s in job.series))
    data_dir = work / "data"
    backfill(promtool, openmetrics, data_dir)
    server = start_prometheus(prometheus, data_dir, work)
    try:
        yield Dataset(server.url, jobs, samples)
    finally:
        server.stop()
