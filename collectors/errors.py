"""Errors a collector raises. Each message is one line: what is wrong and what to do.

The command line maps each class to a documented exit code; library code
never prints or exits.
"""

from __future__ import annotations


class CollectorError(Exception):
    """Base class of every error a telemetry source raises."""


class SourceUnavailable(CollectorError):
    """The source cannot be reached or used at all (no NVML driver, Prometheus down, file missing)."""


class SourceQueryError(CollectorError):
    """The source answered, but with an error (HTTP error, bad query, timeout)."""


class JobNotFound(CollectorError):
    """The source holds no telemetry for the requested job id."""


class MalformedCapture(CollectorError):
    """A capture file cannot be parsed; the message names the file and line."""


class CaptureWriteError(CollectorError):
    """A capture file cannot be written (directory missing, no permission, disk full)."""


class SpecError(CollectorError, ValueError):
    """A job spec for ``zest simulate`` is invalid or cannot run; the message names the field and why."""
