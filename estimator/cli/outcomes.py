"""Commands of the cluster's own tuning outcomes: ``zest record`` and ``zest history``.

Thin: parse, call the stages, print. The project's errors
(:class:`collectors.errors.OutcomesError`, :class:`~collectors.errors.OptunaMissing`,
:class:`~collectors.errors.StoreError` and the telemetry sources' errors)
propagate to the ``zest`` group, which maps them to exit codes. The group adds
these commands with ``cli.add_command``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

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
from collectors.studies.store import OutcomeStore, RecordResult, default_store_path, read_outcomes
from estimator.cli.options import DurationType, FloatIn, prometheus_access_options
from estimator.pipeline import estimate, gpu_summary
from estimator.reports.table import json_text
from estimator.training.outcomes import history

if TYPE_CHECKING:
    from collectors.prometheus import PrometheusAuth

__all__ = ["history_command", "record", "store_option"]


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


def _with_telemetry(
    study: StudyRecord, source: str, job_id: str | None, prometheus_auth: PrometheusAuth | None
) -> StudyRecord:
    """``study`` with the features of each COMPLETE trial's telemetry; trials without any keep None."""
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


_STORED_INPUT = {"duration_hours": "T (--duration-hours)", "reuse": "R (--reuse)"}


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
@click.option(
    "--storage",
    help="Optuna storage URL, e.g. sqlite:///study.db (any RDB URL Optuna accepts). "
    "[required with --study, unless --zenithtune-dir]",
)
@click.option(
    "--study",
    "study_name",
    help="Study name in --storage. [required with --storage, unless --zenithtune-dir]",
)
@click.option(
    "--zenithtune-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="ZenithTune's output folder: every study in the study.db files under it. "
    "[required unless --storage and --study]",
)
@click.option(
    "--objective",
    type=click.Choice(OBJECTIVES),
    default=None,
    help="What the objective measures (default: the study's direction, maximize = throughput).",
)
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
    help="T: how long one run of the tuned job takes, for history's paid-off check: hours (150), or with "
    "a unit (72h, 3d, 45m); > 0.",
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
    storage: str | None,
    study_name: str | None,
    zenithtune_dir: Path | None,
    objective: str | None,
    source: str | None,
    job_id: str | None,
    duration_hours: float | None,
    reuse: float | None,
    reused_by: tuple[str, ...],
    prometheus_auth: PrometheusAuth | None,
    store_path: Path | None,
) -> None:
    """Record finished tuning studies (Optuna, ZenithTune) and their trials' telemetry in the store."""
    if zenithtune_dir is not None:
        if storage is not None or study_name is not None:
            raise click.BadParameter("give --zenithtune-dir or --storage with --study, not both")
        targets = find_zenithtune_studies(zenithtune_dir)
    elif storage is None or study_name is None:
        raise click.BadParameter("give --storage URL and --study NAME, or --zenithtune-dir DIR")
    else:
        targets = [(storage, study_name)]
    studies = []  # read them all first: a study that cannot be read leaves the store untouched
    for url, name in targets:
        study = read_optuna_study(url, name, objective=objective)
        if source is not None:
            study = _with_telemetry(study, source, job_id, prometheus_auth)
        studies.append(study)
    path = resolved_store(store_path)
    with OutcomeStore(path) as store:
        for study in studies:
            result = store.record(study, duration_hours=duration_hours, reuse=reuse, reused_by=reused_by)
            click.echo(_describe(result, study))
    click.echo(f"store: {path}")


def _cell(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


@click.command("history")
@store_option
@click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def history_command(store_path: Path | None, output: str) -> None:
    """Past tuning studies: T, N, t, measured Z, reuse so far, and whether each paid off.

    Reads only: a missing store is no error and is not created (exit 0, no studies).
    """
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
    table = history(*recorded)
    if output == "json":
        records = table.to_dict(orient="records")
        click.echo(json_text({"store": str(path), "store_exists": True, "studies": records}))
        return
    if table.empty:
        click.echo(f"no studies recorded in {path}: record some with zest record")
        return
    heads = [
        "study",
        "T (h)",
        "N",
        "failed",
        "pruned",
        "t (h)",
        "Z (%)",
        "R",
        "R_break",
        "net (h/GPU)",
        "paid off",
    ]
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
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(heads)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)))
    for line in lines:
        click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
