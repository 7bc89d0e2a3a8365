"""Peak interconnect bandwidth per GPU model, keyed by the device name NVML and DCGM report.

Telemetry reports link traffic summed over both directions (PCIe TX + RX,
NVLink TX + RX), so the peaks here are *bidirectional* bytes per second, as
datasheets quote them. The SXM parts :mod:`collectors.gpuspecs` models take
their figures from there (one copy of each figure); the PCIe and NVL cards
are listed here with their sources:

* A100 PCIe 40 GB / 80 GB: NVIDIA A100 Tensor Core GPU datasheet (2021,
  "nvidia-a100-datasheet-us-nvidia-1758950-r4"), "Interconnect" row: NVIDIA
  NVLink Bridge for 2 GPUs 600 GB/s, PCIe Gen4 64 GB/s.
* H100 PCIe and H100 NVL: NVIDIA H100 Tensor Core GPU datasheet (2023),
  "Interconnect" row: NVLink 600 GB/s (bridge), PCIe Gen5 128 GB/s.
* H200 NVL: NVIDIA H200 Tensor Core GPU datasheet (2024), "Interconnect"
  row: 2- or 4-way NVLink bridge 900 GB/s, PCIe Gen5 128 GB/s.

Device names as ``nvidia-smi --query-gpu=name`` and dcgm-exporter's
``modelName`` label print them; A100 80 GB PCIe cards appear under two names
depending on the driver.
"""

from __future__ import annotations

from dataclasses import dataclass

from collectors import gpuspecs

GB = gpuspecs.GB  # datasheets quote decimal gigabytes per second


@dataclass(frozen=True)
class LinkPeaks:
    """Peak link bandwidth of one GPU, both directions together, in bytes per second."""

    pcie_bytes_per_second: float
    nvlink_bytes_per_second: float


def _from_spec(spec: gpuspecs.GpuSpec) -> LinkPeaks:
    return LinkPeaks(
        pcie_bytes_per_second=2.0 * spec.pcie_bytes_per_second,
        nvlink_bytes_per_second=spec.nvlink_bidirectional_bytes_per_second,
    )


_A100_PCIE = LinkPeaks(pcie_bytes_per_second=64 * GB, nvlink_bytes_per_second=600 * GB)
_H100_PCIE = LinkPeaks(pcie_bytes_per_second=128 * GB, nvlink_bytes_per_second=600 * GB)
_H200_NVL = LinkPeaks(pcie_bytes_per_second=128 * GB, nvlink_bytes_per_second=900 * GB)

#: Peak link bandwidth by device name (lower case).
LINK_PEAKS: dict[str, LinkPeaks] = {
    **{spec.nvml_name.lower(): _from_spec(spec) for spec in gpuspecs.GPUS},
    "nvidia a100-pcie-40gb": _A100_PCIE,
    "nvidia a100 80gb pcie": _A100_PCIE,
    "nvidia a100-pcie-80gb": _A100_PCIE,
    "nvidia h100 pcie": _H100_PCIE,
    "nvidia h100 nvl": _H100_PCIE,
    "nvidia h200 nvl": _H200_NVL,
}


def link_peaks(gpu_model: str) -> LinkPeaks | None:
    """Peak link bandwidth of a device name ("NVIDIA H100 80GB HBM3"); None for a model zest does not know."""
    return LINK_PEAKS.get(" ".join(gpu_model.split()).lower())
