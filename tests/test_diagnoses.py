"""Named diagnoses: each rule fires on telemetry that shows its pattern and stays silent on a healthy
job; a missing signal never fires a rule; the diagnoses reach the CLI (JSON and table) and /metrics.

The captures are the performance model's simulated telemetry of jobs that exhibit each pattern, or a
healthy job's capture changed at the boundary (idle seconds added, one GPU slowed, tensor cores off).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from collectors.files import write_capture
from collectors.schema import GPU, HOST, JOB_ID, SIGNALS
from estimator import pipeline
from estimator.features.diagnoses import RULE_NAMES, RULES, Rule, checked_rules, diagnose
from estimator.features.extract import features_frame, summarize_gpus
from estimator.perfmodel.iteration import JobSpec, load_constants, simulate_telemetry
from estimator.serving.collector import ExporterState, Snapshot, ZestCollector
from estimator.serving.metrics import ZEST_DIAGNOSIS

EXAMPLES = Path(__file__).parent.parent / "collectors" / "examples"
HEALTHY = JobSpec.from_json(EXAMPLES / "gpt-1.3b-a100-dp8.json")  # data parallel, fits, SMs 0.88 active
START = pd.Timestamp("2024-01-01", tz="UTC")
ACTIVITY = (  # the signals a GPU with no kernel reads 0 on
    "gpu_util_ratio",
    "sm_active_ratio",
    "sm_occupancy_ratio",
    "tensor_active_ratio",
    "dram_active_ratio",
    "nvlink_bytes_per_second",
)


def spec(**changes: object) -> JobSpec:
    """The healthy job with ``changes`` (its layout, shape or batch)."""
    return replace(HEALTHY, **changes)  # type: ignore[arg-type]


@cache
def simulated(job: JobSpec, job_id: str = "job") -> pd.DataFrame:
    """Three minutes of the job's simulated telemetry (shared: callers copy before changing it)."""
    return simulate_telemetry(job, load_constants(job.gpu), job_id=job_id, minutes=3, seed=7, start=START)


def input_stalls(frame: pd.DataFrame) -> pd.DataFrame:
    """Every GPU waits for the next batch, with no kernel, 6 s of every 10 s."""
    out = frame.copy()
    seconds = (out["timestamp"] - out["timestamp"].min()).dt.total_seconds()
    stalled = (seconds % 10) < 6
    out.loc[stalled, list(ACTIVITY)] = 0.0
    return out


def one_slow_gpu(frame: pd.DataFrame) -> pd.DataFrame:
    """One GPU (a throttled chip) runs its SMs 0.3 less active than the others, still holding kernels."""
    out = frame.copy()
    slow = (out[HOST] == "node0") & (out[GPU] == "3")
    for signal in ("sm_active_ratio", "sm_occupancy_ratio", "tensor_active_ratio"):
        out.loc[slow, signal] = (out.loc[slow, signal] - 0.3).clip(lower=0.06)
    return out


def no_tensor_cores(frame: pd.DataFrame) -> pd.DataFrame:
    """The same work in fp32 without TF32: the tensor pipes stay almost idle."""
    return frame.assign(tensor_active_ratio=0.02)


#: A capture per pattern: (rule, how to build it).
PATTERNS: dict[str, Callable[[], pd.DataFrame]] = {
    "input-bound": lambda: input_stalls(simulated(HEALTHY)),
    # tensor parallelism over a node at micro-batch 1: 93 % of memory free, SMs 0.36 active
    "memory-headroom": lambda: simulated(spec(micro_batch=1, tensor_parallel=8, data_parallel=1)),
    # tensor parallelism over two nodes: collectives at the network's rate
    "communication-bound": lambda: simulated(
        spec(
            num_gpus=16,
            hidden_size=4096,
            attention_heads=32,
            micro_batch=1,
            tensor_parallel=16,
            data_parallel=1,
        )
    ),
    # 8 stages and 8 micro-batches: a bubble of (p − 1)/m of the iteration
    "pipeline-bubbles": lambda: simulated(
        spec(global_batch=8, micro_batch=1, pipeline_parallel=8, data_parallel=1)
    ),
    "stragglers": lambda: one_slow_gpu(simulated(HEALTHY)),
    "tensor-cores-idle": lambda: no_tensor_cores(simulated(HEALTHY)),
}


def features_of(frame: pd.DataFrame) -> dict[str, float]:
    row = features_frame(summarize_gpus(frame)).iloc[0]
    return {str(k): float(v) for k, v in row.items()}


def names(features: dict[str, float]) -> list[str]:
    return [d.name for d in diagnose(features)]


def test_every_rule_has_a_pattern_and_a_unique_name() -> None:
    assert sorted(PATTERNS) == sorted(RULE_NAMES) and len(set(RULE_NAMES)) == len(RULES)


def test_a_healthy_job_has_no_diagnosis() -> None:
    features = features_of(simulated(HEALTHY))
    assert names(features) == []
    assert checked_rules(features) == RULE_NAMES  # every signal there: every rule checked


@pytest.mark.parametrize("rule", sorted(PATTERNS))
def test_each_pattern_fires_its_rule_with_evidence_and_a_suggestion(rule: str) -> None:
    found = {d.name: d for d in diagnose(features_of(PATTERNS[rule]()))}
    assert rule in found, f"{rule} not found; found {sorted(found)}"
    diagnosis = found[rule]
    assert any(ch.isdigit() for ch in diagnosis.evidence)  # cites the measured values
    assert diagnosis.suggestion


def test_patterns_that_look_alike_are_told_apart() -> None:
    # GPUs waiting with no kernel (pipeline stages) are not stragglers; a stall of every GPU at once
    # is input, not a pipeline; a slow GPU whose peers wait in collectives is a straggler.
    assert "stragglers" not in names(features_of(PATTERNS["pipeline-bubbles"]()))
    assert "pipeline-bubbles" not in names(features_of(PATTERNS["input-bound"]()))
    assert "input-bound" not in names(features_of(PATTERNS["pipeline-bubbles"]()))
    assert "pipeline-bubbles" not in names(features_of(PATTERNS["stragglers"]()))
    assert names(features_of(PATTERNS["tensor-cores-idle"]())) == ["tensor-cores-idle"]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_a_missing_signal_never_fires(rule: Rule) -> None:
    features = features_of(PATTERNS[rule.name]())
    for feature in rule.reads:
        lacking = {**features, feature: math.nan}
        assert rule.name not in names(lacking)
        assert rule.name not in checked_rules(lacking)
        without = {k: v for k, v in features.items() if k != feature}
        assert rule.name not in names(without)


def test_a_source_without_sm_activity_checks_only_what_it_can() -> None:
    # an nvidia-smi capture: utilization, memory, power and PCIe, no DCGM profiling signals
    frame = input_stalls(simulated(HEALTHY))
    for signal in ("sm_active_ratio", "sm_occupancy_ratio", "tensor_active_ratio", "dram_active_ratio"):
        frame[signal] = np.nan
    frame["nvlink_bytes_per_second"] = np.nan
    features = features_of(frame)
    assert names(features) == []
    # only stragglers, on GPU utilization; bubbles need SM activity to tell idle GPUs from waiting ones
    assert checked_rules(features) == ("stragglers",)


# --- outputs --------------------------------------------------------------------------------------


def estimate_z(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from estimator.cli.main import estimate_z_main; estimate_z_main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_cli_json_and_table_carry_the_diagnoses(tmp_path: Path) -> None:
    capture = tmp_path / "stalled.parquet"
    write_capture(PATTERNS["input-bound"](), capture)
    common = ("--job-id", "job", "--source", str(capture), "--duration-hours", "100")
    result = estimate_z(*common, "--output", "json")
    assert result.returncode == 0, result.stderr
    diagnoses = json.loads(result.stdout)["diagnoses"]
    assert "input-bound" in [d["name"] for d in diagnoses]
    assert all(set(d) == {"name", "evidence", "suggestion"} for d in diagnoses)
    table = estimate_z(*common)
    assert table.returncode == 0, table.stderr
    assert "diagnosis: input-bound: SMs idle in 60% of samples" in table.stdout


def test_cli_json_diagnoses_are_empty_for_a_healthy_job_and_null_without_telemetry() -> None:
    healthy = estimate_z(
        "--job-id", "gpt-1.3b-a100-dp8", "--source", "example", "--duration-hours", "100", "--output", "json"
    )  # fmt: skip
    assert healthy.returncode == 0, healthy.stderr
    assert json.loads(healthy.stdout)["diagnoses"] == []
    calculator = estimate_z("--duration-hours", "10", "--algorithm", "heuristic=30:10", "--output", "json")
    assert calculator.returncode == 0, calculator.stderr
    assert json.loads(calculator.stdout)["diagnoses"] is None


def test_metrics_export_one_gauge_per_checked_rule() -> None:
    bubbles = PATTERNS["pipeline-bubbles"]().assign(**{JOB_ID: "pp8"})
    no_sm = simulated(HEALTHY, "smi").copy()
    for signal in SIGNALS:
        if signal not in ("gpu_util_ratio", "mem_used_bytes", "mem_total_bytes", "power_watts"):
            no_sm[signal] = np.nan
    summary = summarize_gpus(pd.concat([bubbles, no_sm], ignore_index=True))
    jobs = tuple(pipeline.estimate(summary))

    def exported(detail: bool) -> dict[tuple[str, str], float]:
        state = ExporterState("prometheus")
        state.publish(Snapshot(jobs, detail=detail), 0.1)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ZestCollector(state, version="test"))
        text = generate_latest(registry).decode()
        return {
            (s.labels["job_id"], s.labels["diagnosis"]): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == ZEST_DIAGNOSIS
        }

    # By default only the rules that fire, each 1; with detail, every checked rule, 0 where silent.
    firing = exported(detail=False)
    assert set(firing.values()) == {1.0}
    assert {rule for (job, rule) in firing if job == "pp8"} == set(names(features_of(bubbles)))
    gauge = exported(detail=True)
    assert gauge[("pp8", "pipeline-bubbles")] == 1.0
    assert {rule for (job, rule) in gauge if job == "pp8"} == set(RULE_NAMES)
    assert sum(v for (job, _), v in gauge.items() if job == "pp8") == len(names(features_of(bubbles)))
    # without SM activity only the stragglers rule is checked: the others have no series
    assert {rule for (job, rule) in gauge if job == "smi"} == {"stragglers"}
