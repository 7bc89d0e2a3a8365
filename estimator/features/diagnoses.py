"""Named diagnoses of a job from its feature row alone: what the telemetry shows and which knob to turn.

A small set of rules in the spirit of Nsight Systems' expert rules: each reads
a few features of :mod:`estimator.features.extract`, compares them with named
thresholds and, when they hold, names the pattern, cites the measured values
and points to the knob that usually fixes it. A rule whose features are
missing (NaN) cannot be checked and never fires.

Where the thresholds come from: the performance model's simulated telemetry
(:func:`estimator.perfmodel.iteration.simulate_telemetry`), in particular the
1,744 configurations of the 200 simulated tuning studies
(:func:`estimator.training.simulated.simulated_studies`), whose best
configuration per study stands for a well-tuned job. The thresholds are
chosen so each rule fires on at most 1.5 % of those best configurations (none
for stragglers), while memory-headroom and communication-bound fire on about
a fifth of the configurations a search improves by more than 30 %; the
comment of each says what the model shows. They are judgements on simulated telemetry, not
measured ones: a diagnosis is a lead to check, not a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from estimator.features.extract import (
    BUSY_NOT_WORKING_RATIO,
    HOST_COUNT,
    IDLE_SHARE_RATIO,
    MEM_HEADROOM_RATIO,
    NVLINK_SHARE_RATIO,
    STRAGGLER_MIN_SPREAD_RATIO,
    STRAGGLER_SPREAD_RATIO,
    ratio_feature,
)

SM_ACTIVE_MEAN = ratio_feature("sm_active_ratio", "mean")
GPU_UTIL_MEAN = ratio_feature("gpu_util_ratio", "mean")
TENSOR_ACTIVE_MEAN = ratio_feature("tensor_active_ratio", "mean")

#: SM activity below this is "low". The best configuration of each simulated study runs at
#: 0.86 (median; 0.79 its lower quartile): 1.5 % of them fall below 0.5, and 36 % of the
#: configurations a search improves by more than 30 %.
SM_ACTIVE_LOW_RATIO = 0.5
#: A share of samples with the SMs idle (< 0.05 active) from which the job stalls. Jobs without
#: stalls show 0 in the model; the 1-second samples catch only gaps of a second or more.
IDLE_SHARE_HIGH_RATIO = 0.10
#: GPU time with no kernel at all (1 − GPU utilization) from which it is a pattern, not the
#: iteration's host overhead (1.2 % median, 2.8 % upper quartile in the best configurations).
NO_KERNEL_HIGH_RATIO = 0.15
#: Spread of mean SM activity across GPUs from which GPUs do different work. Data- and tensor-parallel
#: ranks run the same kernels (spread ≤ 0.005 in the model); pipeline stages differ by the
#: embedding and logit layers (0.035-0.15).
STAGE_SPREAD_MIN_RATIO = 0.03
#: GPU utilization minus SM activity from which the GPUs mostly wait inside kernels (NCCL
#: collectives hold a few SMs while the data moves). Well-configured jobs: 0.11 (median), 0.16
#: (upper quartile); tensor parallelism over 8 A100s: 0.42; across two nodes: 0.67.
BUSY_NOT_WORKING_HIGH_RATIO = 0.25
#: Time-averaged NVLink share from which the job moves data like tensor parallelism does (TP 4-8
#: on A100: 0.06; data parallelism: 0.01). Collectives come in bursts, so the average never nears
#: the peak: at most 0.27 over the simulated configurations.
NVLINK_BUSY_RATIO = 0.05
#: Share of memory left free at the peak from which a larger micro-batch or less recomputation
#: fits: half of it (the model's activations grow linearly with the micro-batch).
MEM_HEADROOM_LARGE_RATIO = 0.5
#: Tensor-pipe activity below this, with the SMs busy, means the matmuls do not use the tensor
#: cores. Busy simulated jobs in bf16 show 0.25-0.74; 0.4 % of all configurations fall below.
TENSOR_ACTIVE_LOW_RATIO = 0.15


@dataclass(frozen=True)
class Diagnosis:
    """A pattern found in a job's telemetry: its name, the measured values it rests on, what to try."""

    name: str
    evidence: str
    suggestion: str


@dataclass(frozen=True)
class Rule:
    """One named pattern: the features it needs and the check over a feature row (None: not seen)."""

    name: str
    reads: tuple[str, ...]
    check: Callable[[Mapping[str, float]], Diagnosis | None]

    def checkable(self, features: Mapping[str, float]) -> bool:
        """Whether every feature the rule needs is known (not NaN, not absent)."""
        return all(math.isfinite(features.get(f, math.nan)) for f in self.reads)


def _input_bound(f: Mapping[str, float]) -> Diagnosis | None:
    idle, sm, spread = f[IDLE_SHARE_RATIO], f[SM_ACTIVE_MEAN], f[STRAGGLER_SPREAD_RATIO]
    # stalls for input hit every GPU together (they wait on the next batch, then on each other)
    if idle >= IDLE_SHARE_HIGH_RATIO and sm < SM_ACTIVE_LOW_RATIO and spread < STAGE_SPREAD_MIN_RATIO:
        return Diagnosis(
            "input-bound",
            f"SMs idle in {idle:.0%} of samples (≥ {IDLE_SHARE_HIGH_RATIO:.0%}) on every GPU alike "
            f"(spread {spread:.3f}); SM active {sm:.2f} (< {SM_ACTIVE_LOW_RATIO})",
            "the GPUs wait for input: more data-loader workers, pinned memory and prefetch, "
            "CPU affinity of the loader processes to the GPU's NUMA node, faster storage",
        )
    return None


def _memory_headroom(f: Mapping[str, float]) -> Diagnosis | None:
    free, sm = f[MEM_HEADROOM_RATIO], f[SM_ACTIVE_MEAN]
    if free >= MEM_HEADROOM_LARGE_RATIO and sm < SM_ACTIVE_LOW_RATIO:
        return Diagnosis(
            "memory-headroom",
            f"{free:.0%} of GPU memory free at the peak (≥ {MEM_HEADROOM_LARGE_RATIO:.0%}) "
            f"while SM active is {sm:.2f} (< {SM_ACTIVE_LOW_RATIO})",
            "the memory allows more work per kernel: a larger micro-batch, less activation "
            "recomputation, or less model parallelism",
        )
    return None


def _communication_bound(f: Mapping[str, float]) -> Diagnosis | None:
    waiting, sm = f[BUSY_NOT_WORKING_RATIO], f[SM_ACTIVE_MEAN]
    nvlink, hosts = f.get(NVLINK_SHARE_RATIO, math.nan), f.get(HOST_COUNT, math.nan)
    across_nodes = math.isfinite(hosts) and hosts > 1
    links = math.isfinite(nvlink) and nvlink >= NVLINK_BUSY_RATIO
    if waiting >= BUSY_NOT_WORKING_HIGH_RATIO and sm < SM_ACTIVE_LOW_RATIO and (links or across_nodes):
        where = [f"{hosts:.0f} hosts"] if across_nodes else []
        if math.isfinite(nvlink):
            where.append(f"NVLink share {nvlink:.2f}")
        return Diagnosis(
            "communication-bound",
            f"GPUs busy but not computing {waiting:.0%} of the time (≥ {BUSY_NOT_WORKING_HIGH_RATIO:.0%}), "
            f"SM active {sm:.2f} (< {SM_ACTIVE_LOW_RATIO}); {', '.join(where)}",
            "collectives dominate: fewer model-parallel ranks (tensor parallelism within a node, "
            "not across nodes), overlap communication with compute, larger micro-batches per collective",
        )
    return None


def _pipeline_bubbles(f: Mapping[str, float]) -> Diagnosis | None:
    no_kernel = 1.0 - f[GPU_UTIL_MEAN]
    spread, waiting = f[STRAGGLER_SPREAD_RATIO], f[BUSY_NOT_WORKING_RATIO]
    # pipeline stages wait with no kernel at all, and by different amounts; GPUs waiting in
    # collectives (communication-bound, stragglers) hold a kernel instead
    if (
        no_kernel >= NO_KERNEL_HIGH_RATIO
        and spread >= STAGE_SPREAD_MIN_RATIO
        and waiting < BUSY_NOT_WORKING_HIGH_RATIO
    ):
        return Diagnosis(
            "pipeline-bubbles",
            f"GPUs run no kernel {no_kernel:.0%} of the time (≥ {NO_KERNEL_HIGH_RATIO:.0%}), by "
            f"different amounts (SM active spread {spread:.2f} ≥ {STAGE_SPREAD_MIN_RATIO})",
            "if the job is pipelined, its stages wait on each other: more micro-batches per "
            "iteration, interleaved stages, fewer pipeline stages, balanced stage layers",
        )
    return None


def _stragglers(f: Mapping[str, float]) -> Diagnosis | None:
    spread, no_kernel = f[STRAGGLER_SPREAD_RATIO], 1.0 - f[GPU_UTIL_MEAN]
    # the spread is of SM activity, or of GPU utilization where a source lacks SM activity
    signal = "SM activity" if math.isfinite(f.get(SM_ACTIVE_MEAN, math.nan)) else "GPU utilization"
    if spread >= STRAGGLER_MIN_SPREAD_RATIO and no_kernel < NO_KERNEL_HIGH_RATIO:
        return Diagnosis(
            "stragglers",
            f"mean {signal} differs by {spread:.2f} across GPUs (≥ {STRAGGLER_MIN_SPREAD_RATIO}) "
            "while all of them hold kernels: the fast ones wait in collectives",
            "look at the slowest GPU (the notes name it): clocks, temperature and power capping, "
            "its PCIe or NVLink links, other processes on it; rebalance uneven work",
        )
    return None


def _tensor_cores_idle(f: Mapping[str, float]) -> Diagnosis | None:
    sm, tensor = f[SM_ACTIVE_MEAN], f[TENSOR_ACTIVE_MEAN]
    if sm >= SM_ACTIVE_LOW_RATIO and tensor < TENSOR_ACTIVE_LOW_RATIO:
        return Diagnosis(
            "tensor-cores-idle",
            f"SMs busy ({sm:.2f} ≥ {SM_ACTIVE_LOW_RATIO}) but tensor cores active only {tensor:.2f} "
            f"(< {TENSOR_ACTIVE_LOW_RATIO})",
            "the work runs outside the tensor cores: bf16/fp16 mixed precision (or TF32), fused "
            "kernels (FlashAttention, fused optimizers), dimensions that are multiples of 8",
        )
    return None


#: The rules, in the order their diagnoses are listed.
RULES: tuple[Rule, ...] = (
    Rule("input-bound", (IDLE_SHARE_RATIO, SM_ACTIVE_MEAN, STRAGGLER_SPREAD_RATIO), _input_bound),
    Rule("memory-headroom", (MEM_HEADROOM_RATIO, SM_ACTIVE_MEAN), _memory_headroom),
    Rule("communication-bound", (BUSY_NOT_WORKING_RATIO, SM_ACTIVE_MEAN), _communication_bound),
    Rule(
        "pipeline-bubbles",
        (GPU_UTIL_MEAN, STRAGGLER_SPREAD_RATIO, BUSY_NOT_WORKING_RATIO),
        _pipeline_bubbles,
    ),
    Rule("stragglers", (STRAGGLER_SPREAD_RATIO, GPU_UTIL_MEAN), _stragglers),
    Rule("tensor-cores-idle", (SM_ACTIVE_MEAN, TENSOR_ACTIVE_MEAN), _tensor_cores_idle),
)
RULE_NAMES: tuple[str, ...] = tuple(r.name for r in RULES)


def diagnose(features: Mapping[str, float]) -> tuple[Diagnosis, ...]:
    """The diagnoses of a job's feature row (names of :data:`estimator.features.extract.FEATURES`)."""
    return tuple(d for r in RULES if r.checkable(features) and (d := r.check(features)) is not None)


def checked_rules(features: Mapping[str, float]) -> tuple[str, ...]:
    """Names of the rules whose features the row has: those whose silence means "not seen"."""
    return tuple(r.name for r in RULES if r.checkable(features))
