"""The webhook's HTTP contract: bodies of any transfer encoding, limits, and replies."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import aiohttp
import anyio
import pytest
import structlog.testing

from callflow import Answer, Bot, CallStateChanged, IncomingCall
from callflow.testing import DEFAULT_TENANT_ID, FakeGraph, call_state, call_terminated
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


@pytest.mark.slow
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
        async with http.get(running.metrics_url) as metrics:
            text = await metrics.text()
        assert 'callflow_rejected_notifications_total{code="overloaded"} 1.0' in text
        assert "callflow_send_backlog 2.0" in text
    assert fake.requests_for("refused") == ()


@pytest.mark.slow
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


# --- tenants --------------------------------------------------------------------------------

OTHER_TENANT = "0b0b0b0b-2222-4333-8444-555566667777"


class Observed:
    """The state updates a bot observed, and an event set at each one."""

    def __init__(self) -> None:
        self.etags: list[int | None] = []
        self.changed = anyio.Event()

    async def wait_for(self, etag: int) -> None:
        """Wait until the update with ``etag`` was observed."""
        while etag not in self.etags:
            await self.changed.wait()


def observing_bot(observed: Observed) -> Bot:
    """A bot that answers every call and records the state updates it observes."""
    bot = answering_bot()

    @bot.on(CallStateChanged)
    async def observe(event: CallStateChanged) -> None:
        observed.etags.append(event.etag)
        observed.changed.set()
        observed.changed = anyio.Event()

    return bot


@pytest.mark.parametrize("allowed", [True, False])
async def test_a_token_of_one_tenant_cannot_get_a_call_of_another_decided(allowed: bool) -> None:
    """A token issued for the allowed tenant A with a body naming tenant B is refused with
    403 and a JSON error naming both; no app token for B is fetched and nothing reaches
    Graph. It holds with ALLOWED_TENANTS and without it."""
    overrides = {"allowed_tenants": (DEFAULT_TENANT_ID,)} if allowed else {}
    async with FakeGraph() as fake, fake.serve(answering_bot(), **overrides) as running:
        forged = await fake.place_call(
            running.webhook_url,
            call_id="cross-tenant",
            tenant_id=OTHER_TENANT,
            token=fake.sign(tid=DEFAULT_TENANT_ID),
        )
        (reply,) = forged.replies
        assert reply.status == 403
        error = reply.body["error"]
        assert error["code"] == "tenant_mismatch"
        assert OTHER_TENANT in error["message"] and DEFAULT_TENANT_ID in error["message"]
        honest = await fake.place_call(running.webhook_url, call_id="same-tenant")
        assert honest.webhook_status == 202
        await honest.decision()
        assert running.engine.pending == 0
    assert fake.requests_for("cross-tenant") == ()
    assert OTHER_TENANT not in fake.tokens.requests_by_tenant


async def test_a_body_with_one_foreign_notification_is_refused_whole() -> None:
    """A state update of tenant A's call batched with an incoming call naming tenant B: the
    whole body gets 403 and the state update is not observed either (nothing half-applied)."""
    observed = Observed()
    async with (
        FakeGraph(follow_up=False) as fake,
        fake.serve(observing_bot(observed)) as running,
    ):
        call = await fake.place_call(running.webhook_url, call_id="held")
        await call.decision()
        foreign = incoming_call(
            kind="p2p",
            call_id="foreign",
            tenant_id=OTHER_TENANT,
            bot_app_id=fake.app_id,
            callback_uri=fake.callback_url,
        )["value"][0]
        update = call_state("held", "hold", etag=7)
        update["resourceData"]["tenantId"] = DEFAULT_TENANT_ID
        reply = await fake.notify(running.webhook_url, [update, foreign])
        assert reply.status == 403
        assert reply.body["error"]["code"] == "tenant_mismatch"
        assert "value[1]" in reply.body["error"]["message"]
        stray = call_state("held", "hold", etag=8)
        stray["resourceData"]["tenantId"] = OTHER_TENANT
        assert (await fake.notify(running.webhook_url, [stray])).status == 403
        fine = await fake.notify(running.webhook_url, [call_state("held", "hold", etag=9)])
        assert fine.status == 202
        with anyio.fail_after(10.0):
            await observed.wait_for(9)
    assert observed.etags == [9]
    assert fake.requests_for("foreign") == ()


async def test_a_token_of_another_tenant_cannot_end_a_held_call() -> None:
    """A hang-up naming no tenant, about a call the bot answered for tenant A, signed with
    a token of tenant B: 403 tenant_mismatch (without B's or A's call details), and the call
    is still held; the same hang-up with A's token releases it."""
    async with (
        FakeGraph(follow_up=False) as fake,
        fake.serve(answering_bot()) as running,
    ):
        call = await fake.place_call(running.webhook_url, call_id="held-a")
        await call.decision()
        with anyio.fail_after(10.0):
            await running.keeper.wait_until(lambda held: any(c.call_id == "held-a" for c in held))
        forged = await fake.notify(
            running.webhook_url, [call_terminated("held-a")], token=fake.sign(tid=OTHER_TENANT)
        )
        assert forged.status == 403
        assert forged.body["error"]["code"] == "tenant_mismatch"
        assert DEFAULT_TENANT_ID not in forged.body["error"]["message"]
        assert "held-a" in running.keeper
        genuine = await fake.notify(running.webhook_url, [call_terminated("held-a")])
        assert genuine.status == 202
        with anyio.fail_after(10.0):
            await running.keeper.wait_until(lambda held: not held)


async def test_a_token_of_another_tenant_cannot_end_a_pending_call() -> None:
    """While tenant A's call waits for its handler, tenant B's token cannot end it: 403, and
    the handler's decision is still sent."""
    release = anyio.Event()
    bot = Bot()

    @bot.incoming_call
    async def answer_when_released(call: IncomingCall) -> Answer:
        await release.wait()
        return Answer()

    async with (
        FakeGraph(follow_up=False) as fake,
        fake.serve(bot, platform_timeout=60.0) as running,
    ):
        call = await fake.place_call(running.webhook_url, call_id="pending-a")
        assert call.webhook_status == 202
        assert running.engine.pending == 1
        forged = await fake.notify(
            running.webhook_url,
            [call_terminated("pending-a")],
            token=fake.sign(tid=OTHER_TENANT),
        )
        assert forged.status == 403
        assert forged.body["error"]["code"] == "tenant_mismatch"
        release.set()
        request = await call.decision()
        assert request.op == "answer"


async def test_an_incoming_call_without_a_tenant_is_decided_with_the_tokens_tenant() -> None:
    """A body that names no tenant is decided with an app token of the tenant the caller's
    token was issued for, not with the default TENANT_ID."""
    async with (
        FakeGraph() as fake,
        fake.serve(answering_bot(), tenant_id="default-tenant.example") as running,
    ):
        body = incoming_call(
            kind="p2p",
            call_id="no-tenant",
            tenant_id=DEFAULT_TENANT_ID,
            bot_app_id=fake.app_id,
            callback_uri=fake.callback_url,
        )
        del body["value"][0]["resourceData"]["tenantId"]
        call = await fake.place_call(running.webhook_url, payload=body)
        assert call.webhook_status == 202
        request = await call.decision()
    assert request.headers["Authorization"].startswith(f"Bearer token-{DEFAULT_TENANT_ID}-")


async def test_rejections_are_logged_at_most_once_a_second_with_the_count_left_out() -> None:
    """A burst of 60 notifications with a forged token: every one gets 401/403 and is counted
    in the metrics, but ``webhook.rejected`` is logged about once a second per code, each line
    saying how many were left out since the last; the lines left out are counted too."""
    async with (
        FakeGraph() as fake,
        fake.serve(answering_bot()) as running,
        aiohttp.ClientSession() as http,
    ):
        with structlog.testing.capture_logs() as logs:
            started = time.monotonic()
            for _ in range(60):
                async with http.post(
                    running.webhook_url,
                    data=b'{"value": []}',
                    headers={
                        "Authorization": "Bearer forged.token.x",
                        "Content-Type": "application/json",
                    },
                ) as reply:
                    assert reply.status == 401
            elapsed = time.monotonic() - started
        text = running.metrics.render().decode()
    lines = [e for e in logs if e["event"] == "webhook.rejected"]
    assert 1 <= len(lines) <= elapsed + 2
    assert lines[0]["suppressed"] == 0
    left_out = 60 - len(lines)
    assert sum(e["suppressed"] for e in lines) <= left_out
    assert 'callflow_rejected_notifications_total{code="unauthorized"} 60.0' in text
    assert f"callflow_suppressed_log_lines_total {float(left_out)}" in text
