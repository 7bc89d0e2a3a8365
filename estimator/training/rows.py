"""Training rows for the Z_e model: simulated features of each measured configuration, with its measured Z.

The ground truth is vTrain's measured single-node table (Bang, Choi, Kim, Kim
and Rhu, MICRO 2024; MIT licence): iteration times of GPT-style models on 2-8
A100 GPUs, each model and workload (a *study*) run at several parallel
configurations. Within a study, Z(c) = 100 · (1 − t_best / t_c) is what tuning
from configuration c to the study's best measured configuration gained.

The table has no telemetry, so each configuration's telemetry is *simulated*
by :mod:`estimator.perfmodel.iteration` under the assumptions its calibration made
(A100 SXM4 80 GB, full recomputation, GPT-2 vocabulary padded for TP; see
``models/calibrate_perfmodel.py``) and turned into features by
:mod:`estimator.features.extract`. Features are simulated, labels measured.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from collectors import schema
from collectors.errors import InputError, OutputError
from collectors.util import zest_version
from estimator.decision.breakeven import gain_percent
from estimator.features import extract as features
from estimator.features.extract import FEATURES, HOST_COUNT, job_features, summarize_gpus
from estimator.model.regressor import MODEL_FEATURES, ZeRegressor
from estimator.perfmodel import calibration, search
from estimator.perfmodel import iteration as perfmodel
from estimator.perfmodel.iteration import JobSpec, PerfConstants

__all__ = [
    "DATA_FILE",
    "GROUP_KEYS",
    "STUDY",
    "Z_PERCENT",
    "DataError",
    "StudyData",
    "artifact_metadata",
    "fit_model",
    "measured_z_percent",
    "model_rows",
    "read_study_data",
    "simulate_features",
    "simulated_rows",
    "training_domain",
    "training_rows",
]

#: The measured table's file name, group columns and measured time column (owned by the calibration).
DATA_FILE: Final = calibration.DATA_FILE
GROUP_KEYS: Final = calibration.GROUP_KEYS
MEASURED_MS: Final = calibration.MEASURED
#: The layout columns of the measured table (its README), which the job specs read.
MICRO_BATCH: Final = "micro batch"
TENSOR_PARALLEL: Final = "tensor parallelism"
DATA_PARALLEL: Final = "data parallelism"
PIPELINE_PARALLEL: Final = "pipeline parallelism"
LAYOUT_COLUMNS: Final = (MICRO_BATCH, TENSOR_PARALLEL, DATA_PARALLEL, PIPELINE_PARALLEL)
STUDY: Final = "study"  # integer id of a study (rows sharing GROUP_KEYS), in sorted key order
Z_PERCENT: Final = "z_percent"  # measured Z(c) in % of training time
ITERATION_SECONDS: Final = "iteration_seconds"

# What each training row is besides its features and label: whether its label was measured or simulated,
# the set it is scored in, and where it lies (GPU type and count, sequence length: the model's domain).
LABEL_SOURCE: Final = "label_source"
MEASURED: Final = "measured"
SIMULATED: Final = "simulated"
SET: Final = "set"
VTRAIN_SET: Final = "vTrain, one node"
GPU_MODEL: Final = "gpu_model"
NUM_GPUS: Final = "num_gpus"
SEQUENCE_LENGTH: Final = "sequence_length"
FAMILY: Final = "family"
MEGATRON: Final = "megatron"
FSDP: Final = "fsdp"
#: Weight of a row with a measured label against one with a simulated label, in the fits and the interval's
#: calibration: the measured studies are the truth the simulated ones stand in for. Chosen on the
#: measured rows' cross-validated error: weight 1 gave MAE 6.15 pp there, 3 gave 5.34 (the simulated
#: rows' error unchanged, 8.6 pp).
MEASURED_WEIGHT: Final = 3.0
#: The descriptive columns of every training row, measured or simulated, after FEATURES, STUDY, Z_PERCENT.
DESCRIPTION: Final = (LABEL_SOURCE, GPU_MODEL, NUM_GPUS, SEQUENCE_LENGTH, FAMILY, SET)

#: Telemetry simulated per configuration: short, since the per-second samples of these sub-second
#: iterations are stationary; 1 Hz as a DCGM exporter scrapes.
DEFAULT_MINUTES: Final = 3.0
DEFAULT_SEED: Final = 20240101
#: Simulated studies beside the measured ones (:func:`model_rows`): about 1,700 rows.
DEFAULT_SIMULATED_STUDIES: Final = 200
_START: Final = pd.Timestamp("2024-01-01T00:00:00Z")
#: Bump when the recipe below changes in a way the cache key cannot see.
_RECIPE_VERSION: Final = 1


class DataError(InputError):
    """The measured data is missing or malformed; the message names the file and what to do."""


@dataclass(frozen=True)
class StudyData:
    """The measured table with a study id and measured Z per row, and the file's provenance."""

    frame: pd.DataFrame  # the CSV's columns plus STUDY, Z_PERCENT, ITERATION_SECONDS
    path: Path
    sha256: str

    @property
    def studies(self) -> int:
        return int(self.frame[STUDY].nunique())


def read_study_data(data_dir: str | Path) -> StudyData:
    """Read the measured table from ``data_dir``; add study ids and the measured Z of each row.

    Raises :class:`DataError` when the file is missing, lacks a column, or
    holds a non-positive or missing time.
    """
    directory = Path(data_dir)
    path = directory / DATA_FILE
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"cannot read {path} ({exc.strerror}): pass --data DIR, the folder holding {DATA_FILE}"
        ) from None
    try:
        frame = calibration.read_measurements(directory)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: {exc}") from None
    numeric = [*GROUP_KEYS, *LAYOUT_COLUMNS, MEASURED_MS]
    missing = [c for c in numeric if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}: use the vTrain table as published")
    values = frame[numeric].apply(pd.to_numeric, errors="coerce")
    if values.isna().any().any() or (values[MEASURED_MS] <= 0).any():
        bad = values.index[values.isna().any(axis=1) | (values[MEASURED_MS] <= 0)][0]
        raise DataError(f"{path}: row {bad + 2} has a missing, non-numeric or non-positive value")
    frame = frame.reset_index(drop=True)
    frame[STUDY] = frame.groupby(list(GROUP_KEYS), sort=True).ngroup().astype(np.int64)
    frame[ITERATION_SECONDS] = frame[MEASURED_MS].astype(np.float64) / 1000.0
    frame[Z_PERCENT] = measured_z_percent(frame[ITERATION_SECONDS], frame[STUDY])
    return StudyData(frame, path, hashlib.sha256(raw).hexdigest())


def measured_z_percent(seconds: pd.Series, study: pd.Series) -> pd.Series:
    """Z(c) = 100 · (1 − t_best / t_c) within each study: the gain of tuning c to the study's best, in %."""
    best = seconds.groupby(study).transform("min")
    return pd.Series(gain_percent(best, seconds)).rename(Z_PERCENT)


def job_specs(frame: pd.DataFrame) -> list[JobSpec]:
    """The job spec of each measured row under the calibration's assumptions (A100-80GB, full recompute)."""
    return calibration.specs_of(frame)


def simulate_features(
    spec: JobSpec, constants: PerfConstants, *, job_id: str, minutes: float, seed: int
) -> pd.Series:
    """The features of ``minutes`` of 1 Hz telemetry simulated for ``spec``."""
    frame = perfmodel.simulate_telemetry(
        spec, constants, job_id=job_id, minutes=minutes, seed=seed, start=_START
    )
    return job_features(summarize_gpus(frame)).row


def _cache_key(recipe: Mapping[str, Any], *modules: ModuleType) -> str:
    """A hash of the rows' ``recipe`` and of the code that simulates them (and of ``modules``)."""
    digest = hashlib.sha256()
    for module in (perfmodel, features, schema, *modules):
        digest.update(Path(str(module.__file__)).read_bytes())
    whole = {**recipe, "features": FEATURES, "recipe": _RECIPE_VERSION, "zest": zest_version()}
    digest.update(json.dumps(whole, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _read_cache(cache_dir: Path | None, name: str) -> tuple[pd.DataFrame | None, Path | None]:
    """The rows kept as ``name`` in ``cache_dir`` (None when absent or damaged), and the file to keep
    them in; the folder is made first, so a cache that cannot be written fails before the simulation."""
    if cache_dir is None:
        return None, None
    cache_file = cache_dir / f"{name}.parquet"
    if cache_file.is_file():
        try:
            return pd.read_parquet(cache_file), cache_file
        except (OSError, ValueError):  # cut short or damaged (pyarrow's ArrowInvalid): simulated again
            pass
    _make_cache(cache_dir)
    return None, cache_file


def simulated_rows(
    studies: int,
    *,
    minutes: float = DEFAULT_MINUTES,
    seed: int = DEFAULT_SEED,
    cache_dir: Path | None = None,
    workers: int = 1,
) -> pd.DataFrame:
    """The rows of ``studies`` simulated studies (:func:`estimator.training.simulated.simulated_studies`:
    labels simulated), kept in ``cache_dir`` as :func:`training_rows` keeps its rows."""
    from estimator.training import simulated

    constants = {gpu: repr(perfmodel.load_constants(gpu)) for gpu in simulated.GPU_WEIGHTS}
    recipe = {"studies": studies, "constants": constants, "minutes": minutes, "seed": seed}
    key = _cache_key(recipe, simulated, search)
    cached, cache_file = _read_cache(cache_dir, f"simulated_rows_{key}")
    if cached is not None:
        return cached
    out = simulated.simulated_studies(studies, seed=seed, minutes=minutes, workers=workers)
    _write_cache(out, cache_file, "simulated_rows_")
    return out


def model_rows(
    data: StudyData,
    *,
    simulated_studies: int = DEFAULT_SIMULATED_STUDIES,
    minutes: float = DEFAULT_MINUTES,
    seed: int = DEFAULT_SEED,
    cache_dir: Path | None = None,
    workers: int = 1,
) -> pd.DataFrame:
    """Every row the Z_e model learns from: the measured rows (:func:`training_rows`) and, after them,
    those of ``simulated_studies`` simulated studies, whose study numbers follow the measured ones."""
    measured = training_rows(data, minutes=minutes, seed=seed, cache_dir=cache_dir)
    if simulated_studies < 1:
        return measured
    extra = simulated_rows(
        simulated_studies, minutes=minutes, seed=seed, cache_dir=cache_dir, workers=workers
    )
    extra = extra.assign(**{STUDY: extra[STUDY] + int(measured[STUDY].max()) + 1})
    return pd.concat([measured, extra[list(measured.columns)]], ignore_index=True)


def training_rows(
    data: StudyData,
    *,
    minutes: float = DEFAULT_MINUTES,
    seed: int = DEFAULT_SEED,
    cache_dir: Path | None = None,
) -> pd.DataFrame:
    """One row per measured configuration: its simulated features, STUDY and measured Z_PERCENT.

    Row i is simulated with seed ``seed + i`` (deterministic). With
    ``cache_dir`` the rows are kept there as Parquet, keyed by a hash of the
    data, the constants, the simulation and feature code and the arguments;
    writing new rows there removes the rows of other keys.
    """
    constants = perfmodel.load_constants(calibration.FITTED_GPU.key)
    key = _cache_key({"data": data.sha256, "constants": repr(constants), "minutes": minutes, "seed": seed})
    cached, cache_file = _read_cache(cache_dir, f"training_rows_{key}")
    if cached is not None:
        return cached
    frame = data.frame
    rows = [
        simulate_features(spec, constants, job_id=f"vtrain-{i}", minutes=minutes, seed=seed + i)
        for i, spec in enumerate(job_specs(frame))
    ]
    out = pd.DataFrame(rows, columns=list(FEATURES)).astype(np.float64).reset_index(drop=True)
    out[STUDY] = frame[STUDY].to_numpy()
    out[Z_PERCENT] = frame[Z_PERCENT].to_numpy()
    out[LABEL_SOURCE] = MEASURED
    out[GPU_MODEL] = calibration.FITTED_GPU.key
    out[NUM_GPUS] = frame[GROUP_KEYS[0]].to_numpy(dtype=np.int64)
    out[SEQUENCE_LENGTH] = frame["sequence length"].to_numpy(dtype=np.int64)
    out[FAMILY] = MEGATRON
    out[SET] = VTRAIN_SET
    _write_cache(out, cache_file, "training_rows_")
    return out


def _write_cache(out: pd.DataFrame, cache_file: Path | None, prefix: str) -> None:
    """Keep ``out`` in ``cache_file`` (Parquet), removing the other files of ``prefix`` in its folder."""
    if cache_file is not None:
        partial = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.partial")
        try:
            for stale in cache_file.parent.glob(f"{prefix}*.parquet"):
                stale.unlink()  # rows of older code or data, or a damaged file: never read again
            out.to_parquet(partial, index=False)
            os.replace(partial, cache_file)  # whole or not at all: a killed run leaves no half file
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            raise _cache_error(cache_file.parent, exc) from None


def _make_cache(cache_dir: Path) -> None:
    """Create the cache folder with a ``.gitignore`` that keeps it out of a checkout's commits."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        ignore = cache_dir / ".gitignore"
        if not ignore.exists():
            ignore.write_text(
                "# rows simulated by estimator.training.rows; rebuilt on demand\n*\n", encoding="utf-8"
            )
    except OSError as exc:
        raise _cache_error(cache_dir, exc) from None


def _cache_error(cache_dir: Path, exc: OSError) -> OutputError:
    return OutputError(
        f"cannot write the training rows' cache in {cache_dir} ({exc.strerror or exc}): "
        "pass a writable --cache-dir"
    )


def row_weights(rows: pd.DataFrame) -> npt.NDArray[np.float64]:
    """Each training row's weight: :data:`MEASURED_WEIGHT` for a measured label, 1 for a simulated one."""
    return np.where(rows[LABEL_SOURCE] == MEASURED, MEASURED_WEIGHT, 1.0)


def fit_model(rows: pd.DataFrame, model: ZeRegressor | None = None) -> ZeRegressor:
    """Fit ``model`` (default :class:`ZeRegressor`) on training rows, measured ones weighted
    (:func:`row_weights`); its calibration keeps studies whole."""
    model = ZeRegressor() if model is None else model
    return model.fit(
        rows[list(MODEL_FEATURES)], rows[Z_PERCENT], groups=rows[STUDY], sample_weight=row_weights(rows)
    )


def _rounded(value: Any) -> Any:
    return float(f"{value:.6g}") if isinstance(value, float) else value


def training_domain(rows: pd.DataFrame) -> dict[str, Any]:
    """Where the model's rows lie: the GPU models they were simulated on, the GPU and host counts and the
    sequence lengths."""

    def span(column: str) -> list[int]:
        return [int(rows[column].min()), int(rows[column].max())]

    return {
        "gpu_models": sorted(str(g) for g in rows[GPU_MODEL].unique()),
        "gpus": span(NUM_GPUS),
        "hosts": span(HOST_COUNT),
        "sequence_lengths": span(SEQUENCE_LENGTH),
    }


def artifact_metadata(
    data: StudyData,
    rows: pd.DataFrame,
    model: ZeRegressor,
    capture_shares: Mapping[str, Any],
    *,
    minutes: float = DEFAULT_MINUTES,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """The JSON shipped beside the model: features, coverage, provenance, domain, capture shares; no date."""
    constants_path = perfmodel.DEFAULT_CONSTANTS_PATH
    simulated = rows[rows[LABEL_SOURCE] == SIMULATED]
    return {
        "about": (
            "Z_e model of zest: Z, the share of training time a thorough tuning search saves, in % "
            "(0-100), with a low/mid/high interval, from a job's telemetry features. Features simulated "
            "by estimator.perfmodel.iteration; labels measured (vTrain) and simulated (the performance "
            "model's studies), each row saying which. Built by zest train."
        ),
        "zest_version": zest_version(),
        "model": {
            "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "params": {k: _rounded(v) for k, v in sorted(model.get_params().items())},
            "coverage": _rounded(float(model.coverage)),
            "interval": (
                "normalized conformalized quantile regression: quantile boosting at "
                f"{model.quantiles_[0]:.2g}/{model.quantiles_[1]:.2g}, widened by "
                f"{model.interval_adjustment_:.3g} pp x (1 + d / {model.distance_scale_:.3g}), d the job's "
                "mean distance from its nearest training rows, from out-of-fold misses, folds grouped by "
                "study"
            ),
        },
        "features": list(model.feature_names_in_),
        "target": "z_percent: 100 * (1 - t_best / t_c) within a study",
        "training_data": {
            "file": data.path.name,
            "sha256": data.sha256,
            "rows": len(rows),
            "studies": int(rows[STUDY].nunique()),
            "measured_rows": len(data.frame),
            "measured_studies": data.studies,
            "simulated_rows": len(simulated),
            "simulated_studies": int(simulated[STUDY].nunique()),
            "labels": (
                "measured iteration times (A100, Megatron-DeepSpeed, 2-8 GPUs in one node) for the measured "
                "rows; the performance model's iteration times for the simulated studies (A100/H100/H200, "
                "1-512 GPUs, Megatron 3D layouts and FSDP)"
            ),
            "features": (
                f"simulated: {minutes:g} min of 1 Hz telemetry per configuration from the performance model; "
                f"measured rows as models/calibrate_perfmodel.py assumes ({calibration.FITTED_GPU.key}, full "
                f"recomputation, GPT-2 vocabulary padded for TP), seeds {seed} + row number"
            ),
            "perfmodel_constants_sha256": hashlib.sha256(constants_path.read_bytes()).hexdigest(),
            "domain": training_domain(rows),
            "source": (
                "Bang, Choi, Kim, Kim and Rhu, 'vTrain: A Simulation Framework for Evaluating "
                "Cost-effective and Compute-optimal Large Language Model Training', MICRO 2024; "
                "github.com/VIA-Research/vTrain (KAIST VIA Research Group), MIT licence"
            ),
        },
        "capture_shares": dict(capture_shares),
    }
