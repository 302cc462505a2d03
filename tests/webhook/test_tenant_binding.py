"""One call id, one tenant: a call is bound to its tenant from admission to its end.

Every test here runs a real bot against FakeGraph over loopback HTTP, with tenant B holding a
valid token and trying to reach tenant A's call under every spelling Graph uses for a call
id, at every stage of the call's life.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from callflow import Answer, Bot, Call, IncomingCall
from callflow.testing import (
    DEFAULT_TENANT_ID,
    FakeGraph,
    call_terminated,
    operation_result,
    tone,
)

pytestmark = pytest.mark.anyio

GUARD = 15.0
OTHER_TENANT = "0b0b0b0b-2222-4333-8444-555566667777"

SPELLINGS: dict[str, Callable[[str], str]] = {
    "as_sent": lambda call_id: call_id,
    "upper_without_dashes": lambda call_id: call_id.replace("-", "").upper(),
    "in_braces": lambda call_id: "{" + call_id.upper() + "}",
}


def _forged(call_id: str) -> list[list[dict[str, Any]]]:
    """Tenant B's notifications about ``call_id``: key presses 1-2-3-4, an operation result
    and a hang-up, one body each."""
    keys = [[tone(call_id, sequence, key)] for sequence, key in enumerate("1234", start=1)]
    result = operation_result(call_id, "playPrompt", "forged-op", status="completed")
    return [*keys, [result], [call_terminated(call_id)]]


async def _all_refused(fake: FakeGraph, url: str, call_id: str) -> None:
    """Every forged body gets 403 tenant_mismatch and names neither A's tenant nor its call."""
    token = fake.sign(tid=OTHER_TENANT)
    for body in _forged(call_id):
        reply = await fake.notify(url, body, token=token)
        assert reply.status == 403, reply.body
        error = reply.body["error"]
        assert error["code"] == "tenant_mismatch"
        assert DEFAULT_TENANT_ID not in error["message"]


@pytest.mark.slow
@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
async def test_another_tenant_cannot_reach_a_call_under_any_spelling(
    fake_graph: FakeGraph, spelling: str
) -> None:
    """Tenant B's token cannot press keys into, finish an operation of, or end tenant A's
    call, whatever spelling of its id it uses, while the call is pending, while Graph is
    still taking its answer (2 s), and once it is established in a flow: every notification
    gets 403 tenant_mismatch, A's flow collects only A's own keys and runs to its end."""
    spell = SPELLINGS[spelling]
    fake = fake_graph
    release = anyio.Event()
    collected: list[str] = []
    flow_done = anyio.Event()

    async def pin_flow(call: Call) -> None:
        collected.append(await call.collect_digits(4, timeout=GUARD))
        flow_done.set()

    bot = Bot()

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        await release.wait()
        return Answer(then=pin_flow)

    call_id = "57dab8b1-894c-409a-b240-bd8beae78896"
    async with fake.serve(bot, platform_timeout=60.0) as running:
        handle = await fake.place_call(running.webhook_url, call_id=call_id)
        assert handle.webhook_status == 202
        url = running.webhook_url

        # 1. pending: the handler has not decided yet
        assert running.engine.pending == 1
        await _all_refused(fake, url, spell(call_id))

        # 2. decided, Graph slow to take the answer: the call is in no other table
        fake.latency = 2.0
        release.set()
        with anyio.fail_after(GUARD):
            decision = await handle.decision()  # FakeGraph has it, and holds its reply 2 s
        assert decision.op == "answer"
        assert running.engine.pending == 0
        assert running.keeper.calls() == []  # not held yet: Graph has not taken the answer
        await _all_refused(fake, url, spell(call_id))
        fake.latency = 0.0

        # 3. established, the flow collecting the caller's PIN
        with anyio.fail_after(GUARD):
            await handle.wait_requests(op="subscribeToTone")
        await _all_refused(fake, url, spell(call_id))
        with anyio.fail_after(GUARD):
            await handle.press("9", "8", "7", "6")
            await flow_done.wait()
        assert collected == ["9876"]
        assert handle.state != "terminated"
        assert call_id in running.engine.calls  # still held: B's hang-up ended nothing
    assert [r.op for r in handle.requests if r.op == "answer"] == ["answer"]
