"""Answered calls are held, kept alive, listed, hung up, and forgotten when they end."""

from __future__ import annotations

import anyio
import pytest

from callflow import Answer, Bot, CallContext, CallStateChanged, IncomingCall
from callflow.testing import FakeGraph

pytestmark = pytest.mark.anyio


def answering_bot() -> Bot:
    bot = Bot()

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer()

    return bot


async def test_answered_call_is_kept_alive_until_graph_says_it_is_gone() -> None:
    """An answered call gets keepAlive at the interval; a 404 forgets it."""
    async with FakeGraph() as fake, fake.serve(answering_bot(), keepalive_interval=0.2) as running:
        call = await fake.place_call(running.webhook_url)
        await call.decision()
        with anyio.fail_after(10):
            await running.keeper.wait_until(lambda calls: len(calls) == 1)
        assert [held.call_id for held in running.calls()] == [call.call_id]
        await call.wait_requests(2, op="keepAlive")
        with anyio.fail_after(10):
            await running.keeper.wait_until(lambda calls: calls[0].keepalives >= 2)
        fake.gone(call.call_id)
        with anyio.fail_after(10):
            await running.keeper.wait_until(lambda calls: not calls)
        assert [r.status for r in call.requests if r.op == "keepAlive"][-1] == 404


async def test_terminated_call_is_forgotten() -> None:
    """When the caller hangs up, the bot stops holding the call."""
    async with FakeGraph() as fake, fake.serve(answering_bot()) as running:
        call = await fake.place_call(running.webhook_url)
        await call.decision()
        await call.wait_delivery("established")
        assert len(running.calls()) == 1
        reply = await fake.end_call(call.call_id)
        assert reply.status == 202
        with anyio.fail_after(10):
            await running.keeper.wait_until(lambda calls: not calls)


async def test_observer_can_hang_up_through_its_context() -> None:
    """ctx.hang_up() from an observer DELETEs the call in Graph and forgets it."""
    bot = answering_bot()

    @bot.on(CallStateChanged, where=lambda e: e.state == "established")
    async def leave(event: CallStateChanged, ctx: CallContext) -> None:
        await ctx.hang_up()

    async with FakeGraph() as fake, fake.serve(bot) as running:
        call = await fake.place_call(running.webhook_url)
        (delete,) = await call.wait_requests(1, op="delete")
        assert delete.status in (204, 404)
        assert running.calls() == []
