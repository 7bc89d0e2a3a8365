"""``estimate-z`` as a user runs it: a real process, its stdout, stderr and exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REFERENCE = [
    "--duration-hours", "150", "--trial-minutes", "25",
    "--algorithm", "heuristic=30:10", "--algorithm", "black-box=500:25", "--algorithm", "exhaustive=2000:35",
]  # fmt: skip


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    code = "from estimator.cli.main import estimate_z_main; estimate_z_main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_plain_calculator_reproduces_the_reference_example() -> None:
    result = run(*REFERENCE, "--output", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    by_name = {a["name"]: a for a in doc["algorithms"]}
    assert [f"{by_name[n]['r_break']:.3g}" for n in ("heuristic", "black-box", "exhaustive")] == [
        "0.833", "5.56", "15.9"]  # fmt: skip
    assert [by_name[n]["first_paying_reuse"] for n in ("heuristic", "black-box", "exhaustive")] == [1, 6, 16]
    assert f"{by_name['black-box']['exploration_gpu_hours']:.1f}" == "208.3"
    assert by_name["exhaustive"]["speedup_hours_per_run"] == pytest.approx(52.5)
    assert doc["inputs"] == {
        "duration_hours": 150.0, "gpus": 1, "reuse_count": 1.0, "trial_minutes": 25.0, "engineer_hours": 0.0,
        "gpu_hour_cost": None, "engineer_hour_cost": None,
    }  # fmt: skip
    assert doc["job_id"] is None and doc["z_expected_percent"] is None
    # At R = 1 only the heuristic pays (Z_break 8.33 % < 10 %).
    assert [a["verdict"] for a in doc["algorithms"]] == ["proceed", "does-not-pay", "does-not-pay"]
    assert doc["recommendation"] == "heuristic"
    assert any("R not given" in n for n in doc["notes"])


def test_z_expected_is_split_by_the_measured_shares() -> None:
    from estimator.model.regressor import load_default_model

    shares = load_default_model().capture_shares()
    result = run("--duration-hours", "150", "--z-expected", "35", "--reuse", "16", "--output", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["z_expected_percent"] == {"low": 35, "mid": 35, "high": 35}
    for a in doc["algorithms"]:
        assert a["z_expected_percent"]["mid"] == pytest.approx(35 * shares[a["name"]])
    assert shares["exhaustive"] == 1.0 and 0 < shares["heuristic"] < 1
    assert any("measured on the vTrain tuning studies" in n for n in doc["notes"])


def test_reference_shares_reproduce_example_3() -> None:
    """The fallback shares (no measured ones) are the reference example's 10/35, 25/35, 35/35."""
    from estimator.decision.algorithms import DEFAULT_CHOICES, REFERENCE_SHARES, candidates, capture_shares
    from estimator.decision.breakeven import Job, ZInterval, decide

    assert capture_shares(None) is REFERENCE_SHARES
    assert capture_shares({"heuristic": 0.5}) is REFERENCE_SHARES  # must cover every algorithm
    chosen = candidates(DEFAULT_CHOICES, ZInterval.point(35), REFERENCE_SHARES, 25 / 60)
    decision = decide(chosen, Job(150, reuse=16))
    assert [f"{a.r_break:.3g}" for a in decision.assessments] == ["0.833", "5.56", "15.9"]


def test_interval_gives_marginal_and_r_break_range() -> None:
    result = run(
        "--duration-hours",
        "150",
        "--z-expected",
        "7:10:14",
        "--reuse",
        "1",
        "--algorithm",
        "exhaustive=30",
        "--output",
        "json",
    )
    doc = json.loads(result.stdout)
    (a,) = doc["algorithms"]
    assert a["verdict"] == "marginal"  # Z_break 8.33 lies within 7-14
    assert a["r_break_range"]["low"] < a["r_break"] < a["r_break_range"]["high"]
    assert doc["recommendation"] is None


def test_costs_give_currency() -> None:
    result = run(
        *REFERENCE,
        "--gpus",
        "8",
        "--reuse",
        "20",
        "--engineer-hours",
        "40",
        "--gpu-hour-cost",
        "2.5",
        "--engineer-hour-cost",
        "100",
        "--output",
        "json",
    )
    assert result.returncode == 0, result.stderr
    heuristic = json.loads(result.stdout)["algorithms"][0]
    assert heuristic["net_saving_cost"] == pytest.approx(2.5 * 8 * (20 * 15 - 12.5) - 40 * 100)
    assert heuristic["r_impl"] == pytest.approx(4000 / (2.5 * 8 * 15), rel=1e-5)  # 6 significant digits


def test_table_output_is_readable() -> None:
    result = run(*REFERENCE, "--reuse", "16")
    assert result.returncode == 0, result.stderr
    for text in (
        "heuristic",
        "black-box",
        "exhaustive",
        "0.833",
        "5.56",
        "15.9",
        "208.3",
        "proceed",
        "recommendation: black-box",
        "net saving GPU-h",
        "GPU-hours saved over R = 16 runs",
    ):
        assert text in result.stdout
    assert "net saving (currency)" not in result.stdout  # no price given
    priced = run(*REFERENCE, "--reuse", "16", "--gpu-hour-cost", "2")
    assert "net saving (currency)" in priced.stdout and "783.3" in priced.stdout  # 2 x 391.7 GPU-h


def test_plot_writes_a_png(tmp_path: Path) -> None:
    target = tmp_path / "breakeven.png"
    result = run(*REFERENCE, "--reuse", "10", "--plot", str(target), "--output", "json")
    assert result.returncode == 0, result.stderr
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert any(str(target) in n for n in json.loads(result.stdout)["notes"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--duration-hours", "0", "--z-expected", "10"], "--duration-hours"),
        (["--duration-hours", "-5", "--z-expected", "10"], "--duration-hours"),
        (["--duration-hours", "abc", "--z-expected", "10"], "--duration-hours"),
        (["--z-expected", "10"], "--duration-hours"),
        (["--duration-hours", "10", "--gpus", "0", "--z-expected", "10"], "--gpus"),
        (["--duration-hours", "10", "--gpus", "1.5", "--z-expected", "10"], "--gpus"),
        (["--duration-hours", "10", "--reuse", "0.5", "--z-expected", "10"], "--reuse"),
        (["--duration-hours", "10", "--trial-minutes", "0", "--z-expected", "10"], "--trial-minutes"),
        (["--duration-hours", "10", "--z-expected", "100"], "[0, 100)"),
        (["--duration-hours", "10", "--z-expected", "-1"], "[0, 100)"),
        (["--duration-hours", "10", "--z-expected", "30:20:40"], "low <= mid <= high"),
        (["--duration-hours", "10", "--algorithm", "grid=30:10"], "unknown algorithm 'grid'"),
        (["--duration-hours", "10", "--algorithm", "heuristic"], "NAME=TRIALS"),
        (["--duration-hours", "10", "--algorithm", "heuristic=0:10"], "TRIALS"),
        (["--duration-hours", "10", "--algorithm", "heuristic=ten:10"], "TRIALS"),
        (["--duration-hours", "10", "--algorithm", "heuristic=30:x"], "Z_PERCENT"),
        (["--duration-hours", "10", "--algorithm", "heuristic=30:100"], "[0, 100)"),
        (
            ["--duration-hours", "10", "--algorithm", "heuristic=30:5", "--algorithm", "heuristic=40:6"],
            "once",
        ),
        (["--duration-hours", "10", "--z-expected", "5", "--engineer-hours", "8"], "--gpu-hour-cost"),
        (["--duration-hours", "10", "--z-expected", "5", "--gpu-hour-cost", "-2"], "--gpu-hour-cost"),
        (["--duration-hours", "10", "--z-expected", "5", "--output", "xml"], "--output"),
        (["--duration-hours", "10"], "--job-id"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    result = run(*args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("estimate-z: error: ") and needle in lines[0]


def test_zest_estimate_is_the_same_command() -> None:
    code = "from estimator.cli.main import main; main()"
    alias = subprocess.run(
        [sys.executable, "-c", code, "estimate", *REFERENCE, "--output", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert alias.returncode == 0, alias.stderr
    assert json.loads(alias.stdout) == json.loads(run(*REFERENCE, "--output", "json").stdout)


def test_help_lists_every_option() -> None:
    result = run("--help")
    assert result.returncode == 0
    for option in (
        "--job-id",
        "--source",
        "--duration-hours",
        "--gpus",
        "--reuse",
        "--trial-minutes",
        "--engineer-hours",
        "--gpu-hour-cost",
        "--engineer-hour-cost",
        "--algorithm",
        "--z-expected",
        "--output",
        "--plot",
    ):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("args", "key", "expected"),
    [
        # Example 1: N = 100 trials of 25 min on 8 GPUs cost 333.3 GPU-hours.
        (["--duration-hours", "720", "--gpus", "8", "--algorithm", "heuristic=100:10"],
         "exploration_gpu_hours", "333.3"),
        # Example 2: 720 h improved by 10 % saves 72 h a run, worth 172.8 trials of 25 min.
        (["--duration-hours", "720", "--algorithm", "heuristic=100:10"], "speedup_hours_per_run", "72.0"),
        # Example 4: 2160 h at 10 % against 100 h of exploration (240 trials of 25 min).
        (["--duration-hours", "2160", "--algorithm", "heuristic=240:10"], "r_break", "0.463"),
        # Example 5: 10 h at 10 %, heuristic of 30 trials: R_break 12.5.
        (["--duration-hours", "10", "--algorithm", "heuristic=30:10"], "r_break", "12.5"),
    ],
)  # fmt: skip
def test_worked_examples_through_the_command(args: list[str], key: str, expected: str) -> None:
    result = run(*args, "--output", "json")
    assert result.returncode == 0, result.stderr
    (a,) = json.loads(result.stdout)["algorithms"]
    decimals = len(expected.partition(".")[2])
    assert f"{a[key]:.{decimals}f}" == expected
    if key == "speedup_hours_per_run":
        assert f"{a[key] / a['trial_hours']:.1f}" == "172.8"


def test_example_5_pays_at_fifty_reuses_not_at_one() -> None:
    once = json.loads(
        run("--duration-hours", "10", "--algorithm", "heuristic=30:10", "--output", "json").stdout
    )
    fifty = run(
        "--duration-hours", "10", "--algorithm", "heuristic=30:10", "--reuse", "50", "--output", "json"
    )
    (a1,), (a50,) = once["algorithms"], json.loads(fifty.stdout)["algorithms"]
    assert a1["verdict"] == "does-not-pay" and a1["net_saving_gpu_hours"] < 0
    assert a50["verdict"] == "proceed" and a50["net_saving_gpu_hours"] == pytest.approx(50 - 12.5)


def test_an_estimated_z_e_says_what_it_is_relative_to() -> None:
    estimated = run("--job-id", "gpt-1.3b-a100-tp4", "--source", "example", "--duration-hours", "150")
    given = run("--duration-hours", "150", "--z-expected", "20", "--output", "json")
    assert estimated.returncode == 0 and given.returncode == 0, estimated.stderr + given.stderr
    header = estimated.stdout.splitlines()[1]
    assert header.startswith("Z_e relative to the best of the ~9 configurations a tuning study measures")
    as_json = run(
        "--job-id", "gpt-1.3b-a100-tp4", "--source", "example", "--duration-hours", "150", "--output", "json"
    )
    assert "lower bound" in json.loads(as_json.stdout)["z_expected_relative_to"]
    assert json.loads(given.stdout)["z_expected_relative_to"] is None  # the user's own Z_e: their definition


def test_missing_signals_are_named_in_the_notes() -> None:
    capture = Path(__file__).parent / "data" / "captures" / "a100x2_job4242_smi.csv"
    smi = run("--job-id", "4242", "--source", str(capture), "--duration-hours", "100", "--no-slurm",
              "--output", "json")  # fmt: skip
    full = run(
        "--job-id", "gpt-1.3b-a100-tp4", "--source", "example", "--duration-hours", "100", "--output", "json"
    )
    assert smi.returncode == 0 and full.returncode == 0, smi.stderr + full.stderr
    widened = [n for n in json.loads(smi.stdout)["notes"] if n.startswith("Z_e interval widened for missing")]
    assert len(widened) == 1 and "sm_active_ratio" in widened[0]
    assert not any("widened for missing" in n for n in json.loads(full.stdout)["notes"])


def test_a_job_outside_the_training_domain_is_named_as_such(tmp_path: Path) -> None:
    """1,024 H100s on 128 hosts at sequence 16,384; the model learned from 1-512 GPUs at 1,024-8,192."""
    spec = tmp_path / "big.json"
    spec.write_text(
        json.dumps(
            {
                "gpu": "h100-sxm",
                "num_gpus": 1024,
                "hidden_size": 8192,
                "attention_heads": 64,
                "num_layers": 80,
                "sequence_length": 16384,
                "global_batch": 1024,
                "micro_batch": 1,
                "tensor_parallel": 8,
                "pipeline_parallel": 8,
                "data_parallel": 16,
                "recompute": "full",
                "attention": "flash",
                "sharding": "zero1",
            }
        ),
        encoding="utf-8",
    )
    capture = tmp_path / "big.parquet"
    made = subprocess.run(
        [sys.executable, "-m", "estimator.cli", "simulate", "--spec", str(spec), "--job-id", "big",
         "--output", str(capture), "--minutes", "1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr

    def notes(*args: str) -> list[str]:
        done = run(*args, "--duration-hours", "100", "--no-slurm", "--output", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["notes"]

    big = notes("--job-id", "big", "--source", str(capture), "--spec", str(spec))
    (outside,) = [n for n in big if n.startswith("outside the model's training")]
    assert "1024 GPUs (trained on 1-512)" in outside and "128 hosts" in outside
    assert "sequence length 16,384 (trained on 1,024-8,192)" in outside
    (far,) = [n for n in big if n.startswith("distance from the training jobs")]
    near = notes("--job-id", "gpt-1.3b-a100-tp4", "--source", "example")
    assert not any(n.startswith("outside the model's training") for n in near)
    (close,) = [n for n in near if n.startswith("distance from the training jobs")]
    widening = [float(n.rsplit(" is ", 1)[1].split("x ")[0]) for n in (close, far)]
    assert widening[0] < widening[1]  # the farther job's interval is widened more
