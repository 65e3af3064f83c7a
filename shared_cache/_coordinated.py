"""Coordinated invalidation (section 7.2): a document update and what depends on it."""

from __future__ import annotations

from typing import Any

from ._keys import SCOPE_COLLECTION, SCOPE_RESOURCE, Scope, encode_id, validate_tenant
from ._manager import CacheManager


def document_update_scopes(tenant_id: str, document_id: Any, collection_id: Any = None) -> list[Scope]:
    """Scopes bumped when a document changes (pure, for planning and tests).

    1. the document itself (``document`` entries of that id, in every context);
    2. embeddings cached under the document id (embeddings cached by text are content-addressed:
       the same text always has the same embedding, so they are never stale);
    3. the collection's ``vector_store``;
    4. everything cached in the collection's context, which holds its ``query_result`` and
       ``retrieval_cache`` entries (a query may have used the document).
    """
    tenant = validate_tenant(tenant_id)
    doc = encode_id(document_id, "document_id")
    scopes: list[Scope] = [
        (tenant, SCOPE_RESOURCE, "document", doc),
        (tenant, SCOPE_RESOURCE, "embedding", doc),
    ]
    if collection_id is not None:
        coll = encode_id(collection_id, "collection_id")
        scopes += [(tenant, SCOPE_RESOURCE, "vector_store", coll), (tenant, SCOPE_COLLECTION, coll)]
    return scopes


async def invalidate_document_update(tenant_id: str, document_id: Any, collection_id: Any = None) -> None:
    """Invalidate a document and what depends on it: one round trip, one eviction event."""
    scopes = document_update_scopes(tenant_id, document_id, collection_id)
    await CacheManager.get_instance().invalidate_scopes(scopes[0][0], scopes, "document_update")
