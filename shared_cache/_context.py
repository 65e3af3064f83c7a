"""``Context`` and ``with_context`` (section 10): validated tenant/agent/conversation/collection ids.

A ``Context`` is immutable and validated when built. ``with_context`` checks that a function gets
the parts it needs: from a ``ctx`` argument, or else from the context bound with ``Context.bind``
(a ``contextvars`` variable, so it follows asyncio tasks).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from ._keys import encode_id, validate_tenant
from .errors import InvalidKeyError

P = ParamSpec("P")
R = TypeVar("R")

_current: contextvars.ContextVar[Context | None] = contextvars.ContextVar("shared_cache_context", default=None)


@dataclass(frozen=True, slots=True)
class Context:
    tenant_id: str | None = None
    agent_id: str | None = None
    conversation_id: str | None = None
    collection_id: str | None = None

    def __post_init__(self) -> None:
        if self.tenant_id is not None:
            validate_tenant(self.tenant_id)
        for name in ("agent_id", "conversation_id", "collection_id"):
            value = getattr(self, name)
            if value is not None:
                encode_id(value, name)  # raises InvalidKeyError for an unusable id

    def get_tenant_id(self) -> str:
        if self.tenant_id is None:
            raise InvalidKeyError("this Context has no tenant_id")
        return self.tenant_id

    def get_agent_id(self) -> str | None:
        return self.agent_id

    def get_conversation_id(self) -> str | None:
        return self.conversation_id

    def get_collection_id(self) -> str | None:
        return self.collection_id

    @staticmethod
    def current() -> Context | None:
        return _current.get()

    @contextmanager
    def bind(self) -> Iterator[Context]:
        """Make this the current context inside a ``with`` block."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)


def with_context(
    tenant: bool = False, agent: bool = False, conversation: bool = False, collection: bool = False
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorate an async function taking ``ctx``: fill it from the bound context if not passed and
    check that the required parts are present, raising ``InvalidKeyError`` (a ``ValueError``)."""
    required = {
        "tenant_id": tenant,
        "agent_id": agent,
        "conversation_id": conversation,
        "collection_id": collection,
    }

    def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        signature = inspect.signature(func)
        if "ctx" not in signature.parameters:
            raise TypeError(f"@with_context needs a 'ctx' parameter on {func.__qualname__}")

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind_partial(*args, **kwargs)
            ctx: Any = bound.arguments.get("ctx") or _current.get()
            if not isinstance(ctx, Context):
                raise InvalidKeyError(f"{func.__qualname__} needs a Context (pass ctx= or bind one), got {ctx!r}")
            missing = [name for name, needed in required.items() if needed and getattr(ctx, name) is None]
            if missing:
                raise InvalidKeyError(f"{func.__qualname__} needs {', '.join(missing)} in its Context")
            bound.arguments["ctx"] = ctx
            return await func(*bound.args, **bound.kwargs)

        return wrapper

    return decorate
