"""A call's state lives from admission (or creation) to its end, and no longer.

A worker keeps per-call state only for calls it knows (pending, held or created), frees it
when the call ends, and ends a call for everything waiting on it as soon as it learns the
call is gone, whoever learned it first.
"""

from __future__ import annotations

import gc
import sys
import time

import anyio
import pytest

from callflow import (
    Answer,
    Bot,
    Call,
    CallEndedError,
    CallTerminated,
    IncomingCall,
    MediaPrompt,
    Reject,
    Settings,
    Target,
)
from callflow.control.book import CallBook
from callflow.control.keeper import CallKeeper
from callflow.control.registry import OperationRegistry
from callflow.events import CallStateChanged
from callflow.testing import (
    CALLBACK_URL,
    FakeGraph,
    RecordingSink,
    call_state,
    call_terminated,
)
from tests.helpers import incoming

pytestmark = pytest.mark.anyio

GUARD = 15.0
OTHER_TENANT = "0b0b0b0b-2222-4333-8444-555566667777"
PROMPT = MediaPrompt("https://cdn.example.com/long-announcement.wav")


def _records_cost(registry: OperationRegistry, prefix: str) -> float:
    """CPU seconds 5,000 new records cost ``registry`` (no garbage collection meanwhile)."""
    gc.collect()
    gc.disable()  # what the records cost, not a collection of what earlier tests left
    try:
        began = time.thread_time()  # CPU time: what the work costs, whatever else runs
        for index in range(5_000):
            registry.record(f"{prefix}-{index}")
        return time.thread_time() - began
    finally:
        gc.enable()


def test_new_records_stay_cheap_after_ten_thousand_calls_ended() -> None:
    """10,000 calls that came and went leave nothing behind: 5,000 new records then cost
    what they cost in a new registry (a table that kept the ended ones copied itself for
    every new record: 1,000 times more), and under 50 ms in all (without a tracer)."""
    book = CallBook()
    registry = OperationRegistry(book=book)
    for index in range(10_000):
        call_id = f"ended-{index}"
        book.admit(call_id, "tenant-a")
        registry.on_events([CallStateChanged(call_id, "established", 1)])
        book.end(call_id)
    assert len(registry._calls) == 0
    fresh = _records_cost(OperationRegistry(book=CallBook()), "fresh")
    after = _records_cost(registry, "new")
    assert after < 3 * fresh + 0.005
    if sys.gettrace() is None:  # coverage's tracer makes every line dearer
        assert after < 0.050


def test_the_registry_never_evicts_a_held_call() -> None:
    """Past its bound the registry forgets idle records of calls nobody holds, never the
    record of a call the worker holds."""
    book = CallBook()
    registry = OperationRegistry(book=book, max_calls=100)
    book.admit("held", "tenant-a")
    registry.on_events([CallStateChanged("held", "established", 1)])
    for index in range(1_000):
        registry.record(f"stray-{index}")
    assert registry.record("held").established
    assert len(registry._calls) <= 101


@pytest.mark.slow
async def test_a_held_calls_state_survives_a_flood_of_unknown_call_ids(
    fake_graph: FakeGraph,
) -> None:
    """20,000 notifications (from another tenant's valid token) about calls the worker does
    not know are taken (202), dropped and counted; they create no state, so a held call
    keeps its established flag and the key its caller typed ahead."""
    fake = fake_graph
    subscribed, release, done = anyio.Event(), anyio.Event(), anyio.Event()
    got: list[str] = []

    async def flow(call: Call) -> None:
        await call.subscribe_tones()
        subscribed.set()
        await release.wait()
        await call.established(timeout=1.0)  # known already: returns at once
        got.append(await call.collect_digits(1, timeout=2.0))
        done.set()

    bot = Bot()

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer(then=flow)

    async with fake.serve(bot) as running:
        handle = await fake.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            await subscribed.wait()
            await handle.press("5")  # typed ahead, before the flow collects
        token = fake.sign(tid=OTHER_TENANT)
        for batch in range(200):
            items = [
                call_state(f"stranger-{batch}-{index}", "established", etag=1)
                for index in range(100)
            ]
            reply = await fake.notify(running.webhook_url, items, token=token)
            assert reply.status == 202
        assert running.engine.stats.unknown == 20_000
        assert len(running.engine.calls) == 1
        metrics = running.metrics.render().decode()
        assert "callflow_unknown_call_notifications_total 20000.0" in metrics
        assert "callflow_known_calls 1.0" in metrics
        release.set()
        with anyio.fail_after(GUARD):
            await done.wait()
    assert got == ["5"]


async def test_a_created_call_is_bound_to_the_tenant_that_created_it(
    fake_graph: FakeGraph,
) -> None:
    """A call the bot places without naming a tenant belongs to the tenant whose app token
    created it: another tenant's token cannot end it (403), its own tenant's can."""
    fake = fake_graph
    bot = Bot()
    async with fake.serve(bot) as running:
        fake.route(CALLBACK_URL, running.webhook_url)
        with anyio.fail_after(GUARD):
            call = await bot.calls.create(Target.user("colleague"))
        assert running.engine.calls.tenant_of(call.call_id) == fake.tenant_id
        forged = await fake.notify(
            running.webhook_url, [call_terminated(call.call_id)], token=fake.sign(tid=OTHER_TENANT)
        )
        assert forged.status == 403
        assert forged.body["error"]["code"] == "tenant_mismatch"
        assert call.call_id in running.engine.calls
        genuine = await fake.notify(running.webhook_url, [call_terminated(call.call_id)])
        assert genuine.status == 202
        with anyio.fail_after(GUARD):
            await running.keeper.wait_until(lambda held: not held)
        assert call.call_id not in running.engine.calls


async def test_a_keepalive_404_ends_what_waits_on_the_call_at_once(
    fake_graph: FakeGraph,
) -> None:
    """Graph answering a keepAlive 404 (the call is gone) fails a prompt that is playing
    with CallEndedError at once, not at its timeout, and nothing more is sent for the call
    (no cancelMediaProcessing)."""
    fake = fake_graph
    fake.operation_duration = 60.0  # the prompt would play for a minute
    failures: list[BaseException] = []
    playing, done = anyio.Event(), anyio.Event()

    async def flow(call: Call) -> None:
        playing.set()
        try:
            await call.play(PROMPT, timeout=30.0)
        except Exception as exc:
            failures.append(exc)
            done.set()

    bot = Bot()

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer(then=flow)

    async with fake.serve(bot, keepalive_interval=0.3) as running:
        handle = await fake.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            await playing.wait()
            await handle.wait_requests(op="playPrompt")
        fake.gone(handle.call_id)
        began = time.monotonic()
        with anyio.fail_after(GUARD):
            await done.wait()
        assert time.monotonic() - began < 5.0
        assert running.keeper.calls() == []
        assert handle.call_id not in running.engine.calls
    assert [type(exc) for exc in failures] == [CallEndedError]
    sent = [r.op for r in handle.requests]
    assert "cancelMediaProcessing" not in sent
    assert sent[-1] == "keepAlive"


async def test_hanging_up_a_call_that_has_ended_sends_nothing(fake_graph: FakeGraph) -> None:
    """After the caller hung up, the bot's own hang_up() returns quietly and sends no
    DELETE (Graph would answer 404); nor does ctx-level hang-up through the running bot."""
    fake = fake_graph
    ended, done = anyio.Event(), anyio.Event()

    async def flow(call: Call) -> None:
        try:
            await call.collect_digits(4, timeout=GUARD)
        except CallEndedError:
            ended.set()
            await call.hang_up()
            done.set()

    bot = Bot()

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer(then=flow)

    async with fake.serve(bot) as running:
        handle = await fake.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            await handle.wait_requests(op="subscribeToTone")
        await fake.end_call(handle.call_id)
        with anyio.fail_after(GUARD):
            await done.wait()
        await running.hang_up(handle.call_id)
    assert [r.op for r in handle.requests if r.op == "delete"] == []


def test_the_keepalive_schedule_holds_the_held_calls_not_every_call_that_ended() -> None:
    """1,000 calls answered and ended leave a schedule about as long as the calls still held
    (each ended call's entry used to stay until it fell due an interval later)."""
    keeper = CallKeeper(graph=None)  # type: ignore[arg-type]  # not running: sends nothing
    keeper.answered("held", "tenant-a")
    for index in range(1_000):
        keeper.answered(f"came-and-went-{index}", "tenant-a")
        keeper.ended(f"came-and-went-{index}")
    assert [held.call_id for held in keeper.calls()] == ["held"]
    assert len(keeper._heap) <= 2 * 1 + 64
    assert "held" in [entry[2] for entry in keeper._heap]


async def test_staleness_is_kept_only_for_calls_the_book_remembers() -> None:
    """The intake's memory of each call's last state is bounded by the calls the book holds
    or remembers as ended, not by the dedupe window (100,000 calls)."""
    book = CallBook(ended_size=100)
    bot = Bot(Settings(platform_timeout=15, safety_margin=3))

    @bot.incoming_call
    async def reject(call: IncomingCall) -> Reject:
        return Reject()

    async with bot.engine(RecordingSink(), calls=book).running() as engine:
        for index in range(1_000):
            call_id = f"brief-{index}"
            engine.submit([incoming(call_id)])
            engine.submit([CallStateChanged(call_id, "establishing", 1)])
            engine.submit([CallTerminated(call_id, None)])
        await engine.settle()
        assert len(engine.intake._tracks) <= book.remembered
    assert book.remembered <= 100 + len(book)
