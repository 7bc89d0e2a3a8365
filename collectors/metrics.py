"""Metric names of the exporters that clusters run, and how each maps to a canonical signal.

The one place that names dcgm-exporter's and the jobstats exporter's series
and their labels; the Prometheus source and the capture-file parsers both
read from here. Facts from ``shared/reference/telemetry.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class SourceMetric:
    """A series an exporter publishes: its name, the canonical signal it feeds, the scale to base units."""

    name: str
    signal: str
    scale: float = 1.0
    counter: bool = False  # a cumulative counter: the signal is its per-second rate


# dcgm-exporter (default port 9400). FB_* are MiB; total memory is used + free + reserved.
DCGM_METRICS: tuple[SourceMetric, ...] = (
    SourceMetric("DCGM_FI_DEV_GPU_UTIL", "gpu_util_ratio", 0.01),
    SourceMetric("DCGM_FI_PROF_SM_ACTIVE", "sm_active_ratio"),
    SourceMetric("DCGM_FI_PROF_SM_OCCUPANCY", "sm_occupancy_ratio"),
    SourceMetric("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "tensor_active_ratio"),
    SourceMetric("DCGM_FI_PROF_DRAM_ACTIVE", "dram_active_ratio"),
    SourceMetric("DCGM_FI_DEV_FB_USED", "mem_used_bytes", MIB),
    SourceMetric("DCGM_FI_DEV_POWER_USAGE", "power_watts"),
    SourceMetric("DCGM_FI_PROF_PCIE_TX_BYTES", "pcie_tx_bytes_per_second"),
    SourceMetric("DCGM_FI_PROF_PCIE_RX_BYTES", "pcie_rx_bytes_per_second"),
)
DCGM_FB_USED = "DCGM_FI_DEV_FB_USED"
DCGM_FB_FREE = "DCGM_FI_DEV_FB_FREE"
DCGM_FB_RESERVED = "DCGM_FI_DEV_FB_RESERVED"
DCGM_NVLINK_TOTAL = "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"

# Princeton jobstats' nvidia_gpu_prometheus_exporter (port 9445). Its GPM
# ``_percent`` series hold 0-1 fractions despite their names.
JOBSTATS_METRICS: tuple[SourceMetric, ...] = (
    SourceMetric("nvidia_gpu_duty_cycle", "gpu_util_ratio", 0.01),
    SourceMetric("nvidia_gpu_sm_util_percent", "sm_active_ratio"),
    SourceMetric("nvidia_gpu_sm_occupancy_percent", "sm_occupancy_ratio"),
    SourceMetric("nvidia_gpu_any_tensor_util_percent", "tensor_active_ratio"),
    SourceMetric("nvidia_gpu_dram_bw_util_percent", "dram_active_ratio"),
    SourceMetric("nvidia_gpu_memory_used_bytes", "mem_used_bytes"),
    SourceMetric("nvidia_gpu_memory_total_bytes", "mem_total_bytes"),
    SourceMetric("nvidia_gpu_power_usage_milliwatts", "power_watts", 0.001),
)

# Labels, first present wins. dcgm-exporter renamed Hostname to hostname;
# Kubernetes labels had a pod_ prefix in older releases.
DCGM_HOST_LABELS = ("Hostname", "hostname")
DCGM_GPU_LABEL = "gpu"
DCGM_UUID_LABEL = "UUID"
DCGM_MODEL_LABEL = "modelName"
DCGM_MIG_INSTANCE_LABEL = "GPU_I_ID"
DCGM_HPC_JOB_LABEL = "hpc_job"
DCGM_POD_LABELS = ("pod", "pod_name")
DCGM_NAMESPACE_LABELS = ("namespace", "pod_namespace")

JOBSTATS_JOB_LABEL = "jobid"
JOBSTATS_GPU_LABELS = ("minor_number", "ordinal")
JOBSTATS_UUID_LABEL = "uuid"
JOBSTATS_MODEL_LABEL = "name"
JOBSTATS_HOST_LABELS = ("hostname", "instance")  # instance is host:port, set by the scrape
