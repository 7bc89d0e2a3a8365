"""The Z_e model: a scikit-learn regressor from a job's telemetry features to Z in % with an interval.

:class:`ZeRegressor` predicts Z, the share of training time a thorough tuning
search would save, in [0, 100) percent, and a low / mid / high interval at a
stated coverage. The mid value is a gradient-boosted regression (squared
error); the interval is conformalized quantile regression (Romano, Patterson
and Candès 2019) made locally adaptive by normalization (Papadopoulos et al.
2008; Lei et al. 2018): quantile models at (1 ± coverage)/2, widened by
``interval_adjustment_`` times each job's difficulty, 1 + d / d₀, where d is the
job's mean distance from its nearest training rows and d₀ the median of that
distance for held-out rows. The adjustment is the coverage-quantile of the
out-of-fold misses divided by their difficulty, so the stated coverage holds
on held-out data, and a job unlike the training rows (another GPU, scale or
signal profile) gets a wider interval than one among them. With ``groups``
the out-of-fold step keeps each group (a tuning study) whole, which is what
a new job is to the model.

The default artifact (``models/ze_model.skops`` + ``ze_model.json``) is
stored with skops and loaded only if it holds nothing but the types of
:data:`TRUSTED_TYPES`: loading a model file never runs code. :func:`save_model`
writes a regressor's compiled form beside it (``ze_model.npz``), which
estimates read without scikit-learn (:mod:`estimator.model.compiled`, whose
names this module re-exports).
"""

from __future__ import annotations

import io
import json
import math
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import skops.io as sio
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import GroupKFold, KFold
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from collectors.errors import ModelError, OutputError
from collectors.util import one_line
from estimator.model.compiled import (
    COMPILED_SUFFIX,
    DEFAULT_ARTIFACT,
    LOCAL_ARTIFACT,
    MODEL_FEATURES,
    Z_MAX_PERCENT,
    LoadedModel,
    ZeModel,
    base_artifact,
    clip_z,
    compile_ze_model,
    compiled_bytes,
    conformal_interval,
    difficulty,
    fixed_time_zip,
    load_metadata,
    load_model_for_estimates,
    local_model_path,
    missing_features_note,
    neighbour_distance,
    packaged_file,
    predict_z_interval,
    predict_z_intervals,
    quantile_band,
    row_difficulty,
    trained_model_path,
)

__all__ = [
    "DEFAULT_ARTIFACT",
    "LOCAL_ARTIFACT",
    "LOCAL_TRUSTED_TYPES",
    "MODEL_FEATURES",
    "TRUSTED_TYPES",
    "Z_MAX_PERCENT",
    "LoadedModel",
    "ModelError",
    "ZeModel",
    "ZeRegressor",
    "load_base_model",
    "load_default_model",
    "load_metadata",
    "load_model",
    "load_model_for_estimates",
    "local_model_path",
    "missing_features_note",
    "predict_z_interval",
    "predict_z_intervals",
    "save_model",
    "trained_model_path",
]

FloatArray = npt.NDArray[np.float64]

#: Every type a model file may hold, those skops trusts by default included: anything else (another
#: scikit-learn estimator, a NumPy function) makes :func:`load_model` refuse the file.
TRUSTED_TYPES: Final = frozenset(
    {
        "builtins.dict",
        "builtins.list",
        "builtins.str",
        "builtins.tuple",
        "numpy.ndarray",
        "numpy.random._generator.Generator",
        "numpy.uint64",
        "sklearn._loss._loss.CyHalfSquaredError",
        "sklearn._loss._loss.CyPinballLoss",
        "estimator.model.regressor.ZeRegressor",
        "sklearn._loss.link.IdentityLink",
        "sklearn._loss.link.Interval",
        "sklearn._loss.loss.HalfSquaredError",
        "sklearn._loss.loss.PinballLoss",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    }
)


#: Types the local model of ``zest train --with-outcomes`` (:mod:`estimator.model.local`) may hold: the
#: shipped types, its own class and the frozen wrapper of the shipped model.
LOCAL_TRUSTED_TYPES: Final = TRUSTED_TYPES | {
    "estimator.model.local.LocalZeRegressor",
    "sklearn.frozen._frozen.FrozenEstimator",
}


class ZeRegressor(RegressorMixin, BaseEstimator):
    """Z in [0, 100) % from job features, with a conformalized quantile interval at ``coverage``.

    Parameters are those of the three :class:`HistGradientBoostingRegressor`
    it fits (mid: squared error; low and high: quantile loss), plus
    ``coverage`` (0-1) of the interval and ``calibration_folds``, the folds
    of the out-of-fold step that calibrates the interval. NaN features are
    allowed (the trees route them).
    """

    def __init__(
        self,
        *,
        coverage: float = 0.8,
        learning_rate: float = 0.05,
        max_iter: int = 200,
        max_leaf_nodes: int = 15,
        min_samples_leaf: int = 20,
        l2_regularization: float = 0.0,
        calibration_folds: int = 5,
        random_state: int | None = 0,
    ) -> None:
        self.coverage = coverage
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.l2_regularization = l2_regularization
        self.calibration_folds = calibration_folds
        self.random_state = random_state

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.target_tags.positive_only = True  # Z is a share of time saved: >= 0
        return tags

    def _booster(self, quantile: float | None) -> HistGradientBoostingRegressor:
        return HistGradientBoostingRegressor(
            loss="squared_error" if quantile is None else "quantile",
            quantile=quantile,
            learning_rate=self.learning_rate,
            max_iter=self.max_iter,
            max_leaf_nodes=self.max_leaf_nodes,
            min_samples_leaf=self.min_samples_leaf,
            l2_regularization=self.l2_regularization,
            early_stopping=False,
            random_state=self.random_state,
        )

    def fit(self, X: Any, y: Any, groups: Any = None, sample_weight: Any = None) -> ZeRegressor:
        """Fit the mid and quantile models and calibrate the interval; ``groups`` keeps studies whole;
        ``sample_weight``: each row's weight in the fits and in the interval's calibration."""
        if not 0.0 < self.coverage < 1.0:
            raise ValueError(f"coverage must be between 0 and 1, got {self.coverage!r}")
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan", y_numeric=True, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        tail = (1.0 - self.coverage) / 2.0
        self.quantiles_ = (tail, 1.0 - tail)
        self.mid_ = self._booster(None).fit(X, y, sample_weight=weight)
        self.low_ = self._booster(self.quantiles_[0]).fit(X, y, sample_weight=weight)
        self.high_ = self._booster(self.quantiles_[1]).fit(X, y, sample_weight=weight)
        self.reference_ = X
        self.interval_adjustment_, self.distance_scale_ = self._calibrate(X, y, groups, weight)
        self.n_iter_ = self.mid_.n_iter_
        return self

    def _calibrate(
        self, X: FloatArray, y: FloatArray, groups: Any, weight: FloatArray
    ) -> tuple[float, float]:
        """The widening per unit of difficulty that makes the quantile band cover ``coverage`` of out-of-fold
        rows (normalized CQR), and the difficulty's distance scale (0 when there are too few folds)."""
        splits: Iterator[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]]
        if groups is not None:
            groups = np.asarray(groups)
            if len(groups) != len(y):
                raise ValueError(f"groups has {len(groups)} entries but y has {len(y)}")
            folds = min(self.calibration_folds, len(np.unique(groups)))
            if folds < 2:
                return 0.0, 0.0
            splits = GroupKFold(n_splits=folds).split(X, y, groups)
        else:
            folds = min(self.calibration_folds, len(y))
            if folds < 2:
                return 0.0, 0.0
            splits = KFold(n_splits=folds, shuffle=True, random_state=self.random_state).split(X)
        misses = np.empty(len(y))
        distance = np.empty(len(y))
        for train, test in splits:
            fold = {"X": X[train], "y": y[train], "sample_weight": weight[train]}
            mid = self._booster(None).fit(**fold).predict(X[test])
            low = self._booster(self.quantiles_[0]).fit(**fold).predict(X[test])
            high = self._booster(self.quantiles_[1]).fit(**fold).predict(X[test])
            low, high = quantile_band(mid, low, high)
            misses[test] = np.maximum(low - y[test], y[test] - high)
            distance[test] = neighbour_distance(X[train], X[test])
        scale = float(np.median(distance))
        scores = misses / difficulty(distance, scale)
        # the ⌈(n + 1)·coverage⌉-th smallest score (split conformal), each row counted by its weight
        level = min(1.0, math.ceil((len(y) + 1) * self.coverage) / len(y))
        return float(np.quantile(scores, level, weights=weight, method="inverted_cdf")), scale

    def predict(self, X: Any) -> FloatArray:
        """Z in % for each row, in [0, 100)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        return clip_z(self.mid_.predict(X))

    def predict_interval(self, X: Any, distance: Any = None) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Low, mid and high Z in % per row (low <= mid <= high, all in [0, 100)) at ``coverage``, widened by
        each row's difficulty; ``distance``: the rows' distance from the training rows, if measured
        (:func:`~estimator.model.compiled.neighbour_distance`)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        widening = self.interval_adjustment_ * row_difficulty(
            X, self.reference_, self.distance_scale_, distance
        )
        return conformal_interval(self.mid_.predict(X), self.low_.predict(X), self.high_.predict(X), widening)


# --- persistence ------------------------------------------------------------------


def _canonical(buffer: bytes) -> bytes:
    """The skops archive with member names and timestamps made reproducible.

    skops names array members and marks shared objects by ``id()`` and stamps
    members with the current time; renumbering both in schema order and fixing
    the time makes the same model give the same bytes.
    """
    with zipfile.ZipFile(io.BytesIO(buffer)) as source:
        schema = json.loads(source.read("schema.json"))
        renamed: dict[str, str] = {}
        ids: dict[int, int] = {}

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if isinstance(node.get("__id__"), int):
                    # the same id marks the same object: a one-to-one renumbering keeps shared references
                    node["__id__"] = ids.setdefault(node["__id__"], len(ids) + 1)
                name = node.get("file")
                if isinstance(name, str) and name in source.namelist():
                    suffix = Path(name).suffix
                    node["file"] = renamed.setdefault(name, f"{len(renamed):05d}{suffix}")
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(schema)
        members = [("schema.json", json.dumps(schema, indent=2).encode())]
        members += [(new, source.read(old)) for old, new in sorted(renamed.items(), key=lambda item: item[1])]
    return fixed_time_zip(members)


def save_model(model: ZeModel, path: Path, metadata: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``model`` with skops to ``path`` (``.skops``) and ``metadata`` as JSON beside it (``.json``).

    A :class:`ZeRegressor` is also written compiled (``.npz``, what estimates
    read, with the features of the rows it was trained on); for another model
    a compiled file left there is removed. The same model and metadata give
    the same bytes. Raises :class:`OutputError` if a file cannot be written.
    """
    check_is_fitted(model)
    buffer = io.BytesIO()
    sio.dump(model, buffer)
    compiled = compiled_bytes(compile_ze_model(model)) if isinstance(model, ZeRegressor) else None
    json_path = path.with_suffix(".json")
    compiled_path = path.with_suffix(COMPILED_SUFFIX)
    try:
        path.write_bytes(_canonical(buffer.getvalue()))
        json_path.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if compiled is None:
            compiled_path.unlink(missing_ok=True)  # it would describe another model than the .skops
        else:
            compiled_path.write_bytes(compiled)
    except OSError as exc:
        raise OutputError(f"cannot write model to {path.parent} ({exc.strerror}): check the folder") from None
    return path, json_path


def _schema_types(data: bytes) -> set[str]:
    """Every type (``module.name``) the skops file ``data`` names, those skops trusts by default included.

    Raises :class:`ValueError` (or what :mod:`zipfile` and :mod:`json` raise)
    when ``data`` is no skops file: not a zip, no ``schema.json``, or a schema
    that is not a tree of skops nodes.
    """
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        schema = json.loads(archive.read("schema.json"))
    if not isinstance(schema, dict) or "__loader__" not in schema:
        raise ValueError("schema.json holds no skops schema")
    found: set[str] = set()
    stack: list[Any] = [schema]  # a stack, not recursion: a schema may be nested deeper than Python recurses
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__module__" in node or "__class__" in node:
                found.add(f"{node.get('__module__')}.{node.get('__class__')}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


#: What reading a file that is no skops model raises, in :func:`_schema_types` or in skops' load (JSON and
#: text decoding errors are ValueErrors).
_NOT_SKOPS: Final = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    AttributeError,
    RecursionError,
)


_REBUILD: Final = "rebuild it with zest train"


def _not_skops(path: Path, exc: Exception) -> ModelError:
    return ModelError(f"{path} is not a skops model file ({one_line(exc) or type(exc).__name__}): {_REBUILD}")


def load_model(path: Path, *, trusted: frozenset[str] = TRUSTED_TYPES) -> ZeModel:
    """Load a model written by :func:`save_model`, refusing a file with any type outside ``trusted``.

    Every type the file names is checked, those skops trusts by default
    included, and ``trusted`` alone is what skops is told to trust. Raises
    :class:`ModelError` when the file cannot be read, is no skops model file
    (empty, a zip without a skops schema, a schema skops cannot load), holds
    another type or is not a Z_e model.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model {path} ({exc.strerror}): run zest train to build it") from None
    try:
        found = _schema_types(data)
    except _NOT_SKOPS as exc:
        raise _not_skops(path, exc) from None
    untrusted = sorted(found - trusted)
    if untrusted:
        raise ModelError(
            f"{path} holds type(s) zest does not trust ({', '.join(untrusted)}); "
            f"refusing to load it: {_REBUILD}"
        )
    try:
        model = sio.load(io.BytesIO(data), trusted=sorted(trusted))
    except _NOT_SKOPS as exc:  # the schema names only trusted types but does not build them
        raise _not_skops(path, exc) from None
    if not isinstance(model, ZeModel):  # a ZeRegressor, or a model built on one (estimator.model.local)
        raise ModelError(f"{path} holds a {type(model).__name__}, not a Z_e model: {_REBUILD}")
    return model


def load_default_model() -> LoadedModel:
    """The :class:`ZeRegressor` shipped in the ``zest_models`` package (no network); :class:`ModelError` if
    absent. Estimates read its compiled form instead (:func:`load_model_for_estimates`)."""
    with (
        packaged_file(f"{DEFAULT_ARTIFACT}.skops") as model_path,
        packaged_file(f"{DEFAULT_ARTIFACT}.json") as meta,
    ):
        return LoadedModel(load_model(model_path), load_metadata(meta))


def load_base_model() -> LoadedModel:
    """The model a user trained (``zest train``, default folder) when there is one, else the shipped one.

    Either is a :class:`ZeRegressor`, the base a local model corrects.
    """
    with base_artifact(".skops") as path, base_artifact(".json") as metadata_path:
        loaded = LoadedModel(load_model(path), load_metadata(metadata_path))
    if not isinstance(loaded.model, ZeRegressor):
        raise ModelError(f"{path} holds no ZeRegressor to build a local model on: rebuild it with zest train")
    return loaded
