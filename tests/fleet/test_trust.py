"""What a worker trusts of its fleet: signatures on fleet values and forwarded notifications,
and the hosts notifications may be forwarded to."""

from __future__ import annotations

import json
import time

import pytest

from callflow import ConfigError
from callflow.fleet.trust import (
    FORWARD_AHEAD,
    FORWARD_SKEW,
    MAX_CLOCK_SKEW,
    FleetSigner,
    Forward,
    ForwardTargets,
    ReplayGuard,
    forward_target,
)

SECRET = "trust-test-secret-0123456789abcdef"
SIGNER = FleetSigner(SECRET)
OTHER = FleetSigner("another-secret-0123456789abcdef-xyz")


def test_a_signed_value_opens_only_for_its_own_key_and_secret() -> None:
    """A claim holder signed for ``final``/call-1 opens there, and nowhere else: not under
    another key, not with another secret, not once changed."""
    sealed = SIGNER.seal("final", "call-1", "w1#boot")
    assert SIGNER.opened("final", "call-1", sealed) == "w1#boot"
    assert SIGNER.opened("final", "call-2", sealed) is None
    assert SIGNER.opened("own", "call-1", sealed) is None
    assert OTHER.opened("final", "call-1", sealed) is None
    assert SIGNER.opened("final", "call-1", sealed.replace("w1", "w2")) is None
    for junk in ("w1#boot", "", "#", None, 7, "x#" + "0" * 32, "x" * 5000):
        assert SIGNER.opened("final", "call-1", junk) is None


def test_set_members_carry_their_call_and_tenant_signed() -> None:
    """A pending-set member opens to its call and tenant; a forged or altered one does not."""
    member = SIGNER.member("call-1", "tenant-1")
    assert SIGNER.open_member(member) == ("call-1", "tenant-1")
    assert SIGNER.open_member(SIGNER.member("call-2", None)) == ("call-2", None)
    assert SIGNER.open_member(member.replace("call-1", "call-9")) is None
    assert SIGNER.open_member(OTHER.member("call-1", "tenant-1")) is None
    for junk in ("call-1|tenant-1", "no-separator", "|x|" + "0" * 32, None, b"x"):
        assert SIGNER.open_member(junk) is None


def test_a_heartbeat_is_bound_to_its_instance_and_its_time() -> None:
    """A heartbeat opens for its instance while fresh; copied to another instance, edited,
    signed with another secret, too old or from the future it does not."""
    now = 1_800_000_000.0
    raw = SIGNER.seal_beat("w1", "http://10.0.0.1:8000", "boot-1", 42, now)
    beat = SIGNER.open_beat("w1", raw, max_age=3.0, now=now + 1)
    assert beat is not None
    assert (beat.url, beat.boot, beat.at) == ("http://10.0.0.1:8000", "boot-1", now)
    assert SIGNER.open_beat("w2", raw, max_age=3.0, now=now) is None
    assert OTHER.open_beat("w1", raw, max_age=3.0, now=now) is None
    edited = json.loads(raw)
    edited["url"] = "http://evil.example:80"
    assert SIGNER.open_beat("w1", json.dumps(edited), max_age=3.0, now=now) is None
    late = now + 3.0 + MAX_CLOCK_SKEW + 0.01
    assert SIGNER.open_beat("w1", raw, max_age=3.0, now=late) is None
    assert SIGNER.open_beat("w1", raw, max_age=3.0, now=now - MAX_CLOCK_SKEW - 0.01) is None
    unlistening = SIGNER.seal_beat("w1", None, "boot-1", 42)
    opened = SIGNER.open_beat("w1", unlistening, max_age=3.0)
    assert opened is not None and opened.url is None
    for junk in ("not json", "[]", '{"url": 1}', None, json.dumps({"boot": "b", "t": True})):
        assert SIGNER.open_beat("w1", junk, max_age=3.0) is None


def test_a_forwarded_notification_is_signed_over_its_head_and_its_bodys_digest() -> None:
    """The signature of a forwarded notification opens on the request's head alone (before
    any body is read) to the sender and tenant, only for the same sender, receiving worker,
    method, path and Content-Length; then only the signed body passes. It is valid for
    FORWARD_SKEW after it was made and at most FORWARD_AHEAD (5 s) before."""
    now = time.time()
    path = "/api/calls?instance=w2"
    header = SIGNER.sign_forward("w1", "w2", "tenant-1", "POST", path, b"{}", now)
    forward = SIGNER.open_forward(header, "w1", "w2", "POST", path, 2, now)
    assert forward is not None
    assert (forward.sender, forward.tenant_id, forward.length) == ("w1", "tenant-1", 2)
    assert forward.covers(b"{}")
    assert not forward.covers(b"[]") and not forward.covers(b"{} ")
    for sender, target, method, signed_path, length in (
        ("w3", "w2", "POST", path, 2),  # another sender
        ("w1", "w3", "POST", path, 2),  # another receiving worker: replayed elsewhere
        ("w1", "w2", "PUT", path, 2),
        ("w1", "w2", "POST", "/api/calls?instance=w3", 2),
        ("w1", "w2", "POST", path, 900),  # another Content-Length
        ("w1", "w2", "POST", path, None),  # none at all (chunked)
    ):
        assert SIGNER.open_forward(header, sender, target, method, signed_path, length, now) is None
    assert OTHER.open_forward(header, "w1", "w2", "POST", path, 2, now) is None

    def opens_at(clock: float) -> bool:
        return SIGNER.open_forward(header, "w1", "w2", "POST", path, 2, clock) is not None

    assert opens_at(now + FORWARD_SKEW - 0.01) and not opens_at(now + FORWARD_SKEW + 0.01)
    assert FORWARD_AHEAD <= 5.0
    assert opens_at(now - FORWARD_AHEAD + 0.01) and not opens_at(now - FORWARD_AHEAD - 0.01)
    again = SIGNER.sign_forward("w1", "w2", "tenant-1", "POST", path, b"{}", now)
    second = SIGNER.open_forward(again, "w1", "w2", "POST", path, 2, now)
    assert second is not None and second.nonce != forward.nonce  # a fresh nonce each time
    for junk in (
        "",
        "garbage",
        "t=x;n=1;tenant=;sha256=" + "0" * 64 + ";mac=" + "0" * 32,
        "t=1;tenant=;mac=" + "0" * 32,
        header.replace("tenant=tenant-1", "tenant=tenant-2"),
        header + ";" + "x" * 2000,
    ):
        assert SIGNER.open_forward(junk, "w1", "w2", "POST", path, 2, now) is None


def test_a_forward_is_taken_once() -> None:
    """A forward's nonce is taken once while its signature could be valid; past the guard's
    capacity the oldest nonce is forgotten and signatures no newer than it are refused, so
    a replay never gets through."""
    clock = [0.0]
    guard = ReplayGuard(3, clock=lambda: clock[0])
    path = "/api/calls?instance=w2"

    def forward(at: float) -> Forward:
        header = SIGNER.sign_forward("w1", "w2", "t", "POST", path, b"{}", at)
        opened = SIGNER.open_forward(header, "w1", "w2", "POST", path, 2, at)
        assert opened is not None
        return opened

    first = forward(1000.0)
    assert guard.first_use(first)
    assert not guard.first_use(first)
    clock[0] = FORWARD_SKEW + FORWARD_AHEAD - 0.01
    assert not guard.first_use(first)
    clock[0] = FORWARD_SKEW + FORWARD_AHEAD  # its signature has expired by now: forgotten
    assert guard.first_use(forward(1001.0)) and len(guard) == 1
    taken = [forward(1002.0), forward(1003.0), forward(1004.0)]  # one past the capacity
    assert all(guard.first_use(f) for f in taken) and len(guard) == 3
    assert not guard.first_use(forward(1001.0))  # no newer than the one forgotten early
    assert not any(guard.first_use(f) for f in taken)
    assert guard.first_use(forward(1005.0))
    with pytest.raises(ValueError, match="capacity"):
        ReplayGuard(0)


def test_a_short_secret_is_refused() -> None:
    """A fleet secret under 16 bytes is refused, naming the setting; its repr hides it."""
    with pytest.raises(ConfigError, match="CALLFLOW_FLEET_SECRET"):
        FleetSigner("short")
    assert SECRET not in repr(SIGNER)


def test_without_an_allow_list_any_plain_http_or_https_url_may_be_a_target() -> None:
    """Without FORWARD_ALLOW, any absolute http(s) URL without credentials, query or fragment
    may receive forwarded notifications (the heartbeat carrying it is signed)."""
    targets = ForwardTargets()
    assert targets.refusal("http://10.1.2.3:8000") is None
    assert targets.refusal("https://worker-1.internal") is None
    assert targets.refusal("ftp://x") == "not an absolute http(s) URL"
    assert targets.refusal("http://user:pw@x") == "a URL with credentials, a query or a fragment"
    assert targets.refusal("http://x/?a=1") == "a URL with credentials, a query or a fragment"
    assert targets.refusal("http://x:99999") == "not a URL"


def test_the_allow_list_names_hosts_subdomains_addresses_and_networks() -> None:
    """FORWARD_ALLOW admits exact host names, ``*.`` subdomains, addresses and CIDR networks;
    anything else is refused, naming the setting."""
    targets = ForwardTargets(["10.0.0.0/8", "fd00::/8", "worker.example", "*.pods.internal"])
    for url in (
        "http://10.20.30.40:8000",
        "http://[fd00::1]:8000",
        "https://worker.example",
        "http://a.pods.internal:80",
    ):
        assert targets.refusal(url) is None, url
    assert targets.refusal("http://11.0.0.1") == (
        "address 11.0.0.1 is not in CALLFLOW_FORWARD_ALLOW"
    )
    assert targets.refusal("http://evil.example") == (
        "host 'evil.example' is not in CALLFLOW_FORWARD_ALLOW"
    )
    assert targets.refusal("http://pods.internal") is not None
    assert targets.refusal("http://a.worker.example") is not None
    with pytest.raises(ConfigError, match="CALLFLOW_FORWARD_ALLOW"):
        ForwardTargets(["ok.example", "bad host"])
    assert forward_target(" Worker.Example ") == "worker.example"
    with pytest.raises(ValueError, match="expected host names"):
        forward_target("http://x")
