"""call.remember and CallAdopted, served in-process: two fleet bots on a real redis-server
behind the round-robin proxy, FakeGraph as Graph; and a lone bot's memos."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from callflow import (
    ActionError,
    Answer,
    Bot,
    Call,
    CallAdopted,
    CallContext,
    CallEndedError,
    CallStateChanged,
    IncomingCall,
    MediaPrompt,
    OperationFinished,
)
from callflow.bot import RunningBot
from callflow.testing import FakeGraph, SigningKey
from tests.fleet_proxy import FleetProxy
from tests.redis_server import RedisServer, redis_server

GUARD = 15.0
SECRET = "adopted-flows-secret-0123456789abcdef"
PROMPT = MediaPrompt("https://cdn.example.com/sorry.wav")

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    yield from redis_server()


@pytest.fixture
async def fake(callflow_signing_key: SigningKey) -> AsyncIterator[FakeGraph]:
    async with FakeGraph(signing_key=callflow_signing_key) as fake:
        yield fake


class Notes:
    """What the bots saw, waitable."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []
        self._changed = anyio.Event()

    def add(self, name: str, value: Any = None) -> None:
        self.items.append((name, value))
        self._changed.set()
        self._changed = anyio.Event()

    def of(self, name: str) -> list[Any]:
        return [value for key, value in self.items if key == name]

    async def wait(self, name: str, count: int = 1) -> list[Any]:
        with anyio.fail_after(GUARD):
            while len(found := self.of(name)) < count:
                await self._changed.wait()
        return found


def durable_bot(notes: Notes, *, fail: bool = False) -> Bot:
    """Answers with a flow that remembers its step and waits for a key; its CallAdopted
    observer plays a prompt, then waits for a key (or raises, with ``fail``)."""
    bot = Bot()

    async def menu(call: Call) -> None:
        await call.remember({"step": "pin", "attempts": 1})
        notes.add("remembered", call.call_id)
        await call.collect_digits(1, timeout=120.0, inter_digit_timeout=120.0)

    @bot.incoming_call
    async def decide(call: IncomingCall) -> Answer:
        return Answer(then=menu)

    @bot.on(CallAdopted)
    async def resume(event: CallAdopted, ctx: CallContext) -> None:
        notes.add("adopted", event)
        if fail:
            raise RuntimeError("the resume step is broken")
        await ctx.call.play(PROMPT)
        notes.add("played", event.call_id)
        notes.add("digits", await ctx.call.collect_digits(1, timeout=60.0))

    @bot.on(CallStateChanged)
    async def state(event: CallStateChanged) -> None:
        notes.add("state", (event.call_id, event.state))

    return bot


def fleet_options(redis: RedisServer, name: str) -> dict[str, Any]:
    return {
        "store": redis.url,
        "instance_id": name,
        "heartbeat_interval": 0.1,
        "drain_timeout": 0.5,
        "fleet_secret": SECRET,
    }


@contextlib.asynccontextmanager
async def two_bots(
    fake: FakeGraph, redis: RedisServer, notes: Notes, fail: bool = False
) -> AsyncIterator[tuple[dict[str, RunningBot], dict[str, contextlib.AsyncExitStack], str]]:
    """Bots ``a`` and ``b`` behind a proxy; each in an exit stack of its own (close it to
    stop that bot)."""
    stacks = {name: contextlib.AsyncExitStack() for name in ("a", "b")}
    bots: dict[str, RunningBot] = {}
    try:
        for name, stack in stacks.items():
            bots[name] = await stack.enter_async_context(
                fake.serve(durable_bot(notes, fail=fail), **fleet_options(redis, name))
            )
        async with FleetProxy([bots["a"].url, bots["b"].url]) as proxy:
            yield bots, stacks, proxy.url + "/api/calls"
    finally:
        for stack in reversed(stacks.values()):
            await stack.aclose()


async def test_a_handed_off_call_carries_on_on_the_adopter_with_its_memo(
    fake: FakeGraph, redis: RedisServer
) -> None:
    """The owner stops gracefully: the other bot adopts the call at once (handed_off) with
    the last memo; its observer, running as a flow, plays a prompt and gets the caller's
    key, while the call's state updates still reach their observer."""
    notes = Notes()
    async with two_bots(fake, redis, notes) as (bots, stacks, url):
        call = await fake.place_call(url)
        answer = await call.decision()
        owner = answer.body["callbackUri"].rsplit("instance=", 1)[1]
        other = "b" if owner == "a" else "a"
        await notes.wait("remembered")
        await stacks[owner].aclose()  # SIGTERM's graceful stop: drain, hand off, exit
        (event,) = await notes.wait("adopted")
        assert event == CallAdopted(
            call.call_id,
            fake.tenant_id,
            memo={"step": "pin", "attempts": 1},
            previous_owner=owner,
            reason="handed_off",
            lost_for=event.lost_for,
        )
        assert event.lost_for is not None and 0 <= event.lost_for < GUARD
        await notes.wait("played")
        assert [
            r.body["prompts"][0]["mediaInfo"]["uri"] for r in call.requests if r.op == "playPrompt"
        ] == [PROMPT.uri]
        await fake.send_states(url + f"?instance={owner}", call.call_id, ["hold"], etags=[50])
        assert (call.call_id, "hold") in await notes.wait("state", 2)  # not held up by the flow
        await call.wait_requests(2, op="subscribeToTone", timeout=GUARD)  # the adopter's too
        await call.press("3")
        assert await notes.wait("digits") == ["3"]
        assert bots[other].calls()[0].call_id == call.call_id


async def test_an_adopted_observer_that_raises_hangs_its_call_up(
    fake: FakeGraph, redis: RedisServer
) -> None:
    """A CallAdopted observer fails like a flow: reported, then its call is hung up."""
    notes = Notes()
    async with two_bots(fake, redis, notes, fail=True) as (_, stacks, url):
        call = await fake.place_call(url)
        answer = await call.decision()
        owner = answer.body["callbackUri"].rsplit("instance=", 1)[1]
        await notes.wait("remembered")
        await stacks[owner].aclose()
        await notes.wait("adopted")
        (hang_up,) = await call.wait_requests(1, op="delete", timeout=GUARD)
        assert hang_up.accepted


async def test_remember_takes_small_json_objects_only_and_nothing_once_the_call_ended(
    fake: FakeGraph,
) -> None:
    """A lone bot keeps memos in the process: anything but a JSON object of at most 4 KiB
    raises ActionError before anything is kept, and an ended call raises CallEndedError."""
    outcomes: list[str] = []
    done = anyio.Event()
    bot = Bot()

    async def flow(call: Call) -> None:
        for bad in (["a list"], {"when": object()}, {"big": "x" * 5000}, {1: "int key"}, "s"):
            try:
                await call.remember(bad)  # type: ignore[arg-type]
            except ActionError as exc:
                outcomes.append(f"refused: {exc}")
        await call.remember({"step": "pin", "digits": [1, 2], "ok": True, "n": None})
        outcomes.append("kept")
        await call.hang_up()
        try:
            await call.remember({"step": "after"})
        except CallEndedError:
            outcomes.append("ended")
        done.set()

    @bot.incoming_call
    async def decide(call: IncomingCall) -> Answer:
        return Answer(then=flow)

    async with fake.serve(bot) as running:
        await fake.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            await done.wait()
    refused = [o for o in outcomes if o.startswith("refused")]
    assert len(refused) == 4, outcomes  # {1: ...} is a mapping json turns into {"1": ...}
    assert any("4096 bytes" in o for o in refused)
    assert any("mapping" in o for o in refused)
    assert outcomes[-2:] == ["kept", "ended"]


async def test_an_operation_in_flight_on_the_old_owner_reports_to_the_adopters_observers(
    fake: FakeGraph, redis: RedisServer
) -> None:
    """The owner stops while its flow's prompt is playing: the prompt is not resumed, and
    its result, which still names the old owner, reaches the adopter's OperationFinished
    observers."""
    notes = Notes()
    bots: list[Bot] = []
    for _ in range(2):
        bot = Bot()

        async def long_prompt(call: Call) -> None:
            notes.add("playing", call.call_id)
            await call.play(PROMPT, timeout=60.0)

        @bot.incoming_call
        async def decide(call: IncomingCall) -> Answer:
            return Answer(then=long_prompt)

        @bot.on(CallAdopted)
        async def adopted(event: CallAdopted) -> None:
            notes.add("adopted", event.call_id)

        @bot.on(OperationFinished)
        async def finished(event: OperationFinished) -> None:
            notes.add("finished", (event.call_id, event.kind))

        bots.append(bot)
    fake.plan_operation("playPrompt", duration=1.5)
    stacks = {name: contextlib.AsyncExitStack() for name in ("a", "b")}
    try:
        served = {
            name: await stacks[name].enter_async_context(
                fake.serve(bot, **fleet_options(redis, name))
            )
            for name, bot in zip(stacks, bots, strict=True)
        }
        async with FleetProxy([served["a"].url, served["b"].url]) as proxy:
            call = await fake.place_call(proxy.url + "/api/calls")
            answer = await call.decision()
            owner = answer.body["callbackUri"].rsplit("instance=", 1)[1]
            await notes.wait("playing")
            await call.wait_requests(1, op="playPrompt", timeout=GUARD)
            await stacks[owner].aclose()
            await notes.wait("adopted")
            (done,) = await notes.wait("finished")
            assert done == (call.call_id, "playPrompt")
    finally:
        for stack in stacks.values():
            await stack.aclose()
