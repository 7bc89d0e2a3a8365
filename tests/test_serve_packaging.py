"""The built wheel holds the example config ``zest serve --print-example-config`` prints."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from estimator.serving.config import EXAMPLE_CONFIG_NAME, example_config_text, parse_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_the_example_config(tmp_path: Path) -> None:
    # Built from a copy: the source tree's build/ folder is shared with other builds running at once.
    tree, dist = tmp_path / "tree", tmp_path / "dist"
    tree.mkdir()
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
    (wheel,) = dist.glob("zest_gpu-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read(f"estimator/serving/{EXAMPLE_CONFIG_NAME}").decode("utf-8")
    assert shipped == example_config_text()
    assert len(parse_config(tomllib.loads(shipped), "the wheel's example").overrides) == 2
