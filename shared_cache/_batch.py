"""``get_embeddings_batch_with_cache`` (section 8): many texts, one lookup, one provider call.

Duplicates are looked up and generated once and the input order is kept. The memory tier answers
what it can; the rest costs one Redis round trip (one MGET), one provider call with only the
missing texts, and one generation-checked write of all new embeddings (write_batch.lua).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

from ._keys import gen_key, tenant_tag, validate_tenant
from ._manager import CacheManager
from ._memory import time_left
from ._redis_tier import WRITE_BATCH
from ._serialization import decode_embedding, encode_embedding
from ._ttl import ttl_for
from .errors import BackendUnavailable, CorruptEntryError, SerializationError

EmbeddingProvider = Callable[[list[str]], Any]
_TYPE = "embedding"


async def get_embeddings_batch_with_cache(
    texts: Sequence[str],
    tenant_id: str,
    model_name: str,
    embedding_provider: EmbeddingProvider,
    ttl: int | None = None,
) -> tuple[list[list[float]], dict[str, Any]]:
    """Embeddings of ``texts`` in order, and metrics (``cache_hits``, ``cache_misses`` counted per
    distinct text, plus ``memory_hits``, ``redis_hits``, ``duplicates``, ``round_trips``...)."""
    start = perf_counter()
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a sequence of str (not a single str)")
    if not callable(embedding_provider):
        raise TypeError(f"embedding_provider must be callable with a list of texts, got {embedding_provider!r}")
    tenant = validate_tenant(tenant_id)
    manager = CacheManager._instance or CacheManager.get_instance()
    memory = manager.memory
    if memory is not None and not manager.listening:
        await manager.start()
    seq = memory.eviction_seq if memory is not None else 0
    unique = list(dict.fromkeys(texts))
    rids = [manager.embedding_resource_id(text, model_name) for text in unique]
    found: dict[str, bytes] = {}
    metrics: dict[str, Any] = {
        "memory_hits": 0,
        "redis_hits": 0,
        "round_trips": 0,
        "duplicates": len(texts) - len(unique),
    }

    pending: list[int] = []
    for i, rid in enumerate(rids):
        entry = memory.get((_TYPE, tenant, rid, None, None, None)) if memory is not None else None
        if entry is not None and entry.kind == 2:  # HOLD_EMBEDDING
            found[unique[i]] = entry.data
            metrics["memory_hits"] += 1
        else:
            pending.append(i)

    tag = tenant_tag(manager.prefix, tenant)
    head = [gen_key(manager.prefix, (tenant,)), gen_key(manager.prefix, (tenant, "type", _TYPE))]
    tags: dict[int, str] = {}
    if pending:
        keys = list(head)
        for i in pending:
            keys += [f"{tag}:{_TYPE}:{rids[i]}", manager.keys.generation((tenant, "res", _TYPE, rids[i]))]
        try:
            reply = await manager.redis.call("MGET", *keys)
            metrics["round_trips"] += 1
        except BackendUnavailable:
            manager.stats.error("redis")
            reply = None
        if reply is not None:
            # Same check as the single-key path (parse_lookup), inlined for 1,000s of items. A
            # stale entry needs no delete: the regenerated value is written over it.
            head_tag = (reply[0] or b"0") + b"," + (reply[1] or b"0") + b","
            remember = memory is not None and memory.eviction_seq == seq
            for k, i in enumerate(pending):
                raw, gen = reply[2 + 2 * k], reply[3 + 2 * k] or b"0"
                want = head_tag + gen
                if raw is not None:
                    entry_tag, _, rest = raw.partition(b"|")
                    expiry, sep, payload = rest.partition(b"|")
                    if sep and entry_tag == want and expiry.isdigit():
                        found[unique[i]] = payload
                        metrics["redis_hits"] += 1
                        left = time_left(int(expiry) / 1000.0)
                        if remember and left is not None:
                            memory.set(  # type: ignore[union-attr]
                                (_TYPE, tenant, rids[i], None, None, None),
                                payload,
                                left,
                                f"{tag}:{_TYPE}:{rids[i]}",
                                "tenant",
                                _scopes(tenant, rids[i]),
                            )
                        continue
                tags[i] = want.decode()

    missing = [i for i in pending if unique[i] not in found]
    if missing:
        payloads = await _generate(embedding_provider, [unique[i] for i in missing])
        for i, payload in zip(missing, payloads, strict=True):
            found[unique[i]] = payload
        await _store(manager, tenant, head, tag, rids, missing, payloads, tags, ttl, metrics)
        if memory is not None and memory.eviction_seq == seq:
            for i, payload in zip(missing, payloads, strict=True):
                if i in tags:
                    memory.set(
                        (_TYPE, tenant, rids[i], None, None, None),
                        payload,
                        0,
                        f"{tag}:{_TYPE}:{rids[i]}",
                        "tenant",
                        _scopes(tenant, rids[i]),
                    )

    decoded: dict[str, list[float]] = {}
    for text, payload in found.items():
        try:
            decoded[text] = decode_embedding(payload)
        except CorruptEntryError:  # only if something else wrote there: regenerate that one
            manager.stats.error("corrupt_entry")
            (regenerated,) = await _generate(embedding_provider, [text])
            decoded[text] = decode_embedding(regenerated)
    seen: set[str] = set()
    out: list[list[float]] = []
    for text in texts:  # each position gets its own list, even for repeated texts
        out.append(decoded[text] if text not in seen else list(decoded[text]))
        seen.add(text)
    hits = len(unique) - len(missing)
    latency = (perf_counter() - start) * 1000.0
    metrics.update(cache_hits=hits, cache_misses=len(missing), generated=len(missing), latency_ms=latency)
    manager.stats.hits[_TYPE, "batch"] += hits
    manager.stats.misses[_TYPE] += len(missing)
    return out, metrics


def _scopes(tenant: str, rid: str) -> tuple[tuple[str, ...], ...]:
    return ((tenant,), (tenant, "type", _TYPE), (tenant, "res", _TYPE, rid))


async def _generate(provider: EmbeddingProvider, texts: list[str]) -> list[bytes]:
    """Call the provider once and encode its vectors (errors of the provider propagate)."""
    result = provider(texts)
    if inspect.isawaitable(result):
        result = await result
    vectors = list(result)
    if len(vectors) != len(texts):
        raise ValueError(f"embedding_provider returned {len(vectors)} embeddings for {len(texts)} texts")
    try:
        return [encode_embedding(v) for v in vectors]
    except SerializationError as exc:
        raise ValueError(f"embedding_provider returned something that is not a list of vectors: {exc}") from exc


async def _store(
    manager: CacheManager,
    tenant: str,
    head: list[str],
    tag: str,
    rids: list[str],
    missing: list[int],
    payloads: list[bytes],
    tags: dict[int, str],
    ttl: int | None,
    metrics: dict[str, Any],
) -> None:
    keys = list(head)
    seconds = ttl_for(_TYPE, ttl, manager.settings.ttl_jitter)
    args: list[Any] = [seconds * 1000, int((time.time() + seconds) * 1000) if seconds else 0]
    for i, payload in zip(missing, payloads, strict=True):
        if i in tags:
            keys += [f"{tag}:{_TYPE}:{rids[i]}", manager.keys.generation((tenant, "res", _TYPE, rids[i]))]
            args += [tags[i], payload]
    if len(keys) == 2:
        return
    try:
        metrics["stored"] = await manager.redis.script(WRITE_BATCH, keys, args)
        metrics["round_trips"] += 1
        if seconds == 0:  # no expiry: list them so reclaim_permanent can find them once invalidated
            tenant_gens = "\n".join(head)
            members = [f"{keys[j]}\n{tenant_gens}\n{keys[j + 1]}" for j in range(2, len(keys), 2)]
            await manager.redis.call("SADD", manager.keys.permanent(tenant), *members)
    except BackendUnavailable:
        manager.stats.error("redis")
