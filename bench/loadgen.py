"""HTTP load for the service-level benchmark: wrk (Debian's ``wrk``) with a Lua script that draws
Zipf-distributed keys, or, where wrk cannot be had, a small asyncio generator doing the same.

Keys: rank ``r`` in 1..N, drawn with probability proportional to ``1 / r**s``; rank ``r`` is document
``d{r}`` of tenant ``t{r % tenants}``, so the hot keys are spread over the tenants. Both generators
keep ``connections`` keep-alive connections busy for ``seconds`` and report requests per second and
latency percentiles (wrk's own: it measures from the request's send to its response).

Both are closed loops: each connection sends its next request when the last one is answered, so the
faster endpoint also gets more load. :func:`run_paced` is the open loop a service meets in
production: requests arrive at a fixed mean rate (Poisson arrivals from a seeded generator, so two
endpoints get the very same arrivals and keys), each on a free keep-alive connection, and each is
timed from when it was due, not from when it could be sent, so a stall counts against every request
that arrived during it.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench._util import percentile

_WRK_SCRIPT = """
local n, s, tenants, prefix = {n}, {s}, {tenants}, "{prefix}"
local cdf, total = {{}}, 0
for i = 1, n do total = total + 1 / (i ^ s); cdf[i] = total end
init = function(args) math.randomseed(tonumber(args[1] or "1") + os.time()) end
request = function()
  local u, lo, hi = math.random() * total, 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return wrk.format("GET", prefix .. "t" .. (lo % tenants) .. "/d" .. lo)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCHJSON {{"requests": %d, "duration_us": %d, "errors": %d, "non_2xx": %d,'
    .. ' "p50_us": %d, "p99_us": %d}}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Keys:
    """Zipf-like keys: ``n`` documents over ``tenants`` tenants, exponent ``s``."""

    n: int = 20_000
    tenants: int = 20
    s: float = 1.1

    def path(self, prefix: str, rank: int) -> str:
        return f"{prefix}t{rank % self.tenants}/d{rank}"

    def sampler(self, seed: int) -> tuple[random.Random, list[float]]:
        cdf, total = [], 0.0
        for i in range(1, self.n + 1):
            total += 1 / i**self.s
            cdf.append(total)
        return random.Random(seed), cdf


@dataclass(frozen=True)
class LoadResult:
    tool: str
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def find_wrk(install: bool, say: Callable[[str], None] = print) -> str | None:
    """wrk's path; if missing and ``install``, try Debian's package (as root), saying so."""
    found = shutil.which("wrk")
    if found or not install:
        return found
    apt = shutil.which("apt-get")
    if apt is None or not _is_root():
        return None
    say("service    : installing wrk (apt-get install wrk)")
    for attempt in ([apt, "install", "-y", "-qq", "wrk"], [apt, "update", "-qq"], [apt, "install", "-y", "-qq", "wrk"]):
        done = subprocess.run(attempt, capture_output=True, text=True)
        if done.returncode == 0 and attempt[1] == "install":
            return shutil.which("wrk")
    return None


def _is_root() -> bool:
    return os.geteuid() == 0


def run_wrk(wrk: str, url: str, prefix: str, keys: Keys, seconds: float, connections: int = 32) -> LoadResult:
    script = _WRK_SCRIPT.format(n=keys.n, s=keys.s, tenants=keys.tenants, prefix=prefix)
    with tempfile.TemporaryDirectory(prefix="sc-wrk-") as tmp:
        path = Path(tmp) / "zipf.lua"
        path.write_text(script)
        cmd = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s", str(path), url]
        done = subprocess.run([*cmd, "--", str(random.randrange(1 << 30))], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCHJSON ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
    data = json.loads(lines[-1].removeprefix("BENCHJSON "))
    return LoadResult(
        "wrk",
        data["requests"],
        data["duration_us"] / 1e6,
        data["errors"] + data["non_2xx"],
        data["p50_us"] / 1000,
        data["p99_us"] / 1000,
    )


def run_paced(
    host: str, port: int, prefix: str, keys: Keys, seconds: float, rate: float, connections: int = 64, seed: int = 7
) -> LoadResult:
    """``rate`` requests a second for ``seconds``, open loop (see the module's docstring)."""
    try:
        import uvloop  # the generator's own overhead, which delays its arrivals, is lower under uvloop
    except ImportError:
        return asyncio.run(_paced_load(host, port, prefix, keys, seconds, rate, connections, seed))
    return uvloop.run(_paced_load(host, port, prefix, keys, seconds, rate, connections, seed))


def arrivals(keys: Keys, prefix: str, rate: float, seconds: float, seed: int) -> Iterator[tuple[float, str]]:
    """(seconds from the start, path) of each request of a Poisson stream at ``rate`` a second: the
    same seed gives the same times and ranks whatever the prefix."""
    rng, cdf = keys.sampler(seed)
    total, at = cdf[-1], 0.0
    while True:
        at += rng.expovariate(rate)
        if at >= seconds:
            return
        rank = bisect.bisect_left(cdf, rng.random() * total) + 1
        yield at, keys.path(prefix, rank)


async def _paced_load(
    host: str, port: int, prefix: str, keys: Keys, seconds: float, rate: float, connections: int, seed: int
) -> LoadResult:
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await asyncio.open_connection(host, port))
    latencies: list[float] = []
    errors = 0

    async def one(due: float, request: bytes) -> None:
        nonlocal errors
        reader, writer = await idle.get()  # waiting for a free connection counts: the request is due
        try:
            ok = await _get(reader, writer, request)
            latencies.append((time.perf_counter() - due) * 1000)
            errors += not ok
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
        finally:
            idle.put_nowait((reader, writer))

    pending: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    for at, path in arrivals(keys, prefix, rate, seconds, seed):
        due = started + at
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        task = asyncio.create_task(one(due, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    elapsed = time.perf_counter() - started
    while not idle.empty():
        idle.get_nowait()[1].close()
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return LoadResult("paced", len(latencies), elapsed, errors, p50, p99)


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bool:
    """Send one request on a keep-alive connection and read its whole response; True for a 200."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return head.startswith(b"HTTP/1.1 200")


def run_python(host: str, port: int, prefix: str, keys: Keys, seconds: float, connections: int = 32) -> LoadResult:
    """The fallback generator: ``connections`` asyncio keep-alive connections in this process."""
    return asyncio.run(_python_load(host, port, prefix, keys, seconds, connections))


async def _python_load(host: str, port: int, prefix: str, keys: Keys, seconds: float, connections: int) -> LoadResult:
    rng, cdf = keys.sampler(1)
    total = cdf[-1]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def one_connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                rank = bisect.bisect_left(cdf, rng.random() * total) + 1
                request = f"GET {keys.path(prefix, rank)} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
                start = time.perf_counter()
                ok = await _get(reader, writer, request)
                latencies.append((time.perf_counter() - start) * 1000)
                errors += not ok
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one_connection() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return LoadResult("python", len(latencies), elapsed, errors, p50, p99)
