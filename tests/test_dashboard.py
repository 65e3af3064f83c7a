"""The Grafana dashboard and the Prometheus config under deploy/ name what the project exports.

Every query of the dashboard is checked against the metrics (and their labels) read from the real
collectors: the library's ``CacheCollector`` after real reads, a batch and an eviction on a real
Redis, and a running listener's ``/metrics`` (a real Postgres slot) scraped over HTTP. Grafana and
Prometheus themselves do not run here (no Docker): the compose wiring is checked as files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from devtools.embedded import EmbeddedPostgres, end_process, free_port
from shared_cache import (
    CacheCollector,
    CacheManager,
    get_embeddings_batch_with_cache,
    get_with_cache_aside,
)
from tasks.settings import TaskSettings
from tests.waiting import wait_until
from worker.app import make_app
from worker.listener import Listener
from worker.metrics import serve_metrics
from worker.rules import Planner
from worker.settings import ListenerSettings
from worker.sources.postgres import PostgresLogicalSource

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "shared_cache.json"
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless"}


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expression) of every target, rows' nested panels included."""
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner["title"], target["expr"]


def names_in(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and the label names a PromQL expression uses."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    labels: set[str] = set()
    for body in re.findall(r"\{([^}]*)\}", text):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", body))
    text = re.sub(r"\{[^}]*\}", " ", text)
    for body in _CLAUSE.findall(text):
        labels |= {label.strip() for label in body.split(",") if label.strip()}
    text = re.sub(r"\[[^\]]*\]", " ", _CLAUSE.sub(" ", text))  # range selectors: durations, $__rate_interval
    metrics = set()
    for found in re.finditer(r"[A-Za-z_:][\w:]*", text):
        if found.group(0) not in _KEYWORDS and not text[found.end() :].lstrip().startswith("("):  # not a function
            metrics.add(found.group(0))
    return metrics, labels


def exported(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, from an exposition text."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def test_the_query_reader_finds_metrics_and_labels() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, tier) (rate(x_bucket{kind="a"}[$__rate_interval]))) / on (t) y'
    assert names_in(expr) == ({"x_bucket", "y"}, {"le", "tier", "kind", "t"})
    assert names_in("sum(increase(shared_cache_worker_dead_letters_total[1h]))")[0] == {
        "shared_cache_worker_dead_letters_total"
    }


@pytest.fixture(scope="module")
def pg() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres().start()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE documents (id text PRIMARY KEY, tenant_id text, collection_id text, title text)")
    yield server
    server.cleanup()


async def library_registry(manager: CacheManager) -> CollectorRegistry:
    """The library's metrics after a miss, a Redis hit, a memory hit, an absorbed error, a batch and
    an eviction from another process's invalidation."""
    registry = CollectorRegistry()
    registry.register(CacheCollector(manager))
    await manager.start()

    async def fetch(resource_id: str, tenant_id: str, ctx: Any) -> dict[str, str]:
        return {"id": resource_id}

    await get_with_cache_aside("document", "d1", "acme", fetch)
    manager.memory.clear()  # type: ignore[union-attr]
    await get_with_cache_aside("document", "d1", "acme", fetch)  # Redis
    await get_with_cache_aside("document", "d1", "acme", fetch)  # memory
    await get_embeddings_batch_with_cache(["a", "b"], "acme", "m", lambda texts: [[0.1, 0.2] for _ in texts])
    other = CacheManager(manager.settings.model_copy(update={"memory_enabled": False}))
    await other.invalidate("acme", "document", "d1")
    await wait_until(lambda: manager.subscriber is not None and manager.subscriber.evicted >= 1)
    await other.close()
    return registry


async def unreachable_redis_registry(manager: CacheManager) -> CollectorRegistry:
    """A process whose Redis is down still reads (from the database) and counts the errors."""
    dead = CacheManager(
        manager.settings.model_copy(update={"redis_url": SecretStr(f"redis://127.0.0.1:{free_port()}/0")})
    )
    registry = CollectorRegistry()
    registry.register(CacheCollector(dead))

    async def fetch(resource_id: str, tenant_id: str, ctx: Any) -> dict[str, str]:
        return {"id": resource_id}

    CacheManager._instance = dead  # get_with_cache_aside reads through the singleton
    try:
        value, _ = await get_with_cache_aside("document", "d9", "acme", fetch)
    finally:
        CacheManager._instance = manager
        await dead.close()
    assert value == {"id": "d9"}
    return registry


@contextlib.asynccontextmanager
async def running_listener(manager: CacheManager, redis_url: str, dsn: str, slot: str) -> AsyncIterator[int]:
    """A running listener serving /metrics, after it handled a real change; yields its port."""
    ts = TaskSettings(broker_url=f"{redis_url.rsplit('/', 1)[0]}/7")  # type: ignore[arg-type]
    planner = Planner()
    listener = Listener(ListenerSettings(), planner, make_app(ts), manager, redis_url, ts)
    listener.add_source(PostgresLogicalSource(dsn, planner.tables, slot=slot))
    stop = asyncio.Event()
    run = await listener.start(stop, within=20)
    port = free_port()
    served = asyncio.create_task(serve_metrics(listener, port, addr="127.0.0.1"))
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO documents VALUES (%s, 'acme', 'c1', 't')", (f"{slot}-d1",))
        await wait_until(lambda: listener.stats["processed"] >= 1)
        yield port
    finally:
        served.cancel()
        await asyncio.gather(served, return_exceptions=True)
        stop.set()
        await asyncio.wait_for(run, 10)


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


async def test_every_dashboard_query_names_exported_metrics_and_labels(
    manager: CacheManager, redis_url: str, pg: EmbeddedPostgres
) -> None:
    metrics = exported(generate_latest(await library_registry(manager)).decode())
    texts = [generate_latest(await unreachable_redis_registry(manager)).decode()]
    async with running_listener(manager, redis_url, pg.dsn, "dashboard_slot") as port:
        texts.append(await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics"))
    for text in texts:
        for name, labels in exported(text).items():
            metrics.setdefault(name, set()).update(labels)
    assert "shared_cache_latency_ms_bucket" in metrics and "shared_cache_worker_slot_lag_bytes" in metrics

    dashboard = json.loads(DASHBOARD.read_text())
    checked = list(queries(dashboard))
    assert len(checked) >= 20
    used: set[str] = set()
    for title, expr in checked:
        names, labels = names_in(expr)
        assert names, f"{title!r}: {expr!r} names no metric"
        unknown = names - metrics.keys()
        assert not unknown, f"{title!r}: {expr!r} names {unknown}, which nothing exports"
        known_labels = set().union(*(metrics[n] for n in names)) | TARGET_LABELS
        assert labels <= known_labels, f"{title!r}: {expr!r} uses labels {labels - known_labels}"
        used |= names
    # what the dashboard promises to show
    for wanted in ("shared_cache_hits_total", "shared_cache_misses_total", "shared_cache_latency_ms_bucket",
                   "shared_cache_commit_to_evict_ms_bucket", "shared_cache_evictions_total",
                   "shared_cache_worker_slot_lag_bytes", "shared_cache_worker_dead_letters_total"):  # fmt: skip
        assert wanted in used, f"the dashboard shows no {wanted}"


def test_compose_wires_prometheus_and_grafana_to_the_dashboard() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    port = compose["listener"]["environment"]["SHARED_CACHE_WORKER_METRICS_PORT"]
    assert jobs["shared_cache_listener"]["static_configs"][0]["targets"] == [f"listener:{port}"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in compose["prometheus"]["volumes"]
    services = ROOT / "deploy" / "prometheus" / "targets" / "services.json"
    assert isinstance(json.loads(services.read_text()), list)
    assert jobs["shared_cache_services"]["file_sd_configs"][0]["files"] == ["/etc/prometheus/targets/*.json"]

    grafana = compose["grafana"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in grafana["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose
    provider = yaml.safe_load((provisioning / "dashboards" / "shared_cache.yml").read_text())["providers"][0]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {datasource["uid"]}
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"


def prometheus_config(tmp: Path, listener: str, services: list[str]) -> Path:
    """deploy/prometheus/prometheus.yml with this machine's targets and a 1 s scrape interval."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    targets = tmp / "targets"
    targets.mkdir()
    (targets / "services.json").write_text(json.dumps([{"targets": services, "labels": {"role": "service"}}]))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["shared_cache_listener"]["static_configs"][0]["targets"] = [listener]
    jobs["shared_cache_services"]["file_sd_configs"][0]["files"] = [str(targets / "*.json")]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        return dict(json.loads(http_get(url)))
    except urllib.error.HTTPError as exc:  # a bad query: Prometheus answers 400 with the reason
        return dict(json.loads(exc.read()))


@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="needs Prometheus on the PATH (Debian: apt-get install prometheus)"
)
async def test_every_dashboard_query_runs_on_a_real_prometheus(
    manager: CacheManager, redis_url: str, pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Prometheus scrapes the real exporters with the project's scrape config, then evaluates every
    query of the dashboard: each must be valid PromQL and return series."""
    from prometheus_client import start_http_server

    servers = []
    for registry in (await library_registry(manager), await unreachable_redis_registry(manager)):
        port = free_port()
        servers.append((port, *start_http_server(port, addr="127.0.0.1", registry=registry)))
    async with running_listener(manager, redis_url, pg.dsn, "dashboard_prom_slot") as listener_port:
        config = prometheus_config(tmp_path, f"127.0.0.1:{listener_port}", [f"127.0.0.1:{p}" for p, *_ in servers])
        web = free_port()
        base = f"http://127.0.0.1:{web}"
        log = (tmp_path / "prometheus.log").open("w")
        command = [
            shutil.which("prometheus") or "prometheus", f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{web}",
        ]  # fmt: skip
        proc = await asyncio.to_thread(subprocess.Popen, command, stdout=log, stderr=subprocess.STDOUT)
        try:

            async def scraped_enough() -> bool:
                try:  # every target up, and at least three scrapes of each (rate() needs two)
                    result = await asyncio.to_thread(query, base, "count_over_time(up[1m]) >= 3 and up == 1")
                except OSError:
                    return False
                return len(result.get("data", {}).get("result", [])) == 3

            deadline = time.monotonic() + 60
            while not await scraped_enough():
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-3000:]
                await asyncio.sleep(0.5)

            dashboard = json.loads(DASHBOARD.read_text())
            for title, expr in queries(dashboard):
                runnable = expr.replace("$__rate_interval", "10s")
                answer = await asyncio.to_thread(query, base, runnable)
                assert answer["status"] == "success", f"{title!r}: {runnable!r}: {answer.get('error')}"
                assert answer["data"]["result"], f"{title!r}: {runnable!r} returned no series"
        finally:
            await asyncio.to_thread(end_process, proc, 20)
            log.close()
            for _, server, thread in servers:
                server.shutdown()
                server.server_close()
                thread.join(5)
