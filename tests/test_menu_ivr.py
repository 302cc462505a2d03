"""The tutorial's IVR (examples/menu_ivr.py) against FakeGraph: the tutorial shows this file.

Each test builds its own bot with ``make_bot()`` (a bot serves once), places a call on it and
plays the caller: keys pressed, a transfer that fails. ``fake_graph`` comes from the testing
kit's pytest plugin (``pytest_plugins = ["callflow.testing.plugin"]`` in ``conftest.py``).
"""

from __future__ import annotations

# --8<-- [start:tests]
import pytest

from callflow.testing import CallHandle, FakeGraph
from examples.menu_ivr import DESKS, make_bot

pytestmark = pytest.mark.anyio  # and an `anyio_backend` fixture returning "asyncio"


def played(call: CallHandle) -> list[str]:
    """The prompts the bot asked Graph to play on ``call``, in order."""
    return [
        prompt["mediaInfo"]["resourceId"]
        for request in call.requests
        if request.op == "playPrompt"
        for prompt in request.body["prompts"]
    ]


def transferred_to(call: CallHandle) -> str:
    """The user id the bot transferred ``call`` to."""
    (transfer,) = [request for request in call.requests if request.op == "transfer"]
    user_id: str = transfer.body["transferTarget"]["identity"]["user"]["id"]
    return user_id


async def test_one_goes_to_sales(fake_graph: FakeGraph) -> None:
    async with fake_graph.serve(make_bot()) as running:
        call = await fake_graph.place_call(running.webhook_url)
        assert (await call.decision()).op == "answer"
        await call.wait_requests(op="subscribeToTone")  # the menu listens for keys
        await call.press("1")  # one toneInfo notification per key
        await call.wait_requests(op="transfer")
    assert transferred_to(call) == DESKS["1"]
    assert played(call) == ["menu"]


async def test_a_key_not_on_the_menu_plays_it_again(fake_graph: FakeGraph) -> None:
    async with fake_graph.serve(make_bot()) as running:
        call = await fake_graph.place_call(running.webhook_url)
        await call.wait_requests(op="subscribeToTone")
        await call.press("9")
        await call.wait_requests(2, op="playPrompt")  # the menu, once more
        await call.press("2")
        await call.wait_requests(op="transfer")
    assert transferred_to(call) == DESKS["2"]
    assert played(call) == ["menu", "menu"]


async def test_no_choice_twice_says_goodbye_and_hangs_up(fake_graph: FakeGraph) -> None:
    async with fake_graph.serve(make_bot()) as running:
        call = await fake_graph.place_call(running.webhook_url)
        await call.wait_requests(op="subscribeToTone")
        await call.press("9")
        await call.wait_requests(2, op="playPrompt")
        await call.press("#")
        await call.wait_requests(op="delete")  # the bot hung up
    assert played(call) == ["menu", "menu", "goodbye"]
    assert not [request for request in call.requests if request.op == "transfer"]


async def test_a_failed_transfer_apologises_and_hangs_up(fake_graph: FakeGraph) -> None:
    fake_graph.plan_operation("transfer", code=500, subcode=7700, message="No answer")
    async with fake_graph.serve(make_bot()) as running:
        call = await fake_graph.place_call(running.webhook_url)
        await call.wait_requests(op="subscribeToTone")
        await call.press("1")
        await call.wait_requests(op="delete")
    assert transferred_to(call) == DESKS["1"]
    assert played(call) == ["menu", "sorry"]


# --8<-- [end:tests]
