"""Replay measured tuning studies as searches and compare stopping rules: zest advise's, "run all N",
and "stop after 10 trials without improvement".

Data: the measured vTrain studies (/work/shared/data/vtrain/measured_single_node.csv, NVIDIA A100,
Megatron-DeepSpeed; Bang et al., MICRO 2024): rows that share the model and workload form one study,
each row a configuration with its measured iteration time. Each study is replayed in many random
orders (seeded) as a random search: the first configuration of an order is the job's default, each
further one a trial of t = 25 min (the reference's trial time; vTrain measures no trial time) on the
study's GPUs. After each trial, zest's rule (estimator.decision.next_trials, as ``zest advise`` and
ZestStopper use it) says continue or stop at T and R.

For each rule: trials run, GPU-hours spent (G · n · t), Z found (against the default, % of T) and the
net saving G · (R · T · Z/100 − n · t), totals over studies, mean over orders. Prints a Markdown table.

    python bench/replay_stopping.py [--orders 200] [--seed 0] [--duration-hours 150] [--data CSV]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from estimator.decision.breakeven import Job, exploration_hours, gain_percent, total_speedup_hours
from estimator.decision.next_trials import TrialOutcome, advise_next_trials, search_so_far

DATA = Path("/work/shared/data/vtrain/measured_single_node.csv")
GROUP = ["# GPUs", "global batch", "hidden size", "attention heads", "# layers", "sequence length"]
TIME = "iteration time (ms)"
TRIAL_HOURS = 25 / 60
PATIENCE = 10
REUSES = (1.0, 5.0, 20.0)

Rule = Callable[[np.ndarray, Job], int]


def run_all(times: np.ndarray, job: Job) -> int:
    return len(times)


def patience(times: np.ndarray, job: Job) -> int:
    """Trials run when stopping after PATIENCE trials in a row without a new best."""
    best, since = times[0], 0
    for i in range(1, len(times)):
        if times[i] < best:
            best, since = times[i], 0
        else:
            since += 1
            if since >= PATIENCE:
                return i + 1
    return len(times)


def zest(times: np.ndarray, job: Job) -> int:
    """Trials run when stopping as soon as zest's rule says stop (asked after each trial)."""
    seconds = TRIAL_HOURS * 3600
    outcomes = [TrialOutcome(i, float(v), seconds) for i, v in enumerate(times)]
    for n in range(1, len(times)):
        search = search_so_far(outcomes[:n], "time")
        # the search cannot run more trials than the study holds configurations
        advice = advise_next_trials(search, job, horizon=len(times) - n, bootstrap_samples=0)
        if advice.decision == "stop":
            return n
    return len(times)


RULES: dict[str, Rule] = {"run all N": run_all, f"stop after {PATIENCE} without improvement": patience,
                          "zest advise": zest}  # fmt: skip


def replay(studies: list[tuple[int, np.ndarray]], orders: int, seed: int, duration: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for study, (gpus, times) in enumerate(studies):
        for order in range(orders):
            shuffled = times[rng.permutation(len(times))]
            for reuse in REUSES:
                job = Job(duration, gpus, reuse)
                for rule, stop in RULES.items():
                    n = stop(shuffled, job)
                    z = float(gain_percent(shuffled[:n].min(), shuffled[0]))
                    spent = exploration_hours(n, TRIAL_HOURS)
                    net = gpus * (total_speedup_hours(duration, z, reuse) - spent)
                    rows.append((study, order, reuse, rule, n, gpus * spent, z, net))
    return pd.DataFrame(
        rows, columns=["study", "order", "reuse", "rule", "trials", "gpu_hours", "z_percent", "net_gpu_hours"]
    )


def table(results: pd.DataFrame, studies: int, orders: int) -> str:
    per_order = results.groupby(["reuse", "rule", "order"], sort=False).agg(
        trials=("trials", "sum"), gpu_hours=("gpu_hours", "sum"), z=("z_percent", "mean"),
        net=("net_gpu_hours", "sum"),
    )  # fmt: skip
    mean = per_order.groupby(level=["reuse", "rule"], sort=False).mean()
    lines = [
        "| R | rule | trials run | GPU-h spent | GPU-h saved vs all N | mean Z found % "
        "| Z given up vs all N (points) | net saving GPU-h |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for reuse in REUSES:
        everything = mean.loc[(reuse, "run all N")]
        for rule in RULES:
            m = mean.loc[(reuse, rule)]
            lines.append(
                f"| {reuse:g} | {rule} | {m['trials']:,.0f} | {m['gpu_hours']:,.0f} "
                f"| {everything['gpu_hours'] - m['gpu_hours']:,.0f} | {m['z']:.2f} "
                f"| {everything['z'] - m['z']:.2f} | {m['net']:,.0f} |"
            )
    lines.append(
        f"\n{studies} measured vTrain studies (A100), {orders} random orders each (seeded); totals over the "
        "studies, mean over orders; t = 25 min per trial, T = "
        f"{results.attrs['duration']:g} h"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration-hours", type=float, default=150.0)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    frame = pd.read_csv(args.data)
    studies = [
        (int(key[0]), group[TIME].to_numpy(dtype=np.float64))
        for key, group in frame.groupby(GROUP, sort=True)
        if len(group) >= 2
    ]
    started = time.perf_counter()
    results = replay(studies, args.orders, args.seed, args.duration_hours)
    results.attrs["duration"] = args.duration_hours
    print(table(results, len(studies), args.orders))
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
