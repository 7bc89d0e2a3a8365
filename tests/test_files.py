"""Capture files: nvidia-smi CSV, dcgmi dmon, Prometheus scrapes and zest Parquet read into one frame."""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pandas.testing import assert_frame_equal

from collectors import files
from collectors.errors import CaptureWriteError, JobNotFound, MalformedCapture, SourceUnavailable
from collectors.files import (
    DCGMI_DMON,
    METADATA_KEY,
    NVIDIA_SMI,
    PROMETHEUS,
    PROMETHEUS_API,
    ZEST_PARQUET,
    read_capture,
    write_capture,
)
from collectors.metrics import MIB
from collectors.schema import (
    COLUMNS,
    GPU,
    GPU_MODEL,
    HOST,
    JOB_ID,
    LABELS,
    TIMESTAMP,
    conform,
    conform_summary,
    constant_label,
    fill_label,
    is_label_dtype,
    label_column,
    mig_gpu,
    mig_parent,
    screen_summary,
    whole_gpus_split_into_instances,
)

CAPTURES = Path(__file__).parent / "data" / "captures"
SMI = CAPTURES / "a100x2_job4242_smi.csv"
DCGM_FEDERATE = CAPTURES / "a100x2_job4242_dcgm_federate.prom.gz"
ZEST = CAPTURES / "a100x2_job4242.zest.parquet"
SMI_NOUNITS = CAPTURES / "h100x4_smi_nounits_appended.csv"
DMON = CAPTURES / "a100x2_dmon_na_nw.txt"
DCGM_K8S_MIG = CAPTURES / "a100x2_dcgm_k8s_mig.prom"
DCGM_SHARED = CAPTURES / "a100_dcgm_shared_gpu.prom"
JOBSTATS = CAPTURES / "h100x4_jobstats_federate.prom"

START = datetime(2026, 11, 24, 8, 0, 1, 123000, tzinfo=UTC)  # first sample of job 4242
A100 = "NVIDIA A100-SXM4-80GB"


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the same telemetry in three formats ---------------------------------------


def test_nvidia_smi_dcgm_scrape_and_zest_parquet_give_the_same_frame() -> None:
    smi = read_capture(SMI, "4242", host="gpu-node-07").frame
    dcgm = read_capture(DCGM_FEDERATE, "4242").frame
    zest = read_capture(ZEST, "4242").frame

    assert len(smi) == len(dcgm) == len(zest) == 24
    assert_frame_equal(dcgm, zest)  # the exporter carries every signal zest has
    nvidia_smi_columns = [TIMESTAMP, *LABELS, "gpu_util_ratio", "mem_used_bytes", "mem_total_bytes"]
    assert_frame_equal(smi[nvidia_smi_columns], dcgm[nvidia_smi_columns])
    # nvidia-smi prints power with two decimals, DCGM with three.
    assert_frame_equal(smi[["power_watts"]], dcgm[["power_watts"]], check_exact=False, atol=0.005, rtol=0)
    assert smi["sm_active_ratio"].isna().all()  # a signal nvidia-smi lacks is NaN, never zero


def test_dcgm_total_memory_is_used_plus_free_plus_reserved() -> None:
    frame = read_capture(DCGM_FEDERATE).frame
    assert (frame["mem_total_bytes"] == 81920 * MIB).all()


# --- nvidia-smi ----------------------------------------------------------------


def test_nvidia_smi_with_units_reads_values_timestamps_and_identity() -> None:
    capture = read_capture(SMI)
    first = capture.frame.iloc[0]
    assert capture.source_format == NVIDIA_SMI
    assert first[TIMESTAMP] == utc("2026-11-24 08:00:01.123")
    assert (first[GPU], first[GPU_MODEL]) == ("0", A100)
    assert first["gpu_util_ratio"] == pytest.approx(0.97)
    assert first["mem_used_bytes"] == 30412 * MIB
    assert first["power_watts"] == pytest.approx(402.00)
    assert pd.isna(first[HOST]) and pd.isna(first[JOB_ID])
    assert any("assumed UTC" in note for note in capture.notes)
    assert list(capture.frame.columns) == list(COLUMNS)


def test_nvidia_smi_nounits_log_appended_twice_skips_the_repeated_header_and_reads_na_as_missing() -> None:
    capture = read_capture(SMI_NOUNITS, host="della-h13n2")
    frame = capture.frame
    assert len(frame) == 2 * 3 * 4  # two runs of three samples of four GPUs
    gpu3 = frame[frame[GPU] == "3"]
    first_run = gpu3[TIMESTAMP] < utc("2026-11-23 23:00")
    assert gpu3.loc[first_run, "power_watts"].isna().all()  # [N/A]
    assert gpu3.loc[first_run, "mem_total_bytes"].isna().all()  # [Not Supported]
    assert gpu3.loc[~first_run, "power_watts"].tolist() == pytest.approx([69.81, 72.31, 74.81])
    assert frame.loc[frame[GPU] == "0", "gpu_util_ratio"].iloc[0] == pytest.approx(0.88)
    assert (frame[HOST] == "della-h13n2").all()
    assert any("repeated header" in note for note in capture.notes)
    assert any("[N/A]" in note for note in capture.notes)


def test_nvidia_smi_uuid_names_the_gpu_when_index_is_not_queried(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "smi.csv",
        "timestamp, uuid, utilization.gpu [%]\n2026/11/24 08:00:01.123, GPU-5c3a9f02, 45 %\n",
    )
    assert read_capture(path).frame[GPU].tolist() == ["GPU-5c3a9f02"]


def test_nvidia_smi_without_header_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path, "smi.csv", "2026/11/24 08:00:01.123, 0, 45 %, 1234 MiB\n")
    with pytest.raises(MalformedCapture, match=r"smi\.csv:1: .*as --fields"):
        read_capture(path)


@pytest.mark.parametrize(
    ("record", "what"),
    [
        ("2026/11/24 08:00:02.123, 0, 45 %", r":3: 3 cells for the 4 columns"),
        (
            "2026/11/24 08:00:02.123, 0, 45 %, 1234 MHz",
            r":3: memory\.used value '1234 MHz' is not a number in MiB",
        ),
        ("24.11.2026 08:00, 0, 45 %, 1234 MiB", r":3: timestamp '24\.11\.2026 08:00' is not"),
    ],
)
def test_nvidia_smi_bad_record_names_file_and_line(tmp_path: Path, record: str, what: str) -> None:
    header = "timestamp, index, utilization.gpu [%], memory.used [MiB]"
    good = "2026/11/24 08:00:01.123, 0, 44 %, 1200 MiB"
    path = write(tmp_path, "smi.csv", f"{header}\n{good}\n{record}\n")
    with pytest.raises(MalformedCapture, match=rf"smi\.csv{what}"):
        read_capture(path)


def test_nvidia_smi_without_a_gpu_field_names_gpus_by_row_order_within_each_tick(tmp_path: Path) -> None:
    records = [
        "2026/11/24 08:00:01.123, 45 %",
        "2026/11/24 08:00:01.131, 55 %",
        "2026/11/24 08:00:02.125, 46 %",
        "2026/11/24 08:00:02.129, 56 %",
    ]
    path = write(tmp_path, "smi.csv", "timestamp, utilization.gpu [%]\n" + "\n".join(records) + "\n")
    capture = read_capture(path)
    assert capture.frame[GPU].tolist() == ["0", "1", "0", "1"]
    assert capture.frame["gpu_util_ratio"].tolist() == pytest.approx([0.45, 0.55, 0.46, 0.56])
    assert any("names no GPU" in note for note in capture.notes)


@pytest.mark.parametrize("field", ["uuid", "pci.bus_id", "gpu_uuid", "gpu_bus_id"])
def test_nvidia_smi_uuid_or_pci_bus_id_names_the_gpu(tmp_path: Path, field: str) -> None:
    path = write(
        tmp_path,
        "smi.csv",
        f"timestamp, {field}, utilization.gpu [%]\n2026/11/24 08:00:01.123, 00000000:3B:00.0, 45 %\n",
    )
    assert read_capture(path).frame[GPU].tolist() == ["00000000:3B:00.0"]


@pytest.mark.parametrize("null", ["[N/A]", "N/A", "[Not Supported]", "[Unknown Error]", "[GPU is lost]"])
def test_nvidia_smi_every_null_spelling_is_missing(tmp_path: Path, null: str) -> None:
    path = write(
        tmp_path,
        "smi.csv",
        f"index, utilization.gpu [%], power.draw [W]\n0, 45 %, {null}\n",
    )
    frame = read_capture(path).frame
    assert frame["gpu_util_ratio"].tolist() == [0.45]
    assert frame["power_watts"].isna().all()


def test_nvidia_smi_snapshot_without_timestamps_is_one_tick_at_the_file_time(tmp_path: Path) -> None:
    # Fields as a monitoring tool chose them: no timestamp, no index.
    header = (
        "name, fan.speed [%], memory.total [MiB], memory.used [MiB], utilization.gpu [%], temperature.gpu"
    )
    rows = ["NVIDIA L4, 30 %, 23034 MiB, 1200 MiB, 12 %, 41", "NVIDIA L4, [N/A], 23034 MiB, 0 MiB, 0 %, 38"]
    path = write(tmp_path, "smi.csv", "\n".join([header, *rows]) + "\n")
    capture = read_capture(path, start_time=START)
    frame = capture.frame
    assert frame[GPU].tolist() == ["0", "1"]
    assert frame[TIMESTAMP].tolist() == [utc("2026-11-24T08:00:01.123"), utc("2026-11-24T08:00:01.123")]
    assert frame["mem_used_bytes"].tolist() == [1200 * MIB, 0]
    assert frame[GPU_MODEL].tolist() == ["NVIDIA L4", "NVIDIA L4"]
    assert any("no timestamp column: 1 tick(s)" in note for note in capture.notes)


def test_nvidia_smi_loop_without_timestamps_starts_a_tick_where_a_gpu_repeats(tmp_path: Path) -> None:
    path = write(tmp_path, "smi.csv", "index, utilization.gpu [%]\n0, 10 %\n1, 20 %\n0, 30 %\n1, 40 %\n")
    frame = read_capture(path, start_time=START, interval_seconds=5).frame
    assert frame[GPU].tolist() == ["0", "1", "0", "1"]
    assert frame["gpu_util_ratio"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    first, second = utc("2026-11-24T08:00:01.123"), utc("2026-11-24T08:00:06.123")
    assert frame[TIMESTAMP].tolist() == [first, first, second, second]


@pytest.mark.parametrize(
    ("text", "what"),
    [
        (
            "index, temperature.gpu, clocks.sm [MHz]\n0, 41, 1410 MHz\n",
            r":1: nvidia-smi CSV holding index, "
            r"temperature\.gpu, clocks\.sm: no utilization or activity signal",
        ),
        ("index, utilization.gpu [%]\n0, [N/A]\n", r":2: utilization\.gpu is \[N/A\]"),
        ("GeForce GTX 770, [Not Supported], 52 %\n", r":1: nvidia-smi CSV without its header line"),
        ("0, GPU-004f693d-767b-b215-b4a9-a18af0ffd643, 25, 0\n", r":1: nvidia-smi CSV without its header"),
    ],
)
def test_nvidia_smi_without_a_signal_or_header_is_refused_saying_what_it_lacks(
    tmp_path: Path, text: str, what: str
) -> None:
    path = write(tmp_path, "smi.csv", text)
    with pytest.raises(MalformedCapture, match=rf"smi\.csv{what}") as refused:
        read_capture(path)
    assert "\n" not in str(refused.value)


# --- dcgmi dmon ----------------------------------------------------------------


def test_dmon_places_samples_from_start_time_and_interval_and_reads_na_nw_as_missing() -> None:
    start = datetime(2026, 11, 24, 8, 0, 1, tzinfo=UTC)
    capture = read_capture(DMON, start_time=start, interval_seconds=2.0)
    frame = capture.frame
    assert capture.source_format == DCGMI_DMON
    assert len(frame) == 10
    expected_times = [pd.Timestamp(start + timedelta(seconds=2 * k)) for k in range(5) for _ in range(2)]
    assert frame[TIMESTAMP].tolist() == expected_times
    assert frame[GPU].tolist() == ["0", "1"] * 5
    first_sample = frame.iloc[:2]
    assert first_sample["sm_active_ratio"].isna().all()  # N/A
    assert first_sample["pcie_tx_bytes_per_second"].isna().all()
    assert frame.loc[frame[GPU] == "1", "tensor_active_ratio"].isna().all()  # N/W
    assert frame.loc[frame[GPU] == "0", "tensor_active_ratio"].iloc[1] == pytest.approx(0.290)
    assert frame["gpu_util_ratio"].iloc[0] == pytest.approx(0.97)
    assert (frame["mem_total_bytes"] == 81920 * MIB).all()  # FBTTL
    assert frame["power_watts"].iloc[1] == pytest.approx(413.017)
    assert frame["pcie_rx_bytes_per_second"].iloc[2] == 54_000_000
    assert any("spaced 2 s" in note for note in capture.notes)
    assert any("N/W" in note for note in capture.notes)


def test_dmon_without_start_time_ends_at_the_file_modification_time(tmp_path: Path) -> None:
    path = tmp_path / "dmon.txt"
    shutil.copy(DMON, path)
    written = datetime(2026, 11, 24, 9, 0, 0, tzinfo=UTC)
    os.utime(path, (written.timestamp(), written.timestamp()))
    capture = read_capture(path, "4242")
    assert capture.frame[TIMESTAMP].max() == pd.Timestamp(written)
    assert capture.frame[TIMESTAMP].min() == pd.Timestamp(written - timedelta(seconds=4))  # default 1 s
    assert (capture.frame[JOB_ID] == "4242").all()
    assert any("modification time" in note for note in capture.notes)


def test_dmon_derives_total_memory_and_names_mig_instances_and_skips_other_entities(tmp_path: Path) -> None:
    text = """\
#Entity   FBUSD       FBFRE       FBRSV       NVLTX       NVLRX
ID
GPU 0     1000        900         100         300         200
GPU-I 3   500         400         N/A         N/A         N/A
Switch 0  N/A         N/A         N/A         N/A         N/A
GPU 0     1010        890         100         310         210
GPU-I 3   505         395         N/A         N/A         N/A
"""
    frame = read_capture(write(tmp_path, "dmon.txt", text), start_time=START).frame
    assert frame[GPU].tolist() == ["0", "i:3", "0", "i:3"]
    assert frame["mem_total_bytes"].iloc[0] == 2000 * MIB  # used + free + reserved
    assert pd.isna(frame["mem_total_bytes"].iloc[1])  # reserved reads N/A: total unknown
    assert frame["nvlink_bytes_per_second"].iloc[0] == 500  # TX + RX
    assert frame[TIMESTAMP].iloc[2] == pd.Timestamp(START + timedelta(seconds=1))


@pytest.mark.parametrize(
    ("text", "what"),
    [
        (
            "#Entity SMACT\nID\nError setting watches. Result: The profiling module returned an error\n",
            r":3: dcgmi dmon printed an error and no samples \('Error setting watches\. .*'\): mend",
        ),
        ("#Entity GPUTL SMACT\nID\nGPU 1  45\n", r":3: dcgmi dmon rows with another number of values"),
        ("#Entity GPUTL SMACT\nGPU 0  45  half\n", r":2: SMACT value 'half' is not a number"),
        ("#Entity GPUTL\nID\n", r":2: dcgmi dmon output without GPU rows"),
    ],
)
def test_dmon_malformed_names_file_and_line(tmp_path: Path, text: str, what: str) -> None:
    with pytest.raises(MalformedCapture, match=rf"dmon\.txt{what}"):
        read_capture(write(tmp_path, "dmon.txt", text))


# --- Prometheus scrapes --------------------------------------------------------


def test_dcgm_kubernetes_mig_scrapes_without_timestamps() -> None:
    start = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)
    capture = read_capture(DCGM_K8S_MIG, start_time=start, interval_seconds=15)
    frame = capture.frame
    assert capture.source_format == PROMETHEUS
    assert len(frame) == 3 * 3
    assert sorted(set(frame[TIMESTAMP])) == [
        pd.Timestamp(start + timedelta(seconds=15 * k)) for k in range(3)
    ]
    assert set(frame[HOST]) == {"gpu-node-12"}  # the newer, lower-case hostname label
    by_gpu = frame.groupby(GPU)[JOB_ID].first().to_dict()
    assert by_gpu == {
        "0/1": "nlp/bert-finetune-6f9c7d5b8-x2kq4",
        "0/2": "nlp/llama-eval-0",
        "1": "vision/resnet-train-worker-0",
    }
    mig = frame[frame[GPU] == "0/1"].iloc[0]
    assert pd.isna(mig["gpu_util_ratio"])  # DCGM reports no GPU_UTIL for MIG instances
    assert mig["mem_total_bytes"] == (21344 + 18848) * MIB  # used + free, reserved absent
    assert mig["sm_active_ratio"] == pytest.approx(0.612)
    assert frame.loc[frame[GPU] == "1", "gpu_util_ratio"].iloc[0] == pytest.approx(0.96)
    assert any("3 scrape(s) spaced 15 s" in note for note in capture.notes)


def test_dcgm_scrape_is_filtered_to_the_requested_pod() -> None:
    frame = read_capture(DCGM_K8S_MIG, "nlp/llama-eval-0").frame
    assert set(frame[GPU]) == {"0/2"}
    assert len(frame) == 3


def test_job_not_in_a_labelled_file_names_the_jobs_it_holds() -> None:
    with pytest.raises(
        JobNotFound, match=r"job nlp/nope;.*nlp/bert-finetune-6f9c7d5b8-x2kq4, nlp/llama-eval-0"
    ):
        read_capture(DCGM_K8S_MIG, "nlp/nope")


def test_job_not_found_lists_only_the_first_few_jobs(tmp_path: Path) -> None:
    lines = [f'DCGM_FI_DEV_GPU_UTIL{{gpu="{g}",hpc_job="{100 + g}"}} 50' for g in range(8)]
    path = write(tmp_path, "scrape.prom", "\n".join(lines) + "\n")
    with pytest.raises(JobNotFound, match=r"job\(s\) 100, 101, 102, 103, 104 and 3 more: pass one$"):
        read_capture(path, "999")


def test_a_gpu_shared_by_two_jobs_yields_a_copy_for_each_job() -> None:
    frame = read_capture(DCGM_SHARED, start_time=START).frame
    shared = frame[frame[GPU] == "0"]
    assert sorted(shared[JOB_ID]) == ["5101", "5102"]
    signals = ["gpu_util_ratio", "mem_used_bytes", "power_watts"]
    assert_frame_equal(
        shared[signals].iloc[[0]].reset_index(drop=True), shared[signals].iloc[[1]].reset_index(drop=True)
    )
    assert set(frame[HOST]) == {"gpu-node-03"}  # the older Hostname label

    only = read_capture(DCGM_SHARED, "5102", start_time=START).frame
    assert only[[GPU, JOB_ID]].values.tolist() == [["0", "5102"]]
    assert only["power_watts"].iloc[0] == pytest.approx(288.771)


def test_jobstats_federated_scrapes_convert_units_and_strip_the_port() -> None:
    capture = read_capture(JOBSTATS)
    frame = capture.frame
    assert len(frame) == 2 * 4
    assert set(frame[HOST]) == {"della-l01g3"}
    assert sorted(set(frame[TIMESTAMP])) == [utc("2026-11-24 09:30:00.017"), utc("2026-11-24 09:30:30.017")]
    gpu0 = frame[frame[GPU] == "0"].iloc[0]
    assert gpu0["power_watts"] == pytest.approx(612.488)  # milliwatts
    assert gpu0["gpu_util_ratio"] == pytest.approx(1.0)  # duty cycle in %
    assert gpu0["sm_active_ratio"] == pytest.approx(0.932)  # GPM "_percent" is a 0-1 fraction
    assert gpu0["mem_total_bytes"] == 85520809984
    assert gpu0[GPU_MODEL] == "NVIDIA H100 80GB HBM3"
    assert frame.loc[frame[GPU] == "3", JOB_ID].isna().all()  # idle GPU: empty jobid
    assert not any("without timestamps" in note for note in capture.notes)

    job = read_capture(JOBSTATS, "61834201").frame
    assert sorted(set(job[GPU])) == ["0", "1"]
    assert len(job) == 4


def test_jobstats_mig_instance_and_older_kubernetes_labels(tmp_path: Path) -> None:
    text = """\
nvidia_gpu_duty_cycle{GPU_I_ID="5",jobid="777",minor_number="2",instance="[fd00::12]:9445"} 40
DCGM_FI_DEV_FB_USED{gpu="1",pod_name="trainer-0",pod_namespace="legacy",Hostname="n1"} 2048
"""
    frame = read_capture(write(tmp_path, "scrape.prom", text), start_time=START).frame
    rows = frame.set_index(GPU)
    assert rows.loc["2/5", JOB_ID] == "777"
    assert rows.loc["2/5", HOST] == "fd00::12"
    assert rows.loc["1", JOB_ID] == "legacy/trainer-0"
    assert rows.loc["1", "mem_used_bytes"] == 2048 * MIB


def test_concatenated_scrapes_without_comments_split_where_the_first_series_recurs(tmp_path: Path) -> None:
    scrape = (
        'DCGM_FI_DEV_GPU_UTIL{gpu="0"} {u}\n'
        'DCGM_FI_DEV_GPU_UTIL{gpu="1"} {u}\n'
        'DCGM_FI_DEV_POWER_USAGE{gpu="0"} 300\n'
    )
    text = "".join(scrape.replace("{u}", str(u)) for u in (10, 20, 30))
    capture = read_capture(write(tmp_path, "scrapes.prom", text), start_time=START, interval_seconds=60)
    gpu0 = capture.frame[capture.frame[GPU] == "0"]
    assert gpu0["gpu_util_ratio"].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert gpu0[TIMESTAMP].tolist() == [pd.Timestamp(START + timedelta(minutes=k)) for k in range(3)]


def test_prometheus_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).\n# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n"
    text += 'DCGM_FI_DEV_GPU_UTIL{gpu="0"} 45\nDCGM_FI_DEV_GPU_UTIL{gpu="1"} N/A\n'
    with pytest.raises(MalformedCapture, match=r"scrape\.prom:4: not Prometheus text exposition"):
        read_capture(write(tmp_path, "scrape.prom", text))


def test_prometheus_text_without_gpu_series_is_refused(tmp_path: Path) -> None:
    text = "# HELP node_load1 1m load average.\n# TYPE node_load1 gauge\nnode_load1 0.42\n"
    with pytest.raises(MalformedCapture, match=r"without dcgm-exporter or jobstats GPU series"):
        read_capture(write(tmp_path, "node.prom", text))


# --- Prometheus HTTP API answers (JSON) -----------------------------------------


def _api(result_type: str, result: list[dict[str, object]]) -> str:
    return json.dumps({"status": "success", "data": {"resultType": result_type, "result": result}})


def test_prometheus_api_matrix_of_dcgm_and_jobstats_series(tmp_path: Path) -> None:
    dcgm = {"__name__": "DCGM_FI_DEV_GPU_UTIL", "gpu": "0", "Hostname": "node1", "hpc_job": "77"}
    power = {**dcgm, "__name__": "DCGM_FI_DEV_POWER_USAGE"}
    duty = {"__name__": "nvidia_gpu_duty_cycle", "minor_number": "1", "instance": "node2:9445", "jobid": "77"}
    text = _api(
        "matrix",
        [
            {"metric": dcgm, "values": [[1767225600, "40"], [1767225630.5, "60"]]},
            {"metric": power, "values": [[1767225600, "250.5"]]},
            {"metric": duty, "values": [[1767225600, "90"]]},
        ],
    )
    capture = read_capture(write(tmp_path, "answer.json", text))
    assert capture.source_format == PROMETHEUS_API
    frame = capture.frame
    gpu0 = frame[frame[GPU] == "0"]
    assert gpu0["gpu_util_ratio"].tolist() == pytest.approx([0.4, 0.6])
    assert gpu0["power_watts"].iloc[0] == pytest.approx(250.5) and pd.isna(gpu0["power_watts"].iloc[1])
    assert gpu0[TIMESTAMP].tolist() == [
        pd.Timestamp("2026-01-01T00:00:00Z"),
        pd.Timestamp("2026-01-01T00:00:30.500Z"),
    ]
    gpu1 = frame[frame[GPU] == "1"].iloc[0]
    assert gpu1["gpu_util_ratio"] == pytest.approx(0.9)
    assert gpu1[HOST] == "node2"
    assert set(frame[JOB_ID]) == {"77"}


def test_prometheus_api_vector_is_gzip_tolerant(tmp_path: Path) -> None:
    labels = {"__name__": "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gpu": "3", "GPU_I_ID": "2"}
    text = _api("vector", [{"metric": labels, "value": [1767225600.082, "0.25"]}])
    path = tmp_path / "answer.json.gz"
    path.write_bytes(gzip.compress(text.encode()))
    capture = read_capture(path)
    assert capture.frame[GPU].tolist() == ["3/2"]
    assert capture.frame["gpu_util_ratio"].tolist() == [0.25]
    assert any("read from the former" in note for note in capture.notes)


@pytest.mark.parametrize(
    ("text", "what"),
    [
        (
            _api("vector", [{"metric": {"gpu": "0"}, "value": [1767225600, "5"]}]),
            r"a\.json:1: a Prometheus API vector answer with 1 series without a metric name",
        ),
        (
            _api("vector", [{"metric": {"__name__": "DCGM_FI_DEV_GPU_UTIL"}, "value": [1767225600, "5"]}]),
            r"a\.json:1: .* 1 GPU series without per-GPU labels",
        ),
        (_api("vector", []), r"a\.json:1: a Prometheus API vector answer with no series"),
        (
            json.dumps({"status": "success", "data": {"resultType": "scalar", "result": [1, "2"]}}),
            r"a\.json:1: a Prometheus API answer of type 'scalar'",
        ),
        (
            json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}),
            r"a\.json:1: a Prometheus API error answer \(bad_data: parse error\)",
        ),
        ('{"status": "success",\n "data": {"resultType": "vector", "res', r"a\.json:2: .* not valid JSON"),
        (
            _api("vector", [{"metric": {"__name__": "DCGM_FI_DEV_GPU_UTIL", "gpu": "0"}, "value": [1, "x"]}]),
            r"a\.json:1: series DCGM_FI_DEV_GPU_UTIL holds \[1, 'x'\]",
        ),
    ],
)
def test_prometheus_api_answer_without_per_gpu_series_is_refused(
    tmp_path: Path, text: str, what: str
) -> None:
    with pytest.raises(MalformedCapture, match=what) as refused:
        read_capture(write(tmp_path, "a.json", text))
    assert "\n" not in str(refused.value)


# --- zest Parquet --------------------------------------------------------------


def test_write_then_read_returns_the_frame_and_notes(tmp_path: Path) -> None:
    original = read_capture(DCGM_K8S_MIG, start_time=START)
    path = tmp_path / "capture.parquet"
    write_capture(original.frame, path, notes=original.notes)
    again = read_capture(path)
    assert again.source_format == ZEST_PARQUET
    assert_frame_equal(again.frame, original.frame)
    assert again.notes == original.notes
    header = json.loads(pq.read_schema(path).metadata[METADATA_KEY])
    assert header["format_version"] == 1
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"


def test_parquet_read_in_batches_whose_dictionaries_differ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of 3 rows, each with its own label dictionary, missing labels and times in nanoseconds."""
    rows = 10
    times = pd.date_range("2026-11-24T08:00:00.000000001Z", periods=rows, freq="s")
    table = pa.table(
        {
            TIMESTAMP: pa.array(times, pa.timestamp("ns", tz="UTC")),
            HOST: pa.array(["n2", "n1", None, "n3", "n1", "n2", "n1", None, "n4", "n1"]),
            GPU: pa.array([str(i % 4) for i in range(rows)]),
            JOB_ID: pa.array(["7"] * rows),
            "power_watts": pa.array([float(100 + i) for i in range(rows)]),
            "sm_active_ratio": pa.array(
                [0.5] * 5 + [None] * 5, pa.float64()
            ),  # a null, as other writers give
        }
    )
    path = tmp_path / "batches.parquet"
    header = json.dumps({"format_version": 1, "notes": ["kept"]}).encode()
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: header}), path, row_group_size=3)
    monkeypatch.setattr(files, "_PARQUET_BATCH_ROWS", 3)
    capture = read_capture(path)
    frame = capture.frame
    assert capture.notes[0] == "kept"
    assert [None if pd.isna(h) else h for h in frame[HOST]] == [
        "n2", "n1", None, "n3", "n1", "n2", "n1", None, "n4", "n1"
    ]  # fmt: skip
    assert list(frame[HOST].cat.categories) == ["n1", "n2", "n3", "n4"]  # sorted, whatever batch named them
    assert frame[GPU].tolist() == [str(i % 4) for i in range(rows)]
    assert frame[GPU_MODEL].isna().all()  # a label the file lacks is missing, not an error
    assert (frame[TIMESTAMP] == pd.Series(times)).all()  # nanoseconds kept
    assert frame["power_watts"].tolist() == [float(100 + i) for i in range(rows)]
    assert frame["sm_active_ratio"].isna().sum() == 5
    assert frame["tensor_active_ratio"].isna().all()


def test_a_capture_without_times_in_its_time_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "strings.parquet"
    header = json.dumps({"format_version": 1}).encode()
    table = pa.table({TIMESTAMP: ["2026-11-24T08:00:00Z"], "power_watts": [1.0]})
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: header}), path)
    with pytest.raises(MalformedCapture, match=r"column timestamp holds string, not times") as refused:
        read_capture(path)
    assert "\n" not in str(refused.value)


def test_host_and_job_given_for_a_parquet_capture_without_them(tmp_path: Path) -> None:
    frame = read_capture(ZEST).frame.copy()
    frame[HOST] = None
    frame[JOB_ID] = None
    path = tmp_path / "anonymous.parquet"
    write_capture(frame, path)
    capture = read_capture(path, "99", host="node9")
    assert (capture.frame[HOST] == "node9").all()
    assert (capture.frame[JOB_ID] == "99").all()
    assert list(capture.frame[JOB_ID].cat.categories) == ["99"]
    assert capture.frame[GPU].tolist() == frame[GPU].tolist()


def test_parquet_of_another_format_version_is_refused(tmp_path: Path) -> None:
    table = pa.Table.from_pandas(conform(read_capture(ZEST).frame), preserve_index=False)
    path = tmp_path / "future.parquet"
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: b'{"format_version": 2}'}), path)
    with pytest.raises(MalformedCapture, match=r"format 2; this zest reads format 1"):
        read_capture(path)


def test_parquet_that_is_not_a_zest_capture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), path)
    with pytest.raises(MalformedCapture, match=r"without zest\.capture metadata"):
        read_capture(path)


def test_write_into_a_missing_directory_raises_capture_write_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureWriteError, match=r"cannot write capture"):
        write_capture(read_capture(ZEST).frame, tmp_path / "no" / "such" / "dir.parquet")


def test_a_write_that_fails_midway_leaves_the_old_capture_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "job.parquet"
    write_capture(read_capture(SMI).frame, path)
    before = path.read_bytes()

    def disk_full(table: pa.Table, where: Path, **_: object) -> None:
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(CaptureWriteError, match=r"No space left on device"):
        write_capture(read_capture(ZEST).frame, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["job.parquet"]


# --- any format ----------------------------------------------------------------


def test_gzip_is_read_by_content_whatever_the_name(tmp_path: Path) -> None:
    path = tmp_path / "gpu.log"
    path.write_bytes(gzip.compress(SMI.read_bytes()))
    assert_frame_equal(read_capture(path).frame, read_capture(SMI).frame)


def test_a_file_without_job_labels_belongs_to_the_given_job() -> None:
    assert read_capture(SMI).frame[JOB_ID].isna().all()
    capture = read_capture(SMI, "4242")
    assert (capture.frame[JOB_ID] == "4242").all()
    assert capture.frame[JOB_ID].dtype == conform(capture.frame)[JOB_ID].dtype
    assert any("attributed to job 4242" in note for note in capture.notes)


def test_missing_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match=r"nope\.csv: cannot read capture file"):
        read_capture(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b'{"gpu": 0, "util": 45}\n', r"x:1: unknown capture format; accepted formats: nvidia-smi"),
        (b"\n\n", r"x:1: the file is empty"),
        (b"\x1f\x8b\x08\x00garbage", r"x:1: corrupt or truncated gzip data"),
        (b"timestamp, index\n\xff\xfe\n", r"x:2: not UTF-8 text"),
    ],
)
def test_unreadable_content_is_malformed(tmp_path: Path, content: bytes, what: str) -> None:
    path = tmp_path / "x"
    path.write_bytes(content)
    with pytest.raises(MalformedCapture, match=what):
        read_capture(path)


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_seconds must be > 0"):
        read_capture(DMON, interval_seconds=0)


# --- dcgm-exporter variants (label spellings, blanks, MIG without GPU_UTIL) -----


def test_dcgm_blank_values_are_missing_with_a_note(tmp_path: Path) -> None:
    # DCGM's int64 "not supported" and fp64 "blank" values, printed as readings by older exporters.
    text = """\
DCGM_FI_DEV_GPU_UTIL{gpu="0", UUID="GPU-a",container="",namespace="",pod=""} 9223372036854775794
DCGM_FI_DEV_POWER_USAGE{gpu="0", UUID="GPU-a",container="",namespace="",pod=""} 140737488355328
DCGM_FI_DEV_FB_USED{gpu="0", UUID="GPU-a",container="",namespace="",pod=""} 1024
"""
    capture = read_capture(write(tmp_path, "scrape.prom", text), start_time=START)
    row = capture.frame.iloc[0]
    assert pd.isna(row["gpu_util_ratio"]) and pd.isna(row["power_watts"])
    assert row["mem_used_bytes"] == 1024 * MIB
    assert pd.isna(row[JOB_ID])  # empty pod labels name no job
    assert any("2 value(s) reading DCGM's blank" in note for note in capture.notes)


def test_gr_engine_active_stands_for_gpu_util_only_where_it_is_absent(tmp_path: Path) -> None:
    text = """\
DCGM_FI_DEV_GPU_UTIL{gpu="0"} 50
DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="0"} 0.2
DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="0",GPU_I_PROFILE="3g.40gb",GPU_I_ID="2"} 0.75
"""
    capture = read_capture(write(tmp_path, "scrape.prom", text), start_time=START)
    util = capture.frame.set_index(GPU)["gpu_util_ratio"]
    assert util.to_dict() == {"0": pytest.approx(0.5), "0/2": pytest.approx(0.75)}
    assert any("1 sample(s) with DCGM_FI_PROF_GR_ENGINE_ACTIVE but no" in note for note in capture.notes)


def test_exported_pod_labels_name_the_job_and_instance_the_host(tmp_path: Path) -> None:
    # Stored by Prometheus: pod/namespace are the exporter's own, the workload's became exported_*.
    text = (
        'DCGM_FI_DEV_GPU_UTIL{gpu="3",exported_namespace="ml",exported_pod="train-0",'
        'namespace="gpu-operator",pod="nvidia-dcgm-exporter-57pvc",instance="10.0.0.7:9400"} 80\n'
    )
    row = read_capture(write(tmp_path, "scrape.prom", text), start_time=START).frame.iloc[0]
    assert row[JOB_ID] == "ml/train-0"
    assert row[HOST] == "10.0.0.7"


def test_lines_where_the_output_was_cut_are_skipped_with_a_note(tmp_path: Path) -> None:
    text = '# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).\n...\nDCGM_FI_DEV_GPU_UTIL{gpu="0"} 7\n...\n'
    capture = read_capture(write(tmp_path, "scrape.prom", text), start_time=START)
    assert capture.frame["gpu_util_ratio"].tolist() == pytest.approx([0.07])
    assert any("2 line(s) reading '...'" in note for note in capture.notes)


def test_series_listed_without_values_or_with_cut_labels_are_refused(tmp_path: Path) -> None:
    listed = 'DCGM_FI_DEV_GPU_UTIL{gpu="0", instance="10.0.0.7:9400"}\n'
    with pytest.raises(MalformedCapture, match=r"listed\.prom:1: a series without a sample value"):
        read_capture(write(tmp_path, "listed.prom", listed))
    cut = 'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a"} 1\nDCGM_FI_DEV_GPU_UTIL{gpu="1",...} 2\n'
    with pytest.raises(MalformedCapture, match=r"cut\.prom:2: labels cut short"):
        read_capture(write(tmp_path, "cut.prom", cut))


def test_dmon_reads_gract_and_field_ids_and_skips_terminal_noise_and_ragged_rows(tmp_path: Path) -> None:
    text = (
        "user@node01:~$ dcgmi dmon -e 1001,1002,155 -c 2\n"
        "\x1b[?2004l#Entity   GRACT   SMACT   POWER\n"
        "ID\n"
        "GPU 0     0.812   0.790   301.2\n"
        "GPU 1     N/A     N/A     N/A\n"
        "GPU 0     0.820   0.801   305.0\n"
        "GPU 1     0.100\n"  # cut by ^C
        "^C\n"
    )
    capture = read_capture(write(tmp_path, "dmon.txt", text), start_time=START)
    frame = capture.frame
    # GR_ENGINE_ACTIVE (1001) is the activity signal where GPUTL (203) is not watched
    assert frame["gpu_util_ratio"].tolist()[0] == pytest.approx(0.812)
    assert frame["gpu_util_ratio"].tolist()[2] == pytest.approx(0.820)
    assert math.isnan(frame["gpu_util_ratio"].tolist()[1])
    assert frame["power_watts"].tolist()[2] == pytest.approx(305.0)
    assert len(frame) == 3
    assert any("row(s) with another number of values" in n and "dmon.txt:7" in n for n in capture.notes)
    assert any("line(s) of other terminal output skipped" in n and "dmon.txt:1" in n for n in capture.notes)

    by_id = read_capture(
        write(tmp_path, "ids.txt", "# Entity  1001  1004\n      Id\nGPU 0  0.5  0.25\n")
    ).frame
    assert by_id[["gpu_util_ratio", "tensor_active_ratio"]].iloc[0].tolist() == [0.5, 0.25]


GPUSTAT_FIELDS = "index,uuid,name,temperature.gpu,utilization.gpu,memory.used,memory.total"


def test_headerless_nvidia_smi_csv_is_read_with_fields_in_one_or_several_arguments(tmp_path: Path) -> None:
    text = (
        "0, GPU-0, Tesla T4, 40, 17, 802 MiB, 15360 MiB\n1, GPU-1, Tesla T4, 41, [N/A], 10 MiB, 15360 MiB\n"
    )
    path = write(tmp_path, "smi.csv", text)
    for fields in ([GPUSTAT_FIELDS], GPUSTAT_FIELDS.split(",")):
        frame = read_capture(path, fields=fields, start_time=START).frame
        assert frame[GPU].tolist() == ["0", "1"]
        assert frame["gpu_util_ratio"].iloc[0] == pytest.approx(0.17)
        assert math.isnan(frame["gpu_util_ratio"].iloc[1])
        assert frame["mem_used_bytes"].tolist() == [802 * 2**20, 10 * 2**20]  # units in cells stripped


@pytest.mark.parametrize(
    ("text", "fields", "what"),
    [
        ("0, GPU-0, 802 MiB\n", None, r":1: .* give the --query-gpu list it was recorded with as --fields"),
        ("0, 17, 802\n", ["index,utilization.gpu"], r":1: 3 cells for the 2 fields given with --fields"),
        ("0, 17\n", ["index,temperature.gpu"], r":1: nvidia-smi CSV holding index, temperature.gpu: no util"),
        ("0, 17\n", ["fan speed"], r"--fields fan speed: not a --query-gpu list zest reads"),
        (
            'DCGM_FI_DEV_GPU_UTIL{gpu="0"} 5\n',
            ["index,utilization.gpu"],
            r":1: .*this file is prometheus text",
        ),
    ],
)
def test_headerless_nvidia_smi_csv_refusals(
    tmp_path: Path, text: str, fields: list[str] | None, what: str
) -> None:
    with pytest.raises(MalformedCapture, match=what):
        read_capture(write(tmp_path, "smi.csv", text), fields=fields)


def test_a_job_on_mig_instances_gets_its_instances_not_the_whole_gpu(tmp_path: Path) -> None:
    # dcgm-exporter with HPC job mapping: GPU 0 split in two instances held by jobs 111 and 222; the whole
    # GPU's series (100 %, 70000 MiB, shared by both) labelled with both jobs.
    text = (
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a",Hostname="n1",hpc_job="111"} 100\n'
        'DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-a",Hostname="n1",hpc_job="111"} 70000\n'
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a",Hostname="n1",hpc_job="222"} 100\n'
        'DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="0",UUID="GPU-a",Hostname="n1",GPU_I_ID="1",hpc_job="111"} 0.25\n'
        'DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-a",Hostname="n1",GPU_I_ID="1",hpc_job="111"} 1500\n'
        'DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="0",UUID="GPU-a",Hostname="n1",GPU_I_ID="2",hpc_job="222"} 0.75\n'
    )
    path = write(tmp_path, "mig.prom", text)
    first = read_capture(path, "111")
    assert first.frame[GPU].tolist() == ["0/1"]
    assert first.frame["gpu_util_ratio"].tolist() == [0.25]
    assert first.frame["mem_used_bytes"].tolist() == [1500 * MIB]
    assert any("job 111 holds MIG instances of GPU(s) 0" in note for note in first.notes)
    second = read_capture(path, "222").frame
    assert second[GPU].tolist() == ["0/2"] and second["gpu_util_ratio"].tolist() == [0.75]
    assert second["mem_used_bytes"].isna().all()  # the whole GPU's 70000 MiB is not the instance's


# --- label columns ---------------------------------------------------------------


def test_conform_makes_labels_categories_of_sorted_names() -> None:
    frame = conform(
        pd.DataFrame(
            {
                TIMESTAMP: pd.to_datetime(["2026-11-24T08:00:00Z"] * 3),
                HOST: ["n2", None, "n10"],
                GPU: pd.Categorical([1, 0, 1]),  # categories that are not strings
                JOB_ID: pd.array(["7", "7", pd.NA], dtype="string"),
            }
        )
    )
    for label in LABELS:
        assert isinstance(frame[label].dtype, pd.CategoricalDtype)
        assert pd.api.types.is_string_dtype(frame[label].cat.categories.dtype)
        assert frame[label].cat.categories.is_monotonic_increasing
    assert [None if pd.isna(h) else h for h in frame[HOST]] == ["n10", "n2", None]  # rows sorted by name
    assert frame[GPU].tolist() == ["1", "1", "0"]
    assert frame[JOB_ID].isna().tolist() == [True, False, False]
    assert frame[GPU_MODEL].isna().all()
    again = conform(frame)
    assert_frame_equal(again, frame)


def test_label_helpers_keep_the_names_sorted() -> None:
    column = label_column(pd.Series(["b", None, "d"]))
    filled = fill_label(column, "c")
    assert filled.tolist() == ["b", "c", "d"]
    assert list(filled.cat.categories) == ["b", "c", "d"]
    constant = constant_label("job 1", pd.RangeIndex(3))
    assert constant.tolist() == ["job 1"] * 3
    assert is_label_dtype(constant.dtype) and is_label_dtype(pd.StringDtype())
    assert not is_label_dtype(pd.CategoricalDtype([1, 2]))


def test_a_whole_gpu_is_left_out_only_for_the_owner_of_its_instances() -> None:
    """The one rule for MIG (capture files, Prometheus): the owner holding instance 0/1 drops GPU 0."""
    pairs = [
        (("j1", "n1"), "0"),
        (("j1", "n1"), "0/1"),
        (("j2", "n1"), "0"),  # another job on the whole GPU keeps it
        (("j1", "n2"), "0"),  # the same GPU index on another host is another GPU
        (("j1", "n1"), "1"),
    ]
    assert whole_gpus_split_into_instances(pairs) == {(("j1", "n1"), "0")}
    assert (mig_parent("0/1"), mig_parent("GPU-5d1e"), mig_gpu(0, 1)) == ("0", None, "0/1")


def test_screen_summary_leaves_out_only_the_impossible_signal_of_its_gpu() -> None:
    summary = conform_summary(
        pd.DataFrame(
            {
                HOST: ["n1", "n1", "n1"],
                GPU: ["0", "1", "2"],
                "sm_active_ratio__mean": [0.5, 2.0**47 / 120, 1.005],  # 1.005: rounding, kept
                "sm_active_ratio__p90": [0.6, 0.9, 1.0],
                "power_watts__mean": [300.0, 310.0, math.nan],
            }
        )
    )
    screened, notes = screen_summary(summary)
    assert screened["sm_active_ratio__mean"].tolist()[::2] == [0.5, 1.005]
    assert screened.loc[1, ["sm_active_ratio__mean", "sm_active_ratio__p90"]].isna().all()
    assert screened["power_watts__mean"].tolist()[:2] == [300.0, 310.0]  # the GPU's other signals stay
    assert len(notes) == 1 and notes[0].startswith("sm_active_ratio above its physical range on 1 GPU(s)")
    assert screen_summary(summary.drop(index=1))[1] == []
