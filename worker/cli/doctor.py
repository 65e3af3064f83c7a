"""``doctor``: one line per check of Redis, the broker and the database (OK, WARN, FAIL or SKIP)."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import click

from shared_cache import CacheManager
from tasks.support import mask_url

from .checks import Check, check_broker
from .database_checks import database_checks
from .errors import describe, redis_errors
from .redis_checks import check_redis, redis_checks_after_ping
from .state import State


@click.command()
@click.option("--skip-db", is_flag=True, help="Report the database checks as SKIP (no durable source here).")
@click.option("--skip-broker", is_flag=True, help="Report the broker check as SKIP.")
@click.option(
    "--max-lag-bytes",
    default=256 * 1024 * 1024,
    show_default=True,
    type=click.IntRange(min=0),
    help="WARN when the replication slot is further behind than this.",
)
@click.pass_obj
def doctor(state: State, skip_db: bool, skip_broker: bool, max_lag_bytes: int) -> None:
    """Check Redis (ping, version, a maxmemory-policy that never evicts keys without TTL, eviction
    subscribers, the listener's report, dead letters), the broker (ping, queue depths) and the
    database (connect, wal_level=logical, the replication slot and its lag, the output plugins
    allowed, wal2json usable, with a temporary slot). One line per check: OK, WARN, FAIL or SKIP.
    Exit code 1 if any check FAILs (WARN alone: 0). An unreachable broker or database is a FAIL
    unless --skip-broker/--skip-db; a malformed URL is a usage error (exit code 2)."""
    # Settings first: a malformed one is a usage error before anything is checked.
    state.cache  # noqa: B018
    broker_url = None if skip_broker else state.broker_url
    database_url = None if skip_db else state.database_url
    checks = run_redis_checks(state)
    checks.append(Check("SKIP", "broker", "--skip-broker") if broker_url is None else check_broker(broker_url))
    if database_url is None:
        checks.append(Check("SKIP", "database", "--skip-db"))
    else:
        ls = state.listener
        checks += database_checks(database_url, mask_url(database_url), ls.slot_name, max_lag_bytes)
    # What failed may quote an exception, and an exception may quote a password; OK lines show
    # URLs already masked (scrubbing them too would mangle a detail that contains a weak password).
    checks = [c if c.status == "OK" else c._replace(detail=state.scrub(c.detail)) for c in checks]
    failed = any(check.status == "FAIL" for check in checks)
    state.emit(
        {"ok": not failed, "checks": [{"status": s, "check": c, "detail": d} for s, c, d in checks]},
        lambda: "\n".join(f"{s:<5} {c:<21} {d}" for s, c, d in checks),
    )
    if failed:
        sys.exit(1)


def run_redis_checks(state: State) -> list[Check]:
    """The Redis checks on a manager of their own; Redis failing mid-way is one FAIL line."""
    try:
        return asyncio.run(_redis_checks(state))
    except redis_errors() as exc:  # closing a half-open client may fail too
        return [Check("FAIL", "redis", f"{state.redis_display}: {describe(exc)}")]


async def _redis_checks(state: State) -> list[Check]:
    manager = CacheManager(state.cache)
    try:
        try:
            first = await check_redis(manager, state.redis_display)
        except redis_errors() as exc:
            return [
                Check("FAIL", "redis", f"{state.redis_display}: {describe(exc)}"),
                Check("SKIP", "redis checks", "Redis unreachable: memory policy, subscribers, listener not checked"),
            ]
        return [first, *await redis_checks_after_ping(manager, state.listener.dead_letter_key)]
    finally:
        with contextlib.suppress(Exception):
            await manager.close()
