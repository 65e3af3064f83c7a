"""Settings of the worker (listener and Celery workers), from the environment.

They live in ``tasks`` (which the worker imports, never the other way) so tasks can read them.

Prefix ``SHARED_CACHE_WORKER_``; the library's own settings (``SHARED_CACHE_REDIS_URL``...) are read
by ``shared_cache.CacheSettings`` as usual.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHARED_CACHE_WORKER_", extra="ignore")

    broker_url: SecretStr = Field(SecretStr("redis://localhost:6379/1"), description="Celery broker (Redis) URL.")
    sources: list[Literal["postgres", "supabase", "redis"]] = Field(
        default_factory=lambda: ["postgres"],  # type: ignore[arg-type]
        description="Change sources the listener runs (JSON list).",
    )
    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres@localhost:5432/postgres"),
        description="Postgres DSN for the logical replication source (a direct connection).",
    )
    slot_name: str = Field("shared_cache", description="Logical replication slot (wal2json) the source owns.")
    poll_interval_ms: int = Field(20, ge=1, description="How often the Postgres source polls its slot.")
    poll_batch: int = Field(5000, ge=1, description="Most changes read from the slot per poll.")
    supabase_url: str = Field("", description="Supabase project URL, for the realtime source.")
    supabase_key: SecretStr = Field(SecretStr(""), description="Supabase key, for the realtime source.")
    realtime_heartbeat_table: str = Field(
        "shared_cache_heartbeat", description="Table whose row the realtime liveness probe updates."
    )
    realtime_probe_interval_s: float = Field(5.0, gt=0, description="Seconds between liveness probes.")
    realtime_probe_timeout_s: float = Field(
        10.0, gt=0, description="A probe change not back through the feed within this is an alert."
    )
    changes_channel: str = Field(
        "shared_cache:changes", description="Redis pub/sub channel where services publish ChangeEvents."
    )
    rules_file: str = Field("", description="TOML file of table rules; empty = the built-in defaults.")
    chunks_table: str = Field("document_chunks", description="Table warm_collection reads chunk texts from.")
    chunks_text_column: str = Field("content", description="Column holding a chunk's text.")
    chunks_tenant_column: str = Field("tenant_id", description="Column holding a chunk's tenant.")
    chunks_collection_column: str = Field("collection_id", description="Column holding a chunk's collection.")
    coalesce_window_ms: int = Field(
        10, ge=0, description="Changes arriving within this window are planned and dispatched together."
    )
    dead_letter_key: str = Field("shared_cache:dead_letters", description="Redis list of parked bad events.")
    dead_letter_max: int = Field(10_000, ge=1, description="Most dead letters kept (oldest dropped).")
    embedding_provider: Literal["none", "local", "openai"] = Field(
        "none", description="Warming provider: none, local (sentence-transformers) or openai (HTTP API)."
    )
    embedding_model: str = Field("all-MiniLM-L6-v2", description="Model name (also part of cache keys).")
    embedding_batch_size: int = Field(64, ge=1, description="Texts per provider call when warming.")
    openai_base_url: str = Field("https://api.openai.com/v1", description="OpenAI-compatible API base URL.")
    openai_api_key: SecretStr = Field(SecretStr(""), description="API key for the OpenAI-compatible provider.")
    task_time_limit_s: int = Field(120, ge=1, description="Hard time limit of a Celery task.")
    task_max_retries: int = Field(8, ge=0, description="Retries of a failing task (exponential backoff).")
    visibility_timeout_s: int = Field(
        300, ge=1, description="Seconds before an unacknowledged task (its worker died) is delivered again."
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="Port of the listener's Prometheus metrics (0 = off).")
    sentry_dsn: SecretStr = Field(SecretStr(""), description="Sentry DSN; empty disables Sentry.")
