"""Option types shared by the commands of the ``zest`` group."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import click
from click.core import ParameterSource

from collectors.errors import CaptureWriteError

if TYPE_CHECKING:
    from collectors.prometheus import PrometheusAuth


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
