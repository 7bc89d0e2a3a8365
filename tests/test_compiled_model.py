"""The compiled Z_e model: scikit-learn's predictions to the bit, a data file that refuses to be anything
else, and estimates that never import scikit-learn."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor

from collectors.errors import ModelError
from collectors.sources import example_jobs, read_job
from estimator.features.extract import features_frame, summarize_gpus
from estimator.model.compiled import (
    CompiledZeModel,
    ZeModel,
    compile_ze_model,
    compiled_bytes,
    conformal_interval,
    load_compiled_model,
    load_model_for_estimates,
    predict_z_intervals,
    trained_model_path,
)
from estimator.model.regressor import ZeRegressor, load_default_model, save_model
from estimator.model.trees import BLOCK_ROWS, compile_hgb

REPO = Path(__file__).resolve().parents[1]
SHIPPED_NPZ = REPO / "models" / "ze_model.npz"


def noisy_rows(
    n_rows: int, n_features: int, seed: int, nan_share: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """Random rows with NaNs sprinkled in, and a target that depends on three of the features."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_features))
    y = 20 + 10 * np.tanh(X[:, 0]) + 5 * X[:, 1] ** 2 - 3 * (X[:, 2] > 0.5) + rng.normal(0, 1, n_rows)
    X[rng.random(X.shape) < nan_share] = np.nan
    return X, np.clip(y, 0, 99)


def assert_same_interval(got: tuple[Any, Any, Any], want: tuple[Any, Any, Any]) -> None:
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


# --- trees --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["squared_error", "quantile"])
def test_compiled_trees_predict_what_scikit_learn_predicts_with_nan_and_at_the_thresholds(loss: str) -> None:
    X, y = noisy_rows(600, 5, seed=1)
    quantile = 0.9 if loss == "quantile" else None
    model = HistGradientBoostingRegressor(
        loss=loss, quantile=quantile, max_iter=60, min_samples_leaf=5, early_stopping=False, random_state=0
    ).fit(X, y)
    trees = compile_hgb(model)
    probe, _ = noisy_rows(3 * BLOCK_ROWS + 7, 5, seed=2, nan_share=0.3)  # several blocks and a partial one
    nodes = trees.arrays()
    split = ~nodes["is_leaf"] & np.isfinite(nodes["threshold"])
    at_threshold, _ = noisy_rows(int(split.sum()), 5, seed=3)
    at_threshold[np.arange(len(at_threshold)), nodes["feature"][split]] = nodes["threshold"][split]
    extremes = np.array([[np.nan] * 5, [np.inf] * 5, [-np.inf] * 5, [0.0, -0.0, 1e300, -1e300, 5e-324]])
    probe = np.vstack([probe, at_threshold, extremes])
    np.testing.assert_array_equal(trees.predict(probe), model.predict(probe))
    np.testing.assert_array_equal(trees.predict(probe[:1]), model.predict(probe[:1]))


def test_a_regressor_with_categorical_splits_or_a_log_link_is_refused() -> None:
    X, y = noisy_rows(300, 3, seed=3, nan_share=0.0)
    X[:, 0] = np.abs(np.round(X[:, 0] * 3))
    categorical = HistGradientBoostingRegressor(categorical_features=[0], max_iter=5).fit(X, y)
    with pytest.raises(ValueError, match="categorical"):
        compile_hgb(categorical)
    with pytest.raises(ValueError, match="identity link"):
        compile_hgb(HistGradientBoostingRegressor(loss="poisson", max_iter=5).fit(X, y + 1))


# --- the Z_e model ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small() -> ZeRegressor:
    X, y = noisy_rows(240, 4, seed=4)
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    return ZeRegressor(max_iter=40, min_samples_leaf=5, calibration_folds=3).fit(
        frame, y, groups=np.arange(240) // 8
    )


def test_a_compiled_ze_model_gives_the_regressors_interval_to_the_bit(small: ZeRegressor) -> None:
    compiled = compile_ze_model(small)
    assert isinstance(compiled, ZeModel) and compiled.coverage == small.coverage
    assert list(compiled.feature_names_in_) == list(small.feature_names_in_)
    X, _ = noisy_rows(500, 4, seed=5, nan_share=0.3)
    X[:3] = [[-50.0, 50.0, 0.0, 1e9], [np.nan] * 4, [1e-300, -1e-300, 0.0, -0.0]]
    probe = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    assert_same_interval(compiled.predict_interval(probe), small.predict_interval(probe))
    np.testing.assert_array_equal(compiled.predict(probe), small.predict(probe))
    assert predict_z_intervals(compiled, probe) == predict_z_intervals(small, probe)


def test_a_compiled_ze_model_refuses_what_the_regressor_refuses(small: ZeRegressor) -> None:
    compiled = compile_ze_model(small)
    good = pd.DataFrame(np.zeros((2, 4)), columns=["a", "b", "c", "d"])
    for bad in (good[["b", "a", "c", "d"]], good.assign(d=np.inf), good.iloc[:0], good[["a", "b", "c"]]):
        with pytest.raises(ValueError):
            small.predict_interval(bad)
        with pytest.raises(ValueError):
            compiled.predict_interval(bad)


def bundled_example_features() -> pd.DataFrame:
    """Features of every bundled example capture, one row per job."""
    frames = []
    for job in example_jobs():
        telemetry = read_job("example", job).frame
        assert telemetry is not None
        frames.append(features_frame(summarize_gpus(telemetry)))
    return pd.concat(frames)


def test_the_shipped_compiled_model_predicts_what_the_shipped_regressor_predicts() -> None:
    shipped = load_default_model().model
    assert isinstance(shipped, ZeRegressor)
    compiled = load_compiled_model(SHIPPED_NPZ)
    features = bundled_example_features()
    assert len(features) == len(example_jobs()) >= 2
    names = list(shipped.feature_names_in_)
    assert_same_interval(
        compiled.predict_interval(features[names]), shipped.predict_interval(features[names])
    )
    # and on features no example has: extremes and missing signals
    X, _ = noisy_rows(2000, len(names), seed=6, nan_share=0.2)
    probe = pd.DataFrame(np.abs(X) / 2, columns=names)
    assert_same_interval(compiled.predict_interval(probe), shipped.predict_interval(probe))


def test_the_shipped_npz_is_the_shipped_skops_compiled() -> None:
    """The two artifacts describe one model: rebuild both with zest train, never one alone. The npz also
    keeps the training rows' features (tests/test_missing_signals.py checks they are zest train's)."""
    assert len(load_compiled_model(SHIPPED_NPZ).reference_) > 0
    assert SHIPPED_NPZ.read_bytes() == compiled_bytes(compile_ze_model(load_default_model().model))


# --- the file -----------------------------------------------------------------------------------------


def test_the_npz_round_trips_byte_for_byte_and_save_model_writes_the_same_bytes(
    tmp_path: Path, small: ZeRegressor
) -> None:
    first = compiled_bytes(compile_ze_model(small))
    path = tmp_path / "model.npz"
    path.write_bytes(first)
    loaded = load_compiled_model(path)
    assert compiled_bytes(loaded) == first
    save_model(small, tmp_path / "one.skops", {})
    save_model(small, tmp_path / "two.skops", {})
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes() == first
    with zipfile.ZipFile(path) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert all(name.endswith(".npy") for name in archive.namelist())


def _rewritten(path: Path, change: dict[str, Any] | None = None, drop: str | None = None) -> Path:
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files if key != drop}
    arrays |= change or {}
    out = path.with_name("changed.npz")
    np.savez_compressed(out, allow_pickle=True, **arrays)
    return out


def test_a_bad_npz_is_a_model_error_that_says_rebuild(tmp_path: Path, small: ZeRegressor) -> None:
    good = tmp_path / "model.npz"
    good.write_bytes(compiled_bytes(compile_ze_model(small)))
    data = good.read_bytes()
    with np.load(good) as archive:
        left = archive["mid.left"].copy()
    left[np.flatnonzero(left > 0)[0]] = 10**6  # a child outside its tree
    npy = tmp_path / "one.npy"
    np.save(npy, np.arange(3))
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    files = {
        "garbage": b"not a model",
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "flipped": bytes(flipped),
        "missing key": _rewritten(good, drop="coverage").read_bytes(),
        "extra key": _rewritten(good, {"payload": np.arange(3)}).read_bytes(),
        "wrong dtype": _rewritten(good, {"mid.left": left.astype(np.float64)}).read_bytes(),
        "wrong shape": _rewritten(good, {"coverage": np.array([0.8])}).read_bytes(),
        "pickled": _rewritten(good, {"coverage": np.array([0.8], dtype=object)}).read_bytes(),
        "bad tree": _rewritten(good, {"mid.left": left}).read_bytes(),
        "bad coverage": _rewritten(good, {"coverage": np.float64(1.5)}).read_bytes(),
        "one array": npy.read_bytes(),
        "no training rows": _rewritten(good, drop="reference").read_bytes(),
        "rows too narrow": _rewritten(good, {"reference": np.zeros((3, 3))}).read_bytes(),
        "rows of one dimension": _rewritten(good, {"reference": np.zeros(4)}).read_bytes(),
        "infinite rows": _rewritten(good, {"reference": np.full((3, 4), np.inf)}).read_bytes(),
        "format 1 with rows": _rewritten(good, {"format": np.int64(1)}).read_bytes(),
        "format 2 with a distance scale": _rewritten(good, {"format": np.int64(2)}).read_bytes(),
        "format 4": _rewritten(good, {"format": np.int64(4)}).read_bytes(),
        "no distance scale": _rewritten(good, drop="distance_scale").read_bytes(),
        "negative distance scale": _rewritten(good, {"distance_scale": np.float64(-1.0)}).read_bytes(),
    }
    for name, content in files.items():
        path = tmp_path / f"{name.replace(' ', '-')}.npz"
        path.write_bytes(content)
        with pytest.raises(ModelError, match=r"rebuild it with zest train$") as raised:
            load_compiled_model(path)
        assert "\n" not in str(raised.value), name
    with pytest.raises(ModelError, match="No such file"):
        load_compiled_model(tmp_path / "absent.npz")


def test_older_npz_formats_load_and_widen_every_job_alike(tmp_path: Path, small: ZeRegressor) -> None:
    """As zest train wrote them before the npz kept the training rows (format 1: it fills in no missing
    feature) and before the widening grew with distance (formats 1 and 2: one widening for every job)."""
    good = tmp_path / "model.npz"
    good.write_bytes(compiled_bytes(compile_ze_model(small)))
    np.testing.assert_array_equal(load_compiled_model(good).reference_, small.reference_)
    two = load_compiled_model(_rewritten(good, {"format": np.int64(2)}, drop="distance_scale"))
    with np.load(good, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files if key not in {"reference", "distance_scale"}}
    np.savez_compressed(good, **arrays | {"format": np.int64(1)})
    one = load_compiled_model(good)
    assert one.reference_.shape == (0, 4) and one.distance_scale_ == 0.0 == two.distance_scale_
    probe = pd.DataFrame(noisy_rows(30, 4, seed=9, nan_share=0.0)[0], columns=["a", "b", "c", "d"])
    uniform = conformal_interval(
        small.mid_.predict(probe.to_numpy()),
        small.low_.predict(probe.to_numpy()),
        small.high_.predict(probe.to_numpy()),
        small.interval_adjustment_,
    )
    for old in (one, two):
        assert_same_interval(old.predict_interval(probe), uniform)
    assert not np.array_equal(small.predict_interval(probe)[0], uniform[0])  # the new widening differs


# --- what estimates load ------------------------------------------------------------------------------


def test_a_trained_model_is_used_compiled_and_its_skops_when_no_npz_is_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: ZeRegressor
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    trained_model_path().parent.mkdir(parents=True)
    save_model(small, trained_model_path(), {"about": "trained here"})
    loaded = load_model_for_estimates()
    assert isinstance(loaded.model, CompiledZeModel) and loaded.metadata == {"about": "trained here"}
    probe = pd.DataFrame(noisy_rows(50, 4, seed=7)[0], columns=["a", "b", "c", "d"])
    assert_same_interval(loaded.model.predict_interval(probe), small.predict_interval(probe))
    trained_model_path().with_suffix(".npz").unlink()  # as an older zest train left it
    assert isinstance(load_model_for_estimates().model, ZeRegressor)


ESTIMATE = """
import json, sys
from estimator.cli.main import estimate_z_main
from estimator.model.default import default_model
try:
    estimate_z_main(["--job-id", "gpt-1.3b-a100-tp4", "--source", "example", "--duration-hours", "150",
                     "--reuse", "5", "--output", "json"])
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"sklearn", "skops", "scipy"})
print(json.dumps({"model": type(default_model().model).__name__, "heavy": heavy}))
"""


def test_an_estimate_from_the_shipped_model_imports_no_scikit_learn(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", ESTIMATE], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    estimate, tail = result.stdout.rsplit("\n{", 1)
    assert json.loads(estimate)["z_expected_percent"]["mid"] > 0
    assert json.loads("{" + tail) == {"model": "CompiledZeModel", "heavy": []}
