"""Call control from a serving bot: Answer(then=...), ctx.call in observers, bot.calls.

These run a real Bot against FakeGraph: the flows run on the app loop while the operations,
their result notifications and the key presses are handled on the bot's I/O loop.
"""

from __future__ import annotations

import anyio
import pytest

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
from callflow.testing import CALLBACK_URL, FakeGraph, SigningKey

pytestmark = pytest.mark.anyio

GUARD = 15.0
MENU = MediaPrompt("https://cdn.example.com/menu.wav")


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


async def test_a_flow_whose_caller_hangs_up_ends_quietly(fake_graph: FakeGraph) -> None:
    """When the caller hangs up mid-flow the awaited operation raises CallEndedError; a
    flow that lets it through is ended without counting a handler error."""
    bot = Bot()
    started, ended = anyio.Event(), anyio.Event()
    raised: list[type[BaseException]] = []

    async def wait_for_key(call: Call) -> None:
        started.set()
        try:
            await call.collect_digits(4, timeout=GUARD)
        except CallEndedError as exc:
            raised.append(type(exc))
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
        assert running.engine.lanes.flows == 0
    assert raised == [CallEndedError]
    assert running.engine.stats.handler_errors == 0


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
