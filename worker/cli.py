"""``shared-cache``: the operator command line.

    shared-cache stats                      hit ratios, latency, memory, per type, per process, per tenant
    shared-cache get document doc_1 --tenant acme
    shared-cache ttl document doc_1 --tenant acme
    shared-cache invalidate --tenant acme --document doc_1 --collection c1
    shared-cache warm --tenant acme --collection c1
    shared-cache dead-letters list | replay
    shared-cache doctor

``--json`` prints machine-readable output. Exit codes: 0 ok, 1 a check or the backend failed,
2 bad arguments (an invalid tenant id, say).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import click
import orjson

from shared_cache import BackendUnavailable, CacheManager, CacheSettings, invalidate_document_update
from tasks.settings import WorkerSettings

T = TypeVar("T")


class Context:
    def __init__(self, as_json: bool, redis_url: str | None) -> None:
        self.as_json = as_json
        overrides: dict[str, Any] = {"memory_enabled": False}
        if redis_url:
            overrides["redis_url"] = redis_url
        self.settings = CacheSettings(**overrides)
        self.worker = WorkerSettings()

    def run(self, make: Callable[[CacheManager], Coroutine[Any, Any, T]]) -> T:
        """Run one coroutine with a manager, turning expected failures into one line and an exit code."""

        async def go() -> T:
            manager = CacheManager.configure(self.settings)
            try:
                return await make(manager)
            finally:
                await manager.close()

        try:
            return asyncio.run(go())
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        except (BackendUnavailable, OSError) as exc:
            click.echo(f"error: Redis unavailable: {exc}", err=True)
            sys.exit(1)

    def out(self, data: Any, text: str) -> None:
        click.echo(
            orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() if self.as_json else text
        )


@click.group(help=__doc__)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--redis-url", default=None, help="Redis URL (default: SHARED_CACHE_REDIS_URL).")
@click.pass_context
def main(ctx: click.Context, as_json: bool, redis_url: str | None) -> None:
    ctx.obj = Context(as_json, redis_url)


def _ids(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in (
        click.option("--collection", default=None),
        click.option("--conversation", default=None),
        click.option("--agent", default=None),
        click.option("--tenant", required=True),
    ):
        func = option(func)
    return func


@main.command()
@click.argument("data_type")
@click.argument("resource_id")
@_ids
@click.pass_obj
def get(
    obj: Context, data_type: str, resource_id: str, tenant: str, agent: str, conversation: str, collection: str
) -> None:
    """The cached value of a resource (the Redis hierarchy, as a read would see it)."""

    async def run(manager: CacheManager) -> Any:
        return await manager.get(data_type, resource_id, tenant, agent, conversation, collection)

    value = obj.run(run)
    obj.out({"value": value}, "(no valid entry)" if value is None else orjson.dumps(value).decode())
    sys.exit(0 if value is not None else 1)


@main.command()
@click.argument("data_type")
@click.argument("resource_id")
@_ids
@click.pass_obj
def ttl(
    obj: Context, data_type: str, resource_id: str, tenant: str, agent: str, conversation: str, collection: str
) -> None:
    """Seconds left of the entry a read would serve (-1: no expiry, -2: no valid entry)."""

    async def run(manager: CacheManager) -> int:
        return await manager.ttl(data_type, resource_id, tenant, agent, conversation, collection)

    seconds = obj.run(run)
    obj.out({"ttl": seconds}, str(seconds))


@main.command()
@click.option("--tenant", required=True)
@click.option("--type", "data_type", default=None, help="A data type (with --resource, default '*').")
@click.option("--resource", default="*")
@click.option("--document", default=None, help="A document update (with --collection).")
@click.option("--agent", default=None)
@click.option("--collection", default=None)
@click.option("--conversation", default=None)
@click.option("--all", "everything", is_flag=True, help="Everything of the tenant.")
@click.option("--yes", is_flag=True, help="Do not ask before --all.")
@click.pass_obj
def invalidate(
    obj: Context,
    tenant: str,
    data_type: str | None,
    resource: str,
    document: str | None,
    agent: str | None,
    collection: str | None,
    conversation: str | None,
    everything: bool,
    yes: bool,
) -> None:
    """Invalidate at one scope: a type or resource, a document update, an agent, a collection, a
    conversation, or the whole tenant. One round trip; every node's memory tier hears it."""
    chosen = [
        bool(data_type),
        bool(document),
        bool(agent),
        bool(collection) and not document,
        bool(conversation),
        everything,
    ]
    if sum(chosen) != 1:
        raise click.UsageError("give exactly one of --type, --document, --agent, --collection, --conversation, --all")
    if everything and not yes:
        click.confirm(f"invalidate everything of tenant {tenant!r}?", abort=True)

    async def run(manager: CacheManager) -> str:
        if data_type:
            await manager.invalidate(tenant, data_type, resource)
            return f"{data_type} {resource}"
        if document:
            await invalidate_document_update(tenant, document, collection)
            return f"document {document}"
        if agent:
            await manager.invalidate_agent_complete(tenant, agent)
            return f"agent {agent}"
        if collection:
            await manager.invalidate_collection_complete(tenant, collection)
            return f"collection {collection}"
        if conversation:
            await manager.invalidate_conversation_complete(tenant, conversation)
            return f"conversation {conversation}"
        await manager.invalidate_tenant(tenant)
        return "everything"

    what = obj.run(run)
    obj.out({"invalidated": what, "tenant": tenant}, f"invalidated {what} of tenant {tenant}")


@main.command()
@click.option("--tenant", required=True)
@click.option("--collection", required=True)
@click.option("--inline", is_flag=True, help="Run here instead of sending the task to the warming queue.")
@click.pass_obj
def warm(obj: Context, tenant: str, collection: str, inline: bool) -> None:
    """Embed and cache every chunk of a collection."""
    from shared_cache import validate_tenant_id

    try:
        validate_tenant_id(tenant)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if inline:
        from tasks.warming import warm_collection

        result = warm_collection.run(tenant, collection)
        obj.out(
            result, f"warmed {result['texts']} texts: {result['generated']} embedded, {result['cache_hits']} cached"
        )
        return
    from worker.app import make_app

    task = make_app(obj.worker).send_task("shared_cache.warm_collection", args=[tenant, collection], queue="warming")
    obj.out({"task_id": task.id}, f"sent warm_collection as task {task.id}")


@main.group(name="dead-letters")
def dead_letters() -> None:
    """Events that could not be planned or parsed, parked with the reason."""


def _dead(obj: Context, work: Callable[[Any], Awaitable[T]]) -> T:
    import redis.asyncio as aredis

    from worker.dead_letters import DeadLetters

    async def run(manager: CacheManager) -> T:
        client = aredis.Redis.from_url(obj.settings.redis_url.get_secret_value())
        try:
            return await work(DeadLetters(client, obj.worker.dead_letter_key, obj.worker.dead_letter_max))
        finally:
            await client.aclose()

    return obj.run(run)


@dead_letters.command(name="list")
@click.option("--count", default=20, show_default=True)
@click.pass_obj
def list_dead(obj: Context, count: int) -> None:
    """The newest dead letters."""

    async def work(letters: Any) -> list[dict[str, Any]]:
        return await letters.list(count)  # type: ignore[no-any-return]

    entries = _dead(obj, work)
    lines = [f"{e['source']:8} {e['reason'][:90]}  {e['raw'][:60]!r}" for e in entries]
    obj.out(entries, "\n".join(lines) or "(none)")


@dead_letters.command()
@click.option("--count", default=100, show_default=True)
@click.pass_obj
def replay(obj: Context, count: int) -> None:
    """Plan the oldest dead letters again (rules may have changed) and send their tasks; those that
    still fail are parked again with the new reason."""
    from worker.app import make_app
    from worker.coalesce import Window
    from worker.events import ChangeEvent
    from worker.rules import Planner, load_rules

    planner = Planner(load_rules(obj.worker.rules_file))
    celery = make_app(obj.worker)

    async def work(letters: Any) -> dict[str, int]:
        done = {"replayed": 0, "failed": 0}
        present = await letters.client.llen(letters.key)  # re-parked entries are not retried in this run
        for _ in range(min(count, present)):
            entry = await letters.pop_oldest()
            if entry is None:
                break
            try:
                event = ChangeEvent.model_validate_json(entry["raw"])
                window = Window()
                window.add(planner.plan(event))
            except ValueError as exc:
                await letters.park(entry["source"], entry["raw"], f"replay: {exc}")
                done["failed"] += 1
                continue
            for tenant, scopes, reason, caused_at in window.invalidation_tasks():
                celery.send_task(
                    "shared_cache.invalidate", args=[tenant, scopes, reason, caused_at], queue="invalidation"
                )
            for tenant, texts in window.warm_tasks(obj.worker.embedding_batch_size):
                celery.send_task("shared_cache.warm_texts", args=[tenant, texts], queue="warming")
            done["replayed"] += 1
        return done

    result = _dead(obj, work)
    obj.out(result, f"replayed {result['replayed']}, still failing {result['failed']}")


@main.command()
@click.option("--max-scan", default=100_000, show_default=True, help="Most keys scanned to count per tenant.")
@click.pass_obj
def stats(obj: Context, max_scan: int) -> None:
    """Hit ratios and latency per data type and tier, each process's memory tier and eviction
    latency, the listener's counters and slot lag, dead letters, Redis memory, and keys per tenant.
    (Counting keys per tenant SCANs Redis, up to --max-scan keys: an operator's tool, not a hot path.)"""
    from worker.listener import STATS_KEY, TENANTS_KEY

    async def run(manager: CacheManager) -> dict[str, Any]:
        client = manager.redis.client()
        reports = []
        async for key in client.scan_iter(match=manager.stats_key("*"), count=500):
            raw = await client.get(key)
            if raw:
                reports.append(orjson.loads(raw))
        listener_raw = await client.get(STATS_KEY)
        memory = await client.info("memory")
        tenants = {}
        for raw_tenant in sorted(await client.smembers(TENANTS_KEY)):
            tenant = raw_tenant.decode() if isinstance(raw_tenant, bytes) else raw_tenant
            count = 0
            async for _ in client.scan_iter(match=f"{manager.prefix}{{{tenant}}}:*", count=1000):
                count += 1
                if count >= max_scan:
                    break
            tenants[tenant] = count
        dead = await client.llen(obj.worker.dead_letter_key)
        return {
            "processes": reports,
            "by_type": _merge(reports),
            "listener": orjson.loads(listener_raw) if listener_raw else None,
            "redis_memory": {"used": memory.get("used_memory"), "max": memory.get("maxmemory")},
            "tenants": tenants,
            "dead_letters": dead,
        }

    data = obj.run(run)
    obj.out(data, _render(data))


def _merge(reports: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for report in reports:
        for data_type, row in report.get("by_type", {}).items():
            into = merged.setdefault(data_type, {"hits": {}, "misses": 0, "p99_ms": {}})
            for tier, count in row["hits"].items():
                into["hits"][tier] = into["hits"].get(tier, 0) + count
            into["misses"] += row["misses"]
            for tier, latency in row.get("latency_ms", {}).items():
                into["p99_ms"][tier] = max(into["p99_ms"].get(tier, 0.0), latency["p99"])
    for row in merged.values():
        total = sum(row["hits"].values()) + row["misses"]
        row["hit_ratio"] = sum(row["hits"].values()) / total if total else 0.0
    return merged


def _render(data: dict[str, Any]) -> str:
    lines = [f"{'data type':16} {'hits mem':>9} {'hits redis':>10} {'misses':>8} {'hit ratio':>9}  p99 ms by tier"]
    for data_type, row in sorted(data["by_type"].items()):
        p99 = ", ".join(f"{tier} {ms:.2f}" for tier, ms in sorted(row["p99_ms"].items()))
        lines.append(
            f"{data_type:16} {row['hits'].get('memory', 0):>9} {row['hits'].get('redis', 0):>10}"
            f" {row['misses']:>8} {row['hit_ratio']:>9.1%}  {p99}"
        )
    lines.append("")
    for report in data["processes"]:
        memory = report.get("memory") or {}
        sub = report.get("subscriber") or {}
        lag = (sub.get("commit_to_evict_ms") or {}).get("p99")
        publish = (sub.get("propagation_ms") or {}).get("p99", 0.0)
        lines.append(
            f"process {report['origin']:24} memory {memory.get('entries', 0)} entries / {memory.get('bytes', 0)} B"
            f"  evictions {sub.get('evicted', 0)}  publish->evict p99 {publish:.1f} ms"
            + (f"  commit->evict p99 {lag:.0f} ms" if lag else "")
        )
    listener = data["listener"]
    if listener:
        lines.append(f"listener  {listener['stats']}")
        for source in listener.get("sources", []):
            lines.append(f"  source  {source}")
    else:
        lines.append("listener  (no report in the last minute)")
    lines.append(f"dead letters {data['dead_letters']}   redis used {data['redis_memory']['used']} B")
    if data["tenants"]:
        lines.append("keys per tenant  " + ", ".join(f"{t} {n}" for t, n in data["tenants"].items()))
    return "\n".join(lines)


@main.command()
@click.option("--skip-db", is_flag=True, help="Do not check the database (no durable source here).")
@click.option("--skip-broker", is_flag=True, help="Do not check the Celery broker.")
@click.pass_obj
def doctor(obj: Context, skip_db: bool, skip_broker: bool) -> None:
    """Check Redis, the broker, the database and its slot, and the eviction subscribers."""
    checks: list[tuple[str, str, str]] = []

    async def run(manager: CacheManager) -> None:
        await _check_redis(manager, checks)
        if skip_broker:
            checks.append(("SKIP", "broker", "--skip-broker"))
        else:
            await _check_broker(obj.worker, checks)
        if skip_db:
            checks.append(("SKIP", "database", "--skip-db"))
        else:
            await _check_database(obj.worker, checks)

    try:
        asyncio.run(_with_manager(obj.settings, run))
    except BaseException as exc:  # the checks record their own failures; anything else is one
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        checks.append(("FAIL", "doctor", f"{type(exc).__name__}: {exc}"))
    obj.out(
        [{"status": s, "check": c, "detail": d} for s, c, d in checks],
        "\n".join(f"{s:5} {c:12} {d}" for s, c, d in checks),
    )
    sys.exit(1 if any(s == "FAIL" for s, _, _ in checks) else 0)


async def _with_manager(settings: CacheSettings, run: Callable[[CacheManager], Awaitable[None]]) -> None:
    manager = CacheManager.configure(settings)
    try:
        await run(manager)
    finally:
        await manager.close()


def _mask(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}" if "@" in rest else url


async def _check_redis(manager: CacheManager, checks: list[tuple[str, str, str]]) -> None:
    url = _mask(manager.settings.redis_url.get_secret_value())
    try:
        client = manager.redis.client()
        info = await client.info("server")
        policy = (await client.config_get("maxmemory-policy")).get("maxmemory-policy", "?")
        subscribers = await client.pubsub_numsub(manager.settings.eviction_channel)
    except Exception as exc:
        checks.append(("FAIL", "redis", f"{url}: {type(exc).__name__}: {exc}"))
        return
    checks.append(("OK", "redis", f"{url} version {info.get('redis_version')}"))
    if str(policy).startswith("allkeys"):
        checks.append(("WARN", "eviction", f"maxmemory-policy {policy} can evict generation counters (no TTL)"))
    else:
        checks.append(("OK", "eviction", f"maxmemory-policy {policy}"))
    count = subscribers[0][1] if subscribers else 0
    checks.append(("OK" if count else "WARN", "subscribers", f"{count} processes listen to evictions"))


async def _check_broker(settings: WorkerSettings, checks: list[tuple[str, str, str]]) -> None:
    import redis.asyncio as aredis

    url = settings.broker_url.get_secret_value()
    try:
        client = aredis.Redis.from_url(url, socket_connect_timeout=2)
        await client.ping()
        queued = {q: await client.llen(q) for q in ("invalidation", "warming")}
        await client.aclose()
    except Exception as exc:
        checks.append(("FAIL", "broker", f"{_mask(url)}: {type(exc).__name__}: {exc}"))
        return
    checks.append(("OK", "broker", f"{_mask(url)} queued {queued}"))


async def _check_database(settings: WorkerSettings, checks: list[tuple[str, str, str]]) -> None:
    import psycopg

    dsn = settings.database_url.get_secret_value()
    try:
        async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=3) as conn:
            wal_level = (await (await conn.execute("SHOW wal_level")).fetchone() or ("?",))[0]
            row = await (
                await conn.execute(
                    "SELECT pg_current_wal_lsn() - confirmed_flush_lsn, plugin FROM pg_replication_slots"
                    " WHERE slot_name = %s",
                    (settings.slot_name,),
                )
            ).fetchone()
    except Exception as exc:
        checks.append(("FAIL", "database", f"{_mask(dsn)}: {type(exc).__name__}: {exc}"))
        return
    checks.append(("OK" if wal_level == "logical" else "FAIL", "wal_level", str(wal_level)))
    if row is None:
        checks.append(("WARN", "slot", f"{settings.slot_name} does not exist yet (the listener creates it)"))
    else:
        checks.append(("OK", "slot", f"{settings.slot_name} ({row[1]}) lag {int(row[0] or 0)} bytes"))


if __name__ == "__main__":
    main()
