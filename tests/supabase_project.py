"""A local stand-in for a whole Supabase project: a real Postgres, the Realtime stand-in and the
PostgREST stand-in behind one gateway port, so one project URL serves the feed and the REST calls,
as on Supabase. Shared by the Supabase test modules."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg

from tests.postgrest_standin import PostgrestStandIn
from tests.realtime_standin import RealtimeStandIn

KEY = "test-service-key"
HEARTBEAT = "shared_cache_heartbeat"
SCHEMA_SQL = f"""
CREATE TABLE documents (id text PRIMARY KEY, tenant_id text, collection_id text, title text);
CREATE TABLE document_chunks (id serial PRIMARY KEY, tenant_id text, document_id text, collection_id text,
                              content text);
CREATE TABLE agents (id text PRIMARY KEY, tenant_id text, name text);
CREATE TABLE collections (id text PRIMARY KEY, tenant_id text);
CREATE TABLE notes_without_key (tenant_id text, body text);
ALTER TABLE documents REPLICA IDENTITY FULL;
ALTER TABLE document_chunks REPLICA IDENTITY FULL;
ALTER TABLE agents REPLICA IDENTITY FULL;
ALTER TABLE collections REPLICA IDENTITY FULL;
CREATE TABLE {HEARTBEAT} (id text PRIMARY KEY, beat bigint NOT NULL, touched_at timestamptz NOT NULL DEFAULT now());
CREATE PUBLICATION supabase_realtime
    FOR TABLE documents, document_chunks, agents, collections, notes_without_key, {HEARTBEAT};
"""
TABLES = ("public.documents", "public.document_chunks", "public.agents", "public.collections")


class SupabaseProject:
    """``async with SupabaseProject(dsn) as project:`` -> ``project.url`` is the project URL."""

    def __init__(self, dsn: str, **realtime_options: Any) -> None:
        self.dsn = dsn
        self.realtime = RealtimeStandIn(dsn, api_key=KEY, **realtime_options)
        self.rest: PostgrestStandIn | None = None

    @property
    def url(self) -> str:
        assert self.rest is not None
        return self.rest.url

    async def __aenter__(self) -> SupabaseProject:
        await self.realtime.start()
        self.rest = await PostgrestStandIn(self.dsn, api_key=KEY, realtime_port=self.realtime.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.rest is not None:
            await self.rest.stop()
        await self.realtime.stop()


@contextlib.asynccontextmanager
async def altered(dsn: str, change: str, undo: str) -> AsyncIterator[None]:
    """Run ``change`` on the database for the duration of the block, then ``undo``."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(change)
        try:
            yield
        finally:
            await conn.execute(undo)
