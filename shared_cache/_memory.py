"""The in-process memory tier: a bounded LRU map with a TTL cap and a scope index.

Like a cachetools cache it does one thing. Entries keep the encoded payload (not the live object),
so every hit hands the caller a fresh object it may mutate freely; immutable scalars are kept
decoded. Each entry is indexed under its generation scopes so an eviction event for a scope
(a tenant, a type, a collection...) drops exactly its entries in time proportional to them.
``timer`` is injectable so tests move time instead of sleeping; the default, ``perf_counter``, is
the clock the read path already reads, so a hit costs no extra clock call.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any, NamedTuple

import orjson

from ._keyspace import Scope
from ._serialization import KIND_CUSTOM, KIND_EMBEDDING, KIND_JSON, KIND_NONE, decode_embedding

# How an entry holds its value (see MemoryEntry.kind).
HOLD_VALUE = 0  # immutable scalar, returned as is
HOLD_JSON = 1  # JSON body, decoded per hit
HOLD_EMBEDDING = 2  # embedding payload, decoded per hit
HOLD_CUSTOM = 3  # JSON body of a custom serializer, passed through the caller's deserializer
HOLD_FLAT = 4  # dict or list of scalars: a shallow copy is a full copy, and 4x cheaper than a decode

_SCALARS = (str, int, float, bool, type(None))
_FLAT_MAX_ITEMS = 64


def _is_flat(value: Any) -> bool:
    if isinstance(value, dict):
        items: Iterable[Any] = value.values()
    elif isinstance(value, list):
        items = value
    else:
        return False
    return len(value) <= _FLAT_MAX_ITEMS and all(isinstance(v, _SCALARS) for v in items)


class MemoryEntry(NamedTuple):
    expires_at: float
    kind: int
    data: Any
    key: str
    level: str
    size: int
    scopes: tuple[Scope, ...]


_UNDECODED: Any = object()


def entry_from_payload(
    payload: bytes,
    expires_at: float,
    key: str,
    level: str,
    scopes: tuple[Scope, ...],
    decoded: Any = _UNDECODED,
) -> MemoryEntry:
    """Build a memory entry from a wire payload (see ``_serialization``).

    ``decoded``, when the caller already decoded the payload, saves decoding it again; it is
    copied, never kept, since the caller hands it on.
    """
    kind = payload[0]
    size = len(payload) + 64 + len(key)
    if kind == KIND_JSON:
        body = payload[1:]
        first = body[:1]
        if first in (b"{", b"["):
            if len(body) <= 2048:
                if decoded is _UNDECODED:
                    decoded = orjson.loads(body)
                if _is_flat(decoded):
                    return MemoryEntry(expires_at, HOLD_FLAT, decoded.copy(), key, level, size, scopes)
                    return MemoryEntry(expires_at, HOLD_FLAT, decoded, key, level, size, scopes)
            return MemoryEntry(expires_at, HOLD_JSON, body, key, level, size, scopes)
        value = orjson.loads(body) if decoded is _UNDECODED else decoded
        return MemoryEntry(expires_at, HOLD_VALUE, value, key, level, size, scopes)
    if kind == KIND_EMBEDDING:
        return MemoryEntry(expires_at, HOLD_EMBEDDING, payload, key, level, size, scopes)
    if kind == KIND_CUSTOM:
        return MemoryEntry(expires_at, HOLD_CUSTOM, payload[1:], key, level, size, scopes)
    if kind == KIND_NONE:
        return MemoryEntry(expires_at, HOLD_VALUE, None, key, level, size, scopes)
    raise ValueError(f"unknown payload kind {payload[:1]!r}")


def entry_value(entry: MemoryEntry, deserializer: Callable[[Any], Any] | None = None) -> Any:
    """A fresh copy of an entry's value."""
    kind = entry.kind
    if kind == HOLD_VALUE:
        return entry.data
    if kind == HOLD_FLAT:
        return entry.data.copy()
    if kind == HOLD_JSON:
        return orjson.loads(entry.data)
    if kind == HOLD_EMBEDDING:
        return decode_embedding(entry.data)
    plain = orjson.loads(entry.data)
    return deserializer(plain) if deserializer is not None else plain


def time_left(expires_at: float) -> float | None:
    """Seconds an entry expiring at wall-clock ``expires_at`` (0 = never) may stay in memory:
    0.0 means "up to the cap", None means it has already expired and must not be kept."""
    if not expires_at:
        return 0.0
    left = expires_at - time.time()
    return left if left > 0 else None


class MemoryTier:
    """Bounded (entries and bytes), TTL-capped LRU of :class:`MemoryEntry` by request identity."""

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
        self._by_scope: dict[Scope, set[Hashable]] = {}
        self.bytes = 0
        # Bumped on every eviction by scope or flush: a reader that saw another value of it
        # before its fetch must not store what it fetched (it may predate the invalidation).
        self.eviction_seq = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, ident: Hashable) -> bool:
        return self.get(ident) is not None

    def get(self, ident: Hashable) -> MemoryEntry | None:
        entry = self._data.get(ident)
        if entry is None:
            return None
        if entry.expires_at <= self.timer():
            self._remove(ident)
            return None
        self._data.move_to_end(ident)
        return entry

    def set(
        self,
        ident: Hashable,
        payload: bytes,
        ttl: float,
        key: str,
        level: str,
        scopes: tuple[Scope, ...],
        decoded: Any = _UNDECODED,
    ) -> bool:
        """Store a payload for at most ``min(ttl, ttl_cap)`` seconds (``ttl`` 0 = the cap).

        ``scopes[0]`` must be the tenant scope: it is not indexed (a tenant-wide eviction, which is
        rare, scans instead), which saves a third of the index work on every store.
        """
        lifetime = self.ttl_cap if ttl <= 0 else min(ttl, self.ttl_cap)
        entry = entry_from_payload(payload, self.timer() + lifetime, key, level, scopes, decoded)
        if entry.size > self.max_bytes:
            return False
        if ident in self._data:
            self._remove(ident)
        self._data[ident] = entry
        self.bytes += entry.size
        for scope in scopes[1:]:
            self._by_scope.setdefault(scope, set()).add(ident)
        while len(self._data) > self.max_entries or self.bytes > self.max_bytes:
            self._remove(next(iter(self._data)))
        return True

    def delete(self, ident: Hashable) -> bool:
        if ident in self._data:
            self._remove(ident)
            return True
        return False

    def evict_scope(self, scope: Scope) -> int:
        """Drop every entry indexed under ``scope``; returns how many."""
        self.eviction_seq += 1
        if len(scope) == 1:
            idents: Iterable[Hashable] | None = [i for i, e in self._data.items() if e.scopes[:1] == (scope,)]
        else:
            idents = self._by_scope.pop(scope, None)
        if not idents:
            return 0
        dropped = 0
        for ident in list(idents):
            if ident in self._data:
                self._remove(ident)
                dropped += 1
        return dropped

    def evict_scopes(self, scopes: Iterable[Scope]) -> int:
        return sum(self.evict_scope(scope) for scope in scopes)

    def clear(self) -> None:
        self.eviction_seq += 1
        self._data.clear()
        self._by_scope.clear()
        self.bytes = 0

    def _remove(self, ident: Hashable) -> None:
        entry = self._data.pop(ident)
        self.bytes -= entry.size
        for scope in entry.scopes[1:]:
            members = self._by_scope.get(scope)
            if members is not None:
                members.discard(ident)
                if not members:
                    del self._by_scope[scope]
