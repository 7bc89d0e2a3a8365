"""Commands of the cluster's own tuning outcomes: ``zest record`` and ``zest history``.

Thin: parse, call the stages, print. :func:`study_options` holds the options
that name a study (Optuna, ZenithTune, Ray Tune), shared with ``zest advise``,
and :func:`read_studies` reads what they name. The project's errors
(:class:`collectors.errors.OutcomesError`, :class:`~collectors.errors.OptunaMissing`,
:class:`~collectors.errors.StoreError` and the telemetry sources' errors)
propagate to the ``zest`` group, which maps them to exit codes. The group adds
these commands with ``cli.add_command``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import click
import pandas as pd

from collectors.errors import JobNotFound, MalformedCapture
from collectors.studies.optuna import (
    COMPLETE,
    OBJECTIVES,
    StudyRecord,
    find_zenithtune_studies,
    read_optuna_study,
    trial_telemetry,
    with_features,
)
from collectors.studies.raytune import MODES, VALUE_SCOPES, read_ray_tune_experiment
from collectors.studies.store import OutcomeStore, RecordResult, default_store_path, read_outcomes
from estimator.cli.options import DurationType, FloatIn, IntIn, prometheus_access_options
from estimator.reports.table import json_text

if TYPE_CHECKING:
    from collectors.prometheus import PrometheusAuth

__all__ = [
    "StudyOptions",
    "history_command",
    "read_studies",
    "record",
    "store_option",
    "study_options",
]


def store_option(command: Callable[..., None]) -> Callable[..., None]:
    """``--store PATH``: the outcomes store, by default in the user's data directory."""
    return click.option(
        "--store",
        "store_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        show_default="outcomes.sqlite in the user's data directory",
        help="SQLite file of the recorded tuning outcomes.",
    )(command)


def resolved_store(store_path: Path | None) -> Path:
    return default_store_path() if store_path is None else store_path


# --- which study: Optuna, ZenithTune or Ray Tune ---------------------------------------------------


@dataclass(frozen=True)
class StudyOptions:
    """The study options as given: an Optuna storage and study, a ZenithTune folder, or a Ray Tune
    experiment folder with its metric and mode."""

    storage: str | None
    study_name: str | None
    zenithtune_dir: Path | None
    ray_dir: Path | None
    metric: str | None
    mode: str | None
    objective: str | None
    ray_value: str = "last"
    full_iterations: int | None = None


_STUDY_OPTIONS: Final = (
    click.option(
        "--storage",
        help="Optuna storage URL, e.g. sqlite:///study.db (any RDB URL Optuna accepts). "
        "[required with --study, unless --zenithtune-dir or --ray-dir]",
    ),
    click.option(
        "--study",
        "study_name",
        help="Study name in --storage (or one of those under --zenithtune-dir, for zest advise). "
        "[required with --storage]",
    ),
    click.option(
        "--zenithtune-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="ZenithTune's output folder: every study in the study.db files under it.",
    ),
    click.option(
        "--ray-dir",
        type=click.Path(path_type=Path),
        help="A Ray Tune experiment folder, <storage_path>/<name> (~/ray_results/<name>): each trial's "
        "params.json and result.json or progress.csv, read without Ray. Trials that reported fewer "
        "iterations than the longest (or --full-iterations) are PRUNED (an early-stopping scheduler's).",
    ),
    click.option(
        "--metric",
        help="With --ray-dir: the reported result key that is the objective (nested keys as a/b). "
        "[required with --ray-dir]",
    ),
    click.option(
        "--mode",
        type=click.Choice(tuple(MODES)),
        default=None,
        help="With --ray-dir: max or min, as given to Ray's TuneConfig (default: from --objective).",
    ),
    click.option(
        "--ray-value",
        type=click.Choice(VALUE_SCOPES),
        default="last",
        show_default=True,
        help="With --ray-dir: a trial's value is the last value of --metric it reported, or its best by "
        "--mode (Ray's scope='all').",
    ),
    click.option(
        "--full-iterations",
        type=click.IntRange(min=1),
        default=None,
        help="With --ray-dir: a trial without error that reported fewer iterations is PRUNED (default: the "
        "most any trial reported); 1 keeps every trial COMPLETE, for trials of different lengths by "
        "design or a stopper on a metric.",
    ),
    click.option(
        "--objective",
        type=click.Choice(OBJECTIVES),
        default=None,
        help="What the objective measures (default: the study's direction, maximize = throughput).",
    ),
)


def study_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options that name a study; ``command`` receives them as ``study`` (:class:`StudyOptions`).

    One definition for ``zest record`` and ``zest advise``; :func:`read_studies` reads what they name.
    """

    @functools.wraps(command)
    def with_study(
        *args: Any,
        storage: str | None,
        study_name: str | None,
        zenithtune_dir: Path | None,
        ray_dir: Path | None,
        metric: str | None,
        mode: str | None,
        ray_value: str,
        full_iterations: int | None,
        objective: str | None,
        **kwargs: Any,
    ) -> Any:
        options = StudyOptions(
            storage, study_name, zenithtune_dir, ray_dir, metric, mode, objective, ray_value, full_iterations
        )
        return command(*args, study=options, **kwargs)

    decorated: Callable[..., Any] = with_study
    for option in reversed(_STUDY_OPTIONS):
        decorated = option(decorated)
    return decorated


def _check_sources(options: StudyOptions, *, pick: bool) -> None:
    """Exactly one source, with what it needs and nothing of another's (``click.BadParameter``, exit 2).

    ``pick``: ``--study`` may pick one study under ``--zenithtune-dir`` (``zest advise``).
    """
    o = options
    given = [
        name
        for name, value in (("--storage", o.storage), ("--zenithtune-dir", o.zenithtune_dir),
                            ("--ray-dir", o.ray_dir))
        if value is not None
    ]  # fmt: skip
    if len(given) > 1:
        raise click.BadParameter(f"give one study source, not {' and '.join(given)}")
    if o.ray_dir is None:
        ray_only = {
            "--metric": o.metric is not None,
            "--mode": o.mode is not None,
            "--ray-value": o.ray_value != "last",
            "--full-iterations": o.full_iterations is not None,
        }
        flag = next((name for name, is_given in ray_only.items() if is_given), None)
        if flag is not None:
            raise click.BadParameter(f"{flag} goes with --ray-dir DIR (a Ray Tune experiment)")
    if o.ray_dir is not None:
        if o.study_name is not None:
            raise click.BadParameter(
                "--study goes with --storage; a Ray Tune experiment is named by its folder"
            )
        if o.metric is None:
            raise click.BadParameter("--ray-dir needs --metric NAME: the reported result key to tune")
        if o.mode is None and o.objective is None:
            raise click.BadParameter("--ray-dir needs --mode max|min (as given to Ray's TuneConfig)")
    elif o.zenithtune_dir is not None:
        if o.study_name is not None and not pick:
            raise click.BadParameter("give --zenithtune-dir or --storage with --study, not both")
    elif o.storage is None or o.study_name is None:
        raise click.BadParameter(
            "give --storage URL and --study NAME, or --zenithtune-dir DIR, or --ray-dir DIR --metric NAME"
        )


def read_studies(options: StudyOptions, *, pick: bool = False) -> list[StudyRecord]:
    """The studies the options name: one (an Optuna study, a Ray Tune experiment) or every study under
    ``--zenithtune-dir``; with ``pick``, exactly one (``--study`` names it when there are several)."""
    _check_sources(options, pick=pick)
    o = options
    if o.ray_dir is not None:
        assert o.metric is not None  # checked
        return [
            read_ray_tune_experiment(
                o.ray_dir,
                metric=o.metric,
                mode=o.mode,
                objective=o.objective,
                value=o.ray_value,
                full_iterations=o.full_iterations,
            )
        ]
    if o.zenithtune_dir is None:
        assert o.storage is not None and o.study_name is not None  # checked
        return [read_optuna_study(o.storage, o.study_name, objective=o.objective)]
    targets = find_zenithtune_studies(o.zenithtune_dir)
    if pick:
        found = [(url, name) for url, name in targets if o.study_name in (None, name)]
        if len(found) != 1:
            names = ", ".join(sorted({name for _, name in targets}))
            raise click.BadParameter(
                f"{len(found)} studies under {o.zenithtune_dir} match: name one with --study "
                f"(it holds: {names})"
            )
        targets = found
    return [read_optuna_study(url, name, objective=o.objective) for url, name in targets]


def _with_telemetry(
    study: StudyRecord, source: str, job_id: str | None, prometheus_auth: PrometheusAuth | None
) -> StudyRecord:
    """``study`` with the features of each COMPLETE trial's telemetry; trials without any keep None."""
    from estimator.pipeline import estimate, gpu_summary  # the model only when trials' telemetry is read

    trials = []
    for trial in study.trials:
        if trial.state != COMPLETE:
            trials.append(trial)
            continue
        try:
            telemetry = trial_telemetry(
                source, study.name, trial, job_id=job_id, prometheus_auth=prometheus_auth
            )
        except JobNotFound as exc:  # kept for the learning curve, without features
            trials.append(with_features(trial, None, f"no telemetry: {exc}"))
            continue
        try:
            found = estimate(gpu_summary(telemetry))
        except JobNotFound:
            trials.append(with_features(trial, None, f"no samples in {telemetry.source}"))
            continue
        if len(found) != 1:
            raise MalformedCapture(
                f"{telemetry.source}: trial {trial.number}'s telemetry names {len(found)} jobs; "
                "give --job-id, or set the trials' job_id user attribute"
            )
        trials.append(with_features(trial, dict(found[0].features), telemetry.source))
    return StudyRecord(
        study.name, study.storage, study.direction, study.objective, tuple(trials), study.running
    )


_STORED_INPUT = {"duration_hours": "T (--duration-hours)", "reuse": "R (--reuse)", "gpus": "G (--gpus)"}


def _describe(result: RecordResult, study: StudyRecord) -> str:
    if not result.changed:
        return f"{study.name}: already recorded, nothing changed"
    parts = [f"{result.added_trials} new trial(s)"]
    if result.added_features:
        parts.append(f"{result.added_features} given telemetry")
    if result.added_runs:
        parts.append(f"{result.added_runs} run(s) of the tuned job")
    parts += [f"{_STORED_INPUT[column]} replaced" for column in result.updated]
    head = "recorded" if result.new_study else "updated"
    return (
        f"{head} {study.name} ({study.objective}, {len(study.trials)} finished trial(s), "
        f"{result.trials_with_features} with telemetry): {', '.join(parts)}"
    )


@click.command("record")
@study_options
@click.option(
    "--source",
    default=None,
    help="Telemetry of each trial: prometheus=URL (over its time window) or a folder of captures "
    "named by trial number (<dir>/[<study>/]<number>.parquet|.csv|...).",
)
@click.option("--job-id", default=None, help="Job the trials ran as in Prometheus (else trial attr job_id).")
@click.option(
    "--duration-hours",
    type=DurationType("h"),
    default=None,
    help="T: how long one run of the tuned job takes, for history's paid-off check and ledger: hours "
    "(150), or with a unit (72h, 3d, 45m); > 0.",
)
@click.option(
    "--gpus",
    type=IntIn(min=1),
    default=None,
    help="G: GPUs of the tuned job, for history's GPU-hours (a trial with telemetry counts its own GPUs).",
)
@click.option(
    "--reuse",
    type=FloatIn(min=0),
    default=None,
    help="R so far: runs of the tuned job with the tuned configuration (else counted from --reused-by).",
)
@click.option("--reused-by", multiple=True, help="Job id of a run with the tuned configuration (repeatable).")
@prometheus_access_options
@store_option
def record(
    study: StudyOptions,
    source: str | None,
    job_id: str | None,
    duration_hours: float | None,
    gpus: int | None,
    reuse: float | None,
    reused_by: tuple[str, ...],
    prometheus_auth: PrometheusAuth | None,
    store_path: Path | None,
) -> None:
    """Record finished tuning studies (Optuna, ZenithTune, Ray Tune) and their trials' telemetry in the
    store."""
    studies = []  # read them all first: a study that cannot be read leaves the store untouched
    for found in read_studies(study):
        if source is not None:
            found = _with_telemetry(found, source, job_id, prometheus_auth)
        studies.append(found)
    path = resolved_store(store_path)
    with OutcomeStore(path) as store:
        for one in studies:
            result = store.record(
                one, duration_hours=duration_hours, reuse=reuse, reused_by=reused_by, gpus=gpus
            )
            click.echo(_describe(result, one))
    click.echo(f"store: {path}")


def _given(studies: pd.DataFrame, column: str, value: float | None) -> pd.DataFrame:
    """``studies`` with ``value`` where ``column`` was not recorded, and ``<column>_from``: recorded,
    given (on the command line) or None."""
    out = studies.copy()
    recorded = out[column].notna()
    out[f"{column}_from"] = ["recorded" if r else ("given" if value is not None else None) for r in recorded]
    if value is not None:
        out[column] = out[column].where(recorded, float(value))
    return out


def _cell(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _columns(heads: list[str], lines: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(heads)]
    return [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in [heads, *lines]
    ]


def _spent(row: pd.Series) -> str:
    if math.isfinite(row["gpu_hours_spent"]):
        return f"{row['gpu_hours_spent']:.2f} GPU-h"
    return f"{row['trial_hours_spent']:.2f} trial-h"


@click.command("history")
@click.option(
    "--duration-hours",
    type=DurationType("h"),
    default=None,
    help="T for the studies recorded without one: hours (150), or with a unit (72h, 3d, 45m); > 0. "
    "Recorded T comes first.",
)
@click.option(
    "--gpus",
    type=IntIn(min=1),
    default=None,
    help="G for the studies recorded without one (>= 1). Recorded G comes first.",
)
@store_option
@click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def history_command(
    duration_hours: float | None, gpus: int | None, store_path: Path | None, output: str
) -> None:
    """Past tuning studies: T, N, t, measured Z, reuse so far, whether each paid off, and the search
    ledger: GPU-hours spent, failed and pruned shares, cost against one run of the job.

    Reads only: a missing store is no error and is not created (exit 0, no studies).
    """
    # here, not at the top: zest advise shares this module and needs neither (nor the model they load)
    from estimator.training.outcomes import history, search_ledger

    path = resolved_store(store_path)
    recorded = read_outcomes(path)
    if recorded is None:
        if output == "json":
            click.echo(json_text({"store": str(path), "store_exists": path.exists(), "studies": []}))
        else:
            if path.exists():
                click.echo(f"no studies recorded: an empty outcomes store at {path}; zest record fills it")
            else:
                click.echo(f"no studies recorded: no outcomes store yet at {path}; zest record creates it")
        return
    studies, trials = recorded
    studies = _given(_given(studies, "duration_hours", duration_hours), "gpus", gpus)
    table = history(studies, trials)
    if not table.empty:
        table["duration_from"] = studies["duration_hours_from"].to_numpy()
        ledger = search_ledger(studies, trials)
        table = pd.concat([table, ledger.set_axis(table.index)], axis=1)
    if output == "json":
        records = table.to_dict(orient="records")
        click.echo(json_text({"store": str(path), "store_exists": True, "studies": records}))
        return
    if table.empty:
        click.echo(f"no studies recorded in {path}: record some with zest record")
        return
    heads = ["study", "T (h)", "N", "failed", "pruned", "t (h)", "Z (%)", "R", "R_break", "net (h/GPU)",
             "paid off"]  # fmt: skip
    lines = [
        [
            str(row["study"]),
            _cell(row["duration_hours"], 1),
            str(row["trials"]),
            str(row["failed"]),
            str(row["pruned"]),
            _cell(row["trial_hours"], 3),
            _cell(row["z_percent"], 1),
            f"{_cell(row['reuse'], 0)} ({row['reuse_from']})",
            _cell(row["r_break"], 2),
            _cell(row["net_hours"], 1),
            _cell(row["paid_off"]) if row["paid_off"] is not None else "n/a (no T)",
        ]
        for _, row in table.iterrows()
    ]
    for line in _columns(heads, lines):
        click.echo(line)
    click.echo("")
    click.echo("search ledger: spent = sum of trial duration x its GPUs; vs one run = spent / (G x T)")
    heads = ["study", "G", "spent", "failed", "pruned", "vs one run"]
    lines = [
        [
            str(row["study"]),
            _cell(row["gpus"], 0),
            _spent(row),
            f"{_cell(100 * row['failed_share'], 0)} %",
            f"{_cell(100 * row['pruned_share'], 0)} %",
            "n/a" if not math.isfinite(row["cost_vs_one_run"]) else f"{row['cost_vs_one_run']:.3g} x",
        ]
        for _, row in table.iterrows()
    ]
    for line in _columns(heads, lines):
        click.echo(line)
    for _, row in table.iterrows():
        for note in row["ledger_notes"]:
            click.echo(f"note: {row['study']}: {note}")
