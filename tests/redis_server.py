"""A real ``redis-server`` for the tests: loopback, a free port, a temp dir, no persistence.

``RedisServer.start()`` runs ``redis-server`` from ``PATH`` with ``--save '' --appendonly no``
and returns once it logged that it accepts connections; ``stop()`` ends it, ``restart()``
starts it again on the same port (empty: nothing is persisted). ``tls=ca`` (a trustme CA)
serves TLS only, with a certificate for ``tls_names``; ``user=(name, password)`` adds an ACL
user with ``rules`` (every right by default) and turns the passwordless default user off.
``options`` are more command-line options (``--cluster-enabled yes``, ``--replicaof ...``),
``config`` the text of a configuration file passed first (a sentinel's, with ``ready`` the
log line it prints once it runs); :meth:`RedisServer.wait_output` waits for a log line.
The ``redis_server`` fixture of a test module is one line::

    @pytest.fixture
    def redis() -> Iterator[RedisServer]:
        yield from redis_server()

Without ``redis-server`` on ``PATH`` the Redis tests fail with a message saying how to
install it, unless ``CALLFLOW_SKIP_REDIS=1`` is set; then they are skipped with that reason.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final

import pytest

__all__ = ["RedisServer", "redis_server", "require_redis_server"]

_READY: Final = b"Ready to accept connections"
_START_TIMEOUT: Final = 10.0
_INSTALL: Final = (
    "redis-server is not on PATH; the fleet tests need a real one: "
    "apt-get install redis-server (or set CALLFLOW_SKIP_REDIS=1 to skip these tests)"
)


def require_redis_server() -> str:
    """The path of ``redis-server``; fails (or skips, with CALLFLOW_SKIP_REDIS=1) without it."""
    path = shutil.which("redis-server")
    if path is not None:
        return path
    if os.environ.get("CALLFLOW_SKIP_REDIS") == "1":
        pytest.skip(
            "redis-server is not on PATH (CALLFLOW_SKIP_REDIS=1): apt-get install redis-server"
        )
    pytest.fail(_INSTALL, pytrace=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        executable: str,
        port: int | None = None,
        *,
        tls: Any = None,
        tls_names: Sequence[str] = ("127.0.0.1", "localhost"),
        user: tuple[str, str] | None = None,
        rules: Sequence[str] = ("~*", "&*", "+@all"),
        options: Sequence[str] = (),
        config: str = "",
        ready: bytes = _READY,
    ) -> None:
        self.executable = executable
        self.port = port if port is not None else _free_port()
        self.dir = tempfile.mkdtemp(prefix="callflow-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        self.output = bytearray()
        self.user = user
        self.rules = tuple(rules)
        self.options = tuple(options)
        self.config = config
        self.ready = ready
        self.tls = tls is not None
        if tls is not None:
            cert = tls.issue_cert(*tls_names)
            cert.private_key_pem.write_to_path(os.path.join(self.dir, "key.pem"))
            cert.cert_chain_pems[0].write_to_path(os.path.join(self.dir, "cert.pem"))
            tls.cert_pem.write_to_path(self.ca_path)

    @property
    def cert_paths(self) -> tuple[str, str, str]:
        """The server's certificate, its key and the CA's certificate (with ``tls``)."""
        return (
            os.path.join(self.dir, "cert.pem"),
            os.path.join(self.dir, "key.pem"),
            self.ca_path,
        )

    @property
    def ca_path(self) -> str:
        """The PEM file of the CA that signed the server's certificate (with ``tls``)."""
        return os.path.join(self.dir, "ca.pem")

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (``rediss://`` and the user's credentials as set)."""
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        """The URL of database ``db`` (0-15): separate fleets on one server stay apart."""
        scheme = "rediss" if self.tls else "redis"
        login = f"{self.user[0]}:{self.user[1]}@" if self.user is not None else ""
        return f"{scheme}://{login}127.0.0.1:{self.port}/{db}"

    @property
    def running(self) -> bool:
        """True while the server process runs."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> RedisServer:
        """Start the server and wait until it accepts connections."""
        if self.running:
            raise RuntimeError(f"redis-server already runs on port {self.port}")
        self.output.clear()
        options: list[str] = []
        if self.tls:
            options += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                os.path.join(self.dir, "cert.pem"),
                "--tls-key-file",
                os.path.join(self.dir, "key.pem"),
                "--tls-ca-cert-file",
                self.ca_path,
                "--tls-auth-clients",
                "no",
            ]
        else:
            options += ["--port", str(self.port)]
        if self.user is not None:
            name, password = self.user
            options += ["--user", "default", "off"]
            options += ["--user", name, "on", f">{password}", *self.rules]
        first: list[str] = []
        if self.config:
            path = os.path.join(self.dir, "redis.conf")
            with open(path, "w") as file:  # written anew: a sentinel rewrites its own
                file.write(self.config)
            first.append(path)
        self.process = subprocess.Popen(
            [
                self.executable,
                *first,
                *options,
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.dir,
                "--protected-mode", "no",
                "--loglevel", "notice",
                *self.options,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert self.process.stdout is not None
        try:
            self.wait_output(self.ready)
        except RuntimeError:
            self.stop()
            raise
        # The pipe is read only when a test waits for a line: the server logs little, but
        # never let it block.
        os.set_blocking(self.process.stdout.fileno(), False)
        return self

    def wait_output(self, line: bytes, count: int = 1, timeout: float = _START_TIMEOUT) -> None:
        """Wait until the server has logged ``line`` ``count`` times (since it started)."""
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while self.output.count(line) < count:
            left = deadline - time.monotonic()
            readable, _, _ = select.select([fd], [], [], max(left, 0.0))
            try:
                chunk = os.read(fd, 65536) if readable else b""
            except BlockingIOError:  # pragma: no cover - select said readable
                continue
            if not chunk:
                raise RuntimeError(
                    f"redis-server on port {self.port} did not log {line!r} within "
                    f"{timeout:g} s; its output:\n{self.output.decode(errors='replace')}"
                )
            self.output += chunk

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and wait for it."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:  # pragma: no cover - redis stops at once
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def restart(self) -> None:
        """Stop the server and start a new, empty one on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_server(**options: Any) -> Iterator[RedisServer]:
    """Generator for a fixture: a started server (``options`` as RedisServer takes them),
    closed afterwards."""
    server = RedisServer(require_redis_server(), **options)
    try:
        yield server.start()
    finally:
        server.close()
