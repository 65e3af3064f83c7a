"""Build the configured sources (``SHARED_CACHE_WORKER_SOURCES``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from worker.rules import Planner
from worker.settings import ListenerSettings
from worker.sources.base import ChangeSource

if TYPE_CHECKING:
    from worker.listener import Listener


def build_sources(
    settings: ListenerSettings, planner: Planner, listener: Listener, redis_url: str
) -> list[ChangeSource]:
    sources: list[ChangeSource] = []
    for name in settings.sources:
        if name == "postgres":
            from worker.sources.postgres import PostgresLogicalSource

            sources.append(
                PostgresLogicalSource(
                    settings.database_url.get_secret_value(),
                    planner.tables,
                    slot=settings.slot_name,
                    poll_interval=settings.poll_interval_ms / 1000.0,
                    batch=settings.poll_batch,
                    on_dead_letter=listener.on_dead_letter,
                )
            )
        elif name == "redis":
            from worker.sources.redis_pubsub import RedisPubSubSource

            sources.append(
                RedisPubSubSource(
                    redis_url, settings.changes_channel, planner.tables, listener.on_gap, listener.on_dead_letter
                )
            )
        elif name == "supabase":
            from worker.sources.supabase import SupabaseRealtimeSource

            tables = [table for (schema, table) in planner.rules if schema == "public"]
            sources.append(
                SupabaseRealtimeSource.from_settings(
                    settings,
                    tables,
                    on_gap=listener.on_gap,
                    on_dead_letter=listener.on_dead_letter,
                    touch_heartbeat=rest_heartbeat(settings),
                )
            )
    return sources


def rest_heartbeat(settings: ListenerSettings) -> Callable[[], Awaitable[None]]:
    """Upsert the heartbeat row through Supabase's REST API (PostgREST), as the probe needs."""
    import httpx

    url = f"{settings.supabase_url.rstrip('/')}/rest/v1/{settings.realtime_heartbeat_table}"
    key = settings.supabase_key.get_secret_value()
    headers = {
        "apikey": key,
        "Authorization": f"Bearer {key}",
        "Prefer": "resolution=merge-duplicates,return=minimal",
    }

    async def touch() -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            beat = datetime.now(UTC).isoformat()
            response = await client.post(url, headers=headers, json={"id": 1, "beat": beat})
            response.raise_for_status()

    return touch
