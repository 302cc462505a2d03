"""Turns ``CALLFLOW_STORE`` into a ``redis.asyncio`` client: one server, a Redis Cluster, or the
master a Sentinel names (and names again after a failover).

No loop of its own: :func:`connect` makes the client (connections open on first use) for the
:class:`~callflow.fleet.store.RedisStore` that calls it when entered, on the loop that then
uses and closes it. redis is imported here, lazily: a lone worker never imports it.

Every form gets the same client settings: socket and connect timeouts, one retry at once of a
command whose connection was lost (every command of the store is safe to repeat), no health
checks, the worker's client name, and ``CA_BUNDLE`` as the CA for TLS unless the URL names one
(``ssl_ca_certs=``). The URL forms are those of :mod:`callflow._store_url`:

``redis://``, ``rediss://``, ``unix://``
    ``redis.asyncio.Redis.from_url``.
``redis[s]+cluster://[user:password@]host:port[,host:port...]``
    ``redis.asyncio.cluster.RedisCluster`` with the hosts as startup nodes. Every key of a
    fleet shares one hash tag, so each command, pipeline and script of the store goes to the
    one node owning that slot (and follows it when the slot moves).
``redis[s]+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/db]``
    ``Sentinel(...).master_for(SERVICE)``: each new connection asks the sentinels where the
    master is, so once a failover is over the store reaches the promoted replica; and every
    heartbeat asks them again (:meth:`StoreClient.master_moved`), so connections to a master
    that was cut off (still a master, still taking writes, or refusing them with
    ``min-replicas-to-write``) do not outlive the failover by more than a beat. The URL's
    credentials log in to the master; ``sentinel_username=`` / ``sentinel_password=`` in the
    query to the sentinels (no credentials without them). TLS applies to both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from callflow._store_url import StoreUrl, parse_store_url
from callflow.errors import ConfigError

__all__ = ["StoreClient", "connect"]


class StoreClient:
    """A Redis client for the store, the errors that mean Redis failed, and how to close it."""

    def __init__(
        self,
        client: Any,
        *,
        errors: tuple[type[BaseException], ...],
        no_script: type[BaseException],
        closers: Sequence[Callable[[], Awaitable[None]]] = (),
        opener: Callable[[], Awaitable[object]] | None = None,
        master: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.client = client
        """A ``redis.asyncio`` ``Redis`` or ``RedisCluster`` (``decode_responses`` on)."""
        self.errors = errors
        """What an operation raises when Redis is down, slow or unreachable."""
        self.no_script = no_script
        """What ``EVALSHA`` raises when the server does not know the script."""
        self._closers = (client.aclose, *closers)
        self._opener = opener
        self._master = master

    async def master_moved(self) -> bool:
        """Through Sentinel: ask the sentinels where the master is; True when it is no longer
        where this client's connections go (a failover). Those connections are then dropped
        (idle ones at once, busy ones when they come back), so that the next commands reach
        the master the sentinels name, not a demoted or cut-off one. False otherwise, for the
        other forms, and when the sentinels do not answer."""
        if self._master is None:
            return False
        try:
            return await self._master()
        except self.errors:
            return False

    async def open(self, within: float) -> None:
        """Make the first contact a cluster client needs before it routes any command (the
        slot map, the command table), waiting at most ``within`` seconds: done later, it would
        have to fit in the budget of one operation, and start over whenever that ran out.
        Redis down or slow: the first operations try again."""
        if self._opener is None:
            return
        try:
            async with asyncio.timeout(within):
                await self._opener()
        except self.errors:
            pass

    async def aclose(self) -> None:
        """Close the client's connections (and the sentinels' clients), all of them even
        when one fails; the first failure is raised."""
        failures: list[Exception] = []
        for close in self._closers:
            try:
                await close()
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise failures[0]


def connect(
    url: str, *, timeout: float, client_name: str, ca_bundle: str | None = None
) -> StoreClient:
    """The client of the store ``url``; see the module docstring. ``timeout`` bounds every
    socket read and connect; ConfigError names CALLFLOW_STORE when the URL is unusable."""
    try:
        target = parse_store_url(url)
    except ValueError as exc:
        raise ConfigError(f"CALLFLOW_STORE: {exc}") from None
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import NoScriptError, RedisClusterException, RedisError
    except ImportError as exc:  # pragma: no cover - redis is a dev dependency
        raise ConfigError(
            "CALLFLOW_STORE names Redis, which needs the redis package "
            "(pip install 'callflow-graph[redis]'); expected it to be importable"
        ) from exc
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 1),
        "health_check_interval": 0,
        "client_name": client_name,
    }
    if target.tls and ca_bundle and "ssl_ca_certs" not in parse_qs(urlsplit(url).query):
        options["ssl_ca_certs"] = ca_bundle
    errors = (RedisError, RedisClusterException, OSError, TimeoutError)
    try:
        if target.kind == "cluster":
            return _cluster(target, options, errors, NoScriptError)
        if target.kind == "sentinel":
            return _sentinel(target, options, errors, NoScriptError)
        client = aioredis.Redis.from_url(url, **options)
    except (TypeError, ValueError, RedisClusterException) as exc:
        raise ConfigError(f"CALLFLOW_STORE: {exc}; expected options redis-py knows") from None
    return StoreClient(client, errors=errors, no_script=NoScriptError)


def _node_options(target: StoreUrl, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` and what the URL says (credentials, database, query options, TLS) for a
    connection to one node; the query's options win, as with ``Redis.from_url``."""
    from redis.asyncio.connection import SSLConnection, parse_url

    host, port = target.hosts[0]
    found: dict[str, Any] = dict(parse_url(target.node_url(host, port)))
    for name in ("host", "port"):
        found.pop(name, None)
    if found.pop("connection_class", None) is SSLConnection:
        found["ssl"] = True
    return {**options, **found}


def _cluster(
    target: StoreUrl,
    options: dict[str, Any],
    errors: tuple[type[BaseException], ...],
    no_script: type[BaseException],
) -> StoreClient:
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    node = _node_options(target, options)
    node.pop("db", None)  # a cluster has database 0 only (the URL was checked)
    startup = [ClusterNode(host, port) for host, port in target.hosts]
    client = RedisCluster(startup_nodes=startup, **node)
    return StoreClient(client, errors=errors, no_script=no_script, opener=client.initialize)


def _sentinel(
    target: StoreUrl,
    options: dict[str, Any],
    errors: tuple[type[BaseException], ...],
    no_script: type[BaseException],
) -> StoreClient:
    from redis.asyncio.sentinel import Sentinel

    assert target.service is not None  # the URL was checked
    master = _node_options(target, options)
    shared = ("socket_timeout", "socket_connect_timeout", "client_name")
    asking = {k: v for k, v in master.items() if k in shared or k.startswith("ssl")}
    if target.sentinel_username:
        asking["username"] = target.sentinel_username
    if target.sentinel_password:
        asking["password"] = target.sentinel_password
    sentinel = Sentinel(target.hosts, sentinel_kwargs=asking, **master)
    client = sentinel.master_for(target.service)
    pool = client.connection_pool

    async def moved() -> bool:
        # The pool drops its connections to a master the sentinels no longer name.
        before = pool.master_address
        return before is not None and await pool.get_master_address() != before

    return StoreClient(
        client, errors=errors, no_script=no_script, closers=(sentinel.aclose,), master=moved
    )
