"""What missing signals do to the shipped model's Z_e interval, on simulated jobs (not measured).

Each job is the starting configuration of a study drawn as the training's simulated studies are
(:func:`estimator.training.simulated.draw_study`: A100/H100/H200, 1-512 GPUs, Megatron and FSDP), with a
seed the training never used. Its 2 minutes of telemetry are read with every signal and with only what
``nvidia-smi --query-gpu`` reports (utilization, memory, power). Prints, for the shipped model: the median
interval width of each, how often the nvidia-smi interval holds the every-signal mid and is at least as
wide, and the time to estimate all jobs (median of 3 runs).

    python bench/bench_missing_signals.py [--jobs 300]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd

from collectors.metrics import NVIDIA_SMI_METRICS
from collectors.schema import SIGNALS
from estimator.features.extract import features_frame, summarize_gpus
from estimator.model.default import default_model, z_intervals_for
from estimator.perfmodel import iteration as perfmodel
from estimator.training.simulated import GPU_WEIGHTS, draw_study

SEED = 777  # not the training's
START = pd.Timestamp("2026-11-01T00:00:00Z")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    args = parser.parse_args()
    constants = {gpu: perfmodel.load_constants(gpu) for gpu in GPU_WEIGHTS}
    smi = {field.signal for field in NVIDIA_SMI_METRICS}
    full_rows, smi_rows, multi_node = [], [], []
    for n in range(args.jobs):
        spec = draw_study(np.random.default_rng([SEED, n]), constants).configurations[0]
        frame = perfmodel.simulate_telemetry(
            spec, constants[spec.gpu], job_id=f"job{n}", minutes=2, seed=SEED + n, start=START
        )
        full_rows.append(features_frame(summarize_gpus(frame)))
        reduced = frame.assign(**{s: np.nan for s in SIGNALS if s not in smi})
        smi_rows.append(features_frame(summarize_gpus(reduced)))
        multi_node.append(spec.num_gpus > spec.node_gpus)
    full, partial = pd.concat(full_rows), pd.concat(smi_rows)
    model = default_model()
    f = np.array([(z.low, z.mid, z.high) for z in z_intervals_for(full, model)])
    seconds = []
    for _ in range(3):
        began = time.perf_counter()
        p = np.array([(z.low, z.mid, z.high) for z in z_intervals_for(partial, model)])
        seconds.append(time.perf_counter() - began)
    f_width, p_width = f[:, 2] - f[:, 0], p[:, 2] - p[:, 0]
    holds = (p[:, 0] <= f[:, 1]) & (f[:, 1] <= p[:, 2])
    wider = p_width >= f_width
    several = np.array(multi_node)
    print(f"{args.jobs} simulated jobs ({several.sum()} on several nodes); shipped model; not measured")
    print(
        f"median interval width: every signal {np.median(f_width):.1f} pp, "
        f"nvidia-smi only {np.median(p_width):.1f} pp"
    )
    print(f"nvidia-smi interval holds the every-signal mid: {100 * holds.mean():.0f} %")
    print(f"nvidia-smi interval at least as wide: {100 * wider.mean():.0f} %")
    print(f"estimating the {args.jobs} nvidia-smi jobs: {statistics.median(seconds):.2f} s (median of 3)")


if __name__ == "__main__":
    main()
