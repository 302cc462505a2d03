"""Fleet mode on a Redis Cluster (three masters, tests/redis_cluster.py): the store over TLS as
an ACL user, the store following the fleet's slot to another node, and worker processes
(``python -m callflow run tests.fleet_bot:bot``, as in test_fleet.py) with
``CALLFLOW_STORE=redis+cluster://...``. The store's own tests run on a cluster too (the
``backend`` fixture of test_store.py).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import Counter
from typing import Any

import anyio
import pytest
import structlog.testing
import trustme

from callflow.fleet.scripts import SCRIPTS
from callflow.fleet.store import RedisStore
from callflow.testing import CallHandle, FakeGraph, SigningKey
from tests.fleet.test_fleet import (
    TIMEOUT,
    decided_once,
    place_many,
    running_fleet,
    total,
)
from tests.fleet_proxy import AVOID, UPSTREAM
from tests.redis_cluster import LocalCluster, redis_cluster

NS = "test-ns"
SECRET = "test-fleet-secret-0123456789abcdef"

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # clusters of redis-servers, workers


def store(url: str, instance: str, **options: Any) -> RedisStore:
    """A RedisStore of the test namespace, with the test fleet secret."""
    return RedisStore(url, instance_id=instance, secret=SECRET, namespace=NS, **options)


async def test_the_store_talks_tls_to_a_cluster_as_an_acl_user() -> None:
    """``rediss+cluster://user:password@node,node,node`` with the README's ACL rules (the
    fleet's keys only, nothing dangerous) and CA_BUNDLE: every operation works (the client
    learns the cluster's slots as that user); a wrong password or an untrusted CA gets no
    answer, and the worker decides on its own."""
    user = ("callflow", "acl-pass-0123")
    rules = (f"~callflow:{{{NS}}}:*", "+@all", "-@dangerous")
    for cluster in redis_cluster(tls=trustme.CA(), user=user, rules=rules):
        ca = cluster.ca_path
        async with (
            store(cluster.url, "a", ca_bundle=ca, timeout=2.0) as a,
            store(cluster.url, "gone", ca_bundle=ca, timeout=2.0) as gone,
        ):
            assert await a.ping()
            assert await gone.admit("orphan", "t", time.time() + 5)
            assert await gone.claim("orphan")
            assert await gone.beat(None, 3.0) is not None
            await gone.retire()
            assert await a.admit("tls-call", "t", time.time() + 5)
            assert await a.claim("tls-call")
            assert await a.first_seen(["k"]) == (True,)
            census = await a.beat("https://a.internal", 3.0)
            assert census is not None and census.live == {"a": "https://a.internal"}
            assert census.dead == ("gone",)
            (orphan,) = await a.take_over("gone")
            assert await a.claim_orphan(orphan.call_id)
            await a.release(orphan.call_id, orphan.tenant_id)
            assert a.stats.store_failures == 0
        for url, bundle, expected in (
            (cluster.url.replace("acl-pass-0123", "wrong"), ca, "invalid username"),
            (cluster.url, None, "certificate verify failed"),
        ):
            with structlog.testing.capture_logs() as logs:
                async with store(url, "b", ca_bundle=bundle, timeout=0.5) as b:
                    assert not await b.ping()
                    assert await b.claim("tls-call")  # no answer: decided here
            (warning,) = [line for line in logs if line["event"] == "store.unavailable"]
            assert expected in warning["error"], warning["error"]


async def test_the_store_follows_the_fleets_slot_to_another_node(
    shared_cluster: LocalCluster,
) -> None:
    """The fleet's slot moves to another master (a resharding): the store is redirected
    there, finds what it claimed before the move, and runs its scripts on the new node,
    which never saw them (EVALSHA fails with NOSCRIPT; the script runs by its source)."""
    cluster = shared_cluster
    cluster.flush()
    for node in cluster.nodes:
        with cluster.admin(node) as client:
            client.script_flush()
    tag = f"callflow:{{{NS}}}:"
    async with store(cluster.url, "a") as a, store(cluster.url, "b") as b:
        assert await a.admit("before", "t", time.time() + 5)
        assert await a.claim("before")
        source = cluster.owner(tag)
        target = next(node for node in cluster.nodes if node is not source)
        claim_sha = hashlib.sha1(SCRIPTS["claim"].encode()).hexdigest()
        with cluster.admin(target) as client:
            assert client.script_exists(claim_sha) == [False]
        cluster.move_slot(tag, target)
        assert cluster.owner(tag) is target
        assert not await b.claim("before")  # redirected: a's claim moved with the slot
        assert not await b.admit("before", "t", time.time() + 5)
        assert await b.claim("after") and not await a.claim("after")
        census = await b.beat(None, 3.0)
        assert census is not None and census.live.keys() == {"b"}
        with cluster.admin(target) as client:
            assert client.script_exists(claim_sha) == [True]
        assert a.stats.store_failures == b.stats.store_failures == 0


async def test_three_workers_on_a_cluster_decide_every_call_exactly_once(
    callflow_signing_key: SigningKey, shared_cluster: LocalCluster
) -> None:
    """300 calls through the round-robin proxy to three worker processes sharing a
    three-master cluster, 30 of them redelivered to another worker: exactly 300 decisions
    reach Graph, one per call and in time; each redelivery is dropped once; the store has no
    trouble with the cluster (at most a timeout on a loaded machine)."""
    shared_cluster.flush()
    async with (
        FakeGraph(
            signing_key=callflow_signing_key, platform_timeout=TIMEOUT, recording_timeout=TIMEOUT
        ) as fake,
        running_fleet(fake, shared_cluster.url, 3) as fleet,
    ):

        async def place(i: int) -> CallHandle:
            caller = {"kind": "user", "id": f"reject-{i}"} if i % 2 else None
            call = await fake.place_call(
                fleet.webhook_url, caller=caller, call_id=f"k{i}-{uuid.uuid4()}"
            )
            assert call.webhook_status == 202
            if i % 10 == 0:
                first = call.replies[0].headers[UPSTREAM]
                again = await fake.notify(
                    fleet.webhook_url, call.payload, call_id=call.call_id, headers={AVOID: first}
                )
                assert again.status == 202
            return call

        started = time.monotonic()
        with anyio.fail_after(60.0):
            calls = await place_many(300, place, concurrency=24)
            for call in calls:
                await call.decision()
        elapsed = time.monotonic() - started
        decisions = [r for r in fake.requests if r.is_decision and r.call_id.startswith("k")]
        assert len(decisions) == 300
        assert set(Counter(r.call_id for r in decisions).values()) == {1}
        assert [c.call_id for c in calls if not decided_once(c)] == []
        assert min(fleet.proxy.counts) > 60  # the load really was spread
        dropped = await total(fleet.workers, "callflow_duplicate_notifications_total")
        final = await total(fleet.workers, "callflow_decisions_dropped_elsewhere_total")
        assert dropped + final == 30
        # A loaded machine may make a 0.15 s housekeeping operation run out of time; nothing
        # else may go wrong with the cluster.
        errors = [line["error"] for w in fleet.workers for line in w.find("store.unavailable")]
        assert all(error.startswith("TimeoutError") for error in errors), errors
        print(f"\n300 calls on three workers and a three-master cluster in {elapsed:.2f} s")
