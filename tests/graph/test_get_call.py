"""GraphClient.get_call against FakeGraph over real HTTP, with real msal app tokens.

Whether a call is still alive is what a worker asks before it takes the call over: an
established call reads as such, a call Graph does not know (never placed, hung up, rejected,
forgotten) raises CallGoneError, and the request goes out with the call's tenant's token and
the client's one retry policy.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from callflow.actions import OutgoingCall
from callflow.decisions import Answer, Reject, Target
from callflow.errors import CallGoneError, GraphError
from callflow.graph import CallStatus
from callflow.graph.client import GraphClient
from callflow.graph.tokens import MsalTokenProvider
from callflow.testing import CALLBACK_URL, FakeGraph

pytestmark = pytest.mark.anyio

OTHER_TENANT = "7c1e1f3a-5b2d-4c6e-9f80-1a2b3c4d5e6f"


@pytest.fixture
async def webhook() -> AsyncIterator[str]:
    """A webhook on loopback that takes every notification with 202."""

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


@pytest.fixture
async def tokens(fake_graph: FakeGraph) -> AsyncIterator[MsalTokenProvider]:
    """App tokens from the fake's TLS token endpoint, through msal."""
    provider = MsalTokenProvider(
        client_id=fake_graph.app_id,
        client_secret=fake_graph.app_secret,
        tenant_id=fake_graph.tenant_id,
        authority_url=fake_graph.authority_url,
        ca_bundle=fake_graph.ca_bundle,
    )
    async with provider:
        yield provider


@pytest.fixture
async def graph(fake_graph: FakeGraph, tokens: MsalTokenProvider) -> AsyncIterator[GraphClient]:
    """A Graph client talking to the fake."""
    client = GraphClient(
        tokens=tokens,
        base_url=fake_graph.graph_url,
        callback_url=CALLBACK_URL,
        backoff=(0.001, 0.002),
    )
    async with client:
        yield client


async def test_a_call_reads_incoming_then_established(
    fake_graph: FakeGraph, graph: GraphClient, webhook: str
) -> None:
    """A placed call is ``incoming`` until answered, then ``established``; neither ended."""
    call = await fake_graph.place_call(webhook)
    before = await graph.get_call(call.call_id, tenant_id=call.tenant_id)
    await graph.decide(call.call_id, Answer(), tenant_id=call.tenant_id)
    after = await graph.get_call(call.call_id, tenant_id=call.tenant_id)
    assert isinstance(after, CallStatus)
    assert (before.call_id, before.state, before.ended) == (call.call_id, "incoming", False)
    assert (after.call_id, after.state, after.ended) == (call.call_id, "established", False)
    assert after.tenant_id == fake_graph.tenant_id
    assert (after.request.status, after.request.attempts) == (200, 1)
    assert after.request.request_id
    gets = [r for r in call.requests if r.op == "get"]
    assert [r.status for r in gets] == [200, 200]
    assert [r.op for r in call.requests] == ["get", "answer", "get"]
    assert gets[-1].headers["Client-Request-Id"] == after.request.client_request_id


async def test_an_unknown_call_is_gone(fake_graph: FakeGraph, graph: GraphClient) -> None:
    """A call Graph never had raises CallGoneError (404/8522) after one request."""
    unknown = str(uuid.uuid4())
    with pytest.raises(CallGoneError) as info:
        await graph.get_call(unknown)
    assert (info.value.status, info.value.code) == (404, "8522")
    assert info.value.request_id
    assert [(r.op, r.status) for r in fake_graph.requests_for(unknown)] == [("get", 404)]


@pytest.mark.parametrize("end", ["hang_up", "reject", "gone"])
async def test_an_ended_call_is_gone(
    fake_graph: FakeGraph, graph: GraphClient, webhook: str, end: str
) -> None:
    """Once the call was hung up, rejected or forgotten by Graph, get_call raises
    CallGoneError: FakeGraph forgets a call as it ends, it never reads ``terminated``."""
    call = await fake_graph.place_call(webhook)
    if end == "reject":
        await graph.decide(call.call_id, Reject(), tenant_id=call.tenant_id)
    else:
        await graph.decide(call.call_id, Answer(), tenant_id=call.tenant_id)
        assert (await graph.get_call(call.call_id)).state == "established"
        if end == "hang_up":
            await graph.hang_up(call.call_id, tenant_id=call.tenant_id)
        else:
            fake_graph.gone(call.call_id)
    with pytest.raises(CallGoneError) as info:
        await graph.get_call(call.call_id, tenant_id=call.tenant_id)
    assert (info.value.status, info.value.code) == (404, "8522")
    assert call.requests[-1].op == "get"
    assert call.requests[-1].status == 404


async def test_the_calls_tenants_token_is_sent(
    fake_graph: FakeGraph, graph: GraphClient, tokens: MsalTokenProvider, webhook: str
) -> None:
    """get_call with a tenant sends that tenant's app token, and reads the tenant back."""
    call = await fake_graph.place_call(webhook, tenant_id=OTHER_TENANT)
    status = await graph.get_call(call.call_id, tenant_id=OTHER_TENANT)
    assert status.tenant_id == OTHER_TENANT
    (get,) = call.requests
    other_token = await tokens.get_token(OTHER_TENANT)
    assert other_token != await tokens.get_token()
    assert get.headers["Authorization"] == f"Bearer {other_token}"
    assert fake_graph.tokens.requests_by_tenant[OTHER_TENANT] == 1


async def test_a_created_call_reads_with_its_tenant(
    fake_graph: FakeGraph, graph: GraphClient, webhook: str
) -> None:
    """A call the bot created reads ``establishing`` until Graph establishes it."""
    fake_graph.route(CALLBACK_URL, webhook)
    fake_graph.plan_operation("create", complete=False)
    created = await graph.create_call(OutgoingCall(Target.user("u-1"), tenant_id=OTHER_TENANT))
    status = await graph.get_call(created.call_id, tenant_id=OTHER_TENANT)
    assert (status.call_id, status.state, status.ended) == (created.call_id, "establishing", False)
    assert status.tenant_id == OTHER_TENANT


async def test_a_call_id_in_another_spelling_comes_back_canonical(
    fake_graph: FakeGraph, graph: GraphClient, webhook: str
) -> None:
    """The id is asked for as given and returned in canonical form (lower case, dashed)."""
    canonical = str(uuid.uuid4())
    spelled = canonical.upper()
    call = await fake_graph.place_call(webhook, call_id=spelled)
    status = await graph.get_call(spelled)
    assert status.call_id == canonical
    assert [r.call_id for r in call.requests] == [spelled]


async def test_get_call_is_retried_and_respects_its_deadline(
    fake_graph: FakeGraph, graph: GraphClient, webhook: str
) -> None:
    """A 503 is retried like every request; a deadline already passed sends nothing."""
    call = await fake_graph.place_call(webhook)
    fake_graph.fail_next("get", 503, retry_after=0, call_id=call.call_id)
    status = await graph.get_call(call.call_id)
    assert (status.state, status.request.attempts) == ("incoming", 2)
    assert [(r.status, r.injected) for r in call.requests] == [(503, True), (200, False)]
    with pytest.raises(GraphError, match="deadline passed"):
        await graph.get_call(call.call_id, deadline=time.monotonic() - 1)
    assert len(call.requests) == 2
