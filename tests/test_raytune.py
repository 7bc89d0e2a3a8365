"""Reading a Ray Tune experiment folder as a tuning study, without Ray: a checked-in 2.x experiment."""

from __future__ import annotations

import pickle
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from collectors.errors import OutcomesError
from collectors.studies.raytune import read_ray_tune_experiment
from collectors.studies.store import OutcomeStore

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
    for pkl in copy.rglob("*.pkl"):
        pkl.write_bytes(b"not a pickle")
    assert len(read_ray_tune_experiment(copy, metric="tokens_per_s", mode="max").trials) == 5


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
