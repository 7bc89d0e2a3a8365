"""The Z_e regressor: the scikit-learn contract, its interval, and model files that load without code."""

from __future__ import annotations

import io
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio

from estimator.decision.algorithms import ALGORITHMS_BY_NAME
from estimator.decision.breakeven import ZInterval
from estimator.features.extract import job_features, summarize_gpus
from estimator.model.regressor import (
    MODEL_FEATURES,
    TRUSTED_TYPES,
    Z_MAX_PERCENT,
    LoadedModel,
    ModelError,
    ZeRegressor,
    load_default_model,
    load_model,
    predict_z_interval,
    save_model,
)
from estimator.perfmodel import iteration as perfmodel
from estimator.perfmodel.iteration import JobSpec

REPO = Path(__file__).resolve().parents[1]
MIB = 1024**2


def quick(**params: Any) -> ZeRegressor:
    """A small, fast ZeRegressor for tests that check behaviour, not accuracy."""
    return ZeRegressor(max_iter=30, min_samples_leaf=5, calibration_folds=3, **params)


def synthetic(n_rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Rows whose Z depends on two features, with noise that grows with Z, in studies of 8 rows."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.uniform(0, 1, (n_rows, 3)), columns=["a", "b", "c"])
    z = 90 * X["a"] * (0.5 + 0.5 * X["b"])
    y = np.clip(z + rng.normal(0, 1 + 0.1 * z), 0, 99.9).to_numpy()
    studies = np.arange(n_rows) // 8
    return X, y, studies


def test_interval_is_ordered_and_inside_0_100_also_for_extreme_and_missing_features() -> None:
    X, y, studies = synthetic(400, seed=1)
    model = quick().fit(X, y, groups=studies)
    probe = pd.DataFrame({"a": [-5.0, 0.0, 0.5, 1.0, 7.0, np.nan], "b": [0.5] * 6, "c": [np.nan] * 6})
    low, mid, high = model.predict_interval(probe)
    assert np.all(low <= mid) and np.all(mid <= high)
    assert np.all(low >= 0) and np.all(high < 100)
    np.testing.assert_array_equal(model.predict(probe), mid)


def test_predictions_are_clipped_below_100_for_targets_at_the_edge() -> None:
    X = pd.DataFrame({"a": np.linspace(0, 1, 60)})
    y = np.where(X["a"] > 0.5, 99.99, 0.0)
    low, _, high = quick().fit(X, y).predict_interval(pd.DataFrame({"a": [0.0, 1.0, 5.0]}))
    assert high.max() <= Z_MAX_PERCENT < 100
    assert low.min() >= 0


def test_interval_covers_about_the_stated_share_of_unseen_studies() -> None:
    X, y, studies = synthetic(480, seed=2)
    model = quick(coverage=0.8).fit(X, y, groups=studies)
    X_new, y_new, _ = synthetic(480, seed=3)
    low, _, high = model.predict_interval(X_new)
    covered = np.mean((low <= y_new) & (y_new <= high))
    assert 0.72 <= covered <= 0.95


def test_fit_refuses_groups_of_the_wrong_length_and_a_coverage_outside_0_1() -> None:
    X, y, studies = synthetic(80, seed=4)
    with pytest.raises(ValueError, match="groups has 79 entries"):
        quick().fit(X, y, groups=studies[:-1])
    with pytest.raises(ValueError, match="coverage must be between 0 and 1"):
        quick(coverage=1.0).fit(X, y)


# --- persistence -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted() -> ZeRegressor:
    X, y, studies = synthetic(200, seed=5)
    return quick().fit(X, y, groups=studies)


def test_skops_round_trip_predicts_the_same_and_writes_the_same_bytes(
    tmp_path: Path, fitted: ZeRegressor
) -> None:
    first, meta = save_model(fitted, tmp_path / "one.skops", {"coverage": 0.8})
    second, _ = save_model(fitted, tmp_path / "two.skops", {"coverage": 0.8})
    assert first.read_bytes() == second.read_bytes()
    assert meta.read_text(encoding="utf-8") == '{\n  "coverage": 0.8\n}\n'
    loaded = load_model(first)
    X, _, _ = synthetic(30, seed=6)
    for got, want in zip(loaded.predict_interval(X), fitted.predict_interval(X), strict=True):
        np.testing.assert_array_equal(got, want)
    assert set(sio.get_untrusted_types(file=first)) <= TRUSTED_TYPES


class Payload:
    """A type no allowlist knows: what a tampered model file would smuggle in."""

    def __init__(self) -> None:
        self.command = "echo owned"


def test_a_model_file_with_an_untrusted_type_is_refused(tmp_path: Path, fitted: ZeRegressor) -> None:
    tampered = ZeRegressor(**fitted.get_params())
    tampered.__dict__.update(fitted.__dict__)
    tampered.payload_ = Payload()
    path = tmp_path / "tampered.skops"
    sio.dump(tampered, path)
    with pytest.raises(ModelError, match=r"does not trust \(test_model\.Payload\); refusing"):
        load_model(path)


def test_a_file_that_is_not_a_model_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="run zest train"):
        load_model(tmp_path / "absent.skops")
    garbage = tmp_path / "garbage.skops"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a skops model file"):
        load_model(garbage)
    other = tmp_path / "other.skops"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(ModelError, match="not a skops model file"):
        load_model(other)


# --- the default artifact ----------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


@pytest.fixture(scope="module")
def default() -> LoadedModel:
    return load_default_model()


def bundled_like_features() -> pd.Series:
    """Features of 3 minutes of a 13B-like GPT on 8 A100s (data parallel), as the bundled examples."""
    spec = JobSpec(
        gpu="a100-80gb",
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
    frame = perfmodel.simulate_telemetry(
        spec,
        perfmodel.load_constants(spec.gpu),
        job_id="example",
        minutes=3,
        seed=0,
        start=pd.Timestamp("2026-11-01T00:00:00Z"),
    )
    return job_features(summarize_gpus(frame)).row


def test_the_default_model_loads_offline_and_predicts_an_interval(
    no_network: None, default: LoadedModel
) -> None:
    z = predict_z_interval(default.model, bundled_like_features())
    assert isinstance(z, ZInterval)
    assert 0 <= z.low <= z.mid <= z.high < 100
    assert z.high > z.low  # an interval, not a point
    assert default.coverage == 0.8


def test_the_default_artifact_is_small_and_its_metadata_describes_it(default: LoadedModel) -> None:
    assert (REPO / "models" / "ze_model.skops").stat().st_size < 5 * MIB
    meta = default.metadata
    assert meta["features"] == list(MODEL_FEATURES) == list(default.model.feature_names_in_)
    assert meta["model"]["coverage"] == 0.8
    assert "date" not in str(sorted(meta))
    data = meta["training_data"]
    assert (data["measured_rows"], data["measured_studies"]) == (1103, 108)  # every vTrain row
    assert data["simulated_studies"] == 200 and data["rows"] == 1103 + data["simulated_rows"]
    assert data["domain"]["gpu_models"] == ["a100-40gb", "a100-80gb", "h100-sxm", "h200"]
    assert data["domain"]["gpus"] == [1, 512] and data["domain"]["sequence_lengths"] == [1024, 8192]
    shares = default.capture_shares()
    assert set(shares) == set(ALGORITHMS_BY_NAME)
    assert shares["exhaustive"] == 1.0
    assert all(0 < s <= 1 for s in shares.values())


def test_a_feature_row_lacking_a_model_feature_is_an_error_that_says_retrain(default: LoadedModel) -> None:
    row = bundled_like_features().drop(MODEL_FEATURES[0])
    with pytest.raises(ModelError, match=f"needs feature\\(s\\) {MODEL_FEATURES[0]}"):
        predict_z_interval(default.model, row)


def test_nan_features_still_give_a_valid_interval(default: LoadedModel) -> None:
    row = bundled_like_features()
    row[[f for f in MODEL_FEATURES if f.startswith(("sm_", "tensor_", "dram_"))]] = np.nan
    z = predict_z_interval(default.model, row)
    assert 0 <= z.low <= z.mid <= z.high < 100


def test_skops_archive_holds_no_pickle(default: LoadedModel) -> None:
    with zipfile.ZipFile(io.BytesIO((REPO / "models" / "ze_model.skops").read_bytes())) as archive:
        names = archive.namelist()
    assert "schema.json" in names
    assert all(n == "schema.json" or n.endswith(".npy") for n in names)
