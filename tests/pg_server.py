"""A real Postgres for the tests (see ``worker.embedded``)."""

from worker.embedded import EmbeddedPostgres as PostgresServer
from worker.embedded import bin_dir

__all__ = ["PostgresServer", "bin_dir"]
