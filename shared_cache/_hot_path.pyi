from typing import Any

from ._cache_aside import Loader, Metrics
from ._context import Context
from ._serialization import Deserializer, Serializer

def perf_counter() -> float: ...
async def get_with_cache_aside(
    data_type: str,
    resource_id: Any,
    tenant_id: str | None,
    fetch_from_db_func: Loader,
    generate_func: Loader | None = None,
    agent_id: Any = None,
    conversation_id: Any = None,
    collection_id: Any = None,
    ctx: Context | None = None,
    ttl: int | None = None,
    serializer: Serializer | None = None,
    deserializer: Deserializer | None = None,
) -> tuple[Any, Metrics]: ...
