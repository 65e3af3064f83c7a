# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""``get_with_cache_aside`` with its memory-tier hit compiled to C (Cython).

The same function as ``shared_cache._cache_aside.get_with_cache_aside``, which stays the reference and
the fallback where this module is not built (no C compiler at install time, or
``SHARED_CACHE_NO_EXTENSIONS=1``). Only the memory-tier hit is here: everything else (Redis, the
miss, single-flight) is ``_cache_aside._read_through``, called as the Python version calls it.
tests/test_hot_path.py runs the hit's behaviours against both.

Why compiled: a memory hit in Python costs about 8,400 instructions, of which the interpreter's
bytecode dispatch, two ``perf_counter`` calls that box floats, and attribute lookups of method
objects are a third; the 1.5 us budget is not kept on a slow spell of a shared VM. Here the clock is
``clock_gettime(CLOCK_MONOTONIC)`` read directly (the clock ``time.perf_counter`` reads on Linux, so
``start`` and the memory tier's expiries stay on one clock), and the entry's slots are read as a C
list. The slot numbers are ``_memory``'s (``EXPIRES, KIND, DATA, ...``).
"""

from cpython.dict cimport PyDict_Copy, PyDict_GetItemWithError
from cpython.list cimport PyList_GetSlice
from cpython.ref cimport PyObject
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from orjson import loads as _loads

from ._cache_aside import _check_ids, _read_through
from ._cache_aside import get_with_cache_aside as _reference
from ._manager import CacheManager
from ._memory import entry_value, hit_metrics


cdef inline double _perf_counter() noexcept nogil:
    # time.perf_counter's own computation (_PyTime_AsSecondsDouble of the nanoseconds)
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>(<long long>ts.tv_sec * 1000000000 + ts.tv_nsec) / 1e9


def perf_counter():
    """The clock the compiled hit reads (for tests: it must agree with ``time.perf_counter``)."""
    return _perf_counter()


async def get_with_cache_aside(
    data_type,
    resource_id,
    tenant_id,
    fetch_from_db_func,
    generate_func=None,
    agent_id=None,
    conversation_id=None,
    collection_id=None,
    ctx=None,
    ttl=None,
    serializer=None,
    deserializer=None,
):
    cdef double start = _perf_counter()
    cdef double latency
    cdef PyObject* found
    cdef list entry
    cdef list cell
    cdef dict metrics
    cdef long kind
    cdef long phase
    if ctx is not None:
        tenant_id = tenant_id or ctx.tenant_id
        agent_id = agent_id if agent_id is not None else ctx.agent_id
        conversation_id = conversation_id if conversation_id is not None else ctx.conversation_id
        collection_id = collection_id if collection_id is not None else ctx.collection_id
    if type(resource_id) is not str or agent_id is not None or conversation_id is not None or collection_id is not None:
        _check_ids(resource_id, agent_id, conversation_id, collection_id)  # True or 1.0 must not find 1's entry
    manager = CacheManager._instance or CacheManager.get_instance()
    ident = (data_type, tenant_id, resource_id, agent_id, conversation_id, collection_id)
    memory = manager.memory
    if memory is not None:
        found = PyDict_GetItemWithError(memory._data, ident)  # the tier's OrderedDict is a dict
        if found is not NULL:
            entry = <object>found
            if <double>entry[0] > start and (entry[7] == memory.seq or memory.revalidate(entry)):
                if entry[10] <= memory.stale_stamp:
                    memory.promote(ident, entry)
                kind = entry[1]
                try:
                    if kind == 4:  # HOLD_FLAT: a dict or a list of scalars
                        data = entry[2]
                        if type(data) is dict:
                            value = PyDict_Copy(data)
                        else:
                            value = PyList_GetSlice(data, 0, len(data))
                    elif kind == 0:  # HOLD_VALUE
                        value = entry[2]
                    elif kind == 1:  # HOLD_JSON
                        value = _loads(entry[2])
                    else:
                        value = entry_value(entry, deserializer)
                except Exception:
                    memory.delete(ident)
                    manager.stats.error("deserialize")
                else:
                    latency = (_perf_counter() - start) * 1000.0
                    cell = entry[8]  # the memory cell (_metrics): [steps of 16, samples, phase]
                    phase = cell[2]
                    if phase < 15:
                        cell[2] = phase + 1
                    else:  # every 16th hit: count the 16, keep this one's latency
                        cell[2] = 0
                        cell[0] += 16
                        cell[1].append(latency)
                    template = entry[9]
                    if template is None:
                        template = hit_metrics(entry)
                    metrics = PyDict_Copy(template)
                    metrics["latency_ms"] = latency
                    return value, metrics
            else:
                memory.delete(ident)
    return await _read_through(
        manager, ident, start, fetch_from_db_func, generate_func, ctx, ttl, serializer, deserializer
    )


get_with_cache_aside.__doc__ = _reference.__doc__
