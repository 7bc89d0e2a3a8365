"""Choosing a source and reading one job from it: NVML narrowed to the job's GPUs, Prometheus down."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
from fake_nvml import FakeClock, healthy_h100x2
from promserver import (
    dcgm_gpu,
    dcgm_labels,
    free_port,
    served,
)

from collectors import schema
from collectors.errors import JobNotFound, SourceUnavailable
from collectors.nvml import NvmlSource
from collectors.sources import example_jobs, read_job
from estimator.cli import main as cli_main
from estimator.cli.main import capture, estimate
from estimator.cli.options import HPC_JOB_MAPPING_DIR_ENV


def nvml_with_our_process_on_gpu_1() -> NvmlSource:
    clock = FakeClock()
    fake = healthy_h100x2(clock)
    fake.gpus[1].pids = [os.getpid()]
    return NvmlSource(nvml=fake, clock=clock.time, sleep=clock.sleep, host="node-a")


def test_nvml_reads_only_the_gpus_of_the_job() -> None:
    telemetry = read_job(
        "nvml", f"pid:{os.getpid()}", window_seconds=5, nvml_factory=nvml_with_our_process_on_gpu_1
    )
    assert telemetry.frame is not None
    assert set(telemetry.frame[schema.GPU]) == {"1"}
    assert set(telemetry.frame[schema.JOB_ID]) == {f"pid:{os.getpid()}"}
    assert len(telemetry.frame) == 5
    assert any("GPU(s) 1" in note for note in telemetry.notes)


def test_nvml_job_on_no_gpu_of_this_host_is_not_found() -> None:
    with pytest.raises(JobNotFound):
        read_job("nvml", "slurm:987654", window_seconds=5, nvml_factory=nvml_with_our_process_on_gpu_1)


def test_nvml_finds_a_slurm_job_in_dcgm_exporters_mapping_folder(tmp_path: Path) -> None:
    (tmp_path / "0").write_text("5151\n")
    telemetry = read_job(
        "nvml",
        "slurm:5151",
        window_seconds=5,
        hpc_job_dir=tmp_path,
        nvml_factory=nvml_with_our_process_on_gpu_1,
    )
    assert telemetry.frame is not None
    assert set(telemetry.frame[schema.GPU]) == {"0"}
    assert any(str(tmp_path) in note for note in telemetry.notes)


@pytest.mark.parametrize(("command", "argv"), [(estimate, []), (capture, ["--output", "c.parquet"])])
def test_the_mapping_folder_is_read_from_dcgm_exporters_variable(
    command: click.Command, argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command line reads the folder from the variable dcgm-exporter reads."""
    monkeypatch.setenv(HPC_JOB_MAPPING_DIR_ENV, str(tmp_path))
    context = command.make_context(command.name, ["--job-id", "1", *argv])
    assert context.params["hpc_job_dir"] == tmp_path


def test_the_mapping_folder_in_the_environment_reaches_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: dict[str, object] = {}

    def read_nothing(source: str | None, job_id: str, **options: object) -> None:
        asked.update(options)
        raise JobNotFound("nothing here")

    monkeypatch.setattr(cli_main, "read_job", read_nothing)
    monkeypatch.setenv(HPC_JOB_MAPPING_DIR_ENV, str(tmp_path))
    with pytest.raises(SystemExit) as ended:
        cli_main.main(["capture", "--job-id", "1", "--output", str(tmp_path / "c.parquet")])
    assert ended.value.code == JobNotFound.exit_code
    assert asked["hpc_job_dir"] == tmp_path


def test_examples_are_bundled() -> None:
    assert {"gpt-1.3b-a100-tp4", "gpt-1.3b-a100-dp8", "gpt-7b-h100-pp4"} <= set(example_jobs())


def test_default_source_without_driver_says_what_to_give() -> None:
    with pytest.raises(SourceUnavailable, match="--source"):
        read_job(None, "4242")


@pytest.mark.parametrize("env", [{}, {"ZEST_PROMETHEUS_USER": "alice", "ZEST_PROMETHEUS_PASSWORD": "s3cret"}])
def test_prometheus_down_is_exit_3_and_hides_credentials(env: dict[str, str]) -> None:
    url = f"http://bob:hunter2@127.0.0.1:{free_port()}" if not env else f"http://127.0.0.1:{free_port()}"
    code = "from estimator.cli.main import main; main()"
    args = ["estimate", "--job-id", "4242", "--source", f"prometheus={url}", "--duration-hours", "150"]
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert result.returncode == 3, result.stderr
    assert len(result.stderr.splitlines()) == 1
    for secret in ("hunter2", "s3cret", "bob:", "alice"):
        assert secret not in result.stderr


def test_prometheus_series_without_job_labels_are_narrowed_to_the_jobs_nodes_and_gpus(tmp_path: Path) -> None:
    """A scheduler placement selects unlabelled dcgm-exporter series by host (FQDN or short) and GPU index."""
    rng = np.random.default_rng(7)
    start, count = int(time.time()) - 2 * 3600, 60
    series = [
        one
        for host in ("gpu-a.cluster.local", "gpu-b.cluster.local", "gpu-c.cluster.local")
        for gpu in range(4)
        for one in dcgm_gpu(rng, start, count, dcgm_labels(host, gpu, {}))
    ]
    with served(series, tmp_path, "nodes") as server:
        with pytest.raises(JobNotFound):  # no job label, no placement: nothing selects it
            read_job(f"prometheus={server.url}", "77")
        telemetry = read_job(f"prometheus={server.url}", "77", placement={"gpu-a": (0, 1), "gpu-b": (0, 1)})
    assert telemetry.summary is not None
    placed = set(zip(telemetry.summary[schema.HOST], telemetry.summary[schema.GPU], strict=True))
    assert placed == {(h, g) for h in ("gpu-a.cluster.local", "gpu-b.cluster.local") for g in ("0", "1")}
    assert any("Hostname=~" in n for n in telemetry.notes)  # the note says how the job was selected
