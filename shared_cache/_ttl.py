"""TTL constants and the per-data-type table of the standard (section 5)."""

from __future__ import annotations

import random

TTL_SHORT = 300
TTL_STANDARD = 3600
TTL_EXTENDED = 86400
TTL_PERMANENT = 0

DEFAULT_TTLS: dict[str, int] = {
    "embedding": TTL_EXTENDED,
    "vector_store": TTL_STANDARD,
    "query_result": TTL_SHORT,
    "agent_config": TTL_STANDARD,
    "agent_response": TTL_SHORT,
    "retrieval_cache": TTL_SHORT,
    "semantic_index": TTL_STANDARD,
}


def ttl_for(data_type: str, ttl: int | None = None, jitter: float = 0.0) -> int:
    """Seconds an entry of ``data_type`` lives; 0 means no expiry.

    An explicit ``ttl`` wins over the table; unknown types get ``TTL_STANDARD``. ``jitter`` (a
    fraction, e.g. 0.05) shortens the TTL by a random part of itself so that a batch written at once
    does not expire at once; it never lengthens a TTL and never touches ``TTL_PERMANENT``.
    """
    if ttl is None:
        seconds = DEFAULT_TTLS.get(data_type, TTL_STANDARD)
    elif isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
        raise ValueError(f"ttl must be a non-negative int number of seconds (0 = no expiry), got {ttl!r}")
    else:
        seconds = ttl
    if seconds > 0 and jitter > 0.0:
        seconds = max(1, seconds - int(seconds * jitter * random.random()))
    return seconds
