"""GraphClient against a real aiohttp Graph stub on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import random
import re
import socket
import ssl
import struct
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import attrs
import pytest
import trustme
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from structlog.testing import capture_logs

from callflow import _hosts
from callflow.control import control as _control
from callflow.decisions import Answer, MediaPrompt, Redirect, Reject, RejectReason, Target
from callflow.errors import (
    CallGoneError,
    ConfigError,
    GraphError,
    GraphResponseError,
    RecordingTooLargeError,
)
from callflow.events import Identity, IncomingCall
from callflow.graph import transport as _transport
from callflow.graph.client import GraphClient, GraphResult
from callflow.graph.tokens import StaticTokenProvider
from callflow.graph.transport import _AttemptTimeout, _new_uuid, _parse_retry_after

pytestmark = pytest.mark.anyio

CALLBACK = "https://bot.example.com/api/calls"
TOKEN = "tok-secret-123"
GUARD = 5.0  # seconds: an upper bound that only a hung test reaches


@attrs.frozen
class Reply:
    """One scripted answer of the stub."""

    status: int = 202
    body: Any = None
    headers: dict[str, str] = attrs.field(factory=dict)
    hang: bool = False


@attrs.frozen
class Seen:
    """One request the stub received."""

    method: str
    path: str
    raw_path: str
    headers: dict[str, str]
    body: Any
    at: float


class GraphStub:
    """A Graph stand-in: records every request and answers from a script (default 202)."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.seen: list[Seen] = []
        self.release = asyncio.Event()
        self.base_url = ""

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.seen.append(
            Seen(
                request.method,
                request.path,
                request.raw_path,
                dict(request.headers),
                json.loads(raw) if raw else None,
                time.monotonic(),
            )
        )
        reply = self.replies.popleft() if self.replies else Reply()
        if reply.hang:
            await self.release.wait()
        headers = {"request-id": f"rid-{len(self.seen)}", **reply.headers}
        if isinstance(reply.body, dict):
            return web.json_response(reply.body, status=reply.status, headers=headers)
        return web.Response(status=reply.status, body=reply.body, headers=headers)


@contextlib.asynccontextmanager
async def serve_stub(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[GraphStub]:
    stub = GraphStub()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stub.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = runner.addresses[0][1]
        scheme = "https" if ssl_context else "http"
        stub.base_url = f"{scheme}://127.0.0.1:{port}/v1.0"
        yield stub
    finally:
        stub.release.set()
        await runner.cleanup()


@pytest.fixture
async def graph() -> AsyncIterator[GraphStub]:
    async with serve_stub() as stub:
        yield stub


class Tokens:
    """A token provider that records the tenants it was asked for."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.tenants: list[str | None] = []

    async def get_token(self, tenant_id: str | None = None) -> str:
        self.tenants.append(tenant_id)
        return self.token


def make_client(base_url: str, **kwargs: Any) -> GraphClient:
    kwargs.setdefault("tokens", Tokens())
    kwargs.setdefault("callback_url", CALLBACK)
    kwargs.setdefault("backoff", (0.001, 0.002))
    return GraphClient(base_url=base_url, **kwargs)


def is_uuid(value: str) -> bool:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return str(parsed) == value and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def events(logs: Sequence[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- requests -----------------------------------------------------------------------------


async def test_reject_sends_path_body_and_headers(graph: GraphStub) -> None:
    """A reject POSTs the decision's body to .../reject with token, ids and JSON headers."""
    tokens = Tokens()
    async with make_client(graph.base_url, tokens=tokens) as client:
        result = await client.decide("call-1", Reject(), tenant_id="tenant-1")
    (seen,) = graph.seen
    assert seen.method == "POST"
    assert seen.path == "/v1.0/communications/calls/call-1/reject"
    assert seen.body == {"reason": "busy", "callbackUri": CALLBACK}
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Accept"] == "application/json"
    assert is_uuid(seen.headers["Client-Request-Id"])
    assert is_uuid(seen.headers["Scenario-Id"])
    assert tokens.tenants == ["tenant-1"]
    assert result == GraphResult(202, 1, "rid-1", seen.headers["Client-Request-Id"])


async def test_answer_and_redirect_bodies_and_ids(graph: GraphStub) -> None:
    """Answer and redirect send their Graph bodies; a given Scenario-Id is used as is."""
    answer = Answer(prefetch=MediaPrompt("https://cdn.example.com/hello.wav", "hello"))
    redirect = Redirect(Target.user("user-9"), timeout=30)
    async with make_client(graph.base_url) as client:
        await client.decide("c-a", answer, scenario_id="scn-1")
        await client.decide("c-r", redirect, scenario_id="scn-1")
        await client.decide("c-d", Reject(RejectReason.FORBIDDEN, callback_uri=CALLBACK + "/x"))
    first, second, third = graph.seen
    assert first.path == "/v1.0/communications/calls/c-a/answer"
    assert first.body == answer.to_graph(CALLBACK)
    assert second.path == "/v1.0/communications/calls/c-r/redirect"
    assert second.body == redirect.to_graph(CALLBACK)
    assert third.body == {"reason": "forbidden", "callbackUri": CALLBACK + "/x"}
    assert first.headers["Scenario-Id"] == second.headers["Scenario-Id"] == "scn-1"
    assert third.headers["Scenario-Id"] != "scn-1"
    request_ids = {seen.headers["Client-Request-Id"] for seen in graph.seen}
    assert len(request_ids) == 3


async def test_repeated_decisions_send_the_current_body(graph: GraphStub) -> None:
    """The same decision sent again has the same body; a new default callbackUri is used."""
    reasons = [RejectReason.BUSY, RejectReason.FORBIDDEN, RejectReason.NONE]
    async with make_client(graph.base_url) as client:
        for index in range(300):  # more distinct decisions than the client keeps encoded
            callback = f"{CALLBACK}/{index // 3}"
            await client.decide(f"c-{index}", Reject(reasons[index % 3], callback_uri=callback))
        await client.decide("c-busy-1", Reject())
        await client.decide("c-busy-2", Reject())
        client.callback_url = CALLBACK + "/moved"
        await client.decide("c-busy-3", Reject())
    for index, seen in enumerate(graph.seen[:300]):
        reason = reasons[index % 3].value
        assert seen.body == {"reason": reason, "callbackUri": f"{CALLBACK}/{index // 3}"}
    assert [seen.body for seen in graph.seen[300:]] == [
        {"reason": "busy", "callbackUri": CALLBACK},
        {"reason": "busy", "callbackUri": CALLBACK},
        {"reason": "busy", "callbackUri": CALLBACK + "/moved"},
    ]


async def test_deliver_sends_the_decision_for_the_call(graph: GraphStub) -> None:
    """deliver() is the decision-sink interface: it decides the call for the call's tenant."""
    tokens = Tokens()
    call = IncomingCall(call_id="c-9", tenant_id="tenant-9", caller=Identity("user", "u-1"))
    async with make_client(graph.base_url, tokens=tokens, callback_url=None) as client:
        await client.deliver(call, Reject(), time.monotonic() + GUARD)
    (seen,) = graph.seen
    assert seen.path == "/v1.0/communications/calls/c-9/reject"
    assert seen.body == {"reason": "busy"}
    assert tokens.tenants == ["tenant-9"]


@pytest.mark.parametrize(
    "call_id", ["../a b/?x", "..", ".", "a/b", "a%2Fb", "a%2F..", "c" * 129, "", "ä", "a\nb"]
)
async def test_a_call_id_that_is_not_one_plain_path_segment_is_refused(
    graph: GraphStub, call_id: str
) -> None:
    """A call id with path syntax (``..``, ``/``, ``%2F``), other characters or more than 128 of
    them never reaches a URL: GraphError saying what was expected, and nothing is sent."""
    async with make_client(graph.base_url + "/") as client:
        for send in (
            client.decide(call_id, Reject()),
            client.hang_up(call_id),
            client.keep_alive(call_id),
        ):
            with pytest.raises(GraphError, match="is not a Graph call id; expected at most 128"):
                await send
    assert graph.seen == []


async def test_a_guid_call_id_is_the_path_segment_as_it_is(graph: GraphStub) -> None:
    """A Graph call id (a GUID) is put into the URL unchanged."""
    async with make_client(graph.base_url + "/") as client:
        await client.decide("491f0b00-ffff-4bc9-a43e-b226498ec22a", Reject())
    (seen,) = graph.seen
    assert seen.raw_path == "/v1.0/communications/calls/491f0b00-ffff-4bc9-a43e-b226498ec22a/reject"


async def test_hang_up_and_keep_alive_requests(graph: GraphStub) -> None:
    """hang_up DELETEs the call, keep_alive POSTs an empty .../keepAlive."""
    graph.script(Reply(204), Reply(200, {"ok": True}))
    async with make_client(graph.base_url) as client:
        hung = await client.hang_up("c-1", tenant_id="t")
        kept = await client.keep_alive("c-1", tenant_id="t", scenario_id="s")
    deleted, kept_alive = graph.seen
    assert (deleted.method, deleted.path) == ("DELETE", "/v1.0/communications/calls/c-1")
    assert (kept_alive.method, kept_alive.path) == (
        "POST",
        "/v1.0/communications/calls/c-1/keepAlive",
    )
    assert kept_alive.body is None
    assert kept_alive.headers["Content-Length"] == "0"
    assert kept_alive.headers["Content-Type"] == "application/json"
    assert kept_alive.headers["Scenario-Id"] == "s"
    assert (hung.status, kept.status) == (204, 200)


@pytest.mark.parametrize(
    "reply",
    [Reply(404), Reply(400, {"error": {"code": "8522", "message": "Call not found"}})],
)
async def test_hang_up_of_a_gone_call_succeeds(graph: GraphStub, reply: Reply) -> None:
    """Hanging up a call that is already gone (404 or 8522) is a success."""
    graph.script(reply)
    with capture_logs() as logs:
        async with make_client(graph.base_url) as client:
            result = await client.hang_up("c-1")
    assert result.status == reply.status
    assert result.attempts == 1
    assert len(events(logs, "graph.call_gone")) == 1


async def test_keep_alive_of_a_gone_call_raises(graph: GraphStub) -> None:
    """keep_alive raises CallGoneError once Graph answers 404."""
    graph.script(Reply(404))
    async with make_client(graph.base_url) as client:
        with pytest.raises(CallGoneError) as info:
            await client.keep_alive("c-1")
    assert info.value.status == 404
    assert len(graph.seen) == 1


async def test_get_call_request_and_reply(graph: GraphStub) -> None:
    """get_call GETs the call with no body and the tenant's token, and reads the reply: the
    state as Graph's enumeration spells it, the tenant only when the reply names one."""
    graph.script(
        Reply(200, {"id": "C-1", "state": "Terminated", "tenantId": "t-9"}),
        Reply(200, {"state": "establishing", "tenantId": ""}),
    )
    tokens = Tokens()
    async with make_client(graph.base_url, tokens=tokens) as client:
        ended = await client.get_call("C-1", tenant_id="t-1", scenario_id="s")
        establishing = await client.get_call("c-2")
    first, second = graph.seen
    assert second.path == "/v1.0/communications/calls/c-2"
    assert (first.method, first.path, first.body) == ("GET", "/v1.0/communications/calls/C-1", None)
    assert first.headers["Authorization"] == f"Bearer {TOKEN}"
    assert first.headers["Scenario-Id"] == "s"
    assert tokens.tenants == ["t-1", None]
    assert (ended.call_id, ended.state, ended.tenant_id, ended.ended) == (
        "c-1",
        "terminated",
        "t-9",
        True,
    )
    assert (ended.request.status, ended.request.request_id) == (200, "rid-1")
    assert (establishing.state, establishing.tenant_id, establishing.ended) == (
        "establishing",
        None,
        False,
    )


@pytest.mark.parametrize("body", [None, b"not json", b'["x"]', {"id": "c-1"}, {"state": 7}])
async def test_get_call_reply_without_a_state_is_an_error(graph: GraphStub, body: Any) -> None:
    """A 200 that names no state is a GraphError saying so, not a status."""
    graph.script(Reply(200, body))
    async with make_client(graph.base_url) as client:
        with pytest.raises(GraphError, match="get_call for call c-1 but named no state"):
            await client.get_call("c-1")


async def test_get_call_refuses_an_id_that_is_not_a_path_segment(graph: GraphStub) -> None:
    """An id that could leave its path segment is refused before anything is sent."""
    async with make_client(graph.base_url) as client:
        with pytest.raises(GraphError, match=re.escape("get_call: call id '../x'")):
            await client.get_call("../x")
    assert graph.seen == []


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (Reply(404), None),
        (Reply(400, {"error": {"code": "8522", "message": "Call not found"}}), "8522"),
    ],
)
async def test_call_gone_is_raised_logged_and_not_retried(
    graph: GraphStub, reply: Reply, code: str | None
) -> None:
    """404 or error code 8522 raise CallGoneError at once and log graph.call_gone."""
    graph.script(reply, Reply(202))
    with capture_logs() as logs:
        async with make_client(graph.base_url) as client:
            with pytest.raises(CallGoneError) as info:
                await client.decide("c-1", Reject())
    assert (info.value.status, info.value.code) == (reply.status, code)
    assert len(graph.seen) == 1
    (gone,) = events(logs, "graph.call_gone")
    assert gone["op"] == "reject"
    assert gone["call_id"] == "c-1"
    assert not events(logs, "graph.retry")


async def test_error_response_is_parsed(graph: GraphStub) -> None:
    """A 500 raises GraphResponseError with Graph's code, message and request id; no retry."""
    body = {
        "error": {
            "code": "InternalServerError",
            "message": "Something broke",
            "innerError": {"request-id": "inner-rid", "date": "2024-01-01T00:00:00"},
        }
    }
    graph.script(Reply(500, body, headers={"request-id": ""}))
    async with make_client(graph.base_url) as client:
        with pytest.raises(GraphResponseError) as info:
            await client.decide("c-1", Answer())
    error = info.value
    assert not isinstance(error, CallGoneError)
    assert (error.status, error.code) == (500, "InternalServerError")
    assert error.message == "Something broke"
    assert error.request_id == "inner-rid"
    assert len(graph.seen) == 1


async def test_request_id_header_wins_over_inner_error(graph: GraphStub) -> None:
    """The request-id response header is preferred to innerError's copy."""
    body = {"error": {"code": 7504, "message": "No consent", "innerError": {"request-id": "x"}}}
    graph.script(Reply(403, body, headers={"request-id": "header-rid"}))
    async with make_client(graph.base_url) as client:
        with pytest.raises(GraphResponseError) as info:
            await client.decide("c-1", Reject())
    assert (info.value.code, info.value.request_id) == ("7504", "header-rid")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>bad gateway</html>", "<html>bad gateway</html>"),
        (b"", "HTTP 502 Bad Gateway"),
        (b'{"unexpected": true}', '{"unexpected": true}'),
        (b'{"error": "flat"}', '{"error": "flat"}'),
        (b'{"error": {"code": null, "message": 5, "innerError": []}}', None),
    ],
)
async def test_odd_error_bodies_are_tolerated(
    graph: GraphStub, body: bytes, message: str | None
) -> None:
    """Error bodies that are not Graph's error JSON still give a readable GraphResponseError."""
    graph.script(Reply(502, body))
    async with make_client(graph.base_url) as client:
        with pytest.raises(GraphResponseError) as info:
            await client.decide("c-1", Reject())
    assert info.value.status == 502
    assert info.value.code is None
    assert info.value.message == (message or body.decode())
    assert info.value.request_id == "rid-1"


# --- retries ------------------------------------------------------------------------------


async def test_503_then_202_is_retried(graph: GraphStub) -> None:
    """A 503 is retried; the retry has a new Client-Request-Id and the same Scenario-Id."""
    graph.script(Reply(503), Reply(202))
    with capture_logs() as logs:
        async with make_client(graph.base_url) as client:
            result = await client.decide("c-1", Reject(), deadline=time.monotonic() + GUARD)
    first, second = graph.seen
    assert result.attempts == 2
    assert result.client_request_id == second.headers["Client-Request-Id"]
    assert first.headers["Client-Request-Id"] != second.headers["Client-Request-Id"]
    assert first.headers["Scenario-Id"] == second.headers["Scenario-Id"]
    (retry,) = events(logs, "graph.retry")
    assert (retry["op"], retry["call_id"], retry["status"], retry["attempt"]) == (
        "reject",
        "c-1",
        503,
        1,
    )
    assert 0.001 <= retry["wait"] <= 0.002
    assert retry["log_level"] == "info"  # a retry that may well succeed: no one to alert


async def test_retry_after_past_the_deadline_is_not_waited_for(graph: GraphStub) -> None:
    """A 429 whose Retry-After ends past the deadline raises at once, before the deadline."""
    graph.script(Reply(429, headers={"Retry-After": "10"}), Reply(202))
    deadline = time.monotonic() + 2.0
    with capture_logs() as logs, anyio.fail_after(GUARD):
        async with make_client(graph.base_url) as client:
            with pytest.raises(GraphResponseError) as info:
                await client.decide("c-1", Reject(), deadline=deadline)
            raised_at = time.monotonic()
    assert info.value.status == 429
    assert raised_at < deadline
    assert len(graph.seen) == 1
    (abandoned,) = events(logs, "graph.retry_abandoned")
    assert (abandoned["reason"], abandoned["wait"], abandoned["status"]) == ("deadline", 10.0, 429)


async def test_small_retry_after_is_honoured(graph: GraphStub) -> None:
    """A 429 with a Retry-After inside the deadline is retried after that wait."""
    graph.script(Reply(429, headers={"Retry-After": "0.05"}), Reply(202))
    with capture_logs() as logs, anyio.fail_after(GUARD):
        async with make_client(graph.base_url, backoff=(3.0, 3.0)) as client:
            result = await client.decide("c-1", Reject(), deadline=time.monotonic() + GUARD)
    first, second = graph.seen
    assert result.attempts == 2
    assert second.at - first.at >= 0.045
    (retry,) = events(logs, "graph.retry")
    assert retry["wait"] == 0.05


async def test_retry_after_as_http_date(graph: GraphStub) -> None:
    """A Retry-After HTTP-date already past means retry at once."""
    past = email.utils.formatdate(time.time() - 60, usegmt=True)
    graph.script(Reply(503, headers={"Retry-After": past}), Reply(202))
    with capture_logs() as logs:
        async with make_client(graph.base_url, backoff=(3.0, 3.0)) as client:
            result = await client.decide("c-1", Reject())
    assert result.attempts == 2
    assert events(logs, "graph.retry")[0]["wait"] == 0.0


async def test_backoff_grows_and_stays_in_bounds(graph: GraphStub) -> None:
    """Without Retry-After, 504s back off exponentially with jitter within the bounds."""
    graph.script(Reply(504), Reply(504), Reply(504, headers={"Retry-After": "soon"}), Reply(202))
    with capture_logs() as logs:
        async with make_client(graph.base_url, backoff=(0.002, 0.006)) as client:
            result = await client.decide("c-1", Reject())
    assert result.attempts == 4
    waits = [entry["wait"] for entry in events(logs, "graph.retry")]
    assert 0.002 <= waits[0] <= 0.004
    assert 0.003 <= waits[1] <= 0.006
    assert 0.003 <= waits[2] <= 0.006


async def test_max_attempts_then_the_last_error(graph: GraphStub) -> None:
    """After max_attempts retryable errors the last one is raised."""
    graph.script(Reply(503), Reply(503), Reply(429), Reply(202))
    with capture_logs() as logs:
        async with make_client(graph.base_url, max_attempts=3) as client:
            with pytest.raises(GraphResponseError) as info:
                await client.decide("c-1", Reject())
    assert info.value.status == 429
    assert len(graph.seen) == 3
    (abandoned,) = events(logs, "graph.retry_abandoned")
    assert (abandoned["reason"], abandoned["attempt"]) == ("max_attempts", 3)


async def test_graph_that_never_answers_fails_by_the_deadline(graph: GraphStub) -> None:
    """A request Graph never answers fails with GraphError at the deadline, not request_timeout."""
    graph.script(Reply(hang=True), Reply(hang=True))
    deadline = time.monotonic() + 0.3
    with anyio.fail_after(GUARD):
        async with make_client(graph.base_url, request_timeout=5.0) as client:
            with pytest.raises(GraphError) as info:
                await client.decide("c-1", Reject(), deadline=deadline)
            late = time.monotonic() - deadline
    assert not isinstance(info.value, GraphResponseError)
    assert isinstance(info.value.__cause__, TimeoutError)
    assert late < 0.1
    assert len(graph.seen) == 1


async def test_a_cancelled_request_stays_cancelled(graph: GraphStub) -> None:
    """Cancelling a caller mid-request cancels it: no GraphError, no retry."""
    graph.script(Reply(hang=True), Reply(hang=True))
    seen: list[tuple[str, int | None, int]] = []
    with anyio.fail_after(GUARD):
        async with make_client(
            graph.base_url, request_timeout=5.0, on_request=lambda *args: seen.append(args)
        ) as client:
            with anyio.move_on_after(0.05) as scope:
                await client.decide("c-1", Reject())
    assert scope.cancelled_caught
    assert [seen.path for seen in graph.seen] == ["/v1.0/communications/calls/c-1/reject"]
    assert seen == []


TimeoutFactory = Callable[[float], AbstractAsyncContextManager[Any]]


@pytest.mark.parametrize("make_timeout", [asyncio.timeout, _AttemptTimeout])
@pytest.mark.parametrize("scenario", ["expires", "cancelled", "both", "neither"])
async def test_attempt_timeout_follows_asyncio_timeout(
    make_timeout: TimeoutFactory, scenario: str
) -> None:
    """The attempt timeout ends a block as asyncio.timeout() does in each case."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    outcome = "finished"
    try:
        async with make_timeout(0.0 if scenario in ("expires", "both") else 5.0):
            if scenario in ("cancelled", "both"):
                loop.call_soon(task.cancel)  # runs in the iteration the timer fires in
            if scenario != "neither":
                await asyncio.sleep(GUARD)
    except TimeoutError:
        outcome = "timeout"
    except asyncio.CancelledError:
        outcome = "cancelled"
        task.uncancel()
    expected = {"expires": "timeout", "neither": "finished"}.get(scenario, "cancelled")
    assert (outcome, task.cancelling()) == (expected, 0)


async def test_request_timeout_without_deadline_is_retried(graph: GraphStub) -> None:
    """Without a deadline each attempt gets request_timeout, and timeouts are retried."""
    graph.script(Reply(hang=True), Reply(hang=True))
    seen: list[tuple[str, int | None, int]] = []
    with anyio.fail_after(GUARD):
        async with make_client(
            graph.base_url,
            request_timeout=0.1,
            max_attempts=2,
            on_request=lambda *args: seen.append(args),
        ) as client:
            with pytest.raises(GraphError, match=r"no answer within 0\.100 s"):
                await client.keep_alive("c-1")
    assert seen == [("keep_alive", None, 1), ("keep_alive", None, 2)]


async def test_connection_refused_is_retried_then_raised() -> None:
    """A closed port is retried up to max_attempts, then GraphError wraps the aiohttp error."""
    seen: list[tuple[str, int | None, int]] = []
    with capture_logs() as logs, anyio.fail_after(GUARD):
        async with make_client(
            f"http://127.0.0.1:{closed_port()}/v1.0",
            max_attempts=3,
            on_request=lambda *args: seen.append(args),
        ) as client:
            with pytest.raises(GraphError) as info:
                await client.decide("c-1", Reject(), deadline=time.monotonic() + GUARD)
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectionError)
    assert seen == [("reject", None, 1), ("reject", None, 2), ("reject", None, 3)]
    assert [entry["attempt"] for entry in events(logs, "graph.retry")] == [1, 2]


async def test_deadline_already_passed_sends_nothing(graph: GraphStub) -> None:
    """A deadline in the past raises GraphError without sending anything."""
    async with make_client(graph.base_url) as client:
        with pytest.raises(GraphError, match="deadline passed"):
            await client.decide("c-1", Reject(), deadline=time.monotonic() - 1)
    assert graph.seen == []


async def test_deadline_passed_while_waiting_raises_last_error(graph: GraphStub) -> None:
    """If the loop stalls during a backoff past the deadline, the last error is raised."""
    graph.script(Reply(503), Reply(202))
    loop = asyncio.get_running_loop()

    def stall_loop(op: str, status: int | None, attempt: int) -> None:
        # Simulates a blocked event loop (a handler calling time.sleep) during the backoff.
        loop.call_soon(time.sleep, 0.25)

    deadline = time.monotonic() + 0.2
    with capture_logs() as logs:
        async with make_client(graph.base_url, on_request=stall_loop) as client:
            with pytest.raises(GraphResponseError) as info:
                await client.decide("c-1", Reject(), deadline=deadline)
    assert info.value.status == 503
    assert len(graph.seen) == 1
    assert events(logs, "graph.retry_abandoned")[0]["reason"] == "deadline"


# --- hooks, logs, loops -------------------------------------------------------------------


async def test_on_request_sees_every_attempt(graph: GraphStub) -> None:
    """on_request gets (op, status, attempt) for each attempt; a failing hook changes nothing."""
    seen: list[tuple[str, int | None, int]] = []

    def hook(op: str, status: int | None, attempt: int) -> None:
        seen.append((op, status, attempt))
        raise RuntimeError("metrics are down")

    graph.script(Reply(503), Reply(202), Reply(204))
    with capture_logs() as logs:
        async with make_client(graph.base_url, on_request=hook) as client:
            await client.decide("c-1", Answer())
            await client.hang_up("c-1")
    assert seen == [("answer", 503, 1), ("answer", 202, 2), ("hang_up", 204, 1)]
    assert len(events(logs, "graph.on_request_failed")) == 3


async def test_token_is_never_logged_or_raised(graph: GraphStub) -> None:
    """Retry logs and errors carry no bearer token."""
    graph.script(Reply(503), Reply(429), Reply(400, {"error": {"code": "x", "message": "m"}}))
    with capture_logs() as logs:
        async with make_client(graph.base_url) as client:
            with pytest.raises(GraphResponseError) as info:
                await client.decide("c-1", Reject())
    assert len(events(logs, "graph.retry")) == 2
    assert TOKEN not in repr(logs)
    assert TOKEN not in str(info.value)


async def test_client_in_a_second_threads_loop(graph: GraphStub) -> None:
    """A client opened in another thread's event loop works beside one in this loop."""
    results: list[GraphResult] = []

    async def in_thread() -> None:
        assert threading.current_thread() is not threading.main_thread()
        tokens = StaticTokenProvider(TOKEN)
        async with make_client(graph.base_url, tokens=tokens) as client:
            results.append(await client.decide("c-thread", Reject()))

    def run_in_thread() -> None:
        asyncio.run(in_thread())

    async with make_client(graph.base_url) as client, anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, run_in_thread)
        results.append(await client.decide("c-main", Reject()))
    assert [result.status for result in results] == [202, 202]
    assert sorted(seen.path.split("/")[-2] for seen in graph.seen) == ["c-main", "c-thread"]
    assert {seen.headers["Authorization"] for seen in graph.seen} == {f"Bearer {TOKEN}"}


async def test_ca_bundle_is_trusted_for_tls(tmp_path: Path) -> None:
    """ca_bundle adds a CA to trust: TLS to a test-CA server works with it, fails without."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    async with serve_stub(server_context) as stub:
        async with make_client(stub.base_url, ca_bundle=str(bundle)) as client:
            assert (await client.decide("c-1", Reject())).status == 202
        async with make_client(stub.base_url, max_attempts=1) as client:
            with pytest.raises(GraphError) as info:
                await client.decide("c-2", Reject())
    assert isinstance(info.value.__cause__, aiohttp.ClientSSLError)
    assert len(stub.seen) == 1


# --- lifecycle and settings ---------------------------------------------------------------


async def test_client_must_be_open_once(graph: GraphStub) -> None:
    """Requests need an open client; entering twice fails; a closed client can be reopened."""
    client = make_client(graph.base_url)
    with pytest.raises(GraphError, match="not open"):
        await client.decide("c-1", Reject())
    async with client:
        with pytest.raises(GraphError, match="already open"):
            await client.__aenter__()
    async with client:
        assert (await client.decide("c-1", Reject())).status == 202
    await client.__aexit__(None, None, None)


def test_bad_settings_are_named() -> None:
    """Invalid settings raise ConfigError naming every bad one."""
    with pytest.raises(ConfigError) as info:
        GraphClient(
            tokens=Tokens(),
            base_url="graph.example.com",
            request_timeout=0,
            max_connections=0,
            max_attempts=0,
            backoff=(2.0, 1.0),
        )
    message = str(info.value)
    for name in ("base_url", "request_timeout", "max_connections", "max_attempts", "backoff"):
        assert name in message


def test_missing_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    """A ca_bundle that cannot be loaded raises ConfigError naming the file."""
    with pytest.raises(ConfigError, match="ca_bundle"):
        GraphClient(tokens=Tokens(), ca_bundle=str(tmp_path / "missing.pem"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        ("0.25", 0.25),
        ("-1", None),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 -0000", 0.0),
    ],
)
def test_parse_retry_after(value: str, expected: float | None) -> None:
    """Retry-After is seconds or an HTTP-date; invalid values give None."""
    assert _parse_retry_after(value) == expected


def test_parse_retry_after_future_date() -> None:
    """A future HTTP-date gives the seconds until then."""
    wait = _parse_retry_after(email.utils.formatdate(time.time() + 100, usegmt=True))
    assert wait is not None
    assert 95 <= wait <= 101


def test_request_ids_are_random_uuid4() -> None:
    """Generated Client-Request-Id / Scenario-Id values are distinct version-4 UUIDs."""
    ids = [_new_uuid() for _ in range(2000)]
    assert all(is_uuid(value) for value in ids)
    assert len(set(ids)) == len(ids)


def test_request_ids_do_not_follow_the_random_module_seed() -> None:
    """A bot seeding the random module does not make request ids repeat."""
    saved = random.getstate()
    try:
        random.seed(7)
        first = [_new_uuid() for _ in range(3)]
        random.seed(7)
        assert [_new_uuid() for _ in range(3)] != first
    finally:
        random.setstate(saved)


# --- recordings and response bodies -------------------------------------------------------


def origin(stub: GraphStub) -> str:
    """scheme://host:port of a stub (its base URL without the /v1.0 path)."""
    return stub.base_url.removesuffix("/v1.0")


def gzip_of_repeats(prefix: bytes, block: bytes, count: int) -> bytes:
    """A valid gzip body of ``prefix + block * count``, built without compressing it all.

    Each block is compressed after a full flush, so its compressed form repeats byte for byte.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    piece = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush()[:-8]  # the last, empty block, without zlib's trailer
    crc = zlib.crc32(prefix)
    for _ in range(count):
        crc = zlib.crc32(block, crc)
    size = len(prefix) + len(block) * count
    return head + piece * count + end + struct.pack("<II", crc, size & 0xFFFFFFFF)


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://eu.cc.skype.com/recordings/1", "not https"),
        ("https://recordings.example.com/1", "not in CALLFLOW_RECORDING_HOSTS"),
        ("https://skype.com.example.net/1", "not in CALLFLOW_RECORDING_HOSTS"),
        ("https://10.0.0.5/recordings/1", "an IP address"),
        ("https://169.254.169.254/latest/meta-data/", "an IP address"),
        ("https://[::1]:8443/recordings/1", "an IP address"),
        ("https://localhost/recordings/1", "not in CALLFLOW_RECORDING_HOSTS"),
        ("https://user:secret@eu.cc.skype.com/recordings/1", "credentials"),
        ("/recordings/1", "not an absolute http(s) URL"),
        ("ftp://eu.cc.skype.com/recordings/1", "not an absolute http(s) URL"),
        ("https://[::1/recordings/1", "not an absolute http(s) URL"),
    ],
)
async def test_a_recording_location_off_the_allowed_hosts_is_refused_unsent(
    graph: GraphStub, location: str, reason: str
) -> None:
    """Only https locations on CALLFLOW_RECORDING_HOSTS are fetched; anything else raises
    GraphError naming the setting, before a connection is even tried."""
    async with make_client(graph.base_url, max_attempts=1, request_timeout=0.5) as client:
        with anyio.fail_after(GUARD), pytest.raises(GraphError) as info:
            await client.download_recording(location, "recording-token")
    message = str(info.value)
    assert reason in message
    assert "CALLFLOW_RECORDING_HOSTS" in message
    assert "Nothing was sent" in message
    assert "recording-token" not in message
    assert graph.seen == []


async def test_a_recording_on_another_loopback_server_is_not_fetched(graph: GraphStub) -> None:
    """A notification naming a loopback service (not Graph's own origin) cannot make the bot
    fetch it with the recording's token and take the reply for a recording."""
    async with serve_stub() as internal:
        internal.script(Reply(200, b"internal secrets"))
        async with make_client(graph.base_url) as client:
            with pytest.raises(GraphError, match="CALLFLOW_RECORDING_HOSTS"):
                await client.download_recording(origin(internal) + "/admin", "recording-token")
    assert internal.seen == []


async def test_a_recording_on_the_loopback_graph_origin_is_fetched(graph: GraphStub) -> None:
    """With a loopback Graph (tests, FakeGraph), recordings on the same origin are fetched."""
    graph.script(Reply(200, b"RIFF-audio", headers={"Content-Type": "audio/wav"}))
    async with make_client(graph.base_url) as client:
        audio = await client.download_recording(origin(graph) + "/recordings/1", "rec-token")
    assert audio == b"RIFF-audio"
    (seen,) = graph.seen
    assert (seen.method, seen.path) == ("GET", "/recordings/1")
    assert seen.headers["Authorization"] == "Bearer rec-token"


class LoopbackResolver(AbstractResolver):
    """Resolves every name to 127.0.0.1, the way DNS rebinding would."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


async def test_an_allowed_recording_host_resolving_to_loopback_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An allowed name whose address is loopback (or private, link-local) is refused when
    the connection is made: nothing reaches the server listening there."""
    monkeypatch.setattr(_transport, "_system_resolver", LoopbackResolver)
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("rec.media.example.com").configure_cert(server_context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    async with serve_stub(server_context) as internal:
        internal.script(Reply(200, b"internal secrets"))
        port = internal.base_url.split(":")[2].split("/")[0]
        location = f"https://rec.media.example.com:{port}/recordings/1"
        async with make_client(
            "https://graph.example.com/v1.0",
            ca_bundle=str(bundle),
            recording_hosts=["*.media.example.com"],
        ) as client:
            with anyio.fail_after(GUARD), pytest.raises(GraphError) as info:
                await client.download_recording(location, "recording-token")
    assert "127.0.0.1" in str(info.value)
    assert "CALLFLOW_RECORDING_HOSTS" in str(info.value)
    assert internal.seen == []


async def test_graphs_own_host_may_resolve_to_a_private_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GRAPH_URL is configured, not named by a notification: its host may resolve to a
    private or loopback address (a proxy, a test Graph) and requests to it go through."""
    monkeypatch.setattr(_transport, "_system_resolver", LoopbackResolver)
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("graph.internal.example").configure_cert(server_context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    async with serve_stub(server_context) as stub:
        port = stub.base_url.split(":")[2].split("/")[0]
        base = f"https://graph.internal.example:{port}/v1.0"
        async with make_client(base, ca_bundle=str(bundle)) as client:
            assert (await client.decide("c-1", Reject())).status == 202
    assert len(stub.seen) == 1


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("52.112.0.10", True),
        ("2603:1063::1", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1%2", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:52.112.0.10", True),
        ("not-an-address", False),
    ],
)
def test_only_public_addresses_count_as_public(address: str, public: bool) -> None:
    """What a recording host may resolve to: addresses of the internet, nothing local."""
    assert _hosts.is_public_address(address) is public


def test_recording_hosts_are_checked() -> None:
    """recording_hosts entries must be host names: no IP addresses, loopback names or URLs;
    a comma-separated string is read as a list."""
    for bad in ("10.0.0.1", "localhost", "*.localhost", "https://a.example.com", "*", "*.com"):
        with pytest.raises(ConfigError, match="recording_hosts"):
            GraphClient(tokens=Tokens(), recording_hosts=[bad])
    client = GraphClient(tokens=Tokens(), recording_hosts="*.Media.example.com, b.example.com.")
    assert client.recording_hosts == ("*.media.example.com", "b.example.com")


async def test_a_compressed_error_body_is_read_only_up_to_its_limit(graph: GraphStub) -> None:
    """A 500 whose 1 MB gzip body is 1 GiB once decompressed: 64 KiB of it are read (counted
    after decompression), the error says the rest was cut off, and reading stops there."""
    body = gzip_of_repeats(
        b'{"error": {"code": "InternalServerError", "message": "', b"A" * (1 << 20), 1024
    )
    assert len(body) < 1_100_000
    graph.script(
        Reply(500, body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    )
    with capture_logs() as logs:
        async with make_client(graph.base_url) as client:
            with anyio.fail_after(GUARD), pytest.raises(GraphResponseError) as info:
                await client.decide("c-1", Reject())
    error = info.value
    assert error.status == 500
    assert error.message.startswith('{"error": {"code": "InternalServerError"')
    assert error.message.endswith("(the error body was cut off after 65536 bytes)")
    assert len(str(error)) < 1_000
    (cut,) = events(logs, "graph.body_cut_off")
    assert (cut["op"], cut["status"], cut["limit"]) == ("reject", 500, 64 * 1024)


async def test_an_oversized_reply_is_not_read_whole(graph: GraphStub) -> None:
    """A 2xx reply over 1 MiB is read to the limit and treated as a reply without a body."""
    huge = gzip_of_repeats(b'{"id": "op-1", "status": "running", "x": "', b"B" * (1 << 20), 64)
    graph.script(
        Reply(
            200,
            huge,
            headers={
                "Content-Encoding": "gzip",
                "Content-Type": "application/json",
                "Location": "https://graph.example.com/v1.0/communications/calls/c-1/operations/op-9",
            },
        )
    )
    with capture_logs() as logs:
        async with make_client(graph.base_url) as client:
            operation = await client.subscribe_to_tone("c-1")
    assert operation.operation_id == "op-9"  # from Location: the body was not parsed
    assert operation.status is None
    (cut,) = events(logs, "graph.body_cut_off")
    assert (cut["op"], cut["status"], cut["limit"]) == ("subscribeToTone", 200, 1 << 20)


async def test_a_compressed_recording_is_counted_after_decompression(graph: GraphStub) -> None:
    """A small gzip body that decompresses past max_bytes raises RecordingTooLargeError."""
    body = gzip_of_repeats(b"RIFF", b"\0" * (1 << 20), 8)
    graph.script(Reply(200, body, headers={"Content-Encoding": "gzip"}))
    async with make_client(graph.base_url) as client:
        with pytest.raises(RecordingTooLargeError, match="max_bytes=1048576"):
            await client.download_recording(
                origin(graph) + "/recordings/1", "rec-token", max_bytes=1 << 20
            )


# --- client contexts ----------------------------------------------------------------------


async def test_client_contexts_do_not_follow_from_a_pseudo_random_state(
    graph: GraphStub,
) -> None:
    """clientContext values come from the OS's cryptographic generator: replaying the state
    of the generator behind request ids does not repeat them."""
    state = _transport._ids.getstate()
    async with make_client(graph.base_url) as client:
        first = await client.subscribe_to_tone("c-1")
        _transport._ids.setstate(state)
        second = await client.subscribe_to_tone("c-1")
    _transport._ids.setstate(state)
    third = _control._new_context()
    _transport._ids.setstate(state)
    fourth = _control._new_context()
    contexts = [first.client_context, second.client_context, third, fourth]
    assert all(is_uuid(context) for context in contexts)
    assert len(set(contexts)) == 4
