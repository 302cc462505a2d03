"""Settings from CALLFLOW_* variables: defaults, parsing, and ConfigError messages."""

from __future__ import annotations

import pytest

from callflow import ConfigError, Settings
from callflow._store_url import parse_store_url
from callflow.settings import masked_url, plain_redis_problem


def test_defaults_need_no_environment() -> None:
    """With no variables set, every setting has its documented default."""
    s = Settings.from_env({})
    assert s.port == 8000
    assert s.webhook_path == "/api/calls"
    assert s.inbound_auth is True
    assert s.platform_timeout == 15.0
    assert s.safety_margin == 3.0
    assert s.default_reject_reason == "busy"
    assert s.issuers == ("https://graph.microsoft.com", "https://api.botframework.com")


def test_variables_are_parsed() -> None:
    """Values are read, typed and normalised (trailing slashes, casing, lists)."""
    s = Settings.from_env(
        {
            "CALLFLOW_APP_ID": " app ",
            "CALLFLOW_PORT": "9001",
            "CALLFLOW_INBOUND_AUTH": "OFF",
            "CALLFLOW_ISSUERS": "https://a.example/, https://b.example",
            "CALLFLOW_CALLBACK_URL": "https://bot.example.org/api/calls/",
            "CALLFLOW_DEFAULT_REJECT_REASON": "Forbidden",
            "CALLFLOW_STORE": "redis://localhost:6379/0",
            "CALLFLOW_FLEET_SECRET": "0123456789abcdef0123456789abcdef",
            "CALLFLOW_PLATFORM_TIMEOUT": "10",
            "CALLFLOW_LOG_PII": "on",
            "CALLFLOW_DEADLINE_SEND_RATE": "250.5",
            "CALLFLOW_MAX_SEND_BACKLOG": "64",
            "CALLFLOW_OVERLOAD_WAIT": "0.25",
            "CALLFLOW_UNRELATED": "ignored",
        }
    )
    assert s.app_id == "app"
    assert s.port == 9001
    assert s.inbound_auth is False
    assert s.issuers == ("https://a.example", "https://b.example")
    assert s.callback_url == "https://bot.example.org/api/calls"
    assert s.default_reject_reason == "forbidden"
    assert s.store.startswith("redis://")
    assert s.platform_timeout == 10.0
    assert s.log_pii is True
    assert s.deadline_send_rate == 250.5
    assert s.max_send_backlog == 64
    assert s.overload_wait == 0.25


def test_every_invalid_variable_is_named_in_one_error() -> None:
    """One ConfigError lists every bad variable with what was expected."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env(
            {
                "CALLFLOW_PORT": "eighty",
                "CALLFLOW_CALLBACK_URL": "http://insecure.example",
                "CALLFLOW_INBOUND_AUTH": "maybe",
                "CALLFLOW_DEFAULT_REJECT_REASON": "later",
                "CALLFLOW_PLATFORM_TIMEOUT": "500",
                "CALLFLOW_STORE": "postgres://x",
                "CALLFLOW_CA_BUNDLE": "/no/such/file.pem",
                "CALLFLOW_WEBHOOK_PATH": "api",
                "CALLFLOW_MAX_SEND_BACKLOG": "0",
                "CALLFLOW_DEADLINE_SEND_RATE": "fast",
                "CALLFLOW_OVERLOAD_WAIT": "10",
            }
        )
    text = str(info.value)
    for name, expected in [
        ("CALLFLOW_PORT", "whole number"),
        ("CALLFLOW_CALLBACK_URL", "https URL"),
        ("CALLFLOW_INBOUND_AUTH", "on or off"),
        ("CALLFLOW_DEFAULT_REJECT_REASON", "busy, none, forbidden"),
        ("CALLFLOW_PLATFORM_TIMEOUT", "between"),
        ("CALLFLOW_STORE", "redis://"),
        ("CALLFLOW_CA_BUNDLE", "no such file"),
        ("CALLFLOW_WEBHOOK_PATH", "starting with '/'"),
        ("CALLFLOW_MAX_SEND_BACKLOG", "between"),
        ("CALLFLOW_DEADLINE_SEND_RATE", "number"),
        ("CALLFLOW_OVERLOAD_WAIT", "between"),
    ]:
        line = next(ln for ln in text.splitlines() if name in ln)
        assert expected in line


def test_margin_must_fit_inside_the_timeouts() -> None:
    """A safety margin as long as the platform timeout is refused, naming both settings."""
    with pytest.raises(ConfigError, match=r"CALLFLOW_SAFETY_MARGIN.*CALLFLOW_PLATFORM_TIMEOUT"):
        Settings.from_env({"CALLFLOW_SAFETY_MARGIN": "6"})


def test_certificate_settings_go_together(tmp_path: object) -> None:
    """A certificate thumbprint without its path is refused."""
    with pytest.raises(ConfigError, match="CERTIFICATE_PATH and CALLFLOW_CERTIFICATE_THUMBPRINT"):
        Settings.from_env({"CALLFLOW_CERTIFICATE_THUMBPRINT": "AB12"})


def test_run_requires_credentials_and_callback() -> None:
    """A worker without app id, secret and callback URL is told each missing setting."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({}).require_for_run()
    text = str(info.value)
    assert "CALLFLOW_APP_ID" in text
    assert "CALLFLOW_APP_SECRET" in text
    assert "CALLFLOW_CALLBACK_URL" in text
    Settings(app_id="a", app_secret="s", callback_url="https://x").require_for_run()


def test_secret_is_not_in_repr() -> None:
    """The client secret never appears in the settings' repr."""
    assert "hunter2" not in repr(Settings(app_secret="hunter2"))


@pytest.mark.parametrize("name", ["GRAPH_URL", "OPENID_CONFIG_URL", "INTERNAL_URL"])
def test_plain_http_off_loopback_is_refused_unless_allowed(name: str) -> None:
    """An http URL to a host that is not loopback is refused, naming the setting and the
    opt-out; loopback http (FakeGraph, tests) is accepted, and so is any http with
    ALLOW_INSECURE_HTTP=on."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({f"CALLFLOW_{name}": "http://graph.example.org/v1.0"})
    line = next(ln for ln in str(info.value).splitlines() if f"CALLFLOW_{name}" in ln)
    assert "plain http" in line and "CALLFLOW_ALLOW_INSECURE_HTTP=on" in line
    for loopback in ("http://127.0.0.1:9/x", "http://localhost:9", "http://[::1]:9"):
        Settings.from_env({f"CALLFLOW_{name}": loopback})
    allowed = Settings.from_env(
        {f"CALLFLOW_{name}": "http://graph.example.org", "CALLFLOW_ALLOW_INSECURE_HTTP": "on"}
    )
    assert allowed.allow_insecure_http is True


def test_inbound_auth_off_is_refused_on_an_interface_that_is_not_loopback() -> None:
    """INBOUND_AUTH=off on 0.0.0.0 (or a public address) stops the start with an error naming
    the setting and the ways out; on loopback, or forced with ALLOW_UNAUTHENTICATED, it
    passes."""
    off = Settings(inbound_auth=False)
    for host in ("0.0.0.0", "", "::", "10.1.2.3", "bot.example.org"):
        with pytest.raises(ConfigError) as info:
            off.check_serving(host)
        text = str(info.value)
        assert "CALLFLOW_INBOUND_AUTH: off while listening on" in text
        assert "CALLFLOW_ALLOW_UNAUTHENTICATED=on" in text
    for host in ("127.0.0.1", "127.8.9.10", "::1", "localhost"):
        off.check_serving(host)
    Settings(inbound_auth=False, allow_unauthenticated=True).check_serving("0.0.0.0")
    Settings().check_serving("0.0.0.0")


def test_fleet_mode_on_a_public_interface_needs_a_safe_internal_url() -> None:
    """In fleet mode without INTERNAL_URL, the default http://HOST:PORT off loopback is
    refused (it would carry forwarded notifications in plain http) unless allowed; a Redis
    store needs a FLEET_SECRET at all."""
    fleet = Settings(store="redis://cache:6379/0", fleet_secret="x" * 32)
    with pytest.raises(ConfigError, match="CALLFLOW_INTERNAL_URL: not set"):
        fleet.check_serving("0.0.0.0")
    fleet.check_serving("127.0.0.1")
    Settings(
        store="redis://cache:6379/0", fleet_secret="x" * 32, internal_url="https://w1.internal"
    ).check_serving("0.0.0.0")
    Settings(
        store="redis://cache:6379/0", fleet_secret="x" * 32, allow_insecure_http=True
    ).check_serving("0.0.0.0")
    with pytest.raises(ConfigError, match="CALLFLOW_FLEET_SECRET: required with"):
        Settings.from_env({"CALLFLOW_STORE": "rediss://cache:6380/0"})


def test_no_secret_shows_in_the_settings_repr() -> None:
    """The settings' repr hides the app secret, the fleet secret and any password in a URL
    (a Redis ACL user's, say), and still names the user and host."""
    s = Settings(
        app_secret="app-hunter2",
        fleet_secret="fleet-hunter2-0123456789abcdef0123",
        store="rediss://callflow:redis-hunter2@cache.internal:6380/0",
        internal_url="https://svc:internal-hunter2@w1.internal",
        graph_url="https://proxy:graph-hunter2@graph.example/v1.0",
    )
    text = repr(s)
    assert "hunter2" not in text
    assert "rediss://callflow:***@cache.internal:6380/0" in text
    assert "https://svc:***@w1.internal" in text


def test_recording_hosts_default_to_graphs_media_hosts_and_are_parsed() -> None:
    """RECORDING_HOSTS is a comma-separated list of host names (``*.`` for subdomains),
    lower-cased, without trailing dots; by default the hosts Graph serves recordings from."""
    assert Settings.from_env({}).recording_hosts == ("*.skype.com", "*.microsoft.com")
    s = Settings.from_env({"CALLFLOW_RECORDING_HOSTS": " *.Media.Example.com, rec.example.org. "})
    assert s.recording_hosts == ("*.media.example.com", "rec.example.org")


@pytest.mark.parametrize(
    "value",
    [
        "10.0.0.1",
        "*.media.example.com, 169.254.169.254",
        "[::1]",
        "localhost",
        "*.localhost",
        "https://rec.example.org",
        "rec.example.org/recordings",
        "*",
        "*.com",
        "rec.example.org:443",
        " , ",
    ],
)
def test_recording_hosts_refuse_addresses_loopback_names_and_urls(value: str) -> None:
    """An IP address, a loopback name, a URL or a bare wildcard is refused, naming the
    setting: recordings come only from named hosts of the internet."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"CALLFLOW_RECORDING_HOSTS": value})
    line = next(ln for ln in str(info.value).splitlines() if "CALLFLOW_RECORDING_HOSTS" in ln)
    assert "expected host names" in line


def test_plain_redis_off_loopback_is_refused_unless_allowed() -> None:
    """A ``redis://`` store on a host that is not loopback would carry claims and the fleet's
    signed values in clear text: it is refused, naming STORE and the opt-out. ``rediss://``,
    ``unix://`` and loopback ``redis://`` are accepted, and so is any ``redis://`` with
    ALLOW_INSECURE_REDIS=on."""
    secret = {"CALLFLOW_FLEET_SECRET": "x" * 32}
    for url in (
        "redis://cache.internal:6379/0",
        "redis://user:pw@10.0.0.5:6379",
        "redis://[fd00::1]",
    ):
        with pytest.raises(ConfigError) as info:
            Settings.from_env({"CALLFLOW_STORE": url, **secret})
        line = next(ln for ln in str(info.value).splitlines() if "CALLFLOW_STORE" in ln)
        assert "plain redis://" in line and "CALLFLOW_ALLOW_INSECURE_REDIS=on" in line
        assert "pw" not in line
    for url in (
        "rediss://cache.internal:6380/0",
        "unix:///run/redis.sock",
        "redis://127.0.0.1:6379/0",
        "redis://localhost",
        "redis://[::1]:6379",
    ):
        assert Settings.from_env({"CALLFLOW_STORE": url, **secret}).store == url
    allowed = Settings.from_env(
        {
            "CALLFLOW_STORE": "redis://cache.internal:6379/0",
            "CALLFLOW_ALLOW_INSECURE_REDIS": "on",
            **secret,
        }
    )
    assert allowed.allow_insecure_redis is True


@pytest.mark.parametrize(
    ("url", "kind", "tls", "hosts", "service", "db"),
    [
        (
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,[::1]:7002",
            "cluster",
            False,
            (("127.0.0.1", 7000), ("127.0.0.1", 7001), ("::1", 7002)),
            None,
            0,
        ),
        (
            "rediss+cluster://callflow:pw@cache.redis.azure.net:10000/0?ssl_ca_certs=/ca.pem",
            "cluster",
            True,
            (("cache.redis.azure.net", 10000),),
            None,
            0,
        ),
        ("redis+cluster://localhost", "cluster", False, (("localhost", 6379),), None, 0),
        (
            "redis+sentinel://127.0.0.1:26379,localhost/mymaster",
            "sentinel",
            False,
            (("127.0.0.1", 26379), ("localhost", 26379)),
            "mymaster",
            0,
        ),
        (
            "rediss+sentinel://u:p@s1.internal:26380,s2.internal:26380/my-master/3/"
            "?sentinel_password=sp",
            "sentinel",
            True,
            (("s1.internal", 26380), ("s2.internal", 26380)),
            "my-master",
            3,
        ),
    ],
)
def test_cluster_and_sentinel_store_urls_are_read(
    url: str, kind: str, tls: bool, hosts: tuple[tuple[str, int], ...], service: str | None, db: int
) -> None:
    """STORE takes a Redis Cluster (its nodes) and Sentinel (the sentinels and the master's
    service name, a database after it): kept as written, taken apart as they say."""
    secret = {"CALLFLOW_FLEET_SECRET": "x" * 32}
    assert Settings.from_env({"CALLFLOW_STORE": url, **secret}).store == url
    found = parse_store_url(url)
    assert (found.kind, found.tls, found.hosts, found.service, found.db) == (
        kind,
        tls,
        hosts,
        service,
        db,
    )


def test_sentinel_credentials_are_apart_from_the_masters() -> None:
    """The URL's user and password log in to the master; ``sentinel_username`` and
    ``sentinel_password`` to the sentinels, and are not passed on as redis-py options."""
    found = parse_store_url(
        "rediss+sentinel://app:m%40ster@s1:26379/svc?sentinel_username=watch"
        "&sentinel_password=s3nt&ssl_cert_reqs=required"
    )
    assert (found.sentinel_username, found.sentinel_password) == ("watch", "s3nt")
    assert found.query == (("ssl_cert_reqs", "required"),)
    assert found.node_url("10.0.0.9", 6380) == (
        "rediss://app:m%40ster@10.0.0.9:6380/0?ssl_cert_reqs=required"
    )
    assert "s3nt" not in repr(found) and "m%40ster" not in repr(found)
    plain = parse_store_url("redis+sentinel://s1/svc")
    assert (plain.sentinel_username, plain.sentinel_password, plain.login) == (None, None, "")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+sentinel://127.0.0.1:26379", "needs the master's service name"),
        ("redis+sentinel://127.0.0.1:26379/", "needs the master's service name"),
        ("rediss+sentinel://h1/svc/0/extra", "hosts/SERVICE[/db]"),
        ("redis+sentinel://h1/svc/zero", "bad database 'zero'"),
        ("redis+cluster://", "needs at least one host:port"),
        ("redis+cluster://u:p@", "needs at least one host:port"),
        ("redis+cluster://h1:7000,,h2:7001", "needs at least one host:port"),
        ("redis+cluster://h1:70000", "bad port '70000'"),
        ("redis+cluster://h1:0", "bad port '0'"),
        ("rediss+cluster://h1:port", "bad port 'port'"),
        ("redis+cluster://[::1:7000", "does not parse"),
        ("redis+cluster://[::1]x:7000", "bad host"),
        ("redis+cluster://h1:7000/2", "database 0 only"),
        ("redis+cluster://h1:7000/0/1", "hosts[/0]"),
        ("redis+cluster://h1:7000?sentinel_password=x", "redis[s]+sentinel:// only"),
        ("redis+shard://h1:7000", "redis[s]+cluster://"),
        ("postgres://x", "redis[s]+sentinel://"),
    ],
)
def test_bad_cluster_and_sentinel_urls_are_named(url: str, expected: str) -> None:
    """A store URL without hosts, with a bad port, without the service name Sentinel needs,
    or of an unknown form is refused, naming STORE and what was expected."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"CALLFLOW_STORE": url, "CALLFLOW_FLEET_SECRET": "x" * 32})
    line = next(ln for ln in str(info.value).splitlines() if "CALLFLOW_STORE" in ln)
    assert expected in line


def test_plain_cluster_and_sentinel_off_loopback_are_refused_unless_allowed() -> None:
    """``redis+cluster://`` and ``redis+sentinel://`` are plain text like ``redis://``: refused
    when any host named is not loopback (unless ALLOW_INSECURE_REDIS=on), naming the TLS form
    to use instead; the ``rediss+`` forms and loopback hosts are accepted."""
    secret = {"CALLFLOW_FLEET_SECRET": "x" * 32}
    for url, scheme in (
        ("redis+cluster://127.0.0.1:7000,10.0.0.5:7001", "redis+cluster"),
        ("redis+cluster://user:pw@cache.internal:7000", "redis+cluster"),
        ("redis+sentinel://localhost:26379,s2.internal:26379/svc", "redis+sentinel"),
    ):
        with pytest.raises(ConfigError) as info:
            Settings.from_env({"CALLFLOW_STORE": url, **secret})
        line = next(ln for ln in str(info.value).splitlines() if "CALLFLOW_STORE" in ln)
        assert f"plain {scheme}://" in line, line
        assert f"expected {scheme.replace('redis', 'rediss', 1)}://" in line
        assert "CALLFLOW_ALLOW_INSECURE_REDIS=on" in line and ":pw@" not in line
        allowed = Settings.from_env(
            {"CALLFLOW_STORE": url, "CALLFLOW_ALLOW_INSECURE_REDIS": "on", **secret}
        )
        assert allowed.store == url
    for url in (
        "redis+cluster://127.0.0.1:7000,localhost:7001,[::1]:7002",
        "redis+sentinel://127.0.0.1:26379/svc",
        "rediss+cluster://cache.internal:7000,10.0.0.5:7001",
        "rediss+sentinel://s1.internal,s2.internal/svc",
    ):
        assert Settings.from_env({"CALLFLOW_STORE": url, **secret}).store == url
    assert plain_redis_problem("redis+cluster://", False) is None  # reported as malformed


def test_passwords_in_cluster_and_sentinel_urls_are_masked() -> None:
    """The settings' repr masks the password of a cluster or Sentinel URL and the value of
    any ``*password=`` query option (``sentinel_password=``), keeping the rest."""
    s = Settings(
        store="rediss+sentinel://app:m-hunter2@s1:26379,s2:26379/svc/1"
        "?sentinel_password=s-hunter2&ssl_ca_certs=/ca.pem",
        fleet_secret="x" * 32,
    )
    text = repr(s)
    assert "hunter2" not in text
    assert (
        "rediss+sentinel://app:***@s1:26379,s2:26379/svc/1"
        "?sentinel_password=***&ssl_ca_certs=/ca.pem" in text
    )
    assert masked_url("redis+cluster://:k-hunter2@a:1,b:2") == "'redis+cluster://:***@a:1,b:2'"
    assert masked_url("redis+sentinel://a/svc?password=x&sentinel_password=") == (
        "'redis+sentinel://a/svc?password=***&sentinel_password='"
    )
