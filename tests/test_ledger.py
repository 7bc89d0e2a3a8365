"""The search ledger of ``zest history``: real Optuna studies recorded into a real store, by hand.

Also the store's schema 2 (the study's G): a store of schema 1 is read as it
is, and migrated only when ``zest record`` writes to it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
import optuna
import pytest
from click.testing import CliRunner
from test_outcomes import write_trial_captures

from collectors.studies.store import SCHEMA_VERSION, OutcomeStore
from estimator.cli.main import cli
from estimator.cli.outcomes import history_command, record

optuna.logging.set_verbosity(optuna.logging.WARNING)
T0 = datetime(2026, 5, 4, 9, 0, 0)  # naive local time, as Optuna stores it
COMPLETE, FAIL, PRUNED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                          optuna.trial.TrialState.PRUNED)  # fmt: skip


def add_study(
    storage: str, name: str, trials: Sequence[tuple[optuna.trial.TrialState, float | None, float]]
) -> None:
    """A minimize study whose trials (state, seconds per step, minutes) ran one after the other from T0."""
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    dist: dict[str, optuna.distributions.BaseDistribution] = {
        "micro_batch": optuna.distributions.IntDistribution(1, 64)
    }
    start = T0
    for i, (state, value, minutes) in enumerate(trials):
        trial = optuna.trial.create_trial(
            state=state, value=value, params={"micro_batch": i + 1}, distributions=dist
        )
        trial.datetime_start = start
        trial.datetime_complete = start = start + timedelta(minutes=minutes)
        study.add_trial(trial)


#: 6 finished trials of 30 + 20 + 10 + 40 + 15 + 5 = 120 minutes: 1 failed, 2 pruned.
MIXED = [(COMPLETE, 5.0, 30), (COMPLETE, 4.5, 20), (FAIL, None, 10), (COMPLETE, 4.0, 40),
         (PRUNED, None, 15), (PRUNED, None, 5)]  # fmt: skip


def invoke(command: click.Command, args: list[str]) -> str:
    """``command`` run as ``zest <name>``, through the group (which gives it ``-h``)."""
    result = CliRunner().invoke(cli, [str(command.name), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def history(store: Path, *more: str) -> dict[str, dict[str, Any]]:
    document = json.loads(invoke(history_command, ["--store", str(store), "--output", "json", *more]))
    return {s["study"]: s for s in document["studies"]}


@pytest.fixture
def storage(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    add_study(url, "mixed", MIXED)
    return url


def test_the_ledger_of_a_study_with_failed_and_pruned_trials(storage: str, tmp_path: Path) -> None:
    store = tmp_path / "o.sqlite"
    args = ["--storage", storage, "--study", "mixed", "--store", str(store)]
    invoke(record, [*args, "--gpus", "4", "--duration-hours", "10"])
    with OutcomeStore(store, read_only=True) as opened:
        assert opened.studies()["gpus"].tolist() == [4.0]
    mixed = history(store)["mixed"]
    # 120 trial-minutes = 2 trial-hours, on G = 4: 8 GPU-hours; one run of the job: G · T = 40 GPU-hours
    assert mixed["trial_hours_spent"] == pytest.approx(2.0)
    assert mixed["gpu_hours_spent"] == pytest.approx(8.0)
    assert mixed["failed_share"] == pytest.approx(1 / 6, abs=1e-6)
    assert mixed["pruned_share"] == pytest.approx(2 / 6, abs=1e-6)
    assert mixed["cost_vs_one_run"] == pytest.approx(8.0 / 40.0)
    assert (mixed["gpus"], mixed["gpus_from"], mixed["duration_from"]) == (4, "recorded", "recorded")
    assert (mixed["untimed_trials"], mixed["ledger_notes"]) == (0, [])
    # the ledger and the paid-off check agree on the per-GPU hours spent: N · t
    assert mixed["exploration_hours"] == pytest.approx(mixed["trial_hours_spent"])
    table = invoke(history_command, ["--store", str(store)])
    assert "search ledger:" in table
    assert table.splitlines()[-1].split() == ["mixed", "4", "8.00", "GPU-h", "17", "%", "33", "%", "0.2", "x"]


def test_a_trial_with_telemetry_counts_its_own_gpus(storage: str, tmp_path: Path) -> None:
    captures = tmp_path / "captures"
    write_trial_captures(captures, [1], seed=3)  # trial 0 ran on 2 GPUs (the simulated job's)
    store = tmp_path / "o.sqlite"
    invoke(record, ["--storage", storage, "--study", "mixed", "--source", str(captures), "--gpus", "4",
                    "--duration-hours", "10", "--store", str(store)])  # fmt: skip
    mixed = history(store)["mixed"]
    # trial 0: 0.5 h on its own 2 GPUs; the other 1.5 h on the study's 4
    assert mixed["gpu_hours_spent"] == pytest.approx(0.5 * 2 + 1.5 * 4)
    assert mixed["cost_vs_one_run"] == pytest.approx(7.0 / 40.0)


def test_without_g_the_ledger_shows_trial_hours_and_says_why(storage: str, tmp_path: Path) -> None:
    store = tmp_path / "o.sqlite"
    invoke(record, ["--storage", storage, "--study", "mixed", "--store", str(store)])
    mixed = history(store)["mixed"]
    assert mixed["gpus"] is None and mixed["gpu_hours_spent"] is None and mixed["cost_vs_one_run"] is None
    assert mixed["trial_hours_spent"] == pytest.approx(2.0)
    notes = " ".join(mixed["ledger_notes"])
    assert "G not recorded: GPU-hours unknown, trial-hours shown" in notes and "no T:" in notes
    table = invoke(history_command, ["--store", str(store)])
    assert "2.00 trial-h" in table and "note: mixed: G not recorded" in table
    # T on the command line: G cancels when every trial ran on the job's G
    given_t = history(store, "--duration-hours", "4")["mixed"]
    assert given_t["cost_vs_one_run"] == pytest.approx(2.0 / 4.0) and given_t["duration_from"] == "given"
    assert given_t["paid_off"] is not None  # the paid-off check uses the given T as well
    given_g = history(store, "--duration-hours", "4", "--gpus", "2")["mixed"]
    assert (given_g["gpu_hours_spent"], given_g["gpus_from"]) == (pytest.approx(4.0), "given")
    assert given_g["cost_vs_one_run"] == pytest.approx(4.0 / 8.0)
    # a recorded G and T come first
    invoke(record, ["--storage", storage, "--study", "mixed", "--store", str(store), "--gpus", "4",
                    "--duration-hours", "10"])  # fmt: skip
    recorded = history(store, "--duration-hours", "4", "--gpus", "2")["mixed"]
    assert (recorded["gpus"], recorded["duration_hours"]) == (4, 10)


# --- schema 1 -----------------------------------------------------------------------------------

#: The schema of zest's first outcomes stores (user_version 1), as they were written.
SCHEMA_1 = """
CREATE TABLE studies (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, started_at TEXT NOT NULL, storage TEXT NOT NULL,
    direction TEXT NOT NULL, objective TEXT NOT NULL, duration_hours REAL, reuse REAL,
    recorded_at TEXT NOT NULL, UNIQUE (name, started_at)
);
CREATE TABLE trials (
    study_id INTEGER NOT NULL REFERENCES studies(id), number INTEGER NOT NULL, state TEXT NOT NULL,
    value REAL, started_at TEXT, completed_at TEXT, params TEXT NOT NULL, job_id TEXT, features TEXT,
    telemetry TEXT NOT NULL, PRIMARY KEY (study_id, number)
);
CREATE TABLE runs (
    study_id INTEGER NOT NULL REFERENCES studies(id), job_id TEXT NOT NULL, PRIMARY KEY (study_id, job_id)
);
INSERT INTO studies VALUES (1, 'old', '2026-01-05T09:00:00+00:00', 'sqlite:///old.db', 'minimize', 'time',
                            20.0, 2.0, '2026-01-06T00:00:00+00:00');
INSERT INTO trials VALUES (1, 0, 'COMPLETE', 10.0, '2026-01-05T09:00:00+00:00', '2026-01-05T10:00:00+00:00',
                           '{}', NULL, NULL, '');
INSERT INTO trials VALUES (1, 1, 'FAIL', NULL, '2026-01-05T10:00:00+00:00', '2026-01-05T10:30:00+00:00',
                           '{}', NULL, NULL, '');
INSERT INTO trials VALUES (1, 2, 'COMPLETE', 8.0, '2026-01-05T10:30:00+00:00', NULL, '{}', NULL, NULL, '');
PRAGMA user_version = 1;
"""


def schema_1_store(path: Path) -> Path:
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_1)
    db.close()
    return path


def test_a_schema_1_store_is_read_as_it_is(tmp_path: Path) -> None:
    store = schema_1_store(tmp_path / "old.sqlite")
    before = store.read_bytes()
    old = history(store, "--gpus", "8")["old"]
    assert store.read_bytes() == before  # history wrote nothing: no migration by a reader
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.sqlite"]
    # 1.5 timed trial-hours (trial 2 has no end) on the given G = 8: 12 GPU-h; G · T = 160 GPU-h
    assert (old["gpus_from"], old["untimed_trials"]) == ("given", 1)
    assert old["gpu_hours_spent"] == pytest.approx(12.0)
    assert old["cost_vs_one_run"] == pytest.approx(12.0 / 160.0)
    assert old["failed_share"] == pytest.approx(1 / 3, abs=1e-6) and old["pruned_share"] == 0
    assert "1 trial(s) without start and end are not in the hours" in old["ledger_notes"]
    with OutcomeStore(store, read_only=True) as opened:
        assert opened.schema_version == 1
        assert opened.studies()["gpus"].isna().all()


def test_record_migrates_a_schema_1_store_and_keeps_its_rows(storage: str, tmp_path: Path) -> None:
    store = schema_1_store(tmp_path / "old.sqlite")
    out = invoke(record, ["--storage", storage, "--study", "mixed", "--gpus", "4", "--store", str(store)])
    assert "recorded mixed" in out
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        rows = db.execute("SELECT name, duration_hours, reuse, gpus FROM studies ORDER BY id").fetchall()
        assert db.execute("SELECT count(*) FROM trials").fetchone()[0] == 3 + len(MIXED)
    db.close()
    assert rows == [("old", 20.0, 2.0, None), ("mixed", None, None, 4)]
    by_name = history(store)
    assert by_name["old"]["z_percent"] == pytest.approx(20.0)  # 100 · (1 − 8/10), as before
    assert by_name["mixed"]["gpu_hours_spent"] == pytest.approx(8.0)
    # G given later replaces the stored one, and record says so
    again = invoke(record, ["--storage", storage, "--study", "mixed", "--gpus", "2", "--store", str(store)])
    assert "0 new trial(s), G (--gpus) replaced" in again
