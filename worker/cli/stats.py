"""``stats``: reads per data type, tier and tenant over every process, the listener, Redis, keys per tenant."""

from __future__ import annotations

import click

from shared_cache import InvalidKeyError, validate_tenant_id

from .errors import BadInput
from .state import State
from .stats_collect import collect_stats
from .stats_text import render_stats


@click.command()
@click.option(
    "--max-scan",
    default=100_000,
    show_default=True,
    type=click.IntRange(min=0),
    help="Per tenant, stop SCANning after walking about this many keys (0: no key counts per tenant).",
)
@click.option(
    "--max-tenants",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most tenants shown (busiest first).",
)
@click.option(
    "--tenant",
    "tenants",
    multiple=True,
    help="Show these tenants only (default: the busiest tenants reported and those the worker knows).",
)
@click.pass_obj
def stats(state: State, max_scan: int, max_tenants: int, tenants: tuple[str, ...]) -> None:
    """Reads per data type and tier (hits, misses, hit ratio, p50/p99 latency) summed over every
    process that reported in the last minute; each process's memory tier and eviction latency; the
    listener's counters and slot lag; Redis memory; dead letters; reads per tenant (hits, misses,
    hit ratio, p99) for the busiest tenants; and keys cached per tenant.

    Latency percentiles cannot be added up over processes: the highest of the processes' values is
    shown. Each process reports its own busiest tenants (a bounded number), so a tenant's figures
    add up over the processes where it is among the busiest.

    The key counts per tenant SCAN Redis with MATCH on each tenant's keys (bounded by --max-scan keys
    walked per tenant): cheap on a small keyspace, real work on a large one. Run it from an operator's
    shell, not from a health check.
    """
    try:
        chosen = [validate_tenant_id(tenant) for tenant in tenants]
    except InvalidKeyError as exc:
        raise BadInput(str(exc)) from None
    dead_letter_key = state.listener.dead_letter_key
    cluster = state.cache.redis_cluster
    data = state.run(lambda manager: collect_stats(manager, dead_letter_key, max_scan, max_tenants, chosen, cluster))
    state.emit(data, lambda: render_stats(data))
