"""The exporter: batched Prometheus summaries, estimates, the collector's output, faults, node agent, HTTP.

The model is the shipped one; sources are real (a real Prometheus, the
bundled captures) or fake only at their boundary (the NVML driver, /proc).
"""

from __future__ import annotations

import base64
import errno
import logging
import math
import re
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bcrypt
import pandas as pd
import pytest
import requests
from fake_nvml import FakeClock, healthy_h100x2
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from promserver import Dataset, prometheus_dataset, require_binaries  # noqa: F401  (a fixture)

from collectors.errors import ConfigError, InputError, PortInUse, SourceQueryError, SourceUnavailable
from collectors.nvml import NvmlSource
from collectors.prometheus import PrometheusAuth, PrometheusSource
from collectors.schema import JOB_ID
from collectors.sources import example_jobs, read_job
from estimator.cli.main import main
from estimator.cli.options import HPC_JOB_MAPPING_DIR_ENV
from estimator.cli.serve import make_source, parse_listen, serve
from estimator.decision.algorithms import capture_shares
from estimator.features.diagnoses import RULE_NAMES
from estimator.features.extract import features_frame, summarize_gpus
from estimator.model.default import default_model, z_intervals_for
from estimator.serving import http as http_module
from estimator.serving.collector import ExporterState, ZestCollector, estimate_jobs
from estimator.serving.config import ServeConfig, load_config, parse_config
from estimator.serving.http import RenderedMetrics, WebConfig, build_server, load_web_config
from estimator.serving.runner import ClusterSummaries, NodeSummaries, Runner, failure_reason

EXAMPLE_TOML = Path(__file__).parent.parent / "grafana" / "zest.example.toml"


def example_summary(jobs: list[str] | None = None) -> pd.DataFrame:
    frames = [read_job("example", job).frame for job in (jobs or example_jobs())]
    return summarize_gpus(pd.concat(frames, ignore_index=True))


def estimator(features: pd.DataFrame) -> list:  # the real model, batched
    return z_intervals_for(features)


SHARES = capture_shares(default_model().capture_shares())


def render(state: ExporterState) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ZestCollector(state, coverage_ratio=0.8, version="test"))
    return generate_latest(registry).decode()


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def jobs_in(text: str) -> set[str]:
    return {dict(labels)["job_id"] for labels in samples(text, "zest_job_z_expected_ratio")}


class FakeSummaries:
    """A summary source whose answers a test scripts: a frame, or an error to raise."""

    kind = "prometheus"
    recording_rules_used = None

    def __init__(self) -> None:
        self.answers: list[pd.DataFrame | Exception] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def summaries(self) -> pd.DataFrame:
        self.entered.set()
        self.release.wait(10)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def runner_for(source: FakeSummaries | NodeSummaries, config: ServeConfig | None = None) -> Runner:
    state = ExporterState(source.kind)
    return Runner(source, state, config or ServeConfig(), estimator, SHARES, interval_seconds=1.0)


# --- batched Prometheus summaries -----------------------------------------------------------------


def test_batched_summaries_equal_the_per_job_ones(prometheus_dataset: Dataset) -> None:  # noqa: F811
    source = PrometheusSource(prometheus_dataset.url)
    end = datetime.now(UTC)
    window = 11 * 3600.0
    found = source.summarize_jobs(window, end)
    assert set(found.summary[JOB_ID]) == set(prometheus_dataset.jobs)
    for job_id in prometheus_dataset.jobs:
        one = source.summarize_job(job_id, datetime.fromtimestamp(end.timestamp() - window, UTC), end)
        mine = found.summary[found.summary[JOB_ID] == job_id].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, one.summary, check_exact=False, rtol=1e-9)
    # A fixed number of queries, not one set per job: nine jobs of two exporter families take about 35 per
    # family (one per statistic and reading, plus the listings), as one job of each would.
    assert found.queries <= 80


def test_batched_summaries_of_an_empty_window(prometheus_dataset: Dataset) -> None:  # noqa: F811
    source = PrometheusSource(prometheus_dataset.url)
    found = source.summarize_jobs(60.0, datetime(2020, 1, 1, tzinfo=UTC))
    assert found.summary.empty
    with pytest.raises(SourceQueryError, match="positive"):
        source.summarize_jobs(0.0)


# --- estimates and the collector ------------------------------------------------------------------


def test_z_interval_for_one_row_equals_the_batch() -> None:
    features = features_frame(example_summary())
    batch = z_intervals_for(features)
    assert [z_intervals_for(features.iloc[[i]])[0] for i in range(len(features))] == batch


def test_snapshot_holds_every_job_with_its_decision() -> None:
    config = parse_config({"defaults": {"duration_hours": 100, "reuse": 8}})
    snapshot = estimate_jobs(example_summary(), config, estimator, SHARES, taken_at_seconds=1.0)
    assert [j.job_id for j in snapshot.jobs] == example_jobs()
    for job in snapshot.jobs:
        assert job.decision.job.duration_hours == 100 and job.decision.job.reuse == 8
        assert job.decision.job.gpus == job.features["gpus"]
        assert {a.candidate.name for a in job.decision.assessments} == {
            "heuristic",
            "black-box",
            "exhaustive",
        }


def rendered(config: ServeConfig, summary: pd.DataFrame | None = None) -> tuple[str, list]:
    """The text a scrape gets after one cycle over ``summary`` (the example jobs), and the snapshot's jobs."""
    state = ExporterState("prometheus")
    snapshot = estimate_jobs(
        example_summary() if summary is None else summary, config, estimator, SHARES, taken_at_seconds=1.0
    )
    state.publish(snapshot, 0.5)
    return render(state), list(snapshot.jobs)


DETAIL = ServeConfig(detail=True)


@pytest.mark.parametrize("config", [ServeConfig(), DETAIL], ids=["default", "detail"])
def test_metrics_pass_promtool(config: ServeConfig) -> None:
    _, promtool = require_binaries()
    text, _ = rendered(config)
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0 and checked.stdout == "" and checked.stderr == "", (
        checked.stdout + checked.stderr
    )


def test_metrics_carry_base_units() -> None:
    text, jobs = rendered(DETAIL)
    snapshot_jobs = jobs
    job = example_jobs()[0]
    estimate = snapshot_jobs[0]
    z = samples(text, "zest_job_z_expected_ratio")
    assert z[(("bound", "mid"), ("job_id", job))] == pytest.approx(estimate.z_percent.mid / 100)
    exploration = samples(text, "zest_job_exploration_gpu_seconds")
    heuristic = next(a for a in estimate.decision.assessments if a.candidate.name == "heuristic")
    assert exploration[(("algorithm", "heuristic"), ("job_id", job))] == pytest.approx(
        heuristic.exploration_gpu_hours * 3600
    )
    verdicts = samples(text, "zest_job_verdict")
    per_job_algorithm = {
        k: v for k, v in verdicts.items() if ("job_id", job) in k and ("algorithm", "heuristic") in k
    }
    assert list(per_job_algorithm.values()) == [1.0]  # one series: the verdict that holds, as a label
    assert (("verdict", heuristic.verdict.value)) in next(iter(per_job_algorithm))
    assert (
        samples(text, "zest_build_info")[(("python_version", samples_python(text)), ("version", "test"))] == 1
    )
    assert samples(text, "zest_gpu_sm_active_ratio")  # detail: per-GPU series
    assert len(samples(text, "zest_job_idle_share_ratio")) == len(example_jobs())
    diagnoses = samples(text, "zest_job_diagnosis")  # detail: every rule of every job checked, 1 or 0
    for estimate in snapshot_jobs:
        found = {d.name for d in estimate.diagnoses}
        assert {
            rule: diagnoses[(("diagnosis", rule), ("job_id", estimate.job_id))] for rule in RULE_NAMES
        } == {rule: float(rule in found) for rule in RULE_NAMES}
    assert len(diagnoses) == len(example_jobs()) * len(RULE_NAMES)


def series_per_job(text: str) -> dict[str, Counter[str]]:
    """Each job's series (samples labelled with its job_id), counted by metric name."""
    found: dict[str, Counter[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "job_id" in sample.labels:
                found.setdefault(sample.labels["job_id"], Counter())[sample.name] += 1
    return found


def test_a_job_has_at_most_25_series_by_default_and_detail_brings_the_rest() -> None:
    """By default a job has 24 series and one per diagnosis that fires: Z_e's interval, each algorithm's
    Z (mid), Z_break, R_break, net saving and verdict, its recommendation (G·T·R's label), T (with its
    source), R, G, the bounds from its elapsed time; ``detail`` adds the features, per-GPU means, each
    algorithm's Z interval and exploration, the elapsed time and the diagnoses checked and silent.
    Counted on a rendered export of the example jobs (8 and 16 GPUs) and of a job whose diagnoses fire."""
    from collectors.schema import SIGNALS
    from estimator.features.extract import FEATURES
    from estimator.serving import metrics as m

    # The three example jobs (none diagnosed), and one whose telemetry is made half idle, so that
    # diagnoses fire and are counted.
    summary = example_summary()
    fired = summary[summary[JOB_ID] == example_jobs()[0]].copy()
    fired[JOB_ID] = "diagnosed"
    for column in [c for c in fired.columns if c.startswith(("sm_active", "tensor_active", "gpu_util"))]:
        fired.loc[fired.index[: len(fired) // 2], column] = 0.01
    summary = pd.concat([summary, fired], ignore_index=True)
    default_text, jobs = rendered(ServeConfig(), summary)
    detail_text, _ = rendered(DETAIL, summary)
    default, detail = series_per_job(default_text), series_per_job(detail_text)
    assert set(default) == set(detail) == {j.job_id for j in jobs}
    algorithms = 3
    # Z_e; per algorithm Z, Z_break, R_break, net saving, verdict; G·T·R (the recommendation); T, R, G;
    # the run's saving lower bound and the least R_break at the elapsed time: 24, then one per diagnosis.
    core = 3 + 5 * algorithms + 1 + 3 + 2
    assert core == 24
    for estimate in jobs:
        mine = default[estimate.job_id]
        assert sum(mine.values()) == core + len(estimate.diagnoses), (estimate.job_id, mine)
        if len(estimate.diagnoses) <= 1:
            assert sum(mine.values()) <= 25, (estimate.job_id, mine)
        assert mine[m.ZEST_DIAGNOSIS] == len(estimate.diagnoses)
        assert not any(name.startswith("zest_gpu_") for name in mine)
        for name in (m.ZEST_ELAPSED, m.ZEST_EXPLORATION, *map(m.zest_feature_metric, FEATURES)):
            assert name not in mine
        # The switch brings the features, the per-GPU means and the rest back.
        theirs = detail[estimate.job_id]
        gpus = int(estimate.features["gpus"])
        assert all(theirs[m.zest_gpu_metric(s)] == gpus for s in SIGNALS)
        assert {name for name in theirs if name.startswith("zest_job_")} >= {
            m.zest_feature_metric(f) for f in FEATURES if not math.isnan(estimate.features.get(f, math.nan))
        }
        assert theirs[m.ZEST_ELAPSED] == 1 and theirs[m.ZEST_EXPLORATION] == algorithms
        assert theirs[m.ZEST_Z_ALGORITHM] == 3 * algorithms and theirs[m.ZEST_DIAGNOSIS] == len(RULE_NAMES)
        assert sum(theirs.values()) > 4 * sum(mine.values())
    assert any(estimate.diagnoses for estimate in jobs)  # a diagnosis that fires is counted


def test_each_algorithm_exports_its_own_z_and_each_job_counts_once_at_stake() -> None:
    """The verdict compares an algorithm's own Z (its share of Z_e), not Z_e, with its Z_break: both exported
    (the interval with detail) and consistent."""
    config = parse_config({"serve": {"detail": True}, "defaults": {"duration_hours": 500, "reuse": 20}})
    snapshot = estimate_jobs(example_summary(), config, estimator, SHARES, taken_at_seconds=1.0)
    state = ExporterState("prometheus")
    state.publish(snapshot, 0.5)
    text = render(state)
    z_own = samples(text, "zest_job_algorithm_z_ratio")
    z_break = samples(text, "zest_job_z_break_ratio")
    verdicts = samples(text, "zest_job_verdict")
    at_stake = samples(text, "zest_job_gpu_seconds_at_stake")
    recommendations = set()
    for estimate in snapshot.jobs:
        jid = estimate.job_id
        for a in estimate.decision.assessments:
            name = a.candidate.name
            z = {
                b: z_own[(("algorithm", name), ("bound", b), ("job_id", jid))] for b in ("low", "mid", "high")
            }
            assert z == pytest.approx(
                {b: getattr(a.candidate.z_percent, b) / 100 for b in ("low", "mid", "high")}
            )
            assert z["mid"] == pytest.approx(estimate.z_percent.mid / 100 * SHARES.shares[name])
            brk = z_break[(("algorithm", name), ("job_id", jid))]
            # The exported figures give the exported verdict: like is compared with like.
            expected = "proceed" if z["low"] > brk else "does-not-pay" if z["high"] < brk else "marginal"
            assert verdicts[(("algorithm", name), ("job_id", jid), ("verdict", expected))] == 1.0
            assert sum(("algorithm", name) in k and ("job_id", jid) in k for k in verdicts) == 1
        mine = {k: v for k, v in at_stake.items() if ("job_id", jid) in k}
        recommendation = estimate.decision.recommendation or "none"
        assert list(mine) == [
            (("job_id", jid), ("recommendation", recommendation))
        ]  # once, by recommendation
        recommendations.add(recommendation)
    assert "none" in recommendations and len(recommendations) > 1  # both kinds occur in this fleet
    help_text = next(f for f in text_string_to_metric_families(text) if f.name == "zest_job_z_break_ratio")
    assert "(0-1)" not in help_text.documentation and "above 1" in help_text.documentation


def test_readme_metrics_table_names_the_labels_zest_exports() -> None:
    """Every metric the README's table names carries exactly the labels the table gives it (with detail on,
    so that every series is there)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme.split("**Metrics**", 1)[1].split("\n\n", 2)[1]
    state = ExporterState("prometheus")
    snapshot = estimate_jobs(example_summary(), DETAIL, estimator, SHARES, taken_at_seconds=1.0)
    state.publish(replace(snapshot, recording_rules_used=True), 0.5)
    state.fail("source_unavailable", 0.1)
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(render(state)):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    checked = 0
    for row in table.splitlines()[2:]:
        names_cell, labels_cell = row.split("|")[1:3]
        labels = {part.split("=")[0].strip() for part in labels_cell.split(",") if part.strip()}
        for name in re.findall(r"`(zest_[a-z_]+)`", names_cell):
            assert exported[name] == labels, (
                f"{name}: README {sorted(labels)}, exported {sorted(exported[name])}"
            )
            checked += 1
    assert checked >= 15


def samples_python(text: str) -> str:
    return dict(next(iter(samples(text, "zest_build_info"))))["python_version"]


def test_fresh_exporter_serves_its_health_and_no_jobs() -> None:
    text = render(ExporterState("nvml"))
    assert jobs_in(text) == set()
    assert samples(text, "zest_estimates_stale") == {(): 0.0}
    # The reasons every source can fail with are there from 0, so that rate() has a series; no made-up one.
    assert samples(text, "zest_source_errors_total") == {
        (("reason", "source_query_error"), ("source", "nvml")): 0.0,
        (("reason", "source_unavailable"), ("source", "nvml")): 0.0,
    }
    assert samples(text, "zest_cycles_total") == {(("source", "nvml"),): 0.0}
    assert not samples(text, "zest_last_success_timestamp_seconds")


def test_a_job_that_ends_loses_its_series() -> None:
    source = FakeSummaries()
    source.answers = [example_summary(), example_summary(example_jobs()[1:])]
    runner = runner_for(source)
    assert runner.run_once()
    assert jobs_in(render(runner.state)) == set(example_jobs())
    assert runner.run_once()
    text = render(runner.state)
    assert jobs_in(text) == set(example_jobs()[1:])
    gone = example_jobs()[0]
    assert not any(gone in line for line in text.splitlines() if not line.startswith("#"))


def test_source_down_keeps_the_estimates_marks_them_stale_and_recovers() -> None:
    source = FakeSummaries()
    source.answers = [
        example_summary(),
        SourceUnavailable("cannot reach Prometheus at http://x:9090 (connection refused)"),
        SourceQueryError("Prometheus answered HTTP 503"),
        example_summary(example_jobs()[:1]),
    ]
    runner = runner_for(source)
    assert runner.run_once()
    before = render(runner.state)
    assert not runner.run_once() and not runner.run_once()
    during = render(runner.state)
    assert samples(during, "zest_job_z_expected_ratio") == samples(before, "zest_job_z_expected_ratio")
    assert samples(during, "zest_estimates_stale") == {(): 1.0}
    errors = samples(during, "zest_source_errors_total")
    assert errors[(("reason", "source_unavailable"), ("source", "prometheus"))] == 1
    assert errors[(("reason", "source_query_error"), ("source", "prometheus"))] == 1
    assert samples(during, "zest_last_success_timestamp_seconds") == samples(
        before, "zest_last_success_timestamp_seconds"
    )
    assert runner.run_once()
    after = render(runner.state)
    assert samples(after, "zest_estimates_stale") == {(): 0.0}
    assert jobs_in(after) == set(example_jobs()[:1])
    assert samples(after, "zest_cycles_total") == {(("source", "prometheus"),): 4.0}


def test_a_scrape_during_a_cycle_sees_the_whole_previous_snapshot() -> None:
    source = FakeSummaries()
    source.answers = [example_summary(), example_summary(example_jobs()[:1])]
    runner = runner_for(source)
    runner.run_once()
    before = render(runner.state)
    source.release.clear()
    source.entered.clear()
    cycle = threading.Thread(target=runner.run_once)
    cycle.start()
    assert source.entered.wait(5)
    during = render(runner.state)  # the cycle is blocked inside the source
    source.release.set()
    cycle.join(10)
    strip = [line for line in before.splitlines() if "zest_build_info" not in line]
    assert [line for line in during.splitlines() if "zest_build_info" not in line] == strip
    assert jobs_in(render(runner.state)) == set(example_jobs()[:1])


def test_a_bug_in_a_cycle_is_counted_and_the_exporter_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    """Never dies of one bad answer: an error zest does not expect fails the cycle, not the exporter."""
    source = FakeSummaries()
    source.answers = [example_summary(), RuntimeError("a bug"), RuntimeError("a bug"), example_summary()]
    runner = runner_for(source)
    assert runner.run_once()
    with caplog.at_level(logging.INFO, logger="estimator.serving.runner"):
        assert not runner.run_once() and not runner.run_once()
        stale = render(runner.state)
        assert runner.run_once()
    assert jobs_in(stale) == set(example_jobs())  # the last estimates are still served
    failures = samples(stale, "zest_source_errors_total")
    assert any(dict(k).get("reason") == "internal_error" and v == 2 for k, v in failures.items()), failures
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is not None  # once, with the traceback
    assert any("recovered after 2 failed cycle(s)" in r.getMessage() for r in caplog.records)


def test_failure_reason_is_the_error_class_in_snake_case() -> None:
    assert failure_reason(SourceUnavailable("x")) == "source_unavailable"
    assert failure_reason(ConfigError("x")) == "config_error"


# --- configuration --------------------------------------------------------------------------------


def test_example_config_overrides_by_namespace_and_name() -> None:
    config = load_config(EXAMPLE_TOML)
    assert config.window_seconds == 3600
    nightly = config.for_job("ml/sft-nightly-17")
    assert (nightly.duration_hours, nightly.reuse) == (6.0, 30.0)
    assert config.for_job("other/sft-nightly-17").duration_hours == 24.0  # namespace must match too
    assert dict(config.for_job("pretrain-981").algorithms) == {"heuristic": 30, "black-box": 200}
    assert config.for_job("pretrain-981x").duration_hours == 24.0  # the pattern matches whole


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"defaults": {"duration_hour": 3}}, "unknown key"),
        ({"defaults": {"duration_hours": -1}}, "duration_hours"),
        ({"defaults": {"reuse": 0.5}}, "reuse"),
        ({"defaults": {"engineer_hours": 10}}, "gpu_hour_cost"),
        ({"defaults": {"algorithms": {"grid": 3}}}, "unknown algorithm"),
        ({"defaults": {"gpus": 0}}, "gpus"),
        ({"override": [{"duration_hours": 3}]}, "match"),
        ({"override": [{"match": {"user": "x"}, "reuse": 2}]}, "cannot match on"),
        ({"override": [{"match": {"job_id": "("}, "reuse": 2}]}, "not a regular expression"),
        ({"serve": {"window_seconds": 0}}, "window_seconds"),
        ({"serve": {"detail": "yes"}}, "detail must be true or false"),
        ({"serve": {"gpu_series": True}}, "unknown key.s. gpu_series; use window_seconds, detail"),
        ({"serve": {"details": True}}, "unknown key"),
        ({"grafana": {}}, "unknown section"),
    ],
)
def test_bad_config_names_the_key(document: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(document, "zest.toml")


def test_detail_is_off_by_default() -> None:
    assert parse_config({}).detail is False and ServeConfig().detail is False
    assert parse_config({"serve": {"detail": True}}).detail is True
    assert load_config(EXAMPLE_TOML).detail is False


def test_unreadable_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[defaults\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


# --- node agent against the fake NVML driver ------------------------------------------------------


def test_node_agent_exports_the_jobs_on_its_gpus(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = healthy_h100x2(clock)
    fake.gpus[0].pids = [4242]
    fake.gpus[1].pids = [5151]
    proc = tmp_path / "proc"
    for pid, cgroup in (
        (4242, "0::/system.slice/slurmstepd.scope/job_777/step_0/user/task_0\n"),
        (5151, "0::/\n"),
    ):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(cgroup)
        (proc / str(pid) / "stat").write_text(f"{pid} (python3) S 1 {pid} 1 0 -1 0 0 0 0 0\n")
    mapping = tmp_path / "hpc-jobs"
    mapping.mkdir()
    (mapping / "1").write_text("slurm-888\n")
    nvml = NvmlSource(nvml=fake, clock=clock.time, sleep=clock.sleep, host="gpu-node-3")
    node = NodeSummaries(
        nvml,
        window_seconds=30.0,
        sample_seconds=10.0,
        hpc_job_dir=mapping,
        gpustat_dir=tmp_path / "none",
        proc_root=proc,
    )
    runner = runner_for(node, DETAIL)
    assert runner.run_once(), runner.state.health().errors
    text = render(runner.state)
    assert jobs_in(text) == {"777", "slurm-888"}
    sm = samples(text, "zest_gpu_sm_active_ratio")
    model = ("gpu_model", "NVIDIA H100 80GB HBM3")
    assert sm == {
        (("gpu", "0"), model, ("host", "gpu-node-3"), ("job_id", "777")): pytest.approx(0.92),
        (("gpu", "1"), model, ("host", "gpu-node-3"), ("job_id", "slurm-888")): pytest.approx(0.92),
    }
    assert samples(text, "zest_job_samples_per_gpu_min")[(("job_id", "777"),)] == 10
    assert runner.run_once()  # the rolling window keeps 30 s: 20 samples now
    assert samples(render(runner.state), "zest_job_samples_per_gpu_min")[(("job_id", "777"),)] == 20
    (mapping / "1").unlink()  # the epilog removed slurm-888's mapping: the job ended
    assert runner.run_once()
    assert jobs_in(render(runner.state)) == {"777"}
    for _ in range(3):
        runner.run_once()
    assert samples(render(runner.state), "zest_job_samples_per_gpu_min")[(("job_id", "777"),)] == 30


# --- HTTP: listen address, TLS, basic auth --------------------------------------------------------


@pytest.fixture
def served_state() -> Iterator[tuple[ExporterState, CollectorRegistry]]:
    state = ExporterState("prometheus")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ZestCollector(state, version="test"))
    yield state, registry


def _serve(registry: CollectorRegistry, web: WebConfig) -> tuple[str, object]:
    server = build_server(("127.0.0.1", 0), registry, web)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"{'https' if web.tls else 'http'}://127.0.0.1:{server.server_port}/metrics", server


def test_listen_addresses_parse() -> None:
    assert parse_listen(":10940") == ("0.0.0.0", 10940)
    assert parse_listen("127.0.0.1:9") == ("127.0.0.1", 9)
    assert parse_listen("[::1]:10940") == ("::1", 10940)
    for bad in ("10940", "host:port", "[::1]10940", "h:70000"):
        with pytest.raises(Exception, match="ADDR:PORT"):
            parse_listen(bad)


def test_tls_and_basic_auth_from_a_web_config(tmp_path: Path, served_state: tuple) -> None:
    _, registry = served_state
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp_path / "key.pem"),
         "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    config = tmp_path / "web.yml"
    config.write_text(
        "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
        f"basic_auth_users:\n  prom: {hashed}\n"
    )
    web = load_web_config(config)
    url, server = _serve(registry, web)
    try:
        verify = str(tmp_path / "cert.pem")
        assert requests.get(url, verify=verify, timeout=5).status_code == 401
        assert requests.get(url, verify=verify, auth=("prom", "wrong"), timeout=5).status_code == 401
        bad_header = {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}
        assert requests.get(url, verify=verify, headers=bad_header, timeout=5).status_code == 401
        answer = requests.get(url, verify=verify, auth=("prom", "s3cret"), timeout=5)
        assert answer.status_code == 200 and "zest_build_info" in answer.text
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, timeout=5)  # the self-signed certificate is not trusted by default
    finally:
        server.shutdown()  # type: ignore[attr-defined]
        server.server_close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("basic_auth_users:\n  prom: plain-password\n", "not a bcrypt hash"),
        ("tls_server_config:\n  cert_file: c.pem\n", "cert_file and key_file"),
        ("http_server_config:\n  http2: false\n", "does not support"),
        ("- a list\n", "must be a mapping"),
    ],
)
def test_bad_web_config(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_web_config(path)


def test_a_port_in_use_is_port_in_use(served_state: tuple) -> None:
    _, registry = served_state
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=rf"127\.0\.0\.1:{port}: the port is in use.*--listen") as caught:
            build_server(("127.0.0.1", port), registry, WebConfig())
    assert caught.value.exit_code == 9
    assert "\n" not in str(caught.value)


def test_a_port_without_permission_is_port_in_use(
    served_state: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Binding a port below 1024 needs privileges (the tests may run as root, so the refusal is faked)."""
    _, registry = served_state

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(http_module, "make_server", refuse)
    with pytest.raises(PortInUse, match=r"0\.0\.0\.0:80: no permission.*--listen"):
        build_server(("0.0.0.0", 80), registry, WebConfig())


def test_an_address_not_of_this_host_is_bad_input(
    served_state: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, registry = served_state

    def refuse(*args: object, **kwargs: object) -> None:  # Linux's answer unless ip_nonlocal_bind is set
        raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")

    monkeypatch.setattr(http_module, "make_server", refuse)
    with pytest.raises(InputError, match=r"192\.0\.2\.1:10940 \(Cannot assign.*--listen") as caught:
        build_server(("192.0.2.1", 10940), registry, WebConfig())
    assert not isinstance(caught.value, PortInUse)


def test_zest_serve_on_a_port_in_use_exits_9_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["serve", "--source", "prometheus=http://127.0.0.1:9", "--listen", f"127.0.0.1:{port}"]
        with pytest.raises(SystemExit) as ended:
            main(argv)
    assert ended.value.code == 9
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"127.0.0.1:{port}" in err


def test_serve_hands_its_source_options_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HPC_JOB_MAPPING_DIR_ENV, str(tmp_path))
    assert serve.make_context("serve", ["--source", "nvml"]).params["hpc_job_dir"] == tmp_path
    config = load_config(None)
    timing = {"interval_seconds": 60.0, "sample_seconds": 1.0, "step_seconds": 30.0}
    node = make_source("nvml", config, hpc_job_dir=tmp_path, **timing)
    assert isinstance(node, NodeSummaries) and node.hpc_job_dir == tmp_path
    auth = PrometheusAuth(token="t")
    cluster = make_source("prometheus=http://127.0.0.1:9", config, prometheus_auth=auth, **timing)
    assert isinstance(cluster, ClusterSummaries) and cluster.source.auth == auth


def test_missing_tls_files_are_a_config_error(tmp_path: Path, served_state: tuple) -> None:
    _, registry = served_state
    with pytest.raises(ConfigError, match="TLS certificate"):
        build_server(("127.0.0.1", 0), registry, WebConfig(tmp_path / "c.pem", tmp_path / "k.pem"))


def test_metrics_are_rendered_once_a_cycle_and_served_as_rendered() -> None:
    """zest serve renders /metrics after each cycle; scrapes between cycles get that rendering as is."""
    source = FakeSummaries()
    source.answers = [example_summary(), example_summary(example_jobs()[:1])]
    runner = runner_for(source)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ZestCollector(runner.state, version="test"))
    rendered = RenderedMetrics(registry)
    runner.after_cycle = rendered.refresh
    server = build_server(("127.0.0.1", 0), rendered, WebConfig())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        assert jobs_in(requests.get(url, timeout=5).text) == set()  # rendered at start: no cycle yet
        assert runner.run_once()
        first = requests.get(url, timeout=5)  # requests asks for gzip and inflates it
        assert first.headers["Content-Type"].startswith("text/plain")
        assert first.headers["Content-Encoding"] == "gzip"
        plain = requests.get(url, timeout=5, headers={"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in plain.headers and plain.text == first.text
        assert jobs_in(first.text) == set(example_jobs())
        assert requests.get(url, timeout=5).text == first.text  # no new cycle, the same rendering
        assert runner.run_once()
        assert jobs_in(requests.get(url, timeout=5).text) == set(example_jobs()[:1])
        assert requests.get(url.replace("/metrics", "/other"), timeout=5).status_code == 404
    finally:
        server.shutdown()


@pytest.mark.parametrize(("used", "shown"), [(True, {(): 1.0}), (False, {(): 0.0}), (None, {})])
def test_whether_the_recording_rules_were_read_is_exported(
    used: bool | None, shown: dict[Any, float]
) -> None:
    state = ExporterState("prometheus")
    snapshot = estimate_jobs(example_summary(), ServeConfig(), estimator, SHARES, taken_at_seconds=1.0)
    state.publish(replace(snapshot, recording_rules_used=used), 0.5)
    assert samples(render(state), "zest_source_recording_rules_used") == shown
