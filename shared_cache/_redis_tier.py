"""The Redis tier: a connection per event loop, the Lua scripts, the circuit breaker.

Every call to Redis goes through :meth:`RedisTier.call` (or :meth:`RedisTier.call_many`), where
client errors become ours (``errors.backend_error``) and the breaker is consulted, so a dead Redis
costs a caller at most ``breaker_threshold`` timeouts and then nothing until the probe. Only a lost
connection or a timeout counts as a failure: an error reply about one key (a wrong type, maxmemory)
comes from a server that is up.

Connections are kept per running event loop (ARCHITECTURE.md 3.7): a Celery task that calls
``asyncio.run()`` per task and a service with one long loop both get one bound to their loop. On a
standalone server (or the master the sentinels name) commands go through the lean pipelined
:class:`~._wire.WireConnection`; on a Redis Cluster, or with URL options it does not handle, through
redis-py's client. The breaker is one per process, shared by every loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import Awaitable, Coroutine, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from ._breaker import CircuitBreaker
from ._settings import CacheSettings
from ._wire import Endpoint, WireConnection, endpoint_from_url
from .errors import BACKEND_ERRORS, BackendCommandError, BackendUnavailable, backend_error

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


LOOKUP = LuaScript.load("lookup")
WRITE = LuaScript.load("write")
WRITE_BATCH = LuaScript.load("write_batch")
INVALIDATE = LuaScript.load("invalidate")
RECLAIM = LuaScript.load("reclaim")
# Set on an error once the breaker has counted it (see RedisTier._failed).
_COUNTED = "_shared_cache_counted"


@dataclass(slots=True)
class LoopState:
    """What belongs to one event loop: its connection and its in-flight misses."""

    wire: WireConnection | None = None
    client: Redis | None = None  # redis-py: a cluster, URL options the wire does not handle, pipelines
    connecting: asyncio.Future[WireConnection] | None = None
    inflight: dict[Any, asyncio.Future[Any]] = field(default_factory=dict)


class RedisTier:
    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings
        self.breaker = CircuitBreaker(settings.breaker_threshold, settings.breaker_reset_seconds)
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopState] = weakref.WeakKeyDictionary()
        self._last_loop: asyncio.AbstractEventLoop | None = None
        self._last_state: LoopState | None = None
        url = settings.redis_url.get_secret_value()
        # The wire for a standalone server; Sentinel resolves the master's address first.
        self._endpoint: Endpoint | None = None if settings.redis_cluster else endpoint_from_url(url)

    # -- clients -----------------------------------------------------------------------------------
    def new_client(self) -> Redis:
        """A redis-py client for commands: a cluster client when ``redis_cluster`` is set (every key of
        a tenant shares its hash slot, so multi-key commands and scripts stay on one node)."""
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
        """A plain redis-py client of the URL's server (or of the master the sentinels name). The
        eviction subscriber uses one even on a cluster: PUBLISH reaches every node, so subscribing on
        any one node hears every eviction."""
        from redis.asyncio import Redis

        if self._sentinel_mode:
            return self.sentinel_master()
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # One immediate retry on a new connection: a pooled connection that a Redis restart closed
        # fails its next command, and redis-py's asyncio client does not retry by default.
        return Redis.from_url(
            self.settings.redis_url.get_secret_value(),
            socket_timeout=self.settings.socket_timeout_seconds,
            socket_connect_timeout=self.settings.connect_timeout_seconds,
            max_connections=self.settings.max_connections,
            decode_responses=False,
            retry=Retry(NoBackoff(), 1),
        )

    @property
    def _sentinel_mode(self) -> bool:
        return bool(self.settings.redis_sentinels and self.settings.redis_sentinel_service)

    def _sentinel(self) -> Any:
        from redis.asyncio.sentinel import Sentinel

        s = self.settings
        hosts = []
        for item in s.redis_sentinels.split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"redis_sentinels entry {item!r}: expected host:port")
            hosts.append((host, int(port)))
        timeouts = {"socket_timeout": s.socket_timeout_seconds, "socket_connect_timeout": s.connect_timeout_seconds}
        return Sentinel(hosts, sentinel_kwargs=timeouts, **timeouts)  # type: ignore[no-untyped-call]

    def sentinel_master(self) -> Redis:
        """A redis-py client of the current master, found through the sentinels (again after a failover)."""
        from redis.asyncio.connection import parse_url

        url = parse_url(self.settings.redis_url.get_secret_value())
        return self._sentinel().master_for(  # type: ignore[no-any-return]
            self.settings.redis_sentinel_service,
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
            self._forget_closed_loops()
            state = self._states[loop] = LoopState()
        self._last_loop, self._last_state = loop, state
        return state

    def _forget_closed_loops(self) -> None:
        """Drop the state of loops that were closed without closing the tier (``asyncio.run()`` per
        task, say): their connections to Redis are shut down here, when the next loop comes, and
        their sockets closed with the rest of the closed loop's objects. Without this, each such loop
        left a connection open for good, and its state with it: the state refers to its loop (through
        the connection), so the weak mapping of loops never let go of it."""
        for loop in [loop for loop in self._states if loop.is_closed()]:
            state = self._states.pop(loop)
            if state.wire is not None:
                state.wire.shut_down()
            if self._last_loop is loop:
                self._last_loop = self._last_state = None

    def client(self) -> Redis:
        """This loop's redis-py client (pipelines, admin commands, the operator tools)."""
        state = self.state()
        if state.client is None:
            state.client = self.new_client()
        return state.client

    async def _wire(self, state: LoopState) -> WireConnection:
        """This loop's wire connection, (re)connecting once for every caller waiting on it."""
        wire = state.wire
        if wire is not None and not wire.closed:
            return wire
        if state.connecting is None:
            state.connecting = asyncio.ensure_future(self._connect())
        connecting = state.connecting
        try:
            wire = await asyncio.shield(connecting)
        finally:
            if connecting.done() and state.connecting is connecting:
                state.connecting = None
                if not connecting.cancelled() and connecting.exception() is None:
                    state.wire = connecting.result()
        return wire

    async def _connect(self) -> WireConnection:
        s = self.settings
        endpoint = self._endpoint
        assert endpoint is not None
        if self._sentinel_mode:
            host, port = await self._sentinel().discover_master(s.redis_sentinel_service)
            endpoint = Endpoint(str(host), int(port), None, endpoint.db, endpoint.username, endpoint.password, None)
        return await WireConnection.open(endpoint, s.socket_timeout_seconds, s.connect_timeout_seconds)

    # -- calls -------------------------------------------------------------------------------------
    async def call(self, *args: Any) -> Any:
        """Run one Redis command through the breaker and the error seam."""
        breaker = self.breaker
        if breaker.failures and not breaker.allow():
            raise BackendUnavailable("circuit breaker open: Redis skipped")
        state = self._last_state if asyncio.get_running_loop() is self._last_loop else None
        if state is None:
            state = self.state()
        try:
            if self._endpoint is not None:
                wire = state.wire
                if wire is None or wire.closed:
                    wire = await self._wire(state)
                result = await wire.send(*args)
            else:
                result = await self.client().execute_command(*args)  # type: ignore[no-untyped-call]
        except NoScriptError:
            breaker.failures = 0  # the server answered: it is up
            raise
        except BACKEND_ERRORS as exc:
            raise self._failed(exc) from exc
        breaker.failures = 0
        return result

    def send_now(self, *args: Any) -> Coroutine[Any, Any, Any] | None:
        """Write one command now on this loop's pipelined connection and return its reply, to await
        when the caller needs it: the caller works while Redis answers, and commands sent one after
        the other go out together (one round trip). Errors are mapped as by :meth:`call` (a
        connection lost with many of them in flight is one failure for the breaker). None when
        that connection is not up yet, not used (a cluster, a URL option it does not handle) or
        the breaker has seen failures: then use :meth:`call`."""
        wire = self._wire_now()
        return None if wire is None else self._reply(wire.send(*args))

    def send_packed_now(self, command: bytes) -> Coroutine[Any, Any, Any] | None:
        """As :meth:`send_now`, for one command the caller packed itself (see ``WireConnection.send_packed``)."""
        wire = self._wire_now()
        return None if wire is None else self._reply(wire.send_packed(command))

    def _wire_now(self) -> WireConnection | None:
        if self._endpoint is None or self.breaker.failures:
            return None
        wire = self.state().wire
        return None if wire is None or wire.closed else wire

    def script_now(self, script: LuaScript, keys: Sequence[str], args: Sequence[Any]) -> Awaitable[Any]:
        """As :meth:`script`, but written now where :meth:`send_now` can (else when awaited)."""
        reply = self.send_now("EVALSHA", script.sha, len(keys), *keys, *args)
        if reply is None:
            return self.script(script, keys, args)
        return self._eval_if_unknown(reply, script, keys, args)

    async def _eval_if_unknown(
        self, reply: Awaitable[Any], script: LuaScript, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        try:
            return await reply
        except NoScriptError:
            return await self.call("EVAL", script.source, len(keys), *keys, *args)

    async def _reply(self, future: asyncio.Future[Any]) -> Any:
        try:
            result = await future
        except NoScriptError:
            self.breaker.failures = 0
            raise
        except BACKEND_ERRORS as exc:
            raise self._failed(exc) from exc
        self.breaker.failures = 0
        return result

    def _failed(self, exc: BaseException) -> BackendUnavailable:
        """The error seam (errors.backend_error); the breaker counts a failure unless Redis answered
        (an error reply means it is up) or this failure was counted already: every call waiting on
        a connection that drops (or times out) gets the very same error, and one lost connection
        is one failure, however many calls were in flight on it. Counting each of them would open
        the breaker (threshold 3 by default) on a single Redis restart under load, and send every
        read to the database for ``breaker_reset_seconds``; a Redis that stays down still opens it,
        as each new connection attempt fails on its own."""
        error = backend_error(exc)
        if isinstance(error, BackendCommandError):
            self.breaker.failures = 0
        elif not getattr(exc, _COUNTED, False):
            setattr(exc, _COUNTED, True)
            self.breaker.failure()
        return error

    async def call_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Several commands in one round trip (pipelined; not a transaction). The replies in order;
        a command's error reply is returned in its place as a ``BackendCommandError``."""
        if not commands:
            return []
        breaker = self.breaker
        if breaker.failures and not breaker.allow():
            raise BackendUnavailable("circuit breaker open: Redis skipped")
        try:
            if self._endpoint is not None:
                wire = await self._wire(self.state())
                futures = [wire.send(*command) for command in commands]
                replies = await asyncio.gather(*futures, return_exceptions=True)
            else:
                pipe = self.client().pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=False)
        except BACKEND_ERRORS as exc:
            raise self._failed(exc) from exc
        out: list[Any] = []
        for reply in replies:
            if isinstance(reply, BaseException):
                error = backend_error(reply)
                if not isinstance(error, BackendCommandError):
                    raise self._failed(reply) from reply
                out.append(error)
            else:
                out.append(reply)
        breaker.failures = 0
        return out

    async def script(self, script: LuaScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA; on a server that does not know the script yet, one EVAL, which caches it there
        (on a cluster, on the node that owns the keys, which is where it will run again)."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.call("EVAL", script.source, len(keys), *keys, *args)

    async def close(self) -> None:
        """Close the current loop's connections (those of loops closed since are shut down when the
        next loop first uses the tier)."""
        loop = asyncio.get_running_loop()
        state = self._states.pop(loop, None)
        if state is not None:
            if state.wire is not None:
                state.wire.close()
            if state.client is not None:
                await state.client.aclose()
        if self._last_loop is loop:
            self._last_loop = self._last_state = None
