"""What every text capture reader returns, and how samples of a file without timestamps are placed.

Shared by :mod:`collectors.files` and the readers of tool outputs it dispatches to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from collectors.errors import MalformedCapture
from collectors.schema import in_time_span
from collectors.util import iso_utc

Row = dict[str, object]


@dataclass
class Parsed:
    rows: list[Row]
    notes: list[str]
    source_format: str
    lines: list[int] = field(default_factory=list)  # the file's line of each row, to name it in notes
    # GPU id -> the process ids the file shows on it (nvidia-smi pmon), to select a job by ``pid:<pid>``
    pids: dict[str, set[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Clock:
    """Places the samples of a file without timestamps."""

    path: Path
    interval_seconds: float | None
    start_time: datetime | None
    modified: datetime

    def times(
        self, count: int, default_interval_seconds: float, what: str
    ) -> tuple[list[datetime | None], str]:
        """``count`` sample times (None where one falls outside the span samples can have), and a note
        saying how they were placed."""
        interval = self.interval_seconds or default_interval_seconds
        try:
            step = timedelta(seconds=interval)
            if self.start_time is None:
                first = self.modified - step * max(count - 1, 0)
                anchor = f"the last at the file's modification time {iso_utc(self.modified)}"
            else:
                first = self.start_time if self.start_time.tzinfo else self.start_time.replace(tzinfo=UTC)
                anchor = f"starting at {iso_utc(first)}"
            times = [first + step * i for i in range(count)]
        except OverflowError:
            raise MalformedCapture(
                f"{self.path}:1: {what} spaced {interval:g} s reach past year 9999: "
                "give a start time and interval that fit"
            ) from None
        placed: list[datetime | None] = [t if in_time_span(t) else None for t in times]
        return placed, f"{what} spaced {interval:g} s, {anchor}"
