"""The feature stage: per-GPU summaries and job features on small frames worked out by hand."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pandas.testing import assert_frame_equal, assert_series_equal

from collectors.schema import (
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
    SUMMARY_COLUMNS,
    TIMESTAMP,
    WINDOW_END,
    WINDOW_START,
    SchemaError,
    conform,
    conform_summary,
    summary_column,
)
from estimator.features import extract as ft
from estimator.features.extract import FEATURES, features_frame, job_features, summarize_gpus
from estimator.features.links import GB, link_peaks

H100 = "NVIDIA H100 80GB HBM3"
T0 = pd.Timestamp("2026-03-02T10:00:00Z")
NAN = math.nan


def telemetry(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A canonical telemetry frame from sample dicts; ``second`` is the offset from T0."""
    records = [{TIMESTAMP: T0 + pd.Timedelta(seconds=r.pop("second")), **r} for r in map(dict, rows)]
    return conform(pd.DataFrame.from_records(records))


def reference_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """The GPU summary computed the slow, obvious way with pandas' groupby (linear quantiles)."""
    grouped = frame.groupby(list(LABELS), dropna=False, sort=True)
    out = grouped.size().astype(np.float64).rename(SAMPLES).to_frame()
    out[WINDOW_START] = grouped[TIMESTAMP].min()
    out[WINDOW_END] = grouped[TIMESTAMP].max()
    out[IDLE_SHARE] = grouped["sm_active_ratio"].agg(
        lambda v: (v.dropna() < IDLE_SM_ACTIVE_RATIO).mean() if v.notna().any() else NAN
    )
    for signal in SIGNALS:
        values = grouped[signal]
        out[summary_column(signal, "mean")] = values.mean()
        for statistic, q in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9)):
            out[summary_column(signal, statistic)] = values.quantile(q)
        out[summary_column(signal, "min")] = values.min()
        out[summary_column(signal, "max")] = values.max()
        for statistic in set(ft.STATISTICS) - set(READ_STATISTICS[signal]):
            out[summary_column(signal, statistic)] = NAN  # nothing reads it: not computed
    return conform_summary(out.reset_index())


# --- summarize_gpus --------------------------------------------------------------


def two_gpus() -> pd.DataFrame:
    """Two GPUs of job 7, five samples a second apart; GPU 1 lost two SM-active samples."""
    sm = {"0": [0.0, 0.2, 0.4, 0.6, 0.8], "1": [0.5, NAN, 0.7, NAN, 0.9]}
    return telemetry(
        [
            {
                "second": s,
                HOST: "n1",
                GPU: g,
                JOB_ID: "7",
                GPU_MODEL: H100,
                "sm_active_ratio": sm[g][s],
                "gpu_util_ratio": 1.0,
                "power_watts": 400.0 + 10 * s,
            }
            for s in range(5)
            for g in ("0", "1")
        ]
    )


def test_summary_statistics_by_hand() -> None:
    summary = summarize_gpus(two_gpus())
    sm = ["sm_active_ratio__" + st for st in ("mean", "p10", "p50", "p90", "min", "max")]
    expected = pd.DataFrame(
        {
            HOST: pd.Series(["n1", "n1"], dtype="string"),
            GPU: pd.Series(["0", "1"], dtype="string"),
            SAMPLES: [5.0, 5.0],
            WINDOW_START: [T0, T0],
            WINDOW_END: [T0 + pd.Timedelta(seconds=4)] * 2,
            IDLE_SHARE: [1 / 5, 0.0],  # 0.0 < 0.05 once in five; never on GPU 1
            # GPU 0: ranks 0.1·4 = 0.4 and 0.9·4 = 3.6; GPU 1 (three known): 0.2 and 1.8.
            sm[0]: [0.4, 0.7],
            sm[1]: [0.08, 0.54],
            sm[2]: [0.4, 0.7],
            sm[3]: [0.72, 0.86],
            sm[4]: [NAN, NAN],  # min and max of a ratio, power's p90: nothing reads them (READ_STATISTICS)
            sm[5]: [NAN, NAN],
            "power_watts__mean": [420.0, 420.0],
            "power_watts__p90": [NAN, NAN],
        }
    )
    expected[WINDOW_START] = expected[WINDOW_START].astype(summary[WINDOW_START].dtype)
    expected[WINDOW_END] = expected[WINDOW_END].astype(summary[WINDOW_END].dtype)
    assert_frame_equal(summary[list(expected.columns)], expected)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)


def test_a_signal_never_reported_stays_nan() -> None:
    summary = summarize_gpus(two_gpus())
    for statistic in ft.STATISTICS:
        assert summary[summary_column("nvlink_bytes_per_second", statistic)].isna().all()


def test_an_infinite_statistic_from_a_source_is_a_missing_feature() -> None:
    """A summary a source aggregated (PromQL) may hold inf: the feature is NaN, never a model input."""
    summary = summarize_gpus(two_gpus())
    summary[summary_column("power_watts", "mean")] = np.inf
    features = ft.features_frame(summary)
    assert np.isnan(features[ft.POWER_WATTS]).all()
    assert np.isfinite(features[ft.ratio_feature("sm_active_ratio", "mean")]).all()


def test_idle_share_is_nan_without_sm_active() -> None:
    frame = two_gpus()
    frame["sm_active_ratio"] = NAN
    summary = summarize_gpus(frame)
    assert summary[IDLE_SHARE].isna().all()
    assert summary[summary_column("gpu_util_ratio", "mean")].tolist() == [1.0, 1.0]


def test_matches_pandas_groupby_on_random_multi_job_frame() -> None:
    rng = np.random.default_rng(3)
    rows = 2000
    frame = pd.DataFrame(
        {
            TIMESTAMP: T0 + pd.to_timedelta(rng.integers(0, 3600, rows), unit="s"),
            HOST: rng.choice(np.array(["n1", "n2", None], dtype=object), rows),
            GPU: rng.choice(["0", "1", "2", "3/1"], rows),
            JOB_ID: rng.choice(np.array(["100", "101", None], dtype=object), rows),
            GPU_MODEL: rng.choice([H100, "NVIDIA A100-SXM4-80GB"], rows),
            **{s: rng.random(rows) for s in SIGNALS},
        }
    )
    frame = conform(frame)
    frame.loc[rng.random(rows) < 0.2, "sm_active_ratio"] = NAN
    frame.loc[frame[GPU].eq("2"), "tensor_active_ratio"] = NAN  # one GPU without the signal
    frame.loc[::7, "sm_active_ratio"] = 0.01  # idle samples
    assert_frame_equal(summarize_gpus(frame), reference_summary(frame))


@pytest.mark.parametrize("month", [False, True], ids=["small", "as a month"])
def test_matches_pandas_reference_with_gaps_and_a_silent_gpu(
    monkeypatch: pytest.MonkeyPatch, month: bool
) -> None:
    """Several hosts, jobs and GPUs; NaN gaps, tied values and a GPU that reported no signal at all."""
    if month:  # a month of 1 Hz samples' paths (threads, binned ranks), on a frame the reference reads
        monkeypatch.setattr(ft, "_PARALLEL_MIN_ROWS", 0)
        monkeypatch.setattr(ft, "_PARTITION_MAX_VALUES", 8)
    rng = np.random.default_rng(17)
    rows = 6000
    frame = conform(
        pd.DataFrame(
            {
                TIMESTAMP: T0 + pd.to_timedelta(rng.integers(0, 7200, rows), unit="s"),
                HOST: rng.choice(np.array(["n1", "n2", "n3", None], dtype=object), rows),
                GPU: rng.choice(["0", "1", "2", "3", "4/1"], rows),
                JOB_ID: rng.choice(np.array(["100", "101", "102", None], dtype=object), rows),
                GPU_MODEL: rng.choice(np.array([H100, "NVIDIA A100-SXM4-80GB", None], dtype=object), rows),
                # whole percent, as nvidia-smi prints it: many ties at the ranks the percentiles use
                **{s: np.round(rng.random(rows), 2) for s in SIGNALS},
            }
        )
    )
    for signal in SIGNALS:
        frame.loc[rng.random(rows) < 0.1, signal] = NAN
    frame.loc[rng.random(rows) < 0.2, "sm_active_ratio"] = 0.01  # idle samples
    silent = frame[HOST].eq("n3").fillna(False).to_numpy() & frame[GPU].eq("3").to_numpy()
    frame.loc[silent, list(SIGNALS)] = NAN
    summary = summarize_gpus(frame)
    assert_frame_equal(summary, reference_summary(frame))
    gone = summary[summary[HOST].eq("n3").fillna(False) & summary[GPU].eq("3")]
    assert len(gone) > 0
    assert (gone[SAMPLES] > 0).all()  # its samples count, its statistics and idle share are NaN
    statistics = [IDLE_SHARE, *(summary_column(s, st) for s in SIGNALS for st in ft.STATISTICS)]
    assert gone[statistics].isna().all(axis=None)


@pytest.mark.parametrize("lost_sample", [False, True], ids=["every sample", "one sample lost"])
def test_capture_in_time_and_gpu_order_matches_pandas_reference(lost_sample: bool) -> None:
    """A capture as zest writes it: every second, each GPU of two hosts in turn (grouped without a sort)."""
    rng = np.random.default_rng(23)
    seconds, gpus = 300, [("n1", "0"), ("n1", "1"), ("n2", "0"), ("n2", "1")]
    rows = seconds * len(gpus)
    frame = conform(
        pd.DataFrame(
            {
                TIMESTAMP: T0 + pd.to_timedelta(np.repeat(np.arange(seconds), len(gpus)), unit="s"),
                HOST: [host for _ in range(seconds) for host, _ in gpus],
                GPU: [gpu for _ in range(seconds) for _, gpu in gpus],
                JOB_ID: "9",
                GPU_MODEL: H100,
                **{s: np.round(rng.random(rows), 3) for s in SIGNALS},
            }
        )
    )
    for signal in SIGNALS:
        frame.loc[rng.random(rows) < 0.05, signal] = NAN
    frame.loc[frame[HOST].eq("n2") & frame[GPU].eq("1"), "sm_active_ratio"] = NAN  # never reported
    if lost_sample:
        frame = frame.drop(index=5).reset_index(drop=True)
    assert (ft._group(frame).offsets is None) == lost_sample
    assert_frame_equal(summarize_gpus(frame), reference_summary(frame))


@settings(max_examples=300, deadline=None)
@given(
    values=hnp.arrays(
        np.float64,
        st.integers(1, 400),
        elements=st.one_of(
            st.floats(allow_nan=False),  # infinities, subnormals and spans beyond float's range
            st.sampled_from([0.0, 0.25, 0.5, 1.0]),  # many ties, as whole percents give
            st.floats(0.0, 1.0),
        ),
    ),
    data=st.data(),
)
def test_binned_rank_selection_equals_a_sort(values: np.ndarray, data: st.DataObject) -> None:
    positions = np.array(
        sorted(data.draw(st.sets(st.integers(0, values.size - 1), min_size=1, max_size=8))), dtype=np.intp
    )
    before = values.copy()
    # Tiny bins and partitions so that every draw takes the binned path, recursing where a bin holds many.
    selected = _select_with(values, positions, partition_max=2, bins=4)
    assert np.array_equal(selected, np.sort(values)[positions])
    assert np.array_equal(values, before)  # read only: the values may be a view of the frame


def _select_with(values: np.ndarray, positions: np.ndarray, *, partition_max: int, bins: int) -> np.ndarray:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ft, "_PARTITION_MAX_VALUES", partition_max)
        patch.setattr(ft, "_SELECT_BINS", bins)
        return ft._select(values, positions)


def test_many_label_combinations_group_correctly() -> None:
    # Every row its own host, GPU, job and model: the label space is too large to count.
    rows = 60
    rng = np.random.default_rng(5)
    frame = conform(
        pd.DataFrame(
            {
                TIMESTAMP: [T0] * rows,
                HOST: [f"h{i:03d}" for i in rng.permutation(rows)],
                GPU: [f"{i}" for i in range(rows)],
                JOB_ID: [f"j{i}" for i in range(rows)],
                GPU_MODEL: [f"m{i}" for i in range(rows)],
                "power_watts": rng.random(rows),
            }
        )
    )
    assert_frame_equal(summarize_gpus(frame), reference_summary(frame))


def test_grouping_survives_a_label_space_beyond_int64() -> None:
    rows = 50_000  # 50 000⁴ combinations do not fit a 64-bit code
    labels = pd.Series([f"{i:05d}" for i in range(rows)], dtype="string")
    frame = pd.DataFrame({label: labels for label in LABELS})
    groups = ft._group(frame)
    assert len(groups.keys) == rows
    assert np.array_equal(groups.bounds, np.arange(rows + 1))
    assert groups.keys[GPU].is_monotonic_increasing


def test_empty_frame_gives_empty_summary() -> None:
    summary = summarize_gpus(conform(pd.DataFrame({TIMESTAMP: pd.Series([], dtype="datetime64[ns, UTC]")})))
    assert summary.empty
    assert list(summary.columns) == list(SUMMARY_COLUMNS)


def test_missing_column_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match=r"lacks column\(s\) power_watts.*conform"):
        summarize_gpus(two_gpus().drop(columns=["power_watts"]))


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("power_watts", "400 W", r"power_watts \(str\).*floats"),
        (TIMESTAMP, pd.Timestamp("2026-03-02T10:00:00"), "timestamp is datetime64.*not UTC"),
        (GPU, 0, r"gpu \(int64\).*strings"),
    ],
)
def test_wrong_dtype_is_a_schema_error(column: str, value: Any, message: str) -> None:
    frame = two_gpus()
    frame[column] = value
    with pytest.raises(SchemaError, match=message):
        summarize_gpus(frame)


# --- job features ----------------------------------------------------------------


def summary_of(gpus: list[dict[str, object]]) -> pd.DataFrame:
    """A GPU summary from per-GPU dicts (statistics not given are NaN)."""
    return conform_summary(pd.DataFrame.from_records(gpus))


def hand_summary() -> pd.DataFrame:
    """Job 42 on two H100s of two hosts, one hour; GPU 1 lags."""
    common = {
        JOB_ID: "42",
        GPU_MODEL: H100,
        GPU: "0",
        WINDOW_START: T0,
        WINDOW_END: T0 + pd.Timedelta(hours=1),
        summary_column("mem_total_bytes", "max"): 80e9,
        "pcie_tx_bytes_per_second__mean": 10 * GB,
        "pcie_rx_bytes_per_second__mean": 22 * GB,
        "nvlink_bytes_per_second__mean": 90 * GB,
    }
    return summary_of(
        [
            {
                **common,
                HOST: "a",
                SAMPLES: 3600.0,
                IDLE_SHARE: 0.1,
                "gpu_util_ratio__mean": 1.0,
                "gpu_util_ratio__p10": 0.9,
                "sm_active_ratio__mean": 0.8,
                "sm_active_ratio__p10": 0.5,
                "sm_active_ratio__p50": 0.85,
                "sm_active_ratio__p90": 0.95,
                "mem_used_bytes__max": 60e9,
                "power_watts__mean": 600.0,
            },
            {
                **common,
                HOST: "b",
                SAMPLES: 3500.0,
                WINDOW_START: T0 + pd.Timedelta(seconds=60),
                IDLE_SHARE: 0.3,
                "gpu_util_ratio__mean": 0.9,
                "gpu_util_ratio__p10": 0.7,
                "sm_active_ratio__mean": 0.6,
                "sm_active_ratio__p10": 0.3,
                "sm_active_ratio__p50": 0.65,
                "sm_active_ratio__p90": 0.75,
                "mem_used_bytes__max": 20e9,
                "power_watts__mean": 500.0,
            },
        ]
    )


def test_features_read_no_statistic_the_summaries_leave_out() -> None:
    """Every statistic the features rest on is one READ_STATISTICS names (so every source computes it):
    scrambling all the others changes no feature."""
    rng = np.random.default_rng(11)
    rows = 3000
    frame = conform(
        pd.DataFrame(
            {
                TIMESTAMP: T0 + pd.to_timedelta(rng.integers(0, 3600, rows), unit="s"),
                HOST: rng.choice(["n1", "n2"], rows),
                GPU: rng.choice(["0", "1", "2"], rows),
                JOB_ID: rng.choice(["5", "6"], rows),
                GPU_MODEL: H100,
                **{s: rng.random(rows) for s in SIGNALS},
            }
        )
    )
    summary = summarize_gpus(frame)
    unread = [summary_column(s, st) for s in SIGNALS for st in ft.STATISTICS if st not in READ_STATISTICS[s]]
    assert unread and summary[unread].isna().all(axis=None)
    scrambled = summary.copy()
    scrambled[unread] = rng.random((len(summary), len(unread)))
    assert_frame_equal(features_frame(scrambled), features_frame(summary))
    for job in ("5", "6"):
        one = summary[summary[JOB_ID] == job]
        assert job_features(one).notes == job_features(scrambled[scrambled[JOB_ID] == job]).notes


def test_job_features_by_hand() -> None:
    features = job_features(hand_summary())
    expected = pd.Series(NAN, index=list(FEATURES), name="42")
    expected[ft.ratio_feature("gpu_util_ratio", "mean")] = 0.95
    expected[ft.ratio_feature("gpu_util_ratio", "p10")] = 0.8
    expected[ft.ratio_feature("sm_active_ratio", "mean")] = 0.7
    expected[ft.ratio_feature("sm_active_ratio", "p10")] = 0.4
    expected[ft.ratio_feature("sm_active_ratio", "p50")] = 0.75
    expected[ft.ratio_feature("sm_active_ratio", "p90")] = 0.85
    expected[ft.IDLE_SHARE_RATIO] = 0.2
    expected[ft.BUSY_NOT_WORKING_RATIO] = 0.25  # 0.95 busy, 0.70 working
    expected[ft.STRAGGLER_SPREAD_RATIO] = 0.2  # 0.8 − 0.6
    expected[ft.STRAGGLER_CV_RATIO] = 0.1 / 0.7  # population std 0.1 over mean 0.7
    expected[ft.MEM_HEADROOM_RATIO] = 0.25  # the fuller GPU: 1 − 60/80
    expected[ft.POWER_WATTS] = 550.0
    expected[ft.PCIE_BYTES_PER_SECOND] = 32 * GB
    expected[ft.NVLINK_BYTES_PER_SECOND] = 90 * GB
    expected[ft.PCIE_SHARE_RATIO] = 0.25  # 32 of 128 GB/s, both directions
    expected[ft.NVLINK_SHARE_RATIO] = 0.1  # 90 of 900 GB/s
    expected[ft.GPU_COUNT] = 2.0
    expected[ft.HOST_COUNT] = 2.0
    expected[ft.SAMPLES_PER_GPU_MIN] = 3500.0
    expected[ft.WINDOW_SECONDS] = 3600.0
    # gpu_util, sm_active, mem used and total, power, PCIe TX and RX, NVLink: 8 of 11 signals.
    expected[ft.COVERAGE_RATIO] = 8 / 11
    assert_series_equal(features.row, expected)


def test_notes_list_each_missing_signal_once() -> None:
    notes = job_features(hand_summary()).notes
    missing = [n for n in notes if n.startswith("no data for")]
    assert missing == [
        "no data for sm_occupancy_ratio, tensor_active_ratio, dram_active_ratio: features from them are NaN"
    ]
    for signal in ("sm_occupancy_ratio", "tensor_active_ratio", "dram_active_ratio"):
        assert sum(n.count(signal) for n in notes) == 1


def test_straggler_note_names_the_lowest_gpu() -> None:
    notes = job_features(hand_summary()).notes
    [straggler] = [n for n in notes if n.startswith("stragglers")]
    assert "0.60–0.80" in straggler
    assert straggler.endswith("lowest: host b gpu 0")


def test_no_straggler_note_when_gpus_agree() -> None:
    summary = hand_summary()
    summary["sm_active_ratio__mean"] = 0.75
    features = job_features(summary)
    assert features.row[ft.STRAGGLER_SPREAD_RATIO] == 0.0
    assert features.row[ft.STRAGGLER_CV_RATIO] == 0.0
    assert not any(n.startswith("stragglers") for n in features.notes)


def test_stragglers_fall_back_to_gpu_util_without_sm_active() -> None:
    summary = hand_summary()
    for statistic in ft.STATISTICS:
        summary[summary_column("sm_active_ratio", statistic)] = NAN
    features = job_features(summary)
    assert features.row[ft.STRAGGLER_SPREAD_RATIO] == pytest.approx(0.1)  # gpu_util 1.0 − 0.9
    assert features.row[ft.STRAGGLER_CV_RATIO] == pytest.approx(0.05 / 0.95)
    assert math.isnan(features.row[ft.BUSY_NOT_WORKING_RATIO])
    assert math.isnan(features.row[ft.ratio_feature("sm_active_ratio", "mean")])
    assert any("stragglers measured on gpu_util_ratio" in n for n in features.notes)


def test_partly_missing_signal_is_noted() -> None:
    summary = hand_summary()
    summary.loc[1, "power_watts__mean"] = NAN
    features = job_features(summary)
    assert features.row[ft.POWER_WATTS] == 600.0
    assert "power_watts missing on 1 of 2 GPUs: its features use the others" in features.notes


def test_unknown_model_leaves_interconnect_shares_nan() -> None:
    summary = hand_summary()
    summary[GPU_MODEL] = pd.Series(["Tesla T4", pd.NA], dtype="string")
    features = job_features(summary)
    assert math.isnan(features.row[ft.PCIE_SHARE_RATIO])
    assert math.isnan(features.row[ft.NVLINK_SHARE_RATIO])
    assert features.row[ft.PCIE_BYTES_PER_SECOND] == 32 * GB
    assert any("'Tesla T4'" in n and "interconnect shares are NaN" in n for n in features.notes)
    assert "GPU model not reported: interconnect shares of those GPUs are NaN" in features.notes


def test_window_notes() -> None:
    summary = hand_summary()
    assert not any("telemetry spans" in n for n in job_features(summary).notes)
    assert (
        "telemetry spans 3600 s of the 7200 s requested"
        in job_features(summary, requested_window_seconds=7200).notes
    )
    summary[WINDOW_END] = T0 + pd.Timedelta(seconds=300)
    [short] = [n for n in job_features(summary).notes if "telemetry spans" in n]
    assert short.startswith("telemetry spans 300 s, less than 600 s")


def test_job_features_wants_one_job() -> None:
    summary = hand_summary()
    summary.loc[1, JOB_ID] = "43"
    with pytest.raises(SchemaError, match=r"holds 2 jobs.*features_frame"):
        job_features(summary)
    with pytest.raises(SchemaError, match="holds 0 jobs"):
        job_features(summary.iloc[0:0])


def test_summary_missing_column_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match=r"GPU summary lacks column\(s\) idle_share_ratio"):
        features_frame(hand_summary().drop(columns=[IDLE_SHARE]))


def test_features_frame_one_row_per_job() -> None:
    one = hand_summary()
    other = one.copy()
    other[JOB_ID] = "9"
    other["power_watts__mean"] = 100.0
    unlabelled = one.iloc[[0]].copy()
    unlabelled[JOB_ID] = pd.NA
    frame = features_frame(pd.concat([one, other, unlabelled], ignore_index=True))
    assert frame.index.tolist()[:2] == ["42", "9"]
    assert pd.isna(frame.index[2])
    assert list(frame.columns) == list(FEATURES)
    assert (frame.dtypes == np.float64).all()
    assert_series_equal(frame.iloc[0], job_features(one).row)
    assert_series_equal(frame.iloc[1], job_features(other).row)
    assert frame.loc["9", ft.POWER_WATTS] == 100.0
    assert frame.iloc[2][ft.GPU_COUNT] == 1.0


def test_from_telemetry_to_features() -> None:
    features = job_features(summarize_gpus(two_gpus()))
    assert features.row.name == "7"
    assert features.row[ft.ratio_feature("sm_active_ratio", "mean")] == pytest.approx(0.55)
    assert features.row[ft.IDLE_SHARE_RATIO] == pytest.approx(0.1)
    assert features.row[ft.BUSY_NOT_WORKING_RATIO] == pytest.approx(0.45)
    assert features.row[ft.STRAGGLER_SPREAD_RATIO] == pytest.approx(0.3)
    assert features.row[ft.WINDOW_SECONDS] == 4.0
    assert features.row[ft.SAMPLES_PER_GPU_MIN] == 5.0
    assert features.row[ft.COVERAGE_RATIO] == pytest.approx(3 / 11)
    assert any(n.startswith("telemetry spans 4 s") for n in features.notes)


# --- hardware ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pcie_gb", "nvlink_gb"),
    [
        ("NVIDIA H100 80GB HBM3", 128, 900),
        ("NVIDIA H100 PCIe", 128, 600),
        ("NVIDIA H200", 128, 900),
        ("NVIDIA A100-SXM4-40GB", 64, 600),
        ("nvidia  a100-sxm4-80gb", 64, 600),
        ("NVIDIA A100 80GB PCIe", 64, 600),
        ("NVIDIA A100-PCIE-40GB", 64, 600),
    ],
)
def test_link_peaks_by_device_name(name: str, pcie_gb: float, nvlink_gb: float) -> None:
    peaks = link_peaks(name)
    assert peaks is not None
    assert peaks.pcie_bytes_per_second == pcie_gb * GB
    assert peaks.nvlink_bytes_per_second == nvlink_gb * GB


def test_unknown_device_has_no_link_peaks() -> None:
    assert link_peaks("Tesla T4") is None
