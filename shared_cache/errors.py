"""Errors raised by shared_cache.

Every error the library raises on purpose hangs from one root, so a service can catch them all::

    SharedCacheError
    ├── InvalidKeyError (also ValueError)      an id or data type that cannot form a safe key
    ├── SerializationError (also TypeError)   a value with no cache encoding
    ├── CorruptEntryError                     bytes in Redis that do not decode
    └── BackendUnavailable                    Redis could not be reached or answered with an error

redis-py and socket errors are translated into ``BackendUnavailable`` in one place
(:func:`map_backend_errors`); the read path turns that into a miss, never into a failed read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class SharedCacheError(Exception):
    """Root of every error raised by shared_cache."""


class InvalidKeyError(SharedCacheError, ValueError):
    """An id, tenant or data type that cannot be turned into a safe cache key."""


class SerializationError(SharedCacheError, TypeError):
    """A value that cannot be encoded for the cache (or encoded bytes that cannot be decoded)."""


class CorruptEntryError(SharedCacheError):
    """A cache entry whose bytes do not follow the wire format."""


class BackendUnavailable(SharedCacheError):
    """Redis is down, timed out, or refused the command; the circuit breaker counts these."""


@contextmanager
def map_backend_errors() -> Iterator[None]:
    """Translate redis-py and socket errors into :class:`BackendUnavailable` (the one seam)."""
    from redis.exceptions import NoScriptError

    from ._redis_tier import BACKEND_ERRORS

    try:
        yield
    except NoScriptError:
        raise
    except BACKEND_ERRORS as exc:
        raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from exc
