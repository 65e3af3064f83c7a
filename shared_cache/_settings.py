"""Settings of the library, read from the environment (prefix ``SHARED_CACHE_``)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CacheSettings(BaseSettings):
    """Every knob of the read path. ``SHARED_CACHE_REDIS_URL=rediss://user:pw@host:6380/0`` etc."""

    model_config = SettingsConfigDict(env_prefix="SHARED_CACHE_", extra="ignore")

    redis_url: SecretStr = Field(
        SecretStr("redis://localhost:6379/0"),
        description="redis://, rediss:// (TLS) or unix:///path.sock?db=0; user and password may be in the URL.",
    )
    redis_cluster: bool = Field(False, description="The URL names one node of a Redis Cluster: use a cluster client.")
    redis_sentinels: str = Field(
        "", description="Sentinels as host:port,host:port; with redis_sentinel_service, the master is asked of them."
    )
    redis_sentinel_service: str = Field("", description="Name of the master the sentinels monitor.")
    key_prefix: str = Field("sc:", description="Prepended to every key, before the {tenant} hash tag.")
    memory_enabled: bool = Field(True, description="Keep an in-process memory tier in front of Redis.")
    memory_max_entries: int = Field(10_000, ge=1, description="Memory tier: most entries kept.")
    memory_max_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Memory tier: most payload bytes kept.")
    memory_ttl_cap_seconds: float = Field(
        60.0, gt=0, description="Memory tier: longest an entry lives, whatever its Redis TTL."
    )
    plan_cache_size: int = Field(
        10_000,
        ge=0,
        description="Key plans kept (the validated keys of recently read identities, 1-2.5 KB each; the"
        " oldest goes first; 0 keeps none).",
    )
    socket_timeout_seconds: float = Field(0.5, gt=0, description="Redis socket read/write timeout.")
    connect_timeout_seconds: float = Field(0.5, gt=0, description="Redis connect timeout.")
    max_connections: int = Field(64, ge=1, description="Connections per event loop.")
    breaker_threshold: int = Field(3, ge=1, description="Consecutive Redis failures that open the breaker.")
    breaker_reset_seconds: float = Field(2.0, gt=0, description="How long the open breaker skips Redis.")
    lease_ms: int = Field(3000, ge=10, description="How long one process holds the right to fetch a missing key.")
    lease_wait_ms: int = Field(3000, ge=0, description="How long other processes wait for the lease holder's value.")
    negative_ttl_seconds: int = Field(
        0, ge=0, description="Cache a 'not found' this long (0 disables negative caching)."
    )
    ttl_jitter: float = Field(
        0.05, ge=0, lt=1, description="Fraction by which TTLs are randomly shortened to spread expiry."
    )
    eviction_channel: str = Field(
        "shared_cache:evictions", description="Pub/sub channel of memory-tier eviction events."
    )
    stats_publish_seconds: float = Field(
        10.0, ge=0, description="How often a process leaves its stats in Redis for operators (0 = never)."
    )
    stats_top_tenants: int = Field(
        20, ge=0, description="Busiest tenants (hits, misses, hit ratio, p99) in each process's stats report."
    )
    prometheus_tenant_metrics: bool = Field(
        False, description="Export the busiest tenants' figures to Prometheus too (one series set per tenant)."
    )
    subscriber_enabled: bool = Field(
        True, description="Run the eviction subscriber (needed whenever the memory tier is on)."
    )

    @field_validator("key_prefix")
    @classmethod
    def _prefix_has_no_braces(cls, value: str) -> str:
        if any(ch in value for ch in "{}*?[] \n\r\t"):
            raise ValueError(f"key_prefix {value!r} must not contain braces, glob characters or spaces")
        return value
