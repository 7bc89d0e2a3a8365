"""A performance model of one training iteration of a GPT-style transformer, and the telemetry it would show.

The model behind ``zest simulate``. Symbols as in the public analyses it is
built from: B global batch, b micro-batch, s sequence length, h hidden size,
a attention heads, l layers, V vocabulary, t/p/d tensor/pipeline/data
parallelism, m = B/(b·d) micro-batches per iteration, v interleaved stages.

* FLOPs: Narayanan et al. 2021 ("Efficient Large-Scale Language Model
  Training on GPU Clusters Using Megatron-LM"), a forward pass of one layer is
  24·b·s·h² + 4·b·s²·h FLOPs, the logit layer 2·b·s·h·V; backward is twice
  the forward; full recomputation adds one forward: 96·B·s·l·h²·(1 + s/(6h) +
  V/(16·l·h)) per iteration with it, 72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h))
  without.
* Attention (``"attention"``): ``standard`` is unfused, as on the Megatron
  runs vTrain measured: the b·a·s² scores (softmax input and output, dropout
  mask and output) are written to HBM, kept for backward (Korthikanti's
  5·a·s/h term) and streamed by the memory-bound kernels. ``flash`` is fused
  FlashAttention (Dao et al. 2022; FlashAttention-2, Dao 2023): the scores stay
  on-chip and are neither stored nor streamed; its backward recomputes QKᵀ,
  2·b·s²·h FLOPs more per layer (backward 2.5x the attention's forward instead
  of 2x). With ``flash``, ``recompute: selective`` is already done: it equals
  ``none``.
* Pipeline bubble of 1F1B: (p−1)/m of the ideal time, (p−1)/(m·v) interleaved.
* Activation memory per layer: Korthikanti et al. 2022 ("Reducing Activation
  Recomputation in Large Transformer Models"), s·b·h·(34 + 5·a·s/h) bytes
  without parallelism, Table 2 for TP, SP, selective and full recomputation.
* Model states: 16 bytes per parameter for mixed-precision Adam (Rajbhandari
  et al. 2020, ZeRO), split by t and p.
* Communication: ring all-reduce moves 2(n−1)/n of the buffer per GPU; TP
  does 4 all-reduces of s·b·h·2 bytes per layer and micro-batch (2 forward,
  2 backward; 2 more with full recomputation); PP sends s·b·h·2 bytes per
  micro-batch across each stage boundary, forward and backward.
* Data-parallel sharding (ZeRO, Rajbhandari et al. 2020; PyTorch FSDP, Zhao et
  al. 2023): ``zero1`` shards the 12 bytes of optimizer state per parameter over
  the d replicas, ``zero2`` the 2 bytes of gradient too, ``full`` (FSDP
  FULL_SHARD, ZeRO-3) the 2 bytes of weights too, holding two layers gathered at
  a time. zero1/zero2 reduce-scatter the gradients and all-gather the weights
  after the step: the volume of an all-reduce. ``full`` all-gathers the weights
  in forward and again in backward and reduce-scatters the gradients: three
  passes of (n−1)/n of the buffer instead of two, 1.5x. Each replica updates
  only its shard (the optimizer step is 1/d). Like the all-reduce without
  sharding (as calibrated on vTrain), the passes are counted once per iteration
  and exposed after the pipeline, not hidden behind compute.
* Nodes: ``gpus_per_node`` GPUs (8 on the vendor's systems) joined by NVLink;
  a group whose ranks span nodes runs over the per-GPU network
  (``internode_gbps_per_gpu``, default the GPU's DGX/HGX NIC). A data-parallel
  group of g ranks per node on k nodes is reduced hierarchically: over NVLink
  within the node ((g−1)/g of the buffer per pass), across nodes over each
  GPU's own NIC ((k−1)/k of 1/g of the buffer per pass). Tensor parallelism
  across nodes runs its ring at the network's rate: allowed, and slow.

What the analyses leave open (how close a GPU gets to its peak on a given
matmul size, the HBM traffic of the memory-bound kernels, how much of the link
bandwidth NCCL reaches, the host time to issue a layer's kernels, which the
GPU hides only when its own work is longer, how fast FlashAttention runs) are the constants
of :class:`PerfConstants`, fitted by ``models/calibrate_perfmodel.py`` on measured iteration
times (A100: vTrain and llm-foundry; H100: llm-foundry and torchtitan; the other GPU types
derived) and stored in ``models/perfmodel_constants.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields, replace
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from collectors import gpuspecs, schema
from collectors.errors import InputError

__all__ = [
    "ATTENTION_MODES",
    "RECOMPUTE_MODES",
    "SHARDING_MODES",
    "IterationBreakdown",
    "JobSpec",
    "PerfConstants",
    "SpecError",
    "activation_bytes_per_layer",
    "iteration",
    "iteration_seconds",
    "load_constants",
    "memory_bytes_per_gpu",
    "model_flops_per_iteration",
    "parameters_per_gpu",
    "simulate_telemetry",
    "tokens_per_second",
]


class SpecError(InputError):
    """A job spec for ``zest simulate`` is invalid or cannot run; the message names the field and why."""


# The canonical signal names, in the schema's order (never retyped here).
(
    GPU_UTIL,
    SM_ACTIVE,
    SM_OCCUPANCY,
    TENSOR_ACTIVE,
    DRAM_ACTIVE,
    MEM_USED,
    MEM_TOTAL,
    POWER,
    PCIE_TX,
    PCIE_RX,
    NVLINK,
) = schema.SIGNALS

RECOMPUTE_MODES: Final = ("none", "selective", "full")
#: Data-parallel sharding: none (replicated), zero1 (optimizer states), zero2 (+ gradients), full
#: (+ weights: FSDP FULL_SHARD / ZeRO-3; llm-foundry's SHARD_GRAD_OP is zero2).
SHARDING_MODES: Final = ("none", "zero1", "zero2", "full")
#: Attention kernels: standard (unfused, scores in HBM, as vTrain's Megatron runs) or flash (fused
#: FlashAttention, as llm-foundry's MPT and torchtitan's Llama runs).
ATTENTION_MODES: Final = ("standard", "flash")

BF16_BYTES: Final = 2
#: fp16/bf16 weights and gradients (2 + 2) and fp32 master weights, momentum, variance (4 + 4 + 4).
MODEL_STATE_BYTES_PER_PARAM: Final = 16
#: The 16 bytes by what ZeRO shards: optimizer states (zero1), then gradients (zero2), then weights (full).
OPTIMIZER_STATE_BYTES_PER_PARAM: Final = 12
GRADIENT_BYTES_PER_PARAM: Final = 2
WEIGHT_BYTES_PER_PARAM: Final = 2
#: Layers a fully sharded replica holds gathered at once (FSDP: the running unit and the prefetched one).
GATHERED_LAYERS: Final = 2
#: HBM bytes one fused Adam step moves per parameter: read grad, fp32 param, m, v; write param, m, v,
#: and the bf16 copy.
OPTIMIZER_STEP_BYTES_PER_PARAM: Final = 32
#: CUDA context, cuBLAS workspaces, NCCL buffers and allocator slack that a training process holds
#: besides tensors (typically 1.5-3 GiB on A100/H100).
RUNTIME_RESERVED_BYTES: Final = 2 * 1024**3
#: Most micro-batches per iteration simulated (the timeline holds each); real jobs run a few thousand.
MAX_MICRO_BATCHES: Final = 100_000
#: Most samples (seconds x GPUs) one simulation holds in memory, about 3 GB: 8 GPUs for two weeks.
MAX_SIMULATED_SAMPLES: Final = 10_000_000
#: Thread blocks NCCL runs per collective (one SM each); its defaults on NVSwitch systems are 16-32.
NCCL_CHANNELS: Final = 16

# How each phase looks on the chip (DCGM profiling ratios), in _ACTIVITY order less NVLink. Matmuls keep
# nearly every SM busy and the tensor pipe as busy as the achieved share of peak; memory-bound kernels
# (softmax, dropout, layer norm, GeLU) stream HBM with the tensor pipe idle; while the host is the
# bottleneck (Python, kernel launches) the GPU runs the few kernels it is given and waits between them.
_MATH_PROFILE: Final = (1.0, 0.93, 0.30, None, 0.25)  # tensor: the achieved matmul efficiency
_MEMORY_BOUND_PROFILE: Final = (1.0, 0.85, 0.60, 0.0, 0.75)
_HOST_BOUND_PROFILE: Final = (0.55, 0.10, 0.05, 0.0, 0.05)
_TENSOR_ACTIVE_CEILING: Final = 0.93  # where DCGM's tensor pipe saturates
_OPTIMIZER_PROFILE: Final = (1.0, 0.60, 0.50, 0.0, 0.85)  # multi-tensor Adam: HBM-bound
_HOST_GPU_UTIL: Final = 0.10  # data loading and Python between iterations
# Power: idle + (TDP − idle) · (weights · activity), fitted by eye to the public H100 example in
# shared/reference/telemetry.md (SM 0.92, tensor 0.28, DRAM 0.2 → 570-600 W of 700).
_POWER_WEIGHTS: Final = {SM_ACTIVE: 0.75, TENSOR_ACTIVE: 0.30, DRAM_ACTIVE: 0.10}
#: Host traffic over PCIe besides the input batches (launches, small copies, logging), bytes/s.
_PCIE_BASELINE_BYTES_PER_SECOND: Final = 2.0e7
_INPUT_BYTES_PER_TOKEN: Final = 20  # int64 token and label, fp32 loss mask

_INT_FIELDS: Final = (
    "num_gpus",
    "hidden_size",
    "attention_heads",
    "num_layers",
    "sequence_length",
    "global_batch",
    "micro_batch",
    "tensor_parallel",
    "pipeline_parallel",
    "data_parallel",
    "vocab_size",
    "pipeline_interleaving",
)

GIB = 1024**3


# --- the job -----------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """A training job: model shape, batch and parallel layout, on ``num_gpus`` GPUs of type ``gpu``.

    ``gpu`` is a key of :mod:`collectors.gpuspecs` ("a100-80gb") or an NVML name;
    it is stored as the key. Construction checks the layout (products and
    divisibility); :meth:`from_json` also refuses jobs that do not fit in memory.
    Ranks are in Megatron's order (tensor fastest, then data, then pipeline),
    ``gpus_per_node`` to a node (None: the GPU's system, 8); ``sharding`` is one
    of :data:`SHARDING_MODES`; ``internode_gbps_per_gpu`` is each GPU's network
    rate between nodes in Gb/s per direction (None: the GPU's DGX/HGX NIC, 200
    Gb/s on A100, 400 Gb/s InfiniBand NDR on H100/H200); ``attention`` is one of
    :data:`ATTENTION_MODES`.
    """

    gpu: str
    num_gpus: int
    hidden_size: int
    attention_heads: int
    num_layers: int
    sequence_length: int
    global_batch: int
    micro_batch: int
    tensor_parallel: int
    pipeline_parallel: int
    data_parallel: int
    recompute: str = "none"
    sequence_parallel: bool = False
    vocab_size: int = 51200
    pipeline_interleaving: int = 1
    sharding: str = "none"
    gpus_per_node: int | None = None
    internode_gbps_per_gpu: float | None = None
    attention: str = "standard"

    def __post_init__(self) -> None:
        try:
            key = gpuspecs.get(self.gpu).key
        except KeyError as exc:
            raise SpecError(f"gpu: {exc.args[0]}") from None
        object.__setattr__(self, "gpu", key)
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"{name}: must be a positive integer, got {value!r}")
        if self.recompute not in RECOMPUTE_MODES:
            raise SpecError(f"recompute: must be one of {', '.join(RECOMPUTE_MODES)}, got {self.recompute!r}")
        if not isinstance(self.sequence_parallel, bool):
            raise SpecError(f"sequence_parallel: must be true or false, got {self.sequence_parallel!r}")
        if self.sharding not in SHARDING_MODES:
            raise SpecError(f"sharding: must be one of {', '.join(SHARDING_MODES)}, got {self.sharding!r}")
        if self.attention not in ATTENTION_MODES:
            raise SpecError(f"attention: must be one of {', '.join(ATTENTION_MODES)}, got {self.attention!r}")
        node = self.gpus_per_node
        if node is not None and (isinstance(node, bool) or not isinstance(node, int) or node < 1):
            raise SpecError(f"gpus_per_node: must be a positive integer, got {node!r}")
        rate = self.internode_gbps_per_gpu
        if rate is not None and (
            isinstance(rate, bool)
            or not isinstance(rate, int | float)
            or not math.isfinite(rate)
            or rate <= 0
        ):
            raise SpecError(f"internode_gbps_per_gpu: must be a positive number of Gb/s, got {rate!r}")
        t, p, d = self.tensor_parallel, self.pipeline_parallel, self.data_parallel
        if t * p * d != self.num_gpus:
            raise SpecError(
                f"tensor_parallel·pipeline_parallel·data_parallel = {t}·{p}·{d} = {t * p * d} "
                f"but num_gpus is {self.num_gpus}; make the product equal the GPU count"
            )
        if self.global_batch % (self.micro_batch * d):
            raise SpecError(
                f"global_batch {self.global_batch} is not a multiple of micro_batch·data_parallel = "
                f"{self.micro_batch}·{d} = {self.micro_batch * d}"
            )
        if self.micro_batches > MAX_MICRO_BATCHES:
            raise SpecError(
                f"global_batch / (micro_batch·data_parallel) = {self.micro_batches} micro-batches per "
                f"iteration, more than the {MAX_MICRO_BATCHES:,} the model simulates; raise micro_batch"
            )
        if self.hidden_size % self.attention_heads:
            raise SpecError(
                f"hidden_size {self.hidden_size} is not divisible by attention_heads {self.attention_heads}"
            )
        if self.attention_heads % t:
            raise SpecError(f"attention_heads {self.attention_heads} is not divisible by tensor_parallel {t}")
        if self.num_layers % (p * self.pipeline_interleaving):
            raise SpecError(
                f"num_layers {self.num_layers} is not divisible by pipeline_parallel·pipeline_interleaving "
                f"= {p * self.pipeline_interleaving}"
            )
        if self.node_gpus % t and t % self.node_gpus:
            raise SpecError(
                f"tensor_parallel {t} must divide the {self.node_gpus} GPUs of a node or be a multiple of "
                "them (gpus_per_node)"
            )
        if self.pipeline_interleaving > 1:
            if p == 1:
                raise SpecError("pipeline_interleaving > 1 needs pipeline_parallel > 1")
            if self.micro_batches % p:
                raise SpecError(
                    f"the interleaved schedule needs micro-batches per iteration ({self.micro_batches}) "
                    f"to be a multiple of pipeline_parallel {p}"
                )

    @property
    def micro_batches(self) -> int:
        """Micro-batches each pipeline runs per iteration, m = B / (b·d)."""
        return self.global_batch // (self.micro_batch * self.data_parallel)

    @property
    def layers_per_stage(self) -> int:
        """Transformer layers one pipeline stage holds (all its interleaved chunks together)."""
        return self.num_layers // self.pipeline_parallel

    @property
    def gpu_spec(self) -> gpuspecs.GpuSpec:
        return gpuspecs.get(self.gpu)

    @property
    def node_gpus(self) -> int:
        """GPUs per node: ``gpus_per_node``, or the GPU's system (8)."""
        return self.gpu_spec.gpus_per_node if self.gpus_per_node is None else self.gpus_per_node

    @property
    def internode_bytes_per_second(self) -> float:
        """Each GPU's network rate between nodes, bytes per second per direction."""
        if self.internode_gbps_per_gpu is None:
            return self.gpu_spec.network_bytes_per_second
        return self.internode_gbps_per_gpu * 1e9 / 8.0

    @classmethod
    def from_json(cls, source: str | Path | Mapping[str, Any]) -> JobSpec:
        """A validated spec from a JSON file path or an already parsed mapping.

        Raises :class:`SpecError` (one line) for an unreadable file, unknown or
        missing fields, wrong types, an inconsistent layout, or a job that does
        not fit in GPU memory (saying by how much).
        """
        if isinstance(source, Mapping):
            raw: Any = source
        elif not isinstance(source, str | Path):
            raise SpecError(f"job spec must be a JSON object or a file path, got {type(source).__name__}")
        else:
            path = Path(source)
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise SpecError(f"cannot read job spec {path}: {exc.strerror}") from None
            except json.JSONDecodeError as exc:
                raise SpecError(f"job spec {path} is not JSON: {exc.msg} at line {exc.lineno}") from None
            except UnicodeDecodeError:
                raise SpecError(f"job spec {path} is not UTF-8 text: give a JSON file") from None
        if not isinstance(raw, Mapping):
            raise SpecError("job spec must be a JSON object of field: value")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise SpecError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}")
        required = [n for n, f in known.items() if f.default is MISSING]
        missing = [n for n in required if n not in raw]
        if missing:
            raise SpecError(f"job spec lacks field(s) {', '.join(missing)}")
        if not isinstance(raw["gpu"], str):
            raise SpecError(f"gpu: must be a string such as {gpuspecs.gpu_keys()[0]!r}, got {raw['gpu']!r}")
        if "recompute" in raw and not isinstance(raw["recompute"], str):
            raise SpecError(
                f"recompute: must be one of {', '.join(RECOMPUTE_MODES)}, got {raw['recompute']!r}"
            )
        if "sharding" in raw and not isinstance(raw["sharding"], str):
            raise SpecError(f"sharding: must be one of {', '.join(SHARDING_MODES)}, got {raw['sharding']!r}")
        if "attention" in raw and not isinstance(raw["attention"], str):
            raise SpecError(
                f"attention: must be one of {', '.join(ATTENTION_MODES)}, got {raw['attention']!r}"
            )
        spec = cls(**dict(raw))
        needed = memory_bytes_per_gpu(spec)
        capacity = spec.gpu_spec.memory_total_bytes
        if needed > capacity:
            raise SpecError(
                f"job needs {needed / GIB:.1f} GiB per GPU but a {spec.gpu} has {capacity / GIB:.1f} GiB "
                f"({(needed - capacity) / GIB:.1f} GiB short); use recompute, sharding, more "
                "tensor/pipeline parallelism or a smaller micro_batch"
            )
        return spec


# --- the constants -----------------------------------------------------------


@dataclass(frozen=True)
class PerfConstants:
    """The fitted efficiency constants of one GPU type (see ``models/perfmodel_constants.json``)."""

    gpu: str
    #: Best share of peak BF16 FLOPs a transformer layer's kernels reach on large matmuls.
    matmul_efficiency_max: float
    #: Matmul size b·s·h/t (elements of one activation) at which efficiency is half its best.
    matmul_half_size_elements: float
    #: How sharply efficiency rises with size: e = e_max / (1 + (x_half/x)^k).
    matmul_efficiency_exponent: float
    #: HBM bytes the memory-bound kernels of a pass move per byte of activation a layer stores.
    memory_traffic_per_activation_byte: float
    #: Host time per layer and pass (forward, 2 for backward, recompute) of each micro-batch: Python,
    #: framework hooks and kernel launches, which the GPU's work hides only when it is longer.
    layer_host_seconds: float
    #: How completely host and GPU time overlap: a micro-batch takes (host^n + gpu^n)^(1/n).
    overlap_sharpness: float
    #: Share of the link's per-direction bandwidth that NCCL collectives and p2p reach.
    comm_efficiency: float
    #: Fixed cost of one step of a ring collective (2(n−1) steps for n GPUs): latency, launch, rank skew.
    collective_latency_seconds: float
    #: Fixed cost of one pipeline point-to-point transfer (send and matching receive).
    p2p_latency_seconds: float
    #: Host-side time per iteration (data loading, scheduling, logging) with the GPUs idle.
    iteration_overhead_seconds: float
    #: FlashAttention's rate on the attention FLOPs (counted unmasked, as Narayanan's 4·b·s²·h) over the
    #: matmul rate; above 1 where a causal kernel skips the masked half.
    flash_attention_efficiency_ratio: float

    def matmul_efficiency(self, size_elements: float) -> float:
        """Achieved share of peak FLOPs for matmuls of ``size_elements`` = b·s·h/t."""
        ratio = self.matmul_half_size_elements / size_elements
        return self.matmul_efficiency_max / (1.0 + ratio**self.matmul_efficiency_exponent)

    @classmethod
    def from_mapping(cls, document: Mapping[str, Any], gpu: str) -> PerfConstants:
        """The constants of ``gpu`` from a parsed ``perfmodel_constants.json``."""
        key = gpuspecs.get(gpu).key
        try:
            entry = document["constants"][key]
            return cls(gpu=key, **{f.name: float(entry[f.name]) for f in fields(cls) if f.name != "gpu"})
        except KeyError as exc:
            raise SpecError(
                f"perfmodel constants lack {exc.args[0]!r} for {key}; rerun models/calibrate_perfmodel.py"
            ) from None


#: Where the calibration script writes the constants (a repository file, not package data).
DEFAULT_CONSTANTS_PATH: Final = Path(str(resources.files("zest_models") / "perfmodel_constants.json"))


def load_constants(gpu: str, path: str | Path = DEFAULT_CONSTANTS_PATH) -> PerfConstants:
    """Read the calibrated constants of ``gpu`` from ``path`` (JSON; raises :class:`SpecError`)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(
            f"cannot read perfmodel constants {path}: {exc.strerror}; run models/calibrate_perfmodel.py"
        ) from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"perfmodel constants {path} are not JSON: {exc.msg} at line {exc.lineno}") from None
    return PerfConstants.from_mapping(document, gpu)


# --- counts: FLOPs, parameters, memory --------------------------------------


def model_flops_per_iteration(spec: JobSpec) -> float:
    """FLOPs of one iteration over all GPUs (Narayanan et al. 2021, eq. 3), recomputation included.

    FlashAttention's backward recomputes QKᵀ: 2·B·s²·h FLOPs per layer more.
    """
    big_b, s, h, n_layers, vocab = (
        spec.global_batch,
        spec.sequence_length,
        spec.hidden_size,
        spec.num_layers,
        spec.vocab_size,
    )
    flash = spec.attention == "flash"
    if spec.recompute == "full":
        flops = 96.0 * big_b * s * n_layers * h**2 * (1 + s / (6 * h) + vocab / (16 * n_layers * h))
    else:
        flops = 72.0 * big_b * s * n_layers * h**2 * (1 + s / (6 * h) + vocab / (12 * n_layers * h))
    if spec.recompute == "selective" and not flash:
        flops += 4.0 * big_b * s**2 * h * n_layers  # QKᵀ and attention·V run again in the backward pass
    if flash:
        flops += 2.0 * big_b * s**2 * h * n_layers  # QKᵀ again, on-chip, in the backward pass
    return flops


def _stage_has_embedding(spec: JobSpec, stage: int) -> bool:
    # Megatron keeps the word embedding on the first stage and a tied copy on the last.
    return stage in (0, spec.pipeline_parallel - 1)


def parameters_per_gpu(spec: JobSpec, stage: int = 0) -> float:
    """Parameters one GPU of pipeline ``stage`` holds: 12h² + 13h per layer, embeddings, split by t."""
    h, t = spec.hidden_size, spec.tensor_parallel
    params = spec.layers_per_stage * (12 * h**2 + 13 * h) / t
    if _stage_has_embedding(spec, stage):
        params += spec.vocab_size * h / t
    if stage == 0:
        params += spec.sequence_length * h  # position embedding
    return params


def activation_bytes_per_layer(spec: JobSpec, recompute: str | None = None) -> float:
    """Activation bytes one layer keeps for one micro-batch (Korthikanti et al. 2022, Table 2).

    ``recompute`` overrides the spec's mode (e.g. "none" for what a layer holds while it runs).
    FlashAttention stores no scores (its per-row softmax statistics, 4·a·s·b bytes, are neglected).
    """
    recompute = spec.recompute if recompute is None else recompute
    s, b, h, a, t = (
        spec.sequence_length,
        spec.micro_batch,
        spec.hidden_size,
        spec.attention_heads,
        spec.tensor_parallel,
    )
    sbh = s * b * h
    sp = spec.sequence_parallel
    if recompute == "full":
        return 2.0 * sbh / (t if sp else 1)
    stored = recompute != "selective" and spec.attention == "standard"
    attention_scores = 5.0 * a * s / h if stored else 0.0
    if sp:
        return sbh * (34.0 + attention_scores) / t
    return sbh * (10.0 + 24.0 / t + attention_scores / t)


def _in_flight_micro_batches(spec: JobSpec, stage: int) -> float:
    # 1F1B: stage i holds min(p − i, m) micro-batches' activations; interleaving adds (p−1)/(p·v).
    p, v = spec.pipeline_parallel, spec.pipeline_interleaving
    count = float(min(p - stage, spec.micro_batches))
    if v > 1:
        count *= 1.0 + (p - 1) / (p * v)
    return count


def _state_bytes(spec: JobSpec, stage: int) -> float:
    """Weights, gradients and Adam states one GPU of ``stage`` holds, after data-parallel sharding."""
    params = parameters_per_gpu(spec, stage)
    if spec.sharding == "none":
        return MODEL_STATE_BYTES_PER_PARAM * params
    d = spec.data_parallel
    sharded = OPTIMIZER_STATE_BYTES_PER_PARAM
    kept = WEIGHT_BYTES_PER_PARAM + GRADIENT_BYTES_PER_PARAM
    gathered = 0.0
    if spec.sharding in ("zero2", "full"):
        sharded += GRADIENT_BYTES_PER_PARAM
        kept -= GRADIENT_BYTES_PER_PARAM
    if spec.sharding == "full":
        sharded += WEIGHT_BYTES_PER_PARAM
        kept -= WEIGHT_BYTES_PER_PARAM
        # the running and the prefetched layer, weights and gradients unsharded
        h = spec.hidden_size
        layer = (12 * h**2 + 13 * h) / spec.tensor_parallel
        units = min(GATHERED_LAYERS, spec.layers_per_stage)
        gathered = units * layer * (WEIGHT_BYTES_PER_PARAM + GRADIENT_BYTES_PER_PARAM)
    return kept * params + sharded * params / d + gathered


def memory_bytes_per_gpu(spec: JobSpec, stage: int | None = None) -> float:
    """Memory one GPU of ``stage`` needs (the largest over stages when None): states, activations, runtime."""
    if stage is None:
        return max(memory_bytes_per_gpu(spec, i) for i in range(spec.pipeline_parallel))
    states = _state_bytes(spec, stage)
    activations = (
        activation_bytes_per_layer(spec) * spec.layers_per_stage * _in_flight_micro_batches(spec, stage)
    )
    if spec.recompute != "none":
        # the layer being recomputed holds its full activations during its backward pass
        activations += activation_bytes_per_layer(spec, "none")
    if stage == spec.pipeline_parallel - 1:
        # fp32 logits for the cross-entropy of one micro-batch
        activations += 4.0 * spec.sequence_length * spec.micro_batch * spec.vocab_size / spec.tensor_parallel
    return states + activations + RUNTIME_RESERVED_BYTES


# --- the iteration -----------------------------------------------------------


@dataclass(frozen=True)
class IterationBreakdown:
    """Where one iteration's time goes on the critical pipeline stage, and what the job's GPUs would show.

    The ``*_seconds`` fields sum to ``total_seconds``; they are per iteration,
    for the stage that sets the pace (the slowest; the last when stages are
    equal, as it also computes the logits). ``compute_seconds`` is forward and
    backward (recomputation apart), ``bubble_seconds`` the time the stage waits
    for the others (pipeline fill and drain, slower stages). The utilization
    ratios are time averages over the iteration and over all GPUs of the job.
    """

    compute_seconds: float
    recompute_seconds: float
    bubble_seconds: float
    tp_comm_exposed_seconds: float
    pp_comm_exposed_seconds: float
    dp_comm_exposed_seconds: float
    optimizer_seconds: float
    overhead_seconds: float
    total_seconds: float
    memory_bytes_per_gpu: float
    memory_capacity_bytes: float
    fits: bool
    model_flops_per_iteration: float
    mfu_ratio: float  # model FLOPs (recompute excluded) per second over the job's peak
    gpu_util_ratio: float
    sm_active_ratio: float
    sm_occupancy_ratio: float
    tensor_active_ratio: float
    dram_active_ratio: float
    nvlink_bytes_per_second: float  # transmitted plus received, per GPU
    power_watts: float
    stage_busy_seconds: tuple[float, ...]  # compute, recompute and exposed TP/PP comm per stage


def tokens_per_second(spec: JobSpec, breakdown: IterationBreakdown) -> float:
    """Training throughput of the whole job in tokens per second."""
    return spec.global_batch * spec.sequence_length / breakdown.total_seconds


# Phase activity vectors: one row per phase kind, one column per quantity in _ACTIVITY.
_ACTIVITY: Final = (GPU_UTIL, SM_ACTIVE, SM_OCCUPANCY, TENSOR_ACTIVE, DRAM_ACTIVE, NVLINK)


@dataclass(frozen=True)
class _Segment:
    seconds: float
    activity: tuple[float, ...]  # in _ACTIVITY order


@dataclass(frozen=True)
class _MicroBatch:
    """One micro-batch on one stage: seconds and activity of each phase."""

    compute: _Segment
    recompute: _Segment
    tp_comm: _Segment
    pp_comm: _Segment

    @property
    def seconds(self) -> float:
        return self.compute.seconds + self.recompute.seconds + self.tp_comm.seconds + self.pp_comm.seconds


_IDLE: Final = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _compute_segment(
    math_seconds: float, memory_seconds: float, seconds: float, efficiency: float
) -> _Segment:
    """A compute phase of ``seconds``: matmuls, memory-bound kernels, and host-bound waiting the rest."""
    if seconds <= 0:
        return _Segment(0.0, _IDLE)
    waiting = max(0.0, seconds - math_seconds - memory_seconds)
    tensor = min(efficiency, _TENSOR_ACTIVE_CEILING)
    math_profile = tuple(tensor if x is None else x for x in _MATH_PROFILE)
    activity = tuple(
        (math_seconds * a + memory_seconds * b + waiting * c) / seconds
        for a, b, c in zip(math_profile, _MEMORY_BOUND_PROFILE, _HOST_BOUND_PROFILE, strict=True)
    )
    return _Segment(seconds, (*activity, 0.0))


def _comm_segment(seconds: float, link_bytes_per_second: float, gpu: gpuspecs.GpuSpec) -> _Segment:
    """A phase spent in NCCL: a kernel always resident on a few SMs, HBM read and written at link rate."""
    if seconds <= 0:
        return _Segment(0.0, _IDLE)
    sm = min(1.0, NCCL_CHANNELS / gpu.sm_count)
    dram = min(1.0, 2.0 * link_bytes_per_second / gpu.hbm_bytes_per_second)
    return _Segment(seconds, (1.0, sm, sm * 0.5, 0.0, dram, link_bytes_per_second))


def _spans_hosts(stride: int, count: int, node_gpus: int) -> bool:
    # rank = pp·(t·d) + dp·t + tp; a group with ranks 0, stride, ..., (count−1)·stride spans hosts when
    # its last rank is not on host 0.
    return count > 1 and stride * (count - 1) >= node_gpus


class _Model:
    """The per-stage timeline of one iteration; everything else derives from it."""

    def __init__(self, spec: JobSpec, constants: PerfConstants) -> None:
        if constants.gpu != spec.gpu:
            raise SpecError(f"constants are for {constants.gpu} but the job runs on {spec.gpu}")
        self.spec = spec
        self.c = constants
        self.gpu = spec.gpu_spec
        s, b, h, t = spec.sequence_length, spec.micro_batch, spec.hidden_size, spec.tensor_parallel
        p, d, v = spec.pipeline_parallel, spec.data_parallel, spec.pipeline_interleaving
        self.efficiency = constants.matmul_efficiency(b * s * h / t)
        self.flop_rate = self.gpu.peak_bf16_flops_per_second * self.efficiency
        self.layer_activation_bytes = activation_bytes_per_layer(spec, "none")
        link = self.gpu.nvlink_bytes_per_second * constants.comm_efficiency
        network = spec.internode_bytes_per_second * constants.comm_efficiency
        node = spec.node_gpus
        self.nvlink = link
        self.network = network
        self.tp_link = network if _spans_hosts(1, t, node) else link
        self.dp_link = network if _spans_hosts(t, d, node) else link
        self.pp_link = network if _spans_hosts(t * d, p, node) else link
        # data-parallel ranks that share a node (t divides the node or is a multiple of it)
        self.dp_ranks_per_node = min(d, max(1, node // t))
        self.micro_batches = [self._micro_batch(i) for i in range(p)]
        busy = [mb.seconds for mb in self.micro_batches]
        self.critical_stage = max(range(p), key=busy.__getitem__)
        slowest = busy[self.critical_stage]
        m = spec.micro_batches
        # 1F1B: the slowest stage sets the steady state; fill and drain pass once through the others,
        # v times faster when each stage holds v interleaved chunks.
        self.pipeline_seconds = m * slowest + (sum(busy) - slowest) / v
        self.post = [self._post_phases(i) for i in range(p)]
        self.post_seconds = max(dp.seconds + opt.seconds for dp, opt in self.post)
        self.total_seconds = self.pipeline_seconds + self.post_seconds + constants.iteration_overhead_seconds

    def _micro_batch(self, stage: int) -> _MicroBatch:
        """Forward and backward of one micro-batch on ``stage``.

        The host issues kernels and collectives while the GPU runs them, so
        the micro-batch takes the larger of host and GPU time, blended by
        ``overlap_sharpness`` ((host^n + gpu^n)^(1/n); n = 1 is no overlap).
        The time beyond the GPU's own work is host-bound waiting, shared out
        to the phases by their host time.
        """
        spec, c = self.spec, self.c
        s, b, h, t = spec.sequence_length, spec.micro_batch, spec.hidden_size, spec.tensor_parallel
        p, v = spec.pipeline_parallel, spec.pipeline_interleaving
        n_layers = spec.layers_per_stage
        hbm = self.gpu.hbm_bytes_per_second
        traffic = c.memory_traffic_per_activation_byte
        layer_forward = (24.0 * b * s * h**2 + 4.0 * b * s**2 * h) / t
        forward = n_layers * layer_forward
        # HBM traffic of the memory-bound kernels tracks the activations they produce (Korthikanti's count)
        layer_bytes = traffic * self.layer_activation_bytes
        forward_bytes = n_layers * layer_bytes
        if stage == p - 1:
            forward += 2.0 * b * s * h * spec.vocab_size / t
            forward_bytes += traffic * 4.0 * b * s * spec.vocab_size / t  # fp32 logits
        compute_math = 3.0 * forward / self.flop_rate
        recompute_math = n_layers * layer_forward / self.flop_rate
        if spec.attention == "flash":
            # QKᵀ and attention·V (4·b·s²·h forward) run fused at their own rate; the backward recomputes
            # QKᵀ, so it is 2.5 forwards of them instead of 2
            attention = n_layers * 4.0 * b * s**2 * h / t
            flash_rate = self.flop_rate * c.flash_attention_efficiency_ratio
            compute_math = 3.0 * (forward - attention) / self.flop_rate + 3.5 * attention / flash_rate
            recompute_math = (n_layers * layer_forward - attention) / self.flop_rate + attention / flash_rate
        # (math seconds, memory seconds, host seconds) of each phase; backward is twice the forward
        compute = (
            compute_math,
            3.0 * forward_bytes / hbm,
            3.0 * n_layers * c.layer_host_seconds,
        )
        recompute = (0.0, 0.0, 0.0)
        if spec.recompute == "full":
            recompute = (
                recompute_math,
                n_layers * layer_bytes / hbm,
                n_layers * c.layer_host_seconds,
            )
        elif spec.recompute == "selective" and spec.attention == "standard":
            # QKᵀ, softmax, dropout and attention·V again: their FLOPs and the 5as/h bytes
            score_bytes = 5.0 * spec.attention_heads * s * s * b / t
            recompute = (
                n_layers * 4.0 * b * s**2 * h / t / self.flop_rate,
                n_layers * traffic * score_bytes / hbm,
                0.0,
            )
        tp_transfer = tp_sync = tp_bytes = 0.0
        if t > 1:
            per_gpu_bytes = 2.0 * (t - 1) / t * s * b * h * BF16_BYTES
            collectives = (4 + (2 if spec.recompute == "full" else 0)) * n_layers
            if spec.sequence_parallel:
                collectives *= 2  # each all-reduce becomes a reduce-scatter and an all-gather
                per_gpu_bytes /= 2
            tp_transfer = collectives * per_gpu_bytes / self.tp_link
            tp_sync = collectives * 2 * (t - 1) * c.collective_latency_seconds  # a ring has 2(t−1) steps
            tp_bytes = 2.0 * collectives * per_gpu_bytes  # sent plus received
        gpu_seconds = compute[0] + compute[1] + recompute[0] + recompute[1] + tp_transfer
        host_seconds = compute[2] + recompute[2] + tp_sync
        n = c.overlap_sharpness
        seconds = (gpu_seconds**n + host_seconds**n) ** (1.0 / n)
        waiting = seconds - gpu_seconds

        def share(host: float) -> float:
            return waiting * host / host_seconds if host_seconds > 0 else 0.0

        compute_seg = _compute_segment(
            compute[0], compute[1], compute[0] + compute[1] + share(compute[2]), self.efficiency
        )
        recompute_seg = _compute_segment(
            recompute[0], recompute[1], recompute[0] + recompute[1] + share(recompute[2]), self.efficiency
        )
        tp_seconds = tp_transfer + share(tp_sync)
        tp_seg = _comm_segment(tp_seconds, tp_bytes / tp_seconds if tp_seconds else 0.0, self.gpu)
        pp_seg = _Segment(0.0, _IDLE)
        if p > 1:
            boundary_bytes = s * b * h * BF16_BYTES / (t if spec.sequence_parallel else 1)
            transfers = 2 * v  # activations forward, gradients backward, per chunk boundary
            pp_seconds = transfers * (boundary_bytes / self.pp_link + c.p2p_latency_seconds)
            pp_seg = _comm_segment(pp_seconds, transfers * boundary_bytes / pp_seconds, self.gpu)
        return _MicroBatch(compute_seg, recompute_seg, tp_seg, pp_seg)

    def _post_phases(self, stage: int) -> tuple[_Segment, _Segment]:
        """Gradient all-reduce across data-parallel replicas (and the tied embedding), then Adam."""
        spec, c = self.spec, self.c
        d, p = spec.data_parallel, spec.pipeline_parallel
        params = parameters_per_gpu(spec, stage)
        seconds = 0.0
        moved = 0.0
        # passes of (n−1)/n of the buffer: reduce-scatter and all-gather (an all-reduce), or with full
        # sharding the weights gathered in forward and in backward and the gradients reduce-scattered
        passes = 3 if spec.sharding == "full" else 2
        g = self.dp_ranks_per_node
        if d > 1 and g in (1, d):  # one ring, all over NVLink or all over the network
            per_gpu_bytes = float(passes) * (d - 1) / d * params * BF16_BYTES
            seconds += per_gpu_bytes / self.dp_link + passes * (d - 1) * c.collective_latency_seconds
            moved += 2.0 * per_gpu_bytes
        elif d > 1:  # hierarchical: within each node over NVLink, 1/g of the buffer across nodes
            nodes = d / g
            intra_bytes = passes * (g - 1) / g * params * BF16_BYTES
            inter_bytes = passes * (nodes - 1) / nodes * params * BF16_BYTES / g
            steps = passes * (g - 1 + math.ceil(nodes) - 1)
            seconds += intra_bytes / self.nvlink + inter_bytes / self.network
            seconds += steps * c.collective_latency_seconds
            moved += 2.0 * (intra_bytes + inter_bytes)
        if p > 1 and _stage_has_embedding(spec, stage):
            embedding_bytes = spec.vocab_size * spec.hidden_size / spec.tensor_parallel * BF16_BYTES
            seconds += embedding_bytes / self.pp_link + c.collective_latency_seconds
            moved += 2.0 * embedding_bytes
        dp = _comm_segment(seconds, moved / seconds if seconds else 0.0, self.gpu)
        if spec.sharding != "none":
            params /= d  # each replica steps its shard
        opt_seconds = params * OPTIMIZER_STEP_BYTES_PER_PARAM / self.gpu.hbm_bytes_per_second
        optimizer = _Segment(opt_seconds, (*_OPTIMIZER_PROFILE, 0.0))
        return dp, optimizer

    def timeline(self, stage: int) -> list[_Segment]:
        """The segments of one iteration on ``stage``, in order, summing to ``total_seconds``."""
        mb = self.micro_batches[stage]
        m = self.spec.micro_batches
        wait = self.pipeline_seconds - m * mb.seconds
        dp, opt = self.post[stage]
        pad = self.post_seconds - dp.seconds - opt.seconds
        host = (_HOST_GPU_UTIL, 0.02, 0.01, 0.0, 0.01, 0.0)
        segments = [_Segment(wait / 2, _IDLE)]
        segments += [mb.compute, mb.recompute, mb.tp_comm, mb.pp_comm] * m
        segments += [_Segment(wait / 2, _IDLE), dp, opt, _Segment(pad, _IDLE)]
        segments.append(_Segment(self.c.iteration_overhead_seconds, host))
        return [seg for seg in segments if seg.seconds > 0]

    def mean_activity(self, stage: int) -> npt.NDArray[np.float64]:
        segments = self.timeline(stage)
        seconds = np.array([seg.seconds for seg in segments])
        activity = np.array([seg.activity for seg in segments])
        return np.asarray(seconds @ activity / seconds.sum(), dtype=np.float64)


def _power_watts(gpu: gpuspecs.GpuSpec, sm: Any, tensor: Any, dram: Any) -> Any:
    load = _POWER_WEIGHTS[SM_ACTIVE] * sm + _POWER_WEIGHTS[TENSOR_ACTIVE] * tensor
    load = np.minimum(1.0, load + _POWER_WEIGHTS[DRAM_ACTIVE] * dram)
    return gpu.idle_watts + (gpu.tdp_watts - gpu.idle_watts) * load


def iteration_seconds(spec: JobSpec, constants: PerfConstants) -> float:
    """Only the iteration time of :func:`iteration` (cheaper: no utilization), in seconds."""
    return _Model(spec, constants).total_seconds


def iteration(spec: JobSpec, constants: PerfConstants) -> IterationBreakdown:
    """The time and utilization of one training iteration of ``spec`` under ``constants``."""
    model = _Model(spec, constants)
    i = model.critical_stage
    mb = model.micro_batches[i]
    m = spec.micro_batches
    dp, opt = model.post[i]
    busy = m * mb.seconds
    bubble = model.pipeline_seconds - busy + model.post_seconds - dp.seconds - opt.seconds
    means = np.mean([model.mean_activity(k) for k in range(spec.pipeline_parallel)], axis=0)
    mean = dict(zip(_ACTIVITY, means, strict=True))
    gpu = spec.gpu_spec
    # MFU counts the model's FLOPs, not what the kernels recompute (PaLM's convention)
    useful_flops = model_flops_per_iteration(replace(spec, recompute="none", attention="standard"))
    memory = memory_bytes_per_gpu(spec)
    return IterationBreakdown(
        compute_seconds=m * mb.compute.seconds,
        recompute_seconds=m * mb.recompute.seconds,
        bubble_seconds=bubble,
        tp_comm_exposed_seconds=m * mb.tp_comm.seconds,
        pp_comm_exposed_seconds=m * mb.pp_comm.seconds,
        dp_comm_exposed_seconds=dp.seconds,
        optimizer_seconds=opt.seconds,
        overhead_seconds=constants.iteration_overhead_seconds,
        total_seconds=model.total_seconds,
        memory_bytes_per_gpu=memory,
        memory_capacity_bytes=gpu.memory_total_bytes,
        fits=memory <= gpu.memory_total_bytes,
        model_flops_per_iteration=model_flops_per_iteration(spec),
        mfu_ratio=useful_flops / (model.total_seconds * spec.num_gpus * gpu.peak_bf16_flops_per_second),
        gpu_util_ratio=float(mean[GPU_UTIL]),
        sm_active_ratio=float(mean[SM_ACTIVE]),
        sm_occupancy_ratio=float(mean[SM_OCCUPANCY]),
        tensor_active_ratio=float(mean[TENSOR_ACTIVE]),
        dram_active_ratio=float(mean[DRAM_ACTIVE]),
        nvlink_bytes_per_second=float(mean[NVLINK]),
        power_watts=float(_power_watts(gpu, mean[SM_ACTIVE], mean[TENSOR_ACTIVE], mean[DRAM_ACTIVE])),
        stage_busy_seconds=tuple(m * x.seconds for x in model.micro_batches),
    )


# --- telemetry ---------------------------------------------------------------

#: Sampling noise: relative spread of each ratio around the phase average, and an absolute floor.
_RATIO_NOISE_RELATIVE: Final = 0.03
_RATIO_NOISE_ABSOLUTE: Final = 0.004
#: Iteration-time jitter (AR(1) per second): spread and persistence.
_PACE_JITTER: Final = 0.02
_PACE_PERSISTENCE: Final = 0.8
_POWER_NOISE_WATTS: Final = 4.0
_POWER_SPREAD_BETWEEN_GPUS: Final = 0.03  # chip-to-chip spread of power at the same load
_MEMORY_SPREAD_BETWEEN_GPUS: Final = 0.004


def _cumulative(segments: list[_Segment]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Segment boundaries (s) and the running integral of each activity quantity at them."""
    seconds = np.array([seg.seconds for seg in segments])
    activity = np.array([seg.activity for seg in segments])
    bounds = np.concatenate([[0.0], np.cumsum(seconds)])
    integral = np.vstack([np.zeros(len(_ACTIVITY)), np.cumsum(seconds[:, None] * activity, axis=0)])
    return bounds, integral


def _window_means(
    bounds: npt.NDArray[np.float64], integral: npt.NDArray[np.float64], phase: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Mean activity between consecutive phase positions (seconds of iteration time, unwrapped)."""
    period = bounds[-1]
    cycles, within = np.divmod(phase, period)
    at = np.column_stack([np.interp(within, bounds, integral[:, k]) for k in range(integral.shape[1])])
    running = cycles[:, None] * integral[-1] + at
    width = np.diff(phase)[:, None]
    return np.asarray(np.diff(running, axis=0) / width, dtype=np.float64)


def simulate_telemetry(
    spec: JobSpec,
    constants: PerfConstants,
    *,
    job_id: str,
    minutes: float,
    seed: int,
    start: datetime | pd.Timestamp,
) -> pd.DataFrame:
    """A canonical telemetry frame (1 Hz, every GPU of the job) that ``spec`` would produce.

    Each one-second sample averages the iteration's phases that fall in it, so
    iterations much shorter than a second read smooth and long ones oscillate.
    GPU ranks follow Megatron's order (tensor fastest, then data, then
    pipeline), ``gpus_per_node`` per host named ``node0``, ``node1``, ...; pipeline stages
    differ, so the stage that idles while the slowest one works shows it.
    Deterministic for a ``seed``. Raises :class:`SpecError` when the job does
    not fit in memory (it would not run) or ``minutes`` gives no sample.
    """
    samples = round(minutes * 60) if math.isfinite(minutes) else 0
    if samples < 1:
        raise SpecError(f"minutes must be finite and give at least one 1-second sample, got {minutes!r}")
    if samples * spec.num_gpus > MAX_SIMULATED_SAMPLES:
        raise SpecError(
            f"{minutes:g} min of {spec.num_gpus} GPUs at 1 Hz is {samples * spec.num_gpus:,} samples, more "
            f"than the {MAX_SIMULATED_SAMPLES:,} simulated at once; simulate fewer minutes"
        )
    model = _Model(spec, constants)
    gpu = spec.gpu_spec
    for stage in range(spec.pipeline_parallel):
        needed = memory_bytes_per_gpu(spec, stage)
        if needed > gpu.memory_total_bytes:
            raise SpecError(
                f"job needs {needed / GIB:.1f} GiB per GPU but a {spec.gpu} has "
                f"{gpu.memory_total_bytes / GIB:.1f} GiB; it would fail with out-of-memory"
            )
    rng = np.random.default_rng(seed)
    period = model.total_seconds
    # All GPUs of a job advance in lockstep; the pace wanders a little (stragglers, host jitter).
    shocks = rng.normal(0.0, _PACE_JITTER * math.sqrt(1 - _PACE_PERSISTENCE**2), samples)
    jitter = np.empty(samples)
    level = rng.normal(0.0, _PACE_JITTER)
    for k in range(samples):
        level = _PACE_PERSISTENCE * level + shocks[k]
        jitter[k] = level
    pace = 1.0 / (1.0 + np.clip(jitter, -0.5, 0.5))
    phase = rng.uniform(0.0, period) + np.concatenate([[0.0], np.cumsum(pace)])

    stage_means = []
    for stage in range(spec.pipeline_parallel):
        bounds, integral = _cumulative(model.timeline(stage))
        stage_means.append(_window_means(bounds, integral, phase))

    t, d = spec.tensor_parallel, spec.data_parallel
    first = pd.Timestamp(start)
    first = first.tz_localize("UTC") if first.tzinfo is None else first.tz_convert("UTC")
    times = pd.date_range(first, periods=samples, freq="s")
    tokens_per_gpu_second = spec.global_batch * spec.sequence_length / (period * d)
    pcie_rx_mean = _PCIE_BASELINE_BYTES_PER_SECOND + tokens_per_gpu_second * _INPUT_BYTES_PER_TOKEN
    n = spec.num_gpus
    out = {name: np.empty((n, samples)) for name in (*_ACTIVITY, POWER, MEM_USED, PCIE_TX, PCIE_RX)}
    for rank in range(n):
        stage = rank // (t * d)
        means = stage_means[stage]
        noisy = means * (1.0 + rng.normal(0.0, _RATIO_NOISE_RELATIVE, means.shape))
        noisy += rng.normal(0.0, _RATIO_NOISE_ABSOLUTE, means.shape) * (means > 0)
        for k, name in enumerate(_ACTIVITY):
            out[name][rank] = np.clip(noisy[:, k], 0.0, None if name == NVLINK else 1.0)
        out[GPU_UTIL][rank] = np.round(out[GPU_UTIL][rank], 2)  # NVML reports whole percent
        chip = 1.0 + rng.normal(0.0, _POWER_SPREAD_BETWEEN_GPUS)
        power = _power_watts(gpu, out[SM_ACTIVE][rank], out[TENSOR_ACTIVE][rank], out[DRAM_ACTIVE][rank])
        power = power * chip + rng.normal(0.0, _POWER_NOISE_WATTS, samples)
        out[POWER][rank] = np.clip(power, gpu.idle_watts * 0.9, gpu.tdp_watts)
        memory = memory_bytes_per_gpu(spec, stage) * (1.0 + abs(rng.normal(0.0, _MEMORY_SPREAD_BETWEEN_GPUS)))
        out[MEM_USED][rank] = np.minimum(
            memory + rng.normal(0.0, 2 * 1024**2, samples), gpu.memory_total_bytes
        )
        out[PCIE_RX][rank] = np.maximum(pcie_rx_mean * (1.0 + rng.normal(0.0, 0.2, samples)), 0.0)
        pcie_tx = 0.5 * _PCIE_BASELINE_BYTES_PER_SECOND * (1.0 + rng.normal(0.0, 0.2, samples))
        out[PCIE_TX][rank] = np.maximum(pcie_tx, 0.0)
    ranks = np.repeat(np.arange(n), samples)
    frame = pd.DataFrame(
        {
            schema.TIMESTAMP: np.tile(times, n),
            schema.HOST: [f"node{r}" for r in ranks // spec.node_gpus],
            schema.GPU: (ranks % spec.node_gpus).astype(str),
            schema.JOB_ID: job_id,
            schema.GPU_MODEL: gpu.nvml_name,
            MEM_TOTAL: gpu.memory_total_bytes,
            **{name: values.ravel() for name, values in out.items()},
        }
    )
    return schema.conform(frame)
