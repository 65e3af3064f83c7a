"""Sentry gets errors, never cached values or row contents (real sentry-sdk, local collector)."""

from __future__ import annotations

import gzip
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

from worker.sentry import scrub


class Collector(BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        Collector.bodies.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[str]:
    Collector.bodies = []
    server = HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://publickey@127.0.0.1:{server.server_port}/1"
    server.shutdown()


def test_events_reach_sentry_without_cached_values(collector: str) -> None:
    code = textwrap.dedent(
        """
        import sentry_sdk
        from tasks.settings import TaskSettings
        from worker.sentry import init_sentry

        assert init_sentry(TaskSettings(sentry_dsn=DSN))
        def task(record):
            cached_value = {"ssn": "SECRET-CACHED-VALUE"}
            sentry_sdk.add_breadcrumb(category="redis", message="SET key SECRET-CACHED-VALUE")
            raise RuntimeError("task failed")
        try:
            task({"title": "SECRET-ROW-CONTENT"})
        except RuntimeError:
            sentry_sdk.capture_exception()
        sentry_sdk.flush(5)
        """
    ).replace("DSN", repr(collector))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    sent = b"".join(Collector.bodies)
    assert b"task failed" in sent  # the error itself arrived
    assert b"SECRET-CACHED-VALUE" not in sent and b"SECRET-ROW-CONTENT" not in sent


def test_no_dsn_no_sentry() -> None:
    from tasks.settings import TaskSettings
    from worker.sentry import init_sentry

    assert init_sentry(TaskSettings(sentry_dsn="")) is False


def test_scrub_drops_values() -> None:
    event = {
        "exception": {"values": [{"stacktrace": {"frames": [{"function": "f", "vars": {"value": "x"}}]}}]},
        "extra": {"payload": "x"},
        "breadcrumbs": {"values": [{"category": "redis", "message": "SET k secret", "data": {"v": "secret"}}]},
        "contexts": {"celery": {"args": ["secret"]}, "runtime": {"name": "CPython"}},
    }
    cleaned = scrub(event)
    assert "vars" not in cleaned["exception"]["values"][0]["stacktrace"]["frames"][0]
    assert "extra" not in cleaned and cleaned["breadcrumbs"]["values"][0] == {"category": "redis", "message": "SET"}
    assert cleaned["contexts"] == {"runtime": {"name": "CPython"}}
