"""FakeGraph's own behaviour: tokens, Graph-shaped checks and errors, faults, timeouts, records."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import anyio
import jwt
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from callflow import Answer, Bot, Identity, MediaPrompt, Redirect, Reject, RejectReason, Target
from callflow._parse import parse_notifications
from callflow.bot import RunningBot
from callflow.decisions import Decision
from callflow.errors import TokenError
from callflow.events import (
    CallStateChanged,
    CallTerminated,
    IncomingCall,
    JoinMeetingIdMeetingInfo,
    OrganizerMeetingInfo,
    ParticipantsUpdated,
    TokenMeetingInfo,
)
from callflow.settings import Settings
from callflow.testing import (
    CALLBACK_URL,
    DEFAULT_APP_ID,
    DEFAULT_TENANT_ID,
    KINDS,
    CallHandle,
    FakeGraph,
    SigningKey,
    call_state,
    call_terminated,
    envelope,
    incoming_call,
    participants,
)
from callflow.testing import plugin as plugin_module

GUARD = 10.0

# Bot._make_app registers the WebhookHandler instance (an object with an async __call__) as a
# route handler; aiohttp wraps it fine but warns that it is not a coroutine function.


class Receiver:
    """A test webhook on loopback that records every POST and answers ``status``."""

    def __init__(self, status: int = 202) -> None:
        self.status = status
        self.received: list[tuple[CIMultiDictProxy[str], bytes]] = []
        self._changed = anyio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append((request.headers, await request.read()))
        changed, self._changed = self._changed, anyio.Event()
        changed.set()
        return web.json_response({"seen": len(self.received)}, status=self.status)

    def bodies(self) -> list[Any]:
        """The JSON bodies received so far."""
        return [json.loads(raw) for _, raw in self.received]

    async def wait_for(self, count: int) -> list[Any]:
        """Return the JSON bodies once ``count`` POSTs arrived."""
        while len(self.received) < count:
            await self._changed.wait()
        return self.bodies()

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


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


def make_fake(key: SigningKey, **options: Any) -> FakeGraph:
    """A FakeGraph sharing the session's signing key."""
    return FakeGraph(signing_key=key, **options)


async def call_control(
    http: aiohttp.ClientSession,
    fake: FakeGraph,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = "app",
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    """Send one call-control request and return (status, JSON body or None, headers)."""
    sent = {"Content-Type": "application/json", "client-request-id": "crid-1"}
    if token == "app":
        sent["Authorization"] = f"Bearer {fake.app_token()}"
    elif token is not None:
        sent["Authorization"] = token
    sent.update(headers or {})
    payload = data if data is not None else (None if body is None else json.dumps(body).encode())
    async with http.request(method, fake.graph_url + path, data=payload, headers=sent) as resp:
        raw = await resp.read()
        return resp.status, (json.loads(raw) if raw else None), resp.headers


def assert_graph_error(body: Any, code: str, *fragments: str) -> None:
    """The body is Graph's error JSON with ``code`` and a message containing ``fragments``."""
    error = body["error"]
    assert error["code"] == code
    assert set(error) == {"code", "message", "innerError"}
    assert set(error["innerError"]) >= {"request-id", "date"}
    for fragment in fragments:
        assert fragment in error["message"]


def answering_bot(decision: Any = None) -> Bot:
    """A fresh bot whose only handler returns ``decision`` (Answer() by default)."""
    bot = Bot()
    chosen = Answer() if decision is None else decision

    @bot.incoming_call
    async def decide(call: IncomingCall) -> Any:
        return chosen

    return bot


# --- tokens and the served bot ----------------------------------------------------------------


@pytest.mark.anyio
async def test_served_bot_fetches_its_token_with_msal_over_tls(fake_graph: FakeGraph) -> None:
    """A served bot gets one token from the TLS endpoint at start and sends it to Graph."""
    async with fake_graph.serve(answering_bot()) as running:
        assert fake_graph.token_requests == 1
        assert fake_graph.tokens.last_tenant == DEFAULT_TENANT_ID
        assert fake_graph.tokens.last_form["client_id"] == DEFAULT_APP_ID
        call = await fake_graph.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            decision = await call.decision()
    assert decision.op == "answer"
    assert decision.headers["Authorization"] == f"Bearer {fake_graph.tokens.issued[0]}"
    assert fake_graph.token_requests == 1


@pytest.mark.anyio
async def test_wrong_app_secret_stops_the_bot_from_starting(fake_graph: FakeGraph) -> None:
    """The token endpoint checks the client secret, so a wrong one fails the bot's start."""
    with pytest.raises(TokenError, match="invalid_client"):
        async with fake_graph.serve(answering_bot(), app_secret="not-the-secret"):
            pass  # pragma: no cover - the start fails


@pytest.mark.anyio
async def test_graph_refuses_missing_and_foreign_tokens(
    fake_graph: FakeGraph, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """Call control without a token the fake issued gets 401 with Graph's error JSON."""
    call = await fake_graph.place_call(hook.url)
    path = f"/communications/calls/{call.call_id}/answer"
    body = Answer().to_graph(CALLBACK_URL)
    cases = (
        (None, "Access token is empty"),
        ("Basic dXNlcjpwdw==", "expected 'Bearer <token>'"),
        ("Bearer", "expected 'Bearer <token>'"),
        ("Bearer forged-token", "not issued by this FakeGraph"),
    )
    for token, fragment in cases:
        status, reply, headers = await call_control(
            http, fake_graph, "POST", path, body, token=token
        )
        assert status == 401, token
        assert_graph_error(reply, "InvalidAuthenticationToken", fragment)
        assert reply["error"]["innerError"]["client-request-id"] == "crid-1"
        assert headers["client-request-id"] == "crid-1"
    assert [r.status for r in call.requests] == [401] * len(cases)
    assert call.state == "incoming"


# --- Graph-shaped validation ----------------------------------------------------------------

_ANSWER = Answer().to_graph(CALLBACK_URL)
_SERVICE = "#microsoft.graph.serviceHostedMediaConfig"


def _answer(**changes: Any) -> dict[str, Any]:
    body = dict(_ANSWER)
    body.update(changes)
    return {name: value for name, value in body.items() if value is not None}


_TARGET = Target.user("u-1").to_graph()
BAD_BODIES = [
    ("answer", {}, "callbackUri is required"),
    ("answer", _answer(callbackUri="http://bot.example/calls"), "expected an https URL"),
    ("answer", _answer(mediaConfig=None), "mediaConfig is None"),
    ("answer", _answer(mediaConfig={"@odata.type": "#x"}), "mediaConfig.@odata.type"),
    (
        "answer",
        _answer(mediaConfig={"@odata.type": "#microsoft.graph.appHostedMediaConfig"}),
        "mediaConfig.blob is required",
    ),
    (
        "answer",
        _answer(mediaConfig={"@odata.type": _SERVICE, "preFetchMedia": {}}),
        "preFetchMedia is {}",
    ),
    (
        "answer",
        _answer(mediaConfig={"@odata.type": _SERVICE, "preFetchMedia": ["x"]}),
        "preFetchMedia[0] is 'x'",
    ),
    (
        "answer",
        _answer(mediaConfig={"@odata.type": _SERVICE, "preFetchMedia": [{"uri": "ftp://x"}]}),
        "preFetchMedia[0]: uri",
    ),
    (
        "answer",
        _answer(
            mediaConfig={
                "@odata.type": _SERVICE,
                "preFetchMedia": [{"uri": "https://x.example/a.wav", "resourceId": 1}],
            }
        ),
        "resourceId is 1",
    ),
    ("answer", _answer(acceptedModalities=[]), "acceptedModalities is []"),
    ("answer", _answer(acceptedModalities=["Audio"]), "acceptedModalities is ['Audio']"),
    ("answer", _answer(acceptedModalities=["audio", "audio"]), "distinct values"),
    ("answer", _answer(callOptions={"hideBotAfterEscalation": True}), "callOptions is"),
    (
        "answer",
        _answer(
            callOptions={
                "@odata.type": "#microsoft.graph.incomingCallOptions",
                "hideBotAfterEscalation": "yes",
            }
        ),
        "callOptions.hideBotAfterEscalation",
    ),
    ("answer", _answer(participantCapacity=0), "participantCapacity is 0"),
    ("answer", _answer(participantCapacity=True), "participantCapacity is True"),
    ("answer", _answer(muted=True), "the property 'muted' does not exist"),
    ("reject", {"reason": "Busy"}, "reason is 'Busy'; expected one of none, busy, forbidden"),
    ("reject", {"reason": "maybe"}, "reason is 'maybe'"),
    ("reject", {"reason": "busy", "callbackUri": 7}, "callbackUri is 7"),
    ("reject", {"reason": "busy", "why": "x"}, "the property 'why'"),
    ("redirect", {"targets": []}, "targets has 0 entries"),
    ("redirect", {"targets": [_TARGET] * 26}, "targets has 26 entries"),
    ("redirect", {"targets": "x"}, "targets has 'x' entries"),
    ("redirect", {"targets": [{"identity": {}}]}, "targets[0]"),
    ("redirect", {"targets": ["x"]}, "targets[0]"),
    ("redirect", {"targets": [_TARGET], "timeout": 10}, "timeout is 10"),
    ("redirect", {"targets": [_TARGET], "timeout": 91}, "timeout is 91"),
    ("redirect", {"targets": [_TARGET], "timeout": "30"}, "timeout is '30'"),
    ("redirect", {"targets": [_TARGET], "callbackUri": "x"}, "callbackUri is 'x'"),
    ("redirect", {"targets": [_TARGET], "extra": 1}, "the property 'extra'"),
    ("answer", ["not", "an", "object"], "the body is a JSON list"),
]


@pytest.mark.anyio
async def test_bodies_that_graph_would_refuse_get_a_400_naming_the_field(
    fake_graph: FakeGraph, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """Every malformed decision body gets 400 BadRequest naming the field; the call stays open."""
    call = await fake_graph.place_call(hook.url)
    for op, body, fragment in BAD_BODIES:
        status, reply, _ = await call_control(
            http, fake_graph, "POST", f"/communications/calls/{call.call_id}/{op}", body
        )
        assert status == 400, (op, body)
        assert_graph_error(reply, "BadRequest", f"{op}: ", fragment)
    assert call.state == "incoming"
    assert all(r.status == 400 and not r.injected for r in call.requests)


@pytest.mark.anyio
async def test_unreadable_bodies_get_400_or_415(
    fake_graph: FakeGraph, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """Empty and non-JSON bodies get 400, a non-JSON content type 415, all as Graph errors."""
    call = await fake_graph.place_call(hook.url)
    path = f"/communications/calls/{call.call_id}/reject"
    status, reply, _ = await call_control(http, fake_graph, "POST", path, data=b"")
    assert status == 400
    assert_graph_error(reply, "BadRequest", "the request body is empty")
    status, reply, _ = await call_control(http, fake_graph, "POST", path, data=b"{nope")
    assert status == 400
    assert_graph_error(reply, "BadRequest", "unable to read JSON")
    assert call.requests[-1].body == "{nope"
    status, reply, _ = await call_control(
        http, fake_graph, "POST", path, {"reason": "busy"}, headers={"Content-Type": "text/plain"}
    )
    assert status == 415
    assert_graph_error(reply, "UnsupportedMediaType", "expected application/json")


@pytest.mark.anyio
async def test_every_decision_callflow_renders_is_accepted(
    fake_graph: FakeGraph, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """The fake accepts every shape of body callflow's decisions produce."""
    decisions: list[Decision] = [
        Answer(),
        Answer(
            modalities=("audio", "video", "videoBasedScreenSharing", "data"),
            prefetch=(MediaPrompt("https://x.example/a.wav", "a"), MediaPrompt("https://x.ex/b")),
            hide_bot_after_escalation=True,
            is_content_sharing_notification_enabled=False,
            participant_capacity=3,
        ),
        Answer(media="app", blob="<blob/>"),
        Reject(),
        Reject(RejectReason.NONE),
        Reject(RejectReason.FORBIDDEN, callback_uri="https://other.example/cb"),
        Redirect(Target.phone("+14255550100"), timeout=15),
        Redirect(
            [Target.user("u", display_name="U", tenant_id="t"), Target.application_instance("i")],
            timeout=90,
        ),
    ]
    for decision in decisions:
        call = await fake_graph.place_call(hook.url)
        status, reply, headers = await call_control(
            http,
            fake_graph,
            "POST",
            f"/communications/calls/{call.call_id}/{decision.kind}",
            decision.to_graph(CALLBACK_URL),
        )
        assert (status, reply) == (202, None), decision
        assert headers["client-request-id"] == "crid-1"
        assert headers["request-id"]
    # no callbackUri at all is fine for reject and redirect
    call = await fake_graph.place_call(hook.url)
    status, _, _ = await call_control(
        http, fake_graph, "POST", f"/communications/calls/{call.call_id}/reject", {}
    )
    assert status == 202


# --- call state ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_call_is_decided_once_then_kept_alive_and_hung_up(
    fake_graph: FakeGraph, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """After an answer, decisions get 404/8522; keepAlive 200, GET 200, DELETE 204, then 404."""
    call = await fake_graph.place_call(hook.url)
    base = f"/communications/calls/{call.call_id}"
    assert (await call_control(http, fake_graph, "POST", base + "/answer", _ANSWER))[0] == 202
    assert call.state == "established"
    for op, body in (("answer", _ANSWER), ("reject", {"reason": "busy"})):
        status, reply, _ = await call_control(http, fake_graph, "POST", base + "/" + op, body)
        assert status == 404
        assert_graph_error(reply, "8522", "already answered; a call is decided once")
    assert (await call_control(http, fake_graph, "POST", base + "/keepalive"))[0] == 200
    status, reply, _ = await call_control(http, fake_graph, "GET", base)
    assert status == 200
    assert reply["state"] == "established"
    assert reply["id"] == call.call_id
    assert (await call_control(http, fake_graph, "DELETE", base))[:2] == (204, None)
    assert call.state == "terminated"
    for method, path in (("DELETE", base), ("POST", base + "/keepAlive"), ("GET", base)):
        status, reply, _ = await call_control(http, fake_graph, method, path)
        assert status == 404
        assert_graph_error(reply, "8522", "has ended")
    assert [r.op for r in call.requests] == [
        "answer",
        "answer",
        "reject",
        "keepAlive",
        "get",
        "delete",
        "delete",
        "keepAlive",
        "get",
    ]


@pytest.mark.anyio
async def test_unknown_calls_actions_and_paths(
    fake_graph: FakeGraph, http: aiohttp.ClientSession
) -> None:
    """An unplaced call gets 404/8522, an unknown action 400, any other path a JSON 404."""
    status, reply, _ = await call_control(
        http, fake_graph, "POST", "/communications/calls/nope/reject", {"reason": "busy"}
    )
    assert status == 404
    assert_graph_error(reply, "8522", "no call nope was placed")
    status, reply, _ = await call_control(
        http, fake_graph, "POST", "/communications/calls/x/frobnicate"
    )
    assert status == 400
    assert_graph_error(reply, "BadRequest", "segment 'frobnicate'")
    assert fake_graph.requests_for("x")[0].op == "unknown:frobnicate"
    status, reply, headers = await call_control(
        http, fake_graph, "GET", "/me", headers={"client-request-id": ""}
    )
    assert status == 404
    assert_graph_error(reply, "ResourceNotFound", "GET /v1.0/me")
    assert "client-request-id" not in reply["error"]["innerError"]
    assert "client-request-id" not in headers


@pytest.mark.anyio
async def test_gone_calls_get_8522(
    fake_graph: FakeGraph, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """After gone(call_id), every request for the call gets 404 with code 8522."""
    call = await fake_graph.place_call(hook.url)
    fake_graph.gone(call.call_id)
    fake_graph.gone("never-placed")
    assert call.gone
    status, reply, _ = await call_control(
        http, fake_graph, "POST", f"/communications/calls/{call.call_id}/answer", _ANSWER
    )
    assert status == 404
    assert_graph_error(reply, "8522", "is gone")


@pytest.mark.anyio
async def test_hang_up_before_a_decision_ends_the_call(
    fake_graph: FakeGraph, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """DELETE on an undecided call ends it and later decisions get 404."""
    call = await fake_graph.place_call(hook.url)
    base = f"/communications/calls/{call.call_id}"
    assert (await call_control(http, fake_graph, "POST", base + "/keepAlive"))[0] == 200
    assert (await call_control(http, fake_graph, "DELETE", base))[0] == 204
    assert (await call_control(http, fake_graph, "POST", base + "/answer", _ANSWER))[0] == 404


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fail_next_answers_matching_requests_with_the_fault(
    fake_graph: FakeGraph, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """fail_next answers the next matching requests with its status, Retry-After and code."""
    call = await fake_graph.place_call(hook.url)
    other = await fake_graph.place_call(hook.url)
    base = f"/communications/calls/{call.call_id}"
    fake_graph.fail_next(None, 500, call_id=other.call_id)
    fake_graph.fail_next("decision", 503, retry_after=1.5, count=2)
    fake_graph.fail_next("keepAlive", 429, code="activityLimitReached")
    for _ in range(2):
        status, reply, headers = await call_control(
            http, fake_graph, "POST", base + "/reject", {"reason": "busy"}
        )
        assert status == 503
        assert headers["Retry-After"] == "1.5"
        assert_graph_error(reply, "ServiceUnavailable", "fail_next")
    assert call.state == "incoming"
    status, reply, headers = await call_control(http, fake_graph, "POST", base + "/keepAlive")
    assert status == 429
    assert "Retry-After" not in headers
    assert_graph_error(reply, "activityLimitReached")
    status, _, _ = await call_control(
        http, fake_graph, "POST", f"/communications/calls/{other.call_id}/answer", _ANSWER
    )
    assert status == 500
    assert (await call_control(http, fake_graph, "POST", base + "/answer", _ANSWER))[0] == 202
    assert [(r.status, r.injected) for r in call.requests] == [
        (503, True),
        (503, True),
        (429, True),
        (202, False),
    ]
    fake_graph.fail_next(status=418)
    assert (await call_control(http, fake_graph, "GET", base))[0] == 418


def test_fail_next_refuses_nonsense(callflow_signing_key: SigningKey) -> None:
    """fail_next names what was wrong with its arguments."""
    fake = make_fake(callflow_signing_key)
    with pytest.raises(ValueError, match="unknown op 'frobnicate'"):
        fake.fail_next("frobnicate")
    with pytest.raises(ValueError, match="HTTP error status"):
        fake.fail_next(status=200)
    with pytest.raises(ValueError, match="count must be 1 or more"):
        fake.fail_next(count=0)
    with pytest.raises(ValueError, match="retry_after must be zero or more"):
        fake.fail_next(retry_after=-1)


@pytest.mark.anyio
async def test_latency_delays_replies_and_does_not_hold_up_the_exit(
    callflow_signing_key: SigningKey, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """Latency delays every reply; leaving the fake answers the delayed requests at once."""
    replies: list[int] = []
    async with anyio.create_task_group() as tg, make_fake(callflow_signing_key) as fake:
        call = await fake.place_call(hook.url)
        fake.latency = 0.3
        started = time.monotonic()
        status, _, _ = await call_control(
            http, fake, "POST", f"/communications/calls/{call.call_id}/keepAlive"
        )
        assert status == 200
        assert time.monotonic() - started >= 0.3
        assert call.requests[0].at - started < 0.25
        fake.latency = 60.0

        async def slow() -> None:
            path = f"/communications/calls/{call.call_id}/answer"
            replies.append((await call_control(http, fake, "POST", path, _ANSWER))[0])

        tg.start_soon(slow)
        await fake.wait_requests(2)
        started = time.monotonic()
    assert replies == [202]
    assert time.monotonic() - started < 5.0
    assert [d.kind for d in call.deliveries] == ["incoming"]  # no follow-up once closing


# --- the platform timeout and follow-ups ----------------------------------------------------


@pytest.mark.anyio
async def test_undecided_calls_time_out_with_a_408_terminated_notification(
    callflow_signing_key: SigningKey, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """An undecided call ends at its platform timeout (recording timeout for recording calls)."""
    async with make_fake(callflow_signing_key, platform_timeout=0.6, recording_timeout=0.3) as fake:
        decided = await fake.place_call(hook.url, kind="policy_recording")
        await call_control(
            http, fake, "POST", f"/communications/calls/{decided.call_id}/reject", {}
        )
        slow = await fake.place_call(hook.url)
        recording = await fake.place_call(hook.url, kind="policy_recording")
        with anyio.fail_after(GUARD):
            first = await recording.wait_delivery("timeout")
            second = await slow.wait_delivery("timeout")
        assert first.at < second.at
        assert first.at - recording.placed_at >= 0.3
        assert second.at - slow.placed_at >= 0.6
        assert slow.timed_out and recording.timed_out
        assert not decided.timed_out
        assert [d.kind for d in decided.deliveries] == ["incoming", "terminated"]
        assert slow.state == "terminated"
        item = second.sent["value"][0]
        assert item["changeType"] == "deleted"
        assert item["resourceData"]["state"] == "terminated"
        info = item["resourceData"]["resultInfo"]
        assert (info["code"], info["subcode"], info["message"]) == (
            408,
            8544,
            "Callee could not be reached",
        )
        (event,) = parse_notifications(json.dumps(second.sent))
        assert isinstance(event, CallTerminated)
        assert event.call_id == slow.call_id
        status, reply, _ = await call_control(
            http, fake, "POST", f"/communications/calls/{slow.call_id}/answer", _ANSWER
        )
        assert status == 404
        assert_graph_error(reply, "8522", "not decided within 0.6 s")


@pytest.mark.anyio
async def test_decisions_are_followed_by_state_notifications(
    fake_graph: FakeGraph, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """An answer is followed by 'established', a reject, redirect or hang-up by 'terminated'."""
    answered = await fake_graph.place_call(hook.url)
    base = f"/communications/calls/{answered.call_id}"
    await call_control(http, fake_graph, "POST", base + "/answer", _ANSWER)
    with anyio.fail_after(GUARD):
        established = await answered.wait_delivery("established")
    (event,) = parse_notifications(json.dumps(established.sent))
    assert isinstance(event, CallStateChanged)
    assert event.state == "established"
    assert event.etag == 2  # the incoming call carried W/"1"
    await call_control(http, fake_graph, "DELETE", base)
    with anyio.fail_after(GUARD):
        hung_up = await answered.wait_delivery("terminated")
    assert hung_up.sent["value"][0]["resourceData"]["@odata.etag"] == 'W/"3"'
    for op, body in (("reject", {"reason": "busy"}), ("redirect", {"targets": [_TARGET]})):
        call = await fake_graph.place_call(hook.url)
        await call_control(
            http, fake_graph, "POST", f"/communications/calls/{call.call_id}/{op}", body
        )
        with anyio.fail_after(GUARD):
            ended = await call.wait_delivery("terminated")
        (event,) = parse_notifications(json.dumps(ended.sent))
        assert isinstance(event, CallTerminated)
        assert event.result is not None
        assert event.result.code == 200
        assert ended.status == 202


@pytest.mark.anyio
async def test_follow_ups_can_be_turned_off(
    callflow_signing_key: SigningKey, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """With follow_up=False the fake sends nothing after a decision."""
    async with make_fake(callflow_signing_key, follow_up=False) as fake:
        call = await fake.place_call(hook.url)
        await call_control(
            http, fake, "POST", f"/communications/calls/{call.call_id}/answer", _ANSWER
        )
        other = await fake.place_call(hook.url)
        await call_control(http, fake, "POST", f"/communications/calls/{other.call_id}/reject", {})
        await fake.notify(hook.url, [], call_id=call.call_id)
        assert [d.kind for d in call.deliveries] == ["incoming", "custom"]
        assert [d.kind for d in other.deliveries] == ["incoming"]
        assert len(hook.received) == 3


@pytest.mark.anyio
async def test_deliveries_to_a_dead_webhook_are_recorded_not_raised(
    callflow_signing_key: SigningKey,
) -> None:
    """A timeout notification that cannot be delivered is recorded with status 0."""
    async with make_fake(callflow_signing_key, platform_timeout=0.2) as fake:
        async with Receiver() as receiver:
            call = await fake.place_call(receiver.url)
        with anyio.fail_after(GUARD):
            reply = await call.wait_delivery("timeout")
    assert reply.status == 0
    assert not reply.ok
    assert reply.error is not None


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_thousand_calls_time_out_on_schedule(
    callflow_signing_key: SigningKey, hook: Receiver
) -> None:
    """A thousand placed calls each get their 408 notification from one timeout enforcer."""
    async with make_fake(callflow_signing_key, platform_timeout=1.0) as fake:
        limiter = anyio.CapacityLimiter(100)
        handles: list[CallHandle] = []

        async def place() -> None:
            async with limiter:
                handles.append(await fake.place_call(hook.url))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(1000):
                    tg.start_soon(place)
            for handle in handles:
                reply = await handle.wait_delivery("timeout")
                assert reply.at >= handle.deadline
        assert all(h.timed_out for h in handles)
        assert len(hook.received) == 2000


# --- notifications ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_each_kind_of_call_parses_as_that_kind(
    fake_graph: FakeGraph, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """Each kind's notification is signed for the bot and parses into the matching call."""
    async with http.get(fake_graph.openid_config_url) as resp:
        jwks_uri = (await resp.json())["jwks_uri"]
    async with http.get(jwks_uri) as resp:
        (jwk,) = (await resp.json())["keys"]
    public_key = jwt.PyJWK(jwk).key
    for index, kind in enumerate(KINDS):
        handle = await fake_graph.place_call(hook.url, kind=kind)
        assert handle.webhook_status == 202
        assert handle.webhook_body == {"seen": index + 1}
        headers, raw = hook.received[index]
        claims = jwt.decode(
            headers["Authorization"].removeprefix("Bearer "),
            public_key,
            algorithms=["RS256"],
            audience=DEFAULT_APP_ID,
            issuer="https://api.botframework.com",
        )
        assert claims["tid"] == DEFAULT_TENANT_ID
        assert headers["X-Microsoft-Skype-Chain-ID"] == handle.chain_id
        assert headers["Scenario-Id"] == handle.scenario_id
        (call,) = parse_notifications(raw)
        assert isinstance(call, IncomingCall)
        assert call.call_id == handle.call_id
        assert call.tenant_id == DEFAULT_TENANT_ID
        assert call.etag == 1
        assert call.callback_uri == CALLBACK_URL
        assert call.is_policy_recording == (kind == "policy_recording")
        assert handle.policy_recording == (kind == "policy_recording")
        group = kind.endswith("_meeting")
        assert call.is_group_call == group
        caller_kind = {"phone": "phone", "encrypted": "encrypted", "guest": "guest"}
        assert call.caller.kind == caller_kind.get(kind, "user")
        meeting = {
            "group_meeting": OrganizerMeetingInfo,
            "channel_meeting": TokenMeetingInfo,
            "joinid_meeting": JoinMeetingIdMeetingInfo,
        }
        if group:
            assert isinstance(call.meeting_info, meeting[kind])
        assert call.modalities == (("audio", "video") if kind == "channel_meeting" else ("audio",))
        target = call.targets[0].identity
        assert target is not None
        assert target.kind == ("applicationInstance" if kind == "phone" else "application")
    channel = parse_notifications(hook.received[KINDS.index("channel_meeting")][1])[0]
    assert isinstance(channel, IncomingCall)
    assert channel.chat_info is not None
    assert channel.chat_info.thread_id is not None
    assert channel.chat_info.thread_id.endswith("@thread.tacv2")


@pytest.mark.anyio
async def test_callers_tenants_and_custom_payloads(
    callflow_signing_key: SigningKey, hook: Receiver
) -> None:
    """Callers may be Identities, small dicts or identitySets; payloads may be custom."""
    async with make_fake(callflow_signing_key, recording_timeout=1.0) as fake:
        await fake.place_call(hook.url, caller=Identity("user", "u-9", "Nine", "t-9"))
        await fake.place_call(
            hook.url, kind="phone", caller={"kind": "phone", "id": "+14255550199"}
        )
        await fake.place_call(hook.url, caller={"guest": {"id": "g-1", "displayName": "G"}})
        await fake.place_call(hook.url, tenant_id="other-tenant", policy_recording=True)
        calls = [parse_notifications(raw)[0] for _, raw in hook.received]
        assert all(isinstance(call, IncomingCall) for call in calls)
        first, second, third, fourth = (c for c in calls if isinstance(c, IncomingCall))
        assert first.caller == Identity("user", "u-9", "Nine", "t-9")
        assert second.caller.phone_number == "+14255550199"
        assert third.caller.kind == "guest"
        assert fourth.tenant_id == "other-tenant"
        assert fourth.is_policy_recording
        assert fake.calls[3].timeout == 1.0
        claims = jwt.decode(
            hook.received[3][0]["Authorization"].removeprefix("Bearer "),
            options={"verify_signature": False},
        )
        assert claims["tid"] == "other-tenant"

        payload = json.loads(hook.received[3][1])
        payload["value"][0]["resourceData"]["id"] = "custom-1"
        custom = await fake.place_call(hook.url, payload=payload)
        assert custom.call_id == "custom-1"
        assert custom.policy_recording
        del payload["value"][0]["resourceData"]["id"]
        payload["value"][0]["resourceUrl"] = "/communications/calls/custom-2"
        assert (await fake.place_call(hook.url, payload=payload)).call_id == "custom-2"
        bad_payloads: list[dict[str, Any]] = [
            {"value": []},
            {"value": [{"resourceUrl": "/communications/calls/"}]},
        ]
        for bad in bad_payloads:
            with pytest.raises(ValueError, match="cannot tell the call id"):
                await fake.place_call(hook.url, payload=bad)
        odd = await fake.place_call(hook.url, payload={"value": "x"}, call_id="odd")
        assert not odd.policy_recording
        plain = json.loads(hook.received[0][1])
        plain["value"][0]["resourceData"]["id"] = "plain"
        assert not (await fake.place_call(hook.url, payload=plain)).policy_recording
        with pytest.raises(ValueError, match="already placed"):
            await fake.place_call(hook.url, call_id="custom-1")
        with pytest.raises(ValueError, match="unknown call kind 'video'"):
            await fake.place_call(hook.url, kind="video")
        with pytest.raises(ValueError, match="duplicate must be zero or more"):
            await fake.place_call(hook.url, duplicate=-1)
        with pytest.raises(TypeError, match="caller must be an Identity"):
            await fake.place_call(hook.url, caller=42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"caller\['kind'\]"):
            await fake.place_call(hook.url, caller={"kind": ""})
        assert fake.call("custom-1") is custom
        with pytest.raises(KeyError, match="no call 'nope'"):
            fake.call("nope")


@pytest.mark.anyio
async def test_duplicates_are_the_same_notification_again(
    fake_graph: FakeGraph, hook: Receiver
) -> None:
    """duplicate=2 posts the same body twice more, each reply recorded on the handle."""
    call = await fake_graph.place_call(hook.url, duplicate=2)
    assert [r.kind for r in call.replies] == ["incoming", "duplicate", "duplicate"]
    assert [r.status for r in call.replies] == [202, 202, 202]
    bodies = hook.bodies()
    assert bodies[0] == bodies[1] == bodies[2]
    request_ids = {headers["Client-Request-Id"] for headers, _ in hook.received}
    assert len(request_ids) == 3
    assert {headers["Scenario-Id"] for headers, _ in hook.received} == {call.scenario_id}


@pytest.mark.anyio
async def test_send_states_out_of_order_and_batched(fake_graph: FakeGraph, hook: Receiver) -> None:
    """send_states posts the states in the order given with the etags given, or batched."""
    call = await fake_graph.place_call(hook.url)
    replies = await fake_graph.send_states(
        hook.url, call.call_id, ["established", "establishing"], etags=[5, 4]
    )
    assert [r.status for r in replies] == [202, 202]
    events = [parse_notifications(body)[0] for body in (json.dumps(b) for b in hook.bodies()[1:])]
    assert [(e.state, e.etag) for e in events if isinstance(e, CallStateChanged)] == [
        ("established", 5),
        ("establishing", 4),
    ]
    (batched,) = await fake_graph.send_states(
        hook.url, call.call_id, ["hold", "terminated"], batch=True
    )
    hold, ended = parse_notifications(json.dumps(batched.sent))
    assert isinstance(hold, CallStateChanged)
    assert hold.etag == 2
    assert isinstance(ended, CallTerminated)
    await fake_graph.send_states(hook.url, "elsewhere", ["established"])
    assert json.loads(hook.received[-1][1])["value"][0]["resourceData"]["@odata.etag"] == 'W/"1"'
    with pytest.raises(ValueError, match="one etag per state"):
        await fake_graph.send_states(hook.url, call.call_id, ["hold"], etags=[1, 2])
    assert [d.kind for d in call.deliveries] == ["incoming", "state", "state", "state"]


@pytest.mark.anyio
async def test_notify_sends_anything_signed(fake_graph: FakeGraph, hook: Receiver) -> None:
    """notify wraps item lists, sends dicts and raw bytes as given, and honours header changes."""
    roster = participants("c-1", [Identity("user", "u-1"), {"kind": "phone", "id": "+1425"}])
    reply = await fake_graph.notify(hook.url, [roster])
    assert reply.ok
    assert reply.body == {"seen": 1}
    (event,) = parse_notifications(hook.received[0][1])
    assert isinstance(event, ParticipantsUpdated)
    assert len(event.participants) == 2
    await fake_graph.notify(hook.url, {"anything": True}, token="tok")
    assert hook.received[1][0]["Authorization"] == "Bearer tok"
    await fake_graph.notify(
        hook.url, b"\x00garbage", headers={"authorization": None, "Content-Type": None}
    )
    headers, raw = hook.received[2]
    assert raw == b"\x00garbage"
    assert "Authorization" not in headers
    assert "Content-Type" not in headers
    await fake_graph.notify(hook.url, "text", headers={"X-Extra": "1"})
    assert hook.received[3][0]["X-Extra"] == "1"
    async with Receiver() as gone:
        url = gone.url
    with pytest.raises(aiohttp.ClientConnectionError):
        await fake_graph.notify(url, [])
    with pytest.raises(aiohttp.ClientConnectionError):
        await fake_graph.place_call(url, call_id="unreachable")
    assert fake_graph.call("unreachable").state == "terminated"


@pytest.mark.anyio
async def test_end_call_is_the_caller_hanging_up(
    fake_graph: FakeGraph, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """end_call posts a terminated notification and later requests for the call get 404."""
    call = await fake_graph.place_call(hook.url)
    reply = await fake_graph.end_call(call.call_id)
    assert reply.kind == "terminated"
    (event,) = parse_notifications(hook.received[-1][1])
    assert isinstance(event, CallTerminated)
    assert event.result is not None
    assert event.result.subcode == 5001
    status, _, _ = await call_control(
        http, fake_graph, "POST", f"/communications/calls/{call.call_id}/answer", _ANSWER
    )
    assert status == 404


@pytest.mark.anyio
async def test_webhook_errors_are_recorded_on_the_handle(fake_graph: FakeGraph) -> None:
    """A webhook that refuses the notification shows its status and body on the handle."""
    async with Receiver(status=403) as refusing:
        call = await fake_graph.place_call(refusing.url)
    assert call.webhook_status == 403
    assert call.webhook_body == {"seen": 1}
    assert not call.replies[0].ok


# --- signing, settings, records --------------------------------------------------------------


def test_payload_builders() -> None:
    """The public builders refuse unknown kinds and leave out what is not given."""
    with pytest.raises(ValueError, match="unknown call kind 'fax'"):
        incoming_call(
            kind="fax", call_id="c", tenant_id="t", bot_app_id="a", callback_uri=CALLBACK_URL
        )
    bare = call_terminated("c", code=None, subcode=None, message=None)
    assert "resultInfo" not in bare["resourceData"]
    only_code = call_terminated("c", subcode=None, message=None)
    assert only_code["resourceData"]["resultInfo"] == {
        "@odata.type": "#microsoft.graph.resultInfo",
        "code": 200,
    }
    no_code = call_terminated("c", code=None, subcode=None, message="m")
    assert no_code["resourceData"]["resultInfo"]["message"] == "m"
    assert "code" not in no_code["resourceData"]["resultInfo"]
    assert call_state("c", "hold")["resourceData"].get("@odata.etag") is None
    roster = participants("c", [{"user": {"id": "u"}}], muted=True)
    assert roster["resourceData"][0]["isMuted"] is True
    assert envelope()["value"] == []


def test_sign_makes_graph_like_tokens_and_forgeries(callflow_signing_key: SigningKey) -> None:
    """sign() makes RS256 tokens for the bot; claims can be changed or removed."""
    fake = make_fake(callflow_signing_key, issuer="https://graph.microsoft.com/")
    public = callflow_signing_key.private_key.public_key()
    claims = jwt.decode(fake.sign(), public, algorithms=["RS256"], audience=DEFAULT_APP_ID)
    assert claims["iss"] == "https://graph.microsoft.com/"
    assert claims["exp"] - claims["iat"] == 3600
    assert "tid" not in jwt.decode(fake.sign(tid=None), options={"verify_signature": False})
    other = jwt.decode(fake.sign(aud="x", lifetime=60), options={"verify_signature": False})
    assert other["aud"] == "x"
    assert other["exp"] - other["iat"] == 60
    assert jwt.get_unverified_header(fake.sign(algorithm="none"))["alg"] == "none"


def test_constructor_checks_its_arguments(callflow_signing_key: SigningKey) -> None:
    """Bad timeouts, lifetimes or identities are refused with the reason."""
    with pytest.raises(ValueError, match="platform_timeout=0"):
        make_fake(callflow_signing_key, platform_timeout=0)
    with pytest.raises(ValueError, match="token_lifetime=0"):
        make_fake(callflow_signing_key, token_lifetime=0)
    with pytest.raises(ValueError, match="non-empty"):
        make_fake(callflow_signing_key, app_id="")


@pytest.mark.anyio
async def test_settings_and_environ_wire_a_bot_to_the_fake(
    callflow_signing_key: SigningKey,
) -> None:
    """settings() points every URL, key and timeout at the fake; environ() says the same."""
    async with make_fake(callflow_signing_key, platform_timeout=3.0) as fake:
        settings = fake.settings()
        assert settings.app_id == DEFAULT_APP_ID
        assert settings.authority_url == fake.authority_url
        assert settings.ca_bundle == fake.ca_bundle
        assert settings.graph_url == fake.url + "/v1.0"
        assert settings.openid_config_url == fake.openid_config_url
        assert settings.issuers == ("https://api.botframework.com",)
        assert settings.callback_url == CALLBACK_URL
        assert (settings.host, settings.port) == ("127.0.0.1", 0)
        assert (settings.platform_timeout, settings.recording_timeout) == (3.0, 5.0)
        assert settings.safety_margin == 1.0
        assert fake.settings(platform_timeout=15.0).safety_margin == 3.0
        assert fake.settings(safety_margin=0.5).safety_margin == 0.5
        overrides = {"instance_id": "w1", "inbound_auth": False, "allowed_tenants": ("a", "b")}
        env = fake.environ(**overrides)
        assert env["CALLFLOW_INBOUND_AUTH"] == "off"
        assert env["CALLFLOW_ALLOWED_TENANTS"] == "a,b"
        assert env["CALLFLOW_PORT"] == "0"
        assert Settings.from_env(env) == fake.settings(**overrides)
        assert "CALLFLOW_CERTIFICATE_PATH" not in fake.environ(certificate_path=None)
        assert repr(fake).startswith(f"<FakeGraph {fake.url} ")
    assert "not running" in repr(fake)
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.url


@pytest.mark.anyio
async def test_requests_are_recorded_and_waitable(
    fake_graph: FakeGraph, hook: Receiver, http: aiohttp.ClientSession
) -> None:
    """Each request is recorded with op, call, body, headers, arrival time and status."""
    call = await fake_graph.place_call(hook.url)
    before = time.monotonic()
    await call_control(
        http, fake_graph, "POST", f"/communications/calls/{call.call_id}/reject", {"reason": "none"}
    )
    (request,) = fake_graph.requests
    assert request.op == "reject"
    assert request.call_id == call.call_id
    assert request.body == {"reason": "none"}
    assert request.headers["client-request-id"] == "crid-1"
    assert before <= request.at <= time.monotonic()
    assert (request.status, request.accepted, request.is_decision) == (202, True, True)
    assert fake_graph.requests_for(call.call_id) == (request,)
    assert fake_graph.requests_for("other") == ()
    assert await fake_graph.wait_requests(1, op="decision", call_id=call.call_id) == (request,)
    assert await call.wait_requests(1, op="reject") == (request,)
    assert call.decisions == (request,)
    assert await call.decision() is request
    assert repr(call).startswith(f"<CallHandle {call.call_id} kind=p2p state=terminated")
    with pytest.raises(TimeoutError, match="expected 2 decision request"):
        await fake_graph.wait_requests(2, op="decision", call_id=call.call_id, timeout=0.05)
    with pytest.raises(TimeoutError, match="expected 1 any request"):
        await fake_graph.wait_requests(1, call_id="nobody", timeout=0.05)
    undecided = await fake_graph.place_call(hook.url)
    with pytest.raises(TimeoutError, match=r"no accepted answer/reject/redirect within 0.05 s"):
        await undecided.decision(timeout=0.05)
    with pytest.raises(TimeoutError, match="no established notification"):
        await undecided.wait_delivery("established", timeout=0.05)


@pytest.mark.anyio
async def test_the_fake_must_be_running(callflow_signing_key: SigningKey) -> None:
    """Using a fake outside its block, or entering it twice, is refused with the reason."""
    fake = make_fake(callflow_signing_key)
    with pytest.raises(RuntimeError, match="FakeGraph is not running"):
        await fake.place_call("http://127.0.0.1:9/hook")
    with pytest.raises(RuntimeError, match="FakeGraph is not running"):
        async with fake.serve(Bot()):
            pass  # pragma: no cover
    async with fake:
        with pytest.raises(RuntimeError, match="FakeGraph runs once"):
            await fake.__aenter__()
    await fake.__aexit__(None, None, None)  # a second exit does nothing
    with pytest.raises(RuntimeError, match="create a new FakeGraph"):
        await fake.__aenter__()


@pytest.mark.anyio
async def test_a_failed_start_cleans_up(
    callflow_signing_key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When starting fails half way, what was started is stopped again."""
    fake = make_fake(callflow_signing_key)

    def broken(self: web.Application, prefix: str, subapp: web.Application) -> None:
        raise OSError("no sockets today")

    monkeypatch.setattr(web.Application, "add_subapp", broken)
    with pytest.raises(OSError, match="no sockets today"):
        await fake.__aenter__()
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.tokens.authority_url


# --- the pytest plugin -----------------------------------------------------------------------


@pytest.fixture
def callflow_bot() -> Bot:
    """The bot the plugin's running_bot fixture serves."""
    return answering_bot(Reject(RejectReason.FORBIDDEN))


@pytest.mark.anyio
async def test_running_bot_fixture_serves_the_callflow_bot(
    running_bot: RunningBot, fake_graph: FakeGraph
) -> None:
    """The running_bot fixture serves the callflow_bot fixture's bot against fake_graph."""
    call = await fake_graph.place_call(running_bot.webhook_url)
    with anyio.fail_after(GUARD):
        decision = await call.decision()
    assert decision.body == {"reason": "forbidden", "callbackUri": CALLBACK_URL}


@pytest.mark.anyio
async def test_serve_bot_fixture_serves_with_overrides(
    serve_bot: Callable[..., AbstractAsyncContextManager[RunningBot]], fake_graph: FakeGraph
) -> None:
    """serve_bot(bot, **overrides) serves a bot with the fake's settings and the overrides."""
    bot = answering_bot()
    async with serve_bot(bot, default_reject_reason="forbidden") as running:
        assert running.ready
        assert bot.settings.default_reject_reason == "forbidden"
        assert bot.settings.graph_url == fake_graph.graph_url


class TestOptions:
    """fake_graph_options configures the fixture's FakeGraph."""

    @pytest.fixture
    def fake_graph_options(self) -> dict[str, Any]:
        """Short timeouts for this class."""
        return {"platform_timeout": 2.5, "follow_up": False}

    @pytest.mark.anyio
    async def test_options_reach_the_fake(self, fake_graph: FakeGraph) -> None:
        """The fixture built the fake with the overridden options."""
        assert fake_graph.platform_timeout == 2.5
        assert not fake_graph.follow_up


def test_fixtures_skip_other_backends() -> None:
    """The plugin skips tests run on a backend other than asyncio, saying why."""
    plugin_module._require_asyncio("asyncio")
    plugin_module._require_asyncio(("asyncio", {}))
    with pytest.raises(pytest.skip.Exception, match="runs on asyncio"):
        plugin_module._require_asyncio("trio")
