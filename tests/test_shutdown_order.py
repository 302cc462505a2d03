"""Stopping a worker: the listener closes before the engine stops, so a call that reaches the
webhook in the last moment before the socket closes is still decided (the default), never
answered 503 by a stopped engine (a balancer would have no decision to pass on)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import pytest

from callflow import Answer, Bot, IncomingCall
from callflow.testing import CallHandle, FakeGraph, SigningKey
from callflow.webhook.server import WebhookServer

pytestmark = pytest.mark.anyio

GUARD = 20.0


@pytest.fixture
async def fake(callflow_signing_key: SigningKey) -> AsyncIterator[FakeGraph]:
    async with FakeGraph(signing_key=callflow_signing_key) as fake:
        yield fake


async def test_a_call_arriving_as_the_listener_closes_gets_the_default(
    fake: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = Bot()

    @bot.incoming_call
    async def answer(event: IncomingCall) -> Answer:
        return Answer()

    test_loop = asyncio.get_running_loop()
    late: list[CallHandle] = []
    close = WebhookServer.cleanup

    async def place_then_close(self: WebhookServer) -> None:
        # On the I/O loop, just before the socket closes: ring the bot once more from the
        # test's loop and wait until the webhook has replied.
        async def ring() -> None:
            late.append(await fake.place_call(webhook_url))

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(ring(), test_loop))
        await close(self)

    monkeypatch.setattr(WebhookServer, "cleanup", place_then_close)
    with anyio.fail_after(GUARD):
        async with fake.serve(bot) as running:
            webhook_url = running.webhook_url
            first = await fake.place_call(webhook_url)
            assert (await first.decision()).op == "answer"
        (call,) = late
        assert [reply.status for reply in call.replies] == [202]
        decision = await call.decision()
    assert (decision.op, decision.body["reason"]) == ("reject", "busy")
    assert decision.accepted
