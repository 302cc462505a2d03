"""Strict mode: a failure of the bot's own code fails the test that served it, by name."""

from __future__ import annotations

from typing import Any

import pytest

from callflow import Answer, Bot, Call, CallStateChanged, IncomingCall, Reject
from callflow.testing import BotCodeError, FakeGraph, SigningKey

pytestmark = pytest.mark.anyio


def broken_bot() -> Bot[Any]:
    bot: Bot[Any] = Bot()

    @bot.incoming_call
    async def says_answer(call: IncomingCall) -> Any:
        return "answer"  # a str, not a decision

    @bot.incoming_call(priority=-1)
    async def decides(call: IncomingCall) -> Answer:
        return Answer()

    @bot.on(CallStateChanged)
    async def crashes(event: CallStateChanged) -> None:
        raise RuntimeError("observer bug")

    return bot


async def test_strict_fake_raises_naming_each_failure_and_its_call(
    callflow_signing_key: SigningKey,
) -> None:
    async with FakeGraph(signing_key=callflow_signing_key, strict=True) as fake:
        with pytest.raises(BotCodeError) as raised:  # noqa: PT012 - raised as the block ends
            async with fake.serve(broken_bot()) as running:
                call = await fake.place_call(running.webhook_url)
                assert (await call.decision()).op == "answer"
                await fake.wait_failures(2)
        message = str(raised.value)
        assert f"handler 'says_answer' (call {call.call_id}): TypeError" in message
        assert "returned 'answer'" in message
        assert f"observer 'crashes' (call {call.call_id}): RuntimeError: observer bug" in message
        assert "callflow_lenient" in message  # says how to allow it on purpose
        assert isinstance(raised.value.__cause__, TypeError)
        assert [f.what for f in raised.value.failures] == ["handler", "observer"]


async def test_failures_are_kept_but_not_raised_when_not_strict(
    callflow_signing_key: SigningKey,
) -> None:
    async with FakeGraph(signing_key=callflow_signing_key) as fake:
        async with fake.serve(broken_bot()) as running:
            call = await fake.place_call(running.webhook_url)
            await call.decision()
            await fake.wait_failures(2)
        assert [(f.what, f.name, f.call_id) for f in fake.failures] == [
            ("handler", "says_answer", call.call_id),
            ("observer", "crashes", call.call_id),
        ]
        with pytest.raises(BotCodeError, match="says_answer"):
            fake.check_failures()
        fake.check_failures()  # each failure is raised once


async def test_a_failing_flow_fails_strict_and_an_exception_in_the_block_gets_a_note(
    callflow_signing_key: SigningKey,
) -> None:
    bot: Bot[Any] = Bot()

    async def flow(call: Call) -> None:
        raise KeyError("no such patient")

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer(then=flow)

    async with FakeGraph(signing_key=callflow_signing_key, strict=True) as fake:
        with pytest.raises(ZeroDivisionError) as raised:  # noqa: PT012 - the block's own
            async with fake.serve(bot) as running:
                call = await fake.place_call(running.webhook_url)
                await call.wait_requests(op="delete")  # the failed flow's call is hung up
                raise ZeroDivisionError  # the test's own failure
        notes = "\n".join(raised.value.__notes__)
        assert f"flow 'flow' (call {call.call_id}): KeyError: 'no such patient'" in notes


async def test_middleware_and_error_hook_failures_are_named(
    callflow_signing_key: SigningKey,
) -> None:
    bot: Bot[Any] = Bot()

    @bot.middleware
    async def tracing(event: Any, call_next: Any) -> Any:
        raise ValueError("middleware bug")

    @bot.on_error
    async def report(exc: BaseException, event: Any) -> None:
        raise OSError("error hook bug")

    @bot.incoming_call
    async def reject(call: IncomingCall) -> Reject:
        return Reject()

    async with FakeGraph(signing_key=callflow_signing_key) as fake:
        with pytest.raises(BotCodeError) as raised:
            async with fake.serve(bot, strict=True) as running:
                await (await fake.place_call(running.webhook_url)).decision()
        call_id = fake.calls[0].call_id
        assert [str(f) for f in raised.value.failures] == [
            f"handler 'reject' (call {call_id}): ValueError: middleware bug",
            f"error hook 'report' (call {call_id}): OSError: error hook bug",
        ]
