"""Loaded into the demo's warming Celery worker (``celery ... -I devtools.warming_report``): lowers the
CPU priority of its processes (nice 10), loads the embedding model as soon as one starts, and after
every warming task leaves a report of what warming did in Redis, where ``./run``'s status line
reads it.

The report sits under the library's stats key of the process (``Keyspace.stats``), with
``"role": "warming"`` and a ``warming`` section: tasks done, texts asked for, texts embedded
(``generated``: the cache did not have them), texts the cache already had, seconds spent in warming
tasks, and whether (and how fast) the model loaded. It observes the tasks through Celery's signals;
the tasks themselves run unchanged.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import orjson
from celery.signals import task_postrun, task_prerun, worker_process_init

from shared_cache import CacheSettings, Keyspace

ROLE = "warming"
_state: dict[str, Any] = {
    "tasks": 0,
    "failed": 0,
    "texts": 0,
    "generated": 0,
    "cache_hits": 0,
    "busy_s": 0.0,
    "model_loaded": False,
    "model_load_s": None,
    "model_error": None,
}
_started: dict[str, float] = {}
_lock = threading.Lock()


def _is_warming(task: Any) -> bool:
    return str(getattr(task, "name", "")).startswith("shared_cache.warm_")


@worker_process_init.connect
def _preload(**_: Any) -> None:
    # On a thread: a process that takes longer than a few seconds to initialise is restarted by
    # Celery, and loading the model takes longer than that on a busy machine.
    threading.Thread(target=_load_model, name="preload-model", daemon=True).start()
    # Warming is bulk work: on a small machine it must not take the CPU from the invalidation path.
    # Linux sets a nice value per thread: the tasks' thread (this one, and the threads it starts)
    # runs at nice 10; the model loads at normal priority on the thread started above.
    os.nice(10)


def _load_model() -> None:
    from tasks.warming import provider

    started = time.perf_counter()
    try:
        load = getattr(provider(), "load", None)
        if load is not None:
            load()
        with _lock:
            _state["model_loaded"] = True
            _state["model_load_s"] = round(time.perf_counter() - started, 2)
    except Exception as exc:  # shown on the status line; the tasks will report it too
        with _lock:
            _state["model_error"] = f"{type(exc).__name__}: {exc}"
    publish()


@task_prerun.connect
def _before(task_id: str, task: Any, **_: Any) -> None:
    if _is_warming(task):
        _started[task_id] = time.perf_counter()


@task_postrun.connect
def _after(task_id: str, task: Any, retval: Any = None, state: str = "", **_: Any) -> None:
    started = _started.pop(task_id, None)
    if started is None:
        return
    with _lock:
        _state["busy_s"] += time.perf_counter() - started
        if state == "SUCCESS" and isinstance(retval, dict):
            _state["tasks"] += 1
            for name in ("texts", "generated", "cache_hits"):
                _state[name] += int(retval.get(name, 0))
        else:
            _state["failed"] += 1
    publish()


def publish() -> None:
    """Leave this process's warming report in Redis for a minute."""
    import redis

    settings = CacheSettings()
    origin = f"{ROLE}-{os.getpid()}"
    with _lock:
        report: dict[str, Any] = {"origin": origin, "at": time.time(), "role": ROLE, ROLE: dict(_state)}
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        client.set(Keyspace(settings.key_prefix).stats(origin), orjson.dumps(report), ex=60)
    except redis.RedisError:
        pass  # the status line misses one report; the next task publishes again
    finally:
        client.close()
