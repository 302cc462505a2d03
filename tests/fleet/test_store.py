"""The decision store against a real redis-server, and fleet mode wired into served bots.

The tests that take ``backend`` run on one server, a three-master cluster and through Sentinel
(tests/fleet/conftest.py)."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import redis.asyncio as aioredis
import structlog.testing
import trustme
from aiohttp import web
from structlog.typing import EventDict, WrappedLogger

import callflow
from callflow import (
    Answer,
    Bot,
    CallStateChanged,
    CallTerminated,
    ConfigError,
    IncomingCall,
    ParticipantsUpdated,
    Reject,
    RejectReason,
    Settings,
)
from callflow.control.book import CallBook
from callflow.decisions import Decision
from callflow.errors import GraphError
from callflow.fleet.breaker import Breaker
from callflow.fleet.census import Census, Directory
from callflow.fleet.claims import DROPPED, Dropped, FleetSink, SharedDedupe, dedupe_key
from callflow.fleet.connect import connect
from callflow.fleet.forwarding import FORWARDED_BY, Forwarder
from callflow.fleet.mode import (
    Fleet,
    Solo,
    epoch_of,
    instance_callback_url,
    internal_url,
    worker_mode,
)
from callflow.fleet.stats import FleetStats
from callflow.fleet.store import (
    CLAIM_CAP,
    KEY_GRACE,
    MemoryStore,
    RedisStore,
    fleet_namespace,
    open_store,
    without_credentials,
)
from callflow.fleet.trust import FLEET_AUTH, FleetSigner, ForwardTargets
from callflow.fleet.watch import FleetWatch
from callflow.testing import (
    CALLBACK_URL,
    FakeGraph,
    RecordingSink,
    SigningKey,
    call_state,
    envelope,
)
from tests.fleet.conftest import Backend
from tests.helpers import incoming
from tests.redis_server import RedisServer, redis_server

GUARD = 10.0
NS = "test-ns"
SECRET = "test-fleet-secret-0123456789abcdef"
SIGNER = FleetSigner(SECRET)

pytestmark = pytest.mark.anyio


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A fresh redis-server for the test."""
    yield from redis_server()


@pytest.fixture
async def raw(backend: Backend) -> AsyncIterator[Any]:
    """A plain client of the backend (a ``Redis`` or a ``RedisCluster``), to look at and
    tamper with the keys."""
    connection = connect(backend.url, timeout=5.0, client_name="test-raw")
    try:
        yield connection.client
    finally:
        await connection.aclose()


def store(url: str, instance: str, **options: Any) -> RedisStore:
    """A RedisStore of the test namespace, with the test fleet secret; operations may wait
    1 s unless told (the default 0.15 s is for a worker, not for a loaded test machine)."""
    options.setdefault("secret", SECRET)
    options.setdefault("timeout", 1.0)
    return RedisStore(url, instance_id=instance, namespace=NS, **options)


def member(call_id: str, tenant_id: str | None) -> str:
    """The signed pending-set member of a call."""
    return SIGNER.member(call_id, tenant_id)


def key(kind: str, name: str = "") -> str:
    """A key of the test namespace."""
    return f"callflow:{{{NS}}}:{kind}:{name}" if name else f"callflow:{{{NS}}}:{kind}"


class LogWatcher:
    """Collects structlog events from every thread and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[EventDict] = []
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        with self._lock:
            self.events.append(dict(event_dict))
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)
        return event_dict

    def find(self, name: str, **fields: Any) -> list[EventDict]:
        """The events named ``name`` whose fields include ``fields``."""
        with self._lock:
            return [
                e
                for e in self.events
                if e["event"] == name and all(e.get(k) == v for k, v in fields.items())
            ]

    async def wait_for(self, name: str, count: int = 1, **fields: Any) -> list[EventDict]:
        """Return the events named ``name`` with ``fields`` once ``count`` were logged."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                found = [
                    e
                    for e in self.events
                    if e["event"] == name and all(e.get(k) == v for k, v in fields.items())
                ]
                if len(found) >= count:
                    return found
                event = asyncio.Event()
                self._waiters.append((loop, event))
            await event.wait()


@pytest.fixture
def logs() -> Iterator[LogWatcher]:
    """Every structlog event of the test, waitable."""
    watcher = LogWatcher()
    with structlog.testing.capture_logs(processors=[watcher]):
        yield watcher


# --- small pieces ---------------------------------------------------------------------------


def test_the_callback_url_names_the_instance() -> None:
    """The per-instance callbackUri adds instance=ID, replacing one and keeping the rest."""
    assert instance_callback_url(CALLBACK_URL, "w-1") == CALLBACK_URL + "?instance=w-1"
    url = instance_callback_url("https://bot.example/cb?x=1&instance=old", "w 2")
    assert url == "https://bot.example/cb?x=1&instance=w+2"


def test_epoch_of_a_monotonic_instant() -> None:
    """A monotonic instant converts to the wall-clock time of the same moment."""
    assert abs(epoch_of(time.monotonic() + 5.0) - (time.time() + 5.0)) < 0.05


def test_dedupe_keys_cover_state_updates_and_terminations_only() -> None:
    """State updates (by state and etag) and terminations have keys; other events none."""
    a = dedupe_key(CallStateChanged("c", "established", 3))
    assert a is not None
    assert a == dedupe_key(CallStateChanged("c", "established", 3))
    assert a != dedupe_key(CallStateChanged("c", "established", 4))
    assert dedupe_key(CallTerminated("c")) is not None
    assert dedupe_key(incoming("c")) is None
    assert dedupe_key(ParticipantsUpdated("c")) is None


def test_fleet_settings_are_read_and_checked() -> None:
    """HEARTBEAT_INTERVAL, STORE_TIMEOUT, INTERNAL_URL and INSTANCE_ID are parsed; bad values
    are named."""
    s = Settings.from_env(
        {
            "CALLFLOW_HEARTBEAT_INTERVAL": "0.5",
            "CALLFLOW_STORE_TIMEOUT": "0.2",
            "CALLFLOW_INTERNAL_URL": "https://10.0.0.7:8000/",
            "CALLFLOW_INSTANCE_ID": " worker-7 ",
            "CALLFLOW_STORE": "rediss://cache:6380/2",
            "CALLFLOW_FLEET_SECRET": SECRET,
            "CALLFLOW_FORWARD_ALLOW": "10.0.0.0/8, *.workers.internal",
            "CALLFLOW_FLEET_NAME": " prod-eu.1 ",
        }
    )
    assert s.fleet_name == "prod-eu.1"
    assert (s.heartbeat_interval, s.store_timeout) == (0.5, 0.2)
    assert s.internal_url == "https://10.0.0.7:8000"
    assert s.fleet_secret == SECRET
    assert s.forward_allow == ("10.0.0.0/8", "*.workers.internal")
    assert s.instance_id == "worker-7"
    assert Settings().heartbeat_interval == 1.0
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                "CALLFLOW_HEARTBEAT_INTERVAL": "0",
                "CALLFLOW_STORE_TIMEOUT": "9",
                "CALLFLOW_INTERNAL_URL": "ftp://x",
                "CALLFLOW_INSTANCE_ID": "two words",
                "CALLFLOW_FLEET_SECRET": "too-short",
                "CALLFLOW_FORWARD_ALLOW": "good.example, bad/host/name",
                "CALLFLOW_FLEET_NAME": "{prod}",
            }
        )
    message = str(caught.value)
    for name in (
        "HEARTBEAT_INTERVAL",
        "STORE_TIMEOUT",
        "INTERNAL_URL",
        "INSTANCE_ID",
        "FLEET_SECRET",
        "FORWARD_ALLOW",
        "FLEET_NAME",
    ):
        assert f"CALLFLOW_{name}:" in message


async def test_the_memory_store_wins_every_claim_and_shares_nothing() -> None:
    """MemoryStore (a lone worker) admits and claims everything and sees a fleet of one."""
    async with MemoryStore("solo") as memory:
        assert await memory.admit("c", "t", time.time() + 5)
        assert await memory.claim("c")
        assert await memory.claim("c")
        assert await memory.claim_orphan("c")
        assert await memory.first_seen(["a", "a"]) == (True, True)
        assert await memory.beat("http://x", 3.0) == Census({"solo": "http://x"})
        assert await memory.take_over("other") == ()
        await memory.release("c", "t")
        await memory.retire()
    assert isinstance(open_store("memory", instance_id="solo"), MemoryStore)


def test_bad_store_settings_are_named() -> None:
    """A RedisStore, a Breaker and a FleetWatch refuse bad settings, naming each one."""
    with pytest.raises(ConfigError) as caught:
        RedisStore("http://x", instance_id="a#b", namespace="{x}", timeout=0, secret="short")
    message = str(caught.value)
    for name in ("url=", "instance_id=", "namespace=", "timeout=", "fleet secret"):
        assert name in message
    with pytest.raises(ConfigError, match="CALLFLOW_FLEET_SECRET"):
        open_store("redis://127.0.0.1:1/0", instance_id="a")
    with pytest.raises(ConfigError, match="backoff"):
        Breaker((1.0, 0.5))
    with pytest.raises(ConfigError, match="interval"):
        FleetWatch(MemoryStore(), Recorder(), default=Reject(), interval=0)
    redis_store = open_store(
        "redis://127.0.0.1:1/0", instance_id="a", label="scheduler", secret=SECRET
    )
    assert isinstance(redis_store, RedisStore)
    assert "scheduler" in repr(redis_store)


async def test_a_store_that_is_not_open_says_so() -> None:
    """Using a RedisStore outside its ``async with`` raises, saying what was expected."""
    with pytest.raises(RuntimeError, match="not open"):
        await store("redis://127.0.0.1:1/0", "a").claim("c")


# --- claims ------------------------------------------------------------------------------------


async def test_intake_ownership_is_claimed_once_and_registers_the_call(
    backend: Backend, raw: aioredis.Redis
) -> None:
    """The first worker to admit a call owns it (again: still True) and has it pending; a
    second worker is refused and keeps nothing; the key outlives the platform timeout."""
    expires = time.time() + 5.0
    async with store(backend.url, "a") as a, store(backend.url, "b") as b:
        assert await a.admit("call-1", "tenant-1", expires)
        assert await a.admit("call-1", "tenant-1", expires)
        assert not await b.admit("call-1", "tenant-1", expires)
        assert await b.admit("call-2", None, expires)
        assert await raw.zrange(key("pending", "a"), 0, -1, withscores=True) == [
            (member("call-1", "tenant-1"), pytest.approx(expires))
        ]
        assert await raw.zrange(key("pending", "b"), 0, -1) == [member("call-2", None)]
        ttl = await raw.pttl(key("own", "call-1")) / 1000
        assert 5.0 + KEY_GRACE - 1 < ttl <= 5.0 + KEY_GRACE
        await a.release("call-1", "tenant-1")
        assert await raw.zcard(key("pending", "a")) == 0
        assert a.stats.store_failures == 0


async def test_the_final_claim_is_won_once(backend: Backend) -> None:
    """The final claim is this worker's (repeatable) and no other worker's."""
    async with store(backend.url, "a") as a, store(backend.url, "b") as b:
        assert await a.claim("c")
        assert await a.claim("c")
        assert not await b.claim("c")


async def test_an_orphans_claim_is_taken_over_only_from_a_dead_holder(
    backend: Backend, raw: aioredis.Redis
) -> None:
    """claim_orphan wins an unclaimed call, a call held by a worker without a heartbeat or by
    a previous life of a live one, and a call held by unsigned data (counted as forged); never
    a call held by a live worker."""
    async with (
        store(backend.url, "a") as a,
        store(backend.url, "b", boot="b1") as b1,
        store(backend.url, "b", boot="b2") as b2,
    ):
        assert await a.claim_orphan("free")
        assert await b1.claim("held")
        assert await b1.beat(None, 5.0) is not None
        assert not await a.claim_orphan("held")
        assert await b2.beat(None, 5.0) is not None  # b restarted: b1's claim is an orphan
        assert await a.claim_orphan("held")
        await raw.set(key("final", "odd"), "no-separator")
        assert await a.claim_orphan("odd")
        assert a.stats.forged == 1
        assert await b2.claim("gone")
        await raw.delete(key("instance", "b"))
        assert await a.claim_orphan("gone")
        assert await raw.get(key("final", "gone")) == SIGNER.seal("final", "gone", f"a#{a.boot}")


async def test_state_updates_are_shared_once(backend: Backend) -> None:
    """first_seen is True for the first worker to take a key (repeatably), False for others."""
    async with store(backend.url, "a") as a, store(backend.url, "b") as b:
        assert await a.first_seen(["k1", "k2"]) == (True, True)
        assert await b.first_seen(["k1", "k3"]) == (False, True)
        assert await a.first_seen([]) == ()


async def test_values_forged_in_redis_are_replaced_or_ignored(
    backend: Backend, raw: aioredis.Redis
) -> None:
    """Claims and dedupe marks written without the fleet secret are replaced (the claim is
    won), a heartbeat that names a holder's boot without a signature does not keep that
    holder alive, and a forged member of this worker's adopted set is dropped, never
    decided; each one is counted."""
    async with store(backend.url, "a") as a, store(backend.url, "b", boot="b-boot") as b:
        await raw.set(key("final", "c1"), "b#b-boot")
        assert await a.claim("c1")
        assert await raw.get(key("final", "c1")) == SIGNER.seal("final", "c1", f"a#{a.boot}")
        assert not await b.claim("c1")  # now held, signed, by a
        await raw.set(key("own", "c2"), "someone#else#" + "0" * 32)
        assert await a.admit("c2", "t", time.time() + 5)
        assert await raw.zrange(key("pending", "a"), 0, -1) == [member("c2", "t")]
        await raw.set(key("seen", "k1"), "b#b-boot#x")
        assert await a.first_seen(["k1", "k2"]) == (True, True)
        assert await b.first_seen(["k1", "k2"]) == (False, False)
        await raw.set(key("final", "c3"), SIGNER.seal("final", "c3", "b#b-boot"))
        await raw.set(key("instance", "b"), '{"boot": "b-boot", "url": "http://evil:1"}')
        assert await a.claim_orphan("c3")  # b's "heartbeat" is unsigned: b is not alive
        await raw.zadd(key("adopted", "a"), {"forged-call|t": time.time() + 60})
        await raw.sadd(key("instances"), "b")
        census = await a.beat(None, 3.0)
        assert census is not None
        assert census.adopted == ()
        assert await raw.zcard(key("adopted", "a")) == 0
        assert "b" not in census.live
        assert "b" in census.dead
    assert a.stats.forged == 6


async def test_a_replayed_heartbeat_does_not_keep_a_dead_worker_alive(
    backend: Backend, raw: aioredis.Redis
) -> None:
    """A real heartbeat copied before its worker died and written back later (without expiry)
    is too old to count: the worker is dead and its calls are taken over."""
    clock = Clock()
    clock.now = time.time()
    async with store(backend.url, "a") as a, store(backend.url, "old", clock=clock) as old:
        await old.admit("left", "t", time.time() + 60)
        assert await old.beat("http://old:1", 3.0) is not None
        captured = await raw.get(key("instance", "old"))
        clock.now -= 30  # the captured beat is 30 s old by now
        await old.beat("http://old:1", 3.0)
        stale = await raw.get(key("instance", "old"))
        assert captured is not None and stale is not None
        await raw.set(key("instance", "old"), stale)  # written back, without expiry
        census = await a.beat(None, 3.0)
        assert census is not None
        assert "old" in census.dead
        (call,) = await a.take_over("old")
        assert call.call_id == "left"
        assert await raw.exists(key("instance", "old")) == 0


# --- heartbeat and take-over -----------------------------------------------------------------


async def test_the_census_lists_live_and_dead_instances(
    backend: Backend, raw: aioredis.Redis
) -> None:
    """A heartbeat publishes the worker's URL, signed; an instance whose key expired is dead,
    and so is one whose heartbeat is not signed by the fleet; long-expired pending entries are
    trimmed."""
    async with store(backend.url, "a") as a, store(backend.url, "b") as b:
        await b.admit("stale", None, time.time() - 120)
        await b.admit("fresh", None, time.time() + 5)
        census = await b.beat("http://b:1", 5.0)
        assert census == Census({"b": "http://b:1"})
        assert await raw.zrange(key("pending", "b"), 0, -1) == [member("fresh", None)]
        value = json.loads(str(await raw.get(key("instance", "b"))))
        assert value["url"] == "http://b:1"
        assert value["boot"] == b.boot
        assert len(value["mac"]) == 32
        await raw.sadd(key("instances"), "c", "d")
        await raw.set(key("instance", "c"), "not json")
        census = await a.beat(None, 5.0)
        assert census is not None
        assert census.live == {"a": None, "b": "http://b:1"}
        assert census.dead == ("c", "d")
        assert census.adopted == ()
        assert a.stats.forged == 1


async def test_a_dead_instances_calls_are_taken_over_by_exactly_one_survivor(
    backend: Backend, raw: aioredis.Redis
) -> None:
    """Two survivors race for a dead worker's calls: each call moves once, into the winner's
    adopted set, and the dead worker leaves the instances set; a live one is left alone."""
    expires = time.time() + 5
    async with (
        store(backend.url, "a") as a,
        store(backend.url, "b") as b,
        store(backend.url, "dead") as dead,
    ):
        for i in range(20):
            assert await dead.admit(f"c{i}", "t", expires + i)
        await raw.zadd(key("adopted", "dead"), {member("adopted-earlier", "t"): expires})
        await raw.zadd(key("pending", "dead"), {"no-separator": expires, "forged|t": expires})
        for s in (a, b, dead):
            await s.beat(None, 5.0)
        assert await a.take_over("dead") == ()  # still alive
        await raw.delete(key("instance", "dead"))
        results = await asyncio.gather(a.take_over("dead"), b.take_over("dead"))
        moved = [call for result in results for call in result]
        assert sorted(c.call_id for c in moved) == sorted(
            [f"c{i}" for i in range(20)] + ["adopted-earlier"]
        )  # the unsigned members are dropped, never decided
        assert any(results) and not all(results)
        winner = a if results[0] else b
        assert winner.stats.forged == 2
        by_id = {c.call_id: c for c in moved}
        assert by_id["c0"].tenant_id == "t"
        assert by_id["c0"].expires_at == pytest.approx(expires)
        assert await raw.zcard(key("adopted", winner.instance_id)) == 21
        assert await raw.exists(key("pending", "dead"), key("adopted", "dead")) == 0
        assert "dead" not in await raw.smembers(key("instances"))
        census = await winner.beat(None, 5.0)
        assert census is not None
        assert len(census.adopted) == 21
        await winner.release("c0", "t")
        assert await raw.zcard(key("adopted", winner.instance_id)) == 20


async def test_a_worker_adopts_what_its_previous_life_left(
    backend: Backend, raw: aioredis.Redis
) -> None:
    """take_over(own id, force=True) moves the worker's own pending calls to its adopted set."""
    async with store(backend.url, "a", boot="old") as old, store(backend.url, "a") as new:
        await old.admit("left-behind", "t", time.time() + 5)
        await new.beat(None, 5.0)
        (call,) = await new.take_over("a", force=True)
        assert call.call_id == "left-behind"
        assert await raw.zrange(key("adopted", "a"), 0, -1) == [member("left-behind", "t")]
        assert await raw.zcard(key("pending", "a")) == 0


async def test_a_second_worker_with_the_same_instance_id_is_reported(
    backend: Backend, raw: aioredis.Redis, logs: LogWatcher
) -> None:
    """Two live workers with one INSTANCE_ID: the heartbeat notices the other boot id."""
    async with store(backend.url, "twin", boot="one") as one, store(backend.url, "twin") as two:
        await raw.set(key("instance", "twin"), "not json")  # an unreadable previous value
        await one.beat(None, 5.0)
        await one.beat(None, 5.0)
        await two.beat(None, 5.0)
        assert logs.find("fleet.instance_id_clash") == []
        await one.beat(None, 5.0)
        (clash,) = logs.find("fleet.instance_id_clash")
        assert clash["instance"] == "twin"
        await two.retire()
        await one.retire()


async def test_retiring_removes_the_heartbeat(backend: Backend, raw: aioredis.Redis) -> None:
    """retire() drops the worker's heartbeat, so survivors take over whatever it left."""
    async with store(backend.url, "a") as a:
        await a.beat(None, 5.0)
        await a.retire()
        assert await raw.exists(key("instance", "a")) == 0


# --- Redis trouble ---------------------------------------------------------------------------


class Clock:
    """A monotonic clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_every_operation_falls_back_when_redis_is_down_and_recovers_after_backoff(
    redis: RedisServer, logs: LogWatcher
) -> None:
    """With Redis stopped every operation gives the answer that lets the worker decide alone
    (admit and claims won, nothing seen, no census), fast; one warning is logged, failures
    are counted, Redis is skipped during the back-off and used again after it."""
    clock = Clock()
    breaker = Breaker((1.0, 4.0), clock=clock)
    stats = FleetStats()
    async with store(redis.url, "a", breaker=breaker, stats=stats, timeout=0.1) as a:
        assert await a.ping()
        redis.stop()
        started = time.monotonic()
        assert await a.admit("c", None, time.time() + 5)
        assert await a.claim("c")
        assert await a.claim_orphan("c")
        assert await a.first_seen(["k"]) == (True,)
        assert await a.beat(None, 3.0) is None
        assert await a.take_over("x") == ()
        await a.release("c", None)
        await a.retire()
        assert not await a.ping()
        assert time.monotonic() - started < 1.0
        assert stats.store_failures == 9
        assert breaker.failures_in_row == 1
        (warning,) = logs.find("store.unavailable")
        assert (warning["store"], warning["op"], warning["retry_in"]) == ("loop", "admit", 1.0)
        assert "Error" in warning["error"]
        redis.start()
        assert not await a.ping()  # skipped: the back-off has not passed
        assert logs.find("store.recovered") == []
        clock.now += 1.5
        assert await a.ping()
        (recovered,) = logs.find("store.recovered")
        assert (recovered["store"], recovered["trips"]) == ("loop", 1)
        assert recovered["down_for"] == 1.5
        assert breaker.closed is True
        assert await a.claim("d")


async def test_warnings_are_rate_limited_and_the_backoff_grows(
    redis: RedisServer, logs: LogWatcher
) -> None:
    """Failures in a row double the back-off up to its cap; only one warning every few
    seconds, the next one saying how many were suppressed."""
    clock = Clock()
    breaker = Breaker((1.0, 4.0), clock=clock)
    redis.stop()
    async with store(redis.url, "a", breaker=breaker, timeout=0.1) as a:
        waits = []
        for _ in range(4):
            await a.claim("c")
            waits.append(breaker._open_until - clock.now)
            clock.now += waits[-1]
        assert waits == [1.0, 2.0, 4.0, 4.0]
        assert len(logs.find("store.unavailable")) == 2  # at 0 s and at 7 s
        assert logs.find("store.unavailable")[1]["suppressed"] == 2


async def test_a_hung_redis_costs_a_bounded_wait_and_trips_after_three_long_timeouts(
    redis: RedisServer, logs: LogWatcher
) -> None:
    """A hung Redis (SIGSTOP): a claim with time left waits a quarter of it, other operations
    STORE_TIMEOUT, then fall back; short timeouts never open the circuit, the third long one
    in a row does, after which operations fall back at once."""
    async with store(redis.url, "a", timeout=0.1) as a:
        assert (a.wait_for(None), a.wait_for(0.2), a.wait_for(2.0), a.wait_for(60.0)) == (
            0.1,
            0.1,
            0.5,
            CLAIM_CAP,
        )
        assert await a.claim("warm")  # the connection is open
        assert redis.process is not None
        os.kill(redis.process.pid, signal.SIGSTOP)
        try:
            timings = []
            for call_id, left in (
                ("short-1", None),
                ("short-2", None),
                ("short-3", None),
                ("long-1", 2.0),
                ("long-2", 2.0),
                ("long-3", 2.0),
                ("skipped", 2.0),
            ):
                started = time.monotonic()
                assert await a.claim(call_id, left=left)
                timings.append(time.monotonic() - started)
                if call_id == "short-3":
                    assert a.breaker.trips == 0
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        assert all(0.09 < t < 0.4 for t in timings[:3]), timings
        assert all(0.45 < t < 1.0 for t in timings[3:6]), timings
        assert timings[6] < 0.05  # the circuit is open
        assert a.breaker.trips == 1
        assert a.stats.store_failures == 7
        (warning,) = logs.find("store.unavailable")  # the others were rate limited
        assert warning["error"] == "TimeoutError: no answer in time"


# --- the decision path --------------------------------------------------------------------------


class FailingSink:
    """A sink whose sends fail."""

    async def deliver(self, call: IncomingCall, decision: Decision, deadline: float) -> None:
        """Raise like a Graph client that gave up."""
        raise GraphError("Graph said no")


async def test_only_the_worker_that_wins_the_final_claim_sends(
    backend: Backend, raw: aioredis.Redis, logs: LogWatcher
) -> None:
    """Two workers deliver the same call: one sends, the other returns DROPPED, logs it and
    counts it; the sender takes the call out of its pending set, even when the send fails."""
    stats = FleetStats()
    call = incoming("shared-call", tenant_id="t")
    inner_a, inner_b = RecordingSink(), RecordingSink()
    async with store(backend.url, "a") as a, store(backend.url, "b") as b:
        await a.admit(call.call_id, "t", time.time() + 5)
        first = await FleetSink(inner_a, a, stats).deliver(call, Answer(), time.monotonic() + 5)
        second = await FleetSink(inner_b, b, stats).deliver(call, Reject(), time.monotonic() + 5)
        assert first is None  # what the inner sink returned
        assert second is DROPPED
        assert second.attempts == 0
        assert len(inner_a.decisions) == 1
        assert inner_b.decisions == []
        assert stats.dropped_elsewhere == 1
        (dropped,) = logs.find("decision.dropped_elsewhere")
        assert (dropped["call_id"], dropped["decision"]) == ("shared-call", "reject")
        assert await raw.zcard(key("pending", "a")) == 0
        other = incoming("failing-call", tenant_id="t")
        await a.admit(other.call_id, "t", time.time() + 5)
        with pytest.raises(GraphError):
            await FleetSink(FailingSink(), a, stats).deliver(other, Reject(), time.monotonic() + 5)
        assert await raw.zcard(key("pending", "a")) == 0


async def test_shared_dedupe_drops_what_another_worker_took(backend: Backend) -> None:
    """State updates and terminations go to one worker only; incoming calls and rosters pass."""
    events: list[Any] = [
        incoming("c1"),
        CallStateChanged("c1", "established", 2),
        CallTerminated("c1"),
        ParticipantsUpdated("c1"),
    ]
    stats = FleetStats()
    async with store(backend.url, "a") as a, store(backend.url, "b") as b:
        assert await SharedDedupe(a, stats).fresh(events) == events
        assert await SharedDedupe(b, stats).fresh(events) == [events[0], events[3]]
        only_calls = [incoming("c2")]
        assert await SharedDedupe(b, stats).fresh(only_calls) is only_calls
    assert stats.shared_duplicates == 2


# --- the watch --------------------------------------------------------------------------------


class Recorder:
    """A Decider that records decisions, and fails for call ids starting with ``fail``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Decision, str | None, float | None]] = []
        self.changed = anyio.Event()

    async def decide(
        self,
        call_id: str,
        decision: Decision,
        *,
        tenant_id: str | None = None,
        deadline: float | None = None,
        scenario_id: str | None = None,
    ) -> Any:
        """Record the decision (or fail)."""
        self.changed.set()
        self.changed = anyio.Event()
        if call_id.startswith("fail"):
            raise GraphError(f"no Graph for {call_id}")
        self.sent.append((call_id, decision, tenant_id, deadline))
        return Dropped(attempts=2)  # any result with ``attempts``

    async def wait_for(self, count: int) -> None:
        """Wait until ``count`` decisions were recorded."""
        while len(self.sent) < count:
            await self.changed.wait()


async def test_the_watch_takes_over_a_dead_workers_calls(
    backend: Backend, raw: aioredis.Redis, logs: LogWatcher
) -> None:
    """The watch sends the default for each of a dead worker's calls still in time, skips
    expired ones and ones a live worker holds, takes the claim of ones the dead worker held,
    logs a failed send, counts what it did, and empties its adopted set."""
    now = time.time()
    graph = Recorder()
    stats = FleetStats()
    default = Reject(RejectReason.BUSY)
    async with (
        store(backend.url, "a") as a,
        store(backend.url, "live") as live,
        store(backend.url, "dead") as dead,
    ):
        await live.beat(None, 30.0)
        for call_id, expires in (
            ("in-time", now + 5),
            ("claimed-by-dead", now + 5),
            ("claimed-by-live", now + 5),
            ("expired", now - 1),
            ("fail-send", now + 5),
        ):
            await dead.admit(call_id, "t", expires)
        await dead.claim("claimed-by-dead")
        await live.claim("claimed-by-live")
        await dead.beat(None, 0.05)
        await raw.delete(key("instance", "dead"))
        watch = FleetWatch(
            a, graph, default=default, interval=0.05, address=lambda: "http://a:1", stats=stats
        )
        async with anyio.create_task_group() as tg:
            await tg.start(watch.run)
            with anyio.fail_after(GUARD):
                await graph.wait_for(2)
                await logs.wait_for("call.decision_failed", call_id="fail-send")
                await logs.wait_for("decision.dropped_elsewhere", call_id="claimed-by-live")
                await logs.wait_for("call.takeover_expired", call_id="expired")
                await watch.directory.wait_until(lambda live: "a" in live)
            watch.stop()
        assert sorted(c for c, *_ in graph.sent) == ["claimed-by-dead", "in-time"]
        assert all(d == default and t == "t" for _, d, t, _ in graph.sent)
        assert stats.taken_over == 2
        assert stats.dropped_elsewhere == 1
        decided = logs.find("call.decided", decided_by="takeover")
        assert {e["call_id"] for e in decided} == {"claimed-by-dead", "in-time"}
        assert all(e["attempts"] == 2 for e in decided)
        (taken,) = logs.find("instance.taken_over")
        assert (taken["instance"], taken["calls"]) == ("dead", 5)
        assert await raw.zcard(key("adopted", "a")) == 0
        assert watch.directory.url("a") == "http://a:1"
        assert watch.directory.url("dead") is None
        assert watch.beats >= 1
        members = logs.find("fleet.members")
        assert members[0]["joined"] == ["a", "live"]


async def test_the_watch_adopts_its_previous_lifes_calls_at_its_first_beat(
    backend: Backend, logs: LogWatcher
) -> None:
    """Calls left pending by an earlier process with the same INSTANCE_ID get the default."""
    graph = Recorder()
    async with store(backend.url, "a", boot="before") as before, store(backend.url, "a") as after:
        await before.admit("left", "t", time.time() + 5)
        await before.claim("left")
        watch = FleetWatch(after, graph, default=Reject(), interval=0.05)
        async with anyio.create_task_group() as tg:
            await tg.start(watch.run)
            with anyio.fail_after(GUARD):
                await graph.wait_for(1)
            watch.stop()
    assert [c for c, *_ in graph.sent] == ["left"]
    (adopted,) = logs.find("instance.previous_life_adopted")
    assert adopted["calls"] == 1


class Flaky:
    """A store whose beats fail (None), then raise once, then work."""

    def __init__(self, inner: MemoryStore) -> None:
        self.instance_id = inner.instance_id
        self.inner = inner
        self.beats = 0

    async def beat(self, address: str | None, ttl: float) -> Census | None:
        """None, then an exception, then the inner store's census."""
        self.beats += 1
        if self.beats == 1:
            return None
        if self.beats == 2:
            raise RuntimeError("a bug in the store")
        return await self.inner.beat(address, ttl)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_the_watch_survives_a_store_that_is_down_or_broken(logs: LogWatcher) -> None:
    """A beat without census keeps the directory; an exception is logged and the watch goes on."""
    flaky = Flaky(MemoryStore("m"))
    directory = Directory()
    watch = FleetWatch(flaky, Recorder(), default=Reject(), interval=0.01, directory=directory)
    async with anyio.create_task_group() as tg:
        await tg.start(watch.run)
        assert directory.live() == {}
        with anyio.fail_after(GUARD):
            await directory.wait_until(lambda live: "m" in live)
        watch.stop()
    (failed,) = logs.find("fleet.watch_failed")
    assert failed["instance"] == "m"
    assert watch.beats >= 1


async def test_a_watch_stopped_before_it_runs_returns_at_once() -> None:
    """stop() before run(): run reports started and returns without beating."""
    watch = FleetWatch(MemoryStore(), Recorder(), default=Reject())
    watch.stop()
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            await tg.start(watch.run)
    assert watch.beats == 0


# --- forwarding ----------------------------------------------------------------------------------


class Target:
    """An aiohttp server that records what reaches it and answers 202 with echo headers."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes, dict[str, str]]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        """Record and answer."""
        self.seen.append((str(request.rel_url), await request.read(), dict(request.headers)))
        return web.json_response(
            {"ok": True}, status=202, headers={"client-request-id": "crid", "x-other": "no"}
        )


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    """A running Target."""
    target = Target()
    app = web.Application()
    app.router.add_post("/{tail:.*}", target.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        target.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield target
    finally:
        await runner.cleanup()


@pytest.fixture
async def front(target: Target) -> AsyncIterator[tuple[str, Forwarder]]:
    """A server whose POST handler asks a Forwarder (instance 'me') first: 299 = local."""
    lookup = {"other": target.url, "dead": "http://127.0.0.1:1"}
    forwarder = Forwarder("me", lookup.get, signer=SIGNER, timeout=2.0)

    async def handle(request: web.Request) -> web.StreamResponse:
        reply = await forwarder.forward(request, await request.read(), "tenant-1")
        return web.Response(status=299) if reply is None else reply

    app = web.Application()
    app.router.add_post("/api/calls", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        async with forwarder:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            yield f"http://127.0.0.1:{runner.addresses[0][1]}/api/calls", forwarder
    finally:
        await runner.cleanup()


async def test_a_notification_for_another_instance_is_forwarded_with_its_headers(
    target: Target, front: tuple[str, Forwarder]
) -> None:
    """The body, path, query and headers (not hop-by-hop ones, not Graph's bearer token) go
    to the owner, marked as forwarded and signed with the fleet secret (tenant included); the
    owner's status, body, content type and echo headers come back."""
    url, forwarder = front
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + "?instance=other&x=1",
            data=b'{"value": []}',
            headers={"Authorization": "Bearer t", "Content-Type": "application/json"},
        ) as reply,
    ):
        assert reply.status == 202
        assert await reply.json() == {"ok": True}
        assert reply.headers["client-request-id"] == "crid"
        assert "x-other" not in reply.headers
    ((path, body, headers),) = target.seen
    assert path == "/api/calls?instance=other&x=1"
    assert body == b'{"value": []}'
    assert "Authorization" not in headers
    assert headers[FORWARDED_BY] == "me"
    signed = SIGNER.open_forward(headers[FLEET_AUTH], "me", "other", "POST", path, len(body))
    assert signed is not None and signed.tenant_id == "tenant-1" and signed.covers(body)
    assert not signed.covers(b"{}")
    assert SIGNER.open_forward(headers[FLEET_AUTH], "me", "me", "POST", path, len(body)) is None
    assert await forwarder.fresh([incoming("c")]) == [incoming("c")]


@pytest.mark.parametrize(
    ("query", "headers", "event"),
    [
        ("", {}, None),
        ("?instance=me", {}, None),
        ("?instance=unknown", {}, "notification.owner_gone"),
        ("?instance=other", {FORWARDED_BY: "someone"}, "notification.not_forwarded_again"),
        ("?instance=dead", {}, "notification.forward_failed"),
    ],
)
async def test_a_notification_is_handled_here_when_it_cannot_or_need_not_be_forwarded(
    target: Target,
    front: tuple[str, Forwarder],
    logs: LogWatcher,
    query: str,
    headers: dict[str, str],
    event: str | None,
) -> None:
    """No instance, this instance, a gone instance, an already forwarded notification and an
    unreachable owner all stay here (logged when it is not the plain case)."""
    url, _ = front
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + query, data=b"{}", headers=headers) as reply,
    ):
        assert reply.status == 299
    assert target.seen == []
    if event is not None:
        assert len(logs.find(event)) == 1


async def test_a_forward_target_outside_the_allow_list_is_not_used(
    target: Target, logs: LogWatcher
) -> None:
    """With FORWARD_ALLOW naming another network, a signed address outside it receives
    nothing: the notification is handled here, and the refusal is logged."""
    forwarder = Forwarder(
        "me", {"other": target.url}.get, signer=SIGNER, targets=ForwardTargets(["10.0.0.0/8"])
    )
    app = web.Application()

    async def handle(request: web.Request) -> web.StreamResponse:
        reply = await forwarder.forward(request, await request.read(), "tenant-1")
        return web.Response(status=299) if reply is None else reply

    app.router.add_post("/api/calls", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        async with forwarder:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/calls?instance=other"
            async with aiohttp.ClientSession() as session:
                for _ in range(3):
                    async with session.post(url, data=b"{}") as reply:
                        assert reply.status == 299
    finally:
        await runner.cleanup()
    assert target.seen == []
    (refused,) = logs.find("notification.forward_refused")  # once, then rate-limited
    assert "not in CALLFLOW_FORWARD_ALLOW" in refused["reason"]


async def test_a_forwarder_must_be_open() -> None:
    """Forwarding outside ``async with`` raises, saying what was expected."""
    forwarder = Forwarder("me", {"other": "http://127.0.0.1:1"}.get, signer=SIGNER)
    app = web.Application()
    seen: list[BaseException] = []

    async def handle(request: web.Request) -> web.Response:
        try:
            await forwarder.forward(request, b"")
        except RuntimeError as exc:
            seen.append(exc)
        return web.Response(status=204)

    app.router.add_post("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{runner.addresses[0][1]}/?instance=other") as reply,
        ):
            assert reply.status == 204
    finally:
        await runner.cleanup()
    assert "not open" in str(seen[0])


# --- served bots in fleet mode ------------------------------------------------------------------


class Seen(list[tuple[str, str, int | None]]):
    """State updates a bot observed (call id, state, etag); :meth:`wait_for` one of them."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = anyio.Event()

    def append(self, item: tuple[str, str, int | None]) -> None:
        super().append(item)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, item: tuple[str, str, int | None]) -> None:
        """Return once ``item`` was observed (the observer runs after the webhook's 202)."""
        while item not in self:
            await self._changed.wait()


def fleet_bot(seen: list[tuple[str, str, int | None]], observed: anyio.Event | None = None) -> Bot:
    """A bot that answers, lets callers named slow wait, and records state updates (setting
    ``observed`` at each)."""
    bot = Bot()

    @bot.incoming_call
    async def decide(call: IncomingCall) -> Answer | None:
        if (call.caller.user_id or "").startswith("slow"):
            await anyio.sleep_forever()
        return Answer()

    @bot.on(CallStateChanged)
    async def observe(event: CallStateChanged) -> None:
        seen.append((event.call_id, event.state, event.etag))
        if observed is not None:
            observed.set()

    return bot


@pytest.fixture
async def short_fake(callflow_signing_key: SigningKey) -> AsyncIterator[FakeGraph]:
    """A FakeGraph whose calls time out after 2 s."""
    async with FakeGraph(
        signing_key=callflow_signing_key, platform_timeout=2.0, recording_timeout=2.0
    ) as fake:
        yield fake


def fleet_options(redis: RedisServer | Backend, name: str) -> dict[str, Any]:
    """Settings overrides of a fleet worker."""
    return {
        "store": redis.url,
        "instance_id": name,
        "heartbeat_interval": 0.05,
        "safety_margin": 1.0,
        "drain_timeout": 0.5,
        "fleet_secret": SECRET,
    }


async def test_two_served_bots_share_calls_forward_notifications_and_dedupe(
    short_fake: FakeGraph, backend: Backend, raw: aioredis.Redis, logs: LogWatcher
) -> None:
    """Two bots on one Redis: a redelivery to the other is dropped, the decision names its
    worker, a pinned notification is forwarded, a state update sent to both is seen once, a
    slow call gets its default from the scheduler thread, a claim held elsewhere is not sent,
    and once a bot stops, notifications naming it are handled where they land."""
    seen_a, seen_b = Seen(), Seen()
    fake = short_fake
    async with (
        fake.serve(fleet_bot(seen_a), **fleet_options(backend, "a")) as a,
        fake.serve(fleet_bot(seen_b), **fleet_options(backend, "b")) as b,
    ):
        with anyio.fail_after(GUARD):
            await logs.wait_for("fleet.members", count=2, live=["a", "b"])
        call = await fake.place_call(a.webhook_url)
        with anyio.fail_after(GUARD):
            answer = await call.decision()
        again = await fake.notify(b.webhook_url, call.payload, call_id=call.call_id)
        assert again.status == 202
        with anyio.fail_after(GUARD):
            await logs.wait_for("event.duplicate", call_id=call.call_id, shared=True)
        assert answer.body["callbackUri"] == CALLBACK_URL + "?instance=a"
        assert b.engine.stats.duplicates == 1

        pinned = await fake.notify(
            b.webhook_url + "?instance=a",
            envelope(call_state(call.call_id, "hold", etag=10)),
            call_id=call.call_id,
        )
        assert pinned.status == 202
        both = envelope(call_state(call.call_id, "established", etag=11))
        assert (await fake.notify(a.webhook_url, both)).status == 202
        assert (await fake.notify(b.webhook_url, both)).status == 202
        with anyio.fail_after(GUARD):
            await logs.wait_for("event.duplicate", call_id=call.call_id, kind="CallStateChanged")
            await seen_a.wait_for((call.call_id, "established", 11))
        assert [s for s in seen_a if s[2] and s[2] >= 10] == [
            (call.call_id, "hold", 10),
            (call.call_id, "established", 11),
        ]
        assert [s for s in seen_b if s[2] and s[2] >= 10] == []
        b_metrics = b.metrics.render().decode()
        # b holds nothing of the call: the copy sent to b without an instance follows the
        # call's owner too (forwarding by ownership), and one of a's two copies is dropped.
        assert "callflow_notifications_forwarded_total 2.0" in b_metrics
        shared = [
            line
            for bot in (a, b)
            for line in bot.metrics.render().decode().splitlines()
            if line.startswith("callflow_shared_duplicate_notifications_total")
        ]
        assert (
            sorted(shared)[-1].endswith(" 1.0") and sum(float(x.split()[-1]) for x in shared) == 1
        )

        slow = await fake.place_call(a.webhook_url, caller={"kind": "user", "id": "slow-1"})
        with anyio.fail_after(GUARD):
            default = await slow.decision()
        assert default.body == {"reason": "busy", "callbackUri": CALLBACK_URL + "?instance=a"}
        assert not slow.timed_out

        await raw.set(
            f"callflow:{{{fleet_namespace(a.bot.settings.app_id, SECRET)}}}:final:pre-claimed",
            SIGNER.seal("final", "pre-claimed", "other#x"),
        )
        taken = await fake.place_call(a.webhook_url, call_id="pre-claimed")
        with anyio.fail_after(GUARD):
            await logs.wait_for("decision.dropped_elsewhere", call_id="pre-claimed")
        assert taken.decisions == ()
        assert "callflow_decisions_dropped_elsewhere_total 1.0" in a.metrics.render().decode()
        counted = 'callflow_decisions_total{decided_by="decide",kind="answer",reason=""} 1.0'
        assert counted in a.metrics.render().decode()  # the dropped answer is not counted
        assert a.keeper.calls()[0].call_id == call.call_id  # the dropped answer is not held
        assert len(a.keeper.calls()) == 1


async def test_a_captured_forward_is_taken_once_and_only_by_the_worker_it_was_sent_to(
    short_fake: FakeGraph, backend: Backend, target: Target
) -> None:
    """A forwarded notification captured on its way (worker b forwarding to worker a) is
    taken by a once: replayed to a it gets 403, and so it does at worker c, though c shares
    the fleet secret."""
    fake = short_fake
    forwarder = Forwarder("b", {"a": target.url}.get, signer=SIGNER, timeout=2.0)
    body = json.dumps(envelope(call_state("c-7", "established", etag=3))).encode()
    async with forwarder:
        app = web.Application()

        async def handle(request: web.Request) -> web.StreamResponse:
            reply = await forwarder.forward(request, await request.read(), fake.tenant_id)
            assert reply is not None
            return reply

        app.router.add_post("/api/calls", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"http://127.0.0.1:{runner.addresses[0][1]}/api/calls?instance=a",
                    data=body,
                    headers={"Content-Type": "application/json"},
                ) as reply,
            ):
                assert reply.status == 202
        finally:
            await runner.cleanup()
    ((path, captured, headers),) = target.seen
    replay = {
        name: value
        for name, value in headers.items()
        if name.lower() not in ("host", "content-length")
    }
    statuses: dict[str, list[int]] = {}
    async with (
        fake.serve(fleet_bot([]), **fleet_options(backend, "a")) as a,
        fake.serve(fleet_bot([]), **fleet_options(backend, "c")) as c,
        aiohttp.ClientSession() as session,
    ):
        for name, bot in (("a", a), ("a", a), ("c", c)):
            url = bot.webhook_url.rsplit("/api/calls", 1)[0] + path
            async with session.post(url, data=captured, headers=replay) as response:
                statuses.setdefault(name, []).append(response.status)
                if response.status == 403:
                    assert (await response.json())["error"]["code"] == "forbidden"
    assert statuses == {"a": [202, 403], "c": [403]}


async def test_a_forward_whose_body_is_not_the_signed_one_is_refused(
    short_fake: FakeGraph, backend: Backend
) -> None:
    """A forward signed for worker a whose body was swapped for another of the same length
    gets 403 once the body is in; with the signed body it gets 202."""
    signed = json.dumps(envelope(call_state("c-8", "established", etag=3))).encode()
    swapped = json.dumps(envelope(call_state("c-8", "established", etag=4))).encode()
    assert len(signed) == len(swapped)
    async with (
        short_fake.serve(fleet_bot([]), **fleet_options(backend, "a")) as a,
        aiohttp.ClientSession() as session,
    ):
        url = a.webhook_url + "?instance=a"
        statuses = []
        for body in (swapped, signed):
            headers = {
                "Content-Type": "application/json",
                FORWARDED_BY: "b",
                FLEET_AUTH: SIGNER.sign_forward(
                    "b", "a", short_fake.tenant_id, "POST", "/api/calls?instance=a", signed
                ),
            }
            async with session.post(url, data=body, headers=headers) as reply:
                statuses.append(reply.status)
    assert statuses == [403, 202]


async def test_a_notification_naming_a_stopped_bot_is_handled_here(
    short_fake: FakeGraph, backend: Backend, logs: LogWatcher
) -> None:
    """After a bot leaves the fleet, the other one handles notifications that name it (here:
    about a call it holds itself)."""
    seen: list[tuple[str, str, int | None]] = []
    observed = anyio.Event()
    bot = fleet_bot(seen)

    @bot.on(CallStateChanged, where=lambda event: event.etag == 30)
    async def late(event: CallStateChanged) -> None:
        observed.set()

    fake = short_fake
    async with fake.serve(bot, **fleet_options(backend, "b")) as b:
        async with fake.serve(fleet_bot([]), **fleet_options(backend, "a")):
            with anyio.fail_after(GUARD):  # both bots see both
                await logs.wait_for("fleet.members", count=2, live=["a", "b"])
        with anyio.fail_after(GUARD):
            await logs.wait_for("fleet.members", live=["b"], left=["a"])
        held = await fake.place_call(b.webhook_url, call_id="c-9")
        with anyio.fail_after(GUARD):
            await held.decision()
            await b.keeper.wait_until(lambda calls: any(c.call_id == "c-9" for c in calls))
        reply = await fake.notify(
            b.webhook_url + "?instance=a", envelope(call_state("c-9", "established", etag=30))
        )
        assert reply.status == 202
        with anyio.fail_after(GUARD):
            await logs.wait_for("notification.owner_gone", instance="a")
            await observed.wait()  # the observer runs on the app loop, after the I/O loop
        assert ("c-9", "established", 30) in seen


async def test_a_bot_in_fleet_mode_starts_and_decides_while_redis_is_down(
    short_fake: FakeGraph, redis: RedisServer, logs: LogWatcher
) -> None:
    """Redis unreachable at start: the bot starts anyway (logging it), and decides its calls."""
    redis.stop()
    async with short_fake.serve(fleet_bot([]), **fleet_options(redis, "a")) as a:
        (joining,) = logs.find("fleet.joining")
        assert joining["reachable"] is False
        assert joining["store"] == redis.url
        call = await short_fake.place_call(a.webhook_url)
        with anyio.fail_after(GUARD):
            await call.decision()
        assert logs.find("store.unavailable")
        assert "callflow_store_failures_total" in a.metrics.render().decode()


async def test_two_deployments_of_one_app_on_one_redis_leave_each_other_alone(
    short_fake: FakeGraph, backend: Backend, raw: aioredis.Redis, logs: LogWatcher
) -> None:
    """Two fleets of the same APP_ID (say staging and production) on one Redis, each with its
    own FLEET_SECRET: neither sees the other's heartbeats as forged, takes over its calls or
    deletes its keys; each fleet's keys share one hash slot. A FLEET_NAME names the
    namespace instead of the secret's digest."""
    other_secret = "other-fleet-secret-0123456789abcdef"
    staging = {**fleet_options(backend, "b"), "fleet_secret": other_secret}
    async with short_fake.serve(fleet_bot([]), **fleet_options(backend, "a")) as a:
        slow = await short_fake.place_call(a.webhook_url, caller={"kind": "user", "id": "slow-2"})
        async with short_fake.serve(fleet_bot([]), **staging) as b:
            with anyio.fail_after(GUARD):  # dozens of beats of both while a's call is pending
                await slow.decision()
            ns_a = fleet_namespace(a.bot.settings.app_id, SECRET)
            ns_b = fleet_namespace(b.bot.settings.app_id, other_secret)
            assert ns_a != ns_b
            assert await raw.exists(f"callflow:{{{ns_a}}}:instance:a") == 1
            assert await raw.exists(f"callflow:{{{ns_b}}}:instance:b") == 1
            assert await raw.smembers(f"callflow:{{{ns_a}}}:instances") == {"a"}
            assert await raw.smembers(f"callflow:{{{ns_b}}}:instances") == {"b"}
            # every key of a fleet carries its namespace as the hash tag: one slot per fleet
            tags = {k.split("{", 1)[1].split("}", 1)[0] async for k in raw.scan_iter("callflow:*")}
            assert tags == {ns_a, ns_b}
    assert [d.accepted for d in slow.decisions] == [True]
    assert logs.find("fleet.forged_value") == []
    assert logs.find("instance.taken_over") == []
    assert all(line["live"] in (["a"], ["b"]) for line in logs.find("fleet.members"))
    named = Settings(app_id="app", fleet_secret=SECRET, fleet_name="prod-eu")
    assert fleet_namespace(named.app_id, SECRET, named.fleet_name) == "app:prod-eu"
    assert Fleet(Settings(store=backend.url, app_id="app", fleet_secret=SECRET)).namespace == (
        fleet_namespace("app", SECRET)
    )


def test_credentials_stay_out_of_the_logged_store_url() -> None:
    """The store URL is logged without its user name and password; the forwarding URL of a
    worker bound to a wildcard address names its host."""
    assert without_credentials("redis://user:pw@cache:6379/0") == "redis://cache:6379/0"
    assert without_credentials("redis://cache:6379/0") == "redis://cache:6379/0"
    assert internal_url("127.0.0.1", 80) == "http://127.0.0.1:80"
    assert internal_url("::1", 80) == "http://[::1]:80"
    assert internal_url("0.0.0.0", 80).endswith(":80")


async def test_fleet_mode_needs_a_redis_url_and_an_open_fleet() -> None:
    """Fleet refuses the memory store, and its hooks refuse to run before it is entered."""
    with pytest.raises(ConfigError, match="redis://"):
        Fleet(Settings())
    with pytest.raises(ConfigError, match="CALLFLOW_ALLOW_INSECURE_REDIS"):
        Fleet(Settings(store="redis://cache.internal:6379/0"))
    fleet = Fleet(Settings(store="redis://127.0.0.1:1/0", fleet_secret=SECRET))
    assert fleet.callback_url is None
    with pytest.raises(RuntimeError, match="not open"):
        await fleet.admit(incoming("c"), None)  # type: ignore[arg-type]


async def test_the_worker_asks_one_mode_and_a_lone_workers_adds_nothing(
    backend: Backend,
) -> None:
    """A lone worker's mode leaves the decision path as it is (the Graph client itself is the
    sink, no intake hook, no webhook hook, CALLBACK_URL as set, nothing in the background);
    fleet mode pins the callback URL to its instance, hooks intake and the webhook, claims
    before sending, and publishes its forwarding URL once told where the webhook listens."""
    inner = RecordingSink()
    solo = worker_mode(Settings(callback_url=CALLBACK_URL))
    assert isinstance(solo, Solo)
    async with solo, anyio.create_task_group() as tg:
        assert solo.sink(inner) is inner
        assert solo.admission is None and solo.webhook is None
        assert solo.callback_url == CALLBACK_URL
        async with solo.watching(tg, Recorder(), Reject(), CallBook(), lambda *taken: None):
            await solo.listening("127.0.0.1", 8123)
    fleet = worker_mode(
        Settings(
            store=backend.url, fleet_secret=SECRET, instance_id="w1", callback_url=CALLBACK_URL
        )
    )
    assert isinstance(fleet, Fleet)
    assert fleet.callback_url == instance_callback_url(CALLBACK_URL, "w1")
    assert isinstance(fleet.webhook, Forwarder)  # wired when made, opened when entered
    async with fleet, anyio.create_task_group() as tg:
        assert isinstance(fleet.sink(inner), FleetSink)
        assert fleet.admission == fleet.admit
        async with fleet.watching(tg, Recorder(), Reject(), CallBook(), lambda *taken: None):
            assert fleet.directory.live() == {"w1": None}  # the first beat came before
            await fleet.listening("127.0.0.1", 8123)
            assert fleet.directory.url("w1") == "http://127.0.0.1:8123"
            with pytest.raises(RuntimeError, match="known already"):
                await fleet.listening("127.0.0.1", 8124)
    async with RedisStore(
        backend.url, instance_id="probe", secret=SECRET, namespace=fleet.namespace
    ) as probe:
        census = await probe.beat(None, 3.0)
        assert census is not None and "w1" not in census.live  # retired on the way out


def test_the_webhook_and_the_fleet_import_nothing_of_each_other() -> None:
    """The webhook asks fleet mode through its FleetHook alone, and the fleet answers in
    aiohttp's terms: neither package imports the other, not even for types."""
    root = Path(callflow.__file__).parent
    for package, other in (("webhook", "callflow.fleet"), ("fleet", "callflow.webhook")):
        for path in sorted((root / package).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                assert not [n for n in names if n.startswith(other)], f"{path.name} imports {other}"


# --- Redis over TLS, with an ACL user ------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_ca() -> trustme.CA:
    """The CA the TLS redis-server's certificate comes from."""
    return trustme.CA()


async def test_the_store_talks_tls_to_redis_as_an_acl_user(redis_ca: trustme.CA) -> None:
    """A ``rediss://user:password@`` store trusting the server's CA (CA_BUNDLE) claims and
    beats; a wrong password, a CA it does not trust, a certificate for another host name
    or plain ``redis://`` never get a connection: the worker decides on its own."""
    user = ("callflow", "acl-pass-0123")
    rules = (f"~callflow:{{{NS}}}:*", "+@all", "-@dangerous")  # as the README advises
    for server in redis_server(tls=redis_ca, user=user, rules=rules):
        # Room for a TLS handshake on a loaded machine: the default bound (0.15 s) is for
        # a warm connection, and a miss here would make the store decide on its own.
        async with (
            store(server.url, "a", ca_bundle=server.ca_path, timeout=2.0) as a,
            store(server.url, "gone", ca_bundle=server.ca_path, timeout=2.0) as gone,
        ):
            assert await a.ping()
            assert await gone.admit("orphan", "t", time.time() + 5)
            assert await gone.claim("orphan")
            assert await gone.beat(None, 3.0) is not None
            await gone.retire()  # its heartbeat is gone: it is dead
            assert await a.admit("tls-call", "t", time.time() + 5)
            assert await a.claim("tls-call")
            assert await a.first_seen(["k"]) == (True,)
            census = await a.beat("https://a.internal", 3.0)
            assert census is not None and census.live == {"a": "https://a.internal"}
            assert census.dead == ("gone",)
            (orphan,) = await a.take_over("gone")
            assert await a.claim_orphan(orphan.call_id)
            await a.release(orphan.call_id, orphan.tenant_id)
            await a.retire()
            assert a.stats.store_failures == 0
        wrong = server.url.replace("acl-pass-0123", "wrong-pass")
        plain = server.url.replace("rediss://", "redis://")
        for url, ca in ((wrong, server.ca_path), (server.url, None), (plain, None)):
            async with store(url, "b", ca_bundle=ca, timeout=0.3) as b:
                assert not await b.ping()
                assert await b.claim("tls-call")  # no answer: decided here
                assert b.stats.store_failures >= 1
    for server in redis_server(tls=redis_ca, tls_names=("redis.example.org",), user=user):
        async with store(server.url, "c", ca_bundle=server.ca_path, timeout=0.3) as c:
            assert not await c.ping()  # the certificate names another host


async def test_a_served_bot_joins_a_fleet_over_tls_as_an_acl_user(
    short_fake: FakeGraph, logs: LogWatcher
) -> None:
    """A bot with STORE=rediss://user:password@... and the fleet's CA in CA_BUNDLE joins the
    fleet, decides calls through it, and logs the store URL without the password."""
    user = ("callflow", "acl-pass-0123")
    for server in redis_server(tls=short_fake.tokens.ca, user=user):
        # store_timeout: room for the first TLS handshake on a loaded machine.
        options = {**fleet_options(server, "tls-a"), "store": server.url, "store_timeout": 2.0}
        async with short_fake.serve(fleet_bot([]), **options) as a:
            (joining,) = logs.find("fleet.joining")
            assert joining["reachable"] is True
            assert "acl-pass" not in joining["store"]
            call = await short_fake.place_call(a.webhook_url)
            with anyio.fail_after(GUARD):
                await call.decision()
            assert "acl-pass" not in repr(a.bot.settings)
        assert logs.find("store.unavailable") == []
