"""The command line: ``zest`` and its ``estimate-z`` alias. Thin: parse, call the stages, print.

Errors of the project's own classes are caught here, and only here, and become
one line on stderr and the exit code of :data:`EXIT_CODES` (documented in the
README).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console

from collectors.errors import JobNotFound, MalformedCapture, SourceQueryError, SourceUnavailable
from estimator.algorithms import ALGORITHMS_BY_NAME, DEFAULT_ALGORITHMS, DEFAULT_TRIAL_MINUTES, SHARES_NOTE
from estimator.breakeven import Candidate, Costs, InputError, Job, ZInterval, decide
from estimator.report import render_table, to_document


class NoEstimate(Exception):
    """Z_e cannot be estimated for the job (no telemetry source, no model)."""


#: Exit codes, by the exception that leads to them. 2 is also click's code for a bad option.
EXIT_CODES: dict[type[Exception], int] = {
    InputError: 2,
    SourceUnavailable: 3,
    NoEstimate: 3,
    SourceQueryError: 4,
    JobNotFound: 5,
    MalformedCapture: 6,
}


# --- option types -------------------------------------------------------------


@dataclass(frozen=True)
class AlgorithmOption:
    name: str
    trials: int
    z_percent: float | None


class AlgorithmType(click.ParamType):
    """``NAME=TRIALS[:Z_PERCENT]``, NAME one of the known algorithms."""

    name = "NAME=TRIALS[:Z_PERCENT]"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> AlgorithmOption:
        if isinstance(value, AlgorithmOption):
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
        return AlgorithmOption(name, trials, z)


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


def _positive(kind: type[float] | type[int]) -> click.ParamType:
    return click.IntRange(min=1) if kind is int else click.FloatRange(min=0, min_open=True)


# --- the commands ---------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zest")
def cli() -> None:
    """zest: will tuning this training job's throughput pay for itself?"""


@cli.command("estimate")
@click.option("--job-id", help="Job to estimate Z_e for from its telemetry (Slurm id, pod, pid:N).")
@click.option("--source", help="Telemetry source: nvml, prometheus=URL, or a capture file.")
@click.option(
    "--duration-hours",
    "duration_hours",
    type=_positive(float),
    help="T: the job's training duration before tuning, in hours (> 0).",
)
@click.option("--gpus", type=_positive(int), help="G: the job's number of GPUs (>= 1). Default 1.")
@click.option(
    "--reuse",
    type=click.FloatRange(min=1),
    help="R: how many times the tuned configuration will be run (>= 1). Default 1.",
)
@click.option(
    "--trial-minutes",
    type=_positive(float),
    default=DEFAULT_TRIAL_MINUTES,
    show_default=True,
    help="t: time of one tuning trial, in minutes (> 0).",
)
@click.option(
    "--engineer-hours",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="E: engineering effort to implement and validate the tuning, person-hours (>= 0).",
)
@click.option("--gpu-hour-cost", type=_positive(float), help="c_g: cost of one GPU-hour (> 0).")
@click.option("--engineer-hour-cost", type=_positive(float), help="c_e: cost of one engineer-hour (> 0).")
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
@click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also draw the break-even chart to this PNG file.",
)
def estimate(
    job_id: str | None,
    source: str | None,
    duration_hours: float | None,
    gpus: int | None,
    reuse: float | None,
    trial_minutes: float,
    engineer_hours: float,
    gpu_hour_cost: float | None,
    engineer_hour_cost: float | None,
    algorithms: tuple[AlgorithmOption, ...],
    z_expected: ZInterval | None,
    output: str,
    plot: Path | None,
) -> None:
    """Weigh tuning the job with each algorithm: R_break, Z_break, net saving, verdict.

    With every algorithm's Z known (--algorithm NAME=N:Z or --z-expected) it is a
    plain break-even calculator and needs no telemetry.
    """
    notes: list[str] = []
    chosen = algorithms or tuple(AlgorithmOption(a.name, a.trials, None) for a in DEFAULT_ALGORITHMS)
    names = [a.name for a in chosen]
    if len(set(names)) < len(names):
        raise click.BadParameter(
            f"each algorithm may be given once, got {', '.join(names)}", param_hint="'--algorithm'"
        )
    if duration_hours is None:
        raise click.UsageError("--duration-hours is required: the job's training duration T in hours (> 0)")
    if engineer_hours > 0 and (gpu_hour_cost is None or engineer_hour_cost is None):
        raise click.UsageError("--engineer-hours > 0 needs --gpu-hour-cost and --engineer-hour-cost (> 0)")
    needs_estimate = any(a.z_percent is None for a in chosen) and z_expected is None
    if needs_estimate:
        z_expected = estimate_from_telemetry(job_id, source)
    if gpus is None:
        gpus = 1
        notes.append("G not given (--gpus): assumed 1 GPU; GPU-hours scale with G")
    if reuse is None:
        reuse = 1.0
        notes.append("R not given (--reuse): assumed the tuned configuration runs once")
    if any(a.z_percent is None for a in chosen):
        notes.append(SHARES_NOTE)

    trial_hours = trial_minutes / 60.0
    candidates = [
        Candidate(
            a.name,
            a.trials,
            trial_hours,
            ZInterval.point(a.z_percent)
            if a.z_percent is not None
            else _require(z_expected).scaled(ALGORITHMS_BY_NAME[a.name].capture_share),
        )
        for a in chosen
    ]
    job = Job(duration_hours=duration_hours, gpus=gpus, reuse=reuse)
    costs = Costs(engineer_hours, gpu_hour_cost, engineer_hour_cost)
    decision = decide(candidates, job, costs)
    if any(a.r_break == float("inf") for a in decision.assessments):
        notes.append("an algorithm with Z = 0 never pays back: its R_break is null")
    if plot is not None:
        from estimator.plot import plot_breakeven  # matplotlib only when asked for

        plot_breakeven(decision, plot, title=f"job {job_id}" if job_id else None)
        notes.append(f"chart written to {plot}")
    document = to_document(
        decision, job_id=job_id, trial_minutes=trial_minutes, z_expected=z_expected, notes=notes
    )
    if output == "json":
        click.echo(json.dumps(document, indent=2))
    else:
        render_table(document, Console(width=max(Console().width, 110)))


def _require(z: ZInterval | None) -> ZInterval:
    assert z is not None  # estimate_from_telemetry either returns one or raises
    return z


def estimate_from_telemetry(job_id: str | None, source: str | None) -> ZInterval:
    """Z_e of a thorough search for the job, from its telemetry."""
    if job_id is None:
        raise click.UsageError(
            "--job-id is required to estimate Z_e from telemetry; "
            "or give every algorithm's Z with --algorithm NAME=N:Z or --z-expected Z"
        )
    raise NoEstimate(
        "no telemetry source is available in this version of zest: "
        "give Z with --z-expected Z or --algorithm NAME=N:Z to use the break-even calculator"
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
    except click.ClickException as exc:  # bad options: one line, not click's usage block
        _fail(prog, exc.format_message(), exc.exit_code)
    except tuple(EXIT_CODES) as exc:
        _fail(prog, str(exc), _code_of(exc))
    sys.exit(result if isinstance(result, int) else 0)


def _code_of(exc: Exception) -> int:
    return next(code for kind, code in EXIT_CODES.items() if isinstance(exc, kind))


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of ``zest``."""
    _run(cli, "zest", argv)


def estimate_z_main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of ``estimate-z``, the same as ``zest estimate``."""
    _run(estimate, "estimate-z", argv)
