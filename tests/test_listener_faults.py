"""The listener of ``zest serve`` under faulty or hostile clients (issue 14, cases 1 and 9).

Each test is named after the case it checks. Real sockets on 127.0.0.1, a real
self-signed certificate (openssl), real bcrypt hashes: nothing is faked.
Timings are compared with each other or bounded far above what a healthy
listener needs, so that a loaded machine does not make them flake.
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import bcrypt
import pytest
import requests
from prometheus_client import CollectorRegistry, Gauge

from collectors.errors import ConfigError
from estimator.serving.http import LISTEN_BACKLOG, WebConfig, _dummy_hash, build_server, load_web_config


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(folder / "key.pem"),
         "-out", str(folder / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return folder / "cert.pem", folder / "key.pem"


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    Gauge("zest_test_up", "1 while the test server runs", registry=registry).set(1)
    return registry


@contextmanager
def _serving(web: WebConfig, **settings: float) -> Iterator[tuple[str, object]]:
    """A running server of a small registry, its /metrics URL; ``settings`` overrides server attributes."""
    server = build_server(("127.0.0.1", 0), _registry(), web)
    for name, value in settings.items():
        setattr(server, name, value)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if web.tls else 'http'}://127.0.0.1:{server.server_port}/metrics", server
    finally:
        server.shutdown()
        server.server_close()


def _idle_client(server: object) -> socket.socket:
    """A TCP connection that never sends a byte (no ClientHello, no request line)."""
    return socket.create_connection(("127.0.0.1", server.server_port), timeout=10)  # type: ignore[attr-defined]


def _timed_get(url: str, **kwargs: object) -> tuple[float, requests.Response]:
    started = time.perf_counter()
    answer = requests.get(url, timeout=10, **kwargs)  # type: ignore[arg-type]
    return time.perf_counter() - started, answer


# --- case 1: an idle client on the TLS listener ---------------------------------------------------


def test_case_1_an_idle_tls_client_does_not_stall_other_scrapes(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    with _serving(WebConfig(cert, key)) as (url, server):
        idle = [_idle_client(server) for _ in range(5)]
        time.sleep(0.2)  # let the server accept them (and, before the fix, hang in their handshakes)
        try:
            for _ in range(3):
                seconds, answer = _timed_get(url, verify=str(cert))
                assert answer.status_code == 200 and "zest_test_up 1.0" in answer.text
                assert seconds < 1.0, f"a scrape took {seconds:.2f} s next to idle TLS clients"
        finally:
            for connection in idle:
                connection.close()


def test_case_1_a_stalled_tls_handshake_times_out(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    with (
        _serving(WebConfig(cert, key), handshake_timeout_s=0.5) as (_, server),
        closing(_idle_client(server)) as idle,
    ):
        started = time.perf_counter()
        assert idle.recv(1) == b""  # the server gave up the handshake and closed the connection
        assert time.perf_counter() - started < 5.0


def test_case_1_a_plain_http_client_on_the_tls_port_does_not_stall_others(
    tls_files: tuple[Path, Path],
) -> None:
    cert, key = tls_files
    with _serving(WebConfig(cert, key)) as (url, _):
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(url.replace("https://", "http://"), timeout=10)  # no TLS: the server hangs up
        seconds, answer = _timed_get(url, verify=str(cert))
        assert answer.status_code == 200 and seconds < 1.0


def test_case_1_an_idle_client_on_the_plain_listener_is_dropped_after_the_read_timeout() -> None:
    with _serving(WebConfig(), read_timeout_s=0.5) as (url, server), closing(_idle_client(server)) as idle:
        seconds, answer = _timed_get(url)
        assert answer.status_code == 200 and seconds < 1.0
        started = time.perf_counter()
        assert idle.recv(1) == b""
        assert time.perf_counter() - started < 5.0


# --- case 9: basic auth timing, listen backlog ----------------------------------------------------


def test_case_9_unknown_and_known_users_take_the_same_time(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=8))
    with _serving(WebConfig(basic_auth_users={"prom": hashed})) as (url, _):
        assert requests.get(url, auth=("prom", "s3cret"), timeout=10).status_code == 200
        unknown: list[float] = []
        wrong: list[float] = []
        for attempt in range(7):  # interleaved, so a change of load hits both alike
            seconds, answer = _timed_get(url, auth=(f"nobody{attempt}", "s3cret"))
            assert answer.status_code == 401
            unknown.append(seconds)
            seconds, answer = _timed_get(url, auth=("prom", f"wrong{attempt}"))
            assert answer.status_code == 401
            wrong.append(seconds)
    ratio = statistics.median(unknown) / statistics.median(wrong)
    # Before the fix an unknown user was answered ~10 times faster (no bcrypt at all).
    assert 0.5 < ratio < 2.0, (
        f"unknown user {statistics.median(unknown):.4f} s, wrong password {statistics.median(wrong):.4f} s"
    )


def test_case_9_the_dummy_hash_has_the_cost_of_the_configured_ones() -> None:
    cheap, dear = bcrypt.hashpw(b"a", bcrypt.gensalt(rounds=4)), bcrypt.hashpw(b"b", bcrypt.gensalt(rounds=6))
    assert _dummy_hash({"a": cheap, "b": dear}).startswith(b"$2b$06$")


def test_case_9_the_listen_queue_holds_many_scrapers() -> None:
    """40 connections wait in the kernel's queue while the server is busy (here: not accepting at all).

    With the old backlog of 5 the kernel drops the SYNs beyond it, and each of
    those scrapers waits for a SYN retransmission (1 s, then 3 s).
    """
    server = build_server(("127.0.0.1", 0), _registry(), WebConfig())
    assert server.request_queue_size == LISTEN_BACKLOG >= 128  # type: ignore[attr-defined]
    waiting: list[socket.socket] = []
    try:
        for _ in range(40):
            waiting.append(socket.create_connection(("127.0.0.1", server.server_port), timeout=0.5))
    finally:
        for connection in waiting:
            connection.close()
        server.server_close()


def test_case_9_many_concurrent_scrapers_all_succeed(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    with _serving(WebConfig(cert, key)) as (url, _):
        start = threading.Barrier(40)
        seconds: list[float] = []
        failures: list[BaseException] = []

        def scrape() -> None:
            start.wait()
            try:
                took, answer = _timed_get(url, verify=str(cert))
                assert answer.status_code == 200
                seconds.append(took)
            except BaseException as exc:  # reported below, with the others
                failures.append(exc)

        threads = [threading.Thread(target=scrape) for _ in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert not failures and len(seconds) == 40
    # A SYN dropped by a full queue costs a 1 s retransmission; generous, as the machine may be busy.
    assert max(seconds) < 3.0, f"slowest of 40 concurrent scrapes: {max(seconds):.2f} s"


def test_a_bcrypt_cost_bcrypt_cannot_check_is_a_config_error(tmp_path: Path) -> None:
    """A cost outside 4..31 matched the hash pattern, then failed every request with a ValueError."""
    config = tmp_path / "web.yml"
    config.write_text("basic_auth_users:\n  prom: $2b$03$" + "a" * 53 + "\n")
    with pytest.raises(ConfigError, match="cost"):
        load_web_config(config)


# --- a flood of connections ----------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_connections_beyond_the_cap_are_refused_at_once_and_scrapes_resume(
    tls: bool, tls_files: tuple[Path, Path]
) -> None:
    """Two idle connections fill a cap of 2: a scrape is refused at once (503; closed under TLS), and
    served again as soon as one of them goes."""
    cert, key = tls_files
    web = WebConfig(cert, key) if tls else WebConfig()
    verify = str(cert) if tls else True
    with _serving(web, max_connections=2) as (url, server):
        idle = [_idle_client(server) for _ in range(2)]
        try:
            time.sleep(0.2)  # let the server accept both
            started = time.perf_counter()
            if tls:
                with pytest.raises(requests.exceptions.ConnectionError):
                    requests.get(url, timeout=10, verify=verify)
            else:
                answer = requests.get(url, timeout=10)
                assert answer.status_code == 503 and "too many connections" in answer.text
            assert time.perf_counter() - started < 2.0
        finally:
            idle.pop().close()
        time.sleep(0.2)  # the server sees the close and frees the slot
        try:
            answer = requests.get(url, timeout=10, verify=verify)
            assert answer.status_code == 200 and "zest_test_up 1.0" in answer.text
        finally:
            for connection in idle:
                connection.close()
