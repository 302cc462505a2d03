"""Host names and addresses: what is loopback, what is public, which hosts are allowed.

Pure functions and values, no I/O, shared by the settings (which validate with them) and the
parts that connect (the Graph client, fleet forwarding, inbound key fetching).

Where recordings may be downloaded from (``CALLFLOW_RECORDING_HOSTS``).

A recording's location arrives in a notification (``recordingLocation``). Fetched as it is,
it would let whoever shapes a notification make the bot send a GET, with the recording's
token, to any URL (a metadata endpoint, an internal service, the bot's own loopback) and take
the reply for a recording. So the Graph client fetches a location only when it is https, on a
host name of this allow-list (never an IP address), and, when the connection is made, only if
that name resolves to public addresses (:func:`is_public_address`): a name of the list that
resolves to a loopback, private or link-local address is refused as well.

With a loopback Graph (``GRAPH_URL`` on 127.0.0.1 or ``localhost``: tests, FakeGraph), a
location on Graph's own origin is fetched too; that is the only exception.

Pure functions and values, no I/O: the settings parse the allow-list with
:func:`recording_hosts`, the client matches hosts with :class:`RecordingHosts`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final

__all__ = [
    "DEFAULT_RECORDING_HOSTS",
    "RecordingHosts",
    "forward_target",
    "is_loopback",
    "is_public_address",
    "recording_hosts",
]

DEFAULT_RECORDING_HOSTS: Final = ("*.skype.com", "*.microsoft.com")
"""The domains of Microsoft's calling media services, which Graph's ``recordingLocation``
names; national clouds on other domains set ``CALLFLOW_RECORDING_HOSTS``."""

_LABEL: Final = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*").fullmatch
_EXPECTED: Final = (
    "expected host names (`*.example.com` for its subdomains) of the internet, comma "
    "separated; not IP addresses, loopback names, ports or URLs"
)


def _recording_host(entry: str) -> str:
    """One allow-list entry, normalized (lower case, no trailing dot); ValueError if bad."""
    value = entry.strip().lower().rstrip(".")
    name = value.removeprefix("*.")
    labels = name.split(".")
    if (
        len(value) > 253
        or not _HOST_NAME(name)
        or labels[-1].isdigit()  # an IPv4 address, or a name a resolver might take for one
        or (value.startswith("*.") and len(labels) < 2)  # `*.com`: a whole top-level domain
        or labels[-1] == "localhost"
    ):
        raise ValueError(repr(entry.strip()))
    return value


def recording_hosts(entries: Iterable[str]) -> tuple[str, ...]:
    """Check and normalize allow-list entries; ValueError naming every bad one."""
    hosts: list[str] = []
    bad: list[str] = []
    for entry in entries:
        if not entry.strip():
            continue
        try:
            hosts.append(_recording_host(entry))
        except ValueError as exc:
            bad.append(str(exc))
    if bad:
        raise ValueError(f"{_EXPECTED}; got {', '.join(bad)}")
    if not hosts:
        raise ValueError(f"{_EXPECTED}; got none")
    return tuple(dict.fromkeys(hosts))


class RecordingHosts:
    """Matches host names against an allow-list: ``*.example.com`` matches every subdomain of
    example.com at any depth (not example.com itself); any other entry matches only itself."""

    __slots__ = ("_names", "_suffixes", "hosts")

    def __init__(self, hosts: Iterable[str]) -> None:
        self.hosts = recording_hosts(hosts)
        self._names = frozenset(h for h in self.hosts if not h.startswith("*."))
        self._suffixes = tuple(h[1:] for h in self.hosts if h.startswith("*."))

    def allows(self, host: str) -> bool:
        """True when ``host`` (a host name, lower case, no trailing dot) is on the list."""
        return host in self._names or host.endswith(self._suffixes)


def is_public_address(address: str) -> bool:
    """True for an address of the internet; False for loopback, private, link-local,
    unspecified, multicast and reserved ones (an IPv4-mapped IPv6 address by its IPv4 one),
    and for anything that is not an address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if not host:
        return False
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


_FORWARD_HOST: Final = re.compile(
    r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*\.?"
)


def forward_target(entry: str) -> str:
    """Check one ``FORWARD_ALLOW`` entry: a host name (``*.`` for subdomains), an IP address
    or a network in CIDR form; raise ValueError saying what was expected."""
    value = entry.strip().lower()
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        if not _FORWARD_HOST.fullmatch(value) or len(value) > 253:
            raise ValueError(
                f"expected host names, IP addresses or CIDR networks, got {entry!r}"
            ) from None
    return value
