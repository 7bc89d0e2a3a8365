"""Option types shared by the commands of the ``zest`` group."""

from __future__ import annotations

import re
from typing import Any, ClassVar

import click


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
