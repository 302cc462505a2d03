"""Settings from CALLFLOW_* variables: defaults, parsing, and ConfigError messages."""

from __future__ import annotations

import pytest

from callflow import ConfigError, Settings


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
