"""A protocol-faithful local stand-in for the Supabase Realtime server, ``postgres_changes`` only.

Why it exists: the real server (Elixir, ``supabase/realtime``) cannot run here (no Docker), yet the
realtime change source must be tested end to end with the REAL ``realtime`` Python client and REAL
database changes. So this module speaks the same wire protocol the client speaks to Supabase and is
fed by the same mechanism the real server uses. It is a test double for the server only: nothing of
the client or of the source under test is replaced.

Wire protocol (Phoenix channels, JSON serializer ``vsn=1.0.0``), as Supabase documents it and as
``realtime`` 2.x parses it (``realtime/message.py``, ``realtime/_async/channel.py``):

- socket: ``ws://127.0.0.1:<port>/realtime/v1/websocket?apikey=<key>&vsn=1.0.0``; a wrong path is
  refused with HTTP 404, a wrong key with 403, a missing or other ``vsn`` with 400;
- every frame is ``{"topic", "event", "payload", "ref"}`` (client frames also carry ``join_ref``);
- ``phx_join`` on ``realtime:<name>`` with ``payload.config.postgres_changes`` = ``[{event, schema,
  table?, filter?}]`` is answered by ``phx_reply`` ``{"status": "ok", "response": {"postgres_changes":
  [<each binding + "id">]}}``; ids are stable non-zero integers per binding (the real server hashes
  the binding, the client ignores an id of 0). Once the channel really forwards changes the server
  pushes ``system`` ``{"status": "ok", "message": "Subscribed to PostgreSQL", "extension":
  "postgres_changes", "channel": <name>}``: like the real server, that comes after the join reply,
  which is why ``SUBSCRIBED`` in the client can precede the feed (supabase/realtime-js#525);
- ``heartbeat`` on topic ``phoenix`` -> ``phx_reply`` ok; ``access_token`` is accepted without a
  reply (as the real server does); ``phx_leave`` -> ``phx_reply`` ok and the channel is gone;
  anything else on a topic that was not joined -> ``phx_reply`` error ``unmatched topic``;
- a change is pushed as ``postgres_changes`` with payload ``{"ids": [<matching binding ids>], "data":
  {"schema", "table", "commit_timestamp", "type", "columns": [{"name", "type"}], "errors": null,
  "record"?, "old_record"?}}``. These are the server's field names (walrus ``realtime.apply_rls``):
  ``record`` for INSERT/UPDATE, ``old_record`` for UPDATE/DELETE, ``commit_timestamp`` as
  ``YYYY-MM-DDTHH:MM:SS.mmmZ``, column types as ``pg_type.typname``. ``eventType``/``new``/``old``
  are what realtime-js renames them to on the client side; the Python client validates ``data``
  against a TypedDict with the wire names and drops unknown keys, so the stand-in does not send them.

Where changes come from: a wal2json logical replication slot (``format-version`` 2,
``include-timestamp``, ``include-type-oids``, ``include-pk``, ``actions`` insert/update/delete) on the
given Postgres DSN, polled with ``pg_logical_slot_get_changes`` every ``poll_interval`` seconds. That
is the mechanism of the real server's ``postgres_changes`` extension (walrus polls a wal2json slot),
preferred here over triggers + LISTEN/NOTIFY because it needs nothing on the watched tables and keeps
commit order. The slot is created by ``start()`` (only changes committed after it are seen) and
dropped by ``stop()``. What the server's database side does to each change (publication
membership, row level security on DELETEs, error rows for tables without a primary key, oversized
records) is in ``tests/realtime_walrus.py``.

What the server does to channels, as ``realtime_channel.ex`` does it:

- a join whose bindings include a table outside the ``supabase_realtime`` publication is answered
  ``ok``, then the subscription fails as a whole: a ``system`` message ``{"extension":
  "postgres_changes", "status": "error", "message": "Unable to subscribe to changes with given
  parameters. Please check Realtime is enabled for the given connect parameters: [...]"}`` and the
  channel forwards nothing (the client then reports ``CHANNEL_ERROR`` and rejoins);
- ``shutdown_channels(message)`` is the server's ``shutdown_response``: a ``system`` error with
  ``extension: "system"``, then ``phx_close`` for the channel's join ref, and the channel is gone;
- ``db_events_limit`` is the tenant-wide database-event rate limit (``max_events_per_second``,
  averaged over ``rate_window_s``, counted once per matching subscription over every client):
  while it is exceeded the poller skips changes silently (``skipped`` counts them).

Test controls: ``subscribed_delay`` (answer the join at once but forward changes, and send the
``system`` message, only N seconds later, like realtime-js#525: changes in between are lost),
``silent`` (forward nothing while sockets and heartbeats stay alive), ``lose_bindings()`` (channels
joined so far stop receiving changes; new joins work: a rejoin without its bindings, as in
supabase/realtime-py#213/#258), ``drop_connections()`` (abort every socket without a close frame),
``send_raw()`` (push a malformed frame or change), ``push_system_error()``, ``shutdown_channels()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import operator
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import websockets
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from tests.realtime_walrus import SLOT_OPTIONS, Walrus

logger = logging.getLogger(__name__)

SOCKET_PATH = "/realtime/v1/websocket"
VSN = "1.0.0"
EVENTS = {"*", "INSERT", "UPDATE", "DELETE"}
COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}


@dataclass(frozen=True)
class Binding:
    """One ``postgres_changes`` binding of a joined channel, with the id the server gave it."""

    id: int
    event: str
    schema: str
    table: str | None
    filter: str | None
    echo: dict[str, Any]

    def matches(self, data: Mapping[str, Any]) -> bool:
        """Whether a change (the ``data`` object) is for this binding: event, schema, table, filter."""
        if self.event not in ("*", data.get("type")) or self.schema not in ("*", data.get("schema")):
            return False
        if self.table not in (None, "*", data.get("table")):
            return False
        return self.filter is None or filter_matches(self.filter, data)


@dataclass(eq=False)
class Channel:
    """A joined topic on one socket."""

    topic: str
    bindings: list[Binding]
    ready_at: float
    join_ref: str | None = None
    lost: bool = False
    failed: bool = False  # its subscription could not be created: it forwards nothing


@dataclass(eq=False)
class Connection:
    """One client socket and the channels it joined."""

    ws: ServerConnection
    channels: dict[str, Channel] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    access_token: str | None = None


def binding_id(binding: Mapping[str, Any]) -> int:
    """A stable, non-zero id per binding: the real server hashes the binding, the client treats 0 as unset."""
    canonical = json.dumps(binding, sort_keys=True, separators=(",", ":"))
    return (zlib.crc32(canonical.encode()) & 0x7FFFFFF) or 1


def _coerce(text: str, like: Any) -> Any:
    """Turn a filter operand into the type of the row value it is compared with."""
    if isinstance(like, bool):
        return text.lower() in ("true", "t", "1")
    if isinstance(like, int):
        return int(text)
    if isinstance(like, float):
        return float(text)
    return text


def filter_matches(spec: str, data: Mapping[str, Any]) -> bool:
    """Evaluate a realtime filter ``column=op.value`` (eq, neq, lt, lte, gt, gte, in) on the change's row."""
    column, _, rest = spec.partition("=")
    op, _, operand = rest.partition(".")
    row = data.get("record") or data.get("old_record") or {}
    value = row.get(column)
    if value is None:
        return False
    if op == "in":
        return value in [_coerce(item.strip(), value) for item in operand.strip("()").split(",")]
    return bool(COMPARISONS[op](value, _coerce(operand, value)))


def parse_bindings(payload: Mapping[str, Any]) -> list[Binding]:
    """Read ``config.postgres_changes`` of a join; raise ValueError for what the real server would refuse."""
    config = payload.get("config") or {}
    raw = config.get("postgres_changes") or []
    if not isinstance(raw, list):
        raise ValueError("postgres_changes must be a list")
    bindings = []
    for item in raw:
        if not isinstance(item, dict) or item.get("event") not in EVENTS or not isinstance(item.get("schema"), str):
            raise ValueError(f"invalid postgres_changes binding: {item!r}")
        spec = item.get("filter")
        if spec is not None and not _valid_filter(spec):
            raise ValueError(f"unsupported filter: {spec!r}")
        echo = {**item, "id": binding_id(item)}
        bindings.append(Binding(echo["id"], item["event"], item["schema"], item.get("table"), spec, echo))
    return bindings


def _valid_filter(spec: Any) -> bool:
    if not isinstance(spec, str) or "=" not in spec:
        return False
    op = spec.partition("=")[2].partition(".")[0]
    return op == "in" or op in COMPARISONS


class RealtimeStandIn:
    """The stand-in server. ``await RealtimeStandIn(dsn).start()``, then connect to ``url``."""

    def __init__(
        self,
        dsn: str,
        *,
        api_key: str = "standin-anon-key",
        slot_name: str | None = None,
        poll_interval: float = 0.02,
        subscribed_delay: float = 0.0,
        publication: str | None = "supabase_realtime",
        max_record_bytes: int = 1024 * 1024,
        db_events_limit: float | None = None,
        rate_window_s: float = 60.0,
    ) -> None:
        self.dsn = dsn
        self.api_key = api_key
        self.slot_name = slot_name or f"realtime_standin_{uuid.uuid4().hex[:12]}"
        self.poll_interval = poll_interval
        self.subscribed_delay = subscribed_delay
        self.walrus = Walrus(publication, max_record_bytes)
        self.db_events_limit = db_events_limit
        self.rate_window_s = rate_window_s
        self._db_events: deque[tuple[float, int]] = deque()
        self.silent = False
        self.skipped = 0  # changes the rate limit skipped
        self.failed_subscriptions = 0
        self.port = 0
        # counters the tests read
        self.connections_total = 0
        self.joins = 0
        self.leaves = 0
        self.heartbeats = 0
        self.forwarded = 0
        self.changes_seen = 0
        self._connections: set[Connection] = set()
        self._server: Server | None = None
        self._poller: asyncio.Task[None] | None = None
        self._db: psycopg.AsyncConnection[Any] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The "project URL" a Supabase client is given; the client derives the socket URL from it."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def realtime_url(self) -> str:
        """The realtime endpoint itself (what supabase-py derives from the project URL)."""
        return f"ws://127.0.0.1:{self.port}/realtime/v1"

    @property
    def connections(self) -> int:
        """Sockets open right now."""
        return len(self._connections)

    async def start(self) -> RealtimeStandIn:
        """Create the slot, load type names, listen on a free loopback port and start polling."""
        self._db = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        await self._db.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2json')", (self.slot_name,))
        await self.walrus.refresh(self._db)
        self._server = await serve(self._serve, "127.0.0.1", 0, process_request=self._check_request, ping_interval=None)
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])
        self._poller = asyncio.create_task(self._poll(), name="realtime-standin-poll")
        return self

    async def stop(self) -> None:
        """Stop polling, close every socket, drop the slot."""
        if self._poller is not None:
            while not self._poller.done():  # re-cancel: a cancellation racing a result can be swallowed
                self._poller.cancel()
                await asyncio.wait({self._poller}, timeout=0.5)
            self._poller = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for conn in list(self._connections):
            self._forget(conn)
        if self._db is not None:
            with contextlib.suppress(psycopg.Error):
                await self._db.execute("SELECT pg_drop_replication_slot(%s)", (self.slot_name,))
            await self._db.close()
            self._db = None

    # -- test controls -----------------------------------------------------------------------------

    async def drop_connections(self) -> int:
        """Abort every socket at the TCP level (no close frame), as a network failure would."""
        conns = list(self._connections)
        for conn in conns:
            conn.ws.transport.abort()
        return len(conns)

    def lose_bindings(self) -> int:
        """Channels joined so far stop receiving changes (sockets stay up); later joins work."""
        channels = [ch for conn in self._connections for ch in conn.channels.values()]
        for channel in channels:
            channel.lost = True
        return len(channels)

    async def send_raw(self, payload: str | Mapping[str, Any]) -> None:
        """Push something the real server should never send.

        A ``str`` is sent verbatim as a frame on every socket. A mapping is sent, unchecked, as the
        ``data`` of a ``postgres_changes`` push on every joined channel, with the ids of the bindings it
        would match (else the channel's first binding), so it reaches the client's callbacks.
        """
        for conn in list(self._connections):
            if isinstance(payload, str):
                await self._send_text(conn, payload)
                continue
            for channel in list(conn.channels.values()):
                ids = [b.id for b in channel.bindings if _lenient_match(b, payload)] or [
                    b.id for b in channel.bindings[:1]
                ]
                frame = {"topic": channel.topic, "event": "postgres_changes", "payload": {"ids": ids, "data": payload}}
                await self._send(conn, {**frame, "ref": None})

    async def push_system_error(self, message: str, extension: str = "postgres_changes") -> None:
        """Push a ``system`` error on every joined channel (the channel stays joined)."""
        for conn in list(self._connections):
            for channel in list(conn.channels.values()):
                await self._system(conn, channel, "error", message, extension)

    async def shutdown_channels(self, message: str = "Too many messages per second") -> int:
        """The server's ``shutdown_response``: ``system`` error, then ``phx_close``; channels gone."""
        closed = 0
        for conn in list(self._connections):
            for channel in list(conn.channels.values()):
                await self._system(conn, channel, "error", message, "system")
                conn.channels.pop(channel.topic, None)
                frame = {"topic": channel.topic, "event": "phx_close", "payload": {}, "ref": channel.join_ref}
                await self._send(conn, frame)
                closed += 1
        return closed

    # -- websocket side ----------------------------------------------------------------------------

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse the handshake like the real endpoint: unknown path, wrong key, unsupported vsn."""
        parts = urlsplit(request.path)
        query = parse_qs(parts.query)
        if parts.path != SOCKET_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if query.get("apikey", [None])[0] != self.api_key:
            return connection.respond(HTTPStatus.FORBIDDEN, "invalid apikey\n")
        if query.get("vsn", [None])[0] != VSN:
            return connection.respond(HTTPStatus.BAD_REQUEST, "unsupported vsn\n")
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        conn = Connection(ws)
        self._connections.add(conn)
        self.connections_total += 1
        try:
            async for frame in ws:
                await self._on_frame(conn, frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            self._forget(conn)

    def _forget(self, conn: Connection) -> None:
        self._connections.discard(conn)
        for task in list(conn.tasks):
            task.cancel()
        conn.channels.clear()

    async def _on_frame(self, conn: Connection, frame: str | bytes) -> None:
        try:
            message = json.loads(frame)
            topic, event, payload, ref = message["topic"], message["event"], message["payload"], message.get("ref")
        except (ValueError, KeyError, TypeError):
            logger.warning("stand-in: unparsable frame ignored")
            return
        if topic == "phoenix" and event == "heartbeat":
            self.heartbeats += 1
            await self._reply(conn, topic, ref, "ok", {})
        elif event == "phx_join":
            await self._join(conn, topic, payload, ref)
        elif topic not in conn.channels:
            await self._reply(conn, topic, ref, "error", {"reason": "unmatched topic"})
        elif event == "phx_leave":
            self.leaves += 1
            conn.channels.pop(topic, None)
            await self._reply(conn, topic, ref, "ok", {})
        elif event == "access_token":
            conn.access_token = (payload or {}).get("access_token")
        else:
            await self._reply(conn, topic, ref, "ok", {})

    async def _join(self, conn: Connection, topic: str, payload: Any, ref: str | None) -> None:
        self.joins += 1
        payload = payload if isinstance(payload, dict) else {}
        try:
            bindings = parse_bindings(payload)
        except ValueError as exc:
            await self._reply(conn, topic, ref, "error", {"reason": str(exc)})
            return
        conn.access_token = payload.get("access_token", conn.access_token)
        delay = max(0.0, self.subscribed_delay)
        channel = Channel(topic, bindings, asyncio.get_running_loop().time() + delay, join_ref=ref)
        conn.channels[topic] = channel
        await self._reply(conn, topic, ref, "ok", {"postgres_changes": [b.echo for b in bindings]})
        if bindings:
            task = asyncio.create_task(self._subscribe(conn, channel, delay))
            conn.tasks.add(task)
            task.add_done_callback(conn.tasks.discard)

    async def _subscribe(self, conn: Connection, channel: Channel, delay: float) -> None:
        """Create the channel's subscriptions, all or none, then tell the client which it was."""
        assert self._db is not None
        await self.walrus.refresh(self._db)
        missing = [b for b in channel.bindings if not self.walrus.subscribable(b.schema, b.table)]
        if missing:
            channel.failed = True
            self.failed_subscriptions += 1
            params = ", ".join(
                f"[event: {b.event}, schema: {b.schema}, table: {b.table}, filters: []]" for b in missing
            )
            message = (
                "Unable to subscribe to changes with given parameters. "
                f"Please check Realtime is enabled for the given connect parameters: {params}"
            )
            await self._system(conn, channel, "error", message, "postgres_changes")
            return
        await asyncio.sleep(delay)
        if conn.channels.get(channel.topic) is channel:
            await self._system(conn, channel, "ok", "Subscribed to PostgreSQL", "postgres_changes")

    async def _system(self, conn: Connection, channel: Channel, status: str, message: str, extension: str) -> None:
        name = channel.topic.removeprefix("realtime:")
        payload = {"status": status, "message": message, "extension": extension, "channel": name}
        await self._send(conn, {"topic": channel.topic, "event": "system", "payload": payload})

    async def _reply(self, conn: Connection, topic: str, ref: str | None, status: str, response: Any) -> None:
        reply = {"status": status, "response": response}
        await self._send(conn, {"topic": topic, "event": "phx_reply", "payload": reply, "ref": ref})

    async def _send(self, conn: Connection, message: Mapping[str, Any]) -> None:
        await self._send_text(conn, json.dumps({"ref": None, **message}))

    async def _send_text(self, conn: Connection, text: str) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await conn.ws.send(text)

    # -- Postgres side -----------------------------------------------------------------------------

    async def _poll(self) -> None:
        """Read the slot forever; forward each change in commit order (unless rate-limited)."""
        assert self._db is not None
        while True:
            try:
                await self.walrus.refresh(self._db, every=0.2)
                rows = await self._read_slot()
            except psycopg.Error as exc:
                logger.warning("stand-in: reading the slot failed: %s", exc)
                await asyncio.sleep(0.2)
                continue
            changes = [c for c in (self.walrus.change(json.loads(raw)) for (raw,) in rows) if c is not None]
            self.changes_seen += len(changes)
            if changes and self._rate_limited():
                self.skipped += len(changes)  # the server only counts them in its telemetry
            else:
                for data in changes:
                    await self._dispatch(data)
            if not rows:
                await asyncio.sleep(self.poll_interval)

    def _rate_limited(self) -> bool:
        """The tenant's database-event limit: average events per second over the window."""
        if self.db_events_limit is None:
            return False
        now = time.monotonic()
        while self._db_events and self._db_events[0][0] < now - self.rate_window_s:
            self._db_events.popleft()
        return sum(n for _, n in self._db_events) / self.rate_window_s > self.db_events_limit

    async def _read_slot(self) -> list[tuple[str]]:
        assert self._db is not None
        sql = f"SELECT data FROM pg_logical_slot_get_changes(%s, NULL, 1000, {SLOT_OPTIONS})"
        cursor = await self._db.execute(sql, (self.slot_name,))
        return [(str(row[0]),) for row in await cursor.fetchall()]

    async def _dispatch(self, data: Mapping[str, Any]) -> None:
        """Push a change to every ready channel with a matching binding, once per channel."""
        if self.silent:
            return
        now = asyncio.get_running_loop().time()
        matched = 0
        for conn in list(self._connections):
            for channel in list(conn.channels.values()):
                if channel.lost or channel.failed or now < channel.ready_at:
                    continue
                ids = [b.id for b in channel.bindings if b.matches(data)]
                if ids:
                    matched += len(ids)
                    self.forwarded += 1
                    payload = {"ids": ids, "data": data}
                    await self._send(conn, {"topic": channel.topic, "event": "postgres_changes", "payload": payload})
        if matched:
            self._db_events.append((time.monotonic(), matched))


def _lenient_match(binding: Binding, data: Mapping[str, Any]) -> bool:
    """Binding match for injected (possibly malformed) data: never raises."""
    try:
        return binding.matches(data)
    except (TypeError, ValueError, KeyError, AttributeError):
        return False
