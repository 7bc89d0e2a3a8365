"""Faults between zest and Prometheus (issue 14): a fault proxy in front of a real Prometheus.

The proxy forwards to the real server, or answers as a faulty one does: 5xx,
slowly, truncated, not JSON, malformed samples, all-NaN, empty. ``zest serve``'s
cycles must keep the last estimates marked stale, count the error by reason,
log once per change of state and recover; the command line must exit with
its documented code, never a traceback. Also: credentials are never printed
whatever the URL's form, and trials as short as two scrape intervals get
their telemetry from a real Prometheus.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import requests
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from promserver import (
    SCRAPE_SECONDS,
    PromServer,
    Series,
    dcgm_gpu,
    dcgm_labels,
    free_port,
    served,
)

from collectors.errors import JobNotFound, SourceQueryError, SourceUnavailable
from collectors.prometheus import PrometheusSource
from collectors.schema import SAMPLES
from collectors.studies.optuna import display_url
from collectors.studies.store import OutcomeStore
from collectors.util import redact_url
from estimator.cli.main import main
from estimator.cli.outcomes import record
from estimator.decision.algorithms import capture_shares
from estimator.features.extract import SAMPLES_PER_GPU_MIN
from estimator.model.default import default_model, z_intervals_for
from estimator.serving.collector import ExporterState, ZestCollector
from estimator.serving.config import ServeConfig
from estimator.serving.runner import ClusterSummaries, Runner

optuna.logging.set_verbosity(optuna.logging.WARNING)

LIVE = "live-1"  # running, finite samples
LIVE_NAN = "live-nan"  # running, every sample NaN
ENDED_NAN = "nan-1"  # ended, every sample NaN
TUNE = "tune-8"  # scraped without a break through a study of short trials
TUNE_FIRST_SCRAPE_OFFSET = 7  # scrapes 7 s past the trials' boundaries: none falls on a window's edge


@dataclass
class Faulty:
    """A running Prometheus and its history start (Unix s, a whole hour)."""

    server: PromServer
    t0: int


def _nan(series: list[Series]) -> list[Series]:
    return [Series(s.name, s.labels, s.times, np.full(len(s.times), np.nan)) for s in series]


@pytest.fixture(scope="module")
def faulty_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulty]:
    work = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(14)
    now = time.time()
    t0 = int(now // 3600) * 3600 - 6 * 3600
    last = int(now // SCRAPE_SECONDS) * SCRAPE_SECONDS - SCRAPE_SECONDS
    running = last - 59 * SCRAPE_SECONDS
    series: list[Series] = []
    for gpu in range(2):
        series += dcgm_gpu(rng, running, 60, dcgm_labels("gpu-l01", gpu, {"hpc_job": LIVE}))
    series += _nan(dcgm_gpu(rng, running, 60, dcgm_labels("gpu-l02", 0, {"hpc_job": LIVE_NAN})))
    series += _nan(dcgm_gpu(rng, t0 + 30, 120, dcgm_labels("gpu-n01", 0, {"hpc_job": ENDED_NAN})))
    # two hours of a tuning job, trials of 2 minutes then of 1 minute from t0 + 2 h
    start = t0 + 2 * 3600 + TUNE_FIRST_SCRAPE_OFFSET
    series += dcgm_gpu(rng, start, 240, dcgm_labels("gpu-t01", 0, {"hpc_job": TUNE}))
    with served(series, work, "faults") as server:
        yield Faulty(server, t0)


# --- the fault proxy -------------------------------------------------------------------------------


def _samples(body: dict[str, Any], change: Callable[[dict[str, Any], str], None]) -> None:
    """Apply ``change(series, key)`` to every series of a query answer (key: value or values)."""
    data = body.get("data")
    if isinstance(data, dict) and isinstance(data.get("result"), list):
        key = "value" if data.get("resultType") == "vector" else "values"
        for series in data["result"]:
            change(series, key)


def _set_values(text: str) -> Callable[[dict[str, Any], str], None]:
    def change(series: dict[str, Any], key: str) -> None:
        if key == "value":
            series[key] = [series[key][0], text]
        else:
            series[key] = [[stamp, text] for stamp, _ in series[key]]

    return change


def _drop(series: dict[str, Any], key: str) -> None:
    del series[key]


def _no_result(body: dict[str, Any]) -> None:
    if isinstance(body.get("data"), dict):
        del body["data"]["result"]


def _empty(body: dict[str, Any]) -> None:
    data = body.get("data")
    body["data"] = {"resultType": data["resultType"], "result": []} if isinstance(data, dict) else []


#: How each fault changes a good answer's JSON (None: the proxy answers without asking upstream).
REWRITES: dict[str, Callable[[dict[str, Any]], None]] = {
    "not-a-number": lambda body: _samples(body, _set_values("twelve")),
    "all-nan": lambda body: _samples(body, _set_values("NaN")),
    "no-value": lambda body: _samples(body, _drop),
    "no-result": _no_result,
    "empty": _empty,
}


class FaultProxy:
    """A local HTTP server in front of Prometheus that answers as ``mode`` says; ``pass`` forwards."""

    SLOW_SECONDS = 1.5

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                proxy.requests += 1
                sent = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, body, claimed = proxy.reply(self.command, self.path, sent)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(claimed if claimed is not None else len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting
                if claimed is not None:
                    self.close_connection = True

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def reply(self, method: str, path: str, sent: bytes) -> tuple[int, bytes, int | None]:
        """Status, body and, for a cut-off answer, the length the headers claim."""
        mode = self.mode
        if mode == "5xx":
            return 503, b'{"status":"error","errorType":"unavailable","error":"too many queries"}', None
        if mode == "non-json":
            return 502, b"<html><body>502 Bad Gateway</body></html>", None
        if mode == "empty-body":
            return 200, b"", None
        if mode == "slow":
            time.sleep(self.SLOW_SECONDS)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        answer = requests.request(
            method, self.upstream + path, data=sent or None, headers=headers, timeout=30
        )
        body = answer.content
        if mode == "truncated":
            return answer.status_code, body[: len(body) // 2], None
        if mode == "cut-off":
            return answer.status_code, body[: len(body) // 2], len(body)
        if mode in REWRITES:
            parsed = json.loads(body)
            REWRITES[mode](parsed)
            body = json.dumps(parsed).encode()
        return answer.status_code, body, None


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream)
    thread = threading.Thread(target=proxy.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()


# --- zest serve under faults -----------------------------------------------------------------------


def render(state: ExporterState) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ZestCollector(state, coverage_ratio=0.8, version="test"))
    return generate_latest(registry).decode()


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def serve_runner(url: str) -> Runner:
    source = ClusterSummaries(PrometheusSource(url, timeout_seconds=0.5), window_seconds=3600.0)
    shares = capture_shares(default_model().capture_shares())
    return Runner(source, ExporterState("prometheus"), ServeConfig(), z_intervals_for, shares, 60.0)


#: Each fault, and the reason zest serve counts it under.
SERVE_FAULTS = {
    "5xx": "source_query_error",
    "slow": "source_query_error",
    "truncated": "source_query_error",
    "cut-off": "source_query_error",
    "non-json": "source_query_error",
    "empty-body": "source_query_error",
    "not-a-number": "source_query_error",
    "no-value": "source_query_error",
    "no-result": "source_query_error",
    "all-nan": "no_finite_telemetry",
}


def test_case_2_serve_keeps_serving_stale_through_every_faulty_answer_and_recovers(
    faulty_prometheus: Faulty, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="estimator.serving.runner")
    with fault_proxy(faulty_prometheus.server.url) as proxy:
        runner = serve_runner(proxy.url)
        assert runner.run_once()
        good = render(runner.state)
        # the running job whose every sample is NaN gets no estimate; the other one does
        assert {dict(k)["job_id"] for k in samples(good, "zest_job_z_expected_ratio")} == {LIVE}
        assert not caplog.records
        for mode, reason in SERVE_FAULTS.items():
            proxy.mode = mode
            assert not runner.run_once(), mode
            shown = render(runner.state)
            assert samples(shown, "zest_estimates_stale") == {(): 1.0}, mode
            assert samples(shown, "zest_job_z_expected_ratio") == samples(good, "zest_job_z_expected_ratio")
            errors = samples(shown, "zest_source_errors_total")
            assert errors[(("reason", reason), ("source", "prometheus"))] >= 1, mode
        proxy.mode = "pass"
        assert runner.run_once()
    after = render(runner.state)
    assert samples(after, "zest_estimates_stale") == {(): 0.0}
    errors = samples(after, "zest_source_errors_total")
    assert errors[(("reason", "source_query_error"), ("source", "prometheus"))] == len(SERVE_FAULTS) - 1
    assert errors[(("reason", "no_finite_telemetry"), ("source", "prometheus"))] == 1
    assert samples(after, "zest_cycles_total") == {(("source", "prometheus"),): len(SERVE_FAULTS) + 2.0}


def test_case_3_all_nan_answers_leave_the_estimates_stale(faulty_prometheus: Faulty) -> None:
    with fault_proxy(faulty_prometheus.server.url) as proxy:
        runner = serve_runner(proxy.url)
        proxy.mode = "all-nan"
        assert not runner.run_once()  # no earlier estimate: nothing is published as current
        text = render(runner.state)
        assert samples(text, "zest_estimates_stale") == {(): 1.0}
        assert not samples(text, "zest_job_z_expected_ratio")
        assert not samples(text, "zest_job_verdict")
        errors = samples(text, "zest_source_errors_total")
        assert errors[(("reason", "no_finite_telemetry"), ("source", "prometheus"))] == 1


def test_case_9_serve_logs_once_per_change_of_state(
    faulty_prometheus: Faulty, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="estimator.serving.runner")
    with fault_proxy(faulty_prometheus.server.url) as proxy:
        runner = serve_runner(proxy.url.replace("http://", "http://alice:s3cr%2Ft@"))
        for mode in ("pass", "5xx", "5xx", "5xx", "all-nan", "all-nan", "pass", "pass"):
            proxy.mode = mode
            runner.run_once()
    logged = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in logged] == [logging.WARNING, logging.WARNING, logging.INFO]
    assert "source_query_error" in logged[0][1] and "HTTP 503" in logged[0][1] and "stale" in logged[0][1]
    assert "no_finite_telemetry" in logged[1][1]
    assert "recovered after 5 failed cycle(s)" in logged[2][1]
    assert all("s3cr" not in message for _, message in logged)


def test_case_2_serve_survives_prometheus_going_away(faulty_prometheus: Faulty) -> None:
    with fault_proxy(faulty_prometheus.server.url) as proxy:
        url = proxy.url
        runner = serve_runner(url)
        assert runner.run_once()
    assert not runner.run_once()  # the proxy is gone: connection refused
    errors = samples(render(runner.state), "zest_source_errors_total")
    assert errors[(("reason", "source_unavailable"), ("source", "prometheus"))] == 1


# --- the command line under faults -----------------------------------------------------------------


def _zest(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as ended:
        main(argv)
    return int(ended.value.code or 0), capsys.readouterr().err


#: Each fault the command line meets, and the exit code the README documents for it.
CLI_FAULTS = {
    "5xx": SourceQueryError.exit_code,
    "truncated": SourceQueryError.exit_code,
    "cut-off": SourceQueryError.exit_code,
    "non-json": SourceQueryError.exit_code,
    "empty-body": SourceQueryError.exit_code,
    "not-a-number": SourceQueryError.exit_code,
    "no-value": SourceQueryError.exit_code,
    "no-result": SourceQueryError.exit_code,
    "all-nan": JobNotFound.exit_code,
    "empty": JobNotFound.exit_code,
}


@pytest.mark.parametrize(("mode", "code"), CLI_FAULTS.items())
def test_case_2_estimate_exits_with_its_documented_code(
    mode: str, code: int, faulty_prometheus: Faulty, capsys: pytest.CaptureFixture[str]
) -> None:
    with fault_proxy(faulty_prometheus.server.url) as proxy:
        proxy.mode = mode
        argv = ["estimate", "--job-id", LIVE, "--no-slurm", "--duration-hours", "10"]
        got, err = _zest([*argv, "--source", f"prometheus={proxy.url}"], capsys)
    assert got == code, err
    assert err.startswith("zest: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_case_3_estimate_of_a_job_whose_every_sample_is_nan(
    faulty_prometheus: Faulty, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real NaN samples in a real Prometheus: no estimate, exit 5 with the reason, not math.ceil(nan)."""
    argv = ["estimate", "--job-id", ENDED_NAN, "--no-slurm", "--duration-hours", "10"]
    code, err = _zest([*argv, "--source", f"prometheus={faulty_prometheus.server.url}"], capsys)
    assert code == JobNotFound.exit_code, err
    assert "NaN" in err and err.count("\n") == 1


# --- secrets in malformed URLs ---------------------------------------------------------------------

SECRET = "pw"
URL_FORMS = {
    "no scheme": ("alice:pw@host:9090", "alice:***@host:9090"),
    "slash in the password": ("http://alice:p/w@host:9090", "http://alice:***@host:9090"),
    "hash in the password": ("http://alice:p#w@host:9090", "http://alice:***@host:9090"),
    "question mark in the password": ("http://alice:p?w@host:9090", "http://alice:***@host:9090"),
    "at sign in the password": ("http://alice:p@w@host:9090", "http://alice:***@host:9090"),
    "token as the user": ("https://p/w@host:9090/prom", "https://***@host:9090/prom"),
    "ordinary": ("http://alice:pw@host:9090/prom", "http://alice:***@host:9090/prom"),
    "no credentials": ("http://host:9090", "http://host:9090"),
    "sqlite path": ("sqlite:///data/a@b/study.db", "sqlite:///data/a@b/study.db"),
}


@pytest.mark.parametrize(("url", "shown"), URL_FORMS.values(), ids=URL_FORMS.keys())
def test_case_4_every_url_form_is_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert display_url(url) == shown


@pytest.mark.parametrize(
    "url", [url for url, shown in URL_FORMS.values() if "***" in shown], ids=lambda url: url
)
def test_case_4_prometheus_never_prints_a_password(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = url.replace("host:9090", f"127.0.0.1:{free_port()}")  # nothing listens there
    try:
        source = PrometheusSource(url)
    except SourceUnavailable as refused:
        shown = str(refused)
    else:  # a well-formed URL: the password is sent, never shown, even when the server is down
        with pytest.raises(SourceUnavailable) as caught:
            source.running_jobs()
        shown = f"{caught.value} {source!r} {source.url}"
    assert not any(secret in shown for secret in ("p/w", "p#w", "p?w", "p@w", ":pw"))
    argv = [
        "estimate",
        "--job-id",
        "x",
        "--no-slurm",
        "--duration-hours",
        "1",
        "--source",
        f"prometheus={url}",
    ]
    code, err = _zest(argv, capsys)
    assert code == SourceUnavailable.exit_code, err
    assert (
        "p/w" not in err and "p#w" not in err and "p?w" not in err and "p@w" not in err and ":pw" not in err
    )


def test_case_4_a_storage_url_without_scheme_is_not_printed(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _zest(["record", "--storage", "alice:pw@db.example:5432/optuna", "--study", "s"], capsys)
    assert code == 2
    assert ":pw" not in err and "alice:***@db.example" in err


# --- short trials ----------------------------------------------------------------------------------


def _study(storage: str, name: str, start: datetime, minutes: float, count: int) -> None:
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    dist = {"micro_batch": optuna.distributions.IntDistribution(1, 64)}
    for i in range(count):
        trial = optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE,
            value=10.0 - 0.1 * i,
            params={"micro_batch": i + 1},
            distributions=dist,
        )
        trial.datetime_start = start + timedelta(minutes=i * minutes)
        trial.datetime_complete = start + timedelta(minutes=(i + 1) * minutes)
        study.add_trial(trial)


@pytest.mark.parametrize(("minutes", "count", "scrapes"), [(2, 30, 4), (1, 40, 2)])
def test_case_8_record_finds_the_telemetry_of_every_short_trial(
    minutes: int, count: int, scrapes: int, faulty_prometheus: Faulty, tmp_path: Path
) -> None:
    """Trials of 2 minutes, and of two scrape intervals, back to back while the exporter scrapes on."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    start = datetime.fromtimestamp(faulty_prometheus.t0 + 2 * 3600)  # naive local, as Optuna writes it
    _study(storage, "short", start, minutes, count)
    store = tmp_path / "o.sqlite"
    argv = ["--storage", storage, "--study", "short", "--job-id", TUNE, "--store", str(store)]
    result = CliRunner().invoke(record, [*argv, "--source", f"prometheus={faulty_prometheus.server.url}"])
    assert result.exit_code == 0, result.output
    assert f"{count} with telemetry" in result.output or f"{count} given telemetry" in result.output
    with OutcomeStore(store) as opened:
        trials = opened.trials()
    assert trials["features"].notna().all()
    assert [f[SAMPLES_PER_GPU_MIN] for f in trials["features"]] == [float(scrapes)] * count


@pytest.mark.parametrize("offset_seconds", range(0, 300, 20))
def test_case_8_a_window_of_two_scrape_intervals_is_found_wherever_it_lies(
    offset_seconds: int, faulty_prometheus: Faulty
) -> None:
    """Wherever a short window lies against Prometheus' 5-minute subquery steps, its samples are found."""
    source = PrometheusSource(faulty_prometheus.server.url)
    lo = faulty_prometheus.t0 + 2 * 3600 + 600 + offset_seconds
    start = pd.Timestamp(lo, unit="s", tz="UTC").to_pydatetime()
    found = source.summarize_job(TUNE, start, start + timedelta(seconds=2 * SCRAPE_SECONDS))
    assert found.summary[SAMPLES].tolist() == [2.0]
