"""The demo's data: schema, sample rows, and the writer that changes them while ``./run`` runs.

Every document update bumps ``documents.version`` and records, in the same statement, when that
version was committed (``document_versions``): the stale-read check of the readers compares what a
read returned with the versions committed long enough before it began. ``document_versions`` is
not a watched table (the listener's rules do not name it), so it causes no invalidation of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass

TENANTS = ("acme", "globex", "initech")
SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (id text PRIMARY KEY, tenant_id text NOT NULL, name text);
CREATE TABLE IF NOT EXISTS agents (id text PRIMARY KEY, tenant_id text NOT NULL, name text, model text);
CREATE TABLE IF NOT EXISTS documents (
    id text PRIMARY KEY, tenant_id text NOT NULL, collection_id text, title text, version int NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS document_versions (
    document_id text NOT NULL, version int NOT NULL, committed_at timestamptz NOT NULL,
    PRIMARY KEY (document_id, version));
CREATE TABLE IF NOT EXISTS document_chunks (
    id serial PRIMARY KEY, tenant_id text NOT NULL, document_id text, collection_id text, content text,
    touched_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE INDEX IF NOT EXISTS document_chunks_touched ON document_chunks (touched_at DESC);
ALTER TABLE collections REPLICA IDENTITY FULL;
ALTER TABLE agents REPLICA IDENTITY FULL;
ALTER TABLE documents REPLICA IDENTITY FULL;
ALTER TABLE document_chunks REPLICA IDENTITY FULL;
"""
# One statement (so one commit right after the stamp): the new version and when it was committed.
UPDATE_DOCUMENT = """
WITH bumped AS (
    UPDATE documents SET version = version + 1, title = %s WHERE id = %s RETURNING id, version)
INSERT INTO document_versions SELECT id, version, clock_timestamp() FROM bumped
"""
WORDS = (
    "cache tenant vector query agent document embedding retrieval latency invalidation collection index "
    "policy contract invoice quarterly revenue onboarding security audit model prompt answer customer "
    "shipment warehouse forecast region pricing renewal support ticket escalation release roadmap"
).split()


def chunk_text(rng: random.Random, label: str) -> str:
    """A chunk of plausible length (20 to 60 words), different every call."""
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
    return f"{label}: {words}."


def hot_document(rng: random.Random, tenant: str, docs: int) -> str:
    """A few hot documents per tenant, like real traffic (exponential popularity)."""
    return f"{tenant}-d{min(int(rng.expovariate(0.3)), docs - 1)}"


def seed(dsn: str, docs_per_tenant: int) -> int:
    """Create the schema and the sample rows (idempotent); returns the number of chunks."""
    import psycopg

    rng = random.Random(7)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
        for tenant in TENANTS:
            for c in range(2):
                conn.execute(
                    "INSERT INTO collections VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    (f"{tenant}-c{c}", tenant, f"{tenant} collection {c}"),
                )
            for a in range(2):
                conn.execute(
                    "INSERT INTO agents VALUES (%s, %s, %s, 'gpt') ON CONFLICT DO NOTHING",
                    (f"{tenant}-a{a}", tenant, f"agent {a}"),
                )
            for d in range(docs_per_tenant):
                doc = f"{tenant}-d{d}"
                inserted = conn.execute(
                    "INSERT INTO documents VALUES (%s, %s, %s, %s, 0) ON CONFLICT DO NOTHING RETURNING id",
                    (doc, tenant, f"{tenant}-c{d % 2}", f"{tenant} document {d}"),
                ).fetchone()
                if inserted:
                    for k in range(3):
                        conn.execute(
                            "INSERT INTO document_chunks (tenant_id, document_id, collection_id, content)"
                            " VALUES (%s, %s, %s, %s)",
                            (tenant, doc, f"{tenant}-c{d % 2}", chunk_text(rng, f"{doc} chunk {k}")),
                        )
        row = conn.execute("SELECT count(*) FROM document_chunks").fetchone()
    return int(row[0]) if row else 0


@dataclass
class Writes:
    """What the writer committed."""

    documents: int = 0
    chunks_inserted: int = 0
    chunks_updated: int = 0


async def write(dsn: str, docs: int, interval: float, until: float, stop: asyncio.Event) -> Writes:
    """Update documents (a new version each time) and insert or rewrite chunks, until ``until``."""
    import psycopg

    rng = random.Random(42)
    done = Writes()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while time.time() < until and not stop.is_set():
            tenant = rng.choice(TENANTS)
            doc = hot_document(rng, tenant, docs)
            await conn.execute(UPDATE_DOCUMENT, (f"{doc} edited at {time.strftime('%H:%M:%S')}", doc))
            done.documents += 1
            roll = rng.random()
            if roll < 0.3:
                await conn.execute(
                    "INSERT INTO document_chunks (tenant_id, document_id, collection_id, content)"
                    " SELECT tenant_id, id, collection_id, %s FROM documents WHERE id = %s",
                    (chunk_text(rng, f"{doc} new chunk {done.chunks_inserted}"), doc),
                )
                done.chunks_inserted += 1
            elif roll < 0.5:
                await conn.execute(
                    "UPDATE document_chunks SET content = %s, touched_at = clock_timestamp()"
                    " WHERE id = (SELECT min(id) FROM document_chunks WHERE document_id = %s)",
                    (chunk_text(rng, f"{doc} rewritten {done.chunks_updated}"), doc),
                )
                done.chunks_updated += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):  # not wait_for: on 3.11 it can swallow a cancellation
                    await stop.wait()
    return done
