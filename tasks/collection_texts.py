"""Read a collection's chunk texts for ``warm_collection``: from Postgres, or through Supabase's REST API.

With ``SHARED_CACHE_WORKER_SUPABASE_URL`` set (a Supabase deployment may have only a project URL and
a service key), the texts come through supabase-py, page by page: PostgREST caps every response
(``db-max-rows``, 1000 rows on a Supabase project), so one request would silently stop there.
Otherwise they come from ``SHARED_CACHE_WORKER_DATABASE_URL`` in one query.
"""

from __future__ import annotations

from typing import Any

from tasks.settings import TaskSettings
from tasks.supabase_api import close_client, connect, describe_api_error, split_table

PAGE_ROWS = 1000


class CollectionTextsError(RuntimeError):
    """The chunk texts could not be read (the REST API's code and message, never the key)."""


async def collection_texts(settings: TaskSettings, tenant_id: str, collection_id: str) -> list[str]:
    """Chunk texts of one collection, using the ``document_chunks`` columns of the settings."""
    if settings.supabase_url:
        return await _texts_through_rest(settings, tenant_id, collection_id)
    return await _texts_from_postgres(settings, tenant_id, collection_id)


async def _texts_from_postgres(settings: TaskSettings, tenant_id: str, collection_id: str) -> list[str]:
    import psycopg
    from psycopg import sql

    query = sql.SQL("SELECT {text} FROM {table} WHERE {tenant} = %s AND {coll} = %s ORDER BY 1").format(
        text=sql.Identifier(settings.chunks_text_column),
        table=sql.Identifier(settings.chunks_table),
        tenant=sql.Identifier(settings.chunks_tenant_column),
        coll=sql.Identifier(settings.chunks_collection_column),
    )
    async with await psycopg.AsyncConnection.connect(settings.database_url.get_secret_value()) as conn:
        cursor = await conn.execute(query, (tenant_id, collection_id))
        return [row[0] for row in await cursor.fetchall() if isinstance(row[0], str) and row[0]]


async def _texts_through_rest(settings: TaskSettings, tenant_id: str, collection_id: str) -> list[str]:
    """Pages ordered by the text (a stable order for offsets). The first page asks for the exact
    row count, and pages are read until that many rows came back: a server that caps responses
    below the page size asked for still yields every row, in more pages."""
    from postgrest.types import CountMethod

    key = settings.supabase_key.get_secret_value()
    client = await connect(settings.supabase_url, key)
    schema, table = split_table(settings.chunks_table)
    column = settings.chunks_text_column
    texts: list[str] = []
    try:
        offset, total = 0, None
        while total is None or offset < total:
            query: Any = (
                client.schema(schema)
                .table(table)
                .select(column, count=CountMethod.exact if total is None else None)
                .eq(settings.chunks_tenant_column, tenant_id)
                .eq(settings.chunks_collection_column, collection_id)
                .order(column)
                .range(offset, offset + PAGE_ROWS - 1)
            )
            try:
                response = await query.execute()
            except Exception as exc:
                where = f"{schema}.{table}"
                detail = describe_api_error(exc, (key,))
                raise CollectionTextsError(f"reading {where} through the Supabase REST API failed: {detail}") from None
            rows = response.data
            total = response.count if total is None and response.count is not None else total
            texts += [t for row in rows if isinstance(row, dict) and isinstance(t := row.get(column), str) and t]
            offset += len(rows)
            if not rows or total is None:  # no count given: a page is all there is to trust
                break
        return texts
    finally:
        await close_client(client)
