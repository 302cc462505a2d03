"""Call control from a serving bot: Answer(then=...), ctx.call in observers, bot.calls.

These run a real Bot against FakeGraph: the flows run on the app loop while the operations,
their result notifications and the key presses are handled on the bot's I/O loop.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
import structlog.testing

from callflow import (
    Answer,
    Bot,
    Call,
    CallContext,
    CallEndedError,
    CallStateChanged,
    IncomingCall,
    MediaPrompt,
    Target,
    ToneReceived,
)
from callflow.events import CallEvent
from callflow.testing import CALLBACK_URL, CallHandle, FakeGraph, SigningKey
from tests.test_e2e_graph_io import LogWatcher

pytestmark = pytest.mark.anyio

GUARD = 15.0
MENU = MediaPrompt("https://cdn.example.com/menu.wav")
HELP_DESK = Target.user("0e0e0e0e-5555-4555-8555-000000000555")


@pytest.fixture
def logs() -> Iterator[LogWatcher]:
    """Every structlog event of the test, from both loops, waitable."""
    watcher = LogWatcher()
    with structlog.testing.capture_logs(processors=[watcher]):
        yield watcher


def ops(handle: CallHandle) -> list[str]:
    """The requests the bot sent for a call, in order."""
    return [request.op for request in handle.requests]


async def test_an_answer_flow_plays_collects_and_transfers(fake_graph: FakeGraph) -> None:
    """Answer(then=flow) runs the flow once the call is established: it plays the menu,
    collects the caller's choice and transfers the call; each step is one await."""
    bot = Bot()
    chosen: list[str] = []
    done = anyio.Event()

    async def menu(call: Call) -> None:
        try:
            await call.play(MENU)
            choice = await call.collect_digits(1, timeout=5.0)
            chosen.append(choice)
            if choice == "1":
                await call.transfer(Target.user("sales-desk"))
        finally:
            done.set()

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer(then=menu)

    async with fake_graph.serve(bot) as running:
        handle = await fake_graph.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            await handle.wait_requests(op="subscribeToTone")
            await handle.press("1")
            await done.wait()
    assert chosen == ["1"]
    ops = [r.op for r in handle.requests]
    assert ops.index("answer") < ops.index("playPrompt") < ops.index("transfer")
    assert handle.state == "terminated"  # handed over to the sales desk
    assert running.engine.stats.handler_errors == 0


async def test_a_flow_whose_caller_hangs_up_ends_quietly(
    fake_graph: FakeGraph, logs: LogWatcher
) -> None:
    """When the caller hangs up mid-flow the awaited operation raises CallEndedError (and
    the call shows it ended); a flow that lets it through is ended without counting a
    handler error, and without a hang-up."""
    bot = Bot()
    started, ended = anyio.Event(), anyio.Event()
    raised: list[type[BaseException]] = []
    seen: list[tuple[str | None, bool]] = []

    async def wait_for_key(call: Call) -> None:
        started.set()
        try:
            await call.collect_digits(4, timeout=GUARD)
        except CallEndedError as exc:
            raised.append(type(exc))
            seen.append((call.state, call.ended))
            ended.set()
            raise

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer(then=wait_for_key)

    async with fake_graph.serve(bot) as running:
        handle = await fake_graph.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            await started.wait()
            await handle.wait_requests(op="subscribeToTone")
            await fake_graph.end_call(handle.call_id)
            await ended.wait()
            await logs.wait_for("call.flow_ended", call_id=handle.call_id)
        assert running.engine.lanes.flows == 0
    assert raised == [CallEndedError]
    assert seen == [("terminated", True)]
    assert running.engine.stats.handler_errors == 0
    assert "delete" not in ops(handle)  # the caller hung up: nothing to hang up
    assert not logs.find("call.flow_failed")


@pytest.mark.callflow_lenient  # the flow fails on purpose
async def test_a_flow_that_raises_is_hung_up_after_the_error_hooks(
    fake_graph: FakeGraph, logs: LogWatcher
) -> None:
    """A flow that raises does not leave the caller connected in silence: the error hooks
    are told first, then the bot hangs up its leg of the call and logs what it did."""
    bot = Bot()
    placed: list[CallHandle] = []
    hooked: list[tuple[str, str | None, list[str]]] = []

    async def broken(call: Call) -> None:
        await call.play(MENU)
        raise ValueError("menu bug")

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer(then=broken)

    @bot.on_error
    async def hook(exc: BaseException, event: CallEvent) -> None:
        hooked.append((repr(exc), event.call_id, ops(placed[0])))

    async with fake_graph.serve(bot) as running:
        handle = await fake_graph.place_call(running.webhook_url)
        placed.append(handle)
        with anyio.fail_after(GUARD):
            failed = await logs.wait_for("call.flow_failed", call_id=handle.call_id)
        assert running.calls() == []
        assert running.engine.lanes.flows == 0
        assert running.engine.stats.handler_errors == 1
    assert hooked == [("ValueError('menu bug')", handle.call_id, ["answer", "playPrompt"])]
    assert ops(handle)[-1] == "delete"
    assert handle.state == "terminated"
    assert (failed["flow"], failed["action"]) == ("broken", "hung_up")
    assert "ValueError: menu bug" in failed["error"]


@pytest.mark.callflow_lenient  # the flow fails on purpose
async def test_an_error_hook_can_take_the_call_over(
    fake_graph: FakeGraph, logs: LogWatcher
) -> None:
    """An error hook that transfers the failed flow's call keeps it: once the hooks are
    done the call is over (handed to the help desk), so the bot does not hang up."""
    bot = Bot()

    async def broken(call: Call) -> None:
        raise ValueError("menu bug")

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer(then=broken)

    @bot.on_error
    async def to_the_help_desk(exc: BaseException, event: CallEvent) -> None:
        assert event.call_id is not None
        await bot.calls.get(event.call_id).transfer(HELP_DESK)

    async with fake_graph.serve(bot) as running:
        handle = await fake_graph.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            failed = await logs.wait_for("call.flow_failed", call_id=handle.call_id)
    assert (failed["flow"], failed["action"], failed["state"]) == ("broken", "none", "terminated")
    assert "transfer" in ops(handle)
    assert "delete" not in ops(handle)


@pytest.mark.callflow_lenient  # the flow fails on purpose
async def test_a_flow_failing_on_another_call_ending_still_hangs_up(
    fake_graph: FakeGraph, logs: LogWatcher
) -> None:
    """CallEndedError ends a flow quietly only when it is the flow's own call that ended: an
    agent the flow calls who never answers is a failure like any other, and the caller is
    hung up rather than left waiting."""
    bot = Bot()
    hooked: list[str] = []

    async def conference(call: Call) -> None:
        await bot.calls.create(HELP_DESK)

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer(then=conference)

    @bot.on_error
    async def hook(exc: BaseException, event: CallEvent) -> None:
        hooked.append(type(exc).__name__)

    async with fake_graph.serve(bot) as running:
        fake_graph.route(CALLBACK_URL, running.webhook_url)
        fake_graph.plan_operation("create", code=480, subcode=10076, message="No answer")
        handle = await fake_graph.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            failed = await logs.wait_for("call.flow_failed", call_id=handle.call_id)
    assert hooked == ["CallEndedError"]
    assert failed["action"] == "hung_up"
    assert ops(handle)[-1] == "delete"
    assert not logs.find("call.flow_ended")


async def test_observers_reach_the_call_and_see_each_key_once(fake_graph: FakeGraph) -> None:
    """An observer of the established state gets the call handle from its context; key
    presses reach ToneReceived observers once each, redeliveries dropped."""
    bot = Bot()
    tones: list[str] = []
    all_keys = anyio.Event()

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer()

    @bot.on(CallStateChanged, where=lambda e: e.state == "established")
    async def listen(event: CallStateChanged, ctx: CallContext) -> None:
        await ctx.call.play(MENU)

    @bot.on(ToneReceived)
    async def key(event: ToneReceived) -> None:
        tones.append(event.tone)
        if len(tones) == 3:
            all_keys.set()

    async with fake_graph.serve(bot) as running:
        handle = await fake_graph.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            await handle.wait_requests(op="playPrompt")
            await running.call(handle.call_id).subscribe_tones()  # keys are reported after it
            await handle.press("4", "2", "#", duplicates=1)
            await all_keys.wait()
        assert running.engine.stats.duplicates >= 3
    assert tones == ["4", "2", "#"]


async def test_bot_calls_create_places_an_outgoing_call_and_holds_it(
    fake_graph: FakeGraph,
) -> None:
    """bot.calls.create calls someone and returns the Call once it is established; the bot
    then holds it (keep-alive) and can hang it up."""
    bot = Bot()
    async with fake_graph.serve(bot) as running:
        fake_graph.route(CALLBACK_URL, running.webhook_url)
        with anyio.fail_after(GUARD):
            call = await bot.calls.create(Target.user("colleague"))
            assert [held.call_id for held in running.calls()] == [call.call_id]
            await call.hang_up()
        assert running.calls() == []
    with pytest.raises(RuntimeError, match="serving bot"):
        _ = bot.calls


async def test_hanging_up_through_the_call_handle_releases_the_held_call(
    callflow_signing_key: SigningKey,
) -> None:
    """call.hang_up() stops the bot holding the call at once, without waiting for Graph's
    terminated notification (here Graph sends none)."""
    bot = Bot()
    fake = FakeGraph(signing_key=callflow_signing_key, follow_up=False)
    async with fake, fake.serve(bot) as running:
        fake.route(CALLBACK_URL, running.webhook_url)
        with anyio.fail_after(GUARD):
            call = await bot.calls.create(Target.user("colleague"))
            assert [held.call_id for held in running.calls()] == [call.call_id]
            await call.hang_up()
        assert running.calls() == []
        assert "delete" in [r.op for r in fake.call(call.call_id).requests]
