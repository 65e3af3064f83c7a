"""The service that the service-level benchmark loads (``uvicorn bench.service_app:app``).

A Starlette app with a psycopg connection pool per worker process and two endpoints that return the
same row: ``/cached/{tenant}/{doc}`` reads it through ``get_with_cache_aside`` (memory tier on) and
``/direct/{tenant}/{doc}`` runs the same query on Postgres. Settings come from the environment: the
library's own (``SHARED_CACHE_*``) and ``BENCH_SERVICE_DSN`` / ``BENCH_SERVICE_POOL_SIZE``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared_cache import CacheManager, get_with_cache_aside

QUERY = "SELECT id, tenant_id, title, body, version FROM documents WHERE tenant_id = %s AND id = %s"
_pool: AsyncConnectionPool | None = None


async def fetch(resource_id: str, tenant_id: str, ctx: Any = None) -> dict[str, Any] | None:
    assert _pool is not None
    async with _pool.connection() as conn:
        cursor = await conn.execute(QUERY, (tenant_id, resource_id))
        row = await cursor.fetchone()
    if row is None:
        return None
    return {"id": row[0], "tenant_id": row[1], "title": row[2], "body": row[3], "version": row[4]}


def _json(value: Any) -> Response:
    status = 200 if value is not None else 404
    return Response(orjson.dumps(value), status_code=status, media_type="application/json")


async def cached(request: Request) -> Response:
    params = request.path_params
    value, _ = await get_with_cache_aside("document", params["doc"], params["tenant"], fetch)
    return _json(value)


async def direct(request: Request) -> Response:
    params = request.path_params
    start = time.perf_counter()
    value = await fetch(params["doc"], params["tenant"])
    # timed like the cached reads, into the same stats report (source "direct")
    CacheManager.get_instance().stats.sample("document", "direct", (time.perf_counter() - start) * 1000)
    return _json(value)


async def healthz(request: Request) -> Response:
    return Response(b"ok")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    global _pool
    size = int(os.environ.get("BENCH_SERVICE_POOL_SIZE", "8"))
    _pool = AsyncConnectionPool(
        os.environ["BENCH_SERVICE_DSN"], min_size=size, max_size=size, open=False, kwargs={"autocommit": True}
    )
    await _pool.open(wait=True)
    manager = CacheManager.configure()  # SHARED_CACHE_* from the environment
    await manager.start()  # the eviction subscriber (and the stats reports the benchmark reads)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # Redis away at shutdown: the last report is lost
            await manager.publish_stats()
        await manager.close()
        await _pool.close()


app = Starlette(
    routes=[
        Route("/cached/{tenant}/{doc}", cached),
        Route("/direct/{tenant}/{doc}", direct),
        Route("/healthz", healthz),
    ],
    lifespan=lifespan,
)
