"""``zest serve``: the Prometheus exporter, as a node agent (NVML) or a cluster service (Prometheus).

The HTTP side follows the Prometheus exporters' conventions: ``/metrics`` on
a listen address, TLS and basic auth switched on by a web configuration file
in exporter-toolkit's format (``--web-config``; bcrypt password hashes) or TLS
alone by ``--tls-cert``/``--tls-key``. Registered in the ``zest`` group by
:mod:`estimator.cli.main`; ``python -m estimator.cli.serve`` runs it alone.
"""

from __future__ import annotations

import base64
import binascii
import errno
import functools
import gzip
import hashlib
import re
import signal
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from types import FrameType
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import click
from click.core import ParameterSource
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, make_wsgi_app

from collectors.errors import ConfigError, InputError, PortInUse
from collectors.sources import NVML, PROMETHEUS_PREFIX
from collectors.util import one_line
from estimator.cli.options import DurationType
from estimator.decision.algorithms import capture_shares
from estimator.serving.config import ServeConfig, load_config

if TYPE_CHECKING:  # the exporter's stages load in the command: zest estimate imports this module's options
    from collectors.prometheus import PrometheusAuth
    from estimator.serving.runner import SummarySource

#: Outside 9100-9999, which the Prometheus wiki's default port allocations list as taken in full
#: (dcgm-exporter 9400, jobstats 9445, nvidia_gpu_exporter 9835 among them).
DEFAULT_PORT = 10940
DEFAULT_LISTEN = f":{DEFAULT_PORT}"
WEB_CONFIG_EXTRA = "pip install 'zest-gpu[web]'"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

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
    from collectors.prometheus import PrometheusAuth

    if (user is None) != (password is None):
        raise click.UsageError(
            f"Prometheus basic auth needs both --prometheus-user (or {PROMETHEUS_USER_ENV}) and "
            f"{PROMETHEUS_PASSWORD_ENV}, or neither"
        )
    if user is None and token is None:
        return None
    return PrometheusAuth(user, password, token)


def source_access_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """How to get at a source's telemetry: Prometheus credentials and dcgm-exporter's job mapping folder.

    ``command`` receives ``prometheus_auth`` (:class:`PrometheusAuth` or None) and
    ``hpc_job_dir`` (a folder or None). The password and the token are read from
    the environment only, never from the command line.
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
        click.option(
            "--hpc-job-mapping-dir",
            "hpc_job_dir",
            type=click.Path(file_okay=False, path_type=Path),
            envvar=HPC_JOB_MAPPING_DIR_ENV,
            show_envvar=True,
            help="NVML: dcgm-exporter's job mapping folder (its --hpc-job-mapping-dir), where the GPUs of a "
            "Slurm job are looked up.",
        ),
    ]
    decorated: Callable[..., Any] = with_auth
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


# --- web configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WebConfig:
    """TLS and basic-auth settings of the HTTP server (exporter-toolkit's ``web-config.yml`` keys)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    basic_auth_users: Mapping[str, bytes] | None = None  # user -> bcrypt hash

    @property
    def tls(self) -> bool:
        return self.cert_file is not None


def load_web_config(path: Path) -> WebConfig:
    """Read an exporter-toolkit web config: ``tls_server_config`` (cert_file, key_file), ``basic_auth_users``.

    Relative file paths are relative to the config's folder, as in exporter-toolkit.
    Needs PyYAML and bcrypt (``zest-gpu[web]``). Raises :class:`ConfigError`.
    """
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"--web-config needs PyYAML and bcrypt: {WEB_CONFIG_EXTRA}") from None
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read web config {path} ({exc.strerror}); check the path") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"web config {path} is not valid YAML ({one_line(str(exc))})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"web config {path} must be a mapping of tls_server_config, basic_auth_users")
    unknown = sorted(set(document) - {"tls_server_config", "basic_auth_users"})
    if unknown:
        raise ConfigError(
            f"web config {path}: zest does not support {', '.join(unknown)}; "
            "use tls_server_config (cert_file, key_file) and basic_auth_users"
        )
    base = Path(path).parent
    cert = key = None
    tls = document.get("tls_server_config")
    if tls is not None:
        if not isinstance(tls, dict) or not tls.get("cert_file") or not tls.get("key_file"):
            raise ConfigError(f"web config {path}: tls_server_config needs cert_file and key_file")
        cert, key = base / str(tls["cert_file"]), base / str(tls["key_file"])
    users = document.get("basic_auth_users")
    hashes: dict[str, bytes] | None = None
    if users is not None:
        if not isinstance(users, dict) or not users:
            raise ConfigError(f"web config {path}: basic_auth_users must map user names to bcrypt hashes")
        _require_bcrypt()
        hashes = {}
        for user, hashed in users.items():
            if not isinstance(hashed, str) or not re.fullmatch(
                r"\$2[abxy]?\$\d\d\$[./A-Za-z0-9]{53}", hashed
            ):
                raise ConfigError(
                    f"web config {path}: the password of {user!r} is not a bcrypt hash "
                    "(make one with htpasswd -nBC 10 USER)"
                )
            hashes[str(user)] = hashed.encode()
    return WebConfig(cert, key, hashes)


def _require_bcrypt() -> None:
    try:
        import bcrypt  # noqa: F401
    except ImportError:
        raise ConfigError(f"basic_auth_users needs bcrypt: {WEB_CONFIG_EXTRA}") from None


def with_basic_auth(app: WsgiApp, users: Mapping[str, bytes]) -> WsgiApp:
    """``app`` behind HTTP basic auth checked against bcrypt hashes (checks that passed are cached)."""
    import bcrypt

    passed: set[tuple[str, bytes]] = set()
    lock = threading.Lock()

    def check(user: str, password: bytes) -> bool:
        hashed = users.get(user)
        if hashed is None:
            return False
        # bcrypt is slow on purpose; remember a passed check by a digest, never the password.
        key = (user, hashlib.sha256(hashed + b"\0" + password).digest())
        with lock:
            if key in passed:
                return True
        if not bcrypt.checkpw(password, hashed):
            return False
        with lock:
            passed.add(key)
        return True

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        header = str(environ.get("HTTP_AUTHORIZATION", ""))
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            if user and check(user, password.encode()):
                return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("WWW-Authenticate", 'Basic realm="zest"'), ("Content-Type", "text/plain; charset=utf-8")],
        )
        return [b"Unauthorized\n"]

    return guarded


# --- HTTP server ----------------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # an exporter is scraped every few seconds: no access log


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT``, ``:PORT`` (all addresses) or ``[IPv6]:PORT`` as (host, port)."""
    match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]]*):(\d{1,5})", text.strip())
    if not match or not 0 <= int(match[2]) <= 65535:
        raise click.BadParameter(f"{text!r} is not ADDR:PORT, :PORT or [IPv6]:PORT", param_hint="'--listen'")
    return match[1].strip("[]") or "0.0.0.0", int(match[2])


class RenderedMetrics:
    """The /metrics body of ``registry``, rendered once per estimation cycle instead of once per scrape.

    Rendering 10,000 jobs takes seconds (bench/bench_exporter.py); the estimates
    change only once a cycle, so every scrape between two cycles gets the same
    complete rendering at once, and a scrape during a cycle the previous one.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._bodies = self._render()

    def _render(self) -> tuple[bytes, bytes]:
        """The exposition text, plain and gzip-compressed (Prometheus asks for gzip)."""
        text = generate_latest(self.registry)
        return text, gzip.compress(text, compresslevel=6)

    def refresh(self) -> None:
        self._bodies = self._render()  # one reference swap: a scrape sees the old or the new rendering whole

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: zest serves /metrics\n"]
        plain, compressed = self._bodies
        headers = [("Content-Type", CONTENT_TYPE_LATEST)]
        body = plain
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = compressed
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", [*headers, ("Content-Length", str(len(body)))])
        return [body]


def build_server(
    listen: tuple[str, int], registry: CollectorRegistry | RenderedMetrics, web: WebConfig
) -> WSGIServer:
    """The HTTP server of ``registry`` (rendered per scrape) or of a :class:`RenderedMetrics` (rendered per
    cycle) on ``listen`` (port 0: any free port), with TLS and basic auth."""
    app: WsgiApp = registry if isinstance(registry, RenderedMetrics) else make_wsgi_app(registry)
    if web.basic_auth_users:
        app = with_basic_auth(app, web.basic_auth_users)
    host, port = listen
    server_class = _ThreadingServer6 if ":" in host else _ThreadingServer
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"cannot listen on {where}: the port is in use; stop what listens there "
                "or choose another --listen port"
            ) from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise PortInUse(
                f"cannot listen on {where}: no permission to bind the port (ports below 1024 need "
                "privileges); choose another --listen port"
            ) from None
        raise InputError(
            f"cannot listen on {where} ({exc.strerror or exc}); give an address of this host with --listen"
        ) from None
    if web.tls:
        assert web.cert_file is not None and web.key_file is not None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(web.cert_file, web.key_file)
        except (OSError, ssl.SSLError) as exc:
            server.server_close()
            raise ConfigError(
                f"cannot load TLS certificate {web.cert_file} and key {web.key_file} ({exc}); "
                "check both files"
            ) from None
        server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


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
