"""Doctor's database checks, one function each: the server, wal_level, the replication slot and its
lag, the output plugins a replication user may load, and wal2json itself (with a temporary slot)."""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import Any

from worker.sources.postgres import plugin_fix, plugin_refused

from .checks import Check
from .errors import describe
from .render import size

STATEMENT_TIMEOUT = "10s"  # a temporary slot waits for running transactions: do not wait forever


def check_database(conn: Any, shown_url: str) -> Check:
    version = conn.info.server_version
    return Check("OK", "database", f"{shown_url} answers (Postgres {version // 10000}.{version % 10000})")


def check_wal_level(conn: Any) -> Check:
    row = conn.execute("SHOW wal_level").fetchone()
    wal_level = str(row[0]) if row else "?"
    if wal_level == "logical":
        return Check("OK", "wal_level", "logical")
    return Check("FAIL", "wal_level", f"{wal_level}: logical decoding needs wal_level=logical (restart)")


def check_replication_slot(conn: Any, slot: str, max_lag_bytes: int) -> Check:
    """The listener's slot: wal2json, not lost, and not too far behind."""
    row = conn.execute(
        "SELECT plugin, active, pg_current_wal_lsn() - confirmed_flush_lsn, to_jsonb(s) ->> 'wal_status'"
        " FROM pg_replication_slots s WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        return Check(
            "WARN",
            "replication slot",
            f"{slot} does not exist yet: the listener creates it when it starts (changes before that are not seen)",
        )
    plugin, active, lag, wal_status = row
    if plugin != "wal2json":
        return Check("FAIL", "replication slot", f"{slot} uses plugin {plugin!r}, the listener needs wal2json")
    if wal_status == "lost":
        return Check(
            "FAIL",
            "replication slot",
            f"{slot} lost WAL it needed (max_slot_wal_keep_size): changes were missed; drop and recreate it",
        )
    lag_bytes = int(lag or 0)
    detail = f"{slot} (wal2json, {'in use' if active else 'idle'}), lag {size(lag_bytes)}"
    if lag_bytes > max_lag_bytes:
        return Check("WARN", "replication slot", f"{detail}: the listener is behind or stopped, and the WAL piles up")
    return Check("OK", "replication slot", detail)


def check_output_plugins(conn: Any) -> Check:
    """Postgres 15.20+ lets REPLICATION users decode only with the plugins ``output_plugin_libraries``
    lists (default ``pgoutput, test_decoding``); older servers have no such setting."""
    row = conn.execute("SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'").fetchone()
    if row is None:
        return Check("OK", "output plugins", "not a setting of this server: any installed plugin may be used")
    listed = [name.strip() for name in str(row[0]).split(",")]
    if "wal2json" in listed:
        return Check("OK", "output plugins", f"lists wal2json ({row[0]})")
    return Check("FAIL", "output plugins", f"{row[0]!r} does not list wal2json; fix: {plugin_fix(str(row[0]))}")


def check_wal2json(conn: Any) -> Check:
    """Create a temporary slot with wal2json (the plugin loads) and read from it with the options the
    listener uses (they are understood), then drop it; a temporary slot also goes with the session."""
    import psycopg

    name = f"shared_cache_doctor_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2json', true)", (name,))
        conn.execute(
            "SELECT count(*) FROM pg_logical_slot_peek_changes(%s, NULL, 1, 'format-version', '2',"
            " 'include-timestamp', '1', 'include-transaction', '1')",
            (name,),
        )
        conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
    except psycopg.errors.QueryCanceled:
        return Check(
            "WARN",
            "wal2json",
            f"a temporary slot was not ready within {STATEMENT_TIMEOUT} (a long-running transaction delays it):"
            " not verified",
        )
    except psycopg.Error as exc:
        if plugin_refused(exc):
            return Check(
                "FAIL", "wal2json", "refused: not listed in output_plugin_libraries (see the output plugins check)"
            )
        return Check("FAIL", "wal2json", describe(exc))
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.execute("RESET statement_timeout")
    return Check("OK", "wal2json", "loads and decodes (format-version 2, checked with a temporary slot)")


def database_checks(dsn: str, shown_url: str, slot: str, max_lag_bytes: int) -> list[Check]:
    """Every database check, in order; if the server does not answer, one FAIL."""
    import psycopg

    try:
        conn = psycopg.connect(dsn, connect_timeout=5, autocommit=True)
    except psycopg.Error as exc:
        return [Check("FAIL", "database", f"{shown_url}: {describe(exc)}")]
    checks: list[Check] = []
    with conn:
        try:
            checks.append(check_database(conn, shown_url))
            checks.append(wal_level := check_wal_level(conn))
            checks.append(check_replication_slot(conn, slot, max_lag_bytes))
            checks.append(check_output_plugins(conn))
            logical = wal_level.status == "OK"
            checks.append(check_wal2json(conn) if logical else Check("SKIP", "wal2json", "needs wal_level=logical"))
        except psycopg.Error as exc:
            checks.append(Check("FAIL", "database", f"{shown_url}: {describe(exc)}"))
    return checks
