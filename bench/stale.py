"""The randomized stale-read workload (tests/stale_workload.py) as a benchmark row."""

from __future__ import annotations

from devtools.embedded import EmbeddedPostgres as PostgresServer
from tests import stale_workload

Row = tuple[str, str, str, str]


def stale_reads(rows: list[Row], redis_url: str, seconds: float) -> None:
    server = PostgresServer().start()
    try:
        ours = stale_workload.run("generational", server.dsn, redis_url, seconds=seconds)
        plain = stale_workload.run("plain", server.dsn, redis_url, seconds=seconds)
    finally:
        server.cleanup()
    rows.append(
        (
            "stale reads, 3 reader + 2 writer processes on Postgres, 50 ms bound (goal 0)",
            f"{ours.stale} of {ours.reads:,} reads ({ours.writes} writes); {ours.stale_within_bound} within the bound",
            f"plain cache-aside: {plain.stale:,} of {plain.reads:,} reads, up to {plain.worst_ms:,.0f} ms late",
            "0 stale" if ours.stale == 0 else f"{ours.stale} STALE",
        )
    )
