"""Durable calls with real processes: answered calls outlive the worker that answered them.

Workers are ``python -m callflow run tests.durable_bot:bot`` sharing one real redis-server,
behind the round-robin proxy, with FakeGraph as Graph. Each worker has a fixed port, so a
worker started again under its name is where the proxy expects it. Heartbeats every 0.5 s
(a worker silent for 1.5 s is lost) and keepAlive every 2 s, so that a gap in keepAlives
shows within seconds. Every call is answered with a flow that remembers a memo and waits for
the caller's keys; the bot's ``CallAdopted`` observer logs what it got and waits for a key.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import anyio
import anyio.abc
import pytest

from callflow.testing import FakeGraph, SigningKey
from tests.fleet.conftest import Backend
from tests.fleet.test_fleet import Worker, _members, scrape, worker_env
from tests.fleet_proxy import FleetProxy
from tests.redis_server import RedisServer, _free_port, redis_server

BEAT = 0.5
KEEPALIVE = 2.0
TIMEOUT = 5.0
START = 40.0  # starting worker processes on a loaded 2-core machine
GUARD = 30.0
DETECTION = 3 * BEAT + BEAT  # a heartbeat's life, and the beat that notices
SLACK = 2.0  # a loaded machine: Graph round trip, scheduling

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    yield from redis_server()


@pytest.fixture
async def fake(callflow_signing_key: SigningKey) -> AsyncIterator[FakeGraph]:
    async with FakeGraph(
        signing_key=callflow_signing_key, platform_timeout=TIMEOUT, recording_timeout=TIMEOUT
    ) as fake:
        yield fake


class Fleet:
    """Named workers on fixed ports behind a proxy; workers can be stopped and started."""

    def __init__(self, fake: FakeGraph, store: str, names: list[str], tg: anyio.abc.TaskGroup):
        self.fake = fake
        self.store = store
        self.tg = tg
        self.ports = {name: _free_port() for name in names}
        self.workers: dict[str, Worker] = {}
        self.retired: list[Worker] = []
        self.proxy = FleetProxy([f"http://127.0.0.1:{port}" for port in self.ports.values()])

    @property
    def webhook_url(self) -> str:
        return self.proxy.url + "/api/calls"

    def live(self) -> list[Worker]:
        return [w for w in self.workers.values() if not w.exited.is_set()]

    def everyone(self) -> list[Worker]:
        return [*self.retired, *self.workers.values()]

    async def start(self, name: str) -> Worker:
        env = worker_env(
            self.fake,
            self.store,
            name,
            port=self.ports[name],
            keepalive_interval=KEEPALIVE,
            heartbeat_interval=BEAT,
        )
        worker = Worker(name, env, "tests.durable_bot:bot")
        old = self.workers.get(name)
        if old is not None:
            self.retired.append(old)
        self.workers[name] = worker
        await worker.start(self.tg)
        with anyio.fail_after(START):
            await worker.ready()
        return worker

    async def settled(self) -> None:
        """Every live worker sees the whole fleet, and has watched it long enough to judge
        a peer lost (``fleet.settled``)."""
        names = sorted(w.name for w in self.live())
        with anyio.fail_after(START):
            for worker in self.live():
                await worker.wait_for(lambda w: _members(w) == names)
            for worker in self.live():
                await worker.wait_log("fleet.settled")

    def logged(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [line for w in self.everyone() for line in w.find(event, **fields)]

    async def wait_logged(self, event: str, count: int, **fields: Any) -> list[dict[str, Any]]:
        """Wait until ``count`` lines ``event`` (with ``fields``) were logged fleet-wide."""
        while len(found := self.logged(event, **fields)) < count:
            async with anyio.create_task_group() as tg:

                async def one(worker: Worker) -> None:
                    await worker._changed.wait()
                    tg.cancel_scope.cancel()

                for worker in self.live():
                    tg.start_soon(one, worker)
        return found


@contextlib.asynccontextmanager
async def fleet_of(fake: FakeGraph, store: str, count: int) -> AsyncIterator[Fleet]:
    async with anyio.create_task_group() as tg:
        fleet = Fleet(fake, store, [f"w{i}" for i in range(count)], tg)
        try:
            async with fleet.proxy:
                for name in fleet.ports:
                    await fleet.start(name)
                await fleet.settled()
                yield fleet
        finally:
            with anyio.CancelScope(shield=True):
                for worker in fleet.everyone():
                    await worker.close()


async def answered_in_flows(fleet: Fleet, count: int) -> dict[str, str]:
    """Place ``count`` calls through the proxy; once every flow remembered its memo and
    waits for keys, the owner's name of each call, by call id."""
    limit = anyio.Semaphore(16)
    owners: dict[str, str] = {}

    async def one() -> None:
        async with limit:
            call = await fleet.fake.place_call(fleet.webhook_url)
            answer = await call.decision()
            owners[call.call_id] = answer.body["callbackUri"].rsplit("instance=", 1)[1]

    with anyio.fail_after(GUARD * 2):
        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(one)
        await fleet.wait_logged("durable_bot.remembered", count)
        for call_id in owners:  # every flow waits for the caller's keys
            await fleet.fake.call(call_id).wait_requests(1, op="subscribeToTone", timeout=GUARD)
    return owners


def keepalive_gaps(fake: FakeGraph, call_ids: Iterable[str], until: float) -> dict[str, float]:
    """The largest gap between two keepAlives of each call (from its answer to ``until``)."""
    gaps: dict[str, float] = {}
    for call_id in call_ids:
        requests = fake.requests_for(call_id)
        answered = next(r.at for r in requests if r.op == "answer" and r.accepted)
        times = [answered, *(r.at for r in requests if r.op == "keepAlive" and r.accepted), until]
        gaps[call_id] = max(b - a for a, b in itertools.pairwise(times))
    return gaps


async def kept_alive_after(fake: FakeGraph, call_ids: Iterable[str], after: float) -> None:
    """Wait until each call got an accepted keepAlive after ``after``."""
    for call_id in call_ids:
        call = fake.call(call_id)
        before = [r for r in call.requests if r.op == "keepAlive" and r.at <= after]
        await call.wait_requests(len(before) + 1, op="keepAlive", timeout=GUARD)


async def test_a_killed_owners_calls_are_adopted_once_with_their_memo_and_carry_on(
    fake: FakeGraph, backend: Backend
) -> None:
    """SIGKILL one of three workers holding 60 answered calls in flows: each of its calls is
    adopted by exactly one survivor within three heartbeats and a Graph round trip, with the
    last memo; keepAlive resumes from the adopter (no gap longer than the interval plus the
    detection time); a key pressed afterwards reaches the adopter's collect_digits; a hang-up
    reaches the adopter; a call that ended while its owner was dead is forgotten, no hook.
    On one redis-server, a three-master cluster and through Sentinel."""
    async with fleet_of(fake, backend.url, 3) as fleet:
        owners = await answered_in_flows(fleet, 60)
        counts = Counter(owners.values())
        victim_name = counts.most_common(1)[0][0]
        victim = fleet.workers[victim_name]
        mine = sorted(c for c, o in owners.items() if o == victim_name)
        assert len(mine) >= 10, counts
        survivors = [w for w in fleet.live() if w is not victim]

        killed_at = time.monotonic()
        victim.kill()
        ended_meanwhile = mine[0]
        carried = mine[1:]
        early = carried[-1]
        async with anyio.create_task_group() as tg:
            # a key pressed before anyone adopted the call waits for the adopter
            tg.start_soon(fake.call(early).press, "9")
            await fake.end_call(ended_meanwhile)  # Graph tells a worker that does not hold it
            with anyio.fail_after(GUARD):
                adopted = await fleet.wait_logged("durable_bot.adopted", len(carried))
                await fleet.wait_logged("call.adoption_gone", 1, call_id=ended_meanwhile)
            took = time.monotonic() - killed_at
        assert took < DETECTION + SLACK + 1.0, took
        assert sorted(line["call_id"] for line in adopted) == carried
        assert {line["reason"] for line in adopted} == {"owner_lost"}
        assert {line["previous_owner"] for line in adopted} == {victim_name}
        assert all(line["memo"] == {"step": "menu", "n": 1} for line in adopted)
        assert fleet.logged("durable_bot.adopted", call_id=ended_meanwhile) == []
        adopter = {line["call_id"]: line["instance"] for line in adopted}

        # keepAlive resumes from the adopter: every carried call gets one after the kill
        with anyio.fail_after(GUARD):
            await kept_alive_after(fake, carried, killed_at)
        gaps = keepalive_gaps(fake, carried, time.monotonic())
        worst = max(gaps.values())
        assert worst <= KEEPALIVE + DETECTION + SLACK, gaps

        # a key pressed now reaches the adopter's collect_digits
        pressed = carried[:3]
        with anyio.fail_after(GUARD):
            for call_id in pressed:
                await fleet.workers[adopter[call_id]].wait_log(
                    "durable_bot.collecting", call_id=call_id
                )
                await fake.call(call_id).press("5")
            for call_id in pressed:
                await fleet.workers[adopter[call_id]].wait_log(
                    "durable_bot.digits", call_id=call_id, digits="5", instance=adopter[call_id]
                )

        with anyio.fail_after(GUARD):
            await fleet.workers[adopter[early]].wait_log(
                "durable_bot.digits", call_id=early, digits="9", instance=adopter[early]
            )

        # the caller hanging up reaches the adopter: the call ends there
        hung_up = carried[3]
        await fake.end_call(hung_up)
        with anyio.fail_after(GUARD):
            await fleet.workers[adopter[hung_up]].wait_log("call.flow_ended", call_id=hung_up)

        totals = [await scrape(w) for w in survivors]
        assert sum(t["callflow_calls_adopted_total"] for t in totals) == len(carried)
        assert sum(t["callflow_held_calls"] for t in totals) == 60 - 2
        print(
            f"\n{backend.kind}: adoption of {len(carried)} calls: {took:.2f} s after SIGKILL; "
            f"largest keepAlive gap {worst:.2f} s (interval {KEEPALIVE} s)"
        )


async def test_a_rolling_restart_drops_no_call(fake: FakeGraph, backend: Backend) -> None:
    """SIGTERM each of three workers in turn and start it again: each hands its calls off
    at once (reason handed_off), a survivor adopts each once, no call ends, and every call
    is kept alive throughout. On one redis-server, a cluster and through Sentinel."""
    async with fleet_of(fake, backend.url, 3) as fleet:
        owners = await answered_in_flows(fleet, 30)
        started = time.monotonic()
        handoffs: list[float] = []
        for name in list(fleet.ports):
            worker = fleet.workers[name]
            held = int((await scrape(worker))["callflow_held_calls"])
            before = len(fleet.logged("durable_bot.adopted", previous_owner=name))
            stopped_at = time.monotonic()
            await worker.close()
            (handed,) = worker.find("fleet.handed_off")
            assert handed["calls"] == held and handed["adopted"] is True, handed
            with anyio.fail_after(GUARD):
                await fleet.wait_logged("durable_bot.adopted", before + held, previous_owner=name)
            handoffs.append(time.monotonic() - stopped_at)
            await fleet.start(name)
            await fleet.settled()
        adopted = fleet.logged("durable_bot.adopted")
        assert {line["reason"] for line in adopted} == {"handed_off"}
        pairs = Counter((line["call_id"], line["previous_owner"]) for line in adopted)
        assert max(pairs.values()) == 1  # each hand-off observed once
        for call_id in owners:
            assert fake.call(call_id).state == "established", call_id
            assert not fake.call(call_id).gone
        gaps = keepalive_gaps(fake, owners, time.monotonic())
        worst = max(gaps.values())
        assert worst <= KEEPALIVE + SLACK, gaps
        print(
            f"\n{backend.kind}: rolling restart over {time.monotonic() - started:.1f} s: "
            f"hand-offs resumed in {', '.join(f'{h:.2f}' for h in handoffs)} s after "
            f"SIGTERM; largest keepAlive gap {worst:.2f} s (interval {KEEPALIVE} s)"
        )


async def test_a_frozen_owner_lets_go_and_a_new_life_takes_nothing_back(
    fake: FakeGraph, redis: RedisServer
) -> None:
    """A worker frozen (SIGSTOP) longer than its heartbeat lives has its calls adopted; when
    it thaws it lets go of each (``call.let_go``) and holds none, and a key press for them
    reaches the adopter. A worker started again under a killed worker's id after its calls
    were adopted takes none of them back."""
    async with fleet_of(fake, redis.url, 3) as fleet:
        owners = await answered_in_flows(fleet, 18)
        frozen = fleet.workers["w0"]
        mine = sorted(c for c, o in owners.items() if o == "w0")
        assert mine
        assert frozen.process is not None
        os.kill(frozen.process.pid, signal.SIGSTOP)
        try:
            with anyio.fail_after(GUARD):
                adopted = await fleet.wait_logged(
                    "durable_bot.adopted", len(mine), previous_owner="w0"
                )
        finally:
            os.kill(frozen.process.pid, signal.SIGCONT)
        with anyio.fail_after(GUARD):
            let_go = [await frozen.wait_log("call.let_go", call_id=c) for c in mine]
        assert len(let_go) == len(mine)
        assert (await scrape(frozen))["callflow_held_calls"] == 0
        adopter = {line["call_id"]: line["instance"] for line in adopted}
        probe = mine[0]
        with anyio.fail_after(GUARD):
            await fleet.workers[adopter[probe]].wait_log("durable_bot.collecting", call_id=probe)
            await fake.call(probe).press("7")
            await fleet.workers[adopter[probe]].wait_log(
                "durable_bot.digits", call_id=probe, digits="7"
            )
        assert frozen.find("durable_bot.digits", call_id=probe) == []

        # a new life of a killed worker finds its calls adopted and takes none back
        victim = fleet.workers["w1"]
        theirs = sorted(c for c, o in owners.items() if o == "w1")
        victim.kill()
        with anyio.fail_after(GUARD):
            await fleet.wait_logged("durable_bot.adopted", len(theirs), previous_owner="w1")
        again = await fleet.start("w1")
        await fleet.settled()
        assert again.find("call.adopted") == []
        assert (await scrape(again))["callflow_held_calls"] == 0


async def test_redis_away_during_adoption_adopts_once_it_is_back(
    fake: FakeGraph, redis: RedisServer
) -> None:
    """The owner dies while Redis is frozen: nobody can adopt; once Redis answers again its
    calls are adopted, each exactly once."""
    async with fleet_of(fake, redis.url, 3) as fleet:
        owners = await answered_in_flows(fleet, 15)
        victim = fleet.workers["w2"]
        mine = sorted(c for c, o in owners.items() if o == "w2")
        assert redis.process is not None
        os.kill(redis.process.pid, signal.SIGSTOP)
        try:
            victim.kill()
            with anyio.fail_after(GUARD):
                for worker in fleet.live():
                    if worker is not victim:
                        await worker.wait_log("store.unavailable")
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        with anyio.fail_after(GUARD):
            adopted = await fleet.wait_logged("durable_bot.adopted", len(mine))
        assert sorted(line["call_id"] for line in adopted) == mine
        with anyio.fail_after(GUARD):  # a later beat adopts nothing more
            for worker in fleet.live():
                await worker.wait_log("fleet.settled", count=2)
        assert len(fleet.logged("durable_bot.adopted")) == len(mine)


async def test_an_outage_longer_than_a_heartbeat_adopts_nothing(
    fake: FakeGraph, redis: RedisServer
) -> None:
    """Redis frozen for longer than a heartbeat lives: when it answers again every heartbeat
    has expired, yet no live worker adopts another's calls; each keeps its own."""
    async with fleet_of(fake, redis.url, 3) as fleet:
        await answered_in_flows(fleet, 15)
        assert redis.process is not None
        os.kill(redis.process.pid, signal.SIGSTOP)
        try:
            with anyio.fail_after(GUARD):
                for worker in fleet.live():
                    await worker.wait_log("store.unavailable")
                # three heartbeat lives, measured by the workers' own failing beats
                for worker in fleet.live():
                    await worker.wait_for(lambda w: len(w.find("store.unavailable")) >= 1)
            await anyio.sleep(3 * 3 * BEAT)  # the outage itself: longer than a heartbeat lives
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        with anyio.fail_after(GUARD):
            for worker in fleet.live():
                await worker.wait_log("store.recovered")
            for worker in fleet.live():
                await worker.wait_log("fleet.settled", count=2)
        assert fleet.logged("call.adopted") == []
        assert fleet.logged("call.let_go") == []
        held = [(await scrape(w))["callflow_held_calls"] for w in fleet.live()]
        assert sum(held) == 15
