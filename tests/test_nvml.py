"""The NVML source against the fake driver's named scenarios (tests/fake_nvml.py)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pynvml
import pytest
from fake_nvml import (
    H100_UUIDS,
    MIB,
    MIG_UUIDS,
    FakeClock,
    FakeNvml,
    a100_without_gpm,
    driver_not_loaded,
    healthy_h100x2,
    memory_v2_unsupported,
    mig_h100,
    no_driver,
    one_gpu_lost,
    pcie_h100_without_nvlink,
)
from pandas.testing import assert_frame_equal

from collectors import nvml as nvml_source
from collectors import schema
from collectors.errors import SourceUnavailable
from collectors.nvml import NvmlDevice, NvmlSource

HOST = "gpu-node-07"
GPM_SIGNALS = [
    "sm_active_ratio",
    "sm_occupancy_ratio",
    "tensor_active_ratio",
    "dram_active_ratio",
    "nvlink_bytes_per_second",
]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def source_for(fake: FakeNvml, clock: FakeClock) -> NvmlSource:
    return NvmlSource(nvml=fake, clock=clock.time, sleep=clock.sleep, host=HOST)


def at(clock_start: float, seconds: float) -> pd.Timestamp:
    return pd.Timestamp(clock_start + seconds, unit="s", tz="UTC")


def h100_row(start: float, tick: int, gpu: str, util: float, power: float) -> dict[str, Any]:
    return {
        schema.TIMESTAMP: at(start, tick),
        schema.HOST: HOST,
        schema.GPU: gpu,
        schema.JOB_ID: "4711",
        schema.GPU_MODEL: "NVIDIA H100 80GB HBM3",
        "gpu_util_ratio": util,
        "sm_active_ratio": 0.92,
        "sm_occupancy_ratio": 0.24,
        "tensor_active_ratio": 0.28,
        "dram_active_ratio": 0.195,
        "mem_used_bytes": 29_184 * MIB,
        "mem_total_bytes": 81_559 * MIB,
        "power_watts": power,
        "pcie_tx_bytes_per_second": 412_000 * 1024,
        "pcie_rx_bytes_per_second": 1_250_000 * 1024,
        "nvlink_bytes_per_second": (51_200 + 48_000) * MIB,
    }


# -- healthy H100 x2 -----------------------------------------------------------------------------------


def test_healthy_h100s_give_every_signal_in_base_units(clock: FakeClock) -> None:
    start = clock.time()
    capture = source_for(healthy_h100x2(clock), clock).sample(2.0, 1.0, job_id="4711")

    expected = schema.conform(
        pd.DataFrame(
            [
                h100_row(start, tick, gpu, util, power)
                for tick in (1, 2)
                for gpu, util, power in (("0", 0.97, 598.311), ("1", 0.64, 421.05))
            ]
        )
    )
    assert_frame_equal(capture.frame, expected)
    assert capture.notes == []


def test_healthy_frame_fills_every_schema_signal(clock: FakeClock) -> None:
    frame = source_for(healthy_h100x2(clock), clock).sample(3.0, 1.0).frame
    assert list(frame.columns) == list(schema.COLUMNS)
    assert not frame[list(schema.SIGNALS)].isna().any().any()
    assert frame[schema.JOB_ID].isna().all()


def test_ticks_are_one_interval_apart_over_the_window(clock: FakeClock) -> None:
    start = clock.time()
    frame = source_for(healthy_h100x2(clock), clock).sample(10.0, 2.5).frame
    stamps = sorted(set(frame[schema.TIMESTAMP]))
    assert stamps == [at(start, s) for s in (2.5, 5.0, 7.5, 10.0)]
    assert clock.slept_seconds == [2.5, 2.5, 2.5, 2.5]


def test_gpm_samples_are_freed(clock: FakeClock) -> None:
    fake = healthy_h100x2(clock)
    source_for(fake, clock).sample(3.0, 1.0)
    assert fake.samples_allocated == 4  # two per GPU, reused across ticks
    assert fake.live_gpm_samples == 0


def test_nvml_is_initialised_once_and_shut_down_at_exit(clock: FakeClock, monkeypatch: Any) -> None:
    registered: list[Any] = []
    monkeypatch.setattr(nvml_source.atexit, "register", registered.append)
    monkeypatch.setattr(nvml_source.atexit, "unregister", registered.remove)
    fake = healthy_h100x2(clock)
    source = source_for(fake, clock)
    assert fake.init_calls == 0  # lazy: constructing touches nothing

    source.sample(1.0, 1.0)
    source.sample(1.0, 1.0)
    assert fake.init_calls == 1
    assert len(registered) == 1

    registered[0]()  # what the interpreter runs at exit
    assert fake.shutdown_calls == 1
    assert registered == []
    source.close()
    assert fake.shutdown_calls == 1


def test_selects_gpus_by_index_and_uuid(clock: FakeClock) -> None:
    source = source_for(healthy_h100x2(clock), clock)
    assert set(source.sample(1.0, 1.0, gpu_indices=[1]).frame[schema.GPU]) == {"1"}
    assert set(source.sample(1.0, 1.0, gpu_indices=[H100_UUIDS[0]]).frame[schema.GPU]) == {"0"}


def test_unknown_gpu_is_refused(clock: FakeClock) -> None:
    with pytest.raises(SourceUnavailable, match=r"GPU 5 is not on this host \(GPUs here: 0, 1\)"):
        source_for(healthy_h100x2(clock), clock).sample(1.0, 1.0, gpu_indices=[5])


@pytest.mark.parametrize(("window", "interval"), [(0.0, 1.0), (5.0, 0.0), (1.0, 2.0)])
def test_bad_window_or_interval_is_a_value_error(clock: FakeClock, window: float, interval: float) -> None:
    with pytest.raises(ValueError):
        source_for(healthy_h100x2(clock), clock).sample(window, interval)


def test_devices_and_pids(clock: FakeClock) -> None:
    fake = healthy_h100x2(clock)
    fake.gpus[0].pids = [31337, 31338]
    source = source_for(fake, clock)
    assert source.devices() == [
        NvmlDevice("0", 0, None, H100_UUIDS[0], "NVIDIA H100 80GB HBM3"),
        NvmlDevice("1", 1, None, H100_UUIDS[1], "NVIDIA H100 80GB HBM3"),
    ]
    assert source.gpu_pids() == {0: [31337, 31338], 1: []}


# -- no driver ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", [no_driver, driver_not_loaded])
def test_no_driver_is_source_unavailable_with_one_line_advice(clock: FakeClock, scenario: Any) -> None:
    source = source_for(scenario(clock), clock)
    assert source.available() is False
    with pytest.raises(SourceUnavailable) as caught:
        source.sample(5.0, 1.0)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("NVML is not available on this host")
    assert "--source prometheus=URL" in message and "capture file" in message


def test_real_pynvml_on_this_host() -> None:
    """The real driver: either absent (SourceUnavailable) or a short real sample."""
    source = NvmlSource()
    try:
        if not source.available():
            with pytest.raises(SourceUnavailable, match="NVML is not available"):
                source.sample(1.0, 1.0)
            return
        capture = source.sample(1.0, 0.5)
        assert len(capture.frame) == 2 * len(source.devices())
        whole = capture.frame[~capture.frame[schema.GPU].str.contains("/")]
        assert whole["mem_total_bytes"].gt(0).all()
        assert whole["power_watts"].gt(0).all()
        assert whole["gpu_util_ratio"].between(0, 1).all()
    finally:
        source.close()


# -- driver without GPM ------------------------------------------------------------------------------


def test_a100_has_no_gpm_signals_and_one_note(clock: FakeClock) -> None:
    fake = a100_without_gpm(clock)
    capture = source_for(fake, clock).sample(3.0, 1.0)
    frame = capture.frame
    assert frame[GPM_SIGNALS].isna().all().all()
    assert frame["gpu_util_ratio"].tolist() == [0.88] * 3
    assert frame["power_watts"].tolist() == [305.0] * 3
    assert frame["mem_used_bytes"].tolist() == [40_000.0 * MIB] * 3
    assert capture.notes == [
        "GPU 0 (NVIDIA A100-SXM4-80GB) has no GPM (Hopper or newer): SM, occupancy, tensor, DRAM and "
        "NVLink signals are NaN"
    ]
    assert fake.samples_allocated == 0


def test_driver_older_than_gpm_counts_as_no_gpm(clock: FakeClock) -> None:
    fake = healthy_h100x2(clock)
    fake.gpm_function_missing = True
    capture = source_for(fake, clock).sample(2.0, 1.0)
    assert capture.frame[GPM_SIGNALS].isna().all().all()
    assert capture.frame["gpu_util_ratio"].notna().all()
    assert len(capture.notes) == 2


# -- GPU lost ----------------------------------------------------------------------------------------


def test_lost_gpu_becomes_nan_from_then_on_and_the_other_goes_on(clock: FakeClock) -> None:
    start = clock.time()
    fake = one_gpu_lost(clock, after_samples=2, interval_seconds=1.0)
    capture = source_for(fake, clock).sample(5.0, 1.0)
    frame = capture.frame.set_index([schema.TIMESTAMP, schema.GPU])
    signals = list(schema.SIGNALS)

    assert len(capture.frame) == 10  # every tick keeps a row per GPU
    assert not frame.xs("0", level=schema.GPU)[signals].isna().any().any()
    lost = frame.xs("1", level=schema.GPU)[signals]
    assert not lost.loc[[at(start, 1), at(start, 2)]].isna().any().any()
    assert lost.loc[[at(start, t) for t in (3, 4, 5)]].isna().all().all()
    assert capture.notes == [
        "GPU 1 was lost at 2026-01-01T00:00:03Z (NVML: GPU is lost); its rows are NaN from then on"
    ]
    assert fake.live_gpm_samples == 0


def test_gpu_lost_before_the_first_tick_gives_only_nan_rows(clock: FakeClock) -> None:
    fake = one_gpu_lost(clock, after_samples=0, interval_seconds=1.0)
    capture = source_for(fake, clock).sample(2.0, 1.0)
    gpu1 = capture.frame[capture.frame[schema.GPU] == "1"]
    assert len(gpu1) == 2
    assert gpu1[list(schema.SIGNALS)].isna().all().all()
    assert len(capture.notes) == 1


# -- MIG ---------------------------------------------------------------------------------------------


def test_mig_instances_are_devices_of_their_own(clock: FakeClock) -> None:
    fake = mig_h100(clock)
    source = source_for(fake, clock)
    capture = source.sample(2.0, 1.0)
    frame = capture.frame
    assert frame[schema.GPU].tolist() == ["0/1", "0/2", "0/1", "0/2"]
    assert frame[schema.GPU_MODEL].unique().tolist() == ["NVIDIA H100 80GB HBM3 MIG 3g.40gb"]
    assert frame[["gpu_util_ratio", "power_watts", "pcie_tx_bytes_per_second"]].isna().all().all()
    assert frame["sm_active_ratio"].tolist() == [0.8, 0.1, 0.8, 0.1]
    assert frame["mem_used_bytes"].tolist() == [12_288.0 * MIB, 2_048.0 * MIB] * 2
    assert frame["mem_total_bytes"].tolist() == [40_192.0 * MIB] * 4
    assert capture.notes == [
        "GPU 0/1 is a MIG instance: NVML reports no utilization, power or PCIe per instance (NaN)",
        "GPU 0/2 is a MIG instance: NVML reports no utilization, power or PCIe per instance (NaN)",
    ]
    assert "nvmlDeviceGetUtilizationRates" not in fake.calls
    assert fake.live_gpm_samples == 0


def test_mig_devices_pids_and_selection(clock: FakeClock) -> None:
    source = source_for(mig_h100(clock), clock)
    assert [(d.gpu_id, d.gpu_instance_id, d.uuid) for d in source.devices()] == [
        ("0/1", 1, MIG_UUIDS[0]),
        ("0/2", 2, MIG_UUIDS[1]),
    ]
    assert source.gpu_pids() == {"0/1": [4242], "0/2": [5151]}
    assert set(source.sample(1.0, 1.0, gpu_indices=["0/2"]).frame[schema.GPU]) == {"0/2"}
    assert set(source.sample(1.0, 1.0, gpu_indices=[MIG_UUIDS[0]]).frame[schema.GPU]) == {"0/1"}
    assert set(source.sample(1.0, 1.0, gpu_indices=[0]).frame[schema.GPU]) == {"0/1", "0/2"}


def test_uuids_name_mig_instances_not_their_gpu(clock: FakeClock) -> None:
    # A jobstats MIG-<uuid> file names one instance: its UUID must lead to "0/1", not to GPU 0 whole.
    assert source_for(mig_h100(clock), clock).gpu_uuids() == {MIG_UUIDS[0]: "0/1", MIG_UUIDS[1]: "0/2"}
    assert source_for(healthy_h100x2(clock), clock).gpu_uuids() == {H100_UUIDS[0]: 0, H100_UUIDS[1]: 1}


# -- memory info v2 unsupported ----------------------------------------------------------------------


def test_memory_falls_back_to_v1_once_per_gpu(clock: FakeClock) -> None:
    fake = memory_v2_unsupported(clock)
    capture = source_for(fake, clock).sample(3.0, 1.0)
    # v1 has no separate reservation: it is part of "used"
    assert capture.frame["mem_used_bytes"].tolist() == [(29_184 + 541) * MIB] * 6
    assert capture.frame["mem_total_bytes"].tolist() == [81_559.0 * MIB] * 6
    assert fake.calls.count("nvmlDeviceGetMemoryInfo") == 2 + 6  # one failed v2 per GPU, then v1
    assert capture.notes == [
        f"GPU {g}: NVML memory info v2 unavailable; mem_used_bytes includes driver-reserved memory (v1)"
        for g in (0, 1)
    ]


class _OldBindings(FakeNvml):
    """nvidia-ml-py before nvmlMemory_v2: no ``version`` keyword."""

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:  # type: ignore[override]
        return super().nvmlDeviceGetMemoryInfo(handle)


def test_memory_falls_back_when_the_bindings_have_no_version_keyword(clock: FakeClock) -> None:
    fake = _OldBindings(healthy_h100x2(clock).gpus, clock)
    capture = source_for(fake, clock).sample(1.0, 1.0)
    assert capture.frame["mem_used_bytes"].tolist() == [(29_184 + 541) * MIB] * 2
    assert len(capture.notes) == 2


# -- single fields unavailable -----------------------------------------------------------------------


def test_unsupported_fields_are_nan_with_one_note_each(clock: FakeClock) -> None:
    capture = source_for(pcie_h100_without_nvlink(clock), clock).sample(5.0, 1.0)
    frame = capture.frame
    missing = ["pcie_tx_bytes_per_second", "pcie_rx_bytes_per_second", "nvlink_bytes_per_second"]
    assert frame[missing].isna().all().all()
    present = [s for s in schema.SIGNALS if s not in missing]
    assert not frame[present].isna().any().any()
    assert frame["power_watts"].tolist() == [301.5] * 5
    assert capture.notes == [
        "GPU 0: pcie_tx_bytes_per_second unavailable (Not Supported); NaN",
        "GPU 0: pcie_rx_bytes_per_second unavailable (Not Supported); NaN",
        "GPU 0: nvlink_bytes_per_second unavailable (Not Supported); NaN",
    ]


def test_fake_errors_are_the_real_pynvml_classes() -> None:
    import fake_nvml

    assert issubclass(fake_nvml.NVMLError_GpuIsLost, pynvml.NVMLError_GpuIsLost)
    assert issubclass(fake_nvml.NVMLError_LibraryNotFound, pynvml.NVMLError)
    assert fake_nvml.NVMLError_GpuIsLost().value == pynvml.NVML_ERROR_GPU_IS_LOST
