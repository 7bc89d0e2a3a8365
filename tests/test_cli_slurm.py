"""``estimate-z`` on a Slurm job, against a real one-node Slurm: the scheduler gives G, T and the window."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from slurmcluster import SlurmCluster

from collectors.files import write_capture
from collectors.slurm import Slurm, subprocess_runner


def estimate(cluster: SlurmCluster, *args: str) -> subprocess.CompletedProcess[str]:
    code = "from estimator.cli.main import estimate_z_main; estimate_z_main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=cluster.env, timeout=120
    )


def node_capture(path: Path, host: str, seconds: int, busy_gpus: tuple[int, ...]) -> None:
    """The last ``seconds`` of 1 Hz telemetry of a node's 4 GPUs, without job labels: ``busy_gpus`` busy."""
    now = pd.Timestamp.now(tz="UTC").floor("s")
    times = pd.date_range(now - pd.Timedelta(seconds=seconds), now, freq="1s")
    rows = []
    for gpu in range(4):
        busy = gpu in busy_gpus
        rows.append(
            pd.DataFrame(
                {
                    "timestamp": times,
                    "host": host,
                    "gpu": str(gpu),
                    "gpu_model": "NVIDIA A100-SXM4-80GB",
                    "gpu_util_ratio": 0.97 if busy else 0.0,
                    "sm_active_ratio": np.full(len(times), 0.6 if busy else 0.0),
                    "mem_used_bytes": 30e9 if busy else 0.5e9,
                    "mem_total_bytes": 80e9,
                    "power_watts": 400.0 if busy else 60.0,
                }
            )
        )
    write_capture(pd.concat(rows), path)


def test_a_running_job_gives_gpus_duration_and_window(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = slurm_cluster.submit_running("--gres=gpu:2", "--time=150:00:00", "-J", "zest-cli")
    try:
        (placed,) = Slurm(subprocess_runner(env=slurm_cluster.env)).job(job).gpus_per_node
        time.sleep(3)  # a few seconds of run, so the window holds samples
        capture = tmp_path / "node.parquet"
        node_capture(capture, slurm_cluster.node, 600, placed.indices)
        result = estimate(slurm_cluster, "--job-id", job, "--source", str(capture), "--output", "json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["inputs"]["gpus"] == 2 and doc["inputs"]["duration_hours"] == 150
        notes = " | ".join(doc["notes"])
        assert f"G = 2 GPUs from Slurm job {job}" in notes and f"T = 150 h from Slurm job {job}" in notes
        assert "its run so far" in notes
        # narrowed to the job: its two GPUs (the busy ones), only since it started
        features = doc["telemetry"]["features"]
        assert features["gpus"] == 2 and features["sm_active_mean_ratio"] == 0.6
        assert features["window_seconds"] < 60

        # explicit options override the scheduler, and their notes go
        result = estimate(
            slurm_cluster, "--job-id", job, "--gpus", "16", "--duration-hours", "40", "--z-expected", "20",
            "--output", "json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["inputs"]["gpus"] == 16 and doc["inputs"]["duration_hours"] == 40
        assert not any("from Slurm job" in n and ("G =" in n or "T =" in n) for n in doc["notes"])
    finally:
        slurm_cluster.run(["scancel", job])


def test_unknown_job_id_has_its_own_exit_code(slurm_cluster: SlurmCluster) -> None:
    result = estimate(slurm_cluster, "--job-id", "987654", "--z-expected", "20")
    assert result.returncode == 10, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "987654" in lines[0] and "--no-slurm" in lines[0]
    # without Slurm, the rest keeps working
    result = estimate(
        slurm_cluster, "--job-id", "987654", "--no-slurm", "--duration-hours", "10", "--z-expected", "20"
    )
    assert result.returncode == 0, result.stderr
