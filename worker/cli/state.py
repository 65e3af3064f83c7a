"""What every command shares: the group's options, the settings (read and checked when first used),
secret scrubbing, running async work on a manager of its own, and printing text or JSON."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsError

from shared_cache import CacheManager, CacheSettings, InvalidKeyError
from tasks.settings import TaskSettings
from tasks.support import mask_secrets, mask_url, secrets_of
from worker.settings import ListenerSettings
from worker.urls import broker_url_problem, database_url_problem, redis_url_problem, sentinels_problem

from .errors import BadInput, CliFailure, describe, first_error, redis_errors
from .render import dumps

T = TypeVar("T")
S = TypeVar("S", bound=BaseSettings)

OPERATOR_SOCKET_TIMEOUT = 5.0  # SCAN, INFO and friends are not on a latency budget
OPERATOR_CONNECT_TIMEOUT = 2.0
# Settings whose raw values are scrubbed from messages even when they do not parse.
SECRET_ENV = ("SHARED_CACHE_REDIS_URL", "SHARED_CACHE_WORKER_BROKER_URL", "SHARED_CACHE_WORKER_DATABASE_URL")


class State:
    """Options of the group, and settings read lazily (``--help`` works whatever the environment)."""

    def __init__(self, as_json: bool, redis_url: str | None, key_prefix: str | None) -> None:
        self.as_json = as_json
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self._cache: CacheSettings | None = None
        self._tasks: TaskSettings | None = None
        self._listener: ListenerSettings | None = None

    # -- settings ---------------------------------------------------------------------------------
    @property
    def cache(self) -> CacheSettings:
        """The library's settings for an operator's manager: no memory tier, no subscriber, no stats
        of its own, patient timeouts. The Redis URL and sentinels are checked here."""
        if self._cache is None:
            overrides: dict[str, Any] = {}
            if self.redis_url is not None:
                overrides["redis_url"] = self.redis_url
            if self.key_prefix is not None:
                overrides["key_prefix"] = self.key_prefix
            settings = _read(lambda: CacheSettings(**overrides), "invalid settings")
            where = "--redis-url" if self.redis_url is not None else "SHARED_CACHE_REDIS_URL"
            check_url(where, settings.redis_url.get_secret_value(), redis_url_problem)
            if settings.redis_sentinels:
                problem = sentinels_problem(settings.redis_sentinels)
                if problem:
                    raise BadInput(f"invalid SHARED_CACHE_REDIS_SENTINELS: {problem}")
            self._cache = settings.model_copy(
                update={
                    "memory_enabled": False,
                    "subscriber_enabled": False,
                    "stats_publish_seconds": 0.0,
                    "socket_timeout_seconds": max(settings.socket_timeout_seconds, OPERATOR_SOCKET_TIMEOUT),
                    "connect_timeout_seconds": max(settings.connect_timeout_seconds, OPERATOR_CONNECT_TIMEOUT),
                }
            )
        return self._cache

    @property
    def tasks(self) -> TaskSettings:
        if self._tasks is None:
            self._tasks = _read(TaskSettings, "invalid worker settings")
        return self._tasks

    @property
    def listener(self) -> ListenerSettings:
        if self._listener is None:
            self._listener = _read(ListenerSettings, "invalid worker settings")
        return self._listener

    @property
    def broker_url(self) -> str:
        """The Celery broker URL, checked."""
        url = self.tasks.broker_url.get_secret_value()
        return check_url("SHARED_CACHE_WORKER_BROKER_URL", url, broker_url_problem)

    @property
    def database_url(self) -> str:
        """The listener's database (doctor's checks), checked."""
        url = self.listener.database_url.get_secret_value()
        return check_url("SHARED_CACHE_WORKER_DATABASE_URL", url, database_url_problem)

    @property
    def redis_display(self) -> str:
        return mask_url(self.cache.redis_url.get_secret_value())

    @property
    def broker_display(self) -> str:
        return mask_url(self.broker_url)

    def celery(self) -> Any:
        """A Celery app on the configured broker (to send tasks; close it when done)."""
        settings, _ = self.tasks, self.broker_url  # first: importing worker.app builds an app from the environment
        from worker.app import make_app

        return make_app(settings)

    # -- output and failures ----------------------------------------------------------------------
    def scrub(self, text: str) -> str:
        """``text`` as one line, without any secret of the settings (error messages may quote them)."""
        found: list[str] = []
        for url in [self.redis_url or "", *(os.environ.get(name, "") for name in SECRET_ENV)]:
            found += secrets_of(url)
        for settings in (self._cache, self._tasks, self._listener):
            if settings is not None:
                found += _secrets_in(settings)
        return " ".join(mask_secrets(text, found).split())

    def run(self, work: Callable[[CacheManager], Awaitable[T]]) -> T:
        """Run ``work`` with a manager of its own (not the singleton) on a new event loop; expected
        failures become one line and an exit code."""
        settings = self.cache  # settings errors first, as usage errors

        async def main() -> T:
            manager = CacheManager(settings)
            try:
                return await work(manager)
            finally:
                with contextlib.suppress(Exception):
                    await manager.close()

        try:
            return asyncio.run(main())
        except InvalidKeyError as exc:
            raise BadInput(self.scrub(str(exc))) from None
        except redis_errors() as exc:
            raise CliFailure(self.scrub(f"Redis at {self.redis_display}: {describe(exc)}")) from None

    def emit(self, data: Any, text: str | Callable[[], str]) -> None:
        """Print ``data`` as JSON with ``--json``, else the text (a callable is only rendered then)."""
        if self.as_json:
            click.echo(dumps(data))
        else:
            click.echo(text() if callable(text) else text)


def check_url(where: str, url: str, problem_of: Callable[[str], str | None]) -> str:
    """``url`` if it is well formed, else a usage error naming ``where`` it came from."""
    problem = problem_of(url)
    if problem:
        message = f"invalid {where} {mask_url(url)!r}: {problem}"
        raise BadInput(mask_secrets(message, secrets_of(url)))  # the problem may quote the URL
    return url


def _secrets_in(settings: BaseSettings) -> list[str]:
    """The passwords of a settings model's URLs, and its other secrets (API keys) whole."""
    found: list[str] = []
    for name, value in settings:
        if isinstance(value, SecretStr) and value.get_secret_value():
            secret = value.get_secret_value()
            found += secrets_of(secret) if name.endswith("_url") else [secret]
    return found


def _read(make: Callable[[], S], what: str) -> S:
    try:
        return make()
    except ValidationError as exc:
        raise BadInput(f"{what}: {first_error(exc)}") from None
    except SettingsError as exc:  # a value that is not the JSON a list setting needs
        raise BadInput(f'{what}: {exc} (a list setting takes JSON, e.g. ["a", "b"])') from None
