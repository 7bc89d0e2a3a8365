"""Small helpers every stage shares, each written once: one-line texts, ISO times, host names, folders."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import platformdirs

#: zest's distribution name on PyPI (``pip install zest-gpu``); the import packages and commands keep theirs.
DISTRIBUTION = "zest-gpu"
#: Longest text of another program's answer quoted in one of zest's one-line errors.
QUOTED_CHARS = 300


def one_line(text: object, limit: int | None = QUOTED_CHARS) -> str:
    """``text`` (or an exception's message) on one line, whitespace collapsed, cut to ``limit`` chars."""
    flat = " ".join(str(text).split())
    if limit is None or len(flat) <= limit:
        return flat
    return flat[: limit - 1] + "…"


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_PLAIN_USER = re.compile(r"[A-Za-z0-9._~%+-]+")


def redact_url(url: str) -> str:
    """``url`` fit to show: whatever precedes its host's ``@`` becomes ``***`` (a plain user name stays).

    The credentials are taken to end at the *last* ``@``, so a password holding
    an unescaped ``/``, ``?``, ``#`` or ``@``, or a URL without a scheme
    (``alice:pw@host:9090``), shows none of its secret:
    ``http://alice:p/w@host:9090`` → ``http://alice:***@host:9090``. A path that
    merely holds an ``@`` is hidden up to it too: showing too little is safe.
    An empty authority (``sqlite:///path``) or a bare path holds no credentials and stays.
    """
    scheme = _SCHEME.match(url)
    prefix = scheme.group(0) if scheme else ""
    userinfo, at, rest = url[len(prefix) :].rpartition("@")
    if not at or userinfo.startswith("/"):
        return url
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon and _PLAIN_USER.fullmatch(user) else "***"
    return f"{prefix}{shown}@{rest}"


def iso_utc(moment: datetime | float, timespec: str = "seconds") -> str:
    """A moment (aware datetime or Unix seconds) as ISO 8601 in UTC: ``2026-11-24T08:00:01Z``.

    ``timespec`` as :meth:`datetime.isoformat` takes it (``microseconds`` to keep all of it).
    """
    when = datetime.fromtimestamp(moment, UTC) if isinstance(moment, int | float) else moment.astimezone(UTC)
    return when.isoformat(timespec=timespec).replace("+00:00", "Z")


def short_host(host: str) -> str:
    """A host name without its domain (``node01.cluster.example`` → ``node01``), as schedulers name nodes."""
    return host.split(".", 1)[0]


def zest_version() -> str:
    """The installed zest's version, or ``unknown`` when run from a tree that was never installed."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def user_data_dir() -> Path:
    """zest's folder in the user's data directory (``platformdirs``; XDG_DATA_HOME on Linux)."""
    return Path(platformdirs.user_data_dir("zest", appauthor=False))


def user_cache_dir() -> Path:
    """zest's folder in the user's cache directory (``platformdirs``; XDG_CACHE_HOME on Linux)."""
    return Path(platformdirs.user_cache_dir("zest", appauthor=False))
