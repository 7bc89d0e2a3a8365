"""Partial telemetry made visible: a job whose source lacks signals gets a wider Z_e interval that still
holds what every signal says, and a job with every signal gets the model's interval to the bit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from collectors.metrics import NVIDIA_SMI_METRICS
from collectors.schema import SIGNALS
from estimator.features.extract import features_frame, summarize_gpus
from estimator.model.compiled import (
    NEIGHBOURS,
    CompiledZeModel,
    LoadedModel,
    compile_ze_model,
    compiled_bytes,
    load_compiled_model,
    load_model_for_estimates,
    local_model_path,
    missing_features_note,
    nearest_rows,
    predict_z_intervals,
)
from estimator.model.default import missing_signals_note, z_intervals_for
from estimator.model.local import fit_local_model
from estimator.model.regressor import MODEL_FEATURES, ZeRegressor, load_default_model, save_model
from estimator.perfmodel import iteration as perfmodel
from estimator.perfmodel.iteration import JobSpec, SpecError
from estimator.training.rows import (
    DEFAULT_MINUTES,
    DEFAULT_SEED,
    STUDY,
    Z_PERCENT,
    job_specs,
    read_study_data,
)
from estimator.training.rows import simulate_features as simulate_training_features

REPO = Path(__file__).resolve().parents[1]
SHIPPED_NPZ = REPO / "models" / "ze_model.npz"
DATA_DIR = REPO.parent / "shared" / "data" / "vtrain"
NAMES = list(MODEL_FEATURES)
START = pd.Timestamp("2026-11-01T00:00:00Z")

#: What an nvidia-smi --query-gpu capture holds (utilization, memory, power); every other signal is NaN.
NVIDIA_SMI_SIGNALS = frozenset(field.signal for field in NVIDIA_SMI_METRICS)
#: The GPUs of the training data; the others (H100, H200) the model extrapolates to.
TRAINED_ON = ("a100-80gb", "a100-40gb")


@dataclass(frozen=True)
class Jobs:
    """Simulated jobs: features with every signal, with only what nvidia-smi reports, and each job's GPU."""

    full: pd.DataFrame
    smi: pd.DataFrame
    gpu: np.ndarray


def varied_specs(count: int, gpus: tuple[str, ...], seed: int) -> list[JobSpec]:
    """``count`` jobs of GPT-like models with varied shape, batch, layout and recomputation that fit."""
    rng = np.random.default_rng(seed)
    specs: list[JobSpec] = []
    while len(specs) < count:
        n = int(rng.choice([2, 4, 8]))
        t = int(rng.choice([d for d in (1, 2, 4, 8) if n % d == 0]))
        p = int(rng.choice([d for d in (1, 2, 4, 8) if (n // t) % d == 0]))
        micro = int(rng.choice([1, 2, 4, 8]))
        try:
            spec = JobSpec(
                gpu=str(rng.choice(gpus)),
                num_gpus=n,
                hidden_size=int(rng.choice([1024, 1536, 2048, 2560, 4096])),
                attention_heads=int(rng.choice([16, 32])),
                num_layers=int(rng.choice([16, 24, 32, 40])),
                sequence_length=int(rng.choice([1024, 2048])),
                global_batch=micro * (n // t // p) * int(rng.choice([1, 2, 4, 8, 16, 32])),
                micro_batch=micro,
                tensor_parallel=t,
                pipeline_parallel=p,
                data_parallel=n // t // p,
                recompute=str(rng.choice(["none", "selective", "full"])),
            )
        except SpecError:
            continue  # a layout the model shape does not divide into
        if perfmodel.memory_bytes_per_gpu(spec) <= spec.gpu_spec.memory_total_bytes:
            specs.append(spec)
    return specs


def telemetry(specs: list[JobSpec], seed: int) -> list[pd.DataFrame]:
    """Two minutes of each job's telemetry, every signal there."""
    return [
        perfmodel.simulate_telemetry(
            spec,
            perfmodel.load_constants(spec.gpu),
            job_id=f"job{n:03d}",
            minutes=2,
            seed=seed + n,
            start=START,
        )
        for n, spec in enumerate(specs)
    ]


def features_of(frames: list[pd.DataFrame], keep: frozenset[str] = frozenset(SIGNALS)) -> pd.DataFrame:
    """One feature row per job of ``frames`` from the signals in ``keep``; the others read as NaN."""
    drop = [s for s in SIGNALS if s not in keep]
    return pd.concat(
        [features_frame(summarize_gpus(frame.assign(**dict.fromkeys(drop, np.nan)))) for frame in frames]
    )


def simulate(specs: list[JobSpec], seed: int) -> Jobs:
    frames = telemetry(specs, seed)
    return Jobs(
        features_of(frames), features_of(frames, NVIDIA_SMI_SIGNALS), np.array([s.gpu for s in specs])
    )


@pytest.fixture(scope="module")
def jobs() -> Jobs:
    """120 jobs on the training data's A100s and 60 on H100s and H200s."""
    return simulate(
        varied_specs(120, TRAINED_ON, seed=1) + varied_specs(60, ("h100-sxm", "h200"), seed=2), 100
    )


@pytest.fixture(scope="module")
def shipped() -> CompiledZeModel:
    return load_compiled_model(SHIPPED_NPZ)


@pytest.fixture(scope="module")
def regressor() -> ZeRegressor:
    model = load_default_model().model
    assert isinstance(model, ZeRegressor)
    return model


def intervals(model: CompiledZeModel, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    found = predict_z_intervals(model, features)
    return tuple(np.array([getattr(z, side) for z in found]) for side in ("low", "mid", "high"))  # type: ignore[return-value]


def without_rows(model: CompiledZeModel) -> CompiledZeModel:
    """``model`` as the compiled file held it before it kept the training rows."""
    return CompiledZeModel(
        mid=model.mid_,
        low=model.low_,
        high=model.high_,
        interval_adjustment=model.interval_adjustment_,
        coverage=model.coverage,
        feature_names=NAMES,
        n_features=len(NAMES),
    )


# --- the interval without signals -------------------------------------------------------------------


def test_nvidia_smi_alone_widens_the_interval_and_it_holds_the_full_signal_estimate(
    jobs: Jobs, shipped: CompiledZeModel
) -> None:
    assert jobs.smi[NAMES].isna().sum(axis=1).min() == 22  # SM, tensor, DRAM activity, PCIe, NVLink: NaN
    f_low, f_mid, f_high = intervals(shipped, jobs.full)
    p_low, _, p_high = intervals(shipped, jobs.smi)
    wider = p_high - p_low >= f_high - f_low
    holds = (p_low <= f_mid) & (f_mid <= p_high)
    trained_on = np.isin(jobs.gpu, TRAINED_ON)
    # the card's figures for the shipped model come from bench/bench_missing_signals.py (300 jobs)
    assert wider[trained_on].all()
    assert holds[trained_on].mean() >= 0.9
    assert wider[~trained_on].mean() >= 0.9 and holds[~trained_on].mean() >= 0.9
    assert np.median(p_high - p_low) > 1.5 * np.median(f_high - f_low)
    # before: the trees sent the NaN features down their missing-value branch and answered confidently
    # (measured: 71 % held the full-signal mid, against 98 %+ widened)
    n_low, _, n_high = intervals(without_rows(shipped), jobs.smi)
    assert ((n_low <= f_mid) & (f_mid <= n_high)).mean() < holds.mean() - 0.2


def test_an_h100_job_that_looked_worth_tuning_on_nvidia_smi_alone_now_holds_what_dcgm_says(
    shipped: CompiledZeModel,
) -> None:
    """Issue 12's case: 8 H100s, every signal: Z_e near 0; nvidia-smi alone gave 21.6 (15.7-30.5) %."""
    spec = JobSpec(
        gpu="h100-sxm",
        num_gpus=8,
        hidden_size=2048,
        attention_heads=16,
        num_layers=24,
        sequence_length=2048,
        global_batch=64,
        micro_batch=4,
        tensor_parallel=1,
        pipeline_parallel=1,
        data_parallel=8,
        recompute="selective",
    )
    job = simulate([spec], seed=0)
    (full,) = predict_z_intervals(shipped, job.full)
    (before,) = predict_z_intervals(without_rows(shipped), job.smi)
    (after,) = predict_z_intervals(shipped, job.smi)
    assert after.low <= full.low <= full.mid <= full.high <= after.high
    assert after.high - after.low > before.high - before.low  # wider than the missing-value branch's


@pytest.fixture(scope="module")
def a100_telemetry() -> tuple[list[pd.DataFrame], pd.DataFrame]:
    """60 more A100 jobs: their telemetry, and their features with every signal."""
    frames = telemetry(varied_specs(60, TRAINED_ON, seed=3), 300)
    return frames, features_of(frames)


@pytest.mark.parametrize(
    ("lacking", "wider_share"),
    [
        # DCGM without its profiling fields: measured 59 of 60 wider
        (("sm_active_ratio", "sm_occupancy_ratio", "tensor_active_ratio", "dram_active_ratio"), 0.95),
        # no link counters (4 features): 57 of 60 wider (by -3.8 pp at worst), all hold it
        (("pcie_tx_bytes_per_second", "pcie_rx_bytes_per_second", "nvlink_bytes_per_second"), 0.9),
        # no power (1 feature): 57 of 60 wider
        (("power_watts",), 0.9),
    ],
    ids=["dcgm-without-profiling", "no-link-counters", "no-power"],
)
def test_other_partial_sources_widen_too(
    a100_telemetry: tuple[list[pd.DataFrame], pd.DataFrame],
    shipped: CompiledZeModel,
    lacking: tuple[str, ...],
    wider_share: float,
) -> None:
    frames, full = a100_telemetry
    f_low, f_mid, f_high = intervals(shipped, full)
    p_low, _, p_high = intervals(shipped, features_of(frames, frozenset(SIGNALS) - set(lacking)))
    assert (p_high - p_low >= f_high - f_low).mean() >= wider_share
    assert ((p_low <= f_mid) & (f_mid <= p_high)).mean() >= 0.9


def test_jobs_with_every_feature_get_the_regressors_interval_to_the_bit_beside_jobs_without(
    jobs: Jobs, shipped: CompiledZeModel, regressor: ZeRegressor
) -> None:
    mixed = pd.concat([jobs.full.iloc[:50], jobs.smi.iloc[:50], jobs.full.iloc[50:]])
    found = predict_z_intervals(shipped, mixed)
    low, mid, high = regressor.predict_interval(jobs.full[NAMES])
    whole = found[:50] + found[100:]
    for side, want in (("low", low), ("mid", mid), ("high", high)):
        np.testing.assert_array_equal(np.array([getattr(z, side) for z in whole]), want)
    assert predict_z_intervals(shipped, jobs.smi.iloc[:50]) == found[50:100]  # alone as among others


def test_every_interval_is_ordered_and_inside_0_100(jobs: Jobs, shipped: CompiledZeModel) -> None:
    odd = jobs.smi.iloc[:20].copy()
    odd[NAMES[:5]] = [[5.0, -1.0, np.nan, 1e12, 0.0]] * len(odd)  # far outside the training rows
    odd.iloc[0, :] = np.nan  # nothing but NaN: the nearest are a sample of all training rows
    for low, mid, high in zip(*intervals(shipped, pd.concat([jobs.smi, odd])), strict=True):
        assert 0 <= low <= mid <= high < 100


# --- which rows fill in, and the note -----------------------------------------------------------------


def test_nearest_rows_compare_only_the_features_a_row_has() -> None:
    reference = np.array(
        [
            [0.0, 0.0, 5.0, 1.0],
            [1.0, 0.0, 5.0, 2.0],
            [2.0, 0.0, 5.0, np.nan],
            [10.0, 0.0, 5.0, 3.0],
        ]
    )  # column 1 and 2 have no spread: they do not count
    X = np.array([[1.9, 99.0, np.nan, np.nan], [np.nan, np.nan, np.nan, 2.9], [1e9, 0.0, 5.0, 2.0]])
    near = nearest_rows(reference, X, 2)
    assert near[0].tolist() == [2, 1]
    assert near[1].tolist() == [3, 1]  # a NaN in the reference counts as far as the cap
    assert near[2].tolist() == [1, 0]  # 1e9 is far from every row alike: the capped distance ignores it
    with pytest.raises(ValueError):
        nearest_rows(reference, X, 5)


def test_the_note_names_the_missing_signals_and_says_what_they_did(
    jobs: Jobs, shipped: CompiledZeModel
) -> None:
    assert missing_features_note(shipped, jobs.full.iloc[0]) is None
    note = missing_features_note(shipped, jobs.smi.iloc[0])
    assert note is not None and note.startswith("Z_e interval widened for missing signals")
    assert (
        "every statistic of sm_active_ratio, sm_occupancy_ratio, tensor_active_ratio, dram_active_ratio;"
        in note
    )
    assert "gpu_util" not in note and "nvlink_share_ratio" in note
    assert f"{NEIGHBOURS} training jobs nearest on the 9 features present" in note
    old = missing_features_note(without_rows(shipped), jobs.smi.iloc[0])
    assert (
        old is not None and old.startswith("Z_e not widened") and old.endswith("rebuild it with zest train")
    )
    loaded = LoadedModel(shipped, {})
    assert missing_signals_note(jobs.smi.iloc[0], loaded) == note


# --- the file and the models that use it --------------------------------------------------------------


def test_the_npz_keeps_the_training_rows_and_is_the_skops_compiled_with_them(
    shipped: CompiledZeModel, regressor: ZeRegressor
) -> None:
    data = SHIPPED_NPZ.read_bytes()
    assert compiled_bytes(shipped) == data  # round trip, to the byte
    assert compiled_bytes(compile_ze_model(regressor)) == data
    meta = json.loads((REPO / "models" / "ze_model.json").read_text(encoding="utf-8"))["training_data"]
    assert meta["rows"] == meta["measured_rows"] + meta["simulated_rows"] == 2847
    assert shipped.reference_.shape == (meta["rows"], len(NAMES)) and not np.isnan(shipped.reference_).any()
    # the rows are zest train's, the measured ones first: simulate three of them again
    study_data = read_study_data(DATA_DIR)
    constants = perfmodel.load_constants("a100-80gb")
    specs = job_specs(study_data.frame)
    for row in (0, 551, 1102):
        features = simulate_training_features(
            specs[row], constants, job_id=f"vtrain-{row}", minutes=DEFAULT_MINUTES, seed=DEFAULT_SEED + row
        )
        np.testing.assert_array_equal(shipped.reference_[row], features[NAMES].to_numpy(dtype=np.float64))


def test_save_model_keeps_the_rows_the_model_was_fitted_on(tmp_path: Path, jobs: Jobs) -> None:
    rows = jobs.full.assign(
        **{Z_PERCENT: np.linspace(0, 60, len(jobs.full)), STUDY: np.arange(len(jobs.full)) // 6}
    )
    model = ZeRegressor(max_iter=20, min_samples_leaf=5, calibration_folds=3).fit(
        rows[NAMES], rows[Z_PERCENT], groups=rows[STUDY]
    )
    save_model(model, tmp_path / "model.skops", {})
    kept = load_compiled_model(tmp_path / "model.npz")
    np.testing.assert_array_equal(kept.reference_, rows[NAMES].to_numpy(dtype=np.float64))
    assert kept.distance_scale_ == model.distance_scale_ > 0


def test_a_local_model_is_widened_with_the_rows_of_the_model_it_corrects(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    jobs: Jobs,
    shipped: CompiledZeModel,
    regressor: ZeRegressor,
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    rows = jobs.full.iloc[:48].assign(**{Z_PERCENT: np.linspace(5, 40, 48), STUDY: np.arange(48) % 4})
    local = fit_local_model(regressor, rows)
    local_model_path().parent.mkdir(parents=True)
    save_model(local, local_model_path(), {"about": "local"})
    loaded = load_model_for_estimates()
    assert loaded.model is not shipped and loaded.reference is not None
    np.testing.assert_array_equal(loaded.reference[NAMES].to_numpy(), shipped.reference_)
    full = z_intervals_for(jobs.full.iloc[:30], loaded)
    low, mid, high = local.predict_interval(jobs.full.iloc[:30][NAMES])
    assert [(z.low, z.mid, z.high) for z in full] == list(zip(low, mid, high, strict=True))
    partial = z_intervals_for(jobs.smi.iloc[:30], loaded)
    wider = [p.high - p.low >= f.high - f.low for p, f in zip(partial, full, strict=True)]
    assert np.mean(wider) >= 0.9  # measured: 29 of 30 (the local correction moves the bounds a little)
    assert missing_signals_note(jobs.smi.iloc[0], loaded) is not None
