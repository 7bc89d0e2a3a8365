"""``zest serve --slurm`` against a real one-node Slurm (tests/slurmcluster.py) and a real Prometheus: each
running Slurm job is weighed with its time limit as T and its user's earlier jobs of its name as R, the
questions ``estimate-z`` asks; the config's overrides still win."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from promserver import (
    SCRAPE_SECONDS,
    backfill,
    dcgm_gpu,
    dcgm_labels,
    free_port,
    require_binaries,
    start_prometheus,
    write_openmetrics,
)
from slurmcluster import SlurmCluster

from collectors.slurm import Slurm, subprocess_runner
from estimator.serving.config import ServeConfig, parse_config
from estimator.serving.runner import SlurmInputs

REPO = Path(__file__).parent.parent
NAME = "zest-serve-nightly"  # the job name whose history gives R
HISTORY = 2  # earlier jobs of that name, finished


def earlier_runs(cluster: SlurmCluster, name: str, count: int) -> None:
    """``count`` finished jobs named ``name``, as sacct shows them."""
    for _ in range(count):
        job = cluster.submit("-J", name, command="true")
        cluster.wait_accounted(job, "COMPLETED", name=name)


def test_slurm_inputs_give_time_limit_and_history(slurm_cluster: SlurmCluster) -> None:
    earlier_runs(slurm_cluster, NAME, HISTORY)
    job = slurm_cluster.submit_running("-J", NAME, "--time=150:00:00")
    fresh = slurm_cluster.submit_running("-J", "zest-serve-fresh", "--time=2:30:00")
    try:
        asked: list[list[str]] = []
        real = subprocess_runner(env=slurm_cluster.env)

        def runner(argv: list[str]) -> subprocess.CompletedProcess[str]:
            asked.append(list(argv))
            return real(argv)

        inputs = SlurmInputs(Slurm(runner))
        found = inputs([job, fresh, "ml/trainer-0", "987654"])
        assert found == {
            job: {"duration_hours": 150.0, "reuse": float(HISTORY)},
            fresh: {"duration_hours": 2.5, "reuse": 1.0},  # never run before: one run
            "987654": {},  # a Slurm id Slurm does not hold: the config's values
        }
        questions = len(asked)
        assert inputs([job, fresh]) == {k: found[k] for k in (job, fresh)}
        assert len(asked) == questions  # asked once per job, not every cycle

        config = parse_config(
            {
                "defaults": {"duration_hours": 24, "reuse": 3},
                "override": [{"match": {"job_id": job}, "reuse": 7}],
            }
        )
        # Slurm replaces [defaults]; a matching [[override]] still wins.
        assert (config.for_job(job, found[job]).duration_hours, config.for_job(job, found[job]).reuse) == (
            150.0,
            7.0,
        )
        assert config.for_job(fresh, found[fresh]).duration_hours == 2.5
        assert config.for_job("987654", found["987654"]).reuse == 3.0
        assert ServeConfig().for_job(job).duration_hours == 24.0  # without Slurm, as before
    finally:
        slurm_cluster.run(["scancel", job, fresh])


def _metric(text: str, name: str, job_id: str) -> float | None:
    found = re.search(rf'^{name}\{{job_id="{re.escape(job_id)}"(?:,[^}}]*)?\}} (\S+)$', text, re.M)
    return float(found[1]) if found else None


def test_serve_with_slurm_exports_each_jobs_t_and_r(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    prometheus, promtool = require_binaries()
    earlier_runs(slurm_cluster, f"{NAME}-cli", HISTORY)
    job = slurm_cluster.submit_running("-J", f"{NAME}-cli", "--time=150:00:00")
    other = slurm_cluster.submit_running("-J", "zest-serve-override", "--time=10:00:00")
    source = None
    zest = None
    try:
        # Ten minutes of dcgm-exporter series of both jobs, the last a scrape ago: both running.
        rng = np.random.default_rng(11)
        count = 20
        last = int(time.time() // SCRAPE_SECONDS) * SCRAPE_SECONDS - SCRAPE_SECONDS
        first = last - (count - 1) * SCRAPE_SECONDS
        series = [
            *dcgm_gpu(rng, first, count, dcgm_labels("gpu-s01", 0, {"hpc_job": job})),
            *dcgm_gpu(rng, first, count, dcgm_labels("gpu-s02", 0, {"hpc_job": other})),
        ]
        openmetrics = tmp_path / "jobs.om"
        write_openmetrics(openmetrics, series)
        backfill(promtool, openmetrics, tmp_path / "data")
        work = tmp_path / "prometheus"
        work.mkdir()
        source = start_prometheus(prometheus, tmp_path / "data", work)
        config = tmp_path / "zest.toml"
        config.write_text(
            f'[defaults]\nreuse = 4\n\n[[override]]\nmatch = {{ job_id = "{other}" }}\nduration_hours = 3\n'
        )
        port = free_port()
        log = tmp_path / "zest.err"
        with log.open("wb") as err:
            zest = subprocess.Popen(
                [sys.executable, "-m", "estimator.cli", "serve", "--slurm", "--source",
                 f"prometheus={source.url}", "--listen", f"127.0.0.1:{port}", "--interval", "1s",
                 "--window", "15m", "--config", str(config)],
                stderr=err, stdout=subprocess.DEVNULL, cwd=REPO, env=slurm_cluster.env,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            try:
                text = requests.get(url, timeout=5).text
            except requests.ConnectionError:
                text = ""
            if _metric(text, "zest_job_duration_seconds", other) is not None:
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"zest exported no estimate of job {other}\n{log.read_text()[-3000:]}", pytrace=False)
        # T from the job's time limit, R from its history (replacing the config's [defaults] reuse = 4).
        assert _metric(text, "zest_job_duration_seconds", job) == 150 * 3600
        assert _metric(text, "zest_job_reuse_runs", job) == HISTORY
        # The override of the other job wins over its time limit; it has no history: R = 1.
        assert _metric(text, "zest_job_duration_seconds", other) == 3 * 3600
        assert _metric(text, "zest_job_reuse_runs", other) == 1
        zest.send_signal(signal.SIGTERM)
        assert zest.wait(timeout=30) == 0, log.read_text()
        assert 'msg="config loaded"' in log.read_text() and "slurm=true" in log.read_text()
    finally:
        if zest is not None and zest.poll() is None:
            zest.kill()
            zest.wait()
        if source is not None:
            source.stop()
        slurm_cluster.run(["scancel", job, other])


def test_serve_slurm_without_slurm_commands_exits_11(tmp_path: Path) -> None:
    """--slurm on a host without Slurm's commands: the scheduler's exit code, one line, before listening."""
    result = subprocess.run(
        [sys.executable, "-m", "estimator.cli", "serve", "--slurm", "--source", "prometheus=http://127.0.0.1:9",
         "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={"PATH": str(tmp_path), "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 11, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("zest: error: --slurm: Slurm's scontrol is not installed here")
