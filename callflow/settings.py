"""Settings from ``CALLFLOW_*`` environment variables, validated all at once.

``Settings.from_env(environ)`` reads an injectable mapping (tests pass a dict) and raises one
:class:`~callflow.errors.ConfigError` that names every missing or invalid variable.
:data:`TABLE` (:mod:`callflow._settings_table`) describes every setting once: the
``Settings`` docstring and the page ``docs/reference/settings-table.md`` come from it.
Plain values and functions; no loop, no I/O (but reading the environment and files named).
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

from callflow._hosts import (
    DEFAULT_RECORDING_HOSTS,
    forward_target,
    is_loopback,
    recording_hosts,
)
from callflow._settings_table import PREFIX, TABLE, settings_markdown
from callflow._store_url import mask_query, parse_store_url
from callflow.errors import ConfigError

__all__ = [
    "MIN_FLEET_SECRET",
    "PREFIX",
    "TABLE",
    "Settings",
    "settings_markdown",
    "masked_url",
    "plain_redis_problem",
]

MIN_FLEET_SECRET: Final = 32
"""The shortest ``FLEET_SECRET`` accepted, in characters."""

_FLEET_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SPEECH_REGION: Final = re.compile(r"[a-z][a-z0-9]{1,49}")
_VOICE: Final = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){1,3}-[A-Za-z0-9:._-]{1,80}")
_LANGUAGE: Final = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}")
_MEDIA_PATH: Final = re.compile(r"(/[A-Za-z0-9._-]+)+")
_ON = {"on", "true", "1", "yes"}
_OFF = {"off", "false", "0", "no"}


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError("expected on or off")


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"expected a number of seconds, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"expected a number between {lo:g} and {hi:g}, got {raw}")
        return value

    return parse


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"expected a whole number between {lo} and {hi}, got {raw}")
        return value

    return parse


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        parts = urlsplit(raw.strip())
        if parts.scheme not in schemes or not parts.netloc:
            raise ValueError(f"expected a {' or '.join(schemes)} URL, got {raw!r}")
        return raw.strip().rstrip("/")

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _path(raw: str) -> str:
    if not raw.startswith("/"):
        raise ValueError(f"expected a path starting with '/', got {raw!r}")
    return raw


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())


def _targets(raw: str) -> tuple[str, ...]:
    return tuple(forward_target(part) for part in raw.split(",") if part.strip())


def _recording_hosts(raw: str) -> tuple[str, ...]:
    return recording_hosts(raw.split(","))


def _store(raw: str) -> str:
    value = raw.strip()
    if value != "memory":
        parse_store_url(value)  # a ValueError says which form was expected
    return value


def _instance_id(raw: str) -> str:
    value = raw.strip()
    if not value or len(value) > 200 or any(c.isspace() for c in value):
        raise ValueError(f"expected a name of 1 to 200 characters without spaces, got {raw!r}")
    return value


def _secret(raw: str) -> str:
    value = raw.strip()
    if len(value) < MIN_FLEET_SECRET:
        raise ValueError(
            f"expected at least {MIN_FLEET_SECRET} characters (e.g. `openssl rand -hex 32`), "
            f"got {len(value)}"
        )
    return value


def _speech_region(raw: str) -> str:
    value = raw.strip().lower()
    if not _SPEECH_REGION.fullmatch(value):
        raise ValueError(f"expected an Azure region name such as westeurope, got {raw[:100]!r}")
    return value


def _voice(raw: str) -> str:
    value = raw.strip()
    if not _VOICE.fullmatch(value):
        raise ValueError(
            f"expected a voice short name such as en-US-JennyNeural, got {raw[:100]!r}"
        )
    return value


def _language(raw: str) -> str:
    value = raw.strip()
    if not _LANGUAGE.fullmatch(value):
        raise ValueError(f"expected a locale such as en-US, got {raw[:100]!r}")
    return value


def _media_path(raw: str) -> str:
    value = _path(raw.strip()).rstrip("/")
    if not _MEDIA_PATH.fullmatch(value) or "/../" in value + "/" or "/./" in value + "/":
        raise ValueError(
            f"expected a path such as /api/media (letters, digits, '-', '_', '.' and '/'), "
            f"got {raw[:100]!r}"
        )
    return value


def _fleet_name(raw: str) -> str:
    value = raw.strip()
    if not _FLEET_NAME.fullmatch(value):
        raise ValueError(f"expected 1 to 64 letters, digits, '.', '_' or '-', got {raw[:100]!r}")
    return value


def _port(raw: str) -> int | None:
    if raw.strip().lower() in ("", "none", "off"):
        return None
    return _int(0, 65535)(raw)


def _file(raw: str) -> str:
    if not os.path.isfile(raw):
        raise ValueError(f"no such file: {raw!r}")
    return raw


def masked_url(url: object) -> str:
    """``url`` as shown in reprs and logs: any password replaced by ``***`` (the URL's own
    and those of ``*password=`` query options, such as ``sentinel_password=``)."""
    if not isinstance(url, str):
        return repr(url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return repr("<unparsable URL>")
    if password is None:
        return repr(mask_query(url))
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return repr(mask_query(parts._replace(netloc=f"{user}:***@{host}").geturl()))


def _plain_http_problem(name: str, url: str | None, allowed: bool) -> str | None:
    """Why ``url`` (the setting ``name``) may not be used: plain http off loopback."""
    if url is None or allowed:
        return None
    parts = urlsplit(url)
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return (
            f"{PREFIX}{name}: {masked_url(url)} is plain http to a host that is not loopback; "
            f"expected https (or {PREFIX}ALLOW_INSECURE_HTTP=on for a test network)"
        )
    return None


def plain_redis_problem(url: str, allowed: bool) -> str | None:
    """Why the store ``url`` may not be used: plain ``redis://`` (``redis+cluster://``,
    ``redis+sentinel://``) to a host that is not loopback (claims and the fleet's values
    would cross the network in clear text)."""
    scheme = url.partition("://")[0].lower()
    if allowed or scheme not in ("redis", "redis+cluster", "redis+sentinel"):
        return None
    hosts: list[str | None]
    try:
        if scheme == "redis":
            hosts = [urlsplit(url).hostname]
        else:
            hosts = [host for host, _ in parse_store_url(url).hosts]
    except ValueError:  # a URL that does not parse is reported by its own check
        return None
    # No host: redis-py connects to localhost.
    if all(host is None or is_loopback(host) for host in hosts):
        return None
    return (
        f"{PREFIX}STORE: {masked_url(url)} is plain {scheme}:// to a host that is not "
        f"loopback; expected {scheme.replace('redis', 'rediss', 1)}:// (or "
        f"{PREFIX}ALLOW_INSECURE_REDIS=on for a private network)"
    )


def _settings_doc() -> str:
    lines = [
        "Everything a callflow worker is configured with.",
        "",
        f"Read from ``{PREFIX}*`` environment variables by :meth:`from_env`, or given as",
        "keywords in lower case (``Settings(app_id=...)``). The settings:",
        "",
    ]
    for names, what, default in TABLE:
        lines.append(f"{names}")
        lines.append(f"    {what.replace('`', '')}. Default: {default.replace('`', '')}.")
    return "\n".join(lines) + "\n"


@attrs.frozen
class Settings:
    """Everything a callflow worker is configured with (the docstring lists every setting)."""

    app_id: str | None = None
    app_secret: str | None = attrs.field(default=None, repr=False)
    certificate_path: str | None = None
    certificate_thumbprint: str | None = None
    tenant_id: str = "common"
    callback_url: str | None = attrs.field(default=None, repr=masked_url)
    host: str = "0.0.0.0"
    port: int = 8000
    webhook_path: str = "/api/calls"
    graph_url: str = attrs.field(default="https://graph.microsoft.com/v1.0", repr=masked_url)
    authority_url: str = attrs.field(default="https://login.microsoftonline.com", repr=masked_url)
    openid_config_url: str = attrs.field(
        default="https://api.aps.skype.com/v1/.well-known/OpenIdConfiguration", repr=masked_url
    )
    issuers: tuple[str, ...] = ("https://graph.microsoft.com", "https://api.botframework.com")
    allowed_tenants: tuple[str, ...] = ()
    inbound_auth: bool = True
    allow_unauthenticated: bool = False
    """Allow ``INBOUND_AUTH=off`` on a HOST that is not loopback (never in production)."""
    allow_insecure_http: bool = False
    """Allow plain-http ``GRAPH_URL``, ``OPENID_CONFIG_URL`` and ``INTERNAL_URL`` to hosts that
    are not loopback (a test network); loopback http is always allowed."""
    allow_insecure_redis: bool = False
    """Allow a plain ``redis://`` (``redis+cluster://``, ``redis+sentinel://``) ``STORE`` on a
    host that is not loopback (a private network); the ``rediss`` forms, ``unix://`` and
    loopback hosts are always allowed."""
    ca_bundle: str | None = None
    recording_hosts: tuple[str, ...] = DEFAULT_RECORDING_HOSTS
    """The hosts recordings are downloaded from (``*.`` for subdomains): a ``recordingLocation``
    elsewhere, not https, or resolving to a loopback, private or link-local address is refused
    (locations on a loopback ``GRAPH_URL``'s own origin excepted)."""
    platform_timeout: float = 15.0
    recording_timeout: float = 5.0
    safety_margin: float = 3.0
    default_reject_reason: str = "busy"
    max_pending: int = 10_000
    deadline_send_rate: float = 500.0
    """Default decisions a second the outbox is counted on to send when many calls
    fall due together. At most this x SAFETY_MARGIN undecided calls may fall due within one
    safety margin; a call that would exceed it gets the default at once."""
    max_send_backlog: int = 1_000
    """Decisions waiting to be sent above which a new incoming call waits for room (at most
    OVERLOAD_WAIT seconds) and is then refused with 503 and Retry-After, instead of being
    taken and decided too late."""
    shed_lag: float = 0.5
    """Seconds late the I/O loop may run before a new incoming call gets the default at once
    instead of going to the handlers: a notification that arrives then has probably waited
    about that long before the worker could read it."""
    max_queued_per_call: int = 256
    """Events one call's observers may have waiting (behind a slow observer); past it the
    oldest observer event of that call is dropped and counted."""
    max_queued_events: int = 10_000
    """Observer events that may wait for the app loop while it is held up (a handler that
    blocks it); past it the oldest is dropped and counted. Incoming calls, deadline stops and
    flow starts are never dropped."""
    overload_wait: float = 1.0
    """Seconds a new call's notification may wait for room in the send backlog before the
    503; its 202 comes that much later (the platform expects a reply within ~5 s)."""
    drain_timeout: float = 15.0
    keepalive_interval: float = 900.0
    request_timeout: float = 5.0
    http_keepalive_timeout: float = 75.0
    """Seconds an idle connection (or one that has not sent a whole request yet) stays open."""
    max_connections: int = 1_000
    """Open connections at most; past it the oldest idle one is closed for a new one, or the
    new one gets 503 when every connection is busy with a request."""
    body_timeout: float = 5.0
    """Seconds a notification's body may take to arrive once its headers are in (then 408)."""
    metrics_host: str = "127.0.0.1"
    """The interface ``/metrics`` is served on: loopback unless set (never the webhook's
    listener, which Graph and whoever else reaches it can call)."""
    metrics_port: int | None = 9464
    """The port ``/metrics`` is served on (0: any free one); None (``off``): no metrics
    listener."""
    store: str = attrs.field(default="memory", repr=masked_url)
    instance_id: str = attrs.field(factory=socket.gethostname)
    heartbeat_interval: float = 1.0
    """Fleet mode: seconds between heartbeats; a worker silent for 3 of them is taken over."""
    store_timeout: float = 0.15
    """Fleet mode: seconds a housekeeping store (Redis) operation may take, and the least a
    claim on the decision path may wait, before the worker decides on its own."""
    internal_url: str | None = attrs.field(default=None, repr=masked_url)
    """Fleet mode: the base URL other workers forward notifications to (default
    ``http://HOST:PORT``, the host name when HOST is a wildcard)."""
    loop: str = "auto"
    """Event loop implementation of both loops: ``auto`` (uvloop when installed),
    ``asyncio`` or ``uvloop``."""
    switch_interval: float = 0.001
    """``callflow run``: seconds one thread may hold the interpreter while the other waits
    (Python's default is 0.005): how late the I/O loop may get to a notification while a
    handler computes on the app loop."""
    fleet_secret: str | None = attrs.field(default=None, repr=False)
    """Fleet mode: the key every worker signs and checks fleet values and forwarded
    notifications with (HMAC-SHA256); required with a Redis store."""
    fleet_name: str | None = None
    """Fleet mode: names the fleet's keys in Redis next to APP_ID (``callflow:{APP_ID:NAME}:``);
    default: a digest of ``FLEET_SECRET``. Deployments sharing a Redis need different ones."""
    forward_allow: tuple[str, ...] = ()
    """Fleet mode: the hosts, addresses and networks (CIDR) notifications may be forwarded to;
    empty: any forwarding URL a worker of the fleet signed."""
    log_format: str | None = None
    log_level: str = "info"
    log_pii: bool = False
    speech_region: str | None = None
    """The Azure region of the Speech resource (``westeurope``); or ``SPEECH_ENDPOINT``."""
    speech_endpoint: str | None = attrs.field(default=None, repr=masked_url)
    """The Speech resource's custom-domain base URL
    (``https://NAME.cognitiveservices.azure.com``), instead of ``SPEECH_REGION``; required
    with ``SPEECH_AUTH=entra``."""
    speech_key: str | None = attrs.field(default=None, repr=False)
    """The Speech resource's key (``SPEECH_AUTH=key``)."""
    speech_auth: str = "key"
    """``key`` (``Ocp-Apim-Subscription-Key``) or ``entra`` (a token for the app itself, from
    its APP_SECRET or certificate, for https://cognitiveservices.azure.com/.default)."""
    speech_voice: str = "en-US-JennyNeural"
    """The voice ``say()`` speaks with unless told otherwise."""
    speech_language: str = "en-US"
    """The language of the spoken prompts and of recognition unless told otherwise."""
    media_path: str = "/api/media"
    """Where the worker serves rendered prompts, under the origin of ``CALLBACK_URL``
    (``https://bot.example.com/api/media/<name>.wav``): the front door forwards it."""
    media_secret: str | None = attrs.field(default=None, repr=False)
    """The key the names of rendered prompts are made with; default: one derived from
    ``FLEET_SECRET`` (the same on every worker of a fleet), else a random one per process."""
    media_ttl: float = 3600.0
    """Seconds a rendered prompt's name stays valid (at least this, at most twice this)."""
    media_cache_mb: int = 64
    """Megabytes of rendered prompts a worker keeps in memory (the least recently used go)."""
    tracing: str = "off"
    """Per-call traces: ``off`` or ``otel`` (OpenTelemetry, the ``callflow-graph[otel]`` extra)."""
    tracing_exporter: str = "otlp"
    """With ``TRACING=otel`` and no tracer provider set by the application: where spans go,
    ``otlp`` (needs ``opentelemetry-exporter-otlp-proto-http``), ``console`` or ``none``."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``CALLFLOW_*`` variables from ``environ`` (default: ``os.environ``).

        Raises one :class:`ConfigError` listing every invalid variable. Keyword ``overrides``
        (already typed values, e.g. ``port=0``) win over the environment.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for name, parse in _PARSERS.items():
            raw = env.get(PREFIX + name.upper())
            if raw is None or raw.strip() == "":
                continue
            try:
                values[name] = parse(raw)
            except ValueError as exc:
                problems.append(f"{PREFIX}{name.upper()}: {exc}")
        values.update(overrides)
        if problems:
            raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))
        settings = cls(**values)
        settings.check_consistency()
        return settings

    def check_consistency(self) -> None:
        """Raise ConfigError for settings that are each valid but do not fit together."""
        problems: list[str] = []
        if self.safety_margin >= min(self.platform_timeout, self.recording_timeout):
            problems.append(
                f"{PREFIX}SAFETY_MARGIN: must be shorter than {PREFIX}PLATFORM_TIMEOUT "
                f"and {PREFIX}RECORDING_TIMEOUT, got {self.safety_margin:g}"
            )
        if bool(self.certificate_path) != bool(self.certificate_thumbprint):
            problems.append(
                f"{PREFIX}CERTIFICATE_PATH and {PREFIX}CERTIFICATE_THUMBPRINT go together"
            )
        for name in ("graph_url", "openid_config_url", "internal_url"):
            problem = _plain_http_problem(
                name.upper(), getattr(self, name), self.allow_insecure_http
            )
            if problem is not None:
                problems.append(problem)
        redis_problem = plain_redis_problem(self.store, self.allow_insecure_redis)
        if redis_problem is not None:
            problems.append(redis_problem)
        problems.extend(self._speech_problems())
        if self.store != "memory" and not self.fleet_secret:
            problems.append(
                f"{PREFIX}FLEET_SECRET: required with {PREFIX}STORE={masked_url(self.store)}; "
                f"expected the same secret of at least {MIN_FLEET_SECRET} characters on every "
                "worker (fleet values and forwarded notifications are signed with it)"
            )
        elif self.fleet_secret is not None and len(self.fleet_secret) < MIN_FLEET_SECRET:
            problems.append(
                f"{PREFIX}FLEET_SECRET: expected at least {MIN_FLEET_SECRET} characters, "
                f"got {len(self.fleet_secret)}"
            )
        if problems:
            raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))

    @property
    def speech_configured(self) -> bool:
        """True when a Speech resource is set (``SPEECH_REGION`` or ``SPEECH_ENDPOINT``)."""
        return bool(self.speech_region or self.speech_endpoint)

    def _speech_problems(self) -> list[str]:
        problems: list[str] = []
        if self.speech_region and self.speech_endpoint:
            problems.append(
                f"{PREFIX}SPEECH_ENDPOINT: set together with {PREFIX}SPEECH_REGION; expected "
                "one of them (the custom-domain endpoint, or the region)"
            )
        if self.speech_auth not in ("key", "entra"):
            problems.append(f"{PREFIX}SPEECH_AUTH: expected key or entra, got {self.speech_auth!r}")
        elif self.speech_configured and self.speech_auth == "key" and not self.speech_key:
            problems.append(
                f"{PREFIX}SPEECH_KEY: required with {PREFIX}SPEECH_AUTH=key (the Speech "
                f"resource's key), or {PREFIX}SPEECH_AUTH=entra with {PREFIX}SPEECH_ENDPOINT"
            )
        elif self.speech_auth == "entra":
            if not self.speech_endpoint:
                problems.append(
                    f"{PREFIX}SPEECH_ENDPOINT: required with {PREFIX}SPEECH_AUTH=entra (Entra "
                    "tokens are accepted only on the resource's custom-domain endpoint, "
                    "https://NAME.cognitiveservices.azure.com)"
                )
            if not self.app_id or not (self.app_secret or self.certificate_path):
                problems.append(
                    f"{PREFIX}SPEECH_AUTH: entra needs the app's credentials ({PREFIX}APP_ID "
                    f"and {PREFIX}APP_SECRET or {PREFIX}CERTIFICATE_PATH)"
                )
        problem = _plain_http_problem(
            "SPEECH_ENDPOINT", self.speech_endpoint, self.allow_insecure_http
        )
        if problem is not None:
            problems.append(problem)
        media, webhook = self.media_path.rstrip("/"), self.webhook_path.rstrip("/")
        if media == webhook or media.startswith(webhook + "/") or webhook.startswith(media + "/"):
            problems.append(
                f"{PREFIX}MEDIA_PATH: {self.media_path!r} overlaps {PREFIX}WEBHOOK_PATH "
                f"{self.webhook_path!r}; expected a path of its own such as /api/media"
            )
        if self.media_secret is not None and len(self.media_secret) < MIN_FLEET_SECRET:
            problems.append(
                f"{PREFIX}MEDIA_SECRET: expected at least {MIN_FLEET_SECRET} characters, "
                f"got {len(self.media_secret)}"
            )
        return problems

    def check_serving(self, host: str) -> None:
        """Raise ConfigError for settings unsafe on the interface ``host`` the webhook binds.

        Inbound authentication may be off only on loopback unless ``ALLOW_UNAUTHENTICATED``;
        in fleet mode without ``INTERNAL_URL``, the default ``http://HOST:PORT`` is plain http,
        so it must be loopback unless ``ALLOW_INSECURE_HTTP``.
        """
        problems: list[str] = []
        if not self.inbound_auth and not is_loopback(host) and not self.allow_unauthenticated:
            problems.append(
                f"{PREFIX}INBOUND_AUTH: off while listening on {host or '0.0.0.0'!r}, an "
                "interface that is not loopback: anyone who reaches it could place calls; "
                f"expected INBOUND_AUTH=on, {PREFIX}HOST=127.0.0.1, or "
                f"{PREFIX}ALLOW_UNAUTHENTICATED=on to force it"
            )
        if (
            self.store != "memory"
            and self.internal_url is None
            and not is_loopback(host)
            and not self.allow_insecure_http
        ):
            problems.append(
                f"{PREFIX}INTERNAL_URL: not set, and the default http://HOST:PORT would carry "
                f"forwarded notifications in plain http off loopback (HOST {host!r}); expected "
                f"an https URL, or {PREFIX}ALLOW_INSECURE_HTTP=on on a private network"
            )
        if problems:
            raise ConfigError("unsafe settings:\n  " + "\n  ".join(problems))

    def client_ssl_context(self) -> ssl.SSLContext | None:
        """A TLS context trusting the system CAs plus ``CA_BUNDLE``; None without a bundle."""
        if not self.ca_bundle:
            return None
        context = ssl.create_default_context()
        context.load_verify_locations(self.ca_bundle)
        return context

    def require_for_run(self) -> None:
        """Raise ConfigError naming every setting a production worker needs but lacks."""
        missing: list[str] = []
        if not self.app_id:
            missing.append(f"{PREFIX}APP_ID: required (the bot's Entra application id)")
        if not self.app_secret and not self.certificate_path:
            missing.append(
                f"{PREFIX}APP_SECRET: required (or {PREFIX}CERTIFICATE_PATH with "
                f"{PREFIX}CERTIFICATE_THUMBPRINT)"
            )
        if not self.callback_url:
            missing.append(f"{PREFIX}CALLBACK_URL: required (the public https URL of the webhook)")
        if missing:
            raise ConfigError("missing settings:\n  " + "\n  ".join(missing))


Settings.__doc__ = _settings_doc()


_PARSERS: Final[dict[str, Callable[[str], Any]]] = {
    "app_id": str.strip,
    "app_secret": str,
    "certificate_path": _file,
    "certificate_thumbprint": str.strip,
    "tenant_id": str.strip,
    "callback_url": _url("https"),
    "host": str.strip,
    "port": _int(0, 65535),
    "webhook_path": _path,
    "graph_url": _url("https", "http"),
    "authority_url": _url("https"),
    "openid_config_url": _url("https", "http"),
    "issuers": _csv,
    "allowed_tenants": _csv,
    "inbound_auth": _bool,
    "allow_unauthenticated": _bool,
    "allow_insecure_http": _bool,
    "allow_insecure_redis": _bool,
    "ca_bundle": _file,
    "recording_hosts": _recording_hosts,
    "platform_timeout": _float(1.0, 60.0),
    "recording_timeout": _float(1.0, 60.0),
    "safety_margin": _float(0.0, 30.0),
    "default_reject_reason": _choice("busy", "none", "forbidden"),
    "max_pending": _int(1, 10_000_000),
    "deadline_send_rate": _float(1.0, 1_000_000.0),
    "max_send_backlog": _int(1, 10_000_000),
    "shed_lag": _float(0.01, 30.0),
    "max_queued_per_call": _int(1, 1_000_000),
    "max_queued_events": _int(1, 10_000_000),
    "overload_wait": _float(0.0, 4.0),
    "drain_timeout": _float(0.0, 600.0),
    "keepalive_interval": _float(1.0, 2700.0),
    "request_timeout": _float(0.1, 60.0),
    "http_keepalive_timeout": _float(0.5, 3600.0),
    "max_connections": _int(1, 1_000_000),
    "body_timeout": _float(0.1, 60.0),
    "metrics_host": str.strip,
    "metrics_port": _port,
    "store": _store,
    "instance_id": _instance_id,
    "heartbeat_interval": _float(0.05, 60.0),
    "store_timeout": _float(0.01, 5.0),
    "internal_url": _url("http", "https"),
    "loop": _choice("auto", "asyncio", "uvloop"),
    "switch_interval": _float(0.0001, 0.1),
    "fleet_secret": _secret,
    "fleet_name": _fleet_name,
    "forward_allow": _targets,
    "log_format": _choice("json", "console"),
    "log_level": _choice("debug", "info", "warning", "error"),
    "log_pii": _bool,
    "speech_region": _speech_region,
    "speech_endpoint": _url("https", "http"),
    "speech_key": str.strip,
    "speech_auth": _choice("key", "entra"),
    "speech_voice": _voice,
    "speech_language": _language,
    "media_path": _media_path,
    "media_secret": _secret,
    "media_ttl": _float(60.0, 86_400.0),
    "media_cache_mb": _int(1, 65_536),
    "tracing": _choice("off", "otel"),
    "tracing_exporter": _choice("otlp", "console", "none"),
}
