"""A real Redis Cluster for the tests: three masters on loopback, no replicas, no persistence.

``LocalCluster.start()`` starts three ``redis-server --cluster-enabled yes`` (see
:class:`~tests.redis_server.RedisServer`) on free ports, joins them with
``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`` and returns once every
node logged that the cluster state is ok. ``tls=ca`` makes every node (and the cluster bus)
speak TLS only; ``user=(name, password)`` with ``rules`` is the clients' ACL user, and an
``admin`` user with every right creates the cluster. ``url`` is a ``redis+cluster://`` (or
``rediss+cluster://``) URL naming every node. The fixture of a test module is one line::

    @pytest.fixture
    def cluster() -> Iterator[LocalCluster]:
        yield from redis_cluster()
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any, Final

import redis
from redis.crc import key_slot

from tests.redis_server import RedisServer, _free_port, require_redis_server

__all__ = ["ADMIN", "LocalCluster", "redis_cluster"]

ADMIN: Final = ("admin", "admin-pass-0123")
"""The ACL user with every right that creates the cluster (with ``user``)."""
_OK: Final = b"Cluster state changed: ok"


class LocalCluster:
    """Three cluster-enabled ``redis-server`` masters; see the module docstring."""

    def __init__(
        self,
        executable: str,
        masters: int = 3,
        *,
        tls: Any = None,
        user: tuple[str, str] | None = None,
        rules: Sequence[str] = ("~*", "&*", "+@all"),
    ) -> None:
        self.tls = tls is not None
        self.user = user
        self.nodes: list[RedisServer] = []
        for _ in range(masters):
            options = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000",
                "--cluster-port", str(_free_port()),
            ]  # fmt: skip
            if tls is not None:
                options += ["--tls-cluster", "yes", "--tls-replication", "yes"]
            if user is not None:
                name, password = ADMIN
                options += ["--user", name, "on", f">{password}", "~*", "&*", "+@all"]
            self.nodes.append(
                RedisServer(executable, tls=tls, user=user, rules=rules, options=options)
            )

    @property
    def url(self) -> str:
        """``redis+cluster://[user:password@]127.0.0.1:P1,127.0.0.1:P2,...``."""
        scheme = "rediss+cluster" if self.tls else "redis+cluster"
        login = f"{self.user[0]}:{self.user[1]}@" if self.user is not None else ""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"{scheme}://{login}{hosts}"

    @property
    def ca_path(self) -> str:
        """The CA file the nodes' certificates come from (with ``tls``)."""
        return self.nodes[0].ca_path

    def start(self) -> LocalCluster:
        """Start the nodes, create the cluster and wait until every node says it is ok."""
        for node in self.nodes:
            node.start()
        command = [
            require_redis_cli(),
            "--cluster", "create",
            *(f"127.0.0.1:{node.port}" for node in self.nodes),
            "--cluster-replicas", "0",
            "--cluster-yes",
        ]  # fmt: skip
        command += self._cli_options()
        done = subprocess.run(command, capture_output=True, timeout=30.0, check=False)
        if done.returncode != 0 or b"[OK] All 16384 slots covered" not in done.stdout:
            raise RuntimeError(
                f"redis-cli --cluster create failed ({done.returncode}):\n"
                f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}"
            )
        for node in self.nodes:
            node.wait_output(_OK)
        return self

    def _cli_options(self) -> list[str]:
        options: list[str] = []
        if self.tls:
            options += ["--tls", "--cacert", self.ca_path]
        if self.user is not None:
            options += ["--user", ADMIN[0], "--pass", ADMIN[1], "--no-auth-warning"]
        return options

    def admin(self, node: RedisServer) -> redis.Redis:
        """A blocking client of one node, as the admin user (for set-up and clean-up)."""
        options: dict[str, Any] = {"host": "127.0.0.1", "port": node.port, "socket_timeout": 5}
        if self.tls:
            options.update(ssl=True, ssl_ca_certs=self.ca_path)
        if self.user is not None:
            options.update(username=ADMIN[0], password=ADMIN[1])
        return redis.Redis(**options)

    def owner(self, key: str) -> RedisServer:
        """The node that serves ``key``'s slot."""
        with self.admin(self.nodes[0]) as client:
            for start, end, (_host, port, *_), *_replicas in client.execute_command(
                "CLUSTER", "SLOTS"
            ):
                if start <= key_slot(key.encode()) <= end:
                    return next(node for node in self.nodes if node.port == port)
        raise AssertionError(f"no node serves the slot of {key!r}")  # pragma: no cover

    def move_slot(self, key: str, to: RedisServer) -> None:
        """Move ``key``'s slot, with its keys, to the node ``to`` (as a resharding does:
        IMPORTING/MIGRATING, MIGRATE, then SETSLOT NODE on every node)."""
        slot = key_slot(key.encode())
        source = self.owner(key)
        with self.admin(source) as src, self.admin(to) as dst:
            src_id, dst_id = (
                src.execute_command("CLUSTER MYID"),
                dst.execute_command("CLUSTER MYID"),
            )
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
            login = ["AUTH2", *ADMIN] if self.user is not None else []
            while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                src.execute_command(
                    "MIGRATE", "127.0.0.1", to.port, "", 0, 5000, *login, "KEYS", *keys
                )
        for node in self.nodes:
            with self.admin(node) as client:
                client.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)

    def flush(self) -> None:
        """Delete every key on every node."""
        for node in self.nodes:
            with self.admin(node) as client:
                client.flushall()

    def close(self) -> None:
        """Stop the nodes and remove their directories."""
        for node in self.nodes:
            node.close()


def require_redis_cli() -> str:
    """The path of ``redis-cli`` (installed with redis-server)."""
    require_redis_server()
    path = shutil.which("redis-cli")
    assert path is not None, "redis-cli is not on PATH; it comes with redis-server (apt)"
    return path


def redis_cluster(**options: Any) -> Iterator[LocalCluster]:
    """Generator for a fixture: a started cluster (``options`` as LocalCluster takes them),
    closed afterwards."""
    cluster = LocalCluster(require_redis_server(), **options)
    try:
        yield cluster.start()
    finally:
        cluster.close()
