"""Fit the performance model's free constants on measured iteration times; write them as JSON.

Library code; ``models/calibrate_perfmodel.py`` is the thin script that runs
:func:`main` with the repository's paths::

    python models/calibrate_perfmodel.py [--data DIR] [--out FILE] [--cv]
    python models/calibrate_perfmodel.py --held-out [--shared DIR]

The data (vTrain, Bang et al., MICRO 2024; MIT licence) holds iteration times
of GPT-style models measured with Megatron-DeepSpeed on one node of A100 GPUs,
2 to 8 of them, with activation checkpointing on (``use_checkpoint: true`` in
every single-node validation config of the vTrain repository, which is full
recomputation). It is read from ``--data`` and never copied into this
repository. The fit is least squares on log iteration time
(``scipy.optimize.least_squares``), one set of constants for the GPU type.
The sources read (vTrain's repository and summaries of the paper) do not say
whether its A100s have 40 or 80 GB; the fit assumes 80 GB SXM. Capacity does
not enter the time model; HBM bandwidth does (memory-bound kernels, optimizer),
so on 40 GB parts (1,555 instead of 2,039 GB/s) the fitted traffic constant
would come out about a quarter lower, with the same predicted times.

Constants of the other GPU types are derived, not fitted: the efficiencies,
overheads and latencies carry over; the matmul size at half efficiency scales
with the machine balance (peak FLOPs over HBM bandwidth), since a matmul
needs proportionally more work per byte to saturate a GPU with more FLOPs
per byte.

Reported: MAPE of the iteration time over all rows, and, within each group of
rows that share the model and workload (# GPUs, global batch, hidden size,
heads, layers, sequence length), the Spearman rank correlation of predicted
and measured time (median and interquartile range over groups with at least
three rows), plus how often the predicted fastest configuration is the
measured fastest; also the same figures on held-out groups (5-fold, by group).

``--held-out`` fits nothing and writes nothing: it predicts measured throughput
the model never saw (llm-foundry's MPT tables, FSDP on A100/H100 at 8-128 GPUs;
torchtitan's Llama 3.1 tables on H100) with the shipped constants and prints
the error by GPU type and GPU count, and the Spearman rank correlation within
each table and model (:func:`held_out_predictions`, :func:`held_out_summary`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Sequence
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
#: GPT-2's vocabulary, which Megatron pads to a multiple of 128·t (vTrain's default vocab_size).
GPT2_VOCAB = 50257
GROUP_KEYS = ("# GPUs", "global batch", "hidden size", "attention heads", "# layers", "sequence length")
MEASURED = "iteration time (ms)"
FOLDS = 5

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
    return np.array([iteration_seconds(spec, constants) for spec in specs])


def fit(specs: Sequence[JobSpec], measured_seconds: npt.NDArray[np.float64]) -> PerfConstants:
    """Least squares on log time from a few deterministic starting points; the best one wins."""

    def bound(name: str, value: float) -> float:
        return math.log10(value) if name in LOG_SCALED else value

    lower = np.array([bound(n, lo) for n, _, lo, _ in PARAMETERS])
    upper = np.array([bound(n, hi) for n, _, _, hi in PARAMETERS])
    initial = np.array([bound(n, x0) for n, x0, _, _ in PARAMETERS])
    log_measured = np.log(measured_seconds)

    def residuals(theta: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.log(predict_seconds(specs, constants_of(theta, FITTED_GPU.key))) - log_measured

    best: Any = None
    for start in (initial, lower + 0.3 * (upper - lower)):
        result = least_squares(
            residuals, start, bounds=(lower, upper), x_scale=np.maximum(np.abs(start), 1e-4), max_nfev=300
        )
        if best is None or result.cost < best.cost:
            best = result
    return constants_of(best.x, FITTED_GPU.key)


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


def cross_validate(frame: pd.DataFrame, specs: Sequence[JobSpec]) -> Scores:
    """Fit on 4/5 of the groups, predict the other fifth; a hash of the group key picks its fold."""
    keys = frame[list(GROUP_KEYS)].astype(str).agg("|".join, axis=1)
    fold = keys.map(lambda k: int(hashlib.sha256(k.encode()).hexdigest(), 16) % FOLDS).to_numpy()
    measured = frame[MEASURED].to_numpy() / 1000.0
    predicted = np.empty(len(frame))
    for k in range(FOLDS):
        train = np.flatnonzero(fold != k)
        test = np.flatnonzero(fold == k)
        constants = fit([specs[int(i)] for i in train], measured[train])
        predicted[test] = predict_seconds([specs[int(i)] for i in test], constants)
    return score(frame, predicted)


def derive(fitted: PerfConstants, target: gpuspecs.GpuSpec) -> PerfConstants:
    """Carry the fitted constants to ``target``: scale the half-efficiency size by machine balance."""
    source = gpuspecs.get(fitted.gpu)

    def balance(g: gpuspecs.GpuSpec) -> float:
        return g.peak_bf16_flops_per_second / g.hbm_bytes_per_second

    values = {f.name: getattr(fitted, f.name) for f in fields(fitted) if f.name != "gpu"}
    values["matmul_half_size_elements"] *= balance(target) / balance(source)
    return PerfConstants(gpu=target.key, **values)


def rounded(value: float) -> float:
    return float(f"{value:.6g}")


def document(
    data_dir: Path, frame: pd.DataFrame, fitted: PerfConstants, in_sample: Scores, held_out: Scores | None
) -> dict[str, Any]:
    constants = {}
    for gpu in gpuspecs.GPUS:
        c = fitted if gpu.key == fitted.gpu else derive(fitted, gpu)
        constants[gpu.key] = {f.name: rounded(getattr(c, f.name)) for f in fields(c) if f.name != "gpu"}
    raw = (data_dir / DATA_FILE).read_bytes()

    def figures(s: Scores) -> dict[str, float | int]:
        return {k: rounded(v) if isinstance(v, float) else v for k, v in s.__dict__.items()}

    fit: dict[str, Any] = {
        "rows": len(frame),
        "groups": int(frame.groupby(list(GROUP_KEYS)).ngroups),
        "assumptions": [
            "full activation recomputation (vTrain validation configs: use_checkpoint true)",
            f"vocabulary {GPT2_VOCAB} padded to a multiple of 128·t",
            "A100 SXM4 80 GB (the 40/80 GB variant is not stated in the sources read)",
            "single node: all collectives over NVLink",
        ],
        "constants_at_a_bound": at_bounds(fitted),
        "in_sample": figures(in_sample),
        "spearman": "within each group of >= 3 rows; median and 25/75th percentiles over groups",
    }
    if held_out is not None:
        fit[f"held_out_{FOLDS}_fold_by_group"] = figures(held_out)
    return {
        "about": (
            "Efficiency constants of estimator.perfmodel.iteration, one set per GPU type. "
            f"{fitted.gpu} is fitted (least squares on log iteration time) on measured Megatron-DeepSpeed "
            "iteration times; the other GPU types are derived from that fit by scaling with their "
            "datasheet figures (matmul_half_size_elements by machine balance = peak BF16 FLOPs / HBM "
            "bandwidth; the rest unchanged), not measured. Written by models/calibrate_perfmodel.py --cv."
        ),
        "fitted_gpu": fitted.gpu,
        "derived_gpus": sorted(k for k in constants if k != fitted.gpu),
        "constants": constants,
        "fit": fit,
        "data": {
            "file": DATA_FILE,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "source": (
                "vTrain measured validation data (single node, 2-8 A100 GPUs, Megatron-DeepSpeed): "
                "Bang, Choi, Kim, Kim and Rhu, 'vTrain: A Simulation Framework for Evaluating "
                "Cost-effective and Compute-optimal Large Language Model Training', MICRO 2024; "
                "github.com/VIA-Research/vTrain, MIT licence"
            ),
        },
    }


def main(argv: Sequence[str] | None = None, *, default_data: Path, default_out: Path) -> int:
    """Fit, score and write the constants; ``default_data``/``default_out`` are the caller's paths.

    With ``--held-out`` only print the error on the held-out tables under ``--shared`` (by default the
    folder above ``default_data``), fitting and writing nothing.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data, help=f"directory holding {DATA_FILE}")
    parser.add_argument("--out", type=Path, default=default_out, help="constants file to write")
    parser.add_argument(
        "--cv", action="store_true", help=f"also score {FOLDS}-fold held-out groups (6 fits, about 2 minutes)"
    )
    parser.add_argument(
        "--held-out",
        action="store_true",
        help="print the error of the shipped constants on measured data never fitted (writes nothing)",
    )
    parser.add_argument(
        "--shared",
        type=Path,
        default=default_data.parent,
        help=f"folder holding {' and '.join(HELD_OUT_FILES.values())}",
    )
    args = parser.parse_args(argv)
    if args.held_out:
        try:
            predictions = held_out_predictions(args.shared, args.out if args.out.is_file() else None)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(held_out_markdown(held_out_summary(predictions)), end="")
        return 0
    try:
        frame = read_measurements(args.data)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    specs = specs_of(frame)
    measured = frame[MEASURED].to_numpy() / 1000.0
    fitted = fit(specs, measured)
    in_sample = score(frame, predict_seconds(specs, fitted))
    held_out = cross_validate(frame, specs) if args.cv else None
    doc = document(args.data, frame, fitted, in_sample, held_out)
    args.out.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    for name, s in (("in-sample", in_sample), ("held-out", held_out)):
        if s is None:
            continue
        print(
            f"{name}: MAPE {s.mape_percent:.1f}%, Spearman within groups median {s.spearman_median:.3f} "
            f"(IQR {s.spearman_q25:.3f}-{s.spearman_q75:.3f}, {s.groups_scored} groups), "
            f"best configuration found in {100 * s.best_config_agreement_ratio:.0f}% of groups"
        )
    print(f"constants of {fitted.gpu}: {doc['constants'][fitted.gpu]}")
    print(f"wrote {args.out}")
    return 0


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
        note = "FlashAttention as selective recomputation; ALiBi (no position table) not modelled"
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
                # FlashAttention stores no attention scores and recomputes them in backward: Korthikanti's
                # selective recomputation; llm-foundry's activation checkpointing recomputes whole blocks
                recompute="full" if bool(r["activation_checkpointing"]) else "selective",
                vocab_size=MPT_VOCAB,
                sharding=MPT_SHARDING[str(r["sharding_strategy"])],
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
                recompute="full" if checkpointing == "full" else "selective",
                vocab_size=LLAMA_VOCAB,
                sharding="full",
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
    constants are the shipped ones (vTrain, A100, single node). Rows that cannot be expressed keep a
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

    def table(frame: pd.DataFrame) -> str:
        head = "| " + " | ".join(frame.columns) + " |"
        numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
        rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
        body = [
            "| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |"
            for row in frame.itertuples(index=False)
        ]
        return "\n".join([head, rule, *body])

    parts = []
    for name, title in (
        ("by_study", "MAPE of tokens/s by study"),
        ("by_gpu", "by GPU type"),
        ("by_num_gpus", "by GPU count"),
        ("spearman", "Spearman of tokens/s per GPU within each table and model (>= 3 rows)"),
        ("not_expressed", "rows not expressed"),
    ):
        parts.append(f"{title}:\n\n{table(summary[name])}")
    return "\n\n".join(parts) + "\n"
