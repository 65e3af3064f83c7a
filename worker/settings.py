"""Settings of the worker: defined in ``tasks.settings`` (imports go worker -> tasks), re-exported here."""

from tasks.settings import WorkerSettings

__all__ = ["WorkerSettings"]
