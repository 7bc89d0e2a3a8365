"""Features of a training job from its GPU telemetry: DataFrame in, DataFrame out.

Two steps, both pure:

* :func:`summarize_gpus` turns the canonical telemetry frame
  (:data:`collectors.schema.COLUMNS`) into the per-GPU summary
  (:data:`collectors.schema.SUMMARY_COLUMNS`): window statistics of each
  signal per host, GPU, job and model. The Prometheus source computes the
  same summary at the server, so everything after this step reads the
  summary only.
* :func:`features_frame` (many jobs, one row each) and :func:`job_features`
  (one job, with notes) turn the summary into the job-level features whose
  names :data:`FEATURES` lists.

Missing data stays missing: a signal no GPU reported gives NaN features and a
note, never a zero.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from collectors.errors import JobNotFound
from collectors.schema import (
    COLUMNS,
    GPU,
    GPU_MODEL,
    HOST,
    IDLE_SHARE,
    IDLE_SM_ACTIVE_RATIO,
    JOB_ID,
    LABELS,
    READ_STATISTICS,
    SAMPLES,
    SIGNALS,
    STATISTICS,
    SUMMARY_COLUMNS,
    TIMESTAMP,
    WINDOW_END,
    WINDOW_START,
    SchemaError,
    canonical_signal,
    conform_summary,
    is_label_dtype,
    summary_column,
)
from estimator.features.links import link_peaks

FloatArray = npt.NDArray[np.float64]


GPU_UTIL = canonical_signal("gpu_util_ratio")
SM_ACTIVE = canonical_signal("sm_active_ratio")
MEM_USED = canonical_signal("mem_used_bytes")
MEM_TOTAL = canonical_signal("mem_total_bytes")
POWER = canonical_signal("power_watts")
PCIE_TX = canonical_signal("pcie_tx_bytes_per_second")
PCIE_RX = canonical_signal("pcie_rx_bytes_per_second")
NVLINK = canonical_signal("nvlink_bytes_per_second")

#: Signals that are 0–1 shares of time or capacity; each gets its GPU-mean statistics as features.
RATIO_SIGNALS: tuple[str, ...] = tuple(s for s in SIGNALS if s.endswith("_ratio"))
#: Statistics of each ratio signal kept as features (the mean over GPUs of the per-GPU statistic).
RATIO_STATISTICS: tuple[str, ...] = ("mean", "p10", "p50", "p90")


def ratio_feature(signal: str, statistic: str) -> str:
    """Name of the feature: mean over GPUs of ``statistic`` of ``signal`` ("sm_active_p90_ratio")."""
    return f"{signal.removesuffix('_ratio')}_{statistic}_ratio"


IDLE_SHARE_RATIO = IDLE_SHARE  # mean over GPUs of the share of samples with almost no SM activity
BUSY_NOT_WORKING_RATIO = "busy_not_working_ratio"  # mean gpu_util − mean sm_active
STRAGGLER_SPREAD_RATIO = "straggler_spread_ratio"  # max − min over GPUs of the per-GPU mean SM activity
STRAGGLER_CV_RATIO = "straggler_cv_ratio"  # population std / mean of the same per-GPU means
MEM_HEADROOM_RATIO = "mem_headroom_min_ratio"  # min over GPUs of 1 − max used / total memory
POWER_WATTS = "power_mean_watts"
PCIE_BYTES_PER_SECOND = "pcie_mean_bytes_per_second"  # TX + RX, mean per GPU
NVLINK_BYTES_PER_SECOND = "nvlink_mean_bytes_per_second"  # mean per GPU
PCIE_SHARE_RATIO = "pcie_share_ratio"  # PCIe traffic over the model's peak, mean over GPUs
NVLINK_SHARE_RATIO = "nvlink_share_ratio"
GPU_COUNT = "gpus"
HOST_COUNT = "hosts"
SAMPLES_PER_GPU_MIN = "samples_per_gpu_min"
WINDOW_SECONDS = "window_seconds"  # first sample to last sample, over all GPUs of the job
COVERAGE_RATIO = "coverage_ratio"  # share of the canonical signals with any data

FEATURES: tuple[str, ...] = (
    *(ratio_feature(s, st) for s in RATIO_SIGNALS for st in RATIO_STATISTICS),
    IDLE_SHARE_RATIO,
    BUSY_NOT_WORKING_RATIO,
    STRAGGLER_SPREAD_RATIO,
    STRAGGLER_CV_RATIO,
    MEM_HEADROOM_RATIO,
    POWER_WATTS,
    PCIE_BYTES_PER_SECOND,
    NVLINK_BYTES_PER_SECOND,
    PCIE_SHARE_RATIO,
    NVLINK_SHARE_RATIO,
    GPU_COUNT,
    HOST_COUNT,
    SAMPLES_PER_GPU_MIN,
    WINDOW_SECONDS,
    COVERAGE_RATIO,
)

#: A shorter window may miss the job's phases (evaluation, checkpoints): say so.
MIN_WINDOW_SECONDS = 600.0
#: A window covering less than this share of the requested one is noted.
REQUESTED_WINDOW_COVERAGE_RATIO = 0.9
#: GPUs whose mean SM activity differs by this much or more are stragglers.
STRAGGLER_MIN_SPREAD_RATIO = 0.10

# Percentile statistics ("p90") and the quantile each stands for.
_PERCENTILES: dict[str, float] = {st: int(st[1:]) / 100 for st in STATISTICS if st.startswith("p")}
#: From this many rows :func:`summarize_gpus` works on the signals in parallel threads.
_PARALLEL_MIN_ROWS = 1 << 20


class NoFiniteTelemetry(JobNotFound):
    """A job's telemetry holds no finite value of any signal (every sample NaN): nothing to estimate from."""


@dataclass(frozen=True)
class Features:
    """One job's features (float64, indexed by :data:`FEATURES`, named by the job id) and notes on them."""

    row: pd.Series
    notes: list[str] = field(default_factory=list)


# --- per-GPU summary -------------------------------------------------------------


def summarize_gpus(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-GPU window statistics of the canonical telemetry frame, in the GPU-summary schema.

    One row per (host, gpu, job_id, gpu_model); missing labels form their own
    group. Per signal, the statistics zest reads
    (:data:`collectors.schema.READ_STATISTICS`: every mean, the ratios'
    percentiles, memory's max) over the samples that are not NaN, percentiles
    by linear interpolation between closest ranks (as Prometheus'
    ``quantile_over_time``); NaN where a signal has no sample, and for the
    statistics nothing reads (as the Prometheus source leaves them). Also
    the number of rows, the first and last timestamp, and the idle share
    (samples with ``sm_active_ratio`` below ``IDLE_SM_ACTIVE_RATIO`` among
    those where it is known).

    Raises :class:`collectors.schema.SchemaError` if ``frame`` lacks a
    canonical column or holds one with the wrong dtype.
    """
    _check_telemetry(frame)
    if frame.empty:
        return conform_summary(pd.DataFrame({c: [] for c in SUMMARY_COLUMNS}))
    groups = _group(frame)
    columns: dict[str, object] = {label: groups.keys[label].array for label in LABELS}
    columns[SAMPLES] = np.diff(groups.bounds).astype(np.float64)
    columns[WINDOW_START], columns[WINDOW_END] = _windows(frame[TIMESTAMP], groups)

    def signal_stats(signal: str) -> FloatArray:
        values = frame[signal].to_numpy(dtype=np.float64, na_value=np.nan)
        wanted = READ_STATISTICS[signal]
        return np.array([_window_stats(group, wanted, signal == SM_ACTIVE) for group in groups.split(values)])

    # The selection behind the exact percentiles is most of the work; numpy releases the GIL for it,
    # so a month of 1 Hz samples spreads over the cores a signal each. Small frames stay on this thread.
    workers = min(os.cpu_count() or 1, len(SIGNALS)) if len(frame) >= _PARALLEL_MIN_ROWS else 1
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            per_signal = list(pool.map(signal_stats, SIGNALS))
    else:
        per_signal = [signal_stats(signal) for signal in SIGNALS]
    for signal, stats in zip(SIGNALS, per_signal, strict=True):
        for index, statistic in enumerate(STATISTICS):
            columns[summary_column(signal, statistic)] = stats[:, index]
        if signal == SM_ACTIVE:
            columns[IDLE_SHARE] = stats[:, len(STATISTICS)]
    return conform_summary(pd.DataFrame(columns))


def _check_telemetry(frame: pd.DataFrame) -> None:
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise SchemaError(
            f"telemetry frame lacks column(s) {', '.join(missing)}: "
            "pass it through collectors.schema.conform first"
        )
    if not isinstance(frame[TIMESTAMP].dtype, pd.DatetimeTZDtype):
        raise SchemaError(
            f"column {TIMESTAMP} is {frame[TIMESTAMP].dtype}, not UTC datetimes: "
            "pass the frame through collectors.schema.conform first"
        )
    _check_dtypes(frame, LABELS, is_label_dtype, "strings or categories of strings")
    _check_dtypes(frame, SIGNALS, pd.api.types.is_float_dtype, "floats")


def _check_dtypes(
    frame: pd.DataFrame, columns: tuple[str, ...], check: Callable[[Any], bool], what: str
) -> None:
    wrong = [f"{c} ({frame[c].dtype})" for c in columns if not check(frame[c].dtype)]
    if wrong:
        raise SchemaError(
            f"column(s) {', '.join(wrong)} should hold {what}: "
            "pass the frame through collectors.schema.conform first"
        )


@dataclass(frozen=True)
class _Groups:
    """Rows grouped by the labels: the keys (one row per group, sorted, missing labels last) and where
    each group's rows are.

    Group ``g`` is ``bounds[g]:bounds[g+1]`` of the rows taken in ``order`` (None: as they are), which
    keeps the original order within a group. Where the rows cycle through the groups in one fixed
    order, as a capture sorted by time and GPU does when every GPU answers every sample, group ``g``
    is also every ``stride``-th row from ``offsets[g]``: views, no copy of the column.
    """

    keys: pd.DataFrame
    order: npt.NDArray[np.intp] | None
    bounds: npt.NDArray[np.intp]
    stride: int = 0
    offsets: npt.NDArray[np.intp] | None = None

    def split(self, column: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        """``column`` (one value per row of the frame) cut into the groups' values, in row order: each
        contiguous (a strided view would make every pass over a group read the whole column), and read
        only (a view of ``column`` where there is one group)."""
        if self.offsets is not None:
            rows = column.reshape(-1, self.stride).T  # one transposing copy for all groups
            return list(np.ascontiguousarray(rows if _is_identity(self.offsets) else rows[self.offsets]))
        grouped = column if self.order is None else column[self.order]
        return [grouped[start:end] for start, end in itertools.pairwise(self.bounds)]


def _is_identity(positions: npt.NDArray[np.intp]) -> bool:
    return bool((positions == np.arange(len(positions))).all())


def _label_codes(values: pd.Series) -> tuple[npt.NDArray[np.int64], int]:
    """Codes of the label column ``values`` in the order of the sorted names, missing last; how many."""
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype) and dtype.categories.is_monotonic_increasing:
        codes = values.cat.codes.to_numpy().astype(np.int64)  # as they are: no hashing of the rows
        size = len(dtype.categories)
        codes[codes < 0] = size
        return codes, size + 1
    codes, uniques = pd.factorize(values, sort=True, use_na_sentinel=False)
    return codes.astype(np.int64, copy=False), len(uniques)


def _group(frame: pd.DataFrame) -> _Groups:
    """Group the rows of ``frame`` by the labels."""
    # Mixed-radix code of the label combination, in the order of the sorted labels.
    combined = np.zeros(len(frame), dtype=np.int64)
    key_space = 1
    for label in LABELS:
        codes, size = _label_codes(frame[label])
        if key_space * size >= 2**62:
            _, combined = np.unique(combined, return_inverse=True)  # renumber densely, keeping the order
            key_space = int(combined.max()) + 1
        combined = combined * size + codes
        key_space *= size
    if key_space <= max(4 * len(frame), 1 << 20):
        # Counting beats sorting when the label combinations are few, as they are.
        present = np.bincount(combined, minlength=key_space)
        ids = np.flatnonzero(present)
        counts = present[ids]
        lookup = np.zeros(key_space, dtype=np.int64)
        lookup[ids] = np.arange(len(ids))
        dense = lookup[combined]
    else:
        ids, dense, counts = np.unique(combined, return_inverse=True, return_counts=True)
    bounds = np.concatenate(([0], np.cumsum(counts))).astype(np.intp)
    labels = frame[list(LABELS)]
    if len(ids) == 1:
        return _Groups(labels.iloc[:1].reset_index(drop=True), None, bounds)
    stride = len(ids)
    if len(frame) % stride == 0:
        cycle = dense.reshape(-1, stride)
        if (cycle == cycle[0]).all():
            offsets = np.argsort(cycle[0]).astype(np.intp)  # each group once per cycle
            keys = labels.iloc[offsets].reset_index(drop=True)
            return _Groups(keys, None, bounds, stride, offsets)
    # A stable sort of 16-bit keys is a radix sort in numpy: linear in the rows.
    sort_keys = dense.astype(np.uint16) if len(ids) <= 1 << 16 else dense
    order = np.argsort(sort_keys, kind="stable")
    return _Groups(labels.iloc[order[bounds[:-1]]].reset_index(drop=True), order, bounds)


def _windows(timestamps: pd.Series, groups: _Groups) -> tuple[pd.DatetimeIndex, pd.DatetimeIndex]:
    """First and last timestamp of each group; NaT where a group has none."""
    unit = timestamps.dt.unit
    ticks = timestamps.to_numpy(dtype=f"datetime64[{unit}]").view(np.int64)
    nat = np.iinfo(np.int64).min
    starts = np.full(len(groups.keys), nat, dtype=np.int64)
    ends = starts.copy()
    for group, values in enumerate(groups.split(ticks)):
        known = values[values != nat]
        if known.size:
            starts[group], ends[group] = known.min(), known.max()
    return (
        pd.DatetimeIndex(pd.to_datetime(starts.view(f"datetime64[{unit}]"), utc=True)),
        pd.DatetimeIndex(pd.to_datetime(ends.view(f"datetime64[{unit}]"), utc=True)),
    )


def _window_stats(values: FloatArray, wanted: tuple[str, ...], idle: bool = False) -> FloatArray:
    """:data:`STATISTICS` of the values that are not NaN, in that order: those in ``wanted``, NaN for the
    others and for all where no value is known.

    ``idle``: append the idle share (values below :data:`IDLE_SM_ACTIVE_RATIO` among the known ones).
    ``values`` is only read.
    """
    # A fresh copy even without NaN: its sums round as they always did (pairwise summation depends on where
    # the values lie), so that features of the same telemetry stay the same to the last bit.
    known = values[~np.isnan(values)]
    count = known.size
    result = dict.fromkeys((*STATISTICS, IDLE_SHARE), math.nan)
    if count:
        if "mean" in wanted:
            result["mean"] = float(known.mean())
        if "min" in wanted:
            result["min"] = float(known.min())
        if "max" in wanted:
            result["max"] = float(known.max())
        if idle:
            result[IDLE_SHARE] = float(np.count_nonzero(known < IDLE_SM_ACTIVE_RATIO)) / count
        ranks = {st: q * (count - 1) for st, q in _PERCENTILES.items() if st in wanted}
        below = {st: math.floor(r) for st, r in ranks.items()}
        positions = np.array(sorted({p for b in below.values() for p in (b, min(b + 1, count - 1))}), np.intp)
        at = dict(zip(positions.tolist(), _select(known, positions).tolist(), strict=True)) if ranks else {}
        for statistic, rank in ranks.items():
            low, high = at[below[statistic]], at[min(below[statistic] + 1, count - 1)]
            result[statistic] = low + (rank - below[statistic]) * (high - low)
    return np.array([result[st] for st in (*STATISTICS, *((IDLE_SHARE,) if idle else ()))])


#: Up to this many values a partition finds the ranks; above, :func:`_select` bins them first.
_PARTITION_MAX_VALUES = 1 << 15
_SELECT_BINS = 1 << 14


def _select(values: FloatArray, positions: npt.NDArray[np.intp]) -> FloatArray:
    """The values at ``positions`` (ascending) of ``values`` (finite or infinite, no NaN) once sorted.

    Exact, and about three times quicker than a partition on a month of continuous samples: the values are
    counted into equal-width bins between their min and max (the bin of a value never decreases as the
    value grows, as rounding is monotone), which tells the bin holding each position, and only that
    bin's values are partitioned (binned again while many). ``values`` is only read.
    """
    if values.size <= _PARTITION_MAX_VALUES:
        return np.partition(values, positions)[positions]
    low, high = float(values.min()), float(values.max())
    if low == high:
        return np.full(len(positions), low)
    scale = _SELECT_BINS / (high - low)
    if not math.isfinite(scale) or scale == 0.0:  # an infinite value, or a span beyond float's range
        return np.partition(values, positions)[positions]
    scaled = values - low
    scaled *= scale
    bins = scaled.astype(np.intp)
    np.minimum(bins, _SELECT_BINS - 1, out=bins)
    counts = np.bincount(bins, minlength=_SELECT_BINS)
    ends = np.cumsum(counts)
    holding = np.searchsorted(ends, positions, side="right")  # the bin of each position
    out = np.empty(len(positions))
    for bin_ in np.unique(holding):
        these = holding == bin_
        members = values[bins == bin_]
        first = int(ends[bin_] - counts[bin_])
        out[these] = _select(members, positions[these] - first)
    return out


def has_finite_signal(summary: pd.DataFrame) -> pd.Series:
    """Per row of the GPU summary: whether its job has a finite statistic of any signal on any GPU.

    A job without one (every sample NaN or infinite, as a broken exporter or
    a faulty answer gives) has no telemetry to estimate from: its features
    would all be NaN, with a coverage of 0.
    """
    columns = [summary_column(s, st) for s in SIGNALS for st in STATISTICS]
    finite = np.isfinite(summary[columns].to_numpy(dtype=np.float64, na_value=np.nan)).any(axis=1)
    by_job = pd.Series(finite, index=summary.index).groupby(summary[JOB_ID], dropna=False, sort=False)
    return by_job.transform("any").astype(bool)


# --- job features ----------------------------------------------------------------


def features_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Job-level features from the GPU summary: one row per job (index ``job_id``), columns :data:`FEATURES`.

    Ratio features average the per-GPU statistic over the job's GPUs;
    GPUs without a signal do not count towards its mean, and a signal no
    GPU has gives NaN, as does an infinite statistic. Raises :class:`collectors.schema.SchemaError` if
    ``summary`` lacks a column of the GPU-summary schema or has the wrong dtype.
    """
    _check_summary(summary)
    per_gpu = _per_gpu(summary)
    jobs = per_gpu.groupby(JOB_ID, sort=True, dropna=False)
    # Only the columns averaged below: pandas' sums over a group round differently (in the last bit) as
    # the other columns of the frame change, and features must not move with statistics nothing reads.
    averaged = [
        *(summary_column(s, st) for s in RATIO_SIGNALS for st in RATIO_STATISTICS),
        IDLE_SHARE,
        summary_column(POWER, "mean"),
        summary_column(NVLINK, "mean"),
        "_pcie",
        "_pcie_share",
        "_nvlink_share",
    ]
    mean = per_gpu[averaged].groupby(per_gpu[JOB_ID], sort=True, dropna=False).mean()
    out = pd.DataFrame(index=mean.index)
    for signal in RATIO_SIGNALS:
        for statistic in RATIO_STATISTICS:
            out[ratio_feature(signal, statistic)] = mean[summary_column(signal, statistic)]
    out[IDLE_SHARE_RATIO] = mean[IDLE_SHARE]
    out[BUSY_NOT_WORKING_RATIO] = (
        mean[summary_column(GPU_UTIL, "mean")] - mean[summary_column(SM_ACTIVE, "mean")]
    )
    spread, cv = _stragglers(jobs, summary_column(SM_ACTIVE, "mean"))
    util_spread, util_cv = _stragglers(jobs, summary_column(GPU_UTIL, "mean"))
    has_sm_active = jobs[summary_column(SM_ACTIVE, "mean")].count() > 0
    out[STRAGGLER_SPREAD_RATIO] = spread.where(has_sm_active, util_spread)
    out[STRAGGLER_CV_RATIO] = cv.where(has_sm_active, util_cv)
    out[MEM_HEADROOM_RATIO] = jobs["_mem_headroom"].min()
    out[POWER_WATTS] = mean[summary_column(POWER, "mean")]
    out[PCIE_BYTES_PER_SECOND] = mean["_pcie"]
    out[NVLINK_BYTES_PER_SECOND] = mean[summary_column(NVLINK, "mean")]
    out[PCIE_SHARE_RATIO] = mean["_pcie_share"]
    out[NVLINK_SHARE_RATIO] = mean["_nvlink_share"]
    out[GPU_COUNT] = per_gpu.drop_duplicates([JOB_ID, HOST, GPU]).groupby(JOB_ID, dropna=False).size()
    out[HOST_COUNT] = jobs[HOST].nunique(dropna=False)
    out[SAMPLES_PER_GPU_MIN] = jobs[SAMPLES].min()
    window = jobs[WINDOW_END].max() - jobs[WINDOW_START].min()
    out[WINDOW_SECONDS] = window.dt.total_seconds()
    present = per_gpu[[f"_has_{s}" for s in SIGNALS]].groupby(per_gpu[JOB_ID], dropna=False).any()
    out[COVERAGE_RATIO] = present.sum(axis=1) / len(SIGNALS)
    # a source's infinite statistic (a counter gone wild in PromQL) is no measurement: a missing signal,
    # which the model's interval widens for, never an input that fails the whole batch
    return out.astype(np.float64).replace([np.inf, -np.inf], np.nan)


def job_features(summary: pd.DataFrame, *, requested_window_seconds: float | None = None) -> Features:
    """Features of the one job in ``summary`` (the GPU summary of its GPUs), with notes on what they rest on.

    ``requested_window_seconds``: the window the caller asked telemetry
    for; a shorter window found is noted. Raises
    :class:`collectors.schema.SchemaError` if ``summary`` is empty, holds
    more than one job, or does not follow the GPU-summary schema.
    """
    if requested_window_seconds is not None and not requested_window_seconds > 0:
        raise ValueError(f"requested_window_seconds must be > 0, got {requested_window_seconds}")
    frame = features_frame(summary)
    if len(frame) != 1:
        named = ", ".join(str(j) for j in frame.index[:5])
        raise SchemaError(
            f"GPU summary holds {len(frame)} jobs ({named}); job_features takes one: "
            "filter it by job_id or use features_frame"
        )
    row = frame.iloc[0]
    return Features(row=row, notes=feature_notes(row, summary, requested_window_seconds))


def _check_summary(summary: pd.DataFrame) -> None:
    missing = [c for c in SUMMARY_COLUMNS if c not in summary.columns]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise SchemaError(
            f"GPU summary lacks column(s) {shown}: build it with estimator.features.extract.summarize_gpus "
            "or collectors.schema.conform_summary"
        )
    for column in (WINDOW_START, WINDOW_END):
        if not isinstance(summary[column].dtype, pd.DatetimeTZDtype):
            raise SchemaError(
                f"column {column} is {summary[column].dtype}, not UTC datetimes: "
                "pass the summary through collectors.schema.conform_summary first"
            )
    _check_dtypes(summary, LABELS, pd.api.types.is_string_dtype, "strings")
    numeric = tuple(c for c in SUMMARY_COLUMNS if c not in LABELS and c not in (WINDOW_START, WINDOW_END))
    _check_dtypes(summary, numeric, pd.api.types.is_float_dtype, "floats")


def _per_gpu(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with the per-GPU quantities the job features aggregate (columns starting with ``_``)."""
    out = summary.copy()
    out["_mem_headroom"] = 1.0 - out[summary_column(MEM_USED, "max")] / out[summary_column(MEM_TOTAL, "max")]
    out["_pcie"] = out[summary_column(PCIE_TX, "mean")] + out[summary_column(PCIE_RX, "mean")]
    peaks = {m: link_peaks(m) for m in out[GPU_MODEL].dropna().unique()}
    pcie_peak = out[GPU_MODEL].map({m: p.pcie_bytes_per_second for m, p in peaks.items() if p is not None})
    nvlink_peak = out[GPU_MODEL].map(
        {m: p.nvlink_bytes_per_second for m, p in peaks.items() if p is not None}
    )
    out["_pcie_share"] = out["_pcie"] / pcie_peak.astype(np.float64)
    out["_nvlink_share"] = out[summary_column(NVLINK, "mean")] / nvlink_peak.astype(np.float64)
    for signal in SIGNALS:
        out[f"_has_{signal}"] = out[[summary_column(signal, st) for st in STATISTICS]].notna().any(axis=1)
    return out


def _stragglers(jobs: pd.api.typing.DataFrameGroupBy, column: str) -> tuple[pd.Series, pd.Series]:
    """Spread (max − min) and coefficient of variation (population std / mean) of ``column`` over GPUs."""
    values = jobs[column]
    spread = values.max() - values.min()
    mean = values.mean()
    cv = (values.std(ddof=0) / mean).where(mean > 0)
    return spread, cv


# --- notes -----------------------------------------------------------------------


def feature_notes(row: pd.Series, summary: pd.DataFrame, requested_window_seconds: float | None) -> list[str]:
    """What one job's feature ``row`` rests on (window, missing signals, stragglers), from its summary."""
    notes: list[str] = []
    window = row[WINDOW_SECONDS]
    if math.isnan(window):
        notes.append("no timestamps in the telemetry: window length unknown")
    elif window < MIN_WINDOW_SECONDS:
        notes.append(
            f"telemetry spans {window:.0f} s, less than {MIN_WINDOW_SECONDS:.0f} s: "
            "the statistics may miss phases of the job"
        )
    if (
        requested_window_seconds is not None
        and not math.isnan(window)
        and window < REQUESTED_WINDOW_COVERAGE_RATIO * requested_window_seconds
    ):
        notes.append(f"telemetry spans {window:.0f} s of the {requested_window_seconds:.0f} s requested")
    gpus = len(summary)
    has = {s: summary[[summary_column(s, st) for st in STATISTICS]].notna().any(axis=1) for s in SIGNALS}
    absent = [s for s in SIGNALS if not has[s].any()]
    if absent:
        notes.append(f"no data for {', '.join(absent)}: features from them are NaN")
    for signal in SIGNALS:
        lacking = int((~has[signal]).sum())
        if 0 < lacking < gpus:
            notes.append(f"{signal} missing on {lacking} of {gpus} GPUs: its features use the others")
    straggler_signal = SM_ACTIVE
    if not has[SM_ACTIVE].any():
        straggler_signal = GPU_UTIL
        if has[GPU_UTIL].any():
            notes.append(
                f"{SM_ACTIVE} missing: stragglers measured on {GPU_UTIL}, which counts stalled GPUs as busy"
            )
    spread = row[STRAGGLER_SPREAD_RATIO]
    if not math.isnan(spread) and spread >= STRAGGLER_MIN_SPREAD_RATIO:
        means = summary[summary_column(straggler_signal, "mean")]
        slowest = summary.iloc[int(np.nanargmin(means.to_numpy()))]
        notes.append(
            f"stragglers: per-GPU mean {straggler_signal} ranges {means.min():.2f}–{means.max():.2f} "
            f"across {gpus} GPUs (spread {spread:.2f} ≥ {STRAGGLER_MIN_SPREAD_RATIO:.2f}); "
            f"lowest: host {slowest[HOST]} gpu {slowest[GPU]}"
        )
    has_traffic = has[PCIE_TX] | has[PCIE_RX] | has[NVLINK]
    models = summary.loc[has_traffic, GPU_MODEL]
    if models.isna().any():
        notes.append("GPU model not reported: interconnect shares of those GPUs are NaN")
    unknown = sorted(m for m in models.dropna().unique() if link_peaks(m) is None)
    if unknown:
        notes.append(
            f"no peak link bandwidth known for GPU model(s) {', '.join(repr(m) for m in unknown)}: "
            "their interconnect shares are NaN"
        )
    return notes
