"""End to end: a real Prometheus holding dcgm-exporter series, ``zest serve`` against it, a second
Prometheus scraping zest, and every query of both dashboards answered with data.

The source Prometheus holds an hour of backfilled history of running jobs and
goes on scraping a small live dcgm-exporter stand-in every second (series
labelled exactly as the backfill, so history and live samples form one
series). A job ends by leaving the stand-in's output, as dcgm-exporter drops
a job's series when its mapping file goes. The source Prometheus is stopped
and restarted mid-run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from promserver import (
    SCRAPE_SECONDS,
    PromServer,
    Series,
    backfill,
    dcgm_from_telemetry,
    dcgm_gpu,
    dcgm_labels,
    free_port,
    jobstats_gpu,
    jobstats_labels,
    require_binaries,
    start_prometheus,
    write_openmetrics,
)

from collectors.sources import read_job

REPO = Path(__file__).parent.parent
DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
RULES = REPO / "grafana" / "zest.rules.yml"
HISTORY_SCRAPES = 120  # an hour at 30 s
WAIT_SECONDS = 40.0

# job id -> (host, GPU indices, job labels); all dcgm-exporter, two Slurm jobs and a pod.
LIVE_JOBS: dict[str, tuple[str, tuple[int, ...], dict[str, str]]] = {
    "slurm-9101": ("gpu-e01", (0, 1), {"hpc_job": "slurm-9101"}),
    "slurm-9102": ("gpu-e02", (0,), {"hpc_job": "slurm-9102"}),
    "ml/trainer-0": ("k8s-node-9", (0,), {"namespace": "ml", "pod": "trainer-0", "container": "main"}),
}
#: The job whose verdict proceeds (long, often reused, telemetry like a job the model learned from).
RECOMMENDED_JOB = "slurm-9101"
BACKFILLED_ONLY = "990001"  # a jobstats job whose last sample is a scrape ago: running within the lookback


class LiveExporter:
    """Serves the current dcgm-exporter text for the live jobs; a job removed stops being served."""

    def __init__(self, series: dict[str, list[Series]]) -> None:
        self.series = series  # job id -> its series (labels and the value range to draw from)
        self.lock = threading.Lock()
        self.rng = np.random.default_rng(7)
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.server_port}"

    def end(self, job_id: str) -> None:
        with self.lock:
            del self.series[job_id]

    def render(self) -> str:
        by_name: dict[str, list[str]] = {}
        with self.lock:
            for job_series in self.series.values():
                for one in job_series:
                    value = float(self.rng.choice(one.values))  # a value the series has taken
                    labels = ",".join(f'{k}="{v}"' for k, v in one.labels.items())
                    by_name.setdefault(one.name, []).append(f"{one.name}{{{labels}}} {value!r}")
        lines = []
        for name, members in by_name.items():
            lines += [f"# TYPE {name} gauge", *members]
        return "\n".join(lines) + "\n"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Stack:
    source: PromServer
    source_port: int
    source_config: str
    source_data: Path
    source_work: Path
    exporter: LiveExporter
    zest_url: str
    zest: subprocess.Popen[bytes]
    zest_log: Path
    scraper: PromServer


def _source_config(target: str) -> str:
    return f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: dcgm
    scrape_interval: 1s
    static_configs:
      - targets: ["{target}"]
    metric_relabel_configs:  # the backfilled history has neither label: one series, not two
      - action: labeldrop
        regex: "instance|job"
"""


def _wait(
    what: str, check: Callable[[], bool], log: Path | None = None, timeout: float = WAIT_SECONDS
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (requests.ConnectionError, requests.Timeout, KeyError):
            pass
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}", pytrace=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus, promtool = require_binaries()
    work = tmp_path_factory.mktemp("e2e")
    rng = np.random.default_rng(20260612)
    now = time.time()
    last = int(now // SCRAPE_SECONDS) * SCRAPE_SECONDS - SCRAPE_SECONDS
    first = last - (HISTORY_SCRAPES - 1) * SCRAPE_SECONDS
    live: dict[str, list[Series]] = {}
    history: list[Series] = []
    example = read_job("example", "gpt-1.3b-a100-tp4").frame  # a job the model has learned from
    assert example is not None
    for job_id, (host, gpus, job_labels) in LIVE_JOBS.items():
        for gpu in gpus:
            host_label = "hostname" if "pod" in job_labels else "Hostname"
            labels = dcgm_labels(host, gpu, job_labels, host_label=host_label)
            if job_id == RECOMMENDED_JOB:  # telemetry like the example's, so that a verdict proceeds
                one_gpu = example[example["gpu"] == str(gpu)].reset_index(drop=True)
                series = dcgm_from_telemetry(one_gpu, first, HISTORY_SCRAPES, labels)
            else:  # noise unlike any training job: wide intervals
                series = dcgm_gpu(rng, first, HISTORY_SCRAPES, labels)
            history += series
            live.setdefault(job_id, []).extend(series)
    history += jobstats_gpu(
        rng, first, HISTORY_SCRAPES, jobstats_labels("della-l09g1:9445", 0, BACKFILLED_ONLY)
    )
    openmetrics = work / "history.om"
    write_openmetrics(openmetrics, history)
    source_data = work / "source-data"
    backfill(promtool, openmetrics, source_data)

    exporter = LiveExporter(live)
    source_work = work / "source"
    source_work.mkdir()
    source_port = free_port()
    source_config = _source_config(exporter.target)
    source = start_prometheus(
        prometheus, source_data, source_work, config_text=source_config, port=source_port
    )

    config = work / "zest.toml"
    # A long, often reused job, so that some verdict proceeds and a job is recommended; the others' T is
    # not configured, so the panels of the bounds from the elapsed time have jobs too.
    # detail: the per-GPU and feature series too, so that the dashboards' detail rows have data as well.
    config.write_text(
        "[serve]\ndetail = true\n\n"
        '[[override]]\nmatch = { job_id = "slurm-9101" }\nduration_hours = 500\nreuse = 40\n'
    )
    zest_port = free_port()
    zest_log = work / "zest.log"
    with zest_log.open("wb") as log:
        zest = subprocess.Popen(
            [sys.executable, "-m", "estimator.cli", "serve", "--source", f"prometheus={source.url}",
             "--listen", f"127.0.0.1:{zest_port}", "--interval", "1s", "--window", "2h", "--step", "1s",
             "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
    zest_url = f"http://127.0.0.1:{zest_port}/metrics"
    scraper_work = work / "scraper"
    scraper_work.mkdir()
    scraper = start_prometheus(
        prometheus,
        scraper_work / "data",
        scraper_work,
        config_text=f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{RULES}"]
scrape_configs:
  - job_name: zest
    static_configs:
      - targets: ["127.0.0.1:{zest_port}"]
""",
    )
    stack = Stack(
        source,
        source_port,
        source_config,
        source_data,
        source_work,
        exporter,
        zest_url,
        zest,
        zest_log,
        scraper,
    )
    try:
        yield stack
    finally:
        if zest.poll() is None:
            os.kill(zest.pid, signal.SIGTERM)
            try:
                zest.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(zest.pid, signal.SIGKILL)
                zest.wait()
        scraper.stop()
        stack.source.stop()
        exporter.stop()


def metrics_of(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = requests.get(url, timeout=5).text
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def zest_jobs(url: str) -> set[str]:
    return {dict(k)["job_id"] for k in metrics_of(url).get("zest_job_z_expected_ratio", {})}


def query(server: str, expr: str) -> list[dict[str, Any]]:
    answer = requests.post(f"{server}/api/v1/query", data={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", f"{expr}: {answer}"
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def dashboard_queries(job_id: str) -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expression) of every target, ``$job`` filled in."""
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = re.sub(r"\$\{?job\}?", job_id, target["expr"])
                found.append((path.name, panel["title"], expr))
    return found


EVERY_JOB = {*LIVE_JOBS, BACKFILLED_ONLY}


def test_every_dashboard_query_has_data(stack: Stack) -> None:
    _wait("zest to export every running job", lambda: zest_jobs(stack.zest_url) == EVERY_JOB, stack.zest_log)
    _wait(
        "the second Prometheus to hold zest's series of every job",
        lambda: (
            {r["metric"]["job_id"] for r in query(stack.scraper.url, "zest_job_z_expected_ratio")}
            == EVERY_JOB
        ),
        stack.zest_log,
    )
    # rate() in the health panel needs two scrapes of the error counter.
    _wait("two scrapes", lambda: bool(query(stack.scraper.url, "rate(zest_source_errors_total[5m])")))
    variable = requests.get(
        f"{stack.scraper.url}/api/v1/label/job_id/values",
        params={"match[]": "zest_job_z_expected_ratio"},
        timeout=5,
    ).json()["data"]
    assert set(variable) == EVERY_JOB  # the job dashboard's variable lists them
    queries = dashboard_queries("slurm-9101")
    assert len(queries) >= 30
    empty = [f"{d} / {title}: {expr}" for d, title, expr in queries if not query(stack.scraper.url, expr)]
    assert not empty, "queries without data:\n" + "\n".join(empty)
    # The override reached the long job only.
    reuse = {
        r["metric"]["job_id"]: float(r["value"][1]) for r in query(stack.scraper.url, "zest_job_reuse_runs")
    }
    assert reuse == {"slurm-9101": 40.0, "slurm-9102": 1.0, "ml/trainer-0": 1.0, BACKFILLED_ONLY: 1.0}
    # The recording rules evaluate on real series.
    _wait(
        "recording rules",
        lambda: bool(query(stack.scraper.url, "job_id:zest_job_net_saving_gpu_seconds:max")),
    )


def test_live_metrics_pass_promtool_and_use_batched_queries(stack: Stack) -> None:
    _, promtool = require_binaries()
    _wait("zest's first estimates", lambda: bool(zest_jobs(stack.zest_url)), stack.zest_log)
    text = requests.get(stack.zest_url, timeout=5).text
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0 and not checked.stdout and not checked.stderr, (
        checked.stdout + checked.stderr
    )
    metrics = metrics_of(stack.zest_url)
    assert metrics["zest_cycle_duration_seconds"][()] < 5
    # Two Slurm GPUs of slurm-9101 on gpu-e01, from history plus live samples.
    gpus = {dict(k)["gpu"] for k in metrics["zest_gpu_sm_active_ratio"] if dict(k)["job_id"] == "slurm-9101"}
    assert gpus == {"0", "1"}
    window = metrics["zest_job_window_seconds"][(("job_id", "slurm-9101"),)]
    assert window >= (HISTORY_SCRAPES - 1) * SCRAPE_SECONDS  # the backfilled hour and the live part


def test_a_job_that_ends_disappears(stack: Stack) -> None:
    _wait("slurm-9102 exported", lambda: "slurm-9102" in zest_jobs(stack.zest_url), stack.zest_log)
    stack.exporter.end("slurm-9102")
    _wait("slurm-9102 to disappear", lambda: "slurm-9102" not in zest_jobs(stack.zest_url), stack.zest_log)
    assert zest_jobs(stack.zest_url) == EVERY_JOB - {"slurm-9102"}
    text = requests.get(stack.zest_url, timeout=5).text
    assert "slurm-9102" not in text
    # The change of the number of jobs is logged, once.
    found = f'msg="jobs found" jobs={len(EVERY_JOB) - 1} source=prometheus'
    _wait("the jobs found line", lambda: found in stack.zest_log.read_text(), stack.zest_log)


def test_source_down_marks_stale_counts_errors_and_recovers(stack: Stack) -> None:
    _wait("a successful cycle", lambda: metrics_of(stack.zest_url)["zest_estimates_stale"][()] == 0.0)
    before = zest_jobs(stack.zest_url)
    stack.source.stop()

    def errors() -> float:
        # Refused connections once it is down; a shutting-down server may first answer with an error.
        counts = metrics_of(stack.zest_url)["zest_source_errors_total"]
        return sum(v for k, v in counts.items() if dict(k)["source"] == "prometheus")

    _wait(
        "zest to mark its estimates stale",
        lambda: metrics_of(stack.zest_url)["zest_estimates_stale"][()] == 1.0,
    )
    assert errors() >= 1, metrics_of(stack.zest_url)["zest_source_errors_total"]
    assert zest_jobs(stack.zest_url) == before  # the last good estimates are still served
    prometheus, _ = require_binaries()
    stack.source = start_prometheus(
        prometheus,
        stack.source_data,
        stack.source_work,
        config_text=stack.source_config,
        port=stack.source_port,
    )
    _wait(
        "zest to recover by itself",
        lambda: metrics_of(stack.zest_url)["zest_estimates_stale"][()] == 0.0,
        stack.zest_log,
    )
    assert zest_jobs(stack.zest_url) == before
    stale = query(stack.scraper.url, "max_over_time(zest_estimates_stale[1m])")
    assert stale and float(stale[0]["value"][1]) == 1.0  # the second Prometheus saw the stale spell
    # One line when the source went down and one when it came back, whatever the cycles in between.
    logged = stack.zest_log.read_text().splitlines()
    assert sum('msg="source down:' in line for line in logged) == 1, logged
    assert sum('msg="source up:' in line for line in logged) == 1, logged
