"""The Redis client each form of CALLFLOW_STORE gets, looked at before it connects anywhere."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedSSLConnection
from redis.exceptions import NoScriptError, RedisClusterException

from callflow import ConfigError
from callflow.fleet.connect import StoreClient, connect
from callflow.fleet.store import RedisStore, without_credentials

SECRET = "test-fleet-secret-0123456789abcdef"

pytestmark = pytest.mark.anyio


def client_of(url: str, ca_bundle: str | None = "/etc/fleet-ca.pem") -> StoreClient:
    return connect(url, timeout=2.0, client_name="callflow-w1-loop", ca_bundle=ca_bundle)


async def test_one_server_gets_the_client_it_always_had() -> None:
    """``rediss://`` is read by redis-py as before, with the store's timeouts, its single
    retry, its client name and CA_BUNDLE as the CA (unless the URL names one)."""
    made = client_of("rediss://callflow:pw@cache.internal:6380/2")
    try:
        assert isinstance(made.client, Redis)
        kwargs = made.client.connection_pool.connection_kwargs
        assert made.client.connection_pool.connection_class is SSLConnection
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("cache.internal", 6380, 2)
        assert (kwargs["username"], kwargs["password"]) == ("callflow", "pw")
        assert kwargs["ssl_ca_certs"] == "/etc/fleet-ca.pem"
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2.0, 2.0)
        assert kwargs["client_name"] == "callflow-w1-loop"
        assert kwargs["retry"].get_retries() == 1
        assert made.no_script is NoScriptError
    finally:
        await made.aclose()
    own = client_of("rediss://cache.internal:6380/0?ssl_ca_certs=/own-ca.pem")
    assert own.client.connection_pool.connection_kwargs["ssl_ca_certs"] == "/own-ca.pem"
    await own.aclose()


async def test_a_cluster_url_makes_a_cluster_client_with_every_node_to_start_from() -> None:
    """``rediss+cluster://`` makes a RedisCluster whose startup nodes are the hosts named,
    with TLS, the URL's credentials (percent-decoded) and the store's client settings; its
    errors (an unreachable cluster) count as the store failing."""
    made = client_of("rediss+cluster://callflow:p%40ss@10.0.0.1:7000,10.0.0.2,[fd00::3]:7002")
    try:
        client = made.client
        assert isinstance(client, RedisCluster)
        assert [(n.host, n.port) for n in client.startup_nodes] == [
            ("10.0.0.1", 7000),
            ("10.0.0.2", 6379),
            ("fd00::3", 7002),
        ]
        kwargs = client.connection_kwargs
        assert kwargs["connection_class"] is SSLConnection
        assert kwargs["ssl_ca_certs"] == "/etc/fleet-ca.pem"
        assert (kwargs["username"], kwargs["password"]) == ("callflow", "p@ss")
        assert (kwargs["socket_timeout"], kwargs["client_name"]) == (2.0, "callflow-w1-loop")
        assert kwargs["decode_responses"] is True
        assert client.retry.get_retries() == 1
        assert RedisClusterException in made.errors
    finally:
        await made.aclose()
    plain = client_of("redis+cluster://127.0.0.1:7000")
    assert "ssl_ca_certs" not in plain.client.connection_kwargs  # TLS only for rediss+
    await plain.aclose()


async def test_a_sentinel_url_follows_the_master_of_its_service() -> None:
    """``rediss+sentinel://`` asks the sentinels named for the service's master: the URL's
    credentials and database are the master's, ``sentinel_username`` and
    ``sentinel_password`` the sentinels' (none without them); both
    speak TLS with CA_BUNDLE, and closing the store closes the sentinels' clients too."""
    made = client_of(
        "rediss+sentinel://app:m-pass@10.0.0.1:26379,10.0.0.2/fleet-master/3"
        "?sentinel_username=watcher&sentinel_password=s-pass&ssl_check_hostname=false"
    )
    client = made.client
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.is_master
    assert pool.service_name == "fleet-master"
    assert pool.connection_class is SentinelManagedSSLConnection
    master = pool.connection_kwargs
    assert (master["username"], master["password"], master["db"]) == ("app", "m-pass", 3)
    assert (master["ssl_ca_certs"], master["ssl_check_hostname"]) == ("/etc/fleet-ca.pem", False)
    assert master["client_name"] == "callflow-w1-loop"
    sentinels = pool.sentinel_manager.sentinels
    asked = [s.connection_pool.connection_kwargs for s in sentinels]
    assert [(k["host"], k["port"]) for k in asked] == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    for kwargs in asked:
        assert (kwargs["username"], kwargs["password"]) == ("watcher", "s-pass")
        assert kwargs["ssl_ca_certs"] == "/etc/fleet-ca.pem"
        assert kwargs["socket_timeout"] == 2.0
    closed: list[str] = []
    for sentinel in sentinels:
        inner = sentinel.aclose

        async def aclose(inner: Any = inner) -> None:
            closed.append("sentinel")
            await inner()

        sentinel.aclose = aclose  # type: ignore[method-assign]
    await made.aclose()
    assert closed == ["sentinel", "sentinel"]
    anonymous = client_of("redis+sentinel://127.0.0.1/fleet-master")
    asked_plain = anonymous.client.connection_pool.sentinel_manager.sentinels[0]
    plain_kwargs = asked_plain.connection_pool.connection_kwargs
    assert (plain_kwargs.get("username"), plain_kwargs.get("password")) == (None, None)
    await anonymous.aclose()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+sentinel://127.0.0.1:26379", "CALLFLOW_STORE: redis+sentinel:// needs"),
        ("redis+cluster://127.0.0.1:0", "CALLFLOW_STORE: bad port '0'"),
        ("redis+cluster://127.0.0.1:7000?no_such_option=1", "CALLFLOW_STORE: "),
        ("redis+cluster://127.0.0.1:7000?socket_timeout=soon", "CALLFLOW_STORE: "),
        ("memcached://127.0.0.1", "CALLFLOW_STORE: expected 'memory'"),
    ],
)
def test_an_unusable_store_url_is_a_config_error_naming_the_setting(
    url: str, expected: str
) -> None:
    """A URL the client cannot be made from fails at once, naming CALLFLOW_STORE."""
    with pytest.raises(ConfigError, match=expected.replace("+", r"\+").replace("[", r"\[")):
        connect(url, timeout=1.0, client_name="x")


def test_the_store_refuses_an_unusable_url_when_made() -> None:
    """RedisStore checks its URL like the settings do (stores made in code skip them)."""
    with pytest.raises(ConfigError, match="needs the master's service name") as info:
        RedisStore("redis+sentinel://u:secret-pw@127.0.0.1:26379", instance_id="a", secret=SECRET)
    assert "secret-pw" not in str(info.value)


def test_credentials_stay_out_of_logged_cluster_and_sentinel_urls() -> None:
    """The store URL is logged without user and password, whatever its form, and with the
    value of ``sentinel_password=`` (any ``*password=``) masked."""
    assert (
        without_credentials("rediss+cluster://u:pw@a:7000,b:7001/0")
        == "rediss+cluster://a:7000,b:7001/0"
    )
    assert without_credentials(
        "rediss+sentinel://u:pw@s1,s2/svc/1?sentinel_password=spw&ssl_cert_reqs=required"
    ) == ("rediss+sentinel://s1,s2/svc/1?sentinel_password=***&ssl_cert_reqs=required")
    assert without_credentials("redis+sentinel://s1/svc?password=pw") == (
        "redis+sentinel://s1/svc?password=***"
    )


async def test_closing_closes_everything_even_when_one_part_fails() -> None:
    """A client that fails to close still lets the sentinels' clients close; the failure is
    raised afterwards."""
    closed: list[str] = []

    class Broken:
        async def aclose(self) -> None:
            closed.append("client")
            raise OSError("already gone")

    async def sentinels() -> None:
        closed.append("sentinels")

    made = StoreClient(Broken(), errors=(OSError,), no_script=OSError, closers=(sentinels,))
    with pytest.raises(OSError, match="already gone"):
        await made.aclose()
    assert closed == ["client", "sentinels"]
