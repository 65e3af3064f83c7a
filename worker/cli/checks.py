"""What a doctor check returns, and the broker check (the other checks: ``redis_checks``,
``database_checks``)."""

from __future__ import annotations

from typing import Literal, NamedTuple
from urllib.parse import urlsplit

from tasks.support import mask_url

from .errors import describe

Status = Literal["OK", "WARN", "FAIL", "SKIP"]


class Check(NamedTuple):
    """One line of ``doctor``: OK, WARN (exit code 0), FAIL (exit code 1) or SKIP."""

    status: Status
    name: str
    detail: str


def check_broker(url: str) -> Check:
    """The broker answers; on Redis, how many tasks wait in each queue."""
    shown = mask_url(url)
    try:
        if urlsplit(url).scheme in ("redis", "rediss", "unix"):
            import redis

            client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
            try:
                client.ping()
                depth = {queue: int(client.llen(queue)) for queue in ("invalidation", "warming")}
            finally:
                client.close()
            queued = ", ".join(f"{queue} {n}" for queue, n in depth.items())
            return Check("OK", "broker", f"{shown} answers; queued: {queued}")
        from kombu import Connection  # type: ignore[attr-defined]

        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
        return Check("OK", "broker", f"{shown} answers")
    except Exception as exc:  # whatever the transport raises, the broker is not usable
        return Check("FAIL", "broker", f"{shown}: {describe(exc)}")
