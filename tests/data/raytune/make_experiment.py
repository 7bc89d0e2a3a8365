"""Regenerates the Ray Tune experiment beside this file: ``python tests/data/raytune/make_experiment.py``.

Deterministic. ``gpt-microbatch/`` is what ``Tuner(train_gpt, run_config=RunConfig(
name="gpt-microbatch", storage_path=...))`` with a function trainable, metric
``tokens_per_s``, mode ``max`` and a scheduler stopping trials at 4 iterations
leaves behind (Ray 2.x): five trials, two at a time, on a driver whose local time
is UTC+1 (the folder names and ``date`` are local time, ``timestamp`` is Unix
seconds, truncated as Ray's ``int(time.mktime(...))`` does). Trial 2 raised
CUDA out of memory after one iteration; trial 3 was stopped after 2 of 4.
"""

from __future__ import annotations

import csv
import json
import shutil
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).parent
EXPERIMENT = HERE / "gpt-microbatch"
T0 = datetime(2026, 11, 24, 8, 0, 0, tzinfo=UTC)  # Unix 1795507200
LOCAL = timezone(timedelta(hours=1))  # the driver's time zone
PREFIX = "3f2a9"  # Ray's trial id prefix for this run: <prefix>_<index:05d>
HOST, NODE_IP = "gpu-node-07", "10.1.0.7"

# (config, start after T0 in s, seconds per iteration, tokens_per_s, step_time_s, failed)
TRIALS = [
    ({"micro_batch": 1, "zero_stage": 1}, 2.0, [30.25, 30.0, 30.0, 30.0],
     [9000.0, 9400.0, 9500.0, 9600.0], [7.28, 6.97, 6.9, 6.83], False),
    ({"micro_batch": 4, "zero_stage": 1}, 2.5, [20.5, 20.0, 20.0, 20.0],
     [12000.0, 13200.0, 12400.0, 12300.0], [5.46, 4.96, 5.28, 5.33], False),
    ({"micro_batch": 8, "zero_stage": 2}, 84.0, [40.75], [13100.0], [5.0], True),
    ({"micro_batch": 2, "zero_stage": 2}, 123.0, [25.5, 25.0], [8000.0, 8100.0], [8.19, 8.09], False),
    ({"micro_batch": 4, "zero_stage": 2}, 125.0, [22.25, 22.0, 22.0, 22.0],
     [11000.0, 12800.0, 12900.0, 13000.0], [5.96, 5.12, 5.08, 5.04], False),
]  # fmt: skip
CONSTANT = {"model": "gpt-1.3b", "optim": {"lr": 0.0003}}  # not searched: not in the folder names


def local(moment: datetime) -> str:
    return moment.astimezone(LOCAL).strftime("%Y-%m-%d_%H-%M-%S")


def main() -> None:
    shutil.rmtree(EXPERIMENT, ignore_errors=True)
    EXPERIMENT.mkdir()
    created = local(T0)
    # Experiment-level files, by the names Ray writes; zest never reads them, so their content is a stub.
    (EXPERIMENT / f"experiment_state-{created}.json").write_text("{}\n")
    (EXPERIMENT / f"basic-variant-state-{created}.json").write_text("{}\n")
    # Ray's pickles (tuner.pkl, each trial's params.pkl and error.pkl) are left out: the repository keeps
    # no file that loads by running code. zest never opens them; tests/test_raytune.py adds stand-ins
    # where their presence matters.
    for index, (searched, start_s, durations, tokens, steps, failed) in enumerate(TRIALS):
        trial_id = f"{PREFIX}_{index:05d}"
        config = {**searched, **CONSTANT}
        tag = f"{index}_" + ",".join(f"{k}={v}" for k, v in searched.items())
        start = T0 + timedelta(seconds=start_s)
        folder = EXPERIMENT / f"train_gpt_{trial_id}_{tag}_{local(start)}"
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        results = []
        elapsed = 0.0
        for iteration, (seconds, tps, step) in enumerate(zip(durations, tokens, steps, strict=True), 1):
            elapsed += seconds
            now = start + timedelta(seconds=elapsed)
            stopped = not failed and len(durations) < 4 and iteration == len(durations)
            results.append(
                {
                    "tokens_per_s": tps,
                    "step_time_s": step,
                    "timestamp": int(now.timestamp()),
                    "checkpoint_dir_name": None,
                    "done": stopped or iteration == 4,
                    "training_iteration": iteration,
                    "trial_id": trial_id,
                    "date": local(now),
                    "time_this_iter_s": seconds,
                    "time_total_s": elapsed,
                    "pid": 41200 + index,
                    "hostname": HOST,
                    "node_ip": NODE_IP,
                    "config": config,
                    "time_since_restore": elapsed,
                    "iterations_since_restore": iteration,
                }
            )
        with (folder / "result.json").open("w") as out:
            for result in results:
                out.write(json.dumps(result) + "\n")
        with (folder / "progress.csv").open("w", newline="") as out:
            columns = [k for k in results[0] if k != "config"]
            writer = csv.DictWriter(out, fieldnames=columns)
            writer.writeheader()
            writer.writerows([{k: r[k] for k in columns} for r in results])
        if failed:
            at = start + timedelta(seconds=elapsed + 3.0)
            (folder / "error.txt").write_text(
                f"Failure # 1 (occurred at {local(at)})\n"
                f"ray::ImplicitFunc.train() (pid={41200 + index}, ip={NODE_IP}, "
                f"actor_id=5c1d0e7a3b2f4e9a8d6c1b0a01000000, repr=train_gpt)\n"
                '  File "/opt/train_gpt.py", line 88, in train_gpt\n'
                "    loss.backward()\n"
                "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. "
                "GPU 0 has a total capacity of 79.10 GiB of which 1.21 GiB is free.\n"
            )


if __name__ == "__main__":
    main()
