"""Regenerates the capture fixtures beside this file: ``python tests/data/captures/make_fixtures.py``.

Deterministic: the same telemetry every run. Fixtures over 20 KiB are written
gzip-compressed (``mtime=0`` so the bytes do not change between runs).

* ``a100x2_job4242_smi.csv``, ``a100x2_job4242_dcgm_federate.prom.gz`` and
  ``a100x2_job4242.zest.parquet`` hold the same telemetry (node gpu-node-07,
  two A100s, Slurm job 4242, 12 samples 5 s apart) as nvidia-smi
  ``--format=csv``, federated dcgm-exporter scrapes with timestamps, and zest's
  own format.
* ``h100x4_smi_nounits_appended.csv``: ``--format=csv,nounits`` log appended by
  two runs, with ``[N/A]`` and ``[Not Supported]`` cells.
* ``a100x2_dmon_na_nw.txt``: ``dcgmi dmon`` with ``N/A`` and ``N/W`` cells.
* ``a100x2_dcgm_k8s_mig.prom``: three dcgm-exporter scrapes without timestamps,
  Kubernetes pod labels, GPU 0 split into two MIG instances.
* ``a100_dcgm_shared_gpu.prom``: one scrape, GPU 0 shared by two Slurm jobs.
* ``h100x4_jobstats_federate.prom``: two federated jobstats-exporter scrapes.
"""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from collectors.files import write_capture

HERE = Path(__file__).parent
GZIP_ABOVE_BYTES = 20 * 1024
MIB = 1024 * 1024

A100 = "NVIDIA A100-SXM4-80GB"
H100 = "NVIDIA H100 80GB HBM3"
A100_UUIDS = ("GPU-5c3a9f02-7d1e-4b8a-9c61-2f0e8d4b7a13", "GPU-e81b47c9-03a2-4f5d-b6e8-91c7d2a0f345")
A100_BUS = ("00000000:07:00.0", "00000000:0F:00.0")
A100_FB_TOTAL_MIB = 81920
A100_FB_RESERVED_MIB = 567
DRIVER = "535.183.01"


def _write(name: str, text: str) -> None:
    data = text.encode()
    if len(data) > GZIP_ABOVE_BYTES:
        (HERE / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
    else:
        (HERE / name).write_text(text)


# --- the job 4242 trio --------------------------------------------------------

START = datetime(2026, 11, 24, 8, 0, 1, 123000, tzinfo=UTC)
SAMPLES = 12


def train_sample(k: int, gpu: int) -> dict[str, float]:
    """One sample of a data-parallel training step: busy SMs, tensor pipe half idle."""
    used = 30412 + 16 * k + 128 * gpu
    return {
        "util_percent": 97 - (7 * k + 3 * gpu) % 11 - (40 if k == 6 else 0),  # k=6: a checkpoint stall
        "used_mib": used,
        "free_mib": A100_FB_TOTAL_MIB - used - A100_FB_RESERVED_MIB,
        "power_w": round(402.0 + (37 * k + 11 * gpu) % 90 + 0.017 * ((5 * k + gpu) % 50), 3),
        "sm_active": round(0.91 - 0.004 * ((3 * k + gpu) % 7) - (0.5 if k == 6 else 0.0), 6),
        "sm_occupancy": round(0.24 + 0.003 * ((k + 2 * gpu) % 5), 6),
        "tensor_active": round(0.28 + 0.005 * ((2 * k + gpu) % 6), 6),
        "dram_active": round(0.19 + 0.004 * ((k + gpu) % 5), 6),
        "pcie_tx": float(18_000_000 + 250_000 * ((k * 3 + gpu) % 9)),
        "pcie_rx": float(52_000_000 + 400_000 * ((k * 5 + gpu) % 7)),
    }


def sample_time(k: int) -> datetime:
    return START + timedelta(seconds=5 * k, milliseconds=8 * k)


def smi_csv() -> str:
    header = (
        "timestamp, name, index, uuid, pci.bus_id, utilization.gpu [%], utilization.memory [%], "
        "memory.used [MiB], memory.total [MiB], power.draw [W], temperature.gpu"
    )
    lines = [header]
    for k in range(SAMPLES):
        stamp = sample_time(k).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]
        for g in range(2):
            s = train_sample(k, g)
            lines.append(
                f"{stamp}, {A100}, {g}, {A100_UUIDS[g]}, {A100_BUS[g]}, {s['util_percent']} %, "
                f"{int(s['dram_active'] * 100)} %, {s['used_mib']} MiB, {A100_FB_TOTAL_MIB} MiB, "
                f"{s['power_w']:.2f} W, {58 + g + k % 3}"
            )
    return "\n".join(lines) + "\n"


DCGM_FAMILIES = (
    ("DCGM_FI_DEV_GPU_UTIL", "util_percent", "{:d}"),
    ("DCGM_FI_DEV_FB_FREE", "free_mib", "{:d}"),
    ("DCGM_FI_DEV_FB_USED", "used_mib", "{:d}"),
    ("DCGM_FI_DEV_FB_RESERVED", None, "{:d}"),
    ("DCGM_FI_DEV_POWER_USAGE", "power_w", "{:g}"),
    ("DCGM_FI_DEV_GPU_TEMP", None, "{:d}"),
    ("DCGM_FI_PROF_SM_ACTIVE", "sm_active", "{:g}"),
    ("DCGM_FI_PROF_SM_OCCUPANCY", "sm_occupancy", "{:g}"),
    ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "tensor_active", "{:g}"),
    ("DCGM_FI_PROF_DRAM_ACTIVE", "dram_active", "{:g}"),
    ("DCGM_FI_PROF_PCIE_TX_BYTES", "pcie_tx", "{:g}"),
    ("DCGM_FI_PROF_PCIE_RX_BYTES", "pcie_rx", "{:g}"),
)


def dcgm_federate() -> str:
    """What ``curl 'prometheus:9090/federate?match[]={__name__=~"DCGM_.*"}'`` returned, every 5 s."""
    lines = []
    for k in range(SAMPLES):
        millis = int(sample_time(k).timestamp() * 1000)
        for metric, key, layout in DCGM_FAMILIES:
            lines.append(f"# TYPE {metric} untyped")
            for g in range(2):
                s = train_sample(k, g)
                if key is not None:
                    value = layout.format(s[key])
                elif metric == "DCGM_FI_DEV_FB_RESERVED":
                    value = str(A100_FB_RESERVED_MIB)
                else:
                    value = str(58 + g + k % 3)
                labels = (
                    f'DCGM_FI_DRIVER_VERSION="{DRIVER}",Hostname="gpu-node-07",UUID="{A100_UUIDS[g]}",'
                    f'device="nvidia{g}",gpu="{g}",hpc_job="4242",instance="gpu-node-07:9400",'
                    f'job="dcgm-exporter",modelName="{A100}",pci_bus_id="{A100_BUS[g]}"'
                )
                lines.append(f"{metric}{{{labels}}} {value} {millis}")
    return "\n".join(lines) + "\n"


def zest_frame() -> pd.DataFrame:
    rows = []
    for k in range(SAMPLES):
        for g in range(2):
            s = train_sample(k, g)
            rows.append(
                {
                    "timestamp": sample_time(k),
                    "host": "gpu-node-07",
                    "gpu": str(g),
                    "job_id": "4242",
                    "gpu_model": A100,
                    "gpu_util_ratio": s["util_percent"] / 100,
                    "sm_active_ratio": s["sm_active"],
                    "sm_occupancy_ratio": s["sm_occupancy"],
                    "tensor_active_ratio": s["tensor_active"],
                    "dram_active_ratio": s["dram_active"],
                    "mem_used_bytes": float(s["used_mib"] * MIB),
                    "mem_total_bytes": float(A100_FB_TOTAL_MIB * MIB),
                    "power_watts": s["power_w"],
                    "pcie_tx_bytes_per_second": s["pcie_tx"],
                    "pcie_rx_bytes_per_second": s["pcie_rx"],
                }
            )
    return pd.DataFrame(rows)


# --- nvidia-smi csv,nounits, two runs appended ---------------------------------

H100_UUIDS = (
    "GPU-0a7f3c21-9b4e-4d6a-8e12-5f3b9c7d1e20",
    "GPU-1b8e4d32-ac5f-4e7b-9f23-604cad8e2f31",
    "GPU-2c9f5e43-bd60-4f8c-a034-71dbe9f03a42",
    "GPU-3da06f54-ce71-409d-b145-82ecfa014b53",
)


def smi_nounits_appended() -> str:
    """``nvidia-smi --query-gpu=timestamp,index,name,utilization.gpu,memory.used,memory.total,power.draw
    --format=csv,nounits -l 2 >> gpu.log``, run twice; GPU 3 reads no power on the first run."""
    header = (
        "timestamp, index, name, utilization.gpu [%], memory.used [MiB], memory.total [MiB], power.draw [W]"
    )
    lines = []
    for run, start in enumerate(
        (datetime(2026, 11, 23, 22, 14, 5, 407000), datetime(2026, 11, 23, 23, 2, 41, 88000))
    ):
        lines.append(header)
        for k in range(3):
            stamp = (start + timedelta(seconds=2 * k)).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]
            for g in range(4):
                util = (88, 91, 12, 0)[g] - 3 * k + run
                used = (61_204, 61_180, 9_876, 0)[g] + 40 * k
                power = (
                    "[N/A]" if (g == 3 and run == 0) else f"{(512.43, 498.07, 161.5, 69.81)[g] + 2.5 * k:.2f}"
                )
                total = "[Not Supported]" if (g == 3 and run == 0) else "81559"
                lines.append(f"{stamp}, {g}, {H100}, {util}, {used}, {total}, {power}")
    return "\n".join(lines) + "\n"


# --- dcgmi dmon ----------------------------------------------------------------


def dmon_na_nw() -> str:
    """``dcgmi dmon -e 203,1002,1003,1004,1005,252,250,155,1009,1010 -d 2000 -c 5`` on two A100s.

    The profiling fields read N/A on the first sample; GPU 1's tensor field is
    not watched (N/W) because another client holds the profiling watch.
    """
    fields = ("GPUTL", "SMACT", "SMOCC", "TENSO", "DRAMA", "FBUSD", "FBTTL", "POWER", "PCITX", "PCIRX")
    width = 12
    head = "#Entity   " + "".join(f.ljust(width) for f in fields)
    units = "ID        " + " " * (width * len(fields))
    lines = [head.rstrip(), units.rstrip()]
    for k in range(5):
        for g in range(2):
            s = train_sample(k, g)
            prof = (
                ["N/A"] * 4
                if k == 0
                else [
                    f"{s['sm_active']:.3f}",
                    f"{s['sm_occupancy']:.3f}",
                    f"{s['tensor_active']:.3f}",
                    f"{s['dram_active']:.3f}",
                ]
            )
            if g == 1:
                prof[2] = "N/W"
            cells = [
                str(s["util_percent"]),
                *prof,
                str(s["used_mib"]),
                str(A100_FB_TOTAL_MIB),
                f"{s['power_w']:.3f}",
                "N/A" if k == 0 else str(int(s["pcie_tx"])),
                "N/A" if k == 0 else str(int(s["pcie_rx"])),
            ]
            lines.append((f"GPU {g}".ljust(10) + "".join(c.ljust(width) for c in cells)).rstrip())
    return "\n".join(lines) + "\n"


# --- dcgm-exporter on Kubernetes with MIG --------------------------------------

K8S_HELP = {
    "DCGM_FI_DEV_GPU_UTIL": ("GPU utilization (in %).", "gauge"),
    "DCGM_FI_DEV_FB_FREE": ("Framebuffer memory free (in MiB).", "gauge"),
    "DCGM_FI_DEV_FB_USED": ("Framebuffer memory used (in MiB).", "gauge"),
    "DCGM_FI_DEV_POWER_USAGE": ("Power draw (in W).", "gauge"),
    "DCGM_FI_PROF_SM_ACTIVE": ("The ratio of cycles an SM has at least 1 warp assigned.", "gauge"),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": ("Ratio of cycles the tensor (HMMA) pipe is active.", "gauge"),
    "DCGM_FI_PROF_DRAM_ACTIVE": (
        "Ratio of cycles the device memory interface is active sending or receiving data.",
        "gauge",
    ),
}

# (gpu, GPU_I_PROFILE, GPU_I_ID, namespace, pod, container); GPU 1 is a whole GPU.
K8S_DEVICES = (
    ("0", "3g.40gb", "1", "nlp", "bert-finetune-6f9c7d5b8-x2kq4", "trainer"),
    ("0", "3g.40gb", "2", "nlp", "llama-eval-0", "eval"),
    ("1", None, None, "vision", "resnet-train-worker-0", "pytorch"),
)


def dcgm_k8s_mig() -> str:
    """Three ``curl -s gpu-node-12:9400/metrics`` outputs appended to one file, 30 s apart."""
    lines = []
    for k in range(3):
        for metric, (help_text, kind) in K8S_HELP.items():
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
            for d, (gpu, profile, instance, namespace, pod, container) in enumerate(K8S_DEVICES):
                if metric == "DCGM_FI_DEV_GPU_UTIL" and instance is not None:
                    continue  # DCGM reports no GPU_UTIL for MIG instances
                mig = f',GPU_I_PROFILE="{profile}",GPU_I_ID="{instance}"' if instance else ""
                labels = (
                    f'gpu="{gpu}",UUID="{A100_UUIDS[int(gpu)]}",pci_bus_id="{A100_BUS[int(gpu)]}",'
                    f'device="nvidia{gpu}",modelName="{A100}"{mig},hostname="gpu-node-12",'
                    f'DCGM_FI_DRIVER_VERSION="{DRIVER}",container="{container}",namespace="{namespace}",pod="{pod}"'
                )
                used = (21_344, 9_120, 38_002)[d] + 64 * k
                mig_mib, whole_mib = 40_192, A100_FB_TOTAL_MIB - A100_FB_RESERVED_MIB
                value = {
                    "DCGM_FI_DEV_GPU_UTIL": f"{(100, 100, 96)[d] - k}",
                    "DCGM_FI_DEV_FB_FREE": f"{(mig_mib if instance else whole_mib) - used}",
                    "DCGM_FI_DEV_FB_USED": f"{used}",
                    "DCGM_FI_DEV_POWER_USAGE": f"{(311.254, 311.254, 377.918)[d] + 4.5 * k:.6f}",
                    "DCGM_FI_PROF_SM_ACTIVE": f"{(0.612, 0.233, 0.874)[d] - 0.01 * k:.6f}",
                    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": f"{(0.301, 0.045, 0.412)[d]:.6f}",
                    "DCGM_FI_PROF_DRAM_ACTIVE": f"{(0.402, 0.118, 0.287)[d]:.6f}",
                }[metric]
                lines.append(f"{metric}{{{labels}}} {value}")
    return "\n".join(lines) + "\n"


def dcgm_shared_gpu() -> str:
    """One scrape of an older dcgm-exporter (``Hostname``) on a Slurm node; jobs 5101 and 5102 share GPU 0."""
    lines = []
    for metric, (help_text, kind) in K8S_HELP.items():
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
        for gpu, job in (("0", "5101"), ("0", "5102"), ("1", "5103")):
            labels = (
                f'gpu="{gpu}",UUID="{A100_UUIDS[int(gpu)]}",device="nvidia{gpu}",modelName="{A100}",'
                f'Hostname="gpu-node-03",hpc_job="{job}"'
            )
            value = {
                "DCGM_FI_DEV_GPU_UTIL": "63" if gpu == "0" else "99",
                "DCGM_FI_DEV_FB_FREE": "60412" if gpu == "0" else "22118",
                "DCGM_FI_DEV_FB_USED": "20941" if gpu == "0" else "59235",
                "DCGM_FI_DEV_POWER_USAGE": "288.771000" if gpu == "0" else "401.020000",
                "DCGM_FI_PROF_SM_ACTIVE": "0.412000" if gpu == "0" else "0.951000",
                "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": "0.088000" if gpu == "0" else "0.503000",
                "DCGM_FI_PROF_DRAM_ACTIVE": "0.215000" if gpu == "0" else "0.330000",
            }[metric]
            lines.append(f"{metric}{{{labels}}} {value}")
    return "\n".join(lines) + "\n"


# --- jobstats exporter, federated ----------------------------------------------

JOBSTATS_FAMILIES = (
    "nvidia_gpu_duty_cycle",
    "nvidia_gpu_memory_total_bytes",
    "nvidia_gpu_memory_used_bytes",
    "nvidia_gpu_power_usage_milliwatts",
    "nvidia_gpu_temperature_celsius",
    "nvidia_gpu_sm_util_percent",
    "nvidia_gpu_sm_occupancy_percent",
    "nvidia_gpu_any_tensor_util_percent",
    "nvidia_gpu_dram_bw_util_percent",
)
# (ordinal, jobid, userid): jobs 61834201 (GPUs 0, 1) and 61834388 (GPU 2); GPU 3 idle.
JOBSTATS_GPUS = (
    ("0", "61834201", "241093"),
    ("1", "61834201", "241093"),
    ("2", "61834388", "250117"),
    ("3", "", ""),
)


USED_BYTES = (71_302_184_960, 70_989_709_312, 8_396_996_608, 0)
POWER_MILLIWATTS = (612_488, 598_102, 201_774, 71_023)


def jobstats_federate() -> str:
    """Two ``/federate?match[]={__name__=~"nvidia_gpu_.*"}`` answers for della-l01g3, 30 s apart."""
    lines = []
    start = datetime(2026, 11, 24, 9, 30, 0, tzinfo=UTC)
    for k in range(2):
        millis = int((start + timedelta(seconds=30 * k)).timestamp() * 1000) + 17
        for metric in JOBSTATS_FAMILIES:
            lines.append(f"# TYPE {metric} untyped")
            for ordinal, jobid, userid in JOBSTATS_GPUS:
                g = int(ordinal)
                busy = jobid != ""
                value = {
                    "nvidia_gpu_duty_cycle": f"{(100, 99, 38, 0)[g] - k}",
                    "nvidia_gpu_memory_total_bytes": "85520809984",
                    "nvidia_gpu_memory_used_bytes": f"{USED_BYTES[g] + k * 4_194_304}",
                    "nvidia_gpu_power_usage_milliwatts": f"{POWER_MILLIWATTS[g] + 1_000 * k}",
                    "nvidia_gpu_temperature_celsius": f"{(67, 65, 44, 31)[g]}",
                    "nvidia_gpu_sm_util_percent": f"{(0.932, 0.917, 0.141, 0.0)[g] if busy else 0.0:g}",
                    "nvidia_gpu_sm_occupancy_percent": f"{(0.244, 0.238, 0.052, 0.0)[g] if busy else 0.0:g}",
                    "nvidia_gpu_any_tensor_util_percent": f"{(0.281, 0.276, 0.0, 0.0)[g]:g}",
                    "nvidia_gpu_dram_bw_util_percent": f"{(0.187, 0.203, 0.061, 0.0)[g]:g}",
                }[metric]
                labels = (
                    f'GPU_I_ID="",cluster="della",instance="della-l01g3:9445",job="gpu_exporter",'
                    f'jobid="{jobid}",minor_number="{ordinal}",name="{H100}",ordinal="{ordinal}",'
                    f'userid="{userid}",uuid="{H100_UUIDS[g]}"'
                )
                lines.append(f"{metric}{{{labels}}} {value} {millis}")
    return "\n".join(lines) + "\n"


def main() -> None:
    _write("a100x2_job4242_smi.csv", smi_csv())
    _write("a100x2_job4242_dcgm_federate.prom", dcgm_federate())
    write_capture(zest_frame(), HERE / "a100x2_job4242.zest.parquet", notes=["written by make_fixtures.py"])
    _write("h100x4_smi_nounits_appended.csv", smi_nounits_appended())
    _write("a100x2_dmon_na_nw.txt", dmon_na_nw())
    _write("a100x2_dcgm_k8s_mig.prom", dcgm_k8s_mig())
    _write("a100_dcgm_shared_gpu.prom", dcgm_shared_gpu())
    _write("h100x4_jobstats_federate.prom", jobstats_federate())


if __name__ == "__main__":
    main()
