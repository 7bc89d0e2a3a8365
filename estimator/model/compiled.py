"""The Z_e model as estimates use it: compiled to NumPy arrays, stored as data, loaded without scikit-learn.

Estimates need a model's interval and its coverage, not scikit-learn, whose
import alone takes most of a second. :class:`CompiledZeModel` holds a fitted
:class:`~estimator.model.regressor.ZeRegressor`'s three boosters as
:class:`~estimator.model.trees.CompiledTrees` with its conformal widening,
and gives the same intervals to the bit. ``zest train`` writes it beside the
skops file as ``ze_model.npz`` (:func:`compiled_bytes`: NumPy arrays in a zip,
no pickle); :func:`load_model_for_estimates` reads it, and the skops file
stays for what needs the real regressor (``zest train --with-outcomes``,
``zest evaluate``). A local model (:mod:`estimator.model.local`) is a
scikit-learn model and is read with skops.

A job whose telemetry lacks signals (an nvidia-smi capture has no SM
activity) has NaN features. The compiled file also keeps the model features of
the training rows, and :func:`predict_z_intervals` fills a job's missing
features from the training rows nearest on the features it has, one copy of
the job per row: its interval spans all the copies' intervals, so missing
signals widen it by as much as they could matter for a job like this one.
A job with every feature is predicted as the model predicts it, to the bit.

This module holds what estimates share with training (the clipping of the
interval, feature names, artifact paths, :class:`LoadedModel`) and imports
neither scikit-learn nor skops; :mod:`estimator.model.regressor` re-exports it.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import pandas as pd

from collectors.errors import ModelError
from collectors.util import one_line, user_data_dir
from estimator.decision.breakeven import ZInterval
from estimator.features.extract import (
    COVERAGE_RATIO,
    FEATURES,
    HOST_COUNT,
    RATIO_SIGNALS,
    RATIO_STATISTICS,
    SAMPLES_PER_GPU_MIN,
    WINDOW_SECONDS,
    ratio_feature,
)
from estimator.model.trees import NODE_ARRAYS, CompiledTrees

__all__ = [
    "DEFAULT_ARTIFACT",
    "LOCAL_ARTIFACT",
    "MODEL_FEATURES",
    "NEIGHBOURS",
    "Z_MAX_PERCENT",
    "CompiledZeModel",
    "LoadedModel",
    "ZeModel",
    "clip_z",
    "compile_ze_model",
    "compiled_bytes",
    "conformal_interval",
    "fixed_time_zip",
    "load_compiled_model",
    "load_metadata",
    "load_model_for_estimates",
    "local_model_path",
    "missing_features_note",
    "nearest_rows",
    "packaged_file",
    "predict_z_interval",
    "predict_z_intervals",
    "trained_model_path",
]

FloatArray = npt.NDArray[np.float64]

#: The largest Z the model reports: just below 100 %, which would mean tuning removes all training time.
Z_MAX_PERCENT: Final = math.nextafter(100.0, 0.0)

#: Features the model reads. Left out: how long and how densely telemetry was recorded (window,
#: samples per GPU, signal coverage), which says nothing about the job, and the host count, constant
#: (one host) in the training data.
MODEL_FEATURES: Final = tuple(
    f for f in FEATURES if f not in {WINDOW_SECONDS, SAMPLES_PER_GPU_MIN, COVERAGE_RATIO, HOST_COUNT}
)

#: Artifact name, without suffix, inside the ``zest_models`` package.
DEFAULT_ARTIFACT: Final = "ze_model"
#: The local model of ``zest train --with-outcomes``, in the user's data directory.
LOCAL_ARTIFACT: Final = "ze_model_local"
#: Suffix of the compiled model written beside a ``.skops`` one.
COMPILED_SUFFIX: Final = ".npz"
#: Version of the compiled model's layout; a file of another version is refused. Format 1, without the
#: training rows' features, still loads: its estimates fill in no missing feature; formats 1 and 2,
#: without the distance scale, widen every job's interval alike.
COMPILED_FORMAT: Final = 3
#: Formats a file may have.
READABLE_FORMATS: Final = (1, 2, COMPILED_FORMAT)
#: The boosters of a Z_e model, as prefixes of their arrays in the compiled file.
BOOSTERS: Final = ("mid", "low", "high")


#: Training rows whose features fill in those a job lacks, one copy of the job each (see
#: :func:`predict_z_intervals`). On 600 simulated jobs with nvidia-smi's signals only, 30 rows left the
#: full-signal mid outside 4.5 % of the intervals and 4.5 % of them narrower than the full-signal one;
#: 50 rows 2 % and 2 % (none on A100s), for intervals 6 % wider (median) and 2/3 more prediction time.
NEIGHBOURS: Final = 50
#: Standardized difference (in standard deviations of the training rows) past which a feature adds no
#: more to the distance: one feature far outside the training rows (an H100's power, real PCIe traffic
#: where the rows are simulated) then does not choose the neighbours alone.
DISTANCE_CLIP: Final = 3.0
#: Equally near training rows (to a job that reports nothing but its GPU count) are taken in an order
#: shuffled with this seed: a sample of all studies, not the first ones.
TIE_ORDER_SEED: Final = 0
#: Training rows whose mean distance from a job scales its interval's widening (:func:`neighbour_distance`):
#: a job unlike every training row gets a wider interval than one among them.
DIFFICULTY_NEIGHBOURS: Final = 10
#: Reference cells compared at once when finding neighbours (rows × training rows × features).
_DISTANCE_BLOCK_CELLS: Final = 1 << 21


@runtime_checkable
class ZeModel(Protocol):
    """What estimates need of a Z_e model: its interval's coverage and the interval of each row."""

    coverage: float

    def predict_interval(self, X: Any, distance: Any = None) -> tuple[Any, Any, Any]: ...


def clip_z(z: FloatArray) -> FloatArray:
    """Z in % clipped to what the model reports: [0, 100)."""
    return np.clip(z, 0.0, Z_MAX_PERCENT)


def quantile_band(mid: FloatArray, low: FloatArray, high: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The quantile boosters' band made to hold the mid: where they cross it (quantile models are fitted
    apart), the band's edge moves to the mid, so widening it never leaves a bound on the mid."""
    return np.minimum(low, mid), np.maximum(high, mid)


def conformal_interval(
    mid: FloatArray, low: FloatArray, high: FloatArray, widening: float | FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Low, mid and high Z in % from the boosters' raw predictions: the quantile band
    (:func:`quantile_band`) widened by the conformal ``widening`` (pp, one per row or one for all), all
    clipped to [0, 100) with low <= mid <= high. A bound equals the mid only where Z's range ends (0 or
    100) or the widening is not positive."""
    low, high = quantile_band(mid, low, high)
    mid = clip_z(mid)
    low = np.clip(low - widening, 0.0, mid)
    high = np.clip(high + widening, mid, Z_MAX_PERCENT)
    return low, mid, high


class CompiledZeModel:
    """A fitted :class:`~estimator.model.regressor.ZeRegressor` for prediction only, without scikit-learn.

    ``mid``, ``low`` and ``high``: its boosters compiled; ``interval_adjustment``:
    its conformal widening (pp, per unit of :func:`difficulty`);
    ``distance_scale``: the scale of :func:`difficulty` (0: the same widening
    for every job, as models of format 1 and 2 had); ``coverage`` (0-1);
    ``feature_names``: the columns it was fitted on, if named, else
    ``n_features`` columns; ``reference``: the training rows' features (rows ×
    ``n_features``, NaN allowed; none: missing features are not filled in and
    the widening does not grow with distance), kept as ``reference_``. Build
    one with :func:`compile_ze_model`;
    :meth:`predict_interval` gives what the regressor's does, and
    :func:`predict_z_intervals` fills in missing features from ``reference_``.
    Raises :class:`ValueError` if the parts do not fit together.
    """

    def __init__(
        self,
        *,
        mid: CompiledTrees,
        low: CompiledTrees,
        high: CompiledTrees,
        interval_adjustment: float,
        coverage: float,
        feature_names: Sequence[str] | None,
        n_features: int,
        reference: npt.ArrayLike | None = None,
        distance_scale: float = 0.0,
    ) -> None:
        if not 0.0 < coverage < 1.0 or not math.isfinite(interval_adjustment):
            raise ValueError(f"coverage {coverage!r} or adjustment {interval_adjustment!r} out of range")
        if not math.isfinite(distance_scale) or distance_scale < 0:
            raise ValueError(f"distance scale {distance_scale!r} out of range")
        if feature_names is not None and (
            len(feature_names) != n_features or len(set(feature_names)) != n_features
        ):
            raise ValueError(f"{n_features} features need as many distinct names, got {len(feature_names)}")
        if any(trees.n_features != n_features for trees in (mid, low, high)):
            raise ValueError(f"the boosters do not all read {n_features} features")
        rows = np.empty((0, n_features)) if reference is None else np.array(reference, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != n_features or np.isinf(rows).any():
            raise ValueError(f"the reference rows must be rows of {n_features} features, finite or NaN")
        self.reference_ = rows
        self.mid_, self.low_, self.high_ = mid, low, high
        self.interval_adjustment_ = float(interval_adjustment)
        self.distance_scale_ = float(distance_scale) if len(rows) else 0.0
        self.coverage = float(coverage)
        self.n_features_in_ = int(n_features)
        if feature_names is not None:
            self.feature_names_in_ = np.asarray(feature_names, dtype=object)

    def _validated(self, X: Any) -> FloatArray:
        """``X`` as float64 rows × features, refused as the regressor's ``validate_data`` refuses it."""
        names = getattr(self, "feature_names_in_", None)
        if names is not None and hasattr(X, "columns") and list(X.columns) != list(names):
            raise ValueError("The feature names should match those that were passed during fit.")
        array = np.asarray(X, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != self.n_features_in_ or len(array) == 0:
            raise ValueError(
                f"X must be 1 or more rows of {self.n_features_in_} features, got shape {array.shape}"
            )
        if np.isinf(array).any():
            raise ValueError("Input X contains infinity.")
        return array

    def predict(self, X: Any) -> FloatArray:
        """Z in % for each row, in [0, 100)."""
        return clip_z(self.mid_.predict(self._validated(X)))

    def predict_interval(
        self, X: Any, distance: npt.ArrayLike | None = None
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Low, mid and high Z in % per row (low <= mid <= high, all in [0, 100)) at ``coverage``, widened
        by each row's :func:`difficulty`; ``distance``: the rows' :func:`neighbour_distance`, if known."""
        X = self._validated(X)
        widening = self.interval_adjustment_ * row_difficulty(
            X, self.reference_, self.distance_scale_, distance
        )
        return conformal_interval(self.mid_.predict(X), self.low_.predict(X), self.high_.predict(X), widening)


def row_difficulty(
    X: FloatArray, reference: FloatArray, scale: float, distance: npt.ArrayLike | None = None
) -> FloatArray:
    """Each row's :func:`difficulty` against the training rows ``reference`` (1 without them or a scale);
    ``distance``: the rows' :func:`neighbour_distance`, when the caller measured it (on the features a job
    has, before its missing ones were filled in)."""
    if scale <= 0 or len(reference) == 0:
        return np.ones(len(X))
    if distance is None:
        distance = neighbour_distance(reference, X)
    distance = np.asarray(distance, dtype=np.float64)
    if distance.shape != (len(X),):
        raise ValueError(f"distance must hold one value per row ({len(X)}), got shape {distance.shape}")
    return difficulty(distance, scale)


def compile_ze_model(model: Any) -> CompiledZeModel:
    """The :class:`CompiledZeModel` of a fitted :class:`~estimator.model.regressor.ZeRegressor`, with the
    features of the rows it was trained on (``reference_``), which fill in the features a job lacks and
    measure how far a job lies from them."""
    from estimator.model.regressor import ZeRegressor  # training's side: scikit-learn is loaded there
    from estimator.model.trees import compile_hgb

    if not isinstance(model, ZeRegressor):
        raise TypeError(f"only a ZeRegressor can be compiled, not a {type(model).__name__}")
    names = getattr(model, "feature_names_in_", None)
    return CompiledZeModel(
        mid=compile_hgb(model.mid_),
        low=compile_hgb(model.low_),
        high=compile_hgb(model.high_),
        interval_adjustment=model.interval_adjustment_,
        coverage=model.coverage,
        feature_names=None if names is None else [str(n) for n in names],
        n_features=model.n_features_in_,
        reference=model.reference_,
        distance_scale=model.distance_scale_,
    )


# --- the compiled file ----------------------------------------------------------------------------


def _layout(version: int = COMPILED_FORMAT) -> dict[str, tuple[np.dtype[Any] | None, int]]:
    """Every array of a compiled file of format ``version``: its dtype (None: text) and dimensions."""
    layout: dict[str, tuple[np.dtype[Any] | None, int]] = {
        "format": (np.dtype(np.int64), 0),
        "n_features": (np.dtype(np.int64), 0),
        "feature_names": (None, 1),  # empty when the model was fitted on unnamed columns
        "coverage": (np.dtype(np.float64), 0),
        "interval_adjustment": (np.dtype(np.float64), 0),
    }
    if version >= 2:
        layout["reference"] = (np.dtype(np.float64), 2)  # the training rows' features; 0 rows: none
    if version >= 3:
        layout["distance_scale"] = (np.dtype(np.float64), 0)
    for booster in BOOSTERS:
        layout[f"{booster}.baseline"] = (np.dtype(np.float64), 0)
        layout[f"{booster}.roots"] = (np.dtype(np.int32), 1)
        layout |= {f"{booster}.{name}": (dtype, 1) for name, dtype in NODE_ARRAYS.items()}
    return layout


def _arrays(model: CompiledZeModel) -> dict[str, np.ndarray]:
    names = getattr(model, "feature_names_in_", None)
    arrays = {
        "format": np.int64(COMPILED_FORMAT),
        "n_features": np.int64(model.n_features_in_),
        "feature_names": np.array([] if names is None else [str(n) for n in names], dtype=str),
        "coverage": np.float64(model.coverage),
        "interval_adjustment": np.float64(model.interval_adjustment_),
        "reference": model.reference_,
        "distance_scale": np.float64(model.distance_scale_),
    }
    for booster in BOOSTERS:
        trees: CompiledTrees = getattr(model, f"{booster}_")
        arrays[f"{booster}.baseline"] = np.float64(trees.baseline)
        arrays |= {f"{booster}.{name}": array for name, array in trees.arrays().items()}
    return {key: np.asarray(arrays[key]) for key in _layout()}


def fixed_time_zip(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A zip archive of ``members`` (name, bytes), in that order, deflated, every member stamped
    1980-01-01: the same members give the same bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as target:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(info, data, compresslevel=9)
    return out.getvalue()


def compiled_bytes(model: CompiledZeModel) -> bytes:
    """``model`` as an ``.npz`` file (:func:`numpy.savez_compressed`, no pickle); same model, same bytes."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, allow_pickle=False, **_arrays(model))
    # numpy stamps each member with the current time: rewritten with a fixed one
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source:
        return fixed_time_zip((name, source.read(name)) for name in source.namelist())


def load_compiled_model(path: Path) -> CompiledZeModel:
    """The model of an ``.npz`` file of :func:`compiled_bytes`; :class:`ModelError` if it is not one."""
    redo = "rebuild it with zest train"
    try:
        archive = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise ModelError(f"cannot read model {path} ({exc.strerror or one_line(exc)}): {redo}") from None
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path} is not a compiled model file ({one_line(exc)}): {redo}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ModelError(f"{path} is one array, not a compiled model file: {redo}")
    try:
        with archive:
            # the layout of the file's own format: an older file lacks what was added since
            layouts = [_layout(version) for version in READABLE_FORMATS]
            layout = next((lay for lay in layouts if set(archive.files) == set(lay)), layouts[-1])
            if set(archive.files) != set(layout):
                odd = sorted(set(layout) ^ set(archive.files))  # missing or unexpected
                listed = ", ".join(odd[:6]) + (f", … ({len(odd)} in all)" if len(odd) > 6 else "")
                raise ModelError(f"{path} is not a compiled Z_e model of this zest (arrays {listed}): {redo}")
            arrays = {key: archive[key] for key in layout}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ModelError(f"{path} is not a compiled model file ({one_line(exc)}): {redo}") from None
    for key, (dtype, ndim) in layout.items():
        array = arrays[key]
        if (
            not isinstance(array, np.ndarray)  # a member that is no .npy array reads as bytes
            or array.ndim != ndim
            or (array.dtype.kind != "U" if dtype is None else array.dtype != dtype)
        ):
            kind = "text" if dtype is None else str(dtype)
            raise ModelError(f"{path}: {key} is not a {ndim}-dimensional {kind} array: {redo}")
    version = int(arrays["format"])
    if version not in READABLE_FORMATS:
        raise ModelError(f"{path} has format {version}, not {COMPILED_FORMAT}: {redo}")
    if set(arrays) != set(_layout(version)):
        raise ModelError(f"{path} holds the arrays of another format than its own, {version}: {redo}")
    names = [str(n) for n in arrays["feature_names"]]
    try:
        boosters = {
            booster: CompiledTrees(
                baseline=float(arrays[f"{booster}.baseline"]),
                roots=arrays[f"{booster}.roots"],
                n_features=int(arrays["n_features"]),
                **{name: arrays[f"{booster}.{name}"] for name in NODE_ARRAYS},
            )
            for booster in BOOSTERS
        }
        return CompiledZeModel(
            **boosters,
            interval_adjustment=float(arrays["interval_adjustment"]),
            coverage=float(arrays["coverage"]),
            feature_names=names or None,
            n_features=int(arrays["n_features"]),
            reference=arrays.get("reference"),
            distance_scale=float(arrays.get("distance_scale", 0.0)),
        )
    except ValueError as exc:
        raise ModelError(f"{path} holds no consistent model ({one_line(exc)}): {redo}") from None


# --- the model estimates use ----------------------------------------------------------------------


def load_metadata(path: Path) -> dict[str, Any]:
    """The metadata JSON written beside a model."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"cannot read model metadata {path} ({exc.strerror}): run zest train") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"model metadata {path} is not JSON ({exc.msg}): run zest train") from None
    if not isinstance(document, dict):
        raise ModelError(f"model metadata {path} is not a JSON object: run zest train")
    try:
        _capture_shares(document)
    except ValueError as exc:
        raise ModelError(f"model metadata {path}: {exc}: run zest train") from None
    return document


def _capture_shares(metadata: Mapping[str, Any]) -> dict[str, float]:
    """The capture shares of model ``metadata`` (``capture_shares.shares.<algorithm>.share``), by algorithm;
    none when it has none. Raises :class:`ValueError` naming the entry that is not a share in [0, 1]."""
    section = metadata.get("capture_shares", {})
    shares = section.get("shares", {}) if isinstance(section, dict) else None
    if not isinstance(shares, dict):
        raise ValueError("capture_shares.shares is not a JSON object")
    found = {}
    for name, entry in shares.items():
        share = entry.get("share") if isinstance(entry, dict) else None
        # bool is an int to Python, not a number to a reader of the JSON
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 <= share <= 1.0:
            raise ValueError(f"capture share of {name!r} is {share!r}, not a number in [0, 1]")
        found[str(name)] = float(share)
    return found


@dataclass(frozen=True)
class LoadedModel:
    """A model and the metadata it was shipped with (feature names, coverage, capture shares, provenance).

    ``reference``: training rows' features (columns: feature names) that fill
    in a job's missing features, for a model that does not hold them itself
    (a local model: those of the model it corrects); None: the model's own
    (:attr:`CompiledZeModel.reference_`), if any.
    """

    model: ZeModel
    metadata: dict[str, Any]
    reference: pd.DataFrame | None = None

    @property
    def coverage(self) -> float:
        return float(self.model.coverage)

    def capture_shares(self) -> dict[str, float]:
        """Measured share of the thorough-search Z each default algorithm captures, by algorithm name;
        :class:`ModelError` if the metadata holds one that is not a share."""
        try:
            return _capture_shares(self.metadata)
        except ValueError as exc:
            raise ModelError(f"the model's metadata: {exc}: run zest train") from None


@contextmanager
def packaged_file(name: str) -> Iterator[Path]:
    """A file of the ``zest_models`` package (the shipped model) as a path."""
    with resources.as_file(resources.files("zest_models") / name) as path:
        yield path


def trained_model_path() -> Path:
    """Where ``zest train`` writes by default: the user's data directory, never the installed package."""
    return user_data_dir() / "models" / f"{DEFAULT_ARTIFACT}.skops"


def local_model_path() -> Path:
    """Where ``zest train --with-outcomes`` writes the local model: the user's data directory."""
    return user_data_dir() / "models" / f"{LOCAL_ARTIFACT}.skops"


@contextmanager
def base_artifact(suffix: str) -> Iterator[Path]:
    """A file (by ``suffix``: ``.skops``, ``.npz``, ``.json``) of the base model: the one a user trained
    (``zest train``, default folder) when there is one, else the shipped one. The one place that choice
    is made: estimates, the local model's training rows and its base all take it from here."""
    trained = trained_model_path()
    if trained.is_file():
        yield trained.with_suffix(suffix)
    else:
        with packaged_file(f"{DEFAULT_ARTIFACT}{suffix}") as path:
            yield path


def _fast(skops_path: Path, compiled_path: Path) -> ZeModel:
    """The model of ``skops_path`` for estimates: its compiled twin when there is one."""
    if compiled_path.is_file():
        return load_compiled_model(compiled_path)
    from estimator.model.regressor import load_model  # written by a zest that compiled nothing: slow

    return load_model(skops_path)


def load_model_for_estimates(local_path: Path | None = None) -> LoadedModel:
    """The model estimates use: the local model (``zest train --with-outcomes``) when there is one, else
    the model a user trained (``zest train``, default folder), else the shipped one.

    ``local_path``: default :func:`local_model_path`. A local model that is
    there but cannot be loaded raises :class:`ModelError` rather than being
    passed over silently. The trained and shipped models load compiled
    (:class:`CompiledZeModel`), without scikit-learn; a local model with skops.
    """
    path = local_model_path() if local_path is None else local_path
    if path.is_file():
        from estimator.model.regressor import LOCAL_TRUSTED_TYPES, load_model  # a scikit-learn model

        return LoadedModel(
            load_model(path, trusted=LOCAL_TRUSTED_TYPES),
            load_metadata(path.with_suffix(".json")),
            _base_reference(),
        )
    with (
        base_artifact(".skops") as skops_path,
        base_artifact(COMPILED_SUFFIX) as compiled_path,
        base_artifact(".json") as metadata_path,
    ):
        return LoadedModel(_fast(skops_path, compiled_path), load_metadata(metadata_path))


def _base_reference() -> pd.DataFrame | None:
    """The training rows' features kept with the model a local model corrects (the trained model, else the
    shipped one), as a frame; None if its compiled file has none."""
    with base_artifact(COMPILED_SUFFIX) as compiled_path:
        if not compiled_path.is_file():  # written by a zest that compiled nothing
            return None
        base = load_compiled_model(compiled_path)
    names = getattr(base, "feature_names_in_", None)
    if names is None or len(base.reference_) == 0:
        return None
    return pd.DataFrame(base.reference_, columns=[str(n) for n in names])


#: Fewest rows a scikit-learn model predicts with more than one OpenMP thread.
PARALLEL_ROWS: Final = 1000


def _nearest(reference: npt.ArrayLike, X: npt.ArrayLike, k: int) -> tuple[npt.NDArray[np.intp], FloatArray]:
    """For each row of ``X``: the indices of the ``k`` rows of ``reference`` nearest on the features the row
    has, nearest first, and their distances (root mean square over those features), both rows × ``k``.

    Each feature's difference counts in standard deviations of ``reference``'s
    column, capped at :data:`DISTANCE_CLIP` (as is a NaN of ``reference``); a
    column with no spread in ``reference`` does not count. Equally near rows
    come in a fixed shuffled order (:data:`TIE_ORDER_SEED`). ``k`` is at most
    the rows of ``reference``.
    """
    reference = np.asarray(reference, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    if not 1 <= k <= len(reference) or reference.ndim != 2 or X.ndim != 2 or X.shape[1] != reference.shape[1]:
        raise ValueError(f"need 1 <= k <= {len(reference)} and rows of {reference.shape[1:]} features")
    known = ~np.isnan(reference)
    count = known.sum(axis=0)
    centre = np.where(known, reference, 0.0).sum(axis=0) / np.maximum(count, 1)
    spread = np.sqrt((np.where(known, reference - centre, 0.0) ** 2).sum(axis=0) / np.maximum(count, 1))
    usable = np.isfinite(spread) & (spread > 0)
    order = np.random.default_rng(TIE_ORDER_SEED).permutation(len(reference))
    scaled = ((reference - centre) / np.where(usable, spread, 1.0))[order]
    has = ~np.isnan(X) & usable
    indices = np.empty((len(X), k), dtype=np.intp)
    distances = np.empty((len(X), k), dtype=np.float64)
    # rows that have the same features are compared on those columns together
    patterns, which = np.unique(has, axis=0, return_inverse=True)
    for number, pattern in enumerate(patterns):
        rows = np.flatnonzero(which.ravel() == number)
        columns = np.flatnonzero(pattern)
        if len(columns) == 0:  # nothing to compare: every reference row is as near as any other
            indices[rows] = order[:k]
            distances[rows] = 0.0
            continue
        table = scaled[:, columns]
        block = max(1, _DISTANCE_BLOCK_CELLS // max(1, table.size))
        for start in range(0, len(rows), block):
            part = rows[start : start + block]
            query = (X[np.ix_(part, columns)] - centre[columns]) / spread[columns]
            # NaN (a reference row without the feature) counts as far as the cap: fmin ignores it
            gap = np.fmin(np.abs(query[:, None, :] - table[None, :, :]), DISTANCE_CLIP)
            squares = np.square(gap).sum(axis=2)
            nearest = np.argsort(squares, axis=1, kind="stable")[:, :k]
            indices[part] = order[nearest]
            distances[part] = np.sqrt(np.take_along_axis(squares, nearest, axis=1) / len(columns))
    return indices, distances


def nearest_rows(reference: npt.ArrayLike, X: npt.ArrayLike, k: int) -> npt.NDArray[np.intp]:
    """For each row of ``X``, the indices of the ``k`` rows of ``reference`` nearest on the features the row
    has, nearest first (rows of ``X`` × ``k``; distance as :func:`_nearest` measures it)."""
    return _nearest(reference, X, k)[0]


def neighbour_distance(reference: npt.ArrayLike, X: npt.ArrayLike) -> FloatArray:
    """How far each row of ``X`` lies from the rows of ``reference``: the mean distance of its
    :data:`DIFFICULTY_NEIGHBOURS` nearest (root mean square, in standard deviations of each feature of
    ``reference`` capped at :data:`DISTANCE_CLIP`, over the features the row has; 0 to 3)."""
    rows = np.asarray(reference, dtype=np.float64)
    return _nearest(rows, X, min(DIFFICULTY_NEIGHBOURS, len(rows)))[1].mean(axis=1)


def difficulty(distance: FloatArray, scale: float) -> FloatArray:
    """The factor that scales a row's conformal widening: 1 + distance / ``scale``, where ``scale`` is the
    median distance of held-out training rows from the rest; 1 for every row when ``scale`` is 0 (a model
    fitted without the distance, whose widening is the same for every job)."""
    if scale <= 0:
        return np.ones_like(distance)
    return 1.0 + np.asarray(distance, dtype=np.float64) / scale


def _model_names(model: ZeModel) -> list[str]:
    return [str(n) for n in getattr(model, "feature_names_in_", MODEL_FEATURES)]


def _reference_rows(model: ZeModel, names: list[str], reference: pd.DataFrame | None) -> FloatArray | None:
    """The rows that fill in missing features, in the columns ``names``; None if there are none."""
    if reference is None:
        rows = getattr(model, "reference_", None)
        return rows if isinstance(rows, np.ndarray) and len(rows) else None
    lacking = [n for n in names if n not in reference.columns]
    if lacking:
        raise ModelError(
            f"the training rows kept with the model lack feature(s) {', '.join(lacking)}: "
            "retrain it with zest train"
        )
    return reference[names].to_numpy(dtype=np.float64) if len(reference) else None


def predict_z_intervals(
    model: ZeModel, features: pd.DataFrame, *, reference: pd.DataFrame | None = None
) -> list[ZInterval]:
    """Z_e of each job (row) of ``features`` (columns: feature names; extra ones are ignored), in one
    prediction call: the exporter estimates thousands of jobs a cycle.

    A job with every feature gets the model's interval. A job lacking some
    (NaN: signals its source does not report) is copied once per training row
    of the :data:`NEIGHBOURS` nearest on the features it has
    (:func:`nearest_rows`), each copy taking that row's values for the
    missing ones; its interval runs from the lowest low to the highest high of
    the copies, its mid is their median. ``reference``: those training rows'
    features (columns: feature names); default the model's own
    (:attr:`CompiledZeModel.reference_`); without any, missing features go
    down the trees' missing-value branch.
    """
    names = _model_names(model)
    missing = [n for n in names if n not in features.columns]
    if missing:
        raise ModelError(
            f"the model needs feature(s) {', '.join(missing)} that the job's features lack; "
            "retrain it with zest train"
        )
    if features.empty:
        return []
    X = features[names].to_numpy(dtype=np.float64)
    rows = _reference_rows(model, names, reference)
    partial = np.isnan(X).any(axis=1) if rows is not None else np.zeros(len(X), dtype=bool)
    whole = int(np.count_nonzero(~partial))
    k = 0
    predicted = X
    distance = None
    if rows is not None and partial.any():
        k = min(NEIGHBOURS, len(rows))
        copies = np.repeat(X[partial], k, axis=0)
        lacking = np.isnan(copies)
        copies[lacking] = rows[nearest_rows(rows, X[partial], k).ravel()][lacking]
        predicted = np.concatenate([X[~partial], copies])  # one call; each row is predicted on its own
        # a copy is as far from the training rows as its job is on the features it has
        far = neighbour_distance(rows, X)
        distance = np.concatenate([far[~partial], np.repeat(far[partial], k)])
    frame = pd.DataFrame(predicted, columns=names)
    threads: AbstractContextManager[Any] = nullcontext()
    if not isinstance(model, CompiledZeModel) and len(frame) < PARALLEL_ROWS:
        # A few rows are predicted fastest on one thread: OpenMP threads fighting for a GPU node's busy
        # cores cost seconds (bench/bench_startup.py); thousands of rows of an exporter cycle use them all.
        from threadpoolctl import threadpool_limits

        threads = threadpool_limits(limits=1, user_api="openmp")
    with threads:
        low, mid, high = (np.asarray(a, dtype=np.float64) for a in model.predict_interval(frame, distance))
    if k:
        bounds = []
        for values, combine in ((low, np.min), (mid, np.median), (high, np.max)):
            out = np.empty(len(X))
            out[~partial] = values[:whole]
            out[partial] = combine(values[whole:].reshape(-1, k), axis=1)
            bounds.append(out)
        low, mid, high = bounds
    return [ZInterval(float(a), float(b), float(c)) for a, b, c in zip(low, mid, high, strict=True)]


def predict_z_interval(model: ZeModel, row: pd.Series, *, reference: pd.DataFrame | None = None) -> ZInterval:
    """Z_e of one job from its feature row (indexed by feature name; extra entries are ignored)."""
    return predict_z_intervals(model, row.to_frame().T, reference=reference)[0]


def missing_features_note(
    model: ZeModel, features: Mapping[str, float] | pd.Series, *, reference: pd.DataFrame | None = None
) -> str | None:
    """What a job's missing features (NaN) did to its Z_e, for the estimate's notes; None if it has them all.

    Names the ratio signals none of whose statistics the job has, and the
    other features it lacks; says whether :func:`predict_z_intervals` widened
    the interval for them or, without training rows to fill them in, sent
    them down the trees' missing-value branch.
    """
    names = _model_names(model)
    lacking = [n for n in names if math.isnan(float(features.get(n, math.nan)))]
    if not lacking:
        return None
    signals = [s for s in RATIO_SIGNALS if all(ratio_feature(s, st) in lacking for st in RATIO_STATISTICS)]
    grouped = {ratio_feature(s, st) for s in signals for st in RATIO_STATISTICS}
    others = ", ".join(n for n in lacking if n not in grouped)
    parts = ([f"every statistic of {', '.join(signals)}"] if signals else []) + ([others] if others else [])
    what = f"{len(lacking)} of the model's {len(names)} features are NaN ({'; '.join(parts)})"
    rows = _reference_rows(model, names, reference)
    if rows is None:
        return (
            f"Z_e not widened for missing signals: {what}, and the model keeps no training rows to fill "
            "them in, so they take the trees' missing-value branch: rebuild it with zest train"
        )
    k = min(NEIGHBOURS, len(rows))
    return (
        f"Z_e interval widened for missing signals: {what}; it spans the estimates with them taken from "
        f"each of the {k} training jobs nearest on the {len(names) - len(lacking)} features present"
    )
