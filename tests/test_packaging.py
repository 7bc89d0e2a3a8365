"""The built wheel carries everything ``estimate-z`` needs, and works away from the source tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_a_working_estimate_z(tmp_path: Path) -> None:
    dist, site, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("zest_gpu-*.whl")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import estimator, collectors; print(estimator.__file__)"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
        check=True,
    )
    assert where.stdout.startswith(str(site))
    script = site / "bin" / "estimate-z"
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            "--duration-hours",
            "150",
            "--algorithm",
            "heuristic=30:10",
            "--algorithm",
            "black-box=500:25",
            "--algorithm",
            "exhaustive=2000:35",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    r_breaks = [f"{a['r_break']:.3g}" for a in json.loads(result.stdout)["algorithms"]]
    assert r_breaks == ["0.833", "5.56", "15.9"]
    # The README's first command: a bundled capture and the shipped model, from the wheel alone.
    first = subprocess.run(
        [sys.executable, str(script), "--job-id", "gpt13b-a100-tp4", "--source", "example",
         "--duration-hours", "150", "--reuse", "5", "--output", "json"],
        capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    z = doc["z_expected_percent"]
    assert 0 <= z["low"] <= z["mid"] <= z["high"] < 100
    assert doc["telemetry"]["features"]["gpus"] == 8 and doc["recommendation"] in (
        "heuristic",
        "black-box",
        "exhaustive",
        None,
    )
