"""Counters of section 9.3: a hash per counter in Redis, the total and one sub-total per metadata item.

Unlike reads, they raise ``BackendUnavailable`` when Redis is down: a count is data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._keys import encode_id, validate_data_type, validate_tenant
from ._keyspace import Keyspace
from ._redis_tier import RedisTier


def counter_key(keys: Keyspace, counter_type: str, resource_id: Any, tenant_id: str) -> str:
    tenant = validate_tenant(tenant_id)
    kind = validate_data_type(counter_type)
    res = "-" if resource_id is None else encode_id(resource_id)
    return keys.counter(tenant, kind, res)


async def increment(
    redis: RedisTier,
    keys: Keyspace,
    counter_type: str,
    amount: int | float,
    resource_id: Any,
    tenant_id: str,
    metadata: Mapping[str, Any] | None,
) -> int | float:
    """Add ``amount`` to the total and to each metadata item's sub-total, in one round trip."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise ValueError(f"counter amount must be a number, got {amount!r}")
    key = counter_key(keys, counter_type, resource_id, tenant_id)
    command = "HINCRBY" if isinstance(amount, int) else "HINCRBYFLOAT"
    fields = ["total", *(f"{name}={value}" for name, value in (metadata or {}).items())]
    replies = await redis.call_many([(command, key, field, amount) for field in fields])
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
    return number(replies[0])


async def read(
    redis: RedisTier,
    keys: Keyspace,
    counter_type: str,
    resource_id: Any,
    tenant_id: str,
    metadata: Mapping[str, Any] | None,
) -> int | float:
    """A counter's total, or the sub-total of one ``metadata`` item; 0 if never incremented."""
    key = counter_key(keys, counter_type, resource_id, tenant_id)
    field = "total"
    if metadata:
        if len(metadata) != 1:
            raise ValueError(f"get_counter takes one metadata item, got {dict(metadata)!r}")
        ((name, value),) = metadata.items()
        field = f"{name}={value}"
    return number(await redis.call("HGET", key, field))


def number(raw: Any) -> int | float:
    if raw is None:
        return 0
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        return int(text)
    except ValueError:
        return float(text)
