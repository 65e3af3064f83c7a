"""Change source over Supabase Realtime ``postgres_changes``: at most once, and watched for silence.

Supabase Realtime is convenient (no replication slot of our own, works through the Supabase API
gateway) but it is the least trustworthy source the worker has, and it fails quietly:

- it delivers at most once and never replays: whatever happens while the socket or the server-side
  subscription is down is gone;
- ``SUBSCRIBED`` is reported 1-3 s before changes actually flow (supabase/realtime-js#525), so a
  subscription that looks ready still loses changes;
- the client's auto-reconnect has rejoined channels without their ``postgres_changes`` bindings
  (supabase/realtime-py#213, #258): the socket is healthy, heartbeats are answered, nothing arrives.

So this source distrusts the feed and proves it end to end instead:

- a liveness probe: every ``probe_interval`` it calls ``touch_heartbeat()`` (which UPDATEs a tiny row
  of the heartbeat table, also bound on the channel) and expects that change back through the feed
  within ``probe_timeout``. If it does not come back, the whole client is torn down and a fresh one
  subscribes with a fresh channel and its bindings; ``probe_failures`` (an alert metric) counts it
  and ``on_gap("supabase", "probe timeout")`` is called at once, as changes may have been lost;
- a gap signal after every (re)subscribe, whether by this source or by the client's own reconnect.
  With a probe it is sent once the first heartbeat came back through the new subscription, i.e.
  once changes demonstrably flow again: a conservative invalidation sent at ``SUBSCRIBED`` would
  precede the changes lost in the #525 window and leave stale entries behind. Without a probe it is
  sent at ``SUBSCRIBED`` (best effort: such a source cannot notice a dead feed at all);
- payloads that cannot become a ``ChangeEvent`` go to ``on_dead_letter`` (counted in ``malformed``)
  and, because the change they stood for is lost, are followed by a gap signal too.

Heartbeat-table changes are consumed by the probe and never yielded. ``confirm()`` is a no-op:
nothing can be replayed, so there is nothing to acknowledge. Frames the ``realtime`` client itself
cannot parse are dropped by the client (it logs them) and never reach this source.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Final, NoReturn
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr, ValidationError
from realtime import (
    AsyncRealtimeChannel,
    AsyncRealtimeClient,
    RealtimePostgresChangesListenEvent,
    RealtimeSubscribeStates,
)

from worker.events import ChangeEvent
from worker.sources.base import DeadLetterHandler, GapHandler

if TYPE_CHECKING:
    from worker.settings import ListenerSettings

logger = logging.getLogger(__name__)

HeartbeatToucher = Callable[[], Awaitable[None]]

SOURCE_NAME: Final = "supabase"
REASON_SUBSCRIBED: Final = "subscribed"
REASON_RECONNECTED: Final = "reconnected"
REASON_PROBE_TIMEOUT: Final = "probe timeout"
REASON_AFTER_PROBE: Final = "resubscribed after probe timeout"
REASON_DEAD_LETTER: Final = "undeliverable change"
REASON_OVERFLOW: Final = "event queue overflow"
MAX_BACKOFF_S: Final = 30.0
MAX_REASON_CHARS: Final = 500


class _Stop:
    """Queue sentinel: the source was closed (``error`` None) or its supervisor crashed."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def realtime_url(url: str) -> str:
    """The realtime endpoint for a Supabase project URL, derived as supabase-py does.

    ``https://<ref>.supabase.co`` -> ``wss://<ref>.supabase.co/realtime/v1`` (``http`` -> ``ws``);
    a ``ws``/``wss`` URL is taken as the realtime endpoint itself (without ``/websocket``, which the
    client appends).
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme in ("ws", "wss"):
        path = parts.path.rstrip("/").removesuffix("/websocket")
        return urlunsplit((scheme, parts.netloc, path, "", ""))
    if scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected a Supabase project URL (https://...) or a realtime URL (wss://...)")
    path = parts.path.rstrip("/")
    if not path.endswith("/realtime/v1"):
        path += "/realtime/v1"
    return urlunsplit(("wss" if scheme == "https" else "ws", parts.netloc, path, "", ""))


def _row(data: Mapping[str, Any], wire_name: str, js_name: str) -> dict[str, Any] | None:
    """A record of the change: the server's wire name, else realtime-js's; absent or empty -> None."""
    value = data.get(wire_name, data.get(js_name))
    if value is None or value == {}:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{wire_name} is not an object")
    return dict(value)


def change_event_from_payload(payload: Mapping[str, Any]) -> ChangeEvent:
    """Turn a ``postgres_changes`` payload (``{"ids", "data"}``) into a ``ChangeEvent``.

    Raises ``ValueError`` (pydantic's ``ValidationError`` included) for anything that cannot be one:
    better a dead letter than an event that invalidates the wrong keys.
    """
    data = payload.get("data")
    if not isinstance(data, Mapping):
        raise ValueError("payload has no data object")
    if data.get("errors"):
        raise ValueError(f"server reported errors: {data['errors']}")
    kind = data.get("type", data.get("eventType"))
    kind = getattr(kind, "value", kind)  # the client hands over its own enum
    stamp = data.get("commit_timestamp")
    if not isinstance(stamp, str) or not stamp:
        raise ValueError("commit_timestamp missing")
    record, old_record = _row(data, "record", "new"), _row(data, "old_record", "old")
    if kind in ("INSERT", "UPDATE") and record is None:
        raise ValueError(f"{kind} without record")
    if kind == "DELETE" and old_record is None:
        raise ValueError("DELETE without old_record")
    fields = {"schema": data.get("schema"), "table": data.get("table"), "type": kind, "commit_timestamp": stamp}
    rows = {"record": record, "old_record": old_record}
    return ChangeEvent.model_validate({**fields, **rows, "source": SOURCE_NAME, "position": stamp})


def describe_error(exc: BaseException) -> str:
    """A short reason for a dead letter: what was wrong, never the offending values themselves."""
    if isinstance(exc, ValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in exc.errors())
        text = f"invalid change: {problems}"
    else:
        text = f"invalid change: {exc}"
    return text[:MAX_REASON_CHARS]


class SupabaseRealtimeSource:
    """``ChangeSource`` over Supabase Realtime. Not durable; see the module docstring for why it probes.

    ``url`` is the Supabase project URL or the realtime URL; ``key`` the API key (sent as ``apikey``
    and as the channel's access token, never logged). ``tables`` are watched in ``schema`` with one
    ``postgres_changes`` binding (event ``*``) each; ``heartbeat_table`` is bound too when
    ``touch_heartbeat`` is given. Counters: ``received`` (payloads the feed delivered, heartbeats
    included), ``heartbeats``, ``malformed``, ``resubscribes`` (every ``SUBSCRIBED`` after the first),
    ``probe_failures``, ``probe_errors`` (failed touches), ``gaps``, ``dropped`` (queue overflow).
    """

    name: str = SOURCE_NAME
    durable: bool = False

    def __init__(
        self,
        url: str,
        key: str | SecretStr,
        tables: Iterable[str],
        *,
        on_gap: GapHandler,
        on_dead_letter: DeadLetterHandler,
        schema: str = "public",
        touch_heartbeat: HeartbeatToucher | None = None,
        heartbeat_table: str = "shared_cache_heartbeat",
        probe_interval: float = 5.0,
        probe_timeout: float = 10.0,
        topic: str = "shared_cache",
        join_timeout: int = 10,
        client_heartbeat_s: int = 25,
        reconnect_backoff: float = 1.0,
        max_pending: int = 10_000,
    ) -> None:
        self.tables: tuple[str, ...] = tuple(dict.fromkeys(tables))
        if not self.tables:
            raise ValueError("no tables to watch")
        if heartbeat_table in self.tables:
            raise ValueError("the heartbeat table cannot be watched: its changes belong to the probe")
        if probe_interval <= 0 or probe_timeout <= 0:
            raise ValueError("probe_interval and probe_timeout must be positive")
        self._url = realtime_url(url)
        self._key = key.get_secret_value() if isinstance(key, SecretStr) else key
        self._on_gap, self._on_dead_letter = on_gap, on_dead_letter
        self._schema, self._topic, self._heartbeat_table = schema, topic, heartbeat_table
        self._touch = touch_heartbeat
        self._probe_interval, self._probe_timeout = probe_interval, probe_timeout
        # while a probe is unanswered, touch again sooner: a touch committed before the feed really
        # flows (the #525 window) is lost, and a later one must get its chance within the timeout
        self._retouch = min(probe_interval, probe_timeout / 2)
        self._join_timeout, self._backoff, self._max_pending = join_timeout, reconnect_backoff, max_pending
        self._client_heartbeat_s = client_heartbeat_s
        self._bound_tables = self.tables + ((heartbeat_table,) if touch_heartbeat else ())
        if touch_heartbeat is None:
            logger.warning("realtime source without a heartbeat probe: a silent feed goes unnoticed")

        self.received = self.heartbeats = self.malformed = self.resubscribes = 0
        self.probe_failures = self.probe_errors = self.gaps = self.dropped = 0

        self._queue: asyncio.Queue[ChangeEvent | _Stop] = asyncio.Queue()
        self._subscribed = asyncio.Event()  # a SUBSCRIBED arrived that the supervisor has not handled
        self._echo = asyncio.Event()  # a heartbeat change came through the current subscription
        self._wake = asyncio.Event()  # either of the above, to wake the supervisor
        self._generation = 0  # callbacks of torn-down subscriptions carry an older one and are ignored
        self._subscribes_in_generation = 0
        self._subscribed_ever = False
        self._overflowing = False
        self._client: AsyncRealtimeClient | None = None
        self._channel: AsyncRealtimeChannel | None = None
        self._runner: asyncio.Task[None] | None = None
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._iterating = False
        self._closed = False

    @classmethod
    def from_settings(
        cls,
        settings: ListenerSettings,
        tables: Iterable[str],
        *,
        on_gap: GapHandler,
        on_dead_letter: DeadLetterHandler,
        touch_heartbeat: HeartbeatToucher | None = None,
    ) -> SupabaseRealtimeSource:
        """The source as ``ListenerSettings`` describe it (``SHARED_CACHE_WORKER_SUPABASE_*``...)."""
        return cls(
            settings.supabase_url,
            settings.supabase_key,
            tables,
            on_gap=on_gap,
            on_dead_letter=on_dead_letter,
            touch_heartbeat=touch_heartbeat,
            heartbeat_table=settings.realtime_heartbeat_table,
            probe_interval=settings.realtime_probe_interval_s,
            probe_timeout=settings.realtime_probe_timeout_s,
        )

    def __repr__(self) -> str:
        return f"SupabaseRealtimeSource(url={self._url!r}, tables={self.tables!r})"

    # -- ChangeSource ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start subscribing (``events()`` does it on first use); idempotent. Needs a running loop."""
        if self._closed:
            raise RuntimeError("source is closed")
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._supervise(), name="realtime-source")
            self._runner.add_done_callback(self._runner_done)

    async def events(self) -> AsyncIterator[ChangeEvent]:
        """Yield changes of the watched tables as they arrive, until ``close()``. One consumer only."""
        if self._iterating:
            raise RuntimeError("events() is already being consumed")
        self._iterating = True
        self.start()
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, _Stop):
                    if item.error is not None:
                        raise RuntimeError("realtime source supervisor crashed") from item.error
                    return
                yield item
        finally:
            self._iterating = False

    async def confirm(self, position: str) -> None:
        """Nothing to do: the feed cannot replay, so there is no position to acknowledge."""

    async def prepare(self) -> None:
        """Nothing to set up before ``events()``: the subscription starts with it."""

    def counters(self) -> dict[str, int]:
        return {
            "received": self.received,
            "malformed": self.malformed,
            "reconnects": self.resubscribes,
            "probe_failures": self.probe_failures,
            "gaps": self.gaps,
            "dropped": self.dropped,
        }

    async def lag_bytes(self) -> int | None:
        return None  # a realtime feed has no backlog to measure

    async def close(self) -> None:
        """Stop the supervisor, leave the channel, close the socket, let pending handlers finish."""
        if self._closed:
            return
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            await _cancel_and_wait(runner)
        await self._teardown()
        await self._drain_handlers()
        self._queue.put_nowait(_Stop())

    # -- supervisor --------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Subscribe, watch, and replace the subscription whenever the probe says it is dead."""
        reason, attempt = REASON_SUBSCRIBED, 0
        while True:
            try:
                await self._open()
            except Exception as exc:  # connection refused, handshake rejected, timeout...
                attempt += 1
                delay = min(self._backoff * 2 ** (attempt - 1), MAX_BACKOFF_S)
                logger.warning(
                    "realtime subscribe failed (attempt %d, retry in %.1fs): %s", attempt, delay, self._safe(exc)
                )
                await self._teardown()
                await asyncio.sleep(delay)
                continue
            attempt = 0
            reason = await self._watch(reason)
            await self._teardown()

    async def _open(self) -> None:
        """A fresh client and channel with every binding, subscribed (the join reply awaited)."""
        self._generation += 1
        generation = self._generation
        self._subscribes_in_generation = 0
        self._subscribed.clear()
        self._echo.clear()
        client = AsyncRealtimeClient(
            self._url,
            token=self._key or None,
            auto_reconnect=True,
            hb_interval=self._client_heartbeat_s,
            max_retries=5,
            initial_backoff=self._backoff,
            timeout=self._join_timeout,
        )
        self._client = client
        channel = client.channel(self._topic)
        self._channel = channel
        for table in self._bound_tables:
            channel.on_postgres_changes(
                RealtimePostgresChangesListenEvent.All,
                callback=partial(self._on_change, generation),
                table=table,
                schema=self._schema,
            )
        await channel.subscribe(partial(self._on_status, generation))

    async def _teardown(self) -> None:
        """Leave and close the current client; its late callbacks are ignored from here on."""
        client, channel = self._client, self._channel
        self._client = self._channel = None
        self._generation += 1
        if client is None:
            return
        try:
            async with asyncio.timeout(1.0):
                await client.remove_all_channels()
        except Exception as exc:  # the socket is often already dead here
            logger.debug("realtime leave failed: %s", self._safe(exc))
        finally:
            with contextlib.suppress(Exception):
                await client.close()
            if channel is not None:
                _discard_pending(channel)

    async def _watch(self, reason: str) -> str:
        """Watch the current subscription until it must be replaced; return the next gap reason."""
        if self._touch is None:
            await self._watch_without_probe(reason)
        return await self._watch_with_probe(reason)

    async def _watch_without_probe(self, reason: str) -> NoReturn:
        """No way to tell a dead feed: signal a gap on each ``SUBSCRIBED`` and trust the client."""
        while True:
            await self._subscribed.wait()
            self._subscribed.clear()
            await self._gap(reason if self._subscribes_in_generation <= 1 else REASON_RECONNECTED)

    async def _watch_with_probe(self, reason: str) -> str:
        """The probe loop; see the module docstring. Returns when a probe went unanswered."""
        loop = asyncio.get_running_loop()
        gap_reason: str | None = None  # set while a (re)subscription awaits its first echo
        pending_since: float | None = None  # oldest touch no echo has answered yet
        last_touch, next_touch = -math.inf, loop.time()
        while True:
            self._wake.clear()
            now = loop.time()
            if self._subscribed.is_set():
                self._subscribed.clear()
                gap_reason = reason if self._subscribes_in_generation <= 1 else REASON_RECONNECTED
                pending_since, next_touch = None, now  # give the new subscription a full timeout
            if self._echo.is_set():
                self._echo.clear()
                pending_since, next_touch = None, max(now, last_touch + self._probe_interval)
                if gap_reason is not None:
                    await self._gap(gap_reason)
                    gap_reason = None
            if pending_since is not None and now - pending_since >= self._probe_timeout:
                return await self._probe_failed()
            if now >= next_touch:
                await self._touch_heartbeat()
                pending_since = now if pending_since is None else pending_since
                last_touch, next_touch = now, now + self._retouch
            deadline = next_touch if pending_since is None else min(next_touch, pending_since + self._probe_timeout)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()

    async def _touch_heartbeat(self) -> None:
        """Touch the heartbeat row. A failed touch still counts as a probe: an unverifiable feed is
        treated as a dead one (alert + conservative gap) rather than trusted."""
        assert self._touch is not None
        try:
            async with asyncio.timeout(self._probe_timeout):
                await self._touch()
        except Exception as exc:
            self.probe_errors += 1
            logger.warning("realtime heartbeat touch failed: %s", self._safe(exc))

    async def _probe_failed(self) -> str:
        self.probe_failures += 1
        logger.error(
            "realtime feed silent: no heartbeat change within %.1fs; resubscribing (probe failure #%d)",
            self._probe_timeout,
            self.probe_failures,
        )
        await self._gap(REASON_PROBE_TIMEOUT)
        return REASON_AFTER_PROBE

    # -- client callbacks (synchronous, run in the client's listener task) -------------------------

    def _on_status(self, generation: int, status: RealtimeSubscribeStates, error: Exception | None) -> None:
        if generation != self._generation:
            return
        if status != RealtimeSubscribeStates.SUBSCRIBED:
            logger.warning("realtime channel %s: %s (%s)", self._topic, status.value, self._safe(error))
            return
        self._echo.clear()  # an echo from before this (re)join proves nothing about it
        self._subscribes_in_generation += 1
        if self._subscribed_ever:
            self.resubscribes += 1
        self._subscribed_ever = True
        self._subscribed.set()
        self._wake.set()

    def _on_change(self, generation: int, payload: Mapping[str, Any]) -> None:
        if generation != self._generation:
            return
        self.received += 1
        if self._is_heartbeat(payload):
            self.heartbeats += 1
            self._echo.set()
            self._wake.set()
            return
        try:
            event = change_event_from_payload(payload)
        except (ValueError, TypeError) as exc:
            self._dead_letter(payload, describe_error(exc))
            return
        self._enqueue(event)

    def _is_heartbeat(self, payload: Mapping[str, Any]) -> bool:
        data = payload.get("data")
        return isinstance(data, Mapping) and (data.get("schema"), data.get("table")) == (
            self._schema,
            self._heartbeat_table,
        )

    def _enqueue(self, event: ChangeEvent) -> None:
        """Hand the event to ``events()``; a full queue loses it, which is a gap like any other."""
        if self._queue.qsize() >= self._max_pending:
            self.dropped += 1
            if not self._overflowing:
                self._overflowing = True
                self._spawn(self._overflow_gap())
            return
        self._queue.put_nowait(event)

    def _dead_letter(self, payload: Mapping[str, Any], reason: str) -> None:
        self.malformed += 1
        logger.warning("realtime payload dead-lettered: %s", reason)
        raw = json.dumps(payload, default=str, sort_keys=True)
        self._spawn(self._deliver_dead_letter(raw, reason))

    # -- handlers ----------------------------------------------------------------------------------

    async def _deliver_dead_letter(self, raw: str, reason: str) -> None:
        try:
            await self._on_dead_letter(SOURCE_NAME, raw, reason)
        except Exception:
            logger.exception("dead-letter handler failed")
        await self._gap(REASON_DEAD_LETTER)

    async def _overflow_gap(self) -> None:
        self._overflowing = False
        await self._gap(REASON_OVERFLOW)

    async def _gap(self, reason: str) -> None:
        """Tell the listener events may have been lost; a failing handler must not stop the source."""
        self.gaps += 1
        logger.info("realtime gap: %s", reason)
        try:
            await self._on_gap(SOURCE_NAME, reason)
        except Exception:
            logger.exception("gap handler failed")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)

    async def _drain_handlers(self, grace: float = 2.0) -> None:
        """Give dead-letter/gap handlers in flight a moment to finish, then cancel the rest."""
        tasks = set(self._handler_tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _runner_done(self, task: asyncio.Task[None]) -> None:
        """A supervisor that died of a bug must not leave ``events()`` waiting forever in silence."""
        if task.cancelled() or task.exception() is None:
            return
        logger.error("realtime source supervisor crashed", exc_info=task.exception())
        self._queue.put_nowait(_Stop(task.exception()))

    def _safe(self, value: object) -> str:
        """Text for a log line with the key masked (exceptions can quote the socket URL)."""
        text = str(value)
        return text.replace(self._key, "***") if self._key else text


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel a task and wait until it is really done. Re-cancels: Python 3.11's ``asyncio.wait_for``
    (used inside the realtime client and psycopg) can swallow a cancellation that races with its
    result, and a single ``cancel()`` then leaves ``close()`` waiting forever."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)


def _discard_pending(channel: AsyncRealtimeChannel) -> None:
    """Cancel the timers of a dropped channel's unanswered pushes (join, leave) and its rejoin timer,
    so a torn-down client leaves no task behind."""
    channel.rejoin_timer.reset()
    channel.join_push.destroy()
    for push in list(channel.messages_waiting_for_ack.values()):
        push.destroy()
    channel.messages_waiting_for_ack.clear()
