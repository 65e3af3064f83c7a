"""shared_cache: cache-aside reads over an in-process memory tier and Redis, for multi-tenant services.

Import everything from here; the underscored modules are private::

    from shared_cache import CacheManager, get_with_cache_aside, TTL_STANDARD
"""

from __future__ import annotations

from ._batch import get_embeddings_batch_with_cache
from ._context import Context, with_context
from ._coordinated import invalidate_document_update
from ._events import EvictionEvent
from ._implementation import get_with_cache_aside
from ._keys import DATA_TYPE_PATTERN, TENANT_PATTERN
from ._keys import validate_tenant as validate_tenant_id
from ._keyspace import Keyspace, Scope
from ._manager import CacheManager
from ._metrics import (
    METRIC_CACHE_HIT,
    METRIC_CACHE_MISS,
    METRIC_CACHE_SIZE,
    METRIC_LATENCY,
)
from ._prometheus import CacheCollector, register_metrics
from ._scopes import (
    agent_scopes,
    collection_scopes,
    conversation_scopes,
    document_update_scopes,
    parse_scopes,
    resource_scopes,
    tenant_scopes,
)
from ._serialization import deserialize_from_cache, serialize_for_cache
from ._settings import CacheSettings
from ._ttl import DEFAULT_TTLS, TTL_EXTENDED, TTL_PERMANENT, TTL_SHORT, TTL_STANDARD, ttl_for
from .errors import (
    BackendCommandError,
    BackendUnavailable,
    CorruptEntryError,
    InvalidKeyError,
    SerializationError,
    SharedCacheError,
)

__version__ = "0.1.0"


async def track_cache_metrics(
    data_type: str,
    tenant_id: str,
    metric_type: str,
    value: float,
    metadata: dict[str, object] | None = None,
) -> None:
    """Record a custom metric (section 9.2) in the stats and pass it to registered hooks."""
    await CacheManager.get_instance().stats.track(data_type, tenant_id, metric_type, value, metadata)


def get_cache_stats() -> dict[str, object]:
    """Snapshot of the process's cache stats: hits, misses, hit ratio, p50/p99 per type and tier, and
    the busiest tenants (hits, misses, hit ratio, p99; ``SHARED_CACHE_STATS_TOP_TENANTS`` of them)."""
    manager = CacheManager.get_instance()
    return manager.stats.snapshot(manager.settings.stats_top_tenants)


__all__ = [
    "DATA_TYPE_PATTERN",
    "DEFAULT_TTLS",
    "METRIC_CACHE_HIT",
    "METRIC_CACHE_MISS",
    "METRIC_CACHE_SIZE",
    "METRIC_LATENCY",
    "TENANT_PATTERN",
    "TTL_EXTENDED",
    "TTL_PERMANENT",
    "TTL_SHORT",
    "TTL_STANDARD",
    "BackendCommandError",
    "BackendUnavailable",
    "CacheCollector",
    "CacheManager",
    "CacheSettings",
    "Context",
    "CorruptEntryError",
    "EvictionEvent",
    "InvalidKeyError",
    "Keyspace",
    "Scope",
    "SerializationError",
    "SharedCacheError",
    "__version__",
    "agent_scopes",
    "collection_scopes",
    "conversation_scopes",
    "deserialize_from_cache",
    "document_update_scopes",
    "get_cache_stats",
    "get_embeddings_batch_with_cache",
    "get_with_cache_aside",
    "invalidate_document_update",
    "parse_scopes",
    "register_metrics",
    "resource_scopes",
    "serialize_for_cache",
    "tenant_scopes",
    "track_cache_metrics",
    "ttl_for",
    "validate_tenant_id",
    "with_context",
]
