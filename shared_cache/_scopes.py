"""Scopes that each kind of invalidation bumps (pure code, shared by the manager and the worker)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._keys import (
    SCOPE_AGENT,
    SCOPE_COLLECTION,
    SCOPE_CONVERSATION,
    SCOPE_RESOURCE,
    SCOPE_TYPE,
    encode_id,
    validate_data_type,
    validate_tenant,
)
from ._keyspace import Scope
from .errors import InvalidKeyError

# Scope kinds after the tenant, and how many parts follow the tenant in each.
_SCOPE_PARTS = {SCOPE_TYPE: 2, SCOPE_RESOURCE: 3, SCOPE_AGENT: 2, SCOPE_CONVERSATION: 2, SCOPE_COLLECTION: 2}


def parse_scope(raw: Any, tenant_id: str) -> Scope:
    """One scope received as JSON (a list of strings), checked: inside ``tenant_id``, of a known kind
    and length. Raises ``InvalidKeyError`` (a ``ValueError``) naming what is wrong."""
    if not isinstance(raw, (list, tuple)) or not raw or not all(isinstance(p, str) and p for p in raw):
        raise InvalidKeyError(f"scope must be a non-empty list of non-empty strings, got {raw!r}")
    if raw[0] != tenant_id:
        raise InvalidKeyError(f"scope {raw!r} is outside tenant {tenant_id!r}")
    if len(raw) > 1 and _SCOPE_PARTS.get(raw[1]) != len(raw) - 1:
        raise InvalidKeyError(f"scope {raw!r} has an unknown kind or length")
    return tuple(raw)


def parse_scopes(tenant_id: Any, raw: Iterable[Any]) -> tuple[Scope, ...]:
    """Scopes of one tenant received as JSON (e.g. by a task), each checked by :func:`parse_scope`."""
    tenant = validate_tenant(tenant_id)
    if isinstance(raw, (str, bytes)):
        raise InvalidKeyError(f"scopes must be a list of scopes, got {raw!r}")
    scopes = tuple(parse_scope(scope, tenant) for scope in raw)
    if not scopes:
        raise InvalidKeyError(f"no scopes given for tenant {tenant!r}")
    return scopes


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


def resource_scopes(tenant_id: str, data_type: str, resource_id: Any) -> list[Scope]:
    """One resource of a type, in every context (``resource_id="*"``: the whole type)."""
    tenant = validate_tenant(tenant_id)
    dtype = validate_data_type(data_type)
    if resource_id == "*":
        return [(tenant, SCOPE_TYPE, dtype)]
    return [(tenant, SCOPE_RESOURCE, dtype, encode_id(resource_id))]


def agent_scopes(tenant_id: str, agent_id: Any) -> list[Scope]:
    """Everything cached in the agent's context, and its ``agent_config``."""
    tenant = validate_tenant(tenant_id)
    agent = encode_id(agent_id, "agent_id")
    return [(tenant, SCOPE_AGENT, agent), (tenant, SCOPE_RESOURCE, "agent_config", agent)]


def collection_scopes(tenant_id: str, collection_id: Any) -> list[Scope]:
    """Everything cached in the collection's context, and its ``vector_store``."""
    tenant = validate_tenant(tenant_id)
    coll = encode_id(collection_id, "collection_id")
    return [(tenant, SCOPE_COLLECTION, coll), (tenant, SCOPE_RESOURCE, "vector_store", coll)]


def conversation_scopes(tenant_id: str, conversation_id: Any) -> list[Scope]:
    tenant = validate_tenant(tenant_id)
    return [(tenant, SCOPE_CONVERSATION, encode_id(conversation_id, "conversation_id"))]


def tenant_scopes(tenant_id: str) -> list[Scope]:
    return [(validate_tenant(tenant_id),)]
