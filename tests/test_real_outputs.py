"""Exporter scrapes and Prometheus API answers of the corpus of real outputs, read or refused.

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

from collectors.errors import MalformedCapture
from collectors.files import PROMETHEUS, Capture, read_capture
from collectors.metrics import MIB
from collectors.schema import GPU, GPU_MODEL, HOST, JOB_ID

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
