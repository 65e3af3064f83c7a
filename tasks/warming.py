"""Warming tasks: batch embedding precomputation through the library's batch path.

Texts already cached are skipped by ``get_embeddings_batch_with_cache`` (one lookup, the provider
is called with the misses only), so a task that runs twice costs one lookup the second time.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from shared_cache import get_embeddings_batch_with_cache
from tasks._runtime import run
from tasks.invalidation import TASK_OPTIONS
from tasks.providers import EmbeddingProvider
from tasks.settings import TaskSettings

_provider: EmbeddingProvider | None = None


def provider() -> EmbeddingProvider:
    """The configured provider, built once per process (a local model loads once)."""
    global _provider
    if _provider is None:
        from tasks.providers import make_provider

        made = make_provider(TaskSettings())
        if made is None:
            raise RuntimeError("warming needs SHARED_CACHE_WORKER_EMBEDDING_PROVIDER=local or openai")
        _provider = made
    return _provider


async def warm(tenant_id: str, texts: list[str], embedder: EmbeddingProvider, batch_size: int) -> dict[str, Any]:
    totals = {"texts": len(texts), "cache_hits": 0, "generated": 0}
    for start in range(0, len(texts), batch_size):
        _, metrics = await get_embeddings_batch_with_cache(
            texts[start : start + batch_size], tenant_id, embedder.model_name, embedder
        )
        totals["cache_hits"] += metrics["cache_hits"]
        totals["generated"] += metrics["cache_misses"]
    return totals


@shared_task(name="shared_cache.warm_texts", queue="warming", **TASK_OPTIONS)
def warm_texts(tenant_id: str, texts: list[str]) -> dict[str, Any]:
    """Embed and cache ``texts`` for ``tenant_id`` (skipping cached ones)."""
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a list of str")
    embedder = provider()
    return run(warm(tenant_id, texts, embedder, TaskSettings().embedding_batch_size))


@shared_task(name="shared_cache.warm_collection", queue="warming", **TASK_OPTIONS)
def warm_collection(tenant_id: str, collection_id: str) -> dict[str, Any]:
    """Embed every chunk text of a collection (read from Postgres), in batches."""
    from tasks.collection_texts import collection_texts

    settings = TaskSettings()
    texts = run(collection_texts(settings, tenant_id, collection_id))
    return run(warm(tenant_id, texts, provider(), settings.embedding_batch_size))
