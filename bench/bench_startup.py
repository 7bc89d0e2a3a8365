"""Time zest's start-up: the plain calculator and an estimate from a capture, beside ``python -c pass``.

Each command runs in a fresh process, ``--repeat`` times (median printed),
first on an idle machine, then with one busy-looping process per core, as on a
GPU node whose CPUs feed the training job. Goals (issue 11): the calculator in
≤ 0.3 s, an estimate from a bundled capture in ≤ 1 s::

    python bench/bench_startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

CALCULATOR = (
    "--duration-hours", "150",
    "--algorithm", "heuristic=30:10", "--algorithm", "black-box=500:25", "--algorithm", "exhaustive=2000:35",
)  # fmt: skip
FROM_CAPTURE = (
    "--job-id",
    "gpt-1.3b-a100-tp4",
    "--source",
    "example",
    "--duration-hours",
    "150",
    "--reuse",
    "5",
)
GOALS_SECONDS = {"estimate-z, plain calculator": 0.3, "estimate-z, estimate from a capture": 1.0}


def _estimate_z() -> list[str]:
    script = shutil.which("estimate-z")
    if script is not None:
        return [script]
    return [sys.executable, "-c", "from estimator.cli.main import estimate_z_main; estimate_z_main()"]


def _median_seconds(argv: Sequence[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@contextmanager
def _busy_cores(count: int) -> Iterator[None]:
    """``count`` processes that keep one core each busy until the block ends."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per command (median printed)")
    args = parser.parse_args(argv)
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "estimate-z, plain calculator": [*_estimate_z(), *CALCULATOR],
        "estimate-z, estimate from a capture": [*_estimate_z(), *FROM_CAPTURE],
    }
    cores = os.cpu_count() or 1
    print(f"median of {args.repeat} runs, seconds wall; {cores} cores")
    print(f"{'command':40} {'idle':>7} {'busy':>7} {'goal':>6}")
    for name, command in commands.items():
        idle = _median_seconds(command, args.repeat)
        with _busy_cores(cores):
            busy = _median_seconds(command, args.repeat)
        goal = GOALS_SECONDS.get(name)
        print(f"{name:40} {idle:7.2f} {busy:7.2f} {'' if goal is None else f'{goal:6.1f}'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
