"""zest serve without a T: the bounds a running job's elapsed time gives, whatever T is.

A job has run for its elapsed time, so T >= elapsed: R_break at T = elapsed is an
upper bound ("pays within at most X runs") and G · elapsed · Z_e low a lower bound
of the GPU time one run saves. The first sample of each job is asked of
Prometheus once per job (one query for the new jobs of a cycle), and whether T was
configured is the ``t_source`` label of the duration gauge. The elapsed time itself is a detail series
(``[serve] detail = true``); the bounds are there by default.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from promserver import (  # noqa: F401  (prometheus_dataset: a fixture)
    SCRAPE_SECONDS,
    Dataset,
    backfill,
    dcgm_gpu,
    dcgm_labels,
    jobstats_gpu,
    jobstats_labels,
    prometheus_dataset,
    require_binaries,
    start_prometheus,
    write_openmetrics,
)

from collectors.errors import SourceQueryError
from collectors.prometheus import PrometheusSource
from collectors.schema import JOB_ID, WINDOW_END, WINDOW_START
from collectors.sources import example_jobs, read_job
from estimator.decision.algorithms import CaptureShares
from estimator.decision.breakeven import ZInterval
from estimator.features.extract import summarize_gpus
from estimator.serving import metrics as m
from estimator.serving.collector import ExporterState, FirstSamples, ZestCollector, estimate_jobs
from estimator.serving.config import ServeConfig, parse_config
from estimator.serving.runner import ClusterSummaries, Runner

JOB = example_jobs()[0]
#: Each algorithm's share of Z_e, round for hand computation.
SHARES = CaptureShares({"heuristic": 0.5, "black-box": 0.8, "exhaustive": 1.0}, "test")
Z_E = ZInterval(10.0, 20.0, 30.0)  # percent: low, mid, high
BEGAN = datetime(2026, 11, 30, 6, 0, tzinfo=UTC).timestamp()
HOUR = 3600.0
DETAIL = ServeConfig(detail=True)  # with the elapsed time itself


def fixed_z(features: pd.DataFrame) -> list[ZInterval]:
    return [Z_E] * len(features)


def summary_of(job: str = JOB, *, first: float = BEGAN, last: float = BEGAN + 10 * HOUR) -> pd.DataFrame:
    """The example job's GPU summary, its window moved to run from ``first`` to ``last`` (Unix seconds)."""
    summary = summarize_gpus(read_job("example", JOB).frame).copy()
    summary[JOB_ID] = job
    summary[WINDOW_START] = pd.Timestamp(first, unit="s", tz="UTC")
    summary[WINDOW_END] = pd.Timestamp(last, unit="s", tz="UTC")
    return summary


def render(state: ExporterState) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ZestCollector(state, version="test"))
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def published(snapshot_config: ServeConfig, summary: pd.DataFrame, **kwargs: object) -> dict:
    state = ExporterState("prometheus")
    snapshot = estimate_jobs(summary, snapshot_config, fixed_z, SHARES, taken_at_seconds=1.0, **kwargs)  # type: ignore[arg-type]
    state.publish(snapshot, 0.1)
    return render(state)


# --- the bounds, by hand --------------------------------------------------------------------------


def test_bounds_of_a_job_with_known_elapsed_time_gpus_and_z() -> None:
    """10 h elapsed on G GPUs, Z_e 10/20/30 %, t = 25 min: every figure worked out by hand."""
    summary = summary_of()
    gpus = summary["gpu"].nunique()
    assert gpus == 8
    found = published(DETAIL, summary)
    job = (("job_id", JOB),)
    assert found[m.ZEST_ELAPSED] == {job: 10 * HOUR}
    # Lower bound of one run's saving: G · elapsed · Z_e low = 8 · 10 h · 10 % = 8 GPU-hours.
    assert found[m.ZEST_RUN_SAVING_LOWER_BOUND] == {job: pytest.approx(8 * HOUR)}
    # R_break at T = 10 h, Z mid = 20 % x share: N · t / (T · Z/100).
    # heuristic: 30 · 25/60 h = 12.5 h over 10 h · 10 % = 1 h: 12.5 runs;
    # black-box: 500 · 25/60 = 208.33 h over 10 h · 16 % = 1.6 h: 130.2 runs;
    # exhaustive: 2000 · 25/60 = 833.33 h over 10 h · 20 % = 2 h: 416.7 runs.
    # Exported for the algorithm whose bound is least, labelled with it: heuristic's.
    snapshot = estimate_jobs(summary, DETAIL, fixed_z, SHARES, taken_at_seconds=1.0)
    r_break = snapshot.elapsed[JOB].r_break_at_elapsed
    assert r_break == pytest.approx(
        {"heuristic": 12.5, "black-box": 208.333333 / 1.6, "exhaustive": 833.333333 / 2}
    )
    assert found[m.ZEST_R_BREAK_AT_ELAPSED] == {
        (("algorithm", "heuristic"), ("job_id", JOB)): pytest.approx(12.5)
    }
    # Not configured: T is the built-in 24 h, said so by t_source; its R_break is below the bound.
    assert found[m.ZEST_DURATION] == {(("job_id", JOB), ("t_source", "default")): 24 * HOUR}
    at_t = {dict(k)["algorithm"]: v for k, v in found[m.ZEST_R_BREAK].items()}
    assert all(at_t[name] <= r_break[name] for name in r_break)
    # Without detail, the bounds stay and the elapsed time goes.
    plain = published(ServeConfig(), summary)
    assert not plain.get(m.ZEST_ELAPSED)
    for name in (m.ZEST_RUN_SAVING_LOWER_BOUND, m.ZEST_R_BREAK_AT_ELAPSED):
        assert plain[name] == found[name]


def test_bounds_do_not_depend_on_t_and_engineering_counts_in_r_break() -> None:
    """The bounds are the same whatever T the config gives; R_break at elapsed includes R_impl."""
    plain = published(DETAIL, summary_of())
    config = {"serve": {"detail": True}, "defaults": {"duration_hours": 500, "reuse": 9}}
    long = published(parse_config(config), summary_of())
    for name in (m.ZEST_ELAPSED, m.ZEST_R_BREAK_AT_ELAPSED, m.ZEST_RUN_SAVING_LOWER_BOUND):
        assert long[name] == plain[name]
    costly = parse_config(
        {"defaults": {"engineer_hours": 40, "gpu_hour_cost": 2.0, "engineer_hour_cost": 100.0}}
    )
    found = published(costly, summary_of())
    heuristic = found[m.ZEST_R_BREAK_AT_ELAPSED][(("algorithm", "heuristic"), ("job_id", JOB))]
    # R_impl = c_e · E / (c_g · G · T · Z/100) = 100 · 40 / (2 · 8 · 10 h · 10 %) = 250 runs.
    assert heuristic == pytest.approx(12.5 + 250)


def test_first_sample_given_by_the_source_is_earlier_than_the_window() -> None:
    """The window covers the last hour; the source says the job began two days ago: elapsed counts from it."""
    summary = summary_of(first=BEGAN + 9 * HOUR, last=BEGAN + 10 * HOUR)
    found = published(DETAIL, summary, first_samples={JOB: BEGAN - 38 * HOUR})
    assert found[m.ZEST_ELAPSED] == {(("job_id", JOB),): 48 * HOUR}
    assert found[m.ZEST_RUN_SAVING_LOWER_BOUND][(("job_id", JOB),)] == pytest.approx(8 * 48 * 0.1 * HOUR)


def test_a_job_with_one_sample_has_no_bounds() -> None:
    found = published(DETAIL, summary_of(first=BEGAN, last=BEGAN))
    assert m.ZEST_ELAPSED not in found or not found[m.ZEST_ELAPSED]
    assert not found.get(m.ZEST_RUN_SAVING_LOWER_BOUND) and not found.get(m.ZEST_R_BREAK_AT_ELAPSED)
    assert found[m.ZEST_DURATION]  # still weighed, with T


# --- where T came from: config overrides, Slurm, default ----------------------------------------


def test_t_source_default_config_slurm_and_the_override_wins() -> None:
    jobs = ["4001", "4002", "4003", "ml/sft-1"]
    summary = pd.concat([summary_of(job) for job in jobs], ignore_index=True)
    config = parse_config({"override": [{"match": {"job_id": "4003|ml/.*"}, "duration_hours": 100}]})
    scheduled = {"4002": {"duration_hours": 2.5, "reuse": 3.0}, "4003": {"duration_hours": 7.0}}
    found = published(config, summary, scheduled=scheduled)
    duration = {(dict(k)["job_id"], dict(k)["t_source"]): v / HOUR for k, v in found[m.ZEST_DURATION].items()}
    assert duration == {
        ("4001", "default"): 24.0,
        ("4002", "slurm"): 2.5,
        ("4003", "config"): 100.0,  # the override wins over Slurm's time limit
        ("ml/sft-1", "config"): 100.0,
    }
    # A [defaults] T is configured too; the bounds are exported for every job whatever T is.
    found = published(parse_config({"defaults": {"duration_hours": 48}}), summary)
    assert {(dict(k)["t_source"], v) for k, v in found[m.ZEST_DURATION].items()} == {("config", 48 * HOUR)}
    assert {dict(k)["job_id"] for k in found[m.ZEST_RUN_SAVING_LOWER_BOUND]} == set(jobs)
    # A reuse-only override leaves T's source alone.
    reuse_only = parse_config({"override": [{"match": {"job_id": "4001"}, "reuse": 5}]})
    assert reuse_only.for_job("4001").duration_source == "default"


def test_duration_source_is_not_a_key_of_the_file() -> None:
    from collectors.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"defaults": {"duration_source": "slurm"}})


# --- the first sample, found once per job --------------------------------------------------------


class LookingBack:
    """A summary source that can look back (as ClusterSummaries): scripted summaries, recorded questions."""

    kind = "prometheus"
    recording_rules_used = None

    def __init__(self, answers: list[pd.DataFrame], began: Mapping[str, float]) -> None:
        self.answers = answers
        self.began = began
        self.asked: list[list[str]] = []

    def summaries(self) -> pd.DataFrame:
        return self.answers.pop(0)

    def first_samples(self, job_ids: Sequence[str]) -> Mapping[str, float]:
        self.asked.append(list(job_ids))
        return {job: self.began[job] for job in job_ids if job in self.began}


def test_the_runner_asks_for_each_jobs_first_sample_once() -> None:
    a, b, c = (summary_of(job, first=BEGAN + 9 * HOUR) for job in ("a", "b", "c"))
    source = LookingBack(
        [pd.concat([a, b]), pd.concat([a, b]), pd.concat([a, b, c]), pd.concat([b, c]), pd.concat([a, b, c])],
        {"a": BEGAN - HOUR, "b": BEGAN, "c": BEGAN + HOUR},
    )
    runner = Runner(source, ExporterState("prometheus"), DETAIL, fixed_z, SHARES, 1.0)
    for _ in range(5):
        assert runner.run_once(), runner.state.health().errors
    # New jobs together in one question; none in a cycle without new jobs; a job gone and back is new.
    assert source.asked == [["a", "b"], ["c"], ["a"]]
    elapsed = render(runner.state)[m.ZEST_ELAPSED]
    assert elapsed == {(("job_id", j),): BEGAN + 10 * HOUR - began for j, began in source.began.items()}


def test_many_new_jobs_are_asked_in_batches_and_a_failed_question_again() -> None:
    """At most ``batch`` new jobs per cycle's one query; a query that fails leaves the cycle alone (the window
    stands in) and is asked again next cycle."""
    summary = pd.concat([summary_of(job, first=BEGAN + 9 * HOUR) for job in ("a", "b", "c")])
    source = LookingBack([], {"a": BEGAN, "b": BEGAN, "c": BEGAN})
    first_samples = FirstSamples(batch=2)
    assert first_samples.update(summary, source) == {"a": BEGAN, "b": BEGAN, "c": BEGAN + 9 * HOUR}
    assert first_samples.update(summary, source) == {"a": BEGAN, "b": BEGAN, "c": BEGAN}
    assert source.asked == [["a", "b"], ["c"]]
    first_samples.update(summary, source)
    assert len(source.asked) == 2  # nothing new: no query

    class Failing(LookingBack):
        def first_samples(self, job_ids: Sequence[str]) -> Mapping[str, float]:
            super().first_samples(job_ids)
            if len(self.asked) == 1:
                raise SourceQueryError("timed out")
            return super().first_samples(job_ids)

    failing = Failing([], {"d": BEGAN})
    first_samples = FirstSamples()
    d = summary_of("d", first=BEGAN + 9 * HOUR)
    assert first_samples.update(d, failing) == {"d": BEGAN + 9 * HOUR}
    assert first_samples.update(d, failing) == {"d": BEGAN}


def test_a_node_agent_keeps_the_earliest_sample_it_has_held() -> None:
    """Without a source that looks back, the first sample is the earliest window start seen, even after the
    rolling window has moved past it."""
    first_samples = FirstSamples()
    assert first_samples.update(summary_of("777", first=BEGAN, last=BEGAN + HOUR)) == {"777": BEGAN}
    later = summary_of("777", first=BEGAN + 5 * HOUR, last=BEGAN + 6 * HOUR)
    assert first_samples.update(later) == {"777": BEGAN}
    assert first_samples.update(summary_of("888", first=BEGAN + 5 * HOUR)) == {"888": BEGAN + 5 * HOUR}
    assert first_samples.update(later) == {"777": BEGAN + 5 * HOUR}  # 777 left and came back: new


def test_first_samples_of_every_job_in_one_query(prometheus_dataset: Dataset) -> None:  # noqa: F811
    """Each job's first sample to within 5 minutes, never earlier; one query for all the jobs, those that
    ended hours ago and the running ones, of both exporter families, whatever their ids hold."""
    source = PrometheusSource(prometheus_dataset.url)
    found = source.first_samples([*prometheus_dataset.jobs, "no-such-job"])
    assert found.queries == 1
    assert set(found.first_sample_seconds) == set(prometheus_dataset.jobs)
    for job_id, job in prometheus_dataset.jobs.items():
        first = min(float(s.times[0]) for s in job.series)
        assert first <= found.first_sample_seconds[job_id] < first + 300, job_id
    assert source.first_samples([]).queries == 0


def test_a_cluster_service_asks_prometheus_once_per_job(prometheus_dataset: Dataset) -> None:  # noqa: F811
    """zest serve's cycles against a real Prometheus: the running jobs' first samples in the first cycle's
    one query, none after; the elapsed time runs from them."""

    class Counted(PrometheusSource):
        first_sample_queries = 0

        def first_samples(self, job_ids, end=None):  # type: ignore[no-untyped-def]
            found = super().first_samples(job_ids, end)
            Counted.first_sample_queries += found.queries
            return found

    source = ClusterSummaries(Counted(prometheus_dataset.url), 2 * HOUR)
    runner = Runner(source, ExporterState("prometheus"), DETAIL, fixed_z, SHARES, 1.0)
    for _ in range(3):
        assert runner.run_once(), runner.state.health().errors
    assert Counted.first_sample_queries == 1
    elapsed = render(runner.state)[m.ZEST_ELAPSED]
    assert elapsed[(("job_id", "slurm-7001"),)] == pytest.approx(119 * SCRAPE_SECONDS, abs=300)
    assert set(elapsed) == {(("job_id", j),) for j in ("slurm-7001", "ml/live-pod-1", "880999")}
    assert all(math.isfinite(v) and v > 0 for v in elapsed.values())


def test_a_job_id_used_again_begins_at_its_current_run(tmp_path: Path) -> None:
    """A pod name or job id that ran before, ended and runs again: its elapsed time counts from the current
    run (after a gap of more than 5 minutes), not from the earlier one; a job running since before the
    lookback gets the lookback's start."""
    prometheus, promtool = require_binaries()
    rng = np.random.default_rng(5)
    now = int(time.time() // SCRAPE_SECONDS) * SCRAPE_SECONDS - SCRAPE_SECONDS
    earlier, current = now - 6 * 3600, now - 2 * 3600 + SCRAPE_SECONDS  # 1 h, a 3 h gap, then 2 h
    pod = {"namespace": "ml", "pod": "trainer-0", "container": "main"}
    series = dcgm_gpu(rng, earlier, 120, dcgm_labels("k8s-node-1", 0, pod, host_label="hostname"))
    series += dcgm_gpu(rng, current, 240, dcgm_labels("k8s-node-1", 0, pod, host_label="hostname"))
    series += jobstats_gpu(rng, now - 5 * 3600, 600, jobstats_labels("della-l01g1:9445", 0, "990077"))
    write_openmetrics(tmp_path / "runs.om", series)
    backfill(promtool, tmp_path / "runs.om", tmp_path / "data")
    server = start_prometheus(prometheus, tmp_path / "data", tmp_path)
    try:
        source = PrometheusSource(server.url, lookback_seconds=4 * 3600)
        found = source.first_samples(["ml/trainer-0", "990077"]).first_sample_seconds
    finally:
        server.stop()
    assert current <= found["ml/trainer-0"] < current + 300
    # 990077 began 5 h ago, before the 4 h looked back: the lookback's first step (the query ran at a time
    # between now + 1 and now + 2 scrapes).
    assert now + SCRAPE_SECONDS - 4 * 3600 <= found["990077"] < now + 2 * SCRAPE_SECONDS - 4 * 3600 + 300
