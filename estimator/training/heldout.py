"""Held-out evaluation of the shipped Z_e model on measured studies it never saw: llm-foundry's MPT tables.

Pure apart from reading the table: DataFrames in, DataFrames and dataclasses
out. The labels are measured throughput (mosaicml/llm-foundry,
``scripts/train/benchmarking/README.md`` at 8c8dd48, Apache-2.0); each row is
expressed as a job spec by :func:`estimator.perfmodel.calibration.mpt_job_specs`
(the mapping the performance model's own held-out check uses), its telemetry
simulated as the training rows' is (:func:`estimator.training.rows.simulate_features`)
and its Z_e predicted by a fitted model that is not refitted. A *study* is the
rows alike in :data:`STUDY_KEYS`: one model trained on one GPU type at one
sequence length, at the layouts the tables measured (GPU count, micro-batch,
batch size, checkpointing); within it Z(c) = 100 · (1 − v_c / v_best), v in
tokens/s per GPU, the GPU-hours per token that tuning c to the best saves. Every row lies outside the
model's training domain (FSDP, A100 40 GB and H100, 8-128 GPUs): the point is
to measure how the model does there, not to flatter it.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from estimator.features.extract import FEATURES
from estimator.model.compiled import LoadedModel
from estimator.model.default import domain_note, z_intervals_for
from estimator.model.regressor import MODEL_FEATURES, Z_MAX_PERCENT
from estimator.perfmodel import calibration
from estimator.perfmodel import iteration as perfmodel
from estimator.perfmodel.iteration import JobSpec, PerfConstants
from estimator.training.evaluation import (
    HIGH,
    LOW,
    METHODS,
    SPEARMAN_MIN_ROWS,
    ZEST,
    Evaluation,
    accuracy,
    fmt_number,
    fmt_percent,
    sm_rule_z_percent,
    within_study_spearman,
)
from estimator.training.rows import (
    DEFAULT_MINUTES,
    DEFAULT_SEED,
    LABEL_SOURCE,
    MEASURED,
    STUDY,
    Z_PERCENT,
    DataError,
    measured_z_percent,
    simulate_features,
)

__all__ = [
    "HELD_OUT_BEGIN",
    "HELD_OUT_END",
    "MPT_FILE",
    "STUDY_KEYS",
    "HeldOutData",
    "HeldOutEvaluation",
    "evaluate_held_out",
    "held_out_predictions",
    "held_out_rows",
    "read_mpt_studies",
    "render_held_out_markdown",
    "score_held_out",
]

#: The MPT table, relative to the shared data folder (the calibration's held-out check reads the same file).
MPT_FILE: Final = calibration.HELD_OUT_FILES["llm-foundry"]
TOKENS_PER_SECOND: Final = "throughput_tokens_per_s_per_gpu"
#: Rows alike in these are alternatives for one job: the same model on the same GPU type at the same
#: sequence length; they differ in GPU count, micro-batch, batch size, checkpointing. (Alike also in GPU
#: count and tokens per step, every study but one holds a single configuration.)
STUDY_KEYS: Final = ("gpu", "model", "seq_len")
#: The columns :func:`estimator.perfmodel.calibration.mpt_job_specs` reads, besides the study keys.
SPEC_COLUMNS: Final = (
    "table",
    "micro_batch_size",
    "grad_accum",
    "global_batch_size",
    "precision",
    "sharding_strategy",
    "activation_checkpointing",
    "activation_cpu_offload",
)
SET: Final = "set"
HOSTS: Final = "hosts"
ONE_NODE: Final = "llm-foundry, one node"
SEVERAL_NODES: Final = "llm-foundry, several nodes"
ALL_ROWS: Final = "llm-foundry, all"
#: Why a row is not simulated although it is expressed: :func:`perfmodel.simulate_telemetry` refuses it.
DOES_NOT_FIT: Final = (
    "needs more memory than the GPU in the performance model's estimate: no telemetry to simulate"
)
UNKNOWN_GPU: Final = "GPU type not in the mapping"
#: Where ``zest evaluate --held-out --card`` writes the held-out table in the model card.
HELD_OUT_BEGIN: Final = "<!-- evaluation-held-out:begin -->"
HELD_OUT_END: Final = "<!-- evaluation-held-out:end -->"
SOURCE: Final = (
    "llm-foundry's MPT benchmark tables (mosaicml/llm-foundry, `scripts/train/benchmarking/README.md` "
    "at 8c8dd48, Apache-2.0)"
)


@dataclass(frozen=True)
class HeldOutData:
    """The MPT rows kept, with set, hosts, study id and measured Z, their job specs, and what was dropped."""

    frame: pd.DataFrame  # the CSV's columns plus SET, HOSTS, STUDY, Z_PERCENT; index 0..n-1
    specs: tuple[JobSpec, ...]  # row i's job spec
    dropped: pd.DataFrame  # columns reason, rows: the rows not kept and why
    path: Path
    sha256: str


def read_mpt_studies(data_root: str | Path) -> HeldOutData:
    """Read llm-foundry's MPT table under ``data_root`` (the folder holding ``llm-foundry/``).

    Rows the performance model cannot express (FP8, unknown GPU, ...) are
    dropped before the studies are formed, so Z is measured against the best
    BF16 configuration; rows it expresses but cannot simulate (over its memory
    estimate) are dropped after, so they still count as a study's best.
    Raises :class:`DataError` when the file is missing, lacks a column or
    holds a missing or non-positive throughput.
    """
    path = Path(data_root) / MPT_FILE
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"cannot read {path} ({exc.strerror}): pass --held-out DIR, the folder holding {MPT_FILE}"
        ) from None
    frame = pd.read_csv(io.BytesIO(raw))
    missing = [c for c in (*STUDY_KEYS, TOKENS_PER_SECOND, *SPEC_COLUMNS) if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}: use llm-foundry's table as published")
    speed = pd.to_numeric(frame[TOKENS_PER_SECOND], errors="coerce")
    if speed.isna().any() or (speed <= 0).any():
        bad = speed.index[speed.isna() | (speed <= 0)][0]
        raise DataError(
            f"{path}: row {bad + 2} has a missing, non-numeric or non-positive {TOKENS_PER_SECOND}"
        )
    frame = frame.assign(**{TOKENS_PER_SECOND: speed.astype(np.float64)}).reset_index(drop=True)

    reasons: list[str] = []
    known = frame["gpu"].astype(str).isin(calibration.MPT_GPUS)
    reasons += [UNKNOWN_GPU] * int((~known).sum())
    frame = frame[known].reset_index(drop=True)
    mapped = calibration.mpt_job_specs(frame)
    expressed = [spec is not None for spec, _ in mapped]
    reasons += [note for spec, note in mapped if spec is None]
    frame = frame[expressed].reset_index(drop=True)
    specs = [spec for spec, _ in mapped if spec is not None]

    frame[STUDY] = frame.groupby(list(STUDY_KEYS), sort=True).ngroup().astype(np.int64)
    # GPU-seconds per token: Z = 100·(1 − t_best/t_c) is 100·(1 − v_c/v_best), the labels' one formula
    frame[Z_PERCENT] = measured_z_percent(1.0 / frame[TOKENS_PER_SECOND], frame[STUDY]).to_numpy()
    frame[HOSTS] = [math.ceil(s.num_gpus / s.node_gpus) for s in specs]
    frame[SET] = np.where(frame[HOSTS] > 1, SEVERAL_NODES, ONE_NODE)

    constants: dict[str, PerfConstants] = {}
    fits = [perfmodel.iteration(s, _constants(s.gpu, constants)).fits for s in specs]
    reasons += [DOES_NOT_FIT] * (len(fits) - sum(fits))
    frame = frame[fits].reset_index(drop=True)
    specs = [s for s, ok in zip(specs, fits, strict=True) if ok]
    dropped = pd.Series(reasons, dtype=object).value_counts(sort=False).rename("rows")
    return HeldOutData(
        frame=frame,
        specs=tuple(specs),
        dropped=dropped.rename_axis("reason").reset_index(),
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def _constants(gpu: str, loaded: dict[str, PerfConstants]) -> PerfConstants:
    if gpu not in loaded:
        loaded[gpu] = perfmodel.load_constants(gpu)
    return loaded[gpu]


def held_out_rows(
    data: HeldOutData, *, minutes: float = DEFAULT_MINUTES, seed: int = DEFAULT_SEED
) -> pd.DataFrame:
    """One row per kept configuration: features of its simulated telemetry (as the training rows'), SET,
    STUDY and measured Z_PERCENT. Row i is simulated with seed ``seed + i`` (deterministic)."""
    constants: dict[str, PerfConstants] = {}
    features = [
        simulate_features(
            spec, _constants(spec.gpu, constants), job_id=f"mpt-{i}", minutes=minutes, seed=seed + i
        )
        for i, spec in enumerate(data.specs)
    ]
    out = pd.DataFrame(features, columns=list(FEATURES)).astype(np.float64).reset_index(drop=True)
    for column in (SET, STUDY, Z_PERCENT):
        out[column] = data.frame[column].to_numpy()
    return out


def held_out_predictions(
    data: HeldOutData, rows: pd.DataFrame, model: LoadedModel, *, training_mean: float
) -> pd.DataFrame:
    """Every method's Z for every row: the fitted ``model``'s interval (not refitted) and the baselines.

    ``training_mean``: the mean measured Z of the model's training rows (the
    constant baseline). The performance model's own Z ranks the study's
    configurations by its predicted tokens/s. Columns: SET, STUDY,
    Z_PERCENT, ``zest_low``, one per method of :data:`METHODS`, ``zest_high``.
    """
    intervals = z_intervals_for(rows[list(MODEL_FEATURES)], model)
    constants: dict[str, PerfConstants] = {}
    speed = [
        perfmodel.tokens_per_second(s, perfmodel.iteration(s, _constants(s.gpu, constants))) / s.num_gpus
        for s in data.specs
    ]
    study = data.frame[STUDY]
    own = measured_z_percent(1.0 / pd.Series(speed, index=study.index), study).clip(0.0, Z_MAX_PERCENT)
    out = pd.DataFrame({SET: rows[SET].to_numpy(), STUDY: study.to_numpy(), Z_PERCENT: rows[Z_PERCENT]})
    out[LOW] = [z.low for z in intervals]
    out[ZEST] = [z.mid for z in intervals]
    out["training_mean"] = float(training_mean)
    out["sm_rule"] = sm_rule_z_percent(rows)
    out["perfmodel"] = own.to_numpy(dtype=np.float64)
    out[HIGH] = [z.high for z in intervals]
    return out


def _score_set(name: str, predictions: pd.DataFrame, sizes: pd.Series) -> list[dict[str, Any]]:
    """One entry per method: scored on the rows of studies with 2 or more configurations (``sizes``: each
    row's study size over every set, as a study may hold rows of both)."""
    scored = predictions[sizes.loc[predictions.index] >= 2]
    return [
        {
            "set": name,
            "rows": len(predictions),
            "studies": int(predictions[STUDY].nunique()),
            "scored_rows": len(scored),
            "scored_studies": int(scored[STUDY].nunique()),
            "method": label,
            **accuracy(scored, method),
        }
        for method, label in METHODS.items()
    ]


def score_held_out(predictions: pd.DataFrame) -> pd.DataFrame:
    """MAE (pp), median Spearman within studies and interval coverage per set and method.

    Only rows of studies with two or more configurations are scored: a study
    of one has Z = 0 by definition, which says nothing of the job's gain. One
    entry per method for each set of ``predictions`` and, when there are
    several, for all of them together.
    """
    sets: list[tuple[str, pd.DataFrame]] = [
        (str(name), group) for name, group in predictions.groupby(SET, sort=True)
    ]
    if len(sets) > 1:
        sets.append((ALL_ROWS, predictions))
    sizes = predictions.groupby(STUDY)[STUDY].transform("size")
    return pd.DataFrame(
        [entry for name, group in sets for entry in _score_set(name, group, sizes)],
        columns=[
            "set",
            "rows",
            "studies",
            "scored_rows",
            "scored_studies",
            "method",
            "mae_pp",
            "spearman_median",
            "spearman_studies",
            "coverage_ratio",
        ],
    )


@dataclass(frozen=True)
class HeldOutEvaluation:
    """What ``zest evaluate --held-out`` reports."""

    table: pd.DataFrame  # one row per set and method (see score_held_out)
    predictions: pd.DataFrame
    dropped: pd.DataFrame  # reason, rows
    outside_domain: int  # rows the model's domain note flags
    domain: dict[str, Any]  # the model's training domain, as its metadata states it
    coverage: float  # the interval's stated coverage
    sha256: str


def evaluate_held_out(
    data: HeldOutData,
    rows: pd.DataFrame,
    model: LoadedModel,
    *,
    training_mean: float,
) -> HeldOutEvaluation:
    """Score the fitted ``model`` and the baselines on the held-out rows; count rows outside its domain."""
    predictions = held_out_predictions(data, rows, model, training_mean=training_mean)
    notes = [
        domain_note([spec.gpu], float(spec.num_gpus), float(hosts), model)
        for spec, hosts in zip(data.specs, data.frame[HOSTS], strict=True)
    ]
    return HeldOutEvaluation(
        table=score_held_out(predictions),
        predictions=predictions,
        dropped=data.dropped,
        outside_domain=sum(note is not None for note in notes),
        domain=dict(model.metadata.get("training_data", {}).get("domain", {})),
        coverage=model.coverage,
        sha256=data.sha256,
    )


def _span(values: Sequence[int] | pd.Series, unit: str = "") -> str:
    low, high = int(min(values)), int(max(values))
    return f"{low:,}{unit}" if low == high else f"{low:,}-{high:,}{unit}"


def render_held_out_markdown(
    held_out: HeldOutEvaluation, data: HeldOutData, cross_validated: Evaluation | None = None
) -> str:
    """The held-out section of the model card (Markdown, no markers); ``cross_validated``, when given,
    adds the vTrain cross-validation's figures (unchanged) as the first set, for comparison."""
    frame, p = data.frame, held_out.predictions
    domain = held_out.domain
    trained = (
        f"{', '.join(domain['gpu_models'])}; {_span(domain['gpus'])} GPUs on {_span(domain['hosts'])} nodes"
        + (f"; sequence {_span(domain['sequence_lengths'])}" if "sequence_lengths" in domain else "")
        if domain
        else "the training rows' GPUs"
    )
    gpus = ", ".join(sorted({s.gpu for s in data.specs}))
    singles = int((p.groupby(STUDY).size() == 1).sum())
    dropped = "; ".join(f"{r['reason']}: {r['rows']}" for _, r in held_out.dropped.iterrows()) or "none"
    lines = [
        f"Held out: the shipped model, not refitted, on {SOURCE}, read from `{data.path.name}` "
        f"(SHA-256 {held_out.sha256[:12]}…), never trained on. Labels measured: tokens/s per GPU, "
        "Z(c) = 100 · (1 − v_c / v_best) within a study (the rows of one model on one GPU type at one "
        "sequence length: its GPU counts, micro-batches, batch sizes and checkpointing as the tables "
        "measured them). Features simulated: each row as a job spec "
        "(`calibration.mpt_job_specs`: MPT as GPT, FSDP, t = p = 1), "
        f"{DEFAULT_MINUTES:g} min of 1 Hz telemetry from the performance model, as for the training rows. "
        f"Baselines as above; the training mean is the vTrain rows' mean measured Z. "
        f"The model's training domain: {trained}. These rows: {gpus}; {_span(frame['n_gpus'])} GPUs on "
        f"{_span(frame[HOSTS])} nodes; sequence {_span(frame['seq_len'])}; FSDP FULL_SHARD with "
        f"FlashAttention. **Outside the training domain** by the model's own check: "
        f"{held_out.outside_domain} of {len(frame)} rows. "
        "Scored: rows of studies with 2 or more configurations (one configuration has Z = 0 by definition).",
        "",
        "| set | rows | studies | scored rows (studies) | method | MAE (pp) | Spearman within studies "
        "(median, studies) | interval coverage |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    if cross_validated is not None:
        cv = cross_validated
        measured = cv.predictions[cv.predictions[LABEL_SOURCE] == MEASURED]
        for method, (_, row) in zip(METHODS, cv.table.iterrows(), strict=True):
            rhos = int(within_study_spearman(measured, method).notna().sum())
            lines.append(
                f"| vTrain, one node (cross-validated) | {cv.rows} | {cv.studies} | {cv.rows} "
                f"({cv.studies}) | {row['method']} | {fmt_number(row['mae_pp'])} | "
                f"{fmt_number(row['spearman_median'], 3)} ({rhos}) | {fmt_percent(row['coverage_ratio'])} |"
            )
    for (name, _), group in held_out.table.groupby(["set", "rows"], sort=False):
        first = group.iloc[0]
        if first["scored_rows"] == 0:  # nothing to score: one line, not one per method
            lines.append(
                f"| {name} | {first['rows']} | {first['studies']} | 0 (0) | every method | n/a | n/a | n/a |"
            )
            continue
        for _, row in group.iterrows():
            lines.append(
                f"| {row['set']} | {row['rows']} | {row['studies']} | {row['scored_rows']} "
                f"({row['scored_studies']}) | {row['method']} | {fmt_number(row['mae_pp'])} | "
                f"{fmt_number(row['spearman_median'], 3)} ({row['spearman_studies']}) | "
                f"{fmt_percent(row['coverage_ratio'])} |"
            )
    width = p[HIGH] - p[LOW]
    lines += [
        "",
        f"Studies of one configuration: {singles} of {p[STUDY].nunique()}. Rows not kept: {dropped}. "
        f"What the model says on all {len(p)} rows, unchecked where a study holds one configuration: "
        f"Z_e mid median {p[ZEST].median():.1f} pp (interquartile {p[ZEST].quantile(0.25):.1f}-"
        f"{p[ZEST].quantile(0.75):.1f}), interval width median {width.median():.1f} pp, "
        f"stated coverage {100 * held_out.coverage:.0f} %.",
    ]
    if p.groupby(STUDY).size().max() < SPEARMAN_MIN_ROWS:
        lines += ["", f"No study here has {SPEARMAN_MIN_ROWS} or more configurations: Spearman is undefined."]
    return "\n".join(lines)
