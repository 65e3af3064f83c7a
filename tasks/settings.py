"""Settings of the Celery tasks and the Celery app, from the environment (prefix ``SHARED_CACHE_WORKER_``).

What a task needs to run: the broker, the embedding provider, the database it reads chunk texts from,
time limits and retries. Where changes come from is the listener's business
(``worker.settings.ListenerSettings``). The library's own settings (``SHARED_CACHE_REDIS_URL``...) are
read by ``shared_cache.CacheSettings`` as usual.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.supabase_api import project_url


class TaskSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHARED_CACHE_WORKER_", extra="ignore", hide_input_in_errors=True)

    broker_url: SecretStr = Field(SecretStr("redis://localhost:6379/1"), description="Celery broker (Redis) URL.")
    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres@localhost:5432/postgres"),
        description="Postgres DSN (a direct connection): the logical replication source, warm_collection texts.",
    )
    supabase_url: str = Field(
        "",
        description="Supabase project URL; when set, warm_collection reads chunk texts through its REST API.",
    )
    supabase_key: SecretStr = Field(SecretStr(""), description="Supabase service-role key, for the REST API.")
    chunks_table: str = Field("document_chunks", description="Table warm_collection reads chunk texts from.")
    chunks_text_column: str = Field("content", description="Column holding a chunk's text.")
    chunks_tenant_column: str = Field("tenant_id", description="Column holding a chunk's tenant.")
    chunks_collection_column: str = Field("collection_id", description="Column holding a chunk's collection.")
    embedding_provider: Literal["none", "local", "openai"] = Field(
        "none", description="Warming provider: none, local (sentence-transformers) or openai (HTTP API)."
    )
    embedding_model: str = Field("all-MiniLM-L6-v2", description="Model name (also part of cache keys).")
    embedding_batch_size: int = Field(
        64,
        ge=1,
        description="Texts per model batch when warming (the local model sorts a task's texts by length first);"
        " texts per request to an OpenAI-compatible API.",
    )
    openai_base_url: str = Field("https://api.openai.com/v1", description="OpenAI-compatible API base URL.")
    openai_api_key: SecretStr = Field(SecretStr(""), description="API key for the OpenAI-compatible provider.")
    task_time_limit_s: int = Field(120, ge=1, description="Hard time limit of a Celery task.")
    task_max_retries: int = Field(8, ge=0, description="Retries of a failing task (exponential backoff).")
    visibility_timeout_s: int = Field(
        300, ge=1, description="Seconds before an unacknowledged task (its worker died) is delivered again."
    )
    reclaim_interval_s: int = Field(
        3600, ge=0, description="Seconds between reclaim sweeps of invalidated permanent entries (beat; 0 = off)."
    )
    sentry_dsn: SecretStr = Field(SecretStr(""), description="Sentry DSN; empty disables Sentry.")

    @field_validator("supabase_url")
    @classmethod
    def _project_url(cls, value: str) -> str:
        return project_url(value) if value.strip() else ""
