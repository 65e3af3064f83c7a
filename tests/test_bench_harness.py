"""The benchmark harness measures what it says: the figures' data and PNGs, and the service-level
benchmark's app (cached and direct endpoints agree), its load generators and its hit shares."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import figures, idle, service
from bench.loadgen import Keys, arrivals, find_wrk, run_paced, run_python, run_wrk
from devtools.embedded import EmbeddedPostgres
from shared_cache import CacheManager


def test_paced_arrivals_are_a_seeded_poisson_stream_the_same_for_both_endpoints() -> None:
    keys = Keys(n=300, tenants=3)
    cached = list(arrivals(keys, "/cached/", rate=500, seconds=4.0, seed=3))
    direct = list(arrivals(keys, "/direct/", rate=500, seconds=4.0, seed=3))
    assert [(at, path.replace("/cached/", "/direct/")) for at, path in cached] == direct
    assert list(arrivals(keys, "/cached/", rate=500, seconds=4.0, seed=4)) != cached
    times = [at for at, _ in cached]
    assert times == sorted(times) and 0 < times[0] and times[-1] < 4.0
    assert 1800 <= len(cached) <= 2200  # 2,000 expected; the standard deviation is about 45
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert 0.0017 <= sum(gaps) / len(gaps) <= 0.0023  # mean gap 1/rate
    # Zipf-like: the hottest document is asked for more than any other
    hottest = max(set(p for _, p in cached), key=[p for _, p in cached].count)
    assert hottest == keys.path("/cached/", 1)


async def test_figure_data_and_pictures(manager: CacheManager, redis_url: str, tmp_path: Path) -> None:
    latencies = await figures.measure_latencies(redis_url, 50)
    assert set(latencies) == {"memory hit", "Redis-tier hit", "raw GET"}
    assert all(len(samples) == 50 and min(samples) > 0 for samples in latencies.values())

    ratios = [0.0, 0.5, 1.0]
    batches = await figures.measure_batches(ratios, size=40, repeats=2)
    for name, points in batches.items():  # the texts found in the cache are exactly those cached before
        assert [(ratio, found) for ratio, _, found in points] == [(0.0, 0), (0.5, 20), (1.0, 40)], name

    sizes = [10, 500]
    invalidation = await figures.measure_invalidation(redis_url, sizes, repeats=3)
    assert [(n, touched) for n, _, touched in invalidation["SCAN + UNLINK"]] == [(10, 10), (500, 500)]
    assert [n for n, _, _ in invalidation["shared_cache invalidate (one INCR)"]] == sizes

    paths = figures.draw(tmp_path, latencies, batches, invalidation)
    assert [p.name for p in paths] == list(figures.FILES)
    import matplotlib.image

    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = matplotlib.image.imread(path).shape
        assert width > 600 and height > 300


@pytest.fixture(scope="module")
def pg() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres().start()
    yield server
    server.cleanup()


def get(url: str) -> tuple[int, object]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.status, json.loads(reply.read())


def test_service_endpoints_agree_and_the_cached_one_is_served_from_the_cache(
    redis_url: str, pg: EmbeddedPostgres
) -> None:
    keys = Keys(n=300, tenants=3)
    service.seed(pg.dsn, keys)
    app = service.Service(redis_url, pg.dsn).start()
    try:
        base = f"http://127.0.0.1:{app.port}"
        status, direct = get(f"{base}/direct/t1/d1")
        assert status == 200 and direct == {"id": "d1", "tenant_id": "t1", "title": "document 1",
                                            "body": service.BODY, "version": 0}  # fmt: skip
        for _ in range(4):  # two workers: each may fetch once, then serves from its cache
            assert get(f"{base}/cached/t1/d1") == (200, direct)
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/cached/t1/nope", timeout=10)
        assert missing.value.code == 404

        result = run_python("127.0.0.1", app.port, "/cached/", keys, seconds=1.0, connections=4)
        assert result.requests > 0 and result.errors == 0 and result.p50_ms <= result.p99_ms
        paced = run_paced("127.0.0.1", app.port, "/cached/", keys, seconds=1.0, rate=150, connections=4)
        # Poisson arrivals at 150/s for 1 s: 150 expected, 150 +/- 55 is more than 4 standard deviations
        assert 95 <= paced.requests <= 205 and paced.errors == 0 and 0 < paced.p50_ms <= paced.p99_ms
        wrk = find_wrk(install=False)
        if wrk is not None:  # Debian's wrk, where installed (python -m bench installs it as root)
            from_wrk = run_wrk(wrk, base, "/direct/", keys, seconds=1.0, connections=4)
            assert from_wrk.requests > 0 and from_wrk.errors == 0
    finally:
        app.stop()
    time.sleep(0.6)  # the workers' last stats reports (published when they stop)
    shares = service.served_from(service.stats_reports(redis_url))
    assert shares["db"] >= 1 and shares["memory"] + shares["redis"] >= 2
    assert sum(shares.values()) >= result.requests + 4


def test_idle_setting_is_named_and_halt_polling_is_set_for_the_block_then_put_back(tmp_path: Path) -> None:
    driver, halt_poll = tmp_path / "current_driver", tmp_path / "guest_halt_poll_ns"
    driver.write_text("haltpoll\n")
    halt_poll.write_text("0\n")
    assert idle.describe(driver, halt_poll) == "guest halt polling off (guest_halt_poll_ns=0)"
    with idle.kernel_default_halt_polling(halt_poll) as changed:
        assert changed and halt_poll.read_text() == f"{idle.KERNEL_DEFAULT_NS}\n"
        assert idle.describe(driver, halt_poll) == "guest halt polling up to 200 us"
    assert halt_poll.read_text() == "0\n"
    with pytest.raises(RuntimeError), idle.kernel_default_halt_polling(halt_poll):
        raise RuntimeError("the measure failed")
    assert halt_poll.read_text() == "0\n"  # put back however the block ends
    halt_poll.write_text("50000\n")  # on already: left as it is
    with idle.kernel_default_halt_polling(halt_poll) as changed:
        assert not changed and halt_poll.read_text() == "50000\n"
    assert idle.describe(driver, halt_poll) == "guest halt polling up to 50 us"
    with idle.kernel_default_halt_polling(tmp_path / "absent") as changed:  # no haltpoll driver
        assert not changed and not (tmp_path / "absent").exists()
    driver.write_text("intel_idle\n")
    assert idle.describe(driver, halt_poll) == "cpuidle driver intel_idle"
    assert idle.describe(tmp_path / "absent", halt_poll) == "cpuidle driver unknown"
