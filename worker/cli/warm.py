"""``warm``: embed and cache a collection's chunk texts, queued or here and now."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import click

from shared_cache import InvalidKeyError, SharedCacheError, collection_scopes, validate_tenant_id
from tasks.contracts import WARMING_QUEUE, WarmCollectionCall
from worker.urls import database_url_problem, http_url_problem

from .errors import BadInput, CliFailure, describe
from .state import State, check_url


@click.command()
@click.option("--tenant", required=True, help="Tenant id.")
@click.option("--collection", required=True, help="Collection whose chunk texts to embed.")
@click.option("--inline", is_flag=True, help="Run warm_collection here and wait, instead of queueing it.")
@click.pass_obj
def warm(state: State, tenant: str, collection: str, inline: bool) -> None:
    """Embed and cache every chunk text of a collection: send the shared_cache.warm_collection task
    to the warming queue (prints its id), or with --inline run it in this process (needs the
    database and an embedding provider, SHARED_CACHE_WORKER_EMBEDDING_PROVIDER)."""
    try:
        validate_tenant_id(tenant)
        collection_scopes(tenant, collection)  # a collection id the cache can key
    except InvalidKeyError as exc:
        raise BadInput(str(exc)) from None
    if inline:
        result = warm_inline(state, tenant, collection)
        state.emit(
            result,
            f"warmed collection {collection} of tenant {tenant}: {result['texts']} texts, "
            f"{result['generated']} embedded, {result['cache_hits']} already cached",
        )
        return
    celery = state.celery()
    try:
        call = WarmCollectionCall(tenant, collection)
        task = celery.send_task(call.task, kwargs=call.to_wire())
    except Exception as exc:  # kombu's OperationalError and friends: the broker is away
        raise CliFailure(state.scrub(f"broker {state.broker_display}: {describe(exc)}")) from None
    finally:
        celery.close()
    state.emit({"task_id": task.id, "queue": WARMING_QUEUE}, f"queued warm_collection as task {task.id}")


def warm_inline(state: State, tenant: str, collection: str) -> dict[str, Any]:
    """Run the warm_collection task in this process. The task reads its settings from the
    environment, so the group's --redis-url and --key-prefix are passed that way."""
    import psycopg

    state.cache  # noqa: B018 (settings errors first, as usage errors)
    settings = state.tasks
    check_url("SHARED_CACHE_WORKER_DATABASE_URL", settings.database_url.get_secret_value(), database_url_problem)
    if settings.embedding_provider == "openai":
        check_url("SHARED_CACHE_WORKER_OPENAI_BASE_URL", settings.openai_base_url, http_url_problem)
    overrides = {"SHARED_CACHE_REDIS_URL": state.redis_url, "SHARED_CACHE_KEY_PREFIX": state.key_prefix}
    with environ({k: v for k, v in overrides.items() if v is not None}):
        state.celery()  # the app the task proxy resolves to
        from tasks.warming import warm_collection

        try:
            return dict(warm_collection.run(tenant, collection))
        except (RuntimeError, psycopg.Error, SharedCacheError, OSError) as exc:
            raise CliFailure(state.scrub(f"warming failed: {describe(exc)}")) from None


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a call that reads its settings from them (the warming task)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
