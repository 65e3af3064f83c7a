"""A local 3-master Redis Cluster for the tests (``redis-server --cluster-enabled yes`` x3)."""

from __future__ import annotations

import shutil
import subprocess
import time

from devtools.embedded import EmbeddedRedis as RedisServer
from devtools.embedded import free_port


class RedisCluster:
    def __init__(self, masters: int = 3) -> None:
        self.nodes = [
            RedisServer(extra=["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]) for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisCluster:
        for node in self.nodes:
            # each node keeps its cluster state file in its own directory; its cluster bus gets a
            # free port of its own (the default, port + 10000, may be past 65535)
            node.extra += ["--cluster-config-file", f"{node.dir}/nodes.conf", "--cluster-port", str(free_port())]
            node.start()
        cli = shutil.which("redis-cli") or shutil.which("valkey-cli")
        if cli is None:
            raise RuntimeError("redis-cli not found")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = subprocess.run(
                [cli, "-p", str(self.nodes[0].port), "cluster", "info"], capture_output=True, text=True
            ).stdout
            if "cluster_state:ok" in info:
                return self
            time.sleep(0.1)
        raise RuntimeError("cluster did not become ready")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
