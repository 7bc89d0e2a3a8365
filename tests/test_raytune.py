"""Reading a Ray Tune experiment folder as a tuning study, without Ray: a checked-in 2.x experiment."""

from __future__ import annotations

import json
import pickle
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from collectors.errors import OutcomesError
from collectors.studies.raytune import read_ray_tune_experiment
from collectors.studies.store import OutcomeStore
from estimator.cli.main import cli, main

STORAGE = Path(__file__).parent / "data" / "raytune"  # Ray's storage_path: one experiment below it
EXPERIMENT = STORAGE / "gpt-microbatch"  # written by make_experiment.py beside it
T0 = datetime(2026, 11, 24, 8, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of the experiment to break."""
    return Path(shutil.copytree(EXPERIMENT, tmp_path / EXPERIMENT.name))


def trial_folder(experiment: Path, index: int) -> Path:
    return next(experiment.glob(f"train_gpt_3f2a9_{index:05d}_*"))


def test_last_values_states_and_windows_of_each_trial() -> None:
    study = read_ray_tune_experiment(EXPERIMENT, metric="tokens_per_s", mode="max")
    assert (study.name, study.direction, study.objective, study.running) == (
        "gpt-microbatch",
        "maximize",
        "throughput",
        0,
    )
    assert study.storage == str(EXPERIMENT.resolve())
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    # 2 raised (error.txt), 3 stopped after 2 of the 4 iterations the others ran
    assert [t.state for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL", "PRUNED", "COMPLETE"]
    assert [t.value for t in study.trials] == [9600.0, 12300.0, None, None, 13000.0]
    # start: first timestamp (whole s) less its time_this_iter_s; end: last timestamp
    assert [t.started_at for t in study.trials] == [at(1.75), at(2.5), at(83.25), at(122.5), at(124.75)]
    assert [t.completed_at for t in study.trials] == [at(122), at(83), at(124), at(173), at(213)]
    assert [t.duration_seconds for t in study.trials] == [120.25, 80.5, 40.75, 50.5, 88.25]
    assert study.started_at == at(1.75)
    best = max((t for t in study.trials if t.value is not None), key=lambda t: t.value or 0.0)
    assert best.number == 4
    # nested configuration keys are joined by "/", as in Ray's data frames
    params = {"micro_batch": 1, "model": "gpt-1.3b", "optim/lr": 0.0003, "zero_stage": 1}
    assert study.trials[0].params == params
    assert all(t.job_id is None for t in study.trials)


def test_best_value_and_min_mode_and_objective() -> None:
    best = read_ray_tune_experiment(EXPERIMENT, metric="tokens_per_s", mode="max", value="best")
    assert [t.value for t in best.trials] == [9600.0, 13200.0, None, None, 13000.0]  # 1 peaked at 13200
    step = read_ray_tune_experiment(EXPERIMENT, metric="step_time_s", objective="time")
    assert (step.direction, step.objective) == ("minimize", "time")
    assert [t.value for t in step.trials] == [6.83, 5.33, None, None, 5.04]
    lowest = read_ray_tune_experiment(EXPERIMENT, metric="step_time_s", mode="min", value="best")
    assert [t.value for t in lowest.trials] == [6.83, 4.96, None, None, 5.04]


def test_full_iterations_decides_what_was_pruned() -> None:
    kept = read_ray_tune_experiment(EXPERIMENT, metric="tokens_per_s", mode="max", full_iterations=1)
    assert [t.state for t in kept.trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert kept.trials[3].value == 8100.0
    longer = read_ray_tune_experiment(EXPERIMENT, metric="tokens_per_s", mode="max", full_iterations=5)
    assert [t.state for t in longer.trials] == ["PRUNED", "PRUNED", "FAIL", "PRUNED", "PRUNED"]


def test_the_state_file_names_the_experiment_too() -> None:
    state = next(EXPERIMENT.glob("experiment_state-*.json"))
    assert read_ray_tune_experiment(state, metric="tokens_per_s", mode="max").name == "gpt-microbatch"


def test_progress_csv_stands_in_for_a_missing_result_json(copy: Path) -> None:
    for result in copy.glob("*/result.json"):
        result.unlink()
    study = read_ray_tune_experiment(copy, metric="tokens_per_s", mode="max")
    assert [t.value for t in study.trials] == [9600.0, 12300.0, None, None, 13000.0]
    assert [t.duration_seconds for t in study.trials] == [120.25, 80.5, 40.75, 50.5, 88.25]


def test_no_pickle_is_opened(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    # Where Ray writes pickles, stand-ins that no unpickler could read.
    stand_ins = [copy / "tuner.pkl", *(folder / "params.pkl" for folder in copy.glob("train_gpt_*"))]
    for pkl in stand_ins:
        pkl.write_bytes(b"not a pickle")
    assert len(read_ray_tune_experiment(copy, metric="tokens_per_s", mode="max").trials) == 5


def test_an_error_pickle_alone_fails_the_trial(copy: Path) -> None:
    # Ray writes error.pkl beside error.txt; either one marks the trial failed.
    failed = trial_folder(copy, 2)
    (failed / "error.txt").unlink()
    (failed / "error.pkl").write_bytes(b"not a pickle")  # a stand-in: never opened
    study = read_ray_tune_experiment(copy, metric="tokens_per_s", mode="max")
    assert [t.state for t in study.trials][2] == "FAIL"
    (failed / "error.pkl").unlink()
    without = read_ray_tune_experiment(copy, metric="tokens_per_s", mode="max")
    assert without.trials[2].state != "FAIL"


def test_a_trial_without_results_failed_and_has_no_window(copy: Path) -> None:
    # failed before its first report: Ray leaves params and an empty result.json
    (trial_folder(copy, 1) / "result.json").write_text("")
    (trial_folder(copy, 1) / "progress.csv").unlink()
    study = read_ray_tune_experiment(copy, metric="tokens_per_s", mode="max")
    failed = study.trials[1]
    assert (failed.state, failed.value, failed.started_at) == ("FAIL", None, None)
    assert failed.params["micro_batch"] == 4


def test_a_final_nan_fails_the_last_value_but_not_the_best(copy: Path) -> None:
    result = trial_folder(copy, 4) / "result.json"
    lines = result.read_text().splitlines()
    # Ray's JSON encoder writes a NumPy NaN as the string "null"
    lines[-1] = lines[-1].replace('"tokens_per_s": 13000.0', '"tokens_per_s": "null"')
    result.write_text("\n".join(lines) + "\n")
    last = read_ray_tune_experiment(copy, metric="tokens_per_s", mode="max")
    assert (last.trials[4].state, last.trials[4].value) == ("FAIL", None)
    best = read_ray_tune_experiment(copy, metric="tokens_per_s", mode="max", value="best")
    assert (best.trials[4].state, best.trials[4].value) == ("COMPLETE", 12900.0)


def test_two_runs_in_one_folder_are_numbered_in_order_of_start(copy: Path) -> None:
    # the same experiment name run again: a new trial id prefix, indexes from 0 again
    again = copy / trial_folder(copy, 0).name.replace("3f2a9", "9c0d1").replace("09-00-02", "09-20-02")
    shutil.copytree(trial_folder(copy, 0), again)
    text = (again / "result.json").read_text().replace("3f2a9_00000", "9c0d1_00000")
    for stamp in ("1795507232", "1795507262", "1795507292", "1795507322"):
        text = text.replace(stamp, str(int(stamp) + 1200))
    (again / "result.json").write_text(text)
    study = read_ray_tune_experiment(copy, metric="tokens_per_s", mode="max")
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4, 5]
    assert [t.started_at for t in study.trials] == [
        at(1.75),
        at(2.5),
        at(83.25),
        at(122.5),
        at(124.75),
        at(1201.75),
    ]


def test_a_study_records_in_the_outcomes_store(tmp_path: Path) -> None:
    study = read_ray_tune_experiment(EXPERIMENT, metric="tokens_per_s", mode="max")
    with OutcomeStore(tmp_path / "o.sqlite") as store:
        assert store.record(study).added_trials == 5
        assert not store.record(study).changed  # the same experiment twice adds nothing


# --- through the CLI: zest record, zest history, zest advise ---------------------------------------

RAY = ["--ray-dir", str(EXPERIMENT), "--metric", "tokens_per_s", "--mode", "max"]


def zest(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_record_history_and_advise_read_the_experiment(tmp_path: Path) -> None:
    store = tmp_path / "o.sqlite"
    out = zest(["record", *RAY, "--gpus", "8", "--duration-hours", "2", "--store", str(store)])
    assert (
        "recorded gpt-microbatch (throughput, 5 finished trial(s), 0 with telemetry): 5 new trial(s)" in out
    )
    with sqlite3.connect(store) as db:
        study = db.execute("SELECT name, storage, direction, objective, duration_hours, gpus FROM studies")
        assert study.fetchall() == [
            ("gpt-microbatch", str(EXPERIMENT.resolve()), "maximize", "throughput", 2.0, 8)
        ]
        trials = db.execute(
            "SELECT number, state, value, started_at, completed_at FROM trials ORDER BY number"
        )
        assert trials.fetchall() == [
            (0, "COMPLETE", 9600.0, at(1.75).isoformat(), at(122).isoformat()),
            (1, "COMPLETE", 12300.0, at(2.5).isoformat(), at(83).isoformat()),
            (2, "FAIL", None, at(83.25).isoformat(), at(124).isoformat()),
            (3, "PRUNED", None, at(122.5).isoformat(), at(173).isoformat()),
            (4, "COMPLETE", 13000.0, at(124.75).isoformat(), at(213).isoformat()),
        ]
    db.close()
    assert "already recorded, nothing changed" in zest(["record", *RAY, "--store", str(store)])
    (ledger,) = json.loads(zest(["history", "--store", str(store), "--output", "json"]))["studies"]
    # 120.25 + 80.5 + 40.75 + 50.5 + 88.25 = 380.25 trial-seconds on G = 8; one run: G · T = 16 GPU-h
    assert ledger["trial_hours_spent"] == pytest.approx(380.25 / 3600, rel=1e-5)
    assert ledger["gpu_hours_spent"] == pytest.approx(8 * 380.25 / 3600, rel=1e-5)
    assert (ledger["failed_share"], ledger["pruned_share"]) == (0.2, 0.2)
    assert ledger["cost_vs_one_run"] == pytest.approx(8 * 380.25 / 3600 / 16, rel=1e-5)
    assert ledger["z_percent"] == pytest.approx(100 * (1 - 9600 / 13000), rel=1e-5)
    table = zest(["history", "--store", str(store)])
    assert "gpt-microbatch  8  0.84 GPU-h  20 %    20 %    0.0528 x" in table
    advice = json.loads(
        zest(["advise", *RAY, "--duration-hours", "500", "--reuse", "20", "--store", str(store),
              "--output", "json"])
    )  # fmt: skip
    assert (advice["study"], advice["objective"]) == ("gpt-microbatch", "throughput")
    assert advice["default"] == {"trial": 0, "value": 9600} and advice["best"] == {"trial": 4, "value": 13000}
    assert advice["trials"] == {"finished": 5, "complete": 3, "failed_or_pruned": 2, "running": 0}
    assert advice["inputs"]["trial_hours"] == pytest.approx(380.25 / 5 / 3600, rel=1e-5)
    assert advice["decision"] == "continue"
    assert advice["model"]["cluster_studies"] == 0  # the recorded experiment is this one: left out
    assert "decision: continue" in zest(["advise", *RAY, "--duration-hours", "500", "--reuse", "20",
                                         "--store", str(store)])  # fmt: skip


def test_value_scope_and_full_iterations_reach_the_store_from_the_command_line(tmp_path: Path) -> None:
    store = tmp_path / "o.sqlite"
    zest(["record", *RAY, "--ray-value", "best", "--full-iterations", "1", "--store", str(store)])
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT number, state, value FROM trials ORDER BY number").fetchall()
    db.close()
    # best by mode: trial 1 peaked at 13200; full iterations 1: trial 3, cut short, is COMPLETE
    assert rows == [(0, "COMPLETE", 9600.0), (1, "COMPLETE", 13200.0), (2, "FAIL", None),
                    (3, "COMPLETE", 8100.0), (4, "COMPLETE", 13000.0)]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--ray-dir", str(EXPERIMENT), "--mode", "max"], "--ray-dir needs --metric NAME"),
        (["--ray-dir", str(EXPERIMENT), "--metric", "tokens_per_s"], "--ray-dir needs --mode max|min"),
        ([*RAY, "--storage", "sqlite:///x.db", "--study", "x"], "not --storage and --ray-dir"),
        ([*RAY, "--zenithtune-dir", "."], "not --zenithtune-dir and --ray-dir"),
        ([*RAY, "--study", "x"], "--study goes with --storage"),
        (["--storage", "sqlite:///x.db", "--study", "x", "--metric", "m"], "--metric goes with --ray-dir"),
        (["--zenithtune-dir", ".", "--mode", "max"], "--mode goes with --ray-dir"),
        (["--zenithtune-dir", ".", "--ray-value", "best"], "--ray-value goes with --ray-dir"),
        (["--zenithtune-dir", ".", "--full-iterations", "1"], "--full-iterations goes with --ray-dir"),
        ([*RAY, "--full-iterations", "0"], "0 is not in the range x>=1"),
        ([*RAY, "--mode", "maximize"], "'maximize' is not one of 'max', 'min'"),
    ],
)
@pytest.mark.parametrize("command", ["record", "advise"])
def test_conflicting_or_missing_options_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, args: list[str], says: str
) -> None:
    more = ["--duration-hours", "5"] if command == "advise" else []
    store = tmp_path / "o.sqlite"
    with pytest.raises(SystemExit) as exited:
        main([command, *args, *more, "--store", str(store)])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert says in err and err.count("\n") == 1 and err.startswith("zest: error:")
    assert not store.exists()


def test_a_metric_no_trial_reported_exits_15(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["record", "--ray-dir", str(EXPERIMENT), "--metric", "mfu", "--mode", "max",
              "--store", str(tmp_path / "o.sqlite")])  # fmt: skip
    assert exited.value.code == 15
    assert "no trial reported metric 'mfu'" in capsys.readouterr().err


# --- malformed input ---------------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(OutcomesError, match=rf"^{missing}: no such folder: give a Ray Tune experiment"):
        read_ray_tune_experiment(missing, metric="tokens_per_s", mode="max")


def test_the_storage_path_above_the_experiment_holds_no_trial() -> None:
    with pytest.raises(OutcomesError, match=r"no trial folder .*not the storage path above it"):
        read_ray_tune_experiment(STORAGE, metric="tokens_per_s", mode="max")


def test_a_result_line_that_is_not_json(copy: Path) -> None:
    result = trial_folder(copy, 4) / "result.json"
    with result.open("a") as out:
        out.write('{"tokens_per_s": 13100.0, "timest\n')  # killed while writing
    message = r"result.json: line 5 is not JSON \(.*\): remove the line"
    with pytest.raises(OutcomesError, match=message) as info:
        read_ray_tune_experiment(copy, metric="tokens_per_s", mode="max")
    assert "\n" not in str(info.value) and str(info.value).startswith(str(result))


def test_params_that_are_not_json(copy: Path) -> None:
    (trial_folder(copy, 0) / "params.json").write_text("{micro_batch: 1")
    with pytest.raises(OutcomesError, match=r"params.json: not JSON"):
        read_ray_tune_experiment(copy, metric="tokens_per_s", mode="max")


def test_a_metric_no_trial_reported() -> None:
    with pytest.raises(OutcomesError, match=r"no trial reported metric 'mfu': give one of .*step_time_s"):
        read_ray_tune_experiment(EXPERIMENT, metric="mfu", mode="max")


def test_a_metric_that_is_no_number() -> None:
    with pytest.raises(OutcomesError, match=r"reports hostname='gpu-node-07', not a number"):
        read_ray_tune_experiment(EXPERIMENT, metric="hostname", mode="max")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "mode must be max or min"),
        ({"mode": "maximize"}, "mode must be max or min"),
        ({"mode": "max", "value": "mean"}, "value must be one of last, best"),
        ({"mode": "max", "objective": "speed"}, "objective must be one of"),
        ({"mode": "max", "full_iterations": 0}, "full_iterations must be 1 or more"),
    ],
)
def test_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(OutcomesError, match=message):
        read_ray_tune_experiment(EXPERIMENT, metric="tokens_per_s", **options)  # type: ignore[arg-type]
