"""Warming tasks: batch embedding precomputation through the library's batch path.

A task hands all its texts to ``get_embeddings_batch_with_cache`` at once: texts already cached are
skipped (one lookup), and the provider gets every miss in one call. The local model then sorts them
by length before it cuts its own batches, so each batch pads to texts of about the same length,
instead of each fixed slice of the task padding to its longest text.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from shared_cache import get_embeddings_batch_with_cache
from tasks._runtime import run
from tasks.contracts import WARM_COLLECTION, WARM_TEXTS, WarmCall, WarmCollectionCall
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


async def warm(tenant_id: str, texts: list[str], embedder: EmbeddingProvider) -> dict[str, Any]:
    """Embed and cache the texts not cached yet, all in one library call."""
    if not texts:
        return {"texts": 0, "cache_hits": 0, "generated": 0}
    _, metrics = await get_embeddings_batch_with_cache(texts, tenant_id, embedder.model_name, embedder)
    return {"texts": len(texts), "cache_hits": metrics["cache_hits"], "generated": metrics["cache_misses"]}


@shared_task(name=WARM_TEXTS, **TASK_OPTIONS)
def warm_texts(tenant_id: str, texts: list[str]) -> dict[str, Any]:
    """Embed and cache ``texts`` for ``tenant_id`` (skipping cached ones)."""
    call = WarmCall.from_wire(tenant_id, texts)
    return run(warm(call.tenant_id, list(call.texts), provider()))


@shared_task(name=WARM_COLLECTION, **TASK_OPTIONS)
def warm_collection(tenant_id: str, collection_id: str) -> dict[str, Any]:
    """Embed every chunk text of a collection (read from Postgres)."""
    from tasks.collection_texts import collection_texts

    call = WarmCollectionCall.from_wire(tenant_id, collection_id)
    texts = run(collection_texts(TaskSettings(), call.tenant_id, call.collection_id))
    return run(warm(call.tenant_id, texts, provider()))
