"""``zest serve``: the Prometheus exporter, as a node agent (NVML) or a cluster service (Prometheus).

The HTTP side follows the Prometheus exporters' conventions: ``/metrics`` on
a listen address, TLS and basic auth switched on by a web configuration file
in exporter-toolkit's format (``--web-config``; bcrypt password hashes) or TLS
alone by ``--tls-cert``/``--tls-key``. Registered in the ``zest`` group by
:mod:`estimator.cli.main`. The HTTP side is :mod:`estimator.serving.http`.

It logs to stderr one line per change of state (config loaded, listening, jobs
found, source down and up again, shutting down), as logfmt or as JSON lines
(``--log-format``). SIGTERM stops it cleanly (exit 0), SIGINT too, with exit 130; SIGHUP
reloads the config.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

import click
from prometheus_client import CollectorRegistry

from collectors.errors import ConfigError, SlurmUnavailable
from collectors.sources import NVML, PROMETHEUS_PREFIX
from estimator.cli.options import DurationType, source_access_options
from estimator.decision.algorithms import DEFAULT_ALGORITHMS, DEFAULT_TRIAL_MINUTES, capture_shares
from estimator.serving import metrics as m
from estimator.serving.config import (
    DEFAULT_DURATION_HOURS,
    DEFAULT_REUSE,
    DEFAULT_WINDOW_SECONDS,
    EXAMPLE_CONFIG_NAME,
    ServeConfig,
    example_config_text,
    load_config,
)
from estimator.serving.http import RenderedMetrics, WebConfig, build_server, load_web_config

if TYPE_CHECKING:  # the exporter's stages load in the command: zest estimate imports this module's options
    from wsgiref.simple_server import WSGIServer

    from collectors.prometheus import PrometheusAuth
    from estimator.serving.collector import ExporterState
    from estimator.serving.runner import Runner, Shard, SlurmInputs, SummarySource

#: Outside 9100-9999, which the Prometheus wiki's default port allocations list as taken in full
#: (dcgm-exporter 9400, jobstats 9445, nvidia_gpu_exporter 9835 among them).
DEFAULT_PORT = 10940
DEFAULT_LISTEN = f":{DEFAULT_PORT}"
DEFAULT_INTERVAL = "60s"
DEFAULT_STEP = "30s"
DEFAULT_SAMPLE_INTERVAL = "1s"
#: Exit status of a run that SIGINT (Ctrl-C) ended: 128 + 2, as shells report it (README's exit codes).
EXIT_INTERRUPTED: Final = 130

log = logging.getLogger(__name__)


# --- logging ---------------------------------------------------------------------------------------

#: Attributes every LogRecord has; any other attribute came in ``extra=`` and is a field of the line.
_RECORD_ATTRIBUTES: Final = frozenset(
    {*logging.LogRecord("", 0, "", 0, "", (), None).__dict__, "message", "asctime", "taskName"}
)
#: Level names as Prometheus and its exporters write them (go-kit, slog): lower case, "warn".
_LEVELS: Final = {"WARNING": "warn", "CRITICAL": "error"}


def log_fields(record: logging.LogRecord) -> dict[str, Any]:
    """``ts``, ``level``, ``msg``, the fields given in ``extra=``, and ``exc`` (a traceback), in order."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    fields: dict[str, Any] = {
        "ts": f"{stamp}.{int(record.msecs):03d}Z",
        "level": _LEVELS.get(record.levelname, record.levelname.lower()),
        "msg": record.getMessage(),
    }
    fields.update((k, v) for k, v in record.__dict__.items() if k not in _RECORD_ATTRIBUTES)
    if record.exc_info and record.exc_info[1] is not None:
        fields["exc"] = "".join(traceback.format_exception(record.exc_info[1])).rstrip()
    return fields


def _logfmt_value(value: Any) -> str:
    text = "true" if value is True else "false" if value is False else str(value)
    if text and not any(c in text for c in ' ="\\\n\t') and text.isprintable():
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    """One ``key=value`` line per record, as Prometheus logs: ``ts=... level=info msg="..." source=nvml``."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in log_fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per record (JSON lines), with the keys of :func:`log_fields`."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(log_fields(record), default=str, ensure_ascii=False)


LOG_FORMATS: Final[Mapping[str, type[logging.Formatter]]] = {"logfmt": LogfmtFormatter, "json": JsonFormatter}
_handler: logging.Handler | None = None  # the one configure_logging installed, replaced on a second call


def configure_logging(log_format: str) -> None:
    """Send zest's log records (INFO and above) to stderr in ``log_format`` (logfmt or json)."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(LOG_FORMATS[log_format]())
    root.addHandler(_handler)
    logging.getLogger("estimator").setLevel(logging.INFO)


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT``, ``:PORT`` (all addresses) or ``[IPv6]:PORT`` as (host, port)."""
    match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]]*):(\d{1,5})", text.strip())
    if not match or not 0 <= int(match[2]) <= 65535:
        raise click.BadParameter(f"{text!r} is not ADDR:PORT, :PORT or [IPv6]:PORT", param_hint="'--listen'")
    return match[1].strip("[]") or "0.0.0.0", int(match[2])


# --- the command ----------------------------------------------------------------------------------


class ShardType(click.ParamType):
    """``I/N``: replica I of N (0 <= I < N), as (I, N)."""

    name = "I/N"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        match = re.fullmatch(r"(\d+)/(\d+)", str(value).strip())
        if not match:
            self.fail(f"{value!r} is not I/N (replica I of N, 0 <= I < N), e.g. 0/2", param, ctx)
        index, count = int(match[1]), int(match[2])
        if count < 1:
            self.fail(f"{value!r}: N must be at least 1", param, ctx)
        if index >= count:
            self.fail(f"{value!r}: I must be in 0..{count - 1} for N = {count}", param, ctx)
        return index, count


def make_source(
    source: str,
    config: ServeConfig,
    *,
    interval_seconds: float,
    sample_seconds: float,
    step_seconds: float,
    prometheus_auth: PrometheusAuth | None = None,
    hpc_job_dir: Path | None = None,
    shard: Shard | None = None,
) -> SummarySource:
    """The summary source ``--source`` names: ``nvml`` (looking up Slurm jobs in ``hpc_job_dir`` too, where
    given) or ``prometheus=URL`` (with ``prometheus_auth``, and serving only ``shard``'s jobs, where given).
    A shard of a node agent is refused: it serves its own node's jobs."""
    from estimator.serving.runner import ClusterSummaries, NodeSummaries

    if source == NVML and shard is not None:
        raise click.UsageError(
            "--shard splits a cluster service's jobs (--source prometheus=URL); a node agent (nvml) "
            "serves only its own node's jobs: run one per node, unsharded"
        )
    if source == NVML:
        from collectors.nvml import NvmlSource

        return NodeSummaries(
            NvmlSource(),
            config.window_seconds,
            sample_seconds=interval_seconds,
            interval_seconds=sample_seconds,
            hpc_job_dir=hpc_job_dir,
        )
    if source.startswith(PROMETHEUS_PREFIX) and source != PROMETHEUS_PREFIX:
        from collectors.prometheus import PrometheusSource

        url = source.removeprefix(PROMETHEUS_PREFIX)
        prometheus = PrometheusSource(url, step_seconds=step_seconds, auth=prometheus_auth)
        return ClusterSummaries(prometheus, config.window_seconds, shard=shard)
    raise click.BadParameter(
        f"{source!r}: zest serve reads nvml (node agent) or prometheus=URL (cluster service)",
        param_hint="'--source'",
    )


def _defaults_help() -> str:
    """The command's help: what it does, and every default it takes without a config."""
    trials = ", ".join(f"{a.name} {a.trials}" for a in DEFAULT_ALGORITHMS)
    return (
        "Export every running job's Z_e, break-even figures and verdicts for Prometheus.\n\n"
        "Without --config every job is weighed with the built-in defaults: "
        f"T = {DEFAULT_DURATION_HOURS:g} h of training, R = {DEFAULT_REUSE:g} run of the tuned "
        f"configuration, t = {DEFAULT_TRIAL_MINUTES:g} min per trial, N = {trials} trials, G = the GPUs "
        f"seen in the job's telemetry, no engineering cost; features over the last "
        f"{DEFAULT_WINDOW_SECONDS / 3600:g} h (--window). With --slurm, T is each Slurm job's time limit "
        "and R its user's earlier jobs of the same name (sacct, 90 days); the config's [[override]] "
        "tables still win. See the annotated config with --print-example-config.\n\n"
        "Whatever T is, each job's elapsed time (since its first sample in the source) bounds the answer: "
        f"tuning pays within at most {m.ZEST_R_BREAK_AT_ELAPSED} runs, and one run saves at least "
        f"{m.ZEST_RUN_SAVING_LOWER_BOUND}; the fleet dashboard ranks the jobs whose T is not "
        "configured by these bounds.\n\n"
        "Logs one line per change of state to stderr (logfmt, or JSON lines with --log-format json). "
        "SIGHUP reloads --config. SIGTERM shuts down cleanly (exit 0); SIGINT exits 130; a --listen port "
        "in use exits 9."
    )


def _print_example_config(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(example_config_text(), nl=False)
    ctx.exit(0)


@click.command("serve", help=_defaults_help())
@click.option("--source", required=True, help="nvml (node agent) or prometheus=URL (cluster service).")
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    help="Address and port of /metrics: ADDR:PORT, :PORT or [IPv6]:PORT.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file of break-even defaults and per-job overrides (zest serve --print-example-config "
    "prints an annotated one).",
)
@click.option(
    "--print-example-config",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=_print_example_config,
    help=f"Print the annotated example config ({EXAMPLE_CONFIG_NAME}, every built-in default) and exit.",
)
@click.option(
    "--interval",
    type=DurationType(),
    default=DEFAULT_INTERVAL,
    show_default=True,
    help="Time between estimation cycles (NVML: also how long each cycle samples).",
)
@click.option(
    "--window",
    type=DurationType(),
    help=f"Telemetry each cycle's features cover (default: the config's window_seconds, else "
    f"{DEFAULT_WINDOW_SECONDS / 3600:g}h).",
)
@click.option(
    "--step",
    type=DurationType(),
    default=DEFAULT_STEP,
    show_default=True,
    help="Prometheus: scrape interval of the GPU exporter (subquery resolution).",
)
@click.option(
    "--sample-interval",
    type=DurationType(),
    default=DEFAULT_SAMPLE_INTERVAL,
    show_default=True,
    help="NVML sampling interval.",
)
@click.option(
    "--slurm",
    is_flag=True,
    default=False,
    help="Ask Slurm for each running Slurm job's T (its time limit) and R (its history in sacct).",
)
@click.option(
    "--log-format",
    type=click.Choice(sorted(LOG_FORMATS)),
    default="logfmt",
    show_default=True,
    help="Format of the log lines on stderr: logfmt, or JSON lines.",
)
@click.option(
    "--web-config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="exporter-toolkit web config (YAML): tls_server_config and basic_auth_users (bcrypt).",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="TLS certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="TLS private key (PEM).")
@click.option(
    "--shard",
    type=ShardType(),
    help="Prometheus: serve only the jobs whose id hashes to I of N (Prometheus' relabel hashmod: the low "
    "64 bits of the id's MD5, modulo N), so that N replicas, 0/N to N-1/N, split the fleet.",
)
@source_access_options
def serve(
    source: str,
    listen: str,
    config_path: Path | None,
    interval: float,
    window: float | None,
    step: float,
    sample_interval: float,
    slurm: bool,
    log_format: str,
    web_config: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    shard: tuple[int, int] | None,
    prometheus_auth: PrometheusAuth | None,
    hpc_job_dir: Path | None,
) -> None:
    from estimator.model.default import default_model, z_intervals_for
    from estimator.serving.collector import ExporterState, ZestCollector
    from estimator.serving.runner import Runner, Shard

    configure_logging(log_format)
    replica = Shard(*shard) if shard is not None else None
    address = parse_listen(listen)
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if web_config is not None and tls_cert is not None:
        raise click.UsageError("give TLS files either in --web-config or as --tls-cert/--tls-key, not both")
    web = load_web_config(web_config) if web_config is not None else WebConfig(tls_cert, tls_key)
    config = load_config(config_path)
    if window is not None:
        config = ServeConfig(window, config.detail, config.defaults, config.overrides)
    job_inputs = _slurm_inputs() if slurm else None
    with ServiceSignals() as signals:  # from here on, SIGTERM and SIGINT stop the service after its cleanup
        registry = CollectorRegistry(auto_describe=False)
        rendered = RenderedMetrics(registry)
        # Bound before the source and the model are set up: a port in use is its own error (exit 9).
        server = build_server(address, rendered, web)
        try:
            summaries = make_source(
                source,
                config,
                interval_seconds=interval,
                sample_seconds=sample_interval,
                step_seconds=step,
                prometheus_auth=prometheus_auth,
                hpc_job_dir=hpc_job_dir,
                shard=replica,
            )
            shard_fields = {"shard": str(replica)} if replica is not None else {}
            log.info(
                "config loaded",
                extra={
                    "path": str(config_path) if config_path is not None else "built-in defaults",
                    "overrides": len(config.overrides),
                    "window_seconds": config.window_seconds,
                    "slurm": slurm,
                    **shard_fields,
                },
            )
            model = default_model()
            state = ExporterState(summaries.kind)
            registry.register(ZestCollector(state, coverage_ratio=model.coverage))
            runner = Runner(
                summaries,
                state,
                config,
                lambda features: z_intervals_for(features, model),
                capture_shares(model.capture_shares()),
                interval,
                job_inputs=job_inputs,
            )
            jobs = JobCountLog(state, summaries.kind)

            def after_cycle() -> None:
                rendered.refresh()
                jobs.check()

            runner.after_cycle = after_cycle
            signals.on_reload = config_reloader(runner, config_path)
            rendered.refresh()
            _serve(server, runner, web, address, signals.stop)
        finally:
            if signals.received is not None:
                log.info("shutting down", extra={"signal": signals.received.name})
            server.server_close()
    if signals.received == signal.SIGINT:
        raise click.exceptions.Exit(EXIT_INTERRUPTED)


class JobCountLog:
    """Logs the number of running jobs a cycle estimated, once per change (the first cycle's too)."""

    def __init__(self, state: ExporterState, source: str) -> None:
        self._state, self._source = state, source
        self._count: int | None = None

    def check(self) -> None:
        health = self._state.health()
        if health.last_success_seconds is None:
            return  # no cycle succeeded yet: the count is not known
        count = len(health.snapshot.jobs)
        if count != self._count:
            log.info("jobs found", extra={"jobs": count, "source": self._source})
            self._count = count


class ServiceSignals:
    """SIGTERM and SIGINT stop the cycles; SIGHUP calls ``on_reload`` (once set). Installed while entered.

    Python runs these handlers in the main thread, between two steps of the cycle running there; a
    reload swaps the runner's config whole, so a cycle already under way keeps the one it began with.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.received: signal.Signals | None = None
        self.on_reload: Callable[[], None] | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)
        self.stop.set()
        # A second Ctrl-C while a cycle still waits on its source ends the process at once.
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _on_hangup(self, signum: int, frame: FrameType | None) -> None:
        if self.on_reload is not None and not self.stop.is_set():
            self.on_reload()

    def __enter__(self) -> ServiceSignals:
        handlers = {
            signal.SIGTERM: self._on_stop,
            signal.SIGINT: self._on_stop,
            signal.SIGHUP: self._on_hangup,
        }
        self._previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def config_reloader(runner: Runner, config_path: Path | None) -> Callable[[], None]:
    """Reads ``config_path`` again into ``runner``: break-even inputs, overrides and ``detail``; the
    window stays (the source was built with it). A config that no longer loads is logged, not taken."""
    where = str(config_path) if config_path is not None else "built-in defaults"

    def reload() -> None:
        try:
            fresh = load_config(config_path)
        except ConfigError as exc:
            log.warning(
                "config reload failed, keeping the loaded config", extra={"path": where, "error": str(exc)}
            )
            return
        current = runner.config
        runner.config = ServeConfig(current.window_seconds, fresh.detail, fresh.defaults, fresh.overrides)
        fields = {"path": where, "overrides": len(fresh.overrides)}
        if fresh.window_seconds != current.window_seconds:
            fields["window_seconds_ignored"] = fresh.window_seconds  # a new window takes a restart
        log.info("config reloaded", extra=fields)

    return reload


def _serve(
    server: WSGIServer, runner: Runner, web: WebConfig, address: tuple[str, int], stop: threading.Event
) -> None:
    """Serve /metrics and run cycles until ``stop`` is set."""
    thread = threading.Thread(target=server.serve_forever, name="zest-http", daemon=True)
    thread.start()
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    scheme = "https" if web.tls else "http"
    log.info(
        "listening",
        extra={
            "address": f"{scheme}://{host}:{server.server_port}/metrics",
            "source": runner.source.kind,
            "basic_auth": bool(web.basic_auth_users),
        },
    )
    try:
        runner.run_forever(stop)
    finally:
        server.shutdown()


def _slurm_inputs() -> SlurmInputs:
    """Each running Slurm job's T and R, asked of this host's Slurm; refused here when Slurm is not."""
    import shutil

    from collectors.slurm import INSTALL_HINT, Slurm
    from estimator.serving.runner import SlurmInputs

    if shutil.which("scontrol") is None:
        raise SlurmUnavailable(f"--slurm: Slurm's scontrol is not installed here: {INSTALL_HINT}")
    return SlurmInputs(Slurm())
