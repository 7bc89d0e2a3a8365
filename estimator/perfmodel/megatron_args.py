"""A job spec from a Megatron-LM / NeMo style command line (a launch script, a Slurm batch script).

:func:`spec_from_command_line` reads the text of a file holding the command
(``torchrun ... pretrain_gpt.py --tensor-model-parallel-size 4 ...``, line
continuations and all) and gives the :class:`JobSpec` it runs. It reads:

* Megatron-LM's flags, ``--flag value`` or ``--flag=value``:
  ``--tensor-model-parallel-size``, ``--pipeline-model-parallel-size``,
  ``--num-layers-per-virtual-pipeline-stage`` or
  ``--virtual-pipeline-model-parallel-size``, ``--micro-batch-size``,
  ``--global-batch-size``, ``--num-layers``, ``--hidden-size``,
  ``--num-attention-heads``, ``--seq-length``, ``--recompute-granularity
  full|selective``, ``--recompute-activations`` (selective),
  ``--sequence-parallel``, ``--use-distributed-optimizer`` (ZeRO-1),
  ``--use-flash-attn`` or ``--attention-backend flash`` (FlashAttention),
  ``--vocab-size`` / ``--padded-vocab-size``;
* NeMo's Hydra overrides, ``model.tensor_model_parallel_size=4``, the same
  names with underscores (``model.encoder_seq_length`` is the sequence
  length, ``model.activations_checkpoint_granularity`` the recomputation,
  ``trainer.devices`` and ``trainer.num_nodes`` the GPUs);
* the GPU count from ``torchrun``'s ``--nproc-per-node`` · ``--nnodes``, when
  the caller does not give it;
* shell variables assigned in the same text (``TP=4`` … ``--tensor-model-parallel-size $TP``).

The GPU type and anything the command does not say come from the caller.
Pure text in, a spec out: reading the file or asking Slurm for the batch
script is the caller's.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any, Final

from estimator.perfmodel.iteration import JobSpec, SpecError

__all__ = ["MEGATRON_FLAGS", "megatron_options", "spec_from_command_line"]

#: Megatron flag (without the dashes) -> JobSpec field, for the flags that take a whole number.
MEGATRON_FLAGS: Final = {
    "tensor-model-parallel-size": "tensor_parallel",
    "pipeline-model-parallel-size": "pipeline_parallel",
    "micro-batch-size": "micro_batch",
    "global-batch-size": "global_batch",
    "num-layers": "num_layers",
    "hidden-size": "hidden_size",
    "num-attention-heads": "attention_heads",
    "seq-length": "sequence_length",
    "vocab-size": "vocab_size",
    "padded-vocab-size": "vocab_size",
}
#: NeMo's names (after the ``model.`` / ``trainer.`` prefix, dashes for underscores) that differ from
#: Megatron's.
_NEMO_ALIASES: Final = {
    "encoder-seq-length": "seq-length",
    "activations-checkpoint-granularity": "recompute-granularity",
    "virtual-pipeline-model-parallel-size": "virtual-pipeline-model-parallel-size",
}
_ASSIGNMENT = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(\S*)")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_HYDRA = re.compile(r"^\+?(model|trainer)\.([A-Za-z0-9_.]+)=(.*)$")
_TRUE = {"true", "1", "yes", "on"}
_NULL = {"null", "none", "~", ""}


def _expand(text: str) -> str:
    """``text`` with the shell variables it assigns itself substituted (in order, simple values only)."""
    values: dict[str, str] = {}
    lines = []
    for line in text.splitlines():
        line = _VARIABLE.sub(lambda m: values.get(m.group(1) or m.group(2), m.group(0)), line)
        if match := _ASSIGNMENT.match(line.strip()):
            try:
                words = shlex.split(line.strip().removeprefix("export").strip())
            except ValueError:
                words = []
            if words and "=" in words[0]:
                name, _, value = words[0].partition("=")
                values[name] = value
            else:
                values[match.group(1)] = match.group(2)
        lines.append(line)
    return "\n".join(lines)


def megatron_options(text: str) -> dict[str, str]:
    """The ``--flag value`` options of a command line text (and NeMo ``model.x=y`` overrides), by flag
    name without dashes; a flag without a value maps to ``"true"``. Later occurrences win."""
    joined = re.sub(r"\\\r?\n", " ", _expand(text))
    try:
        words = shlex.split(joined, comments=True)
    except ValueError as exc:
        raise SpecError(f"cannot split the command line into words: {exc}") from None
    options: dict[str, str] = {}
    k = 0
    while k < len(words):
        word = words[k]
        k += 1
        if match := _HYDRA.match(word):
            scope, name, value = match.groups()
            flag = name.replace("_", "-").replace(".", "-")
            flag = _NEMO_ALIASES.get(flag, flag)
            if value.lower() in _NULL:
                continue
            options[f"{scope}.{flag}" if scope == "trainer" else flag] = value
            continue
        if not word.startswith("--") or len(word) == 2:
            continue
        name, sep, value = word[2:].partition("=")
        name = name.replace("_", "-")
        if not sep:
            if k < len(words) and not words[k].startswith("-"):
                value = words[k]
                k += 1
            else:
                value = "true"
        options[name] = value
    return options


def _whole(options: Mapping[str, str], flag: str) -> int | None:
    if flag not in options:
        return None
    text = options[flag]
    try:
        value = int(text)
    except ValueError:
        hint = " (a shell variable zest cannot resolve)" if text.startswith("$") else ""
        raise SpecError(f"--{flag}: {text!r} is not a whole number{hint}") from None
    if value < 1:
        raise SpecError(f"--{flag}: must be >= 1, got {value}")
    return value


def spec_from_command_line(
    text: str,
    *,
    gpu: str | None,
    num_gpus: int | None = None,
    defaults: Mapping[str, Any] | None = None,
    origin: str = "the command line",
) -> JobSpec:
    """The job spec of the Megatron-style command in ``text``.

    ``gpu`` is the GPU type (the command does not say it); ``num_gpus`` the job's GPUs (None: from
    torchrun's or NeMo's node and device counts in the text); ``defaults`` other JobSpec fields
    (``gpus_per_node``, ``internode_gbps_per_gpu``, ``attention``...) the command does not set.
    Raises :class:`SpecError` naming ``origin`` and the missing or bad flag.
    """
    options = megatron_options(text)
    fields: dict[str, Any] = dict(defaults or {})
    for flag, name in MEGATRON_FLAGS.items():
        value = _whole(options, flag)
        if value is not None:
            fields[name] = value
    fields.setdefault("tensor_parallel", 1)
    fields.setdefault("pipeline_parallel", 1)
    missing = [
        f"--{flag}"
        for flag, name in MEGATRON_FLAGS.items()
        if name not in fields and name != "vocab_size" and flag != "padded-vocab-size"
    ]
    if missing:
        raise SpecError(f"{origin} lacks {', '.join(missing)}: give them, or a job spec with --spec")
    if gpu is None:
        raise SpecError(f"{origin} does not say the GPU type: give --gpu (e.g. a100-80gb, h100-sxm)")
    fields["gpu"] = gpu
    if num_gpus is None:
        per_node = _whole(options, "nproc-per-node") or _whole(options, "trainer.devices")
        nodes = _whole(options, "nnodes") or _whole(options, "trainer.num-nodes") or 1
        if per_node is None:
            raise SpecError(f"{origin} does not say the GPU count (torchrun --nproc-per-node): give --gpus")
        num_gpus = per_node * nodes
        fields.setdefault("gpus_per_node", per_node if nodes > 1 else None)
    fields["num_gpus"] = num_gpus
    t, p = fields["tensor_parallel"], fields["pipeline_parallel"]
    if num_gpus % (t * p):
        raise SpecError(
            f"{origin}: tensor·pipeline parallelism {t}·{p} does not divide the {num_gpus} GPUs (--gpus)"
        )
    fields["data_parallel"] = num_gpus // (t * p)
    virtual = _whole(options, "virtual-pipeline-model-parallel-size")
    per_stage = _whole(options, "num-layers-per-virtual-pipeline-stage")
    if virtual is None and per_stage is not None:
        if fields["num_layers"] % (p * per_stage):
            raise SpecError(
                f"{origin}: --num-layers-per-virtual-pipeline-stage {per_stage} does not divide "
                f"num_layers / pipeline_parallel = {fields['num_layers']}/{p}"
            )
        virtual = fields["num_layers"] // (p * per_stage)
    if virtual is not None:
        fields["pipeline_interleaving"] = virtual
    granularity = options.get("recompute-granularity")
    if granularity is not None:
        if granularity not in ("full", "selective"):
            raise SpecError(
                f"{origin}: --recompute-granularity must be full or selective, got {granularity!r}"
            )
        fields["recompute"] = granularity
    elif options.get("recompute-activations", "").lower() in _TRUE:
        fields["recompute"] = "selective"
    if options.get("sequence-parallel", "").lower() in _TRUE:
        fields["sequence_parallel"] = True
    if options.get("use-distributed-optimizer", "").lower() in _TRUE:
        fields["sharding"] = "zero1"
    if options.get("use-flash-attn", "").lower() in _TRUE or options.get("attention-backend") == "flash":
        fields["attention"] = "flash"
    try:
        return JobSpec.from_json({k: v for k, v in fields.items() if v is not None})
    except SpecError as exc:
        raise SpecError(f"{origin}: {exc}") from None
