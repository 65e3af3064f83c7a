"""Embedding providers used by warming.

A provider is an object with ``model_name`` and ``async def embed(texts) -> list[list[float]]``;
calling it is the same as ``embed``, so it can be passed as ``embedding_provider`` to
``shared_cache.get_embeddings_batch_with_cache``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class EmbeddingProvider(Protocol):
    model_name: str

    async def embed(self, texts: list[str]) -> list[list[float]]: ...

    async def __call__(self, texts: list[str]) -> list[list[float]]: ...
