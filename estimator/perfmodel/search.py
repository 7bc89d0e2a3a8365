"""The parallel configurations of one training job, and the performance model's ranking of them.

A job is its GPUs (type, count, ``gpus_per_node``, network rate) and its
workload (model shape, sequence length, global batch, vocabulary); a
*configuration* of it is how the workload is laid out on the GPUs. The one
place that enumerates them: the performance model's own search, ``zest
whatif`` and the simulated tuning studies all read :func:`layouts` and
:func:`ranked`.

The space is bounded so that a 512-GPU job ranks in well under a second:

* tensor parallelism t: powers of two that divide the node, or a node times a
  power of two (across nodes: allowed, and slow);
* pipeline parallelism p: divisors of the layer count; by default without
  interleaving (``pipeline_interleaving`` 1), and with ``interleaving=``
  (``zest whatif``: :data:`INTERLEAVINGS`) each virtual-stage count v where
  p > 1, v·p divides the layers and p divides the micro-batches;
* data parallelism d = num_gpus / (t·p);
* micro-batch b: :data:`MICRO_BATCHES` (powers of two up to 16) such that b·d
  divides the global batch;
* recomputation: each of :data:`~estimator.perfmodel.iteration.RECOMPUTE_MODES`, less
  "selective" with FlashAttention (the scores are not stored anyway: it is "none");
* sharding: each of :data:`~estimator.perfmodel.iteration.SHARDING_MODES` when
  d > 1, "none" when d = 1 (sharding over one replica is the same job);
* sequence parallelism: off, and on when t > 1.

Configurations that do not fit in GPU memory, or that :class:`JobSpec`
refuses (heads not divisible by t, too many micro-batches), are left out.
Every other field of the spec (attention kernel, vocabulary, network) is kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from estimator.perfmodel.iteration import (
    DEFAULT_CONSTANTS_PATH,
    RECOMPUTE_MODES,
    SHARDING_MODES,
    JobSpec,
    PerfConstants,
    SpecError,
    iteration_seconds,
    memory_bytes_per_gpu,
)

__all__ = [
    "INTERLEAVINGS",
    "MICRO_BATCHES",
    "HeldOutError",
    "Ranked",
    "describe_layout",
    "held_out_error",
    "layouts",
    "pipeline_degrees",
    "rank_candidates",
    "ranked",
    "search_ranked",
    "tensor_degrees",
]

#: Micro-batch sizes searched: larger ones rarely fit and gain little once matmuls are large.
MICRO_BATCHES: Final = (1, 2, 4, 8, 16)
#: Virtual pipeline stages per GPU ``zest whatif`` searches (Megatron's interleaved 1F1B schedule).
#: :func:`layouts` searches only v = 1 unless asked: the simulated training studies call it, and their
#: rows must not change with the search ``zest whatif`` runs.
INTERLEAVINGS: Final = (1, 2, 4)
_SEQUENCE_PARALLEL: Final = (False, True)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def tensor_degrees(spec: JobSpec) -> list[int]:
    """Tensor-parallel degrees t of ``spec``'s job: powers of two dividing the node, or node·2^k.

    Each divides num_gpus and the attention heads.
    """
    node = spec.node_gpus
    return [
        t
        for t in range(1, spec.num_gpus + 1)
        if spec.num_gpus % t == 0
        and spec.attention_heads % t == 0
        and ((_is_power_of_two(t) and node % t == 0) or (t % node == 0 and _is_power_of_two(t // node)))
    ]


def pipeline_degrees(spec: JobSpec, tensor_parallel: int) -> list[int]:
    """Pipeline-parallel degrees p: divisors of the layer count that divide num_gpus / t."""
    rest = spec.num_gpus // tensor_parallel
    return [p for p in range(1, min(rest, spec.num_layers) + 1) if rest % p == 0 and spec.num_layers % p == 0]


def layouts(
    spec: JobSpec,
    *,
    tensor_parallel: Collection[int] | None = None,
    pipeline_parallel: Collection[int] | None = None,
    micro_batch: Collection[int] = MICRO_BATCHES,
    recompute: Collection[str] = RECOMPUTE_MODES,
    sharding: Collection[str] = SHARDING_MODES,
    interleaving: Collection[int] = (1,),
) -> list[JobSpec]:
    """Every configuration of ``spec``'s job in the bounded space (module docstring) that fits in memory.

    The keyword arguments narrow the space (None: every degree the job
    allows); e.g. FSDP is ``tensor_parallel=(1,), pipeline_parallel=(1,),
    sharding=("zero2", "full")``; ``interleaving`` is the virtual-stage counts
    v tried where p > 1, besides v = 1 (default: v = 1 only). ``spec`` itself comes first when
    it fits, even if it lies outside the bounds; the rest follow in the order t,
    p, b, recompute, sharding, sequence parallelism, v, without duplicates.
    """
    capacity = spec.gpu_spec.memory_total_bytes
    if getattr(spec, "attention", "standard") == "flash":
        recompute = [mode for mode in recompute if mode != "selective"]
    found: dict[JobSpec, None] = {}  # an ordered set
    interleavings = sorted({1, *interleaving})

    def add(candidate: JobSpec) -> None:
        if candidate not in found and memory_bytes_per_gpu(candidate) <= capacity:
            found[candidate] = None

    add(spec)
    for t in tensor_degrees(spec):
        if tensor_parallel is not None and t not in tensor_parallel:
            continue
        for p in pipeline_degrees(spec, t):
            if pipeline_parallel is not None and p not in pipeline_parallel:
                continue
            d = spec.num_gpus // (t * p)
            shardings = list(sharding) if d > 1 else ["none"]
            for b in micro_batch:
                if spec.global_batch % (b * d):
                    continue
                for mode in recompute:
                    for shard in shardings:
                        for sp in _SEQUENCE_PARALLEL if t > 1 else (False,):
                            for v in interleavings if p > 1 else (1,):
                                try:
                                    candidate = replace(
                                        spec,
                                        tensor_parallel=t,
                                        pipeline_parallel=p,
                                        data_parallel=d,
                                        micro_batch=b,
                                        recompute=mode,
                                        sharding=shard,
                                        sequence_parallel=sp,
                                        pipeline_interleaving=v,
                                    )
                                except SpecError:
                                    continue
                                add(candidate)
    return list(found)


def ranked(spec: JobSpec, constants: PerfConstants, **space: Any) -> list[tuple[JobSpec, float]]:
    """The :func:`layouts` of ``spec`` (narrowed by ``space``, its keyword arguments) with their predicted
    iteration seconds, fastest first. Ties keep :func:`layouts`' order, so ``spec`` itself wins a tie."""
    timed = [(candidate, iteration_seconds(candidate, constants)) for candidate in layouts(spec, **space)]
    return sorted(timed, key=lambda pair: pair[1])


def describe_layout(spec: JobSpec) -> str:
    """The layout of ``spec`` in one line: "t=4 p=2 d=8 b=2, recompute full, zero1, sequence parallel"."""
    text = f"t={spec.tensor_parallel} p={spec.pipeline_parallel} d={spec.data_parallel} b={spec.micro_batch}"
    if spec.pipeline_interleaving > 1:
        text += f" v={spec.pipeline_interleaving}"
    if spec.recompute != "none":
        text += f", recompute {spec.recompute}"
    if spec.sharding != "none":
        text += f", {spec.sharding}" if spec.sharding.startswith("zero") else ", full sharding"
    if spec.sequence_parallel:
        text += ", sequence parallel"
    return text


# --- zest whatif: the ranked configurations ---------------------------------------------------


@dataclass(frozen=True)
class Ranked:
    """One configuration as ``zest whatif`` ranks it: predicted, not measured."""

    spec: JobSpec
    iteration_seconds: float
    memory_bytes_per_gpu: float
    index: int | None = None  # its 0-based line in a candidates file; None for the searched space


def search_ranked(spec: JobSpec, constants: PerfConstants) -> list[Ranked]:
    """Every configuration of ``spec``'s job that fits (:func:`layouts` with :data:`INTERLEAVINGS`), fastest
    first: same GPUs and global batch; t, p, v, b, recomputation, sharding and sequence parallelism vary."""
    return [
        Ranked(candidate, seconds, memory_bytes_per_gpu(candidate))
        for candidate, seconds in ranked(spec, constants, interleaving=INTERLEAVINGS)
    ]


def rank_candidates(
    candidates: Sequence[JobSpec], constants_for: Callable[[str], PerfConstants]
) -> list[Ranked]:
    """The given configurations, fastest first (ties: the earlier one first), each with its 0-based index
    in ``candidates``; ``constants_for(gpu)`` gives a GPU type's constants."""
    constants: dict[str, PerfConstants] = {}
    out = []
    for k, candidate in enumerate(candidates):
        if candidate.gpu not in constants:
            constants[candidate.gpu] = constants_for(candidate.gpu)
        seconds = iteration_seconds(candidate, constants[candidate.gpu])
        out.append(Ranked(candidate, seconds, memory_bytes_per_gpu(candidate), k))
    return sorted(out, key=lambda r: r.iteration_seconds)


@dataclass(frozen=True)
class HeldOutError:
    """The performance model's held-out error of iteration time on one GPU type (calibration's grouped
    cross-validation): the uncertainty ``zest whatif`` states."""

    gpu: str  # the GPU type the prediction is for
    measured_on: str  # the fitted GPU type whose held-out rows gave the figure (``gpu`` itself if fitted)
    mape_percent: float
    rows: int


def held_out_error(gpu: str, path: str | Path = DEFAULT_CONSTANTS_PATH) -> HeldOutError | None:
    """The held-out MAPE of ``gpu`` from the constants file's ``held_out.by_gpu``; a derived GPU type
    (``derived_gpus``: no measured row) takes the one of the GPU it derives from. None when the file
    has no cross-validation."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    held_out = document.get("held_out") or {}
    by_gpu = {row["gpu"]: row for row in held_out.get("by_gpu", []) if "gpu" in row}
    source = gpu if gpu in by_gpu else document.get("derived_gpus", {}).get(gpu)
    row = by_gpu.get(source) if source else None
    if row is None:
        return None
    return HeldOutError(gpu, str(source), float(row["mape_percent"]), int(row["rows"]))
