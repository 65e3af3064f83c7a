"""``shared-cache``: the operator command line.

::

    shared-cache stats                                   reads per data type, tier and tenant; processes, listener
    shared-cache get document doc_1 --tenant acme        the value a read would get from Redis, and its level
    shared-cache ttl document doc_1 --tenant acme        seconds left
    shared-cache invalidate --tenant acme --document doc_1 --collection c1
    shared-cache warm --tenant acme --collection c1      queue warm_collection (or --inline)
    shared-cache dead-letters list | replay
    shared-cache doctor                                  Redis, broker, database, slot, wal2json, subscribers

Settings come from the environment like everywhere else (``SHARED_CACHE_*`` for the library,
``SHARED_CACHE_WORKER_*`` for the worker); ``--redis-url`` and ``--key-prefix`` override two of them.
``--json`` prints one JSON document on stdout instead of text. Exit codes: 0 done; 1 a failure
(Redis, broker or database unavailable, a doctor check FAILed, nothing cached for get/ttl); 2 a
usage error (a bad option, an invalid tenant id or id, conflicting options, a malformed URL or
setting). Either way the error is one line on stderr. Secrets in URLs are masked in everything
printed.

The command keeps no memory tier and runs no eviction subscriber: it reads what Redis holds, and its
invalidations are published to every process like any other.

One module per command group (``reads``: get and ttl; ``invalidate``; ``warm``; ``dead_letters``
with ``replay``; ``stats`` with its collector and text renderer; ``doctor`` with one function per
check); ``state`` holds what they share.
"""

from __future__ import annotations

from .dead_letters import dead_letters
from .doctor import doctor
from .group import cli, main
from .invalidate import invalidate
from .reads import get, ttl
from .stats import stats
from .warm import warm

for _command in (get, ttl, invalidate, warm, dead_letters, stats, doctor):
    cli.add_command(_command)

__all__ = ["cli", "main"]
