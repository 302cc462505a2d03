"""The Redis deployments the fleet's store tests run on: one server, a cluster, Sentinel.

A test that takes ``backend`` runs three times: on a fresh ``redis-server`` of its own
(``single``), on a three-master Redis Cluster (``cluster``, a ``redis+cluster://`` URL) and
through Sentinel (``sentinel``, a ``redis+sentinel://`` URL naming three sentinels that
watch a master and its replica). The cluster and the Sentinel set-up are started once per
session, on first use, and emptied before each test; tests that stop, hang or fail over
their Redis start their own.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs
import pytest

from tests.redis_cluster import LocalCluster, redis_cluster
from tests.redis_sentinel import LocalSentinel, redis_sentinel
from tests.redis_server import redis_server

__all__ = ["BACKENDS", "Backend"]

BACKENDS = ("single", "cluster", "sentinel")


@attrs.frozen
class Backend:
    """The Redis a test runs on: its kind and the store URL that reaches it."""

    kind: str
    url: str


@pytest.fixture(scope="session")
def shared_cluster() -> Iterator[LocalCluster]:
    """A three-master cluster for the session."""
    yield from redis_cluster()


@pytest.fixture(scope="session")
def shared_sentinel() -> Iterator[LocalSentinel]:
    """A master, a replica and three sentinels for the session."""
    yield from redis_sentinel()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """An empty Redis of each kind in turn (see the module docstring)."""
    kind = str(request.param)
    if kind == "single":
        for server in redis_server():
            yield Backend(kind, server.url)
        return
    shared: LocalCluster | LocalSentinel = request.getfixturevalue(f"shared_{kind}")
    shared.flush()
    yield Backend(kind, shared.url)
