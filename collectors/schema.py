"""The canonical telemetry frame that every source produces, and the per-GPU summary.

Two shapes cross the boundary between ``collectors`` and ``estimator``:

* the *telemetry frame*: one row per sample and GPU (:data:`COLUMNS`), its
  labels categorical (a month of 1 Hz samples repeats a handful of host, GPU,
  job and model names millions of times: codes, not a string per row);
* the *GPU summary*: one row per GPU and job with window statistics of each
  signal (:data:`SUMMARY_COLUMNS`). Sources that aggregate at the server
  (Prometheus) produce it directly; for the others
  :func:`estimator.features.extract.summarize_gpus` derives it from the frame.

Signals are floats in base units; a signal a source lacks is NaN, never zero.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from collectors.errors import MalformedCapture

TIMESTAMP = "timestamp"
HOST = "host"
GPU = "gpu"
JOB_ID = "job_id"
GPU_MODEL = "gpu_model"

#: Identity of a sampled device; ``gpu`` is an index or UUID, with the MIG
#: instance appended (``"0/1"``, :func:`mig_gpu`) where there is one.
LABELS: tuple[str, ...] = (HOST, GPU, JOB_ID, GPU_MODEL)


def mig_gpu(gpu: object, instance: object) -> str:
    """The ``gpu`` label of MIG instance ``instance`` of GPU ``gpu``: ``"0/1"``."""
    return f"{gpu}/{instance}"


def mig_parent(gpu: str) -> str | None:
    """The GPU that ``gpu`` is a MIG instance of (``"0"`` for ``"0/1"``); None for a whole GPU."""
    parent, slash, _ = gpu.partition("/")
    return parent if slash else None


def whole_gpus_split_into_instances(gpus: Iterable[tuple[Hashable, str]]) -> set[tuple[Hashable, str]]:
    """Of ``(owner, gpu)`` pairs (the owner: a job, a host, or both), those naming a whole GPU whose MIG
    instances the same owner also has.

    Such a GPU's whole-device series (its utilization, its memory) are shared by all of its instances,
    and so by other jobs: a job holding an instance reads that instance, never the whole GPU.
    """
    pairs = set(gpus)
    split = {(owner, parent) for owner, gpu in pairs if (parent := mig_parent(gpu)) is not None}
    return {(owner, gpu) for owner, gpu in pairs if (owner, gpu) in split}


#: Signal columns, each a float in the unit its name ends with.
SIGNALS: tuple[str, ...] = (
    "gpu_util_ratio",  # share of time any kernel ran (NVML utilization, DCGM_FI_DEV_GPU_UTIL)
    "sm_active_ratio",
    "sm_occupancy_ratio",
    "tensor_active_ratio",
    "dram_active_ratio",
    "mem_used_bytes",
    "mem_total_bytes",
    "power_watts",
    "pcie_tx_bytes_per_second",
    "pcie_rx_bytes_per_second",
    "nvlink_bytes_per_second",
)

COLUMNS: tuple[str, ...] = (TIMESTAMP, *LABELS, *SIGNALS)

_TIB = 1024.0**4
#: Where each signal can physically lie, in its unit: a value outside is a glitch of the tool that
#: printed it (a utilization of -3 %, a power of 1e223 W), never a measurement. The bounds leave room
#: for GPUs to come: 2 TiB of memory (today's largest: 288 GB), 5 kW (today's: 1.4 kW), 1 TB/s of PCIe
#: per direction (PCIe 7 x16: 256 GB/s), 10 TB/s of NVLink (NVLink 5: 1.8 TB/s).
SIGNAL_RANGES: dict[str, tuple[float, float]] = {
    "gpu_util_ratio": (0.0, 1.0),
    "sm_active_ratio": (0.0, 1.0),
    "sm_occupancy_ratio": (0.0, 1.0),
    "tensor_active_ratio": (0.0, 1.0),
    "dram_active_ratio": (0.0, 1.0),
    "mem_used_bytes": (0.0, 2 * _TIB),
    "mem_total_bytes": (1024.0**2, 2 * _TIB),  # at least 1 MiB: the memory headroom divides by it
    "power_watts": (0.0, 5000.0),
    "pcie_tx_bytes_per_second": (0.0, 1e12),
    "pcie_rx_bytes_per_second": (0.0, 1e12),
    "nvlink_bytes_per_second": (0.0, 1e13),
}
#: A ratio this far outside [0, 1] is rounding (DCGM's profiling counters read 1.0004) and is clipped
#: to the bound; beyond it the value is dropped.
RATIO_TOLERANCE = 0.01
#: Samples are timed in this span [earliest, latest): outside it the clock that stamped them was wrong.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


def canonical_signal(name: str) -> str:
    """``name``, checked to be a canonical signal: for modules that name one signal as a constant."""
    if name not in SIGNALS:
        raise AssertionError(f"{name} is not a canonical signal")
    return name


#: Window statistics the GPU summary holds for every signal. ``pNN`` is the
#: NN-th percentile over the window.
STATISTICS: tuple[str, ...] = ("mean", "p10", "p50", "p90", "min", "max")

#: Share of samples with ``sm_active_ratio`` below :data:`IDLE_SM_ACTIVE_RATIO`.
IDLE_SHARE = "idle_share_ratio"
#: Below this SM activity a sample counts as idle ("almost no SM activity").
IDLE_SM_ACTIVE_RATIO = 0.05
SAMPLES = "samples"
WINDOW_START = "window_start"
WINDOW_END = "window_end"


def summary_column(signal: str, statistic: str) -> str:
    """Name of the GPU-summary column holding ``statistic`` of ``signal``."""
    return f"{signal}__{statistic}"


SUMMARY_COLUMNS: tuple[str, ...] = (
    *LABELS,
    SAMPLES,
    WINDOW_START,
    WINDOW_END,
    IDLE_SHARE,
    *(summary_column(s, st) for s in SIGNALS for st in STATISTICS),
)


class SchemaError(MalformedCapture):
    """A frame handed across the collector boundary lacks what the schema demands."""


def is_label_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` holds labels: strings, or categories that are strings."""
    if isinstance(dtype, pd.CategoricalDtype):
        return pd.api.types.is_string_dtype(dtype.categories.dtype)
    return pd.api.types.is_string_dtype(dtype)


def label_column(values: pd.Series) -> pd.Series:
    """``values`` as a telemetry frame's label column: categorical, its categories sorted strings (so that
    rows sort by the names), missing kept."""
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        names = dtype.categories
        if not pd.api.types.is_string_dtype(names.dtype):
            names = names.astype(str)
            if not names.is_unique:
                return label_column(values.astype("string"))
            values = values.cat.rename_categories(list(names))  # renamed on the categories, not per row
        if names.is_monotonic_increasing:
            return values
        return values.cat.reorder_categories(names.sort_values())
    strings = values.astype("string")
    return strings.astype(pd.CategoricalDtype(pd.Index(strings.dropna().unique(), dtype=str).sort_values()))


def constant_label(value: str, index: pd.Index) -> pd.Series:
    """A label column holding ``value`` on every row of ``index``."""
    codes = np.zeros(len(index), dtype=np.int8)
    return pd.Series(pd.Categorical.from_codes(codes, pd.Index([value], dtype=str)), index=index)


def fill_label(values: pd.Series, value: str) -> pd.Series:
    """The label column ``values`` (see :func:`label_column`) with its missing rows set to ``value``."""
    if value not in values.cat.categories:
        values = values.cat.add_categories(pd.Index([value], dtype=str))
    return label_column(values.fillna(value))


def _conform(frame: pd.DataFrame, columns: tuple[str, ...], required: tuple[str, ...]) -> pd.DataFrame:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise SchemaError(f"telemetry frame lacks column(s) {', '.join(missing)}")
    # A new frame of (lazily copied) columns: conforming a frame that already
    # conforms costs no copy of its data.
    out = pd.DataFrame(index=frame.index)
    categorical = columns == COLUMNS  # the telemetry frame's labels; a summary's stay strings
    for column in columns:
        if column in LABELS:
            values = frame[column] if column in frame.columns else pd.Series(pd.NA, index=frame.index)
            if categorical:
                out[column] = label_column(values)
            else:
                out[column] = values if str(values.dtype) == "string" else values.astype("string")
        elif column in (TIMESTAMP, WINDOW_START, WINDOW_END):
            values = frame[column] if column in frame.columns else pd.Series(pd.NaT, index=frame.index)
            try:
                out[column] = pd.to_datetime(values, utc=True)
            except (TypeError, ValueError, OverflowError) as exc:  # OutOfBoundsDatetime is a ValueError
                raise SchemaError(f"column {column} is not a time: {exc}") from None
        elif column not in frame.columns:
            out[column] = float("nan")
        elif frame[column].dtype == "float64":
            out[column] = frame[column]
        else:
            try:
                out[column] = pd.to_numeric(frame[column], errors="raise").astype("float64")
            except (TypeError, ValueError) as exc:
                raise SchemaError(f"column {column} is not numeric: {exc}") from None
    return out


def conform(frame: pd.DataFrame, *, sort: bool = True) -> pd.DataFrame:
    """Return ``frame`` in the canonical telemetry schema.

    Adds absent signal columns as NaN and absent labels as missing, casts
    dtypes (UTC timestamps, categorical labels of strings, float64 signals), orders the
    columns and sorts the rows by time, host and GPU (``sort=False`` for a
    frame known to be sorted, such as a capture zest wrote).
    """
    out = _conform(frame, COLUMNS, (TIMESTAMP,))
    if not sort:
        return out.reset_index(drop=True)
    return out.sort_values([TIMESTAMP, HOST, GPU], kind="stable", ignore_index=True)


def conform_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` in the GPU-summary schema (absent statistics become NaN)."""
    out = _conform(frame, SUMMARY_COLUMNS, (GPU,))
    return out.sort_values([HOST, GPU], kind="stable", ignore_index=True)


def in_time_span(when: datetime) -> bool:
    """Whether ``when`` (UTC where naive) lies in [:data:`EARLIEST`, :data:`LATEST`)."""
    return EARLIEST <= (when if when.tzinfo else when.replace(tzinfo=UTC)) < LATEST


def in_epoch_span(seconds: float) -> bool:
    """Whether ``seconds`` since the Unix epoch lie in [:data:`EARLIEST`, :data:`LATEST`) (False for NaN)."""
    return EARLIEST.timestamp() <= seconds < LATEST.timestamp()


def screen(frame: pd.DataFrame, where: Callable[[int], str]) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` (in the canonical schema, in the order its source gave it) without impossible values.

    A signal outside :data:`SIGNAL_RANGES` (infinities included) becomes
    missing; a ratio within :data:`RATIO_TOLERANCE` of [0, 1] is clipped to it.
    A sample timed outside [:data:`EARLIEST`, :data:`LATEST`) or not at all is
    dropped. Returns the frame, index reset, and one note per kind of drop,
    naming the first by ``where(position)`` (e.g. ``"file.csv:12"``). Raises
    :class:`SchemaError` if samples were given and none is timed in the span.
    """
    out = frame.copy(deep=False)  # a column is copied only where a value changes
    first: tuple[int, str, float] | None = None
    dropped = 0
    for signal, (low, high) in SIGNAL_RANGES.items():
        values = out[signal].to_numpy(dtype="float64", na_value=np.nan)
        with np.errstate(invalid="ignore"):
            inside = (values >= low) & (values <= high)
        if (inside | np.isnan(values)).all():
            continue
        values = values.copy()
        if signal.endswith("_ratio"):
            values[(values >= low - RATIO_TOLERANCE) & (values < low)] = low
            values[(values > high) & (values <= high + RATIO_TOLERANCE)] = high
        bad = ~np.isnan(values) & ~((values >= low) & (values <= high))
        if bad.any():
            position = int(bad.argmax())
            if first is None or position < first[0]:
                first = (position, signal, float(values[position]))
            dropped += int(bad.sum())
            values[bad] = np.nan
        out[signal] = values
    notes = []
    if first is not None:
        position, signal, value = first
        notes.append(
            f"{dropped} value(s) outside their physical range taken as missing, the first "
            f"{signal} {value:g} at {where(position)} (ranges: ratios 0-1, power 0-5000 W, memory 0-2 TiB)"
        )
    timed = out[TIMESTAMP].between(pd.Timestamp(EARLIEST), pd.Timestamp(LATEST), inclusive="left")
    if not timed.all():
        position = int((~timed).to_numpy().argmax())
        if not timed.any():
            raise SchemaError(
                f"{where(position)}: no sample timed between {EARLIEST:%Y} and {LATEST:%Y} "
                "(the clock that stamped them was wrong)"
            )
        notes.append(
            f"{int((~timed).sum())} sample(s) timed outside {EARLIEST:%Y}-{LATEST:%Y} or not at all dropped, "
            f"the first at {where(position)}"
        )
        out = out[timed]
    return out.reset_index(drop=True), notes


def empty_frame() -> pd.DataFrame:
    """An empty telemetry frame with the canonical columns and dtypes."""
    return conform(pd.DataFrame({TIMESTAMP: pd.Series([], dtype="datetime64[ns, UTC]")}))


#: The statistics of each signal that zest reads from a GPU summary: every signal's mean (job features,
#: per-GPU series), the ratios' quantiles (job features) and memory's max (headroom). A source that
#: aggregates at the server (Prometheus) asks for these only: its summary's other statistics are NaN.
READ_STATISTICS: dict[str, tuple[str, ...]] = {
    signal: ("mean", "p10", "p50", "p90")
    if signal.endswith("_ratio")
    else ("mean", "max")
    if signal in ("mem_used_bytes", "mem_total_bytes")
    else ("mean",)
    for signal in SIGNALS
}


def screen_summary(summary: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``summary`` (computed at a server, over samples :func:`screen` never saw) without the signals of
    GPUs where a statistic lies above the signal's physical range (:data:`SIGNAL_RANGES`).

    Such a statistic holds a value no GPU reports, such as DCGM's blank for a field it could not read
    (2^47 for its double fields, 2^63 - 16 for its integer ones): one blank among a day of 30 s samples
    still lifts the mean past the range, for the double fields zest reads (the profiling ratios, power)
    and the integer ones (utilization, memory, PCIe and NVLink bytes) alike, so the mean tells, at no
    extra query. Every statistic of such a signal on such a GPU becomes NaN, as a missing signal, and
    one note per signal says how many GPUs.
    """
    out = summary.copy()
    notes = []
    for signal, (_, high) in SIGNAL_RANGES.items():
        columns = [summary_column(signal, st) for st in STATISTICS]
        values = out[columns].to_numpy(dtype="float64", na_value=np.nan)
        limit = high + RATIO_TOLERANCE if signal.endswith("_ratio") else high  # as screen clips
        with np.errstate(invalid="ignore"):
            impossible = (values > limit).any(axis=1)
        if impossible.any():
            out.loc[impossible, columns] = np.nan
            notes.append(
                f"{signal} above its physical range on {int(impossible.sum())} GPU(s) (up to "
                f"{float(np.nanmax(values)):g}; e.g. DCGM's blank value for a field it could not read): "
                "left out on those GPUs, as a missing signal"
            )
    return out, notes
