"""The webhook's HTTP contract: bodies of any transfer encoding, limits, and replies."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from callflow import Answer, Bot, IncomingCall
from callflow.testing import FakeGraph
from callflow.testing._payloads import envelope, incoming_call

pytestmark = pytest.mark.anyio


def answering_bot() -> Bot:
    bot = Bot()

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer()

    return bot


async def chunks(data: bytes, size: int = 16 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def body_with_padding(fake: FakeGraph, call_id: str, padding: int) -> bytes:
    item = incoming_call(
        kind="p2p",
        call_id=call_id,
        tenant_id=fake.tenant_id,
        bot_app_id=fake.app_id,
        callback_uri=fake.callback_url,
    )
    item["value"][0]["resourceData"]["padding"] = "x" * padding
    return json.dumps(item).encode()


async def test_chunked_body_is_read_whole() -> None:
    """A notification sent in many chunks (no Content-Length) is read whole and decided."""
    async with (
        FakeGraph() as fake,
        fake.serve(answering_bot()) as running,
        aiohttp.ClientSession() as http,
    ):
        body = body_with_padding(fake, "chunked-call", 300_000)
        async with http.post(
            running.webhook_url,
            data=chunks(body),
            headers={"Authorization": f"Bearer {fake.sign()}", "Content-Type": "application/json"},
        ) as reply:
            assert reply.status == 202
        (request,) = await fake.wait_requests(1, op="answer", call_id="chunked-call")
        assert request.op == "answer"


async def test_chunked_body_over_the_limit_gets_413() -> None:
    """A chunked body past 1 MiB is refused with 413 and a JSON error, nothing dispatched."""
    async with (
        FakeGraph() as fake,
        fake.serve(answering_bot()) as running,
        aiohttp.ClientSession() as http,
    ):
        body = body_with_padding(fake, "huge-call", 1_200_000)
        async with http.post(
            running.webhook_url,
            data=chunks(body),
            headers={"Authorization": f"Bearer {fake.sign()}", "Content-Type": "application/json"},
        ) as reply:
            assert reply.status == 413
            error = (await reply.json())["error"]
        assert error["code"] == "payload_too_large"
        assert running.engine.pending == 0
        assert fake.requests_for("huge-call") == ()


async def test_batch_with_two_calls_reaches_both() -> None:
    """One POST carrying two incoming calls gets both decided."""
    async with (
        FakeGraph() as fake,
        fake.serve(answering_bot()) as running,
        aiohttp.ClientSession() as http,
    ):
        items = [
            incoming_call(
                kind="p2p",
                call_id=cid,
                tenant_id=fake.tenant_id,
                bot_app_id=fake.app_id,
                callback_uri=fake.callback_url,
            )["value"][0]
            for cid in ("batch-1", "batch-2")
        ]
        async with http.post(
            running.webhook_url + "?instance=any",
            json=envelope(*items),
            headers={"Authorization": f"Bearer {fake.sign()}"},
        ) as reply:
            assert reply.status == 202
        for cid in ("batch-1", "batch-2"):
            await fake.wait_requests(1, op="answer", call_id=cid)


async def test_new_call_gets_503_with_retry_after_while_decisions_wait_to_be_sent() -> None:
    """With MAX_SEND_BACKLOG decisions stuck on a slow Graph and no OVERLOAD_WAIT, a new call
    is refused with 503, Retry-After and a JSON error instead of being taken and decided too
    late; it is neither dispatched nor counted as pending, and the refusal shows in the
    metrics."""
    async with (
        FakeGraph() as fake,
        fake.serve(answering_bot(), max_send_backlog=2, overload_wait=0) as running,
        aiohttp.ClientSession() as http,
    ):
        fake.latency = 3.0  # Graph holds each decision this long before it replies
        first = await fake.place_call(running.webhook_url, call_id="slow-1")
        second = await fake.place_call(running.webhook_url, call_id="slow-2")
        for call in (first, second):
            assert call.webhook_status == 202
            await fake.wait_requests(1, op="answer", call_id=call.call_id)

        refused = await fake.place_call(running.webhook_url, call_id="refused")
        (reply,) = refused.replies
        assert reply.status == 503
        assert reply.headers["Retry-After"] == "1"
        assert reply.body["error"]["code"] == "overloaded"
        assert running.engine.stats.refused == 1
        assert running.engine.pending == 0
        async with http.get(running.url + "/metrics") as metrics:
            text = await metrics.text()
        assert 'callflow_rejected_notifications_total{code="overloaded"} 1.0' in text
        assert "callflow_send_backlog 2.0" in text
    assert fake.requests_for("refused") == ()


async def test_new_call_waits_for_room_in_the_send_backlog_then_is_taken() -> None:
    """Within OVERLOAD_WAIT, a new call's notification waits until a decision has been sent,
    then gets its 202 and its own decision: a later reply instead of a lost call."""
    async with (
        FakeGraph() as fake,
        fake.serve(answering_bot(), max_send_backlog=2, overload_wait=4.0) as running,
    ):
        fake.latency = 1.5  # Graph holds each decision this long before it replies
        for cid in ("busy-1", "busy-2"):
            call = await fake.place_call(running.webhook_url, call_id=cid)
            assert call.webhook_status == 202
            await fake.wait_requests(1, op="answer", call_id=cid)
        started = time.monotonic()
        waited = await fake.place_call(running.webhook_url, call_id="waited")
        took = time.monotonic() - started
        assert waited.webhook_status == 202
        assert took >= 0.5  # held until one of the first two decisions had been sent
        (request,) = await fake.wait_requests(1, op="answer", call_id="waited")
        assert request.op == "answer"
        assert running.engine.stats.refused == 0
