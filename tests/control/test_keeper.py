"""Answered calls are held, kept alive, listed, hung up, and forgotten when they end."""

from __future__ import annotations

import itertools

import aiohttp
import anyio
import pytest
from structlog.testing import capture_logs

from callflow import Answer, Bot, CallContext, CallStateChanged, IncomingCall
from callflow.control.keeper import CallKeeper
from callflow.testing import CallHandle, FakeGraph, ManualClock, SigningKey
from tests.control_rig import running_rig

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


async def test_keepalive_falls_due_on_the_keepers_clock(callflow_signing_key: SigningKey) -> None:
    """A keeper given a manual clock stamps the calls it holds with it and sends keepAlive
    when that clock reaches the interval: a 15-minute interval passes when the clock is
    moved, not after 15 minutes."""
    clock = ManualClock()
    async with running_rig(callflow_signing_key) as rig:
        handle, _ = await rig.answered_call()
        keeper = CallKeeper(rig.graph, 900.0, clock=clock)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(keeper.run)
                keeper.answered(handle.call_id, handle.tenant_id)
                assert [held.answered_at for held in keeper.calls()] == [clock.now()]
                clock.advance(900.0)
                await keeper.wait_until(lambda calls: calls[0].keepalives == 1)
                clock.advance(900.0)
                await keeper.wait_until(lambda calls: calls[0].keepalives == 2)
                tg.cancel_scope.cancel()
    assert len(await handle.wait_requests(2, op="keepAlive")) == 2


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


@pytest.mark.slow
async def test_a_keepalive_without_an_app_token_does_not_stop_the_worker() -> None:
    """The identity provider down while a call is held (its token expired, every refresh
    failing): each keepAlive fails with a TokenError that is logged, counted and retried with
    backoff, the worker keeps serving, and keepAlive resumes once tokens come back."""
    async with (
        FakeGraph(token_lifetime=2) as fake,
        fake.serve(answering_bot(), keepalive_interval=0.3) as running,
        aiohttp.ClientSession() as http,
    ):
        call = await fake.place_call(running.webhook_url)
        await call.decision()
        fake.tokens.fail_next(10_000, 503, "temporarily_unavailable", retry_after=0)
        with capture_logs() as logs, anyio.fail_after(20):
            await running.keeper.wait_until(lambda calls: bool(calls) and calls[0].failed >= 2)
            async with http.get(running.url + "/healthz") as health:
                assert health.status == 200
            fake.tokens.stop_failing()
            await running.keeper.wait_until(lambda calls: calls[0].failed == 0)
            kept = running.calls()[0].keepalives
            await running.keeper.wait_until(lambda calls: calls[0].keepalives > kept)
        failures = running.metrics.render().decode()
    failed = [e for e in logs if e["event"] == "call.keepalive_failed"]
    assert len(failed) >= 2
    assert all(e["error"].startswith("TokenError: Could not get a Graph app token") for e in failed)
    assert all(0 < e["retry_in"] <= 0.3 for e in failed)
    assert 'callflow_background_failures_total{task="keepalive"}' in failures
    assert running.keeper.failures >= 2


@pytest.mark.slow
async def test_fifty_held_calls_each_get_a_keepalive_every_interval_while_graph_is_slow() -> None:
    """With Graph taking a second to answer each keepAlive, 50 held calls still each get one
    in every 2 s interval over three intervals: they go out concurrently (a bounded number at
    once), each an interval after the last one was sent, not one after the other."""
    interval, latency, slack = 2.0, 1.0, 0.5
    async with (
        FakeGraph() as fake,
        fake.serve(answering_bot(), keepalive_interval=interval) as running,
    ):
        placed: list[CallHandle] = []

        async def place() -> None:
            placed.append(await fake.place_call(running.webhook_url))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(place)
        with anyio.fail_after(10):
            await running.keeper.wait_until(lambda calls: len(calls) == 50)
        fake.latency = latency
        answered = {held.call_id: held.answered_at for held in running.calls()}
        with anyio.move_on_after(8 * interval):  # four each take about five intervals
            await running.keeper.wait_until(lambda calls: all(c.keepalives >= 4 for c in calls))
        failures = running.keeper.failures
    late: dict[str, list[float]] = {}
    for call in placed:
        sent = [r.at for r in call.requests if r.op == "keepAlive"]
        # the first may wait for a free slot (at most one reply's time), then one an interval
        gaps = [b - a for a, b in itertools.pairwise(sent)]
        first = sent[0] - answered[call.call_id] - interval if sent else float("inf")
        if len(sent) < 4 or first > latency + slack or max(gaps) > interval + slack:
            late[call.call_id] = [round(at - answered[call.call_id], 2) for at in sent]
    assert late == {}
    assert failures == 0
