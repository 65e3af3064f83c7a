"""``python -m worker``: run the change listener until Ctrl-C or SIGTERM.

The Celery workers run separately: ``celery -A worker.app worker -Q invalidation,warming``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from pydantic import ValidationError
from pydantic_settings import SettingsError

from shared_cache import CacheManager
from tasks.settings import TaskSettings
from tasks.support import mask_secrets, secrets_of
from worker.app import app as celery_app
from worker.cli.errors import first_error
from worker.listener import Listener
from worker.rules import Planner, load_rules
from worker.settings import ListenerSettings
from worker.sources.build import build_sources
from worker.sources.postgres import ReplicationSetupError
from worker.urls import broker_url_problem, database_url_problem, redis_url_problem


async def main(settings: ListenerSettings, status_every: float) -> None:
    cache = CacheManager.configure(memory_enabled=False)
    planner = Planner(load_rules(settings.rules_file))
    redis_url = cache.settings.redis_url.get_secret_value()
    listener = Listener(settings, planner, celery_app, cache, redis_url, TaskSettings())
    for source in build_sources(settings, planner, listener, redis_url):
        listener.add_source(source)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def status() -> None:
        while not stop.is_set():
            await asyncio.sleep(status_every)
            try:
                report = await listener.publish_report()  # read by `shared-cache stats`
            except Exception as exc:  # Redis away: still log locally
                report = {"stats": listener.stats, "error": mask_secrets(str(exc), secrets_of(redis_url))}
            logging.info("status %s", report)

    reporter = asyncio.create_task(status())
    if settings.metrics_port:
        from worker.metrics import serve_metrics

        metrics = asyncio.create_task(serve_metrics(listener, settings.metrics_port))
        logging.info("metrics on http://0.0.0.0:%d/metrics", settings.metrics_port)
    run = asyncio.create_task(listener.run(stop), name="listener")
    ready = asyncio.create_task(listener.ready.wait())
    try:
        await asyncio.wait({run, ready}, return_when=asyncio.FIRST_COMPLETED)
        if listener.ready.is_set():  # every source is prepared: changes committed from now on are seen
            names = ", ".join(s.name for s in listener.sources)
            logging.info("listening to %s for %s", names, ", ".join(planner.tables))
        await run
    finally:
        ready.cancel()
        reporter.cancel()
        if settings.metrics_port:
            metrics.cancel()
            await asyncio.gather(metrics, return_exceptions=True)
        await cache.close()
    logging.info("stopped; %s", dict(sorted(listener.stats.items())))


def listener_broker_problem(url: str) -> str | None:
    problem = broker_url_problem(url)
    if problem is None and redis_url_problem(url) is not None:
        # The listener reads the broker's queues to know a sent invalidation is still waiting.
        return "the listener needs a Redis broker: redis://, rediss:// or unix:// (one URL, no failover list)"
    return problem


def url_problem(settings: ListenerSettings) -> str | None:
    """What is wrong with a URL the listener will connect to, naming its setting; None if nothing."""
    from shared_cache import CacheSettings
    from tasks.support import mask_url

    try:
        cache, tasks = CacheSettings(), TaskSettings()
    except ValidationError as exc:
        return first_error(exc)
    except SettingsError as exc:  # a value that is not the JSON a dict or list setting needs
        return str(exc)
    checks = [
        ("SHARED_CACHE_REDIS_URL", cache.redis_url.get_secret_value(), redis_url_problem),
        ("SHARED_CACHE_WORKER_BROKER_URL", tasks.broker_url.get_secret_value(), listener_broker_problem),
    ]
    if "postgres" in settings.sources:
        checks.append(
            ("SHARED_CACHE_WORKER_DATABASE_URL", settings.database_url.get_secret_value(), database_url_problem)
        )
    for name, url, check in checks:
        problem = check(url)
        if problem is not None:
            return f"{name}={mask_url(url)}: {problem}"
    return None


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--status-every", type=float, default=10.0, help="seconds between status lines")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = ListenerSettings()
    except ValidationError as exc:
        print(f"invalid settings: {first_error(exc)}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    problem = url_problem(settings)
    if problem is not None:  # a typo of the operator's, said in one line (no traceback from a connect)
        print(f"invalid settings: {problem}", file=sys.stderr)
        return 2
    try:
        asyncio.run(main(settings, args.status_every))
    except ReplicationSetupError as exc:
        print(f"the listener cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
