"""A serving bot's two loops: the I/O loop keeps reading, answering and deciding calls
whatever the handlers do to the app loop, and sheds calls it could only decide late.

These tests run FakeGraph on a thread of its own, so that it keeps answering while a handler
holds the test's (the app) loop, as the real Graph would.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from callflow import Answer, Bot, IncomingCall, Reject
from callflow.engine.crossing import IoThread
from callflow.settings import Settings
from callflow.testing import CallHandle, FakeGraph, GraphRequest, RecordingSink, SigningKey
from tests.helpers import incoming

pytestmark = pytest.mark.anyio

FAST = {"platform_timeout": 1.0, "recording_timeout": 1.0, "safety_margin": 0.7}
"""The default goes out 0.3 s after a notification arrives; Graph gives up after 1 s."""


@asynccontextmanager
async def fake_graph_thread(key: SigningKey) -> AsyncIterator[tuple[FakeGraph, IoThread]]:
    """A FakeGraph serving from its own thread and loop."""
    async with IoThread("fake-graph") as thread:
        fake = FakeGraph(signing_key=key, platform_timeout=1.0, recording_timeout=1.0)
        async with thread.enter(lambda: fake):
            yield fake, thread


def on(thread: IoThread, coro: Any) -> Future[Any]:
    """Run ``coro`` on ``thread``'s loop; a future to wait on from any thread."""
    return asyncio.run_coroutine_threadsafe(coro, thread.loop)


@pytest.mark.parametrize("kind", ["block", "spin", "raise"])
async def test_calls_arriving_while_a_handler_holds_the_app_loop_are_acked_and_decided(
    callflow_signing_key: SigningKey, kind: str
) -> None:
    """While one handler blocks the app loop (a blocking wait), spins it (pure Python) or
    raises after holding it, five calls placed meanwhile each get their 202 and exactly one
    decision, the default, before the platform gives up; the holder's own late answer is
    dropped."""
    bot = Bot()
    url = ""
    placed: list[CallHandle] = []
    decided: list[GraphRequest] = []
    done = anyio.Event()
    graph: dict[str, Any] = {}

    @bot.incoming_call
    async def holds(call: IncomingCall) -> Answer:
        if call.call_id != "holder":
            return Answer()  # pragma: no cover - the loop is held until these are decided
        fake, thread = graph["fake"], graph["thread"]
        try:
            calls = [
                on(thread, fake.place_call(url, call_id=f"during-{n}", caller=None))
                for n in range(5)
            ]
            if kind == "spin":
                end = time.monotonic() + 10.0
                while not all(f.done() for f in calls) and time.monotonic() < end:
                    pass
            placed.extend(f.result(10.0) for f in calls)
            decisions = [on(thread, c.decision(timeout=5.0)) for c in placed]
            if kind == "spin":
                end = time.monotonic() + 10.0
                while not all(f.done() for f in decisions) and time.monotonic() < end:
                    pass
            decided.extend(f.result(10.0) for f in decisions)
            if kind == "raise":
                raise RuntimeError("the directory is down")
            return Answer()
        finally:
            done.set()

    async with fake_graph_thread(callflow_signing_key) as (fake, thread):
        graph.update(fake=fake, thread=thread)
        bot.configure(fake.settings(**FAST))
        async with bot.serve() as running:
            url = running.webhook_url
            holder = await thread.run(lambda: fake.place_call(url, call_id="holder"))
            with anyio.fail_after(20):
                await done.wait()
                holder_decision = await thread.run(lambda: holder.decision(timeout=5.0))
            stats = running.engine.stats
            late, errors = stats.late_decisions, stats.handler_errors

    assert len(placed) == 5
    for call, request in zip(placed, decided, strict=True):
        (reply,) = call.replies
        assert reply.status == 202
        assert reply.at - call.placed_at < 0.5  # answered while the app loop was held
        assert (request.op, request.reason) == ("reject", "busy")
        assert request.at < call.deadline  # before the platform gave up on it
        assert len(call.decisions) == 1
        assert not call.timed_out
    assert holder_decision.op == "reject"  # the deadline's default, not the late answer
    assert len(holder.decisions) == 1
    assert (late, errors) == ((0, 1) if kind == "raise" else (1, 0))


async def test_a_call_read_while_the_io_loop_ran_late_gets_the_default_at_once() -> None:
    """When the I/O loop has been running later than SHED_LAG, a new call is decided with the
    default at once rather than offered to handlers that could only decide it late; its
    deadline counts from when it was probably sent, not from when it was read."""
    bot = Bot(Settings(platform_timeout=15.0, safety_margin=3.0, shed_lag=0.05))
    ran: list[str] = []

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        ran.append(call.call_id)
        return Answer()

    slots: list[Any] = []
    sink = RecordingSink()
    engine = bot.engine(sink, on_decided=lambda slot, error: slots.append(slot))
    stalled = threading.Event()

    async def stall() -> None:
        stalled.set()
        time.sleep(0.3)  # noqa: ASYNC251 - stalling the I/O loop is the point
        engine.submit([incoming("read-late")])  # read while the loop knows it is late

    async with IoThread() as io, engine.running(io) as running:
        assert running.ingress_lag < 0.05
        submitted = time.monotonic()
        await io.run(stall)
        with anyio.fail_after(5):
            await sink.wait_for(1)
    assert ran == []
    assert sink.by_call() == {"read-late": [Reject()]}
    assert engine.stats.shed == engine.stats.admission_defaults == 1
    (slot,) = slots
    assert slot.decided_by == "admission"
    assert slot.received <= submitted + 0.1  # counted from before the stall, not after it


async def test_a_notification_that_waited_behind_a_stalled_io_loop_gets_503(
    fake_graph: FakeGraph,
) -> None:
    """A new call whose notification sat unread while the I/O loop was stalled for longer
    than half its time is refused with 503 and Retry-After (Graph may send it again)
    instead of being taken and decided late; nothing is sent for it."""
    bot = Bot()

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer()  # pragma: no cover - refused before any handler

    stalled = threading.Event()

    async def stall() -> None:
        stalled.set()
        time.sleep(0.4)  # noqa: ASYNC251 - stalling the I/O loop is the point

    async with fake_graph.serve(bot, shed_lag=0.05, **FAST) as running:
        async with anyio.create_task_group() as tg:
            tg.start_soon(running.io.run, stall)
            assert await anyio.to_thread.run_sync(stalled.wait, 5.0)
            call = await fake_graph.place_call(running.webhook_url, call_id="waited")
        (reply,) = call.replies
        assert reply.status == 503
        assert reply.headers["Retry-After"] == "1"
        assert reply.body["error"]["code"] == "overloaded"
        assert running.engine.stats.refused == 1
    assert fake_graph.requests_for("waited") == ()
