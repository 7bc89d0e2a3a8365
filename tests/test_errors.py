"""Every command's error paths: one line on stderr, ``PROG: error: …``, and the exit code the README lists.

Each case runs a command in this process through its entry point
(:func:`estimator.cli.main.main`, :func:`estimator.cli.main.estimate_z_main`)
on inputs made in ``tmp_path``, with HOME and the XDG folders there too. An
exception other than ``SystemExit`` escaping the entry point is the traceback
a user would see. A few cases run a real process, to see its stderr whole.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_nvml import FakeClock, healthy_h100x2

from collectors import nvml
from collectors.sources import example_dir
from estimator.cli.main import estimate_z_main, main
from estimator.serving.runner import Runner
from estimator.training.rows import (
    DATA_FILE,
    DATA_PARALLEL,
    GROUP_KEYS,
    MEASURED_MS,
    MICRO_BATCH,
    PIPELINE_PARALLEL,
    TENSOR_PARALLEL,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_JOB = "gpt-1.3b-a100-dp8"
EXAMPLE_CAPTURE = example_dir() / f"{EXAMPLE_JOB}.parquet"
EXAMPLE_SPEC = example_dir() / f"{EXAMPLE_JOB}.json"
#: The plain calculator: every algorithm's Z given, so no telemetry is read.
CALCULATOR = ["--duration-hours", "150", "--algorithm", "heuristic=30:10", "--algorithm", "black-box=100:20"]
#: A source that refuses connections at once.
DEAD_PROMETHEUS = "prometheus=http://127.0.0.1:1"
GARBAGE = b"\x00\xff\xfe garbage \x89\x01"


# --- inputs -----------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME and the user's data and cache folders in ``tmp_path``: nothing is written to the real ones."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    return home


def _spec(path: Path, **changes: object) -> None:
    spec = json.loads(EXAMPLE_SPEC.read_text(encoding="utf-8"))
    path.write_text(json.dumps(spec | changes), encoding="utf-8")


def _vtrain(folder: Path) -> None:
    """A small measured table in vTrain's layout: 3 studies of 5 configurations each on 4 GPUs."""
    folder.mkdir()
    layouts = [(1, 1, 4, 1), (2, 1, 4, 1), (1, 2, 2, 1), (1, 4, 1, 1), (1, 1, 2, 2)]
    head = [*GROUP_KEYS, MICRO_BATCH, TENSOR_PARALLEL, DATA_PARALLEL, PIPELINE_PARALLEL, MEASURED_MS]
    lines = [",".join(head)]
    for hidden, base_ms in ((1024, 200.0), (2048, 500.0), (4096, 1500.0)):
        study = {"# GPUs": 4, "global batch": 64, "hidden size": hidden, "attention heads": 16}
        study |= {"# layers": 24, "sequence length": 2048}
        for k, (micro, tensor, data, pipeline) in enumerate(layouts):
            row = [*(study[key] for key in GROUP_KEYS), micro, tensor, data, pipeline, base_ms * (1 + k / 10)]
            lines.append(",".join(map(str, row)))
    (folder / DATA_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """The good and bad input files the cases name as ``{tmp}/…``."""
    (tmp_path / "a-file").write_text("a file where a folder should be\n", encoding="utf-8")
    (tmp_path / "exists.parquet").write_bytes(b"")
    (tmp_path / "empty-folder").mkdir()
    # captures
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1" + GARBAGE)
    (tmp_path / "corrupt.csv").write_bytes(GARBAGE)
    (tmp_path / "corrupt.prom").write_text("this is not { Prometheus text\n", encoding="utf-8")
    capture = EXAMPLE_CAPTURE.read_bytes()
    (tmp_path / "truncated.parquet").write_bytes(capture[: len(capture) // 2])
    # job specs
    (tmp_path / "malformed.json").write_text('{"gpu": "A100-80GB",', encoding="utf-8")
    (tmp_path / "not-utf8.json").write_bytes(GARBAGE)
    _spec(tmp_path / "job.json")
    _spec(tmp_path / "negative-gpus.json", num_gpus=-3)
    _spec(tmp_path / "wrong-layout.json", data_parallel=2)
    _spec(tmp_path / "micro-batches.json", global_batch=2**40)
    # training data
    _vtrain(tmp_path / "vtrain")
    (tmp_path / "binary-data").mkdir()
    (tmp_path / "binary-data" / DATA_FILE).write_bytes(GARBAGE)
    (tmp_path / "no-columns").mkdir()
    (tmp_path / "no-columns" / DATA_FILE).write_text("a,b\n1,2\n", encoding="utf-8")
    # outcomes store and serve configurations
    (tmp_path / "not-sqlite.sqlite").write_text("not a SQLite database\n" * 20, encoding="utf-8")
    (tmp_path / "invalid.toml").write_text("[defaults\nreuse = ", encoding="utf-8")
    (tmp_path / "bad-value.toml").write_text("[defaults]\nreuse = -1\n", encoding="utf-8")
    (tmp_path / "not-utf8.toml").write_bytes(GARBAGE)
    (tmp_path / "invalid.yml").write_text("tls_server_config: [\n", encoding="utf-8")
    (tmp_path / "unknown-key.yml").write_text("http_server_config: {http2: true}\n", encoding="utf-8")
    (tmp_path / "not-utf8.yml").write_bytes(GARBAGE)
    return tmp_path


@pytest.fixture
def optuna_storage(tmp_path: Path) -> str:
    """A SQLite Optuna storage holding one study, ``tuned``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="tuned", storage=storage, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 1.0, 2.0), n_trials=2)
    return storage


@pytest.fixture
def nvml_driver(monkeypatch: pytest.MonkeyPatch) -> str:
    """A host with NVML: two H100, this process on GPU 1. Returns the job id that finds it."""
    clock = FakeClock()

    class FakeDriverSource(nvml.NvmlSource):
        def __init__(self) -> None:
            fake = healthy_h100x2(clock)
            fake.gpus[1].pids = [os.getpid()]
            super().__init__(nvml=fake, clock=clock.time, sleep=clock.sleep, host="node-a")

    monkeypatch.setattr(nvml, "NvmlSource", FakeDriverSource)
    return f"pid:{os.getpid()}"


# --- running a command --------------------------------------------------------------------------------


def run(prog: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``prog`` with ``args`` in this process: its exit code and stderr."""
    entry = main if prog == "zest" else estimate_z_main
    with pytest.raises(SystemExit) as exit_info:
        entry(args)
    code = exit_info.value.code
    assert isinstance(code, int), f"exit code {code!r}"
    return code, capsys.readouterr().err


def assert_one_line(prog: str, err: str, code: int, expected_code: int, pattern: str) -> None:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{err}"
    line = lines[0]
    assert line.startswith(f"{prog}: error: "), line
    assert re.search(pattern, line), f"{line!r} does not match {pattern!r}"
    assert code == expected_code, f"exit {code}, expected {expected_code}: {line}"


def xfail(reason: str, raises: type[BaseException] | None = None) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=reason, raises=raises)


def case(
    case_id: str, prog: str, args: list[str], code: int, pattern: str, *marks: pytest.MarkDecorator
) -> object:
    return pytest.param(prog, args, code, pattern, id=case_id, marks=marks)


def _simulate(spec: str, *more: str, output: str = "{tmp}/s.parquet") -> list[str]:
    return ["simulate", "--spec", f"{{tmp}}/{spec}", "--job-id", "j", "--output", output, *more]


def _capture(*more: str) -> list[str]:
    return ["capture", "--source", "example", *more]


#: ``estimate-z`` reading the example job's telemetry from the source that follows.
FROM_SOURCE = ["--job-id", EXAMPLE_JOB, "--duration-hours", "1", "--source"]
#: ``zest serve`` up to its failing option; every case fails before it listens.
SERVE = ["serve", "--source", DEAD_PROMETHEUS, "--listen", "127.0.0.1:0"]
TRAIN = ["train", "--data", "{tmp}/vtrain"]
NVML_WINDOW_BELOW_INTERVAL = [
    "--source",
    "nvml",
    "--window",
    "1s",
    "--interval",
    "2s",
    "--duration-hours",
    "150",
]

CASES = [
    # --- estimate-z: option values -----------------------------------------------------------------
    case("not-a-number", "estimate-z", ["--duration-hours", "abc"], 2, r"'--duration-hours'.*'abc'"),
    case("out-of-range", "estimate-z", ["--duration-hours", "-1"], 2, r"'--duration-hours'.*x>0"),
    case("zero-window", "estimate-z", [*CALCULATOR, "--window", "0s"], 2, r"'--window'.*duration > 0"),
    case("unknown-algorithm", "estimate-z", [*CALCULATOR, "--algorithm", "x=1"], 2, r"unknown algorithm 'x'"),
    case("z-out-of-range", "estimate-z", ["--duration-hours", "1", "--z-expected", "150"], 2, r"\[0, 100\)"),
    case("unknown-option", "estimate-z", ["--nope"], 2, r"No such option '--nope'"),
    case("no-duration", "estimate-z", ["--z-expected", "10"], 2, r"--duration-hours is required"),
    case("no-job-id", "estimate-z", ["--duration-hours", "1"], 2, r"--job-id is required"),
    case(
        "engineering-without-prices",
        "estimate-z",
        [*CALCULATOR, "--engineer-hours", "3"],
        2,
        r"--engineer-hours > 0 needs --gpu-hour-cost",
    ),
    # --- estimate-z: the chart ---------------------------------------------------------------------
    case(
        "plot-into-missing-folder",
        "estimate-z",
        [*CALCULATOR, "--plot", "{tmp}/missing/x.png"],
        7,
        r"cannot write the chart .*missing/x\.png: .*missing is not a folder; create it first",
    ),
    case(
        "plot-under-a-file",
        "estimate-z",
        [*CALCULATOR, "--plot", "{tmp}/a-file/x.png"],
        7,
        r"cannot write the chart .*a-file/x\.png: .*a-file is not a folder",
    ),
    case(
        "plot-unknown-format",
        "estimate-z",
        [*CALCULATOR, "--plot", "{tmp}/out.xyz"],
        2,
        r"out\.xyz: \.xyz is not an image format.*\.png",
    ),
    # --- estimate: telemetry sources ---------------------------------------------------------------
    case(
        "window-below-interval-without-driver",
        "zest",
        ["estimate", "--job-id", "train-1", *NVML_WINDOW_BELOW_INTERVAL],
        2,
        r"--window.*--interval",
    ),
    case("missing-capture", "estimate-z", [*FROM_SOURCE, "{tmp}/none.csv"], 3, r"none\.csv: no such file"),
    case(
        "source-is-a-folder",
        "estimate-z",
        [*FROM_SOURCE, "{tmp}/empty-folder"],
        3,
        r"empty-folder is a folder",
    ),
    case(
        "corrupt-parquet",
        "estimate-z",
        [*FROM_SOURCE, "{tmp}/corrupt.parquet"],
        6,
        r"corrupt\.parquet: unreadable Parquet",
    ),
    case(
        "truncated-parquet",
        "estimate-z",
        [*FROM_SOURCE, "{tmp}/truncated.parquet"],
        6,
        r"truncated\.parquet: unreadable Parquet",
    ),
    case(
        "corrupt-csv", "estimate-z", [*FROM_SOURCE, "{tmp}/corrupt.csv"], 6, r"corrupt\.csv:1: not UTF-8 text"
    ),
    case(
        "corrupt-prom",
        "estimate-z",
        [*FROM_SOURCE, "{tmp}/corrupt.prom"],
        6,
        r"corrupt\.prom:1: unknown capture format",
    ),
    case(
        "job-not-in-examples",
        "estimate-z",
        ["--job-id", "no-such-job", "--duration-hours", "1", "--source", "example"],
        5,
        rf"no bundled example for job 'no-such-job'; the examples are: .*{EXAMPLE_JOB}",
    ),
    case(
        "job-not-in-capture",
        "estimate-z",
        ["--job-id", "other-job", "--duration-hours", "1", "--source", str(EXAMPLE_CAPTURE)],
        5,
        rf"no telemetry for job other-job; the file holds job\(s\) {EXAMPLE_JOB}",
    ),
    case("prometheus-down", "estimate-z", [*FROM_SOURCE, DEAD_PROMETHEUS], 3, r"127\.0\.0\.1:1"),
    # --- capture -------------------------------------------------------------------------------------
    case(
        "capture-output-exists",
        "zest",
        _capture("--job-id", EXAMPLE_JOB, "--output", "{tmp}/exists.parquet"),
        2,
        r"exists; pass --force",
    ),
    case(
        "capture-into-missing-folder",
        "zest",
        _capture("--job-id", EXAMPLE_JOB, "--output", "{tmp}/missing/c.parquet"),
        7,
        r"missing is not a folder; create it",
    ),
    case(
        "capture-unknown-job",
        "zest",
        _capture("--job-id", "no-such-job", "--output", "{tmp}/c.parquet"),
        5,
        r"no bundled example for job 'no-such-job'",
    ),
    # --- simulate ------------------------------------------------------------------------------------
    case(
        "spec-missing",
        "zest",
        _simulate("missing.json"),
        2,
        r"cannot read job spec .*missing\.json: No such file or directory",
    ),
    case("spec-malformed-json", "zest", _simulate("malformed.json"), 2, r"malformed\.json is not JSON"),
    case("spec-not-utf8", "zest", _simulate("not-utf8.json"), 2, r"not-utf8\.json is not UTF-8 text"),
    case(
        "spec-invalid-field",
        "zest",
        _simulate("negative-gpus.json"),
        2,
        r"num_gpus: must be a positive integer, got -3",
    ),
    case(
        "spec-wrong-layout",
        "zest",
        _simulate("wrong-layout.json"),
        2,
        r"but num_gpus is 8; make the product equal the GPU count",
    ),
    case(
        "spec-too-many-micro-batches",
        "zest",
        _simulate("micro-batches.json"),
        2,
        r"micro-batches per iteration, more than the 100,000",
    ),
    case(
        "simulate-too-long", "zest", _simulate("job.json", "--minutes", "1e9"), 2, r"simulate fewer minutes"
    ),
    case(
        "simulate-infinite", "zest", _simulate("job.json", "--minutes", "inf"), 2, r"minutes must be finite"
    ),
    case(
        "simulate-into-missing-folder",
        "zest",
        _simulate("job.json", output="{tmp}/missing/s.parquet"),
        7,
        r"missing is not a folder; create it",
    ),
    case(
        "simulate-under-a-file",
        "zest",
        _simulate("job.json", output="{tmp}/a-file/s.parquet"),
        7,
        r"a-file is not a folder",
    ),
    case(
        "simulate-output-exists",
        "zest",
        _simulate("job.json", output="{tmp}/exists.parquet"),
        2,
        r"exists; pass --force",
    ),
    # --- train and evaluate --------------------------------------------------------------------------
    case("train-without-data", "zest", ["train", "--cache-dir", "{tmp}/cache"], 2, r"--data DIR is required"),
    case(
        "train-empty-data-folder",
        "zest",
        ["train", "--data", "{tmp}/empty-folder", "--cache-dir", "{tmp}/cache"],
        2,
        r"cannot read .*measured_single_node\.csv \(No such file or directory\): pass --data DIR",
    ),
    case(
        "train-binary-data",
        "zest",
        ["train", "--data", "{tmp}/binary-data", "--cache-dir", "{tmp}/cache"],
        2,
        r"measured_single_node\.csv: .*can't decode",
    ),
    case(
        "train-data-without-columns",
        "zest",
        ["train", "--data", "{tmp}/no-columns", "--cache-dir", "{tmp}/cache"],
        2,
        r"lacks column",
    ),
    case(
        "train-unwritable-output-dir",
        "zest",
        [*TRAIN, "--cache-dir", "{tmp}/cache", "--output-dir", "{tmp}/a-file/out"],
        7,
        r"cannot create .*a-file/out \(Not a directory\): pass another --output-dir",
    ),
    case(
        "train-unwritable-cache-dir",
        "zest",
        [*TRAIN, "--cache-dir", "{tmp}/a-file/cache", "--output-dir", "{tmp}/out"],
        7,
        r"cannot write the training rows' cache in .*a-file/cache \(Not a directory\): pass a writable",
    ),
    case(
        "train-with-outcomes-corrupt-store",
        "zest",
        ["train", "--with-outcomes", "--store", "{tmp}/not-sqlite.sqlite"],
        16,
        r"cannot open the outcomes store .*not-sqlite\.sqlite \(file is not a database\)",
    ),
    case(
        "evaluate-missing-card",
        "zest",
        ["evaluate", "--data", "{tmp}/vtrain", "--cache-dir", "{tmp}/cache", "--card", "{tmp}/missing.md"],
        2,
        r"cannot read model card .*missing\.md",
    ),
    # --- record and history --------------------------------------------------------------------------
    case(
        "history-corrupt-store",
        "zest",
        ["history", "--store", "{tmp}/not-sqlite.sqlite"],
        16,
        r"cannot open the outcomes store .*\(file is not a database\): check the path, or pass --store",
    ),
    case(
        "history-store-under-a-file",
        "zest",
        ["history", "--store", "{tmp}/a-file/outcomes.sqlite"],
        16,
        r"cannot create the folder of .*a-file/outcomes\.sqlite",
    ),
    case(
        "record-corrupt-store",
        "zest",
        ["record", "--storage", "{storage}", "--study", "tuned", "--store", "{tmp}/not-sqlite.sqlite"],
        16,
        r"cannot open the outcomes store",
    ),
    case(
        "record-missing-storage",
        "zest",
        ["record", "--storage", "sqlite:///{tmp}/none.db", "--study", "s", "--store", "{tmp}/o.sqlite"],
        15,
        r"--storage sqlite:///.*none\.db: no such file",
    ),
    case(
        "record-storage-is-a-path",
        "zest",
        ["record", "--storage", "{tmp}/optuna.db", "--study", "tuned", "--store", "{tmp}/o.sqlite"],
        2,
        r"optuna\.db' is not a storage URL: give sqlite:///PATH",
    ),
    case(
        "record-unknown-database",
        "zest",
        ["record", "--storage", "nosuchdb://host/x", "--study", "s", "--store", "{tmp}/o.sqlite"],
        15,
        r"cannot read nosuchdb://host/x \(.*\); check the URL",
    ),
    case(
        "record-unknown-study",
        "zest",
        ["record", "--storage", "{storage}", "--study", "other", "--store", "{tmp}/o.sqlite"],
        15,
        r"holds no study 'other'; it holds: tuned",
    ),
    case(
        "record-without-storage",
        "zest",
        ["record", "--store", "{tmp}/o.sqlite"],
        2,
        r"give --storage URL and --study NAME, or --zenithtune-dir DIR",
    ),
    case(
        "record-missing-zenithtune-dir",
        "zest",
        ["record", "--zenithtune-dir", "{tmp}/missing", "--store", "{tmp}/o.sqlite"],
        15,
        r"--zenithtune-dir .*missing: no such folder",
    ),
    # --- serve ---------------------------------------------------------------------------------------
    case(
        "serve-missing-config",
        "zest",
        [*SERVE, "--config", "{tmp}/missing.toml"],
        2,
        r"cannot read config .*missing\.toml \(No such file or directory\)",
    ),
    case(
        "serve-invalid-toml",
        "zest",
        [*SERVE, "--config", "{tmp}/invalid.toml"],
        2,
        r"invalid\.toml is not valid TOML \(.*line 1.*\)",
    ),
    case(
        "serve-config-not-utf8",
        "zest",
        [*SERVE, "--config", "{tmp}/not-utf8.toml"],
        2,
        r"not-utf8\.toml is not UTF-8 text",
    ),
    case(
        "serve-config-bad-value",
        "zest",
        [*SERVE, "--config", "{tmp}/bad-value.toml"],
        2,
        r"bad-value\.toml.*reuse must be a finite number >= 1, got -1",
    ),
    case(
        "serve-missing-web-config",
        "zest",
        [*SERVE, "--web-config", "{tmp}/missing.yml"],
        2,
        r"cannot read web config .*missing\.yml",
    ),
    case(
        "serve-invalid-web-config",
        "zest",
        [*SERVE, "--web-config", "{tmp}/invalid.yml"],
        2,
        r"web config .*invalid\.yml is not valid YAML",
    ),
    case(
        "serve-web-config-unknown-key",
        "zest",
        [*SERVE, "--web-config", "{tmp}/unknown-key.yml"],
        2,
        r"zest does not support http_server_config",
    ),
    case(
        "serve-web-config-not-utf8",
        "zest",
        [*SERVE, "--web-config", "{tmp}/not-utf8.yml"],
        2,
        r"not-utf8\.yml is not UTF-8",
    ),
    case(
        "serve-unknown-source",
        "zest",
        ["serve", "--source", "bogus", "--listen", "127.0.0.1:0"],
        2,
        r"'--source'.*'bogus'",
    ),
    case(
        "serve-bad-listen",
        "zest",
        ["serve", "--source", DEAD_PROMETHEUS, "--listen", "nonsense"],
        2,
        r"'--listen'.*'nonsense'",
    ),
    # --- the group -----------------------------------------------------------------------------------
    case("unknown-command", "zest", ["nosuch"], 2, r"No such command 'nosuch'"),
    case(
        "no-command",
        "zest",
        [],
        2,
        r"command.*zest --help",
    ),
]


def _serve_started(self: Runner, stop: object) -> None:
    pytest.fail("zest serve started serving: the case did not fail before it listens")


@pytest.mark.parametrize(("prog", "args", "code", "pattern"), CASES)
def test_error_is_one_line_and_its_exit_code(
    prog: str,
    args: list[str],
    code: int,
    pattern: str,
    inputs: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if args[:1] == ["serve"]:  # a case that fails to fail would serve until killed
        monkeypatch.setattr(Runner, "run_forever", _serve_started)
    storage = request.getfixturevalue("optuna_storage") if any("{storage}" in a for a in args) else ""
    argv = [a.format(tmp=inputs, storage=storage) for a in args]
    exit_code, err = run(prog, argv, capsys)
    assert_one_line(prog, err, exit_code, code, pattern)


def test_window_below_interval_with_a_driver(nvml_driver: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--job-id", nvml_driver, "--source", "nvml", "--window", "1s", "--interval", "2s"]
    exit_code, err = run("estimate-z", [*args, "--duration-hours", "150"], capsys)
    assert_one_line("estimate-z", err, exit_code, 2, r"--window.*--interval")


def test_slurm_asked_for_where_it_is_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-commands-here"))
    args = ["--job-id", "4242", "--slurm", "--duration-hours", "1", "--z-expected", "10"]
    exit_code, err = run("estimate-z", args, capsys)
    assert_one_line("estimate-z", err, exit_code, 11, r"scontrol is not installed here")


def test_history_without_a_store_says_so_and_creates_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "nowhere" / "outcomes.sqlite"
    with pytest.raises(SystemExit) as exit_info:
        main(["history", "--store", str(store)])
    out, err = capsys.readouterr()
    assert (exit_info.value.code, err) == (0, "")
    assert "no studies recorded" in out
    assert not store.exists() and not store.parent.exists()


def test_a_damaged_training_cache_is_simulated_again(
    inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--data", str(inputs / "vtrain"), "--cache-dir", str(inputs / "cache")]
    args += ["--simulated-studies", "0"]
    args += ["--output-dir", str(inputs / "out")]
    assert run("zest", args, capsys)[0] == 0
    (cached,) = (inputs / "cache").glob("training_rows_*.parquet")
    cached.write_bytes(cached.read_bytes()[:100])
    exit_code, err = run("zest", args, capsys)
    assert (exit_code, err) == (0, "")
    (rebuilt,) = (inputs / "cache").glob("training_rows_*.parquet")
    assert rebuilt.stat().st_size > 100


# --- real processes -------------------------------------------------------------------------------


def _process(args: list[str], home: Path, timeout_seconds: float = 120) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CACHE_HOME": str(home / "cache"),
    }
    with subprocess.Popen(
        [sys.executable, "-m", "estimator.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"zest {' '.join(args)} still ran after {timeout_seconds} s; stderr: {err}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.parametrize(
    ("args", "code", "pattern"),
    [
        pytest.param(
            ["estimate", *CALCULATOR, "--plot", "{tmp}/missing/x.png"],
            7,
            r"cannot write the chart",
            id="plot",
        ),
        pytest.param(
            ["capture", "--job-id", "j", "--source", "{tmp}/corrupt.parquet", "--output", "{tmp}/c.parquet"],
            6,
            r"unreadable Parquet",
            id="corrupt-capture",
        ),
    ],
)
def test_a_real_process_prints_one_line(
    args: list[str], code: int, pattern: str, inputs: Path, home: Path
) -> None:
    result = _process([a.format(tmp=inputs) for a in args], home)
    assert_one_line("zest", result.stderr, result.returncode, code, pattern)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port of 127.0.0.1 another socket listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def test_serve_on_a_port_in_use_is_exit_9(taken_port: int, home: Path) -> None:
    args = ["serve", "--source", DEAD_PROMETHEUS, "--listen", f"127.0.0.1:{taken_port}"]
    result = _process(args, home)
    assert_one_line("zest", result.stderr, result.returncode, 9, rf"127\.0\.0\.1:{taken_port}")
