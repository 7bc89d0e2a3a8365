"""``zest serve --shard I/N``: N replicas behind one Prometheus split the running jobs by Prometheus' own
``hashmod``, and together export exactly what one replica exports.

The split is checked against a real Prometheus' relabel ``hashmod``, and the
exports against a real Prometheus holding a dozen running jobs of both
exporter families (and one that ended), each replica a :class:`Runner` run
in-process with the same window end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest
from promserver import (
    SCRAPE_SECONDS,
    Series,
    dcgm_gpu,
    dcgm_labels,
    jobstats_gpu,
    jobstats_labels,
    require_binaries,
    served,
    start_prometheus,
)

from collectors.errors import InputError
from collectors.prometheus import PrometheusSource
from estimator.cli.main import main
from estimator.cli.serve import make_source
from estimator.decision.algorithms import capture_shares
from estimator.model.default import default_model, z_intervals_for
from estimator.serving.collector import ExporterState, ZestCollector
from estimator.serving.config import ServeConfig
from estimator.serving.runner import ClusterSummaries, Runner, Shard, hashmod

#: Ids as zest names jobs: Slurm job ids, jobstats ids, Kubernetes namespace/pod, odd characters.
IDS = ["slurm-4242", "880123", "ml/bert-train-0", 'we"ird}\\job', "job-ü", "a" * 300]
MODULI = (1, 2, 3, 7, 1000)


# --- the hash -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relabelled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, str]]]:
    """The labels a real Prometheus gives one target per id after ``action: hashmod`` by each modulus."""
    prometheus, _ = require_binaries()
    work = tmp_path_factory.mktemp("hashmod")
    groups = "".join(  # JSON is YAML: the ids go in escaped
        f"      - targets: ['127.0.0.1:{10000 + i}']\n        labels: {json.dumps({'job_id': job_id})}\n"
        for i, job_id in enumerate(IDS)
    )
    rules = "".join(
        f"      - source_labels: [job_id]\n        modulus: {m}\n        target_label: shard_of_{m}\n"
        "        action: hashmod\n"
        for m in MODULI
    )
    config = (
        "global:\n  scrape_interval: 1h\nscrape_configs:\n  - job_name: shards\n    static_configs:\n"
        f"{groups}    relabel_configs:\n{rules}"
    )
    server = start_prometheus(prometheus, work / "data", work, config_text=config)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = requests.get(
                f"{server.url}/api/v1/targets", params={"state": "active"}, timeout=5
            ).json()
            targets = answer["data"]["activeTargets"]
            if len(targets) == len(IDS):
                yield {t["labels"]["job_id"]: t["labels"] for t in targets}
                return
            time.sleep(0.2)
        pytest.fail(f"Prometheus listed {len(targets)} of {len(IDS)} targets", pytrace=False)
    finally:
        server.stop()


@pytest.mark.parametrize("modulus", MODULI)
def test_hashmod_is_prometheus_relabel_hashmod(relabelled: dict[str, dict[str, str]], modulus: int) -> None:
    for job_id in IDS:
        assert hashmod(job_id, modulus) == int(relabelled[job_id][f"shard_of_{modulus}"]), job_id


def test_hashmod_known_values() -> None:
    # Pinned (as the real Prometheus above computes them), so that a change of the split shows here too.
    assert [hashmod(j, 2) for j in ("slurm-4242", "ml/bert-train-0", "880999")] == [0, 1, 0]
    assert hashmod("x", 1) == 0


def test_every_job_has_exactly_one_replica() -> None:
    ids = [f"slurm-{n}" for n in range(2000)]
    for count in (1, 2, 3, 8):
        owners = [[i for i in range(count) if Shard(i, count).owns(j)] for j in ids]
        assert all(len(o) == 1 for o in owners)
        sizes = [sum(o == [i] for o in owners) for i in range(count)]
        assert min(sizes) > 0.8 * len(ids) / count  # an even split, within sampling noise


@pytest.mark.parametrize(("index", "count"), [(2, 2), (-1, 2), (0, 0)])
def test_a_shard_out_of_range_is_refused(index: int, count: int) -> None:
    with pytest.raises(InputError, match="0 <= I <= N-1"):
        Shard(index, count)


# --- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("2/2", "I must be in 0..1 for N = 2"),
        ("5/3", "I must be in 0..2 for N = 3"),
        ("0/0", "N must be at least 1"),
        ("1", "is not I/N"),
        ("a/b", "is not I/N"),
        ("-1/2", "is not I/N"),
    ],
)
def test_cli_refuses_a_bad_shard_in_one_line(
    given: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "serve",
                "--source",
                "prometheus=http://127.0.0.1:9",
                "--listen",
                "127.0.0.1:0",
                "--shard",
                given,
            ]
        )
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert out == "" and err.count("\n") == 1 and "--shard" in err and said in err, err


def test_cli_refuses_a_shard_of_a_node_agent(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--source", "nvml", "--listen", "127.0.0.1:0", "--shard", "0/2"])
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and "node agent" in err and "prometheus=URL" in err, err


def test_make_source_gives_the_cluster_source_its_shard() -> None:
    timing = {"interval_seconds": 60.0, "sample_seconds": 1.0, "step_seconds": 30.0}
    cluster = make_source("prometheus=http://127.0.0.1:9", ServeConfig(), shard=Shard(1, 2), **timing)
    assert isinstance(cluster, ClusterSummaries) and cluster.shard == Shard(1, 2)
    assert str(cluster.shard) == "1/2"


# --- two replicas export what one exports ---------------------------------------------------------

#: Running jobs of both exporter families and both dcgm-exporter labellings, and one that ended.
SLURM_JOBS = [f"slurm-{8001 + n}" for n in range(6)]
PODS = [f"ml/train-{n}" for n in range(3)]
JOBSTATS_JOBS = [f"99000{n}" for n in range(3)]
ENDED_JOB = "slurm-7999"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus holding 30 minutes of the jobs above, the running ones sampled until now: its URL."""
    work = tmp_path_factory.mktemp("fleet")
    rng = np.random.default_rng(20261201)
    count = 60
    last = int(time.time() // SCRAPE_SECONDS) * SCRAPE_SECONDS - SCRAPE_SECONDS
    first = last - (count - 1) * SCRAPE_SECONDS
    series: list[Series] = []
    for n, job_id in enumerate(SLURM_JOBS):
        for gpu in range(1 + n % 2):
            series += dcgm_gpu(rng, first, count, dcgm_labels(f"gpu-s{n:02d}", gpu, {"hpc_job": job_id}))
    for n, job_id in enumerate(PODS):
        namespace, pod = job_id.split("/")
        labels = dcgm_labels(f"k8s-{n}", 0, {"namespace": namespace, "pod": pod}, host_label="hostname")
        series += dcgm_gpu(rng, first, count, labels, nvlink="dcp")
    for n, job_id in enumerate(JOBSTATS_JOBS):
        series += jobstats_gpu(rng, first, count, jobstats_labels(f"della-j{n}:9445", 0, job_id))
    series += dcgm_gpu(rng, first, 20, dcgm_labels("gpu-e00", 0, {"hpc_job": ENDED_JOB}))
    with served(series, work, "fleet") as server:
        yield server.url


def job_lines(url: str, shard: Shard | None, end: datetime) -> set[str]:
    """The per-job lines of /metrics after one cycle of a replica serving ``shard`` (None: every job)."""
    model = default_model()
    source = ClusterSummaries(PrometheusSource(url), 3600.0, shard=shard, now=lambda: end)
    state = ExporterState(source.kind)
    runner = Runner(
        source,
        state,
        ServeConfig(),
        lambda features: z_intervals_for(features, model),
        capture_shares(model.capture_shares()),
        interval_seconds=60.0,
        wall_clock=lambda: end.timestamp(),
    )
    assert runner.run_once()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ZestCollector(state, coverage_ratio=model.coverage, version="test"))
    text = generate_latest(registry).decode()
    return {line for line in text.splitlines() if 'job_id="' in line and not line.startswith("#")}


def job_ids(lines: set[str]) -> set[str]:
    return {line.split('job_id="', 1)[1].split('"', 1)[0] for line in lines}


@pytest.mark.parametrize("count", [2, 3])
def test_replicas_together_export_exactly_what_one_exports(fleet: str, count: int) -> None:
    end = datetime.now(UTC)  # one window end for every replica: the same samples, the same values
    whole = job_lines(fleet, None, end)
    assert job_ids(whole) == {*SLURM_JOBS, *PODS, *JOBSTATS_JOBS}  # the ended job is not exported
    parts = [job_lines(fleet, Shard(i, count), end) for i in range(count)]
    assert all(parts), "each replica serves some of the jobs"
    assert set().union(*parts) == whole
    assert sum(len(p) for p in parts) == len(whole)  # disjoint: no series is exported twice
    for i, part in enumerate(parts):
        assert all(hashmod(job_id, count) == i for job_id in job_ids(part))
        others = set().union(*(p for j, p in enumerate(parts) if j != i))
        assert not job_ids(part) & job_ids(others)


def test_a_shard_of_one_is_every_job(fleet: str) -> None:
    end = datetime.now(UTC)
    assert job_lines(fleet, Shard(0, 1), end) == job_lines(fleet, None, end)


def test_a_shard_asks_prometheus_for_its_own_jobs_only(fleet: str) -> None:
    # The batched queries match the shard's job ids, so the store reads each replica's share only.
    end = datetime.now(UTC)
    whole = ClusterSummaries(PrometheusSource(fleet), 3600.0, now=lambda: end)
    every = whole.running_jobs()
    for index in range(2):
        shard = Shard(index, 2)
        mine = {job for job in every if shard.owns(job)}
        answer = PrometheusSource(fleet).summarize_jobs(3600.0, end, sorted(mine))
        asked = set(answer.summary["job_id"])
        assert mine <= asked  # a look-alike id may come along; the replica drops it
        assert not (every - mine) & asked - _look_alikes(mine, every)


def _look_alikes(mine: set[str], every: set[str]) -> set[str]:
    """Other jobs whose pod name equals one of ``mine``'s: matched by the pod label alone."""
    names = {job.rpartition("/")[2] for job in mine} | mine
    return {job for job in every - mine if job.rpartition("/")[2] in names or job in names}
