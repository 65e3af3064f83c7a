"""HTTP load for the service-level benchmark: wrk (Debian's ``wrk``) with a Lua script that draws
Zipf-distributed keys, or, where wrk cannot be had, a small asyncio generator doing the same.

Keys: rank ``r`` in 1..N, drawn with probability proportional to ``1 / r**s``; rank ``r`` is document
``d{r}`` of tenant ``t{r % tenants}``, so the hot keys are spread over the tenants. Both generators
keep ``connections`` keep-alive connections busy for ``seconds`` and report requests per second and
latency percentiles (wrk's own: it measures from the request's send to its response).
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
from collections.abc import Callable
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
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                latencies.append((time.perf_counter() - start) * 1000)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one_connection() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return LoadResult("python", len(latencies), elapsed, errors, p50, p99)
