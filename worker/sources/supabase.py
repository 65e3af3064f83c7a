"""Change source over Supabase Realtime ``postgres_changes``: at most once, and watched for silence.

Supabase Realtime is convenient (no replication slot of our own, works through the Supabase API
gateway) but it is the least trustworthy source the worker has, and it fails quietly:

- it delivers at most once and never replays: whatever happens while the socket or the server-side
  subscription is down is gone;
- ``SUBSCRIBED`` is reported 1-3 s before changes actually flow (supabase/realtime-js#525);
- the client's auto-reconnect has rejoined channels without their bindings (supabase/realtime-py
  #213, #258): the socket is healthy, heartbeats are answered, nothing arrives;
- a watched table missing from the ``supabase_realtime`` publication makes the server roll back
  every binding of the channel and push a ``system`` error; the client reports ``CHANNEL_ERROR``
  and rejoins, again and again, and nothing arrives;
- the server closes a channel it shuts down (``system`` error, then ``phx_close``), and the client
  does not rejoin a closed channel;
- the server skips changes silently while the project is over its database-event rate limit;
- with row level security on a table, a DELETE's ``old_record`` carries only the primary key, so
  the rules cannot tell which tenant's entries it made stale;
- the error rows the server sends for tables without a primary key (``commit_timestamp`` null) are
  dropped by the client, which only logs them.

So this source distrusts the feed and proves it end to end (``worker.sources.realtime_probe``): a
heartbeat row is upserted every ``probe_interval`` with a sequence number and must come back
through the feed, in order, within ``probe_timeout``. Every way of losing changes it can see is a
*gap* (``on_gap``: the listener invalidates conservatively what the source covers, and counts it):

- a (re)subscribe, signalled once the first heartbeat came back through it (changes flow again);
- a channel error, a timed-out join or a server-side close, signalled at once (and once per
  failure, not per rejoin); a closed channel is replaced by a fresh client;
- a probe that timed out (alert: ``probe_failures``): the client is torn down and replaced; while
  the feed stays dead this repeats every ``probe_timeout``, which bounds how stale a value can get;
- a heartbeat overtaken by a later one (changes skipped by the server);
- a change that cannot be read (dead letter) or cannot be planned by the rules (``unplannable``):
  it is parked as a dead letter, and the change it stood for is lost, so it is a gap too;
- a change the client rejected (read from the client's log record, since it never reaches us).

Gaps raised by single changes are coalesced: a burst of them costs at most two invalidations.
Heartbeat changes are consumed by the probe and never yielded. ``confirm()`` is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from functools import partial
from typing import Any, Final

from pydantic import SecretStr
from realtime import (
    AsyncRealtimeChannel,
    AsyncRealtimeClient,
    RealtimePostgresChangesListenEvent,
    RealtimeSubscribeStates,
)

from shared_cache.cancellation import cancel_and_wait, raise_if_cancelled
from tasks.supabase_api import realtime_url, split_table
from tasks.support import Backoff, mask_secrets
from worker.events import ChangeEvent
from worker.sources.base import DeadLetterHandler, GapHandler
from worker.sources.realtime_client import RejectedFrames, discard_pending
from worker.sources.realtime_losses import LossReporter
from worker.sources.realtime_payload import (
    SOURCE_NAME,
    change_event_from_payload,
    describe_error,
    qualified_table,
)
from worker.sources.realtime_probe import Probe
from worker.sources.supabase_heartbeat import Heartbeat

logger = logging.getLogger(__name__)

# Called with an event the source is about to yield; returns why the rules cannot plan it, or None.
PlanCheck = Callable[[ChangeEvent], str | None]

REASON_SUBSCRIBED: Final = "subscribed"
REASON_RECONNECTED: Final = "reconnected"
REASON_PROBE_TIMEOUT: Final = "probe timeout"
REASON_AFTER_PROBE: Final = "resubscribed after probe timeout"
REASON_AFTER_CLOSE: Final = "resubscribed after the server closed the channel"
REASON_CHANNEL_ERROR: Final = "channel error"
REASON_CHANNEL_CLOSED: Final = "channel closed by the server"
REASON_DEAD_LETTER: Final = "undeliverable change"
REASON_UNPLANNABLE: Final = "change the rules cannot plan"
REASON_REJECTED: Final = "change rejected by the realtime client"
REASON_OVERFLOW: Final = "event queue overflow"
MAX_BACKOFF_S: Final = 30.0


class _Stop:
    """Queue sentinel: the source was closed (``error`` None) or its supervisor crashed."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class SupabaseRealtimeSource:
    """``ChangeSource`` over Supabase Realtime. Not durable; see the module docstring.

    ``url`` is the project URL (or its realtime URL); ``key`` the API key (sent as ``apikey`` and as
    the channel's access token, never logged). ``tables`` are qualified (``schema.table``), one
    ``postgres_changes`` binding each; the heartbeat's table is bound too when ``heartbeat`` is
    given. ``plan_check`` lets the source treat a change the rules cannot plan as lost (a gap).
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
        heartbeat: Heartbeat | None = None,
        plan_check: PlanCheck | None = None,
        probe_interval: float = 5.0,
        probe_timeout: float = 10.0,
        join_timeout: int = 10,
        client_heartbeat_s: int = 25,
        reconnect_backoff: float = 1.0,
        max_pending: int = 10_000,
    ) -> None:
        self.tables: tuple[str, ...] = tuple(dict.fromkeys(".".join(split_table(t)) for t in tables))
        if not self.tables:
            raise ValueError("no tables to watch")
        if heartbeat is not None and heartbeat.table in self.tables:
            raise ValueError(f"the heartbeat table {heartbeat.table} cannot be watched: its changes are the probe's")
        self._url = realtime_url(url)
        self._key = key.get_secret_value() if isinstance(key, SecretStr) else key
        self._losses = LossReporter(SOURCE_NAME, on_gap, on_dead_letter)
        self._plan_check = plan_check
        self._heartbeat = heartbeat
        self._probe = Probe(probe_interval, probe_timeout) if heartbeat is not None else None
        self.probe_id = uuid.uuid4().hex
        self._topic = f"shared_cache_{self.probe_id[:12]}"  # one channel per source, never shared
        self._join_timeout, self._max_pending = join_timeout, max_pending
        self._backoff_s, self._client_heartbeat_s = reconnect_backoff, client_heartbeat_s
        self._bound = self.tables + ((heartbeat.table,) if heartbeat is not None else ())
        if heartbeat is None:
            logger.warning("realtime source without a heartbeat probe: a silent feed goes unnoticed")

        self.received = self.heartbeats = self.malformed = self.unplannable = self.rejected = 0
        self.subscriptions = self.resubscribes = self.probe_failures = self.probe_errors = 0
        self.channel_errors = self.channel_closes = self.heartbeats_lost = self.dropped = 0

        self._queue: asyncio.Queue[ChangeEvent | _Stop] = asyncio.Queue()
        self._signals: list[tuple[str, Any]] = []  # from the client's callbacks, for the supervisor
        self._wake = asyncio.Event()
        self._generation = 0  # callbacks of torn-down clients carry an older one and are ignored
        self._subscribes_in_generation = 0
        self._client: AsyncRealtimeClient | None = None
        self._channel: AsyncRealtimeChannel | None = None
        self._rejected_frames: RejectedFrames | None = None
        self._runner: asyncio.Task[None] | None = None
        self._iterating = False
        self._closed = False

    def __repr__(self) -> str:
        return f"SupabaseRealtimeSource(url={self._url!r}, tables={self.tables!r})"

    # -- ChangeSource ------------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Start subscribing (``events()`` would do it on first use)."""
        self.start()

    def start(self) -> None:
        """Start subscribing; idempotent, and again after the supervisor stopped on an error (the
        listener calls ``events()`` again then). Needs a running loop."""
        if self._closed:
            raise RuntimeError("source is closed")
        if self._runner is None or self._runner.done():
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

    async def lag_bytes(self) -> int | None:
        """No replication slot of ours: nothing lags behind."""
        return None

    @property
    def gaps(self) -> int:
        return self._losses.gaps

    def counters(self) -> Mapping[str, int]:
        names = (
            "received heartbeats malformed unplannable rejected subscriptions resubscribes probe_failures "
            "probe_errors channel_errors channel_closes heartbeats_lost gaps dropped"
        )
        return {name: int(getattr(self, name)) for name in names.split()}

    async def close(self) -> None:
        """Stop the supervisor, leave the channel, close the socket, delete the heartbeat row, let
        pending handlers finish."""
        if self._closed:
            return
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            await cancel_and_wait([runner])  # again and again: the realtime client and psycopg use wait_for
        await self._teardown()
        if self._heartbeat is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5.0):
                    await self._heartbeat.forget(self.probe_id)
        await self._losses.drain()
        self._queue.put_nowait(_Stop())

    # -- supervisor --------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Subscribe, watch, and replace the client whenever the feed is shown to be dead."""
        reason, backoff = REASON_SUBSCRIBED, Backoff(first=self._backoff_s, cap=MAX_BACKOFF_S)
        while True:
            try:
                await self._open()
            except Exception as exc:  # connection refused, handshake rejected, timeout...
                raise_if_cancelled()  # a cancellation a client call lost or turned into an error
                delay = backoff.next()
                logger.warning("realtime subscribe failed (retry in %.1fs): %s", delay, self._safe(exc))
                await self._teardown()
                await asyncio.sleep(delay)
                continue
            reason = await self._watch(reason)
            await self._teardown()
            raise_if_cancelled()
            if self._losses.troubled and reason == REASON_AFTER_CLOSE:
                await asyncio.sleep(backoff.next())  # a server that closes every channel: no hot loop
            elif not self._losses.troubled:
                backoff.reset()

    async def _open(self) -> None:
        """A fresh client and channel with every binding, subscribed (the join reply awaited)."""
        self._generation += 1
        generation = self._generation
        self._subscribes_in_generation = 0
        self._signals.clear()
        client = AsyncRealtimeClient(
            self._url,
            token=self._key or None,
            auto_reconnect=True,
            hb_interval=self._client_heartbeat_s,
            max_retries=5,
            initial_backoff=self._backoff_s,
            timeout=self._join_timeout,
        )
        self._client = client
        self._rejected_frames = RejectedFrames(f"realtime:{self._topic}", partial(self._on_rejected, generation))
        channel = client.channel(self._topic)
        self._channel = channel
        for qualified in self._bound:
            schema, table = split_table(qualified)
            channel.on_postgres_changes(
                RealtimePostgresChangesListenEvent.All,
                callback=partial(self._on_change, generation),
                table=table,
                schema=schema,
            )
        await channel.subscribe(partial(self._on_status, generation))

    async def _teardown(self) -> None:
        """Leave and close the current client; its late callbacks are ignored from here on."""
        client, channel = self._client, self._channel
        self._client = self._channel = None
        self._generation += 1
        if self._rejected_frames is not None:
            self._rejected_frames.detach()
            self._rejected_frames = None
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
                discard_pending(channel)

    async def _watch(self, reason: str) -> str:
        """Watch the current client until it must be replaced; return the reason of the next gap."""
        loop = asyncio.get_running_loop()
        if self._probe is not None:
            self._probe.restart(loop.time())
        while True:
            self._wake.clear()
            signals, self._signals = self._signals, []
            for kind, value in signals:
                replace = await self._handle_signal(kind, value, reason)
                if replace is not None:
                    return replace
            if self._probe is None:
                await self._wake.wait()
                continue
            if self._probe.overdue(loop.time()):
                return await self._probe_failed()
            if self._probe.wants_touch(loop.time()):
                await self._touch_heartbeat()
                continue  # signals may have arrived while touching
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(self._probe.deadline()):
                    await self._wake.wait()

    async def _handle_signal(self, kind: str, value: Any, reason: str) -> str | None:
        """One signal of the client; returns a gap reason when the client must be replaced."""
        now = asyncio.get_running_loop().time()
        if kind == "subscribed":
            self._subscribes_in_generation += 1
            subscribe_reason = reason if self._subscribes_in_generation == 1 else REASON_RECONNECTED
            if self._probe is None:
                await self._losses.gap(subscribe_reason)
            else:
                self._probe.subscribed(subscribe_reason, now)
        elif kind == "echo" and self._probe is not None:
            echo = self._probe.echo(int(value), now)
            self._losses.flowing()
            self.heartbeats_lost += echo.lost
            if echo.gap is not None:
                await self._losses.gap(echo.gap)
        elif kind == "error":
            if self._probe is not None:
                self._probe.troubled(now)
            await self._losses.gap_once(f"{REASON_CHANNEL_ERROR}: {value}")
        elif kind == "closed":
            await self._losses.gap_once(f"{REASON_CHANNEL_CLOSED}: {value}")
            self._losses.troubled = True
            return REASON_AFTER_CLOSE
        return None

    async def _touch_heartbeat(self) -> None:
        assert self._heartbeat is not None and self._probe is not None
        beat, ok = self._probe.next_beat(), False
        try:
            async with asyncio.timeout(self._probe.timeout):
                await self._heartbeat.touch(self.probe_id, beat)
            ok = True
        except Exception as exc:
            self.probe_errors += 1
            logger.warning("realtime heartbeat touch failed: %s", self._safe(exc))
        self._probe.touched(beat, asyncio.get_running_loop().time(), ok)

    async def _probe_failed(self) -> str:
        assert self._probe is not None
        self.probe_failures += 1
        self._losses.troubled = True
        logger.error(
            "realtime feed silent: no heartbeat change within %.1fs; resubscribing (probe failure #%d)",
            self._probe.timeout,
            self.probe_failures,
        )
        await self._losses.gap(REASON_PROBE_TIMEOUT)
        return REASON_AFTER_PROBE

    # -- client callbacks (synchronous, run in the client's listener task) -------------------------

    def _signal(self, kind: str, value: Any = None) -> None:
        self._signals.append((kind, value))
        self._wake.set()

    def _on_status(self, generation: int, status: RealtimeSubscribeStates, error: Exception | None) -> None:
        if generation != self._generation:
            return
        if status == RealtimeSubscribeStates.SUBSCRIBED:
            self.subscriptions += 1
            if self.subscriptions > 1:
                self.resubscribes += 1
            self._signal("subscribed")
            return
        detail = self._safe(error) if error is not None else status.value
        if status == RealtimeSubscribeStates.CLOSED:
            self.channel_closes += 1
            logger.error("realtime channel closed by the server: %s", detail)
            self._signal("closed", detail)
        else:  # CHANNEL_ERROR (a system error, phx_error, a dropped socket) or TIMED_OUT (the join)
            self.channel_errors += 1
            logger.error("realtime channel %s: %s", status.value, detail)
            self._signal("error", f"{status.value} {detail}"[:300])

    def _on_change(self, generation: int, payload: Mapping[str, Any]) -> None:
        if generation != self._generation:
            return
        self.received += 1
        if self._heartbeat is not None and qualified_table(payload) == self._heartbeat.table:
            self._on_heartbeat(payload)
            return
        try:
            event = change_event_from_payload(payload)
        except Exception as exc:  # whatever the payload, it must not break the client's listener task
            self.malformed += 1
            self._dead_letter(payload, describe_error(exc), REASON_DEAD_LETTER)
            return
        problem = self._plan_check(event) if self._plan_check is not None else None
        if problem is not None:
            self.unplannable += 1
            self._dead_letter(payload, f"cannot be planned: {problem}", REASON_UNPLANNABLE)
            return
        self._enqueue(event)

    def _on_heartbeat(self, payload: Mapping[str, Any]) -> None:
        self.heartbeats += 1
        data = payload.get("data")
        record = data.get("record") if isinstance(data, Mapping) else None
        if not isinstance(record, Mapping) or record.get("id") != self.probe_id:
            return  # another listener's row, or its deletion
        beat = record.get("beat")
        if isinstance(beat, int) and not isinstance(beat, bool):
            self._signal("echo", beat)

    def _on_rejected(self, generation: int, raw: str, errors: str) -> None:
        if generation != self._generation:
            return
        self.rejected += 1
        self._losses.dead_letter(raw, f"rejected by the realtime client: {errors}", REASON_REJECTED)

    def _enqueue(self, event: ChangeEvent) -> None:
        """Hand the event to ``events()``; a full queue loses it, which is a gap like any other."""
        if self._queue.qsize() >= self._max_pending:
            self.dropped += 1
            self._losses.spawn(self._losses.coalesced_gap(REASON_OVERFLOW))
            return
        self._queue.put_nowait(event)

    def _dead_letter(self, payload: Mapping[str, Any], reason: str, gap: str) -> None:
        self._losses.dead_letter(json.dumps(payload, default=str, sort_keys=True), reason, gap)

    def _runner_done(self, task: asyncio.Task[None]) -> None:
        """A supervisor that died of a bug must not leave ``events()`` waiting forever in silence."""
        if task.cancelled() or task.exception() is None:
            return
        logger.error("realtime source supervisor crashed", exc_info=task.exception())
        self._queue.put_nowait(_Stop(task.exception()))

    def _safe(self, value: object) -> str:
        """Text for a log line with the key masked (exceptions can quote the socket URL)."""
        text = str(value)
        if isinstance(value, BaseException) and not text:
            text = type(value).__name__  # a timeout says nothing by itself
        return mask_secrets(text, [self._key])
