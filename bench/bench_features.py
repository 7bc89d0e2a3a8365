"""Time the feature stage on a month of 1 Hz telemetry: zest against pyarrow reading the same file.

Builds (once; reused from ``bench/out/``) a zest Parquet capture of 8 GPUs
sampled every second for 30 days, about 20.7 M rows, written in chunks so
that it fits a small machine. Then, each in a fresh process so that the peak
RSS is its own:

(a) ``pyarrow.parquet.read_table`` of the canonical columns (the issue's floor);
(a') the same with the labels read as dictionaries (``read_dictionary``), as
     zest reads them: the tighter floor, printed so that (b) is not flattered
     by (a) materializing a string per row and label;
(b) ``collectors.files.read_capture`` + ``summarize_gpus`` + ``job_features``.

Prints rows, the median seconds and peak RSS of each stage over ``--repeat``
runs, the ratios b/a and b/a' of both, the split of (b), and the load average before
and after (other work on the machine slows both stages). ``--days`` or
``--rows`` runs a smaller size quickly::

    python bench/bench_features.py              # 8 GPUs x 30 days
    python bench/bench_features.py --days 1     # 8 GPUs x 1 day, 691 200 rows
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from collectors.files import FORMAT_VERSION, METADATA_KEY, read_capture
from collectors.schema import COLUMNS, GPU, GPU_MODEL, HOST, JOB_ID, LABELS, SIGNALS, TIMESTAMP
from estimator.features.extract import job_features, summarize_gpus

OUT = Path(__file__).resolve().parent / "out"
SECONDS_PER_DAY = 86_400
CHUNK_SECONDS = 6 * 3600  # rows per written chunk: CHUNK_SECONDS x GPUs
START = np.datetime64("2026-01-05T00:00:00", "us")
MIB = 1024 * 1024
MODEL = "NVIDIA H100 80GB HBM3"
STRAGGLER_GPU = 5  # runs with less SM activity than its peers
STAGES = ("pyarrow", "pyarrow-dictionary", "zest")


def capture_path(gpus: int, seconds: int) -> Path:
    return OUT / f"capture_{gpus}gpu_{seconds}s.parquet"


def _chunk(rng: np.random.Generator, first_second: int, seconds: int, gpus: int) -> pa.Table:
    """``seconds`` 1 Hz samples of ``gpus`` GPUs in time order: a training job with checkpoints and stalls."""
    rows = seconds * gpus
    second = np.repeat(np.arange(first_second, first_second + seconds), gpus)
    gpu = np.tile(np.arange(gpus), seconds)
    # 90 s of checkpointing every hour, plus short input stalls: SMs almost idle.
    idle = (second % 3600 < 90) | (rng.random(rows) < 0.01)
    sm_active = np.clip(rng.normal(0.80, 0.05, rows) - 0.12 * (gpu == STRAGGLER_GPU), 0.0, 1.0)
    sm_active = np.where(idle, rng.uniform(0.0, 0.04, rows), sm_active)
    gpu_util = np.where(idle, rng.uniform(0.0, 0.3, rows), np.clip(rng.normal(0.98, 0.02, rows), 0.0, 1.0))
    busy = ~idle
    # Rounded as the exporters print them: whole percent for GPU_UTIL, six decimals for the
    # profiling ratios (dcgm-exporter's %f), mW for power, whole MiB and bytes/s.
    signals: dict[str, npt.NDArray[np.floating]] = {
        "gpu_util_ratio": np.round(gpu_util, 2),
        "sm_active_ratio": np.round(sm_active, 6),
        "sm_occupancy_ratio": np.round(np.clip(rng.normal(0.30, 0.03, rows), 0, 1) * busy, 6),
        "tensor_active_ratio": np.round(np.clip(rng.normal(0.30, 0.04, rows), 0, 1) * busy, 6),
        "dram_active_ratio": np.round(np.clip(rng.normal(0.20, 0.03, rows), 0, 1) * busy, 6),
        "mem_used_bytes": np.round(rng.normal(30_000, 500, rows)) * MIB,
        "mem_total_bytes": np.full(rows, 81_559 * MIB, dtype=np.float64),
        "power_watts": np.round(80.0 + 560.0 * sm_active + rng.normal(0, 15, rows), 3),
        "pcie_tx_bytes_per_second": np.round(rng.lognormal(np.log(1.5e9), 0.5, rows)),
        "pcie_rx_bytes_per_second": np.round(rng.lognormal(np.log(2.5e9), 0.5, rows)),
        "nvlink_bytes_per_second": np.round(np.clip(rng.normal(120e9, 20e9, rows), 0, None) * busy),
    }
    # Profiling fields drop a sample now and then (DCGM returns blank): NaN, not zero.
    signals["sm_active_ratio"][rng.random(rows) < 0.001] = np.nan
    columns: dict[str, pa.Array] = {
        TIMESTAMP: pa.array(START + second.astype("timedelta64[s]"), pa.timestamp("us", tz="UTC")),
        HOST: pa.array(np.full(rows, "node017", dtype=object), pa.string()),
        GPU: pa.array(gpu.astype(str).astype(object), pa.string()),
        JOB_ID: pa.array(np.full(rows, "4242424", dtype=object), pa.string()),
        GPU_MODEL: pa.array(np.full(rows, MODEL, dtype=object), pa.string()),
        **{s: pa.array(signals[s], pa.float64()) for s in SIGNALS},
    }
    return pa.table({c: columns[c] for c in COLUMNS})


def build_capture(path: Path, gpus: int, seconds: int) -> None:
    """Write the synthetic capture chunk by chunk as zest's Parquet layout (zstd)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20260105)
    header = {"format_version": FORMAT_VERSION, "columns": list(COLUMNS), "notes": ["synthetic benchmark"]}
    partial = path.with_suffix(".partial")
    writer: pq.ParquetWriter | None = None
    try:
        for first in range(0, seconds, CHUNK_SECONDS):
            table = _chunk(rng, first, min(CHUNK_SECONDS, seconds - first), gpus)
            if writer is None:
                schema = table.schema.with_metadata({METADATA_KEY: json.dumps(header).encode()})
                writer = pq.ParquetWriter(partial, schema, compression="zstd")
            writer.write_table(table.replace_schema_metadata(writer.schema.metadata))
    finally:
        if writer is not None:
            writer.close()
    partial.rename(path)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def stage(name: str, path: Path) -> dict[str, float]:
    """Run one timed stage in this process and return its figures."""
    figures: dict[str, float] = {}
    started = time.perf_counter()
    if name in ("pyarrow", "pyarrow-dictionary"):
        dictionary = list(LABELS) if name == "pyarrow-dictionary" else None
        table = pq.read_table(path, columns=list(COLUMNS), read_dictionary=dictionary)
        figures["rows"] = table.num_rows
    else:
        capture = read_capture(path)
        read_done = time.perf_counter()
        summary = summarize_gpus(capture.frame)
        summary_done = time.perf_counter()
        features = job_features(summary)
        figures.update(
            rows=len(capture.frame),
            read_seconds=read_done - started,
            summarize_seconds=summary_done - read_done,
            features_seconds=time.perf_counter() - summary_done,
            gpus=features.row["gpus"],
            sm_active_mean_ratio=features.row["sm_active_mean_ratio"],
            straggler_spread_ratio=features.row["straggler_spread_ratio"],
        )
    figures["seconds"] = time.perf_counter() - started
    figures["peak_rss_bytes"] = _peak_rss_bytes()
    return figures


def _run_stage(name: str, path: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--stage", name, "--path", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--days", type=float, default=30.0, help="days of 1 Hz samples (default 30)")
    parser.add_argument("--rows", type=int, help="total rows instead of --days (rounded to whole seconds)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each stage; the median counts")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, args.path)))
        return
    seconds = args.rows // args.gpus if args.rows else round(args.days * SECONDS_PER_DAY)
    if seconds < 1:
        parser.error("--rows/--days give less than one sample per GPU")
    path = capture_path(args.gpus, seconds)
    if path.exists():
        print(f"reusing {path}")
    else:
        print(f"building {path} ({args.gpus} GPUs x {seconds} s at 1 Hz) ...", flush=True)
        started = time.perf_counter()
        build_capture(path, args.gpus, seconds)
        print(f"  built in {time.perf_counter() - started:.1f} s")
    print(f"file: {path.stat().st_size / 1e6:.0f} MB")
    path.read_bytes()  # warm the page cache so that neither stage pays for the disk
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in STAGES}
    for _ in range(args.repeat):  # interleaved, so that a burst of load hits every stage alike
        for name, figures in runs.items():
            figures.append(_run_stage(name, path))
    pyarrow, dictionary, zest = (_medians(runs[name]) for name in STAGES)
    gib = 1024**3
    print(f"rows: {pyarrow['rows']:,.0f} (median of {args.repeat} runs per stage, each in a fresh process)")
    for label, figures in (
        ("(a) pyarrow read_table:", pyarrow),
        ("(a') same, dict labels:", dictionary),
        ("(b) zest read+features:", zest),
    ):
        print(f"{label:24} {figures['seconds']:7.2f} s   peak RSS {figures['peak_rss_bytes'] / gib:5.2f} GiB")
    print(f"      read_capture       {zest['read_seconds']:7.2f} s")
    print(f"      summarize_gpus     {zest['summarize_seconds']:7.2f} s")
    print(f"      job_features       {zest['features_seconds']:7.3f} s")
    print(
        f"ratio b/a: time {zest['seconds'] / pyarrow['seconds']:.2f}x, "
        f"peak RSS {zest['peak_rss_bytes'] / pyarrow['peak_rss_bytes']:.2f}x "
        f"(features after the read: {(zest['seconds'] - zest['read_seconds']) / pyarrow['seconds']:.2f}x)"
    )
    print(
        f"ratio b/a': time {zest['seconds'] / dictionary['seconds']:.2f}x, "
        f"peak RSS {zest['peak_rss_bytes'] / dictionary['peak_rss_bytes']:.2f}x"
    )
    before, after = (" ".join(f"{x:.2f}" for x in load) for load in (load_before, os.getloadavg()))
    print(f"load average (1, 5, 15 min) on {os.cpu_count()} cores: before {before}, after {after}")
    print(
        f"check: {zest['gpus']:.0f} GPUs, sm_active mean {zest['sm_active_mean_ratio']:.3f}, "
        f"straggler spread {zest['straggler_spread_ratio']:.3f}"
    )


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the runs."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


if __name__ == "__main__":
    main()
