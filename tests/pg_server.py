"""Start a real Postgres for the tests: the OS's server binaries, in a temp dir, on a free port.

Postgres refuses to run as root, so when the tests run as root (CI does) the server runs as the
``postgres`` system user that the Debian package creates. ``wal_level=logical`` is on, so logical
replication slots work.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time

from tests.redis_server import free_port


def bin_dir() -> str:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(found)
    raise RuntimeError("no Postgres server binaries: apt-get install postgresql")


class PostgresServer:
    def __init__(self) -> None:
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

    def start(self) -> PostgresServer:
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
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
