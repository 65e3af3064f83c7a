"""The types every embedding provider shares: the protocol and its errors."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class EmbeddingProvider(Protocol):
    model_name: str

    async def embed(self, texts: list[str]) -> list[list[float]]: ...

    async def __call__(self, texts: list[str]) -> list[list[float]]: ...


class ProviderError(RuntimeError):
    """A provider could not produce embeddings. ``status`` is the HTTP status, if there was one."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class ProviderDisabledError(ProviderError):
    """Embedding was asked of the ``NullProvider`` (warming is switched off)."""
