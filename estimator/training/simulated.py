"""Simulated tuning studies: training rows where the users are, with labels from the performance model.

The measured rows (:mod:`estimator.training.rows`) cover one A100 node. Users
run on A100, H100 and H200, on 1 to 512 GPUs, with Megatron's 3D layouts or
FSDP. Each simulated *study* is one such job, drawn at random, and the
configurations a person tuning it would have measured:

* the job: GPU type (:data:`GPU_WEIGHTS`), GPU count (:data:`GPU_COUNT_WEIGHTS`,
  one node most often), a GPT shape from :data:`MODEL_SHAPES` whose model states
  fit comfortably in the GPUs' memory, sequence length, a global batch of
  256K-4M tokens (at least one sequence per GPU), the framework family, now and
  then a slower network than the vendor's system has;
* the configurations: a plausible starting one (the least model parallelism
  that fits, or a node's worth of tensor parallelism as published recipes
  use), then k − 1 more from :func:`estimator.perfmodel.search.layouts` of the
  family, mostly near the start (one or two knobs turned), some anywhere;
  k is log-normal around 9, 2-26 (the measured studies' median and range);
* the label: Z(c) = 100 · (1 − t_best / t_c) within the study, t from
  :func:`estimator.perfmodel.iteration.iteration_seconds`: *labels simulated*,
  unlike the measured rows, so the model learns the performance model's view
  where nothing is measured;
* the features: :func:`estimator.training.rows.simulate_features`, 3 minutes of
  1 Hz telemetry per configuration, as for the measured rows.

Deterministic: study i draws from ``numpy.random.default_rng([seed, i])``, so
a study does not depend on how many are drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from itertools import repeat
from typing import Any, Final

import numpy as np
import pandas as pd

from collectors import gpuspecs
from estimator.features.extract import FEATURES
from estimator.perfmodel.iteration import (
    MODEL_STATE_BYTES_PER_PARAM,
    JobSpec,
    PerfConstants,
    iteration_seconds,
    load_constants,
    parameters_per_gpu,
)
from estimator.perfmodel.search import layouts
from estimator.training.rows import (
    DEFAULT_MINUTES,
    DEFAULT_SEED,
    DESCRIPTION,
    FAMILY,
    FSDP,
    GPU_MODEL,
    LABEL_SOURCE,
    MEGATRON,
    NUM_GPUS,
    SEQUENCE_LENGTH,
    SET,
    SIMULATED,
    STUDY,
    Z_PERCENT,
    measured_z_percent,
    simulate_features,
)

__all__ = [
    "COLUMNS",
    "DEFAULT_STUDIES",
    "FAMILIES",
    "GPU_COUNT_WEIGHTS",
    "GPU_WEIGHTS",
    "MODEL_SHAPES",
    "SimulatedStudy",
    "draw_study",
    "simulated_studies",
]

#: Studies drawn by default: about 1,700 rows, a few minutes on two cores.
DEFAULT_STUDIES: Final = 200

ONE_NODE: Final = "simulated, one node"
SEVERAL_NODES: Final = "simulated, several nodes"
#: The columns of :func:`simulated_studies`, in order: those of the measured rows (``hosts`` is a feature).
COLUMNS: Final = (*FEATURES, STUDY, Z_PERCENT, *DESCRIPTION)

#: The layouts each family can run (keyword arguments of :func:`layouts`): Megatron's 3D parallelism
#: with or without its distributed optimizer (ZeRO-1); FSDP without model parallelism, FULL_SHARD or
#: SHARD_GRAD_OP, and per-layer activation checkpointing (full) or none.
FAMILIES: Final[Mapping[str, Mapping[str, Any]]] = {
    MEGATRON: {"sharding": ("none", "zero1")},
    FSDP: {
        "tensor_parallel": (1,),
        "pipeline_parallel": (1,),
        "sharding": ("zero2", "full"),
        "recompute": ("none", "full"),
    },
}
FAMILY_WEIGHTS: Final = {MEGATRON: 0.6, FSDP: 0.4}

#: GPU types and how often a job runs on each (a100-40gb where gpuspecs knows it).
GPU_WEIGHTS: Final = {"a100-80gb": 0.3, "a100-40gb": 0.1, "h100-sxm": 0.4, "h200": 0.2}
#: GPU counts and how often: one node most often, then small clusters, a few very large jobs.
GPU_COUNT_WEIGHTS: Final = {
    1: 0.05,
    2: 0.05,
    4: 0.08,
    8: 0.24,
    16: 0.14,
    32: 0.12,
    64: 0.11,
    128: 0.09,
    256: 0.07,
    512: 0.05,
}
#: GPT shapes (hidden size, attention heads, layers): GPT-3 350M, 1.3B, 2.7B, 6.7B, 13B, a 30B, 70B, 175B.
MODEL_SHAPES: Final = (
    (1024, 16, 24),
    (2048, 16, 24),
    (2560, 32, 32),
    (4096, 32, 32),
    (5120, 40, 40),
    (6656, 52, 60),
    (8192, 64, 80),
    (12288, 96, 96),
)
#: A shape is drawn among the largest few whose model states (16 bytes a parameter) take at most this
#: share of the job's memory: room left for activations, so that some layout fits.
MODEL_STATES_MEMORY_SHARE: Final = 0.5
LARGEST_SHAPES_DRAWN: Final = 3
SEQUENCE_WEIGHTS: Final = {1024: 0.15, 2048: 0.35, 4096: 0.35, 8192: 0.15}
#: Tokens per optimizer step, log-uniform between these (then rounded to whole sequences, a power of two).
BATCH_TOKENS: Final = (2**18, 2**22)
VOCAB_SIZE: Final = 51200
#: Share of multi-node jobs on a network slower than the vendor's system (half its NIC rate per GPU).
SLOW_NETWORK_SHARE: Final = 0.25
#: Share of jobs with FlashAttention, when the performance model has the field.
FLASH_ATTENTION_SHARE: Final = 0.6
#: Configurations measured per study: log-normal with this median and spread, within the range.
CONFIGURATIONS_MEDIAN: Final = 9.0
CONFIGURATIONS_SIGMA: Final = 0.6
CONFIGURATIONS_RANGE: Final = (2, 26)
#: Share of a study's other configurations drawn anywhere in the space rather than near the start.
EXPLORATION_SHARE: Final = 0.2
_ATTEMPTS: Final = 100


@dataclass(frozen=True)
class SimulatedStudy:
    """One simulated study: the job's family and its measured configurations, the first the starting one."""

    family: str
    configurations: tuple[JobSpec, ...]
    iteration_seconds: tuple[float, ...]


def _choice(rng: np.random.Generator, weights: Mapping[Any, float]) -> Any:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _draw_job(rng: np.random.Generator, gpus: tuple[str, ...]) -> tuple[str, JobSpec]:
    """A job on GPUs of one of ``gpus``, its family, and a layout of it in the family's space."""
    gpu = _choice(rng, {g: w for g, w in GPU_WEIGHTS.items() if g in gpus})
    n = int(_choice(rng, GPU_COUNT_WEIGHTS))
    s = int(_choice(rng, SEQUENCE_WEIGHTS))
    tokens = math.exp(rng.uniform(math.log(BATCH_TOKENS[0]), math.log(BATCH_TOKENS[1])))
    batch = max(n, 2 ** max(0, round(math.log2(tokens / s))))
    family = str(_choice(rng, FAMILY_WEIGHTS))
    node = gpuspecs.get(gpu)
    network = None
    if n > node.gpus_per_node and rng.uniform() < SLOW_NETWORK_SHARE:
        network = node.network_bytes_per_second * 8 / 1e9 / 2  # Gb/s
    extra: dict[str, Any] = {}
    if "attention" in {f.name for f in fields(JobSpec)}:
        extra["attention"] = "flash" if rng.uniform() < FLASH_ATTENTION_SHARE else "standard"
    # pure data parallelism, in every family's space (the search starts from it); the shape comes next
    base = JobSpec(
        gpu=gpu,
        num_gpus=n,
        hidden_size=MODEL_SHAPES[0][0],
        attention_heads=MODEL_SHAPES[0][1],
        num_layers=MODEL_SHAPES[0][2],
        sequence_length=s,
        global_batch=batch,
        micro_batch=1,
        tensor_parallel=1,
        pipeline_parallel=1,
        data_parallel=n,
        recompute="full",
        sharding="none" if n == 1 else ("full" if family == FSDP else "zero1"),
        vocab_size=VOCAB_SIZE,
        internode_gbps_per_gpu=network,
        **extra,
    )
    budget = MODEL_STATES_MEMORY_SHARE * n * node.memory_total_bytes
    shapes = [
        replace(base, hidden_size=h, attention_heads=a, num_layers=layers) for h, a, layers in MODEL_SHAPES
    ]
    fitting = [job for job in shapes if MODEL_STATE_BYTES_PER_PARAM * parameters_per_gpu(job) <= budget]
    largest = fitting[-LARGEST_SHAPES_DRAWN:]
    return family, largest[int(rng.integers(len(largest)))]


def _start(rng: np.random.Generator, family: str, space: list[JobSpec]) -> int:
    """Index in ``space`` of where a person would start: least model parallelism that fits, or a recipe."""
    plausible = [i for i, c in enumerate(space) if c.micro_batch <= 4 and c.tensor_parallel <= c.node_gpus]
    if not plausible:
        plausible = list(range(len(space)))
    if family == FSDP:
        full = [i for i in plausible if space[i].sharding in ("full", "none")]  # FSDP's default
        plausible = full or plausible
    elif rng.uniform() < 0.5:
        # a published recipe: tensor parallelism over a node (as far as the heads allow), pipeline as needed
        widest = max(space[i].tensor_parallel for i in plausible)
        plausible = [i for i in plausible if space[i].tensor_parallel == widest]
    least = min(space[i].tensor_parallel * space[i].pipeline_parallel for i in plausible)
    plausible = [i for i in plausible if space[i].tensor_parallel * space[i].pipeline_parallel == least]
    return plausible[int(rng.integers(len(plausible)))]


def _distance(a: JobSpec, b: JobSpec) -> float:
    """How many knobs turn (doubling counts one) from configuration ``a`` to ``b``."""
    steps = sum(
        abs(math.log2(getattr(a, name) / getattr(b, name)))
        for name in ("tensor_parallel", "pipeline_parallel", "micro_batch")
    )
    return steps + sum(
        getattr(a, name) != getattr(b, name) for name in ("recompute", "sharding", "sequence_parallel")
    )


def _configurations_count(rng: np.random.Generator) -> int:
    low, high = CONFIGURATIONS_RANGE
    drawn = round(rng.lognormal(math.log(CONFIGURATIONS_MEDIAN), CONFIGURATIONS_SIGMA))
    return int(np.clip(drawn, low, high))


def draw_study(rng: np.random.Generator, constants: Mapping[str, PerfConstants]) -> SimulatedStudy:
    """One study: a job drawn with ``rng``, its measured configurations (the start first) and their seconds.

    ``constants``: the performance model's constants by GPU key; the job's GPU is one of them.
    """
    for _ in range(_ATTEMPTS):
        family, job = _draw_job(rng, tuple(constants))
        space = layouts(job, **FAMILIES[family])
        if len(space) >= CONFIGURATIONS_RANGE[0]:
            break
    else:  # the shapes are sized so that a job almost always fits; a hundred misses is a bug
        raise RuntimeError(f"no job with {CONFIGURATIONS_RANGE[0]} layouts that fit in {_ATTEMPTS} draws")
    start = _start(rng, family, space)
    k = min(_configurations_count(rng), len(space))
    others = [i for i in range(len(space)) if i != start]
    near = np.exp(-np.array([_distance(space[start], space[i]) for i in others]))
    weights = (1.0 - EXPLORATION_SHARE) * near / near.sum() + EXPLORATION_SHARE / len(others)
    picked = rng.choice(len(others), size=k - 1, replace=False, p=weights / weights.sum())
    chosen = (space[start], *(space[others[int(i)]] for i in sorted(picked)))
    c = constants[job.gpu]
    return SimulatedStudy(family, chosen, tuple(iteration_seconds(spec, c) for spec in chosen))


def _study_rows(
    study: int, seed: int, minutes: float, constants: Mapping[str, PerfConstants]
) -> tuple[list[pd.Series], list[dict[str, Any]], tuple[float, ...]]:
    """Study ``study``'s features, descriptive columns and iteration seconds, one entry per configuration."""
    rng = np.random.default_rng([seed, study])
    drawn = draw_study(rng, constants)
    telemetry_seeds = rng.integers(0, 2**32, size=len(drawn.configurations))
    features: list[pd.Series] = []
    described: list[dict[str, Any]] = []
    for i, spec in enumerate(drawn.configurations):
        features.append(
            simulate_features(
                spec,
                constants[spec.gpu],
                job_id=f"simulated-{study}-{i}",
                minutes=minutes,
                seed=int(telemetry_seeds[i]),
            )
        )
        hosts = math.ceil(spec.num_gpus / spec.node_gpus)
        described.append(
            {
                STUDY: study,
                GPU_MODEL: spec.gpu,
                NUM_GPUS: spec.num_gpus,
                SEQUENCE_LENGTH: spec.sequence_length,
                FAMILY: drawn.family,
                SET: SEVERAL_NODES if hosts > 1 else ONE_NODE,
            }
        )
    return features, described, drawn.iteration_seconds


def simulated_studies(
    count: int = DEFAULT_STUDIES,
    *,
    seed: int = DEFAULT_SEED,
    minutes: float = DEFAULT_MINUTES,
    workers: int = 1,
) -> pd.DataFrame:
    """Training rows of ``count`` simulated studies: :data:`COLUMNS`, one row per configuration.

    STUDY numbers the studies 0..count−1 (a caller combining them with other
    rows offsets it); Z_PERCENT is the simulated Z in % (0 for each study's
    best); ``label_source`` is "simulated". ``workers`` > 1 simulates the
    studies in that many processes (the same rows: each study has its own
    seed). Deterministic for ``seed``. About 0.06 s a row on 1-8 GPUs, 0.3 s
    on 512, on one core.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    constants = {gpu: load_constants(gpu) for gpu in GPU_WEIGHTS if gpu in gpuspecs.gpu_keys()}
    studies = range(count)
    args = (repeat(seed), repeat(minutes), repeat(constants))
    if workers == 1:
        results = list(map(_study_rows, studies, *args))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_study_rows, studies, *args, chunksize=max(1, count // (8 * workers))))
    features = [row for rows, _, _ in results for row in rows]
    about = pd.DataFrame([row for _, rows, _ in results for row in rows])
    seconds = pd.Series([t for _, _, times in results for t in times], dtype=np.float64)
    out = pd.DataFrame(features, columns=list(FEATURES)).astype(np.float64).reset_index(drop=True)
    out[STUDY] = about[STUDY].astype(np.int64)
    out[Z_PERCENT] = measured_z_percent(seconds, out[STUDY]).to_numpy()
    out[LABEL_SOURCE] = SIMULATED
    for column in (GPU_MODEL, FAMILY, SET):
        out[column] = about[column].astype(str)
    for column in (NUM_GPUS, SEQUENCE_LENGTH):
        out[column] = about[column].astype(np.int64)
    return out[list(COLUMNS)]
