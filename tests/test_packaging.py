"""The built wheel carries everything ``estimate-z`` and ``zest serve`` need, and works away from the
source tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from estimator.serving.config import EXAMPLE_CONFIG_NAME, example_config_text, parse_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources: the tree's own build/ folder keeps files of earlier
    builds (and is shared with builds running at once), which would hide a package the wheel leaves out."""
    tree, dist = tmp_path_factory.mktemp("tree"), tmp_path_factory.mktemp("dist")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("estimator", "collectors", "models"):
        shutil.copytree(ROOT / name, tree / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(tree)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = dist.glob("zest_gpu-*.whl")
    return built


def test_the_wheel_holds_the_example_config(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read(f"estimator/serving/{EXAMPLE_CONFIG_NAME}").decode("utf-8")
    assert shipped == example_config_text()
    assert len(parse_config(tomllib.loads(shipped), "the wheel's example").overrides) == 2


def test_wheel_installs_a_working_estimate_z(wheel: Path, tmp_path: Path) -> None:
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
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
    # -S: no site module, so no .pth file of an editable install of this tree lends the wheel what it
    # lacks; the dependencies come from this interpreter's site-packages on PYTHONPATH.
    deps = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), deps])}
    source_packages = sorted(
        str(init.parent.relative_to(ROOT)).replace(os.sep, ".")
        for top in ("estimator", "collectors")
        for init in (ROOT / top).rglob("__init__.py")
    )
    where = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            f"import importlib; print(*(importlib.import_module(p).__file__ for p in {source_packages!r}))",
        ],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
        check=True,
    )
    assert all(path.startswith(str(site)) for path in where.stdout.split()), where.stdout
    script = site / "bin" / "estimate-z"
    result = subprocess.run(
        [
            sys.executable,
            "-S",
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
        [sys.executable, "-S", str(script), "--job-id", "gpt-1.3b-a100-tp4", "--source", "example",
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
