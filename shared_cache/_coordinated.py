"""Coordinated invalidation (section 7.2): a document update and what depends on it."""

from __future__ import annotations

from typing import Any

from ._manager import CacheManager
from ._scopes import document_update_scopes


async def invalidate_document_update(tenant_id: str, document_id: Any, collection_id: Any = None) -> None:
    """Invalidate a document and what depends on it: one round trip, one eviction event."""
    scopes = document_update_scopes(tenant_id, document_id, collection_id)
    await CacheManager.get_instance().invalidate_scopes(scopes[0][0], scopes, "document_update")
