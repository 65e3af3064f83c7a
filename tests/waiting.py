"""Waiting for something another process or task does, in async tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def wait_until(check: Callable[[], Any], within: float = 10.0) -> None:
    """Poll ``check`` (a plain or async callable) every 20 ms until it is truthy, or fail."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")
