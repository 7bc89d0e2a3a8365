"""``zest serve`` as a service, the SRE's first hour: what it logs, how it stops, how it refuses a taken port,
and the example config it ships. Each test runs the real command in a subprocess; the telemetry source is
a real Prometheus (from the distribution's package), absent at first and started later.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
import requests
from promserver import free_port, require_binaries, start_prometheus

from estimator.serving.config import (
    DEFAULT_WINDOW_SECONDS,
    BreakEven,
    example_config_text,
    parse_config,
)

REPO = Path(__file__).parent.parent
WAIT_SECONDS = 40.0
#: One logfmt pair: a bare value, or a quoted one with backslash escapes.
LOGFMT_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\]|\\.)*"|[^\s"=]*)(?:\s+|$)')


def parse_logfmt(line: str) -> dict[str, str]:
    """The pairs of one logfmt line; fails the test when any part of the line is not a pair."""
    fields: dict[str, str] = {}
    position = 0
    while position < len(line):
        match = LOGFMT_PAIR.match(line, position)
        assert match, f"not logfmt at column {position}: {line!r}"
        value = match[2]
        if value.startswith('"'):
            value = re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m[1], m[1]), value[1:-1])
        fields[match[1]] = value
        position = match.end()
    return fields


def zest_serve(*args: str, stderr: Path) -> subprocess.Popen[bytes]:
    with stderr.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "estimator.cli", "serve", *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=REPO,
        )


@contextmanager
def running(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """``process``, killed at the end if the test left it running."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for(what: str, check: Callable[[], bool], log: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}\n{log.read_text(errors='replace')[-3000:]}", pytrace=False)


def lines_of(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").splitlines()


def messages(log: Path, parse: Callable[[str], dict[str, str]]) -> list[str]:
    return [str(parse(line)["msg"]) for line in lines_of(log)]


def errors_counted(url: str) -> float:
    """The failed cycles /metrics counts (zest_source_errors_total, every reason but "none")."""
    try:
        text = requests.get(url, timeout=5).text
    except requests.ConnectionError:
        return 0.0
    found = re.findall(r'^zest_source_errors_total\{reason="(\w+)",source="\w+"\} (\S+)$', text, re.M)
    return sum(float(value) for reason, value in found if reason != "none")


def test_logs_one_line_per_change_of_state_as_logfmt(tmp_path: Path) -> None:
    """A dead source, then a live one: one "source down" line, one "source up" line, never one per
    failed cycle; every line logfmt; SIGTERM logs "shutting down" and exits 0."""
    prometheus, _ = require_binaries()
    source_port, zest_port = free_port(), free_port()
    log = tmp_path / "zest.err"
    url = f"http://127.0.0.1:{zest_port}/metrics"
    process = zest_serve(
        "--source", f"prometheus=http://127.0.0.1:{source_port}", "--listen", f"127.0.0.1:{zest_port}",
        "--interval", "0.2s", stderr=log,
    )  # fmt: skip
    source = None
    with running(process):
        wait_for("the source down line", lambda: any("source down" in m for m in lines_of(log)), log)
        # Many failed cycles, still one line.
        wait_for("five failed cycles", lambda: errors_counted(url) >= 5, log)
        down = [m for m in messages(log, parse_logfmt) if m.startswith("source down")]
        assert len(down) == 1, lines_of(log)
        work = tmp_path / "prometheus"
        work.mkdir()
        source = start_prometheus(prometheus, work / "data", work, port=source_port)
        try:
            wait_for("the jobs found line", lambda: any("jobs found" in m for m in lines_of(log)), log)
            time.sleep(1.0)  # several successful cycles: no further line
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log.read_text()
        finally:
            source.stop()
    parsed = [parse_logfmt(line) for line in lines_of(log)]
    for fields in parsed:
        assert list(fields)[:3] == ["ts", "level", "msg"], fields
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields["ts"]), fields
    said = [f["msg"] for f in parsed]
    assert said[0] == "config loaded" and parsed[0]["path"] == "built-in defaults"
    assert said[1] == "listening" and parsed[1]["address"] == url and parsed[1]["source"] == "prometheus"
    assert [m for m in said if m.startswith("source down")] == down
    (down_fields,) = [f for f in parsed if f["msg"].startswith("source down")]
    assert down_fields["level"] == "warn" and down_fields["reason"] == "source_unavailable"
    assert f"127.0.0.1:{source_port}" in down_fields["msg"] and "stale" in down_fields["msg"]
    (up,) = [f for f in parsed if f["msg"].startswith("source up")]
    assert up["level"] == "info" and up["source"] == "prometheus" and int(up["failed_cycles"]) >= 5
    (jobs,) = [f for f in parsed if f["msg"] == "jobs found"]
    assert jobs["jobs"] == "0"  # an empty Prometheus: no job runs
    assert said[-1] == "shutting down" and parsed[-1]["signal"] == "SIGTERM"
    # Only changes of state: besides these, at most a change of reason while down ("source still down").
    kinds = [m.split(":")[0] for m in said]
    assert set(kinds) <= {"config loaded", "listening", "source down", "source still down", "source up",
                          "jobs found", "shutting down"}, said  # fmt: skip
    assert kinds.count("source still down") <= 2, said


def test_json_log_lines_and_sigint_exits_130(tmp_path: Path) -> None:
    log = tmp_path / "zest.err"
    process = zest_serve(
        "--source", f"prometheus=http://127.0.0.1:{free_port()}", "--listen", "127.0.0.1:0",
        "--interval", "0.2s", "--log-format", "json", stderr=log,
    )  # fmt: skip
    with running(process):
        wait_for("the source down line", lambda: any("source down" in m for m in lines_of(log)), log)
        time.sleep(1.0)  # failed cycles go on, silently
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130, log.read_text()
    parsed = [json.loads(line) for line in lines_of(log)]
    assert all(list(p)[:3] == ["ts", "level", "msg"] for p in parsed), parsed
    said = [p["msg"] for p in parsed]
    assert said[:2] == ["config loaded", "listening"]
    assert len([m for m in said if m.startswith("source down")]) == 1
    assert parsed[-1] == {**parsed[-1], "msg": "shutting down", "signal": "SIGINT", "level": "info"}
    assert len(parsed) == 4, said  # config, listening, down, shutting down: the one line SIGINT adds


def test_sigterm_before_the_first_cycle_ends_also_exits_0(tmp_path: Path) -> None:
    """A SIGTERM as soon as the service listens, while its first cycles are running: still exit 0."""
    log = tmp_path / "zest.err"
    process = zest_serve(
        "--source", f"prometheus=http://127.0.0.1:{free_port()}", "--listen", "127.0.0.1:0", stderr=log
    )
    with running(process):
        wait_for("the listening line", lambda: any("listening" in m for m in lines_of(log)), log)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    assert "shutting down" in lines_of(log)[-1]


@pytest.mark.parametrize("source", ["nvml", "prometheus=http://127.0.0.1:9"])
def test_a_port_in_use_has_its_own_exit_code_and_one_line(tmp_path: Path, source: str) -> None:
    """Exit 9 (README: cannot listen), one line naming the address and --listen, whatever the source;
    not "no telemetry source" (3), though NVML has no driver here."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "estimator.cli", "serve", "--source", source,
             "--listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, cwd=REPO, timeout=120,
        )  # fmt: skip
    assert result.returncode == 9, result.stderr
    assert result.stderr.splitlines() == [
        f"zest: error: cannot listen on 127.0.0.1:{port}: the port is in use; stop what listens there "
        "or choose another --listen port"
    ]


def test_print_example_config_prints_a_config_that_loads(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "estimator.cli", "serve", "--print-example-config"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == example_config_text() and not result.stderr
    config = parse_config(tomllib.loads(result.stdout), "printed example")
    # Its [defaults] and [serve] state the built-in defaults, as its header says; two example overrides.
    assert config.defaults == BreakEven() and config.window_seconds == DEFAULT_WINDOW_SECONDS
    assert len(config.overrides) == 2
    # The path the README and grafana/README.md name holds the same file.
    assert (REPO / "grafana" / "zest.example.toml").read_text(encoding="utf-8") == result.stdout


def test_help_states_every_default_and_the_example_config() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "estimator.cli", "serve", "--help"],
        capture_output=True, text=True, cwd=REPO, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for said in (
        "T = 24 h", "R = 1 run", "t = 25 min", "heuristic 30, black-box 500, exhaustive 2000",
        "G = the GPUs seen", "last 1 h", "--print-example-config", "[default: 60s]", "[default: 30s]",
        "[default: 1s]", "[default: :10940]", "[default: logfmt]", "exit 0", "exits 130", "exits 9",
    ):  # fmt: skip
        assert said in text, said
    assert "grafana/zest.example.toml" not in text  # a path the installed package does not hold


def test_sighup_reloads_the_config_and_keeps_it_when_the_new_one_is_bad(tmp_path: Path) -> None:
    config = tmp_path / "zest.toml"
    config.write_text("[defaults]\nreuse = 2\n")
    log = tmp_path / "zest.err"
    process = zest_serve(
        "--source", f"prometheus=http://127.0.0.1:{free_port()}", "--listen", "127.0.0.1:0",
        "--config", str(config), stderr=log,
    )  # fmt: skip
    with running(process):
        wait_for("the listening line", lambda: any("listening" in m for m in lines_of(log)), log)
        config.write_text('[defaults]\nreuse = 3\n\n[[override]]\nmatch = { name = "sft-.*" }\nreuse = 30\n')
        process.send_signal(signal.SIGHUP)
        wait_for("the config reloaded line", lambda: "config reloaded" in log.read_text(), log)
        config.write_text("[defaults\n")
        process.send_signal(signal.SIGHUP)
        wait_for("the reload failed line", lambda: "config reload failed" in log.read_text(), log)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    parsed = [parse_logfmt(line) for line in lines_of(log)]
    (reloaded,) = [p for p in parsed if p["msg"] == "config reloaded"]
    assert reloaded["path"] == str(config) and reloaded["overrides"] == "1"
    (failed,) = [p for p in parsed if p["msg"].startswith("config reload failed")]
    assert failed["level"] == "warn" and "not valid TOML" in failed["error"]


def test_logfmt_and_json_lines_stay_one_line_with_quotes_newlines_and_tracebacks() -> None:
    from estimator.cli.serve import JsonFormatter, LogfmtFormatter

    try:
        raise ValueError('a "bug"\nover two lines')
    except ValueError:
        record = logging.LogRecord(
            "estimator.x", logging.WARNING, __file__, 1, "msg %s", ("a=b",), sys.exc_info()
        )
    record.__dict__.update({"path": 'C:\\dir with space\\"q".toml', "empty": "", "jobs": 3, "tls": False})
    line = LogfmtFormatter().format(record)
    assert "\n" not in line
    fields = parse_logfmt(line)
    assert fields["level"] == "warn" and fields["msg"] == "msg a=b" and fields["jobs"] == "3"
    assert (
        fields["path"] == 'C:\\dir with space\\"q".toml'
        and fields["empty"] == ""
        and fields["tls"] == "false"
    )
    assert fields["exc"].startswith("Traceback") and 'ValueError: a "bug"\nover two lines' in fields["exc"]
    as_json = JsonFormatter().format(record)
    assert "\n" not in as_json
    document = json.loads(as_json)
    assert document["path"] == fields["path"] and document["jobs"] == 3 and document["exc"] == fields["exc"]
