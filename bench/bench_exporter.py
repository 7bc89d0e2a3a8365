"""Benchmark: zest serve's /metrics rendering and one cluster-mode cycle.

1. Render: a snapshot of ``--render-jobs`` jobs (10,000; one GPU each, per-GPU
   series off, as a cluster service exports them) through
   :class:`estimator.serving.collector.ZestCollector` and ``generate_latest``, against
   prometheus_client rendering the same number of samples of one plain
   labelled ``Gauge``.
2. Cycle: ``--jobs`` running jobs x ``--gpus`` GPUs (1,000 x 8) of
   dcgm-exporter series, ``--minutes`` of history at the 30 s scrape
   interval, backfilled into a real Prometheus with ``promtool``. Times one
   cluster cycle (running jobs + batched summaries, then features, Z_e and
   break-even of every job) against one ``summarize_job`` per job, measured
   on ``--per-job-sample`` jobs and extrapolated to all of them.

Run: ``python bench/bench_exporter.py [--render-jobs 10000] [--jobs 1000] [--gpus 8] [--minutes 30]``
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from estimator.serving.http import RenderedMetrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from promserver import SCRAPE_SECONDS, dcgm_gpu, dcgm_labels, start_prometheus, write_openmetrics

from collectors.prometheus import PrometheusSource
from collectors.schema import JOB_ID
from collectors.sources import example_jobs, read_job
from estimator.decision.algorithms import capture_shares
from estimator.features.extract import summarize_gpus
from estimator.model.default import default_model, z_intervals_for
from estimator.serving.collector import ExporterState, ZestCollector, estimate_jobs
from estimator.serving.config import ServeConfig
from estimator.serving.runner import ClusterSummaries


def _best_of(runs: int, action: object) -> float:
    assert callable(action)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def bench_render(jobs: int) -> None:
    base = summarize_gpus(read_job("example", example_jobs()[0]).frame)
    one_gpu = base.iloc[[0]]
    summary = pd.concat([one_gpu] * jobs, ignore_index=True)
    summary[JOB_ID] = pd.array([f"job-{i:05d}" for i in range(jobs)], dtype="string")
    model = default_model()
    config = ServeConfig(gpu_series=False)
    started = time.perf_counter()
    snapshot = estimate_jobs(
        summary, config, lambda f: z_intervals_for(f, model), capture_shares(model.capture_shares()),
        taken_at_seconds=time.time(),
    )  # fmt: skip
    estimating = time.perf_counter() - started
    state = ExporterState("prometheus")
    state.publish(snapshot, estimating)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ZestCollector(state, coverage_ratio=model.coverage))
    text = generate_latest(registry)
    count = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    zest_seconds = _best_of(3, lambda: generate_latest(registry))

    plain = CollectorRegistry(auto_describe=False)
    gauge = Gauge("plain_value", "A plain gauge", ["job_id", "series"], registry=plain)
    for i in range(count):
        gauge.labels(f"job-{i // 64:05d}", str(i % 64)).set(float(i))
    plain_seconds = _best_of(3, lambda: generate_latest(plain))
    print(f"render: {jobs} jobs, {count} samples, {len(text) / 1e6:.1f} MB of text")
    print(f"  estimating the snapshot (features, Z_e, break-even of every job): {estimating:.2f} s")
    print(f"  zest /metrics render: {zest_seconds:.2f} s (best of 3)")
    ratio = zest_seconds / plain_seconds
    print(f"  plain Gauge, {count} samples: {plain_seconds:.2f} s; ratio zest / plain = {ratio:.2f}")
    # zest serve renders once a cycle (RenderedMetrics); a scrape only hands over the bytes.
    rendered = RenderedMetrics(registry)
    calls: list[bytes] = []
    scrape_seconds = _best_of(3, lambda: calls.append(b"".join(rendered({"PATH_INFO": "/metrics"}, _ignore))))
    print(
        f"  a scrape of zest serve (rendered once per cycle): {scrape_seconds * 1e3:.2f} ms; "
        f"ratio to rendering per scrape = {scrape_seconds / zest_seconds:.2g}"
    )


def _ignore(*_: object) -> None:
    """A WSGI start_response that discards the status and headers."""


def bench_cycle(jobs: int, gpus: int, minutes: float, per_job_sample: int, keep: bool) -> None:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        sys.exit("install Prometheus and promtool: sudo apt-get install prometheus")
    work = Path(tempfile.mkdtemp(prefix="zest-bench-exporter-"))
    count = max(2, round(minutes * 60 / SCRAPE_SECONDS))
    now = time.time()
    last = int(now // SCRAPE_SECONDS) * SCRAPE_SECONDS - SCRAPE_SECONDS
    first = last - (count - 1) * SCRAPE_SECONDS
    rng = np.random.default_rng(1000)
    openmetrics = work / "jobs.om"
    started = time.perf_counter()

    def series():  # type: ignore[no-untyped-def]
        for job in range(jobs):
            for gpu in range(gpus):
                labels = dcgm_labels(f"node{job:04d}", gpu, {"hpc_job": f"bench-{job:04d}"})
                yield from dcgm_gpu(rng, first, count, labels)

    samples = write_openmetrics(openmetrics, series())
    data = work / "data"
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(openmetrics), str(data)],
        check=True, capture_output=True,
    )  # fmt: skip
    openmetrics.unlink()
    print(f"cycle: {jobs} jobs x {gpus} GPUs, {count} scrapes each, {samples / 1e6:.1f} M samples "
          f"backfilled in {time.perf_counter() - started:.0f} s")  # fmt: skip
    server = start_prometheus(prometheus, data, work)
    try:
        source = PrometheusSource(server.url, timeout_seconds=300)
        window = count * SCRAPE_SECONDS
        cluster = ClusterSummaries(source, window)
        model = default_model()
        shares = capture_shares(model.capture_shares())
        cluster.summaries()  # warm: the first read loads the blocks from disk
        started = time.perf_counter()
        summary = cluster.summaries()
        reading = time.perf_counter() - started
        snapshot = estimate_jobs(
            summary, ServeConfig(), lambda f: z_intervals_for(f, model), shares, taken_at_seconds=time.time()
        )
        cycle = time.perf_counter() - started
        found = source.summarize_jobs(window)
        what = f"{len(snapshot.jobs)} jobs, {len(summary)} GPUs, {found.queries + 1} queries"
        print(
            f"  batched cycle: {cycle:.1f} s ({reading:.1f} s reading {what}; "
            "the rest: features, Z_e, break-even)"
        )
        end = datetime.fromtimestamp(time.time(), UTC)
        begin = datetime.fromtimestamp(end.timestamp() - window, UTC)
        sample = [f"bench-{j:04d}" for j in np.linspace(0, jobs - 1, min(per_job_sample, jobs)).astype(int)]
        started = time.perf_counter()
        queries = 0
        for job_id in sample:
            queries += source.summarize_job(job_id, begin, end).queries
        per_job = (time.perf_counter() - started) / len(sample)
        ratio = per_job * jobs / reading
        print(f"  one query set per job: {per_job:.2f} s and {queries / len(sample):.0f} queries per job, "
              f"measured on {len(sample)} jobs; x {jobs} jobs = {per_job * jobs:.0f} s "
              f"(reading only); ratio per-job / batched reading = {ratio:.1f}")  # fmt: skip
    finally:
        server.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render-jobs", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--per-job-sample", type=int, default=20)
    parser.add_argument("--skip-cycle", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the Prometheus data folder")
    args = parser.parse_args()
    bench_render(args.render_jobs)
    if not args.skip_cycle:
        bench_cycle(args.jobs, args.gpus, args.minutes, args.per_job_sample, args.keep)


if __name__ == "__main__":
    main()
