"""zest's recording rules (grafana/zest-gpu.rules.yml) and the Prometheus source's use of them.

The rules are unit-tested with ``promtool test rules``. For the source, the same simulated jobs are
backfilled twice: one Prometheus holds raw samples only, the other also the rules' tiles, written by
``promtool tsdb create-blocks-from rules`` (a real Prometheus evaluates rules only going forward;
backfilling the recorded history is that command's job), evaluated every 5 minutes from one hour
after the jobs began. A cycle's summary must then agree with and without the tiles, and read fewer
samples with them.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from promserver import (
    PromServer,
    Series,
    backfill,
    dcgm_gpu,
    dcgm_labels,
    jobstats_gpu,
    jobstats_labels,
    require_binaries,
    start_prometheus,
    write_openmetrics,
)

from collectors import metrics
from collectors.prometheus import JobsSummary, PrometheusSource, recording_rules
from collectors.schema import GPU, HOST, JOB_ID, SUMMARY_COLUMNS

GRAFANA = Path(__file__).resolve().parent.parent / "grafana"
RULES = GRAFANA / "zest-gpu.rules.yml"
RULES_TEST = GRAFANA / "zest-gpu.rules.test.yml"
TILE_SECONDS = metrics.RECORDING_INTERVAL_SECONDS
HOUR = 3600


def test_rules_file_is_what_the_source_reads() -> None:
    """The shipped file holds exactly the rules whose names and meaning the source relies on."""
    shipped = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert shipped == {"groups": recording_rules()}


def test_every_rule_keeps_the_labels_of_its_series() -> None:
    """No rule aggregates labels away: a recorded series is selected by the same job and GPU matchers (a sum
    of series adds its parts "without ()", which keeps every label)."""
    for group in recording_rules():
        assert group["interval"] == "5m"
        for rule in group["rules"]:
            assert rule["record"].startswith(f"{metrics.RECORDED_PREFIX}:")
            assert " by " not in rule["expr"]
            assert " without " not in rule["expr"].replace(" without () ", " ")


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    _, promtool = require_binaries()
    for command in (["check", "rules", RULES.name], ["test", "rules", RULES_TEST.name]):
        result = subprocess.run(
            [promtool, *command], cwd=GRAFANA, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


# --- a real Prometheus, with and without the rules' tiles -------------------------------------------


@dataclass
class Servers:
    raw: PromServer  # raw samples only
    recorded: PromServer  # raw samples and the rules' tiles from rules_start on
    t0: int  # the jobs' first tile boundary
    rules_start: int


def _jobs(t0: int) -> list[Series]:
    """Dcgm-exporter jobs (Slurm, Kubernetes, MIG, default counters only) and a jobstats job, 4 h each."""
    rng = np.random.default_rng(20261201)
    count = 4 * HOUR // 30
    found: list[Series] = []
    for gpu in range(2):
        found += dcgm_gpu(rng, t0, count, dcgm_labels("gpu-a01", gpu, {"hpc_job": "slurm-1"}))
    pod = {"namespace": "ml", "pod": "pod-a", "container": "trainer"}
    found += dcgm_gpu(
        rng, t0 + 330, count - 20, dcgm_labels("k8s-7", 0, pod, host_label="hostname"), nvlink="dcp"
    )
    for instance in ("1", "2"):
        labels = dcgm_labels("gpu-b01", 0, {"hpc_job": "slurm-mig"})
        labels |= {"modelName": "NVIDIA A100-SXM4-80GB", "GPU_I_PROFILE": "3g.40gb", "GPU_I_ID": instance}
        found += dcgm_gpu(rng, t0 + 60, count, labels, mig=True, nvlink="", memory_mib=40192)
    found += dcgm_gpu(
        rng, t0 + 210, count - 40, dcgm_labels("gpu-c01", 3, {"hpc_job": "slurm-2"}), profiling=False
    )
    for minor in range(2):
        found += jobstats_gpu(rng, t0, count, jobstats_labels("della-l01g3:9445", minor, "880123"))
    return found


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    prometheus, promtool = require_binaries()
    work = tmp_path_factory.mktemp("recording")
    t0 = int(time.time() // HOUR) * HOUR - 6 * HOUR
    rules_start = t0 + HOUR
    openmetrics = work / "jobs.om"
    write_openmetrics(openmetrics, _jobs(t0))
    (work / "raw").mkdir()
    (work / "recorded").mkdir()
    backfill(promtool, openmetrics, work / "raw" / "data")
    backfill(promtool, openmetrics, work / "recorded" / "data")
    raw = start_prometheus(prometheus, work / "raw" / "data", work / "raw")
    recorded: PromServer | None = None
    try:
        tiles = work / "tiles"
        result = subprocess.run(
            [
                promtool,
                "tsdb",
                "create-blocks-from",
                "rules",
                f"--start={rules_start}",
                f"--end={t0 + 5 * HOUR}",
                f"--eval-interval={TILE_SECONDS}s",
                f"--url={raw.url}",
                f"--output-dir={tiles}",
                str(RULES),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"promtool could not backfill the rules: {result.stderr[-2000:]}", pytrace=False)
        for block in tiles.iterdir():
            if block.is_dir():
                shutil.copytree(block, work / "recorded" / "data" / block.name)
        recorded = start_prometheus(prometheus, work / "recorded" / "data", work / "recorded")
        yield Servers(raw, recorded, t0, rules_start)
    finally:
        raw.stop()
        if recorded is not None:
            recorded.stop()


class _Recording(requests.Session):
    """A session that keeps every PromQL query it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[tuple[str, str]] = []  # (query, time)

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        data = dict(kwargs.get("data") or [])
        if "query" in data:
            self.queries.append((data["query"], data["time"]))
        return super().request(method, url, *args, **kwargs)


def _summarize(server: PromServer, end: float, window_seconds: float) -> tuple[JobsSummary, _Recording]:
    session = _Recording()
    found = PrometheusSource(server.url, session=session).summarize_jobs(
        window_seconds, datetime.fromtimestamp(end, UTC)
    )
    return found, session


def _samples_read(server: PromServer, queries: list[tuple[str, str]]) -> int:
    """Samples Prometheus loaded to answer ``queries`` (its ``stats=all`` count)."""
    total = 0
    for query, at in queries:
        answer = requests.post(
            f"{server.url}/api/v1/query", data={"query": query, "time": at, "stats": "all"}, timeout=30
        ).json()
        total += int(answer["data"]["stats"]["samples"]["totalQueryableSamples"])
    return total


def _by_gpu(found: JobsSummary) -> pd.DataFrame:
    return found.summary.set_index([JOB_ID, HOST, GPU]).sort_index()


# Tiles are (t - 5 m, t]: a window of one hour less 1 ms ending at a tile's t holds exactly 12 tiles.
WINDOW_SECONDS = HOUR - 0.001


def _last_tile(server: PromServer, at: int) -> float:
    """When the rules last ran at or before ``at`` (Unix s): Prometheus offsets a group's evaluations
    from the interval's multiples by a hash of the group, and promtool's backfill does likewise."""
    name = metrics.recorded_name("DCGM_FI_DEV_FB_USED", "count")
    answer = requests.post(
        f"{server.url}/api/v1/query", data={"query": f"max(timestamp({name}))", "time": at}, timeout=30
    ).json()
    return float(answer["data"]["result"][0]["value"][1])


def test_tiles_give_the_raw_summary_exactly(servers: Servers) -> None:
    """Over a window ending at an evaluation of the rules, every statistic agrees with the raw samples'."""
    end = _last_tile(servers.recorded, servers.t0 + 3 * HOUR)
    raw, raw_session = _summarize(servers.raw, end, WINDOW_SECONDS)
    tiled, tiled_session = _summarize(servers.recorded, end, WINDOW_SECONDS)

    assert not raw.recording_rules_used
    assert tiled.recording_rules_used
    assert any("no zest recording rules cover the window" in note for note in raw.notes)
    assert any("read from zest's recording rules" in note for note in tiled.notes)
    assert len(raw.summary) == 8  # every GPU and MIG instance of the five jobs
    left, right = _by_gpu(raw), _by_gpu(tiled)
    assert left.index.equals(right.index)
    for column in SUMMARY_COLUMNS:
        if column in left.columns and column not in (JOB_ID, HOST, GPU):
            pd.testing.assert_series_equal(left[column], right[column], check_exact=False, rtol=1e-12)
    # The tiles served mean, min, max, the counts and the idle share, and the queries did not grow.
    assert any("zest:DCGM_FI_PROF_SM_ACTIVE:idle_steps_5m" in q for q, _ in tiled_session.queries)
    for sum_of_series in ("DCGM_FI_DEV_FB_TOTAL", "DCGM_FI_PROF_NVLINK_TX_RX_BYTES"):  # total memory, NVLink
        assert any(f"zest:{sum_of_series}:sum_5m" in q for q, _ in tiled_session.queries)
    assert any("zest:DCGM_FI_DEV_FB_USED:first_5m" in q for q, _ in tiled_session.queries)
    assert len(tiled_session.queries) == len(raw_session.queries)
    # One more listing per exporter family only: whether the tiles cover the window's start.
    assert tiled.queries == raw.queries + 2
    read_raw = _samples_read(servers.raw, raw_session.queries)
    read_tiled = _samples_read(servers.recorded, tiled_session.queries)
    assert read_tiled < 0.75 * read_raw, (read_tiled, read_raw)


def test_window_before_the_rules_began_falls_back_to_raw_samples(servers: Servers) -> None:
    """Tiles that begin inside the window would miss its start: the cycle reads raw samples instead."""
    end = servers.rules_start + HOUR // 2
    raw, _ = _summarize(servers.raw, end, WINDOW_SECONDS)
    found, session = _summarize(servers.recorded, end, WINDOW_SECONDS)
    assert not found.recording_rules_used
    assert any("no zest recording rules cover the window" in note for note in found.notes)
    assert not any(":sum_5m" in q for q, _ in session.queries)
    pd.testing.assert_frame_equal(_by_gpu(raw), _by_gpu(found))


def test_a_job_that_ended_just_before_the_window_stays_out(servers: Servers) -> None:
    """The first tile reaches back before the window, past slurm-2's last sample: it is not summarized."""
    last_sample = servers.t0 + 210 + (4 * HOUR // 30 - 41) * 30
    end = last_sample + 1 + WINDOW_SECONDS
    raw, _ = _summarize(servers.raw, end, WINDOW_SECONDS)
    found, _ = _summarize(servers.recorded, end, WINDOW_SECONDS)
    assert found.recording_rules_used
    assert "slurm-2" not in set(raw.summary[JOB_ID])
    assert set(found.summary[JOB_ID]) == set(raw.summary[JOB_ID])
