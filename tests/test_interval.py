"""The Z_e interval knows its domain: wider for a job far from the training rows, never a bound on the mid
unless Z's range ends there, and its stated coverage held out of fold by study."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from estimator.model.compiled import (
    DIFFICULTY_NEIGHBOURS,
    Z_MAX_PERCENT,
    compile_ze_model,
    conformal_interval,
    difficulty,
    neighbour_distance,
    predict_z_intervals,
)
from estimator.model.regressor import ZeRegressor

NAMES = ["a", "b", "c", "d"]


def studies(n_studies: int, per_study: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Rows of ``n_studies`` studies near the origin; Z depends on two features, with noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_studies, len(NAMES)))
    X = np.repeat(centres, per_study, axis=0) + rng.normal(0, 0.3, size=(n_studies * per_study, len(NAMES)))
    y = np.clip(25 + 8 * np.tanh(X[:, 0]) + 4 * X[:, 1] + rng.normal(0, 3, len(X)), 0, 99)
    return pd.DataFrame(X, columns=NAMES), y, np.repeat(np.arange(n_studies), per_study)


@pytest.fixture(scope="module")
def fitted() -> ZeRegressor:
    X, y, groups = studies(60, 8, seed=1)
    return ZeRegressor(max_iter=60, min_samples_leaf=5).fit(X, y, groups=groups)


def test_the_distance_is_zero_on_the_rows_and_grows_away_from_them() -> None:
    rows = np.random.default_rng(2).normal(size=(200, 3))
    near = neighbour_distance(rows, rows[:5] + 0.01)
    far = neighbour_distance(rows, rows[:5] + 2.0)
    farther = neighbour_distance(rows, rows[:5] + 50.0)
    assert (near < far).all() and (far < farther).all()
    np.testing.assert_allclose(farther, 3.0)  # each feature's part is capped at 3 standard deviations
    # a row with missing features is measured on those it has
    partial = rows[:5].copy()
    partial[:, 2] = np.nan
    assert np.isfinite(neighbour_distance(rows, partial)).all()
    assert len(rows) >= DIFFICULTY_NEIGHBOURS
    np.testing.assert_array_equal(difficulty(np.array([0.0, 0.5]), 0.5), [1.0, 2.0])
    np.testing.assert_array_equal(difficulty(np.array([0.0, 0.5]), 0.0), [1.0, 1.0])


def test_a_job_unlike_the_training_rows_gets_a_wider_interval(fitted: ZeRegressor) -> None:
    assert fitted.distance_scale_ > 0 and fitted.interval_adjustment_ > 0
    X, _, _ = studies(20, 4, seed=3)  # new studies, from where the training rows lie
    far = X + 6.0  # every feature six standard deviations off: beyond the trees' last splits
    low, _, high = fitted.predict_interval(X)
    f_low, f_mid, f_high = fitted.predict_interval(far)
    assert np.median(f_high - f_low) > 2 * np.median(high - low)
    # the same widening, to the bit, from the compiled model that estimates use
    compiled = compile_ze_model(fitted)
    for got, want in zip(compiled.predict_interval(far), (f_low, f_mid, f_high), strict=True):
        np.testing.assert_array_equal(got, want)
    found = predict_z_intervals(compiled, far)
    assert [z.high - z.low for z in found] == pytest.approx(list(f_high - f_low))


def test_no_bound_sits_on_the_mid_unless_z_ends_there(fitted: ZeRegressor) -> None:
    X, _, _ = studies(50, 6, seed=4)
    probe = pd.concat([X, X * 3, X - 4], ignore_index=True)
    low, mid, high = fitted.predict_interval(probe)
    assert ((low < mid) | (mid == 0.0)).all()
    assert ((high > mid) | (mid == Z_MAX_PERCENT)).all()
    # quantile boosters that cross the mid leave the band on the mid's side, then widened
    lo, md, hi = conformal_interval(np.array([20.0]), np.array([21.8]), np.array([25.0]), 1.5)
    assert (lo[0], md[0], hi[0]) == (18.5, 20.0, 26.5)
    lo, md, hi = conformal_interval(np.array([0.5]), np.array([0.2]), np.array([3.0]), np.array([2.0]))
    assert (lo[0], md[0], hi[0]) == (0.0, 0.5, 5.0)  # Z is not below 0: the data says so


def test_the_stated_coverage_holds_on_studies_the_model_never_saw(fitted: ZeRegressor) -> None:
    X, y, _ = studies(80, 8, seed=5)
    low, _, high = fitted.predict_interval(X)
    covered = float(np.mean((low <= y) & (y <= high)))
    assert 0.7 <= covered <= 0.95, covered
