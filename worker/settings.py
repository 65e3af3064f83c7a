"""Settings of the change listener (``python -m worker``), from the environment.

Prefix ``SHARED_CACHE_WORKER_``, like the tasks' settings (``tasks.settings.TaskSettings``): one
deployment sets one environment, and each process reads the part it needs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tasks.supabase_api import project_url

SOURCE_NAMES = ("postgres", "supabase", "redis")


class ListenerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHARED_CACHE_WORKER_", extra="ignore", hide_input_in_errors=True)

    sources: Annotated[list[Literal["postgres", "supabase", "redis"]], NoDecode] = Field(
        default_factory=lambda: ["postgres"],  # type: ignore[arg-type]
        min_length=1,
        description="Change sources the listener runs: comma-separated (postgres,redis) or a JSON list.",
    )
    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres@localhost:5432/postgres"),
        description="Postgres DSN (a direct connection): the logical replication source, warm_collection texts.",
    )
    slot_name: str = Field("shared_cache", description="Logical replication slot (wal2json) the source owns.")
    poll_interval_ms: int = Field(20, ge=1, description="How often the Postgres source polls its slot.")
    poll_batch: int = Field(5000, ge=1, description="Most changes read from the slot per poll.")
    supabase_url: str = Field(
        "",
        description="Supabase project URL (https://<ref>.supabase.co); the realtime and REST URLs derive from it.",
    )
    supabase_key: SecretStr = Field(
        SecretStr(""), description="Supabase service-role key, for the realtime feed and the REST calls."
    )
    realtime_heartbeat_table: str = Field(
        "shared_cache_heartbeat",
        description="Table (in the supabase_realtime publication) whose row the realtime liveness probe upserts.",
    )
    realtime_probe_interval_s: float = Field(5.0, gt=0, description="Seconds between liveness probes.")
    realtime_probe_timeout_s: float = Field(
        10.0, gt=0, description="A probe change not back through the feed within this is an alert."
    )
    changes_channel: str = Field(
        "shared_cache:changes", description="Redis pub/sub channel where services publish ChangeEvents."
    )
    rules_file: str = Field("", description="TOML file of table rules; empty = the built-in defaults.")
    coalesce_window_ms: int = Field(
        10,
        ge=0,
        description="Changes arriving within this window are planned and dispatched together; after a quiet"
        " spell this long, the first change is sent at once.",
    )
    ack_timeout_s: float = Field(
        3.0,
        gt=0,
        description="Seconds an invalidation may take to be applied; then, if it is no longer in the broker's"
        " queue, it is sent again (with backoff).",
    )
    max_pending: int = Field(
        10_000, ge=1, description="Most invalidations sent and not yet applied; beyond it, reading of changes pauses."
    )
    drain_s: float = Field(
        5.0, ge=0, description="Seconds the listener waits at shutdown for sent invalidations to be applied."
    )
    stop_wait_s: float = Field(
        10.0,
        gt=0,
        description="Seconds a stopping listener waits for each of its parts (tasks, sources, connections) to"
        " close; one that does not is logged and left behind, so a stop never hangs.",
    )
    warm_task_texts: int = Field(1024, ge=1, description="Most texts in one warming task the listener sends.")
    dead_letter_key: str = Field("shared_cache:dead_letters", description="Redis list of parked bad events.")
    dead_letter_max: int = Field(10_000, ge=1, description="Most dead letters kept (oldest dropped).")
    metrics_port: int = Field(0, ge=0, le=65535, description="Port of the listener's Prometheus metrics (0 = off).")
    sentry_dsn: SecretStr = Field(SecretStr(""), description="Sentry DSN; empty disables Sentry.")

    @field_validator("sources", mode="before")
    @classmethod
    def _split_sources(cls, value: Any) -> Any:
        # Operators write "postgres,redis" in an env file; a JSON list is accepted too.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import orjson

                try:
                    return orjson.loads(text)
                except orjson.JSONDecodeError as exc:
                    raise ValueError(f"sources {value!r} is not a JSON list ({exc})") from None
            value = [part.strip() for part in text.split(",") if part.strip()]
        if isinstance(value, list):
            unknown = [name for name in value if name not in SOURCE_NAMES]
            if unknown:  # named here: the settings hide inputs in errors (other fields hold secrets)
                raise ValueError(f"unknown source {unknown[0]!r}; expected some of {', '.join(SOURCE_NAMES)}")
        return value

    @field_validator("supabase_url")
    @classmethod
    def _project_url(cls, value: str) -> str:
        return project_url(value) if value.strip() else ""

    @model_validator(mode="after")
    def _supabase_configured(self) -> ListenerSettings:
        if "supabase" in self.sources and not (self.supabase_url and self.supabase_key.get_secret_value()):
            raise ValueError(
                "the supabase source needs SHARED_CACHE_WORKER_SUPABASE_URL (the project URL) and "
                "SHARED_CACHE_WORKER_SUPABASE_KEY (the service-role key)"
            )
        return self
