"""Z_e of many jobs from their features through the shipped model, in one prediction call.

:func:`z_intervals_for` estimates a whole features frame in one prediction
call, one job (estimate-z) or thousands (the exporter). The model is loaded
once per process, compiled where it can be (:mod:`estimator.model.compiled`):
estimates import neither scikit-learn nor skops unless a local model asks
for them. A job lacking features gets an interval
widened for them, and :func:`missing_signals_note` says so in its notes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cache

import numpy as np
import pandas as pd

from estimator.decision.breakeven import ZInterval
from estimator.model.compiled import (
    LoadedModel,
    difficulty,
    load_model_for_estimates,
    local_model_path,
    missing_features_note,
    neighbour_distance,
    predict_z_intervals,
    trained_model_path,
)


@cache
def default_model() -> LoadedModel:
    """The model estimates use, loaded on first use and kept: the local model of ``zest train
    --with-outcomes`` where there is one, else the one shipped with zest."""
    return load_model_for_estimates()


def uses_local_model() -> bool:
    """Whether estimates use a local model (``zest train --with-outcomes``) rather than the shipped one."""
    return local_model_path().is_file()


def model_origin() -> str:
    """Where the estimates' model comes from, for the output's notes."""
    if uses_local_model():
        return (
            f"the local model at {local_model_path()}: the shipped model corrected by this cluster's "
            "recorded tuning studies (zest train --with-outcomes)"
        )
    if trained_model_path().is_file():
        return f"the model trained with zest train at {trained_model_path()}"
    return (
        "the shipped model: trained on simulated telemetry features, with measured A100 tuning outcomes and "
        "the performance model's simulated A100/H100/H200 studies (1-512 GPUs)"
    )


def z_intervals_for(features: pd.DataFrame, model: LoadedModel | None = None) -> list[ZInterval]:
    """Z_e (% of training time, low/mid/high) of each row of ``features`` (columns: feature names).

    One prediction call for all rows; a job lacking features (NaN: signals
    its source does not report) gets an interval widened for them
    (:func:`estimator.model.compiled.predict_z_intervals`). Raises
    :class:`collectors.errors.ModelError` if the features lack a column the
    model needs.
    """
    loaded = model if model is not None else default_model()
    return predict_z_intervals(loaded.model, features, reference=loaded.reference)


def distance_note(features: pd.DataFrame, model: LoadedModel | None = None) -> str | None:
    """How far the job (one row of model features) lies from the training rows and how much that widened
    its interval; None when the model widens every job alike (no training rows or distance scale)."""
    loaded = model if model is not None else default_model()
    names = [str(n) for n in getattr(loaded.model, "feature_names_in_", features.columns)]
    rows = loaded.reference if loaded.reference is not None else None
    reference = rows[names].to_numpy() if rows is not None else getattr(loaded.model, "reference_", None)
    base = getattr(loaded.model, "base_", loaded.model)  # a local model widens as the model it corrects
    scale = float(getattr(base, "distance_scale_", 0.0))
    if reference is None or len(reference) == 0 or scale <= 0:
        return None
    distance = float(neighbour_distance(reference, features[names].to_numpy(dtype=float))[0])
    factor = float(difficulty(np.array([distance]), scale)[0])
    return (
        f"distance from the training jobs {distance:.2f} (held-out training jobs: median {scale:.2f}): "
        f"the interval's widening is {factor:.1f}x that of a job at distance 0"
    )


def domain_note(
    gpu_models: Sequence[str],
    gpus: float,
    hosts: float,
    model: LoadedModel | None = None,
    *,
    sequence_length: int | None = None,
) -> str | None:
    """The estimate's note on what of the job lies outside the rows the model learned from (GPU model,
    GPU count, hosts, sequence length when known); None when nothing does, or the model does not say
    its domain."""
    from collectors import gpuspecs

    loaded = model if model is not None else default_model()
    domain = loaded.metadata.get("training_data", {}).get("domain")
    if not domain:
        return None
    outside = []
    keys = {spec.key if (spec := gpuspecs.from_nvml_name(name)) else name for name in gpu_models}
    unknown = sorted(keys - set(domain["gpu_models"]))
    if unknown:
        outside.append(f"GPU model {', '.join(unknown)} (trained on {', '.join(domain['gpu_models'])})")
    low, high = domain["gpus"]
    if math.isfinite(gpus) and not low <= gpus <= high:
        outside.append(f"{gpus:.0f} GPUs (trained on {low}-{high})")
    if math.isfinite(hosts) and hosts > domain["hosts"][1]:
        outside.append(f"{hosts:.0f} hosts (trained on jobs in 1-{domain['hosts'][1]} nodes)")
    lengths = domain.get("sequence_lengths")
    if sequence_length is not None and lengths and not lengths[0] <= sequence_length <= lengths[1]:
        outside.append(f"sequence length {sequence_length:,} (trained on {lengths[0]:,}-{lengths[1]:,})")
    if not outside:
        return None
    return (
        f"outside the model's training domain: {'; '.join(outside)}: Z_e is an extrapolation there, "
        "with an interval as wide as the job's distance from the training jobs makes it"
    )


def missing_signals_note(
    features: Mapping[str, float] | pd.Series, model: LoadedModel | None = None
) -> str | None:
    """The estimate's note on the features a job lacks (NaN: signals its source does not report) and how
    they widened its Z_e interval; None when the job has every feature the model reads."""
    loaded = model if model is not None else default_model()
    return missing_features_note(loaded.model, features, reference=loaded.reference)
