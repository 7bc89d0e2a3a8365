"""Option types shared by the commands of the ``zest`` group."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

import click
from click.core import ParameterSource

from collectors.errors import CaptureWriteError
from collectors.util import DISTRIBUTION

if TYPE_CHECKING:
    from collectors.prometheus import PrometheusAuth


#: Every command answers both (``zest``, each subcommand, ``estimate-z``).
HELP_OPTIONS: Final = ("-h", "--help")


def with_version(command: click.Command) -> click.Command:
    """``command`` answering ``-h`` as ``--help``, and ``--version``, unless it does already."""
    command.context_settings.setdefault("help_option_names", list(HELP_OPTIONS))
    if not any("--version" in getattr(p, "opts", ()) for p in command.params):
        click.version_option(package_name=DISTRIBUTION)(command)
    return command


class DurationType(click.ParamType):
    """A duration > 0: a plain number in the option's ``unit`` (seconds unless given), or a number with a
    unit s, m, h or d (``90``, ``30s``, ``45m``, ``72h``, ``3d``); converted to the option's unit.

    One type for every duration option: ``--window`` (seconds), ``--trial-minutes`` (minutes),
    ``--duration-hours`` (hours). Every refusal says the accepted range and units.
    """

    name = "DURATION"
    _SECONDS: ClassVar[dict[str, float]] = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    _NAMES: ClassVar[dict[str, str]] = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

    def __init__(self, unit: str = "s") -> None:
        if unit not in self._SECONDS:
            raise ValueError(f"unit must be one of {', '.join(self._SECONDS)}, got {unit!r}")
        self.unit = unit

    @property
    def accepted(self) -> str:
        """The accepted range and forms, as every refusal says them."""
        return (
            f"a duration > 0 (x>0), a number of {self._NAMES[self.unit]} or one with a unit "
            "s, m, h or d (45m, 72h, 3d)"
        )

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, bool):
            self.fail(f"{value!r} is not a duration; accepted: {self.accepted}", param, ctx)
        if isinstance(value, int | float):  # a default, or a caller's number: already in the unit
            number, seconds_per = float(value), self._SECONDS[self.unit]
        else:
            text, unit = str(value).strip(), self.unit
            if text[-1:].lower() in self._SECONDS:
                text, unit = text[:-1], text[-1].lower()
            try:
                number = float(text)
            except ValueError:
                self.fail(f"{value!r} is not a duration; accepted: {self.accepted}", param, ctx)
            seconds_per = self._SECONDS[unit]
        if not math.isfinite(number):
            self.fail(
                f"{value!r}: {self._NAMES[self.unit]} must be finite; accepted: {self.accepted}", param, ctx
            )
        if number <= 0:
            self.fail(f"{value!r} is out of range; accepted: {self.accepted}", param, ctx)
        return number * seconds_per / self._SECONDS[self.unit]


class FloatIn(click.FloatRange):
    """click's ``FloatRange`` whose refusal of a value that is no number says the accepted range too."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number; accepted range: {self._describe_range()}", param, ctx)
        return super().convert(value, param, ctx)


class IntIn(click.IntRange):
    """click's ``IntRange`` whose refusal of a value that is no whole number says the accepted range too."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            int(value)
        except (TypeError, ValueError):
            self.fail(
                f"{value!r} is not a whole number; accepted range: {self._describe_range()}", param, ctx
            )
        return super().convert(value, param, ctx)


# --- the job the break-even prices, shared by estimate-z and zest advise ---------------------------


def breakeven_job_options(
    *, from_scheduler: bool, trial_minutes: float | None, trial_minutes_default: str = ""
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--duration-hours`` (T, hours), ``--gpus`` (G), ``--reuse`` (R) and ``--trial-minutes`` (t, minutes):
    the job the break-even prices, one definition for every command that prices tuning.

    ``from_scheduler``: the command may draw T, G and R from Slurm, so T is not required and G and R
    default to None (1 when Slurm says nothing either); else T is required and G and R default to 1.
    ``trial_minutes`` is t's default; None when the command finds its own, as ``trial_minutes_default``
    says in the help.
    """
    options = [
        click.option(
            "--duration-hours",
            "duration_hours",
            type=DurationType("h"),
            required=not from_scheduler,
            help="T: the job's training duration before tuning: hours (150), or with a unit (72h, 3d, 45m); "
            "> 0." + (" [required unless Slurm gives the job's time limit]" if from_scheduler else ""),
        ),
        click.option(
            "--gpus",
            type=IntIn(min=1),
            default=None if from_scheduler else 1,
            show_default=not from_scheduler,
            help="G: the job's number of GPUs (>= 1)." + (" Default 1." if from_scheduler else ""),
        ),
        click.option(
            "--reuse",
            type=FloatIn(min=1),
            default=None if from_scheduler else 1.0,
            show_default=not from_scheduler,
            help="R: how many times the tuned configuration will be run (>= 1)."
            + (" Default 1." if from_scheduler else ""),
        ),
        click.option(
            "--trial-minutes",
            type=DurationType("m"),
            default=trial_minutes,
            show_default=trial_minutes is not None,
            help="t: time of one tuning trial: minutes (25), or with a unit (90s, 1.5h); > 0."
            + (f" {trial_minutes_default}" if trial_minutes_default else ""),
        ),
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def capture_output_options(
    help_text: str, *, required: bool = True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--output FILE`` for a command that writes a capture, and ``--force`` to replace one.

    A capture can hold telemetry that cannot be sampled again, so an existing
    file is refused before any telemetry is read (see :func:`check_output`).
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        command = click.option(
            "--force", is_flag=True, help="Replace the --output file if it exists (default: refuse)."
        )(command)
        return click.option(
            "--output", required=required, type=click.Path(dir_okay=False, path_type=Path), help=help_text
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


# The environment is read here, by click, and nowhere below the command line. The names are the
# ones zest has always read, and dcgm-exporter's own for its job mapping folder.
PROMETHEUS_USER_ENV = "ZEST_PROMETHEUS_USER"
PROMETHEUS_PASSWORD_ENV = "ZEST_PROMETHEUS_PASSWORD"
PROMETHEUS_TOKEN_ENV = "ZEST_PROMETHEUS_TOKEN"
HPC_JOB_MAPPING_DIR_ENV = "DCGM_HPC_JOB_MAPPING_DIR"


# --- options of the telemetry sources, shared with zest estimate and zest capture -----------------


def _environment_only(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse a secret given as a flag: every user of the host can read a command line in ``ps``."""
    if value is not None and ctx.get_parameter_source(param.name or "") is ParameterSource.COMMANDLINE:
        raise click.BadParameter(f"a secret on the command line shows in ps; set {param.envvar} instead")
    return value


def auth_from_options(user: str | None, password: str | None, token: str | None) -> PrometheusAuth | None:
    """The Prometheus credentials the options and environment give; None when they give none."""
    if (user is None) != (password is None):
        raise click.UsageError(
            f"Prometheus basic auth needs both --prometheus-user (or {PROMETHEUS_USER_ENV}) and "
            f"{PROMETHEUS_PASSWORD_ENV}, or neither"
        )
    if user is None and token is None:
        return None
    from collectors.prometheus import PrometheusAuth  # the Prometheus client only when credentials are given

    return PrometheusAuth(user, password, token)


def prometheus_access_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Prometheus credentials: ``command`` receives ``prometheus_auth`` (:class:`PrometheusAuth` or None).

    The password and the token are read from the environment only, never from the command line.
    """

    @functools.wraps(command)
    def with_auth(
        *args: Any,
        prometheus_user: str | None,
        prometheus_password: str | None,
        prometheus_token: str | None,
        **kwargs: Any,
    ) -> Any:
        auth = auth_from_options(prometheus_user, prometheus_password, prometheus_token)
        return command(*args, prometheus_auth=auth, **kwargs)

    options = [
        click.option(
            "--prometheus-user",
            envvar=PROMETHEUS_USER_ENV,
            show_envvar=True,
            help=f"Prometheus basic-auth user; the password is read from {PROMETHEUS_PASSWORD_ENV} only. "
            f"Without a user, a bearer token in {PROMETHEUS_TOKEN_ENV} is sent. Credentials in the URL "
            "come first.",
        ),
        click.option(
            "--prometheus-password",
            envvar=PROMETHEUS_PASSWORD_ENV,
            hidden=True,
            callback=_environment_only,
        ),
        click.option(
            "--prometheus-token",
            envvar=PROMETHEUS_TOKEN_ENV,
            hidden=True,
            callback=_environment_only,
        ),
    ]
    decorated: Callable[..., Any] = with_auth
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


def source_access_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """How to get at any source's telemetry: Prometheus credentials (:func:`prometheus_access_options`)
    and dcgm-exporter's job mapping folder for NVML (``command`` receives ``hpc_job_dir``, or None)."""
    command = click.option(
        "--hpc-job-mapping-dir",
        "hpc_job_dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=HPC_JOB_MAPPING_DIR_ENV,
        show_envvar=True,
        help="NVML: dcgm-exporter's job mapping folder (its --hpc-job-mapping-dir), where the GPUs of a "
        "Slurm job are looked up.",
    )(command)
    return prometheus_access_options(command)
