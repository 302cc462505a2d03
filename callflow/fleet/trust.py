"""What a worker trusts of its fleet: signed values in Redis, signed forwards, allowed targets.

Whoever can write the fleet's Redis keys must not be able to redirect notifications, have
decisions sent for calls no worker took, or make a worker drop a call as someone else's.
So every value a worker acts on is signed with the fleet's shared secret
(``CALLFLOW_FLEET_SECRET``, HMAC-SHA256) and checked when read:

- heartbeats (the forwarding URL, the boot id, a timestamp), bound to the instance's id;
- claims (``own``, ``final``, ``seen``), bound to the key they are stored under;
- members of the pending and adopted sets (``call_id|tenant_id``), so that a take-over only
  ever sends a default decision for a call a worker of the fleet really took;
- forwarded notifications: the forwarding worker drops Graph's bearer token and signs the
  request's head instead (``X-Callflow-Fleet-Auth``): the time, a random nonce, the verified
  tenant, the method, path and query, the sending and the receiving worker, the
  ``Content-Length`` and the body's SHA-256 digest. The receiving worker checks that
  signature on the headers alone, before it reads any body (see :meth:`FleetSigner.open_forward`),
  then that the body matches the digest (:meth:`Forward.covers`); :class:`ReplayGuard`
  remembers the nonces, so a forward is taken once, by the worker it was sent to, within
  :data:`FORWARD_SKEW` after it was made and :data:`FORWARD_AHEAD` before.

A value without a valid signature is treated as absent (a heartbeat: the instance is dead; a
claim: it is replaced; a set member: it is dropped), counted and logged. Deleting keys stays
possible for whoever can write them: that can only make the fleet fall back to deciding
locally, the way it does when Redis is down.

:class:`ForwardTargets` is the allow-list of hosts a notification may be forwarded to
(``CALLFLOW_FORWARD_ALLOW``): on top of the signature, a stolen secret alone does not let a
heartbeat send notifications elsewhere.

Nothing here awaits or belongs to a loop: the signer and the checks are plain computations,
used on the worker's I/O loop by the store (:mod:`callflow.fleet.signed`) and the forwarder
(:mod:`callflow.fleet.forwarding`); :class:`ReplayGuard` is used there alone.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

from callflow._hosts import forward_target
from callflow.errors import ConfigError

__all__ = [
    "FLEET_AUTH",
    "FORWARD_AHEAD",
    "FORWARD_SKEW",
    "MAX_CLOCK_SKEW",
    "REPLAY_CAPACITY",
    "Beat",
    "FleetSigner",
    "Forward",
    "ForwardTargets",
    "ReplayGuard",
    "forward_target",
]

FLEET_AUTH: Final = "X-Callflow-Fleet-Auth"
"""The header carrying a forwarded notification's signature (instead of Graph's token)."""
FORWARD_SKEW: Final = 30.0
"""Seconds a forwarded notification's signature stays valid after it was made."""
MAX_CLOCK_SKEW: Final = 5.0
"""Seconds a heartbeat may be older than its lifetime, or from the future, and still count."""
FORWARD_AHEAD: Final = MAX_CLOCK_SKEW
"""Seconds a forwarded notification's signature may be from the future (clock skew)."""
REPLAY_CAPACITY: Final = 65_536
"""Nonces of forwarded notifications a worker remembers at most (see :class:`ReplayGuard`)."""
_MAX_FORWARD_HEADER: Final = 1024
_MAC_HEX: Final = 32  # 128 bits


def _encode(parts: Sequence[str]) -> bytes:
    """An unambiguous encoding of ``parts`` (each prefixed by its length)."""
    return b"".join(f"{len(p)}:{p};".encode() for p in parts)


@attrs.frozen
class Beat:
    """A verified heartbeat: the instance's forwarding URL (None until it listens) and boot id."""

    url: str | None
    boot: str
    at: float


class FleetSigner:
    """Signs and checks fleet values with the shared secret; see the module docstring."""

    __slots__ = ("_key",)

    def __init__(self, secret: str | bytes) -> None:
        key = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(key) < 16:
            raise ConfigError(
                "fleet secret: expected at least 16 bytes (CALLFLOW_FLEET_SECRET of 32 "
                f"characters or more), got {len(key)}"
            )
        self._key = key

    def __repr__(self) -> str:
        return "FleetSigner(secret='***')"

    def mac(self, *parts: str) -> str:
        """The signature of ``parts`` (hex, 128 bits)."""
        digest = hmac.new(self._key, _encode(parts), hashlib.sha256).hexdigest()
        return digest[:_MAC_HEX]

    def check(self, mac: str, *parts: str) -> bool:
        """True when ``mac`` is the signature of ``parts`` (constant time)."""
        return hmac.compare_digest(mac.encode(), self.mac(*parts).encode())

    def fleet_tag(self) -> str:
        """A short name of the fleet derived from its secret (64 bits of a MAC: it tells
        nothing of the secret); part of the fleet's key namespace."""
        return self.mac("fleet-tag")[:16]

    # -- signed strings: value#mac -------------------------------------------------------

    def seal(self, kind: str, name: str, value: str) -> str:
        """``value#mac``: ``value`` signed for the key ``kind``/``name``."""
        return f"{value}#{self.mac(kind, name, value)}"

    def opened(self, kind: str, name: str, sealed: object, *, limit: int = 4096) -> str | None:
        """The value of a string :meth:`seal` made for ``kind``/``name``; None if forged (or
        longer than ``limit`` characters)."""
        if not isinstance(sealed, str) or len(sealed) > limit:
            return None
        value, sep, mac = sealed.rpartition("#")
        if not sep or len(mac) != _MAC_HEX or not self.check(mac, kind, name, value):
            return None
        return value

    # -- pending and adopted set members ---------------------------------------------------

    def member(self, call_id: str, tenant_id: str | None) -> str:
        """The signed set member of a call: ``call_id|tenant_id|mac``."""
        value = f"{call_id}|{tenant_id or ''}"
        return f"{value}|{self.mac('member', value)}"

    def open_member(self, member: object) -> tuple[str, str | None] | None:
        """``(call_id, tenant_id)`` of a member :meth:`member` made; None if forged."""
        if not isinstance(member, str) or len(member) > 1024:
            return None
        value, sep, mac = member.rpartition("|")
        if not sep or len(mac) != _MAC_HEX or not self.check(mac, "member", value):
            return None
        call_id, _, tenant = value.rpartition("|")
        return (call_id, tenant or None) if call_id else None

    # -- heartbeats -----------------------------------------------------------------------

    def seal_beat(
        self, instance_id: str, url: str | None, boot: str, pid: int, now: float | None = None
    ) -> str:
        """The JSON heartbeat of ``instance_id``, signed (``mac``) with its time (``t``)."""
        at = round(time.time() if now is None else now, 3)
        mac = self.mac("beat", instance_id, url or "", boot, str(pid), repr(at))
        return json.dumps({"url": url, "boot": boot, "pid": pid, "t": at, "mac": mac})

    def open_beat(
        self, instance_id: str, raw: object, *, max_age: float, now: float | None = None
    ) -> Beat | None:
        """The verified heartbeat in ``raw``; None when it is unsigned, forged, for another
        instance, older than ``max_age`` (+ :data:`MAX_CLOCK_SKEW`) or from the future."""
        if not isinstance(raw, str) or len(raw) > 4096:
            return None
        try:
            value: Any = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(value, dict):
            return None
        url, boot, pid, at, mac = (value.get(k) for k in ("url", "boot", "pid", "t", "mac"))
        if (
            not (url is None or isinstance(url, str))
            or not isinstance(boot, str)
            or not isinstance(pid, int)
            or isinstance(at, bool)
            or not isinstance(at, int | float)
            or not isinstance(mac, str)
            or not self.check(mac, "beat", instance_id, url or "", boot, str(pid), repr(at))
        ):
            return None
        clock = time.time() if now is None else now
        if not clock - max_age - MAX_CLOCK_SKEW <= at <= clock + MAX_CLOCK_SKEW:
            return None
        return Beat(url or None, boot, float(at))

    # -- forwarded notifications ------------------------------------------------------------

    def sign_forward(
        self,
        sender: str,
        target: str,
        tenant_id: str | None,
        method: str,
        path: str,
        body: bytes,
        now: float | None = None,
    ) -> str:
        """The :data:`FLEET_AUTH` header value of a notification ``sender`` forwards to the
        worker ``target``: ``path`` (with its query) and ``body`` as sent, with a fresh nonce."""
        at = str(round(time.time() if now is None else now, 3))
        nonce = secrets.token_hex(16)
        digest = hashlib.sha256(body).hexdigest()
        tenant = tenant_id or ""
        mac = self.mac(
            "forward", sender, target, at, nonce, tenant, method, path, str(len(body)), digest
        )
        return f"t={at};n={nonce};tenant={tenant};sha256={digest};mac={mac}"

    def open_forward(
        self,
        header: str,
        sender: str,
        target: str,
        method: str,
        path: str,
        length: int | None,
        now: float | None = None,
    ) -> Forward | None:
        """The signature ``header`` of a notification ``sender`` forwarded to ``target``,
        checked against the request's head alone (``length`` is its ``Content-Length``), so
        before its body is read; None when it is forged, made for another worker or another
        request, has no ``Content-Length``, is older than :data:`FORWARD_SKEW` or more than
        :data:`FORWARD_AHEAD` in the future. The body is checked next, with
        :meth:`Forward.covers`; the nonce, with :class:`ReplayGuard`."""
        if length is None or len(header) > _MAX_FORWARD_HEADER:
            return None
        fields = dict(part.partition("=")[::2] for part in header.split(";"))
        at, nonce, tenant, digest, mac = (
            fields.get(name) for name in ("t", "n", "tenant", "sha256", "mac")
        )
        if (
            at is None
            or not nonce
            or tenant is None
            or digest is None
            or len(digest) != 64
            or mac is None
            or len(mac) != _MAC_HEX
        ):
            return None
        try:
            when = float(at)
        except ValueError:
            return None
        clock = time.time() if now is None else now
        if not clock - FORWARD_SKEW <= when <= clock + FORWARD_AHEAD:
            return None
        parts = (target, at, nonce, tenant, method, path, str(length), digest)
        if not self.check(mac, "forward", sender, *parts):
            return None
        return Forward(sender, tenant, nonce, when, length, digest)


@attrs.frozen
class Forward:
    """The checked signature of a forwarded notification: who sent it, for which tenant (the
    one the sender verified; empty for none), its nonce and time, and the length and SHA-256
    digest of the body it covers."""

    sender: str
    tenant_id: str
    nonce: str
    at: float
    length: int
    digest: str

    @property
    def expires_at(self) -> float:
        """Epoch seconds after which the signature is no longer valid (:data:`FORWARD_SKEW`
        after it was made)."""
        return self.at + FORWARD_SKEW

    def covers(self, body: bytes) -> bool:
        """True when ``body`` is the body that was signed."""
        return len(body) == self.length and hmac.compare_digest(
            hashlib.sha256(body).hexdigest(), self.digest
        )


class ReplayGuard:
    """The nonces of the forwarded notifications a worker took: each is taken once.

    A nonce is remembered for as long as its signature could still be valid
    (:data:`FORWARD_SKEW` + :data:`FORWARD_AHEAD` from its arrival), in arrival order, so
    forgetting it costs O(1). At most ``capacity`` are kept; past that the oldest is
    forgotten early, and from then on a signature no newer than it is refused too (a forward
    arrives milliseconds after it is made: only replays and far-behind clocks are that old).
    """

    __slots__ = ("_clock", "_floor", "_seen", "capacity", "window")

    def __init__(
        self,
        capacity: int = REPLAY_CAPACITY,
        *,
        window: float = FORWARD_SKEW + FORWARD_AHEAD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity!r}: expected at least one nonce")
        self.capacity = capacity
        self.window = window
        self._clock = clock
        self._seen: OrderedDict[str, tuple[float, float]] = OrderedDict()
        """nonce -> (forgotten at, on the guard's clock; the signature's time)"""
        self._floor = float("-inf")

    def __len__(self) -> int:
        return len(self._seen)

    def first_use(self, forward: Forward) -> bool:
        """True the first time ``forward``'s nonce is seen (it is remembered from now on);
        False for a replay."""
        now = self._clock()
        seen = self._seen
        while seen and next(iter(seen.values()))[0] <= now:
            seen.popitem(last=False)
        if forward.at <= self._floor or forward.nonce in seen:
            return False
        if len(seen) >= self.capacity:
            _, (_, at) = seen.popitem(last=False)
            self._floor = max(self._floor, at)
        seen[forward.nonce] = (now + self.window, forward.at)
        return True


# -- where notifications may be forwarded ------------------------------------------------------


class ForwardTargets:
    """The hosts a notification may be forwarded to: anything when ``allow`` is empty, else
    only URLs whose host is one of the names (``*.example.org`` for subdomains), addresses
    or networks listed. Always http(s), never with credentials."""

    __slots__ = ("_names", "_networks", "_suffixes", "allow")

    def __init__(self, allow: Sequence[str] = ()) -> None:
        problems: list[str] = []
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allow:
            try:
                value = forward_target(entry)
            except ValueError as exc:
                problems.append(str(exc))
                continue
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                if value.startswith("*."):
                    suffixes.append(value[1:].rstrip("."))
                else:
                    names.add(value.rstrip("."))
        if problems:
            raise ConfigError("CALLFLOW_FORWARD_ALLOW: " + "; ".join(problems))
        self.allow = tuple(allow)
        self._names = frozenset(names)
        self._suffixes = tuple(suffixes)
        self._networks = tuple(networks)

    def refusal(self, url: str) -> str | None:
        """Why ``url`` may not receive forwarded notifications; None when it may."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
            credentials = parts.username is not None or parts.password is not None
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            return "not a URL"
        if parts.scheme not in ("http", "https") or not host:
            return "not an absolute http(s) URL"
        if credentials or parts.query or parts.fragment:
            return "a URL with credentials, a query or a fragment"
        if not self.allow:
            return None
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            name = host.rstrip(".")
            if name in self._names or any(name.endswith(s) for s in self._suffixes):
                return None
            return f"host {name!r} is not in CALLFLOW_FORWARD_ALLOW"
        if any(address in network for network in self._networks):
            return None
        return f"address {host} is not in CALLFLOW_FORWARD_ALLOW"
