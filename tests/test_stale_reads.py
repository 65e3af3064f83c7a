"""Randomized multi-process workload on real Postgres and Redis: zero stale reads past the bound."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.embedded import EmbeddedPostgres as PostgresServer
from tests import stale_workload


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.cleanup()


def test_count_stale_finds_what_it_should() -> None:
    writes = [(10.0, "r1", 1), (20.0, "r1", 2)]
    reads = [(10.01, "r1", 0), (10.2, "r1", 0), (10.2, "r1", 1), (20.2, "r1", 1), (9.0, "r1", 0)]
    assert stale_workload.count_stale(reads, writes, bound_ms=50) == (2, pytest.approx(200, abs=1))


def test_no_stale_reads_with_generations_while_plain_cache_aside_has_them(
    postgres: PostgresServer, redis_url: str
) -> None:
    ours = stale_workload.run("generational", postgres.dsn, redis_url, seconds=4)
    plain = stale_workload.run("plain", postgres.dsn, redis_url, seconds=4)
    print(f"\ngenerational: {ours}\nplain cache-aside: {plain}")
    assert ours.reads > 500 and ours.writes > 100
    assert ours.stale == 0, ours
    assert plain.stale > 0, "the baseline should show the race this workload is built to provoke"
