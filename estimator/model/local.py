"""A local Z_e model: the shipped model's predictions corrected by the cluster's own tuning outcomes.

:class:`LocalZeRegressor` wraps the shipped :class:`~estimator.model.regressor.ZeRegressor`,
frozen (:class:`sklearn.frozen.FrozenEstimator`), and learns, from the local
rows alone (``zest record``), a correction on top of its predictions, so it
trains where the shipped model's training data is not at hand:

1. a linear recalibration Z ≈ a + c · Z_shipped, fitted on the local rows and
   shrunk toward the identity (a = 0, c = 1) with weight
   S / (S + ``prior_studies``) for S local studies: the more studies, the
   more the local cluster counts;
2. a small gradient-boosted model of what remains, from the features, when
   there are at least ``residual_min_rows`` rows in 3 or more studies;
3. the shipped interval moved with the correction and re-conformalized on
   the local rows: out-of-fold by study (a new job is a new study), widened
   (or narrowed) by the ``coverage``-quantile of the misses (CQR).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any, ClassVar, Final, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, _fit_context, clone
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GroupKFold
from sklearn.utils import get_tags
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import check_is_fitted, validate_data

from collectors.util import zest_version
from estimator.model.compiled import conformal_interval
from estimator.model.regressor import ZeRegressor
from estimator.training.rows import STUDY, Z_PERCENT

__all__ = ["LocalZeRegressor", "evaluate_local", "fit_local_model", "local_metadata", "render_local_markdown"]

FloatArray = npt.NDArray[np.float64]
MIN_STUDIES: Final = 2
RESIDUAL_MIN_STUDIES: Final = 3


class _Correction(NamedTuple):
    """Z ≈ intercept + slope · Z_base (+ residual model of the features), fitted with local ``weight``."""

    intercept: float
    slope: float
    weight: float
    residual: HistGradientBoostingRegressor | None

    def apply(self, X: FloatArray, b_mid: FloatArray) -> FloatArray:
        """Corrected Z in % (not yet clipped) of rows ``X`` whose base prediction is ``b_mid``."""
        mid = self.intercept + self.slope * b_mid
        if self.residual is not None:
            mid = mid + self.residual.predict(X)
        return np.asarray(mid, dtype=np.float64)


class LocalZeRegressor(RegressorMixin, BaseEstimator):
    """Z in [0, 100) %: a ``base`` Z_e model plus a correction learned on local rows.

    ``base`` is the model to correct, with ``fit(X, y, groups=None)`` and
    ``predict_interval(X)`` like :class:`ZeRegressor`: zest passes the shipped
    model wrapped in :class:`~sklearn.frozen.FrozenEstimator`, which keeps it
    as it is; an unfrozen one is cloned and fitted on the same rows first.
    ``coverage`` (0-1) is the interval's stated coverage on local studies;
    ``prior_studies`` how many studies' worth of weight the base model keeps;
    ``residual_min_rows`` the rows needed before a residual model is fitted;
    ``random_state`` seeds the residual model.
    """

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "base": [HasMethods(["fit", "predict_interval"])],
        "coverage": [Interval(Real, 0, 1, closed="neither")],
        "prior_studies": [Interval(Real, 0, None, closed="left")],
        "residual_min_rows": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        base: BaseEstimator,
        *,
        coverage: float = 0.8,
        prior_studies: float = 3.0,
        residual_min_rows: int = 40,
        random_state: int | None = 0,
    ) -> None:
        self.base = base
        self.coverage = coverage
        self.prior_studies = prior_studies
        self.residual_min_rows = residual_min_rows
        self.random_state = random_state

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = get_tags(self.base).input_tags.allow_nan
        tags.target_tags.positive_only = True  # Z is a share of time saved: >= 0
        return tags

    def _base_input(self, X: FloatArray, base: Any) -> FloatArray | pd.DataFrame:
        """``X`` as ``base`` reads it: named by this model's features, else by the base's, if any."""
        names = getattr(self, "feature_names_in_", None)
        if names is None:
            names = getattr(base, "feature_names_in_", None)
        return X if names is None else pd.DataFrame(X, columns=list(names))

    def _fit_correction(self, X: FloatArray, y: FloatArray, b_mid: FloatArray, studies: int) -> _Correction:
        """Intercept, slope, weight and residual model fitted on these rows of ``studies`` studies."""
        weight = studies / (studies + self.prior_studies)
        if len(y) >= 2 and np.ptp(b_mid) > 1e-9:
            slope, intercept = np.polyfit(b_mid, y, 1)
        else:  # base predictions all alike: only a shift can be learned
            slope, intercept = 1.0, float(np.mean(y - b_mid))
        a = weight * float(intercept)
        c = weight * float(slope) + (1.0 - weight)
        residual = None
        if len(y) >= self.residual_min_rows and studies >= RESIDUAL_MIN_STUDIES:
            remaining = y - (a + c * b_mid)
            residual = HistGradientBoostingRegressor(
                learning_rate=0.1 * weight,
                max_iter=50,
                max_leaf_nodes=4,
                min_samples_leaf=max(10, len(y) // 10),
                early_stopping=False,
                random_state=self.random_state,
            ).fit(X, remaining)
        return _Correction(a, c, weight, residual)

    @_fit_context(prefer_skip_nested_validation=False)  # an unfrozen base validates its own parameters
    def fit(self, X: Any, y: Any, groups: Any = None) -> LocalZeRegressor:
        """Learn the correction and re-conformalize the interval.

        ``groups``: the study of each row; without them each row counts as
        a study of its own. Rows of at least two studies are needed.
        """
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan", y_numeric=True, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        studies_of = np.arange(len(y)) if groups is None else np.asarray(groups)
        if len(studies_of) != len(y):
            raise ValueError(f"groups has {len(studies_of)} entries but y has {len(y)}")
        studies = len(np.unique(studies_of))
        if studies < MIN_STUDIES:
            raise ValueError(
                f"rows of at least {MIN_STUDIES} studies are needed, got {studies} ({len(y)} sample(s))"
            )
        # a FrozenEstimator clones to itself and its fit does nothing: the shipped model stays as it is
        base = clone(self.base).fit(self._base_input(X, self.base), y, groups=groups)
        b_low, b_mid, b_high = base.predict_interval(self._base_input(X, base))
        correction = self._fit_correction(X, y, b_mid, studies)
        self.base_ = base
        self.intercept_ = float(correction.intercept)
        self.slope_ = float(correction.slope)
        self.local_weight_ = float(correction.weight)
        self.residual_ = correction.residual
        self.quantiles_ = base.quantiles_
        self.n_studies_ = studies
        scores = np.empty(len(y))
        for train, test in GroupKFold(n_splits=min(5, studies)).split(X, y, studies_of):
            part = self._fit_correction(X[train], y[train], b_mid[train], len(np.unique(studies_of[train])))
            shift = part.apply(X[test], b_mid[test]) - b_mid[test]
            scores[test] = np.maximum(b_low[test] + shift - y[test], y[test] - b_high[test] - shift)
        level = min(1.0, math.ceil((len(y) + 1) * self.coverage) / len(y))
        self.interval_adjustment_ = float(np.quantile(scores, level, method="higher"))
        self.n_iter_ = 0 if self.residual_ is None else int(self.residual_.n_iter_)
        return self

    def predict_interval(self, X: Any, distance: Any = None) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Low, mid and high Z in % per row (low <= mid <= high, all in [0, 100)) at ``coverage``;
        ``distance``: the rows' distance from the base model's training rows, if measured."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        base_input = self._base_input(X, self.base_)
        b_low, b_mid, b_high = (
            self.base_.predict_interval(base_input)
            if distance is None
            else self.base_.predict_interval(base_input, distance)
        )
        correction = _Correction(self.intercept_, self.slope_, self.local_weight_, self.residual_)
        raw = correction.apply(X, b_mid)
        shift = raw - b_mid
        return conformal_interval(raw, b_low + shift, b_high + shift, self.interval_adjustment_)

    def predict(self, X: Any) -> FloatArray:
        """Z in % for each row, in [0, 100)."""
        check_is_fitted(self)
        return self.predict_interval(X)[1]


def fit_local_model(shipped: ZeRegressor, rows: pd.DataFrame) -> LocalZeRegressor:
    """A :class:`LocalZeRegressor` over ``shipped``, frozen, fitted on ``rows`` (features, STUDY, Z)."""
    names = list(shipped.feature_names_in_)
    model = LocalZeRegressor(FrozenEstimator(shipped), coverage=float(shipped.coverage))
    return model.fit(rows[names], rows[Z_PERCENT], groups=rows[STUDY])


def local_metadata(
    model: LocalZeRegressor,
    shipped_metadata: Mapping[str, Any],
    rows: pd.DataFrame,
    studies: pd.DataFrame,
    capture_shares: Mapping[str, Any],
    *,
    store: str,
) -> dict[str, Any]:
    """The local model's card (JSON beside it): what it corrects, what it was trained on, its shares."""
    used = studies[studies["study_id"].isin(rows[STUDY].unique())]
    return {
        "about": (
            "Local Z_e model of zest: the shipped model's prediction corrected by this cluster's recorded "
            "tuning outcomes (zest record, zest train --with-outcomes). Estimates prefer it to the shipped "
            "model; delete this file and its .skops to go back."
        ),
        "zest_version": zest_version(),
        "model": {
            "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "coverage": float(model.coverage),
            "correction": (
                f"Z = {model.intercept_:.4g} + {model.slope_:.4g} · Z_shipped"
                + (" + a residual boosting model of the features" if model.residual_ is not None else "")
                + f"; local weight {model.local_weight_:.2f} = S / (S + {model.prior_studies:g}) for "
                f"S = {model.n_studies_} studies"
            ),
            "interval": (
                "the shipped interval moved with the correction, re-conformalized out-of-fold by study on "
                f"the local rows: {model.interval_adjustment_:+.3g} pp"
            ),
        },
        "features": list(model.feature_names_in_),
        "target": "z_percent: 100 * (1 - t_best / t_c) within a recorded tuning study, measured",
        "training_data": {
            "store": store,
            "rows": len(rows),
            "studies": int(rows[STUDY].nunique()),
            "study_names": sorted(str(n) for n in used["name"]),
            "labels": "measured objective values of the COMPLETE trials of local tuning studies",
            "features": "job features of each trial's telemetry over its time window (zest record --source)",
        },
        "base_model": {
            "about": str(shipped_metadata.get("about", "")),
            "zest_version": shipped_metadata.get("zest_version"),
            "training_data": shipped_metadata.get("training_data", {}),
        },
        "capture_shares": dict(capture_shares),
    }


def evaluate_local(shipped: ZeRegressor, rows: pd.DataFrame) -> pd.DataFrame:
    """MAE (pp) and interval coverage on the local rows, cross-validated by study (GroupKFold).

    Methods: the shipped model as it is, the shipped model with a local
    correction fitted on the other studies (needs 3 or more studies), and
    the mean Z of the other studies. Columns ``method``, ``mae_pp``,
    ``coverage_ratio`` (NaN where a method has no interval), ``rows``, ``studies``.
    """
    names = list(shipped.feature_names_in_)
    X, y, groups = rows[names], rows[Z_PERCENT].to_numpy(dtype=np.float64), rows[STUDY].to_numpy()
    studies = len(np.unique(groups))
    low, mid, high = shipped.predict_interval(X)
    entries: list[tuple[str, FloatArray, FloatArray | None, FloatArray | None]] = [
        ("zest, shipped model", mid, low, high)
    ]
    if studies >= MIN_STUDIES + 1:
        c_low, c_mid, c_high, mean = (np.full(len(y), np.nan) for _ in range(4))
        for train, test in GroupKFold(n_splits=min(5, studies)).split(X, y, groups):
            model = fit_local_model(shipped, rows.iloc[train])
            c_low[test], c_mid[test], c_high[test] = model.predict_interval(X.iloc[test])
            mean[test] = y[train].mean()
        entries.append(("zest + local correction (other studies)", c_mid, c_low, c_high))
        entries.append(("mean Z of the other studies", mean, None, None))
    table = []
    for label, predicted, lo, hi in entries:
        coverage = math.nan if lo is None or hi is None else float(np.mean((lo <= y) & (y <= hi)))
        table.append(
            {
                "method": label,
                "mae_pp": float(np.mean(np.abs(predicted - y))),
                "coverage_ratio": coverage,
                "rows": len(y),
                "studies": studies,
            }
        )
    return pd.DataFrame(table)


def render_local_markdown(table: pd.DataFrame, coverage: float) -> str:
    """The local outcomes' column of the evaluation, as a Markdown table."""
    rows, studies = int(table["rows"].iloc[0]), int(table["studies"].iloc[0])
    lines = [
        f"Local outcomes (zest record): {rows} trials with telemetry in {studies} studies, folds grouped by "
        f"study; interval at {100 * coverage:.0f} % stated coverage.",
        "",
        "| method | MAE on local outcomes (pp) | interval coverage on local outcomes |",
        "|---|---:|---:|",
    ]
    for _, row in table.iterrows():
        cover = "n/a" if not math.isfinite(row["coverage_ratio"]) else f"{100 * row['coverage_ratio']:.1f} %"
        lines.append(f"| {row['method']} | {row['mae_pp']:.2f} | {cover} |")
    return "\n".join(lines)
