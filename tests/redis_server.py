"""Real Redis servers for the tests (see ``worker.embedded``)."""

from worker.embedded import EmbeddedRedis as RedisServer
from worker.embedded import free_port, server_binary

__all__ = ["RedisServer", "free_port", "server_binary"]
