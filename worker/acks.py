"""Acknowledgement: a change is confirmed to its source only once its invalidation was applied.

A queue that accepted a task proves nothing: kombu's Redis transport pops a message before it
records it as unacknowledged, so a worker killed in between loses it for good. Every invalidation
call the listener sends therefore carries a receipt, which the invalidation script records in the
same round trip as the generation bumps. The :class:`Acknowledger`:

- tracks each window's calls until their receipts appear (``CacheManager.applied_receipts``: one
  pipelined round trip for many);
- confirms a source's position only when every call of that window and of every window before it
  was applied, and every event of them that could not be planned was parked;
- sends again a call not applied within ``timeout`` seconds once it is no longer waiting in the
  broker's queue (popped by a worker that died, or lost with a Redis restart), with exponential
  backoff; a call that is still queued is never duplicated, so no copies pile up while no worker runs;
- holds at most ``max_pending`` unapplied calls: the listener stops reading changes until there is
  room again (backpressure), so its memory and a slot's lag stay bounded.

Invalidations are idempotent: a call applied twice costs one extra miss per entry, nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass, field

import redis.asyncio as aredis

from shared_cache import CacheManager
from shared_cache.cancellation import raise_if_cancelled
from tasks.contracts import InvalidateCall
from worker.counters import ListenerCounters
from worker.sources.base import ChangeSource

log = logging.getLogger("shared_cache.worker")

RECEIPT_PREFIX = "scl"
# The same shape as a Lua pattern, to find a receipt (the task id) in a queued message. A message's
# body is base64 (no dots), so the first match is the task id of its headers.
_RECEIPT_LUA_PATTERN = RECEIPT_PREFIX + "%.%x+%.%d+"
# Separator kombu's Redis transport puts between a queue's name and its priority step.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)

# KEYS: the lists of one queue (kombu keeps one per priority step).
# ARGV[1]: most messages to scan; ARGV[2..]: receipts.
# Returns the receipts found in a queued message; all of them when the queue holds more than
# ARGV[1] messages (a queue that long means the workers are behind: nothing should be sent again).
_WAITING_LUA = f"""
local want = {{}}
for i = 2, #ARGV do want[ARGV[i]] = true end
local total = 0
for _, key in ipairs(KEYS) do total = total + redis.call('LLEN', key) end
if total > tonumber(ARGV[1]) then return {{unpack(ARGV, 2)}} end
local found = {{}}
for _, key in ipairs(KEYS) do
  for _, item in ipairs(redis.call('LRANGE', key, 0, -1)) do
    local r = string.match(item, '{_RECEIPT_LUA_PATTERN}')
    if r and want[r] then found[#found + 1] = r; want[r] = nil end
  end
end
return found
"""


class ReceiptIssuer(Iterator[str]):
    """``scl.<run>.<n>``: unique per listener run, valid as a library receipt and as a task id."""

    def __init__(self) -> None:
        self.run = secrets.token_hex(4)
        self._seq = itertools.count(1)

    def __next__(self) -> str:
        return f"{RECEIPT_PREFIX}.{self.run}.{next(self._seq)}"


class BrokerQueue:
    """Which receipts are still waiting in a broker queue (kombu's Redis lists), in one script."""

    def __init__(self, client: aredis.Redis, queue: str, max_scan: int = 20_000) -> None:
        self.client = client
        self.keys = [queue, *(f"{queue}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS)]
        self.max_scan = max_scan
        self._script = client.register_script(_WAITING_LUA)

    async def waiting(self, receipts: Collection[str]) -> set[str]:
        if not receipts:
            return set()
        found = await self._script(keys=self.keys, args=[self.max_scan, *receipts])
        return {r.decode() if isinstance(r, bytes) else str(r) for r in found}


@dataclass(frozen=True, slots=True)
class HeldDeadLetter:
    """An event of a durable source that could neither be planned nor parked: its window waits."""

    source: str
    raw: str
    reason: str


@dataclass
class _Pending:
    call: InvalidateCall
    deadline: float
    sends: int = 1
    waits: int = 0  # times it was found still queued


@dataclass
class _Window:
    positions: dict[ChangeSource, str]
    calls: dict[str, _Pending]  # receipt -> call not applied yet
    held: list[HeldDeadLetter]
    sent_at: float
    receipts: list[tuple[str, str]] = field(default_factory=list)  # (tenant, receipt), forgotten when done

    @property
    def done(self) -> bool:
        return not self.calls and not self.held


Send = Callable[[list[InvalidateCall]], Awaitable[None]]
Park = Callable[[str, str, str], Awaitable[bool]]


class Acknowledger:
    """Tracks sent windows, confirms applied ones in order, sends lost calls again (see module doc)."""

    def __init__(
        self,
        cache: CacheManager,
        broker: BrokerQueue,
        send: Send,
        park: Park,
        counters: ListenerCounters,
        *,
        timeout: float = 3.0,
        max_backoff: float = 60.0,
        max_pending: int = 10_000,
        poll: float = 0.02,
        check_batch: int = 2_000,
    ) -> None:
        self.cache = cache
        self.broker = broker
        self.send = send
        self.park = park
        self.counters = counters
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.max_pending = max_pending
        self.poll = poll
        self.check_batch = check_batch
        self.receipts = ReceiptIssuer()
        self._windows: deque[_Window] = deque()
        # seconds from sending a window to seeing all of it applied, latest windows (for operators)
        self.apply_delays: deque[float] = deque(maxlen=1000)
        self._where: dict[str, _Window] = {}
        self._to_confirm: dict[ChangeSource, str] = {}
        self._wake = asyncio.Event()
        self._ticking = asyncio.Lock()
        self._room = asyncio.Event()
        self._room.set()
        self._park_after = 0.0
        self._park_failures = 0
        self._errors_logged = 0.0

    # -- what the listener sees -----------------------------------------------------------------
    @property
    def pending_calls(self) -> int:
        return len(self._where)

    @property
    def pending_windows(self) -> int:
        return len(self._windows)

    @property
    def held(self) -> int:
        return sum(len(w.held) for w in self._windows)

    def track(
        self, calls: list[InvalidateCall], positions: dict[ChangeSource, str], held: list[HeldDeadLetter]
    ) -> None:
        """Start tracking a window whose calls were just sent (each call carries a receipt)."""
        if not (calls or positions or held):
            return
        now = time.monotonic()
        deadline = now + self.timeout
        window = _Window(dict(positions), {}, list(held), now)
        for call in calls:
            if call.receipt is None:
                raise ValueError(f"a tracked call needs a receipt: {call!r}")
            window.calls[call.receipt] = _Pending(call, deadline)
            window.receipts.append((call.tenant_id, call.receipt))
            self._where[call.receipt] = window
        self._windows.append(window)
        self._update_room()
        self._wake.set()

    async def room(self, stop: asyncio.Event) -> None:
        """Wait while ``max_pending`` calls (or windows) are unapplied, or until ``stop``."""
        if self._room.is_set():
            return
        self.counters.backpressure_waits += 1
        log.warning("%d invalidations not applied yet: reading of changes paused", self.pending_calls)
        while not self._room.is_set() and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):  # not wait_for: see run()
                    await self._room.wait()

    def expire_all(self) -> None:
        """Check every unapplied call now (Redis restarted: queued tasks and receipts may be gone)."""
        now = time.monotonic()
        for window in self._windows:
            for pending in window.calls.values():
                pending.deadline, pending.waits = now, 0
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Tick forever (a task of the listener): often while anything is pending, else idle."""
        while True:
            idle = not self._windows and not self._to_confirm
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for returns normally when it is
            # cancelled just as the event is set, and this loop would then outlive the listener.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0 if idle else self.poll):
                    await self._wake.wait()
            self._wake.clear()
            await self.tick()
            raise_if_cancelled()  # redis-py may have lost a cancellation (see shared_cache.cancellation)

    async def drain(self, within: float) -> bool:
        """Tick until everything tracked is applied and confirmed, for at most ``within`` seconds: a
        round stuck on a server that stopped answering is cut off there too."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self._windows or self._to_confirm:
                    await self.tick()
                    if self._windows or self._to_confirm:
                        await asyncio.sleep(self.poll)
        return not (self._windows or self._to_confirm)

    async def tick(self) -> None:
        """One round: see what was applied, retry parks, confirm the done prefix, send lost calls.
        Rounds never overlap (``drain`` ticks while ``run`` may still be ticking): two at once would
        send the same lost calls twice."""
        async with self._ticking:
            await self._tick()

    async def _tick(self) -> None:
        now = time.monotonic()
        await self._check_receipts()
        await self._retry_parks(now)
        await self._complete_prefix()
        await self._confirm()
        await self._resend_overdue(now)
        self._update_room()

    async def _check_receipts(self) -> None:
        asked = list(itertools.islice(self._outstanding(), self.check_batch))
        if not asked:
            return
        try:
            applied = await self.cache.applied_receipts(asked)
        except Exception as exc:  # Redis away: asked again next tick
            self.counters.receipt_check_errors += 1
            self._log_error("cannot check invalidation receipts (%s); retrying", exc)
            return
        for _tenant, receipt in applied:
            window = self._where.pop(receipt, None)
            if window is not None and window.calls.pop(receipt, None) is not None:
                self.counters.applied += 1

    def _outstanding(self) -> Iterator[tuple[str, str]]:
        for window in self._windows:  # oldest first: they hold the confirmations back
            for receipt, pending in window.calls.items():
                yield pending.call.tenant_id, receipt

    async def _retry_parks(self, now: float) -> None:
        if now < self._park_after or not any(w.held for w in self._windows):
            return
        for window in self._windows:
            kept = []
            for letter in window.held:
                if not await self.park(letter.source, letter.raw, letter.reason):
                    kept.append(letter)
            window.held = kept
            if kept:  # Redis still refuses: back off, the window (and every later one) waits
                self.counters.park_retries += 1
                self._park_failures += 1
                self._park_after = now + min(self.timeout * 2 ** min(self._park_failures, 10), self.max_backoff)
                return
        self._park_failures = 0

    async def _complete_prefix(self) -> None:
        done: list[tuple[str, str]] = []
        now = time.monotonic()
        while self._windows and self._windows[0].done:
            window = self._windows.popleft()
            self.apply_delays.append(now - window.sent_at)
            self._to_confirm.update(window.positions)  # later windows hold later positions
            done += window.receipts
        if done:
            with contextlib.suppress(Exception):  # receipts expire by themselves anyway
                await self.cache.forget_receipts(done)

    async def _confirm(self) -> None:
        for source, position in list(self._to_confirm.items()):
            try:
                await source.confirm(position)
            except Exception as exc:  # e.g. Postgres restarting: confirmed on a later tick
                self.counters.confirm_errors += 1
                self._log_error("cannot confirm %s to %s (%s); retrying", position, source.name, exc)
                continue
            if self._to_confirm.get(source) == position:
                del self._to_confirm[source]
            self.counters.confirmations += 1

    async def _resend_overdue(self, now: float) -> None:
        overdue = [p for w in self._windows for p in w.calls.values() if p.deadline <= now][: self.check_batch]
        if not overdue:
            return
        try:
            queued = await self.broker.waiting([p.call.receipt for p in overdue if p.call.receipt])
        except Exception as exc:  # the broker is away: nothing can be sent now anyway
            self._log_error("cannot look into the broker queue (%s); retrying", exc)
            for pending in overdue:
                pending.deadline = now + self.timeout
            return
        lost = []
        for pending in overdue:
            if pending.call.receipt in queued:
                pending.waits += 1
                pending.deadline = now + self._delay(pending.waits)
            else:
                lost.append(pending)
        if not lost:
            return
        try:
            await self.send([p.call for p in lost])
        except Exception as exc:
            self.counters.delivery_retries += 1
            self._log_error("cannot send %d unapplied invalidations again (%s); retrying", len(lost), exc)
            for pending in lost:
                pending.deadline = now + self.timeout
            return
        log.warning(
            "%d invalidations not applied within %.1fs and no longer queued: sent again", len(lost), self.timeout
        )
        for pending in lost:
            pending.sends += 1
            pending.deadline = now + self._delay(pending.sends)
        self.counters.resent += len(lost)

    def _delay(self, attempt: int) -> float:
        step = min(self.timeout * 2.0 ** min(attempt - 1, 16), self.max_backoff)
        return step / 2 + random.uniform(0, step / 2)

    def _update_room(self) -> None:
        if len(self._where) < self.max_pending and len(self._windows) < self.max_pending:
            self._room.set()
        else:
            self._room.clear()

    def _log_error(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._errors_logged >= 5.0:  # once every few seconds while it lasts
            self._errors_logged = now
            log.warning(message, *args)
