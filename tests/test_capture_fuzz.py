"""Capture files under faults (issue 14, case 5): any bytes end in a frame of possible values or one line.

Mutated copies of the real captures go through every reader and through
``estimate-z`` and ``zest capture``: each ends in success or exit 6 (exit 5
where a mutation renamed the file's job), with one line on stderr, never a
traceback; values no GPU can have are dropped with a note naming the file and
line, and no infinity reaches the Z_e model.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import estimator.model.default as default_model
from collectors.errors import JobNotFound, MalformedCapture
from collectors.files import METADATA_KEY, read_capture
from collectors.schema import EARLIEST, LATEST, SIGNAL_RANGES, SIGNALS, TIMESTAMP, conform
from estimator.cli.main import estimate_z_main, main

CAPTURES = Path(__file__).parent / "data" / "captures"
#: Each seed capture and a job it holds.
SEEDS: dict[str, str] = {
    "a100x2_job4242_smi.csv": "4242",
    "h100x4_smi_nounits_appended.csv": "4242",
    "a100x2_dmon_na_nw.txt": "4242",
    "a100x2_job4242_dcgm_federate.prom.gz": "4242",
    "h100x4_jobstats_federate.prom": "61834201",
    "a100x2_dcgm_k8s_mig.prom": "nlp/llama-eval-0",
    "a100_dcgm_shared_gpu.prom": "5101",
    "a100x2_job4242.zest.parquet": "4242",
}
SEED_BYTES = {name: (CAPTURES / name).read_bytes() for name in SEEDS}
SEED_TEXT = {name: gzip.decompress(d) if d[:2] == b"\x1f\x8b" else d for name, d in SEED_BYTES.items()}
#: Numbers that broke the readers in the fuzz of issue 14, and the edges of what they accept.
NUMBERS: tuple[bytes, ...] = (
    b"-1.9", b"57", b"5.6e223", b"1e308", b"-1e308", b"1e400", b"NaN", b"nan", b"Inf", b"+Inf", b"-Inf",
    b"-0", b"0", b"-3", b"101", b"1.004", b"9223372036854775807", b"-9223372036854775808",
    b"-3600000", b"-62135596800000", b"253402300800000", b"99999999999999999999999", b"1e19",
)  # fmt: skip
#: Bytes that break a file's structure, whatever its format.
TOKENS: tuple[bytes, ...] = (
    *NUMBERS, b"9999/12/31 23:59:59.999", b"1969/12/31 23:00:00.000", b"0001/01/01 00:00:00.000",
    b"[N/A]", b"N/A", b"N/W", b'"', b",", b"\n", b"\r", b"\x00", b"\xff", b"{", b"}",
    b"#Entity GPUTL", b"# TYPE x gauge", b"timestamp, index",
    b"x" * 200_000,  # over csv's 128 KiB field limit
)  # fmt: skip
NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
CALCULATOR = ["--duration-hours", "150", "--no-slurm", "--output", "json"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A seed capture with one to three mutations, gzip-compressed or not; most replace a number, which
    keeps the file readable and its values possibly impossible."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEED_TEXT[name])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(("number",) * 5 + ("insert", "delete", "flip", "truncate")))
        at = draw(st.integers(0, len(data)))
        if kind == "number":
            numbers = list(NUMBER.finditer(data))
            if numbers:
                found = numbers[draw(st.integers(0, len(numbers) - 1))]
                data[found.start() : found.end()] = draw(st.sampled_from(NUMBERS))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[at:]
    out = bytes(data)
    return name, gzip.compress(out) if draw(st.booleans()) else out


def assert_possible(frame: pd.DataFrame) -> None:
    """Every signal of ``frame`` missing or in its physical range, every sample timed 2000-2100."""
    for signal, (low, high) in SIGNAL_RANGES.items():
        values = frame[signal].dropna()
        assert values.between(low, high).all(), (signal, values[~values.between(low, high)].tolist())
    assert frame[TIMESTAMP].notna().all()
    assert frame[TIMESTAMP].between(pd.Timestamp(EARLIEST), pd.Timestamp(LATEST)).all()


def assert_one_line_naming(message: str, path: Path) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    assert str(path) in message, message


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@contextlib.contextmanager
def model_inputs() -> Iterator[list[pd.DataFrame]]:
    """The feature rows handed to the Z_e model while the block runs."""
    seen: list[pd.DataFrame] = []
    real = default_model.predict_z_intervals

    def spy(model: Any, features: pd.DataFrame, **kwargs: Any) -> Any:
        seen.append(features.copy())
        return real(model, features, **kwargs)

    with mock.patch.object(default_model, "predict_z_intervals", spy):
        yield seen


def run(entry: Any, argv: list[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of a command run in this process, as its console script runs it."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        entry(argv)
    code = exit_.value.code
    return (code if isinstance(code, int) else 1), out.getvalue(), err.getvalue()


def assert_finite_within_ranges(features: pd.DataFrame) -> None:
    """No infinity, and the statistics of each signal within its range (NaN: a signal the file lacks)."""
    values = features.to_numpy(dtype=np.float64)
    assert not np.isinf(values).any(), features.T[np.isinf(values).any(axis=0)]
    for column in features.columns:
        for signal in SIGNALS:
            low, high = SIGNAL_RANGES[signal]
            stem = signal.removesuffix("_ratio")
            if signal.endswith("_ratio") and column.startswith(f"{stem}_") and column.endswith("_ratio"):
                assert features[column].dropna().between(low, high).all(), column
    if "power_mean_watts" in features:
        assert features["power_mean_watts"].dropna().between(*SIGNAL_RANGES["power_watts"]).all()


def assert_command_outcome(code: int, err: str, prog: str, path: Path) -> None:
    """Success, exit 6 (malformed) or 5 (a mutation renamed the file's job): one line naming the file."""
    assert code in (0, 5, 6), (code, err)
    if code:
        assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
        assert_one_line_naming(err, path)


# --- every reader ------------------------------------------------------------------------------------


@FUZZ
@given(case=mutated())
def test_case_5_any_bytes_give_a_frame_of_possible_values_or_one_line_naming_the_file(
    case: tuple[str, bytes], folder: Path
) -> None:
    name, data = case
    path = folder / "capture"
    path.write_bytes(data)
    try:
        capture = read_capture(path, SEEDS[name])
    except (MalformedCapture, JobNotFound) as exc:
        event(f"refused: {type(exc).__name__}")
        assert_one_line_naming(str(exc), path)
    else:
        event(f"read, {'with' if any('physical range' in n for n in capture.notes) else 'no'} value dropped")
        assert_possible(capture.frame)


# --- estimate-z and zest capture on the result ---------------------------------------------------------


@FUZZ
@given(case=mutated())
def test_case_5_estimate_z_and_capture_on_any_bytes_exit_0_or_6_with_one_line_and_no_inf_to_the_model(
    case: tuple[str, bytes], folder: Path
) -> None:
    name, data = case
    job = SEEDS[name]
    path, out = folder / "capture", folder / "out.parquet"
    path.write_bytes(data)
    with model_inputs() as seen:
        code, _, err = run(estimate_z_main, ["--job-id", job, "--source", str(path), *CALCULATOR])
    assert_command_outcome(code, err, "estimate-z", path)
    event(f"estimate-z exit {code}")
    for features in seen:
        assert_finite_within_ranges(features)

    capture = ["capture", "--job-id", job, "--source", str(path), "--output", str(out), "--force"]
    code, _, err = run(main, capture)
    assert_command_outcome(code, err, "zest", path)
    if code == 0:
        assert_possible(read_capture(out).frame)


# --- a zest Parquet capture holding anything --------------------------------------------------------

ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [-1.9, 57.0, 5.6e223, -0.03, 1.004, 0.0, 1.0, 400.0, 8e10]
)
ANY_NANOSECONDS = st.integers(-(2**63) + 1, 2**63 - 1) | st.integers(
    946_684_800 * 10**9, 4_102_444_800 * 10**9
)  # anything, or 2000-2100


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # each runs the model
@given(
    times=st.lists(ANY_NANOSECONDS, min_size=1, max_size=6),
    values=st.lists(ANY_FLOAT, min_size=6 * len(SIGNALS), max_size=6 * len(SIGNALS)),
)
def test_case_5_a_parquet_capture_of_impossible_values_reaches_the_model_only_as_possible_ones(
    times: list[int], values: list[float], folder: Path
) -> None:
    rows = len(times)
    columns: dict[str, Any] = {TIMESTAMP: pa.array(times, pa.timestamp("ns", tz="UTC"))}
    columns |= {"gpu": pa.array([str(i % 2) for i in range(rows)])}
    for k, signal in enumerate(SIGNALS):
        columns[signal] = pa.array(values[k * 6 : k * 6 + rows], pa.float64())
    path = folder / "any.parquet"
    header = json.dumps({"format_version": 1, "notes": []}).encode()
    pq.write_table(pa.table(columns).replace_schema_metadata({METADATA_KEY: header}), path)
    try:
        capture = read_capture(path, "7")
    except MalformedCapture as exc:
        assert_one_line_naming(str(exc), path)
        span = (int(EARLIEST.timestamp()) * 10**9, int(LATEST.timestamp()) * 10**9)  # exact, as ints
        assert not pd.Series(times).between(*span, inclusive="left").any()
    else:
        assert_possible(capture.frame)
    with model_inputs() as seen:
        code, _, err = run(estimate_z_main, ["--job-id", "7", "--source", str(path), *CALCULATOR])
    assert_command_outcome(code, err, "estimate-z", path)
    for features in seen:
        assert_finite_within_ranges(features)


# --- what the fuzz of issue 14 found, one by one --------------------------------------------------------

SMI_HEADER = "timestamp, index, utilization.gpu [%], memory.used [MiB], memory.total [MiB], power.draw [W]\n"


def smi(*records: str) -> str:
    return SMI_HEADER + "".join(f"{r}\n" for r in records)


@pytest.mark.parametrize(
    ("text", "line", "signal"),
    [
        (smi("2026/11/24 08:00:01.000, 0, 40 %, 10 MiB, 80 MiB, 5.6e223 W"), 2, "power_watts"),
        (smi("2026/11/24 08:00:01.000, 0, 40 %, 10 MiB, 80 MiB, -5 W"), 2, "power_watts"),
        (smi("2026/11/24 08:00:01.000, 0, 40 %, 10 MiB, 80 MiB, inf W"), 2, "power_watts"),
        (smi("2026/11/24 08:00:01.000, 0, 40 %, -10 MiB, 80 MiB, 300 W"), 2, "mem_used_bytes"),
        (smi("2026/11/24 08:00:01.000, 0, 40 %, 10 MiB, 0 MiB, 300 W"), 2, "mem_total_bytes"),
        (smi("2026/11/24 08:00:01.000, 0, 5700 %, 10 MiB, 80 MiB, 300 W"), 2, "gpu_util_ratio"),
        ("#Entity SMACT\nID\nGPU 0  0.5\nGPU 0  -1.9\n", 4, "sm_active_ratio"),
        ("#Entity SMACT\nID\nGPU 0  0.5\nGPU 0  57\n", 4, "sm_active_ratio"),
        (
            'DCGM_FI_PROF_DRAM_ACTIVE{gpu="0"} 0.5 1795512600017\n'
            'DCGM_FI_PROF_DRAM_ACTIVE{gpu="0"} 57 1795512630017\n',
            2,
            "dram_active_ratio",
        ),
    ],
)  # fmt: skip
def test_case_5_impossible_values_are_dropped_with_a_note_naming_file_and_line(
    tmp_path: Path, text: str, line: int, signal: str
) -> None:
    path = tmp_path / "capture"
    path.write_text(text)
    capture = read_capture(path)
    assert_possible(capture.frame)
    assert capture.frame[signal].isna().any()
    assert any(f"first {signal}" in n and f"{path}:{line}" in n for n in capture.notes), capture.notes


def test_case_5_ratios_within_the_tolerance_are_clipped_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "dmon.txt"
    path.write_text("#Entity SMACT TENSO\nID\nGPU 0  1.004  -0.002\n")
    frame = read_capture(path).frame
    assert frame[["sm_active_ratio", "tensor_active_ratio"]].iloc[0].tolist() == [1.0, 0.0]


def test_case_5_nvidia_smi_nounits_log_with_negative_utilization_drops_it_with_a_note() -> None:
    path = CAPTURES / "h100x4_smi_nounits_appended.csv"
    capture = read_capture(path)
    gpu3 = capture.frame[capture.frame["gpu"] == "3"]["gpu_util_ratio"]
    assert gpu3.dropna().tolist() == pytest.approx([0.0, 0.01])  # -3, -6, -2 and -5 % dropped
    assert capture.frame["gpu_util_ratio"].dropna().min() >= 0
    assert any("4 value(s) outside" in n and f"{path}:9" in n for n in capture.notes), capture.notes


@pytest.mark.parametrize(
    "stamp",
    ["-3600000", "-62135596800000", "253402300800000", "99999999999999999999999", "NaN", "Inf", "1e400"],
)
def test_case_5_prometheus_samples_timed_outside_2000_2100_are_dropped_not_a_window_of_a_century(
    tmp_path: Path, stamp: str
) -> None:
    path = tmp_path / "scrape.prom"
    path.write_text(
        f'DCGM_FI_DEV_GPU_UTIL{{gpu="0"}} 50 1795512600017\nDCGM_FI_DEV_GPU_UTIL{{gpu="0"}} 60 {stamp}\n'
    )
    capture = read_capture(path)
    assert capture.frame[TIMESTAMP].tolist() == [pd.Timestamp("2026-11-24 09:30:00.017", tz="UTC")]
    assert any("timed outside 2000-2100" in n and f"{path}:2" in n for n in capture.notes), capture.notes


@pytest.mark.parametrize("stamp", ["9999/12/31 23:59:59.999", "1969/12/31 23:00:00.000"])
def test_case_5_nvidia_smi_records_timed_outside_2000_2100_are_dropped_and_a_file_of_them_refused(
    tmp_path: Path, stamp: str
) -> None:
    good = "2026/11/24 08:00:01.000, 0, 40 %, 10 MiB, 80 MiB, 300 W"
    path = tmp_path / "smi.csv"
    path.write_text(smi(good, f"{stamp}, 0, 40 %, 10 MiB, 80 MiB, 300 W"))
    capture = read_capture(path)
    assert len(capture.frame) == 1
    assert any(f"{path}:3" in n for n in capture.notes), capture.notes
    path.write_text(smi(f"{stamp}, 0, 40 %, 10 MiB, 80 MiB, 300 W"))
    with pytest.raises(MalformedCapture, match=r"smi\.csv:2: no sample timed between 2000 and 2100"):
        read_capture(path)


def test_case_5_a_5_mb_field_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "smi.csv"
    path.write_text(smi("2026/11/24 08:00:01.000, 0, 40 %, 10 MiB, 80 MiB, " + "9" * 5_000_000))
    with pytest.raises(MalformedCapture, match=r"smi\.csv:2: not a CSV record") as refused:
        read_capture(path)
    assert len(str(refused.value)) < 1000


def test_case_5_a_corrupted_parquet_is_exit_6_not_3(tmp_path: Path) -> None:
    data = bytearray((CAPTURES / "a100x2_job4242.zest.parquet").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(bytes(data[: len(data) - 12]) + b"PAR1")  # a footer length that lies
    code, _, err = run(estimate_z_main, ["--job-id", "4242", "--source", str(path), *CALCULATOR])
    assert code == 6, err
    assert err.startswith(f"estimate-z: error: {path}: unreadable Parquet") and err.count("\n") == 1


def test_case_5_a_huge_window_on_a_capture_keeps_it_all_without_overflow() -> None:
    smi_path = CAPTURES / "a100x2_job4242_smi.csv"
    argv = ["--job-id", "4242", "--source", str(smi_path), "--window", "9000000000d", *CALCULATOR]
    code, out, err = run(estimate_z_main, argv)
    assert code == 0, err
    features = json.loads(out)["telemetry"]["features"]
    assert math.isfinite(features["window_seconds"]) and features["window_seconds"] < 3600


def test_case_5_a_parquet_capture_timed_outside_2000_2100_is_refused_on_one_line(tmp_path: Path) -> None:
    frame = conform(pd.DataFrame({TIMESTAMP: [pd.Timestamp("1970-01-01", tz="UTC")], "gpu": ["0"]}))
    path = tmp_path / "old.parquet"
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: b'{"format_version": 1}'}), path)
    with pytest.raises(MalformedCapture, match=r"old\.parquet: row 1: no sample timed between 2000 and 2100"):
        read_capture(path)
