"""Build the configured sources (``SHARED_CACHE_WORKER_SOURCES``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.rules import Planner
from worker.settings import WorkerSettings
from worker.sources.base import ChangeSource

if TYPE_CHECKING:
    from worker.listener import Listener


def build_sources(settings: WorkerSettings, planner: Planner, listener: Listener, redis_url: str) -> list[ChangeSource]:
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
            from worker.sources.supabase import build_supabase_source

            sources.append(build_supabase_source(settings, planner, listener))
    return sources
