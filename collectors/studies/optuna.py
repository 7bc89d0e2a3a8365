"""Finished tuning studies (Optuna, ZenithTune): their trials, and each trial's telemetry.

:func:`read_optuna_study` reads one study from any storage URL Optuna accepts
(``sqlite:///study.db``, ``postgresql://...``); :func:`find_zenithtune_studies`
finds the ``outputs/<study>/study.db`` files ZenithTune writes. Only finished
trials are kept: COMPLETE ones carry the objective, FAIL and PRUNED ones are
counted (they cost trial time). :func:`trial_telemetry` reads the telemetry
of one trial's time window from a source, or from a folder of capture files
named by trial number. Optuna is an optional extra
(``pip install 'zest-gpu[optuna]'``); only reading a study needs it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from collectors.errors import InputError, JobNotFound, OptunaMissing, OutcomesError, SourceUnavailable
from collectors.files import read_capture
from collectors.sources import PROMETHEUS_PREFIX, Telemetry, read_job
from collectors.util import one_line, redact_url

if TYPE_CHECKING:
    from collectors.prometheus import PrometheusAuth

#: What a study's objective measures: ``time`` (lower is better: seconds per step, time to train) or
#: ``throughput`` (higher is better: samples/s, tokens/s, or an improvement rate k over the default).
OBJECTIVES: Final = ("throughput", "time")
COMPLETE: Final = "COMPLETE"
#: Trial states kept: they ran to an end and cost their time. RUNNING and WAITING trials are not finished.
FINISHED_STATES: Final = (COMPLETE, "FAIL", "PRUNED")
#: The file ZenithTune writes per study: ``outputs/<study>/study.db``.
ZENITHTUNE_DB: Final = "study.db"
#: Trial user attributes naming the scheduler job a trial ran as (first found wins).
JOB_ID_ATTRS: Final = ("job_id", "slurm_job_id")
OPTUNA_HINT: Final = "pip install 'zest-gpu[optuna]'"


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial: its state, objective value (COMPLETE only), window (UTC), parameters, features."""

    number: int
    state: str
    value: float | None
    started_at: datetime | None
    completed_at: datetime | None
    params: Mapping[str, Any] = field(default_factory=dict)
    job_id: str | None = None  # the scheduler job the trial ran as, from its user attributes
    features: Mapping[str, float] | None = None  # job features of the trial's telemetry (None: none found)
    telemetry: str = ""  # where the telemetry came from, or why there is none

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.completed_at is None:
            return None
        return (self.completed_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class StudyRecord:
    """One study: name, where it was read (no credentials), objective meaning, finished trials by number."""

    name: str
    storage: str
    direction: str  # "minimize" or "maximize", as Optuna stores it
    objective: str  # one of OBJECTIVES
    trials: tuple[TrialRecord, ...]
    running: int = 0  # trials not finished when read (not recorded)

    @property
    def started_at(self) -> datetime | None:
        starts = [t.started_at for t in self.trials if t.started_at is not None]
        return min(starts) if starts else None


# --- reading Optuna ---------------------------------------------------------------


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise OptunaMissing(f"reading tuning studies needs Optuna: {OPTUNA_HINT}") from None
    return optuna


def display_url(url: str) -> str:
    """``url`` without a password, fit to show and store (:func:`collectors.util.redact_url`)."""
    return redact_url(url)


def _check_storage(storage: str) -> None:
    """Refuse a storage that is no URL (a file path, most often), and a missing SQLite file: Optuna would
    create one, and reading a study must not."""
    if "://" not in storage:
        raise InputError(
            f"--storage {redact_url(storage)!r} is not a storage URL: give sqlite:///PATH for a SQLite file "
            "(sqlite:////abs/path/study.db), or an RDB URL Optuna accepts"
        )
    if storage.startswith("sqlite:///") and storage != "sqlite:///:memory:":
        path = Path(storage.removeprefix("sqlite:///"))
        if not path.is_file():
            raise OutcomesError(f"--storage {storage}: no such file {path}; give the study's database")


def _utc(moment: datetime | None) -> datetime | None:
    """Optuna stores naive local times: make them aware, in UTC."""
    if moment is None:
        return None
    return moment.astimezone(UTC)


def _job_id(attrs: Mapping[str, Any]) -> str | None:
    for key in JOB_ID_ATTRS:
        if attrs.get(key) not in (None, ""):
            return str(attrs[key])
    return None


def plain_value(value: Any) -> Any:
    """A parameter value JSON can hold (Optuna's are str, int, float, bool or None)."""
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def read_optuna_study(storage: str, study_name: str, *, objective: str | None = None) -> StudyRecord:
    """The finished trials of ``study_name`` in the Optuna storage at ``storage`` (an RDB URL).

    ``objective``: what the value measures (:data:`OBJECTIVES`); by default
    read from the study's direction (maximize: throughput, minimize: time).
    Raises :class:`OptunaMissing` without Optuna, :class:`OutcomesError` when
    the storage or study cannot be read or the study has several objectives.
    """
    if objective is not None and objective not in OBJECTIVES:
        raise OutcomesError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    optuna = _optuna()  # first: without Optuna nothing else can be said of the storage
    _check_storage(storage)
    from sqlalchemy.exc import ArgumentError  # Optuna's RDB storage is SQLAlchemy's

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
        directions = study.directions
        frozen = study.get_trials(deepcopy=False)
    except KeyError:
        names = _study_names(optuna, storage)
        raise OutcomesError(
            f"{display_url(storage)} holds no study {study_name!r}; it holds: {', '.join(names) or 'none'}"
        ) from None
    except (
        ValueError,
        RuntimeError,
        ImportError,
        ArgumentError,
        optuna.exceptions.StorageInternalError,
    ) as exc:
        # ValueError and ArgumentError: a malformed URL or an unknown database; RuntimeError: a schema
        # from another Optuna version; ImportError: the URL's database driver is not installed.
        raise OutcomesError(
            f"cannot read {display_url(storage)} ({one_line(exc)}); check the URL, or run "
            f"optuna storage upgrade --storage URL for an older study"
        ) from None
    if len(directions) != 1:
        raise OutcomesError(
            f"study {study_name!r} has {len(directions)} objectives; zest reads single-objective studies"
        )
    direction = "maximize" if directions[0] == optuna.study.StudyDirection.MAXIMIZE else "minimize"
    meaning = objective or ("throughput" if direction == "maximize" else "time")
    trials = []
    running = 0
    for trial in sorted(frozen, key=lambda t: t.number):
        state = trial.state.name
        if state not in FINISHED_STATES:
            running += 1
            continue
        value = trial.value if state == COMPLETE else None
        if value is not None and not (math.isfinite(value) and value > 0):
            state, value = (
                "FAIL",
                None,
            )  # zero, negative or NaN time or throughput: the trial measured nothing
        trials.append(
            TrialRecord(
                number=int(trial.number),
                state=state,
                value=None if value is None else float(value),
                started_at=_utc(trial.datetime_start),
                completed_at=_utc(trial.datetime_complete),
                params={str(k): plain_value(v) for k, v in trial.params.items()},
                job_id=_job_id(trial.user_attrs),
            )
        )
    return StudyRecord(study_name, display_url(storage), direction, meaning, tuple(trials), running)


def _study_names(optuna: Any, storage: str) -> list[str]:
    from sqlalchemy.exc import ArgumentError

    try:
        return sorted(str(n) for n in optuna.get_all_study_names(storage=storage))
    except (ValueError, RuntimeError, ArgumentError, optuna.exceptions.StorageInternalError):
        return []


def find_zenithtune_studies(directory: Path) -> list[tuple[str, str]]:
    """(storage URL, study name) of every study in the ``study.db`` files under ``directory``, sorted.

    ZenithTune writes ``outputs/<study>/study.db``; any depth is searched.
    Raises :class:`OutcomesError` when the folder is missing or holds none.
    """
    if not directory.is_dir():
        raise OutcomesError(f"--zenithtune-dir {directory}: no such folder; give ZenithTune's output folder")
    optuna = _optuna()
    found = []
    for db in sorted(directory.rglob(ZENITHTUNE_DB)):
        url = f"sqlite:///{db.resolve()}"
        found += [(url, name) for name in _study_names(optuna, url)]
    if not found:
        raise OutcomesError(
            f"no {ZENITHTUNE_DB} with a study under {directory}: is it ZenithTune's outputs/?"
        )
    return found


# --- telemetry per trial ----------------------------------------------------------


def _capture_for(folder: Path, study: str, number: int) -> Path | None:
    """``<folder>/<study>/<number>.*`` or ``<folder>/<number>.*`` (any suffix: .parquet, .csv, .prom.gz)."""
    for where in (folder / study, folder):
        if where.is_dir():
            matches = sorted(
                p for p in where.iterdir() if p.is_file() and p.name.split(".", 1)[0] == str(number)
            )
            if matches:
                return matches[0]
    return None


def trial_telemetry(
    source: str,
    study: str,
    trial: TrialRecord,
    *,
    job_id: str | None = None,
    prometheus_auth: PrometheusAuth | None = None,
) -> Telemetry:
    """The telemetry of one trial from ``source``: ``prometheus=URL`` or a folder of captures.

    Prometheus is asked for job ``trial.job_id`` (else ``job_id``) over the
    trial's window; a folder gives the capture named by the trial's number
    (see :func:`_capture_for`), filtered to the
    trial's job id when one is known, else whole. Raises :class:`JobNotFound` when the
    trial has no telemetry there (the caller keeps the trial without it), and
    the source's errors when the source itself fails.
    """
    if source.startswith(PROMETHEUS_PREFIX):
        job = trial.job_id or job_id
        if job is None:
            raise OutcomesError(
                "--source prometheus=URL needs the job the trials ran as: give --job-id, "
                f"or set a trial user attribute {JOB_ID_ATTRS[0]!r}"
            )
        seconds = trial.duration_seconds
        if seconds is None or seconds <= 0:
            raise JobNotFound(f"trial {trial.number} has no time window")
        return read_job(
            source, job, window_seconds=seconds, end=trial.completed_at, prometheus_auth=prometheus_auth
        )
    folder = Path(source)
    if not folder.is_dir():
        raise SourceUnavailable(
            f"--source {source}: give prometheus=URL or a folder of captures named by trial number"
        )
    path = _capture_for(folder, study, trial.number)
    if path is None:
        raise JobNotFound(f"no capture named {trial.number}.* in {folder}")
    # the file is the trial's: without a job id to look for, all of it is taken
    capture = read_capture(path, trial.job_id or job_id)
    return Telemetry(source=str(path), frame=capture.frame, notes=list(capture.notes))


def with_features(trial: TrialRecord, features: Mapping[str, float] | None, note: str) -> TrialRecord:
    """``trial`` with its features (or None) and where they came from."""
    return replace(trial, features=None if features is None else dict(features), telemetry=note)
