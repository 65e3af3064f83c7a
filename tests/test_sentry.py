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


def test_exception_messages_and_log_parameters_reach_sentry_scrubbed(collector: str) -> None:
    code = textwrap.dedent(
        """
        import logging
        import sentry_sdk
        from tasks.settings import TaskSettings
        from worker.sentry import init_sentry

        assert init_sentry(TaskSettings(sentry_dsn=DSN, broker_url="redis://:hunter2-secret@127.0.0.1:1/1"))
        log = logging.getLogger("shared_cache.worker")
        log.warning("dead letter from %s: %s", "redis", "SECRET-ROW-CONTENT")  # a breadcrumb
        log.error("could not send %d task calls (%s)", 3, "SECRET-LOG-PARAMETER")  # an event
        try:
            raise ValueError("tenant 'SECRET-TENANT' refused by redis://:hunter2-secret@127.0.0.1:1/1")
        except ValueError:
            sentry_sdk.capture_exception()
        sentry_sdk.flush(5)
        """
    ).replace("DSN", repr(collector))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    sent = b"".join(Collector.bodies)
    assert b"could not send %d task calls (%s)" in sent  # the template of the log line
    assert b"dead letter from %s: %s" in sent  # the breadcrumb's template
    assert b"ValueError" in sent and b"refused by redis://:***@127.0.0.1:1/1" in sent
    for secret in (b"SECRET-ROW-CONTENT", b"SECRET-LOG-PARAMETER", b"SECRET-TENANT", b"hunter2"):
        assert secret not in sent, secret
