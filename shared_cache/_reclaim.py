"""Reclaiming invalidated entries that have no expiry (``TTL_PERMANENT``).

Entries with a TTL are reclaimed by Redis itself, and any entry is deleted when a read meets it
stale; an entry written without expiry and never read again after an invalidation would stay
forever without this sweep. Each tenant's permanent entries are listed in a set
(``Keyspace.permanent``); the sweep walks it with SSCAN, in batches, off the read and invalidation
paths, and deletes the entries whose tag no longer matches their generations (if still so).
"""

from __future__ import annotations

from ._entry import join_tag, stale_tag
from ._store import EntryStore


async def reclaim_permanent(store: EntryStore, tenant_id: str, batch: int = 500) -> int:
    """Delete the tenant's invalidated permanent entries; returns how many."""
    key = store.keys.permanent(tenant_id)
    cursor, deleted = 0, 0
    while True:
        cursor, members = await store.redis.call("SSCAN", key, cursor, "COUNT", batch)
        if members:
            deleted += await _reclaim_batch(store, tenant_id, members)
        if int(cursor) == 0:
            return deleted


async def _reclaim_batch(store: EntryStore, tenant_id: str, members: list[bytes]) -> int:
    """One batch of set members (``entry_key\\ngen_key...``): one pipelined read, one script."""
    entries = [m.decode().split("\n") for m in members]
    replies = await store.redis.call_many([("MGET", *parts) for parts in entries])
    stale: list[tuple[str, bytes]] = []
    gone: list[bytes] = []
    for member, parts, reply in zip(members, entries, replies, strict=True):
        if isinstance(reply, BaseException):
            raise reply
        raw = reply[0]
        if raw is None:
            gone.append(member)  # expired or deleted: forget it
        elif stale_tag(raw) != join_tag(reply[1:]):
            gone.append(member)
            stale.append((parts[0], stale_tag(raw)))
    if not stale and not gone:
        return 0
    return await store.reclaim(tenant_id, stale, gone)
