"""What a newcomer meets in the first hour: help and version on every command, durations with units,
README synopses that match ``--help``, exact JSON numbers, the words for a marginal decision, and a
read-only command that creates no file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest

from estimator.cli.main import cli, estimate_z_main, main
from estimator.cli.options import DurationType
from estimator.decision.breakeven import Candidate, Job, ZInterval, decide, recommendation_text
from estimator.reports.table import json_ready

README = Path(__file__).resolve().parents[1] / "README.md"
ENTRY_POINTS = {"zest": main, "estimate-z": estimate_z_main}


def run(prog: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        ENTRY_POINTS[prog](args)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 0), out, err


def commands() -> list[str]:
    return cli.list_commands(click.Context(cli))


def command(name: str) -> click.Command:
    found = cli.get_command(click.Context(cli), name)
    assert found is not None, name
    return found


# --- -h and --version -------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["-h", "--help"])
@pytest.mark.parametrize("args", [["estimate-z"], ["zest"], *(["zest", c] for c in commands())])
def test_every_command_answers_help(args: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    prog, rest = args[0], args[1:]
    code, out, err = run(prog, [*rest, flag], capsys)
    assert (code, err) == (0, "")
    assert out.startswith(f"Usage: {' '.join(args)} ")


@pytest.mark.parametrize("args", [["estimate-z"], ["zest"], *(["zest", c] for c in commands())])
def test_every_command_answers_version(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    code, out, err = run(args[0], [*args[1:], "--version"], capsys)
    assert (code, err) == (0, "")
    assert out.strip().endswith(f"version {version('zest-gpu')}")


def test_help_says_which_options_are_required(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run("estimate-z", ["-h"], capsys)
    flat = " ".join(out.split())
    assert "[required unless Slurm gives the job's time limit]" in flat  # --duration-hours
    assert "[required unless every algorithm's Z is given" in flat  # --job-id
    _, out, _ = run("zest", ["capture", "-h"], capsys)
    assert re.search(r"--job-id TEXT\s+Job whose telemetry to record.\s+\[required\]", out)


# --- durations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "given", "expected"),
    [
        ("h", "150", 150.0),
        ("h", "72h", 72.0),
        ("h", "3d", 72.0),
        ("h", "45m", 0.75),
        ("h", "5400s", 1.5),
        ("m", "25", 25.0),
        ("m", "1.5h", 90.0),
        ("s", "30m", 1800.0),
        ("s", "90", 90.0),
        ("m", 25.0, 25.0),  # a default is already in the option's unit
    ],
)
def test_a_duration_takes_a_unit_or_the_options_own(unit: str, given: str | float, expected: float) -> None:
    assert DurationType(unit).convert(given, None, None) == pytest.approx(expected)


def test_duration_hours_with_a_unit_gives_t(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--z-expected", "10", "--output", "json"]
    code, out, err = run("estimate-z", ["--duration-hours", "3d", "--trial-minutes", "1.5h", *args], capsys)
    assert (code, err) == (0, "")
    inputs = json.loads(out)["inputs"]
    assert (inputs["duration_hours"], inputs["trial_minutes"]) == (72, 90)


@pytest.mark.parametrize(
    ("prog", "args", "option", "unit"),
    [
        ("estimate-z", ["--duration-hours", "3x", "--z-expected", "10"], "--duration-hours", "hours"),
        ("estimate-z", ["--duration-hours", "-1", "--z-expected", "10"], "--duration-hours", "hours"),
        ("estimate-z", ["--duration-hours", "0d", "--z-expected", "10"], "--duration-hours", "hours"),
        ("estimate-z", ["--duration-hours", "1", "--trial-minutes", "soon"], "--trial-minutes", "minutes"),
        ("estimate-z", ["--duration-hours", "1", "--window", "1w"], "--window", "seconds"),
        ("zest", ["simulate", "--spec", "x.json", "--predict", "--minutes", "0"], "--minutes", "minutes"),
        (
            "zest",
            ["record", "--zenithtune-dir", ".", "--duration-hours", "long"],
            "--duration-hours",
            "hours",
        ),
    ],
)
def test_a_bad_duration_says_the_range_and_the_units(
    prog: str, args: list[str], option: str, unit: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(prog, args, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: Invalid value for '{option}'")
    assert f"a duration > 0 (x>0), a number of {unit} or one with a unit s, m, h or d (45m, 72h, 3d)" in err


def test_a_number_that_is_no_number_says_the_range(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run("estimate-z", ["--duration-hours", "1", "--gpus", "eight"], capsys)
    assert code == 2 and "'eight' is not a whole number; accepted range: x>=1" in err
    code, _, err = run("estimate-z", ["--duration-hours", "1", "--reuse", "many"], capsys)
    assert code == 2 and "'many' is not a number; accepted range: x>=1" in err


# --- README synopses -----------------------------------------------------------------------------------

_COMMAND_LINE = re.compile(r"^ {4}(\$ )?(estimate-z|zest [a-z]+)\b")


def readme_command_lines() -> list[tuple[str, bool, str]]:
    """(command, is_synopsis, text with its continuation lines) of every command in README's code blocks.
    A synopsis sits in a block that marks optional options with brackets; a ``$`` line is an example."""
    blocks: list[list[str]] = [[]]
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("    "):
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    found = []
    for block in blocks:
        synopsis_block = any("[--" in line for line in block)
        for k, line in enumerate(block):
            match = _COMMAND_LINE.match(line)
            if not match:
                continue
            text = line
            for more in block[k + 1 :]:
                if _COMMAND_LINE.match(more) or not re.match(r"^ {6,}[\[\-(]", more):
                    break
                text += " " + more.strip()
            found.append((match[2], synopsis_block and not match[1], text))
    return found


def help_options(name: str) -> set[str]:
    """The long options ``name --help`` lists (hidden ones, --help and --version left out)."""
    cmd = command("estimate" if name == "estimate-z" else name.removeprefix("zest "))
    listed = set()
    for param in cmd.params:
        if isinstance(param, click.Option) and not param.hidden:
            listed |= {o for o in [*param.opts, *param.secondary_opts] if o.startswith("--")}
    return listed - {"--help", "--version"}


def test_readme_synopses_match_help() -> None:
    synopses: dict[str, set[str]] = {}
    for name, is_synopsis, text in readme_command_lines():
        if is_synopsis:
            options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
            synopses.setdefault(name, set()).update(options)
    assert {"estimate-z", "zest capture", "zest simulate", "zest serve", "zest whatif"} <= set(synopses)
    for name, options in synopses.items():
        listed = help_options(name)
        assert options <= listed, f"README's synopsis of {name} names options its --help lacks"
        assert listed <= options, f"README's synopsis of {name} lacks {sorted(listed - options)}"
    assert set(synopses) == {"estimate-z", *(f"zest {c}" for c in commands() if c != "estimate")}


# --- JSON numbers --------------------------------------------------------------------------------------


def test_json_numbers_are_rounded_and_whole_ones_are_integers() -> None:
    import numpy as np

    assert json_ready({"a": [3.0604999999999998, 8.0, np.float64(0.1 + 0.2), np.int64(3), True]}) == {
        "a": [3.0605, 8, 0.3, 3, True]
    }
    assert json_ready([float("nan"), float("inf"), 1 / 3, 2.0e20]) == [
        None,
        None,
        0.333333,
        200000000000000000000,
    ]


def test_estimate_json_numbers_are_exact(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--job-id", "gpt-1.3b-a100-tp4", "--source", "example", "--duration-hours", "150"]
    code, out, err = run("estimate-z", [*args, "--reuse", "5", "--output", "json"], capsys)
    assert (code, err) == (0, "")
    assert '"gpus": 8,' in out and '"reuse_count": 5,' in out and '"duration_hours": 150,' in out
    floats: list[str] = []
    json.loads(out, parse_float=lambda text: floats.append(text) or float(text))
    assert floats and all(float(f"{float(f):.6g}") == float(f) for f in floats), "over 6 significant digits"
    doc = json.loads(out)
    assert doc["telemetry"]["features"]["gpus"] == 8 and isinstance(doc["telemetry"]["features"]["gpus"], int)
    heuristic = doc["algorithms"][0]
    assert heuristic["trial_hours"] == 0.416667  # 25 min
    assert heuristic["exploration_gpu_hours"] == 10  # 8 GPUs x 3 trials x 25 min


def test_reference_calculator_json_is_exact(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--duration-hours", "150", "--algorithm", "black-box=500:25", "--reuse", "16", "--output", "json"]
    code, out, _ = run("estimate-z", args, capsys)
    (a,) = json.loads(out)["algorithms"]
    assert code == 0
    assert (a["exploration_gpu_hours"], a["r_break"], a["z_break_percent"]) == (208.333, 5.55556, 8.68056)
    assert (a["speedup_hours_per_run"], a["net_saving_gpu_hours"], a["first_paying_reuse"]) == (
        37.5,
        391.667,
        6,
    )


# --- the decision in words ---------------------------------------------------------------------------


def test_a_marginal_algorithm_that_pays_at_the_mid_z_is_named() -> None:
    t = 25 / 60
    candidates = [
        Candidate("heuristic", 30, t, ZInterval(5, 10, 15)),  # Z_break 8.33: marginal, +2.5 h at mid Z
        Candidate("exhaustive", 2000, t, ZInterval(5, 10, 15)),  # never pays
    ]
    decision = decide(candidates, Job(150))
    assert [str(a.verdict) for a in decision.assessments] == ["marginal", "does-not-pay"]
    assert decision.assessments[0].net_saving_gpu_hours > 0
    assert (decision.recommendation, decision.marginal_choice) == (None, "heuristic")
    assert recommendation_text(decision.recommendation, decision.marginal_choice) == (
        "none for sure; heuristic is marginal: it pays at the mid Z, not at the low end: "
        "start with the heuristic search and measure"
    )
    losing = decide([Candidate("heuristic", 30, t, ZInterval(5, 7, 15))], Job(150))  # -2 h at mid Z
    assert (losing.recommendation, losing.marginal_choice) == (None, None)
    assert recommendation_text(None, None) == "none pays off at the mid Z; do not tune"
    proceeding = decide([Candidate("heuristic", 30, t, ZInterval(9, 10, 15))], Job(150))
    assert proceeding.marginal_choice is None and recommendation_text("heuristic", None) == "heuristic"


def test_the_table_and_json_say_what_marginal_means(capsys: pytest.CaptureFixture[str]) -> None:
    # exhaustive's share of Z_e is 1: Z 5-15 %, Z_break 8.33 %: marginal, +2.5 GPU-h at the mid Z
    args = ["--duration-hours", "150", "--z-expected", "5:10:15", "--algorithm", "exhaustive=30"]
    code, out, err = run("estimate-z", args, capsys)
    assert (code, err) == (0, "")
    assert re.search(r"exhaustive .* 2\.5 .* marginal", out)
    assert (
        "recommendation: none for sure; exhaustive is marginal: it pays at the mid Z, not at the low end: "
        "start with the exhaustive search and measure"
    ) in " ".join(out.split())
    code, out, _ = run("estimate-z", [*args, "--output", "json"], capsys)
    doc = json.loads(out)
    assert (doc["recommendation"], doc["marginal_choice"]) == (None, "exhaustive")


# --- read-only commands create nothing ----------------------------------------------------------------


def test_history_creates_no_store_and_says_there_is_none_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    code, out, err = run("zest", ["history"], capsys)
    assert (code, err) == (0, "")
    assert out.startswith("no studies recorded: no outcomes store yet at ") and out.count("\n") == 1
    store = tmp_path / "missing" / "outcomes.sqlite"
    code, out, err = run("zest", ["history", "--store", str(store), "--output", "json"], capsys)
    assert (code, err) == (0, "")
    assert json.loads(out) == {"store": str(store), "store_exists": False, "studies": []}
    assert list(tmp_path.rglob("*")) == []


# --- bundled examples ----------------------------------------------------------------------------------


def test_each_example_is_named_by_its_model_size() -> None:
    from collectors.sources import example_dir, example_jobs
    from estimator.perfmodel.iteration import JobSpec

    assert example_jobs() == ["gpt-1.3b-a100-dp8", "gpt-1.3b-a100-tp4", "gpt-7b-h100-pp4"]
    for job in example_jobs():
        spec = JobSpec.from_json(example_dir() / f"{job}.json")
        parameters = 12 * spec.num_layers * spec.hidden_size**2 + spec.vocab_size * spec.hidden_size
        named = re.fullmatch(r"gpt-([0-9.]+)b-(a100|h100)-\w+", job)
        assert named is not None and spec.gpu.lower().startswith(named[2]), job
        assert parameters / 1e9 == pytest.approx(float(named[1]), rel=0.06), job
