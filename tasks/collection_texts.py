"""Read a collection's chunk texts from Postgres for ``warm_collection``."""

from __future__ import annotations

from tasks.settings import TaskSettings


async def collection_texts(settings: TaskSettings, tenant_id: str, collection_id: str) -> list[str]:
    """Chunk texts of one collection, using the ``document_chunks`` columns of the settings."""
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
