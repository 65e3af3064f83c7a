"""The in-process memory tier: a bounded LRU map with a TTL cap, and scope evictions in O(1).

Like a cachetools cache it does one thing. Entries keep the encoded payload (not the live object), so
every hit hands the caller a fresh object it may mutate freely; immutable scalars are kept decoded.

Dropping a scope (a tenant, a type, a collection...) costs the same whatever it covers: the tier keeps
an eviction sequence number ``seq`` and, per evicted scope, the ``seq`` of its last eviction. Each
entry remembers the ``seq`` under which it was last known valid (``checked``). A hit on an entry
checked at the current ``seq`` needs no more than one comparison; otherwise each of the entry's scopes
(three to six) is compared with its last eviction once, and the entry is either re-marked valid or
dropped then. An entry is never served after an eviction of one of its scopes. Eviction records older
than the TTL cap are forgotten: every entry stored before them has expired by then.

A hit moves its entry to the recent end of the LRU order only when the entry is not already among
the newest quarter of the tier (as memcached bumps an item at most once a minute): a hit on a recent
entry costs one comparison instead of an ``OrderedDict.move_to_end``, which hashes and compares the
key again (8% of a memory hit's instructions). An entry that keeps being hit is never the one
evicted: a hit moves it once it has left the newest quarter, long before it reaches the old end. A
key used before fewer than three quarters of ``max_entries`` other keys were used is always still
there (an exact LRU keeps it for all of them). A tier of fewer than four entries is an exact LRU.

``timer`` is injectable so tests move time instead of sleeping; the default, ``perf_counter``, is the
clock the read path already reads, so a hit costs no extra clock call.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from itertools import repeat
from operator import add
from typing import Any

import orjson

from ._keyspace import Scope
from ._metrics import MemoryCell, new_memory_cell
from ._serialization import KIND_CUSTOM, KIND_EMBEDDING, KIND_JSON, KIND_NONE, decode_embedding

# How an entry holds its value (MemoryEntry[KIND]).
HOLD_VALUE = 0  # immutable scalar, returned as is
HOLD_JSON = 1  # JSON body, decoded per hit
HOLD_EMBEDDING = 2  # embedding payload, decoded per hit
HOLD_CUSTOM = 3  # JSON body of a custom serializer, passed through the caller's deserializer
HOLD_FLAT = 4  # dict or list of scalars: a shallow copy is a full copy, and 4x cheaper than a decode

# A memory entry is a list (mutable: CHECKED moves forward on a hit): these are its slots. HITS is the
# memory cell of the entry's data type and tenant (``CacheStats.memory_cell``: its hit count and
# sampled hit latencies). METRICS is the
# hit's metrics without its latency, built on the first hit (None until then): each hit returns a
# copy, which costs half of building the dict anew; entries never hit (most of a batch's) hold none.
# STAMP is the tier's ``moves`` when the entry was stored or last moved to the recent end.
EXPIRES, KIND, DATA, KEY, LEVEL, SIZE, SCOPES, CHECKED, HITS, METRICS, STAMP = range(11)
MemoryEntry = list[Any]

# Exact types: what a JSON decode gives (a subclass, an enum say, is not what a Redis hit returns).
_SCALAR_TYPES = frozenset((str, int, float, bool, type(None)))
_OVERHEAD = 64  # bytes counted per entry beyond its payload and key
_FLAT_MAX_ITEMS = 64
_UNDECODED: Any = object()


def _is_flat(value: Any) -> bool:
    kind = type(value)
    if kind is dict:
        items: Iterable[Any] = value.values()
    elif kind is list:
        items = value
    else:
        return False
    return len(value) <= _FLAT_MAX_ITEMS and _SCALAR_TYPES.issuperset(map(type, items))


def hold(payload: bytes, decoded: Any = _UNDECODED) -> tuple[int, Any]:
    """How a payload is kept: (kind, data). ``decoded``, when the caller already decoded it, saves
    decoding again; it is copied, never kept, since the caller hands it on."""
    kind = payload[0]
    if kind == KIND_JSON:
        body = payload[1:]
        if body[:1] in (b"{", b"["):
            if len(body) <= 2048:
                if decoded is _UNDECODED:
                    decoded = orjson.loads(body)
                if _is_flat(decoded):
                    return HOLD_FLAT, decoded.copy()
            return HOLD_JSON, body
        return HOLD_VALUE, orjson.loads(body) if decoded is _UNDECODED else decoded
    if kind == KIND_EMBEDDING:
        return HOLD_EMBEDDING, payload
    if kind == KIND_CUSTOM:
        return HOLD_CUSTOM, payload[1:]
    if kind == KIND_NONE and len(payload) == 1:
        return HOLD_VALUE, None
    raise ValueError(f"unknown payload kind {payload[:1]!r}")


def entry_value(entry: MemoryEntry, deserializer: Callable[[Any], Any] | None = None) -> Any:
    """A fresh copy of an entry's value."""
    kind = entry[KIND]
    if kind == HOLD_VALUE:
        return entry[DATA]
    if kind == HOLD_FLAT:
        return entry[DATA].copy()
    if kind == HOLD_JSON:
        return orjson.loads(entry[DATA])
    if kind == HOLD_EMBEDDING:
        return decode_embedding(entry[DATA])
    plain = orjson.loads(entry[DATA])
    return deserializer(plain) if deserializer is not None else plain


def hit_metrics(entry: MemoryEntry) -> dict[str, Any]:
    """The metrics of a hit on ``entry`` without its latency, built on its first hit and kept in the
    entry: each hit returns a copy with its own latency (both ``get_with_cache_aside`` functions)."""
    metrics = entry[METRICS] = {
        "source": "cache",
        "tier": "memory",
        "key": entry[KEY],
        "level": entry[LEVEL],
        "latency_ms": 0.0,
    }
    return metrics


def time_left(expires_at: float) -> float | None:
    """Seconds an entry expiring at wall-clock ``expires_at`` (0 = never) may stay in memory:
    0.0 means "up to the cap", None means it has already expired and must not be kept."""
    if not expires_at:
        return 0.0
    left = expires_at - time.time()
    return left if left > 0 else None


class MemoryTier:
    """Bounded (entries and bytes), TTL-capped LRU of entries by request identity."""

    def __init__(
        self,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        ttl_cap: float = 60.0,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        if max_entries < 1 or max_bytes < 1 or ttl_cap <= 0:
            raise ValueError(
                f"memory tier bounds must be positive, got max_entries={max_entries!r}, "
                f"max_bytes={max_bytes!r}, ttl_cap={ttl_cap!r}"
            )
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_cap = ttl_cap
        self.timer = timer
        self._data: OrderedDict[Hashable, MemoryEntry] = OrderedDict()
        self.bytes = 0
        # Bumped by every scope eviction and flush. An entry stored with the seq read before its
        # lookup began is valid only while none of its scopes was evicted after that seq.
        self.seq = 0
        self._evicted: dict[Scope, int] = {}  # scope -> seq of its last eviction
        self._evicted_log: deque[tuple[float, Scope, int]] = deque()  # (when, scope, seq), oldest first
        self._flushed = 0  # seq of the last flush
        # Entries stored or moved to the recent end so far; an entry whose STAMP is at most
        # ``stale_stamp`` may have a quarter of the tier or more after it, so a hit moves it.
        self.moves = 0
        self.stale_stamp = -(max_entries // 4)

    @property
    def eviction_seq(self) -> int:
        return self.seq

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, ident: Hashable) -> bool:
        return self.get(ident) is not None

    def get(self, ident: Hashable, now: float | None = None) -> MemoryEntry | None:
        """The entry, if present, unexpired and valid; an expired or invalidated one is dropped.

        ``now`` (a reading of ``timer``) lets a caller that looks up many entries in one synchronous
        pass read the clock once: nothing can evict in between, and an entry that expires during
        the pass is microseconds late."""
        entry = self._data.get(ident)
        if entry is None:
            return None
        if entry[EXPIRES] <= (self.timer() if now is None else now) or (
            entry[CHECKED] != self.seq and not self.revalidate(entry)
        ):
            self._remove(ident)
            return None
        if entry[STAMP] <= self.stale_stamp:
            self.promote(ident, entry)
        return entry

    def promote(self, ident: Hashable, entry: MemoryEntry) -> None:
        """Move a hit entry to the recent end (only needed once it is not among the newest quarter)."""
        self._data.move_to_end(ident)
        self.moves += 1
        self.stale_stamp += 1
        entry[STAMP] = self.moves

    def revalidate(self, entry: MemoryEntry) -> bool:
        """True (and the entry marked valid at the current seq) if no scope of it was evicted since
        it was last checked; False if one was (the caller drops it)."""
        checked = entry[CHECKED]
        if checked < self._flushed:
            return False
        evicted = self._evicted
        for scope in entry[SCOPES]:
            last = evicted.get(scope)
            if last is not None and last > checked:
                return False
        entry[CHECKED] = self.seq
        return True

    def set(
        self,
        ident: Hashable,
        payload: bytes,
        ttl: float,
        key: str,
        level: str,
        scopes: tuple[Scope, ...],
        seq: int | None = None,
        decoded: Any = _UNDECODED,
        hits: MemoryCell | None = None,
    ) -> bool:
        """Keep a payload for at most ``min(ttl, ttl_cap)`` seconds (``ttl`` 0 = the cap).

        ``seq`` is the tier's ``seq`` read before the value was looked up or fetched (default: now):
        an eviction of one of ``scopes`` since then makes the entry invalid from the start.
        ``scopes[0]`` must be the tenant scope. ``hits`` is the memory cell a hit on the entry counts in.
        """
        lifetime = self.ttl_cap if ttl <= 0 else min(ttl, self.ttl_cap)
        kind, data = hold(payload, decoded)
        size = len(payload) + _OVERHEAD + len(key)
        if size > self.max_bytes:
            return False
        checked = self.seq if seq is None else seq
        expires = self.timer() + lifetime
        cell = hits if hits is not None else new_memory_cell()
        entry = [expires, kind, data, key, level, size, scopes, checked, cell, None, self.moves + 1]
        if entry[CHECKED] != self.seq and not self.revalidate(entry):
            self.delete(ident)  # a scope of it was evicted while it was fetched: never kept
            return False
        self.moves += 1
        self.stale_stamp += 1
        old = self._data.pop(ident, None)
        if old is not None:
            self.bytes -= old[SIZE]
        self._data[ident] = entry
        self.bytes += size
        self._shrink()
        return True

    def set_embeddings(
        self,
        idents: Sequence[Hashable],
        payloads: Sequence[bytes],
        ttls: Sequence[float],
        keys: Sequence[str],
        scopes: Sequence[tuple[Scope, ...]],
        seq: int,
        hits: MemoryCell,
    ) -> None:
        """Keep many embedding payloads at once (the batch path), the n-th of each list making one
        entry, as :meth:`set` would, with one clock read and no per-entry decoding. ``idents`` are
        distinct.

        The entries are built and stored by C loops (``map``, ``zip``, ``OrderedDict.update``), and
        share one LRU stamp, the oldest of them: a hit may move one of them to the recent end a little
        sooner than needed, never later."""
        count = len(idents)
        if not count == len(payloads) == len(ttls) == len(keys) == len(scopes):
            raise ValueError("set_embeddings needs lists of one length")
        if not count:
            return
        now = self.timer()
        data, cap, max_bytes = self._data, self.ttl_cap, self.max_bytes
        sizes = list(map(_OVERHEAD.__add__, map(add, map(len, payloads), map(len, keys))))
        if max(ttls) <= 0 or min(ttls) >= cap:  # all up to the cap: the usual case
            expires: Iterable[float] = repeat(now + cap)
        else:
            expires = [now + (ttl if 0 < ttl < cap else cap) for ttl in ttls]
        entries = list(
            map(
                list,
                zip(
                    expires, repeat(HOLD_EMBEDDING), payloads, keys, repeat("tenant"), sizes, scopes,
                    repeat(seq), repeat(hits), repeat(None), repeat(self.moves + 1),
                ),
            )
        )  # fmt: skip
        if seq != self.seq or max(sizes) > max_bytes:
            # An eviction since the lookup began (an entry of its scopes is never kept), or an entry
            # too big for the tier: those are left out, as set leaves them out.
            kept = [
                j
                for j, entry in enumerate(entries)
                if entry[SIZE] <= max_bytes and (entry[CHECKED] == self.seq or self.revalidate(entry))
            ]
            idents, entries, sizes = [idents[j] for j in kept], [entries[j] for j in kept], [sizes[j] for j in kept]
            count = len(kept)
        if any(map(data.__contains__, idents)):  # stored again: the old entries go first
            for ident in idents:
                old = data.pop(ident, None)
                if old is not None:
                    self.bytes -= old[SIZE]
        data.update(zip(idents, entries, strict=True))
        self.moves += count
        self.stale_stamp += count
        self.bytes += sum(sizes)
        self._shrink()

    def delete(self, ident: Hashable) -> bool:
        if ident in self._data:
            self._remove(ident)
            return True
        return False

    def evict_scope(self, scope: Scope) -> None:
        """Make every entry of ``scope`` invalid: O(1), whatever the scope covers."""
        self.seq += 1
        self._evicted[scope] = self.seq
        now = time.monotonic()
        log = self._evicted_log
        log.append((now, scope, self.seq))
        horizon = now - self.ttl_cap - 1.0
        while log and log[0][0] < horizon:  # entries stored before these evictions have expired
            _, old_scope, old_seq = log.popleft()
            if self._evicted.get(old_scope) == old_seq:
                del self._evicted[old_scope]

    def evict_scopes(self, scopes: Iterable[Scope]) -> None:
        for scope in scopes:
            self.evict_scope(scope)

    def clear(self) -> None:
        """Drop everything (the subscription was lost: evictions may have been missed)."""
        self.seq += 1
        self._flushed = self.seq
        self._data.clear()
        self.bytes = 0

    def _remove(self, ident: Hashable) -> None:
        entry = self._data.pop(ident)
        self.bytes -= entry[SIZE]

    def _shrink(self) -> None:
        """Drop the least recently used entries until the tier is within its bounds."""
        data = self._data
        while len(data) > self.max_entries or self.bytes > self.max_bytes:
            self.bytes -= data.popitem(last=False)[1][SIZE]
