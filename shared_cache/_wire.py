"""A lean, pipelined connection to one Redis server, for the read and write paths.

redis-py's asyncio client spends more Python time per command (pool checkout, locks, health checks,
response callbacks) than a whole cache read may cost: on loopback its GET takes about twice what the
round trip does. The hot path needs one thing only: send a command, get its reply. So each event loop
gets one :class:`WireConnection`: commands are packed by hiredis, written at once (pipelined: many
callers share the connection without waiting for each other), and replies are parsed by hiredis and
handed to the callers' futures in order. Everything else (pub/sub, Sentinel discovery, Redis Cluster,
the operator tools) uses redis-py.

Errors are redis-py's own exception classes (``ConnectionError``, ``TimeoutError``, ``ResponseError``,
``NoScriptError``), so the tier's one error seam (``errors.backend_error``) maps both clients alike.
A reply that does not come within ``timeout`` closes the connection and fails every pending call:
after a timeout, the replies that follow could not be matched to their callers any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect: TCP (``host``/``port``) or a unix socket (``path``)."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: ssl.SSLContext | None = None


def _error(reply: ResponseError) -> ResponseError:
    text = str(reply)
    if text.startswith("NOSCRIPT"):
        return NoScriptError(text)
    return ResponseError(text)


# Bytes read from the socket at a time, as asyncio's own transports read (256 KiB).
_READ_BUFFER = 256 * 1024


class WireConnection(asyncio.BufferedProtocol):
    """One connection, pipelined. Create with :meth:`open`; use :meth:`execute`.

    A buffered protocol: the transport reads into one buffer the connection keeps and hiredis parses
    from there, instead of each read being a new bytes object that hiredis copies again (a batch's
    lookup reads 1.4 MB)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self._parser = hiredis.Reader(replyError=ResponseError)
        self._buffer = memoryview(bytearray(_READ_BUFFER))
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._sent_at: deque[float] = deque()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    @classmethod
    async def open(cls, endpoint: Endpoint, reply_timeout: float, connect_timeout: float) -> WireConnection:
        """Connect, authenticate and select the database; raises redis-py's errors on failure."""
        conn = cls(reply_timeout)
        loop = conn.loop
        try:
            async with asyncio.timeout(connect_timeout):
                if endpoint.path is not None:
                    await loop.create_unix_connection(lambda: conn, endpoint.path)
                else:
                    host = endpoint.host if endpoint.ssl is not None else None
                    await loop.create_connection(
                        lambda: conn, endpoint.host, endpoint.port, ssl=endpoint.ssl, server_hostname=host
                    )
                if endpoint.password is not None:
                    auth = (endpoint.password,) if endpoint.username is None else (endpoint.username, endpoint.password)
                    try:
                        await conn.execute("AUTH", *auth)
                    except ResponseError as exc:  # a wrong password: as redis-py, a connection failure
                        raise AuthenticationError(str(exc)) from exc
                if endpoint.db:
                    await conn.execute("SELECT", endpoint.db)
        except TimeoutError as exc:
            conn.close()
            raise RedisTimeoutError(f"connecting to {_where(endpoint)} timed out") from exc
        except OSError as exc:
            conn.close()
            raise RedisConnectionError(f"cannot connect to {_where(endpoint)}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    # -- asyncio.BufferedProtocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but they are transports
        self._transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        parser, waiting, sent_at = self._parser, self._waiting, self._sent_at
        parser.feed(self._buffer, 0, nbytes)  # type: ignore[arg-type]  # any buffer ("s*"); the stub says bytes
        while True:
            try:
                reply = parser.gets()
            except hiredis.ProtocolError as exc:
                self._fail(RedisConnectionError(f"protocol error from Redis: {exc}"))
                return
            if reply is False:
                return
            if not waiting:  # a reply nobody asked for: the stream cannot be trusted
                self._fail(RedisConnectionError("unexpected reply from Redis"))
                return
            future = waiting.popleft()
            sent_at.popleft()
            if future.done():  # its caller gave up (cancelled); the reply is dropped in order
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc}" if exc else "connection closed by Redis"))

    # -- calls -------------------------------------------------------------------------------------
    def send(self, *args: Any) -> asyncio.Future[Any]:
        """Write one command now and return the future of its reply (pipelining: do not wait here)."""
        return self.send_packed(hiredis.pack_command(args))

    def send_packed(self, command: bytes) -> asyncio.Future[Any]:
        """As :meth:`send`, for one command the caller packed itself (RESP: ``*n``, then ``$len`` and
        the bytes of each argument). It must be exactly one command: replies are matched to callers
        by their order."""
        if self.closed or self._transport is None:
            raise RedisConnectionError("connection to Redis is closed")
        future = self.loop.create_future()
        now = self.loop.time()
        if not self._waiting and self._timer is None:
            self._timer = self.loop.call_at(now + self.timeout, self._check_timeout)
        self._waiting.append(future)
        self._sent_at.append(now)
        self._transport.write(command)
        return future

    async def execute(self, *args: Any) -> Any:
        return await self.send(*args)

    def _check_timeout(self) -> None:
        self._timer = None
        if not self._sent_at:
            return
        oldest = self._sent_at[0]
        now = self.loop.time()
        if now - oldest >= self.timeout:
            self._fail(RedisTimeoutError(f"no reply from Redis within {self.timeout:g} s"))
        else:
            self._timer = self.loop.call_at(oldest + self.timeout, self._check_timeout)

    def _fail(self, error: Exception) -> None:
        """Close, and fail every call still waiting (their replies can no longer be matched)."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)
        self._sent_at.clear()

    def close(self) -> None:
        if not self.closed:
            self._fail(RedisConnectionError("connection closed"))

    def shut_down(self) -> None:
        """End the connection of a loop that was closed (its transport can no longer be closed):
        Redis sees the client go at once; the socket itself is closed when it is collected."""
        self.closed = True
        if self._transport is not None:
            sock = self._transport.get_extra_info("socket")
            with contextlib.suppress(Exception):
                sock.shutdown(socket.SHUT_RDWR)


def _where(endpoint: Endpoint) -> str:
    return endpoint.path if endpoint.path is not None else f"{endpoint.host}:{endpoint.port}"


def endpoint_from_url(url: str) -> Endpoint | None:
    """The endpoint of a ``redis://``, ``rediss://`` or ``unix://`` URL, or None if it asks for
    something this connection does not do (then redis-py's client is used)."""
    from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

    params: dict[str, Any] = dict(parse_url(url))
    cls = params.pop("connection_class", None)
    db = int(params.pop("db", 0) or 0)
    username, password = params.pop("username", None), params.pop("password", None)
    if cls is UnixDomainSocketConnection:
        path = params.pop("path")
        return None if params else Endpoint(path=path, db=db, username=username, password=password)
    host, port = params.pop("host", "localhost"), int(params.pop("port", 6379) or 6379)
    context = None
    if cls is SSLConnection:
        context = ssl.create_default_context(cafile=params.pop("ssl_ca_certs", None))
        reqs = str(params.pop("ssl_cert_reqs", "required")).lower()
        if reqs in ("none", "cert_none"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif reqs not in ("required", "cert_required"):
            return None
    params.pop("socket_timeout", None)
    params.pop("socket_connect_timeout", None)
    if params:  # options we do not handle (client name, protocol...): leave it to redis-py
        return None
    return Endpoint(host=host, port=port, db=db, username=username, password=password, ssl=context)
