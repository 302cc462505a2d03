"""Fleet mode through Redis Sentinel: worker processes that follow the master through a failover,
and the store over TLS as an ACL user with the sentinels protected by their own password.

The Sentinel set-up is a master, one replica and three sentinels (tests/redis_sentinel.py);
the workers are ``python -m callflow run tests.fleet_bot:bot`` as in test_fleet.py, with
``CALLFLOW_STORE=redis+sentinel://...``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import anyio
import pytest
import structlog.testing
import trustme

from callflow.fleet.held import HeldCalls, HeldStore
from callflow.fleet.store import RedisStore
from callflow.testing import CallHandle, FakeGraph, SigningKey
from tests.fleet.test_fleet import (
    GUARD,
    TIMEOUT,
    _any_logged,
    decided_once,
    running_fleet,
)
from tests.redis_sentinel import LocalSentinel, redis_sentinel

SECRET = "test-fleet-secret-0123456789abcdef"

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # worker processes and a failover


@pytest.fixture
def sentinel() -> Iterator[LocalSentinel]:
    """A Sentinel set-up of the test's own (the test fails its master over)."""
    yield from redis_sentinel()


async def test_a_failover_during_traffic_leaves_no_call_undecided_and_one_decision_each(
    callflow_signing_key: SigningKey, sentinel: LocalSentinel
) -> None:
    """The master is killed while callers keep calling (eight at a time, each waiting for its
    decision; a quarter of the calls hang in their handler until the default 3 s after
    receipt): every call gets one accepted decision, in time. Until the sentinels have
    promoted the replica each worker decides on its own (store.unavailable); then both reach
    the new master through the sentinels (store.recovered) and shared dedupe works there.

    A failover that outlasts three heartbeats lets every heartbeat expire, so the first
    worker back sees the other as dead; it takes nothing over until the other had time to
    beat again: no call gets a second decision (a call its owner decided while Redis was
    away is still pending in Redis, and a take-over would decide it again)."""
    async with (
        FakeGraph(
            signing_key=callflow_signing_key, platform_timeout=TIMEOUT, recording_timeout=TIMEOUT
        ) as fake,
        running_fleet(fake, sentinel.url, 2, heartbeat_interval=0.25) as fleet,
    ):
        a, b = fleet.workers
        calls: list[CallHandle] = []
        first_default, failed_over = anyio.Event(), anyio.Event()

        async def caller(lane: int) -> None:
            turn = 0
            while not failed_over.is_set():
                slow = turn % 4 == lane % 4
                who = {"kind": "user", "id": f"slow-{lane}-{turn}"} if slow else None
                call = await fake.place_call(fleet.webhook_url, caller=who)
                calls.append(call)
                await call.decision()
                if slow:
                    first_default.set()  # from now on, defaults fall due all the time
                turn += 1

        async with anyio.create_task_group() as tg:
            for lane in range(8):
                tg.start_soon(caller, lane)
            with anyio.fail_after(GUARD):
                await first_default.wait()
                sentinel.kill_master()
                killed_at = time.monotonic()
                await anyio.to_thread.run_sync(sentinel.wait_failover)
                promoted_at = time.monotonic()
                await a.wait_log("store.recovered")
                await b.wait_log("store.recovered")
                recovered_at = time.monotonic()
                failed_over.set()
        with anyio.fail_after(GUARD):
            for call in calls:
                await call.decision()
        assert all(w.find("store.unavailable") for w in (a, b))
        late = [c.call_id for c in calls if not _one_accepted_in_time(c)]
        assert late == []
        # Decided as Redis went away or while it was away: the owner's release of the call
        # (after its POST) did not reach Redis, so the call was still pending there.
        during = {
            c.call_id
            for c in calls
            if killed_at - 0.5 < next(r.at for r in c.decisions if r.accepted) < recovered_at
        }
        seconds = {c.call_id for c in calls if len(c.decisions) > 1}
        assert seconds == set()
        assert [
            line for w in (a, b) for line in w.find("call.decided", decided_by="takeover")
        ] == []
        print(
            f"\n{len(calls)} calls, {len(during)} decided while Redis was away; promoted "
            f"{promoted_at - killed_at:.2f} s, both workers back {recovered_at - killed_at:.2f} s "
            f"after the kill; second decisions: {len(seconds)}"
        )

        call = await fake.place_call(a.webhook_url)
        again = await fake.notify(b.webhook_url, call.payload, call_id=call.call_id)
        assert again.status == 202
        with anyio.fail_after(GUARD):
            await call.decision()
            await _any_logged([a, b], "event.duplicate", call_id=call.call_id, shared=True)
        assert decided_once(call)


def _one_accepted_in_time(call: CallHandle) -> bool:
    accepted = [r for r in call.decisions if r.accepted]
    return len(accepted) == 1 and accepted[0].at < call.deadline and not call.timed_out


async def test_the_store_talks_tls_to_the_master_and_the_sentinels_with_their_own_logins() -> None:
    """``rediss+sentinel://user:password@.../SERVICE?sentinel_password=...`` reaches the
    master over TLS as the ACL user (the CA from CA_BUNDLE), asking sentinels that want their
    own password; the master's password for the sentinels, or none, gets no answer: the
    worker decides on its own."""
    ca = trustme.CA()
    user = ("callflow", "acl-pass-0123")
    for setup in redis_sentinel(tls=ca, user=user, sentinel_password="sentinel-pass-0123"):
        async with (
            RedisStore(
                setup.url, instance_id="a", secret=SECRET, ca_bundle=setup.ca_path, timeout=2.0
            ) as a,
            RedisStore(
                setup.url, instance_id="b", secret=SECRET, ca_bundle=setup.ca_path, timeout=2.0
            ) as b,
        ):
            assert await a.ping()
            assert await a.admit("c", "t", time.time() + 5)
            assert not await b.admit("c", "t", time.time() + 5)
            assert await a.claim("c") and not await b.claim("c")
            census = await a.beat("https://a.internal", 3.0)
            assert census is not None and census.live == {"a": "https://a.internal"}
            assert a.stats.store_failures == b.stats.store_failures == 0
        for url, ca_bundle, expected in (
            (setup.url.replace("sentinel-pass-0123", "acl-pass-0123"), setup.ca_path, "No master"),
            (setup.url.split("?")[0], setup.ca_path, "No master"),
            (setup.url.replace("acl-pass-0123", "wrong"), setup.ca_path, "invalid username"),
            (setup.url, None, "No master"),  # the sentinels' certificate is not trusted
        ):
            with structlog.testing.capture_logs() as logs:
                async with RedisStore(
                    url, instance_id="c", secret=SECRET, ca_bundle=ca_bundle, timeout=0.5
                ) as c:
                    assert not await c.ping()
                    assert await c.claim("c")  # no answer: decided here
            (warning,) = [line for line in logs if line["event"] == "store.unavailable"]
            assert expected in warning["error"], warning["error"]
            assert "pass-0123" not in str(logs)


async def test_a_master_that_comes_back_after_a_failover_is_left_at_the_next_beat(
    sentinel: LocalSentinel,
) -> None:
    """The master freezes, the sentinels promote the replica, and the old master comes back,
    still a master and still taking writes until the sentinels demote it. A store client
    that had connections to it leaves it at its next heartbeat (the beat counts as failed:
    ``store.master_moved``) and works on the new master from then on; a held call whose
    record was written to the old master only is written again on the new one by the next
    reconcile, so nothing written only to the demoted master is relied upon."""
    store = RedisStore(sentinel.url, instance_id="a", namespace="ns", secret=SECRET, timeout=1.0)
    async with store:
        held = HeldCalls(HeldStore(store))
        held.hold("before", "t")
        assert await held.flush()
        assert await store.beat(None, 3.0) is not None
        assert sentinel.master.process is not None
        os.kill(sentinel.master.process.pid, signal.SIGSTOP)
        try:
            await anyio.to_thread.run_sync(sentinel.wait_failover)
        finally:
            os.kill(sentinel.master.process.pid, signal.SIGCONT)
        held.hold("during", "t")  # its connection still reaches the old master
        assert await held.flush()
        with structlog.testing.capture_logs() as logs:
            assert await store.beat(None, 3.0) is None  # the master moved
        assert [e["event"] for e in logs if e["event"].startswith("store.")] == [
            "store.master_moved"
        ]
        assert await store.beat(None, 3.0) is not None
        await held.reconcile()
        assert await held.flush()
        with sentinel.client(sentinel.replica) as promoted:
            role = promoted.execute_command("ROLE")[0]
            assert role in (b"master", "master")
            keys = {k.decode() for k in promoted.keys("*")}
        prefix = "callflow:{ns}:"
        assert {prefix + "held:before", prefix + "held:during", prefix + "instance:a"} <= keys
