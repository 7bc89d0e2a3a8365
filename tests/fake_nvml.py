"""A fake NVML driver with named hardware scenarios, for :class:`collectors.nvml.NvmlSource`.

It fakes the boundary only: the ``nvml*`` functions. What it returns are the
real ``pynvml`` structures (``c_nvmlMemory_v2_t``, ``c_nvmlGpmSupport_t``, real
ctypes GPM sample pointers read back from a real ``c_nvmlGpmMetricsGet_t``),
and what it raises are subclasses of the real ``pynvml.NVMLError_*`` classes,
so code that catches ``pynvml.NVMLError_GpuIsLost`` catches the fake's too.

Readings are constant per GPU; GPM metrics are only given for a pair of
samples of the same device taken in time order, as the real driver requires.
The devices are shaped after real ones (H100 80GB HBM3 shows 81559 MiB, of
which the driver reserves some; A100-SXM4-80GB; H100 MIG 3g.40gb).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any

import pynvml

MIB = 1024 * 1024


# Fake errors: subclasses of the real classes, named like pynvml's.
class NVMLError_LibraryNotFound(pynvml.NVMLError_LibraryNotFound):
    """No libnvidia-ml.so on this host."""


class NVMLError_DriverNotLoaded(pynvml.NVMLError_DriverNotLoaded):
    """The library is there, the kernel driver is not."""


class NVMLError_NotSupported(pynvml.NVMLError_NotSupported):
    """The device does not support the query."""


class NVMLError_FunctionNotFound(pynvml.NVMLError_FunctionNotFound):
    """The driver predates the function."""


class NVMLError_GpuIsLost(pynvml.NVMLError_GpuIsLost):
    """The GPU fell off the bus."""


class NVMLError_NotFound(pynvml.NVMLError_NotFound):
    """No such object (an empty MIG slot)."""


class NVMLError_InvalidArgument(pynvml.NVMLError_InvalidArgument):
    """A call the real driver would refuse."""


class NVMLError_Uninitialized(pynvml.NVMLError_Uninitialized):
    """Called before nvmlInit."""


class FakeClock:
    """Seconds since the epoch that move only when someone sleeps."""

    def __init__(self, start_seconds: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self.now_seconds = start_seconds
        self.slept_seconds: list[float] = []

    def time(self) -> float:
        return self.now_seconds

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.slept_seconds.append(seconds)
        self.now_seconds += seconds


#: GPM values of a busy H100 training step (0-100 and MiB/s), after a real job
#: read through DCGM: SM active ~0.92, occupancy 0.24, tensor 0.28, DRAM ~0.2.
H100_GPM: dict[int, float] = {
    pynvml.NVML_GPM_METRIC_SM_UTIL: 92.0,
    pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: 24.0,
    pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 28.0,
    pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: 19.5,
    pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC: 51_200.0,
    pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC: 48_000.0,
}


@dataclass
class FakeMig:
    """A MIG GPU instance."""

    gpu_instance_id: int
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3 MIG 3g.40gb"
    mem_total_bytes: int = 40_192 * MIB
    mem_reserved_bytes: int = 0
    mem_used_bytes: int = 12_288 * MIB
    gpm: dict[int, float] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)


@dataclass
class FakeGpu:
    """A physical GPU and what NVML reads from it."""

    index: int
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    util_percent: int = 97
    mem_total_bytes: int = 81_559 * MIB
    mem_reserved_bytes: int = 541 * MIB
    mem_used_bytes: int = 29_184 * MIB
    power_milliwatts: int = 598_311
    pcie_tx_kib_per_second: int = 412_000
    pcie_rx_kib_per_second: int = 1_250_000
    gpm: dict[int, float] | None = field(default_factory=lambda: dict(H100_GPM))  # None: no GPM
    gpm_not_supported: frozenset[int] = frozenset()  # metric ids answered with NOT_SUPPORTED
    not_supported: frozenset[str] = frozenset()  # nvml function names that raise NotSupported
    memory_v2: bool = True
    lost_at_seconds: float | None = None  # from this clock time on, every call raises GpuIsLost
    mig: list[FakeMig] | None = None  # None: MIG off
    max_mig_devices: int = 7
    pids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Handle:
    gpu: FakeGpu
    mig: FakeMig | None = None


@dataclass
class _Sample:
    buffer: Any  # keeps the ctypes struct alive
    device: tuple[int, int | None] | None = None
    taken_at_seconds: float | None = None


class FakeNvml:
    """Stands in for the ``pynvml`` module: pass it as ``NvmlSource(nvml=...)``."""

    def __init__(
        self,
        gpus: list[FakeGpu],
        clock: FakeClock,
        init_error: type[pynvml.NVMLError] | None = None,
        gpm_function_missing: bool = False,
    ) -> None:
        self.gpus = gpus
        self.clock = clock
        self.init_error = init_error
        self.gpm_function_missing = gpm_function_missing
        self.init_calls = 0
        self.shutdown_calls = 0
        self.samples: dict[int, _Sample] = {}
        self.samples_allocated = 0
        self.calls: list[str] = []

    # -- helpers -----------------------------------------------------------------------------------

    @property
    def live_gpm_samples(self) -> int:
        return len(self.samples)

    def _check(self, name: str, handle: _Handle | None = None) -> None:
        self.calls.append(name)
        if self.init_calls <= self.shutdown_calls:
            raise NVMLError_Uninitialized()
        if handle is None:
            return
        gpu = handle.gpu
        if gpu.lost_at_seconds is not None and self.clock.time() >= gpu.lost_at_seconds:
            raise NVMLError_GpuIsLost()
        if name in gpu.not_supported:
            raise NVMLError_NotSupported()

    def _sample(self, pointer: Any) -> _Sample:
        address = ctypes.addressof(pointer.contents)
        if address not in self.samples:
            raise NVMLError_InvalidArgument()
        return self.samples[address]

    # -- library -----------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error()
        self.init_calls += 1

    def nvmlShutdown(self) -> None:
        self._check("nvmlShutdown")
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check("nvmlDeviceGetHandleByIndex")
        return _Handle(self.gpus[index])

    # -- identity ----------------------------------------------------------------------------------

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        self._check("nvmlDeviceGetName", handle)
        return handle.mig.name if handle.mig else handle.gpu.name

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        self._check("nvmlDeviceGetUUID", handle)
        return handle.mig.uuid if handle.mig else handle.gpu.uuid

    def nvmlDeviceGetIndex(self, handle: _Handle) -> int:
        self._check("nvmlDeviceGetIndex", handle)
        return handle.gpu.index

    # -- MIG ---------------------------------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, handle: _Handle) -> list[int]:
        self._check("nvmlDeviceGetMigMode", handle)
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if handle.gpu.mig is not None else pynvml.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: _Handle) -> int:
        self._check("nvmlDeviceGetMaxMigDeviceCount", handle)
        return handle.gpu.max_mig_devices

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: _Handle, index: int) -> _Handle:
        self._check("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        instances = handle.gpu.mig or []
        if index >= handle.gpu.max_mig_devices:
            raise NVMLError_InvalidArgument()
        if index >= len(instances):
            raise NVMLError_NotFound()
        return _Handle(handle.gpu, instances[index])

    def nvmlDeviceGetGpuInstanceId(self, handle: _Handle) -> int:
        self._check("nvmlDeviceGetGpuInstanceId", handle)
        if handle.mig is None:
            raise NVMLError_InvalidArgument()
        return handle.mig.gpu_instance_id

    # -- readings ----------------------------------------------------------------------------------

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> pynvml.c_nvmlUtilization_t:
        self._check("nvmlDeviceGetUtilizationRates", handle)
        if handle.mig is not None:
            raise NVMLError_NotSupported()
        return pynvml.c_nvmlUtilization_t(gpu=handle.gpu.util_percent, memory=21)

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None) -> Any:
        self._check("nvmlDeviceGetMemoryInfo", handle)
        owner: FakeGpu | FakeMig = handle.mig or handle.gpu
        total, reserved, used = owner.mem_total_bytes, owner.mem_reserved_bytes, owner.mem_used_bytes
        if version:
            if not handle.gpu.memory_v2:
                raise NVMLError_FunctionNotFound()
            assert version == pynvml.nvmlMemory_v2
            return pynvml.c_nvmlMemory_v2_t(
                version=version, total=total, reserved=reserved, free=total - reserved - used, used=used
            )
        # v1 counts the driver's reservation as used
        return pynvml.c_nvmlMemory_t(total=total, free=total - reserved - used, used=used + reserved)

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        self._check("nvmlDeviceGetPowerUsage", handle)
        if handle.mig is not None:
            raise NVMLError_NotSupported()
        return handle.gpu.power_milliwatts

    def nvmlDeviceGetPcieThroughput(self, handle: _Handle, counter: int) -> int:
        self._check("nvmlDeviceGetPcieThroughput", handle)
        if handle.mig is not None:
            raise NVMLError_NotSupported()
        if counter == pynvml.NVML_PCIE_UTIL_TX_BYTES:
            return handle.gpu.pcie_tx_kib_per_second
        if counter == pynvml.NVML_PCIE_UTIL_RX_BYTES:
            return handle.gpu.pcie_rx_kib_per_second
        raise NVMLError_InvalidArgument()

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[Any]:
        self._check("nvmlDeviceGetComputeRunningProcesses", handle)
        pids = handle.mig.pids if handle.mig else handle.gpu.pids
        return [pynvml.c_nvmlProcessInfo_v3_t(pid=p, usedGpuMemory=1 << 30) for p in pids]

    # -- GPM ---------------------------------------------------------------------------------------

    def nvmlGpmQueryDeviceSupport(self, handle: _Handle) -> pynvml.c_nvmlGpmSupport_t:
        if self.gpm_function_missing:
            raise NVMLError_FunctionNotFound()
        self._check("nvmlGpmQueryDeviceSupport", handle)
        support = pynvml.c_nvmlGpmSupport_t()
        support.version = pynvml.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = int(handle.gpu.gpm is not None)
        return support

    def nvmlGpmSampleAlloc(self) -> Any:
        self._check("nvmlGpmSampleAlloc")
        buffer = pynvml.struct_c_nvmlGpmSample_t()
        pointer = ctypes.pointer(buffer)
        self.samples[ctypes.addressof(buffer)] = _Sample(buffer)
        self.samples_allocated += 1
        return pointer

    def nvmlGpmSampleFree(self, pointer: Any) -> None:
        self._check("nvmlGpmSampleFree")
        self._sample(pointer)
        del self.samples[ctypes.addressof(pointer.contents)]

    def nvmlGpmSampleGet(self, handle: _Handle, pointer: Any) -> Any:
        self._check("nvmlGpmSampleGet", handle)
        if handle.gpu.gpm is None or handle.gpu.mig is not None:
            raise NVMLError_NotSupported()  # a MIG-mode GPU is sampled per instance
        sample = self._sample(pointer)
        sample.device = (handle.gpu.index, None)
        sample.taken_at_seconds = self.clock.time()
        return pointer

    def nvmlGpmMigSampleGet(self, handle: _Handle, gpu_instance_id: int, pointer: Any) -> Any:
        self._check("nvmlGpmMigSampleGet", handle)
        if handle.mig is not None:
            raise NVMLError_InvalidArgument()  # takes the parent GPU's handle
        if handle.gpu.gpm is None:
            raise NVMLError_NotSupported()
        if not any(m.gpu_instance_id == gpu_instance_id for m in handle.gpu.mig or []):
            raise NVMLError_NotFound()
        sample = self._sample(pointer)
        sample.device = (handle.gpu.index, gpu_instance_id)
        sample.taken_at_seconds = self.clock.time()
        return pointer

    def nvmlGpmMetricsGet(self, request: pynvml.c_nvmlGpmMetricsGet_t) -> pynvml.c_nvmlGpmMetricsGet_t:
        self._check("nvmlGpmMetricsGet")
        if request.version != pynvml.NVML_GPM_METRICS_GET_VERSION or request.numMetrics < 1:
            raise NVMLError_InvalidArgument()
        first, second = self._sample(request.sample1), self._sample(request.sample2)
        if first.device is None or first.device != second.device:
            raise NVMLError_InvalidArgument()
        assert first.taken_at_seconds is not None and second.taken_at_seconds is not None
        if not first.taken_at_seconds < second.taken_at_seconds:
            raise NVMLError_InvalidArgument()
        index, instance = first.device
        gpu = self.gpus[index]
        if instance is None:
            values = gpu.gpm or {}
        else:
            values = next(m.gpm for m in gpu.mig or [] if m.gpu_instance_id == instance)
        for slot in range(request.numMetrics):
            metric = request.metrics[slot]
            if metric.metricId in gpu.gpm_not_supported or metric.metricId not in values:
                metric.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                metric.value = 0.0
            else:
                metric.nvmlReturn = pynvml.NVML_SUCCESS
                metric.value = values[metric.metricId]
        return request


# -- named scenarios ---------------------------------------------------------------------------------

H100_UUIDS = (
    "GPU-5c1e7a52-6f0b-4a0e-9d8c-3b1f2e4d6a71",
    "GPU-a4f9e0c3-1d2b-47e8-8c6a-0e5d3b2f9a18",
)


def healthy_h100x2(clock: FakeClock) -> FakeNvml:
    """Two busy H100 SXM with GPM, the second less loaded."""
    second = FakeGpu(1, H100_UUIDS[1], util_percent=64, power_milliwatts=421_050)
    return FakeNvml([FakeGpu(0, H100_UUIDS[0]), second], clock)


def no_driver(clock: FakeClock) -> FakeNvml:
    """A host without libnvidia-ml (a laptop, a CPU node)."""
    return FakeNvml([], clock, init_error=NVMLError_LibraryNotFound)


def driver_not_loaded(clock: FakeClock) -> FakeNvml:
    """The library is installed but the kernel module is not loaded."""
    return FakeNvml([], clock, init_error=NVMLError_DriverNotLoaded)


def a100_without_gpm(clock: FakeClock) -> FakeNvml:
    """An A100: a recent driver answers the GPM support query with "not supported"."""
    gpu = FakeGpu(
        0,
        "GPU-0b1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5",
        name="NVIDIA A100-SXM4-80GB",
        util_percent=88,
        mem_total_bytes=81_920 * MIB,
        mem_reserved_bytes=0,
        mem_used_bytes=40_000 * MIB,
        power_milliwatts=305_000,
        gpm=None,
    )
    return FakeNvml([gpu], clock)


def one_gpu_lost(clock: FakeClock, after_samples: int, interval_seconds: float) -> FakeNvml:
    """Two H100; GPU 1 falls off the bus after ``after_samples`` good ticks."""
    lost_at = clock.time() + (after_samples + 0.5) * interval_seconds
    fake = healthy_h100x2(clock)
    fake.gpus[1].lost_at_seconds = lost_at
    return fake


MIG_UUIDS = (
    "MIG-265a219d-a49f-578a-825d-222c72699c16",
    "MIG-8f3c1b2a-7d6e-5f4a-9b8c-1e2d3c4b5a69",
)


def mig_h100(clock: FakeClock) -> FakeNvml:
    """An H100 in MIG mode with two 3g.40gb instances (GPU instance ids 1 and 2)."""
    busy = {**H100_GPM, pynvml.NVML_GPM_METRIC_SM_UTIL: 80.0}
    idle = {**H100_GPM, pynvml.NVML_GPM_METRIC_SM_UTIL: 10.0}
    first = FakeMig(1, MIG_UUIDS[0], gpm=busy, pids=[4242])
    second = FakeMig(2, MIG_UUIDS[1], mem_used_bytes=2_048 * MIB, gpm=idle, pids=[5151])
    gpu = FakeGpu(0, H100_UUIDS[0], mig=[first, second])
    return FakeNvml([gpu], clock)


def memory_v2_unsupported(clock: FakeClock) -> FakeNvml:
    """A driver without nvmlDeviceGetMemoryInfo_v2: only v1, whose "used" includes the reservation."""
    fake = healthy_h100x2(clock)
    for gpu in fake.gpus:
        gpu.memory_v2 = False
    return fake


def pcie_h100_without_nvlink(clock: FakeClock) -> FakeNvml:
    """An H100 PCIe with no NVLink bridge, in a VM that hides the PCIe counters."""
    gpu = FakeGpu(
        0,
        H100_UUIDS[0],
        name="NVIDIA H100 PCIe",
        power_milliwatts=301_500,
        gpm_not_supported=frozenset(
            {pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC, pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC}
        ),
        not_supported=frozenset({"nvmlDeviceGetPcieThroughput"}),
    )
    return FakeNvml([gpu], clock)
