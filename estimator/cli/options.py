"""Option types shared by the commands of the ``zest`` group."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import click

from collectors.errors import CaptureWriteError


class DurationType(click.ParamType):
    """A duration in seconds, or with a unit s, m, h or d (``90``, ``30s``, ``30m``, ``2h``, ``1d``)."""

    name = "DURATION"
    _UNITS: ClassVar[dict[str, float]] = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", str(value))
        if not match or float(match[1]) <= 0:
            self.fail(f"{value!r} is not a duration > 0 such as 90, 30s, 30m, 2h or 1d", param, ctx)
        return float(match[1]) * self._UNITS[match[2]]


def capture_output_options(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--output FILE`` for a command that writes a capture, and ``--force`` to replace one.

    A capture can hold telemetry that cannot be sampled again, so an existing
    file is refused before any telemetry is read (see :func:`check_output`).
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        command = click.option(
            "--force", is_flag=True, help="Replace the --output file if it exists (default: refuse)."
        )(command)
        return click.option(
            "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help=help_text
        )(command)

    return decorate


def check_output(output: Path, force: bool) -> None:
    """Refuse to replace an existing ``--output`` without ``--force`` (exit code 2), and an ``--output``
    whose folder is missing or not writable (:class:`CaptureWriteError`), before any telemetry is read."""
    if output.exists() and not force:
        raise click.BadParameter(
            f"{output} exists; pass --force to replace it, or choose another file", param_hint="'--output'"
        )
    folder = output.parent
    if not folder.is_dir():
        raise CaptureWriteError(
            f"cannot write {output}: {folder} is not a folder; create it, or choose another --output"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CaptureWriteError(
            f"cannot write {output}: no permission to write in {folder}; choose another --output"
        )
