"""Benchmark: zest serve's /metrics rendering, and how one cluster-mode cycle scales with the fleet.

1. Render: a snapshot of ``--render-jobs`` jobs (10,000; one GPU each, per-GPU
   series off, as a cluster service exports them) through
   :class:`estimator.serving.collector.ZestCollector` and ``generate_latest``, against
   prometheus_client rendering the same number of samples of one plain
   labelled ``Gauge``.
2. Scale curve: fleets of ``--gpus`` GPUs (1,000, 2,000, 4,000 by default;
   ``--gpus-per-job`` 8 per job) of dcgm-exporter series, ``--minutes`` of
   history at the 30 s scrape interval, backfilled into one real Prometheus
   with ``promtool`` (each size adds its new jobs to the last), and the history of zest's
   recording rules (``grafana/zest-gpu.rules.yml``) backfilled over all of it with ``promtool tsdb
   create-blocks-from rules``, as a site running the rules holds it (``--no-recording-rules``: raw
   samples only). Times one
   cluster cycle as ``zest serve`` runs it (running jobs and batched
   summaries; features, Z_e and break-even of every job; /metrics rendered),
   the median of ``--runs`` cycles per size after a warm one, then one
   replica's cycle of ``--shard-check`` replicas (2 and 4) at the largest size. Prints
   cost per GPU, the least-squares line of cycle seconds on GPUs, and the
   projection for ``--project-gpus`` (100,000) GPUs split over 1 to
   ``--replicas`` replicas against a ``--cycle-seconds`` (60 s) interval. The
   first size also times one ``summarize_job`` per job on
   ``--per-job-sample`` jobs, against the batched reading.

Run: ``python bench/bench_exporter.py [--gpus 1000,2000,4000,8000,16000] [--skip-render]``
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from estimator.serving.http import RenderedMetrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from promserver import SCRAPE_SECONDS, dcgm_gpu, dcgm_labels, start_prometheus, write_openmetrics

from collectors import metrics
from collectors.prometheus import PrometheusSource
from collectors.schema import JOB_ID
from collectors.sources import example_jobs, read_job
from estimator.decision.algorithms import capture_shares
from estimator.features.extract import summarize_gpus
from estimator.model.default import default_model, z_intervals_for
from estimator.serving.collector import ExporterState, ZestCollector, estimate_jobs
from estimator.serving.config import ServeConfig
from estimator.serving.runner import ClusterSummaries, Shard

RULES = Path(__file__).resolve().parents[1] / "grafana" / "zest-gpu.rules.yml"


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
    config = ServeConfig()  # detail off: the default series
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
    per_job = count / jobs  # series per job, with zest's few health series spread over them
    print(f"render: {jobs} jobs, {count} samples ({per_job:.1f} per job), {len(text) / 1e6:.1f} MB of text")
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


@dataclass
class Cycle:
    """Seconds of one cluster cycle's parts: reading Prometheus, estimating, rendering /metrics."""

    reading: float
    estimating: float
    rendering: float
    jobs: int = 0
    gpus: int = 0
    #: Whether the reading used zest's recording rules (``JobsSummary.recording_rules_used``).
    recorded: bool = False

    @property
    def total(self) -> float:
        return self.reading + self.estimating + self.rendering

    @property
    def local(self) -> float:
        """The replica's own work: what a shard divides."""
        return self.estimating + self.rendering


def _median(cycles: list[Cycle]) -> Cycle:
    """Each part's median over ``cycles``."""

    def middle(values: list[float]) -> float:
        return float(np.median(values))

    return Cycle(
        middle([c.reading for c in cycles]),
        middle([c.estimating for c in cycles]),
        middle([c.rendering for c in cycles]),
        cycles[0].jobs,
        cycles[0].gpus,
        all(c.recorded for c in cycles),
    )


def one_cycle(cluster: ClusterSummaries, model: Any, shares: Any) -> Cycle:
    """One cycle of ``zest serve --source prometheus=URL``, its parts timed."""
    started = time.perf_counter()
    summary = cluster.summaries()
    read = time.perf_counter()
    snapshot = estimate_jobs(
        summary, ServeConfig(), lambda f: z_intervals_for(f, model), shares, taken_at_seconds=time.time()
    )
    estimated = time.perf_counter()
    state = ExporterState("prometheus")
    state.publish(snapshot, estimated - started)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ZestCollector(state, coverage_ratio=model.coverage))
    RenderedMetrics(registry).refresh()
    done = time.perf_counter()
    return Cycle(
        read - started, estimated - read, done - estimated, len(snapshot.jobs), len(summary),
        bool(cluster.recording_rules_used),
    )  # fmt: skip


def _add_jobs(
    promtool: str, data: Path, work: Path, jobs: range, gpus_per_job: int, first: int, count: int
) -> int:
    """Backfill the series of ``jobs`` (``gpus_per_job`` GPUs each) into ``data``; the number of samples."""
    rng = np.random.default_rng(1000 + jobs.start)
    openmetrics = work / "jobs.om"

    def series():  # type: ignore[no-untyped-def]
        for job in jobs:
            for gpu in range(gpus_per_job):
                labels = dcgm_labels(f"node{job:05d}", gpu, {"hpc_job": f"bench-{job:05d}"})
                yield from dcgm_gpu(rng, first, count, labels)

    samples = write_openmetrics(openmetrics, series())
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(openmetrics), str(data)],
        check=True, capture_output=True,
    )  # fmt: skip
    openmetrics.unlink()
    return samples


def _backfill_tiles(promtool: str, url: str, work: Path, first: int, last: int) -> list[Path]:
    """The recording rules' tiles of every series ``url`` holds, evaluated every 5 minutes from ``first``
    to ``last`` (Unix s) by ``promtool tsdb create-blocks-from rules``: the blocks it wrote."""
    tiles = work / "tiles"
    shutil.rmtree(tiles, ignore_errors=True)
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "rules", f"--start={first}", f"--end={last}",
         f"--eval-interval={metrics.RECORDING_INTERVAL_SECONDS}s", f"--url={url}", f"--output-dir={tiles}",
         str(RULES)],
        check=True, capture_output=True,
    )  # fmt: skip
    return [block for block in tiles.iterdir() if block.is_dir()]


def _per_job(source: PrometheusSource, window: float, jobs: int, sample_size: int, reading: float) -> None:
    end = datetime.fromtimestamp(time.time(), UTC)
    begin = datetime.fromtimestamp(end.timestamp() - window, UTC)
    sample = [f"bench-{j:05d}" for j in np.linspace(0, jobs - 1, min(sample_size, jobs)).astype(int)]
    started = time.perf_counter()
    queries = 0
    for job_id in sample:
        queries += source.summarize_job(job_id, begin, end).queries
    per_job = (time.perf_counter() - started) / len(sample)
    print(f"  one query set per job instead: {per_job:.2f} s and {queries / len(sample):.0f} queries per job "
          f"({len(sample)} jobs measured); x {jobs} jobs = {per_job * jobs:.0f} s of reading, "
          f"{per_job * jobs / reading:.1f} x the batched reading")  # fmt: skip


def bench_scale(args: argparse.Namespace) -> None:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        sys.exit("install Prometheus and promtool: sudo apt-get install prometheus")
    sizes = sorted({max(1, round(g / args.gpus_per_job)) for g in args.gpus})
    work = Path(tempfile.mkdtemp(prefix="zest-bench-exporter-"))
    data = work / "data"
    count = max(2, round(args.minutes * 60 / SCRAPE_SECONDS))
    # Samples run --ahead-minutes past the start, so that every job is still running (a sample within
    # Prometheus' 5 min lookback) while the sizes after it are measured.
    ahead = round(args.ahead_minutes * 60 / SCRAPE_SECONDS)
    last = int(time.time() // SCRAPE_SECONDS) * SCRAPE_SECONDS + ahead * SCRAPE_SECONDS
    first = last - (count + ahead - 1) * SCRAPE_SECONDS
    window = count * SCRAPE_SECONDS
    model = default_model()
    shares = capture_shares(model.capture_shares())
    print(f"uptime at start: {_uptime()}")
    print(f"scale: {args.gpus_per_job} GPUs per job, {count} scrapes ({args.minutes:g} min) per window, "
          f"median of {args.runs} cycles per size")  # fmt: skip
    rules = "raw samples only" if args.no_recording_rules else f"zest's recording rules ({RULES.name})"
    print(f"scale: {rules}")
    rows: list[Cycle] = []
    server = None
    done_jobs = 0
    tile_blocks: list[Path] = []
    try:
        for jobs in sizes:
            started = time.perf_counter()
            if server is not None:
                server.stop()
            for block in tile_blocks:  # the tiles are recorded again over every job, old and new
                shutil.rmtree(block)
            samples = _add_jobs(
                promtool, data, work, range(done_jobs, jobs), args.gpus_per_job, first, count + ahead
            )
            done_jobs = jobs
            server = start_prometheus(prometheus, data, work)
            if not args.no_recording_rules:
                made = _backfill_tiles(promtool, server.url, work, first, last)
                server.stop()
                tile_blocks = [Path(shutil.move(block, data / block.name)) for block in made]
                server = start_prometheus(prometheus, data, work)
            backfilled = time.perf_counter() - started
            source = PrometheusSource(server.url, timeout_seconds=600)
            cluster = ClusterSummaries(source, window)
            one_cycle(cluster, model, shares)  # warm: the first read loads the new blocks from disk
            cycles = [one_cycle(cluster, model, shares) for _ in range(args.runs)]
            row = _median(cycles)
            rows.append(row)
            print(f"  {row.gpus:6d} GPUs ({row.jobs} jobs; {samples / 1e6:.1f} M samples added in "
                  f"{backfilled:.0f} s): cycle {row.total:.2f} s = reading {row.reading:.2f} + estimating "
                  f"{row.estimating:.2f} + rendering {row.rendering:.2f}; recording rules read: "
                  f"{'yes' if row.recorded else 'no'}")  # fmt: skip
            if len(rows) == 1 and args.per_job_sample > 0:
                _per_job(source, window, jobs, args.per_job_sample, row.reading)
        assert server is not None
        sharded: dict[int, Cycle] = {}
        for replicas in args.shard_check:
            cluster = ClusterSummaries(PrometheusSource(server.url, timeout_seconds=600), window,
                                       shard=Shard(0, replicas))  # fmt: skip
            sharded[replicas] = one_cycle(cluster, model, shares)  # one cycle: a check, not the curve
        print(f"uptime at end: {_uptime()}")
        _report(rows, sharded, args)
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def _fit(gpus: np.ndarray, seconds: np.ndarray) -> tuple[float, float]:
    """Least squares ``seconds = intercept + slope * gpus``: (intercept s, slope s per GPU)."""
    if len(gpus) < 2:
        return 0.0, float(seconds[0] / gpus[0])
    slope, intercept = np.polyfit(gpus, seconds, 1)
    return float(intercept), float(slope)


def _report(rows: list[Cycle], sharded: dict[int, Cycle], args: argparse.Namespace) -> None:
    gpus = np.array([r.gpus for r in rows], dtype=float)
    print()
    print("| GPUs | jobs | cycle s | reading s | estimating s | rendering s | ms per GPU |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.gpus:,} | {r.jobs:,} | {r.total:.2f} | {r.reading:.2f} | {r.estimating:.2f} "
              f"| {r.rendering:.2f} | {1e3 * r.total / r.gpus:.2f} |")  # fmt: skip
    total = _fit(gpus, np.array([r.total for r in rows]))
    reading = _fit(gpus, np.array([r.reading for r in rows]))
    local = _fit(gpus, np.array([r.local for r in rows]))
    print()
    print(f"fit (least squares, cycle s on GPUs): {total[0]:.2f} s + {1e3 * total[1]:.3f} ms x GPUs "
          f"(reading {reading[0]:.2f} s + {1e3 * reading[1]:.3f} ms x GPUs; estimating and rendering "
          f"{local[0]:.2f} s + {1e3 * local[1]:.3f} ms x GPUs)")  # fmt: skip
    if rows and sharded:
        largest = rows[-1]
        for replicas, c in sharded.items():
            print(f"replica 0/{replicas} at {largest.gpus:,} GPUs: {c.jobs} jobs, cycle {c.total:.2f} s "
                  f"= reading {c.reading:.2f} + estimating {c.estimating:.2f} + rendering {c.rendering:.2f} "
                  f"(unsharded {largest.total:.2f} s)")  # fmt: skip
    target = float(args.project_gpus)

    def line(fit: tuple[float, float], x: float) -> float:
        return fit[0] + fit[1] * x

    print()
    print(
        f"projection for {target:,.0f} GPUs against a {args.cycle_seconds:g} s cycle (each replica's cycle):"
    )
    print("| replicas | GPUs per replica | cycle s | fits |")
    print("|---:|---:|---:|:-:|")
    for replicas in range(1, args.replicas + 1):
        share = target / replicas
        cycle = line(total, share)  # each replica's queries select its own jobs: its cycle is its share's
        print(
            f"| {replicas} | {share:,.0f} | {cycle:.1f} | {'yes' if cycle <= args.cycle_seconds else 'no'} |"
        )
    print(
        "(each replica reads only its shard's jobs; the shared Prometheus answers every replica's queries: "
        "its load is not divided by the replicas, and the projection assumes it answers them at once)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render-jobs", type=int, default=10_000)
    parser.add_argument("--gpus", type=_ints, default=[1000, 2000, 4000], help="fleet sizes, comma-separated")
    parser.add_argument("--gpus-per-job", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=30.0, help="history per window")
    parser.add_argument("--runs", type=int, default=3, help="cycles per size (median)")
    parser.add_argument("--ahead-minutes", type=float, default=20.0, help="samples past the start")
    parser.add_argument("--per-job-sample", type=int, default=10)
    parser.add_argument("--shard-check", type=_ints, default=[2, 4], help="replicas of a sharded cycle")
    parser.add_argument("--project-gpus", type=int, default=100_000)
    parser.add_argument("--replicas", type=int, default=8, help="projection for 1..this many replicas")
    parser.add_argument("--cycle-seconds", type=float, default=60.0)
    parser.add_argument(
        "--no-recording-rules",
        action="store_true",
        help="raw samples only: no tiles of zest's recording rules",
    )
    parser.add_argument("--skip-render", action="store_true")
    parser.add_argument("--skip-cycle", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the Prometheus data folder")
    args = parser.parse_args()
    if not args.skip_render:
        bench_render(args.render_jobs)
    if not args.skip_cycle:
        bench_scale(args)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


if __name__ == "__main__":
    main()
