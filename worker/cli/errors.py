"""What a command reports when it cannot do its job: one line on stderr and an exit code, never a
traceback.

::

    click.ClickException
     ├── CliFailure           exit 1: a backend unavailable, nothing cached, a check failed
     │    └── BadInput        exit 2: an invalid id, conflicting options, malformed settings
     └── click.UsageError
          └── OneLineUsageError   exit 2: what click itself refuses (a bad --count, a missing option)
"""

from __future__ import annotations

from typing import IO, Any

import click
from pydantic import ValidationError

from shared_cache import BackendUnavailable
from shared_cache.errors import BACKEND_ERRORS


class CliFailure(click.ClickException):
    """An expected failure: one line on stderr, exit code 1."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class BadInput(CliFailure):
    """A usage error (an invalid id, conflicting options, malformed settings): exit code 2."""

    exit_code = 2


class OneLineUsageError(click.UsageError):
    """click's own usage errors, shown as one line that says where the help is (exit code 2)."""

    def show(self, file: IO[Any] | None = None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"error: {one_line(self.format_message()).rstrip('.')}{hint}", err=True)

    @classmethod
    def of(cls, exc: click.UsageError) -> OneLineUsageError:
        return cls(exc.format_message(), exc.ctx)


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a Redis call raises when the server is away or refuses: a failure, not a bug (the
    library's own error, or what its client raises underneath: ``shared_cache.errors``)."""
    return (BackendUnavailable, *BACKEND_ERRORS)


def one_line(text: str) -> str:
    return " ".join(text.split())


def describe(exc: BaseException) -> str:
    """``exc`` as one line; the library's own errors already say what failed."""
    message = one_line(str(exc)) or type(exc).__name__
    return message if isinstance(exc, BackendUnavailable) else f"{type(exc).__name__}: {message}"


def first_error(exc: ValidationError) -> str:
    """The first problem pydantic found, as ``field: message``."""
    errors = exc.errors()
    if not errors:
        return one_line(str(exc))
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = one_line(str(first.get("msg"))).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
