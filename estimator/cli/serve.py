"""``zest serve``: the Prometheus exporter, as a node agent (NVML) or a cluster service (Prometheus).

The HTTP side follows the Prometheus exporters' conventions: ``/metrics`` on
a listen address, TLS and basic auth switched on by a web configuration file
in exporter-toolkit's format (``--web-config``; bcrypt password hashes) or TLS
alone by ``--tls-cert``/``--tls-key``. Registered in the ``zest`` group by
:mod:`estimator.cli.main`. The HTTP side is :mod:`estimator.serving.http`.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click
from prometheus_client import CollectorRegistry

from collectors.sources import NVML, PROMETHEUS_PREFIX
from estimator.cli.options import DurationType, source_access_options
from estimator.decision.algorithms import capture_shares
from estimator.serving.config import ServeConfig, load_config
from estimator.serving.http import RenderedMetrics, WebConfig, build_server, load_web_config

if TYPE_CHECKING:  # the exporter's stages load in the command: zest estimate imports this module's options
    from collectors.prometheus import PrometheusAuth
    from estimator.serving.runner import SummarySource

#: Outside 9100-9999, which the Prometheus wiki's default port allocations list as taken in full
#: (dcgm-exporter 9400, jobstats 9445, nvidia_gpu_exporter 9835 among them).
DEFAULT_PORT = 10940
DEFAULT_LISTEN = f":{DEFAULT_PORT}"


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT``, ``:PORT`` (all addresses) or ``[IPv6]:PORT`` as (host, port)."""
    match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]]*):(\d{1,5})", text.strip())
    if not match or not 0 <= int(match[2]) <= 65535:
        raise click.BadParameter(f"{text!r} is not ADDR:PORT, :PORT or [IPv6]:PORT", param_hint="'--listen'")
    return match[1].strip("[]") or "0.0.0.0", int(match[2])


# --- the command ----------------------------------------------------------------------------------


def make_source(
    source: str,
    config: ServeConfig,
    *,
    interval_seconds: float,
    sample_seconds: float,
    step_seconds: float,
    prometheus_auth: PrometheusAuth | None = None,
    hpc_job_dir: Path | None = None,
) -> SummarySource:
    """The summary source ``--source`` names: ``nvml`` (looking up Slurm jobs in ``hpc_job_dir`` too, where
    given) or ``prometheus=URL`` (with ``prometheus_auth``, where given)."""
    from estimator.serving.runner import ClusterSummaries, NodeSummaries

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
        return ClusterSummaries(prometheus, config.window_seconds)
    raise click.BadParameter(
        f"{source!r}: zest serve reads nvml (node agent) or prometheus=URL (cluster service)",
        param_hint="'--source'",
    )


@click.command("serve")
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
    help="TOML file of break-even defaults and per-job overrides (see grafana/zest.example.toml).",
)
@click.option(
    "--interval",
    type=DurationType(),
    default="60s",
    show_default=True,
    help="Time between estimation cycles.",
)
@click.option(
    "--window", type=DurationType(), help="Telemetry each cycle's features cover (default: config, 1h)."
)
@click.option(
    "--step",
    type=DurationType(),
    default="30s",
    show_default=True,
    help="Prometheus: scrape interval of the GPU exporter (subquery resolution).",
)
@click.option(
    "--sample-interval", type=DurationType(), default="1s", show_default=True, help="NVML sampling interval."
)
@click.option(
    "--web-config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="exporter-toolkit web config (YAML): tls_server_config and basic_auth_users (bcrypt).",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="TLS certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="TLS private key (PEM).")
@source_access_options
def serve(
    source: str,
    listen: str,
    config_path: Path | None,
    interval: float,
    window: float | None,
    step: float,
    sample_interval: float,
    web_config: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    prometheus_auth: PrometheusAuth | None,
    hpc_job_dir: Path | None,
) -> None:
    """Export every running job's Z_e, break-even figures and verdicts for Prometheus."""
    from estimator.model.default import default_model, z_intervals_for
    from estimator.serving.collector import ExporterState, ZestCollector
    from estimator.serving.runner import Runner

    # the runner logs each change of state (a failing source, its recovery) to stderr, with the time
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    address = parse_listen(listen)
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if web_config is not None and tls_cert is not None:
        raise click.UsageError("give TLS files either in --web-config or as --tls-cert/--tls-key, not both")
    web = load_web_config(web_config) if web_config is not None else WebConfig(tls_cert, tls_key)
    config = load_config(config_path)
    if window is not None:
        config = ServeConfig(window, config.gpu_series, config.defaults, config.overrides)
    summaries = make_source(
        source,
        config,
        interval_seconds=interval,
        sample_seconds=sample_interval,
        step_seconds=step,
        prometheus_auth=prometheus_auth,
        hpc_job_dir=hpc_job_dir,
    )
    model = default_model()
    state = ExporterState(summaries.kind)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ZestCollector(state, coverage_ratio=model.coverage))
    runner = Runner(
        summaries,
        state,
        config,
        lambda features: z_intervals_for(features, model),
        capture_shares(model.capture_shares()),
        interval,
    )
    rendered = RenderedMetrics(registry)
    runner.after_cycle = rendered.refresh
    server = build_server(address, rendered, web)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    thread = threading.Thread(target=server.serve_forever, name="zest-http", daemon=True)
    thread.start()
    scheme = "https" if web.tls else "http"
    click.echo(
        f"zest serve: {scheme}://{address[0]}:{server.server_port}/metrics, source {summaries.kind}", err=True
    )
    try:
        runner.run_forever(stop)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.shutdown()
        server.server_close()
