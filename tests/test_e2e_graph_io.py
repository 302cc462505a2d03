"""End to end: a real Bot served against FakeGraph over loopback, inbound JWT checks on."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
import structlog.testing
from structlog.typing import EventDict, WrappedLogger

from callflow import (
    Answer,
    Bot,
    IncomingCall,
    Redirect,
    Reject,
    RejectReason,
    Target,
)
from callflow.decisions import Decision
from callflow.events import (
    CallStateChanged,
    JoinMeetingIdMeetingInfo,
    OrganizerMeetingInfo,
    TokenMeetingInfo,
)
from callflow.testing import CALLBACK_URL, KINDS, FakeGraph, SigningKey

GUARD = 10.0
SHORT = 3.0  # platform timeout for tests that wait on deadlines
MARGIN = 1.0  # the bot's safety margin in those tests
SLACK = 0.5  # scheduling slack on a loaded 2-core machine

# Bot._make_app registers the WebhookHandler instance (an object with an async __call__) as a
# route handler; aiohttp wraps it fine but warns that it is not a coroutine function.


class LogWatcher:
    """Collects structlog events from every thread and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[EventDict] = []
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        with self._lock:
            self.events.append({**event_dict, "at": time.monotonic()})
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)
        return event_dict

    def _matching(self, name: str, fields: dict[str, Any]) -> list[EventDict]:
        return [
            e
            for e in self.events
            if e["event"] == name and all(e.get(k) == v for k, v in fields.items())
        ]

    def find(self, name: str, **fields: Any) -> list[EventDict]:
        """The events named ``name`` whose fields include ``fields``."""
        with self._lock:
            return self._matching(name, fields)

    async def wait_for(self, name: str, **fields: Any) -> EventDict:
        """Return the first event named ``name`` with ``fields``, once it was logged."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                found = self._matching(name, fields)
                if found:
                    return found[0]
                event = asyncio.Event()
                self._waiters.append((loop, event))
            await event.wait()


@pytest.fixture
def logs() -> Iterator[LogWatcher]:
    """Every structlog event of the test, waitable."""
    watcher = LogWatcher()
    with structlog.testing.capture_logs(processors=[watcher]):
        yield watcher


@pytest.fixture
async def short_fake(callflow_signing_key: SigningKey) -> AsyncIterator[FakeGraph]:
    """A FakeGraph whose calls time out after SHORT seconds."""
    async with FakeGraph(signing_key=callflow_signing_key, platform_timeout=SHORT) as fake:
        yield fake


class Recorder:
    """A bot whose handler records every call it sees and returns ``decide(call)``."""

    def __init__(self, decision: Decision | None = None) -> None:
        self.bot = Bot()
        self.seen: list[IncomingCall] = []
        self.decision: Decision = Answer() if decision is None else decision

        @self.bot.incoming_call
        async def record(call: IncomingCall) -> Decision:
            self.seen.append(call)
            return self.decision


def serve_short(fake: FakeGraph, bot: Bot, **overrides: Any) -> Any:
    """Serve ``bot`` with the short platform timeout and a 1 s safety margin."""
    return fake.serve(bot, safety_margin=MARGIN, **overrides)


# --- decisions reach Graph exactly ---------------------------------------------------------

DECISIONS: dict[str, Decision] = {
    "p2p": Answer(),
    "phone": Reject(RejectReason.FORBIDDEN),
    "group_meeting": Answer(modalities="audio", hide_bot_after_escalation=True),
    "channel_meeting": Answer(modalities=("audio", "video")),
    "joinid_meeting": Redirect(Target.user("0a1b2c3d-0000-4000-8000-00000000aaaa"), timeout=30),
    "policy_recording": Answer(participant_capacity=4, callback_uri="https://rec.example/cb"),
    "encrypted": Reject(RejectReason.NONE),
    "guest": Redirect([Target.phone("+14255550100"), Target.application("app-2")]),
}


@pytest.mark.anyio
async def test_each_kind_of_call_gets_the_handlers_exact_decision(fake_graph: FakeGraph) -> None:
    """For every kind of call, the handler sees the right call and its decision arrives intact."""
    assert set(DECISIONS) == set(KINDS)
    bot = Bot()
    seen: dict[str, IncomingCall] = {}

    @bot.incoming_call
    async def decide(call: IncomingCall) -> Decision:
        kind = call.call_id.rsplit("--", 1)[0]
        seen[kind] = call
        return DECISIONS[kind]

    async with fake_graph.serve(bot) as running:
        handles = {
            kind: await fake_graph.place_call(
                running.webhook_url, kind=kind, call_id=f"{kind}--{uuid.uuid4()}"
            )
            for kind in KINDS
        }
        with anyio.fail_after(GUARD):
            for kind, handle in handles.items():
                request = await handle.decision()
                assert handle.webhook_status == 202
                assert request.op == DECISIONS[kind].kind
                assert request.body == DECISIONS[kind].to_graph(CALLBACK_URL), kind
                assert len(handle.decisions) == 1
    assert seen["phone"].caller.phone_number == "+14255550123"
    assert seen["policy_recording"].is_policy_recording
    assert isinstance(seen["group_meeting"].meeting_info, OrganizerMeetingInfo)
    assert isinstance(seen["channel_meeting"].meeting_info, TokenMeetingInfo)
    assert isinstance(seen["joinid_meeting"].meeting_info, JoinMeetingIdMeetingInfo)
    assert seen["channel_meeting"].modalities == ("audio", "video")
    assert seen["encrypted"].caller.kind == "encrypted"
    assert seen["guest"].caller.kind == "guest"
    assert not seen["p2p"].is_group_call


@pytest.mark.anyio
async def test_the_token_is_fetched_at_start_and_reused_for_a_hundred_decisions(
    fake_graph: FakeGraph,
) -> None:
    """The app token is fetched before the first notification; 100 decisions reuse it."""
    recorder = Recorder(Reject())
    async with fake_graph.serve(recorder.bot) as running:
        assert fake_graph.token_requests == 1
        assert fake_graph.calls == ()
        (token,) = fake_graph.tokens.issued
        handles = []

        async def place() -> None:
            handles.append(await fake_graph.place_call(running.webhook_url))

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(place)
            for handle in handles:
                request = await handle.decision()
                assert request.headers["Authorization"] == f"Bearer {token}"
        assert fake_graph.token_requests == 1
    assert len(fake_graph.requests) == 100
    assert len(recorder.seen) == 100


@pytest.mark.anyio
async def test_a_redelivered_notification_is_decided_once(
    fake_graph: FakeGraph, logs: LogWatcher
) -> None:
    """Three redeliveries of an incoming call are accepted, dropped, and decided once."""
    recorder = Recorder()
    async with fake_graph.serve(recorder.bot) as running:
        call = await fake_graph.place_call(running.webhook_url, duplicate=3)
        assert [r.status for r in call.replies] == [202] * 4
        with anyio.fail_after(GUARD):
            await call.decision()
        assert len(logs.find("event.duplicate", call_id=call.call_id)) == 3
    assert len(call.decisions) == 1
    assert [c.call_id for c in recorder.seen] == [call.call_id]


@pytest.mark.anyio
async def test_follow_ups_and_out_of_order_states_reach_the_observers(
    fake_graph: FakeGraph, logs: LogWatcher
) -> None:
    """The fake's 'established' follow-up reaches observers; a stale update is dropped."""
    recorder = Recorder()
    states: list[tuple[str, int | None]] = []
    established = anyio.Event()

    @recorder.bot.on(CallStateChanged)
    async def observe(event: CallStateChanged) -> None:
        states.append((event.state, event.etag))
        if event.state == "established":
            established.set()

    async with fake_graph.serve(recorder.bot) as running:
        call = await fake_graph.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            await call.decision()
            await established.wait()
        (stale,) = await fake_graph.send_states(
            running.webhook_url, call.call_id, ["establishing"], etags=[1]
        )
        assert stale.status == 202
        assert logs.find("event.stale", call_id=call.call_id)
    assert states == [("established", 2)]


# --- inbound authentication and bad input --------------------------------------------------


@pytest.mark.anyio
async def test_every_bad_token_is_refused_before_any_handler_runs(
    fake_graph: FakeGraph, callflow_signing_key: SigningKey
) -> None:
    """Missing, malformed, forged, misaddressed, expired and tenantless tokens get 401/403."""
    rogue = SigningKey.generate("rogue")
    long_ago = time.time() - 7200
    cases: list[tuple[str, dict[str, Any], int]] = [
        ("missing header", {"headers": {"Authorization": None}}, 401),
        ("Bearer garbage", {"token": "garbage"}, 401),
        ("alg none", {"token": fake_graph.sign(algorithm="none")}, 403),
        ("HS256 keyed with the public key", {"token": fake_graph.sign(algorithm="HS256")}, 403),
        ("key not in the set", {"token": fake_graph.sign(signing_key=rogue)}, 403),
        ("wrong audience", {"token": fake_graph.sign(aud="someone-else")}, 403),
        ("wrong issuer", {"token": fake_graph.sign(iss="https://evil.example")}, 403),
        ("expired", {"token": fake_graph.sign(now=long_ago, lifetime=600)}, 403),
        ("no tenant", {"token": fake_graph.sign(tid=None)}, 403),
    ]
    recorder = Recorder()
    async with fake_graph.serve(recorder.bot) as running:
        refused = []
        for name, options, status in cases:
            handle = await fake_graph.place_call(running.webhook_url, **options)
            refused.append(handle)
            assert handle.webhook_status == status, name
            error = handle.webhook_body["error"]
            assert set(error) == {"code", "message"}, name
            assert error["code"] == ("unauthorized" if status == 401 else "forbidden"), name
            assert error["message"], name
            token = options.get("token")
            if token:
                assert token not in error["message"], name
        good = await fake_graph.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            await good.decision()
        assert running.engine.pending == 0
    assert [call.call_id for call in recorder.seen] == [good.call_id]
    assert all(fake_graph.requests_for(handle.call_id) == () for handle in refused)


@pytest.mark.anyio
async def test_compressed_bodies_are_refused_with_a_json_415(fake_graph: FakeGraph) -> None:
    """A body with a Content-Encoding is never decoded: 415 with a JSON error naming the
    encoding, for encodings the server could decode (gzip) and ones it could not (br, zstd,
    which the HTTP parser would answer in plain text); nothing reaches a handler or Graph.
    ``identity`` is no compression and is taken."""
    recorder = Recorder()
    async with fake_graph.serve(recorder.bot) as running:
        refused = []
        for encoding in ("br", "gzip", "zstd", "x-unknown"):
            call = await fake_graph.place_call(
                running.webhook_url, headers={"Content-Encoding": encoding}
            )
            (reply,) = call.replies
            assert reply.status == 415
            assert reply.body["error"]["code"] == "unsupported_content_encoding"
            assert encoding in reply.body["error"]["message"]
            refused.append(call)
        plain = await fake_graph.place_call(
            running.webhook_url, headers={"Content-Encoding": "identity"}
        )
        assert plain.webhook_status == 202
        await plain.decision()
        assert running.engine.pending == 0
    assert [call.call_id for call in recorder.seen] == [plain.call_id]
    assert all(fake_graph.requests_for(call.call_id) == () for call in refused)


@pytest.mark.anyio
async def test_oversized_mistyped_and_garbled_bodies_are_refused(fake_graph: FakeGraph) -> None:
    """413 for a body over 1 MiB, 415 for text/plain, 400 naming the place for bad JSON."""
    recorder = Recorder()
    async with fake_graph.serve(recorder.bot) as running:
        url = running.webhook_url
        huge = await fake_graph.notify(url, {"value": [], "padding": "x" * (1024 * 1024 + 1)})
        assert huge.status == 413
        assert huge.body["error"]["code"] == "payload_too_large"
        plain = await fake_graph.notify(url, [], headers={"Content-Type": "text/plain"})
        assert plain.status == 415
        assert plain.body["error"]["code"] == "unsupported_media_type"
        assert "text/plain" in plain.body["error"]["message"]
        call_id = str(uuid.uuid4())
        wrong = {
            "value": [
                {
                    "changeType": "created",
                    "resourceUrl": f"/communications/calls/{call_id}",
                    "resourceData": {"id": call_id, "state": "incoming", "source": []},
                }
            ]
        }
        bad_shape = await fake_graph.notify(url, wrong)
        assert bad_shape.status == 400
        assert bad_shape.body["error"]["code"] == "invalid_notification"
        assert "value[0].resourceData.source" in bad_shape.body["error"]["message"]
        not_json = await fake_graph.notify(url, b"{not json")
        assert not_json.status == 400
        assert not_json.body["error"]["message"].startswith("body: ")
        assert running.engine.pending == 0
    assert recorder.seen == []
    assert fake_graph.requests == ()


@pytest.mark.anyio
async def test_request_ids_are_echoed_on_every_reply(fake_graph: FakeGraph) -> None:
    """The webhook echoes client-request-id and scenario-id on 202 and on error replies."""
    ids = {"Client-Request-Id": "crid-42", "Scenario-Id": "scenario-7"}
    async with fake_graph.serve(Recorder().bot) as running:
        accepted = await fake_graph.place_call(running.webhook_url, headers=ids)
        unauthenticated = await fake_graph.place_call(
            running.webhook_url, headers={**ids, "Authorization": None}
        )
        mistyped = await fake_graph.notify(
            running.webhook_url, [], headers={**ids, "Content-Type": "text/plain"}
        )
        default = await fake_graph.place_call(running.webhook_url)
    replies = [accepted.replies[0], unauthenticated.replies[0], mistyped]
    assert [r.status for r in replies] == [202, 401, 415]
    for reply in replies:
        assert reply.headers["client-request-id"] == "crid-42"
        assert reply.headers["scenario-id"] == "scenario-7"
    assert default.replies[0].headers["scenario-id"] == default.scenario_id


# --- Graph faults ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_503_is_retried_and_the_second_attempt_lands(
    fake_graph: FakeGraph, logs: LogWatcher
) -> None:
    """A decision answered 503 is sent again; the second attempt is accepted."""
    fake_graph.fail_next("decision", 503)
    async with fake_graph.serve(Recorder().bot) as running:
        call = await fake_graph.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            accepted = await call.decision()
    first, second = call.decisions
    assert (first.status, first.injected) == (503, True)
    assert second is accepted
    assert first.body == second.body == Answer().to_graph(CALLBACK_URL)
    assert first.headers["Client-Request-Id"] != second.headers["Client-Request-Id"]
    assert first.headers["Scenario-Id"] == second.headers["Scenario-Id"]
    (retry,) = logs.find("graph.retry", call_id=call.call_id)
    assert (retry["status"], retry["attempt"]) == (503, 1)
    (decided,) = logs.find("call.decided", call_id=call.call_id)
    assert decided["attempts"] == 2


@pytest.mark.anyio
async def test_a_429_whose_retry_after_passes_the_deadline_is_not_retried(
    short_fake: FakeGraph, logs: LogWatcher
) -> None:
    """A 429 asking to wait past the call's deadline ends the attempts at once."""
    short_fake.fail_next("decision", 429, retry_after=SHORT + 2.0)
    async with serve_short(short_fake, Recorder().bot) as running:
        call = await short_fake.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            failed = await logs.wait_for("call.decision_failed", call_id=call.call_id)
    assert "GraphResponseError" in failed["error"]
    (abandoned,) = logs.find("graph.retry_abandoned", call_id=call.call_id)
    assert (abandoned["status"], abandoned["reason"]) == (429, "deadline")
    assert [(r.op, r.status) for r in call.requests] == [("answer", 429)]
    assert failed["at"] - call.placed_at < 1.0  # it gave up at once, it did not wait


@pytest.mark.anyio
async def test_a_call_gone_from_graph_is_not_retried(
    fake_graph: FakeGraph, logs: LogWatcher
) -> None:
    """A 404/8522 for a decision is logged as a gone call and never retried."""
    go = anyio.Event()
    bot = Bot()

    @bot.incoming_call
    async def slow_answer(call: IncomingCall) -> Answer:
        await go.wait()
        return Answer()

    async with fake_graph.serve(bot) as running:
        call = await fake_graph.place_call(running.webhook_url)
        fake_graph.gone(call.call_id)
        go.set()
        with anyio.fail_after(GUARD):
            failed = await logs.wait_for("call.decision_failed", call_id=call.call_id)
    assert failed["error"].startswith("CallGoneError: Graph answered 404 (8522)")
    (gone,) = logs.find("graph.call_gone", call_id=call.call_id)
    assert (gone["status"], gone["code"]) == (404, "8522")
    assert [(r.op, r.status) for r in call.requests] == [("answer", 404)]
    assert logs.find("graph.retry", call_id=call.call_id) == []


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_graph_that_never_answers_times_out_inside_the_deadline(
    short_fake: FakeGraph, logs: LogWatcher
) -> None:
    """When Graph never replies, each attempt times out and the last ends by the deadline."""
    short_fake.latency = 60.0
    async with serve_short(short_fake, Recorder().bot, request_timeout=1.0) as running:
        call = await short_fake.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            failed = await logs.wait_for("call.decision_failed", call_id=call.call_id)
    deadline = call.placed_at + SHORT  # the platform gives up here; retries stop before
    assert "no answer within" in failed["error"]
    assert len(call.decisions) >= 2  # timed-out attempts are retried while time remains
    assert all(r.at < deadline for r in call.decisions)
    assert failed["at"] < deadline + SLACK


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_hanging_handler_gets_the_default_before_the_platform_gives_up(
    short_fake: FakeGraph,
) -> None:
    """With a handler that never returns, the default Reject(busy) reaches Graph in time."""
    bot = Bot()

    @bot.incoming_call
    async def hang(call: IncomingCall) -> Answer:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async with serve_short(short_fake, bot) as running:
        call = await short_fake.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            request = await call.decision()
        assert request.body == {"reason": "busy", "callbackUri": CALLBACK_URL}
        elapsed = request.at - call.placed_at
        assert SHORT - MARGIN - 0.05 <= elapsed < SHORT
        assert not call.timed_out
        assert running.engine.pending == 0


@pytest.mark.slow
@pytest.mark.anyio
async def test_retries_stop_when_the_platform_gives_up(
    short_fake: FakeGraph, logs: LogWatcher
) -> None:
    """No decision attempt is sent after the platform timeout, whatever the safety margin."""
    short_fake.fail_next("decision", 503, retry_after=0.9, count=1000)
    async with serve_short(short_fake, Recorder().bot) as running:
        call = await short_fake.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            await logs.wait_for("call.decision_failed", call_id=call.call_id)
    late = [round(r.at - call.placed_at, 2) for r in call.decisions if r.at > call.deadline]
    assert late == [], f"attempts sent after the {SHORT:g} s platform timeout, at {late} s"
