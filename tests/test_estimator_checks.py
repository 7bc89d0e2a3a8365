"""Every estimator of zest against scikit-learn's common checks; the local model's clone and model file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted

from estimator.model.local import LocalZeRegressor, fit_local_model
from estimator.model.regressor import LOCAL_TRUSTED_TYPES, ZeRegressor, load_model, save_model
from estimator.training.rows import STUDY, Z_PERCENT

NAMES = ["a", "b", "c"]


def small_base(names: list[str] | None = None) -> ZeRegressor:
    """A small ZeRegressor fitted on three features (named ``names`` if given), as the shipped one is."""
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (60, 3))
    y = np.clip(60 * X[:, 0] + rng.normal(0, 3, len(X)), 0, 99)
    frame = X if names is None else pd.DataFrame(X, columns=names)
    return ZeRegressor(max_iter=10, min_samples_leaf=5, calibration_folds=2).fit(frame, y)


#: Checks that fit on data with another number of features (1, 2, 4, 5 or 10) than the three a frozen,
#: fitted base reads: its predict_interval refuses them ("X has 2 features, but ZeRegressor is expecting
#: 3"). The same checks pass over an unfrozen base, fitted with the local model.
FROZEN_BASE_FEATURE_COUNT = (
    "check_estimators_overwrite_params",
    "check_estimators_fit_returns_self",
    "check_readonly_memmap_input",
    "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit",
    "check_estimators_dtypes",
    "check_dtype_object",
    "check_array_api_input",
    "check_regressors_train",
    "check_regressor_data_not_an_array",
    "check_regressors_no_decision_function",
    "check_regressors_int",
    "check_fit2d_1feature",
    "check_fit_idempotent",
    "check_fit_check_is_fitted",
    "check_n_features_in",
)


def expected_failures(estimator: Any) -> dict[str, str]:
    """Checks a local model over a frozen base fitted on three features cannot pass, with the reason."""
    if isinstance(estimator, LocalZeRegressor) and isinstance(estimator.base, FrozenEstimator):
        reason = "the check's data has another number of features than the frozen base was fitted on"
        return dict.fromkeys(FROZEN_BASE_FEATURE_COUNT, reason)
    return {}


# ZeRegressor: all checks apply: positive_only (Z >= 0) keeps the checks' targets in the model's range,
# and NaN is allowed. LocalZeRegressor: over an unfitted base, fitted with it (all checks apply), and over
# a frozen fitted base, as zest builds it (the checks that keep to the base's three features).
@parametrize_with_checks(
    [
        ZeRegressor(max_iter=10, calibration_folds=2),
        LocalZeRegressor(ZeRegressor(max_iter=10, calibration_folds=2)),
        LocalZeRegressor(FrozenEstimator(small_base())),
    ],
    expected_failed_checks=expected_failures,
    xfail_strict=True,
)
def test_scikit_learn_contract(estimator: Any, check: Any) -> None:
    check(estimator)


def local_rows(n_rows: int, studies: int, seed: int) -> pd.DataFrame:
    """Local outcomes: Z well above what the base predicts, ``studies`` studies taking turns."""
    rng = np.random.default_rng(seed)
    rows = pd.DataFrame(rng.uniform(0, 1, (n_rows, len(NAMES))), columns=NAMES)
    rows[Z_PERCENT] = np.clip(80 * rows["a"] + 10 * rows["b"] + rng.normal(0, 2, n_rows), 0, 99)
    rows[STUDY] = np.arange(n_rows) % studies
    return rows


def test_clone_keeps_the_frozen_base_and_refits_to_the_same_model() -> None:
    base = small_base(NAMES)
    rows = local_rows(60, studies=4, seed=1)
    model = fit_local_model(base, rows)
    copy = clone(model)
    assert copy.base is model.base and copy.base.estimator is base  # frozen: not copied, not refitted
    assert copy.get_params() == model.get_params()
    with pytest.raises(NotFittedError):
        check_is_fitted(copy)
    copy.fit(rows[NAMES], rows[Z_PERCENT], groups=rows[STUDY])
    np.testing.assert_array_equal(copy.predict(rows[NAMES]), model.predict(rows[NAMES]))
    assert base.n_iter_ == 10  # the shipped model itself is untouched


def test_a_local_model_predicts_the_same_after_a_save_load_round_trip(tmp_path: Path) -> None:
    rows = local_rows(60, studies=4, seed=2)  # 4 studies of 15 rows: a residual model is fitted too
    model = fit_local_model(small_base(NAMES), rows)
    assert model.residual_ is not None
    path, _ = save_model(model, tmp_path / "ze_model_local.skops", {"about": "test"})
    loaded = load_model(path, trusted=LOCAL_TRUSTED_TYPES)
    assert isinstance(loaded, LocalZeRegressor) and isinstance(loaded.base, FrozenEstimator)
    probe = pd.concat([rows[NAMES], pd.DataFrame({"a": [np.nan, 7.0], "b": [0.5, -1.0], "c": [0.1, np.nan]})])
    for before, after in zip(model.predict_interval(probe), loaded.predict_interval(probe), strict=True):
        np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(loaded.predict(probe), model.predict(probe))
