"""Metric names of the exporters that clusters run, and how each maps to a canonical signal.

The one place that names dcgm-exporter's and the jobstats exporter's series
and their labels; the Prometheus source and the capture-file parsers both
read from here. Facts from ``shared/reference/telemetry.md``. The series zest
exports itself are named in :mod:`estimator.serving.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
# Field 449, TX+RX over all links. dcgm-exporter's counters file types it "counter",
# but DCGM publishes a throughput: it differences NVML's cumulative KiB counters,
# divides by the seconds between reads and by 1000, so the value goes down as
# often as up and rate() on it is meaningless (dcgm-exporter issues #195, #417,
# PR #658; KempnerPulse #10 cross-checked it against `nvidia-smi nvlink -gt d`).
# Read it as a gauge in units of 1000 KiB/s. Used when the DCP pair
# DCGM_NVLINK_BYTES (bytes/s, off by default) is absent.
DCGM_NVLINK_TOTAL_METRIC = SourceMetric(DCGM_NVLINK_TOTAL, "nvlink_bytes_per_second", 1000 * 1024)
# The graphics/compute engine's active ratio (DCP field 1001). dcgm-exporter
# publishes no DCGM_FI_DEV_GPU_UTIL for MIG instances, and its maintainers
# point users to this series instead: read as gpu_util_ratio where GPU_UTIL is absent.
DCGM_GR_ENGINE_ACTIVE = SourceMetric("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gpu_util_ratio")
# DCGM's "blank" values (dcgm_structs.h): a field not supported, not found or
# not permitted is stored as one of the 16 values from DCGM_FP64_BLANK (2**47)
# for doubles, from DCGM_INT64_BLANK (0x7ffffffffffffff0) for int64s; older
# exporters print them as sample values (e.g. 9223372036854775794).
DCGM_FP64_BLANK = float(2**47)
DCGM_INT64_BLANK = 0x7FFFFFFFFFFFFFF0
DCGM_BLANK_SPAN = 16

# NVIDIA gpu-monitoring-tools' dcgm-exporter (DCGM 1.x, a node-exporter textfile;
# retired): lower-case ``dcgm_*`` names with the same units as the DCGM fields they
# carry, and labels ``gpu`` and ``uuid``. Read as those fields.
GMT_DCGM_FIELDS: Mapping[str, str] = {
    "dcgm_gpu_utilization": "DCGM_FI_DEV_GPU_UTIL",
    "dcgm_fb_used": DCGM_FB_USED,
    "dcgm_fb_free": DCGM_FB_FREE,
    "dcgm_power_usage": "DCGM_FI_DEV_POWER_USAGE",
}
GMT_UUID_LABEL = "uuid"

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
JOBSTATS_MIG_INSTANCE_LABEL = "GPU_I_ID"  # empty on a whole GPU


#: How each exporter names a job: labellings tried in order, each (outer labels..., inner label); the
#: job id is the inner label's value, prefixed by the outer ones present: ``namespace/pod``.
DCGM_JOB_LABELLINGS: tuple[tuple[str, ...], ...] = (
    (DCGM_HPC_JOB_LABEL,),
    *zip(DCGM_NAMESPACE_LABELS, DCGM_POD_LABELS, strict=True),
)
JOBSTATS_JOB_LABELLINGS: tuple[tuple[str, ...], ...] = ((JOBSTATS_JOB_LABEL,),)
#: dcgm-exporter's labels as a Prometheus server stores them: where the scrape's own target labels
#: (the exporter pod's ``namespace``/``pod``) collided with the exporter's, the exporter's became
#: ``exported_*`` and name the job; tried before the plain ones.
DCGM_EXPORTED_JOB_LABELLING = ("exported_namespace", "exported_pod")
#: The scrape's own labels those were renamed away from: where a series has ``exported_pod``, its
#: ``namespace``/``pod`` name the exporter pod (kube-prometheus adds them to every series), never a job.
DCGM_SCRAPE_POD_LABELLING = tuple(label.removeprefix("exported_") for label in DCGM_EXPORTED_JOB_LABELLING)
DCGM_STORED_JOB_LABELLINGS: tuple[tuple[str, ...], ...] = (
    DCGM_JOB_LABELLINGS[0],
    DCGM_EXPORTED_JOB_LABELLING,
    *DCGM_JOB_LABELLINGS[1:],
)
#: Host labels of a stored dcgm-exporter series: the exporter's, then the scrape's ``instance`` (host:port).
DCGM_STORED_HOST_LABELS = (*DCGM_HOST_LABELS, "instance")


def job_id_from_labels(labels: Mapping[str, str], labellings: Sequence[Sequence[str]]) -> str | None:
    """The job id a series' labels name under the first labelling whose inner label is set; None if none."""
    for labelling in labellings:
        *outer, inner = labelling
        if labels.get(inner):
            prefix = "/".join(labels[o] for o in outer if labels.get(o))
            return f"{prefix}/{labels[inner]}" if prefix else labels[inner]
    return None


def dcgm_metric_for(signal: str) -> str:
    """Name of the dcgm-exporter series in :data:`DCGM_METRICS` that feeds ``signal``."""
    return next(m.name for m in DCGM_METRICS if m.signal == signal)


# Further DCGM fields the capture-file parsers read. Total framebuffer (field 250,
# MiB) is printed by dcgmi dmon; dcgm-exporter's default counters omit it.
DCGM_FB_TOTAL = "DCGM_FI_DEV_FB_TOTAL"
# NVLink traffic as two DCP fields (1011 TX, 1012 RX; bytes/s): the canonical
# nvlink_bytes_per_second is their sum.
DCGM_NVLINK_BYTES: tuple[str, str] = ("DCGM_FI_PROF_NVLINK_TX_BYTES", "DCGM_FI_PROF_NVLINK_RX_BYTES")


@dataclass(frozen=True)
class DmonField:
    """A DCGM field as ``dcgmi dmon -e <field_id>`` names it in its ``#Entity`` header."""

    field_id: int
    short_name: str
    dcgm_name: str  # the same field's dcgm-exporter series name


# Short names as ``dcgmi dmon -l`` lists them (DCGM 3.x).
DCGM_DMON_FIELDS: tuple[DmonField, ...] = (
    DmonField(203, "GPUTL", dcgm_metric_for("gpu_util_ratio")),
    DmonField(1001, "GRACT", DCGM_GR_ENGINE_ACTIVE.name),
    DmonField(1002, "SMACT", dcgm_metric_for("sm_active_ratio")),
    DmonField(1003, "SMOCC", dcgm_metric_for("sm_occupancy_ratio")),
    DmonField(1004, "TENSO", dcgm_metric_for("tensor_active_ratio")),
    DmonField(1005, "DRAMA", dcgm_metric_for("dram_active_ratio")),
    DmonField(250, "FBTTL", DCGM_FB_TOTAL),
    DmonField(251, "FBFRE", DCGM_FB_FREE),
    DmonField(252, "FBUSD", DCGM_FB_USED),
    DmonField(253, "FBRSV", DCGM_FB_RESERVED),
    DmonField(155, "POWER", dcgm_metric_for("power_watts")),
    DmonField(1009, "PCITX", dcgm_metric_for("pcie_tx_bytes_per_second")),
    DmonField(1010, "PCIRX", dcgm_metric_for("pcie_rx_bytes_per_second")),
    DmonField(1011, "NVLTX", DCGM_NVLINK_BYTES[0]),
    DmonField(1012, "NVLRX", DCGM_NVLINK_BYTES[1]),
)


@dataclass(frozen=True)
class NvidiaSmiField:
    """A ``nvidia-smi --query-gpu`` property: its name, the unit its CSV header shows, the signal it feeds."""

    name: str
    unit: str
    signal: str
    scale: float = 1.0


NVIDIA_SMI_METRICS: tuple[NvidiaSmiField, ...] = (
    NvidiaSmiField("utilization.gpu", "%", "gpu_util_ratio", 0.01),
    NvidiaSmiField("memory.used", "MiB", "mem_used_bytes", MIB),
    NvidiaSmiField("memory.total", "MiB", "mem_total_bytes", MIB),
    NvidiaSmiField("power.draw", "W", "power_watts"),
)
NVIDIA_SMI_TIMESTAMP = "timestamp"  # local time of the node, no zone: "2026/11/24 08:00:01.123"
NVIDIA_SMI_TIMESTAMP_FORMATS = ("%Y/%m/%d %H:%M:%S.%f", "%Y/%m/%d %H:%M:%S")
NVIDIA_SMI_GPU_FIELDS = ("index", "uuid", "pci.bus_id")  # first present names the GPU
NVIDIA_SMI_MODEL = "name"
NVIDIA_SMI_UTILIZATION = "utilization.gpu"  # without it a file has no utilization or activity signal
# Other spellings --query-gpu accepts, as the header then shows them.
NVIDIA_SMI_ALIASES = {"gpu_name": "name", "gpu_uuid": "uuid", "gpu_bus_id": "pci.bus_id"}


# --- nvidia-smi text outputs: dmon, pmon, -q and -q -x ---------------------------------------------
# nvidia-smi's MB and KB are binary, as in its memory figures (dmon's fb in MB is memory.used in MiB);
# its PCIe throughput is NVML's nvmlDeviceGetPcieThroughput (KB/s), which dmon prints in MB/s.
KIB = 1024

#: ``nvidia-smi dmon`` columns zest reads: name in the ``# gpu ...`` header, unit in the ``# Idx ...``
#: line. ``mem`` (memory-controller busy time, like ``utilization.memory``) feeds no canonical signal.
NVIDIA_SMI_DMON_METRICS: tuple[NvidiaSmiField, ...] = (
    NvidiaSmiField("sm", "%", "gpu_util_ratio", 0.01),
    NvidiaSmiField("fb", "MB", "mem_used_bytes", MIB),
    NvidiaSmiField("pwr", "W", "power_watts"),
    NvidiaSmiField("rxpci", "MB/s", "pcie_rx_bytes_per_second", MIB),
    NvidiaSmiField("txpci", "MB/s", "pcie_tx_bytes_per_second", MIB),
)
NVIDIA_SMI_DMON_GPU = "gpu"  # the GPU's index
NVIDIA_SMI_DMON_UTILIZATION = "sm"  # without it a dmon log has no utilization signal (-s u adds it)

#: ``nvidia-smi pmon`` columns zest sums over a GPU's processes (``-s u`` gives sm, ``-s m`` fb).
NVIDIA_SMI_PMON_METRICS: tuple[NvidiaSmiField, ...] = (
    NvidiaSmiField("sm", "%", "gpu_util_ratio", 0.01),
    NvidiaSmiField("fb", "MB", "mem_used_bytes", MIB),
)
NVIDIA_SMI_PMON_PID = "pid"
NVIDIA_SMI_PMON_COMMAND = "command"  # the last column, its name may hold spaces


@dataclass(frozen=True)
class NvidiaSmiQueryField:
    """A value of ``nvidia-smi -q``: its path of section titles and key in the text, of tags in the XML
    (``-q -x``), its unit, the signal it feeds. Fields feeding one signal are tried in order."""

    text_path: str  # "Utilization/Gpu"
    xml_path: str  # "utilization/gpu_util"
    unit: str
    signal: str
    scale: float = 1.0


# Power: R535+ name the section "GPU Power Readings" and R550+ split "Power Draw" into average and
# instantaneous; power.draw (the CSV's) is the 1 s average where there is one.
NVIDIA_SMI_QUERY_METRICS: tuple[NvidiaSmiQueryField, ...] = (
    NvidiaSmiQueryField("Utilization/Gpu", "utilization/gpu_util", "%", "gpu_util_ratio", 0.01),
    NvidiaSmiQueryField("FB Memory Usage/Used", "fb_memory_usage/used", "MiB", "mem_used_bytes", MIB),
    NvidiaSmiQueryField("FB Memory Usage/Total", "fb_memory_usage/total", "MiB", "mem_total_bytes", MIB),
    NvidiaSmiQueryField("Power Readings/Power Draw", "power_readings/power_draw", "W", "power_watts"),
    NvidiaSmiQueryField("GPU Power Readings/Power Draw", "gpu_power_readings/power_draw", "W", "power_watts"),
    NvidiaSmiQueryField(
        "GPU Power Readings/Average Power Draw", "gpu_power_readings/average_power_draw", "W", "power_watts"
    ),
    NvidiaSmiQueryField(
        "GPU Power Readings/Instantaneous Power Draw",
        "gpu_power_readings/instant_power_draw",
        "W",
        "power_watts",
    ),
    NvidiaSmiQueryField("PCI/Tx Throughput", "pci/tx_util", "KB/s", "pcie_tx_bytes_per_second", KIB),
    NvidiaSmiQueryField("PCI/Rx Throughput", "pci/rx_util", "KB/s", "pcie_rx_bytes_per_second", KIB),
)
#: A MIG device's memory (its GPU instance's: shared by its compute instances). nvidia-smi reports no
#: utilization and no power per MIG device.
NVIDIA_SMI_QUERY_MIG_METRICS: tuple[NvidiaSmiQueryField, ...] = (
    NvidiaSmiQueryField(
        "Shared FB Memory Usage/Used", "shared_fb_memory_usage/used", "MiB", "mem_used_bytes", MIB
    ),
    NvidiaSmiQueryField("FB Memory Usage/Used", "fb_memory_usage/used", "MiB", "mem_used_bytes", MIB),
    NvidiaSmiQueryField(
        "Shared FB Memory Usage/Total", "shared_fb_memory_usage/total", "MiB", "mem_total_bytes", MIB
    ),
    NvidiaSmiQueryField("FB Memory Usage/Total", "fb_memory_usage/total", "MiB", "mem_total_bytes", MIB),
)
NVIDIA_SMI_QUERY_MODEL = ("Product Name", "product_name")
NVIDIA_SMI_QUERY_MINOR = ("Minor Number", "minor_number")
# Local time without a zone: "Fri Jul  3 22:22:26 2026".
NVIDIA_SMI_QUERY_TIMESTAMP = ("Timestamp", "timestamp")
NVIDIA_SMI_QUERY_TIMESTAMP_FORMAT = "%a %b %d %H:%M:%S %Y"
NVIDIA_SMI_QUERY_ATTACHED = ("Attached GPUs", "attached_gpus")
NVIDIA_SMI_QUERY_MIG_INSTANCE = ("GPU Instance ID", "gpu_instance_id")
NVIDIA_SMI_QUERY_MIG_COMPUTE_INSTANCE = ("Compute Instance ID", "compute_instance_id")


# --- zest's recording rules (grafana/zest-gpu.rules.yml) -------------------------------------------
# Each raw gauge above is summarised per series (every label kept) over 5-minute tiles: the rules
# run every 5 minutes over the 5 minutes before (less 1 ms, so that tiles never share a sample).
RECORDED_PREFIX = "zest"
RECORDING_INTERVAL_SECONDS = 300
#: Statistics recorded for every gauge: they combine exactly over tiles (mean = sum / count).
RECORDED_OPERATIONS = ("sum", "count", "min", "max")
#: Statistics recorded for SM activity only: steps at the idle rule's step, and those below the threshold.
RECORDED_IDLE_OPERATIONS = ("steps", "idle_steps")
#: The subquery step of the idle rules (dcgm-exporter's default scrape interval).
RECORDED_IDLE_STEP_SECONDS = 30
#: Recorded for memory used only (the series that dates a GPU's window): the time of the first and of
#: the last sample in the tile, found at the idle rules' step.
RECORDED_EDGE_OPERATIONS = ("first", "last")
#: Sums of series recorded as one, at the idle rules' step (the sum of the fresh parts at each step, as
#: the raw query takes it), by their required parts: the name they are recorded under. Total memory in
#: MiB is DCGM's own total-framebuffer field; NVLink TX + RX in bytes/s has no field of its own.
RECORDED_SUMS: dict[tuple[str, ...], str] = {
    (DCGM_FB_USED, DCGM_FB_FREE): DCGM_FB_TOTAL,
    DCGM_NVLINK_BYTES: "DCGM_FI_PROF_NVLINK_TX_RX_BYTES",
}


def recorded_name(source_name: str, operation: str) -> str:
    """Name of the series recording ``operation`` of ``source_name`` over a tile: ``zest:<name>:<op>_5m``."""
    return f"{RECORDED_PREFIX}:{source_name}:{operation}_{RECORDING_INTERVAL_SECONDS // 60}m"
