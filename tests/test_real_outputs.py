"""Every file of the corpus of real outputs, read or refused, through read_capture.

The corpus is ``../shared/data/real-outputs``.

Each file is verbatim from a public source (the corpus README gives them). The
expected GPUs and values below were read off the files by hand, not off zest's
output. CI keeps ``../shared`` beside the repository; without it these tests
fail, saying where it should be.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from collectors.errors import JobNotFound, MalformedCapture
from collectors.files import PROMETHEUS, Capture, read_capture
from collectors.metrics import MIB
from collectors.schema import GPU, GPU_MODEL, HOST, JOB_ID, TIMESTAMP

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "real-outputs"

#: Every dcgm-exporter and gpu-monitoring-tools scrape of the corpus: each one is read or refused below.
DCGM_FILES = (
    "dcgm-exporter-DCGM-226.prom",
    "dcgm-exporter-cloud-native-docs-dcgm-exporter-rst-mig.prom",
    "dcgm-exporter-dcgm-exporter-readme-k8s.prom",
    "dcgm-exporter-gpu-operator-472.prom",
    "dcgm-exporter-k8s-ai-conformance-kops-l4.prom",
    "dcgm-exporter-k8s-ai-conformance-viettel-l40s.prom",
    "gmt-exporter-gpu-monitoring-tools-readme-prometheus-dcgm.prom",
)

#: The refused files: the line named and what the file lacks.
REFUSED = {
    # HELP/TYPE, '...' cuts, then only SM_CLOCK, MEM_CLOCK and MEMORY_TEMP: nothing zest reads.
    "dcgm-exporter-dcgm-exporter-readme-k8s.prom": r":1: Prometheus text without dcgm-exporter or jobstats "
    r"GPU series that zest reads",
    # One DCGM_FI_DEV_GPU_UTIL{...} line copied from the Prometheus UI: no value.
    "dcgm-exporter-gpu-operator-472.prom": r":1: a series without a sample value",
    # Line 3 on: `{gpu="0",...,modelName="NVIDIA L40S",...}`, the labels cut by the author.
    "dcgm-exporter-k8s-ai-conformance-viettel-l40s.prom": r":3: labels cut short with '\.\.\.'",
}


def corpus_file(name: str) -> Path:
    path = CORPUS / name
    if not path.is_file():
        pytest.fail(
            f"corpus file not found at {path}: CI keeps ../shared/data/real-outputs beside the repository"
        )
    return path


def read(name: str) -> Capture:
    capture = read_capture(corpus_file(name))
    assert capture.source_format == PROMETHEUS
    return capture


def test_every_dcgm_exporter_file_of_the_corpus_is_covered() -> None:
    if not CORPUS.is_dir():
        pytest.fail(
            f"corpus not found at {CORPUS}: CI keeps ../shared/data/real-outputs beside the repository"
        )
    present = {p.name for p in CORPUS.iterdir() if p.name.startswith(("dcgm-exporter-", "gmt-exporter-"))}
    assert present == set(DCGM_FILES)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_with_one_line_saying_what_the_file_lacks(name: str) -> None:
    with pytest.raises(MalformedCapture, match=REFUSED[name]) as refused:
        read_capture(corpus_file(name))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(str(CORPUS / name))


def test_l40s_with_only_gr_engine_active_reads_it_as_gpu_util() -> None:
    # NVIDIA/DCGM#226: three L40S, DCGM_FI_PROF_GR_ENGINE_ACTIVE 0.000000 each, no GPU_UTIL;
    # GPUs 0 and 1 carry namespace="redacted",pod="tensorflow-0", GPU 2 no pod labels.
    capture = read("dcgm-exporter-DCGM-226.prom")
    rows = capture.frame.set_index(GPU)
    assert sorted(rows.index) == ["0", "1", "2"]
    assert rows["gpu_util_ratio"].tolist() == [0.0, 0.0, 0.0]
    assert set(rows[HOST]) == {"l40s.example.com"}
    assert set(rows[GPU_MODEL]) == {"NVIDIA L40S"}
    assert rows.loc["0", JOB_ID] == rows.loc["1", JOB_ID] == "redacted/tensorflow-0"
    assert pd.isna(rows.loc["2", JOB_ID])
    assert rows["sm_active_ratio"].isna().all()  # absent, never zero
    assert any("read from the former" in note for note in capture.notes)


def test_a100_with_a_mig_instance_is_two_gpus() -> None:
    # cloud-native-docs MIG section: whole GPU 0, then GPU_I_ID="13" of the same GPU; no GPU_UTIL in either.
    capture = read("dcgm-exporter-cloud-native-docs-dcgm-exporter-rst-mig.prom")
    rows = capture.frame.set_index(GPU)
    assert sorted(rows.index) == ["0", "0/13"]
    assert set(rows[HOST]) == {"ub20-a100-k8s"}
    whole, mig = rows.loc["0"], rows.loc["0/13"]
    assert whole["gpu_util_ratio"] == pytest.approx(0.995630)
    assert whole["tensor_active_ratio"] == pytest.approx(0.929260)
    assert whole["power_watts"] == pytest.approx(409.692)
    assert whole["mem_used_bytes"] == 4845 * MIB
    assert whole["mem_total_bytes"] == (4845 + 35690) * MIB  # used + free: the file has no FB_RESERVED
    assert whole["pcie_rx_bytes_per_second"] == 97863601
    assert whole["nvlink_bytes_per_second"] == 0  # NVLINK_BANDWIDTH_TOTAL 0
    assert mig["gpu_util_ratio"] == pytest.approx(0.995687)
    assert mig["dram_active_ratio"] == pytest.approx(0.800339)
    assert pd.isna(mig["power_watts"])  # the MIG block carries no power


def test_l4_full_default_scrape() -> None:
    # cncf/k8s-ai-conformance kops: one idle L4 with GPU_UTIL 0 and GR_ENGINE_ACTIVE 0.000000.
    capture = read("dcgm-exporter-k8s-ai-conformance-kops-l4.prom")
    frame = capture.frame
    assert frame[GPU].tolist() == ["0"]
    row = frame.iloc[0]
    assert row[HOST] == "i-030791dc5a37cd257"
    assert row[GPU_MODEL] == "NVIDIA L4"
    assert row["gpu_util_ratio"] == 0
    assert row["power_watts"] == pytest.approx(16.365)
    assert row["mem_total_bytes"] == (0 + 22563 + 470) * MIB  # used + free + reserved
    assert row["pcie_tx_bytes_per_second"] == 112603
    assert not any("read from the former" in note for note in capture.notes)  # GPU_UTIL was there


def test_gpu_monitoring_tools_dcgm_names() -> None:
    # The retired DCGM 1.x exporter: dcgm_gpu_utilization 0 (%), dcgm_power_usage 31.737 (W), gpu="0".
    frame = read("gmt-exporter-gpu-monitoring-tools-readme-prometheus-dcgm.prom").frame
    assert frame[GPU].tolist() == ["0"]
    assert frame["gpu_util_ratio"].tolist() == [0.0]
    assert frame["power_watts"].tolist() == pytest.approx([31.737])
    assert frame[HOST].isna().all()


#: Every nvidia-smi --query-gpu CSV of the corpus, each refused with the line named and what it lacks.
NVSMI_CSV_REFUSED = {
    # --format=csv,noheader: one GTX 770 row, 8 of 12 cells [Not Supported]; columns cannot be named.
    "nvsmi-csv-Megaminer-235.csv": r":1: nvidia-smi CSV without its header line",
    # --format=csv,noheader with units: 3 A100s by pci.bus_id, but no header names the columns.
    "nvsmi-csv-OmniOpt-doc-folder_structure.csv": r":1: nvidia-smi CSV without its header line",
    # --format=csv,noheader,nounits: 8 TITAN X; bare numbers whose columns only the command line named.
    "nvsmi-csv-gpustat-5.csv": r":1: nvidia-smi CSV without its header line",
    # name, driver_version, index of 2 T4s: nothing zest reads.
    "nvsmi-csv-k8s-ai-conformance-openshift.csv": r":1: nvidia-smi CSV holding name, driver_version, index: "
    r"no utilization or activity signal",
    # H100 with MIG enabled: utilization.gpu is [N/A] in its one record.
    "nvsmi-csv-nvgpuexp-cap-h100mig.csv": r":2: utilization\.gpu is \[N/A\] or "
    r"\[Not Supported\] in every record",
}


def test_every_nvidia_smi_csv_of_the_corpus_is_covered() -> None:
    if not CORPUS.is_dir():
        pytest.fail(
            f"corpus not found at {CORPUS}: CI keeps ../shared/data/real-outputs beside the repository"
        )
    present = {p.name for p in CORPUS.iterdir() if p.name.startswith("nvsmi-csv-")}
    assert present == set(NVSMI_CSV_REFUSED)


@pytest.mark.parametrize("name", sorted(NVSMI_CSV_REFUSED))
def test_nvidia_smi_csv_refused_with_one_line_saying_what_it_lacks(name: str) -> None:
    with pytest.raises(MalformedCapture, match=NVSMI_CSV_REFUSED[name]) as refused:
        read_capture(corpus_file(name))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(str(CORPUS / name))


#: Every jobstats exporter scrape of the corpus: each one is read below.
JOBSTATS_FILES = ("jobstats-gpu-jobstats-32.prom",)

#: Every Prometheus HTTP API answer of the corpus, each refused with what it lacks.
PROMAPI_REFUSED = {
    # avg_over_time(nvidia_gpu_power_usage_milliwatts{...}[3919s:]): the function dropped __name__ from
    # all 4 A100 series, so nothing in the answer says which metric they hold (and it is power anyway).
    "promapi-jobstats-docs-summaries.json": r":1: a Prometheus API vector answer with 4 series without a "
    r"metric name",
    # One DCGM_FI_DEV_GPU_TEMP series of an L40S: temperature only, no utilization or activity.
    "promapi-k8s-ai-conformance-upcloud.json": r":1: a Prometheus API vector answer with no dcgm-exporter "
    r"or jobstats GPU series that zest reads \(it holds DCGM_FI_DEV_GPU_TEMP\)",
}


def test_every_jobstats_and_prometheus_api_file_of_the_corpus_is_covered() -> None:
    if not CORPUS.is_dir():
        pytest.fail(
            f"corpus not found at {CORPUS}: CI keeps ../shared/data/real-outputs beside the repository"
        )
    present = {p.name for p in CORPUS.iterdir() if p.name.startswith("jobstats-")}
    assert present == set(JOBSTATS_FILES)
    present = {p.name for p in CORPUS.iterdir() if p.name.startswith("promapi-")}
    assert present == set(PROMAPI_REFUSED)


@pytest.mark.parametrize("name", sorted(PROMAPI_REFUSED))
def test_prometheus_api_answer_refused_with_one_line_saying_what_it_lacks(name: str) -> None:
    with pytest.raises(MalformedCapture, match=PROMAPI_REFUSED[name]) as refused:
        read_capture(corpus_file(name))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(str(CORPUS / name))


def test_jobstats_duty_cycle_of_four_a100s() -> None:
    # PrincetonUniversity/jobstats#32: nvidia_gpu_duty_cycle 97, 70, 0, 100 on minor_number 0-3,
    # name="NVIDIA A100 80GB PCIe"; no jobid, no instance or hostname label.
    capture = read("jobstats-gpu-jobstats-32.prom")
    rows = capture.frame.set_index(GPU).sort_index()
    assert rows.index.tolist() == ["0", "1", "2", "3"]
    assert rows["gpu_util_ratio"].tolist() == pytest.approx([0.97, 0.70, 0.0, 1.0])
    assert set(rows[GPU_MODEL]) == {"NVIDIA A100 80GB PCIe"}
    assert rows[JOB_ID].isna().all()
    assert rows[HOST].isna().all()
    assert rows["power_watts"].isna().all()  # absent, never zero


# --- header-less nvidia-smi CSV read with the --query-gpu list its source names -----------------------

#: The --query-gpu list each header-less CSV was recorded with, as its source gives it (corpus README).
NVSMI_CSV_FIELDS = {
    "nvsmi-csv-gpustat-5.csv": "index,uuid,name,temperature.gpu,utilization.gpu,memory.used,memory.total",
    "nvsmi-csv-OmniOpt-doc-folder_structure.csv": "timestamp,name,pci.bus_id,driver_version,pstate,"
    "pcie.link.gen.max,pcie.link.gen.current,temperature.gpu,utilization.gpu,utilization.memory,"
    "memory.total,memory.free,memory.used",
    "nvsmi-csv-Megaminer-235.csv": "gpu_name,utilization.gpu,utilization.memory,temperature.gpu,power.draw,"
    "power.limit,fan.speed,pstate,clocks.current.graphics,clocks.current.memory,power.max_limit,"
    "power.default_limit",
}


def test_gpustat_noheader_nounits_with_fields() -> None:
    # Lines 1-2: "0, GPU-004f..., GeForce GTX TITAN X, 25, 0, 802, 12206" and "1, ..., 54, 86, 10032, 12206".
    name = "nvsmi-csv-gpustat-5.csv"
    capture = read_capture(corpus_file(name), fields=[NVSMI_CSV_FIELDS[name]])
    rows = capture.frame.set_index(GPU).sort_index()
    assert rows.index.tolist() == [str(i) for i in range(8)]
    assert rows.loc["0", "gpu_util_ratio"] == 0 and rows.loc["0", "mem_used_bytes"] == 802 * MIB
    assert (
        rows.loc["1", "gpu_util_ratio"] == pytest.approx(0.86)
        and rows.loc["1", "mem_used_bytes"] == 10032 * MIB
    )
    assert set(rows["mem_total_bytes"]) == {12206 * MIB}
    assert set(rows[GPU_MODEL]) == {"GeForce GTX TITAN X"}
    assert any("no timestamp column" in note for note in capture.notes)


def test_omniopt_looping_log_with_units_in_cells_with_fields() -> None:
    # Three A100s by pci.bus_id in a different order each ~10 s tick; the last tick lacks 00000000:0B:00.0.
    name = "nvsmi-csv-OmniOpt-doc-folder_structure.csv"
    frame = read_capture(corpus_file(name), fields=[NVSMI_CSV_FIELDS[name]]).frame
    assert len(frame) == 8
    assert frame[GPU].value_counts().to_dict() == {
        "00000000:3B:00.0": 3,
        "00000000:8B:00.0": 3,
        "00000000:0B:00.0": 2,
    }
    # Line 4: 2024/06/01 11:27:15.309, 00000000:8B:00.0, 3 %, total 40960 MiB, used 38803 MiB.
    row = frame[frame[TIMESTAMP] == pd.Timestamp("2024-06-01 11:27:15.309", tz="UTC")].iloc[0]
    assert row[GPU] == "00000000:8B:00.0"
    assert row["gpu_util_ratio"] == pytest.approx(0.03)
    assert row["mem_used_bytes"] == 38803 * MIB and row["mem_total_bytes"] == 40960 * MIB


def test_megaminer_with_fields_is_refused_for_its_unsupported_utilization() -> None:
    # One GTX 770 row: utilization.gpu (2nd field) is [Not Supported].
    name = "nvsmi-csv-Megaminer-235.csv"
    with pytest.raises(MalformedCapture, match=r":1: utilization\.gpu is \[N/A\] or \[Not Supported\]"):
        read_capture(corpus_file(name), fields=[NVSMI_CSV_FIELDS[name]])


# --- nvidia-smi dmon, pmon, -q, -q -x and dcgmi dmon through read_capture ----------------------------

#: The text outputs read, with their format and GPUs (each file's values are checked by hand in
#: tests/test_nvsmi_text.py for nvidia-smi's, below for dcgmi's).
TEXT_READ = {
    "nvsmi-dmon-DeepSpeech-178.txt": ("nvidia-smi dmon", ["0", "1", "2", "3"]),
    "nvsmi-dmon-telegraf-5532.txt": ("nvidia-smi dmon", ["0"]),
    "nvsmi-pmon-nvgpuexp-cap-win2080s.txt": ("nvidia-smi pmon", ["0"]),
    "dcgmi-dmon-DCGM-151.txt": ("dcgmi dmon", ["i:21", "i:22", "i:28", "i:29", "i:30", "i:31", "i:35"]),
}
#: The text outputs refused, with the line named and what the file lacks.
TEXT_REFUSED = {
    # H200 with MIG, first 120 lines: memory of the MIG devices, utilization nowhere.
    "nvsmi-q-nvgpuexp-cap-h200mig.txt": r":9: nvidia-smi -q output holding memory of GPU\(s\) 0/2, 0/3, 0/9, "
    r"no utilization or activity signal",
    # GTX 780, 32 lines: cut before any utilization, memory or power.
    "nvsmi-q-sysmon-12.txt": r":9: nvidia-smi -q output holding no signal zest reads",
    # RTX 3080 XML, first 120 of 849 lines: not well-formed.
    "nvsmi-qx-telegraf-pr18690-rtx3080.xml": r":120: nvidia-smi -q -x XML that ends at line 120 before its "
    r"closing </nvidia_smi_log> \(cut short\)",
    # dcgmi dmon -e 1004 failing: the header, then only DCGM's error.
    "dcgmi-dmon-DCGM-3.txt": r":3: dcgmi dmon printed an error and no samples \('Error setting watches",
}


@pytest.mark.parametrize("name", sorted(TEXT_READ))
def test_text_outputs_read(name: str) -> None:
    source_format, gpus = TEXT_READ[name]
    capture = read_capture(corpus_file(name))
    assert capture.source_format == source_format
    assert sorted(capture.frame[GPU].unique()) == gpus
    assert capture.frame["gpu_util_ratio"].notna().any()


@pytest.mark.parametrize("name", sorted(TEXT_REFUSED))
def test_text_outputs_refused_with_one_line_saying_what_they_lack(name: str) -> None:
    with pytest.raises(MalformedCapture, match=TEXT_REFUSED[name]) as refused:
        read_capture(corpus_file(name))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(str(CORPUS / name))


def test_dcgmi_dmon_mig_instances_read_gract_as_activity() -> None:
    # DCGM#151: GPU-I 28 at GRACT 0.993, SMACT 0.987, TENSO 0.940; GPU-I 29 at 0.495 (lines 6-7).
    frame = read_capture(corpus_file("dcgmi-dmon-DCGM-151.txt")).frame.set_index(GPU)
    assert frame.loc["i:28", "gpu_util_ratio"] == pytest.approx(0.993)
    assert frame.loc["i:28", "tensor_active_ratio"] == pytest.approx(0.940)
    assert frame.loc["i:29", "gpu_util_ratio"] == pytest.approx(0.495)


def test_pmon_job_by_pid_gets_the_gpu_of_its_process() -> None:
    # ffmpeg.exe pid 25704 runs on GPU 0 (line 13); pid 1 appears nowhere.
    path = corpus_file("nvsmi-pmon-nvgpuexp-cap-win2080s.txt")
    capture = read_capture(path, "pid:25704")
    assert set(capture.frame[GPU]) == {"0"} and set(capture.frame[JOB_ID]) == {"pid:25704"}
    assert any("where the file lists process 25704" in note for note in capture.notes)
    with pytest.raises(
        JobNotFound, match=r"no process 1 on any GPU of the file; it lists process\(es\) 2056"
    ):
        read_capture(path, "pid:1")


def test_every_file_of_the_corpus_is_read_or_refused_here() -> None:
    covered = {
        *DCGM_FILES,
        *NVSMI_CSV_REFUSED,
        *JOBSTATS_FILES,
        *PROMAPI_REFUSED,
        *TEXT_READ,
        *TEXT_REFUSED,
    }
    present = {p.name for p in CORPUS.iterdir() if p.name != "README.md"}
    assert present == covered
