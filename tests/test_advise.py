"""``zest advise`` and the ZestStopper callback on real Optuna studies in SQLite."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import optuna
import pytest
from click.testing import CliRunner

from collectors.errors import InputError
from collectors.studies.optuna import read_optuna_study
from collectors.studies.store import OutcomeStore
from estimator.cli.main import cli, main
from estimator.decision.next_trials import HORIZON_TRIALS
from estimator.tuning_callback import ZestStopper

optuna.logging.set_verbosity(optuna.logging.WARNING)
T0 = datetime(2026, 3, 2, 9, 0, 0)  # naive local time, as Optuna stores it
# samples/s of a search that keeps finding better configurations, and of one that found nothing
RISING = [100.0, 104.0, 103.0, 110.0, 109.0, 115.0, 112.0, 118.0, 117.0, 121.0, 120.0, 124.0]
FLAT = [100.0, 97.0, 99.0, 95.0, 98.0, 96.0, 99.5, 94.0]


def add_study(
    storage: str,
    name: str,
    values: Sequence[float | None],
    *,
    direction: Literal["minimize", "maximize"] = "maximize",
    minutes: float = 30.0,
) -> None:
    """A study whose trial i ran ``minutes`` from ``T0 + i · minutes``; None: a failed trial."""
    study = optuna.create_study(study_name=name, storage=storage, direction=direction)
    dist: dict[str, optuna.distributions.BaseDistribution] = {
        "micro_batch": optuna.distributions.IntDistribution(1, 64)
    }
    for i, value in enumerate(values):
        state = optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.FAIL
        trial = optuna.trial.create_trial(
            state=state, value=value, params={"micro_batch": i + 1}, distributions=dist
        )
        trial.datetime_start = T0 + timedelta(minutes=i * minutes)
        trial.datetime_complete = T0 + timedelta(minutes=(i + 1) * minutes)
        study.add_trial(trial)


@pytest.fixture
def storage(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    add_study(url, "rising", RISING)
    add_study(url, "flat", FLAT)
    add_study(url, "cheap", [100.0, 112.0, 118.0, 125.0], minutes=25.0)
    return url


def advise(args: list[str], tmp_path: Path, *, code: int = 0) -> str:
    store = ["--store", str(tmp_path / "no-store.sqlite")] if "--store" not in args else []
    result = CliRunner().invoke(cli, ["advise", *args, *store])
    assert result.exit_code == code, result.output
    return result.output


def advise_json(args: list[str], tmp_path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(advise([*args, "--output", "json"], tmp_path))
    return document


def test_a_rising_curve_on_a_long_reused_job_continues(storage: str, tmp_path: Path) -> None:
    args = [
        "--storage",
        storage,
        "--study",
        "rising",
        "--duration-hours",
        "500",
        "--reuse",
        "20",
        "--gpus",
        "8",
    ]
    document = advise_json(args, tmp_path)
    assert document["decision"] == "continue"
    assert document["trials_that_pay"] >= document["best_trials"] >= 10
    assert document["default"] == {"trial": 0, "value": 100}
    assert document["best"] == {"trial": 11, "value": 124}
    assert document["z_found_percent"] == pytest.approx(100 * (1 - 100 / 124), abs=1e-3)
    assert document["inputs"]["trial_hours"] == 0.5
    assert document["exploration_gpu_hours"] == pytest.approx(8 * 10 * 0.5)  # G · K · t
    assert document["model"]["from"] == "study" and document["model"]["record_improvements"] == 6
    z = document["expected_gain_percent_interval"]
    assert z["low"] <= document["expected_gain_percent"] == z["mid"] <= z["high"]
    table = advise(args, tmp_path)
    assert "decision: continue: up to" in table and "Z so far 19.4 %" in table


LONG_REUSED = ["--duration-hours", "2160", "--reuse", "200", "--gpus", "8"]  # 90 days, run 200 times


def test_a_long_reused_job_never_presents_the_horizon_as_a_count(storage: str, tmp_path: Path) -> None:
    args = ["--storage", storage, "--study", "rising", *LONG_REUSED]
    table = advise(args, tmp_path)
    decision = next(line for line in table.splitlines() if line.startswith("decision: continue"))
    assert "up to" not in decision  # the horizon is no count
    assert f"more than {HORIZON_TRIALS:,} more trial(s) pay" in decision and "not a count" in decision
    assert "--z-max" in table  # says how to bound it
    document = advise_json(args, tmp_path)
    assert document["decision"] == "continue"
    assert document["trials_that_pay"] is None  # not the horizon dressed as a count
    assert document["horizon"]["trials"] == HORIZON_TRIALS
    assert document["horizon"]["trials_that_pay_beyond"] is True
    assert f"more than {HORIZON_TRIALS:,} more pay" in document["reason"]
    # what it rests on: no ceiling, so the record model's gain keeps growing and every trial weighed pays
    assert document["model"]["z_ceiling_percent"] == 100
    assert document["model"]["z_ceiling_from"].startswith("none")
    # --help says what the answer means at the horizon
    helped = " ".join(CliRunner().invoke(cli, ["advise", "--help"]).output.split())
    assert f'"more than {HORIZON_TRIALS:,}", the horizon, not a count' in helped and "--z-max" in helped


def test_z_max_bounds_the_gain_of_a_long_reused_job(storage: str, tmp_path: Path) -> None:
    args = ["--storage", storage, "--study", "rising", *LONG_REUSED, "--z-max", "25"]
    document = advise_json(args, tmp_path)
    headroom = 25 - document["z_found_percent"]  # 25 − 19.4 % of T left to find
    assert document["model"]["z_ceiling_percent"] == 25
    assert document["model"]["z_ceiling_from"] == "given: --z-max"
    assert document["expected_gain_percent_interval"]["high"] <= headroom + 1e-6
    assert document["horizon"]["trials_that_pay_beyond"] is False
    # at the ceiling each further trial only costs t: R·T·(Z_max − Z)/(100·t) trials at most pay
    bound = 200 * 2160 * headroom / (100 * document["inputs"]["trial_hours"])
    assert document["decision"] == "continue"
    assert 1 <= document["best_trials"] < document["trials_that_pay"] <= bound < HORIZON_TRIALS
    table = advise(args, tmp_path)
    assert "Z at most 25 % (given: --z-max)" in table
    assert f"decision: continue: up to {document['trials_that_pay']:,} more" in table
    reached = advise_json([*args[:-1], "19"], tmp_path)  # Z so far is 19.4 %: nothing left to find
    assert reached["decision"] == "stop" and "already reaches Z_max" in reached["reason"]


def test_the_cluster_curves_bound_the_gain(storage: str, tmp_path: Path) -> None:
    store = tmp_path / "outcomes.sqlite"
    with OutcomeStore(store) as recorded:
        recorded.record(read_optuna_study(storage, "cheap"), duration_hours=150)  # found 100 → 125: Z 20 %
    args = ["--storage", storage, "--study", "rising", *LONG_REUSED, "--store", str(store)]
    document = advise_json(args, tmp_path)
    assert document["model"]["z_ceiling_percent"] == pytest.approx(100 * (1 - 100 / 125))
    assert "cluster's 1 recorded studies" in document["model"]["z_ceiling_from"]
    assert document["trials_that_pay"] is not None and document["trials_that_pay"] < HORIZON_TRIALS
    assert "Z at most 20 % (the highest Z found by the cluster" in advise(args, tmp_path)
    # a study already past every recorded one is not bounded by them
    low = tmp_path / "low.sqlite"
    with OutcomeStore(low) as recorded:
        recorded.record(read_optuna_study(storage, "flat"), duration_hours=150)  # its default was its best
    assert advise_json([*args[:-1], str(low)], tmp_path)["model"]["z_ceiling_percent"] == 100


def test_a_short_job_reused_once_stops(storage: str, tmp_path: Path) -> None:
    args = ["--storage", storage, "--study", "rising", "--duration-hours", "2", "--reuse", "1"]
    document = advise_json(args, tmp_path)
    assert document["decision"] == "stop"
    assert document["trials_that_pay"] == 0
    assert document["verdict"] == "does-not-pay"
    assert "decision: stop" in advise(args, tmp_path)


def test_json_keys(storage: str, tmp_path: Path) -> None:
    document = advise_json(["--storage", storage, "--study", "flat", "--duration-hours", "150"], tmp_path)
    assert {"decision", "expected_gain_percent", "trials_that_pay"} <= set(document)
    assert {
        "schema_version", "study", "objective", "inputs", "trials", "default", "best", "z_found_percent",
        "model", "expected_gain_percent_interval", "exploration_gpu_hours", "z_break_percent",
        "net_saving_gpu_hours", "verdict", "best_trials", "reason", "on_top", "notes",
    } <= set(document)  # fmt: skip
    assert document["decision"] in ("continue", "stop")
    assert isinstance(document["expected_gain_percent"], int | float)
    assert isinstance(document["trials_that_pay"], int)
    # the default was the best: no new best yet, so the spread of the values sizes one
    assert document["z_found_percent"] == 0 and document["model"]["from"] == "spread"
    assert document["expected_gain_percent"] > 0


def test_a_named_default_trial_and_a_time_objective(storage: str, tmp_path: Path) -> None:
    args = ["--storage", storage, "--study", "flat", "--duration-hours", "150", "--default-trial", "7"]
    document = advise_json(args, tmp_path)
    assert document["default"] == {"trial": 7, "value": 94}
    assert document["z_found_percent"] == pytest.approx(100 * (1 - 94 / 100))  # best 100 against 94
    timed = advise_json(
        ["--storage", storage, "--study", "flat", "--duration-hours", "150", "--objective", "time"], tmp_path
    )
    assert timed["best"] == {"trial": 7, "value": 94}  # lower is better now
    assert timed["model"]["record_improvements"] == 3  # 97, 95, 94 each beat the best before


def test_trial_minutes_replaces_the_measured_trial_time(storage: str, tmp_path: Path) -> None:
    args = ["--storage", storage, "--study", "rising", "--duration-hours", "50", "--trial-minutes", "1.5h"]
    document = advise_json(args, tmp_path)
    assert document["inputs"]["trial_hours"] == 1.5
    assert document["exploration_gpu_hours"] == pytest.approx(10 * 1.5)


def test_a_black_box_search_on_top_of_a_cheap_study(storage: str, tmp_path: Path) -> None:
    base = ["--storage", storage, "--study", "cheap", "--then", "black-box"]
    long = advise_json([*base, "--duration-hours", "2160", "--reuse", "20", "--gpus", "8"], tmp_path)
    top = long["on_top"]
    assert top["algorithm"] == "black-box" and top["trials"] == 500 and top["after"] == "heuristic"
    assert top["trial_hours"] == pytest.approx(25 / 60)
    further = long["z_found_percent"] * (top["share_ratio"] - 1)
    assert top["expected_gain_percent"] == pytest.approx(further, rel=1e-4)  # JSON holds 6 digits
    assert top["exploration_gpu_hours"] == pytest.approx(8 * 500 * 25 / 60, rel=1e-5)
    assert top["verdict"] == "proceed"
    short = advise_json([*base, "--duration-hours", "10"], tmp_path)
    assert short["on_top"]["verdict"] == "does-not-pay"
    assert "black-box on top of this heuristic study" in advise([*base, "--duration-hours", "10"], tmp_path)
    two = advise_json([*base, "--duration-hours", "10", "--then", "exhaustive=50"], tmp_path)["on_top"]
    assert (two["algorithm"], two["trials"]) == ("exhaustive", 50)


def test_the_cluster_curves_from_the_store(storage: str, tmp_path: Path) -> None:
    store = tmp_path / "outcomes.sqlite"
    with OutcomeStore(store) as recorded:
        recorded.record(read_optuna_study(storage, "rising"), duration_hours=150)
    url = f"sqlite:///{tmp_path / 'new.db'}"
    add_study(url, "new", [100.0, 90.0, 95.0, 101.0])  # one new best of its own
    args = ["--storage", url, "--study", "new", "--duration-hours", "150", "--store", str(store)]
    document = advise_json(args, tmp_path)
    assert document["model"]["cluster_studies"] == 1
    assert document["model"]["from"] == "study and cluster"
    assert document["model"]["record_improvements"] == 1 + 6
    # the recorded study itself is left out of its own cluster curves
    again = advise_json(["--storage", storage, "--study", "rising", "--duration-hours", "150",
                         "--store", str(store)], tmp_path)  # fmt: skip
    assert again["model"]["cluster_studies"] == 0


def failing(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], code: int) -> str:
    """Run ``zest advise`` through the entry point (errors become exit codes) and return stderr."""
    with pytest.raises(SystemExit) as exited:
        main(["advise", *args, "--store", str(tmp_path / "no-store.sqlite")])
    assert exited.value.code == code
    return capsys.readouterr().err


def test_zenithtune_dir(tmp_path: Path) -> None:
    zt = tmp_path / "outputs" / "mb"
    zt.mkdir(parents=True)
    add_study(f"sqlite:///{zt / 'study.db'}", "mb", RISING[:6])
    args = ["--zenithtune-dir", str(tmp_path / "outputs"), "--duration-hours", "500"]
    assert advise_json(args, tmp_path)["study"] == "mb"


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--study", "flat"], 2, "--duration-hours"),  # T is required
        (["--duration-hours", "5"], 2, "--study NAME"),
        (["--study", "flat", "--duration-hours", "5", "--default-trial", "99"], 2, "trial 99"),
        (["--study", "flat", "--duration-hours", "5", "--then", "x"], 2, "unknown algorithm 'x'"),
        (["--study", "flat", "--duration-hours", "0"], 2, "out of range"),
        (["--study", "flat", "--duration-hours", "5", "--z-max", "120"], 2, "--z-max"),
        (["--study", "nope", "--duration-hours", "5"], 15, "no study 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_its_exit_code(
    storage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, says: str
) -> None:
    err = failing(["--storage", storage, *args], tmp_path, capsys, code)
    assert says in err and err.count("\n") == 1 and err.startswith("zest: error:")


# --- the callback in a real study.optimize loop -------------------------------------------------------


def run_study(objective: Any, stopper: ZestStopper, n_trials: int = 40) -> optuna.Study:
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(objective, n_trials=n_trials, callbacks=[stopper])
    return study


def test_the_callback_stops_a_flat_search_for_a_short_job() -> None:
    def flat(trial: optuna.Trial) -> float:
        trial.suggest_int("micro_batch", 1, 64)
        return 1.0  # seconds per step: no configuration is faster

    stopper = ZestStopper(duration_hours=2, reuse=1, gpus=8, trial_hours=0.25)
    study = run_study(flat, stopper)
    assert len(study.trials) == 3 < 40  # stops as soon as it judges: MIN_COMPLETE_TRIALS
    assert stopper.stopped_after_ == 3
    assert stopper.advice_ is not None and stopper.advice_.decision == "stop"


def test_the_callback_lets_a_rising_search_run_for_a_long_job() -> None:
    def rising(trial: optuna.Trial) -> float:
        trial.suggest_int("micro_batch", 1, 64)
        return 10.0 / (1 + trial.number)  # every trial faster than the last

    stopper = ZestStopper(duration_hours=500, reuse=20, gpus=8, trial_hours=0.25)
    study = run_study(rising, stopper, n_trials=25)
    assert len(study.trials) == 25 and stopper.stopped_after_ is None
    assert stopper.advice_ is not None and stopper.advice_.decision == "continue"


def test_the_callback_stops_a_search_whose_gains_fade_for_a_short_job() -> None:
    def fading(trial: optuna.Trial) -> float:
        trial.suggest_int("micro_batch", 1, 64)
        return 1.0 + 0.5**trial.number  # each new best is closer to 1 s: smaller and smaller gains

    stopper = ZestStopper(duration_hours=20, reuse=2, trial_hours=0.25)
    study = run_study(fading, stopper)
    assert 3 < len(study.trials) < 40
    assert stopper.advice_ is not None and stopper.advice_.decision == "stop"


def test_the_callback_refuses_bad_parameters() -> None:
    with pytest.raises(InputError):
        ZestStopper(duration_hours=0)
    with pytest.raises(InputError):
        ZestStopper(duration_hours=10, objective="loss")
    with pytest.raises(InputError):
        ZestStopper(duration_hours=10, trial_hours=0)


# --- the study sources shared with zest record ------------------------------------------------------


def test_a_ray_tune_experiment_is_a_source_too(tmp_path: Path) -> None:
    experiment = Path(__file__).parent / "data" / "raytune" / "gpt-microbatch"
    args = [
        "--ray-dir",
        str(experiment),
        "--metric",
        "step_time_s",
        "--mode",
        "min",
        "--duration-hours",
        "5m",
    ]
    document = advise_json(args, tmp_path)
    assert (document["study"], document["objective"], document["direction"]) == (
        "gpt-microbatch",
        "time",
        "minimize",
    )
    assert document["default"] == {"trial": 0, "value": 6.83} and document["best"] == {
        "trial": 4,
        "value": 5.04,
    }
    # trials of 1.27 min each (380.25 s over 5) for a 5-minute job run once
    assert document["inputs"]["trial_hours"] == pytest.approx(380.25 / 5 / 3600, rel=1e-5)
    assert document["decision"] == "stop"


def test_record_and_advise_share_one_definition_of_the_study_options() -> None:
    from estimator.cli.advise import advise as advise_command
    from estimator.cli.outcomes import record

    names = ["--storage", "--study", "--zenithtune-dir", "--ray-dir", "--metric", "--mode", "--objective"]

    def options(command: Any) -> list[tuple[str, str | None]]:
        found = {p.opts[0]: p for p in command.params if p.opts[0] in names}
        return [(name, found[name].help) for name in names]

    assert options(advise_command) == options(record)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--duration-hours", "0"),
        ("--gpus", "eight"),
        ("--gpus", "0"),
        ("--reuse", "0.5"),
        ("--trial-minutes", "soon"),
    ],
)
def test_estimate_z_and_advise_check_the_job_options_alike(
    storage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    """T, G, R and t: one definition, so the same bad value gets the same answer from both commands."""
    job = ["--duration-hours", "5", option, value]
    err = failing(["--storage", storage, "--study", "flat", *job], tmp_path, capsys, 2)
    with pytest.raises(SystemExit) as exited:
        main(["estimate", "--z-expected", "10", *job])
    assert exited.value.code == 2
    assert err.startswith(f"zest: error: Invalid value for '{option}'")
    assert capsys.readouterr().err == err


ADVISE_HELP = """
import json, sys
from estimator.cli.main import main
try:
    main(["advise", "--help"])
except SystemExit as exc:
    assert not exc.code, exc.code
loaded = ("sklearn", "scipy", "estimator.model", "estimator.perfmodel", "estimator.pipeline",
          "estimator.training")
print(json.dumps(sorted(m for m in sys.modules if m.startswith(loaded))))
"""


def test_advise_starts_without_the_model() -> None:
    """``zest advise`` loads no model, performance model nor scikit-learn before it needs one: with them
    its start took seconds."""
    result = subprocess.run(
        [sys.executable, "-c", ADVISE_HELP],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []
