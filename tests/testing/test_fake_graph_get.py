"""FakeGraph's ``GET /communications/calls/{id}``: the call resource while the call lives,
Graph's 404/8522 error JSON once it is gone, a token required and every GET recorded."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from callflow import Answer
from callflow.actions import OutgoingCall
from callflow.decisions import Target
from callflow.testing import CALLBACK_URL, DEFAULT_TENANT_ID, FakeGraph
from callflow.testing._payloads import call_resource, incoming_call
from tests.testing.test_fake_graph import Receiver, assert_graph_error, call_control

pytestmark = pytest.mark.anyio

OTHER_TENANT = "7c1e1f3a-5b2d-4c6e-9f80-1a2b3c4d5e6f"


@pytest.fixture
async def hook() -> AsyncIterator[Receiver]:
    """A running test webhook answering 202."""
    async with Receiver() as receiver:
        yield receiver


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client for talking to the fake directly."""
    async with aiohttp.ClientSession() as session:
        yield session


def path_of(call_id: str, suffix: str = "") -> str:
    return f"/communications/calls/{call_id}{suffix}"


async def status_of(
    http: aiohttp.ClientSession, fake: FakeGraph, method: str, path: str, body: Any = None
) -> int:
    """The status the fake answers one call-control request with."""
    return (await call_control(http, fake, method, path, body))[0]


async def test_an_incoming_call_reads_as_graph_announced_it(
    fake_graph: FakeGraph, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """Before the answer, GET gives the call resource of the incoming-call notification in
    state ``incoming``, without the notification's own ``@odata.id`` and etag."""
    call = await fake_graph.place_call(hook.url)
    (incoming,) = await hook.wait_for(1)
    announced = incoming["value"][0]["resourceData"]
    status, reply, headers = await call_control(http, fake_graph, "GET", path_of(call.call_id))
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert headers["client-request-id"] == "crid-1"
    assert uuid.UUID(headers["request-id"])
    assert reply["@odata.type"] == "#microsoft.graph.call"
    assert (reply["id"], reply["state"], reply["direction"]) == (
        call.call_id,
        "incoming",
        "incoming",
    )
    assert (reply["tenantId"], reply["callbackUri"]) == (DEFAULT_TENANT_ID, CALLBACK_URL)
    assert reply["callChainId"] == call.chain_id
    for key in ("source", "targets", "myParticipantId", "requestedModalities", "incomingContext"):
        assert reply[key] == announced[key]
    assert reply["activeModalities"] == []
    assert "@odata.id" not in reply
    assert "@odata.etag" not in reply
    (get,) = call.requests
    assert (get.op, get.call_id, get.body, get.status) == ("get", call.call_id, None, 200)


async def test_an_answered_call_reads_established_with_its_answers_callback(
    fake_graph: FakeGraph, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """After the answer, GET says ``established``, names the callbackUri the answer gave and
    the modalities now active; a meeting call keeps its chat and meeting info."""
    call = await fake_graph.place_call(hook.url, kind="group_meeting", tenant_id=OTHER_TENANT)
    answer_callback = "https://bot.example.com/api/calls?instance=w-2"
    body = Answer().to_graph(answer_callback)
    assert await status_of(http, fake_graph, "POST", path_of(call.call_id, "/answer"), body) == 202
    status, reply, _ = await call_control(http, fake_graph, "GET", path_of(call.call_id))
    assert status == 200
    assert (reply["state"], reply["callbackUri"]) == ("established", answer_callback)
    assert reply["tenantId"] == OTHER_TENANT
    assert reply["activeModalities"] == reply["requestedModalities"] == ["audio"]
    assert reply["chatInfo"]["threadId"].startswith("19:meeting_")
    assert reply["meetingInfo"]["@odata.type"] == "#microsoft.graph.organizerMeetingInfo"
    assert [(r.op, r.status) for r in call.requests] == [("answer", 202), ("get", 200)]


async def test_a_created_call_reads_as_asked_for_and_created(
    fake_graph: FakeGraph, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """A call the bot created reads ``outgoing``: what the bot asked for (parties, media)
    and what the 201 assigned (id, state, participant and chain ids)."""
    fake_graph.route(CALLBACK_URL, hook.url)
    fake_graph.plan_operation("create", complete=False)
    request = OutgoingCall(Target.user("u-1"), tenant_id=OTHER_TENANT).to_graph(CALLBACK_URL)
    status, created, _ = await call_control(
        http, fake_graph, "POST", "/communications/calls", request
    )
    assert status == 201
    status, reply, _ = await call_control(http, fake_graph, "GET", path_of(created["id"]))
    assert status == 200
    assert reply == {**request, **created, "activeModalities": []}
    assert (reply["state"], reply["direction"], reply["tenantId"]) == (
        "establishing",
        "outgoing",
        OTHER_TENANT,
    )


@pytest.mark.parametrize(
    ("end", "fragment"),
    [
        ("never placed", "was placed on this FakeGraph"),
        ("hung up", "has ended"),
        ("rejected", "has ended"),
        ("gone", "is gone"),
        ("other spelling", "was placed on this FakeGraph"),
    ],
)
async def test_a_call_graph_does_not_know_gets_404_8522(
    fake_graph: FakeGraph, hook: Receiver, http: aiohttp.ClientSession, end: str, fragment: str
) -> None:
    """A call never placed, ended (the fake forgets it as it ends: never ``terminated``),
    forgotten, or named in a spelling other than the one it was placed with (as for every
    other request), gets Graph's error JSON with 404/8522; the GET is recorded."""
    call = await fake_graph.place_call(hook.url, call_id=str(uuid.uuid4()).upper())
    call_id = call.call_id
    if end == "never placed":
        call_id = str(uuid.uuid4())
    elif end == "hung up":
        body = Answer().to_graph(CALLBACK_URL)
        assert await status_of(http, fake_graph, "POST", path_of(call_id, "/answer"), body) == 202
        assert await status_of(http, fake_graph, "DELETE", path_of(call_id)) == 204
    elif end == "rejected":
        body = {"reason": "busy"}
        assert await status_of(http, fake_graph, "POST", path_of(call_id, "/reject"), body) == 202
    elif end == "gone":
        fake_graph.gone(call_id)
    else:
        call_id = call_id.lower()
        # keepAlive takes the same spellings as GET: the one the call was placed with
        assert await status_of(http, fake_graph, "POST", path_of(call_id, "/keepAlive")) == 404
    status, reply, headers = await call_control(http, fake_graph, "GET", path_of(call_id))
    assert status == 404
    assert headers["Content-Type"].startswith("application/json")
    assert_graph_error(reply, "8522", "Call not found", fragment)
    assert reply["error"]["innerError"]["request-id"] == headers["request-id"]
    assert reply["error"]["innerError"]["client-request-id"] == "crid-1"
    assert [(r.op, r.status) for r in fake_graph.requests_for(call_id)][-1] == ("get", 404)


async def test_get_needs_an_app_token_and_can_be_failed(
    fake_graph: FakeGraph, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """Without a token the fake issued, GET gets 401; ``fail_next("get")`` fails the next
    GET; both are recorded, and neither changes the call."""
    call = await fake_graph.place_call(hook.url)
    for token in (None, "Bearer forged-token"):
        status, reply, _ = await call_control(
            http, fake_graph, "GET", path_of(call.call_id), token=token
        )
        assert status == 401
        assert_graph_error(reply, "InvalidAuthenticationToken")
    fake_graph.fail_next("get", 429, retry_after=1)
    status, reply, headers = await call_control(http, fake_graph, "GET", path_of(call.call_id))
    assert (status, headers["Retry-After"]) == (429, "1")
    assert_graph_error(reply, "TooManyRequests", "fail_next")
    status, reply, _ = await call_control(http, fake_graph, "GET", path_of(call.call_id))
    assert (status, reply["state"]) == (200, "incoming")
    assert [(r.op, r.status, r.injected) for r in call.requests] == [
        ("get", 401, False),
        ("get", 401, False),
        ("get", 429, True),
        ("get", 200, False),
    ]
    assert call.state == "incoming"


def test_the_resource_is_plain_json() -> None:
    """The builder's output survives a JSON round trip unchanged (no tuples, no objects)."""
    body = incoming_call(
        kind="channel_meeting",
        call_id="c-1",
        tenant_id="t-1",
        bot_app_id="a-1",
        callback_uri=CALLBACK_URL,
    )
    announced: Any = body["value"][0]["resourceData"]
    resource = call_resource(
        announced,
        call_id="c-1",
        state="established",
        direction="incoming",
        callback_uri=CALLBACK_URL,
        tenant_id="t-1",
        call_chain_id="chain",
    )
    assert json.loads(json.dumps(resource)) == resource
    assert resource["activeModalities"] == ["audio", "video"]
    assert resource["callChainId"] == announced["callChainId"]
    assert resource["activeModalities"] is not announced["requestedModalities"]
