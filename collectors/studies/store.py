"""Finished tuning studies (Optuna, ZenithTune) and the store that keeps their outcomes.

:func:`read_optuna_study` reads one study from any storage URL Optuna accepts
(``sqlite:///study.db``, ``postgresql://...``); :func:`find_zenithtune_studies`
finds the ``outputs/<study>/study.db`` files ZenithTune writes. Only finished
trials are kept: COMPLETE ones carry the objective, FAIL and PRUNED ones are
counted (they cost trial time). :func:`trial_telemetry` reads the telemetry
of one trial's time window from a source, or from a folder of capture files
named by trial number.

:class:`OutcomeStore` is a SQLite file (stdlib ``sqlite3``, WAL journal, one
explicit transaction per recorded study, ``synchronous=FULL``). Studies are
keyed by name and first trial start, trials by study and number: recording
the same study twice adds nothing, and a process killed mid-write leaves the
store as it was before that study. Optuna is an optional extra
(``pip install 'zest-gpu[optuna]'``); only reading a study needs it.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from collectors.errors import (
    InputError,
    JobNotFound,
    OptunaMissing,
    OutcomesError,
    SourceUnavailable,
    StoreError,
)
from collectors.files import read_capture
from collectors.sources import PROMETHEUS_PREFIX, Telemetry, read_job
from collectors.util import one_line, user_data_dir

if TYPE_CHECKING:
    from collectors.prometheus import PrometheusAuth

__all__ = [
    "COMPLETE",
    "FINISHED_STATES",
    "OBJECTIVES",
    "STORE_FILE",
    "OptunaMissing",
    "OutcomeStore",
    "OutcomesError",
    "RecordResult",
    "StoreError",
    "StudyRecord",
    "TrialRecord",
    "default_store_path",
    "find_zenithtune_studies",
    "read_optuna_study",
    "trial_telemetry",
    "user_data_dir",
    "with_features",
]

#: What a study's objective measures: ``time`` (lower is better: seconds per step, time to train) or
#: ``throughput`` (higher is better: samples/s, tokens/s, or an improvement rate k over the default).
OBJECTIVES: Final = ("throughput", "time")
COMPLETE: Final = "COMPLETE"
#: Trial states kept: they ran to an end and cost their time. RUNNING and WAITING trials are not finished.
FINISHED_STATES: Final = (COMPLETE, "FAIL", "PRUNED")
#: The file ZenithTune writes per study: ``outputs/<study>/study.db``.
ZENITHTUNE_DB: Final = "study.db"
STORE_FILE: Final = "outcomes.sqlite"
#: Trial user attributes naming the scheduler job a trial ran as (first found wins).
JOB_ID_ATTRS: Final = ("job_id", "slurm_job_id")
#: Bump with a migration when the tables below change.
SCHEMA_VERSION: Final = 1
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
    """``url`` without a password, fit to show and store."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _check_storage(storage: str) -> None:
    """Refuse a storage that is no URL (a file path, most often), and a missing SQLite file: Optuna would
    create one, and reading a study must not."""
    if "://" not in storage:
        raise InputError(
            f"--storage {storage!r} is not a storage URL: give sqlite:///PATH for a SQLite file "
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


def _plain(value: Any) -> Any:
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
                params={str(k): _plain(v) for k, v in trial.params.items()},
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


# --- the store --------------------------------------------------------------------


def default_store_path() -> Path:
    return user_data_dir() / STORE_FILE


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    started_at TEXT NOT NULL,           -- first trial's start, UTC ISO 8601: with name, the study's identity
    storage TEXT NOT NULL,              -- where it was first read, without credentials
    direction TEXT NOT NULL,
    objective TEXT NOT NULL,
    duration_hours REAL,                -- T of the tuned job, when given
    reuse REAL,                         -- R so far, when given
    recorded_at TEXT NOT NULL,
    UNIQUE (name, started_at)
);
CREATE TABLE IF NOT EXISTS trials (
    study_id INTEGER NOT NULL REFERENCES studies(id),
    number INTEGER NOT NULL,
    state TEXT NOT NULL,
    value REAL,
    started_at TEXT,
    completed_at TEXT,
    params TEXT NOT NULL,               -- JSON object
    job_id TEXT,
    features TEXT,                      -- JSON object of job features, NULL without telemetry
    telemetry TEXT NOT NULL,
    PRIMARY KEY (study_id, number)
);
CREATE TABLE IF NOT EXISTS runs (       -- later runs of a tuned job with the tuned configuration
    study_id INTEGER NOT NULL REFERENCES studies(id),
    job_id TEXT NOT NULL,
    PRIMARY KEY (study_id, job_id)
);
"""

STUDY_COLUMNS: Final = (
    "study_id",
    "name",
    "started_at",
    "storage",
    "direction",
    "objective",
    "duration_hours",
    "reuse",
    "recorded_runs",
)
TRIAL_COLUMNS: Final = (
    "study_id",
    "number",
    "state",
    "value",
    "started_at",
    "completed_at",
    "duration_seconds",
    "params",
    "job_id",
    "features",
)


@dataclass(frozen=True)
class RecordResult:
    """What recording one study changed: a new study row, new trials, trials given telemetry, new runs,
    and the stored T or R of a study recorded before (``updated``: their column names)."""

    study: str
    new_study: bool
    added_trials: int
    added_features: int
    added_runs: int
    trials_with_features: int
    updated: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.new_study or bool(
            self.added_trials or self.added_features or self.added_runs or self.updated
        )


def _stored(moment: datetime | None) -> str | None:
    """A moment in the store's text form (schema 1: ``isoformat`` in UTC, ``+00:00``, as recorded so far).

    Not :func:`collectors.util.iso_utc`: a study's identity is (name, started_at) as text, so the
    form must stay that of the rows already recorded.
    """
    return None if moment is None else moment.astimezone(UTC).isoformat()


class OutcomeStore:
    """The outcomes of recorded tuning studies in one SQLite file; use as a context manager.

    Raises :class:`StoreError` when the file cannot be opened or written.
    """

    def __init__(self, path: Path, *, timeout_seconds: float = 30.0) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; each write below opens its own
            self._db = sqlite3.connect(path, timeout=timeout_seconds, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{path} was written by a newer zest (schema {version}): upgrade zest")
            with self._transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot open the outcomes store {path} ({exc}): check the path, or pass --store"
            ) from None
        except OSError as exc:
            raise StoreError(f"cannot create the folder of {path} ({exc.strerror}): pass --store") from None

    def __enter__(self) -> OutcomeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def record(
        self,
        study: StudyRecord,
        *,
        duration_hours: float | None = None,
        reuse: float | None = None,
        reused_by: Sequence[str] = (),
    ) -> RecordResult:
        """Add ``study`` and its trials in one transaction; what is already stored stays as it is.

        A trial already stored without features gets them when ``study`` has
        them now; ``duration_hours`` and ``reuse``, when given, replace the
        stored ones; ``reused_by`` adds job ids of later runs with the tuned
        configuration.
        """
        started = _stored(study.started_at)
        if started is None:
            raise OutcomesError(
                f"study {study.name!r} has no finished trial with a start time: nothing to record"
            )
        now = datetime.now(UTC).isoformat()
        try:
            with self._transaction():
                cursor = self._db.execute(
                    "INSERT INTO studies (name, started_at, storage, direction, objective, duration_hours, "
                    "reuse, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (name, started_at) DO NOTHING",
                    (study.name, started, study.storage, study.direction, study.objective,
                     duration_hours, reuse, now),
                )  # fmt: skip
                new_study = cursor.rowcount == 1
                study_id = self._db.execute(
                    "SELECT id FROM studies WHERE name = ? AND started_at = ?", (study.name, started)
                ).fetchone()[0]
                updated = []
                for column, value in (("duration_hours", duration_hours), ("reuse", reuse)):
                    if value is not None and not new_study:
                        cursor = self._db.execute(
                            f"UPDATE studies SET {column} = ? WHERE id = ? AND {column} IS NOT ?",
                            (value, study_id, value),
                        )
                        if cursor.rowcount:
                            updated.append(column)
                before = self._counts(study_id)
                self._db.executemany(
                    "INSERT INTO trials (study_id, number, state, value, started_at, completed_at, params, "
                    "job_id, features, telemetry) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (study_id, number) DO UPDATE SET features = excluded.features, "
                    "telemetry = excluded.telemetry "
                    "WHERE trials.features IS NULL AND excluded.features IS NOT NULL",
                    (_trial_row(study_id, t) for t in study.trials),
                )
                self._db.executemany(
                    "INSERT INTO runs (study_id, job_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    ((study_id, j) for j in reused_by),
                )
                after = self._counts(study_id)
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot write the outcomes store {self.path} ({exc}): check space and rights"
            ) from None
        return RecordResult(
            study=study.name,
            new_study=new_study,
            added_trials=after[0] - before[0],
            added_features=after[1] - before[1],
            added_runs=after[2] - before[2],
            trials_with_features=after[1],
            updated=tuple(updated),
        )

    def _counts(self, study_id: int) -> tuple[int, int, int]:
        trials, with_features = self._db.execute(
            "SELECT count(*), count(features) FROM trials WHERE study_id = ?", (study_id,)
        ).fetchone()
        runs = self._db.execute("SELECT count(*) FROM runs WHERE study_id = ?", (study_id,)).fetchone()[0]
        return int(trials), int(with_features), int(runs)

    def studies(self) -> pd.DataFrame:
        """One row per study (:data:`STUDY_COLUMNS`), in recording order."""
        rows = self._query(
            "SELECT s.id, s.name, s.started_at, s.storage, s.direction, s.objective, s.duration_hours, "
            "s.reuse, (SELECT count(*) FROM runs r WHERE r.study_id = s.id) FROM studies s ORDER BY s.id"
        )
        frame = pd.DataFrame(rows, columns=list(STUDY_COLUMNS))
        return frame.astype({"study_id": "int64", "duration_hours": "float64", "reuse": "float64"})

    def trials(self) -> pd.DataFrame:
        """One row per trial (:data:`TRIAL_COLUMNS`; ``params`` and ``features`` as dicts or None)."""
        rows = self._query(
            "SELECT study_id, number, state, value, started_at, completed_at, params, job_id, features "
            "FROM trials ORDER BY study_id, number"
        )
        frame = pd.DataFrame(
            rows,
            columns=["study_id", "number", "state", "value", "started_at", "completed_at", "params",
                     "job_id", "features"],
        )  # fmt: skip
        started = pd.to_datetime(frame["started_at"], utc=True, format="ISO8601")
        completed = pd.to_datetime(frame["completed_at"], utc=True, format="ISO8601")
        frame["duration_seconds"] = (completed - started).dt.total_seconds()
        # parsed from the rows, not the frame: pandas reads a column of text and None as strings and NaN
        frame["params"] = pd.Series([json.loads(r[6]) for r in rows], index=frame.index, dtype=object)
        frame["features"] = pd.Series(
            [None if r[8] is None else json.loads(r[8]) for r in rows], index=frame.index, dtype=object
        )
        frame = frame.astype({"study_id": "int64", "number": "int64", "value": "float64"})
        return frame[list(TRIAL_COLUMNS)]

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot read the outcomes store {self.path} ({exc})") from None

    def integrity(self) -> str:
        """SQLite's ``integrity_check``: ``"ok"`` for a whole store."""
        return str(self._query("PRAGMA integrity_check")[0][0])


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back when the block raises."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


def _trial_row(study_id: int, trial: TrialRecord) -> tuple[Any, ...]:
    features = None
    if trial.features is not None:
        # NaN is no JSON: a feature the telemetry could not give is stored as null
        features = json.dumps(
            {k: (None if not math.isfinite(v) else v) for k, v in trial.features.items()}, sort_keys=True
        )
    return (
        study_id,
        trial.number,
        trial.state,
        trial.value,
        _stored(trial.started_at),
        _stored(trial.completed_at),
        json.dumps(dict(trial.params), sort_keys=True),
        trial.job_id,
        features,
        trial.telemetry,
    )


def with_features(trial: TrialRecord, features: Mapping[str, float] | None, note: str) -> TrialRecord:
    """``trial`` with its features (or None) and where they came from."""
    return replace(trial, features=None if features is None else dict(features), telemetry=note)
