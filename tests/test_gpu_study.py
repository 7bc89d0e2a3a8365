"""bench/gpu_study.py on the CPU: the whole sweep with the tiny model against the fake NVML driver.

The same script the GPU machine runs (PyTorch training steps, the sampler thread,
the budget, the captures and results.csv), so the first real run cannot fail on
a typo. ``torch.compile`` uses the aot_eager backend here: Inductor's C++ code
generation would cost ~30 s a configuration on two cores and is PyTorch's, not ours.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fake_nvml import H100_UUIDS, FakeGpu, FakeNvml

from collectors.files import read_capture

STUDY = Path(__file__).resolve().parent.parent / "bench" / "gpu_study.py"
GPU_NAME = "NVIDIA H200"
MEASURE_SECONDS = 1.0
INTERVAL_SECONDS = 0.5


class WallClock:
    """The fake driver's clock, on real time: the study samples while it trains."""

    def time(self) -> float:
        return time.time()


def load_study() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_study", STUDY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_study"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def h200() -> FakeNvml:
    return FakeNvml([FakeGpu(0, H100_UUIDS[0], name=GPU_NAME)], WallClock())  # type: ignore[arg-type]


def run(study: ModuleType, out: Path, budget_seconds: float, fake: FakeNvml) -> int:
    args = [
        "--preset", "tiny", "--device", "cpu", "--out", str(out), "--budget-s", str(budget_seconds),
        "--measure-s", str(MEASURE_SECONDS), "--interval-s", str(INTERVAL_SECONDS), "--warmup-steps", "1",
        "--compile-backend", "aot_eager",
    ]  # fmt: skip
    code: int = study.main(args, nvml=fake)
    return code


@pytest.fixture(scope="module")
def study() -> ModuleType:
    return load_study()


@pytest.fixture(scope="module")
def full_run(study: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("study")
    fake = h200()
    assert run(study, out, 600.0, fake) == 0
    with (out / study.RESULTS_CSV).open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    return {"out": out, "fake": fake, "columns": columns, "rows": rows}


def test_sweep_keeps_the_global_batch_and_puts_compile_last(study: ModuleType) -> None:
    for sizes in study.PRESETS.values():
        configs = study.sweep(sizes)
        by_name = {s.name: s for s in sizes}
        assert len({c.name for c in configs}) == len(configs)
        assert all(c.micro_batch * c.grad_accum == by_name[c.size].global_batch for c in configs)
        # A baseline per size first, then the micro-batch axis, all eager and unchanged otherwise.
        assert [c.size for c in configs[:2]] == [s.name for s in sizes]
        assert not any(c.compiled or c.activation_checkpointing or not c.fused_optimizer for c in configs[:6])
        for knob in ("activation_checkpointing", "compiled"):
            assert {getattr(c, knob) for c in configs} == {False, True}
        assert {c.fused_optimizer for c in configs} == {False, True}
        assert len({c.micro_batch for c in configs if c.size == sizes[0].name}) == 3


def test_csv_has_its_columns_and_one_row_per_configuration(
    study: ModuleType, full_run: dict[str, Any]
) -> None:
    assert full_run["columns"] == list(study.RESULT_COLUMNS)
    rows = full_run["rows"]
    assert [r["config"] for r in rows] == [c.name for c in study.sweep(study.TINY_SIZES)]
    for row in rows:
        assert row["status"] == "ok"
        assert float(row["tokens_per_second"]) > 0
        assert float(row["iteration_seconds"]) > 0
        assert int(row["steps_measured"]) >= 1
        assert int(row["params"]) > 0
        assert row["gpu_name"] == GPU_NAME
        assert row["device"] == "cpu"
        assert row["torch_version"]
        assert int(row["samples"]) >= 1


def test_one_capture_per_configuration_with_its_samples(full_run: dict[str, Any]) -> None:
    out: Path = full_run["out"]
    rows = full_run["rows"]
    assert sorted(p.name for p in out.glob("*.parquet")) == sorted(r["capture"] for r in rows)
    for row in rows:
        capture = read_capture(out / row["capture"])
        frame = capture.frame
        assert len(frame) == int(row["samples"])
        assert len(frame) >= MEASURE_SECONDS / INTERVAL_SECONDS - 1
        assert set(frame["job_id"]) == {row["config"]}
        assert set(frame["gpu_model"]) == {GPU_NAME}
        assert frame["power_watts"].notna().all() and frame["sm_active_ratio"].notna().all()  # GPM too
        assert any(row["config"] in note for note in capture.notes)
    assert full_run["fake"].live_gpm_samples == 0  # every window freed its GPM samples


def test_zest_estimate_runs_on_a_capture(full_run: dict[str, Any]) -> None:
    row = full_run["rows"][0]
    code = "from estimator.cli.main import main; main()"
    capture = str(full_run["out"] / row["capture"])
    args = [
        "estimate",
        "--job-id",
        row["config"],
        "--source",
        capture,
        "--duration-hours",
        "24",
        "--output",
        "json",
    ]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["job_id"] == row["config"]


def test_a_tiny_budget_skips_configurations_and_says_so(
    study: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    budget_seconds = 6.0
    started = time.monotonic()
    assert run(study, tmp_path, budget_seconds, h200()) == 0
    elapsed = time.monotonic() - started
    printed = capsys.readouterr().out
    with (tmp_path / study.RESULTS_CSV).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    configs = study.sweep(study.TINY_SIZES)
    assert 1 <= len(rows) < len(configs)
    skipped = [line for line in printed.splitlines() if " skipped " in line]
    assert len(skipped) == len(configs) - len(rows)
    assert "s left" in skipped[0]
    # Past its estimate a configuration gives up measurement time, not the budget: the overrun is
    # at most one training step and the writing of its files.
    assert elapsed < budget_seconds + 2.0
    assert len(list(tmp_path.glob("*.parquet"))) == len(rows)


def test_a_configuration_torch_cannot_run_is_a_row_and_the_sweep_goes_on(study: ModuleType) -> None:
    import torch

    size = study.TINY_SIZES[0]
    config = study.StudyConfig(size.name, 2, size.global_batch // 2, False, True, True)

    def no_sampler(window_seconds: float) -> Any:
        raise AssertionError("a configuration that failed to compile has nothing to sample")

    result = study.measure_config(
        torch, config, size, "cpu", warmup_steps=1, start_sampler=no_sampler, measure_seconds=1.0,
        min_window_seconds=0.5, deadline=time.monotonic() + 60, compile_backend="no-such-backend",
    )  # fmt: skip
    assert result.status == "error"
    assert "no-such-backend" in result.error
    assert result.capture is None


def test_estimates_learn_from_what_ran(study: ModuleType) -> None:
    small, large = study.HOPPER_SIZES
    configs = {c.name: c for c in study.sweep(study.HOPPER_SIZES)}
    eager = configs["gpt-1.3b-mb8-ga4-ckpt0-fused1-compile0"]
    compiled = configs["gpt-1.3b-mb8-ga4-ckpt0-fused1-compile1"]
    prior = large.setup_seconds + large.warmup_seconds
    assert study.estimate_seconds(eager, study.HOPPER_SIZES, 20.0, {}) == prior + 21.0
    assert (
        study.estimate_seconds(compiled, study.HOPPER_SIZES, 20.0, {}) == prior + large.compile_seconds + 21.0
    )
    # The small model compiled in 100 s beyond its eager 5 s: the large one, twice the layers, in 200 s.
    seen = {(small.name, False): 5.0, (small.name, True): 105.0, (large.name, False): 9.0}
    assert study.estimate_seconds(compiled, study.HOPPER_SIZES, 20.0, seen) == 9.0 + 200.0 + 21.0
    assert study.estimate_seconds(eager, study.HOPPER_SIZES, 20.0, seen) == 9.0 + 21.0
