"""The store of the cluster's tuning outcomes: a SQLite file of recorded studies and their trials.

:class:`OutcomeStore` is a SQLite file (stdlib ``sqlite3``, WAL journal, one
explicit transaction per recorded study, ``synchronous=FULL``). Studies are
keyed by name and first trial start, trials by study and number: recording
the same study twice adds nothing, and a process killed mid-write leaves the
store as it was before that study. The studies come from
:mod:`collectors.studies.optuna`.

A file is known for a store before anything is written to it (read-only:
its ``user_version``, ``application_id`` and tables), so a file of another
program given as the store is left as it was; reading (:func:`read_outcomes`)
writes nothing, so a store the user may only read can be read.

The schema has a version (SQLite's ``user_version``, :data:`SCHEMA_VERSION`).
A store of an older version is read as it is, and brought up to date
(:data:`_ADDED_COLUMNS`, in the transaction that checks it) only when a
command that writes (``zest record``) opens it.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pandas as pd

from collectors.errors import OutcomesError, StoreError
from collectors.studies.optuna import StudyRecord, TrialRecord
from collectors.util import one_line, user_data_dir

STORE_FILE: Final = "outcomes.sqlite"
SCHEMA_VERSION: Final = 2
#: The columns each schema version added to the one before it (table, column, declaration): a store of
#: an older version gets them when a writer opens it; a reader takes them as NULL.
_ADDED_COLUMNS: Final[dict[int, tuple[tuple[str, str, str], ...]]] = {
    2: (("studies", "gpus", "INTEGER"),),
}


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
    gpus INTEGER,                       -- G of the tuned job, when given (schema 2)
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
    "gpus",
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
    and the stored T, R or G of a study recorded before (``updated``: their column names)."""

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


def read_outcomes(path: Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The studies and trials recorded in the store at ``path``; None when there is no store there.

    Looking back writes nothing, neither the file, its folder nor the store's
    journal, so a store the user may only read is read (an empty database
    reads as no store). Raises :class:`StoreError` when ``path`` cannot hold
    a store (its folder is a file) or the file there is not one.
    """
    if not path.exists():
        if path.parent.exists() and not path.parent.is_dir():
            raise StoreError(f"cannot create the folder of {path} (Not a directory): pass --store")
        return None
    with OutcomeStore(path, read_only=True) as store:
        if store.schema_version == 0:
            return None
        return store.studies(), store.trials()


class OutcomeStore:
    """The outcomes of recorded tuning studies in one SQLite file; use as a context manager.

    ``read_only``: open for reading, writing nothing (no journal mode, no
    schema, no migration of an older store); the file must exist. Opened for
    writing, a new store gets the schema and an older one the columns of
    :data:`SCHEMA_VERSION`. Raises :class:`StoreError` when the file cannot
    be opened or written, or is not a zest store (checked before anything is
    written to it).
    """

    def __init__(self, path: Path, *, timeout_seconds: float = 30.0, read_only: bool = False) -> None:
        self.path = path
        self.schema_version = 0  # of the file as opened: 0 for a new, empty store
        self._columns_version = SCHEMA_VERSION  # whose columns the file holds now (read only: as opened)
        try:
            if read_only:
                self._db, self.schema_version = _open_read_only(path, timeout_seconds)
                self._columns_version = self.schema_version
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():  # known for a zest store (or an empty file) before anything writes to it
                peek, _ = _open_read_only(path, timeout_seconds)
                peek.close()
            # isolation_level=None: no implicit transactions; each write below opens its own
            self._db = sqlite3.connect(path, timeout=timeout_seconds, isolation_level=None)
            with self._transaction():  # checked again under the write lock: another process may have written
                self.schema_version = _schema_version(self._db, path)
                if self.schema_version == 0:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                elif self.schema_version < SCHEMA_VERSION:
                    _migrate(self._db, self.schema_version)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            raise StoreError(
                f"cannot open the outcomes store {path} ({one_line(exc)}): check the path, or pass --store"
            ) from None
        except OSError as exc:
            raise StoreError(f"cannot create the folder of {path} ({exc.strerror}): pass --store") from None
        except StoreError:
            self._close_quietly()
            raise

    def _close_quietly(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()

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
        gpus: int | None = None,
    ) -> RecordResult:
        """Add ``study`` and its trials in one transaction; what is already stored stays as it is.

        A trial already stored without features gets them when ``study`` has
        them now; ``duration_hours`` (T), ``reuse`` (R) and ``gpus`` (G of the
        tuned job), when given, replace the stored ones; ``reused_by`` adds
        job ids of later runs with the tuned configuration.
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
                    "reuse, recorded_at, gpus) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (name, started_at) DO NOTHING",
                    (study.name, started, study.storage, study.direction, study.objective,
                     duration_hours, reuse, now, gpus),
                )  # fmt: skip
                new_study = cursor.rowcount == 1
                study_id = self._db.execute(
                    "SELECT id FROM studies WHERE name = ? AND started_at = ?", (study.name, started)
                ).fetchone()[0]
                updated = []
                for column, value in (("duration_hours", duration_hours), ("reuse", reuse), ("gpus", gpus)):
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
        """One row per study (:data:`STUDY_COLUMNS`), in recording order; ``gpus`` NaN where not given
        (and in a store of schema 1, which has no such column)."""
        gpus = "s.gpus" if self._columns_version >= 2 else "NULL"
        rows = self._query(
            "SELECT s.id, s.name, s.started_at, s.storage, s.direction, s.objective, s.duration_hours, "
            f"s.reuse, (SELECT count(*) FROM runs r WHERE r.study_id = s.id), {gpus} FROM studies s "
            "ORDER BY s.id"
        )
        frame = pd.DataFrame(rows, columns=list(STUDY_COLUMNS))
        return frame.astype(
            {"study_id": "int64", "duration_hours": "float64", "reuse": "float64", "gpus": "float64"}
        )

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
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back when the block or the commit raises.

    The error that ended the transaction is the one that propagates: SQLite
    rolls a transaction back itself on some errors (a full disk), and a
    rollback that then fails must not replace the cause.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the error being raised says why; this would hide it
                self._db.execute("ROLLBACK")


# --- knowing a store ---------------------------------------------------------------------------------


def _connect_read_only(path: Path, timeout_seconds: float, *, immutable: bool = False) -> sqlite3.Connection:
    """A connection that cannot write to ``path`` (SQLite's ``mode=ro``); the file must exist."""
    uri = f"{path.absolute().as_uri()}?mode=ro" + ("&immutable=1" if immutable else "")
    return sqlite3.connect(uri, uri=True, timeout=timeout_seconds, isolation_level=None)


def _open_read_only(path: Path, timeout_seconds: float) -> tuple[sqlite3.Connection, int]:
    """A read-only connection to the store at ``path`` and its schema version (:func:`_schema_version`).

    A WAL store can be read only where SQLite may create its shared-memory
    file beside it; in a folder this user cannot write, and with no WAL file
    there (no writer holds it open), it is read as immutable: nobody who
    cannot create that file can be writing to the store.
    """
    try:
        return _checked(_connect_read_only(path, timeout_seconds), path)
    except sqlite3.OperationalError as exc:
        wal = path.with_name(path.name + "-wal")
        if exc.sqlite_errorcode != sqlite3.SQLITE_CANTOPEN or not path.is_file() or wal.exists():
            raise
    return _checked(_connect_read_only(path, timeout_seconds, immutable=True), path)


def _checked(db: sqlite3.Connection, path: Path) -> tuple[sqlite3.Connection, int]:
    """``db`` and its schema version; ``db`` is closed if that cannot be read or it is no store."""
    try:
        return db, _schema_version(db, path)
    except BaseException:
        db.close()
        raise


def _tables(db: sqlite3.Connection) -> dict[str, set[str]]:
    """Each table of ``db`` with its column names."""
    names = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    columns = "SELECT name FROM pragma_table_info(?)"
    return {name: {row[0] for row in db.execute(columns, (name,))} for name in names}


def _schema_tables(version: int = SCHEMA_VERSION) -> dict[str, set[str]]:
    """The tables and columns of a store of schema ``version``: :data:`_SCHEMA` itself, less the
    columns later versions added (:data:`_ADDED_COLUMNS`)."""
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        db.executescript(_SCHEMA)
        tables = _tables(db)
    for later, columns in _ADDED_COLUMNS.items():
        if later > version:
            for table, column, _ in columns:
                tables[table].discard(column)
    return tables


def _migrate(db: sqlite3.Connection, version: int) -> None:
    """Bring a store of schema ``version`` to :data:`SCHEMA_VERSION`, in the caller's transaction:
    the columns each later version added, then its ``user_version``."""
    for later in range(version + 1, SCHEMA_VERSION + 1):
        for table, column, declaration in _ADDED_COLUMNS.get(later, ()):
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _schema_version(db: sqlite3.Connection, path: Path) -> int:
    """The schema version of the store ``db`` (0: an empty database, a store yet to be made), read only.

    Raises :class:`StoreError` when the database is another program's (an
    application id, other tables or columns) or a newer zest's store.
    """
    application_id = int(db.execute("PRAGMA application_id").fetchone()[0])
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    objects = int(db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])
    if application_id == 0 and version == 0 and objects == 0:
        return 0
    tables = _tables(db)
    if application_id == 0 and set(_schema_tables()) <= set(tables):
        if version > SCHEMA_VERSION:
            raise StoreError(f"{path} was written by a newer zest (schema {version}): upgrade zest")
        expected = _schema_tables(version)
        if version >= 1 and all(columns <= tables[name] for name, columns in expected.items()):
            return version
    held = sorted(tables)
    listed = ", ".join(held[:4]) + (f", … ({len(held)} tables)" if len(held) > 4 else "")
    what = f"application id {application_id}" if application_id else f"tables {listed or 'none'}"
    raise StoreError(
        f"{path} is not a zest outcomes store (user_version {version}, {what}); "
        "it was left as it was: pass another --store"
    )


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
