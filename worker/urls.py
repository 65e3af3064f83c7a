"""Checks of the URLs the worker and its commands connect to, before anything connects (pure code).

A malformed URL is the operator's typo, not an outage: each function returns what is wrong with a
URL (``None`` if nothing), in words that say what was expected, and the command turns it into a usage
error (exit code 2) that names the option or setting. What is checked is what the client libraries
would otherwise raise deep inside a connect, or silently get wrong (``redis://host/abc`` is database 0
to redis-py).
"""

from __future__ import annotations

import contextlib
from urllib.parse import SplitResult, urlsplit

REDIS_FORMS = "redis://[[user]:password@]host[:port][/db], rediss://... (TLS) or unix:///path.sock[?db=N]"
DATABASE_FORMS = "postgresql://[user[:password]@]host[:port]/dbname or a key=value DSN"
HTTP_FORMS = "http(s)://host[:port][/path]"


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL, as redis-py reads it."""
    parts, problem = _split(url, ("redis", "rediss", "unix"), REDIS_FORMS)
    if parts is None:
        return problem
    if parts.scheme == "unix":
        if not parts.path:
            return f"unix:// needs a socket path, e.g. unix:///run/redis.sock (expected {REDIS_FORMS})"
    else:
        problem = _port_problem(parts) or _redis_db_problem(parts.path)
        if problem:
            return problem
    from redis.connection import parse_url

    try:
        parse_url(url)  # the query arguments (socket_timeout=..., db=...), as the client parses them
    except ValueError as exc:
        return str(exc)
    return None


def broker_url_problem(url: str) -> str | None:
    """What is wrong with a Celery broker URL (``;`` separates failover URLs, as kombu reads them)."""
    from kombu.transport import TRANSPORT_ALIASES

    for one in url.split(";"):
        parts, problem = _split(one.strip(), None, "transport://[user:password@]host[:port][/vhost]")
        if parts is None:
            return problem
        transport = parts.scheme.split("+", 1)[0]
        if transport not in TRANSPORT_ALIASES:  # by name: a transport's own libraries need not be here
            return f"unknown broker transport {parts.scheme!r} (expected redis://, rediss://, amqp://, sqs://...)"
        problem = _port_problem(parts)
        if problem is None and transport in ("redis", "rediss") and "+" not in parts.scheme:
            problem = _redis_db_problem(parts.path)
        if problem:
            return problem
    return None


def database_url_problem(url: str) -> str | None:
    """What is wrong with a Postgres connection string, as libpq parses it (ports included, which
    libpq only checks when it connects)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    if "://" in url and url.split("://", 1)[0] not in ("postgresql", "postgres"):
        return f"unsupported scheme {url.split('://', 1)[0]!r} (expected {DATABASE_FORMS})"
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        return f"{' '.join(str(exc).split())} (expected {DATABASE_FORMS})"
    for port in str(params.get("port") or "").split(","):
        if port and not _valid_port(port):
            return f"port {port!r} is not a number from 1 to 65535"
    return None


def http_url_problem(url: str) -> str | None:
    """What is wrong with an HTTP API base URL."""
    parts, problem = _split(url, ("http", "https"), HTTP_FORMS)
    if parts is None:
        return problem
    if not parts.hostname:
        return f"no host (expected {HTTP_FORMS})"
    return _port_problem(parts)


def sentinels_problem(text: str) -> str | None:
    """What is wrong with a ``host:port,host:port`` list of Redis Sentinels."""
    for item in text.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host:
            return f"entry {item.strip()!r} is not host:port"
        if not _valid_port(port):
            return f"entry {item.strip()!r}: port {port!r} is not a number from 1 to 65535"
    return None


def _split(url: str, schemes: tuple[str, ...] | None, forms: str) -> tuple[SplitResult | None, str | None]:
    if not url.strip():
        return None, f"empty (expected {forms})"
    if "://" not in url:
        return None, f"not a URL (expected {forms})"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed IPv6 bracket
        return None, f"{exc} (expected {forms})"
    if schemes is not None and parts.scheme not in schemes:
        return None, f"unsupported scheme {parts.scheme!r} (expected {forms})"
    return parts, None


def _port_problem(parts: SplitResult) -> str | None:
    hostport = parts.netloc.rpartition("@")[2]
    if hostport.startswith("["):  # [v6 address]:port
        port = hostport.partition("]")[2].removeprefix(":")
    else:
        port = hostport.partition(":")[2]  # as urllib reads it: all after the first colon
    if port and not _valid_port(port):
        return f"port {port!r} is not a number from 1 to 65535"
    return None


def _redis_db_problem(path: str) -> str | None:
    db = path.strip("/")
    if db and not db.isdigit():
        return f"database {db!r} is not a number (the path is the database number, e.g. /0)"
    return None


def _valid_port(text: str) -> bool:
    with contextlib.suppress(ValueError):
        return text.isdigit() and 1 <= int(text) <= 65535
    return False
