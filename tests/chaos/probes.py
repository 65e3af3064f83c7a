"""What the harness looks at from outside: the broker's queue, the slot's confirmed position, the
connections Redis sees and which process holds them."""

from __future__ import annotations

import base64
import contextlib
import os
import time
from pathlib import Path

import psycopg
import redis

QUEUE = "invalidation"  # the Celery queue of invalidation tasks (a Redis list of the same name)


def broker_backlog(broker_url: str) -> tuple[int, int]:
    """(tasks waiting in the invalidation queue, tasks delivered to a worker and not acknowledged)."""
    with redis.Redis.from_url(broker_url, socket_timeout=5) as client:
        queued = sum(int(client.llen(key)) for key in client.scan_iter(match=f"{QUEUE}*", _type="list"))
        return queued, int(client.hlen("unacked"))


def unacked_tasks(broker_url: str) -> list[str]:
    """Each task delivered to a worker and not acknowledged (kombu's hash and index): its id, how
    long ago it was delivered, and its arguments."""
    import orjson

    found = []
    with redis.Redis.from_url(broker_url, socket_timeout=5) as client:
        delivered = {tag: at for tag, at in client.zrange("unacked_index", 0, -1, withscores=True)}
        for tag, raw in client.hgetall("unacked").items():
            with contextlib.suppress(Exception):
                message = orjson.loads(raw)[0]
                body = orjson.loads(base64.b64decode(message["body"]))
                age = time.time() - delivered.get(tag, time.time())
                found.append(f"{message['headers'].get('id')} delivered {age:.1f} s ago {body[0][:2]}")
    return found


def consumer_blocked(broker_url: str) -> list[dict[str, str]]:
    """Broker connections blocked in BRPOP right now (a Celery consumer waiting for a task)."""
    with redis.Redis.from_url(broker_url, socket_timeout=5) as client:
        return [c for c in client.client_list() if c.get("cmd") == "brpop" and "b" in c.get("flags", "")]


def slot_confirmed_past(dsn: str, slot: str, lsn: str) -> bool:
    """True once the slot's confirmed position is past ``lsn`` (a position inside a transaction):
    the listener confirmed that transaction."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn > %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s", (lsn, slot)
        ).fetchone()
        return bool(row and row[0])


def slot_exists(dsn: str, slot: str) -> bool:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        return conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone() is not None


def drop_slot(dsn: str, slot: str) -> None:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        )


def local_tcp_ports(pid: int) -> set[int]:
    """Local ports of the TCP sockets process ``pid`` holds (from /proc: which connection is whose)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def subscriber_connections(redis_url: str, pid: int) -> list[dict[str, str]]:
    """Redis's view of the pub/sub connections that process ``pid`` holds (its eviction subscriber)."""
    ports = local_tcp_ports(pid)
    with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
        return [
            c for c in client.client_list() if int(c.get("sub", "0")) > 0 and int(c["addr"].rsplit(":", 1)[1]) in ports
        ]
