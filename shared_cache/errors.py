"""Errors raised by shared_cache, and the one seam where Redis client errors become ours.

Every error the library raises on purpose hangs from one root, so a service can catch them all::

    SharedCacheError
    ├── InvalidKeyError (also ValueError)      an id or data type that cannot form a safe key
    ├── SerializationError (also TypeError)   a value with no cache encoding
    ├── CorruptEntryError                     bytes in Redis that do not decode
    └── BackendUnavailable                    Redis could not be reached, or timed out
        └── BackendCommandError               Redis answered, refusing one command (a key of the
                                              wrong type, maxmemory): not an outage

Errors of the clients underneath (redis-py, our own connection, sockets) are translated in one place,
:func:`backend_error`, which every call to Redis goes through. The read path turns a
``BackendUnavailable`` into a miss, never into a failed read; only a ``BackendUnavailable`` that is not
a ``BackendCommandError`` counts towards the circuit breaker.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class SharedCacheError(Exception):
    """Root of every error raised by shared_cache."""


class InvalidKeyError(SharedCacheError, ValueError):
    """An id, tenant or data type that cannot be turned into a safe cache key."""


class SerializationError(SharedCacheError, TypeError):
    """A value that cannot be encoded for the cache (or encoded bytes that cannot be decoded)."""


class CorruptEntryError(SharedCacheError):
    """A cache entry whose bytes do not follow the wire format."""


class BackendUnavailable(SharedCacheError):
    """Redis is down, timed out, or refused the command."""


class BackendCommandError(BackendUnavailable):
    """Redis answered with an error for one command (e.g. a key holding the wrong type, or writes
    refused at ``maxmemory``). The server is up: this never opens the circuit breaker."""


# What the clients underneath raise when Redis cannot be used (connection refused or lost, timeouts).
BACKEND_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError, TimeoutError)


def backend_error(exc: BaseException) -> BackendUnavailable:
    """Our error for one of ``BACKEND_ERRORS`` (the one mapping; callers ``raise ... from exc``).

    An error reply (``ResponseError``) becomes a ``BackendCommandError``; a lost connection or a
    timeout, a plain ``BackendUnavailable``.
    """
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ResponseError) and not isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return BackendCommandError(text)
    return BackendUnavailable(text)


@contextmanager
def map_backend_errors() -> Iterator[None]:
    """Translate client errors into ours for a block of Redis calls (``NoScriptError`` passes:
    the caller loads the script and tries again)."""
    try:
        yield
    except NoScriptError:
        raise
    except BACKEND_ERRORS as exc:
        raise backend_error(exc) from exc
