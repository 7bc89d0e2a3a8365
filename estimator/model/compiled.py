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
from collections.abc import Iterable, Iterator, Sequence
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
    SAMPLES_PER_GPU_MIN,
    WINDOW_SECONDS,
)
from estimator.model.trees import NODE_ARRAYS, CompiledTrees

__all__ = [
    "DEFAULT_ARTIFACT",
    "LOCAL_ARTIFACT",
    "MODEL_FEATURES",
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
#: Version of the compiled model's layout; a file of another version is refused.
COMPILED_FORMAT: Final = 1
#: The boosters of a Z_e model, as prefixes of their arrays in the compiled file.
BOOSTERS: Final = ("mid", "low", "high")


@runtime_checkable
class ZeModel(Protocol):
    """What estimates need of a Z_e model: its interval's coverage and the interval of each row."""

    coverage: float

    def predict_interval(self, X: Any) -> tuple[Any, Any, Any]: ...


def clip_z(z: FloatArray) -> FloatArray:
    """Z in % clipped to what the model reports: [0, 100)."""
    return np.clip(z, 0.0, Z_MAX_PERCENT)


def conformal_interval(
    mid: FloatArray, low: FloatArray, high: FloatArray, adjustment: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Low, mid and high Z in % from the boosters' raw predictions: the quantiles widened by the
    conformal ``adjustment`` (pp), all clipped to [0, 100) with low <= mid <= high."""
    mid = clip_z(mid)
    low = np.clip(low - adjustment, 0.0, mid)
    high = np.clip(high + adjustment, mid, Z_MAX_PERCENT)
    return low, mid, high


class CompiledZeModel:
    """A fitted :class:`~estimator.model.regressor.ZeRegressor` for prediction only, without scikit-learn.

    ``mid``, ``low`` and ``high``: its boosters compiled; ``interval_adjustment``:
    its conformal widening (pp); ``coverage`` (0-1); ``feature_names``: the
    columns it was fitted on, if named, else ``n_features`` columns. Build one
    with :func:`compile_ze_model`; :meth:`predict_interval` gives what the
    regressor's does. Raises :class:`ValueError` if the parts do not fit together.
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
    ) -> None:
        if not 0.0 < coverage < 1.0 or not math.isfinite(interval_adjustment):
            raise ValueError(f"coverage {coverage!r} or adjustment {interval_adjustment!r} out of range")
        if feature_names is not None and (
            len(feature_names) != n_features or len(set(feature_names)) != n_features
        ):
            raise ValueError(f"{n_features} features need as many distinct names, got {len(feature_names)}")
        if any(trees.n_features != n_features for trees in (mid, low, high)):
            raise ValueError(f"the boosters do not all read {n_features} features")
        self.mid_, self.low_, self.high_ = mid, low, high
        self.interval_adjustment_ = float(interval_adjustment)
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

    def predict_interval(self, X: Any) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Low, mid and high Z in % per row (low <= mid <= high, all in [0, 100)) at ``coverage``."""
        X = self._validated(X)
        return conformal_interval(
            self.mid_.predict(X), self.low_.predict(X), self.high_.predict(X), self.interval_adjustment_
        )


def compile_ze_model(model: Any) -> CompiledZeModel:
    """The :class:`CompiledZeModel` of a fitted :class:`~estimator.model.regressor.ZeRegressor`."""
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
    )


# --- the compiled file ----------------------------------------------------------------------------


def _layout() -> dict[str, tuple[np.dtype[Any] | None, int]]:
    """Every array of the compiled file: its dtype (None: text) and number of dimensions."""
    layout: dict[str, tuple[np.dtype[Any] | None, int]] = {
        "format": (np.dtype(np.int64), 0),
        "n_features": (np.dtype(np.int64), 0),
        "feature_names": (None, 1),  # empty when the model was fitted on unnamed columns
        "coverage": (np.dtype(np.float64), 0),
        "interval_adjustment": (np.dtype(np.float64), 0),
    }
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
    layout = _layout()
    try:
        with archive:
            if set(archive.files) != set(layout):
                odd = sorted(set(layout) ^ set(archive.files))  # missing or unexpected
                raise ModelError(
                    f"{path} is not a compiled Z_e model of this zest (arrays {', '.join(odd)}): {redo}"
                )
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
    if int(arrays["format"]) != COMPILED_FORMAT:
        raise ModelError(f"{path} has format {int(arrays['format'])}, not {COMPILED_FORMAT}: {redo}")
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
    return document


@dataclass(frozen=True)
class LoadedModel:
    """A model and the metadata it was shipped with (feature names, coverage, capture shares, provenance)."""

    model: ZeModel
    metadata: dict[str, Any]

    @property
    def coverage(self) -> float:
        return float(self.model.coverage)

    def capture_shares(self) -> dict[str, float]:
        """Measured share of the thorough-search Z each default algorithm captures, by algorithm name."""
        shares = self.metadata.get("capture_shares", {}).get("shares", {})
        return {str(name): float(entry["share"]) for name, entry in shares.items()}


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
            load_model(path, trusted=LOCAL_TRUSTED_TYPES), load_metadata(path.with_suffix(".json"))
        )
    trained = trained_model_path()  # the same choice as regressor.load_base_model
    if trained.is_file():
        return LoadedModel(
            _fast(trained, trained.with_suffix(COMPILED_SUFFIX)), load_metadata(trained.with_suffix(".json"))
        )
    with (
        packaged_file(f"{DEFAULT_ARTIFACT}.skops") as skops_path,
        packaged_file(f"{DEFAULT_ARTIFACT}{COMPILED_SUFFIX}") as compiled_path,
        packaged_file(f"{DEFAULT_ARTIFACT}.json") as metadata_path,
    ):
        return LoadedModel(_fast(skops_path, compiled_path), load_metadata(metadata_path))


#: Fewest rows a scikit-learn model predicts with more than one OpenMP thread.
PARALLEL_ROWS: Final = 1000


def predict_z_intervals(model: ZeModel, features: pd.DataFrame) -> list[ZInterval]:
    """Z_e of each job (row) of ``features`` (columns: feature names; extra ones are ignored), in one
    prediction call: the exporter estimates thousands of jobs a cycle."""
    names = list(getattr(model, "feature_names_in_", MODEL_FEATURES))
    missing = [n for n in names if n not in features.columns]
    if missing:
        raise ModelError(
            f"the model needs feature(s) {', '.join(missing)} that the job's features lack; "
            "retrain it with zest train"
        )
    if features.empty:
        return []
    frame = pd.DataFrame(features[names].to_numpy(dtype=np.float64), columns=names)
    threads: AbstractContextManager[Any] = nullcontext()
    if not isinstance(model, CompiledZeModel) and len(frame) < PARALLEL_ROWS:
        # A few rows are predicted fastest on one thread: OpenMP threads fighting for a GPU node's busy
        # cores cost seconds (bench/bench_startup.py); thousands of rows of an exporter cycle use them all.
        from threadpoolctl import threadpool_limits

        threads = threadpool_limits(limits=1, user_api="openmp")
    with threads:
        low, mid, high = model.predict_interval(frame)
    return [ZInterval(float(a), float(b), float(c)) for a, b, c in zip(low, mid, high, strict=True)]


def predict_z_interval(model: ZeModel, row: pd.Series) -> ZInterval:
    """Z_e of one job from its feature row (indexed by feature name; extra entries are ignored)."""
    return predict_z_intervals(model, row.to_frame().T)[0]
