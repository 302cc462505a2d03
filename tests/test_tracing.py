"""Per-call traces (``CALLFLOW_TRACING=otel``): the span trees of a decided call, of an
operation after the answer and of a notification forwarded between two workers of a fleet,
recorded with the SDK's in-memory exporter; what stays out of them; and that nothing of
OpenTelemetry is imported while tracing is off.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
import structlog.testing
from aiohttp.test_utils import make_mocked_request
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from yarl import URL

from callflow import (
    Answer,
    Bot,
    Call,
    CallStateChanged,
    IncomingCall,
    MediaPrompt,
    Reject,
    RejectReason,
    Settings,
    _tracing,
)
from callflow.errors import ConfigError
from callflow.fleet.forwarding import TRACE_AUTH, TRACEPARENT, Forwarder
from callflow.fleet.trust import FLEET_AUTH, FleetSigner
from callflow.testing import CALLBACK_URL, DEFAULT_TENANT_ID, FakeGraph, call_state, envelope
from tests.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
GUARD = 15.0
SECRET = "test-fleet-secret-0123456789abcdef"
NUMBER = "+14255550123"
NAME = "Ada Lovelace"
MENU = MediaPrompt("https://cdn.example.com/menu.wav")


class Spans:
    """The spans ended so far (the in-memory exporter), waitable by a condition."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter

    @property
    def all(self) -> tuple[ReadableSpan, ...]:
        return tuple(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.all if span.name == name]

    async def wait_for(self, ok: Callable[[], bool]) -> None:
        """Return once ``ok()`` holds (spans end on the I/O thread: checked every 5 ms)."""
        with anyio.fail_after(GUARD):
            while not ok():  # noqa: ASYNC110 - spans end on the I/O thread, no event here
                await anyio.sleep(0.005)

    def one(self, name: str, **attributes: Any) -> ReadableSpan:
        found = [
            span
            for span in self.named(name)
            if all((span.attributes or {}).get(k) == v for k, v in attributes.items())
        ]
        assert len(found) == 1, (name, attributes, [s.name for s in self.all])
        return found[0]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        ctx = parent.get_span_context()
        return sorted(
            (s for s in self.all if s.parent is not None and s.parent.span_id == ctx.span_id),
            key=lambda s: s.start_time or 0,
        )


@pytest.fixture
def spans() -> Iterator[Spans]:
    """Tracing on, into an in-memory exporter, for the test's duration."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = _tracing.enable(provider)
    try:
        yield Spans(exporter)
    finally:
        _tracing.disable(tracing)
        provider.shutdown()


def trace_of(span: ReadableSpan) -> int:
    return span.get_span_context().trace_id


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    return span.get_span_context().span_id


def no_pii(spans: Spans) -> None:
    """No span attribute names the caller (number or display name)."""
    for span in spans.all:
        text = json.dumps({k: str(v) for k, v in (span.attributes or {}).items()})
        assert NUMBER not in text and NAME not in text and "4255550123" not in text, span.name


async def test_a_decided_call_is_one_trace_from_receipt_to_the_decision_post(
    fake_graph: FakeGraph, spans: Spans
) -> None:
    """The webhook's POST is the root; authentication, parsing and the call's span are its
    children; the call's span holds one span per handler run and the decision's POST (HTTP
    client conventions); the call id and tenant are attributes, the caller is not; the
    call's log lines carry its trace id, a handler's lines its own span."""
    bot = Bot()

    @bot.incoming_call(priority=10)
    async def screen(call: IncomingCall) -> None:
        structlog.get_logger("bot").info("screening")
        return None

    @bot.incoming_call
    async def busy(call: IncomingCall) -> Reject:
        return Reject(RejectReason.BUSY)

    with structlog.testing.capture_logs(processors=[_tracing.add_trace_ids]) as logged:
        async with fake_graph.serve(bot, tracing="otel") as running:
            caller = {"kind": "phone", "id": NUMBER, "display_name": NAME}
            handle = await fake_graph.place_call(running.webhook_url, caller=caller)
            with anyio.fail_after(GUARD):
                await handle.decision()
            await spans.wait_for(lambda: bool(spans.named("callflow.call")))

    call = spans.one("callflow.call")
    # The incoming call's notification (FakeGraph's later ones are traces of their own).
    (root,) = [s for s in spans.named("POST /api/calls") if span_id(s) == parent_of(call)]
    assert root.kind == SpanKind.SERVER and root.parent is None
    assert root.attributes is not None
    assert root.attributes["http.request.method"] == "POST"
    assert root.attributes["http.response.status_code"] == 202
    # The call's span starts at the notification's receipt, before its authentication.
    assert sorted(s.name for s in spans.children(root)) == [
        "callflow.authenticate",
        "callflow.call",
        "callflow.parse",
    ]
    assert call.attributes is not None
    assert call.attributes["callflow.call.id"] == handle.call_id
    assert call.attributes["callflow.tenant.id"] == DEFAULT_TENANT_ID
    assert (call.attributes["callflow.decision"], call.attributes["callflow.decided_by"]) == (
        "reject",
        "busy",
    )
    assert call.start_time is not None and root.end_time is not None
    assert call.start_time <= root.end_time  # opened while the notification was handled
    inside = spans.children(call)
    assert [(s.name, (s.attributes or {}).get("callflow.handler.name")) for s in inside] == [
        ("callflow.handler", "screen"),
        ("callflow.handler", "busy"),
        ("POST", None),
    ]
    post = inside[2]
    assert post.kind == SpanKind.CLIENT and post.attributes is not None
    assert post.attributes["http.request.method"] == "POST"
    assert post.attributes["url.full"] == f"{fake_graph.graph_url}/communications/calls/" + (
        f"{handle.call_id}/reject"
    )
    assert post.attributes["server.address"] == URL(fake_graph.graph_url).host
    assert post.attributes["server.port"] == URL(fake_graph.graph_url).port
    assert post.attributes["http.response.status_code"] in (200, 202, 204)
    assert inside[1].attributes is not None
    assert inside[1].attributes["callflow.decision"] == "reject"
    assert {trace_of(s) for s in (root, *spans.children(root), *inside)} == {trace_of(root)}
    no_pii(spans)

    decided = [line for line in logged if line["event"] == "call.decided"]
    assert decided and decided[0]["trace_id"] == format(trace_of(call), "032x")
    (screening,) = [line for line in logged if line["event"] == "screening"]
    assert screening["span_id"] == format(span_id(inside[0]), "016x")


async def test_the_caller_is_in_the_call_span_only_with_log_pii(fake_graph: FakeGraph) -> None:
    """With LOG_PII=on the call's span names the caller; otherwise (above) it does not."""
    spans = Spans(InMemorySpanExporter())
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans.exporter))
    tracing = _tracing.enable(provider, pii=True)
    try:
        bot = Bot()

        @bot.incoming_call
        async def busy(call: IncomingCall) -> Reject:
            return Reject(RejectReason.BUSY)

        async with fake_graph.serve(bot, tracing="otel", log_pii=True) as running:
            caller = {"kind": "phone", "id": NUMBER, "display_name": NAME}
            handle = await fake_graph.place_call(running.webhook_url, caller=caller)
            with anyio.fail_after(GUARD):
                await handle.decision()
            await spans.wait_for(lambda: bool(spans.named("callflow.call")))
    finally:
        _tracing.disable(tracing)
        provider.shutdown()
    call = spans.one("callflow.call")
    assert call.attributes is not None
    assert call.attributes["callflow.caller.id"] == NUMBER
    assert call.attributes["callflow.caller.name"] == NAME


@pytest.mark.callflow_lenient
async def test_an_errors_text_reaches_spans_scrubbed_as_in_log_lines(
    fake_graph: FakeGraph, spans: Spans
) -> None:
    """A handler raising with a phone number and a bearer token in its message: the span's
    status, exception event and stack trace carry neither (LOG_PII off)."""
    bot = Bot()
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlc2lnbmF0dXJl"

    @bot.incoming_call
    async def leaky(call: IncomingCall) -> Reject:
        raise RuntimeError(f"lookup of {NUMBER} failed with Authorization: Bearer {token}")

    async with fake_graph.serve(bot, tracing="otel") as running:
        handle = await fake_graph.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            await handle.decision()
        await spans.wait_for(lambda: bool(spans.named("callflow.handler")))

    handler = spans.one("callflow.handler")
    texts = [handler.status.description or ""]
    for event in handler.events:
        texts += [str(v) for v in (event.attributes or {}).values()]
    assert any("RuntimeError" in t for t in texts)
    assert any("lookup of" in t for t in texts)  # the message is there, scrubbed
    for text in texts:
        assert NUMBER not in text and token not in text


async def test_a_call_whose_caller_hangs_up_first_ends_its_span_as_gone(
    fake_graph: FakeGraph, spans: Spans
) -> None:
    """The caller hangs up while the handler still thinks: the call's span ends at once,
    ``gone``, with no decision; the handler's span says it was cancelled."""
    bot = Bot()
    thinking = anyio.Event()

    @bot.incoming_call
    async def slow(call: IncomingCall) -> Reject:
        thinking.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async with fake_graph.serve(bot, tracing="otel") as running:
        handle = await fake_graph.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            await thinking.wait()
        await fake_graph.end_call(handle.call_id)
        await spans.wait_for(lambda: bool(spans.named("callflow.call")))
        await spans.wait_for(lambda: bool(spans.named("callflow.handler")))

    call = spans.one("callflow.call")
    assert call.attributes is not None
    assert call.attributes["callflow.outcome"] == "gone"
    assert "callflow.decision" not in call.attributes
    handler = spans.one("callflow.handler")
    assert (handler.attributes or {})["callflow.outcome"] == "cancelled"
    assert parent_of(handler) == span_id(call)
    assert handle.decisions == ()


async def test_a_duplicate_notification_of_a_call_keeps_its_one_span(
    fake_graph: FakeGraph, spans: Spans
) -> None:
    """Graph posts an incoming call twice (a retry) while its handler still thinks: the
    call keeps the span its handler runs under, which ends with the decision; the duplicate
    neither ends it as ``abandoned`` nor opens a second one."""
    bot = Bot()
    release = anyio.Event()

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        await release.wait()
        return Answer()

    async with fake_graph.serve(bot, tracing="otel") as running:
        await fake_graph.place_call(running.webhook_url, duplicate=1)  # both were received
        release.set()
        await spans.wait_for(lambda: bool(spans.named("callflow.handler")))
        await spans.wait_for(
            lambda: any("callflow.decision" in (s.attributes or {}) for s in spans.all)
        )

    call = spans.one("callflow.call")
    assert (call.attributes or {})["callflow.decision"] == "answer"
    assert parent_of(spans.one("callflow.handler")) == span_id(call)


async def test_an_operation_after_the_answer_is_a_span_of_the_calls_trace(
    fake_graph: FakeGraph, spans: Spans
) -> None:
    """Answer(then=flow): the flow's span is a child of the call's span (which ended with the
    answer), the prompt's operation a child of the flow's (it crossed from the app loop to
    the I/O loop), and the operation's POST a child of the operation's."""
    bot = Bot()
    played = anyio.Event()

    async def menu(call: Call) -> None:
        await call.play(MENU)
        played.set()

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer(then=menu)

    async with fake_graph.serve(bot, tracing="otel") as running:
        handle = await fake_graph.place_call(running.webhook_url)
        with anyio.fail_after(GUARD):
            await played.wait()
        await spans.wait_for(lambda: bool(spans.named("callflow.flow")))
        await spans.wait_for(lambda: bool(spans.named("callflow.call")))

    call = spans.one("callflow.call", **{"callflow.call.id": handle.call_id})
    assert (call.attributes or {})["callflow.decision"] == "answer"
    flow = spans.one("callflow.flow")
    assert parent_of(flow) == span_id(call)
    assert (flow.attributes or {})["callflow.flow.name"] == "menu"
    play = spans.one("callflow.playPrompt")
    assert parent_of(play) == span_id(flow)
    assert play.attributes is not None
    assert (play.attributes["callflow.outcome"], play.attributes["callflow.call.id"]) == (
        "completed",
        handle.call_id,
    )
    (post,) = spans.children(play)
    assert post.kind == SpanKind.CLIENT
    assert str((post.attributes or {})["url.full"]).endswith(f"/{handle.call_id}/playPrompt")
    assert {trace_of(s) for s in (call, flow, play, post)} == {trace_of(call)}


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    yield from redis_server()


def fleet_options(redis: RedisServer, name: str) -> dict[str, Any]:
    return {
        "store": redis.url,
        "instance_id": name,
        "heartbeat_interval": 0.05,
        "drain_timeout": 0.5,
        "fleet_secret": SECRET,
        "tracing": "otel",
    }


@pytest.mark.slow
async def test_a_forwarded_notification_continues_the_forwarding_workers_trace(
    fake_graph: FakeGraph, redis: RedisServer, spans: Spans
) -> None:
    """Worker b gets a state update pinned to worker a: its POST span has a
    ``callflow.forward`` child (kind client), and a's POST span for the forwarded copy is
    that span's child, in b's trace; a's observer of the update runs in that trace too."""
    seen = anyio.Event()

    def fleet_bot() -> Bot:
        bot = Bot()

        @bot.incoming_call
        async def answer(call: IncomingCall) -> Answer:
            return Answer()

        @bot.on(CallStateChanged)
        async def observe(event: CallStateChanged) -> None:
            if event.state == "hold":
                seen.set()

        return bot

    async with (
        fake_graph.serve(fleet_bot(), **fleet_options(redis, "a")) as a,
        fake_graph.serve(fleet_bot(), **fleet_options(redis, "b")) as b,
    ):
        handle = await fake_graph.place_call(a.webhook_url)
        with anyio.fail_after(GUARD):
            answer = await handle.decision()
        assert answer.body["callbackUri"] == CALLBACK_URL + "?instance=a"
        await spans.wait_for(lambda: bool(spans.named("callflow.call")))
        call = spans.one("callflow.call")
        spans.exporter.clear()
        pinned = await fake_graph.notify(
            b.webhook_url + "?instance=a",
            envelope(call_state(handle.call_id, "hold", etag=10)),
            call_id=handle.call_id,
        )
        assert pinned.status == 202
        with anyio.fail_after(GUARD):
            await seen.wait()
        await spans.wait_for(lambda: bool(spans.named("callflow.forward")))
        forward = spans.one("callflow.forward")

        def forwarded() -> list[ReadableSpan]:
            # FakeGraph's own later notifications (established...) are traces of their own.
            return [s for s in spans.named("POST /api/calls") if s.parent is not None]

        await spans.wait_for(lambda: bool(forwarded()))

    assert forward.kind == SpanKind.CLIENT
    assert (forward.attributes or {})["callflow.fleet.target"] == "a"
    (at_a,) = forwarded()
    (at_b,) = [s for s in spans.named("POST /api/calls") if span_id(s) == parent_of(forward)]
    assert at_b.parent is None  # b's trace starts with Graph's notification
    assert parent_of(at_a) == span_id(forward)
    assert trace_of(at_a) == trace_of(at_b) == trace_of(forward)
    assert (forward.attributes or {})["http.response.status_code"] == 202
    # The observer of the update runs in the call's own trace, as a child of its span.
    # (FakeGraph's own "established" may have been observed too: each is the same.)
    observers = spans.named("callflow.observer")
    assert observers and {(parent_of(o), trace_of(o)) for o in observers} == {
        (span_id(call), trace_of(call))
    }


def test_a_forwarded_traceparent_is_trusted_only_with_the_fleets_signature() -> None:
    """The receiving worker takes a forward's ``traceparent`` only when the fleet's MAC of
    it, bound to the forward's own signature, verifies; a forged or moved one is ignored."""
    signer = FleetSigner(SECRET)
    forwarder = Forwarder("a", lambda _: None, signer=signer)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    signed = "t=1;n=abc;mac=def"
    good = {
        FLEET_AUTH: signed,
        TRACEPARENT: traceparent,
        TRACE_AUTH: signer.mac("trace", signed, traceparent),
    }

    def parent(headers: dict[str, str]) -> str | None:
        return forwarder.trace_parent(make_mocked_request("POST", "/api/calls", headers=headers))

    assert parent(good) == traceparent
    assert parent({**good, TRACE_AUTH: "0" * 32}) is None
    assert parent({**good, FLEET_AUTH: "t=2;n=other;mac=def"}) is None  # moved to another
    other = traceparent.replace("b7ad", "c7ad")
    assert parent({**good, TRACEPARENT: other}) is None
    assert parent({k: v for k, v in good.items() if k != TRACE_AUTH}) is None
    assert (
        FleetSigner("another-secret-0123456789abcdef").mac("trace", signed, traceparent)
        != (good[TRACE_AUTH])
    )


def test_tracing_settings_are_checked() -> None:
    """TRACING and TRACING_EXPORTER take known values only; off by default."""
    assert Settings.from_env({}).tracing == "off"
    env = {"CALLFLOW_TRACING": "OTel", "CALLFLOW_TRACING_EXPORTER": "none"}
    assert (Settings.from_env(env).tracing, Settings.from_env(env).tracing_exporter) == (
        "otel",
        "none",
    )
    with pytest.raises(ConfigError, match="CALLFLOW_TRACING: expected one of off, otel"):
        Settings.from_env({"CALLFLOW_TRACING": "jaeger"})
    with pytest.raises(ConfigError, match="CALLFLOW_TRACING_EXPORTER"):
        Settings.from_env({"CALLFLOW_TRACING_EXPORTER": "zipkin"})


def test_a_missing_exporter_or_extra_is_a_config_error() -> None:
    """TRACING_EXPORTER=otlp without its package, or TRACING=otel without the extra, is a
    ConfigError that says what to install."""
    with pytest.raises(ConfigError, match="opentelemetry-exporter-otlp-proto-http"):
        _tracing._provider("otlp")
    code = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # the extra is not installed
        from callflow import _tracing
        from callflow.errors import ConfigError
        try:
            _tracing.from_settings("otel", "none")
        except ConfigError as exc:
            print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    assert "CALLFLOW_TRACING=otel" in out and "callflow-graph[otel]" in out


async def test_the_none_exporter_makes_spans_and_drops_them() -> None:
    """TRACING_EXPORTER=none (the benchmark's): an SDK provider with no processor; the
    provider is callflow's own, shut down when the bot stops."""
    async with _tracing.tracing_for("otel", "none"):
        tracing = _tracing.active
        assert tracing is not None and tracing.owned
        with tracing.tracer.start_as_current_span("x") as span:
            assert span.is_recording()
    assert _tracing.active is None
    async with _tracing.tracing_for("off", "otlp"):
        assert _tracing.active is None
    async with _tracing.tracing_for("otel", "none"):  # two bots in one process
        first = _tracing.active
        async with _tracing.tracing_for("otel", "none"):
            assert _tracing.active is first
        assert _tracing.active is first  # the first one still serves with it
    assert _tracing.active is None


def test_nothing_of_opentelemetry_is_imported_while_tracing_is_off() -> None:
    """A bot deciding a call with tracing off (the default) imports no ``opentelemetry``."""
    code = textwrap.dedent(
        """
        import sys
        import anyio
        import callflow
        from callflow import Bot, IncomingCall, Reject
        from callflow.testing import FakeGraph

        async def main():
            bot = Bot()

            @bot.incoming_call
            async def busy(call: IncomingCall) -> Reject:
                return Reject()

            async with FakeGraph() as fake, fake.serve(bot) as running:
                handle = await fake.place_call(running.webhook_url)
                with anyio.fail_after(15):
                    await handle.decision()
            loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
            print("LOADED", loaded)

        anyio.run(main)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LOADED []" in result.stdout, result.stdout


def test_json_log_lines_carry_the_current_spans_ids(spans: Spans) -> None:
    """``callflow run`` with TRACING=otel: each JSON line names the current span, or else
    the span of the call it is about; without tracing no such keys."""
    import io

    from callflow._log import configure_logging

    saved = structlog.get_config()
    out = io.StringIO()
    try:
        configure_logging(fmt="json", stream=out, cache=False, tracing=True)
        tracing = _tracing.active
        assert tracing is not None
        with tracing.current("callflow.test") as span:
            structlog.get_logger("t").info("inside")
        tracing.start_call("call-1", "tenant-1", 0.0)
        structlog.get_logger("t").info("about_a_call", call_id="call-1")
        structlog.get_logger("t").info("about_nothing")
        configure_logging(fmt="json", stream=out, cache=False)
        structlog.get_logger("t").info("untraced", call_id="call-1")
    finally:
        structlog.configure(**saved)
    lines = {line["event"]: line for line in map(json.loads, out.getvalue().splitlines())}
    ctx = span.get_span_context()
    assert lines["inside"]["trace_id"] == format(ctx.trace_id, "032x")
    assert lines["inside"]["span_id"] == format(ctx.span_id, "016x")
    assert tracing.ids_of("call-1") == (
        lines["about_a_call"]["trace_id"],
        lines["about_a_call"]["span_id"],
    )
    assert "trace_id" not in lines["about_nothing"]
    assert "trace_id" not in lines["untraced"]


@pytest.mark.slow
async def test_callflow_run_with_tracing_exports_spans_and_logs_their_ids(
    fake_graph: FakeGraph,
) -> None:
    """``callflow run`` with TRACING=otel and TRACING_EXPORTER=console: the ``call.decided``
    line carries the call's trace id, and that trace's spans are exported (flushed at stop)."""
    import signal

    from tests.test_worker_e2e import run_worker, worker_env

    env = worker_env(fake_graph, tracing="otel", tracing_exporter="console")
    async with run_worker("tests.test_worker_e2e:make_bot", env, "--factory") as worker:
        (ready,) = await worker.wait_for("bot.ready")
        call = await fake_graph.place_call(ready["url"])
        decided = await worker.decided(call)
        worker.signal(signal.SIGTERM)
        assert await worker.exit_code() == 0
    trace_id = decided["trace_id"]
    assert len(trace_id) == 32 and int(trace_id, 16)
    assert f'"trace_id": "0x{trace_id}"' in worker.output  # the console exporter's spans
    assert '"name": "callflow.call"' in worker.output
