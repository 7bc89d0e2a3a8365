"""Benchmark: summarize a 512-GPU dcgm-exporter job held by a real Prometheus.

Backfills a simulated job (64 hosts x 8 GPUs by default, 12 h at the 30 s
scrape interval, every default and profiling dcgm-exporter series) with
``promtool``, starts ``prometheus`` on it, and times
:meth:`collectors.prometheus.PrometheusSource.summarize_job` with the window
found from the data and with a given window. Prints the data size, the
backfill time, the number of queries, the series pulled and the times; the
first call also reads the blocks from disk.

Size, measured on 2 cores: 12 h (8.8 M samples, 1.9 GiB of OpenMetrics)
backfills in 30 s and summarizes in 24 s; ``--hours 24`` (17.7 M samples,
3.7 GiB) backfills in 99 s and summarizes in 61-65 s. The server reads every
sample once per statistic, so its time grows with the samples, while what
travels stays one value per GPU and query.

Run: ``python bench/bench_prometheus.py [--hosts 64] [--gpus-per-host 8] [--hours 24]``
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from promserver import (  # the simulated exporters live with the tests
    SCRAPE_SECONDS,
    Series,
    dcgm_gpu,
    dcgm_labels,
    start_prometheus,
    write_openmetrics,
)

from collectors.prometheus import PrometheusSource

JOB_ID = "bench-512"
BLOCK_SECONDS = 7200  # promtool's block range: parts split on it make blocks that do not overlap


def _job_series(hosts: int, gpus_per_host: int, start: int, count: int) -> list[Series]:
    rng = np.random.default_rng(512)
    series: list[Series] = []
    for host in range(hosts):
        for gpu in range(gpus_per_host):
            labels = dcgm_labels(f"node{host:03d}", gpu, {"hpc_job": JOB_ID})
            series += dcgm_gpu(rng, start, count, labels)
    return series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=64)
    parser.add_argument("--gpus-per-host", type=int, default=8)
    parser.add_argument("--hours", type=float, default=12.0)
    args = parser.parse_args()
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        sys.exit("the benchmark needs prometheus and promtool: sudo apt-get install prometheus")

    count = int(args.hours * 3600 / SCRAPE_SECONDS)
    gpus = args.hosts * args.gpus_per_host
    end = int(time.time() // 3600) * 3600 - 3600  # an hour ago, on the scrape grid
    start = end - (count - 1) * SCRAPE_SECONDS
    with tempfile.TemporaryDirectory(prefix="zest-bench-prom-") as tmp:
        work = Path(tmp)
        data_dir = work / "data"
        began = time.perf_counter()
        series = _job_series(args.hosts, args.gpus_per_host, start, count)
        # Split in time on a block boundary: overlapping blocks would keep the server
        # busy merging them while it is being timed.
        middle = (start + (end - start) // 2) // BLOCK_SECONDS * BLOCK_SECONDS
        bounds = [start, middle, end + 1] if start < middle else [start, end + 1]
        samples = 0
        files = []
        for part, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            path = work / f"part{part}.om"
            parts = []
            for one in series:
                keep = (one.times >= lo) & (one.times < hi)
                parts.append(Series(one.name, one.labels, one.times[keep], one.values[keep]))
            samples += write_openmetrics(path, parts)
            files.append(path)
        del series
        written = time.perf_counter() - began
        size_mib = sum(p.stat().st_size for p in files) / 2**20
        print(
            f"job: {args.hosts} hosts x {args.gpus_per_host} GPUs = {gpus} GPUs, {args.hours:g} h at "
            f"{SCRAPE_SECONDS} s = {count} scrapes; {samples:,} samples, {size_mib:,.0f} MiB of OpenMetrics "
            f"written in {written:.1f} s"
        )
        began = time.perf_counter()
        runs = [
            subprocess.Popen(
                [promtool, "tsdb", "create-blocks-from", "openmetrics", str(path), str(data_dir)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for path in files
        ]
        for run in runs:
            _, stderr = run.communicate()
            if run.returncode != 0:
                sys.exit(f"promtool failed: {stderr.decode(errors='replace')[-2000:]}")
        for path in files:
            path.unlink()
        print(f"backfill: {time.perf_counter() - began:.1f} s with {len(files)} promtool processes")

        server = start_prometheus(prometheus, data_dir, work)
        try:
            source = PrometheusSource(server.url, timeout_seconds=120)
            for label, window in (
                ("window found from the data", (None, None)),
                (
                    "window given",
                    (datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)),
                ),
            ):
                began = time.perf_counter()
                found = source.summarize_job(JOB_ID, *window)
                elapsed = time.perf_counter() - began
                assert len(found.summary) == gpus, f"{len(found.summary)} GPU rows, expected {gpus}"
                assert (found.summary["samples"] == count).all()
                print(
                    f"summarize_job ({label}): {elapsed:.2f} s, {found.queries} queries, "
                    f"{found.series_pulled:,} series pulled ({found.series_pulled / found.queries:.0f} per "
                    f"query for {gpus} GPUs), {len(found.summary)} rows"
                )
            began = time.perf_counter()
            running = source.running_jobs()
            elapsed = time.perf_counter() - began
            print(f"running_jobs: {elapsed:.2f} s, {len(running)} running (the data ends an hour ago)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
