"""``get_embeddings_batch_with_cache`` (section 8): many texts, one lookup, one provider call.

Duplicates are looked up and generated once and the input order is kept. The memory tier answers
what it can; the rest costs one Redis round trip (one MGET), one provider call with only the missing
texts, and one generation-checked write of all new embeddings (write_batch.lua). An entry that does
not decode (corrupt, or not an embedding) is counted, regenerated and written over, as on the
single-key path.

``as_numpy=True`` returns one C-contiguous ``float32`` matrix of shape ``(len(texts), dim)`` filled
straight from the cached bytes, with no Python float per element; the default is a list of lists,
as the standard says.
"""

from __future__ import annotations

import inspect
import struct
import time
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ._entry import current_payload
from ._keys import validate_tenant
from ._manager import CacheManager
from ._memory import DATA, HOLD_EMBEDDING, KIND
from ._redis_tier import WRITE_BATCH
from ._serialization import KIND_EMBEDDING, decode_embedding, encode_embedding
from ._ttl import ttl_for
from .errors import BackendUnavailable, SerializationError

if TYPE_CHECKING:
    import numpy as np

EmbeddingProvider = Callable[[list[str]], Any]
_TYPE = "embedding"
_DIM = struct.Struct("<I")


def embedding_dim(payload: bytes) -> int | None:
    """The dimension of a well-formed embedding payload, None for anything else."""
    if len(payload) < 5 or payload[0] != KIND_EMBEDDING:
        return None
    (dim,) = _DIM.unpack_from(payload, 1)
    return dim if len(payload) == 5 + 4 * dim else None


async def get_embeddings_batch_with_cache(
    texts: Sequence[str],
    tenant_id: str,
    model_name: str,
    embedding_provider: EmbeddingProvider,
    ttl: int | None = None,
    as_numpy: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Embeddings of ``texts`` in order (a list of lists, or with ``as_numpy`` one float32 matrix), and
    metrics (``cache_hits``, ``cache_misses`` counted per distinct text, plus ``memory_hits``,
    ``redis_hits``, ``duplicates``, ``corrupt``, ``round_trips``...)."""
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
    seq = memory.seq if memory is not None else 0
    cell = manager.stats.memory_cell(_TYPE, tenant)
    unique = list(dict.fromkeys(texts))
    rids = [manager.embedding_resource_id(text, model_name) for text in unique]
    found: dict[str, bytes] = {}
    metrics: dict[str, Any] = {
        "memory_hits": 0,
        "redis_hits": 0,
        "round_trips": 0,
        "corrupt": 0,
        "duplicates": len(texts) - len(unique),
    }

    pending: list[int] = []
    for i, rid in enumerate(rids):
        entry = memory.get((_TYPE, tenant, rid, None, None, None)) if memory is not None else None
        if entry is not None and entry[KIND] == HOLD_EMBEDDING and embedding_dim(entry[DATA]) is not None:
            found[unique[i]] = entry[DATA]
            metrics["memory_hits"] += 1
        else:
            if entry is not None:
                memory.delete((_TYPE, tenant, rid, None, None, None))  # type: ignore[union-attr]
                metrics["corrupt"] += 1
            pending.append(i)

    keys = manager.keys
    tag = keys.tenant_tag(tenant)
    head = [keys.generation((tenant,)), keys.generation((tenant, "type", _TYPE))]
    entry_keys = {i: f"{tag}:{_TYPE}:{rids[i]}" for i in pending}
    res_gens = {i: keys.generation((tenant, "res", _TYPE, rids[i])) for i in pending}
    tags: dict[int, bytes] = {}
    if pending:
        await _lookup(manager, tenant, unique, rids, pending, head, entry_keys, res_gens, seq, found, tags, metrics)

    missing = [i for i in pending if unique[i] not in found]
    if missing:
        payloads = await _generate(embedding_provider, [unique[i] for i in missing])
        for i, payload in zip(missing, payloads, strict=True):
            found[unique[i]] = payload
        await _store(manager, tenant, head, entry_keys, res_gens, missing, payloads, tags, ttl, metrics)
        if memory is not None:
            for i, payload in zip(missing, payloads, strict=True):
                if i in tags:
                    memory.set((_TYPE, tenant, rids[i], None, None, None), payload, 0, entry_keys[i], "tenant",
                               _scopes(tenant, rids[i]), seq, hits=cell)  # fmt: skip

    out = _as_matrix(texts, found) if as_numpy else _as_lists(texts, found)
    hits = len(unique) - len(missing)
    latency = (perf_counter() - start) * 1000.0
    metrics.update(cache_hits=hits, cache_misses=len(missing), generated=len(missing), latency_ms=latency)
    manager.stats.batch(tenant, hits, len(missing), latency)
    if metrics["corrupt"]:
        manager.stats.errors["corrupt_entry"] += metrics["corrupt"]
    return out, metrics


async def _lookup(
    manager: CacheManager,
    tenant: str,
    unique: list[str],
    rids: list[str],
    pending: list[int],
    head: list[str],
    entry_keys: dict[int, str],
    res_gens: dict[int, str],
    seq: int,
    found: dict[str, bytes],
    tags: dict[int, bytes],
    metrics: dict[str, Any],
) -> None:
    """One MGET of the pending texts' entries and generations; fills ``found`` and ``tags`` (the tag
    to write each miss with). A stale entry needs no delete: the regenerated value is written over."""
    keys = list(head)
    for i in pending:
        keys += (entry_keys[i], res_gens[i])
    try:
        reply = await manager.redis.call("MGET", *keys)
        metrics["round_trips"] += 1
    except BackendUnavailable:
        manager.stats.error("redis")
        return
    head_tag = (reply[0] or b"0") + b"," + (reply[1] or b"0") + b","
    memory = manager.memory
    cell = manager.stats.memory_cell(_TYPE, tenant)
    now = time.time()
    for k, i in enumerate(pending):
        want = head_tag + (reply[3 + 2 * k] or b"0")
        current = current_payload(reply[2 + 2 * k], want)
        if current is not None:
            payload, expires_at = current
            if embedding_dim(payload) is not None:
                found[unique[i]] = payload
                metrics["redis_hits"] += 1
                left = expires_at - now if expires_at else 0.0  # as time_left, one clock read a batch
                if memory is not None and left >= 0:
                    memory.set((_TYPE, tenant, rids[i], None, None, None), payload, left, entry_keys[i], "tenant",
                               _scopes(tenant, rids[i]), seq, hits=cell)  # fmt: skip
                continue
            metrics["corrupt"] += 1  # current but unreadable: regenerated and written over
        tags[i] = want


def _scopes(tenant: str, rid: str) -> tuple[tuple[str, ...], ...]:
    return ((tenant,), (tenant, "type", _TYPE), (tenant, "res", _TYPE, rid))


async def _generate(provider: EmbeddingProvider, texts: list[str]) -> list[bytes]:
    """Call the provider once and encode its vectors (errors of the provider propagate)."""
    result = provider(texts)
    if inspect.isawaitable(result):
        result = await result
    if type(result).__module__.startswith("numpy") and getattr(result, "ndim", 0) == 2:
        vectors: list[Any] = list(result)  # rows of a matrix
    else:
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
    entry_keys: dict[int, str],
    res_gens: dict[int, str],
    missing: list[int],
    payloads: list[bytes],
    tags: dict[int, bytes],
    ttl: int | None,
    metrics: dict[str, Any],
) -> None:
    keys = list(head)
    seconds = ttl_for(_TYPE, ttl, manager.settings.ttl_jitter)
    args: list[Any] = [seconds * 1000, int((time.time() + seconds) * 1000) if seconds else 0]
    for i, payload in zip(missing, payloads, strict=True):
        if i in tags:
            keys += (entry_keys[i], res_gens[i])
            args += (tags[i], payload)
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


def _as_lists(texts: Sequence[str], found: dict[str, bytes]) -> list[list[float]]:
    decoded = {text: decode_embedding(payload) for text, payload in found.items()}
    seen: set[str] = set()
    out: list[list[float]] = []
    for text in texts:  # each position gets its own list, even for repeated texts
        out.append(decoded[text] if text not in seen else list(decoded[text]))
        seen.add(text)
    return out


def _as_matrix(texts: Sequence[str], found: dict[str, bytes]) -> np.ndarray[Any, Any]:
    import numpy as np

    dims = {embedding_dim(payload) or 0 for payload in found.values()}
    if len(dims) > 1:
        raise ValueError(f"as_numpy needs embeddings of one dimension, got dimensions {sorted(dims)}")
    dim = dims.pop() if dims else 0
    matrix = np.empty((len(texts), dim), dtype="<f4")  # float32 (little-endian, as the payloads)
    if not matrix.size:
        return matrix
    rows = matrix.data.cast("B")
    width = 4 * dim
    for i, text in enumerate(texts):  # one copy of each row's bytes, no float object
        rows[i * width : (i + 1) * width] = memoryview(found[text])[5:]
    return matrix
