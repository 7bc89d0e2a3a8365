"""Fit the performance model's free constants on measured iteration times; write them as JSON.

Library code; ``models/calibrate_perfmodel.py`` is the thin script that runs
:func:`main` with the repository's paths::

    python models/calibrate_perfmodel.py [--data DIR] [--shared DIR] [--out FILE] [--folds K] [--no-cv]
    python models/calibrate_perfmodel.py --held-out [--shared DIR]
    python models/calibrate_perfmodel.py --ranking [--data DIR] [--shared DIR]

Three measured data sets, read from the shared data folder and never copied
into this repository (see each one's README for provenance):

* vTrain (Bang et al., MICRO 2024; MIT licence): iteration times of GPT-style
  models, Megatron-DeepSpeed, one node of 2-8 A100s, activation checkpointing
  on (``use_checkpoint: true`` in every single-node validation config: full
  recomputation), unfused attention. Whether its A100s have 40 or 80 GB is not
  stated in the sources read; the fit assumes 80 GB SXM.
* llm-foundry (mosaicml/llm-foundry at 8c8dd48, Apache-2.0): MPT throughput,
  FSDP, FlashAttention, A100 40/80 GB and H100, 8-128 GPUs.
* torchtitan (pytorch/torchtitan at b5bcd76, BSD-3-Clause): Llama 3.1
  throughput, FSDP (+TP), FlashAttention, H100, 8-256 GPUs.

Two GPU types are fitted (:data:`FITTED_GPUS`), each by weighted least squares
on log iteration time (``scipy.optimize.least_squares``), each study given the
same total weight: ``a100-80gb`` on vTrain and llm-foundry's A100 rows (the
40 GB rows predicted with the constants :func:`derive` gives, so they inform
the fit too), ``h100-sxm`` on llm-foundry's H100 BF16 rows and torchtitan's BF16
rows. Every other GPU type is derived from the fitted GPU nearest in peak
FLOPs (:func:`derived_from`): the efficiencies, overheads and latencies carry
over; the matmul size at half efficiency scales with the machine balance (peak
FLOPs over HBM bandwidth), since a matmul needs proportionally more work per
byte to saturate a GPU with more FLOPs per byte. FP8/Float8 rows, asynchronous
TP, context and torchtitan's pipeline parallelism cannot be expressed and are
left out (listed in the output with why).

Reported: in-sample error by study and GPU type; held-out error from a
cross-validation whose folds are grouped by model shape (hidden size and
layers, whichever study ran it; :func:`grouped_cross_validation`), by GPU
type and by GPU count; and vTrain's own figures: MAPE and, within each group
of rows that share the model and workload (# GPUs, global batch, hidden size,
heads, layers, sequence length), the Spearman rank correlation of predicted
and measured time (median and IQR over groups of >= 3 rows) and how often the
predicted fastest configuration is the measured fastest.

``--held-out`` fits nothing and writes nothing: it prints the error of the
written constants on the llm-foundry and torchtitan tables by GPU type and
count and the Spearman correlation within each table and model
(:func:`held_out_predictions`, :func:`held_out_summary`). Since those tables
are now fitted on, these are in-sample figures; the held-out ones are the
cross-validation's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.optimize import least_squares
from scipy.stats import spearmanr

from collectors import gpuspecs
from estimator.perfmodel.iteration import (
    JobSpec,
    PerfConstants,
    iteration,
    iteration_seconds,
    load_constants,
    tokens_per_second,
)

DATA_FILE = "measured_single_node.csv"
FITTED_GPU = gpuspecs.A100_80GB
#: The GPU types whose constants are fitted; every other type's are derived from the nearest of them.
FITTED_GPUS: tuple[str, ...] = (gpuspecs.A100_80GB.key, gpuspecs.H100_SXM.key)
#: Host-side constants (Python, launches, NCCL step latency): the H100 rows (FSDP, almost no TP or PP)
#: cannot tell them apart from the GPU's, so the H100 fit takes them from the A100 fit (vTrain's TP and
#: PP layouts pin them down) and fits only the GPU's.
HOST_CONSTANTS: tuple[str, ...] = (
    "layer_host_seconds",
    "overlap_sharpness",
    "collective_latency_seconds",
    "p2p_latency_seconds",
    "iteration_overhead_seconds",
)
HOST_CONSTANTS_FROM: dict[str, str] = {gpuspecs.H100_SXM.key: gpuspecs.A100_80GB.key}
#: GPT-2's vocabulary, which Megatron pads to a multiple of 128·t (vTrain's default vocab_size).
GPT2_VOCAB = 50257
GROUP_KEYS = ("# GPUs", "global batch", "hidden size", "attention heads", "# layers", "sequence length")
MEASURED = "iteration time (ms)"
FOLDS = 5
#: Residual evaluations per starting point of one fit (scipy's max_nfev).
MAX_EVALUATIONS = 300

# Fitted constants: name, initial value, lower and upper bound (in the units of PerfConstants).
PARAMETERS: tuple[tuple[str, float, float, float], ...] = (
    ("matmul_efficiency_max", 0.6, 0.05, 0.9),
    ("matmul_half_size_elements", 1.0e6, 1.0e4, 1.0e9),
    ("matmul_efficiency_exponent", 0.8, 0.2, 1.0),
    ("memory_traffic_per_activation_byte", 2.0, 0.0, 20.0),
    ("layer_host_seconds", 3.0e-4, 0.0, 5.0e-3),
    ("overlap_sharpness", 2.0, 1.0, 16.0),
    ("comm_efficiency", 0.6, 0.02, 1.0),
    ("collective_latency_seconds", 2.0e-5, 0.0, 2.0e-3),
    ("p2p_latency_seconds", 1.0e-4, 0.0, 2.0e-2),
    ("iteration_overhead_seconds", 0.02, 0.0, 0.5),
    ("flash_attention_efficiency_ratio", 1.0, 0.2, 2.0),
)
LOG_SCALED = {"matmul_half_size_elements"}  # fitted as log10


def padded_vocab(tensor_parallel: int) -> int:
    multiple = 128 * tensor_parallel
    return math.ceil(GPT2_VOCAB / multiple) * multiple


def read_measurements(data_dir: Path) -> pd.DataFrame:
    path = data_dir / DATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass --data DIR holding {DATA_FILE}")
    frame = pd.read_csv(path)
    missing = [c for c in (*GROUP_KEYS, MEASURED) if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {', '.join(missing)}")
    return frame


def specs_of(frame: pd.DataFrame) -> list[JobSpec]:
    return [
        JobSpec(
            gpu=FITTED_GPU.key,
            num_gpus=int(row["# GPUs"]),
            hidden_size=int(row["hidden size"]),
            attention_heads=int(row["attention heads"]),
            num_layers=int(row["# layers"]),
            sequence_length=int(row["sequence length"]),
            global_batch=int(row["global batch"]),
            micro_batch=int(row["micro batch"]),
            tensor_parallel=int(row["tensor parallelism"]),
            pipeline_parallel=int(row["pipeline parallelism"]),
            data_parallel=int(row["data parallelism"]),
            recompute="full",
            vocab_size=padded_vocab(int(row["tensor parallelism"])),
        )
        for _, row in frame.iterrows()
    ]


def constants_of(theta: npt.NDArray[np.float64], gpu: str) -> PerfConstants:
    values = {
        name: float(10**x if name in LOG_SCALED else x)
        for (name, *_), x in zip(PARAMETERS, theta, strict=True)
    }
    return PerfConstants(gpu=gpu, **values)


def predict_seconds(specs: Sequence[JobSpec], constants: PerfConstants) -> npt.NDArray[np.float64]:
    """Iteration time of each spec: under ``constants``, or under their :func:`derive` for another GPU."""
    per_gpu: dict[str, PerfConstants] = {constants.gpu: constants}
    for spec in specs:
        if spec.gpu not in per_gpu:
            per_gpu[spec.gpu] = derive(constants, spec.gpu_spec)
    return np.array([iteration_seconds(spec, per_gpu[spec.gpu]) for spec in specs])


def fit(
    specs: Sequence[JobSpec],
    measured_seconds: npt.NDArray[np.float64],
    gpu: str = FITTED_GPU.key,
    weights: npt.NDArray[np.float64] | None = None,
    max_evaluations: int = MAX_EVALUATIONS,
    fixed: Mapping[str, float] | None = None,
) -> PerfConstants:
    """Weighted least squares on log time from a few deterministic starting points; the best one wins.

    The constants are ``gpu``'s; rows on another GPU type are predicted with their :func:`derive`.
    ``max_evaluations`` bounds the residual evaluations of each start (fewer: faster, less converged).
    ``fixed`` holds the named constants at the given values instead of fitting them.
    """

    def bound(name: str, value: float) -> float:
        return math.log10(value) if name in LOG_SCALED else value

    held = dict(fixed or {})
    free = [k for k, (n, *_) in enumerate(PARAMETERS) if n not in held]
    full = np.array([bound(n, held.get(n, x0)) for n, x0, _, _ in PARAMETERS])
    lower = np.array([bound(n, lo) for n, _, lo, _ in PARAMETERS])[free]
    upper = np.array([bound(n, hi) for n, _, _, hi in PARAMETERS])[free]
    initial = full[free]
    log_measured = np.log(measured_seconds)
    scale = np.ones(len(specs)) if weights is None else np.sqrt(weights)

    def complete(theta: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        values = full.copy()
        values[free] = theta
        return values

    def residuals(theta: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        predicted = predict_seconds(specs, constants_of(complete(theta), gpu))
        return np.asarray(scale * (np.log(predicted) - log_measured), dtype=np.float64)

    best: Any = None
    for start in (initial, lower + 0.3 * (upper - lower)):
        result = least_squares(
            residuals,
            start,
            bounds=(lower, upper),
            x_scale=np.maximum(np.abs(start), 1e-4),
            max_nfev=max_evaluations,
        )
        if best is None or result.cost < best.cost:
            best = result
    return constants_of(complete(best.x), gpu)


def at_bounds(constants: PerfConstants) -> list[str]:
    """Names of the fitted constants that ended on a bound of their range (the data wanted further)."""
    hits = []
    for name, _, lo, hi in PARAMETERS:
        value = getattr(constants, name)
        if math.isclose(value, lo, rel_tol=1e-6, abs_tol=1e-12) or math.isclose(value, hi, rel_tol=1e-6):
            hits.append(f"{name} = {value:g} (range {lo:g}-{hi:g})")
    return hits


@dataclass(frozen=True)
class Scores:
    mape_percent: float
    spearman_median: float
    spearman_q25: float
    spearman_q75: float
    groups_scored: int
    best_config_agreement_ratio: float


def score(frame: pd.DataFrame, predicted_seconds: npt.NDArray[np.float64]) -> Scores:
    """vTrain's figures: MAPE, Spearman within its groups, how often the fastest is found."""
    measured = frame[MEASURED].to_numpy() / 1000.0
    mape = float(np.mean(np.abs(predicted_seconds - measured) / measured) * 100.0)
    scored = frame.assign(_pred=predicted_seconds, _meas=measured)
    rhos: list[float] = []
    agree: list[bool] = []
    for _, group in scored.groupby(list(GROUP_KEYS), sort=True):
        agree.append(bool(group["_pred"].idxmin() == group["_meas"].idxmin()))
        if len(group) >= 3:
            rhos.append(float(spearmanr(group["_pred"], group["_meas"]).statistic))
    q25, median, q75 = np.percentile(rhos, [25, 50, 75])
    return Scores(mape, float(median), float(q25), float(q75), len(rhos), float(np.mean(agree)))


def derive(fitted: PerfConstants, target: gpuspecs.GpuSpec) -> PerfConstants:
    """Carry the fitted constants to ``target``: scale the half-efficiency size by machine balance."""
    source = gpuspecs.get(fitted.gpu)

    def balance(g: gpuspecs.GpuSpec) -> float:
        return g.peak_bf16_flops_per_second / g.hbm_bytes_per_second

    values = {f.name: getattr(fitted, f.name) for f in fields(fitted) if f.name != "gpu"}
    values["matmul_half_size_elements"] *= balance(target) / balance(source)
    return PerfConstants(gpu=target.key, **values)


def derived_from(target: gpuspecs.GpuSpec) -> str:
    """The fitted GPU whose constants ``target`` takes (:func:`derive`): the one nearest in peak FLOPs."""
    peak = target.peak_bf16_flops_per_second
    return min(FITTED_GPUS, key=lambda k: abs(math.log(gpuspecs.get(k).peak_bf16_flops_per_second / peak)))


# --- the calibration set: vTrain, llm-foundry and torchtitan --------------------------------------

#: Columns of :attr:`CalibrationSet.frame`: one measured iteration per row. ``shape`` (hidden size and
#: layers) is what the cross-validation holds out: one model, whichever study ran it.
CALIBRATION_COLUMNS = ("study", "model", "shape", "gpu", "num_gpus", "measured_seconds")


@dataclass(frozen=True)
class CalibrationSet:
    """The measured rows the constants are fitted on, their job specs, and the rows left out and why."""

    frame: pd.DataFrame  # CALIBRATION_COLUMNS; index 0..n-1
    specs: tuple[JobSpec, ...]  # row i's job spec
    not_expressed: pd.DataFrame  # study, note, rows
    sha256: dict[str, str]  # file (relative to the shared data folder) -> sha256


def _shape(spec: JobSpec) -> str:
    return f"h{spec.hidden_size}-l{spec.num_layers}"


def calibration_set(vtrain_dir: str | Path, shared_dir: str | Path) -> CalibrationSet:
    """vTrain's table (``vtrain_dir``) and the expressible llm-foundry and torchtitan rows (``shared_dir``).

    Seconds per iteration: vTrain's measured time; global batch · sequence / tokens per second for the
    throughput tables.
    """
    vtrain = read_measurements(Path(vtrain_dir))
    specs: list[JobSpec] = specs_of(vtrain)
    records = [
        {
            "study": "vtrain",
            "model": _shape(spec),
            "shape": _shape(spec),
            "gpu": spec.gpu,
            "num_gpus": spec.num_gpus,
            "measured_seconds": float(ms) / 1000.0,
        }
        for spec, ms in zip(specs, vtrain[MEASURED], strict=True)
    ]
    root = Path(shared_dir)
    sha = {DATA_FILE: hashlib.sha256((Path(vtrain_dir) / DATA_FILE).read_bytes()).hexdigest()}
    skipped = []
    for study, read in (("llm-foundry", _mpt_rows), ("torchtitan", _llama_rows)):
        path = root / HELD_OUT_FILES[study]
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; pass the shared data folder holding it")
        sha[HELD_OUT_FILES[study]] = hashlib.sha256(path.read_bytes()).hexdigest()
        for row in read(pd.read_csv(path)):
            if row.spec is None:
                skipped.append({"study": study, "note": row.note})
                continue
            tokens = row.spec.global_batch * row.spec.sequence_length
            specs.append(row.spec)
            records.append(
                {
                    "study": study,
                    "model": row.model,
                    "shape": _shape(row.spec),
                    "gpu": row.spec.gpu,
                    "num_gpus": row.num_gpus,
                    "measured_seconds": tokens / row.measured_tokens_per_second,
                }
            )
    frame = pd.DataFrame.from_records(records, columns=list(CALIBRATION_COLUMNS))
    not_expressed = (
        pd.DataFrame(skipped, columns=["study", "note"]).groupby(["study", "note"]).size().rename("rows")
    )
    return CalibrationSet(frame, tuple(specs), not_expressed.reset_index(), sha)


def family_rows(frame: pd.DataFrame, gpu: str) -> npt.NDArray[np.intp]:
    """Positions of the rows whose constants derive from fitted ``gpu`` (its own and its derived GPUs')."""
    owner = frame["gpu"].map(lambda k: derived_from(gpuspecs.get(k)))
    return np.flatnonzero((owner == gpu).to_numpy())


def study_weights(studies: pd.Series) -> npt.NDArray[np.float64]:
    """Each study the same total weight (vTrain's 1,103 rows would drown the others), mean weight 1."""
    counts = studies.map(studies.value_counts())
    weights = len(studies) / (studies.nunique() * counts.to_numpy(dtype=np.float64))
    return np.asarray(weights, dtype=np.float64)


#: One fit: the fitted GPU, the rows' specs, measured seconds, weights, evaluation budget, held constants.
_FitTask = tuple[str, list[JobSpec], npt.NDArray[np.float64], npt.NDArray[np.float64], int, dict[str, float]]


def _fit_task(task: _FitTask) -> PerfConstants:
    gpu, specs, measured, weights, budget, fixed = task
    return fit(specs, measured, gpu, weights, budget, fixed)


def _fit_all(tasks: list[_FitTask], processes: int) -> list[PerfConstants]:
    # each fit is deterministic, so running them in parallel changes nothing but the time
    if processes <= 1 or len(tasks) <= 1:
        return [_fit_task(t) for t in tasks]
    with ProcessPoolExecutor(max_workers=processes) as pool:
        return list(pool.map(_fit_task, tasks))


def _fit_folds(
    data: CalibrationSet, train_sets: list[npt.NDArray[np.intp]], processes: int, max_evaluations: int
) -> list[dict[str, PerfConstants]]:
    """The fitted GPUs' constants on each set of training rows, in :data:`FITTED_GPUS` order.

    A GPU in :data:`HOST_CONSTANTS_FROM` takes the host-side constants from the other GPU's fit on the
    same training rows, so its fits wait for those.
    """
    results: list[dict[str, PerfConstants]] = [{} for _ in train_sets]
    for gpu in FITTED_GPUS:
        tasks, where = [], []
        for n, train in enumerate(train_sets):
            rows = np.intersect1d(family_rows(data.frame, gpu), train)
            if len(rows) == 0:
                continue
            part = data.frame.iloc[rows]
            source = HOST_CONSTANTS_FROM.get(gpu)
            fixed = {} if source is None else {k: getattr(results[n][source], k) for k in HOST_CONSTANTS}
            tasks.append(
                (
                    gpu,
                    [data.specs[int(i)] for i in rows],
                    part["measured_seconds"].to_numpy(dtype=np.float64),
                    study_weights(part["study"]),
                    max_evaluations,
                    fixed,
                )
            )
            where.append(n)
        for n, constants in zip(where, _fit_all(tasks, processes), strict=True):
            results[n][gpu] = constants
    return results


def fit_all(
    data: CalibrationSet, processes: int = 1, max_evaluations: int = MAX_EVALUATIONS
) -> dict[str, PerfConstants]:
    """The constants of each of :data:`FITTED_GPUS`, fitted on its rows, each study weighted alike."""
    everything = np.arange(len(data.frame), dtype=np.intp)
    return _fit_folds(data, [everything], processes, max_evaluations)[0]


def shape_folds(shapes: pd.Series, folds: int = FOLDS) -> npt.NDArray[np.intp]:
    """The fold of each row: the distinct shapes, ordered by size (h²·l, then name), dealt round-robin."""

    def size(shape: str) -> tuple[int, str]:
        hidden, layers = (int(x[1:]) for x in shape.split("-"))
        return hidden * hidden * layers, shape

    order = sorted(shapes.unique(), key=size)
    fold_of = {shape: k % folds for k, shape in enumerate(order)}
    return np.asarray(shapes.map(fold_of).to_numpy(), dtype=np.intp)


def grouped_cross_validation(
    data: CalibrationSet, folds: int = FOLDS, processes: int = 1, max_evaluations: int = MAX_EVALUATIONS
) -> pd.DataFrame:
    """Held-out predictions: each row predicted by constants fitted without any row of its model shape.

    The shapes of all rows are dealt into ``folds`` folds (:func:`shape_folds`); each fold is predicted
    by constants refitted on the others (:func:`fit_all`'s procedure, no GPU type seeing the fold).
    Returns :attr:`CalibrationSet.frame` plus ``fold``, ``predicted_seconds`` and ``error_percent`` =
    100·(predicted − measured)/measured.
    """
    frame = data.frame
    fold = shape_folds(frame["shape"], folds)
    ks = sorted(set(fold.tolist()))
    train_sets = [np.flatnonzero(fold != k) for k in ks]
    predicted = np.full(len(frame), np.nan)
    for k, fitted in zip(ks, _fit_folds(data, train_sets, processes, max_evaluations), strict=True):
        for gpu, constants in fitted.items():
            test = np.intersect1d(family_rows(frame, gpu), np.flatnonzero(fold == k))
            predicted[test] = predict_seconds([data.specs[int(i)] for i in test], constants)
    measured = frame["measured_seconds"].to_numpy(dtype=np.float64)
    return frame.assign(
        fold=fold, predicted_seconds=predicted, error_percent=100.0 * (predicted - measured) / measured
    )


def error_table(predictions: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Rows, MAPE and median signed error (%) of the iteration time, by the columns ``by``."""
    scored = predictions.dropna(subset=["error_percent"]).assign(ape=lambda f: f["error_percent"].abs())
    grouped = scored.groupby(list(by), sort=True)
    return pd.DataFrame(
        {
            "rows": grouped.size(),
            "mape_percent": grouped["ape"].mean(),
            "median_error_percent": grouped["error_percent"].median(),
        }
    ).reset_index()


def rounded(value: float) -> float:
    return float(f"{value:.6g}")


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in frame.to_dict(orient="records"):
        out.append(
            {
                str(k): rounded(v) if isinstance(v, float) else int(v) if isinstance(v, np.integer) else v
                for k, v in row.items()
            }
        )
    return out


def _figures(s: Scores) -> dict[str, float | int]:
    return {k: rounded(v) if isinstance(v, float) else v for k, v in s.__dict__.items()}


def all_constants(fitted: dict[str, PerfConstants]) -> dict[str, PerfConstants]:
    """Every GPU type's constants: the fitted ones, and the others derived from the nearest fitted GPU."""
    return {
        gpu.key: fitted[gpu.key] if gpu.key in fitted else derive(fitted[derived_from(gpu)], gpu)
        for gpu in gpuspecs.GPUS
    }


def document(
    data: CalibrationSet,
    vtrain: pd.DataFrame,
    fitted: dict[str, PerfConstants],
    cv: pd.DataFrame | None,
    folds: int,
) -> dict[str, Any]:
    """The JSON written to ``perfmodel_constants.json``: constants, fit and held-out figures, provenance."""
    constants = {
        key: {f.name: rounded(getattr(c, f.name)) for f in fields(c) if f.name != "gpu"}
        for key, c in all_constants(fitted).items()
    }
    derived = {key: derived_from(gpuspecs.get(key)) for key in constants if key not in fitted}
    every = all_constants(fitted)
    predicted = np.array([iteration_seconds(s, every[s.gpu]) for s in data.specs])
    measured = data.frame["measured_seconds"].to_numpy(dtype=np.float64)
    in_sample_frame = data.frame.assign(
        predicted_seconds=predicted, error_percent=100.0 * (predicted - measured) / measured
    )
    vtrain_rows = np.flatnonzero((data.frame["study"] == "vtrain").to_numpy())
    fit_section: dict[str, Any] = {
        "rows": _records(data.frame.groupby(["study", "gpu"]).size().rename("rows").reset_index()),
        "weights": "each study the same total weight within a fitted GPU's rows",
        "assumptions": [
            "vTrain: full activation recomputation (validation configs: use_checkpoint true), standard "
            "(unfused) attention, A100 SXM4 80 GB (40/80 GB not stated in the sources read), one node",
            f"vTrain: vocabulary {GPT2_VOCAB} padded to a multiple of 128·t",
            "llm-foundry MPT: GPT shape, FlashAttention, FSDP as the table's sharding, t = p = 1; "
            "ALiBi not modelled",
            "torchtitan Llama 3.1: nearest GPT shape (GQA and SwiGLU not modelled), FlashAttention, FSDP; "
            "H100 96 GB 500 W as h100-sxm; torch.compile not modelled",
        ],
        "constants_at_a_bound": {gpu: at_bounds(c) for gpu, c in fitted.items()},
        "in_sample": _figures(score(vtrain, in_sample_frame["predicted_seconds"].to_numpy()[vtrain_rows])),
        "in_sample_by_study_and_gpu": _records(error_table(in_sample_frame, ["study", "gpu"])),
        "spearman": "vTrain: within each group of >= 3 rows; median and 25/75th percentiles over groups",
    }
    held_out: dict[str, Any] | None = None
    if cv is not None:
        vtrain_cv = score(vtrain, cv["predicted_seconds"].to_numpy()[vtrain_rows])
        held_out = {
            "method": (
                f"{folds}-fold cross-validation per fitted GPU, folds grouped by model shape (hidden size, "
                "layers; whichever study ran it), each fold refitted on the others; error of the iteration "
                "time, 100·(predicted − measured)/measured"
            ),
            "by_study": _records(error_table(cv, ["study"])),
            "by_gpu": _records(error_table(cv, ["gpu"])),
            "by_num_gpus": _records(error_table(cv, ["num_gpus"])),
            "by_study_and_gpu": _records(error_table(cv, ["study", "gpu"])),
            "vtrain": _figures(vtrain_cv),
        }
    return {
        "about": (
            "Efficiency constants of estimator.perfmodel.iteration, one set per GPU type. "
            f"{' and '.join(fitted)} are fitted (weighted least squares on log iteration time) on measured "
            "iteration times: vTrain and llm-foundry's A100 rows for a100-80gb (its a100-40gb rows through "
            "the derivation), llm-foundry's H100 and torchtitan's BF16 rows for h100-sxm. The other GPU "
            "types are derived from the fitted GPU nearest in peak FLOPs by scaling with their datasheet "
            "figures (matmul_half_size_elements by machine balance = peak BF16 FLOPs / HBM bandwidth; the "
            "rest unchanged), not measured. Written by models/calibrate_perfmodel.py."
        ),
        "fitted_gpus": list(fitted),
        "derived_gpus": derived,
        "constants": constants,
        "fit": fit_section,
        "held_out": held_out,
        "not_expressed": _records(data.not_expressed),
        "data": {
            "files": data.sha256,
            "sources": [
                "vTrain measured validation data (single node, 2-8 A100 GPUs, Megatron-DeepSpeed): Bang, "
                "Choi, Kim, Kim and Rhu, 'vTrain: A Simulation Framework for Evaluating Cost-effective and "
                "Compute-optimal Large Language Model Training', MICRO 2024; "
                "github.com/VIA-Research/vTrain, MIT licence",
                "llm-foundry MPT benchmark tables: mosaicml/llm-foundry, "
                "scripts/train/benchmarking/README.md at 8c8dd48, Apache-2.0",
                "torchtitan Llama 3.1 benchmark tables: pytorch/torchtitan, benchmarks/ at b5bcd76, "
                "BSD-3-Clause",
            ],
        },
    }


def main(argv: Sequence[str] | None = None, *, default_data: Path, default_out: Path) -> int:
    """Fit, cross-validate and write the constants; ``default_data``/``default_out`` are the caller's paths.

    With ``--held-out`` only print the error of the written constants on the llm-foundry and torchtitan
    tables under ``--shared`` (by default the folder above ``default_data``), fitting and writing nothing.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data, help=f"directory holding {DATA_FILE}")
    parser.add_argument(
        "--shared",
        type=Path,
        default=default_data.parent,
        help=f"folder holding {' and '.join(HELD_OUT_FILES.values())}",
    )
    parser.add_argument("--out", type=Path, default=default_out, help="constants file to write")
    parser.add_argument("--folds", type=int, default=FOLDS, help="cross-validation folds (grouped by model)")
    parser.add_argument("--no-cv", action="store_true", help="skip the cross-validation (writes no held-out)")
    parser.add_argument("--processes", type=int, default=2, help="fits run at once (the result is the same)")
    parser.add_argument(
        "--held-out",
        action="store_true",
        help="print the error of the written constants on llm-foundry and torchtitan (writes nothing)",
    )
    parser.add_argument(
        "--ranking",
        action="store_true",
        help="print how well the held-out model ranks each vTrain study's configurations (writes nothing)",
    )
    args = parser.parse_args(argv)
    if args.ranking:
        return _print_ranking(args.data, args.shared, args.out, args.folds, args.processes)
    if args.held_out:
        try:
            predictions = held_out_predictions(args.shared, args.out if args.out.is_file() else None)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(held_out_markdown(held_out_summary(predictions)), end="")
        return 0
    try:
        data = calibration_set(args.data, args.shared)
        vtrain = read_measurements(args.data)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fitted = fit_all(data, args.processes)
    cv = None if args.no_cv else grouped_cross_validation(data, args.folds, args.processes)
    doc = document(data, vtrain, fitted, cv, args.folds)
    args.out.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    s = doc["fit"]["in_sample"]
    print(
        f"vTrain in-sample: MAPE {s['mape_percent']:.1f}%, "
        f"Spearman within groups median {s['spearman_median']:.3f}"
    )
    print("in-sample by study and GPU:\n" + error_table_text(doc["fit"]["in_sample_by_study_and_gpu"]))
    if doc["held_out"] is not None:
        h = doc["held_out"]
        print(f"vTrain held-out: MAPE {h['vtrain']['mape_percent']:.1f}%")
        for name in ("by_study_and_gpu", "by_gpu", "by_num_gpus"):
            print(f"held-out {name}:\n" + error_table_text(h[name]))
    for gpu in fitted:
        print(f"constants of {gpu}: {doc['constants'][gpu]}")
    print(f"wrote {args.out}")
    return 0


def _print_ranking(data_dir: Path, shared: Path, constants_path: Path, folds: int, processes: int) -> int:
    """``--ranking``: the top-1 / top-3 figures of :mod:`estimator.perfmodel.ranking_check`, as Markdown."""
    from estimator.perfmodel.ranking_check import ranking_check, ranking_markdown, study_picks

    try:
        data = calibration_set(data_dir, shared)
        vtrain = read_measurements(data_dir)
        shipped = load_constants(FITTED_GPU.key, constants_path) if constants_path.is_file() else None
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cv = grouped_cross_validation(data, folds, processes)
    rows = np.flatnonzero((data.frame["study"] == "vtrain").to_numpy())
    held_out = ranking_check(study_picks(vtrain, cv["predicted_seconds"].to_numpy()[rows]))
    in_sample = None
    if shipped is not None:
        in_sample = ranking_check(study_picks(vtrain, predict_seconds(specs_of(vtrain), shipped)))
    print(ranking_markdown(held_out, in_sample), end="")
    return 0


def error_table_text(records: list[dict[str, Any]]) -> str:
    """Records of :func:`error_table` as a Markdown table."""
    frame = pd.DataFrame(records)
    return _markdown_table(frame) + "\n"


# --- held-out error on measured data the model never saw --------------------------------------------

#: Measured throughput tables read by :func:`held_out_predictions`, relative to the shared data folder.
HELD_OUT_FILES: dict[str, str] = {
    "llm-foundry": "llm-foundry/mpt_throughput.csv",
    "torchtitan": "torchtitan/llama3_throughput.csv",
}
#: MPT shapes (d_model, n_heads, n_layers) from llm-foundry's pretrain YAMLs (the data's README).
MPT_SHAPES: dict[str, tuple[int, int, int]] = {
    "125m": (768, 12, 12),
    "350m": (1024, 16, 24),
    "760m": (1536, 12, 24),
    "1b": (2048, 16, 24),
    "3b": (2560, 20, 32),
    "7b": (4096, 32, 32),
    "13b": (5120, 40, 40),
    "30b": (7168, 56, 48),
    "70b": (8192, 64, 80),
}
MPT_VOCAB = 50368
MPT_GPUS = {"a100_40gb": "a100-40gb", "a100_80gb": "a100-80gb", "h100_80gb": "h100-sxm"}
MPT_SHARDING = {"FULL_SHARD": "full", "SHARD_GRAD_OP": "zero2", "NO_SHARD": "none"}
#: Llama 3.1 as the nearest GPT shape (hidden, heads, layers): GQA and the SwiGLU FFN make a layer
#: 13·h² (8B) and 12.75·h² (70B) parameters where the model counts 12·h², so it undercounts their
#: FLOPs by about 8 % and 6 %; the vocabulary is Llama 3's 128,256.
LLAMA_SHAPES: dict[str, tuple[int, int, int]] = {
    "Llama3.1-8B": (4096, 32, 32),
    "Llama3-8B": (4096, 32, 32),
    "Llama3.1-70B": (8192, 64, 80),
    "Llama3-70B": (8192, 64, 80),
}
LLAMA_VOCAB = 128256
LLAMA_SEQUENCE = 8192  # torchtitan's default, which the tables' "8192(default)" names
HELD_OUT_COLUMNS = (
    "study",
    "group",
    "model",
    "gpu",
    "num_gpus",
    "configuration",
    "measured_tokens_per_second",
    "predicted_tokens_per_second",
    "error_percent",
    "fits",
    "note",
)


@dataclass(frozen=True)
class _Measured:
    study: str
    group: str
    model: str
    gpu: str
    num_gpus: int
    configuration: str
    measured_tokens_per_second: float
    spec: JobSpec | None  # None: not expressible, ``note`` says why
    note: str


def _mpt_rows(frame: pd.DataFrame) -> list[_Measured]:
    rows = []
    for _, r in frame.iterrows():
        model, n = str(r["model"]), int(r["n_gpus"])
        config = (
            f"seq {int(r['seq_len'])}, micro {int(r['micro_batch_size'])}x{int(r['grad_accum'])}, "
            f"{'AC' if bool(r['activation_checkpointing']) else 'no AC'}"
        )
        spec: JobSpec | None = None
        note = "ALiBi (no position table) not modelled"
        if "fp8" in str(r["precision"]):
            note = "FP8: the model knows only BF16 tensor cores"
        elif bool(r["activation_cpu_offload"]):
            note = "activation CPU offload not modelled"
        elif r["sharding_strategy"] not in MPT_SHARDING or model not in MPT_SHAPES:
            note = f"sharding {r['sharding_strategy']} or model {model} unknown"
        else:
            hidden, heads, layers = MPT_SHAPES[model]
            spec = JobSpec(
                gpu=MPT_GPUS[str(r["gpu"])],
                num_gpus=n,
                hidden_size=hidden,
                attention_heads=heads,
                num_layers=layers,
                sequence_length=int(r["seq_len"]),
                global_batch=int(r["global_batch_size"]),
                micro_batch=int(r["micro_batch_size"]),
                tensor_parallel=1,
                pipeline_parallel=1,
                data_parallel=n,
                # llm-foundry's activation checkpointing recomputes whole blocks
                recompute="full" if bool(r["activation_checkpointing"]) else "none",
                vocab_size=MPT_VOCAB,
                sharding=MPT_SHARDING[str(r["sharding_strategy"])],
                attention="flash",
            )
        rows.append(
            _Measured(
                "llm-foundry",
                str(r["table"]),
                model,
                str(r["gpu"]),
                n,
                config,
                float(r["throughput_tokens_per_s"]),
                spec,
                note,
            )
        )
    return rows


def mpt_job_specs(frame: pd.DataFrame) -> list[tuple[JobSpec | None, str]]:
    """Each row of llm-foundry's MPT table as :func:`held_out_predictions` expresses it, in order: its job
    spec (None where it cannot be expressed) and the note saying how, or why not."""
    return [(row.spec, row.note) for row in _mpt_rows(frame)]


def _llama_rows(frame: pd.DataFrame) -> list[_Measured]:
    rows = []
    for _, r in frame.iterrows():
        model, n = str(r["model"]), int(r["n_gpus"])
        techniques = str(r["techniques_config"])
        layout = str(r["parallelism"]).replace(" ", "")
        config = (
            f"{layout}, local batch {int(r['local_batch_size'])}, AC {r['activation_checkpointing']}, "
            f"{techniques}"
        )
        spec: JobSpec | None = None
        note = (
            "GPT shape for Llama (GQA, SwiGLU: ~6-8 % fewer FLOPs); H100 96 GB HBM2e at 500 W as h100-sxm"
            + ("; torch.compile not modelled" if "compile" in techniques else "")
        )
        if "float8" in techniques.lower() or "H200" in str(r["hardware"]):
            note = "Float8: the model knows only BF16 tensor cores"
        elif "async" in techniques.lower():
            note = "asynchronous TP (communication hidden behind matmuls) not modelled"
        elif "CP" in layout or "PP" in layout or model not in LLAMA_SHAPES:
            note = "context parallelism / pipeline schedules of torchtitan not expressed"
        else:
            tp = int(layout.split("TP")[1]) if "TP" in layout else 1
            dp = n // tp
            hidden, heads, layers = LLAMA_SHAPES[model]
            local = int(r["local_batch_size"])
            checkpointing = str(r["activation_checkpointing"])
            spec = JobSpec(
                gpu="h100-sxm",
                num_gpus=n,
                hidden_size=hidden,
                attention_heads=heads,
                num_layers=layers,
                sequence_length=LLAMA_SEQUENCE,
                global_batch=local * dp,
                micro_batch=local,
                tensor_parallel=tp,
                pipeline_parallel=1,
                data_parallel=dp,
                # torchtitan's selective (per-op) checkpointing recomputes only element-wise ops: with
                # FlashAttention, selective is no recomputation in the model
                recompute="full" if checkpointing == "full" else "selective",
                vocab_size=LLAMA_VOCAB,
                sharding="full",
                attention="flash",
            )
        rows.append(
            _Measured(
                "torchtitan",
                str(r["table"]),
                model,
                str(r["hardware"]).split(" (")[0],
                n,
                config,
                float(r["tps_per_gpu"]) * n,
                spec,
                note,
            )
        )
    return rows


def held_out_predictions(data_root: str | Path, constants_path: Path | None = None) -> pd.DataFrame:
    """Every measured row of the held-out tables, with the model's tokens/s where the row is expressible.

    ``data_root`` is the shared data folder holding :data:`HELD_OUT_FILES`. Nothing is fitted: the
    constants are the written ones (fitted on these rows too). Rows that cannot be expressed keep a
    NaN prediction and a ``note`` saying why; ``error_percent`` is 100·(predicted − measured)/measured.
    """
    root = Path(data_root)
    rows: list[_Measured] = []
    for study, read in (("llm-foundry", _mpt_rows), ("torchtitan", _llama_rows)):
        path = root / HELD_OUT_FILES[study]
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; pass the shared data folder holding {HELD_OUT_FILES[study]}"
            )
        rows += read(pd.read_csv(path))
    constants: dict[str, PerfConstants] = {}
    records = []
    for row in rows:
        predicted, fits = math.nan, None
        if row.spec is not None:
            key = row.spec.gpu
            if key not in constants:
                constants[key] = (
                    load_constants(key) if constants_path is None else load_constants(key, constants_path)
                )
            breakdown = iteration(row.spec, constants[key])
            predicted = tokens_per_second(row.spec, breakdown)
            fits = breakdown.fits
        records.append(
            {
                "study": row.study,
                "group": row.group,
                "model": row.model,
                "gpu": row.gpu,
                "num_gpus": row.num_gpus,
                "configuration": row.configuration,
                "measured_tokens_per_second": row.measured_tokens_per_second,
                "predicted_tokens_per_second": predicted,
                "error_percent": 100.0
                * (predicted - row.measured_tokens_per_second)
                / row.measured_tokens_per_second,
                "fits": fits,
                "note": row.note,
            }
        )
    return pd.DataFrame.from_records(records, columns=list(HELD_OUT_COLUMNS))


def held_out_summary(predictions: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """MAPE by GPU type and by GPU count (expressed rows), and Spearman within each study/model group.

    Spearman ranks tokens/s per GPU of the configurations of one model in one table (sequence length,
    GPU count, micro-batch, checkpointing), over groups of at least three expressed rows.
    """
    expressed = predictions.dropna(subset=["predicted_tokens_per_second"]).assign(
        ape=lambda f: f["error_percent"].abs()
    )

    def mape(by: list[str]) -> pd.DataFrame:
        grouped = expressed.groupby(by, sort=True)
        return pd.DataFrame(
            {
                "rows": grouped.size(),
                "mape_percent": grouped["ape"].mean(),
                "median_error_percent": grouped["error_percent"].median(),
            }
        ).reset_index()

    rhos = []
    for (study, group, model), g in expressed.groupby(["study", "group", "model"], sort=True):
        if len(g) < 3:
            continue
        per_gpu_pred = g["predicted_tokens_per_second"] / g["num_gpus"]
        per_gpu_meas = g["measured_tokens_per_second"] / g["num_gpus"]
        rhos.append(
            {
                "study": study,
                "group": group,
                "model": model,
                "rows": len(g),
                "spearman": float(spearmanr(per_gpu_pred, per_gpu_meas).statistic),
            }
        )
    skipped = predictions[predictions["predicted_tokens_per_second"].isna()]
    return {
        "by_study": mape(["study"]),
        "by_gpu": mape(["study", "gpu"]),
        "by_num_gpus": mape(["study", "num_gpus"]),
        "spearman": pd.DataFrame(rhos, columns=["study", "group", "model", "rows", "spearman"]),
        "not_expressed": skipped.groupby(["study", "note"]).size().rename("rows").reset_index(),
    }


def held_out_markdown(summary: dict[str, pd.DataFrame]) -> str:
    """The summary as Markdown tables (what ``calibrate_perfmodel.py --held-out`` prints)."""

    parts = []
    for name, title in (
        ("by_study", "MAPE of tokens/s by study"),
        ("by_gpu", "by GPU type"),
        ("by_num_gpus", "by GPU count"),
        ("spearman", "Spearman of tokens/s per GPU within each table and model (>= 3 rows)"),
        ("not_expressed", "rows not expressed"),
    ):
        parts.append(f"{title}:\n\n{_markdown_table(summary[name])}")
    return "\n\n".join(parts) + "\n"


def _markdown_table(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(frame.columns) + " |"
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
    body = [
        "| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([head, rule, *body])
