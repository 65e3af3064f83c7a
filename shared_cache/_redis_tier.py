"""The Redis tier: per-event-loop clients, the Lua scripts, the circuit breaker.

Every call to Redis goes through :meth:`RedisTier.call`, the one seam where redis-py errors become
:class:`BackendUnavailable` and where the breaker is consulted, so a dead Redis costs a caller at most
``breaker_threshold`` timeouts and then nothing until the probe.

Clients are kept per running event loop (ARCHITECTURE.md 3.7): a Celery task that calls
``asyncio.run()`` per task and a service with one long loop both get a client bound to their loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from ._breaker import CircuitBreaker
from ._settings import CacheSettings
from .errors import BackendUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A script from ``shared_cache/lua``, called by SHA and loaded on first NOSCRIPT."""

    name: str
    source: bytes
    sha: str

    @classmethod
    def load(cls, name: str) -> LuaScript:
        source = resources.files("shared_cache").joinpath("lua", f"{name}.lua").read_bytes()
        return cls(name, source, hashlib.sha1(source).hexdigest())


LEASE = LuaScript.load("lease")
BACKEND_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)
WRITE = LuaScript.load("write")
WRITE_BATCH = LuaScript.load("write_batch")
INVALIDATE = LuaScript.load("invalidate")


@dataclass(slots=True)
class LoopState:
    """What belongs to one event loop: its Redis client and its in-flight misses."""

    client: Redis
    inflight: dict[Any, asyncio.Future[Any]] = field(default_factory=dict)


class RedisTier:
    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings
        self.breaker = CircuitBreaker(settings.breaker_threshold, settings.breaker_reset_seconds)
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopState] = weakref.WeakKeyDictionary()
        self._last_loop: asyncio.AbstractEventLoop | None = None
        self._last_state: LoopState | None = None

    def new_client(self) -> Redis:
        """A client for commands: a cluster client when ``redis_cluster`` is set (every key of a
        tenant shares its hash slot, so multi-key commands and scripts stay on one node)."""
        if self.settings.redis_cluster:
            from redis.asyncio.cluster import RedisCluster

            return RedisCluster.from_url(  # type: ignore[return-value]
                self.settings.redis_url.get_secret_value(),
                socket_timeout=self.settings.socket_timeout_seconds,
                socket_connect_timeout=self.settings.connect_timeout_seconds,
                decode_responses=False,
            )
        return self.node_client()

    def node_client(self) -> Redis:
        """A plain client of the URL's server (or of the master the sentinels name). The eviction
        subscriber uses one even on a cluster: PUBLISH reaches every node, so subscribing on any one
        node hears every eviction."""
        from redis.asyncio import Redis

        if self.settings.redis_sentinels and self.settings.redis_sentinel_service:
            return self.sentinel_master()
        return Redis.from_url(
            self.settings.redis_url.get_secret_value(),
            socket_timeout=self.settings.socket_timeout_seconds,
            socket_connect_timeout=self.settings.connect_timeout_seconds,
            max_connections=self.settings.max_connections,
            decode_responses=False,
        )

    def sentinel_master(self) -> Redis:
        """A client of the current master, found through the sentinels (and again after a failover)."""
        from redis.asyncio.connection import parse_url
        from redis.asyncio.sentinel import Sentinel

        s = self.settings
        hosts = []
        for item in s.redis_sentinels.split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"redis_sentinels entry {item!r}: expected host:port")
            hosts.append((host, int(port)))
        url = parse_url(s.redis_url.get_secret_value())
        timeouts = {"socket_timeout": s.socket_timeout_seconds, "socket_connect_timeout": s.connect_timeout_seconds}
        sentinel = Sentinel(hosts, sentinel_kwargs=timeouts, **timeouts)  # type: ignore[no-untyped-call]
        return sentinel.master_for(  # type: ignore[no-any-return]
            s.redis_sentinel_service,
            db=url.get("db", 0),
            username=url.get("username"),
            password=url.get("password"),
            decode_responses=False,
        )

    def state(self) -> LoopState:
        loop = asyncio.get_running_loop()
        if loop is self._last_loop and self._last_state is not None:
            return self._last_state
        state = self._states.get(loop)
        if state is None:
            state = LoopState(self.new_client())
            self._states[loop] = state
        self._last_loop, self._last_state = loop, state
        return state

    def client(self) -> Redis:
        return self.state().client

    async def call(self, *args: Any) -> Any:
        """Run one Redis command through the breaker and the error seam."""
        breaker = self.breaker
        if breaker.failures and not breaker.allow():
            raise BackendUnavailable("circuit breaker open: Redis skipped")
        client = self.state().client
        try:
            result = await client.execute_command(*args)  # type: ignore[no-untyped-call]
        except NoScriptError:
            breaker.failures = 0  # the server answered: it is up
            raise
        except BACKEND_ERRORS as exc:  # the seam: as errors.map_backend_errors, inlined on the hot path
            breaker.failure()
            raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from exc
        breaker.failures = 0
        return result

    async def script(self, script: LuaScript, keys: list[str] | tuple[str, ...], args: list[Any]) -> Any:
        """EVALSHA; on a server that does not know the script yet, one EVAL, which caches it there
        (on a cluster, on the node that owns the keys, which is where it will run again)."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.call("EVAL", script.source, len(keys), *keys, *args)

    async def close(self) -> None:
        """Close the current loop's client (others close with their loops)."""
        loop = asyncio.get_running_loop()
        state = self._states.pop(loop, None)
        if state is not None:
            await state.client.aclose()
        if self._last_loop is loop:
            self._last_loop = self._last_state = None
