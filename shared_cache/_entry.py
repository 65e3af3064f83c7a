"""The entry store's wire format: what an entry looks like in Redis, and what one lookup says.

An entry is ``tag|expiry|payload``:

- ``tag``: the generations of the entry's scopes read *before* the database was asked, joined by
  ``,`` (a missing counter reads as ``0``). The entry counts only while its tag equals the current
  generations: any invalidation since makes it stale (ARCHITECTURE.md 3.1).
- ``expiry``: its expiry as wall-clock milliseconds (``0``: none), so a memory tier never keeps it
  longer than Redis does.
- ``payload``: the value (``_serialization``).

Entries are written by the Lua scripts (``write.lua``, ``write_batch.lua``); everything that reads
them, the single-key read, the batch path, the reclaim sweep and the operator tools, parses them here.
Pure code, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

ZERO = b"0"


class Entry(NamedTuple):
    tag: bytes
    expires_at: float  # wall-clock seconds, 0.0 for none
    payload: bytes


def parse_entry(raw: bytes) -> Entry | None:
    """An entry's parts, or None when the bytes do not follow the format (a corrupt entry)."""
    parts = raw.split(b"|", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return Entry(parts[0], int(parts[1]) / 1000.0, parts[2])


def stale_tag(raw: bytes) -> bytes:
    """The tag a stale entry carries (what a reclaim must still find there to delete it)."""
    return raw.partition(b"|")[0]


def join_tag(gens: Sequence[bytes | None]) -> bytes:
    """The tag of an entry written now under these generation values."""
    return b",".join([g or ZERO for g in gens])


class Lookup(NamedTuple):
    """What one lookup of a plan says (lookup.lua: entries, generations and lease in one script)."""

    level: int  # 1-based level whose entry is current, 0 on a miss
    payload: bytes  # the winning entry's payload; empty at a level > 0: the entry is corrupt
    expires_at: float  # its wall-clock expiry in seconds, 0.0 for none
    tag: bytes  # on a miss: level 1's current generations, to tag the write with
    leased: bool  # on a miss: this lookup took the lease (this process fetches)
    holder: bytes | None  # on a miss without the lease: who holds it (None: nobody)


def parse_lookup(reply: Sequence[Any]) -> Lookup:
    """The reply of lookup.lua as a ``Lookup`` (pure)."""
    level = int(reply[0])
    if level:
        entry = parse_entry(reply[1])
        if entry is None:  # an empty payload never decodes: the reader deletes the entry
            return Lookup(level, b"", 0.0, b"", False, None)
        return Lookup(level, entry.payload, entry.expires_at, entry.tag, False, None)
    holder = reply[3] if len(reply) > 3 and reply[3] else None
    return Lookup(0, b"", 0.0, reply[1], bool(reply[2]), holder)
