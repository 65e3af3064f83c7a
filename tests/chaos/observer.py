"""The eviction observer: a subscriber of the eviction channel in the harness, recording every
``EvictionEvent`` with the wall clock it arrived at.

It is how the suite sees, from outside, that a change was processed (an invalidation publishes its
event from the script that bumped the generations) and which rows an invalidation covered. It
reconnects by itself when Redis restarts; what was published while it was away is not seen, and the
times it was away are recorded.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable

import redis

from shared_cache import EvictionEvent


class EvictionObserver:
    def __init__(self, redis_url: str, channel: str) -> None:
        self.redis_url, self.channel = redis_url, channel
        self.events: list[tuple[float, EvictionEvent]] = []
        self.away: list[tuple[float, float]] = []  # (lost, back) of its own subscription
        self.malformed = 0
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eviction-observer", daemon=True)

    def start(self, within: float = 10.0) -> EvictionObserver:
        self._thread.start()
        if not self.subscribed.wait(within):
            raise TimeoutError("the eviction observer did not subscribe")
        return self

    def _run(self) -> None:
        lost_at: float | None = None
        while not self._stop.is_set():
            client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=1)
            pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.channel)
                if lost_at is not None:
                    self.away.append((lost_at, time.time()))
                    lost_at = None
                self.subscribed.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is not None and message.get("type") == "message":
                        self._keep(time.time(), message["data"])
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                if lost_at is None:
                    lost_at = time.time()
                self.subscribed.clear()
                time.sleep(0.05)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()
                client.close()

    def _keep(self, at: float, raw: bytes) -> None:
        try:
            event = EvictionEvent.from_json(raw)
        except ValueError:
            self.malformed += 1
            return
        with self._lock:
            self.events.append((at, event))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def snapshot(self) -> list[tuple[float, EvictionEvent]]:
        with self._lock:
            return list(self.events)

    def first_change_after(self, at: float, committed_after: float) -> float | None:
        """When the first invalidation of a change committed after ``committed_after`` arrived after
        ``at`` (conservative invalidations carry no commit time and do not count)."""
        return next(
            (
                seen
                for seen, event in self.snapshot()
                if seen > at and event.caused_at is not None and event.caused_at > committed_after
            ),
            None,
        )

    def covering(self, scopes: Iterable[tuple[str, ...]], after: float) -> list[tuple[float, EvictionEvent]]:
        """Events after ``after`` that bumped any of ``scopes``."""
        wanted = set(scopes)
        return [(seen, e) for seen, e in self.snapshot() if seen > after and wanted.intersection(e.scopes)]
