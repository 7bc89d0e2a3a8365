"""Recording tuning outcomes: real Optuna studies, telemetry per trial, the store under kill, local models."""

from __future__ import annotations

import json
import math
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import click
import numpy as np
import optuna
import pandas as pd
import pytest
from click.testing import CliRunner
from promserver import dcgm_gpu, dcgm_labels, served

from collectors.errors import JobNotFound, OptunaMissing, OutcomesError
from collectors.files import write_capture
from collectors.studies.optuna import read_optuna_study
from collectors.studies.store import OutcomeStore
from estimator.cli import outcomes as outcomes_cli
from estimator.cli.main import cli
from estimator.cli.model import local_outcomes_section, train
from estimator.cli.outcomes import history_command, record
from estimator.features.extract import GPU_COUNT, SAMPLES_PER_GPU_MIN, WINDOW_SECONDS
from estimator.model.local import LocalZeRegressor, evaluate_local
from estimator.model.regressor import load_default_model, load_model_for_estimates, local_model_path
from estimator.perfmodel import iteration as perfmodel
from estimator.perfmodel.iteration import JobSpec
from estimator.training.outcomes import MIN_CURVE_STUDIES, curve_capture_shares, learning_curves, local_rows

optuna.logging.set_verbosity(optuna.logging.WARNING)
T0 = datetime(2026, 3, 2, 9, 0, 0)  # naive local time, as Optuna stores it
TRIAL_MINUTES = 30


def add_trials(
    storage: str,
    name: str,
    direction: Literal["minimize", "maximize"],
    values: Sequence[float | None],
    *,
    start: datetime = T0,
    minutes: float = TRIAL_MINUTES,
    states: dict[int, optuna.trial.TrialState] | None = None,
) -> None:
    """A study whose trial i ran ``minutes`` from ``start + i · minutes``, with value ``values[i]``."""
    study = optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True)
    dist: dict[str, optuna.distributions.BaseDistribution] = {
        "micro_batch": optuna.distributions.IntDistribution(1, 64)
    }
    for i, value in enumerate(values):
        state = (states or {}).get(i, optuna.trial.TrialState.COMPLETE)
        trial = optuna.trial.create_trial(
            state=state,
            value=value if state == optuna.trial.TrialState.COMPLETE else None,
            params={"micro_batch": i + 1},
            distributions=dist,
        )
        trial.datetime_start = start + timedelta(minutes=i * minutes)
        trial.datetime_complete = start + timedelta(minutes=(i + 1) * minutes)
        study.add_trial(trial)


SPEC: dict[str, Any] = {
    "gpu": "a100-80gb",
    "num_gpus": 2,
    "hidden_size": 1024,
    "attention_heads": 16,
    "num_layers": 24,
    "sequence_length": 1024,
    "global_batch": 16,
    "tensor_parallel": 1,
    "pipeline_parallel": 1,
    "data_parallel": 2,
}


def write_trial_captures(folder: Path, micro_batches: list[int], *, seed: int) -> None:
    """One small simulated capture per trial, named by trial number."""
    folder.mkdir(parents=True, exist_ok=True)
    constants = perfmodel.load_constants("a100-80gb")
    for number, micro_batch in enumerate(micro_batches):
        spec = JobSpec(**SPEC, micro_batch=micro_batch)
        frame = perfmodel.simulate_telemetry(
            spec, constants, job_id="trial", minutes=0.5, seed=seed + number, start=pd.Timestamp(T0, tz="UTC")
        )
        write_capture(frame, folder / f"{number}.parquet")


def invoke(command: click.Command, args: list[str]) -> str:
    """``command`` run as ``zest <name>``: through the group, which gives it ``-h`` before its first use
    (click caches a command's help option at its first invocation)."""
    result = CliRunner().invoke(cli, [str(command.name), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


# --- reading Optuna ------------------------------------------------------------------------------


def test_optimized_study_keeps_failed_and_pruned_and_reads_time_from_minimize(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="mb", storage=storage, direction="minimize")

    def objective(trial: optuna.Trial) -> float:
        micro_batch = trial.suggest_int("micro_batch", 1, 8)
        if trial.number == 2:
            raise optuna.TrialPruned()
        if trial.number == 4:
            raise ValueError("out of memory")
        return 10.0 / micro_batch + 1.0

    study.optimize(objective, n_trials=6, catch=(ValueError,))
    read = read_optuna_study(storage, "mb")
    assert read.direction == "minimize" and read.objective == "time"
    assert [t.state for t in read.trials] == [
        "COMPLETE",
        "COMPLETE",
        "PRUNED",
        "COMPLETE",
        "FAIL",
        "COMPLETE",
    ]
    assert all(t.value is None for t in read.trials if t.state != "COMPLETE")
    assert all(t.started_at is not None and t.started_at.tzinfo is not None for t in read.trials)
    assert read_optuna_study(storage, "mb", objective="throughput").objective == "throughput"


def test_maximize_reads_as_throughput_and_z_of_the_default(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    add_trials(storage, "tput", "maximize", [100.0, 80.0, 125.0, 120.0])
    study = read_optuna_study(storage, "tput")
    assert study.objective == "throughput"
    store_path = tmp_path / "o.sqlite"
    with OutcomeStore(store_path) as store:
        store.record(study, duration_hours=10.0, reuse=3)
        from estimator.training.outcomes import history

        table = history(store.studies(), store.trials())
    # the first trial is the default: Z = 100 · (1 − 100/125) = 20 %, an improvement rate k = 1.25
    assert table["z_percent"].iloc[0] == pytest.approx(20.0)
    assert table["z_percent"].iloc[0] == pytest.approx(100 * (1 - 1 / 1.25))
    assert "holds no trial with telemetry" in local_outcomes_section(store_path)  # zest evaluate says why not


def test_missing_study_and_missing_file_are_one_line_errors(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    add_trials(storage, "present", "minimize", [2.0, 1.0])
    with pytest.raises(OutcomesError, match="holds no study 'absent'; it holds: present"):
        read_optuna_study(storage, "absent")
    with pytest.raises(OutcomesError, match="no such file"):
        read_optuna_study(f"sqlite:///{tmp_path / 'none.db'}", "x")
    assert not (tmp_path / "none.db").exists()  # Optuna would have created it


def test_without_optuna_record_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(OptunaMissing, match=r"pip install 'zest-gpu\[optuna\]'"):
        read_optuna_study(f"sqlite:///{tmp_path / 'x.db'}", "x")


def test_record_reads_trials_with_the_prometheus_credentials_of_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    add_trials(storage, "cred", "minimize", [2.0, 1.0])
    seen: list[Any] = []

    def no_telemetry(source: str, study: str, trial: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("prometheus_auth"))
        raise JobNotFound(f"trial {trial.number}: nothing here")

    monkeypatch.setattr(outcomes_cli, "trial_telemetry", no_telemetry)
    monkeypatch.setenv("ZEST_PROMETHEUS_TOKEN", "s3cret-token")
    out = invoke(
        record,
        ["--storage", storage, "--study", "cred", "--source", "prometheus=http://127.0.0.1:9",
         "--job-id", "j1", "--store", str(tmp_path / "o.sqlite")],
    )  # fmt: skip
    assert len(seen) == 2 and all(auth is not None and auth.token == "s3cret-token" for auth in seen)
    assert "s3cret-token" not in out


# --- ZenithTune layout, capture folders, re-record -------------------------------------------------


def test_zenithtune_dir_with_capture_folders_records_once(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    captures = tmp_path / "captures"
    for k, name in enumerate(["llama-mb", "gpt-tp"]):
        (outputs / name).mkdir(parents=True)
        add_trials(
            f"sqlite:///{outputs / name / 'study.db'}",
            name,
            "minimize",
            [4.0, 3.0, None, 2.5],
            states={2: optuna.trial.TrialState.FAIL},
            start=T0 + timedelta(days=k),
        )
        write_trial_captures(captures / name, [1, 2, 4], seed=10 * k)  # trial 3 has no capture
    store = tmp_path / "outcomes.sqlite"
    args = ["--zenithtune-dir", str(outputs), "--source", str(captures), "--store", str(store)]
    first = invoke(record, args)
    assert "recorded gpt-tp (time, 4 finished trial(s), 2 with telemetry): 4 new trial(s)" in first
    assert "recorded llama-mb" in first
    with OutcomeStore(store) as opened:
        trials = opened.trials()
    assert len(trials) == 8
    by_number = trials.groupby("number")["features"].apply(lambda f: f.notna().sum())
    # trial 0 and 1 have captures and completed; 2 failed (no telemetry read); 3 has no capture
    assert by_number.to_dict() == {0: 2, 1: 2, 2: 0, 3: 0}
    second = invoke(record, args)
    assert second.count("already recorded, nothing changed") == 2
    with OutcomeStore(store) as opened:
        assert len(opened.trials()) == 8 and len(opened.studies()) == 2
    # T and R given later replace the stored ones, and the command says so; given again, no change
    third = invoke(record, [*args, "--duration-hours", "40", "--reuse", "3"])
    assert third.count("0 new trial(s), T (--duration-hours) replaced, R (--reuse) replaced") == 2
    fourth = invoke(record, [*args, "--duration-hours", "40", "--reuse", "5"])
    assert fourth.count("0 new trial(s), R (--reuse) replaced") == 2
    with OutcomeStore(store) as opened:
        studies = opened.studies()
    assert studies["duration_hours"].tolist() == [40.0, 40.0] and studies["reuse"].tolist() == [5.0, 5.0]
    assert invoke(record, [*args, "--reuse", "5"]).count("nothing changed") == 2


# --- a real Prometheus -----------------------------------------------------------------------------


def test_trial_windows_from_a_real_prometheus(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    now = int(time.time() // 3600) * 3600 - 6 * 3600
    job = {"hpc_job": "tune-77"}
    series = []
    for k in range(
        2
    ):  # trial k ran from now + k · 20 min, scraped 19 times from 30 s in; trial 2: no exporter
        start = now + k * 1200 + 30
        for gpu in range(2):
            series += dcgm_gpu(rng, start, 19, dcgm_labels("gpu-t01", gpu, job))
    with served(series, tmp_path, "trials") as server:
        storage = f"sqlite:///{tmp_path / 'study.db'}"
        local_start = datetime.fromtimestamp(now)  # naive local, as Optuna writes it
        add_trials(storage, "prom", "minimize", [3.0, 2.0, 2.5], start=local_start, minutes=20)
        store = tmp_path / "o.sqlite"
        out = invoke(
            record,
            ["--storage", storage, "--study", "prom", "--source", f"prometheus={server.url}",
             "--job-id", "tune-77", "--store", str(store)],
        )  # fmt: skip
    assert "2 with telemetry" in out
    with OutcomeStore(store) as opened:
        trials = opened.trials()
    assert trials["features"].notna().tolist() == [True, True, False]
    features = trials["features"].iloc[0]
    assert features[GPU_COUNT] == 2.0
    # asked for the trial's 20-minute window, Prometheus found the trial's 19 scrapes, 540 s apart
    assert features[WINDOW_SECONDS] == 540.0
    assert [f[SAMPLES_PER_GPU_MIN] for f in trials["features"].iloc[:2]] == [19.0, 19.0]


# --- the store under kill --------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime, timedelta
    from pathlib import Path
    from collectors.studies.optuna import StudyRecord, TrialRecord
    from collectors.studies.store import OutcomeStore

    def study(name, n):
        t0 = datetime(2026, 1, 1, tzinfo=UTC)
        features = {f"feature_{i}": float(i) for i in range(30)}
        trials = tuple(
            TrialRecord(i, "COMPLETE", 1.0 + i, t0 + timedelta(seconds=i), t0 + timedelta(seconds=i + 1),
                        {"x": i}, None, features, "test")
            for i in range(n)
        )
        return StudyRecord(name, "sqlite:///test.db", "minimize", "time", trials)

    with OutcomeStore(Path(sys.argv[1])) as store:
        store.record(study("small", 10))
        print("small", flush=True)
        store.record(study("large", int(sys.argv[2])))
        print("large", flush=True)
    """
)


def test_a_writer_killed_mid_write_leaves_the_store_whole(tmp_path: Path) -> None:
    store = tmp_path / "o.sqlite"
    large = 400_000
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store), str(large)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "small"
    wal = store.with_name(store.name + "-wal")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not wal.exists() or wal.stat().st_size < 2_000_000):
        time.sleep(0.01)  # the large study's transaction is being written
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    with sqlite3.connect(store) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        counts = dict(
            raw.execute(
                "SELECT s.name, count(t.number) FROM studies s "
                "JOIN trials t ON t.study_id = s.id GROUP BY s.name"
            )
        )
    assert counts.get("small") == 10
    assert counts.get("large") in (None, large)  # before or after, never a part
    with OutcomeStore(store) as opened:  # and it takes writes again
        assert opened.integrity() == "ok"
        assert len(opened.studies()) in (1, 2)


# --- history --------------------------------------------------------------------------------------


def test_history_paid_off_against_hand_computations(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    fail = {2: optuna.trial.TrialState.FAIL}
    pruned = {1: optuna.trial.TrialState.PRUNED}
    # t_default 5, best 4: Z = 100 · (1 − 4/5) = 20 %; N = 4 trials of 30 min: N · t = 2 h per GPU
    add_trials(storage, "paid", "minimize", [5.0, 4.0, None, 4.5], states=fail)
    add_trials(
        storage, "unpaid", "minimize", [5.0, None, 4.0, 4.5], states=pruned, start=T0 + timedelta(days=1)
    )
    add_trials(storage, "no-t", "minimize", [5.0, 4.0], start=T0 + timedelta(days=2))
    store = tmp_path / "o.sqlite"
    base = ["--storage", storage, "--store", str(store)]
    # paid: T = 10 h, R = 2 → saved 2 · 10 · 0.2 = 4 h > 2 h; R_break = 2 / (10 · 0.2) = 1
    invoke(record, [*base, "--study", "paid", "--duration-hours", "10", "--reuse", "2"])
    # unpaid: T = 5 h, R counted from 1 recorded run → saved 1 h < 2 h; R_break = 2 / (5 · 0.2) = 2
    invoke(record, [*base, "--study", "unpaid", "--duration-hours", "5", "--reused-by", "j1"])
    invoke(record, [*base, "--study", "unpaid", "--reused-by", "j1"])  # the same run again: still 1
    invoke(record, [*base, "--study", "no-t"])
    document = json.loads(invoke(history_command, ["--store", str(store), "--output", "json"]))
    by_name = {s["study"]: s for s in document["studies"]}
    paid, unpaid, no_t = by_name["paid"], by_name["unpaid"], by_name["no-t"]
    assert (paid["trials"], paid["failed"], paid["trial_hours"]) == (4, 1, pytest.approx(0.5))
    assert paid["z_percent"] == pytest.approx(20.0)
    assert paid["r_break"] == pytest.approx(1.0) and paid["net_hours"] == pytest.approx(2.0)
    assert paid["paid_off"] is True and paid["reuse_from"] == "given"
    assert (unpaid["pruned"], unpaid["reuse"], unpaid["reuse_from"]) == (1, 1.0, "recorded runs")
    assert unpaid["r_break"] == pytest.approx(2.0) and unpaid["net_hours"] == pytest.approx(-1.0)
    assert unpaid["paid_off"] is False
    assert no_t["paid_off"] is None and no_t["r_break"] is None
    table = invoke(history_command, ["--store", str(store)])
    assert "n/a (no T)" in table and "yes" in table


# --- learning curves ------------------------------------------------------------------------------


def test_capture_shares_from_learning_curves_by_hand() -> None:
    studies = pd.DataFrame({"study_id": range(MIN_CURVE_STUDIES), "objective": "time"})
    # 8 trials each: default 10 s, a 9 s trial at 2, the best 8 s at trial 6 (Z final 20 %)
    values = [10.0, 10.0, 9.0, 10.0, 10.0, 10.0, 8.0, 10.0]
    trials = pd.DataFrame(
        [
            {"study_id": s, "number": i, "state": "COMPLETE", "value": v}
            for s in range(MIN_CURVE_STUDIES)
            for i, v in enumerate(values)
        ]
    )
    curves = learning_curves(studies, trials)
    one = curves[curves["study_id"] == 0]
    assert one["found_percent"].tolist() == pytest.approx([0, 0, 10, 10, 10, 10, 20, 20])
    shipped = {"shares": {"heuristic": {"share": 0.6, "derived": "shipped"}}}
    shares = curve_capture_shares(curves, shipped)
    assert shares is not None
    # black-box: after ⌈0.25 · 8⌉ = 2 trials nothing was found yet: share 0; after 4 trials (0.5): 10/20
    assert shares["shares"]["black-box"]["share"] == 0.0
    assert shares["learning_curve_by_trial_fraction"]["0.5"] == 0.5
    assert shares["shares"]["heuristic"]["share"] == 0.6 and shares["shares"]["exhaustive"]["share"] == 1.0
    assert curve_capture_shares(curves[curves["study_id"] < MIN_CURVE_STUDIES - 1], shipped) is None


# --- train --with-outcomes without the vTrain data ------------------------------------------------


def test_train_with_outcomes_without_the_training_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    outputs, captures = tmp_path / "outputs", tmp_path / "captures"
    micro_batches = [1, 2, 4, 8]
    for k in range(3):
        name = f"study-{k}"
        (outputs / name).mkdir(parents=True)
        # this cluster's jobs gain far more than the shipped model predicts: up to 60 %
        seconds = [10.0 / (1.0 + 0.5 * i) for i in range(len(micro_batches))]
        add_trials(
            f"sqlite:///{outputs / name / 'study.db'}",
            name,
            "minimize",
            seconds,
            start=T0 + timedelta(days=k),
        )
        write_trial_captures(captures / name, micro_batches, seed=100 * k)
    invoke(record, ["--zenithtune-dir", str(outputs), "--source", str(captures)])  # the default store
    missing = tmp_path / "no-vtrain-here"
    out = invoke(train, ["--with-outcomes", "--data", str(missing)])
    assert "with 12 trials of 3 local studies" in out
    assert local_model_path().is_file() and local_model_path().parent.is_relative_to(tmp_path / "xdg")
    loaded = load_model_for_estimates()
    assert isinstance(loaded.model, LocalZeRegressor)
    card = loaded.metadata
    assert card["training_data"]["study_names"] == ["study-0", "study-1", "study-2"]
    assert card["training_data"]["rows"] == 12
    assert set(loaded.capture_shares()) == {"heuristic", "black-box", "exhaustive"}
    with OutcomeStore(tmp_path / "xdg" / "zest" / "outcomes.sqlite") as store:
        rows = local_rows(store.studies(), store.trials())
    shipped = load_default_model().model
    names = list(shipped.feature_names_in_)
    before = np.abs(shipped.predict(rows[names]) - rows["z_percent"]).mean()
    after = np.abs(loaded.model.predict(rows[names]) - rows["z_percent"]).mean()
    assert after < before  # the estimate moved toward the measured results
    table = evaluate_local(shipped, rows)  # zest evaluate's column for the local outcomes
    assert table["method"].tolist() == [
        "zest, shipped model",
        "zest + local correction (other studies)",
        "mean Z of the other studies",
    ]
    assert (table["rows"] == 12).all() and (table["studies"] == 3).all()
    # zest evaluate prints this section for the store
    section = local_outcomes_section(tmp_path / "xdg" / "zest" / "outcomes.sqlite")
    assert section.startswith("Local outcomes (zest record): 12 trials with telemetry in 3 studies")
    assert "| zest + local correction (other studies) |" in section
    low, mid, high = loaded.model.predict_interval(rows[names])
    assert (low <= mid).all() and (mid <= high).all() and not math.isnan(float(mid.sum()))
