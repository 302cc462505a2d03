"""The forms of ``CALLFLOW_STORE``: which Redis the fleet uses, how it is reached, how it is shown.

Pure functions and values, no event loop and no I/O: :mod:`callflow.settings` checks the
setting with :func:`parse_store_url`, :mod:`callflow.fleet.connect` builds the Redis client
from what it returns, and both mask credentials with :func:`mask_query` before logging a URL.

``redis://``, ``rediss://``, ``unix://``
    One Redis server (redis-py reads the URL itself; nothing is checked here).
``redis+cluster://[user:password@]host:port[,host:port...][/0][?options]``
    A Redis Cluster, found from any of the nodes named (its startup nodes); a cluster has
    database 0 only.
``redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/db][?options]``
    The master Sentinel names ``SERVICE``, asked of any of the sentinels named (port 26379 by
    default) and asked again after a failover. ``user:password`` log in to the master; the
    sentinels are asked without credentials unless the query names
    ``sentinel_username=`` / ``sentinel_password=``.

The ``rediss+`` forms speak TLS to every node (and to the sentinels). Other query options
(``ssl_ca_certs=``, ...) go to redis-py as they do for ``redis://``.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import attrs

__all__ = [
    "CLUSTER_SCHEMES",
    "SENTINEL_OPTIONS",
    "SENTINEL_SCHEMES",
    "SINGLE_SCHEMES",
    "StoreUrl",
    "mask_query",
    "parse_store_url",
]

SINGLE_SCHEMES: Final = ("redis", "rediss", "unix")
CLUSTER_SCHEMES: Final = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES: Final = ("redis+sentinel", "rediss+sentinel")
SENTINEL_OPTIONS: Final = ("sentinel_username", "sentinel_password")
"""Query options that log in to the sentinels (not passed on to redis-py)."""
_DEFAULT_PORT: Final = {"single": 6379, "cluster": 6379, "sentinel": 26379}
_FORMS: Final = (
    "expected 'memory', a redis://, rediss:// or unix:// URL, "
    "redis[s]+cluster://host:port[,host:port...] or "
    "redis[s]+sentinel://host:port[,host:port...]/SERVICE"
)


@attrs.frozen
class StoreUrl:
    """A store URL taken apart (see the module docstring)."""

    url: str = attrs.field(repr=False)
    """The URL as given."""
    kind: str
    """``single``, ``cluster`` or ``sentinel``."""
    tls: bool
    """True for ``rediss://`` and the ``rediss+`` forms."""
    hosts: tuple[tuple[str, int], ...] = ()
    """The nodes named (cluster) or the sentinels (sentinel); empty for one server."""
    service: str | None = None
    """The Sentinel service name of the master."""
    db: int = 0
    login: str = attrs.field(default="", repr=False)
    """``user:password@`` as written (still percent-encoded), or empty."""
    query: tuple[tuple[str, str], ...] = ()
    """The query options for redis-py (the sentinel options left out)."""
    sentinel_username: str | None = None
    sentinel_password: str | None = attrs.field(default=None, repr=False)

    def node_url(self, host: str, port: int) -> str:
        """A one-server ``redis://`` / ``rediss://`` URL of ``host:port`` with this URL's
        credentials, database and options: what redis-py's ``parse_url`` reads."""
        name = f"[{host}]" if ":" in host else host
        query = f"?{urlencode(self.query)}" if self.query else ""
        return f"{'rediss' if self.tls else 'redis'}://{self.login}{name}:{port}/{self.db}{query}"


def parse_store_url(url: str) -> StoreUrl:
    """Take the store URL ``url`` apart; ValueError saying what is wrong with it."""
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SINGLE_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES:
        raise ValueError(f"{_FORMS}, got {mask_query(url)!r}")
    if scheme in SINGLE_SCHEMES:
        return StoreUrl(url, "single", scheme == "rediss")
    kind = "cluster" if scheme in CLUSTER_SCHEMES else "sentinel"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(
            f"expected a {scheme}:// URL, got one that does not parse ({exc})"
        ) from None
    login, at, where = parts.netloc.rpartition("@")
    hosts = tuple(_host(part, kind, scheme) for part in where.split(","))
    segments = [unquote(s) for s in parts.path.split("/")[1:]]
    while segments and segments[-1] == "":
        segments.pop()
    service: str | None = None
    db_text = ""
    if kind == "sentinel":
        if not segments or not segments[0]:
            raise ValueError(
                f"{scheme}:// needs the master's service name, "
                f"{scheme}://host:port[,host:port...]/SERVICE[/db]"
            )
        service, *rest = segments
        if len(rest) > 1:
            raise ValueError(
                f"expected {scheme}://hosts/SERVICE[/db], got a path of {parts.path!r}"
            )
        db_text = rest[0] if rest else ""
    else:
        if len(segments) > 1:
            raise ValueError(f"expected {scheme}://hosts[/0], got a path of {parts.path!r}")
        db_text = segments[0] if segments else ""
    db = _db(db_text, scheme) if db_text else 0
    if kind == "cluster" and db != 0:
        raise ValueError(f"a Redis Cluster has database 0 only, got /{db_text} in {scheme}://")
    options = parse_qsl(parts.query, keep_blank_values=True)
    sentinel = {name: value for name, value in options if name in SENTINEL_OPTIONS}
    if sentinel and kind != "sentinel":
        raise ValueError(f"{', '.join(sorted(sentinel))} applies to redis[s]+sentinel:// only")
    return StoreUrl(
        url,
        kind,
        scheme.startswith("rediss"),
        hosts,
        service,
        db,
        login + at,
        tuple((name, value) for name, value in options if name not in SENTINEL_OPTIONS),
        sentinel.get("sentinel_username") or None,
        sentinel.get("sentinel_password") or None,
    )


def _host(text: str, kind: str, scheme: str) -> tuple[str, int]:
    """``host[:port]`` (``[v6]:port`` for an IPv6 address) of a cluster node or sentinel."""
    text = text.strip()
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ValueError(f"bad host {text!r} in {scheme}://; expected [address]:port")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(
            f"{scheme}:// needs at least one host:port and no empty one between commas, "
            f"got {text!r}"
        )
    if not port_text:
        return host, _DEFAULT_PORT[kind]
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port {port_text!r} of {host!r} in {scheme}://; expected 1-65535")
    return host, int(port_text)


def _db(text: str, scheme: str) -> int:
    if not text.isdigit():
        raise ValueError(f"bad database {text!r} in {scheme}://; expected a number")
    return int(text)


def mask_query(url: str) -> str:
    """``url`` with the value of every query option named ``*password`` replaced by ``***``
    (``sentinel_password=``, redis-py's ``password=``); the rest as written."""
    base, sep, rest = url.partition("?")
    if not sep:
        return url
    query, hash_, fragment = rest.partition("#")
    masked = []
    for item in query.split("&"):
        name, eq, value = item.partition("=")
        if eq and unquote(name).lower().endswith("password") and value:
            item = f"{name}=***"
        masked.append(item)
    return f"{base}?{'&'.join(masked)}{hash_}{fragment}"
