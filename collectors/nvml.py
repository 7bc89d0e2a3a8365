"""Live telemetry of this host's GPUs through NVML (the only module that imports ``pynvml``).

:class:`NvmlSource` samples every GPU (or a chosen few) at an interval over a
window and returns the canonical telemetry frame of :mod:`collectors.schema`:

* utilization, memory, power and PCIe throughput from the plain NVML queries;
* on Hopper and newer, SM activity, SM occupancy, tensor activity, DRAM
  bandwidth and NVLink traffic from GPU Performance Monitoring (GPM), each
  computed between the previous tick's GPM sample and this tick's;
* MIG instances as devices of their own, ``gpu = "<index>/<gpu instance id>"``.

A field NVML cannot read becomes NaN with one note per field and GPU; a GPU
that is lost mid-window becomes NaN rows from then on; a host without a driver
raises :class:`~collectors.errors.SourceUnavailable`.

The NVML module and the clock are injected, so tests pass a fake driver. The
fake raises subclasses of the real ``pynvml.NVMLError_*`` classes, which is
why the exception classes, structures and constants below come from the real
``pynvml`` while every ``nvml*`` call goes to the injected module.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import pandas as pd
import pynvml

from collectors import schema
from collectors.errors import SourceUnavailable
from collectors.util import iso_utc

#: ``pynvml`` itself or a stand-in exposing the same ``nvml*`` functions.
NvmlModule = Any

_T = TypeVar("_T")

BYTES_PER_KIB = 1024
BYTES_PER_MIB = 1024 * 1024
MILLIWATTS_PER_WATT = 1000.0
PERCENT_PER_RATIO = 100.0
#: Slack when counting how many intervals fit in a window (0.3 / 0.1 must be 3).
_TICK_EPSILON = 1e-9

# Signal columns this source fills, as named in schema.SIGNALS.
GPU_UTIL = "gpu_util_ratio"
SM_ACTIVE = "sm_active_ratio"
SM_OCCUPANCY = "sm_occupancy_ratio"
TENSOR_ACTIVE = "tensor_active_ratio"
DRAM_ACTIVE = "dram_active_ratio"
MEM_USED = "mem_used_bytes"
MEM_TOTAL = "mem_total_bytes"
POWER = "power_watts"
PCIE_TX = "pcie_tx_bytes_per_second"
PCIE_RX = "pcie_rx_bytes_per_second"
NVLINK = "nvlink_bytes_per_second"

#: GPM metrics reported as 0-100 and stored as 0-1 ratios. GPM's SM_UTIL ("share
#: of SMs busy") is the NVML counterpart of DCGM's SM_ACTIVE.
GPM_RATIO_METRICS: tuple[tuple[int, str], ...] = (
    (pynvml.NVML_GPM_METRIC_SM_UTIL, SM_ACTIVE),
    (pynvml.NVML_GPM_METRIC_SM_OCCUPANCY, SM_OCCUPANCY),
    (pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL, TENSOR_ACTIVE),
    (pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL, DRAM_ACTIVE),
)
#: NVLink read and write over all links, MiB/s. Their sum is ``nvlink_bytes_per_second``:
#: total traffic in both directions, like DCGM's NVLINK_BANDWIDTH_TOTAL.
GPM_NVLINK_METRICS: tuple[int, ...] = (
    pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC,
    pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC,
)
_GPM_METRIC_IDS: tuple[int, ...] = (*(m for m, _ in GPM_RATIO_METRICS), *GPM_NVLINK_METRICS)


_UNAVAILABLE_HINT = "use --source prometheus=URL or a capture file"

# nvmlDeviceGetMemoryInfo_v2 is missing from old drivers (FunctionNotFound), refused by
# some devices (NotSupported), and old nvidia-ml-py has no ``version`` keyword (TypeError).
_MEMORY_V2_MISSING = (pynvml.NVMLError_FunctionNotFound, pynvml.NVMLError_NotSupported, TypeError)


@dataclass(frozen=True)
class NvmlDevice:
    """One device NVML shows: a whole GPU, or a MIG instance of one."""

    gpu_id: str  # "<index>" or "<index>/<gpu instance id>"
    index: int  # index of the physical GPU
    gpu_instance_id: int | None
    uuid: str  # "GPU-…" or "MIG-…"
    name: str


@dataclass(frozen=True)
class NvmlCapture:
    """What a sampling window produced: the canonical frame and notes on missing fields."""

    frame: pd.DataFrame
    notes: list[str]


@dataclass
class _Device:
    info: NvmlDevice
    handle: Any  # the device's own handle (the MIG handle for an instance)
    parent: Any  # the physical GPU's handle
    gpm: bool = False
    memory_v2: bool = True
    lost: bool = False
    gpm_samples: list[Any] = field(default_factory=list)  # [previous, next]

    @property
    def mig(self) -> bool:
        return self.info.gpu_instance_id is not None


class NvmlSource:
    """Samples this host's GPUs through NVML.

    ``nvml`` defaults to the real ``pynvml``; ``clock`` returns seconds since
    the epoch and ``sleep`` waits a number of seconds (tests pass a fake
    clock). NVML is initialised on first use, once, and shut down at exit or
    by :meth:`close`.
    """

    def __init__(
        self,
        nvml: NvmlModule | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        host: str | None = None,
    ) -> None:
        self._nvml = pynvml if nvml is None else nvml
        self._clock = clock
        self._sleep = sleep
        self._host = socket.gethostname() if host is None else host
        self._initialised = False
        self._notes: list[str] = []
        self._noted: set[tuple[str, str]] = set()
        self._devices: list[_Device] = []  # the devices of the window being sampled

    # -- lifecycle ---------------------------------------------------------------------------------

    def _ensure_init(self) -> None:
        if self._initialised:
            return
        try:
            self._nvml.nvmlInit()
        except (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded) as exc:
            raise SourceUnavailable(
                f"NVML is not available on this host ({exc}); {_UNAVAILABLE_HINT}"
            ) from None
        except pynvml.NVMLError as exc:
            raise SourceUnavailable(f"NVML failed to initialise ({exc}); {_UNAVAILABLE_HINT}") from None
        self._initialised = True
        atexit.register(self.close)

    def close(self) -> None:
        """Shut NVML down if this source initialised it (also runs at exit)."""
        if not self._initialised:
            return
        self._initialised = False
        atexit.unregister(self.close)
        with contextlib.suppress(pynvml.NVMLError):  # at exit there is nothing left to do about it
            self._nvml.nvmlShutdown()

    def available(self) -> bool:
        """Whether NVML can be initialised on this host."""
        try:
            self._ensure_init()
        except SourceUnavailable:
            return False
        return True

    # -- discovery ---------------------------------------------------------------------------------

    def devices(self) -> list[NvmlDevice]:
        """Every whole GPU and MIG instance on this host, in index order."""
        self._ensure_init()
        return [d.info for d in self._enumerate()]

    def gpu_pids(self) -> dict[int | str, list[int]]:
        """Pids of the compute processes on each device: keys are GPU indices, or "i/gi" for MIG."""
        self._ensure_init()
        pids: dict[int | str, list[int]] = {}
        for dev in self._enumerate():
            try:
                processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(dev.handle)
            except pynvml.NVMLError:
                continue  # a device we cannot list contributes no pids
            key: int | str = dev.info.gpu_id if dev.mig else dev.info.index
            pids[key] = sorted({int(p.pid) for p in processes})
        return pids

    def gpu_uuids(self) -> dict[str, int | str]:
        """Each device's UUID and its id as :meth:`gpu_pids` keys it: a GPU index, or "i/gi" for a MIG
        instance. jobstats names a MIG job's file by the instance's UUID: mapping that to the physical
        index would sample every instance of the GPU for the job."""
        self._ensure_init()
        return {dev.info.uuid: dev.info.gpu_id if dev.mig else dev.info.index for dev in self._enumerate()}

    def _enumerate(self) -> list[_Device]:
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as exc:
            raise SourceUnavailable(f"NVML cannot count the GPUs ({exc}); {_UNAVAILABLE_HINT}") from None
        devices: list[_Device] = []
        for index in range(count):
            try:
                devices.extend(self._enumerate_gpu(index))
            except pynvml.NVMLError as exc:
                self._note(str(index), "device", f"GPU {index}: cannot be read ({exc}); left out")
        return devices

    def _enumerate_gpu(self, index: int) -> Iterator[_Device]:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        gpm = self._gpm_supported(handle)
        if not self._mig_enabled(handle):
            info = NvmlDevice(
                str(index), index, None, _text(nvml.nvmlDeviceGetUUID(handle)), _name(nvml, handle)
            )
            yield _Device(info, handle, handle, gpm=gpm)
            return
        for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig_handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except pynvml.NVMLError_NotFound:
                continue  # an empty slot
            instance = int(nvml.nvmlDeviceGetGpuInstanceId(mig_handle))
            info = NvmlDevice(
                schema.mig_gpu(index, instance),
                index,
                instance,
                _text(nvml.nvmlDeviceGetUUID(mig_handle)),
                _name(nvml, mig_handle),
            )
            yield _Device(info, mig_handle, handle, gpm=gpm)

    def _mig_enabled(self, handle: Any) -> bool:
        try:
            current, _pending = self._nvml.nvmlDeviceGetMigMode(handle)
        except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_FunctionNotFound):
            return False  # pre-Ampere GPU or old driver: no MIG
        return bool(current == pynvml.NVML_DEVICE_MIG_ENABLE)

    def _gpm_supported(self, handle: Any) -> bool:
        try:
            support = self._nvml.nvmlGpmQueryDeviceSupport(handle)
        except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_FunctionNotFound):
            return False  # driver older than GPM
        return bool(support.isSupportedDevice)

    # -- sampling ----------------------------------------------------------------------------------

    def sample(
        self,
        window_seconds: float,
        interval_seconds: float,
        gpu_indices: Sequence[int | str] | None = None,
        job_id: str | None = None,
    ) -> NvmlCapture:
        """Sample for ``window_seconds``, one row per device every ``interval_seconds``.

        ``gpu_indices`` selects devices: an int is a GPU index (with all its MIG
        instances), a string a device id ("0", "0/1") or UUID; ``None`` is all.
        ``job_id`` fills the frame's job column. The first row comes one
        interval after the start, so GPM metrics cover every tick.
        """
        if not (window_seconds > 0 and interval_seconds > 0):
            raise ValueError("window_seconds and interval_seconds must be positive")
        if interval_seconds > window_seconds:
            raise ValueError(f"interval {interval_seconds} s is longer than the window {window_seconds} s")
        self._ensure_init()
        self._notes = []
        self._noted = set()
        devices = _select(self._enumerate(), gpu_indices)
        self._devices = devices
        ticks = max(1, math.floor(window_seconds / interval_seconds + _TICK_EPSILON))
        for dev in devices:
            if dev.mig:
                self._note(
                    dev.info.gpu_id,
                    "mig",
                    f"GPU {dev.info.gpu_id} is a MIG instance: NVML reports no utilization, power or PCIe "
                    "per instance (NaN)",
                )
            if not dev.gpm:
                self._note(
                    dev.info.gpu_id,
                    "gpm",
                    f"GPU {dev.info.gpu_id} ({dev.info.name}) has no GPM (Hopper or newer): SM, occupancy, "
                    "tensor, DRAM and NVLink signals are NaN",
                )
        rows: list[dict[str, object]] = []
        try:
            self._alloc_gpm(devices)
            start = self._clock()
            for dev in devices:
                self._take_gpm_sample(dev)
            for tick in range(1, ticks + 1):
                delay = start + tick * interval_seconds - self._clock()
                if delay > 0:
                    self._sleep(delay)
                now = self._clock()
                rows.extend(self._row(dev, now, job_id) for dev in devices)
        finally:
            self._free_gpm(devices)
        frame = pd.DataFrame(rows) if rows else schema.empty_frame()
        return NvmlCapture(schema.conform(frame), list(self._notes))

    def _row(self, dev: _Device, now: float, job_id: str | None) -> dict[str, object]:
        values: dict[str, float] = dict.fromkeys(schema.SIGNALS, math.nan)
        if not dev.lost:
            values.update(self._read_plain(dev))
            values.update(self._read_gpm(dev))
        if dev.lost:  # lost during this tick: the whole row is a gap
            values = dict.fromkeys(schema.SIGNALS, math.nan)
        return {
            schema.TIMESTAMP: pd.Timestamp(now, unit="s", tz="UTC"),
            schema.HOST: self._host,
            schema.GPU: dev.info.gpu_id,
            schema.JOB_ID: job_id,
            schema.GPU_MODEL: dev.info.name,
            **values,
        }

    def _read_plain(self, dev: _Device) -> dict[str, float]:
        nvml = self._nvml
        h = dev.handle
        out: dict[str, float] = {}
        memory = self._guard(dev, "memory", lambda: self._memory(dev))
        if memory is not None:
            out[MEM_USED], out[MEM_TOTAL] = memory
        if dev.mig:
            return out
        util = self._guard(dev, GPU_UTIL, lambda: nvml.nvmlDeviceGetUtilizationRates(h).gpu)
        if util is not None:
            out[GPU_UTIL] = util / PERCENT_PER_RATIO
        power = self._guard(dev, POWER, lambda: nvml.nvmlDeviceGetPowerUsage(h))
        if power is not None:
            out[POWER] = power / MILLIWATTS_PER_WATT
        for column, counter in (
            (PCIE_TX, pynvml.NVML_PCIE_UTIL_TX_BYTES),
            (PCIE_RX, pynvml.NVML_PCIE_UTIL_RX_BYTES),
        ):
            kib_per_second = self._guard(dev, column, partial(nvml.nvmlDeviceGetPcieThroughput, h, counter))
            if kib_per_second is not None:
                out[column] = float(kib_per_second) * BYTES_PER_KIB
        return out

    def _memory(self, dev: _Device) -> tuple[float, float]:
        """Used and total bytes; v2 counts driver-reserved memory apart from used, v1 does not."""
        if dev.memory_v2:
            try:
                info = self._nvml.nvmlDeviceGetMemoryInfo(dev.handle, version=pynvml.nvmlMemory_v2)
            except _MEMORY_V2_MISSING:
                dev.memory_v2 = False
                self._note(
                    dev.info.gpu_id,
                    "memory_v2",
                    f"GPU {dev.info.gpu_id}: NVML memory info v2 unavailable; mem_used_bytes includes "
                    "driver-reserved memory (v1)",
                )
            else:
                return float(info.used), float(info.total)
        info = self._nvml.nvmlDeviceGetMemoryInfo(dev.handle)
        return float(info.used), float(info.total)

    # -- GPM ---------------------------------------------------------------------------------------

    def _alloc_gpm(self, devices: Sequence[_Device]) -> None:
        for dev in devices:
            if not dev.gpm:
                continue
            try:
                dev.gpm_samples = [self._nvml.nvmlGpmSampleAlloc(), self._nvml.nvmlGpmSampleAlloc()]
            except pynvml.NVMLError as exc:
                self._free_samples(dev)
                dev.gpm = False
                self._note(dev.info.gpu_id, "gpm", f"GPU {dev.info.gpu_id}: GPM samples unavailable ({exc})")

    def _free_gpm(self, devices: Sequence[_Device]) -> None:
        for dev in devices:
            self._free_samples(dev)

    def _free_samples(self, dev: _Device) -> None:
        for sample in dev.gpm_samples:
            # best effort: the driver reclaims samples at shutdown
            with contextlib.suppress(pynvml.NVMLError):
                self._nvml.nvmlGpmSampleFree(sample)
        dev.gpm_samples = []

    def _take_gpm_sample(self, dev: _Device) -> bool:
        """Fill the next GPM sample buffer; True when it holds a fresh sample."""
        if not dev.gpm or dev.lost:
            return False
        target = dev.gpm_samples[1]
        if dev.mig:
            instance = dev.info.gpu_instance_id
            taken = self._guard(
                dev, "gpm", lambda: self._nvml.nvmlGpmMigSampleGet(dev.parent, instance, target)
            )
        else:
            taken = self._guard(dev, "gpm", lambda: self._nvml.nvmlGpmSampleGet(dev.parent, target))
        if taken is None:
            return False
        dev.gpm_samples.reverse()  # the fresh sample becomes "previous" for the next tick
        return True

    def _read_gpm(self, dev: _Device) -> dict[str, float]:
        if not dev.gpm or dev.lost:
            return {}
        if not self._take_gpm_sample(dev):
            return {}
        previous, latest = dev.gpm_samples[1], dev.gpm_samples[0]
        request = pynvml.c_nvmlGpmMetricsGet_t()
        request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(_GPM_METRIC_IDS)
        request.sample1 = previous
        request.sample2 = latest
        for slot, metric_id in enumerate(_GPM_METRIC_IDS):
            request.metrics[slot].metricId = metric_id
        result = self._guard(dev, "gpm", lambda: self._nvml.nvmlGpmMetricsGet(request))
        if result is None:
            return {}
        values: dict[int, float] = {}
        for slot, metric_id in enumerate(_GPM_METRIC_IDS):
            metric = result.metrics[slot]
            if metric.nvmlReturn == pynvml.NVML_SUCCESS:
                values[metric_id] = float(metric.value)
        out: dict[str, float] = {}
        for metric_id, column in GPM_RATIO_METRICS:
            if metric_id in values:
                out[column] = values[metric_id] / PERCENT_PER_RATIO
            else:
                self._note_gpm_metric(dev, column, result, metric_id)
        if all(m in values for m in GPM_NVLINK_METRICS):
            out[NVLINK] = sum(values[m] for m in GPM_NVLINK_METRICS) * BYTES_PER_MIB
        else:
            missing = next(m for m in GPM_NVLINK_METRICS if m not in values)
            self._note_gpm_metric(dev, NVLINK, result, missing)
        return out

    def _note_gpm_metric(self, dev: _Device, column: str, result: Any, metric_id: int) -> None:
        slot = _GPM_METRIC_IDS.index(metric_id)
        code = int(result.metrics[slot].nvmlReturn)
        reason = pynvml.NVMLError._errcode_to_string.get(code, f"NVML error {code}")
        self._note(dev.info.gpu_id, column, f"GPU {dev.info.gpu_id}: {column} unavailable ({reason}); NaN")

    # -- errors and notes --------------------------------------------------------------------------

    def _guard(self, dev: _Device, what: str, read: Callable[[], _T]) -> _T | None:
        """Run one NVML read; an NVML error becomes None and a note, a lost GPU marks ``dev`` lost."""
        if dev.lost:
            return None
        try:
            return read()
        except pynvml.NVMLError_GpuIsLost:
            self._lose(dev)
            return None
        except pynvml.NVMLError as exc:
            self._note(dev.info.gpu_id, what, f"GPU {dev.info.gpu_id}: {what} unavailable ({exc}); NaN")
            return None

    def _lose(self, dev: _Device) -> None:
        # The physical GPU is gone: every MIG instance on it goes with it.
        for other in self._devices:
            if other.info.index == dev.info.index:
                other.lost = True
        dev.lost = True
        when = iso_utc(self._clock())
        self._note(
            str(dev.info.index),
            "lost",
            f"GPU {dev.info.index} was lost at {when} (NVML: GPU is lost); its rows are NaN from then on",
        )

    def _note(self, gpu_id: str, what: str, text: str) -> None:
        if (gpu_id, what) not in self._noted:
            self._noted.add((gpu_id, what))
            self._notes.append(text)


def _select(devices: list[_Device], wanted: Sequence[int | str] | None) -> list[_Device]:
    if wanted is None:
        return devices
    chosen: list[_Device] = []
    for selector in wanted:
        matches = [d for d in devices if _matches(d.info, selector)]
        if not matches:
            here = ", ".join(d.info.gpu_id for d in devices) or "none"
            raise SourceUnavailable(
                f"GPU {selector} is not on this host (GPUs here: {here}); choose one of those"
            )
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


def _matches(info: NvmlDevice, selector: int | str) -> bool:
    if isinstance(selector, int):
        return info.index == selector
    return selector in (info.gpu_id, info.uuid)


def _text(value: str | bytes) -> str:
    # nvidia-ml-py before 11.515 returned bytes
    return value.decode() if isinstance(value, bytes) else str(value)


def _name(nvml: NvmlModule, handle: Any) -> str:
    return _text(nvml.nvmlDeviceGetName(handle))
