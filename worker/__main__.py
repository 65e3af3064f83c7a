"""``python -m worker``: run the change listener until Ctrl-C or SIGTERM.

The Celery workers run separately: ``celery -A worker.app worker -Q invalidation,warming``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from shared_cache import CacheManager
from tasks.settings import TaskSettings
from tasks.support import mask_secrets, secrets_of
from worker.app import app as celery_app
from worker.listener import Listener
from worker.rules import Planner, load_rules
from worker.settings import ListenerSettings
from worker.sources.build import build_sources
from worker.sources.postgres import ReplicationSetupError


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


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--status-every", type=float, default=10.0, help="seconds between status lines")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = ListenerSettings()
    except ValueError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(main(settings, args.status_every))
    except ReplicationSetupError as exc:
        print(f"the listener cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
