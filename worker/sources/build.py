"""Build the configured sources (``SHARED_CACHE_WORKER_SOURCES``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from worker.events import ChangeEvent
from worker.rules import PlanError, Planner
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
            sources.append(supabase_source(settings, planner, listener))
    return sources


def supabase_source(settings: ListenerSettings, planner: Planner, listener: Listener) -> ChangeSource:
    """The realtime source over the rules' tables (qualified, like every source's), its heartbeat
    upserted through supabase-py, and changes the rules cannot plan treated as lost (gaps)."""
    from worker.sources.supabase import SupabaseRealtimeSource
    from worker.sources.supabase_heartbeat import SupabaseHeartbeat

    if not settings.supabase_url:
        raise ValueError("the supabase source needs SHARED_CACHE_WORKER_SUPABASE_URL (the project URL)")
    key = settings.supabase_key.get_secret_value()
    return SupabaseRealtimeSource(
        settings.supabase_url,
        key,
        planner.tables,
        on_gap=listener.on_gap,
        on_dead_letter=listener.on_dead_letter,
        heartbeat=SupabaseHeartbeat(settings.supabase_url, key, settings.realtime_heartbeat_table),
        plan_check=plan_check_for(planner),
        probe_interval=settings.realtime_probe_interval_s,
        probe_timeout=settings.realtime_probe_timeout_s,
    )


def plan_check_for(planner: Planner) -> Callable[[ChangeEvent], str | None]:
    """Why ``planner`` cannot plan an event (None if it can): for a source that must treat such an
    event as lost rather than only park it."""

    def plan_check(event: ChangeEvent) -> str | None:
        try:
            planner.plan(event)
        except Exception as exc:  # PlanError, or anything else planning raised: not plannable either
            return str(exc) if isinstance(exc, PlanError) else f"{type(exc).__name__}: {exc}"
        return None

    return plan_check
