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


class ConfigError(CollectorError, ValueError):
    """A ``zest serve`` configuration or web configuration file is invalid; the message names file and key."""


class SlurmJobNotFound(JobNotFound):
    """Slurm knows no job by that id: not in the controller and not in accounting."""


class SlurmUnavailable(SourceUnavailable):
    """Slurm's commands are not installed or cannot be run here."""


class SlurmAccountingUnavailable(SlurmUnavailable):
    """Slurm runs without accounting (no slurmdbd), so ``sacct`` has no history."""


class SlurmQueryError(SourceQueryError):
    """A Slurm command failed or timed out (controller down, bad answer)."""


class SlurmPermissionDenied(CollectorError):
    """Slurm refused the query: the job or the accounting data is not this user's to see."""


class OutcomesError(CollectorError):
    """A tuning study cannot be read: no such study, storage unreadable, multi-objective, nothing done."""


class OptunaMissing(OutcomesError):
    """Optuna, needed to read a tuning study, is not installed (``pip install 'zest[optuna]'``)."""


class StoreError(CollectorError):
    """The outcomes store cannot be opened, read or written (rights, disk full, a newer zest's schema)."""
