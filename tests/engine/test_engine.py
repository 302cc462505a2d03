"""The engine: per-call lanes, handler order, dedupe, staleness and the deadline guarantee."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callflow import (
    Answer,
    Bot,
    CallContext,
    CallStateChanged,
    CallTerminated,
    IncomingCall,
    ParticipantsUpdated,
    Redirect,
    Reject,
    RejectReason,
    ResultInfo,
    Router,
    Target,
    ToneReceived,
    UnknownNotification,
)
from callflow.engine.admission import Admission
from callflow.engine.core import Engine
from callflow.engine.dedupe import Recent
from callflow.engine.limits import Limits
from callflow.metrics import Metrics
from callflow.settings import Settings
from callflow.testing import ManualClock, RecordingSink
from tests.helpers import incoming

pytestmark = pytest.mark.anyio

FAST = Settings(platform_timeout=1.0, recording_timeout=1.0, safety_margin=0.7)
"""Deadline 0.3 s after receipt: short enough for tests, long enough for a loaded machine."""


def make_bot(settings: Settings = FAST) -> Bot:
    return Bot(settings)


@asynccontextmanager
async def running(bot: Bot, **overrides: Any) -> AsyncIterator[tuple[Engine, RecordingSink]]:
    sink = RecordingSink()
    async with bot.engine(sink, **overrides).running() as engine:
        yield engine, sink


async def test_first_non_none_decision_wins_in_priority_order() -> None:
    """Handlers run highest priority first; None passes on; the first decision is sent."""
    bot = make_bot()
    seen: list[str] = []

    @bot.incoming_call(priority=-1)
    async def late(call: IncomingCall) -> Answer:
        seen.append("late")
        return Answer()

    @bot.incoming_call(priority=5)
    async def first(call: IncomingCall) -> None:
        seen.append("first")

    @bot.incoming_call(priority=5)
    async def second(call: IncomingCall) -> Reject:
        seen.append("second")
        return Reject(RejectReason.FORBIDDEN)

    async with running(bot) as (engine, sink):
        engine.submit([incoming("c1")])
        with anyio.fail_after(5):
            await sink.wait_for(1)
    assert seen == ["first", "second"]
    assert sink.by_call() == {"c1": [Reject(RejectReason.FORBIDDEN)]}


async def test_group_flag_and_filter_select_handlers() -> None:
    """group=True takes meetings, group=False peer-to-peer calls, and where= filters further."""
    bot = make_bot()

    @bot.incoming_call(group=True)
    async def meetings(call: IncomingCall) -> Reject:
        return Reject(RejectReason.FORBIDDEN)

    @bot.incoming_call(group=False, where=lambda c: c.caller.id == "vip")
    async def vip(call: IncomingCall) -> Answer:
        return Answer()

    from callflow import Identity

    async with running(bot) as (engine, sink):
        engine.submit([incoming("meet", group=True)])
        engine.submit([incoming("vip", caller=Identity("user", "vip"))])
        engine.submit([incoming("other")])
        with anyio.fail_after(5):
            await sink.wait_for(3)
    got = sink.by_call()
    assert got["meet"] == [Reject(RejectReason.FORBIDDEN)]
    assert got["vip"] == [Answer()]
    assert got["other"] == [Reject()]  # nobody decided: the default goes out at once


async def test_all_none_sends_default_without_waiting_for_deadline() -> None:
    """When every handler has no opinion the default decision is sent at once."""
    bot = make_bot(Settings(platform_timeout=15, safety_margin=3))
    clock = ManualClock()

    @bot.incoming_call
    async def shrug(call: IncomingCall) -> None:
        return None

    sink = RecordingSink(clock)
    async with bot.engine(sink, clock=clock).running() as engine:
        started = clock.now()
        engine.submit([incoming("c")])
        with anyio.fail_after(5):
            await sink.wait_for(1)  # the clock never moved: nobody waited for the deadline
    assert sink.decisions[0][1:] == (Reject(RejectReason.BUSY), started)
    assert engine.scheduler.fired == 0


async def test_configured_default_decision() -> None:
    """DEFAULT_REJECT_REASON changes the decision sent when nobody decides."""
    bot = make_bot(Settings(platform_timeout=1, safety_margin=0.5, default_reject_reason="none"))
    async with running(bot) as (engine, sink):
        engine.submit([incoming("c")])
        with anyio.fail_after(5):
            await sink.wait_for(1)
    assert sink.decisions[0][1] == Reject(RejectReason.NONE)


async def test_raising_handler_is_logged_hooked_and_skipped() -> None:
    """A handler that raises is logged with the call id, told to on_error, and the next one runs."""
    bot = make_bot()
    hooked: list[tuple[str, str]] = []

    @bot.incoming_call(priority=1)
    async def broken(call: IncomingCall) -> Answer:
        raise LookupError("directory down")

    @bot.incoming_call
    async def fallback(call: IncomingCall) -> Redirect:
        return Redirect(Target.user("op"))

    @bot.on_error
    async def hook(exc: BaseException, event: Any) -> None:
        hooked.append((type(exc).__name__, event.call_id))

    @bot.on_error
    def broken_hook(exc: BaseException, event: Any) -> None:
        raise RuntimeError("hook bug")

    with structlog.testing.capture_logs() as logs:
        async with running(bot) as (engine, sink):
            engine.submit([incoming("c9")])
            with anyio.fail_after(5):
                await sink.wait_for(1)
    assert sink.by_call() == {"c9": [Redirect(Target.user("op"))]}
    assert hooked == [("LookupError", "c9")]
    failed = [e for e in logs if e["event"] == "handler.failed"]
    assert failed[0]["call_id"] == "c9"
    assert "directory down" in failed[0]["error"]
    assert any(e["event"] == "error_hook.failed" for e in logs)
    assert engine.stats.handler_errors == 1


async def test_non_decision_return_value_is_an_error() -> None:
    """A handler returning something other than a decision is reported and skipped."""
    bot = make_bot()

    @bot.incoming_call
    async def wrong(call: IncomingCall) -> Any:
        return "answer"

    async with running(bot) as (engine, sink):
        engine.submit([incoming("c")])
        with anyio.fail_after(5):
            await sink.wait_for(1)
    assert sink.decisions[0][1] == Reject()
    assert engine.stats.handler_errors == 1


async def test_context_gives_deadline_and_remaining() -> None:
    """A two-argument handler gets a CallContext with the call's deadline."""
    bot = make_bot(Settings(platform_timeout=15, safety_margin=3))
    clock = ManualClock()
    seen: dict[str, float] = {}

    @bot.incoming_call
    async def timed(call: IncomingCall, ctx: CallContext) -> Answer:
        seen["remaining"] = ctx.remaining()
        ctx.log.info("handler.ran")
        return Answer()

    async with running(bot, clock=clock) as (engine, sink):
        engine.submit([incoming("c")])
        with anyio.fail_after(5):
            await sink.wait_for(1)
    assert seen["remaining"] == 12.0


async def test_policy_recording_gets_the_short_deadline() -> None:
    """A compliance-recording invite's deadline counts from its 5 s platform timeout."""
    bot = make_bot(Settings(platform_timeout=15, recording_timeout=5, safety_margin=3))
    clock = ManualClock()
    seen: dict[str, float] = {}

    @bot.incoming_call
    async def timed(call: IncomingCall, ctx: CallContext) -> Answer:
        seen[call.call_id] = ctx.remaining()
        return Answer()

    async with running(bot, clock=clock) as (engine, sink):
        engine.submit([incoming("rec", recording=True), incoming("p2p")])
        with anyio.fail_after(5):
            await sink.wait_for(2)
    assert seen == {"rec": 2.0, "p2p": 12.0}


async def test_sync_handler_runs_in_a_worker_thread() -> None:
    """A plain def handler runs off the event loop, in a worker thread."""
    bot = make_bot()
    threads: list[int] = []

    @bot.incoming_call
    def blocking(call: IncomingCall, ctx: CallContext) -> Answer:
        threads.append(threading.get_ident())
        return Answer()

    async with running(bot) as (engine, sink):
        engine.submit([incoming("c")])
        with anyio.fail_after(5):
            await sink.wait_for(1)
    assert threads
    assert threads[0] != threading.get_ident()
    assert sink.decisions[0][1] == Answer()


async def test_hanging_handler_gets_default_at_deadline_and_is_cancelled() -> None:
    """A handler that never returns is cancelled and the default goes out at the deadline,
    not a moment before."""
    bot = make_bot(Settings(platform_timeout=15, safety_margin=3))
    clock = ManualClock()
    started, cancelled = anyio.Event(), anyio.Event()

    @bot.incoming_call
    async def hangs(call: IncomingCall) -> Answer:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        return Answer()  # pragma: no cover

    sink = RecordingSink(clock)
    async with bot.engine(sink, clock=clock).running() as engine:
        received = clock.now()
        engine.submit([incoming("c")])
        with anyio.fail_after(5):
            await started.wait()
            clock.advance(11.999)
            await engine.settle()
            assert engine.scheduler.fired == 0
            assert not cancelled.is_set()
            clock.advance(0.001)
            await sink.wait_for(1)
            await cancelled.wait()
    _, decision, at = sink.decisions[0]
    assert decision == Reject()
    assert at == received + 12.0


@pytest.mark.parametrize("kind", ["sleep", "spin"])
async def test_loop_blocking_handler_cannot_delay_the_default(kind: str) -> None:
    """While an async handler blocks the app loop (a blocking wait, a CPU spin), the
    deadline still fires and the default is sent; the handler's late answer is dropped."""
    bot = make_bot(Settings(platform_timeout=15, safety_margin=3))
    clock = ManualClock()
    sink = RecordingSink(clock)
    sent_while_blocked: list[bool] = []

    @bot.incoming_call
    async def blocks(call: IncomingCall) -> Answer:
        clock.advance(12.0)  # the deadline passes while this handler holds the loop
        if kind == "sleep":
            sent_while_blocked.append(sink.arrived.wait(5.0))
        else:
            end = time.monotonic() + 5.0
            while not sink.arrived.is_set() and time.monotonic() < end:
                pass
            sent_while_blocked.append(sink.arrived.is_set())
        return Answer()

    async with bot.engine(sink, clock=clock).running() as engine:
        engine.submit([incoming("c")])
        with anyio.fail_after(10):
            await sink.wait_for(1)  # woken once the handler returned and was found late
    assert sent_while_blocked == [True]
    assert sink.by_call() == {"c": [Reject()]}
    assert engine.stats.late_decisions == 1


async def test_duplicate_incoming_call_is_dispatched_once() -> None:
    """A redelivered incoming call reaches the handlers once and gets one decision."""
    bot = make_bot()
    runs: list[str] = []

    @bot.incoming_call
    async def once(call: IncomingCall) -> Answer:
        runs.append(call.call_id)
        return Answer()

    async with running(bot) as (engine, sink):
        engine.submit([incoming("dup")])
        engine.submit([incoming("dup")])
        with anyio.fail_after(5):
            await sink.wait_for(1)
    assert runs == ["dup"]
    assert len(sink.decisions) == 1
    assert engine.stats.duplicates == 1


async def test_events_of_a_call_are_observed_in_order_and_stale_ones_dropped() -> None:
    """State updates are observed in arrival order; an older etag or earlier state is dropped."""
    bot = make_bot()
    seen: list[tuple[str, str, int | None]] = []
    ended: list[ResultInfo | None] = []

    @bot.incoming_call
    async def slow_answer(call: IncomingCall) -> Answer:
        await anyio.sleep(0.05)
        return Answer()

    @bot.on(CallStateChanged)
    async def state(event: CallStateChanged) -> None:
        seen.append((event.call_id, event.state, event.etag))

    @bot.on(CallTerminated)
    async def end(event: CallTerminated, ctx: CallContext) -> None:
        ended.append(event.result)

    done = anyio.Event()

    @bot.on(CallTerminated, where=lambda e: e.call_id == "c")
    async def finished(event: CallTerminated) -> None:
        done.set()

    async with running(bot) as (engine, sink):
        engine.calls.hold("d", None)  # a call the bot holds (created, say)
        engine.submit([incoming("c")])
        engine.submit([CallStateChanged("c", "establishing", 2)])
        engine.submit([CallStateChanged("c", "established", 4)])
        engine.submit([CallStateChanged("c", "establishing", 3)])  # late, older etag
        engine.submit([CallStateChanged("c", "established", 4)])  # redelivered
        engine.submit([CallStateChanged("d", "established", None)])
        engine.submit([CallStateChanged("d", "establishing", None)])  # earlier state, no etag
        with anyio.fail_after(5):
            await sink.wait_for(1)
        engine.submit([CallTerminated("c", ResultInfo(200, 5001, "ended"))])
        engine.submit([CallStateChanged("c", "established", None)])  # after the end
        with anyio.fail_after(5):
            await done.wait()
    assert [s for s in seen if s[0] == "c"] == [("c", "establishing", 2), ("c", "established", 4)]
    assert [s for s in seen if s[0] == "d"] == [("d", "established", None)]
    assert ended == [ResultInfo(200, 5001, "ended")]
    assert sink.by_call() == {"c": [Answer()]}
    assert engine.stats.stale == 3
    assert engine.stats.duplicates == 1


async def test_other_events_reach_their_observers() -> None:
    """Roster updates and unknown notifications reach observers of their type."""
    bot = make_bot()
    got: list[str] = []
    both = anyio.Event()

    @bot.on(ParticipantsUpdated)
    async def roster(event: ParticipantsUpdated) -> None:
        got.append("roster")
        if len(got) == 2:
            both.set()

    @bot.on(UnknownNotification)
    async def unknown(event: UnknownNotification) -> None:
        got.append("unknown")
        if len(got) == 2:
            both.set()

    @bot.on(CallStateChanged)
    async def crash(event: CallStateChanged) -> None:
        raise RuntimeError("observer bug")

    async with running(bot) as (engine, _):
        engine.calls.hold("c", None)
        engine.submit([ParticipantsUpdated("c", ())])
        engine.submit([UnknownNotification("updated", "/communications/calls/c/operations/1", "c")])
        engine.submit([CallStateChanged("c", "established", 1)])
        with anyio.fail_after(5):
            await both.wait()
    assert sorted(got) == ["roster", "unknown"]


async def test_events_of_unknown_calls_are_dropped_and_counted() -> None:
    """A notification about a call the engine neither has pending, holds, nor saw end
    reaches no observer and is counted; once the call is known its events are observed, and
    after its end a late one still is (the call is remembered as ended)."""
    bot = make_bot()
    seen: list[tuple[str, str]] = []
    got = anyio.Event()

    @bot.on(CallStateChanged)
    async def state(event: CallStateChanged) -> None:
        seen.append((event.call_id, event.state))
        got.set()

    async with running(bot) as (engine, _):
        for index in range(50):
            engine.submit([CallStateChanged(f"stranger-{index}", "established", 1)])
        await engine.settle()
        assert engine.stats.unknown == 50
        assert len(engine.lanes) == 0
        engine.calls.hold("known", None)
        engine.submit([CallStateChanged("known", "established", 1)])
        with anyio.fail_after(5):
            await got.wait()
        got = anyio.Event()
        engine.submit([CallTerminated("known", None)])
        engine.submit([CallStateChanged("known", "hold", 9)])  # late, but of a known call
        await engine.settle()
    assert ("known", "established") in seen
    assert not any(call_id.startswith("stranger") for call_id, _ in seen)
    assert engine.calls.ended("known") is not None
    assert "known" not in engine.calls


async def test_caller_hanging_up_before_decision_cancels_handlers_and_sends_nothing() -> None:
    """A call terminated while undecided gets no decision; its handlers are cancelled."""
    bot = make_bot(Settings(platform_timeout=15, safety_margin=3))
    started, cancelled, ended = anyio.Event(), anyio.Event(), anyio.Event()

    @bot.incoming_call
    async def waits(call: IncomingCall) -> Answer:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        return Answer()  # pragma: no cover

    @bot.on(CallTerminated)
    async def end(event: CallTerminated) -> None:
        ended.set()

    async with running(bot) as (engine, sink):
        engine.submit([incoming("c")])
        with anyio.fail_after(5):
            await started.wait()
            engine.submit([CallTerminated("c", ResultInfo(487, 0, "caller hung up"))])
            await cancelled.wait()
            await ended.wait()
        assert engine.pending == 0
    assert sink.decisions == []
    assert engine.stats.gone == 1


async def test_admission_control_defaults_calls_above_max_pending() -> None:
    """Above MAX_PENDING undecided calls, a new call gets the default decision at once."""
    bot = make_bot(Settings(platform_timeout=15, safety_margin=3, max_pending=2))
    release = anyio.Event()

    @bot.incoming_call
    async def waits(call: IncomingCall) -> Answer:
        await release.wait()
        return Answer()

    async with running(bot) as (engine, sink):
        engine.submit([incoming("a"), incoming("b"), incoming("c")])
        with anyio.fail_after(5):
            await sink.wait_for(1)
        assert sink.by_call() == {"c": [Reject()]}
        assert engine.pending == 2
        release.set()
        with anyio.fail_after(5):
            await sink.wait_for(3)
    assert engine.stats.admission_defaults == 1


async def test_shutdown_sends_default_for_every_pending_call() -> None:
    """Leaving the engine with undecided calls sends each its default decision, once."""
    bot = make_bot(Settings(platform_timeout=15, safety_margin=3, drain_timeout=0.2))

    @bot.incoming_call
    async def hangs(call: IncomingCall) -> Answer:
        await anyio.sleep_forever()
        return Answer()  # pragma: no cover

    async with running(bot) as (engine, sink):
        engine.submit([incoming(f"p{i}") for i in range(5)])
    assert sorted(sink.by_call()) == [f"p{i}" for i in range(5)]
    assert all(d == [Reject()] for d in sink.by_call().values())


async def test_drain_lets_pending_handlers_finish() -> None:
    """At shutdown, handlers still inside their deadline may decide (within DRAIN_TIMEOUT)."""
    bot = make_bot(Settings(platform_timeout=15, safety_margin=3, drain_timeout=5))
    entered = anyio.Event()

    @bot.incoming_call
    async def slow(call: IncomingCall) -> Answer:
        entered.set()
        await anyio.sleep(0.1)
        return Answer()

    async with running(bot) as (engine, sink):
        engine.submit([incoming("c")])
        with anyio.fail_after(5):
            await entered.wait()
    assert sink.by_call() == {"c": [Answer()]}


async def test_middleware_wraps_handlers_outermost_first() -> None:
    """Bot middleware wraps router middleware, which wraps the router's handlers."""
    bot = make_bot()
    router = Router("calls")
    order: list[str] = []

    @bot.middleware
    async def outer(event: Any, call_next: Callable[[Any], Any]) -> Any:
        order.append("outer")
        return await call_next(event)

    @router.middleware
    async def inner(event: Any, call_next: Callable[[Any], Any]) -> Any:
        order.append("inner")
        result = await call_next(event)
        order.append(f"inner saw {type(result).__name__}")
        return result

    @router.incoming_call
    async def decide(call: IncomingCall) -> Answer:
        order.append("handler")
        return Answer()

    bot.include_router(router)
    async with running(bot) as (engine, sink):
        engine.submit([incoming("c")])
        with anyio.fail_after(5):
            await sink.wait_for(1)
    assert order == ["outer", "inner", "handler", "inner saw Answer"]


async def test_submit_outside_running_engine_raises() -> None:
    """Submitting to an engine that is not running says how to start it."""
    engine = make_bot().engine(RecordingSink())
    with pytest.raises(RuntimeError, match="not running"):
        engine.submit([incoming("c")])


BEHAVIOURS = st.sampled_from(["answer", "none", "raise", "hang", "block", "spin", "late"])


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@pytest.mark.slow
@given(plan=st.lists(st.tuples(BEHAVIOURS, st.floats(0, 0.05)), min_size=1, max_size=6))
def test_every_call_gets_exactly_one_decision_on_time(plan: list[tuple[str, float]]) -> None:
    """Whatever handlers do (decide, pass, raise, hang, block or spin the loop, decide after
    the deadline), each call gets exactly one decision, never later than its deadline."""
    bot = make_bot(Settings(platform_timeout=15, safety_margin=3))
    behaviour = {f"c{i}": b for i, b in enumerate(plan)}
    waiting = {cid for cid, (kind, _) in behaviour.items() if kind not in ("hang", "late")}
    late = {cid for cid, (kind, _) in behaviour.items() if kind == "late"}

    async def scenario() -> tuple[RecordingSink, float, int]:
        clock = ManualClock()
        sink = RecordingSink(clock)
        returned, all_started = anyio.Event(), anyio.Event()
        started: set[str] = set()
        finished: set[str] = set()

        @bot.incoming_call
        async def chaos(call: IncomingCall) -> Answer | None:
            kind, delay = behaviour[call.call_id]
            started.add(call.call_id)
            if len(started) == len(behaviour):
                all_started.set()
            try:
                if kind == "answer":
                    await anyio.sleep(delay)
                    return Answer()
                if kind == "none":
                    return None
                if kind == "raise":
                    raise ValueError("boom")
                if kind == "hang":
                    await anyio.sleep_forever()
                if kind == "block":
                    time.sleep(delay)  # noqa: ASYNC251 - blocking the loop is the point
                    return Answer()
                if kind == "spin":
                    end = time.monotonic() + delay
                    while time.monotonic() < end:
                        pass
                    return Answer()
                # late: still deciding when the deadline cancels it, answers anyway
                with contextlib.suppress(BaseException):
                    await anyio.sleep_forever()
                return Answer()
            finally:
                finished.add(call.call_id)
                if waiting | late <= finished:
                    returned.set()

        async with bot.engine(sink, clock=clock).running() as engine:
            received = clock.now()
            engine.submit([incoming(cid) for cid in behaviour])
            with anyio.fail_after(10):
                await all_started.wait()
                if waiting:
                    await sink.wait_for(len(waiting))  # the prompt ones have decided
                clock.advance(12.0)  # the deadline: the rest get the default
                await sink.wait_for(len(behaviour))
                if late:
                    await returned.wait()
            late_count = engine.stats.late_decisions
        return sink, received, late_count

    sink, received, late_count = anyio.run(scenario)
    by_call = sink.by_call()
    assert sorted(by_call) == sorted(behaviour)
    assert all(len(d) == 1 for d in by_call.values())
    for call, decision, at in sink.decisions:
        assert at <= received + 12.0
        if behaviour[call.call_id][0] in ("hang", "late", "none", "raise"):
            assert decision == Reject()
    assert late_count == len(late)


async def test_calls_beyond_a_full_deadline_wave_get_the_default_at_once() -> None:
    """At most DEADLINE_SEND_RATE x SAFETY_MARGIN undecided calls may fall due within one
    safety margin (what the outbox can still send in time); the next call gets the default
    at once, and a call decided early frees its place."""
    bot = make_bot(Settings(platform_timeout=15, safety_margin=3, deadline_send_rate=1))
    gates: dict[str, anyio.Event] = {}

    @bot.incoming_call
    async def waits(call: IncomingCall) -> Answer:
        await gates.setdefault(call.call_id, anyio.Event()).wait()
        return Answer()

    async with running(bot, clock=ManualClock()) as (engine, sink):
        engine.submit([incoming(f"held-{i}") for i in range(3)] + [incoming("over")])
        with anyio.fail_after(5):
            await sink.wait_for(1)
        assert sink.by_call() == {"over": [Reject()]}
        assert engine.pending == 3
        assert engine.stats.wave_defaults == engine.stats.admission_defaults == 1

        gates.setdefault("held-0", anyio.Event()).set()
        with anyio.fail_after(5):
            await sink.wait_for(2)
        engine.submit([incoming("next")])  # held-0 left the wave: room for one more
        await engine.settle()
        assert engine.pending == 3
        assert engine.stats.wave_defaults == 1
        for cid in ("held-1", "held-2", "next"):
            gates.setdefault(cid, anyio.Event()).set()
        with anyio.fail_after(5):
            await sink.wait_for(5)
    got = sink.by_call()
    assert all(got[cid] == [Answer()] for cid in ("held-0", "held-1", "held-2", "next"))


@pytest.mark.slow
async def test_engine_is_overloaded_while_decisions_wait_to_be_sent() -> None:
    """Once MAX_SEND_BACKLOG decisions wait on Graph the engine says so (the webhook then
    refuses new calls); it stops saying so when they are sent."""
    bot = make_bot(Settings(platform_timeout=15, safety_margin=3, max_send_backlog=2))

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer()

    gate = anyio.Event()
    entered = 0
    both_in = anyio.Event()
    sent = 0
    both_sent = anyio.Event()

    class GatedSink(RecordingSink):
        async def deliver(self, call: IncomingCall, decision: Any, deadline: float) -> None:
            nonlocal entered
            entered += 1
            if entered == 2:
                both_in.set()
            await gate.wait()
            await super().deliver(call, decision, deadline)

    def decided(slot: Any, error: BaseException | None) -> None:
        nonlocal sent
        sent += 1
        if sent == 2:
            both_sent.set()

    sink = GatedSink()
    async with bot.engine(sink, on_decided=decided).running() as engine:
        engine.submit([incoming("a")])
        assert not engine.overloaded
        engine.submit([incoming("b")])
        with anyio.fail_after(5):
            await both_in.wait()
        assert engine.overloaded
        gate.set()
        with anyio.fail_after(5):
            await both_sent.wait()
        assert not engine.overloaded
    assert sink.by_call() == {"a": [Answer()], "b": [Answer()]}


async def test_calls_waiting_among_many_keep_their_body_compressed_and_raw_intact() -> None:
    """Past COMPACT_ABOVE pending calls a new call keeps its body text compressed; its
    ``raw`` still reads the whole notification item."""
    from callflow._parse import LazyItem, parse_notifications
    from callflow.testing._payloads import incoming_call

    bot = make_bot(Settings(platform_timeout=15, safety_margin=3))
    gate = anyio.Event()
    seen: dict[str, Any] = {}

    @bot.incoming_call
    async def waits(call: IncomingCall) -> Answer:
        await gate.wait()
        seen[call.call_id] = dict(call.raw)
        return Answer()

    bodies = {
        cid: incoming_call(
            kind="p2p",
            call_id=cid,
            tenant_id="t",
            bot_app_id="app",
            callback_uri="https://b.example",
        )
        for cid in ("first", "second")
    }
    calls = {cid: parse_notifications(json.dumps(b).encode())[0] for cid, b in bodies.items()}
    async with running(bot, compact_above=1) as (engine, sink):
        engine.submit([calls["first"]])
        engine.submit([calls["second"]])
        await engine.settle()
        first_raw, second_raw = calls["first"].raw, calls["second"].raw
        assert type(first_raw) is LazyItem and type(second_raw) is LazyItem
        assert isinstance(first_raw._source, str)  # alone: kept as it came
        assert isinstance(second_raw._source, bytes)  # behind one pending call: compressed
        gate.set()
        with anyio.fail_after(5):
            await sink.wait_for(2)
    assert seen == {cid: body["value"][0] for cid, body in bodies.items()}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(
            st.floats(0.0, 0.5),  # time passing before the step
            st.sampled_from([12.0, 2.0]),  # held until: a call's or a recording's deadline
            st.booleans(),  # whether an earlier held call is decided now
        ),
        max_size=120,
    )
)
def test_deadline_wave_counts_match_a_recount(steps: list[tuple[float, float, bool]]) -> None:
    """Whatever the order of arrivals and early decisions, a call joins the wave exactly
    when fewer than the limit of still-undecided calls fall due within one margin of it."""
    admission = Admission(Limits(safety_margin=3.0, deadline_send_rate=2.0))
    width = admission._wave_width
    held: list[float] = []
    now = 1000.0
    for pause, hold, decide in steps:
        now += pause
        if decide and held:
            admission.leave(held.pop(0))
        deadline = now + hold
        last = int(deadline / width)
        first = max(last - 7, int(now / width))
        due = sum(1 for d in held if first <= int(d / width) <= last)
        cause = admission.judge(draining=False, pending=0, lag=0.0, deadline=deadline, now=now)
        joined = cause is None
        assert joined == (due < 6)  # the limit: 2 defaults a second x a 3 s margin
        if joined:
            held.append(deadline)


async def test_handler_swallowing_the_deadline_cancel_leaves_the_lane_working() -> None:
    """A handler that catches the deadline's cancellation and answers anyway is late (counted,
    not sent); the call's lane still runs the events queued behind it."""
    bot = make_bot()
    caught = anyio.Event()
    seen: list[str] = []
    observed = anyio.Event()

    @bot.incoming_call
    async def stubborn(call: IncomingCall) -> Answer:
        try:
            await anyio.sleep_forever()
        except BaseException:
            caught.set()
        # Still able to await: the cancellation was taken back.
        await anyio.lowlevel.checkpoint()
        return Answer()

    @bot.on(CallStateChanged)
    async def state(event: CallStateChanged) -> None:
        await anyio.lowlevel.checkpoint()  # an await in the lane after the stopped handler
        seen.append(event.state)
        observed.set()

    async with running(bot) as (engine, sink):
        engine.submit([incoming("c")])
        engine.submit([CallStateChanged("c", "terminating", None)])
        with anyio.fail_after(5):
            await caught.wait()
            await observed.wait()
            await sink.wait_for(1)
    assert sink.by_call() == {"c": [Reject()]}
    assert engine.stats.late_decisions == 1
    assert seen == ["terminating"]


async def test_shutdown_still_cancels_a_lane_whose_handlers_were_stopped() -> None:
    """Taking back the deadline's cancellation does not swallow the shutdown's: a handler
    that swallows the first and waits again is cancelled when the engine stops."""
    bot = make_bot()
    waits: list[str] = []

    @bot.incoming_call
    async def waits_twice(call: IncomingCall) -> Answer:
        try:
            await anyio.sleep_forever()
        except BaseException:
            waits.append("deadline")
        try:
            await anyio.sleep_forever()
        finally:
            waits.append("shutdown")
        return Answer()  # pragma: no cover

    with anyio.fail_after(5):
        async with running(bot, drain_timeout=0) as (engine, sink):
            engine.submit([incoming("c")])
            await sink.wait_for(1)  # the deadline's default went out
    assert waits == ["deadline", "shutdown"]
    assert sink.by_call() == {"c": [Reject()]}
    assert engine.stats.handler_errors == 0


async def test_wait_for_room_gives_up_after_its_time_and_wakes_when_a_decision_is_sent() -> None:
    """A notification waiting for room in the send backlog gets it as soon as a decision has
    been sent; when none is sent within its wait it is told to give up (the webhook's 503)."""
    bot = make_bot(Settings(platform_timeout=15, safety_margin=3, max_send_backlog=1))

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer()

    gate = anyio.Event()
    entered = anyio.Event()

    class GatedSink(RecordingSink):
        async def deliver(self, call: IncomingCall, decision: Any, deadline: float) -> None:
            entered.set()
            await gate.wait()
            await super().deliver(call, decision, deadline)

    async with bot.engine(GatedSink()).running() as engine:
        assert await engine.wait_for_room(0)  # room: at once, whatever the wait
        engine.submit([incoming("a")])
        with anyio.fail_after(5):
            await entered.wait()
        assert engine.overloaded
        assert not await engine.wait_for_room(0)
        assert not await engine.wait_for_room(0.05)  # nobody sent anything meanwhile
        got: list[bool] = []
        async with anyio.create_task_group() as tg:

            async def wait() -> None:
                got.append(await engine.wait_for_room(10))

            tg.start_soon(wait)
            await anyio.wait_all_tasks_blocked()  # the waiter waits, the send hangs
            assert got == []
            gate.set()
        assert got == [True]
        assert not engine.overloaded


async def test_events_nobody_observes_do_not_wake_the_app_loop() -> None:
    """State updates of a bot with no observer for them stay on the I/O loop: nothing is
    handed to the app loop for them."""
    bot = make_bot()

    @bot.on(CallTerminated)
    async def ended(event: CallTerminated) -> None:
        pass

    async with running(bot) as (engine, _):
        engine.calls.hold("c", None)
        engine.submit([CallStateChanged("c", "establishing", 1)])
        engine.submit([CallStateChanged("c", "established", 2)])
        await engine.settle()
        assert engine._to_app is not None
        assert engine._to_app.wakeups == 0
        engine.submit([CallTerminated("c", None)])
        await engine.settle()
        assert engine._to_app.wakeups == 1  # the observed one crossed


async def test_a_slow_observer_holds_a_bounded_queue_and_the_call_is_still_decided() -> None:
    """Behind an observer that waits, a call's lane holds at most MAX_QUEUED_PER_CALL events:
    of 10,000 key presses the oldest are dropped and counted (never the incoming call queued
    among them); once the observer resumes, the newest are observed in order and the
    handler's answer goes out."""
    bot = make_bot(Settings(platform_timeout=15, safety_margin=3))
    bound = 256
    gate, waiting, last = anyio.Event(), anyio.Event(), anyio.Event()
    seen: list[int] = []

    @bot.on(ToneReceived)
    async def slow(event: ToneReceived) -> None:
        if event.sequence_id == 0:
            waiting.set()
            await gate.wait()
        seen.append(event.sequence_id)
        if event.sequence_id == 10_000:
            last.set()

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer()

    async with running(bot, max_queued_per_call=bound) as (engine, sink):
        engine.calls.hold("c", None)  # known already (its notifications came out of order)
        engine.submit([ToneReceived("c", 0, "1")])
        with anyio.fail_after(5):
            await waiting.wait()
        engine.submit([ToneReceived("c", n, "1") for n in range(1, 5_001)])
        engine.submit([incoming("c")])
        engine.submit([ToneReceived("c", n, "1") for n in range(5_001, 10_001)])
        with anyio.fail_after(5):
            await engine.settle()  # the I/O loop took them all ...
            crossed = anyio.Event()
            engine.post_app(crossed.set)
            await crossed.wait()  # ... and they all reached the lane
        assert engine.lanes.queued("c") == bound
        gate.set()
        with anyio.fail_after(5):
            await last.wait()
            await sink.wait_for(1)
        dropped = engine.stats.dropped
    assert sink.by_call() == {"c": [Answer()]}
    assert seen[0] == 0
    assert seen[1:] == list(range(10_001 - len(seen[1:]), 10_001))  # the newest, in order
    assert len(seen) - 1 <= bound
    assert dropped["lane_full"] + dropped["inbox_full"] + len(seen) - 1 == 10_000
    assert dropped["lane_full"] > 0


async def test_a_blocked_app_loop_keeps_a_bounded_inbox_and_drops_only_observer_events() -> None:
    """While a handler blocks the app loop, 20,000 key presses (for 100 calls) arrive with
    five new calls among them: the app loop's inbox keeps at most MAX_QUEUED_EVENTS of them
    and drops the oldest, counted in callflow_events_dropped_total{reason="inbox_full"} and
    logged at most once a second. The new calls' handlers still run and decide; the deadline
    stop of a call that fell due meanwhile still cancels its handler."""
    # The recording call falls due 0.3 s after it arrives, the others 14.3 s; a flooded I/O
    # loop running late must not default the new calls at intake (SHED_LAG).
    bot = make_bot(
        Settings(platform_timeout=15, recording_timeout=1.0, safety_margin=0.7, shed_lag=30.0)
    )
    bound = 1_000
    sink = RecordingSink()
    started, cancelled, observed = anyio.Event(), anyio.Event(), anyio.Event()
    taken = threading.Event()
    seen: list[int] = []
    waiting: list[int] = []
    engines: list[Engine] = []

    @bot.on(ToneReceived)
    async def tone(event: ToneReceived) -> None:
        seen.append(event.sequence_id)
        if len(seen) == bound:
            observed.set()

    @bot.incoming_call(where=lambda call: call.is_policy_recording)
    async def hangs(call: IncomingCall) -> Answer:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        return Answer()  # pragma: no cover

    def flood(engine: Engine) -> None:
        sequence = itertools.count(1)
        for n in range(100):
            engine.calls.hold(f"t{n}", None)  # calls the bot holds
        for batch in range(200):
            events: list[Any] = [ToneReceived(f"t{n}", next(sequence), "1") for n in range(100)]
            if batch % 40 == 20:
                events.append(incoming(f"m{batch // 40}"))
            engine.submit(events)
        engine._post_io(taken.set)  # behind every submit: the I/O loop has taken them all

    @bot.incoming_call
    async def blocks(call: IncomingCall) -> Answer:
        if call.call_id == "blocker":
            engine = engines[0]
            assert sink.arrived.wait(5.0)  # the recording call fell due meanwhile
            thread = threading.Thread(target=flood, args=(engine,))
            thread.start()
            assert taken.wait(10.0)
            thread.join()
            assert engine._to_app is not None
            waiting.append(len(engine._to_app))
        return Answer()

    with structlog.testing.capture_logs() as logs:
        async with bot.engine(sink, max_queued_events=bound).running() as engine:
            engines.append(engine)
            metrics = Metrics()
            metrics.attach(engine)
            engine.submit([incoming("hang", recording=True)])
            with anyio.fail_after(5):
                await started.wait()
            begun = time.monotonic()
            engine.submit([incoming("blocker")])
            with anyio.fail_after(20):
                await cancelled.wait()
                await sink.wait_for(7)
                await observed.wait()
                await engine.settle()
            elapsed = time.monotonic() - begun
            text = metrics.render().decode()
    assert waiting[0] <= bound + 10  # the five calls' hand-overs and a stop may be in it too
    assert sorted(seen) == list(range(20_001 - bound, 20_001))  # the newest were kept
    assert engine.stats.dropped["inbox_full"] == 20_000 - bound
    assert f'callflow_events_dropped_total{{reason="inbox_full"}} {20_000 - bound}.0' in text
    decided = sink.by_call()
    assert decided["hang"] == [Reject()]  # the default, at its deadline
    assert decided["blocker"] == [Answer()]
    assert [decided[f"m{n}"] for n in range(5)] == [[Answer()]] * 5
    lines = [e for e in logs if e["event"] == "events.dropped"]
    assert lines and all(e["reason"] == "inbox_full" for e in lines)
    assert sum(e["dropped"] for e in lines) <= 20_000 - bound
    assert len(lines) <= 2 + elapsed


@pytest.mark.parametrize("name", ["max_queued_per_call", "max_queued_events"])
def test_queue_bounds_below_one_are_refused(name: str) -> None:
    """A queue bound must let at least one event wait."""
    with pytest.raises(ValueError, match=f"{name} must be 1 or more, got 0"):
        Limits(**{name: 0})


def test_the_dedupe_memory_forgets_after_its_ttl_and_holds_at_most_its_size() -> None:
    """A key seen within the TTL is a repeat, after it is new again; the memory never holds
    more keys than its size and always remembers at least the last half of them."""
    recent = Recent(maxlen=100, ttl=10.0)
    assert recent.first("a", 0.0)
    assert not recent.first("a", 5.0)
    assert recent.first("a", 20.0)  # past the TTL: new again
    for index in range(1_000):
        assert recent.first(f"k{index}", 30.0)
        assert len(recent) <= 100
    assert all(not recent.first(f"k{index}", 31.0) for index in range(950, 1_000))
