"""Fleet mode with real processes: worker subprocesses, a real redis-server, FakeGraph, a proxy.

Every worker is ``python -m callflow run tests.fleet_bot:bot`` with its own INSTANCE_ID and
port, sharing one Redis; a round-robin proxy (tests/fleet_proxy.py) stands in for the load
balancer. The platform timeout is 5 s and the safety margin 2 s, so a call's default
decision goes out 3 s after it arrives and FakeGraph ends any call not decided within 5 s
(``timed_out``). Each test's docstring states the documented outcome it checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc
import attrs
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from anyio.streams.buffered import BufferedByteReceiveStream

from callflow.fleet.store import fleet_namespace
from callflow.testing import CallHandle, FakeGraph, SigningKey, call_state, envelope
from tests.fleet_proxy import AVOID, UPSTREAM, FleetProxy
from tests.redis_server import RedisServer, redis_server

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 5.0  # the platform timeout of every call in this module
MARGIN = 2.0  # the workers' safety margin: defaults go out 3 s after receipt
BEAT = 0.5  # heartbeat interval: a worker silent for 1.5 s is taken over
START = 30.0  # guard for starting workers (several Python processes on 2 cores)
GUARD = 20.0
FLEET_SECRET = "fleet-test-secret-0123456789abcdef"

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # fleets of worker processes and a redis-server


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """One event loop for the whole module, so the fleet below is shared by several tests."""
    return "asyncio"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    """A redis-server for the module's shared fleet."""
    yield from redis_server()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own (for tests that stop it or kill workers)."""
    yield from redis_server()


# --- workers -----------------------------------------------------------------------------------


class Worker:
    """One worker process and the JSON log lines it wrote (stdout and stderr)."""

    def __init__(self, name: str, env: dict[str, str], target: str = "tests.fleet_bot:bot") -> None:
        self.name = name
        self.env = env
        self.target = target
        self.lines: list[dict[str, Any]] = []
        self.text: list[str] = []
        self.base = ""
        self.metrics_url = ""
        self.process: anyio.abc.Process | None = None
        self.exited = anyio.Event()
        self._changed = anyio.Event()

    def __repr__(self) -> str:
        return f"<Worker {self.name} {self.base or 'starting'}>"

    @property
    def webhook_url(self) -> str:
        """The worker's own webhook URL (bypassing the proxy)."""
        return self.base + "/api/calls"

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Spawn the process and read its output in ``tg``."""
        self.process = await anyio.open_process(
            [sys.executable, "-m", "callflow", "run", self.target],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        tg.start_soon(self._read)

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        stream = BufferedByteReceiveStream(self.process.stdout)
        with contextlib.suppress(anyio.EndOfStream, anyio.IncompleteRead):
            while True:
                raw = await stream.receive_until(b"\n", 1 << 22)
                text = raw.decode(errors="replace")
                self.text.append(text)
                try:
                    line = json.loads(text)
                except ValueError:
                    line = {"event": "raw", "text": text}
                if not isinstance(line, dict):
                    line = {"event": "raw", "text": text}
                self.lines.append(line)
                if line.get("event") == "metrics.listening" and not self.metrics_url:
                    self.metrics_url = str(line["url"])
                if line.get("event") == "bot.ready" and not self.base:
                    self.base = str(line["url"]).rsplit("/api/calls", 1)[0]
                self._touch()
        await self.process.wait()
        self.exited.set()
        self._touch()

    def _touch(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The log lines named ``event`` whose fields include ``fields``."""
        return [
            line
            for line in self.lines
            if line.get("event") == event and all(line.get(k) == v for k, v in fields.items())
        ]

    async def wait_log(self, event: str, count: int = 1, **fields: Any) -> list[dict[str, Any]]:
        """Wait until ``count`` lines named ``event`` with ``fields`` were logged."""
        while len(found := self.find(event, **fields)) < count:
            if self.exited.is_set():
                raise AssertionError(f"{self.name} exited; output:\n{self.output()}")
            await self._changed.wait()
        return found

    async def wait_for(self, predicate: Callable[[Worker], bool]) -> None:
        """Wait until ``predicate(self)`` holds, re-checked at every log line."""
        while not predicate(self):
            if self.exited.is_set():
                raise AssertionError(f"{self.name} exited; output:\n{self.output()}")
            await self._changed.wait()

    async def ready(self) -> None:
        """Wait until the worker logged ``bot.ready``."""
        await self.wait_log("bot.ready")

    def output(self, last: int = 40) -> str:
        """The last lines the worker wrote."""
        return "".join(self.text[-last:])

    def kill(self) -> None:
        """SIGKILL the worker."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    async def close(self) -> None:
        """Stop the worker (SIGTERM, SIGKILL if it lingers) and close its pipes."""
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        with anyio.move_on_after(15.0, shield=True):
            await self.exited.wait()
        if process.returncode is None:  # pragma: no cover - a worker that ignores SIGTERM
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.aclose()


def worker_env(fake: FakeGraph, store: str, name: str, **overrides: Any) -> dict[str, str]:
    """The environment of a worker wired to ``fake`` and ``store``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CALLFLOW_")}
    settings: dict[str, Any] = {
        "store": store,
        "instance_id": name,
        "heartbeat_interval": BEAT,
        "safety_margin": MARGIN,
        "drain_timeout": 1.0,
        "log_format": "json",
        "log_level": "info",
    }
    if store != "memory":
        settings["fleet_secret"] = FLEET_SECRET
    settings.update(overrides)
    return {**base, **fake.environ(**settings)}


@attrs.define
class Fleet:
    """Running workers behind a round-robin proxy."""

    workers: list[Worker]
    proxy: FleetProxy

    @property
    def webhook_url(self) -> str:
        """The proxy's webhook URL (what Graph would be configured with)."""
        return self.proxy.url + "/api/calls"

    def index(self, worker: Worker) -> int:
        """The proxy's upstream index of ``worker``."""
        return self.workers.index(worker)


@contextlib.asynccontextmanager
async def running_fleet(
    fake: FakeGraph,
    store: str,
    count: int,
    *,
    prefix: str = "w",
    target: str = "tests.fleet_bot:bot",
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> AsyncIterator[Fleet]:
    """Start ``count`` workers of ``target`` (with ``env`` added to their environment) and a
    proxy; wait until each worker sees the whole fleet."""
    workers = [
        Worker(
            f"{prefix}{i}",
            {**worker_env(fake, store, f"{prefix}{i}", **overrides), **(env or {})},
            target,
        )
        for i in range(count)
    ]
    async with anyio.create_task_group() as tg:
        try:
            for worker in workers:
                await worker.start(tg)
            names = sorted(w.name for w in workers)
            with anyio.fail_after(START):
                for worker in workers:
                    await worker.ready()
                for worker in workers:
                    if store != "memory":
                        await worker.wait_for(lambda w: _members(w) == names)
            async with FleetProxy([w.base for w in workers]) as proxy:
                yield Fleet(workers, proxy)
        finally:
            with anyio.CancelScope(shield=True):
                for worker in workers:
                    await worker.close()


def _members(worker: Worker) -> list[str] | None:
    found = worker.find("fleet.members")
    return sorted(found[-1]["live"]) if found else None


async def scrape(worker: Worker) -> dict[str, float]:
    """The worker's /metrics, summed over labels, by sample name."""
    async with aiohttp.ClientSession() as session, session.get(worker.metrics_url) as reply:
        text = await reply.text()
    totals: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            totals[name.split("{", 1)[0]] += float(value)
    return totals


async def total(fleet: list[Worker], name: str) -> float:
    """A metric summed over the workers still running."""
    return sum([(await scrape(w))[name] for w in fleet if not w.exited.is_set()])


async def place_many(
    count: int, place: Callable[[int], Any], *, concurrency: int = 32
) -> list[CallHandle]:
    """Run ``place(i)`` for i in range(count), ``concurrency`` at a time; the handles."""
    limit = anyio.Semaphore(concurrency)
    handles: list[CallHandle] = []

    async def one(i: int) -> None:
        async with limit:
            handles.append(await place(i))

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(one, i)
    return handles


def decided_once(call: CallHandle) -> bool:
    """One accepted decision, in time, and no other decision request."""
    accepted = [r for r in call.decisions if r.accepted]
    return (
        len(call.decisions) == 1
        and len(accepted) == 1
        and not call.timed_out
        and accepted[0].at < call.deadline
    )


# --- the shared fleet ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def fake(callflow_signing_key: SigningKey) -> AsyncIterator[FakeGraph]:
    """The module's FakeGraph: calls time out after 5 s."""
    async with FakeGraph(
        signing_key=callflow_signing_key, platform_timeout=TIMEOUT, recording_timeout=TIMEOUT
    ) as fake:
        yield fake


@pytest.fixture(scope="module")
async def fleet(fake: FakeGraph, redis: RedisServer) -> AsyncIterator[Fleet]:
    """Three workers sharing one Redis behind the round-robin proxy."""
    async with running_fleet(fake, redis.url, 3) as fleet:
        yield fleet


async def test_a_thousand_calls_on_three_workers_are_decided_exactly_once(
    fake: FakeGraph, fleet: Fleet
) -> None:
    """1 000 calls through the proxy, 100 of them redelivered to another worker: exactly
    1 000 decisions reach Graph, one per call, each in time; each of the 100 redeliveries is
    dropped once, by the worker that lost the intake claim (or its decision's final claim)."""
    before = await total(fleet.workers, "callflow_duplicate_notifications_total")
    before_final = await total(fleet.workers, "callflow_decisions_dropped_elsewhere_total")

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
            assert again.headers[UPSTREAM] != first
        return call

    with anyio.fail_after(60.0):
        calls = await place_many(1000, place, concurrency=48)
        for call in calls:
            await call.decision()
    decisions = [r for r in fake.requests if r.is_decision and r.call_id.startswith("k")]
    doubles = {c: n for c, n in Counter(r.call_id for r in decisions).items() if n > 1}
    assert doubles == {}, [
        (w.name, line) for w in fleet.workers for line in w.lines if line.get("call_id") in doubles
    ]
    assert len(decisions) == 1000
    assert set(Counter(r.call_id for r in decisions).values()) == {1}
    late = [c.call_id for c in calls if not decided_once(c)]
    assert late == []
    assert {r.op for r in decisions} == {"answer", "reject"}
    assert sorted(c.call_id for c in calls) == sorted(r.call_id for r in decisions)
    assert min(fleet.proxy.counts) > 250  # the load really was spread
    # Each redelivery is stopped once: at intake (the worker that lost the intake claim
    # drops it), or, when Redis was too slow to answer that claim in time on a loaded
    # machine and the worker took the call on its own, at the final claim of its decision.
    dropped = await total(fleet.workers, "callflow_duplicate_notifications_total") - before
    final = await total(fleet.workers, "callflow_decisions_dropped_elsewhere_total") - before_final
    assert dropped + final == 100


async def test_later_notifications_are_forwarded_to_the_worker_that_decided(
    fake: FakeGraph, fleet: Fleet
) -> None:
    """A notification whose URL names the deciding worker (``?instance=ID``, from the
    per-instance callbackUri) reaches that worker's observers, whichever worker the proxy
    picked; the others forward it and count it."""
    call = await fake.place_call(fleet.webhook_url)
    with anyio.fail_after(GUARD):
        answer = await call.decision()
    owner_name = answer.body["callbackUri"].rsplit("instance=", 1)[1]
    assert answer.body["callbackUri"] == f"https://bot.invalid/api/calls?instance={owner_name}"
    owner = next(w for w in fleet.workers if w.name == owner_name)
    with anyio.fail_after(GUARD):  # Graph's own follow-up (established) has been delivered
        await call.wait_delivery("established")
    before = await total(fleet.workers, "callflow_notifications_forwarded_total")
    pinned = f"{fleet.webhook_url}?instance={owner_name}"
    states = ["hold", "established"] * 3
    replies = await fake.send_states(pinned, call.call_id, states, etags=range(10, 16))
    assert [r.status for r in replies] == [202] * 6
    elsewhere = sum(r.headers[UPSTREAM] != str(fleet.index(owner)) for r in replies)
    assert elsewhere >= 3  # round robin over three workers
    with anyio.fail_after(GUARD):
        for etag in range(10, 16):
            await owner.wait_log("fleet_bot.state", call_id=call.call_id, etag=etag)
    for worker in fleet.workers:
        if worker is not owner:
            assert [
                line for line in worker.find("fleet_bot.state", call_id=call.call_id)
                if line["etag"] >= 10
            ] == []  # fmt: skip
    forwarded = await total(fleet.workers, "callflow_notifications_forwarded_total") - before
    assert forwarded == elsewhere


async def test_operation_results_reach_the_worker_awaiting_them(
    fake: FakeGraph, fleet: Fleet
) -> None:
    """An answered call's flow awaits three prompts on the worker that answered it; each
    result notification names that worker (the callbackUri's ``?instance=``) but lands on
    whichever worker the balancer picks, and is forwarded: the flow finishes on its owner,
    and nowhere else."""
    before = await total(fleet.workers, "callflow_notifications_forwarded_total")
    call = await fake.place_call(fleet.webhook_url, caller={"kind": "user", "id": "ivr-1"})
    with anyio.fail_after(GUARD):
        answer = await call.decision()
    owner_name = answer.body["callbackUri"].rsplit("instance=", 1)[1]
    owner = next(w for w in fleet.workers if w.name == owner_name)
    with anyio.fail_after(GUARD):
        await owner.wait_log("fleet_bot.played", call_id=call.call_id)
        results = await call.wait_deliveries("operation", 3)
    assert [op.op for op in call.operations] == ["playPrompt"] * 3
    assert [r.status for r in results] == [202] * 3
    landed_elsewhere = sum(r.headers[UPSTREAM] != str(fleet.index(owner)) for r in results)
    assert landed_elsewhere >= 1  # round robin over three workers
    for worker in fleet.workers:
        if worker is not owner:
            assert worker.find("fleet_bot.played", call_id=call.call_id) == []
    forwarded = await total(fleet.workers, "callflow_notifications_forwarded_total") - before
    assert forwarded >= landed_elsewhere


async def test_graph_429_and_503_bursts_are_retried_inside_the_deadline(
    fake: FakeGraph, fleet: Fleet
) -> None:
    """Graph answering a burst of 429 (Retry-After 0.1 s) and 503 (no header): each decision
    is retried after the wait Graph asked for (or a jittered backoff) and lands once, in
    time; the retries are counted in callflow_graph_retries_total."""
    before = await total(fleet.workers, "callflow_graph_retries_total")
    fake.fail_next("decision", 429, retry_after=0.1, count=15)
    fake.fail_next("decision", 503, count=15)

    async def place(i: int) -> CallHandle:
        return await fake.place_call(fleet.webhook_url)

    with anyio.fail_after(GUARD):
        calls = await place_many(40, place)
        for call in calls:
            await call.decision()
    injected = [r for c in calls for r in c.decisions if r.injected]
    assert len(injected) == 30
    for call in calls:
        accepted = [r for r in call.decisions if r.accepted]
        assert len(accepted) == 1
        assert accepted[0].at < call.deadline
        assert not call.timed_out
    assert await total(fleet.workers, "callflow_graph_retries_total") - before == 30


async def test_a_slow_graph_still_gets_every_decision_in_time(
    fake: FakeGraph, fleet: Fleet
) -> None:
    """Graph taking 2 s to answer each POST: handler decisions still land once and before the
    platform timeout (the wait counts against the deadline, not against the 202 reply)."""
    fake.latency = 2.0
    try:

        async def place(i: int) -> CallHandle:
            return await fake.place_call(fleet.webhook_url)

        with anyio.fail_after(GUARD):
            calls = await place_many(20, place)
            assert all(c.webhook_status == 202 for c in calls)
            for call in calls:
                await call.decision()
            for call in calls:
                await _any_logged(fleet.workers, "call.decided", call_id=call.call_id)
    finally:
        fake.latency = 0.0
    assert all(decided_once(c) for c in calls)
    assert all(c.decisions[0].at - c.placed_at < 1.0 for c in calls)  # sent at once
    latencies = [
        line["latency_ms"]
        for w in fleet.workers
        for c in calls
        for line in w.find("call.decided", call_id=c.call_id)
    ]
    assert len(latencies) == 20
    assert min(latencies) >= 1900  # acknowledged after Graph's 2 s, still inside the 5 s


async def test_the_key_endpoint_going_down_keeps_the_old_keys(
    fake: FakeGraph, fleet: Fleet
) -> None:
    """With the key endpoint down mid-run the workers keep the keys they have: calls are
    authenticated and decided as before; a token naming an unknown key gets 503 (the
    refresh it triggers fails) and nothing reaches the handlers."""
    fake.keys.failing = True
    try:
        rogue = SigningKey.generate("rotated-key")
        with anyio.fail_after(GUARD):
            calls = [await fake.place_call(fleet.webhook_url) for _ in range(6)]
            for call in calls:
                await call.decision()
            unknown = await fake.place_call(fleet.webhook_url, token=fake.sign(signing_key=rogue))
    finally:
        fake.keys.failing = False
    assert all(decided_once(c) for c in calls)
    assert unknown.webhook_status == 503
    assert unknown.webhook_body["error"]["code"] == "unavailable"
    assert fake.requests_for(unknown.call_id) == ()


async def test_a_worker_refuses_to_start_without_a_token(
    callflow_signing_key: SigningKey, redis: RedisServer
) -> None:
    """Token endpoint down at start: the worker exits with status 1 and a message naming the
    token endpoint and the error, before it listens."""
    async with FakeGraph(signing_key=callflow_signing_key) as fake:
        fake.tokens.fail_next(10, 503, "temporarily_unavailable", retry_after=0)
        worker = Worker("no-token", worker_env(fake, redis.url, "no-token"))
        async with anyio.create_task_group() as tg:
            await worker.start(tg)
            with anyio.fail_after(START):
                await worker.exited.wait()
            await worker.close()
    assert worker.process is not None
    assert worker.process.returncode == 1
    out = worker.output()
    assert "callflow: Could not get a Graph app token" in out
    assert "503" in out  # what the token endpoint answered
    assert worker.find("bot.ready") == []


async def test_a_worker_refuses_to_start_without_the_signing_keys(
    callflow_signing_key: SigningKey, redis: RedisServer
) -> None:
    """Key endpoint down at start: the worker exits with status 1 and a message naming the
    OpenID configuration it could not read, before it listens."""
    async with FakeGraph(signing_key=callflow_signing_key) as fake:
        fake.keys.failing = True
        worker = Worker("no-keys", worker_env(fake, redis.url, "no-keys"))
        async with anyio.create_task_group() as tg:
            await worker.start(tg)
            with anyio.fail_after(START):
                await worker.exited.wait()
            await worker.close()
        config_url = fake.openid_config_url
    assert worker.process is not None
    assert worker.process.returncode == 1
    out = worker.output()
    assert f"callflow: Fetching the OpenID configuration from {config_url} answered HTTP 500" in out
    assert worker.find("bot.ready") == []


# --- fleets of their own ------------------------------------------------------------------------


async def test_a_killed_workers_pending_calls_are_decided_by_the_survivors(
    callflow_signing_key: SigningKey, own_redis: RedisServer
) -> None:
    """SIGKILL a worker while its handlers hang on 50 calls: within three heartbeats the
    survivors take its pending set over (one survivor per call) and send the default
    Reject(busy) for each, once, before the platform timeout. Notifications that name the
    dead worker are handled where they land, and new calls go to the survivors."""
    async with (
        FakeGraph(
            signing_key=callflow_signing_key, platform_timeout=TIMEOUT, recording_timeout=TIMEOUT
        ) as fake,
        running_fleet(fake, own_redis.url, 3) as fleet,
    ):
        victim = fleet.workers[0]

        async def place(i: int) -> CallHandle:
            caller = {"kind": "user", "id": f"slow-{i}"}
            return await fake.place_call(victim.webhook_url, caller=caller)

        with anyio.fail_after(GUARD):
            slow = await place_many(50, place)
            await victim.wait_log("fleet_bot.slow_call", count=50)
        victim.kill()
        with anyio.fail_after(GUARD):
            for call in slow:
                request = await call.decision()
                assert request.body["reason"] == "busy"
        assert all(decided_once(c) for c in slow)
        survivors = fleet.workers[1:]
        assert await total(survivors, "callflow_calls_taken_over_total") == 50
        taken = [line for w in survivors for line in w.find("call.decided", decided_by="takeover")]
        assert sorted(line["call_id"] for line in taken) == sorted(c.call_id for c in slow)

        # A notification naming the dead worker is handled by the worker it lands on; the
        # survivor that decided the call knows it from then on (any other worker does not,
        # and drops it as about an unknown call).
        orphan = slow[0]
        (taker,) = [w for w in survivors if w.find("call.decided", call_id=orphan.call_id)]
        replies = await fake.send_states(
            f"{taker.webhook_url}?instance={victim.name}", orphan.call_id, ["established"] * 2,
            etags=[40, 41],
        )  # fmt: skip
        assert [r.status for r in replies] == [202, 202]
        with anyio.fail_after(GUARD):
            for etag in (40, 41):
                await taker.wait_log("fleet_bot.state", call_id=orphan.call_id, etag=etag)

        async def place_fast(i: int) -> CallHandle:
            return await fake.place_call(fleet.webhook_url)

        with anyio.fail_after(GUARD):
            fresh = await place_many(30, place_fast)
            for call in fresh:
                await call.decision()
        assert all(decided_once(c) for c in fresh)


async def _any_logged(workers: list[Worker], event: str, **fields: Any) -> None:
    async with anyio.create_task_group() as tg:

        async def one(worker: Worker) -> None:
            await worker.wait_log(event, **fields)
            tg.cancel_scope.cancel()

        for worker in workers:
            tg.start_soon(one, worker)


async def test_redis_going_away_leaves_no_call_undecided_and_dedupe_resumes(
    callflow_signing_key: SigningKey, own_redis: RedisServer
) -> None:
    """Redis stopped mid-run: every call is still decided in time (each worker falls back to
    its local slot and logs store.unavailable; a redelivery that reaches the other worker may
    then be decided twice, and Graph refuses the second). Redis back (empty): the workers log
    store.recovered within a heartbeat or two and shared dedupe resumes: a call delivered to
    both workers gets one decision."""
    async with (
        FakeGraph(
            signing_key=callflow_signing_key, platform_timeout=TIMEOUT, recording_timeout=TIMEOUT
        ) as fake,
        running_fleet(fake, own_redis.url, 2, heartbeat_interval=0.25) as fleet,
    ):
        a, b = fleet.workers
        slow = [
            await fake.place_call(w.webhook_url, caller={"kind": "user", "id": f"slow-{i}"})
            for i, w in enumerate([a, b, a, b])
        ]
        with anyio.fail_after(GUARD):
            await a.wait_log("fleet_bot.slow_call", count=2)
            await b.wait_log("fleet_bot.slow_call", count=2)
        own_redis.stop()

        async def place(i: int) -> CallHandle:
            call = await fake.place_call(fleet.webhook_url)
            if i % 4 == 0:
                first = call.replies[0].headers[UPSTREAM]
                await fake.notify(
                    fleet.webhook_url, call.payload, call_id=call.call_id, headers={AVOID: first}
                )
            return call

        with anyio.fail_after(GUARD):
            during = await place_many(20, place)
            for call in [*during, *slow]:
                await call.decision()
            await a.wait_log("store.unavailable")
            await b.wait_log("store.unavailable")
        for call in [*during, *slow]:
            accepted = [r for r in call.decisions if r.accepted]
            assert len(accepted) == 1, call
            assert accepted[0].at < call.deadline
            assert not call.timed_out
        assert all(r.body["reason"] == "busy" for c in slow for r in c.decisions)
        assert await total(fleet.workers, "callflow_store_failures_total") > 0

        own_redis.start()
        with anyio.fail_after(GUARD):
            await a.wait_log("store.recovered")
            await b.wait_log("store.recovered")
        call = await fake.place_call(a.webhook_url)
        again = await fake.notify(b.webhook_url, call.payload, call_id=call.call_id)
        assert again.status == 202
        with anyio.fail_after(GUARD):
            await call.decision()
            await _any_logged([a, b], "event.duplicate", call_id=call.call_id, shared=True)
        assert decided_once(call)


async def test_a_graph_outage_is_ridden_out_by_retries(
    callflow_signing_key: SigningKey, redis: RedisServer
) -> None:
    """Graph unreachable (every connection dropped) for about a second: the decisions are
    retried with backoff, and land once Graph is back, each once and inside its deadline.
    (An outage longer than a call's platform timeout leaves one call.decision_failed line per
    call; no attempt is made after the timeout.)"""
    async with (
        FakeGraph(
            signing_key=callflow_signing_key, platform_timeout=TIMEOUT, recording_timeout=TIMEOUT
        ) as fake,
        FleetProxy([fake.url]) as graph,
    ):
        graph_url = graph.url + "/v1.0"
        async with running_fleet(
            fake, redis.url_for(1), 2, prefix="g", graph_url=graph_url
        ) as fleet:
            graph.down = True
            calls = [await fake.place_call(fleet.webhook_url) for _ in range(10)]
            with anyio.fail_after(GUARD):
                await graph.wait_until(lambda p: p.dropped >= 20)
            graph.down = False
            with anyio.fail_after(GUARD):
                for call in calls:
                    await call.decision()
            assert all(decided_once(c) for c in calls)
            assert await total(fleet.workers, "callflow_graph_retries_total") >= 10


async def test_a_token_refresh_failing_mid_run_serves_the_old_token(
    callflow_signing_key: SigningKey, redis: RedisServer
) -> None:
    """Token endpoint down when the app token is due for refresh: the worker keeps sending
    decisions with the old, still valid token, logs graph.token_refresh_failed, retries with
    backoff, and uses the new token once the endpoint answers again."""
    async with (
        FakeGraph(
            signing_key=callflow_signing_key,
            platform_timeout=TIMEOUT,
            recording_timeout=TIMEOUT,
            token_lifetime=6,
        ) as fake,
        running_fleet(fake, redis.url_for(2), 1, prefix="t") as fleet,
    ):
        (worker,) = fleet.workers
        (old,) = fake.tokens.issued
        fake.tokens.fail_next(1, 503, "temporarily_unavailable", retry_after=0)
        with anyio.fail_after(GUARD):
            await fake.tokens.wait_for_requests(2)  # the refresh, half-way through 6 s
            await worker.wait_log("graph.token_refresh_failed")
        during = [await fake.place_call(worker.webhook_url) for _ in range(3)]
        with anyio.fail_after(GUARD):
            for call in during:
                request = await call.decision()
                assert request.headers["Authorization"] == f"Bearer {old}"
            await fake.tokens.wait_for_requests(3)  # the retry, after a 1-2 s backoff
            later = []
            while True:  # the next decision sent after the retry landed has the new token
                later.append(await fake.place_call(worker.webhook_url))
                request = await later[-1].decision()
                if request.headers["Authorization"] != f"Bearer {old}":
                    break
        assert fake.tokens.issued == (old, request.headers["Authorization"].split()[1])
        assert all(decided_once(c) for c in [*during, *later])
        assert len(later) < 50


class Trap:
    """An HTTP server an attacker would point forged heartbeats at: it records every request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.url = ""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Trap]:
        """Serve on 127.0.0.1 (a free port) while the block runs."""

        async def record(request: web.Request) -> web.Response:
            self.seen.append((str(request.rel_url), dict(request.headers)))
            return web.json_response({"stolen": True}, status=202)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            yield self
        finally:
            await runner.cleanup()


async def test_values_forged_straight_into_redis_redirect_nothing_and_decide_nothing(
    callflow_signing_key: SigningKey, own_redis: RedisServer
) -> None:
    """Someone who can write the fleet's Redis keys but lacks CALLFLOW_FLEET_SECRET: a forged
    heartbeat naming their server gets no notification (those naming it are handled where
    they land), a forged pending call of a 'dead' worker gets no decision, a forged intake
    claim does not make a call go undecided, and a notification claiming to be forwarded
    without a valid fleet signature is refused. The workers count and log what they found."""
    async with (
        FakeGraph(
            signing_key=callflow_signing_key, platform_timeout=TIMEOUT, recording_timeout=TIMEOUT
        ) as fake,
        Trap().running() as trap,
        running_fleet(fake, own_redis.url, 2, prefix="f") as fleet,
        aioredis.Redis.from_url(own_redis.url, decode_responses=True) as raw,
        aiohttp.ClientSession() as http,
    ):
        prefix = f"callflow:{{{fleet_namespace(fake.app_id, FLEET_SECRET)}}}:"
        beat = json.dumps({"url": trap.url, "boot": "b00t", "pid": 1, "t": time.time()})
        await raw.sadd(prefix + "instances", "evil", "ghost")
        await raw.set(prefix + "instance:evil", beat)  # no expiry: it stays "alive" for good
        await raw.zadd(
            prefix + "pending:ghost", {"victim-call|" + fake.tenant_id: time.time() + 60}
        )
        await raw.set(prefix + "own:pre-owned", "someone#else")
        with anyio.fail_after(GUARD):  # the first survivor to see them takes them over
            await _any_logged(fleet.workers, "fleet.forged_value", kind="beat")
            await _any_logged(fleet.workers, "fleet.forged_value", kind="member")
        assert await raw.exists(prefix + "instance:evil") == 0  # deleted by the take-over

        call = await fake.place_call(fleet.webhook_url)
        with anyio.fail_after(GUARD):
            await call.decision()
        replies = await fake.send_states(
            f"{fleet.webhook_url}?instance=evil", call.call_id, ["hold", "established"] * 2
        )
        assert [r.status for r in replies] == [202] * 4
        owned = await fake.place_call(fleet.webhook_url, call_id="pre-owned")
        with anyio.fail_after(GUARD):
            await call.decision()
            await owned.decision()
            await _any_logged(fleet.workers, "fleet.forged_value", kind="own")
        assert decided_once(owned)

        worker = fleet.workers[0]
        body = json.dumps(envelope(call_state(call.call_id, "hold", etag=99))).encode()
        async with http.post(
            worker.webhook_url + "?instance=f1",
            data=body,
            headers={
                "Content-Type": "application/json",
                "X-Callflow-Forwarded-By": "f1",
                "X-Callflow-Fleet-Auth": "t=1;tenant=" + fake.tenant_id + ";mac=" + "0" * 32,
            },
        ) as reply:
            assert reply.status == 403
            assert (await reply.json())["error"]["code"] == "forbidden"
        forged = await total(fleet.workers, "callflow_fleet_forged_values_total")
        refused = await scrape(worker)
        assert refused["callflow_inbound_auth_failures_total"] == 1
    assert trap.seen == []
    assert fake.requests_for("victim-call") == ()
    assert forged >= 3  # the heartbeat, the pending member, the intake claim
    for w in fleet.workers:
        assert not any("evil" in (line.get("live") or []) for line in w.find("fleet.members"))


async def test_no_log_line_of_a_full_run_carries_a_token_a_secret_or_a_number(
    callflow_signing_key: SigningKey,
) -> None:
    """Two fleet workers (Redis as an ACL user, a fleet secret) take calls from phone callers,
    run a handler that raises with a token and a number in its local variables, refuse bad
    tokens, meet Graph errors and a token refresh failure, forward a notification and find a
    forged fleet value; not one line they log holds a notification or app token, the app
    secret, the fleet secret, the Redis password or an unmasked phone number."""
    app_secret = "app-secret-Qw3rty-never-logged"
    redis_password = "redis-pass-Zx9-never-logged"
    leaky = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJsZWFreS1oYW5kbGVyLWxvY2FsIn0.bGVha3ktc2lnbmF0dXJl"
    numbers = [f"+155501{n:05d}" for n in range(1, 9)]  # the handler raises for ...0 numbers
    numbers[3] = "+15550199990"
    for server in redis_server(user=("callflow", redis_password)):
        async with FakeGraph(
            signing_key=callflow_signing_key,
            app_secret=app_secret,
            platform_timeout=TIMEOUT,
            recording_timeout=TIMEOUT,
            token_lifetime=4,
        ) as fake:
            good = fake.sign()
            rogue = SigningKey.generate("rogue")
            bad = [
                fake.sign(signing_key=rogue),
                fake.sign(aud="someone-else"),
                fake.sign(now=time.time() - 7200, lifetime=600),
                "not-a-jwt-but-a-bearer-secret-value",
            ]
            async with running_fleet(
                fake,
                server.url,
                2,
                prefix="leak",
                target="tests.leaky_bot:bot",
                env={"CALLFLOW_LOG_LEVEL": "debug", "LEAKY_TOKEN": leaky},
            ) as fleet:
                a, b = fleet.workers
                for token in bad:
                    call = await fake.place_call(a.webhook_url, token=token)
                    assert call.webhook_status in (401, 403)
                fake.fail_next("decision", 500, count=2, code="InternalServerError")
                fake.fail_next("decision", 403, count=1, code="7504")
                fake.tokens.fail_next(3, 503, "temporarily_unavailable", retry_after=0)
                calls = [
                    await fake.place_call(
                        fleet.webhook_url,
                        kind="phone",
                        caller={"kind": "phone", "id": number},
                        token=good,
                    )
                    for number in numbers
                ]
                with anyio.fail_after(GUARD):
                    for call in calls:
                        await call.wait_requests(1, op="decision")
                    await _any_logged(fleet.workers, "call.decision_failed")
                    await _any_logged(fleet.workers, "graph.token_refresh_failed")
                    await _any_logged(fleet.workers, "handler.failed")
                decided = next(c for c in calls if any(r.accepted for r in c.decisions))
                owner = decided.decisions[-1].body["callbackUri"].rsplit("instance=", 1)[1]
                other = b if owner == a.name else a
                replies = await fake.send_states(
                    f"{other.webhook_url}?instance={owner}", decided.call_id, ["hold"], token=good
                )
                assert [r.status for r in replies] == [202]
                async with aioredis.Redis.from_url(server.url, decode_responses=True) as raw:
                    ns = f"callflow:{{{fleet_namespace(fake.app_id, FLEET_SECRET)}}}:"
                    await raw.sadd(ns + "instances", "forger")
                    await raw.set(ns + "instance:forger", '{"url": "http://127.0.0.1:1"}')
                with anyio.fail_after(GUARD):
                    await _any_logged(fleet.workers, "fleet.forged_value")
                    await _any_logged(fleet.workers, "notification.forwarded")
            lines = [line for worker in fleet.workers for line in worker.text]
            tokens = [*fake.tokens.issued, good, *bad, leaky]
    events = {json.loads(line).get("event") for line in lines if line.startswith("{")}
    assert {
        "webhook.rejected", "leaky.routing", "call.decided", "handler.failed",
        "call.decision_failed", "graph.token_refresh_failed", "fleet.forged_value",
        "notification.forwarded",
    } <= events  # fmt: skip
    assert any('"exception"' in line and "LookupError" in line for line in lines)
    secrets = [app_secret, redis_password, FLEET_SECRET, *numbers]
    for token in tokens:
        secrets += [token, *(part for part in token.split(".") if len(part) >= 16)]
    leaks = [(secret, line) for line in lines for secret in secrets if secret in line]
    assert leaks == []
