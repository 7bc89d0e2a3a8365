"""Datasheet figures of the data-centre GPUs zest models, keyed by the name NVML and DCGM report.

The one place these figures live. Bandwidths are bytes per second and *per
direction* unless the name says ``bidirectional``; compute is dense (no
sparsity) in FLOP per second. Sources, per GPU:

* A100: NVIDIA A100 Tensor Core GPU datasheet (2021, "nvidia-a100-datasheet-us-nvidia-1758950-r4")
  and the NVIDIA A100 Tensor Core GPU Architecture whitepaper (2020): BF16 tensor
  312 TFLOPS dense, HBM2 1,555 GB/s (40 GB), HBM2e 2,039 GB/s (80 GB SXM),
  NVLink 3 600 GB/s bidirectional (12 links), PCIe Gen4 64 GB/s bidirectional,
  400 W max TDP (SXM), 108 SMs.
* H100 SXM5: NVIDIA H100 Tensor Core GPU datasheet (2023) and the Hopper
  architecture whitepaper (2022): BF16 tensor 1,979 TFLOPS *with sparsity*,
  i.e. 989.4 TFLOPS dense; HBM3 3.35 TB/s; NVLink 4 900 GB/s bidirectional
  (18 links); PCIe Gen5 128 GB/s bidirectional; up to 700 W; 132 SMs.
* H200 SXM: NVIDIA H200 Tensor Core GPU datasheet (2024): same compute as
  H100 SXM (989 TFLOPS BF16 dense), 141 GB HBM3e at 4.8 TB/s, NVLink 900 GB/s,
  PCIe Gen5 128 GB/s, up to 700 W; 132 SMs.

Network: the vendor's 8-GPU systems give each GPU one NIC of its own: DGX A100
(datasheet, 2020) eight ConnectX-6 at 200 Gb/s = 25 GB/s per GPU; DGX H100 and
DGX H200 (datasheets, 2023/2024) eight ConnectX-7 at 400 Gb/s = 50 GB/s per
GPU. A collective whose group spans hosts runs at that rate. Each of these
systems holds 8 GPUs (``gpus_per_node``), joined by NVLink/NVSwitch.

Memory capacities are the totals NVML reports (``nvidia-smi`` "Memory-Usage"
column: 40960 MiB, 81920 MiB, 81559 MiB, 143771 MiB), since that is what a
job can allocate against and what ``mem_total_bytes`` reads. Idle power is
the typical value ``nvidia-smi`` shows for an idle GPU in P0 (about 50-60 W
for A100 SXM, 70-75 W for H100/H200 SXM): an observation, not a datasheet
figure.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9  # datasheets quote decimal gigabytes per second
MIB = 1024 * 1024
TERA = 1e12


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model's peak figures, in base units."""

    key: str  # short name used in job specs ("a100-80gb")
    nvml_name: str  # what NVML/DCGM report as the device name (modelName label)
    peak_bf16_flops_per_second: float  # dense tensor-core BF16
    hbm_bytes_per_second: float
    memory_total_bytes: float  # as NVML reports it
    nvlink_bytes_per_second: float  # per direction, all links of one GPU together
    pcie_bytes_per_second: float  # per direction, x16
    network_bytes_per_second: float  # per direction, the one NIC per GPU of the vendor's 8-GPU system
    sm_count: int
    tdp_watts: float
    idle_watts: float
    gpus_per_node: int = 8  # the vendor's HGX/DGX system; a job spec may say otherwise

    @property
    def nvlink_bidirectional_bytes_per_second(self) -> float:
        """NVLink total as datasheets quote it (both directions)."""
        return 2.0 * self.nvlink_bytes_per_second


A100_40GB = GpuSpec(
    key="a100-40gb",
    nvml_name="NVIDIA A100-SXM4-40GB",
    peak_bf16_flops_per_second=312 * TERA,
    hbm_bytes_per_second=1555 * GB,
    memory_total_bytes=40960 * MIB,
    nvlink_bytes_per_second=300 * GB,
    pcie_bytes_per_second=32 * GB,
    network_bytes_per_second=25 * GB,
    sm_count=108,
    tdp_watts=400.0,
    idle_watts=55.0,
)

A100_80GB = GpuSpec(
    key="a100-80gb",
    nvml_name="NVIDIA A100-SXM4-80GB",
    peak_bf16_flops_per_second=312 * TERA,
    hbm_bytes_per_second=2039 * GB,
    memory_total_bytes=81920 * MIB,
    nvlink_bytes_per_second=300 * GB,
    pcie_bytes_per_second=32 * GB,
    network_bytes_per_second=25 * GB,
    sm_count=108,
    tdp_watts=400.0,
    idle_watts=60.0,
)

H100_SXM = GpuSpec(
    key="h100-sxm",
    nvml_name="NVIDIA H100 80GB HBM3",
    peak_bf16_flops_per_second=989.4 * TERA,
    hbm_bytes_per_second=3350 * GB,
    memory_total_bytes=81559 * MIB,
    nvlink_bytes_per_second=450 * GB,
    pcie_bytes_per_second=64 * GB,
    network_bytes_per_second=50 * GB,
    sm_count=132,
    tdp_watts=700.0,
    idle_watts=70.0,
)

H200_SXM = GpuSpec(
    key="h200",
    nvml_name="NVIDIA H200",
    peak_bf16_flops_per_second=989.4 * TERA,
    hbm_bytes_per_second=4800 * GB,
    memory_total_bytes=143771 * MIB,
    nvlink_bytes_per_second=450 * GB,
    pcie_bytes_per_second=64 * GB,
    network_bytes_per_second=50 * GB,
    sm_count=132,
    tdp_watts=700.0,
    idle_watts=75.0,
)

GPUS: tuple[GpuSpec, ...] = (A100_40GB, A100_80GB, H100_SXM, H200_SXM)
_BY_KEY = {g.key: g for g in GPUS}
_BY_NVML = {g.nvml_name.lower(): g for g in GPUS}


def gpu_keys() -> tuple[str, ...]:
    """The short names a job spec may give as ``gpu``."""
    return tuple(_BY_KEY)


def get(name: str) -> GpuSpec:
    """The spec for a short key ("a100-80gb") or an NVML name ("NVIDIA A100-SXM4-80GB").

    Raises ``KeyError`` naming the known GPUs when ``name`` is neither.
    """
    found = _BY_KEY.get(name.strip().lower()) or _BY_NVML.get(name.strip().lower())
    if found is None:
        raise KeyError(f"unknown GPU {name!r}; known: {', '.join(gpu_keys())}")
    return found


def from_nvml_name(nvml_name: str) -> GpuSpec | None:
    """The spec whose NVML name is ``nvml_name`` (case-insensitive), or None for a GPU zest does not know."""
    return _BY_NVML.get(nvml_name.strip().lower())
