"""The chaos suite: faults injected at the worst moment into the running system, proven from outside.

Real parts only: Postgres with a logical slot, Redis (cache and broker), the listener
(``python -m worker``) and a Celery invalidation worker (prefork, two pool processes) as child
processes in process groups of their own, reader processes reading rows through
``get_with_cache_aside``, and a writer that commits updates and never invalidates by itself.
``SHARED_CACHE_CHAOS=long`` selects the long mode (see ``mode.py``); ``python -m bench.chaos`` runs
every scenario in the long mode and prints the README's reliability table.
"""
