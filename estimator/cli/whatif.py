"""``zest whatif``: the job's configurations ranked by the performance model's predicted iteration time.

Thin: read the job (a spec, a Megatron-style command line, a Slurm job's batch
script) or a candidates file, rank with :mod:`estimator.perfmodel.search`,
print with :mod:`estimator.reports.whatif`. zest's errors propagate to the
``zest`` group, which prints one line and exits with the class's code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import click
from rich.console import Console

from collectors.errors import InputError, OutputError
from collectors.util import one_line
from estimator.cli.options import IntIn
from estimator.perfmodel.iteration import (
    JobSpec,
    SpecError,
    iteration_seconds,
    load_constants,
    memory_bytes_per_gpu,
)
from estimator.perfmodel.search import Ranked, held_out_error, rank_candidates, search_ranked
from estimator.reports.table import json_text
from estimator.reports.whatif import optuna_trials, render_whatif, whatif_document

DEFAULT_TOP: Final = 10
EMIT_FORMATS: Final = ("optuna",)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{what} {path} is not UTF-8 text") from None


def _candidates(path: Path) -> tuple[list[JobSpec], list[int], list[dict[str, Any]]]:
    """The specs of a JSON-lines file, their 0-based lines, and the lines left out (valid specs that do
    not fit in GPU memory). Any other bad line is an input error naming it."""
    specs: list[JobSpec] = []
    lines: list[int] = []
    left_out: list[dict[str, Any]] = []
    for k, line in enumerate(_read_text(path, "candidates file").splitlines()):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} line {k + 1}: not JSON: {exc.msg}") from None
        try:
            specs.append(JobSpec.from_json(raw))
            lines.append(k)
        except SpecError as exc:
            try:
                JobSpec(**raw)  # a valid layout: then what failed is the memory check
            except (SpecError, TypeError):
                raise InputError(f"{path} line {k + 1}: {exc}") from None
            left_out.append({"index": k, "reason": one_line(str(exc))})
    if not specs:
        raise InputError(f"{path} holds no candidate that fits: one job spec (JSON) per line")
    return specs, lines, left_out


def _job(
    spec_path: Path | None,
    megatron_args: Path | None,
    slurm_job: str | None,
    gpu: str | None,
    gpus: int | None,
    gpus_per_node: int | None,
    notes: list[str],
) -> JobSpec | None:
    given = [
        name
        for name, v in (("--spec", spec_path), ("--megatron-args", megatron_args), ("--slurm-job", slurm_job))
        if v is not None
    ]
    if len(given) > 1:
        raise click.UsageError(f"give one of --spec, --megatron-args, --slurm-job, not {' and '.join(given)}")
    if spec_path is not None:
        if gpu is not None or gpus is not None:
            raise click.UsageError(
                "--gpu and --gpus go with --megatron-args or --slurm-job; a spec says them"
            )
        return JobSpec.from_json(spec_path)
    from estimator.perfmodel.megatron_args import megatron_options, spec_from_command_line

    defaults = {} if gpus_per_node is None else {"gpus_per_node": gpus_per_node}
    if megatron_args is not None:
        text = _read_text(megatron_args, "command line file")
        return spec_from_command_line(
            text, gpu=gpu, num_gpus=gpus, defaults=defaults, origin=str(megatron_args)
        )
    if slurm_job is None:
        return None
    from collectors.slurm import Slurm

    slurm = Slurm()
    text = slurm.batch_script(slurm_job)
    options = megatron_options(text)
    if gpus is None and "nproc-per-node" not in options and "trainer.devices" not in options:
        job = slurm.job(slurm_job)
        gpus = job.gpus or None
        if gpus is not None:
            notes.append(f"{gpus} GPUs: Slurm's allocation of job {slurm_job} (--gpus overrides)")
            if len(job.nodes) > 1 and gpus_per_node is None and job.gpus_per_node:
                defaults["gpus_per_node"] = job.gpus_per_node[0].count
    notes.append(f"job read from the batch script of Slurm job {slurm_job}")
    return spec_from_command_line(
        text, gpu=gpu, num_gpus=gpus, defaults=defaults, origin=f"the batch script of Slurm job {slurm_job}"
    )


@click.command("whatif")
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The job's configuration, a zest simulate job spec (JSON). [one of --spec, --megatron-args, "
    "--slurm-job or --candidates is required]",
)
@click.option(
    "--megatron-args",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file holding the job's Megatron-LM / NeMo command line (a launch or batch script); needs --gpu.",
)
@click.option("--slurm-job", help="A Slurm job id: read the Megatron command line from its batch script.")
@click.option(
    "--gpu",
    help="GPU type for --megatron-args / --slurm-job (a100-80gb, h100-sxm, h200...). [required with "
    "--megatron-args or --slurm-job]",
)
@click.option(
    "--gpus",
    type=IntIn(min=1),
    help="The job's GPU count for --megatron-args / --slurm-job (default: torchrun's counts, or Slurm's).",
)
@click.option("--gpus-per-node", type=IntIn(min=1), help="GPUs per node (default: the GPU's system).")
@click.option(
    "--candidates",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Rank these configurations instead of searching: one job spec (JSON) per line.",
)
@click.option(
    "--top",
    type=IntIn(min=1),
    help=f"How many configurations to show and emit (default {DEFAULT_TOP}; with --candidates: all).",
)
@click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--emit",
    nargs=2,
    type=(click.Choice(EMIT_FORMATS), click.Path(dir_okay=False, path_type=Path)),
    default=None,
    metavar="optuna FILE.json",
    help="Also write the top configurations as Optuna trials (study.enqueue_trial params) to FILE.json.",
)
def whatif(
    spec_path: Path | None,
    megatron_args: Path | None,
    slurm_job: str | None,
    gpu: str | None,
    gpus: int | None,
    gpus_per_node: int | None,
    candidates: Path | None,
    top: int | None,
    output: str,
    emit: tuple[str, Path] | None,
) -> None:
    """Rank the job's configurations by predicted iteration time (layout, micro-batch, recomputation,
    sharding, interleaving; same GPUs and global batch; within memory). Predicted, not measured."""
    notes: list[str] = []
    job = _job(spec_path, megatron_args, slurm_job, gpu, gpus, gpus_per_node, notes)
    if job is None and candidates is None:
        raise click.UsageError("give the job: --spec, --megatron-args or --slurm-job (or --candidates FILE)")
    own: Ranked | None = None
    if job is not None:
        own = Ranked(job, iteration_seconds(job, load_constants(job.gpu)), memory_bytes_per_gpu(job))
    left_out: list[dict[str, Any]] = []
    if candidates is not None:
        specs, lines, left_out = _candidates(candidates)
        order = [
            Ranked(r.spec, r.iteration_seconds, r.memory_bytes_per_gpu, lines[r.index or 0])
            for r in rank_candidates(specs, load_constants)
        ]
        searched = len(specs)
        shown = order if top is None else order[:top]
        gpus_named = sorted({s.gpu for s in specs})
    else:
        assert job is not None
        order = search_ranked(job, load_constants(job.gpu))
        searched = len(order)
        shown = order[: top or DEFAULT_TOP]
        gpus_named = [job.gpu]
        notes.append(
            "searched: tensor, pipeline (with interleaving v = 1, 2, 4) and data parallelism, micro-batch, "
            "recomputation, sharding, sequence parallelism at the job's GPUs and global batch, within memory"
        )
    error = held_out_error(gpus_named[0])
    if len(gpus_named) > 1:
        error = None
        notes.append(f"candidates on several GPU types ({', '.join(gpus_named)}): no one uncertainty band")
    elif error is None:
        notes.append("no held-out error in the performance model's constants: no uncertainty band")
    else:
        derived = "" if error.measured_on == error.gpu else f" (derived from {error.measured_on}: unmeasured)"
        notes.append(
            f"± {error.mape_percent:.1f} %: the performance model's held-out MAPE of iteration time on "
            f"{error.gpu}{derived}; configurations whose bands overlap may swap places when measured"
        )
    if emit is not None:
        _, path = emit
        try:
            path.write_text(json.dumps(optuna_trials(shown), indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror}") from None
        notes.append(f"{len(shown)} Optuna trial(s) written to {path} (study.enqueue_trial)")
    document = whatif_document(shown, job=own, searched=searched, error=error, left_out=left_out, notes=notes)
    if output == "json":
        click.echo(json_text(document))
    else:
        render_whatif(document, Console(width=max(Console().width, 132)))
