"""``shared-cache``: the operator command line.

::

    shared-cache stats                                   reads per data type and tier, processes, listener
    shared-cache get document doc_1 --tenant acme        the value a read would get from Redis, and its level
    shared-cache ttl document doc_1 --tenant acme        seconds left
    shared-cache invalidate --tenant acme --document doc_1 --collection c1
    shared-cache warm --tenant acme --collection c1      queue warm_collection (or --inline)
    shared-cache dead-letters list | replay
    shared-cache doctor                                  Redis, broker, database, slot, wal2json, subscribers

Settings come from the environment like everywhere else (``SHARED_CACHE_*`` for the library,
``SHARED_CACHE_WORKER_*`` for the worker); ``--redis-url`` and ``--key-prefix`` override two of them.
``--json`` prints one JSON document on stdout instead of text. Exit codes: 0 done; 1 a failure
(Redis, broker or database unavailable, a doctor check FAILed, nothing cached for get/ttl); 2 a
usage error (an invalid tenant id or id, conflicting options, invalid settings). Secrets in URLs are
masked in everything printed.

The command keeps no memory tier and runs no eviction subscriber: it reads what Redis holds, and its
invalidations are published to every process like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import click
import orjson
from pydantic import ValidationError

from shared_cache import (
    BackendUnavailable,
    CacheManager,
    CacheSettings,
    CorruptEntryError,
    InvalidKeyError,
    SharedCacheError,
    __version__,
    agent_scopes,
    collection_scopes,
    conversation_scopes,
    deserialize_from_cache,
    document_update_scopes,
    resource_scopes,
    tenant_scopes,
    validate_tenant_id,
)
from tasks.settings import TaskSettings
from tasks.support import mask_url, secrets_of
from worker.settings import ListenerSettings
from worker.sources.postgres import plugin_fix, plugin_refused

if TYPE_CHECKING:
    from worker.coalesce import Window
    from worker.rules import Planner

T = TypeVar("T")
Check = tuple[str, str, str]  # (OK | WARN | FAIL | SKIP, name, detail)

_OPERATOR_SOCKET_TIMEOUT = 5.0  # SCAN, INFO and friends are not on a latency budget
_OPERATOR_CONNECT_TIMEOUT = 2.0


# -- errors -------------------------------------------------------------------------------------
class CliFailure(click.ClickException):
    """An expected failure: one line on stderr, exit code 1, never a traceback."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class BadInput(CliFailure):
    """A usage error (an invalid id, conflicting options, invalid settings): exit code 2."""

    exit_code = 2


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisClusterException, RedisError

    return (BackendUnavailable, RedisError, RedisClusterException, OSError)


# -- state --------------------------------------------------------------------------------------
class State:
    """Options of the group, and settings read lazily (``--help`` works whatever the environment)."""

    def __init__(self, as_json: bool, redis_url: str | None, key_prefix: str | None) -> None:
        self.as_json = as_json
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self._cache: CacheSettings | None = None
        self._tasks: TaskSettings | None = None
        self._listener: ListenerSettings | None = None

    @property
    def cache(self) -> CacheSettings:
        if self._cache is None:
            overrides: dict[str, Any] = {}
            if self.redis_url:
                overrides["redis_url"] = self.redis_url
            if self.key_prefix is not None:
                overrides["key_prefix"] = self.key_prefix
            try:
                settings = CacheSettings(**overrides)
            except ValidationError as exc:
                raise BadInput(f"invalid settings: {_first_error(exc)}") from None
            self._cache = settings.model_copy(
                update={
                    "memory_enabled": False,
                    "subscriber_enabled": False,
                    "stats_publish_seconds": 0.0,
                    "socket_timeout_seconds": max(settings.socket_timeout_seconds, _OPERATOR_SOCKET_TIMEOUT),
                    "connect_timeout_seconds": max(settings.connect_timeout_seconds, _OPERATOR_CONNECT_TIMEOUT),
                }
            )
        return self._cache

    @property
    def tasks(self) -> TaskSettings:
        if self._tasks is None:
            try:
                self._tasks = TaskSettings()
            except ValidationError as exc:
                raise BadInput(f"invalid worker settings: {_first_error(exc)}") from None
        return self._tasks

    @property
    def listener(self) -> ListenerSettings:
        if self._listener is None:
            try:
                self._listener = ListenerSettings()
            except ValidationError as exc:
                raise BadInput(f"invalid worker settings: {_first_error(exc)}") from None
        return self._listener

    @property
    def redis_display(self) -> str:
        return mask_url(self.cache.redis_url.get_secret_value())

    def scrub(self, text: str) -> str:
        """``text`` without any password of the configured URLs (error messages may quote them)."""
        urls = [self.redis_url or "", os.environ.get("SHARED_CACHE_REDIS_URL", "")]
        with contextlib.suppress(BadInput):
            urls += [
                self.cache.redis_url.get_secret_value(),
                self.tasks.broker_url.get_secret_value(),
                self.listener.database_url.get_secret_value(),
            ]
        for url in urls:
            for secret in secrets_of(url):
                text = text.replace(secret, "***")
        return " ".join(text.split())  # one line

    def run(self, work: Callable[[CacheManager], Awaitable[T]]) -> T:
        """Run ``work`` with a manager of its own (not the singleton) on a new event loop; expected
        failures become one line and an exit code."""

        async def main() -> T:
            manager = CacheManager(self.cache)
            try:
                return await work(manager)
            finally:
                with contextlib.suppress(Exception):
                    await manager.close()

        try:
            return asyncio.run(main())
        except InvalidKeyError as exc:
            raise BadInput(self.scrub(str(exc))) from None
        except _redis_errors() as exc:
            raise CliFailure(self.scrub(f"Redis at {self.redis_display}: {_describe(exc)}")) from None

    def emit(self, data: Any, text: str | Callable[[], str]) -> None:
        if self.as_json:
            click.echo(_dumps(data))
        else:
            click.echo(text() if callable(text) else text)


def _dumps(data: Any) -> str:
    options = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
    return orjson.dumps(data, option=options, default=str).decode()


def _describe(exc: BaseException) -> str:
    message = str(exc) or type(exc).__name__
    return message if isinstance(exc, BackendUnavailable) else f"{type(exc).__name__}: {message}"


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc)
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))


# -- the group ----------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (for scripts) instead of text.")
@click.option("--redis-url", default=None, metavar="URL", help="Redis URL (default: SHARED_CACHE_REDIS_URL).")
@click.option("--key-prefix", default=None, metavar="PREFIX", help="Key prefix (default: SHARED_CACHE_KEY_PREFIX).")
@click.version_option(__version__, prog_name="shared-cache")
@click.pass_context
def cli(ctx: click.Context, as_json: bool, redis_url: str | None, key_prefix: str | None) -> None:
    """Operate shared_cache: inspect, read, invalidate, warm, replay dead letters, diagnose.

    Settings come from the environment (SHARED_CACHE_*, SHARED_CACHE_WORKER_*). Exit codes: 0 done,
    1 a failure (a backend unavailable, a doctor check failed, nothing cached), 2 a usage error.
    """
    ctx.obj = State(as_json, redis_url, key_prefix)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``shared-cache`` script."""
    cli.main(args=argv, prog_name="shared-cache")


def _identity(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        (
            click.option("--tenant", required=True, help="Tenant id."),
            click.option("--agent", default=None, help="Agent id (context of the read)."),
            click.option("--conversation", default=None, help="Conversation id (context of the read)."),
            click.option("--collection", default=None, help="Collection id (context of the read)."),
        )
    ):
        func = option(func)
    return func


# -- get / ttl ----------------------------------------------------------------------------------
@cli.command()
@click.argument("data_type")
@click.argument("resource_id")
@_identity
@click.pass_obj
def get(
    state: State,
    data_type: str,
    resource_id: str,
    tenant: str,
    agent: str | None,
    conversation: str | None,
    collection: str | None,
) -> None:
    """The value a read of DATA_TYPE RESOURCE_ID would get from Redis, and the hierarchy level it
    comes from (this command has no memory tier: the tier is always redis). Exit code 1 if nothing
    valid is cached."""

    async def work(manager: CacheManager) -> dict[str, Any]:
        plan = manager.plan(data_type, tenant, resource_id, agent, conversation, collection)
        found = await manager.lookup(plan)
        if not found.level:
            return {"found": False, "key": plan.entry_keys[0]}
        i = found.level - 1
        key = plan.entry_keys[i]
        pttl = int(await manager.redis.call("PTTL", key))
        try:
            value = deserialize_from_cache(found.payload, data_type)
        except CorruptEntryError as exc:
            raise CliFailure(f"the entry at {key} does not decode: {exc}") from None
        return {
            "found": True,
            "tier": "redis",
            "level": plan.level_names[i],
            "key": key,
            "ttl": -1 if pttl == -1 else max(0, round(pttl / 1000)),
            "negative": found.payload == b"n",  # a cached "not found"
            "value": value,
        }

    result = state.run(work)
    if not result["found"]:
        state.emit(result, f"no valid entry (most specific key {result['key']})")
        sys.exit(1)

    def text() -> str:
        ttl = "no expiry" if result["ttl"] == -1 else f"{result['ttl']} s left"
        kind = " (a cached 'not found')" if result["negative"] else ""
        head = f"from redis, level {result['level']}, key {result['key']}, {ttl}{kind}"
        return head + "\n" + _dumps(result["value"])

    state.emit(result, text)


@cli.command()
@click.argument("data_type")
@click.argument("resource_id")
@_identity
@click.pass_obj
def ttl(
    state: State,
    data_type: str,
    resource_id: str,
    tenant: str,
    agent: str | None,
    conversation: str | None,
    collection: str | None,
) -> None:
    """Seconds left of the entry a read would serve (-1: no expiry; -2: no valid entry, exit code 1)."""

    async def work(manager: CacheManager) -> int:
        return int(await manager.ttl(data_type, resource_id, tenant, agent, conversation, collection))

    seconds = state.run(work)
    meaning = {-1: "no expiry", -2: "no valid entry"}.get(seconds, f"{seconds} s left")
    state.emit({"ttl": seconds, "meaning": meaning}, f"{seconds} ({meaning})")
    if seconds == -2:
        sys.exit(1)


# -- invalidate ---------------------------------------------------------------------------------
@cli.command()
@click.option("--tenant", required=True, help="Tenant id.")
@click.option("--type", "data_type", default=None, help="A data type: every entry of it, or of --resource.")
@click.option("--resource", default=None, help="With --type: one resource, in every context (default '*').")
@click.option("--document", default=None, help="A document update (with --collection: its collection too).")
@click.option("--collection", default=None, help="Alone: everything cached under the collection.")
@click.option("--agent", default=None, help="Everything cached under the agent, and its agent_config.")
@click.option("--conversation", default=None, help="Everything cached under the conversation.")
@click.option("--all", "everything", is_flag=True, help="Everything of the tenant (asks, unless --yes).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before --all.")
@click.pass_obj
def invalidate(
    state: State,
    tenant: str,
    data_type: str | None,
    resource: str | None,
    document: str | None,
    collection: str | None,
    agent: str | None,
    conversation: str | None,
    everything: bool,
    yes: bool,
) -> None:
    """Invalidate at exactly one scope: --type [--resource], --document [--collection], --agent,
    --collection, --conversation or --all. One generation bump (one round trip), published to every
    process's memory tier. No other tenant is touched."""
    forms = {
        "--type": data_type is not None,
        "--document": document is not None,
        "--collection": collection is not None and document is None,
        "--agent": agent is not None,
        "--conversation": conversation is not None,
        "--all": everything,
    }
    chosen = [name for name, given in forms.items() if given]
    if len(chosen) != 1:
        got = ", ".join(chosen) or "none"
        raise BadInput(
            f"give exactly one of --type, --document, --collection, --agent, --conversation, --all (got {got})"
        )
    if resource is not None and data_type is None:
        raise BadInput("--resource goes with --type")
    try:  # validates every id before anything is asked or sent
        if data_type is not None:
            scopes, what = resource_scopes(tenant, data_type, resource or "*"), f"{data_type} {resource or '*'}"
        elif document is not None:
            scopes = document_update_scopes(tenant, document, collection)
            what = f"document {document}" + (f" of collection {collection}" if collection is not None else "")
        elif collection is not None:
            scopes, what = collection_scopes(tenant, collection), f"collection {collection}"
        elif agent is not None:
            scopes, what = agent_scopes(tenant, agent), f"agent {agent}"
        elif conversation is not None:
            scopes, what = conversation_scopes(tenant, conversation), f"conversation {conversation}"
        else:
            scopes, what = tenant_scopes(tenant), "everything"
    except InvalidKeyError as exc:
        raise BadInput(str(exc)) from None
    if everything and not yes:
        click.confirm(f"Invalidate everything cached for tenant {tenant!r}?", abort=True, err=True)

    async def work(manager: CacheManager) -> None:
        if data_type is not None:
            await manager.invalidate(tenant, data_type, resource or "*")
        elif document is not None:  # what invalidate_document_update does, on this manager
            await manager.invalidate_scopes(tenant, scopes, "document_update")
        elif collection is not None:
            await manager.invalidate_collection_complete(tenant, collection)
        elif agent is not None:
            await manager.invalidate_agent_complete(tenant, agent)
        elif conversation is not None:
            await manager.invalidate_conversation_complete(tenant, conversation)
        else:
            await manager.invalidate_tenant(tenant)

    state.run(work)
    shown = [list(scope) for scope in scopes]
    state.emit(
        {"tenant": tenant, "invalidated": what, "scopes": shown},
        f"invalidated {what} of tenant {tenant} (scopes: {'; '.join(' '.join(s) for s in shown)})",
    )


# -- warm ---------------------------------------------------------------------------------------
@cli.command()
@click.option("--tenant", required=True, help="Tenant id.")
@click.option("--collection", required=True, help="Collection whose chunk texts to embed.")
@click.option("--inline", is_flag=True, help="Run warm_collection here and wait, instead of queueing it.")
@click.pass_obj
def warm(state: State, tenant: str, collection: str, inline: bool) -> None:
    """Embed and cache every chunk text of a collection: send the shared_cache.warm_collection task
    to the warming queue (prints its id), or with --inline run it in this process (needs the
    database and an embedding provider, SHARED_CACHE_WORKER_EMBEDDING_PROVIDER)."""
    try:
        validate_tenant_id(tenant)
        collection_scopes(tenant, collection)  # a collection id the cache can key
    except InvalidKeyError as exc:
        raise BadInput(str(exc)) from None
    if inline:
        result = _warm_inline(state, tenant, collection)
        state.emit(
            result,
            f"warmed collection {collection} of tenant {tenant}: {result['texts']} texts, "
            f"{result['generated']} embedded, {result['cache_hits']} already cached",
        )
        return
    celery = _celery(state)
    try:
        task = celery.send_task("shared_cache.warm_collection", args=[tenant, collection], queue="warming")
    except Exception as exc:  # kombu's OperationalError and friends: the broker is away
        raise CliFailure(state.scrub(f"broker {_broker_display(state)}: {_describe(exc)}")) from None
    finally:
        celery.close()
    state.emit({"task_id": task.id, "queue": "warming"}, f"queued warm_collection as task {task.id}")


def _warm_inline(state: State, tenant: str, collection: str) -> dict[str, Any]:
    import psycopg

    overrides = {"SHARED_CACHE_REDIS_URL": state.redis_url, "SHARED_CACHE_KEY_PREFIX": state.key_prefix}
    with _environ({k: v for k, v in overrides.items() if v is not None}):
        state.tasks, state.listener  # noqa: B018 (settings errors first, as usage errors)
        _celery(state)  # the app the task proxy resolves to
        from tasks.warming import warm_collection

        try:
            return dict(warm_collection.run(tenant, collection))
        except (RuntimeError, psycopg.Error, SharedCacheError, OSError) as exc:
            raise CliFailure(state.scrub(f"warming failed: {_describe(exc)}")) from None


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a call that reads its settings from them (the warming task)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _celery(state: State) -> Any:
    settings = state.tasks  # first: importing worker.app builds an app from the environment
    from worker.app import make_app

    return make_app(settings)


def _broker_display(state: State) -> str:
    return mask_url(state.tasks.broker_url.get_secret_value())


# -- dead letters -------------------------------------------------------------------------------
@cli.group(name="dead-letters")
def dead_letters() -> None:
    """Events the listener could not parse or plan, parked with the reason (SHARED_CACHE_WORKER_DEAD_LETTER_KEY)."""


@dead_letters.command(name="list")
@click.option("--count", default=20, show_default=True, type=click.IntRange(min=1), help="Most entries shown.")
@click.pass_obj
def dead_letters_list(state: State, count: int) -> None:
    """The newest dead letters first, with how many are waiting and how many each source parked."""
    from worker.dead_letters import DeadLetters

    key = state.listener.dead_letter_key

    async def work(manager: CacheManager) -> dict[str, Any]:
        letters = DeadLetters(manager.redis.client(), key, state.listener.dead_letter_max)
        waiting = int(await letters.client.llen(key))
        return {"key": key, "waiting": waiting, "parked": await letters.counts(), "entries": await letters.list(count)}

    data = state.run(work)

    def text() -> str:
        head = f"{data['waiting']} dead letters waiting in {key}" + _parked(data["parked"])
        rows = [
            [_when(e.get("at")), str(e.get("source", "?")), _clip(e.get("reason"), 70), _clip(e.get("raw"), 60)]
            for e in data["entries"]
        ]
        return "\n".join([head, *(_table(["PARKED", "SOURCE", "REASON", "RAW"], rows) if rows else [])])

    state.emit(data, text)


@dead_letters.command(name="replay")
@click.option("--count", default=100, show_default=True, type=click.IntRange(min=1), help="Most entries replayed.")
@click.pass_obj
def dead_letters_replay(state: State, count: int) -> None:
    """Take the oldest dead letters, parse each raw input as a ChangeEvent, plan it with the current
    rules (SHARED_CACHE_WORKER_RULES_FILE) and send the tasks, coalesced as the listener does.
    Entries that still fail go back to the list with the new reason; if the broker cannot take the
    tasks, every entry taken goes back. Replayed invalidations carry no commit time, so they do not
    skew the commit-to-evict latency. Exit code 1 only if the tasks could not be sent."""
    from worker.rules import Planner, load_rules

    try:
        planner = Planner(load_rules(state.listener.rules_file))
    except (OSError, ValueError) as exc:
        raise BadInput(f"rules file {state.listener.rules_file}: {exc}") from None
    celery = _celery(state)
    try:
        result = state.run(lambda manager: _replay(state, manager, planner, celery, count))
    finally:
        celery.close()
    state.emit(
        result,
        f"replayed {result['replayed']}, still failing {result['failed']} (parked again); tasks sent: "
        f"{result['tasks']['invalidation']} invalidation, {result['tasks']['warming']} warming"
        + (f"; not sent: {result['error']}" if result.get("error") else ""),
    )
    if result.get("error"):
        sys.exit(1)


async def _replay(state: State, manager: CacheManager, planner: Planner, celery: Any, count: int) -> dict[str, Any]:
    from worker.coalesce import Window
    from worker.dead_letters import DeadLetters

    ws = state.listener
    client = manager.redis.client()
    letters = DeadLetters(client, ws.dead_letter_key, ws.dead_letter_max)
    # Entries that fail again are pushed back at the newest end: taking at most what is there now
    # never takes them twice in one run.
    waiting = int(await client.llen(ws.dead_letter_key))
    window = Window()
    taken: list[dict[str, Any]] = []
    planned: list[dict[str, Any]] = []
    failed: list[tuple[dict[str, Any], str]] = []
    sent = {"invalidation": 0, "warming": 0}
    sent_ok = False
    error = ""
    try:
        for _ in range(min(count, waiting)):
            entry = await letters.pop_oldest()
            if entry is None:
                break
            taken.append(entry)
            reason = _plan_entry(entry, planner, window)
            if reason is None:
                planned.append(entry)
            else:
                failed.append((entry, reason))
        if window:  # the tenants go where the listener leaves them
            await client.sadd(
                manager.keys.worker_tenants, *{*window.invalidations, *window.texts}
            )  # as the listener does
            try:
                sent = await asyncio.to_thread(_send_window, celery, window, state.tasks)
                sent_ok = True
            except Exception as exc:  # the broker is away: nothing taken may be lost
                error = state.scrub(f"broker {_broker_display(state)}: {_describe(exc)}")
                failed += [(entry, f"replay: tasks not sent: {error}") for entry in planned]
                planned = []
        await _park_again(client, ws.dead_letter_key, ws.dead_letter_max, failed)
    except BaseException:
        # Interrupted (Ctrl-C, Redis gone mid-way): whatever was taken and not sent goes back.
        reasons = {id(entry): reason for entry, reason in failed}
        delivered = {id(entry) for entry in planned} if sent_ok else set()
        back = [(e, reasons.get(id(e), str(e.get("reason", "")))) for e in taken if id(e) not in delivered]
        with contextlib.suppress(Exception):
            await _park_again(client, ws.dead_letter_key, ws.dead_letter_max, back)
        raise
    return {
        "replayed": len(planned),
        "failed": len(failed),
        "tasks": sent,
        "reasons": [reason for _, reason in failed],
        "error": error,
    }


def _plan_entry(entry: dict[str, Any], planner: Planner, window: Window) -> str | None:
    """Add the entry's actions to ``window``; or the reason it still fails."""
    from worker.events import ChangeEvent

    raw = entry.get("raw")
    if not isinstance(raw, str) or not raw:
        return "replay: the entry has no raw input"
    try:
        event = ChangeEvent.model_validate_json(raw)
    except ValidationError as exc:
        return f"replay: not a ChangeEvent: {_first_error(exc)}"
    try:
        window.add(planner.plan(event))  # no commit time: see dead_letters_replay
    except ValueError as exc:  # PlanError, or an id the cache refuses
        return f"replay: {exc}"
    return None


def _send_window(celery: Any, window: Window, ws: TaskSettings) -> dict[str, int]:
    """The listener's dispatch: one invalidation task per tenant, warming batches if warming is on."""
    from worker.dispatch import dispatch_window

    return dispatch_window(celery, window, ws, reason_prefix="replay: ")


async def _park_again(client: Any, key: str, max_entries: int, items: list[tuple[dict[str, Any], str]]) -> None:
    """Push entries back with their new reason. Not ``DeadLetters.park``: that also counts a new
    dead letter for the source, and these are the same events again."""
    if not items:
        return
    now = time.time()
    async with client.pipeline(transaction=True) as pipe:
        for entry, reason in items:
            again = {
                **entry,
                "reason": reason,
                "at": now,
                "first_at": entry.get("first_at", entry.get("at")),
                "replays": int(entry.get("replays", 0) or 0) + 1,
            }
            pipe.lpush(key, orjson.dumps(again))
        pipe.ltrim(key, 0, max_entries - 1)
        await pipe.execute()


# -- stats --------------------------------------------------------------------------------------
@cli.command()
@click.option(
    "--max-scan",
    default=100_000,
    show_default=True,
    type=click.IntRange(min=0),
    help="Per tenant, stop SCANning after walking about this many keys (0: skip the per-tenant part).",
)
@click.option("--max-tenants", default=20, show_default=True, type=click.IntRange(min=1), help="Most tenants shown.")
@click.option("--tenant", "tenants", multiple=True, help="Count these tenants' keys (default: those the worker knows).")
@click.pass_obj
def stats(state: State, max_scan: int, max_tenants: int, tenants: tuple[str, ...]) -> None:
    """Reads per data type and tier (hits, misses, hit ratio, p50/p99 latency) summed over every
    process that reported in the last minute; each process's memory tier and eviction latency; the
    listener's counters and slot lag; Redis memory; dead letters; and keys cached per tenant.

    The per-tenant part SCANs Redis with MATCH on each tenant's keys (bounded by --max-scan keys walked
    per tenant): cheap on a small keyspace, real work on a large one. Run it from an operator's shell,
    not from a health check.
    """
    try:
        for tenant in tenants:
            validate_tenant_id(tenant)
    except InvalidKeyError as exc:
        raise BadInput(str(exc)) from None
    data = state.run(lambda manager: _collect_stats(state, manager, max_scan, max_tenants, list(tenants)))
    state.emit(data, lambda: _render_stats(data))


async def _collect_stats(
    state: State, manager: CacheManager, max_scan: int, max_tenants: int, tenants: list[str]
) -> dict[str, Any]:
    client = manager.redis.client()
    now = time.time()
    reports: list[dict[str, Any]] = []
    unreadable = 0
    async for key in client.scan_iter(match=manager.keys.stats_pattern(), count=1000):
        report = _json_object(await client.get(key))
        if report is None:
            unreadable += 1 if await client.exists(key) else 0  # (gone meanwhile: expired)
            continue
        reports.append(report)
    reports.sort(key=lambda r: str(r.get("origin", "")))
    listener = _json_object(await client.get(manager.keys.worker_stats))
    memory = await client.info("memory")
    dead_key = state.listener.dead_letter_key
    parked = await client.hgetall(f"{dead_key}:counts")
    data: dict[str, Any] = {
        "prefix": manager.prefix,
        "cache": _aggregate(reports) | {"unreadable_reports": unreadable},
        "processes": [_process_row(r, now) for r in reports],
        "listener": None,
        "redis": {
            "used_memory": _int(memory.get("used_memory")),
            "maxmemory": _int(memory.get("maxmemory")),
            "maxmemory_policy": _text(memory.get("maxmemory_policy")),
            "keys": _int(await client.dbsize()),
        },
        "dead_letters": {
            "key": dead_key,
            "waiting": _int(await client.llen(dead_key)),
            "parked": {_text(k): _int(v) for k, v in parked.items()},
        },
        "tenants": None,
    }
    if listener is not None:
        data["listener"] = {
            "age_s": round(now - _num(listener.get("at")), 1),
            "stats": listener.get("stats") if isinstance(listener.get("stats"), dict) else {},
            "sources": [s for s in listener.get("sources", []) if isinstance(s, dict)],
        }
    if max_scan:
        data["tenants"] = await _tenant_keys(state, manager, client, tenants, max_scan, max_tenants)
    return data


async def _tenant_keys(
    state: State, manager: CacheManager, client: Any, tenants: list[str], max_scan: int, max_tenants: int
) -> dict[str, Any]:
    known = _int(await client.scard(manager.keys.worker_tenants))
    if not tenants:
        async for raw in client.sscan_iter(manager.keys.worker_tenants, count=500):
            with contextlib.suppress(ValueError):
                tenants.append(validate_tenant_id(_text(raw)))
            if len(tenants) >= max_tenants:
                break
    rows = []
    for tenant in sorted(set(tenants))[:max_tenants]:
        tag = manager.keys.tenant_tag(tenant) + ":"
        entries: dict[str, int] = {}
        other = 0
        complete = True
        pattern = manager.keys.tenant_pattern(tenant)
        async for key in _scan_bounded(client, pattern, max_scan, state.cache.redis_cluster):
            if key is None:
                complete = False
                break
            rest = key[len(tag) :].decode("utf-8", "replace")
            if rest.startswith("#"):  # generations, leases, counters, the permanent-entry set
                other += 1
            else:
                data_type = rest.split(":", 1)[0]
                entries[data_type] = entries.get(data_type, 0) + 1
        rows.append(
            {
                "tenant": tenant,
                "entries": sum(entries.values()),
                "by_type": dict(sorted(entries.items())),
                "bookkeeping_keys": other,
                "complete": complete,
            }
        )
    return {"known": known, "max_scan": max_scan, "rows": rows}


async def _scan_bounded(client: Any, match: str, max_scan: int, cluster: bool) -> Any:
    """Keys matching ``match``; yields None (and stops) once about ``max_scan`` keys were walked.

    On a single server the cursor is driven here so the bound is on keys walked (the server's
    work), not on keys matched. A cluster client scans every node itself (``scan_iter``), so there
    the bound is on keys matched.
    """
    page = min(1000, max(10, max_scan))
    if cluster:
        seen = 0
        async for key in client.scan_iter(match=match, count=page):
            seen += 1
            yield key
            if seen >= max_scan:
                yield None
                return
        return
    cursor, walked = 0, 0
    while True:
        cursor, keys = await client.scan(cursor, match=match, count=page)
        walked += page  # COUNT is how many keys one call walks (a hint the server follows closely)
        for key in keys:
            yield key
        if int(cursor) == 0:
            return
        if walked >= max_scan:
            yield None
            return


def _aggregate(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum counters over processes; latency percentiles cannot be summed, so the worst is kept."""
    by_type: dict[str, dict[str, Any]] = {}
    errors: dict[str, int] = {}
    for report in reports:
        for data_type, row in (report.get("by_type") or {}).items():
            if not isinstance(row, dict):
                continue
            into = by_type.setdefault(str(data_type), {"hits": {}, "misses": 0, "latency_ms": {}})
            for tier, count in (row.get("hits") or {}).items():
                into["hits"][tier] = into["hits"].get(tier, 0) + _int(count)
            into["misses"] += _int(row.get("misses"))
            for tier, latency in (row.get("latency_ms") or {}).items():
                worst = into["latency_ms"].setdefault(tier, {"p50": 0.0, "p99": 0.0})
                if isinstance(latency, dict):
                    worst["p50"] = max(worst["p50"], _num(latency.get("p50")))
                    worst["p99"] = max(worst["p99"], _num(latency.get("p99")))
        for kind, count in (report.get("errors") or {}).items():
            errors[str(kind)] = errors.get(str(kind), 0) + _int(count)
    for row in by_type.values():
        hits = sum(row["hits"].values())
        row["hit_ratio"] = hits / (hits + row["misses"]) if hits + row["misses"] else 0.0
    hits = sum(sum(r["hits"].values()) for r in by_type.values())
    misses = sum(r["misses"] for r in by_type.values())
    return {
        "processes": len(reports),
        "hits": hits,
        "misses": misses,
        "hit_ratio": hits / (hits + misses) if hits + misses else 0.0,
        "errors": dict(sorted(errors.items())),
        "by_type": dict(sorted(by_type.items())),
    }


def _process_row(report: dict[str, Any], now: float) -> dict[str, Any]:
    sub = report.get("subscriber") if isinstance(report.get("subscriber"), dict) else None
    return {
        "origin": str(report.get("origin", "?")),
        "age_s": round(now - _num(report.get("at")), 1),
        "hits": _int(report.get("hits")),
        "misses": _int(report.get("misses")),
        "memory": report.get("memory") if isinstance(report.get("memory"), dict) else None,
        "subscriber": sub,
    }


def _render_stats(data: dict[str, Any]) -> str:
    cache = data["cache"]
    out = [
        f"Cache reads: {_plural(cache['processes'], 'process')} reported in the last minute (prefix {data['prefix']})",
        f"  {cache['hits']} hits, {cache['misses']} misses, hit ratio {cache['hit_ratio']:.1%}"
        + ("; errors: " + ", ".join(f"{k} {v}" for k, v in cache["errors"].items()) if cache["errors"] else ""),
    ]
    rows = []
    for data_type, row in cache["by_type"].items():
        rows.append([data_type, "all", sum(row["hits"].values()), row["misses"], f"{row['hit_ratio']:.1%}", "", ""])
        for tier in sorted({*row["hits"], *row["latency_ms"]}):
            latency = row["latency_ms"].get(tier)
            rows.append(
                [
                    "",
                    tier,
                    row["hits"].get(tier, "-"),
                    "",
                    "",
                    _ms(latency["p50"]) if latency else "-",
                    _ms(latency["p99"]) if latency else "-",
                ]
            )
    if rows:
        headers = ["DATA TYPE", "TIER", "HITS", "MISSES", "HIT RATIO", "P50 MS", "P99 MS"]
        out += ["  " + line for line in _table(headers, rows, right={2, 3, 4, 5, 6})]
        out.append("  (latency: the worst p50/p99 over processes; a miss is timed under its source, db or generated;")
        out.append("   memory-tier hits are timed one in eight)")
    out.append("")
    out.append("Processes")
    prows = []
    for p in data["processes"]:
        memory, sub = p["memory"] or {}, p["subscriber"] or {}
        prop, commit = sub.get("propagation_ms") or {}, sub.get("commit_to_evict_ms") or {}
        prows.append(
            [
                p["origin"],
                f"{p['age_s']:.0f}s",
                memory.get("entries", "-"),
                _bytes(memory["bytes"]) if "bytes" in memory else "-",
                f"{_ms(prop['p50'])} / {_ms(prop['p99'])}" if prop and sub.get("events") else "-",
                f"{_ms(commit['p50'])} / {_ms(commit['p99'])}" if commit.get("count") else "-",
                sub.get("events", "-"),
            ]
        )
    if prows:
        headers = ["ORIGIN", "AGE", "MEM ENTRIES", "MEM BYTES", "PROPAGATION P50/P99 MS", "COMMIT-TO-EVICT", "EVENTS"]
        out += ["  " + line for line in _table(headers, prows, right={1, 2, 3, 6})]
    else:
        out.append("  none: no process with a memory tier reported in the last minute")
    out.append("")
    listener = data["listener"]
    if listener is None:
        out.append("Listener: no report in the last minute (is `python -m worker` running?)")
    else:
        out.append(f"Listener (report {listener['age_s']:.0f} s old)")
        counters = sorted(listener["stats"].items())
        out.append("  " + ("  ".join(f"{k} {v}" for k, v in counters) or "no events yet"))
        srows = [
            [
                s.get("name", "?"),
                "yes" if s.get("durable") else "no",
                s.get("received", "-"),
                _bytes(s["slot_lag_bytes"]) if isinstance(s.get("slot_lag_bytes"), int) else "-",
            ]
            for s in listener["sources"]
        ]
        if srows:
            out += ["  " + line for line in _table(["SOURCE", "DURABLE", "RECEIVED", "SLOT LAG"], srows, right={2, 3})]
    out.append("")
    redis = data["redis"]
    maxmemory = f"of {_bytes(redis['maxmemory'])}" if redis["maxmemory"] else "(no maxmemory)"
    out.append(
        f"Redis: {_bytes(redis['used_memory'])} used {maxmemory}, policy {redis['maxmemory_policy']},"
        f" {_plural(redis['keys'], 'key')}"
    )
    dead = data["dead_letters"]
    out.append(f"Dead letters: {dead['waiting']} waiting in {dead['key']}" + _parked(dead["parked"]))
    tenants = data["tenants"]
    if tenants is not None:
        out.append("")
        out.append(
            f"Keys per tenant (SCAN, up to ~{tenants['max_scan']} keys walked per tenant;"
            f" the worker knows {_plural(tenants['known'], 'tenant')})"
        )
        trows = [
            [
                t["tenant"],
                f"{t['entries']}" + ("" if t["complete"] else "+"),
                t["bookkeeping_keys"],
                ", ".join(f"{k} {v}" for k, v in t["by_type"].items()) or "-",
            ]
            for t in tenants["rows"]
        ]
        if trows:
            out += ["  " + line for line in _table(["TENANT", "ENTRIES", "OTHER KEYS", "BY TYPE"], trows, right={1, 2})]
            if any(not t["complete"] for t in tenants["rows"]):
                out.append("  (+: the scan stopped at --max-scan; there may be more)")
        else:
            out.append("  none")
    return "\n".join(out)


# -- doctor -------------------------------------------------------------------------------------
@cli.command()
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
    database (connect, wal_level=logical, the replication slot and its lag, wal2json usable, with a
    temporary slot). One line per check: OK, WARN, FAIL or SKIP. Exit code 1 if any check FAILs
    (WARN alone: 0). An unreachable broker or database is a FAIL unless --skip-broker/--skip-db."""
    checks: list[Check] = []
    try:
        checks += asyncio.run(_redis_checks(state))
    except _redis_errors() as exc:  # closing a half-open client may fail too
        checks.append(("FAIL", "redis", state.scrub(f"{state.redis_display}: {_describe(exc)}")))
    checks += [("SKIP", "broker", "--skip-broker")] if skip_broker else _broker_checks(state)
    checks += [("SKIP", "database", "--skip-db")] if skip_db else _database_checks(state, max_lag_bytes)
    failed = any(status == "FAIL" for status, _, _ in checks)
    state.emit(
        {"ok": not failed, "checks": [{"status": s, "check": c, "detail": d} for s, c, d in checks]},
        lambda: "\n".join(f"{s:<5} {c:<21} {d}" for s, c, d in checks),
    )
    if failed:
        sys.exit(1)


async def _redis_checks(state: State) -> list[Check]:
    manager = CacheManager(state.cache)
    url = state.redis_display
    checks: list[Check] = []
    try:
        client = manager.redis.client()
        try:
            await manager.redis.call("PING")
            server = await client.info("server")
        except _redis_errors() as exc:
            return [
                ("FAIL", "redis", state.scrub(f"{url}: {_describe(exc)}")),
                ("SKIP", "redis checks", "Redis unreachable: memory policy, subscribers, listener not checked"),
            ]
        checks.append(("OK", "redis", f"{url} answers (Redis {_text(server.get('redis_version'))})"))
        memory = await client.info("memory")
        policy, maxmemory = _text(memory.get("maxmemory_policy")), _int(memory.get("maxmemory"))
        if policy.startswith("allkeys-"):
            checks.append(
                (
                    "WARN",
                    "redis memory policy",
                    f"{policy} may evict keys without a TTL, and generation counters have none: an evicted counter"
                    " can make invalidated entries valid again. Use volatile-lru, volatile-ttl or noeviction.",
                )
            )
        else:
            limit = _bytes(maxmemory) if maxmemory else "no maxmemory"
            checks.append(("OK", "redis memory policy", f"{policy} ({limit}): keys without a TTL are never evicted"))
        channel = state.cache.eviction_channel
        ((_, subscribers),) = await client.pubsub_numsub(channel)
        if subscribers:
            checks.append(("OK", "eviction subscribers", f"{subscribers} listening on {channel}"))
        else:
            checks.append(
                (
                    "WARN",
                    "eviction subscribers",
                    f"no process listens on {channel}: fine if no service runs a memory tier now",
                )
            )
        report = _json_object(await client.get(manager.keys.worker_stats))
        if report is None:
            checks.append(("WARN", "listener", "no report in the last minute: is `python -m worker` running?"))
        else:
            age = time.time() - _num(report.get("at"))
            counters = report.get("stats")
            events = _int(counters.get("events")) if isinstance(counters, dict) else 0
            checks.append(("OK", "listener", f"reported {age:.0f} s ago, {events} events"))
        dead = _int(await client.llen(state.listener.dead_letter_key))
        if dead:
            checks.append(
                ("WARN", "dead letters", f"{dead} waiting: `shared-cache dead-letters list`, then `... replay`")
            )
        else:
            checks.append(("OK", "dead letters", "none waiting"))
        return checks
    finally:
        with contextlib.suppress(Exception):
            await manager.close()


def _broker_checks(state: State) -> list[Check]:
    url = state.tasks.broker_url.get_secret_value()
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
            return [("OK", "broker", f"{shown} answers; queued: {queued}")]
        from kombu import Connection  # type: ignore[attr-defined]

        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
        return [("OK", "broker", f"{shown} answers")]
    except Exception as exc:  # whatever the transport raises, the broker is not usable
        return [("FAIL", "broker", state.scrub(f"{shown}: {_describe(exc)}"))]


def _database_checks(state: State, max_lag_bytes: int) -> list[Check]:
    import psycopg

    ws = state.listener
    dsn = ws.database_url.get_secret_value()
    shown = mask_url(dsn)
    try:
        conn = psycopg.connect(dsn, connect_timeout=5, autocommit=True)
    except psycopg.Error as exc:
        return [("FAIL", "database", state.scrub(f"{shown}: {_describe(exc)}"))]
    checks: list[Check] = []
    with conn:
        try:
            version = conn.info.server_version
            checks.append(("OK", "database", f"{shown} answers (Postgres {version // 10000}.{version % 10000})"))
            wal_level = str(_first(conn.execute("SHOW wal_level").fetchone()))
            logical = wal_level == "logical"
            if logical:
                checks.append(("OK", "wal_level", "logical"))
            else:
                checks.append(("FAIL", "wal_level", f"{wal_level}: logical decoding needs wal_level=logical (restart)"))
            checks.append(_slot_check(conn, ws.slot_name, max_lag_bytes))
            checks.append(_plugin_list_check(conn))
            checks.append(_wal2json_check(conn) if logical else ("SKIP", "wal2json", "needs wal_level=logical"))
        except psycopg.Error as exc:
            checks.append(("FAIL", "database", state.scrub(f"{shown}: {_describe(exc)}")))
    return checks


def _slot_check(conn: Any, slot: str, max_lag_bytes: int) -> Check:
    row = conn.execute(
        "SELECT plugin, active, pg_current_wal_lsn() - confirmed_flush_lsn, to_jsonb(s) ->> 'wal_status'"
        " FROM pg_replication_slots s WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        return (
            "WARN",
            "replication slot",
            f"{slot} does not exist yet: the listener creates it when it starts (changes before that are not seen)",
        )
    plugin, active, lag, wal_status = row
    if plugin != "wal2json":
        return ("FAIL", "replication slot", f"{slot} uses plugin {plugin!r}, the listener needs wal2json")
    if wal_status == "lost":
        return (
            "FAIL",
            "replication slot",
            f"{slot} lost WAL it needed (max_slot_wal_keep_size): changes were missed; drop and recreate it",
        )
    lag_bytes = int(lag or 0)
    detail = f"{slot} (wal2json, {'in use' if active else 'idle'}), lag {_bytes(lag_bytes)}"
    if lag_bytes > max_lag_bytes:
        return ("WARN", "replication slot", f"{detail}: the listener is behind or stopped, and the WAL piles up")
    return ("OK", "replication slot", detail)


def _plugin_list_check(conn: Any) -> Check:
    """Postgres 15.20+ lets REPLICATION users decode only with the plugins ``output_plugin_libraries``
    lists (default ``pgoutput, test_decoding``); older servers have no such setting."""
    row = conn.execute("SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'").fetchone()
    if row is None:
        return ("OK", "output plugins", "not a setting of this server: any installed plugin may be used")
    listed = [name.strip() for name in str(row[0]).split(",")]
    if "wal2json" in listed:
        return ("OK", "output plugins", f"lists wal2json ({row[0]})")
    return ("FAIL", "output plugins", f"{row[0]!r} does not list wal2json; fix: {plugin_fix(str(row[0]))}")


def _wal2json_check(conn: Any) -> Check:
    """Create a temporary slot with wal2json (the plugin loads) and read from it with the options the
    listener uses (they are understood), then drop it; a temporary slot also goes with the session."""
    import psycopg

    name = f"shared_cache_doctor_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        conn.execute("SET statement_timeout = '10s'")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2json', true)", (name,))
        conn.execute(
            "SELECT count(*) FROM pg_logical_slot_peek_changes(%s, NULL, 1, 'format-version', '2',"
            " 'include-timestamp', '1', 'include-transaction', '1')",
            (name,),
        )
        conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
    except psycopg.errors.QueryCanceled:
        return (
            "WARN",
            "wal2json",
            "a temporary slot was not ready within 10 s (a long-running transaction delays it): not verified",
        )
    except psycopg.Error as exc:
        if plugin_refused(exc):
            return ("FAIL", "wal2json", "refused: not listed in output_plugin_libraries (see the output plugins check)")
        return ("FAIL", "wal2json", _describe(exc))
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.execute("RESET statement_timeout")
    return ("OK", "wal2json", "loads and decodes (format-version 2, checked with a temporary slot)")


# -- small helpers ------------------------------------------------------------------------------
def _json_object(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _num(raw: Any) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return 0.0


def _int(raw: Any) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        return int(_num(_text(raw)))


def _first(row: Any) -> Any:
    return row[0] if row else None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("s") else "s")


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _when(at: Any) -> str:
    if not isinstance(at, (int, float)) or not at:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def _clip(value: Any, width: int) -> str:
    text = " ".join(str(value if value is not None else "").split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _parked(counts: dict[str, int]) -> str:
    if not counts:
        return ""
    return " (parked so far: " + ", ".join(f"{source} {n}" for source, n in sorted(counts.items())) + ")"


def _table(headers: list[str], rows: list[list[Any]], right: set[int] | None = None) -> list[str]:
    right = right or set()
    cells = [[str(value) for value in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        padded = [v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))]
        return "  ".join(padded).rstrip()

    return [line(headers), *(line(row) for row in cells)]


if __name__ == "__main__":
    main()
