"""The table the workload reads and writes: ``documents`` rows spread over tenants, with a version.

The listener's default rules cover ``documents`` (an UPDATE invalidates the document in every
context), so the suite needs no rules file. Row ``i`` is document ``doc{i}`` of tenant
``tenant{i % tenants}``; its ``version`` goes up by one at every update.
"""

from __future__ import annotations

import psycopg

from shared_cache import document_update_scopes, resource_scopes, tenant_scopes

DATA_TYPE = "document"


def row_ids(row: int, tenants: int) -> tuple[str, str]:
    """(tenant id, document id) of row ``row``."""
    return f"tenant{row % tenants}", f"doc{row}"


def row_of(document_id: str) -> int:
    return int(document_id.removeprefix("doc"))


def create_table(dsn: str, rows: int, tenants: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS documents")
        conn.execute(
            "CREATE TABLE documents (id text PRIMARY KEY, tenant_id text NOT NULL, collection_id text,"
            " version int NOT NULL DEFAULT 0)"
        )
        conn.execute("ALTER TABLE documents REPLICA IDENTITY FULL")  # DELETEs and UPDATEs carry the tenant
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO documents (id, tenant_id, collection_id) VALUES (%s, %s, %s)",
                [(row_ids(i, tenants)[1], row_ids(i, tenants)[0], f"coll{i % 7}") for i in range(rows)],
            )


def current_versions(dsn: str) -> dict[int, int]:
    """Every row's version, as Postgres has it now."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        return {row_of(doc): int(version) for doc, version in conn.execute("SELECT id, version FROM documents")}


def resource_scope(row: int, tenants: int) -> tuple[str, ...]:
    """The generation scope an update of row ``row`` must bump for a ``document`` read of it."""
    tenant, doc = row_ids(row, tenants)
    return document_update_scopes(tenant, doc)[0]


def covering_scopes(row: int, tenants: int) -> frozenset[tuple[str, ...]]:
    """Scopes whose bump invalidates a ``document`` read of row ``row``: the document itself, every
    document of its tenant (a conservative invalidation), or the whole tenant."""
    tenant = row_ids(row, tenants)[0]
    return frozenset({resource_scope(row, tenants), *resource_scopes(tenant, DATA_TYPE, "*"), *tenant_scopes(tenant)})
