"""A TCP proxy in front of Redis that counts round trips, the way a client's latency sees them.

A round trip is the client sending after it got a reply: commands written together (pipelined)
are one round trip however many they are, and however the kernel splits their bytes. So that the
count does not depend on how fast the server answers, the proxy holds what the client sends for
``delay`` seconds before passing it on: a client that writes a burst of commands at once has
written all of it long before the first reply can reach it, and a client that waits for a reply
before its next command is counted once more. Counts are per client connection.

``cut_on(command)`` drops the connection that sends that command next, before Redis gets it: the
client loses its connection with the command (and whatever it pipelined with it) in flight.

It runs its own event loop in a thread, so the client under test keeps its loop to itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from urllib.parse import urlsplit

_READ = 1 << 16


class RoundTripProxy:
    def __init__(self, redis_url: str, delay: float = 0.1) -> None:
        target = urlsplit(redis_url)
        self.target = (target.hostname or "127.0.0.1", target.port or 6379)
        self.delay = delay
        self.round_trips: Counter[int] = Counter()  # per client connection (numbered from 1)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._connections = 0
        self._cut_on: bytes | None = None
        self.cuts = 0
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> RoundTripProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # all ended before the loop stops

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def counts(self) -> list[int]:
        """Round trips of each connection that made any, busiest first (a snapshot)."""

        async def snapshot() -> list[int]:
            return sorted((n for n in self.round_trips.values() if n), reverse=True)

        return asyncio.run_coroutine_threadsafe(snapshot(), self._loop).result(10)

    def cut_on(self, command: str) -> None:
        """Drop the next connection that sends ``command`` (once)."""
        self._cut_on = command.encode()

    def reset(self) -> None:
        async def clear() -> None:
            for conn in self.round_trips:
                self.round_trips[conn] = 0

        asyncio.run_coroutine_threadsafe(clear(), self._loop).result(10)

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        self._connections += 1
        conn = self._connections
        server_in, server_out = await asyncio.open_connection(*self.target)
        replied = [True]  # a reply reached the client since it last sent (True: its first send counts)
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def from_client() -> None:
            while data := await client_in.read(_READ):
                if self._cut_on is not None and b"\r\n" + self._cut_on + b"\r\n" in data:
                    self._cut_on = None
                    self.cuts += 1
                    client_out.transport.abort()
                    server_out.transport.abort()
                    break
                if replied[0]:
                    self.round_trips[conn] += 1
                    replied[0] = False
                held.put_nowait((loop.time() + self.delay, data))
            held.put_nowait((0.0, b""))

        async def to_server() -> None:
            while True:
                due, data = await held.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - loop.time()))
                server_out.write(data)
                await server_out.drain()
            server_out.close()

        async def to_client() -> None:
            while data := await server_in.read(_READ):
                client_out.write(data)
                await client_out.drain()
                replied[0] = True
            client_out.close()

        pumps = [asyncio.ensure_future(pump()) for pump in (from_client, to_server, to_client)]
        try:  # until the connection ends on one side; then the other pumps stop too
            await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            client_out.transport.abort()
            server_out.transport.abort()
