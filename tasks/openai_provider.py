"""``OpenAICompatibleProvider``: ``POST {base_url}/embeddings`` of any OpenAI-compatible API (httpx),
batched, with retries on 429/5xx/connection errors. The key is never logged nor shown."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from typing import TYPE_CHECKING

import orjson
from pydantic import SecretStr

from tasks.provider_types import ProviderError
from tasks.support import Backoff, mask_secrets

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger("tasks.providers")

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
                delay = self._backoff_delay(attempt)
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
                delay = self._backoff_delay(attempt)
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

    def _backoff_delay(self, attempt: int) -> float:
        # "Equal jitter" (tasks.support.Backoff): half the exponential step fixed, half random, so
        # retries of many workers after one outage do not arrive in lockstep.
        backoff = Backoff(first=self.backoff_base, cap=self.backoff_max)
        backoff.attempt = attempt
        return backoff.next()

    def _redact(self, text: str) -> str:
        return mask_secrets(text, [self._key.get_secret_value()])

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
