"""``estimate-z`` and ``zest capture`` on telemetry: the same features from every source, failures coded."""

from __future__ import annotations

import gzip
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from promserver import backfill, require_binaries, start_prometheus

CAPTURES = Path(__file__).parent / "data" / "captures"
SMI = CAPTURES / "a100x2_job4242_smi.csv"
DCGM = CAPTURES / "a100x2_job4242_dcgm_federate.prom.gz"
PARQUET = CAPTURES / "a100x2_job4242.zest.parquet"
CALCULATOR = ["--duration-hours", "150", "--z-expected", "30"]


def zest(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    code = "from estimator.cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def estimate_json(*args: str) -> dict[str, Any]:
    result = zest("estimate", *args, "--output", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def features(source: Path | str, job: str = "4242") -> dict[str, float | None]:
    return estimate_json("--job-id", job, "--source", str(source), *CALCULATOR)["telemetry"]["features"]  # type: ignore[no-any-return]


def same(a: float | None, b: float | None, rel: float = 1e-6) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def test_the_same_telemetry_gives_the_same_features_from_every_file_format() -> None:
    smi, dcgm, parquet = features(SMI), features(DCGM), features(PARQUET)
    # nvidia-smi carries utilization, memory and power; the scrape and the capture carry more.
    # Stragglers fall back to GPU utilization where SM activity is missing: not the same signal.
    # Coverage counts the signals a source carries: it differs by design.
    differ = ("straggler_spread_ratio", "straggler_cv_ratio", "coverage_ratio")
    carried_by_smi = [k for k, v in smi.items() if v is not None and k not in differ]
    assert "gpu_util_mean_ratio" in carried_by_smi and "power_mean_watts" in carried_by_smi
    assert smi["sm_active_mean_ratio"] is None  # a signal the source lacks stays missing, never zero
    for key in carried_by_smi:
        assert same(smi[key], dcgm[key], rel=1e-3), key  # the scrape rounds differently
    for key, value in dcgm.items():
        assert same(value, parquet[key]), key


def test_bundled_example_reports_features_and_sets_g_from_telemetry() -> None:
    doc = estimate_json("--job-id", "gpt-1.3b-a100-tp4", "--source", "example", *CALCULATOR)
    assert doc["inputs"]["gpus"] == 8
    feats = doc["telemetry"]["features"]
    assert feats["gpus"] == 8 and feats["samples_per_gpu_min"] >= 600
    assert 0 < feats["sm_active_mean_ratio"] < feats["gpu_util_mean_ratio"] <= 1
    assert any("G = 8" in note for note in doc["notes"])
    assert any("simulated" in note for note in doc["notes"])


def test_explicit_gpus_override_telemetry() -> None:
    doc = estimate_json("--job-id", "gpt-1.3b-a100-tp4", "--source", "example", "--gpus", "64", *CALCULATOR)
    assert doc["inputs"]["gpus"] == 64


def test_capture_round_trip_keeps_the_features(tmp_path: Path) -> None:
    out = tmp_path / "job.parquet"
    result = zest("capture", "--job-id", "4242", "--source", str(DCGM), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and out.is_file()
    assert features(out) == features(DCGM)
    # a second capture to the same file is refused before any telemetry is read; --force replaces it
    before = out.read_bytes()
    again = zest("capture", "--job-id", "4242", "--source", str(SMI), "--output", str(out))
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert f"{out} exists; pass --force to replace it" in again.stderr and out.read_bytes() == before
    forced = zest("capture", "--job-id", "4242", "--source", str(SMI), "--output", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert features(out) == features(SMI)


def test_window_reads_the_last_part_of_a_capture() -> None:
    whole = estimate_json("--job-id", "gpt-1.3b-a100-tp4", "--source", "example", *CALCULATOR)
    last = estimate_json(
        "--job-id", "gpt-1.3b-a100-tp4", "--source", "example", "--window", "5m", *CALCULATOR
    )
    assert whole["telemetry"]["features"]["window_seconds"] == 899
    assert last["telemetry"]["features"]["window_seconds"] == 300
    assert any("last 300 s" in n for n in last["notes"])
    assert any("less than 600 s" in n for n in last["notes"])  # too short a window is said


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--job-id", "4242", "--source", "/nonexistent/capture.csv"], 3, "no such file"),
        (["--job-id", "4242", "--source", str(CAPTURES)], 3, "folder"),
        (["--job-id", "9999", "--source", str(DCGM)], 5, "4242"),
        (["--job-id", "no-such-example", "--source", "example"], 5, "gpt-1.3b-a100-tp4"),
        (["--job-id", "4242", "--source", "prometheus="], 3, "prometheus=http"),
        (["--job-id", "4242", "--source", str(SMI), "--window", "0"], 2, "--window"),
        (["--job-id", "4242", "--source", str(SMI), "--window", "ten"], 2, "--window"),
    ],
)
def test_failures_are_one_line_with_their_exit_code(args: list[str], code: int, needle: str) -> None:
    result = zest("estimate", *args, *CALCULATOR)
    assert result.returncode == code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_malformed_capture_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        SMI.read_text().splitlines()[0] + "\n2026/11/24 08:00:01.123, NVIDIA A100, 0, x, y, lots %\n"
    )
    result = zest("estimate", "--job-id", "4242", "--source", str(bad), *CALCULATOR)
    assert result.returncode == 6
    assert f"{bad}:2" in result.stderr and len(result.stderr.splitlines()) == 1


def test_no_nvml_driver_is_exit_3_with_what_to_do() -> None:
    result = zest("estimate", "--job-id", "4242", "--source", "nvml", *CALCULATOR)
    assert result.returncode == 3
    assert "NVML" in result.stderr and "--source" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_no_source_and_no_driver_says_what_to_give() -> None:
    result = zest("estimate", "--job-id", "4242", "--duration-hours", "150")
    assert result.returncode == 3
    assert "--source" in result.stderr and len(result.stderr.splitlines()) == 1


def test_capture_to_an_unwritable_place_is_exit_7(tmp_path: Path) -> None:
    out = tmp_path / "missing-dir" / "job.parquet"
    result = zest("capture", "--job-id", "4242", "--source", str(SMI), "--output", str(out))
    assert result.returncode == 7, result.stderr
    assert len(result.stderr.splitlines()) == 1


def _dcgm_fixture_series(start_seconds: int, spacing_seconds: int) -> dict[str, list[tuple[str, str, int]]]:
    """The DCGM scrape fixture's samples by metric, re-timed to start at ``start_seconds``, evenly spaced."""
    sample = re.compile(r"^(\w+)\{(.*)\} (\S+) (\d+)$")
    lines = gzip.decompress(DCGM.read_bytes()).decode().splitlines()
    rows = [m.groups() for line in lines if (m := sample.match(line.strip()))]
    stamps = {
        ms: start_seconds + i * spacing_seconds for i, ms in enumerate(sorted({r[3] for r in rows}, key=int))
    }
    series: dict[str, list[tuple[str, str, int]]] = {}
    for name, labels, value, ms in rows:
        series.setdefault(name, []).append((labels, value, stamps[ms]))
    return series


def test_prometheus_server_gives_the_features_of_the_same_scrapes(tmp_path: Path) -> None:
    """The same samples, in a real Prometheus and in a scrape file, give the same features."""
    prometheus, promtool = require_binaries()
    series = _dcgm_fixture_series(int(time.time()) - 3 * 3600, 30)
    openmetrics, scrape = tmp_path / "job.om", tmp_path / "job.prom"
    with openmetrics.open("w") as om, scrape.open("w") as text:
        for name, samples in series.items():
            om.write(f"# TYPE {name} gauge\n")
            text.write(f"# TYPE {name} gauge\n")
            for labels, value, stamp in samples:
                om.write(f"{name}{{{labels}}} {value} {stamp}\n")
                text.write(f"{name}{{{labels}}} {value} {stamp * 1000}\n")
        om.write("# EOF\n")
    backfill(promtool, openmetrics, tmp_path / "data")
    server = start_prometheus(prometheus, tmp_path / "data", tmp_path)
    try:
        from_server = features(f"prometheus={server.url}")
    finally:
        server.stop()
    from_file = features(scrape)
    assert from_server["gpus"] == 2 and from_server["samples_per_gpu_min"] == 12
    for key, value in from_file.items():
        assert same(value, from_server[key], rel=1e-9), key
    # and the same, for what it carries, as the nvidia-smi log of these samples
    assert same(from_server["power_mean_watts"], features(SMI)["power_mean_watts"], rel=1e-3)


GPUSTAT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-outputs" / "nvsmi-csv-gpustat-5.csv"
GPUSTAT_FIELDS = "index,uuid,name,temperature.gpu,utilization.gpu,memory.used,memory.total"


def test_fields_reads_a_headerless_nvidia_smi_csv_and_is_refused_elsewhere() -> None:
    if not GPUSTAT.is_file():
        pytest.fail(f"corpus file not found at {GPUSTAT}: CI keeps ../shared beside the repository")
    base = ("estimate", "--job-id", "j1", "--duration-hours", "72", "--output", "json")
    read = zest(*base, "--source", str(GPUSTAT), "--fields", GPUSTAT_FIELDS)
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["telemetry"]["features"]["gpus"] == 8
    refused = zest(*base, "--source", str(GPUSTAT))
    assert refused.returncode == 6
    assert "give the --query-gpu list it was recorded with as --fields" in refused.stderr
    misplaced = zest(*base, "--source", "example", "--fields", GPUSTAT_FIELDS)
    assert misplaced.returncode == 2
    assert "--fields names the columns of a capture file without its header" in misplaced.stderr
