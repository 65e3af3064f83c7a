"""``get_embeddings_batch_with_cache`` (section 8): many texts, one lookup, one provider call.

Duplicates are looked up and generated once and the input order is kept. The memory tier answers
what it can; the rest costs one Redis round trip (an MGET per few hundred texts, all sent at once),
one provider call with only the missing texts, and one generation-checked write of all new
embeddings (write_batch.lua). An entry that does not decode (corrupt, or not an embedding) is
counted, regenerated and written over, as on the single-key path.

Redis and the client work at the same time where they can: each MGET's reply is parsed while Redis
still runs and sends the next ones, and the write is sent before the result is assembled and the
Redis hits are kept in the memory tier, and awaited after that.

``as_numpy=True`` returns one C-contiguous ``float32`` matrix of shape ``(len(texts), dim)`` filled
straight from the cached bytes, with no Python float per element; the default is a list of lists,
as the standard says. The per-text work is kept to a few C calls: a batch of 1,000 texts spends its
time in its lookup and in copying bytes, not in Python.
"""

from __future__ import annotations

import inspect
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from itertools import repeat
from time import perf_counter
from typing import TYPE_CHECKING, Any, cast

import hiredis

from ._embedding_ids import RID_LENGTH, check_model_name, embedding_resource_ids
from ._keys import validate_tenant
from ._manager import CacheManager
from ._memory import DATA, HOLD_EMBEDDING, KIND, MemoryTier
from ._redis_tier import WRITE_BATCH
from ._serialization import KIND_EMBEDDING, decode_embedding, encode_embedding
from ._ttl import ttl_for
from .errors import BackendUnavailable, SerializationError

if TYPE_CHECKING:
    import numpy as np

EmbeddingProvider = Callable[[list[str]], Any]
_TYPE = "embedding"
# Texts per MGET. Smaller chunks overlap more of Redis's work with the parsing, but cost a command
# each; 256 was the fastest of 100-500 for 1,000 texts of 384 dimensions. The first is smaller: the
# client has nothing to do until its reply is in, and a smaller one comes sooner (128 was faster
# than 256 in each of four paired runs, by 7% of the batch on average; 32 was slower).
_CHUNK = 256
_FIRST_CHUNK = 128
_DIM = struct.Struct("<I")


def embedding_dim(payload: bytes) -> int | None:
    """The dimension of a well-formed embedding payload, None for anything else."""
    if len(payload) < 5 or payload[0] != KIND_EMBEDDING:
        return None
    (dim,) = _DIM.unpack_from(payload, 1)
    return dim if len(payload) == 5 + 4 * dim else None


class _Shape:
    """The header and length every payload of a batch shares once the first one is known: checking a
    payload is then one ``startswith`` and one ``len`` (a payload of another dimension, or corrupt,
    falls back to :func:`embedding_dim`)."""

    __slots__ = ("header", "length")

    def __init__(self) -> None:
        self.header = b""
        self.length = -1

    def ok(self, payload: bytes) -> bool:
        if len(payload) == self.length and payload.startswith(self.header):
            return True
        dim = embedding_dim(payload)
        if dim is None:
            return False
        if self.length < 0:
            self.header, self.length = payload[:5], len(payload)
        return True


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
    _check_texts(texts)
    if not callable(embedding_provider):
        raise TypeError(f"embedding_provider must be callable with a list of texts, got {embedding_provider!r}")
    tenant = validate_tenant(tenant_id)
    manager = CacheManager._instance or CacheManager.get_instance()
    memory = manager.memory
    if memory is not None and not manager.listening:
        await manager.start()
    batch = _Batch(manager, tenant, model_name, list(dict.fromkeys(texts)))
    batch.metrics["duplicates"] = len(texts) - len(batch.unique)
    await batch.lookup()
    found = batch.found
    missing = [i for i in batch.pending if found[i] is None]
    try:
        if missing:
            await batch.generate(embedding_provider, missing, ttl)
        rows, payloads = batch.rows_of(texts), cast(list[bytes], found)  # every text's, by now
        out = _as_matrix(rows, payloads) if as_numpy else _as_lists(rows, payloads)
    finally:
        batch.remember_hits()  # while the write, sent before the result was assembled, is on its way
        await batch.written()
    hits = len(batch.unique) - len(missing)
    latency = (perf_counter() - start) * 1000.0
    metrics = batch.metrics
    metrics.update(cache_hits=hits, cache_misses=len(missing), generated=len(missing), latency_ms=latency)
    manager.stats.batch(tenant, hits, len(missing), latency)
    if metrics["corrupt"]:
        manager.stats.errors["corrupt_entry"] += metrics["corrupt"]
    return out, metrics


def _check_texts(texts: Any) -> None:
    """A list or tuple of str (a generator would be used up before its texts were looked up)."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise ValueError(f"texts must be a sequence of str (a list or tuple), got {type(texts).__name__}")
    if not all(map(isinstance, texts, repeat(str))):  # the loop in C: it runs on every batch
        position, bad = next((i, t) for i, t in enumerate(texts) if not isinstance(t, str))
        raise ValueError(f"texts must be a sequence of str, got {type(bad).__name__} at position {position}")


class _Batch:
    """One batch's state: the distinct texts, their ids and keys, what was found, what to write."""

    def __init__(self, manager: CacheManager, tenant: str, model_name: str, unique: list[str]) -> None:
        self.manager = manager
        self.tenant = tenant
        self.unique = unique
        self.model_name = check_model_name(model_name)
        self.rids: list[str] = []  # filled as the lookup goes
        self.idents: list[tuple[Any, ...]] = []  # each text's memory-tier identity, as the lookup goes
        self.memory: MemoryTier | None = manager.memory
        self.seq = self.memory.seq if self.memory is not None else 0
        self.cell = manager.stats.memory_cell(_TYPE, tenant)
        self.shape = _Shape()
        self.found: list[bytes | None] = [None] * len(unique)  # each distinct text's payload, once known
        self.pending: list[int] = []
        self.tags: dict[int, bytes] = {}
        self.write: tuple[Awaitable[Any], list[str], int] | None = None  # sent, not yet awaited
        self.hits: list[tuple[list[int], list[bytes], list[bytes]]] = []  # per reply: rows, payloads, expiries
        keys = manager.keys
        self.head = [keys.generation((tenant,)), keys.generation((tenant, "type", _TYPE))]
        # the prefixes every text's entry and resource counter share (the id comes last in both)
        self.entry_prefix = f"{keys.tenant_tag(tenant)}:{_TYPE}:"
        self.gen_prefix = keys.generation((tenant, "res", _TYPE, ""))
        self.scopes = ((tenant,), (tenant, "type", _TYPE))  # the tenant's and the type's
        # An MGET's arguments in RESP, each as "\r\n$<length>\r\n<bytes>" (every id is RID_LENGTH
        # ASCII characters, so the entry keys share one length, as the generation keys do)
        self.mget_head = "$4\r\nMGET" + "".join(_field(key) for key in self.head)
        self.entry_field = _field(self.entry_prefix, RID_LENGTH)
        self.gen_field = _field(self.gen_prefix, RID_LENGTH)
        self.id_bytes = len(self.entry_field.encode()) + len(self.gen_field.encode()) + 2 * RID_LENGTH
        self.metrics: dict[str, Any] = {"memory_hits": 0, "redis_hits": 0, "round_trips": 0, "corrupt": 0}

    def entry_key(self, i: int) -> str:
        return self.entry_prefix + self.rids[i]

    def res_gen(self, i: int) -> str:
        return self.gen_prefix + self.rids[i]

    def rows_of(self, texts: Sequence[str]) -> Sequence[int]:
        """The index in ``unique`` of each of ``texts`` (the caller's order, duplicates included)."""
        if len(texts) == len(self.unique):  # no duplicates: the same texts in the same order
            return range(len(texts))
        index = {text: i for i, text in enumerate(self.unique)}
        return list(map(index.__getitem__, texts))

    def from_memory(self, start: int, end: int) -> list[int]:
        """Texts ``start`` to ``end`` (their ids computed) from the memory tier; returns the others."""
        memory, found, shape = self.memory, self.found, self.shape
        if memory is None:
            return list(range(start, end))
        now, tenant, rids = memory.timer(), self.tenant, self.rids  # one clock read
        present = memory._data.__contains__  # most texts of a batch are not there: no call for those
        pending: list[int] = []
        idents = self.idents
        hits = corrupt = 0
        for i in range(start, end):
            ident = (_TYPE, tenant, rids[i], None, None, None)
            idents.append(ident)
            if not present(ident):
                pending.append(i)
                continue
            entry = memory.get(ident, now)
            if entry is not None and entry[KIND] == HOLD_EMBEDDING and shape.ok(entry[DATA]):
                found[i] = entry[DATA]
                hits += 1
                continue
            if entry is not None:
                memory.delete(ident)
                corrupt += 1
            pending.append(i)
        self.metrics["memory_hits"] += hits
        self.metrics["corrupt"] += corrupt
        return pending

    async def lookup(self) -> None:
        """Each text's id, then the memory tier, then Redis for the rest: chunk by chunk (``_FIRST_CHUNK``
        texts, then ``_CHUNK``), each chunk's MGET sent as soon as its texts are known, so that Redis
        works on it while the next ids are computed, and all of them out in one round trip. Each reply
        is parsed as it comes. Fills ``pending`` (the texts not in the memory tier), ``found`` and
        ``tags`` (the tag to write each miss with). A stale entry needs no delete: the regenerated
        value is written over it. A chunk whose MGET fails leaves its texts to be generated, not
        written."""
        unique, model_name, redis = self.unique, self.model_name, self.manager.redis
        chunks: list[list[int]] = []
        replies: list[Coroutine[Any, Any, Any]] = []
        now_or_never = True  # False: not connected yet, a cluster...: one MGET, sent when awaited
        start, size = 0, _FIRST_CHUNK
        while start < len(unique):
            end = start + size
            self.rids += embedding_resource_ids(unique[start:end], model_name)
            chunk = self.from_memory(start, min(end, len(unique)))
            start, size = end, _CHUNK
            if not chunk:
                continue
            self.pending += chunk
            if now_or_never:
                reply = redis.send_packed_now(self.lookup_command(chunk))
                if reply is None and not replies:
                    now_or_never = False
                    continue
                chunks.append(chunk)
                replies.append(reply if reply is not None else redis.call("MGET", *self.lookup_keys(chunk)))
        if not now_or_never:
            chunks, replies = [self.pending], [redis.call("MGET", *self.lookup_keys(self.pending))]
        answered = failed = False
        done = 0
        try:
            for chunk, reply in zip(chunks, replies, strict=True):
                done += 1
                try:
                    self.parse(chunk, await reply)
                    answered = True
                except BackendUnavailable:
                    failed = True
        finally:
            for reply in replies[done:]:  # the caller gave up (cancelled): no "never awaited" warnings
                reply.close()
        self.metrics["round_trips"] += answered
        if failed:
            self.manager.stats.error("redis")

    def lookup_keys(self, chunk: list[int]) -> list[str]:
        """The two head generations, then the texts' entries, then their resource generations."""
        rids = [self.rids[i] for i in chunk]
        entry_prefix, gen_prefix = self.entry_prefix, self.gen_prefix
        return [*self.head, *[entry_prefix + rid for rid in rids], *[gen_prefix + rid for rid in rids]]

    def lookup_command(self, chunk: list[int]) -> bytes:
        """The MGET of :meth:`lookup_keys`, packed here: two joins, where packing the keys one by one
        took 0.2 us a key (a ``sprintf`` per argument length) after 0.1 us to build each.

        A command whose lengths did not match its bytes would desynchronise the connection (replies
        handed to the wrong callers), so it is checked: every id of RID_LENGTH characters and the
        whole of the size that makes them ASCII, or the keys are packed one by one."""
        rids = [self.rids[i] for i in chunk]
        entry_field, gen_field = self.entry_field, self.gen_field
        head = f"*{3 + 2 * len(rids)}\r\n{self.mget_head}"
        command = f"{head}{entry_field}{entry_field.join(rids)}{gen_field}{gen_field.join(rids)}\r\n".encode()
        if (
            len(command) != len(head.encode()) + len(rids) * self.id_bytes + 2  # 2: the last CRLF
            or min(map(len, rids), default=RID_LENGTH) != RID_LENGTH
            or max(map(len, rids), default=RID_LENGTH) != RID_LENGTH
        ):
            args: tuple[Any, ...] = ("MGET", *self.lookup_keys(chunk))
            packed: bytes = hiredis.pack_command(args)
            return packed
        return command

    def parse(self, chunk: list[int], reply: list[Any]) -> None:
        head_tag = (reply[0] or b"0") + b"," + (reply[1] or b"0") + b","
        current = head_tag + b"0"  # the tag of a text whose own generation was never bumped
        found, shape, tags = self.found, self.shape, self.tags
        header, length = shape.header, shape.length  # the shape.ok test, inlined for all but the first
        rows: list[int] = []
        payloads: list[bytes] = []
        expiries: list[bytes] = []
        corrupt = 0
        n = len(chunk)
        for i, raw, res_gen in zip(chunk, reply[2 : 2 + n], reply[2 + n :], strict=True):
            want = current if res_gen is None else head_tag + res_gen
            if raw is not None:
                parts = raw.split(b"|", 2)  # tag|expiry|payload (_entry's format)
                if len(parts) == 3 and parts[0] == want and parts[1].isdigit():
                    payload = parts[2]
                    if len(payload) != length or not payload.startswith(header):
                        if not shape.ok(payload):
                            corrupt += 1  # current but unreadable: regenerated and written over
                            tags[i] = want
                            continue
                        header, length = shape.header, shape.length  # known from the first payload on
                    found[i] = payload
                    rows.append(i)
                    payloads.append(payload)
                    expiries.append(parts[1])
                    continue
            tags[i] = want
        self.metrics["redis_hits"] += len(rows)
        self.metrics["corrupt"] += corrupt
        if self.memory is not None and rows:
            self.hits.append((rows, payloads, expiries))

    def remember_hits(self) -> None:
        """Keep the Redis hits in the memory tier. Done last, while the write is on its way: the
        memory tier costs about 1 us an entry, a sixth of a 1,000-text batch, and in the lookup it
        held the parsing of the replies back, where at the end it fills the write's round trip."""
        hits, self.hits = self.hits, []
        if self.memory is not None:
            for rows, payloads, expiries in hits:
                self.remember(self.memory, rows, payloads, _seconds_left(expiries, self.memory.ttl_cap))

    def remember(self, memory: MemoryTier, rows: list[int], payloads: list[bytes], lefts: list[float]) -> None:
        """Keep embeddings in the memory tier for no longer than they have left in Redis (``lefts``:
        0 for no expiry or beyond the tier's cap; an entry that expired meanwhile is not kept)."""
        if not rows:
            return
        if min(lefts) < 0:
            kept = [j for j, left in enumerate(lefts) if left >= 0]
            rows, payloads, lefts = [rows[j] for j in kept], [payloads[j] for j in kept], [lefts[j] for j in kept]
        tenant_scope, type_scope = self.scopes
        rids = list(map(self.rids.__getitem__, rows))  # lists built in C: no bytecode per text
        resource_scopes = zip(repeat(self.tenant), repeat("res"), repeat(_TYPE), rids)
        memory.set_embeddings(
            list(map(self.idents.__getitem__, rows)),
            payloads,
            lefts,
            list(map(self.entry_prefix.__add__, rids)),
            list(zip(repeat(tenant_scope), repeat(type_scope), resource_scopes)),
            self.seq,
            self.cell,
        )

    async def generate(self, provider: EmbeddingProvider, missing: list[int], ttl: int | None) -> None:
        payloads = await _generate(provider, [self.unique[i] for i in missing])
        for i, payload in zip(missing, payloads, strict=True):
            self.found[i] = payload
        seconds = ttl_for(_TYPE, ttl, self.manager.settings.ttl_jitter)
        self.send_write(missing, payloads, seconds)
        if self.memory is not None:  # kept no longer than in Redis (0: no expiry, the tier's own cap)
            written = [(i, p) for i, p in zip(missing, payloads, strict=True) if i in self.tags]
            rows, kept = [i for i, _ in written], [p for _, p in written]
            self.remember(self.memory, rows, kept, [float(seconds)] * len(rows))

    def send_write(self, missing: list[int], payloads: list[bytes], seconds: int) -> None:
        """Send the generation-checked write of the new embeddings; :meth:`written` awaits it."""
        keys = list(self.head)
        args: list[Any] = [seconds * 1000]
        expiry = b"|%d|" % (int((time.time() + seconds) * 1000) if seconds else 0)
        tags = self.tags
        for i, payload in zip(missing, payloads, strict=True):
            if i in tags:
                keys += (self.entry_key(i), self.res_gen(i))
                args.append(tags[i] + expiry + payload)  # the entry as stored (_entry's format)
        if len(keys) > 2:
            self.write = (self.manager.redis.script_now(WRITE_BATCH, keys, args), keys, seconds)

    async def written(self) -> None:
        """Await the write, if one was sent (and list entries without expiry for reclaim_permanent)."""
        if self.write is None:
            return
        reply, keys, seconds = self.write
        self.write = None
        manager = self.manager
        try:
            self.metrics["stored"] = await reply
            self.metrics["round_trips"] += 1
            if seconds == 0:  # no expiry: list them so reclaim_permanent can find them once invalidated
                tenant_gens = "\n".join(self.head)
                members = [f"{keys[j]}\n{tenant_gens}\n{keys[j + 1]}" for j in range(2, len(keys), 2)]
                await manager.redis.call("SADD", manager.keys.permanent(self.tenant), *members)
        except BackendUnavailable:
            manager.stats.error("redis")


async def _generate(provider: EmbeddingProvider, texts: list[str]) -> list[bytes]:
    """Call the provider once and encode its vectors (errors of the provider propagate)."""
    result = provider(texts)
    if inspect.isawaitable(result):
        result = await result
    vectors = list(result)  # the rows of a matrix, or a list of vectors
    if len(vectors) != len(texts):
        raise ValueError(f"embedding_provider returned {len(vectors)} embeddings for {len(texts)} texts")
    try:
        return [encode_embedding(v) for v in vectors]
    except SerializationError as exc:
        raise ValueError(f"embedding_provider returned something that is not a list of vectors: {exc}") from exc


def _field(text: str, more: int = 0) -> str:
    """``text`` as the start of a RESP argument of ``more`` characters more (ASCII), after the CRLF
    that ends the argument before it."""
    return f"\r\n${len(text.encode()) + more}\r\n{text}"


def _seconds_left(expiries: list[bytes], cap: float) -> list[float]:
    """Seconds each entry has left in Redis, from its expiry (Unix ms, ASCII; 0: none), or 0.0 for
    none or for more than ``cap`` (the memory tier keeps nothing longer): negative once expired.
    Expiries beyond the cap, most of them, are told apart from the rest by comparing their digits,
    not parsed (equal-length digit strings compare as their numbers do): all at once when they
    all are."""
    now = time.time()
    horizon = b"%d" % int((now + cap) * 1000)
    size = len(horizon)
    if min(map(len, expiries), default=0) == size == max(map(len, expiries)) and min(expiries) >= horizon:
        return [0.0] * len(expiries)  # all beyond the cap (the usual case), told in C
    return [
        0.0 if (len(expiry) == size and expiry >= horizon) or len(expiry) > size or expiry == b"0"
        else int(expiry) / 1000.0 - now
        for expiry in expiries
    ]  # fmt: skip


def _as_lists(rows: Sequence[int], found: list[bytes]) -> list[list[float]]:
    decoded = list(map(decode_embedding, found))
    seen: set[int] = set()
    out: list[list[float]] = []
    for row in rows:  # each position gets its own list, even for repeated texts
        out.append(decoded[row] if row not in seen else list(decoded[row]))
        seen.add(row)
    return out


def _as_matrix(rows: Sequence[int], found: list[bytes]) -> np.ndarray[Any, Any]:
    import numpy as np

    lengths = set(map(len, found))
    if len(lengths) > 1:
        dims = sorted((n - 5) // 4 for n in lengths)
        raise ValueError(f"as_numpy needs embeddings of one dimension, got dimensions {dims}")
    length = lengths.pop() if lengths else 5
    dim = (length - 5) // 4
    if not rows or not dim:
        return np.empty((len(rows), dim), dtype=np.float32)
    # Each payload is copied whole into the result, its 5-byte header included, so no slice of it is
    # made: the header lands on the last 5 bytes of the row before, which is copied after it (the rows
    # go last to first); the first row has no row before it and gets its body alone. One pass over
    # the bytes into an array of the caller's own. Joining the payloads first and copying through a
    # strided view made two 1.5 MB buffers a batch: twice the page faults (about 3 us each on a VM)
    # whenever the allocator had handed the memory back, and it often had.
    out = np.empty((len(rows), dim), dtype="<f4")  # little-endian float32, as stored
    target = out.data.cast("B")
    step = 4 * dim
    pos = len(rows) * step - length
    for i in range(len(rows) - 1, 0, -1):
        target[pos : pos + length] = found[rows[i]]
        pos -= step
    target[:step] = found[rows[0]][5:]
    return out
