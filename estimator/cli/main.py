"""The command line: ``zest`` and its ``estimate-z`` alias. Thin: parse, call the stages, print.

zest's errors (:class:`collectors.errors.ZestError`) are caught here, and only
here, and become one line on stderr and the exit code each class carries
(documented in the README).
"""

from __future__ import annotations

import importlib
import math
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import click
from rich.console import Console

from collectors.errors import (
    InputError,
    JobNotFound,
    MalformedCapture,
    SlurmJobNotFound,
    SlurmQueryError,
    SlurmUnavailable,
    ZestError,
)
from collectors.slurm import ReuseCount, Slurm, SlurmDefaults, defaults_from_slurm, is_slurm_job_id
from collectors.sources import EXAMPLE, SOURCE_HELP, read_job
from collectors.util import DISTRIBUTION
from estimator.cli.options import (
    HELP_OPTIONS,
    DurationType,
    FloatIn,
    breakeven_job_options,
    capture_output_options,
    check_output,
    source_access_options,
    with_version,
)
from estimator.decision.algorithms import (
    ALGORITHMS_BY_NAME,
    DEFAULT_ALGORITHMS,
    DEFAULT_CHOICES,
    DEFAULT_TRIAL_MINUTES,
    Z_E_RELATIVE_TO,
    AlgorithmChoice,
    CaptureShares,
    Plan,
    capture_shares,
    weigh,
)
from estimator.decision.breakeven import Costs, ZInterval
from estimator.reports.table import json_text, render_table, to_document

if TYPE_CHECKING:
    from collectors.prometheus import PrometheusAuth
    from collectors.sources import Telemetry
    from estimator.perfmodel.iteration import JobSpec
    from estimator.pipeline import JobEstimate

# --- option types -------------------------------------------------------------


class AlgorithmType(click.ParamType):
    """``NAME=TRIALS[:Z_PERCENT]``, NAME one of the known algorithms."""

    name = "NAME=TRIALS[:Z_PERCENT]"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> AlgorithmChoice:
        if isinstance(value, AlgorithmChoice):
            return value
        known = ", ".join(ALGORITHMS_BY_NAME)
        name, sep, rest = str(value).partition("=")
        if not sep or not rest:
            self.fail(f"{value!r} is not NAME=TRIALS[:Z_PERCENT], e.g. heuristic=30:10", param, ctx)
        if name not in ALGORITHMS_BY_NAME:
            self.fail(f"unknown algorithm {name!r}; known: {known}", param, ctx)
        trials_text, _, z_text = rest.partition(":")
        try:
            trials = int(trials_text)
        except ValueError:
            self.fail(f"TRIALS in {value!r} must be a whole number >= 1", param, ctx)
        if trials < 1:
            self.fail(f"TRIALS in {value!r} must be a whole number >= 1", param, ctx)
        z = None
        if z_text:
            try:
                z = float(z_text)
            except ValueError:
                self.fail(f"Z_PERCENT in {value!r} must be a number in [0, 100)", param, ctx)
            if not 0 <= z < 100:
                self.fail(f"Z_PERCENT in {value!r} must be in [0, 100), got {z:g}", param, ctx)
        return AlgorithmChoice(name, trials, z)


class ZIntervalType(click.ParamType):
    """``Z`` or ``LOW:MID:HIGH``, each in [0, 100) percent."""

    name = "Z_PERCENT|LOW:MID:HIGH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> ZInterval:
        if isinstance(value, ZInterval):
            return value
        parts = str(value).split(":")
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            self.fail(f"{value!r} is not a percentage or LOW:MID:HIGH in [0, 100)", param, ctx)
        if len(numbers) not in (1, 3):
            self.fail(f"{value!r}: give one percentage or three, LOW:MID:HIGH", param, ctx)
        try:
            return ZInterval.point(numbers[0]) if len(numbers) == 1 else ZInterval(*numbers)
        except InputError as exc:
            self.fail(str(exc), param, ctx)


def _telemetry_options(command: Any) -> Any:
    """The options that say where a job's telemetry comes from, shared by the commands that read it.

    The command also receives ``prometheus_auth`` and ``hpc_job_dir`` (see
    :func:`estimator.cli.serve.source_access_options`).
    """
    command = source_access_options(command)
    for option in reversed(
        [
            click.option(
                "--source", help=f"Telemetry source: {SOURCE_HELP}. Default: nvml where a driver is present."
            ),
            click.option(
                "--window",
                type=DurationType(),
                help="How much telemetry: NVML samples this long (default 60s); Prometheus looks this far "
                "back (default: the job's whole run); a capture file: its last part (default: all of it). "
                "Seconds, or with a unit (30m, 2h, 1d).",
            ),
            click.option(
                "--interval",
                type=DurationType(),
                default="1s",
                show_default=True,
                help="NVML sampling interval: seconds (0.5), or with a unit (2s, 1m).",
            ),
            click.option(
                "--fields",
                metavar="LIST",
                help="For a capture file written by nvidia-smi --format=csv,noheader: its --query-gpu list, "
                "in order (index,utilization.gpu,...); its columns cannot be told apart otherwise.",
            ),
        ]
    ):
        command = option(command)
    return command


#: A price: a number > 0.
_POSITIVE = FloatIn(min=0, min_open=True)


# --- the commands ---------------------------------------------------------------


class LazyGroup(click.Group):
    """A group whose other commands are imported when run or listed, so each command loads only what
    it uses (``estimate-z`` as a calculator imports no model, no pandas)."""

    #: command name -> "module:attribute" of the click command
    LAZY: ClassVar[dict[str, str]] = {
        "simulate": "estimator.cli.model:simulate",
        "train": "estimator.cli.model:train",
        "evaluate": "estimator.cli.model:evaluate_command",
        "serve": "estimator.cli.serve:serve",
        "record": "estimator.cli.outcomes:record",
        "advise": "estimator.cli.advise:advise",
        "history": "estimator.cli.outcomes:history_command",
        "whatif": "estimator.cli.whatif:whatif",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY and cmd_name not in self.commands:
            module, _, attribute = self.LAZY[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        """Every command answers ``-h``/``--help`` and ``--version``, wherever it is defined."""
        super().add_command(with_version(cmd), name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": list(HELP_OPTIONS)})
@click.version_option(package_name=DISTRIBUTION)
def cli() -> None:
    """zest: will tuning this training job's throughput pay for itself?"""


@cli.command("estimate", context_settings={"help_option_names": list(HELP_OPTIONS)})
@click.option(
    "--job-id",
    help="Job to estimate Z_e for from its telemetry (Slurm id, namespace/pod, pid:N). [required unless "
    "every algorithm's Z is given (--algorithm NAME=N:Z or --z-expected), or --spec is]",
)
@_telemetry_options
@click.option(
    "--slurm/--no-slurm",
    default=None,
    help="Ask Slurm about the job for G, T, R and the telemetry window. Default: when Slurm's commands "
    "are here and the job id looks like a Slurm id.",
)
@breakeven_job_options(from_scheduler=True, trial_minutes=DEFAULT_TRIAL_MINUTES)
@click.option(
    "--engineer-hours",
    type=FloatIn(min=0),
    default=0.0,
    show_default=True,
    help="E: engineering effort to implement and validate the tuning, person-hours (>= 0).",
)
@click.option(
    "--gpu-hour-cost",
    type=_POSITIVE,
    help="c_g: cost of one GPU-hour (> 0). [required when --engineer-hours > 0]",
)
@click.option(
    "--engineer-hour-cost",
    type=_POSITIVE,
    help="c_e: cost of one engineer-hour (> 0). [required when --engineer-hours > 0]",
)
@click.option(
    "--algorithm",
    "algorithms",
    type=AlgorithmType(),
    multiple=True,
    help="A candidate algorithm, repeatable: NAME=TRIALS[:Z_PERCENT], NAME one of "
    f"{', '.join(ALGORITHMS_BY_NAME)}. Given ones replace the defaults "
    + ", ".join(f"{a.name}={a.trials}" for a in DEFAULT_ALGORITHMS)
    + ".",
)
@click.option(
    "--z-expected",
    type=ZIntervalType(),
    help="Z_e of a thorough search, in % (or LOW:MID:HIGH) instead of the telemetry estimate; "
    "each algorithm without its own Z gets its share of it.",
)
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The job's configuration, as a zest simulate job spec (JSON): adds the performance model's own "
    "search of the job's whole layout space (predicted, not measured). With --source example, the "
    "example's own spec by default.",
)
@click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also draw the break-even chart to this PNG file.",
)
@click.version_option(package_name=DISTRIBUTION)  # estimate-z runs this command alone
def estimate(
    job_id: str | None,
    source: str | None,
    window: float | None,
    interval: float,
    prometheus_auth: PrometheusAuth | None,
    hpc_job_dir: Path | None,
    fields: str | None,
    slurm: bool | None,
    duration_hours: float | None,
    gpus: int | None,
    reuse: float | None,
    trial_minutes: float,
    engineer_hours: float,
    gpu_hour_cost: float | None,
    engineer_hour_cost: float | None,
    algorithms: tuple[AlgorithmChoice, ...],
    z_expected: ZInterval | None,
    spec_path: Path | None,
    output: str,
    plot: Path | None,
) -> None:
    """Weigh tuning the job with each algorithm: R_break, Z_break, net saving, verdict.

    With every algorithm's Z known (--algorithm NAME=N:Z or --z-expected) it is a
    plain break-even calculator and needs no telemetry.
    """
    notes: list[str] = []
    chosen = algorithms or DEFAULT_CHOICES
    names = [a.name for a in chosen]
    if len(set(names)) < len(names):
        raise click.BadParameter(
            f"each algorithm may be given once, got {', '.join(names)}", param_hint="'--algorithm'"
        )
    scheduler = _slurm_defaults(job_id, slurm, notes)
    end: datetime | None = None
    if scheduler is not None:
        gpus, duration_hours, window, end, reuse = scheduler.fill(gpus, duration_hours, window, reuse, notes)
    if duration_hours is None:
        raise click.UsageError("--duration-hours is required: the job's training duration T in hours (> 0)")
    if engineer_hours > 0 and (gpu_hour_cost is None or engineer_hour_cost is None):
        raise click.UsageError("--engineer-hours > 0 needs --gpu-hour-cost and --engineer-hour-cost (> 0)")
    if plot is not None:
        from estimator.reports.chart import check_chart_path  # matplotlib only when asked for

        check_chart_path(plot)
    spec = _job_spec(spec_path, source, job_id, notes)
    answer = None
    if spec is not None:
        from estimator.decision.reconcile import search_answer
        from estimator.perfmodel.iteration import load_constants

        answer = search_answer(spec, load_constants(spec.gpu))
    needs_estimate = any(a.z_percent is None for a in chosen) and z_expected is None
    if needs_estimate and job_id is None and answer is not None:
        z_expected = answer.z_percent  # no telemetry: the search's Z for every algorithm
        needs_estimate = False
    if (needs_estimate or source is not None) and job_id is None:
        raise click.UsageError(
            "--job-id is required to read telemetry; or give every algorithm's Z "
            "with --algorithm NAME=N:Z or --z-expected Z"
        )
    shares = _shares(chosen, notes)
    plan = Plan(
        duration_hours=duration_hours,
        reuse=1.0 if reuse is None else reuse,
        gpus=gpus,
        trial_hours=trial_minutes / 60.0,
        costs=Costs(engineer_hours, gpu_hour_cost, engineer_hour_cost),
        algorithms=tuple(chosen),
    )
    found: JobEstimate | None = None
    telemetry = None
    if job_id is not None and (needs_estimate or source is not None):
        telemetry = read_job(
            source,
            job_id,
            window_seconds=window,
            interval_seconds=interval,
            end=end,
            placement=scheduler.placement if scheduler else None,
            prometheus_auth=prometheus_auth,
            hpc_job_dir=hpc_job_dir,
            fields=[fields] if fields else None,
        )
        found, gpu_models = _one_job(telemetry, plan, shares, z_expected, window)
        notes.extend(telemetry.notes + list(found.notes))
        z_expected = found.z_percent
    if needs_estimate:
        import pandas as pd

        from estimator.features.extract import GPU_COUNT, HOST_COUNT
        from estimator.model.default import (
            default_model,
            distance_note,
            domain_note,
            missing_signals_note,
            model_origin,
        )

        notes.append(
            f"Z_e ({default_model().coverage:.0%} interval) from {model_origin()} (models/README.md)"
        )
        if found is not None and (note := missing_signals_note(found.features)):
            notes.append(note)
        if found is not None:
            seen = found.features
            note = domain_note(
                gpu_models,
                seen.get(GPU_COUNT, math.nan),
                seen.get(HOST_COUNT, math.nan),
                sequence_length=None if spec is None else spec.sequence_length,
            )
            if note:
                notes.append(note)
            if note := distance_note(pd.DataFrame([dict(seen)])):
                notes.append(note)
    if gpus is None and found is not None and math.isfinite(found.gpus_seen):
        notes.append(f"G = {int(found.gpus_seen)}: the GPUs seen in the job's telemetry (--gpus overrides)")
    elif gpus is None and spec is not None:
        gpus = spec.num_gpus
        plan = replace(plan, gpus=gpus)
        notes.append(f"G = {gpus}: the job spec's num_gpus (--gpus overrides)")
    elif gpus is None:
        notes.append("G not given (--gpus): assumed 1 GPU; GPU-hours scale with G")
    if reuse is None:
        notes.append("R not given (--reuse): assumed the tuned configuration runs once")
    if any(a.z_percent is None for a in chosen):
        from estimator.decision.reconcile import takes_search

        searched = answer is not None and any(takes_search(a, answer) for a in chosen)
        notes.append(
            f"{shares.note}; the heuristic's share is not used: it tries the search's top configurations"
            if searched
            else shares.note
        )
    decision = (
        found.decision
        if found is not None and found.decision is not None
        else weigh(plan, z_expected, shares)
    )
    whole_space = None
    if answer is not None:
        from estimator.decision.reconcile import reconcile_note, with_search, with_telemetry
        from estimator.perfmodel.iteration import load_constants

        if found is not None:
            answer = with_telemetry(answer, load_constants(answer.spec.gpu), found.features)
            if answer.gap_note:
                notes.append(answer.gap_note)
        notes.append(reconcile_note(answer, z_expected, z_e_from_telemetry=found is not None))
        plan = replace(plan, algorithms=with_search(plan.algorithms, answer))
        gpus_seen = found.gpus_seen if found is not None else math.nan
        decision = weigh(plan, z_expected, shares, gpus_seen)
        whole_space = answer.document()
    if any(a.r_break == float("inf") for a in decision.assessments):
        notes.append("an algorithm with Z = 0 never pays back: its R_break is null")
    if plot is not None:
        from estimator.reports.chart import plot_breakeven  # matplotlib only when asked for

        plot_breakeven(decision, plot, title=f"job {job_id}" if job_id else None)
        notes.append(f"chart written to {plot}")
    document = to_document(
        decision,
        job_id=job_id,
        trial_minutes=trial_minutes,
        z_expected=z_expected,
        notes=notes,
        telemetry=None if found is None or telemetry is None else telemetry_document(telemetry.source, found),
        z_relative_to=Z_E_RELATIVE_TO if needs_estimate else None,
        whole_space=whole_space,
        diagnoses=None if found is None else found.diagnoses,
    )
    if output == "json":
        click.echo(json_text(document))
    else:
        render_table(document, Console(width=max(Console().width, 132)))


def _job_spec(
    spec_path: Path | None, source: str | None, job_id: str | None, notes: list[str]
) -> JobSpec | None:
    """The job's configuration: ``--spec``, else a bundled example's own; None without one. A bad spec is
    refused (exit 2) before any telemetry is read."""
    if spec_path is None and source == EXAMPLE and job_id is not None:
        from collectors.sources import example_spec

        spec_path = example_spec(job_id)
        if spec_path is not None:
            notes.append(f"job spec: {spec_path.name}, the bundled example's (--spec overrides)")
    if spec_path is None:
        return None
    from estimator.perfmodel.iteration import JobSpec

    return JobSpec.from_json(spec_path)


def _shares(chosen: Sequence[AlgorithmChoice], notes: list[str]) -> CaptureShares:
    """The capture shares of the model estimates use, when an algorithm takes its Z from Z_e."""
    if all(a.z_percent is not None for a in chosen):
        return capture_shares(None)  # unused: every Z was given
    from estimator.model.default import default_model, uses_local_model  # the model only when used

    origin = (
        "of the local model (this cluster's recorded studies, where there were enough)"
        if uses_local_model()
        else "measured on the vTrain tuning studies (models/README.md)"
    )
    return capture_shares(default_model().capture_shares(), origin)


def _one_job(
    telemetry: Telemetry, plan: Plan, shares: CaptureShares, z_given: ZInterval | None, window: float | None
) -> tuple[JobEstimate, tuple[str, ...]]:
    """The job's telemetry through the stages, and the GPU models it ran on; a source that names several
    jobs is refused."""
    from collectors.schema import GPU_MODEL
    from estimator.model.default import z_intervals_for
    from estimator.pipeline import estimate as estimate_stages
    from estimator.pipeline import gpu_summary

    summary = gpu_summary(telemetry)
    estimates = estimate_stages(
        summary,
        z_estimator=z_intervals_for,
        z_given=z_given,
        plan_for=lambda _job: plan,
        shares=shares,
        requested_window_seconds=window,
        with_notes=True,
    )
    if len(estimates) != 1:
        named = ", ".join(e.job_id for e in estimates[:5])
        raise MalformedCapture(
            f"{telemetry.source}: the job's telemetry names {len(estimates)} jobs ({named})"
        )
    return estimates[0], tuple(str(m) for m in summary[GPU_MODEL].dropna().unique())


def telemetry_document(source: str, found: JobEstimate) -> dict[str, Any]:
    """The ``telemetry`` object of the JSON output: where it came from and the job's features (NaN: null)."""
    values = {k: (None if not math.isfinite(v) else v) for k, v in found.features.items()}
    return {"source": source, "features": values}


@dataclass(frozen=True)
class _Scheduler:
    defaults: SlurmDefaults
    placement: dict[str, tuple[int, ...]]  # the job's nodes and GPU indices on each
    reuse: ReuseCount | None

    def fill(
        self,
        gpus: int | None,
        duration_hours: float | None,
        window: float | None,
        reuse: float | None,
        notes: list[str],
    ) -> tuple[int | None, float | None, float | None, datetime | None, float | None]:
        """G, T, the window (length and end) and R: each as given, else from the scheduler, noted."""
        given = {"gpus": gpus, "duration_hours": duration_hours, "window": window}
        d = self.defaults
        notes.extend(note for key, note in d.notes.items() if given.get(key) is None)
        end = None
        if window is None and d.window_start is not None and d.window_end is not None:
            window, end = max((d.window_end - d.window_start).total_seconds(), 1.0), d.window_end
        if reuse is None and self.reuse is not None:
            reuse = self.reuse.runs
            notes.append(self.reuse.note)
        gpus = gpus if gpus is not None else d.gpus
        return gpus, duration_hours if duration_hours is not None else d.duration_hours, window, end, reuse


def _slurm_defaults(job_id: str | None, wanted: bool | None, notes: list[str]) -> _Scheduler | None:
    """What Slurm says of the job; None when not asked, or (unless asked with --slurm) not answering."""
    if job_id is None or wanted is False:
        return None
    if wanted is None and (not is_slurm_job_id(job_id) or shutil.which("scontrol") is None):
        return None
    slurm = Slurm()
    try:
        job = slurm.job(job_id)
    except SlurmJobNotFound as exc:
        raise SlurmJobNotFound(f"{exc} (or give --no-slurm for a job Slurm does not hold)") from None
    except (SlurmUnavailable, SlurmQueryError) as exc:
        if wanted:
            raise
        notes.append(f"Slurm did not answer, so no scheduler defaults: {exc}")
        return None
    reuse = None
    try:
        reuse = slurm.reuse_from_history(job.user, job.name, exclude_job_id=job.job_id)
    except (SlurmUnavailable, SlurmQueryError) as exc:  # no accounting: no history, R stays the user's
        notes.append(f"no reuse count from Slurm accounting ({exc})")
    placement = {g.node: g.indices for g in job.gpus_per_node} or dict.fromkeys(job.nodes, ())
    return _Scheduler(defaults_from_slurm(job, datetime.now(UTC)), placement, reuse)


@cli.command("capture")
@click.option("--job-id", required=True, help="Job whose telemetry to record.")
@_telemetry_options
@capture_output_options("Parquet file to write (zest's capture format, read back by --source FILE).")
def capture(
    job_id: str,
    source: str | None,
    window: float | None,
    interval: float,
    prometheus_auth: PrometheusAuth | None,
    hpc_job_dir: Path | None,
    fields: str | None,
    output: Path,
    force: bool,
) -> None:
    """Record a job's telemetry from any source into a zest capture file."""
    from collectors.files import write_capture

    check_output(output, force)
    telemetry = read_job(
        source,
        job_id,
        window_seconds=window,
        interval_seconds=interval,
        raw=True,
        prometheus_auth=prometheus_auth,
        hpc_job_dir=hpc_job_dir,
        fields=[fields] if fields else None,
    )
    frame = telemetry.frame
    if frame is None or frame.empty:
        raise JobNotFound(f"{telemetry.source}: no samples for job {job_id} in the window read")
    write_capture(frame, output, notes=telemetry.notes)
    gpus = frame.groupby(["host", "gpu"], dropna=False).ngroups
    click.echo(
        f"wrote {len(frame)} samples of {gpus} GPU(s) of job {job_id} from {telemetry.source} to {output}"
    )


# --- entry points -----------------------------------------------------------------


def _fail(prog: str, message: str, code: int) -> NoReturn:
    click.echo(f"{prog}: error: {message}", err=True)
    sys.exit(code)


def _run(command: click.Command, prog: str, argv: Sequence[str] | None) -> NoReturn:
    try:
        result = command.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.exceptions.Abort:
        _fail(prog, "aborted", 130)
    except click.exceptions.NoArgsIsHelpError:
        _fail(prog, f"no command given; run {prog} --help to see the commands", 2)
    except click.ClickException as exc:  # bad options: one line, not click's usage block
        _fail(prog, exc.format_message(), exc.exit_code)
    except ZestError as exc:  # by meaning: each class carries its documented exit code
        _fail(prog, str(exc), exc.exit_code)
    sys.exit(result if isinstance(result, int) else 0)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of ``zest``."""
    _run(cli, "zest", argv)


def estimate_z_main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of ``estimate-z``, the same as ``zest estimate``."""
    _run(estimate, "estimate-z", argv)
