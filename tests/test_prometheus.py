"""The Prometheus source against a real Prometheus holding simulated jobs, and against faulty servers.

Expected summaries are computed with numpy/pandas from the very samples that were
backfilled, with unit conversions written out here (not read from
``collectors.metrics``).
"""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from promserver import (  # noqa: F401  (prometheus_dataset is a fixture)
    ENERGY_COUNTER,
    ENERGY_POWER_WATTS,
    WEIRD_JOB,
    Dataset,
    Series,
    SimJob,
    free_port,
    prometheus_dataset,
    served,
)

from collectors import metrics
from collectors import prometheus as prometheus_module
from collectors.errors import JobNotFound, SourceQueryError, SourceUnavailable
from collectors.prometheus import PrometheusAuth, PrometheusSource
from collectors.schema import (
    GPU,
    GPU_MODEL,
    HOST,
    IDLE_SHARE,
    JOB_ID,
    READ_STATISTICS,
    SAMPLES,
    STATISTICS,
    SUMMARY_COLUMNS,
    TIMESTAMP,
    WINDOW_END,
    WINDOW_START,
    conform,
    conform_summary,
    summary_column,
)
from estimator.cli.main import cli, main
from estimator.cli.options import PROMETHEUS_PASSWORD_ENV, PROMETHEUS_TOKEN_ENV, PROMETHEUS_USER_ENV

MIB = 1024 * 1024

# --- what the summaries should be, computed from the samples -------------------------------------


def _dcgm_signals(raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    direct = {
        "gpu_util_ratio": ("DCGM_FI_DEV_GPU_UTIL", 0.01),
        "sm_active_ratio": ("DCGM_FI_PROF_SM_ACTIVE", 1.0),
        "sm_occupancy_ratio": ("DCGM_FI_PROF_SM_OCCUPANCY", 1.0),
        "tensor_active_ratio": ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", 1.0),
        "dram_active_ratio": ("DCGM_FI_PROF_DRAM_ACTIVE", 1.0),
        "mem_used_bytes": ("DCGM_FI_DEV_FB_USED", MIB),
        "power_watts": ("DCGM_FI_DEV_POWER_USAGE", 1.0),
        "pcie_tx_bytes_per_second": ("DCGM_FI_PROF_PCIE_TX_BYTES", 1.0),
        "pcie_rx_bytes_per_second": ("DCGM_FI_PROF_PCIE_RX_BYTES", 1.0),
    }
    out = {signal: raw[name] * scale for signal, (name, scale) in direct.items() if name in raw}
    reserved = raw.get("DCGM_FI_DEV_FB_RESERVED", 0.0)
    out["mem_total_bytes"] = (raw["DCGM_FI_DEV_FB_USED"] + raw["DCGM_FI_DEV_FB_FREE"] + reserved) * MIB
    if "DCGM_FI_PROF_NVLINK_TX_BYTES" in raw:
        out["nvlink_bytes_per_second"] = (
            raw["DCGM_FI_PROF_NVLINK_TX_BYTES"] + raw["DCGM_FI_PROF_NVLINK_RX_BYTES"]
        )
    elif "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL" in raw:  # units of 1000 KiB/s
        out["nvlink_bytes_per_second"] = raw["DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"] * 1000 * 1024
    return out


def _jobstats_signals(raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "gpu_util_ratio": raw["nvidia_gpu_duty_cycle"] / 100,
        "sm_active_ratio": raw["nvidia_gpu_sm_util_percent"],  # a 0-1 fraction despite the name
        "sm_occupancy_ratio": raw["nvidia_gpu_sm_occupancy_percent"],
        "tensor_active_ratio": raw["nvidia_gpu_any_tensor_util_percent"],
        "dram_active_ratio": raw["nvidia_gpu_dram_bw_util_percent"],
        "mem_used_bytes": raw["nvidia_gpu_memory_used_bytes"],
        "mem_total_bytes": raw["nvidia_gpu_memory_total_bytes"],
        "power_watts": raw["nvidia_gpu_power_usage_milliwatts"] / 1000,
    }


def _identity(labels: Mapping[str, str]) -> tuple[str, str, str]:
    host = labels.get("Hostname") or labels.get("hostname") or labels["instance"].rsplit(":", 1)[0]
    gpu = labels.get("gpu") or labels["minor_number"]
    if labels.get("GPU_I_ID"):
        gpu = f"{gpu}/{labels['GPU_I_ID']}"
    return host, gpu, labels.get("modelName") or labels["name"]


def _utc(unix_seconds: float) -> pd.Timestamp:
    return pd.Timestamp(unix_seconds, unit="s", tz="UTC")


def _gpu_samples(
    job: SimJob, start: float, end: float
) -> dict[tuple[str, str, str], tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Per GPU identity of ``job``: its sample times in ``[start, end]`` and its canonical signals there."""
    gpus: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
    times: dict[tuple[str, str, str], np.ndarray] = {}
    for series in job.series:
        if series.name == ENERGY_COUNTER:
            continue
        key = _identity(series.labels)
        keep = (series.times >= start) & (series.times <= end)
        gpus.setdefault(key, {})[series.name] = series.values[keep]
        times[key] = series.times[keep]
    return {
        key: (times[key], (_dcgm_signals if job.family == "dcgm" else _jobstats_signals)(raw))
        for key, raw in gpus.items()
    }


def expected_summary(job: SimJob, start: float = -math.inf, end: float = math.inf) -> pd.DataFrame:
    """The GPU summary of ``job`` over its samples in ``[start, end]``, by numpy."""
    rows = []
    for key, (stamps, signals) in _gpu_samples(job, start, end).items():
        row: dict[str, object] = {
            HOST: key[0],
            GPU: key[1],
            JOB_ID: job.job_id,
            GPU_MODEL: key[2],
            SAMPLES: len(stamps),
            WINDOW_START: _utc(stamps[0]),
            WINDOW_END: _utc(stamps[-1]),
        }
        if "sm_active_ratio" in signals:
            row[IDLE_SHARE] = np.mean(signals["sm_active_ratio"] < 0.05)
        for signal, values in signals.items():
            computed = {
                "mean": values.mean(),
                "min": values.min(),
                "max": values.max(),
                **{st: np.quantile(values, q) for st, q in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))},
            }  # quantiles linear, as Prometheus'
            for statistic in READ_STATISTICS[signal]:  # those zest reads: Prometheus is asked for no other
                row[summary_column(signal, statistic)] = computed[statistic]
        rows.append(row)
    return conform_summary(pd.DataFrame(rows))


def expected_samples(job: SimJob, start: float = -math.inf, end: float = math.inf) -> pd.DataFrame:
    """The canonical telemetry frame of ``job``'s samples in ``[start, end]``."""
    frames = []
    for key, (stamps, signals) in _gpu_samples(job, start, end).items():
        frame = pd.DataFrame({TIMESTAMP: pd.to_datetime(stamps, unit="s", utc=True), **signals})
        frame[[HOST, GPU, GPU_MODEL]] = key
        frame[JOB_ID] = job.job_id
        frames.append(frame)
    return conform(pd.concat(frames, ignore_index=True))


def assert_summary_equal(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(actual.columns) == list(SUMMARY_COLUMNS)
    pd.testing.assert_frame_equal(actual, expected, check_exact=False, rtol=1e-9, check_dtype=False)
    for column in (WINDOW_START, WINDOW_END):  # times exactly, whatever the datetime resolution
        assert list(actual[column]) == list(expected[column])


@pytest.fixture
def source(prometheus_dataset: Dataset) -> PrometheusSource:  # noqa: F811
    return PrometheusSource(prometheus_dataset.url)


def _first_time(job: SimJob) -> int:
    return int(min(s.times[0] for s in job.series))


# --- summaries of real data ---------------------------------------------------------------------


def test_slurm_job_on_two_nodes_matches_numpy(source: PrometheusSource, prometheus_dataset: Dataset) -> None:  # noqa: F811
    job = prometheus_dataset.jobs["slurm-4242"]
    found = source.summarize_job("slurm-4242")
    assert_summary_equal(found.summary, expected_summary(job))
    assert list(found.summary[HOST]) == ["gpu-a01", "gpu-a01", "gpu-a02", "gpu-a02"]
    # The second node's GPUs start a minute later and stop ten minutes earlier.
    assert (found.summary[WINDOW_END].iloc[0] - found.summary[WINDOW_END].iloc[2]).total_seconds() == 600
    assert any('hpc_job="slurm-4242"' in note for note in found.notes)
    assert any("window taken from the data" in note for note in found.notes)


def test_pulled_data_grows_with_gpus_not_samples(source: PrometheusSource) -> None:
    found = source.summarize_job("slurm-4242")
    gpus = len(found.summary)
    # One answer row per GPU and statistic, however many samples the window holds (361 here).
    assert gpus == 4
    assert found.series_pulled <= gpus * found.queries
    assert found.queries <= 2 + 4 + 1 + len(STATISTICS) * 12


def test_kubernetes_pod_by_namespace_and_pod_or_pod_alone(
    source: PrometheusSource,
    prometheus_dataset: Dataset,  # noqa: F811
) -> None:
    job = prometheus_dataset.jobs["ml/bert-train-0"]
    by_namespace = source.summarize_job("ml/bert-train-0")
    assert_summary_equal(by_namespace.summary, expected_summary(job))
    assert set(by_namespace.summary[HOST]) == {"k8s-node-7"}  # the lower-case hostname label
    by_pod = source.summarize_job("bert-train-0")
    expected = expected_summary(job)
    expected[JOB_ID] = expected[JOB_ID].str.replace("ml/", "")
    assert_summary_equal(by_pod.summary, expected)


def test_mig_instances_are_separate_gpus(source: PrometheusSource, prometheus_dataset: Dataset) -> None:  # noqa: F811
    found = source.summarize_job("slurm-5001")
    assert_summary_equal(found.summary, expected_summary(prometheus_dataset.jobs["slurm-5001"]))
    assert list(found.summary[GPU]) == ["0/1", "0/2"]
    assert found.summary[summary_column("gpu_util_ratio", "mean")].isna().all()  # MIG has no GPU_UTIL


def test_jobstats_job_in_base_units(source: PrometheusSource, prometheus_dataset: Dataset) -> None:  # noqa: F811
    found = source.summarize_job("880123")
    assert_summary_equal(found.summary, expected_summary(prometheus_dataset.jobs["880123"]))
    assert list(found.summary[HOST]) == ["della-l01g3", "della-l01g3"]  # instance without its port
    assert found.summary[summary_column("power_watts", "mean")].max() < 700  # milliwatts became watts
    assert any("jobstats" in note for note in found.notes)


def test_default_dcgm_counters_leave_profiling_and_idle_share_nan(
    source: PrometheusSource,
    prometheus_dataset: Dataset,  # noqa: F811
) -> None:
    found = source.summarize_job("slurm-6001")
    assert_summary_equal(found.summary, expected_summary(prometheus_dataset.jobs["slurm-6001"]))
    assert found.summary[IDLE_SHARE].isna().all()
    assert found.summary[summary_column("sm_active_ratio", "p50")].isna().all()
    assert any("idle share" in note for note in found.notes)
    assert any("sm_active_ratio" in note for note in found.notes)


def test_explicit_window_cuts_the_samples(source: PrometheusSource, prometheus_dataset: Dataset) -> None:  # noqa: F811
    job = prometheus_dataset.jobs["slurm-4242"]
    start = _first_time(job) + 40 * 30 + 15  # between two scrapes: the next one is the first in the window
    end = start - 15 + 200 * 30
    found = source.summarize_job(
        "slurm-4242", datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
    )
    assert_summary_equal(found.summary, expected_summary(job, start, end))
    assert (found.summary[SAMPLES] == 200).all()
    assert not any("window taken from the data" in note for note in found.notes)


def test_open_ended_window_runs_to_the_last_sample(
    source: PrometheusSource,
    prometheus_dataset: Dataset,  # noqa: F811
) -> None:
    job = prometheus_dataset.jobs["slurm-4242"]
    start = _first_time(job) + 100 * 30
    found = source.summarize_job("slurm-4242", start=datetime.fromtimestamp(start, UTC))
    assert_summary_equal(found.summary, expected_summary(job, start=start))


def test_running_job_summary_and_discovery(source: PrometheusSource, prometheus_dataset: Dataset) -> None:  # noqa: F811
    assert source.running_jobs() == ["880999", "ml/live-pod-1", "slurm-7001"]
    found = source.summarize_job("slurm-7001")
    assert_summary_equal(found.summary, expected_summary(prometheus_dataset.jobs["slurm-7001"]))


def test_counter_series_are_read_as_their_rate(source: PrometheusSource) -> None:
    # No counter feeds a canonical signal today; a counter added to metrics.py is read through rate().
    reading = prometheus_module._Signal("power_watts", (ENERGY_COUNTER,), scale=0.001, counter=True)
    matchers = (("hpc_job", "slurm-4242"),)
    window = source.summarize_job("slurm-4242").summary
    start, end = window[WINDOW_START].min().timestamp(), window[WINDOW_END].max().timestamp()
    tally = prometheus_module._Tally()
    by = ",".join(prometheus_module._DCGM.identity)
    query = source._statistic_query(reading, "mean", matchers, end - start - 120, by)
    answer = source._vector(query, end, "test", prometheus_module._DCGM, tally)
    assert len(answer) == 1
    assert next(iter(answer.values())) * reading.scale == pytest.approx(ENERGY_POWER_WATTS, rel=1e-9)


@pytest.mark.parametrize("job_id", ["slurm-4242", "ml/bert-train-0", "slurm-5001", "880123", "slurm-6001"])
def test_raw_samples_are_the_canonical_frame(
    source: PrometheusSource,
    prometheus_dataset: Dataset,  # noqa: F811
    job_id: str,
) -> None:
    found = source.job_samples(job_id)
    expected = expected_samples(prometheus_dataset.jobs[job_id])
    pd.testing.assert_frame_equal(found.frame, expected, check_exact=False, rtol=1e-12, check_dtype=False)
    assert list(found.frame[TIMESTAMP]) == list(expected[TIMESTAMP])


def test_raw_samples_of_a_window(source: PrometheusSource, prometheus_dataset: Dataset) -> None:  # noqa: F811
    job = prometheus_dataset.jobs["slurm-4242"]
    start = _first_time(job) + 3000
    end = start + 1800
    found = source.job_samples(
        "slurm-4242", datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
    )
    expected = expected_samples(job, start, end)
    assert len(found.frame) == 4 * 61
    pd.testing.assert_frame_equal(found.frame, expected, check_exact=False, rtol=1e-12, check_dtype=False)


# --- job ids: exact matching, escaping, not found -------------------------------------------------


def test_job_id_with_quote_brace_and_backslash_is_found_exactly(
    source: PrometheusSource,
    prometheus_dataset: Dataset,  # noqa: F811
) -> None:
    found = source.summarize_job(WEIRD_JOB)
    assert_summary_equal(found.summary, expected_summary(prometheus_dataset.jobs[WEIRD_JOB]))
    # It shares gpu-a01's GPU 1 with slurm-4242: only its own 120 samples are read.
    assert list(found.summary[SAMPLES]) == [120]


@pytest.mark.parametrize(
    "crafted",
    [
        'nope"} or DCGM_FI_DEV_FB_USED{hpc_job="slurm-4242',
        'nope", hpc_job!="',
        'nope"}) or vector(1) or ({hpc_job="x',
        "slurm-42.*",
        "nope\\",
        "slurm-4242\n",
    ],
)
def test_crafted_job_id_selects_nothing_else(source: PrometheusSource, crafted: str) -> None:
    with pytest.raises(JobNotFound):
        source.summarize_job(crafted)


def test_unknown_job_names_the_labels_tried(source: PrometheusSource) -> None:
    with pytest.raises(JobNotFound) as caught:
        source.summarize_job("ml/no-such-pod")
    message = str(caught.value)
    for tried in ('hpc_job="ml/no-such-pod"', 'namespace="ml", pod="no-such-pod"', 'jobid="ml/no-such-pod"'):
        assert tried in message
    assert "\n" not in message


def test_window_before_the_job_finds_nothing(source: PrometheusSource, prometheus_dataset: Dataset) -> None:  # noqa: F811
    first = _first_time(prometheus_dataset.jobs["slurm-6001"])
    with pytest.raises(JobNotFound, match="slurm-6001"):
        source.summarize_job(
            "slurm-6001", datetime.fromtimestamp(first - 7200, UTC), datetime.fromtimestamp(first - 3600, UTC)
        )


def test_window_must_start_before_it_ends(source: PrometheusSource) -> None:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(SourceQueryError, match="start before the end"):
        source.summarize_job("slurm-4242", moment, moment)


# --- failure scenarios ----------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"status":"success","data":[]}'
    delay_seconds: float = 0.0
    seen: list[dict[str, str]] = field(default_factory=list)


@contextmanager
def fake_server(reply: Reply) -> Iterator[str]:
    """A tiny HTTP server answering every request with ``reply``; records the request headers."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            reply.seen.append(dict(self.headers))
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(reply.delay_seconds)
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting: the slow-server scenario

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_prometheus_down_is_unavailable() -> None:
    with pytest.raises(SourceUnavailable, match="connection refused"):
        PrometheusSource(f"http://127.0.0.1:{free_port()}").summarize_job("slurm-4242")


def test_unknown_host_is_unavailable() -> None:
    with pytest.raises(SourceUnavailable, match="host name not found"):
        PrometheusSource("http://zest-no-such-host.invalid:9090").running_jobs()


def test_slow_server_times_out_with_the_limit_named() -> None:
    with fake_server(Reply(delay_seconds=1.5)) as url, pytest.raises(SourceQueryError) as caught:
        PrometheusSource(url, timeout_seconds=0.2).summarize_job("slurm-4242")
    assert "timeout" in str(caught.value)
    assert "0.2 s" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "error_type", "error"),
    [
        (500, "internal", "expanding series: unexpected EOF\nin chunk"),
        (400, "bad_data", 'invalid parameter "query": 1:15: parse error: unexpected identifier'),
        (503, "unavailable", "too many queries in flight"),
    ],
)
def test_http_errors_carry_prometheus_error(status: int, error_type: str, error: str) -> None:
    body = json.dumps({"status": "error", "errorType": error_type, "error": error}).encode()
    with fake_server(Reply(status, body)) as url, pytest.raises(SourceQueryError) as caught:
        PrometheusSource(url).summarize_job("slurm-4242")
    message = str(caught.value)
    assert f"HTTP {status}" in message
    assert f"{error_type}: {' '.join(error.split())}" in message
    assert "\n" not in message


def test_answer_that_is_not_prometheus_json() -> None:
    with (
        fake_server(Reply(502, b"<html>Bad Gateway</html>")) as url,
        pytest.raises(SourceQueryError, match="502"),
    ):
        PrometheusSource(url).running_jobs()


def test_empty_answer_is_job_not_found() -> None:
    with fake_server(Reply()) as url, pytest.raises(JobNotFound, match="labels tried"):
        PrometheusSource(url).summarize_job("slurm-4242")


# --- credentials ----------------------------------------------------------------------------------

PASSWORD = "s3cr@t-Pa55"
TOKEN = "tok-9f8e7d6c5b4a"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _no_secret(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text
        assert "s3cr%40t" not in text
        assert TOKEN not in text


@pytest.fixture
def no_credentials_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (PROMETHEUS_USER_ENV, PROMETHEUS_PASSWORD_ENV, PROMETHEUS_TOKEN_ENV):
        monkeypatch.delenv(name, raising=False)


def test_credentials_in_url_are_sent_but_never_shown() -> None:
    body = json.dumps({"status": "error", "errorType": "internal", "error": "boom"}).encode()
    reply = Reply(500, body)
    with fake_server(reply) as url:
        secret_url = url.replace("http://", "http://alice:s3cr%40t-Pa55@")
        source = PrometheusSource(secret_url)
        with pytest.raises(SourceQueryError) as caught:
            source.summarize_job("slurm-4242")
    assert reply.seen[0]["Authorization"] == _basic("alice", PASSWORD)
    assert source.url == url
    _no_secret(str(caught.value), repr(source), str(source))
    with pytest.raises(SourceUnavailable) as down:
        PrometheusSource(f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}").summarize_job("x")
    _no_secret(str(down.value))


def test_credentials_given_as_arguments() -> None:
    reply = Reply()
    with fake_server(reply) as url:
        basic = PrometheusSource(url, auth=PrometheusAuth("bob", PASSWORD))
        with pytest.raises(JobNotFound):
            basic.summarize_job("slurm-4242")
        bearer = PrometheusSource(url, auth=PrometheusAuth(token=TOKEN))
        with pytest.raises(JobNotFound) as caught:
            bearer.summarize_job("slurm-4242")
    assert reply.seen[0]["Authorization"] == _basic("bob", PASSWORD)
    assert reply.seen[-1]["Authorization"] == f"Bearer {TOKEN}"
    _no_secret(repr(basic), repr(bearer), str(caught.value), repr(basic.auth), repr(bearer.auth))


def test_half_of_basic_auth_is_refused() -> None:
    with pytest.raises(SourceUnavailable, match="password"):
        PrometheusSource("http://127.0.0.1:9090", auth=PrometheusAuth(user="bob"))


def _zest(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the ``zest`` command line in this process: its exit code and its stderr."""
    with pytest.raises(SystemExit) as ended:
        main(argv)
    return int(ended.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "authorization"),
    [
        ({PROMETHEUS_USER_ENV: "bob", PROMETHEUS_PASSWORD_ENV: PASSWORD}, _basic("bob", PASSWORD)),
        ({PROMETHEUS_TOKEN_ENV: TOKEN}, f"Bearer {TOKEN}"),
    ],
)
def test_credentials_from_the_environment(
    env: dict[str, str],
    authorization: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_credentials_env: None,
    tmp_path: Path,
) -> None:
    """The command line reads the credentials from the same variables as ever and hands them down."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reply = Reply()
    with fake_server(reply) as url:
        argv = ["--job-id", "slurm-4242", "--source", f"prometheus={url}"]
        code, err = _zest(["capture", *argv, "--output", str(tmp_path / "c.parquet")], capsys)
    assert code == JobNotFound.exit_code, err
    assert reply.seen and all(seen["Authorization"] == authorization for seen in reply.seen)
    _no_secret(err)


def test_half_of_basic_auth_in_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], no_credentials_env: None
) -> None:
    monkeypatch.setenv(PROMETHEUS_USER_ENV, "bob")
    source = "prometheus=http://127.0.0.1:9090"
    code, err = _zest(["estimate", "--job-id", "4242", "--source", source, "--duration-hours", "1"], capsys)
    assert code == 2
    assert PROMETHEUS_PASSWORD_ENV in err


@pytest.mark.parametrize("flag", ["--prometheus-password", "--prometheus-token"])
def test_a_secret_on_the_command_line_is_refused(
    flag: str, capsys: pytest.CaptureFixture[str], no_credentials_env: None
) -> None:
    """ps shows every user a command line: secrets come from the environment only."""
    argv = ["estimate", "--job-id", "4242", "--source", "example", "--duration-hours", "1", flag, PASSWORD]
    code, err = _zest(argv, capsys)
    assert code == 2
    assert "ZEST_PROMETHEUS_" in err
    _no_secret(err)


def test_secrets_are_not_in_the_help(no_credentials_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROMETHEUS_PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv(PROMETHEUS_TOKEN_ENV, TOKEN)
    text = CliRunner().invoke(cli, ["estimate", "--help"]).output
    assert PROMETHEUS_USER_ENV in text and PROMETHEUS_PASSWORD_ENV in text and PROMETHEUS_TOKEN_ENV in text
    _no_secret(text)


def test_credentials_stay_out_of_notes_with_a_real_server(prometheus_dataset: Dataset) -> None:  # noqa: F811
    source = PrometheusSource(prometheus_dataset.url.replace("http://", f"http://carol:{PASSWORD}@"))
    found = source.summarize_job("slurm-6001")
    assert len(found.summary) == 1
    _no_secret(repr(source), *found.notes, repr(found))


def test_not_an_http_url_is_refused() -> None:
    with pytest.raises(SourceUnavailable, match="http") as caught:
        PrometheusSource(f"ftp://dave:{PASSWORD}@example.org/")
    _no_secret(str(caught.value))


# --- MIG instances held by different jobs, and the label spellings of a Kubernetes scrape --------------
#
# One node, GPU 0 split into MIG instances 1 and 2, each held by another job; dcgm-exporter publishes no
# GPU_UTIL for an instance, only GR_ENGINE_ACTIVE. The whole GPU's own series (its GPU_UTIL, its
# memory, its power: every instance's together) carry the jobs' labels too and must never be read
# for them. Four scrapes each, values chosen so that every statistic can be worked out by hand.

MIG_SCRAPES = 4
_A100 = "NVIDIA A100-SXM4-80GB"
_MIG_UUID = "GPU-5b9c1d2e-3f40-4a51-8b62-7c83d94ea5f6"
_EXPORTER_POD = {"namespace": "gpu-operator", "pod": "dcgm-exporter-7xk2p", "container": "exporter"}


def _mig_series(labels: dict[str, str], values: Mapping[str, list[float]], times: np.ndarray) -> list[Series]:
    return [Series(name, dict(labels), times, np.array(v, dtype=float)) for name, v in values.items()]


def _instance_values(gr_engine: list[float], used_mib: list[float]) -> dict[str, list[float]]:
    """A 3g.40gb instance (40192 MiB): no GPU_UTIL, no power of its own."""
    return {
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE": gr_engine,
        "DCGM_FI_DEV_FB_USED": used_mib,
        "DCGM_FI_DEV_FB_FREE": [40192.0 - u for u in used_mib],
    }


# The whole GPU 0: 100 % busy, 70000 MiB used, 400 W: nothing of it is one instance's.
_WHOLE_GPU_VALUES = {
    "DCGM_FI_DEV_GPU_UTIL": [100.0] * MIG_SCRAPES,
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": [0.9] * MIG_SCRAPES,
    "DCGM_FI_DEV_FB_USED": [70000.0] * MIG_SCRAPES,
    "DCGM_FI_DEV_FB_FREE": [11559.0] * MIG_SCRAPES,
    "DCGM_FI_DEV_POWER_USAGE": [400.0] * MIG_SCRAPES,
}


def _mig_node(
    times: np.ndarray,
    host: dict[str, str],
    jobs: tuple[dict[str, str], dict[str, str]],
    *,
    instance_uuids: bool = False,
) -> list[Series]:
    """GPU 0 of one node in two MIG instances, instance 1 held by ``jobs[0]``, instance 2 by ``jobs[1]``;
    the whole GPU's series once per job. ``instance_uuids``: the instances' UUID label is their own."""
    gpu = {"gpu": "0", "UUID": _MIG_UUID, "device": "nvidia0", "modelName": _A100, **host}
    instance_values = (
        _instance_values([0.1, 0.2, 0.3, 0.4], [1000.0, 1000.0, 2000.0, 2000.0]),
        _instance_values([0.5] * MIG_SCRAPES, [3000.0] * MIG_SCRAPES),
    )
    series: list[Series] = []
    for instance, (job, values) in enumerate(zip(jobs, instance_values, strict=True), start=1):
        labels = {**gpu, "GPU_I_PROFILE": "3g.40gb", "GPU_I_ID": str(instance), **job}
        if instance_uuids:
            labels["UUID"] = f"MIG-7d3e2c1b-0a9f-5e8d-b7c6-a5b4c3d2e1f{instance}"
        series += _mig_series(labels, values, times)
        series += _mig_series({**gpu, **job}, _WHOLE_GPU_VALUES, times)
    return series


@dataclass
class MigCluster:
    url: str
    times: np.ndarray  # the four scrape times, Unix seconds


@pytest.fixture(scope="module")
def mig_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigCluster]:
    """A real Prometheus holding two MIG nodes: a Slurm one (``hpc_job``, ``Hostname``) and a Kubernetes
    one scraped by kube-prometheus (``exported_pod``; the exporter pod's own ``pod``; host only in
    ``instance``); plus a whole GPU on the Slurm node that has both GPU_UTIL and GR_ENGINE_ACTIVE. Still
    running: the last scrape is one interval before now."""
    work = tmp_path_factory.mktemp("prometheus-mig")
    last = int(time.time() // 30) * 30 - 30
    times = last - 30 * np.arange(MIG_SCRAPES - 1, -1, -1, dtype=np.int64)
    series = _mig_node(times, {"Hostname": "gpu-m01"}, ({"hpc_job": "9101"}, {"hpc_job": "9102"}))
    whole = {"gpu": "1", "UUID": "GPU-0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5", "modelName": _A100}
    series += _mig_series(
        {**whole, "Hostname": "gpu-m01", "hpc_job": "9103"},
        {
            "DCGM_FI_DEV_GPU_UTIL": [50.0, 70.0, 90.0, 30.0],
            "DCGM_FI_PROF_GR_ENGINE_ACTIVE": [0.2] * MIG_SCRAPES,
            "DCGM_FI_DEV_FB_USED": [8000.0] * MIG_SCRAPES,
            "DCGM_FI_DEV_FB_FREE": [73559.0] * MIG_SCRAPES,
        },
        times,
    )
    scrape = {"instance": "10.0.0.7:9400", "job": "dcgm-exporter", "endpoint": "gpu-metrics", **_EXPORTER_POD}
    pods = tuple(
        {"exported_namespace": "ml", "exported_pod": pod, "exported_container": "trainer"}
        for pod in ("train-a", "train-b")
    )
    series += _mig_node(times, scrape, pods, instance_uuids=True)
    # A GPU no pod holds: only the scrape's own pod labels.
    series += _mig_series(
        {"gpu": "1", "UUID": "GPU-9e8d7c6b-5a49-4382-9170-6f5e4d3c2b1a", "modelName": _A100, **scrape},
        {"DCGM_FI_DEV_GPU_UTIL": [0.0] * MIG_SCRAPES, "DCGM_FI_DEV_FB_USED": [0.0] * MIG_SCRAPES},
        times,
    )
    with served(series, work, "mig") as server:
        yield MigCluster(server.url, times)


def _one_instance(found: pd.DataFrame, job_id: str, host: str, gpu: str) -> pd.Series:
    assert len(found) == 1, found[[JOB_ID, HOST, GPU]]  # G = 1: the instance, not the whole GPU too
    row = found.iloc[0]
    assert (row[JOB_ID], row[HOST], row[GPU], row[GPU_MODEL]) == (job_id, host, gpu, _A100)
    assert row[SAMPLES] == MIG_SCRAPES
    return row


def _assert_instance_1(row: pd.Series) -> None:
    """Instance 1: GR_ENGINE_ACTIVE 0.1, 0.2, 0.3, 0.4; 1000, 1000, 2000, 2000 MiB of 40192."""
    util = {s: row[summary_column("gpu_util_ratio", s)] for s in READ_STATISTICS["gpu_util_ratio"]}
    # Linear quantiles of four values: p10 at position 0.3, p50 at 1.5, p90 at 2.7.
    expected = {"mean": 0.25, "p10": 0.13, "p50": 0.25, "p90": 0.37}
    assert util == pytest.approx(expected, rel=1e-12)
    assert math.isnan(row[summary_column("gpu_util_ratio", "min")])  # nothing reads it: not asked
    assert row[summary_column("mem_used_bytes", "mean")] == pytest.approx(1500 * MIB, rel=1e-12)
    assert row[summary_column("mem_used_bytes", "max")] == 2000 * MIB
    assert row[summary_column("mem_total_bytes", "max")] == 40192 * MIB
    assert math.isnan(row[summary_column("mem_total_bytes", "p50")])  # no feature reads it: not asked
    assert math.isnan(row[summary_column("power_watts", "mean")])  # the 400 W are the whole GPU's


def _assert_instance_2(row: pd.Series) -> None:
    """Instance 2: GR_ENGINE_ACTIVE 0.5 and 3000 MiB throughout."""
    for statistic in READ_STATISTICS["gpu_util_ratio"]:
        assert row[summary_column("gpu_util_ratio", statistic)] == pytest.approx(0.5, rel=1e-12)
    for statistic in READ_STATISTICS["mem_used_bytes"]:
        assert row[summary_column("mem_used_bytes", statistic)] == 3000 * MIB
    assert math.isnan(row[summary_column("power_watts", "max")])


def test_mig_instances_of_one_gpu_go_to_their_own_slurm_jobs(mig_cluster: MigCluster) -> None:
    source = PrometheusSource(mig_cluster.url)
    first = source.summarize_job("9101")
    _assert_instance_1(_one_instance(first.summary, "9101", "gpu-m01", "0/1"))
    assert first.summary[WINDOW_START].iloc[0] == _utc(mig_cluster.times[0])
    assert first.summary[WINDOW_END].iloc[0] == _utc(mig_cluster.times[-1])
    assert any("GR_ENGINE_ACTIVE" in note for note in first.notes)
    assert any("GPU 0 on gpu-m01 is split into MIG instances" in note for note in first.notes)
    _assert_instance_2(_one_instance(source.summarize_job("9102").summary, "9102", "gpu-m01", "0/2"))


def test_gpu_util_is_preferred_to_the_graphics_engine_where_a_gpu_has_both(mig_cluster: MigCluster) -> None:
    found = PrometheusSource(mig_cluster.url).summarize_job("9103").summary
    row = _one_instance(found, "9103", "gpu-m01", "1")
    # GPU_UTIL 50, 70, 90, 30 %: neither GR_ENGINE_ACTIVE's 0.2 nor an average of the two.
    assert row[summary_column("gpu_util_ratio", "mean")] == pytest.approx(0.6, rel=1e-12)
    assert row[summary_column("gpu_util_ratio", "p10")] == pytest.approx(0.36, rel=1e-12)


def test_mig_instances_of_kubernetes_pods_read_through_exported_labels(mig_cluster: MigCluster) -> None:
    source = PrometheusSource(mig_cluster.url)
    # The host is the scrape's instance without its port: this exporter has no Hostname label.
    by_namespace = source.summarize_job("ml/train-a")
    _assert_instance_1(_one_instance(by_namespace.summary, "ml/train-a", "10.0.0.7", "0/1"))
    assert any('exported_pod="train-a"' in note for note in by_namespace.notes)
    by_pod = source.summarize_job("train-b")
    _assert_instance_2(_one_instance(by_pod.summary, "train-b", "10.0.0.7", "0/2"))


def test_the_exporter_pod_is_not_a_job(mig_cluster: MigCluster) -> None:
    source = PrometheusSource(mig_cluster.url)
    running = source.running_jobs()
    assert running == ["9101", "9102", "9103", "ml/train-a", "ml/train-b"]
    with pytest.raises(JobNotFound):
        source.summarize_job("gpu-operator/dcgm-exporter-7xk2p")


def test_summaries_of_every_job_take_each_instance_alone(mig_cluster: MigCluster) -> None:
    source = PrometheusSource(mig_cluster.url)
    end = datetime.now(UTC)
    found = source.summarize_jobs(600, end)
    summary = found.summary
    assert list(zip(summary[JOB_ID], summary[HOST], summary[GPU], strict=True)) == [
        ("9101", "gpu-m01", "0/1"),
        ("9102", "gpu-m01", "0/2"),
        ("9103", "gpu-m01", "1"),
        ("ml/train-a", "10.0.0.7", "0/1"),
        ("ml/train-b", "10.0.0.7", "0/2"),
    ]
    for job_id in ("9101", "ml/train-a"):
        _assert_instance_1(summary[summary[JOB_ID] == job_id].iloc[0])
    for job_id in ("9102", "ml/train-b"):
        _assert_instance_2(summary[summary[JOB_ID] == job_id].iloc[0])
    whole = summary[summary[JOB_ID] == "9103"].iloc[0]
    assert whole[summary_column("gpu_util_ratio", "mean")] == pytest.approx(0.6, rel=1e-12)
    assert (summary[SAMPLES] == MIG_SCRAPES).all()
    assert any("job 9101: GPU 0 on gpu-m01 is split into MIG instances" in note for note in found.notes)
    # The batched summary (zest serve) and the per-job one (estimate-z) agree.
    start = datetime.fromtimestamp(end.timestamp() - 600, UTC)
    for job_id in ("9101", "9102", "9103", "ml/train-a", "ml/train-b"):
        one = source.summarize_job(job_id, start, end).summary
        mine = summary[summary[JOB_ID] == job_id].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, one, check_exact=False, rtol=1e-12)


def test_raw_samples_of_a_mig_instance(mig_cluster: MigCluster) -> None:
    found = PrometheusSource(mig_cluster.url).job_samples("ml/train-a")
    frame = found.frame
    assert set(frame[GPU]) == {"0/1"} and set(frame[HOST]) == {"10.0.0.7"}
    assert list(frame[TIMESTAMP]) == [_utc(t) for t in mig_cluster.times]
    assert frame["gpu_util_ratio"].tolist() == [0.1, 0.2, 0.3, 0.4]
    assert frame["mem_used_bytes"].tolist() == [1000 * MIB, 1000 * MIB, 2000 * MIB, 2000 * MIB]
    assert frame["mem_total_bytes"].tolist() == [40192 * MIB] * MIG_SCRAPES
    assert frame["power_watts"].isna().all()


def test_summaries_without_recording_rules_say_they_read_raw_samples(source: PrometheusSource) -> None:
    """No zest:* series in the server: the cycle reads raw samples, says so, and makes no extra listing."""
    found = source.summarize_jobs(3600.0)
    assert found.recording_rules_used is False
    assert any("dcgm-exporter: no zest recording rules cover the window" in note for note in found.notes)


# --- values no GPU can report ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def blank_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Job 9201 on two GPUs; GPU 1's exporter once wrote DCGM's blank value (2^47) for SM activity, and
    once DCGM's int64 blank for memory used: fields it could not read, not readings."""
    work = tmp_path_factory.mktemp("prometheus-blank")
    last = int(time.time() // 30) * 30 - 30
    times = last - 30 * np.arange(MIG_SCRAPES - 1, -1, -1, dtype=np.int64)
    series: list[Series] = []
    for gpu, sm_active, used in (
        ("0", [0.5, 0.6, 0.7, 0.8], [1000.0] * MIG_SCRAPES),
        (
            "1",
            [0.5, metrics.DCGM_FP64_BLANK, 0.7, 0.8],
            [1000.0, float(metrics.DCGM_INT64_BLANK), 1000.0, 1000.0],
        ),
    ):
        labels = {
            "gpu": gpu,
            "UUID": f"GPU-{gpu}",
            "modelName": _A100,
            "Hostname": "gpu-b01",
            "hpc_job": "9201",
        }
        series += _mig_series(
            labels,
            {
                "DCGM_FI_DEV_GPU_UTIL": [90.0] * MIG_SCRAPES,
                "DCGM_FI_PROF_SM_ACTIVE": sm_active,
                "DCGM_FI_DEV_FB_USED": used,
                "DCGM_FI_DEV_FB_FREE": [80000.0] * MIG_SCRAPES,
            },
            times,
        )
    with served(series, work, "blank") as server:
        yield server.url


def test_a_dcgm_blank_value_leaves_out_the_signal_on_its_gpu_in_both_summaries(blank_cluster: str) -> None:
    source = PrometheusSource(blank_cluster)
    one = source.summarize_job("9201")
    every = source.summarize_jobs(3600.0)
    for found in (one, every):
        summary = found.summary.set_index(GPU)
        sm = [summary_column("sm_active_ratio", st) for st in STATISTICS]
        assert summary.loc["0", summary_column("sm_active_ratio", "mean")] == pytest.approx(0.65, rel=1e-12)
        assert summary.loc["1", sm].isna().all()  # never a mean of 3.5e13
        assert summary.loc["1", summary_column("gpu_util_ratio", "mean")] == pytest.approx(0.9, rel=1e-12)
        assert math.isnan(summary.loc["1", summary_column("mem_used_bytes", "mean")])
        assert summary.loc["0", summary_column("mem_used_bytes", "mean")] == pytest.approx(
            1000 * MIB, rel=1e-12
        )
        assert any(
            note.startswith("sm_active_ratio above its physical range on 1 GPU(s)") for note in found.notes
        )
        assert any(
            note.startswith("mem_used_bytes above its physical range on 1 GPU(s)") for note in found.notes
        )
