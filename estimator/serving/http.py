"""The HTTP side of ``zest serve``: ``/metrics`` as Prometheus exporters serve it.

A listen address, the exposition rendered once per cycle (gzip when asked),
TLS and basic auth switched on by a web configuration file in
exporter-toolkit's format (bcrypt password hashes), or TLS alone.

Faulty or hostile clients cost only their own connection: every connection
gets its own thread, the TLS handshake happens there (never in the thread that
accepts), with a timeout, and so does every read; the listen queue holds a
burst of scrapers; an unknown user takes as long to refuse as a wrong password.
At most :data:`MAX_CONNECTIONS` connections are served at once: one more is
answered 503 (closed, under TLS) at once, without a thread, so that a flood of
idle connections costs bounded memory and clears within the read timeout.
"""

from __future__ import annotations

import base64
import binascii
import errno
import gzip
import hashlib
import re
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, make_wsgi_app

from collectors.errors import ConfigError, InputError, PortInUse
from collectors.util import one_line

WEB_CONFIG_EXTRA = "pip install 'zest-gpu[web]'"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

HANDSHAKE_TIMEOUT_S = 10.0  # a client silent this long in its TLS handshake is dropped
READ_TIMEOUT_S = 30.0  # a client silent this long while sending its request or reading the answer is dropped
# Pending connections the kernel keeps until the server accepts them. socketserver's default, 5, overflows
# under a burst of scrapers (each dropped SYN costs the client a 1 s retransmission); the kernel caps the
# value at net.core.somaxconn.
LISTEN_BACKLOG = max(socket.SOMAXCONN, 128)
#: Connections served at once (a thread each); Prometheus scrapes an exporter over one or two. Beyond
#: it a connection gets "503 Service Unavailable" at once (node_exporter's --web.max-requests is 40).
MAX_CONNECTIONS = 64
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: 45\r\n\r\ntoo many connections to zest serve; try again\n"
)


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
    except UnicodeDecodeError:
        raise ConfigError(f"web config {path} is not UTF-8 text; save it as UTF-8") from None
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
            if not 4 <= int(hashed.split("$")[2]) <= 31:
                raise ConfigError(
                    f"web config {path}: the bcrypt cost of {user!r}'s password must be 4 to 31 "
                    "(make one with htpasswd -nBC 10 USER)"
                )
            hashes[str(user)] = hashed.encode()
    return WebConfig(cert, key, hashes)


def _require_bcrypt() -> None:
    try:
        import bcrypt  # noqa: F401
    except ImportError:
        raise ConfigError(f"basic_auth_users needs bcrypt: {WEB_CONFIG_EXTRA}") from None


def _dummy_hash(users: Mapping[str, bytes]) -> bytes:
    """A bcrypt hash of no one's password, as dear to check as the dearest of ``users``' hashes."""
    import bcrypt

    cost = max(int(hashed.split(b"$")[2]) for hashed in users.values())
    return bcrypt.hashpw(b"zest: no such user", bcrypt.gensalt(rounds=cost))


def with_basic_auth(app: WsgiApp, users: Mapping[str, bytes]) -> WsgiApp:
    """``app`` behind HTTP basic auth checked against bcrypt hashes (checks that passed are cached).

    An unknown user's password is checked against a dummy hash of the same cost, so that the
    answer's delay does not tell which user names exist.
    """
    import bcrypt

    passed: set[tuple[str, bytes]] = set()
    lock = threading.Lock()
    dummy = _dummy_hash(users)

    def check(user: str, password: bytes) -> bool:
        hashed = users.get(user)
        if hashed is None:
            bcrypt.checkpw(password, dummy)  # the time a known user's wrong password takes
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
            if check(user, password.encode()):
                return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("WWW-Authenticate", 'Basic realm="zest"'), ("Content-Type", "text/plain; charset=utf-8")],
        )
        return [b"Unauthorized\n"]

    return guarded


# --- HTTP server ----------------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(getattr(self.server, "read_timeout_s", READ_TIMEOUT_S))

    def log_message(self, format: str, *args: Any) -> None:
        pass  # an exporter is scraped every few seconds: no access log


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per connection; with ``tls_context``, the TLS handshake runs in that thread too.

    ``ssl.SSLContext.wrap_socket`` on the listening socket would do each handshake inside
    ``accept()``, without a timeout: one client that never sends its ClientHello would stop
    the server from accepting anyone else.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG
    tls_context: ssl.SSLContext | None = None
    handshake_timeout_s = HANDSHAKE_TIMEOUT_S
    read_timeout_s = READ_TIMEOUT_S
    max_connections = MAX_CONNECTIONS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._count = threading.Lock()
        self._serving = 0  # connections being served now (changed only under _count)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve ``request`` in a thread of its own, or refuse it at once when as many are served already."""
        with self._count:
            busy = self._serving >= self.max_connections
            if not busy:
                self._serving += 1
        if not busy:
            super().process_request(request, client_address)
            return
        if self.tls_context is None:
            try:
                request.settimeout(0)  # the answer fits the socket's buffer; never wait on the client
                request.sendall(_BUSY)
            except OSError:
                pass
        self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count:
                self._serving -= 1

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Serve one connection (in its own thread): the TLS handshake first, when TLS is on."""
        if self.tls_context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(self.handshake_timeout_s)
        try:
            # Takes over the descriptor of ``request``; closes it when the handshake fails.
            connection = self.tls_context.wrap_socket(request, server_side=True)
        except (OSError, ValueError):  # a timeout, a client that is not speaking TLS, a reset
            return
        try:
            super().finish_request(connection, client_address)
        finally:
            self.shutdown_request(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client that timed out, hung up or broke TLS: it loses its own connection, nothing else
        super().handle_error(request, client_address)


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


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
        server.tls_context = context  # handshakes happen in each connection's thread
    return server
