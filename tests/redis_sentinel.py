"""Redis Sentinel for the tests: a master, one replica and three sentinels on loopback.

``LocalSentinel.start()`` starts the master, the replica (``--replicaof`` the master; it
returns once the replica has synced) and three sentinels watching service ``SERVICE`` with
quorum 2, a down-after of 400 ms and a failover timeout of 3 s, so that a master killed
(:meth:`LocalSentinel.kill_master`) is replaced within a few seconds
(:meth:`LocalSentinel.wait_failover`). The sentinels are told of each other and of the
replica in their configuration files, so nothing waits for their discovery.

``tls=ca`` makes every process speak TLS only (replication and the sentinels' links too);
``user=(name, password)`` is the ACL user of the master and the replica (it replicates, and
the sentinels log in as it); ``sentinel_password`` protects the sentinels (``requirepass``).
``url`` is the ``redis+sentinel://`` (or ``rediss+sentinel://``) URL naming the sentinels.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Final

import redis

from tests.redis_server import RedisServer, _free_port, require_redis_server

__all__ = ["SERVICE", "LocalSentinel", "redis_sentinel"]

SERVICE: Final = "callflow-test"
_SYNCED: Final = b"MASTER <-> REPLICA sync: Finished with success"
_SWITCHED: Final = b"+switch-master " + SERVICE.encode()
_WAIT: Final = 20.0


class LocalSentinel:
    """A master, a replica and three sentinels; see the module docstring."""

    def __init__(
        self,
        executable: str,
        *,
        tls: Any = None,
        user: tuple[str, str] | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.tls = tls is not None
        self.user = user
        self.sentinel_password = sentinel_password
        self.master = RedisServer(executable, tls=tls, user=user, options=self._data_options())
        replicate = ["--replicaof", "127.0.0.1", str(self.master.port)]
        if user is not None:
            replicate += ["--masteruser", user[0], "--masterauth", user[1]]
        self.replica = RedisServer(
            executable, tls=tls, user=user, options=[*self._data_options(), *replicate]
        )
        ports = [_free_port() for _ in range(3)]
        ids = [os.urandom(20).hex() for _ in ports]
        self.sentinels = [
            RedisServer(
                executable,
                port,
                tls=tls,
                config=self._config(ids[i], list(zip(ports, ids, strict=True))),
                options=["--sentinel", *(["--tls-replication", "yes"] if tls else [])],
                ready=b"+monitor master " + SERVICE.encode(),
            )
            for i, port in enumerate(ports)
        ]

    def _data_options(self) -> list[str]:
        # A replica syncs at once (not after the default 5 s wait for more replicas).
        options = ["--repl-diskless-sync-delay", "0"]
        return [*options, "--tls-replication", "yes"] if self.tls else options

    def _config(self, me: str, sentinels: list[tuple[int, str]]) -> str:
        lines = [
            f"sentinel myid {me}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2",
            f"sentinel down-after-milliseconds {SERVICE} 400",
            f"sentinel failover-timeout {SERVICE} 3000",
            f"sentinel known-replica {SERVICE} 127.0.0.1 {self.replica.port}",
            *(
                f"sentinel known-sentinel {SERVICE} 127.0.0.1 {port} {other}"
                for port, other in sentinels
                if other != me
            ),
        ]
        if self.user is not None:
            lines += [
                f"sentinel auth-user {SERVICE} {self.user[0]}",
                f"sentinel auth-pass {SERVICE} {self.user[1]}",
            ]
        if self.sentinel_password is not None:
            lines += [
                f"requirepass {self.sentinel_password}",
                f"sentinel sentinel-pass {self.sentinel_password}",
            ]
        return "\n".join(lines) + "\n"

    @property
    def url(self) -> str:
        """``redis+sentinel://[user:password@]S1,S2,S3/SERVICE[?sentinel_password=...]``."""
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        login = f"{self.user[0]}:{self.user[1]}@" if self.user is not None else ""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        query = f"?sentinel_password={self.sentinel_password}" if self.sentinel_password else ""
        return f"{scheme}://{login}{hosts}/{SERVICE}{query}"

    @property
    def ca_path(self) -> str:
        """The CA file the certificates come from (with ``tls``)."""
        return self.master.ca_path

    def start(self) -> LocalSentinel:
        """Start the master, the replica (synced) and the sentinels."""
        self.master.start()
        self.replica.start()
        self.replica.wait_output(_SYNCED)
        for sentinel in self.sentinels:
            sentinel.start()
        return self

    def client(self, server: RedisServer) -> redis.Redis:
        """A blocking client of the master or the replica (for set-up and clean-up)."""
        options: dict[str, Any] = {"host": "127.0.0.1", "port": server.port, "socket_timeout": 5}
        if self.tls:
            options.update(ssl=True, ssl_ca_certs=self.ca_path)
        if self.user is not None:
            options.update(username=self.user[0], password=self.user[1])
        return redis.Redis(**options)

    def flush(self) -> None:
        """Delete every key (on the master; the replica follows)."""
        with self.client(self.master) as client:
            client.flushall()

    def kill_master(self) -> None:
        """SIGKILL the master: the sentinels see it down and promote the replica."""
        assert self.master.process is not None
        self.master.process.kill()

    def wait_failover(self) -> None:
        """Wait until a sentinel announces the replica as the new master."""
        sentinel = self.sentinels[0]
        sentinel.wait_output(_SWITCHED, timeout=_WAIT)
        line = sentinel.output.split(_SWITCHED, 1)[1].split(b"\n", 1)[0]
        assert line.endswith(f" 127.0.0.1 {self.replica.port}".encode()), line

    def close(self) -> None:
        """Stop every process and remove the directories."""
        for server in (*self.sentinels, self.replica, self.master):
            server.close()


def redis_sentinel(**options: Any) -> Iterator[LocalSentinel]:
    """Generator for a fixture: a started Sentinel set-up (``options`` as LocalSentinel takes
    them), closed afterwards."""
    setup = LocalSentinel(require_redis_server(), **options)
    try:
        yield setup.start()
    finally:
        setup.close()
