"""A bot's own services reach its handlers and flows, and a test hands in fakes."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime, time
from typing import Any

import pytest

from callflow import Answer, Bot, Call, CallContext, IncomingCall, MediaPrompt, Reject
from callflow.bot import RunningBot
from callflow.testing import FakeGraph

pytestmark = pytest.mark.anyio

ServeBot = Callable[..., AbstractAsyncContextManager[RunningBot]]


class Clinic:
    """What the office's bot needs: the time (opening hours) and where messages go."""

    def __init__(self, now: Callable[[], datetime]) -> None:
        self.now = now
        self.greeted: list[str] = []

    def is_open(self) -> bool:
        return time(8) <= self.now().time() < time(17)


def dentist() -> Bot[Clinic]:
    bot = Bot(services=Clinic(datetime.now))  # production: the wall clock

    async def greet(call: Call) -> None:
        clinic: Clinic = call.services
        clinic.greeted.append(call.call_id)
        await call.play(MediaPrompt("https://cdn.example.com/welcome.wav", "welcome"))
        await call.hang_up()

    @bot.incoming_call
    async def hours(call: IncomingCall, ctx: CallContext[Clinic]) -> Answer | Reject:
        if ctx.services.is_open():
            return Answer(then=greet)
        return Reject()

    return bot


@pytest.mark.parametrize(
    ("hour", "decided"), [(9, "answer"), (16, "answer"), (17, "reject"), (7, "reject")]
)
async def test_a_fake_clock_decides_the_opening_hours(
    fake_graph: FakeGraph, serve_bot: ServeBot, hour: int, decided: str
) -> None:
    clinic = Clinic(lambda: datetime(2025, 3, 4, hour, 30))
    async with serve_bot(dentist(), services=clinic) as running:
        call = await fake_graph.place_call(running.webhook_url, kind="phone")
        assert (await call.decision()).op == decided
        if decided == "answer":
            (prompt,) = await call.wait_requests(
                op="playPrompt", where=lambda r: r.prompt_ids == ("welcome",)
            )
            assert prompt.prompt_uris == ("https://cdn.example.com/welcome.wav",)
            await call.wait_requests(op="delete")
    assert clinic.greeted == ([call.call_id] if decided == "answer" else [])


async def test_without_an_override_the_bot_keeps_its_own_services(
    fake_graph: FakeGraph, serve_bot: ServeBot
) -> None:
    bot = dentist()
    own: Any = bot.services
    async with serve_bot(bot) as running:
        assert running.bot.services is own
