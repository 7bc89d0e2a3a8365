"""zest's errors: one root, a class per meaning, each carrying its exit code.

The tree lives in the first stage so that every stage can raise from it
without reaching back into a later one. Each message is one line: what is
wrong and what to do. Library code raises; only the command line prints and
exits, with ``exc.exit_code`` (the README's exit-code table lists them), and
the exporter counts a failed cycle by the class. Callers catch by meaning
(:class:`TelemetryError`, :class:`ModelError`...), never by an ordered list.

Classes raised by one stage only (``SpecError`` of the performance model,
``DataError`` of training, ``SchemaError`` of the canonical frame) are
declared beside it, under the group of their meaning.
"""

from __future__ import annotations

from typing import ClassVar


class ZestError(Exception):
    """Root of zest's errors. ``exit_code``: the code a command exits with when this ends it."""

    exit_code: ClassVar[int] = 1


# --- bad input: options, files and configurations the user gave ---------------------------------


class InputError(ZestError):
    """An input the user gave is invalid (an option's value, a job spec, a configuration)."""

    exit_code = 2


class ConfigError(InputError):
    """A ``zest serve`` configuration or web configuration file is invalid; the message names file and key."""


# --- telemetry: the sources of GPU samples ---------------------------------------------------------


class TelemetryError(ZestError):
    """Telemetry cannot be read: the source is down, answered with an error, or its data is unusable."""

    exit_code = 3


class SourceUnavailable(TelemetryError):
    """The source cannot be reached or used at all (no NVML driver, Prometheus down, file missing)."""

    exit_code = 3


class SourceQueryError(TelemetryError):
    """The source answered, but with an error (HTTP error, bad query, timeout)."""

    exit_code = 4


class JobNotFound(TelemetryError):
    """The source holds no telemetry for the requested job id."""

    exit_code = 5


class MalformedCapture(TelemetryError):
    """Telemetry cannot be parsed or does not fit the canonical frame; the message names file and line."""

    exit_code = 6


# --- the scheduler ---------------------------------------------------------------------------------


class SchedulerError(ZestError):
    """The scheduler (Slurm) cannot say what zest asked of a job."""

    exit_code = 11


class SlurmJobNotFound(SchedulerError):
    """Slurm knows no job by that id: not in the controller and not in accounting."""

    exit_code = 10


class SlurmUnavailable(SchedulerError):
    """Slurm's commands are not installed or cannot be run here."""

    exit_code = 11


class SlurmAccountingUnavailable(SlurmUnavailable):
    """Slurm runs without accounting (no slurmdbd), so ``sacct`` has no history."""


class SlurmQueryError(SchedulerError):
    """A Slurm command failed or timed out (controller down, bad answer)."""

    exit_code = 12


class SlurmPermissionDenied(SchedulerError):
    """Slurm refused the query: the job or the accounting data is not this user's to see."""

    exit_code = 13


# --- the Z_e model ---------------------------------------------------------------------------------


class ModelError(ZestError):
    """A model file is missing, unreadable or holds types zest does not trust; the message says what to do."""

    exit_code = 8


# --- outputs: what zest writes or serves -----------------------------------------------------------


class OutputError(ZestError):
    """An output cannot be written (capture, chart, model, card): folder missing, no permission, disk full."""

    exit_code = 7


class CaptureWriteError(OutputError):
    """A capture file cannot be written (directory missing, no permission, disk full)."""


class PortInUse(OutputError):
    """``zest serve`` cannot listen on its address: the port is taken or not this user's to bind."""

    exit_code = 9


# --- tuning outcomes: recorded studies and their store ---------------------------------------------


class OutcomesError(ZestError):
    """A tuning study cannot be read: no such study, storage unreadable, multi-objective, nothing done."""

    exit_code = 15


class OptunaMissing(OutcomesError):
    """Optuna, needed to read a tuning study, is not installed (``pip install 'zest-gpu[optuna]'``)."""

    exit_code = 14


class StoreError(OutcomesError):
    """The outcomes store cannot be opened, read or written (rights, disk full, a newer zest's schema)."""

    exit_code = 16
