"""The ``shared-cache`` group: its options, its entry point, and options several commands share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from shared_cache import __version__

from .errors import OneLineUsageError
from .state import State

F = Callable[..., Any]
# click 8.2+ raises it for a group called without arguments (shows the help, exit code 2); 8.1 exits 0.
NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


class OperatorGroup(click.Group):
    """A group whose usage errors (and those of its subcommands) are one line, exit code 2."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except NO_ARGS_IS_HELP:
            raise  # no arguments at all: the help, as click shows it
        except click.UsageError as exc:
            raise OneLineUsageError.of(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (NO_ARGS_IS_HELP, OneLineUsageError):
            raise
        except click.UsageError as exc:  # a subcommand's arguments
            raise OneLineUsageError.of(exc) from None


@click.group(cls=OperatorGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (for scripts) instead of text.")
@click.option("--redis-url", default=None, metavar="URL", help="Redis URL (default: SHARED_CACHE_REDIS_URL).")
@click.option("--key-prefix", default=None, metavar="PREFIX", help="Key prefix (default: SHARED_CACHE_KEY_PREFIX).")
@click.version_option(__version__, prog_name="shared-cache")
@click.pass_context
def cli(ctx: click.Context, as_json: bool, redis_url: str | None, key_prefix: str | None) -> None:
    """Operate shared_cache: inspect, read, invalidate, warm, replay dead letters, diagnose.

    Settings come from the environment (SHARED_CACHE_*, SHARED_CACHE_WORKER_*). Exit codes: 0 done,
    1 a failure (a backend unavailable, a doctor check failed, nothing cached), 2 a usage error
    (a bad option, an invalid id, a malformed URL or setting).
    """
    ctx.obj = State(as_json, redis_url, key_prefix)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``shared-cache`` script."""
    cli.main(args=argv, prog_name="shared-cache")


def identity_options(func: F) -> F:
    """``--tenant`` and the context of a read: ``--agent``, ``--conversation``, ``--collection``."""
    for option in reversed(
        (
            click.option("--tenant", required=True, help="Tenant id."),
            click.option("--agent", default=None, help="Agent id (context of the read)."),
            click.option("--conversation", default=None, help="Conversation id (context of the read)."),
            click.option("--collection", default=None, help="Collection id (context of the read)."),
        )
    ):
        func = option(func)
    return func
