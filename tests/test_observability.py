"""Logs and metrics of a served bot: JSON lines, one summary per call, no secrets, /metrics.

structlog's configuration is process-wide: every test that calls ``configure_logging`` does
so with ``cache=False`` (so that no logger keeps this test's stream) and the
``logging_restored`` fixture puts the previous configuration back afterwards.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import datetime
from typing import Any

import aiohttp
import anyio
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer

import callflow._log
from callflow import Answer, Bot, CallContext, IncomingCall, Reject, RejectReason
from callflow._log import JsonLines, add_timestamp, configure_logging, mask_pii, redact_secrets
from callflow.bot import RunningBot
from callflow.events import Identity
from callflow.testing import CallHandle, FakeGraph, SigningKey

GUARD = 10.0
SECRET = "app-s3cret-9b1f4d2e-never-logged"
DANA = "6d5c4b3a-1111-4222-8333-944455556666"
SAM = "0a0a0a0a-3333-4333-8333-000000000333"
HANG = "0b0b0b0b-4444-4444-8444-000000000444"
BLOCK = "0c0c0c0c-5555-4555-8555-000000000555"


class LogStream(io.StringIO):
    """A text stream for ``configure_logging`` that a test can wait on, line by line."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def write(self, text: str) -> int:
        """Keep ``text`` and wake the waiters (log lines come from two threads)."""
        with self._lock:
            written = super().write(text)
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)
        return written

    @property
    def lines(self) -> list[str]:
        """Every complete line written so far."""
        with self._lock:
            text = self.getvalue()
        return text.splitlines()

    def events(self) -> list[dict[str, Any]]:
        """Every line, parsed as JSON (fails the test if one is not JSON)."""
        return [json.loads(line) for line in self.lines]

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The logged events named ``event`` whose fields include ``fields``."""
        return [
            e
            for e in self.events()
            if e["event"] == event and all(e.get(k) == v for k, v in fields.items())
        ]

    async def wait_for(self, event: str, **fields: Any) -> dict[str, Any]:
        """Return the first event named ``event`` with ``fields`` once it was logged."""
        loop = asyncio.get_running_loop()
        with anyio.fail_after(GUARD):
            while True:
                with self._lock:
                    waiter = asyncio.Event()
                    self._waiters.append((loop, waiter))
                found = self.find(event, **fields)
                if found:
                    return found[0]
                await waiter.wait()


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """Put structlog's process-wide configuration back as it was after the test."""
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.reset_defaults()
        structlog.configure(**saved)


@pytest.fixture
def json_logs(logging_restored: None) -> LogStream:
    """The bot's logs as JSON lines at debug level, personal data masked."""
    stream = LogStream()
    configure_logging(fmt="json", level="debug", stream=stream, cache=False)
    return stream


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client for the bot's health, readiness and metrics endpoints."""
    async with aiohttp.ClientSession() as session:
        yield session


async def scrape(http: aiohttp.ClientSession, running: RunningBot) -> dict[Any, float]:
    """GET /metrics and parse it into ``{(sample name, sorted labels): value}``."""
    async with http.get(running.metrics_url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Mapping[Any, float], name: str, **labels: str) -> float:
    """One sample's value (0 when the series does not exist)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def settled(*calls: CallHandle) -> None:
    """Wait for each call's decision and the fake's follow-up notification about it.

    Stopping a bot while a notification's connection is being accepted can leave that socket
    unclosed (a ResourceWarning); tests that stop right after a decision wait for this.
    """
    for call in calls:
        request = await call.decision(timeout=GUARD)
        follow_up = "established" if request.op == "answer" else "terminated"
        await call.wait_delivery(follow_up, timeout=GUARD)


def caller(user_id: str, name: str = "Someone") -> dict[str, str]:
    """A Teams user of the fake's tenant, as the caller of a placed call."""
    return {"kind": "user", "id": user_id, "display_name": name}


def answering_bot() -> Bot:
    """Answers Dana, rejects everyone else as forbidden; logs who called."""
    bot = Bot()

    @bot.incoming_call
    async def front(call: IncomingCall, ctx: CallContext) -> Answer | Reject:
        ctx.log.info(
            "test.caller",
            display_name=call.caller.display_name,
            phone=call.caller.phone_number,
            caller=call.caller,
        )
        if call.caller.user_id == DANA:
            return Answer()
        return Reject(RejectReason.FORBIDDEN)

    return bot


# --- log lines -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_call_gets_one_call_decided_json_line(
    fake_graph: FakeGraph, json_logs: LogStream
) -> None:
    """Each call logs one call.decided line with decision, reason, decider, latency, attempts."""
    retried = str(uuid.uuid4())
    fake_graph.fail_next("decision", 503, retry_after=0, call_id=retried)
    async with fake_graph.serve(answering_bot()) as running:
        url = running.webhook_url
        dana = await fake_graph.place_call(url, caller=caller(DANA), duplicate=2)
        phone = await fake_graph.place_call(url, kind="phone")
        again = await fake_graph.place_call(url, caller=caller(DANA), call_id=retried)
        lines = {
            call.call_id: await json_logs.wait_for("call.decided", call_id=call.call_id)
            for call in (dana, phone, again)
        }
        await settled(dana, phone, again)
    events = json_logs.events()  # every line is JSON
    assert all({"event", "level", "timestamp"} <= set(e) for e in events)
    decided = [e for e in events if e["event"] == "call.decided"]
    assert sorted(e["call_id"] for e in decided) == sorted(lines)  # one per call, duplicates too
    assert {
        k: lines[dana.call_id][k] for k in ("decision", "reason", "decided_by", "attempts")
    } == {
        "decision": "answer",
        "reason": None,
        "decided_by": "front",
        "attempts": 1,
    }
    assert (lines[phone.call_id]["decision"], lines[phone.call_id]["reason"]) == (
        "reject",
        "forbidden",
    )
    assert lines[again.call_id]["attempts"] == 2
    for line in lines.values():
        assert isinstance(line["latency_ms"], float)
        assert 0 < line["latency_ms"] < 5000
        assert line["level"] == "info"
        assert line["tenant_id"] == fake_graph.tenant_id


@pytest.mark.parametrize("pii", [False, True])
@pytest.mark.anyio
async def test_names_and_numbers_are_masked_unless_pii_is_on(
    fake_graph: FakeGraph, logging_restored: None, pii: bool
) -> None:
    """Display names and phone numbers are masked in the logs unless ``pii=True``."""
    stream = LogStream()
    configure_logging(fmt="json", stream=stream, pii=pii, cache=False)
    async with fake_graph.serve(answering_bot()) as running:
        dana = await fake_graph.place_call(
            running.webhook_url, caller=caller(DANA, "Dana Whitfield")
        )
        phone = await fake_graph.place_call(running.webhook_url, kind="phone")
        for call in (dana, phone):
            await stream.wait_for("call.decided", call_id=call.call_id)
        await settled(dana, phone)
    (about_dana,) = stream.find("test.caller", call_id=dana.call_id)
    (about_phone,) = stream.find("test.caller", call_id=phone.call_id)
    # An Identity logged whole shows neither, whatever the setting (its repr masks them).
    assert "Dana" not in about_dana["caller"]
    assert "+14255550123" not in about_phone["caller"]
    if pii:
        assert about_dana["display_name"] == "Dana Whitfield"
        assert about_phone["phone"] == "+14255550123"
    else:
        assert about_dana["display_name"] == "D***"
        assert about_phone["phone"] == "+1425*****23"
        assert "Dana Whitfield" not in stream.getvalue()
        assert "+14255550123" not in stream.getvalue()


@pytest.mark.anyio
async def test_no_token_or_secret_reaches_the_logs_of_served_calls(
    callflow_signing_key: SigningKey, logging_restored: None
) -> None:
    """App tokens, the app secret and notification tokens never appear in any log line."""
    stream = LogStream()
    configure_logging(fmt="json", level="debug", stream=stream, cache=False)
    notification = ""
    async with FakeGraph(signing_key=callflow_signing_key, app_secret=SECRET) as fake:
        bot = answering_bot()

        @bot.incoming_call(priority=1)
        async def careless(call: IncomingCall, ctx: CallContext) -> None:
            ctx.log.info("test.careless", token=notification, Authorization=f"Bearer {SECRET}")

        forged = fake.sign(aud="someone-else")
        notification = fake.sign()
        fake.fail_next("decision", 503, retry_after=0)
        async with fake.serve(bot) as running:
            good = await fake.place_call(
                running.webhook_url, caller=caller(DANA), token=notification
            )
            bad = await fake.place_call(running.webhook_url, token=forged)
            await stream.wait_for("call.decided", call_id=good.call_id)
            await stream.wait_for("webhook.rejected", status=403)
            await settled(good)
        issued = fake.tokens.issued
    text = stream.getvalue()
    assert bad.webhook_status == 403
    assert issued
    for secret in (SECRET, notification, forged, *issued):
        assert secret not in text
    (careless_line,) = stream.find("test.careless")
    assert careless_line["token"] == careless_line["Authorization"] == "[redacted]"
    assert stream.find("graph.retry", call_id=good.call_id)  # the 503 was logged, tokenless


@pytest.mark.anyio
async def test_the_speech_key_and_media_secret_never_reach_a_log_line(
    callflow_signing_key: SigningKey, logging_restored: None
) -> None:
    """The Speech key and the media secret are secrets the worker was given, as the app
    secret is: their exact values are cut out of any line (an error message that echoes
    one), whatever the key holding it."""
    from callflow.testing import FakeSpeech

    saved = callflow._log._secret_values
    stream = LogStream()
    configure_logging(fmt="json", level="debug", stream=stream, cache=False)
    media_secret = "m" * 16 + "-media-secret-value-0123"
    try:
        async with (
            FakeGraph(signing_key=callflow_signing_key) as fake,
            FakeSpeech() as speech,
        ):
            bot = answering_bot()

            @bot.incoming_call(priority=1)
            async def careless(call: IncomingCall, ctx: CallContext) -> None:
                ctx.log.info(
                    "test.careless",
                    error=f"Speech said: bad key {speech.key}",
                    subscription_key=speech.key,
                    detail=f"media key {media_secret}",
                )

            overrides = {**speech.overrides(), "media_secret": media_secret}
            async with fake.serve(bot, **overrides) as running:
                call = await fake.place_call(running.webhook_url)
                await stream.wait_for("call.decided", call_id=call.call_id)
                await settled(call)
    finally:
        callflow._log._secret_values = saved
    text = stream.getvalue()
    assert stream.find("test.careless")
    assert speech.key not in text
    assert media_secret not in text


def test_credential_like_keys_are_redacted_in_any_case() -> None:
    """Keys ending in token, secret or password (any case) and authorization are redacted."""
    event = {
        "event": "x",
        "token": "t",
        "access_token": "a",
        "refresh_token": "r",
        "Authorization": "Bearer b",
        "client_secret": "c",
        "APP_SECRET": "s",
        "db_password": "p",
        "api_key": "k",
        "call_id": "c-1",
        "tokens_issued": 3,
        "kid": "key-1",
    }
    out = redact_secrets(None, "info", dict(event))
    kept = {"event", "call_id", "tokens_issued", "kid"}
    for key in event:
        assert out[key] == (event[key] if key in kept else "[redacted]"), key


def test_personal_data_keys_are_masked() -> None:
    """Names keep their first letter, phone numbers their prefix and last two digits."""
    event = {
        "event": "x",
        "display_name": "Dana",
        "caller_name": "",
        "phone_number": "+14255550123",
        "phone": "12345",
        "caller_phone": None,
    }
    out = mask_pii(None, "info", dict(event))
    assert out == {
        "event": "x",
        "display_name": "D***",
        "caller_name": "",
        "phone_number": "+1425*****23",
        "phone": "*****",
        "caller_phone": None,
    }


def reference_line(event: dict[str, Any], method: str, pii: bool) -> dict[str, Any]:
    """What structlog's own processor chain makes of ``event`` (as JSON, parsed back)."""
    chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        add_timestamp,
        redact_secrets,
        *([] if pii else [mask_pii]),
        ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
        structlog.processors.JSONRenderer(),
    ]
    rendered: Any = dict(event)
    for processor in chain:
        rendered = processor(None, method, rendered)
    parsed: dict[str, Any] = json.loads(rendered)
    return parsed


@pytest.mark.parametrize("pii", [False, True])
@pytest.mark.parametrize("method", ["info", "warn", "exception"])
def test_json_lines_match_structlogs_processor_chain(pii: bool, method: str) -> None:
    """A JSON line has the keys and values structlog's standard processors would give it."""
    event: dict[str, Any] = {
        "attempts": 1,
        "call_id": "c-1",
        "reason": RejectReason.BUSY,
        "latency_ms": 1.25,
        "display_name": "Dana",
        "caller_name": "",
        "phone": "+14255550123",
        "access_token": "t",
        "APP_SECRET": "s",
        "caller": Identity("phone", "+14255550123"),
        "event": "call.decided",
    }
    tokens = structlog.contextvars.bind_contextvars(tenant_id="t-1", call_id="bound", token="x")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            if method == "exception":
                event["exc_info"] = True
            expected = reference_line(event, method, pii)
            line = json.loads(JsonLines(pii=pii)(None, method, dict(event)))
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
    stamp = line.pop("timestamp")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    assert abs(datetime.fromisoformat(stamp).timestamp() - time.time()) < 60
    expected.pop("timestamp")
    if method == "exception":
        assert line["exception"][0]["exc_value"] == "boom"
        assert all("locals" not in frame for frame in line["exception"][0]["frames"])
    assert line == expected
    assert (line["call_id"], line["tenant_id"], line["token"]) == ("c-1", "t-1", "[redacted]")


def _fail_with_secrets_in_locals(phone: str, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}  # noqa: F841 - a local the traceback could show
    caller = Identity("phone", phone)
    raise RuntimeError(f"no route for {caller!r}")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_tracebacks_show_no_local_variables(fmt: str) -> None:
    """A logged exception raised where a bearer token and a caller's number are local
    variables leaves both out of the line: tracebacks carry no locals, in JSON or on the
    console."""
    token = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJib3QifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    phone = "+14255550123"
    out = io.StringIO()
    configure_logging(fmt=fmt, level="info", stream=out, cache=False)
    try:
        try:
            _fail_with_secrets_in_locals(phone, token)
        except RuntimeError:
            structlog.get_logger("test").exception("handler.failed", call_id="c-1")
    finally:
        structlog.reset_defaults()
    text = out.getvalue()
    assert "handler.failed" in text
    assert "_fail_with_secrets_in_locals" in text  # the traceback is there...
    assert token not in text  # ...without the frame's locals
    assert token[:20] not in text
    assert phone not in text
    assert "+1425*****23" in text  # the exception message's masked repr


def test_bearer_tokens_and_jwts_in_free_text_are_redacted() -> None:
    """A token inside a message (an exception text, a header dumped by a handler) is replaced,
    whatever key it is logged under."""
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJib3QifQ.c2lnbmF0dXJl"
    line = JsonLines()(None, "error", {"event": "x", "detail": f"sent Bearer abc.def-123456 {jwt}"})
    assert "abc.def-123456" not in line
    assert jwt not in line
    assert json.loads(line)["detail"] == "sent [redacted] [redacted]"


def test_json_line_timestamps_have_milliseconds_and_the_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a whole second and just after it, the time has three decimals and ``Z``."""
    monkeypatch.setattr(time, "time_ns", lambda: 1_790_000_000 * 1_000_000_000)
    whole = json.loads(JsonLines()(None, "info", {"event": "x"}))
    monkeypatch.setattr(time, "time_ns", lambda: 1_790_000_000 * 1_000_000_000 + 123_456_789)
    later = json.loads(JsonLines()(None, "info", {"event": "x"}))
    assert (whole["timestamp"], later["timestamp"]) == (
        "2026-09-21T14:13:20.000Z",
        "2026-09-21T14:13:20.123Z",
    )


def test_json_lines_without_structlogs_variable_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should structlog stop keeping its context variables in a dict, lines stay the same."""
    tokens = structlog.contextvars.bind_contextvars(call_id="c-2", scenario_id="s-2")
    try:
        fast = json.loads(JsonLines()(None, "info", {"event": "x"}))
        monkeypatch.setattr(callflow._log, "_registry", None)
        slow = json.loads(JsonLines()(None, "info", {"event": "x"}))
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
    fast.pop("timestamp")
    slow.pop("timestamp")
    assert fast == slow
    assert (fast["call_id"], fast["scenario_id"]) == ("c-2", "s-2")


def test_unusual_keys_and_a_json_module_without_its_c_encoder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Non-string keys pass, keys past the remembered ones are still checked, pure-Python JSON."""
    monkeypatch.setattr(callflow._log, "_KINDS_MAX", 0)  # remember no new key
    out = redact_secrets(None, "info", {7: "seven", "new_client_secret": "s", "event": "x"})
    assert out == {7: "seven", "new_client_secret": "[redacted]", "event": "x"}
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    encode = callflow._log._json_encoder()
    assert json.loads(encode({"a": [1, None], "b": Identity("user", "u")})) == {
        "a": [1, None],
        "b": "Identity(kind='user', id='u', tenant_id=None)",
    }


class _Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_the_format_follows_the_stream_and_the_level_filters(logging_restored: None) -> None:
    """JSON when the stream is not a terminal, console when it is; the level drops lower lines."""
    log = structlog.get_logger("test.observability")
    plain = io.StringIO()
    configure_logging(stream=plain, level="warning", cache=False)
    log.info("test.dropped")
    log.warning("test.kept", token="abc", display_name="Dana")
    (line,) = plain.getvalue().splitlines()
    kept = json.loads(line)
    assert (kept["event"], kept["level"], kept["token"], kept["display_name"]) == (
        "test.kept",
        "warning",
        "[redacted]",
        "D***",
    )

    terminal = _Terminal()
    configure_logging(stream=terminal, cache=False)
    log.info("test.console", call_id="c-1")
    text = terminal.getvalue()
    assert "test.console" in text
    assert "call_id" in text
    assert not text.lstrip().startswith("{")

    console = io.StringIO()
    configure_logging(fmt="console", stream=console, cache=False)
    log.info("test.no_colours")
    assert "test.no_colours" in console.getvalue()
    assert "\x1b[" not in console.getvalue()

    shown = io.StringIO()
    configure_logging(fmt="console", stream=shown, pii=True, cache=False)
    log.info("test.names_shown", display_name="Dana")
    assert "Dana" in shown.getvalue()


def test_console_lines_escape_control_characters(logging_restored: None) -> None:
    """Text a caller or Graph controls (a display name, a result message) cannot move the
    cursor, clear a terminal or forge a line of its own on the console: control characters
    in values come out escaped (a newline as \\n); a traceback keeps its own lines but
    not the controls inside its message."""
    log = structlog.get_logger("test.observability")
    for stream in (io.StringIO(), _Terminal()):  # without and with colours
        configure_logging(fmt="console", stream=stream, pii=True, cache=False)
        log.info(
            "test.injected",
            display_name="Mallory\x1b[2J\x1b[1;1H",
            message="ok\r\nlevel=info event=forged\x00\x07",
        )
        try:
            raise RuntimeError("bad\x1b]0;title\x07 message\rover\nnext")
        except RuntimeError:
            log.exception("test.failed")
        text = stream.getvalue()
        first, _, traceback = text.partition("\n")
        assert "test.injected" in first
        assert "Mallory\\x1b[2J\\x1b[1;1H" in first
        assert "ok\\r\\nlevel=info event=forged\\x00\\x07" in first
        assert "forged" not in traceback
        assert "Traceback (most recent call last)" in traceback  # still on lines of its own
        assert "bad\\x1b]0;title\\x07 message\\rover\nnext" in traceback
        without_colours = re.sub(r"\x1b\[[0-9;]*m", "", text)  # the renderer's own styling
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", without_colours), repr(text)


@pytest.mark.parametrize("fmt", ["json", "console"])
@pytest.mark.parametrize("pii", [False, True])
def test_numbers_in_exception_text_are_masked_unless_pii_is_on(
    logging_restored: None, fmt: str, pii: bool
) -> None:
    """A phone number inside an exception's message, logged as ``error=str(exc)`` or as the
    traceback's message, is masked like a phone number field, unless ``pii=True``."""
    log = structlog.get_logger("test.observability")
    stream = io.StringIO()
    configure_logging(fmt=fmt, stream=stream, pii=pii, cache=False)
    try:
        raise LookupError("no route for +14255550123 (forwarded to +442071838750)")
    except LookupError as exc:
        log.warning("test.no_route", error=str(exc))
        log.exception("test.failed", call_id="c-1", attempts=3)
    text = stream.getvalue()
    warning, failure = text.split("\n", 1)
    assert "test.no_route" in warning and "test.failed" in failure
    for line in (warning, failure):  # the error field; the traceback's message
        if pii:
            assert "+14255550123" in line and "+442071838750" in line
        else:
            assert "+1425*****23" in line and "+4420******50" in line
    if not pii:
        assert "4255550123" not in text and "2071838750" not in text


# --- metrics and health ----------------------------------------------------------------------

FAMILIES = (
    ("callflow_decisions", "counter"),
    ("callflow_decision_latency_seconds", "histogram"),
    ("callflow_default_decisions", "counter"),
    ("callflow_late_decisions", "counter"),
    ("callflow_duplicate_notifications", "counter"),
    ("callflow_inbound_auth_failures", "counter"),
    ("callflow_graph_requests", "counter"),
    ("callflow_graph_retries", "counter"),
    ("callflow_pending_calls", "gauge"),
    ("callflow_send_backlog", "gauge"),
    ("callflow_token_refresh_failures", "counter"),
    ("callflow_decision_failures", "counter"),
    ("callflow_rejected_notifications", "counter"),
    ("callflow_stale_notifications", "counter"),
    ("callflow_handler_errors", "counter"),
    ("callflow_admission_defaults", "counter"),
    ("callflow_wave_defaults", "counter"),
    ("callflow_calls_gone", "counter"),
    ("callflow_events_dropped", "counter"),
)


@pytest.mark.anyio
async def test_health_readiness_and_every_metric_family_are_served(
    fake_graph: FakeGraph, http: aiohttp.ClientSession
) -> None:
    """/healthz and /readyz answer 200 while serving and /metrics has every documented family."""
    async with fake_graph.serve(answering_bot()) as running:
        async with http.get(running.url + "/healthz") as response:
            assert (response.status, await response.json()) == (200, {"status": "ok"})
        async with http.get(running.url + "/readyz") as response:
            assert (response.status, await response.json()) == (
                200,
                {"status": "ready", "pending": 0},
            )
        call = await fake_graph.place_call(running.webhook_url, caller=caller(DANA))
        await settled(call)
        async with http.get(running.metrics_url) as response:
            text = await response.text()
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name, kind in FAMILIES:
        assert families.get(name) == kind, name


@pytest.mark.slow
@pytest.mark.anyio
async def test_metrics_count_what_happened_to_the_calls(
    callflow_signing_key: SigningKey, http: aiohttp.ClientSession, json_logs: LogStream
) -> None:
    """Decisions, failures, defaults, late ones, duplicates, auth, retries and pending add up."""
    bot = Bot()

    @bot.incoming_call(where=lambda call: call.caller.user_id == HANG)
    async def hang(call: IncomingCall) -> Answer:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    @bot.incoming_call(where=lambda call: call.caller.user_id == BLOCK)
    async def block(call: IncomingCall) -> Answer:
        time.sleep(1.3)  # noqa: ASYNC251 - blocking the loop past the deadline is the point
        return Answer()

    @bot.incoming_call(where=lambda call: call.caller.user_id == DANA)
    async def welcome(call: IncomingCall) -> Answer:
        return Answer()

    async with (
        FakeGraph(
            signing_key=callflow_signing_key, platform_timeout=2.0, recording_timeout=2.0
        ) as fake,
        fake.serve(bot, safety_margin=1.0) as running,
    ):
        url = running.webhook_url
        refused_id = str(uuid.uuid4())
        fake.fail_next("decision", 400, call_id=refused_id)  # not retried: a failed decision
        refused = await fake.place_call(url, caller=caller(DANA), call_id=refused_id)
        retried = str(uuid.uuid4())
        fake.fail_next("decision", 503, retry_after=0, call_id=retried)
        dana = await fake.place_call(url, caller=caller(DANA), duplicate=2)
        again = await fake.place_call(url, caller=caller(DANA), call_id=retried)
        sam = await fake.place_call(url, caller=caller(SAM))  # nobody decides: the default
        malformed = await fake.place_call(url, token="garbage")
        misaddressed = await fake.place_call(url, token=fake.sign(aud="someone-else"))
        for call in (dana, again, sam):
            await json_logs.wait_for("call.decided", call_id=call.call_id)
        await json_logs.wait_for("call.decision_failed", call_id=refused.call_id)
        await dana.wait_delivery("established", timeout=GUARD)
        await fake.send_states(url, dana.call_id, ["establishing"], etags=[1])  # stale

        hanging = await fake.place_call(url, caller=caller(HANG))
        during = await scrape(http, running)
        await json_logs.wait_for("call.decided", call_id=hanging.call_id)

        blocked = await fake.place_call(url, caller=caller(BLOCK))
        await json_logs.wait_for("call.late_decision", call_id=blocked.call_id)
        await json_logs.wait_for("call.decided", call_id=blocked.call_id)
        after = await scrape(http, running)
        await settled(dana, again, sam, hanging, blocked)
        await refused.wait_delivery("timeout", timeout=GUARD)  # Graph gave up on it

    assert (malformed.webhook_status, misaddressed.webhook_status) == (401, 403)
    assert value(during, "callflow_pending_calls") == 1
    assert value(after, "callflow_pending_calls") == 0

    decisions = "callflow_decisions_total"
    assert value(after, decisions, kind="answer", reason="", decided_by="welcome") == 2
    assert value(after, decisions, kind="reject", reason="busy", decided_by="default") == 3
    assert sum(v for (name, _), v in after.items() if name == decisions) == 5
    latency = "callflow_decision_latency_seconds"
    assert value(after, latency + "_count", decided_by="welcome") == 2
    assert value(after, latency + "_count", decided_by="default") == 3
    assert value(after, latency + "_bucket", decided_by="default", le="0.5") == 1  # sam only
    assert value(after, latency + "_bucket", decided_by="default", le="+Inf") == 3

    assert value(after, "callflow_default_decisions_total") == 2  # hang and block, at deadline
    assert value(after, "callflow_late_decisions_total") == 1  # block's answer came too late
    assert value(after, "callflow_duplicate_notifications_total") == 2
    assert value(after, "callflow_stale_notifications_total") == 1
    failures = "callflow_inbound_auth_failures_total"
    assert value(after, failures, reason="malformed") == 1
    assert value(after, failures, reason="bad_audience") == 1
    assert value(after, "callflow_rejected_notifications_total", code="unauthorized") == 1
    assert value(after, "callflow_rejected_notifications_total", code="forbidden") == 1

    requests = "callflow_graph_requests_total"
    assert value(after, requests, op="answer", status="503") == 1
    assert value(after, requests, op="answer", status="202") == 2
    assert value(after, requests, op="reject", status="202") == 3
    assert value(after, "callflow_graph_retries_total", op="answer") == 1
    assert value(after, "callflow_token_refresh_failures_total") == 0
    assert value(after, "callflow_decision_failures_total", kind="answer") == 1
    assert value(after, requests, op="answer", status="400") == 1


@pytest.mark.anyio
async def test_a_failed_token_refresh_is_counted(
    callflow_signing_key: SigningKey, http: aiohttp.ClientSession, json_logs: LogStream
) -> None:
    """A background token refresh the endpoint refuses shows in the token failure counter."""
    async with (
        FakeGraph(signing_key=callflow_signing_key, token_lifetime=2) as fake,
        fake.serve(Bot()) as running,
    ):
        before = await scrape(http, running)
        fake.tokens.fail_next(1, 400, "invalid_client")  # the refresh, 1 s after the start
        failed = await json_logs.wait_for("graph.token_refresh_failed")
        after = await scrape(http, running)
    assert value(before, "callflow_token_refresh_failures_total") == 0
    assert failed["error"] == "invalid_client"
    assert value(after, "callflow_token_refresh_failures_total") == 1


class CountingStream(io.StringIO):
    """A text stream that counts the writes made to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_lines_of_one_loop_iteration_are_written_together() -> None:
    """Lines logged in one event-loop iteration reach the stream in one write, after the
    iteration; a warning is written at once, behind the lines held before it; a line
    logged outside any loop is written at once; held lines are written at exit."""
    stream = CountingStream()
    writer = callflow._log.LineWriter(stream)
    logger = writer()
    logger.info("one")
    assert (stream.getvalue(), stream.writes) == ("one\n", 1)  # no loop here: at once

    async def in_loop() -> None:
        logger.info("two")
        logger.info("three")
        assert stream.writes == 1  # held until the iteration ends
        await asyncio.sleep(0)
        assert stream.getvalue() == "one\ntwo\nthree\n"
        assert stream.writes == 2  # both in one write
        logger.info("four")
        logger.warning("five")  # at once, after what was held
        assert stream.getvalue().endswith("four\nfive\n")
        logger.info("six")

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(in_loop())
        writer.flush_all()  # as at exit, whether or not the loop ran its callbacks
    finally:
        loop.close()
    assert stream.getvalue() == "one\ntwo\nthree\nfour\nfive\nsix\n"


@pytest.mark.anyio
async def test_a_handlers_own_log_lines_carry_the_calls_ids(
    fake_graph: FakeGraph, json_logs: LogStream
) -> None:
    """A line a handler logs with a plain module logger (not ctx.log) carries the call id,
    tenant and scenario the webhook bound on the I/O loop, though the handler runs on the
    app loop."""
    bot = Bot()
    plain = structlog.get_logger("tests.handler")

    @bot.incoming_call
    async def note(call: IncomingCall) -> Reject:
        plain.info("test.handler_line")
        return Reject()

    async with fake_graph.serve(bot) as running:
        call = await fake_graph.place_call(running.webhook_url)
        line = await json_logs.wait_for("test.handler_line", call_id=call.call_id)
    assert line["tenant_id"] == fake_graph.tenant_id
    assert line["scenario_id"] == call.scenario_id


@pytest.mark.anyio
async def test_calls_handed_over_together_keep_their_own_log_fields(
    json_logs: LogStream,
) -> None:
    """Two calls that cross to the app loop in one batch each log with their own call id
    and tenant; an update that names no tenant logs with none, not another call's."""
    from callflow import CallStateChanged
    from callflow.settings import Settings
    from callflow.testing import RecordingSink
    from tests.helpers import incoming

    bot = Bot(Settings(platform_timeout=15, safety_margin=3))
    plain = structlog.get_logger("tests.handler")

    @bot.incoming_call
    async def note(call: IncomingCall) -> Reject:
        plain.info("test.handler_line")
        return Reject()

    @bot.on(CallStateChanged)
    async def update(event: CallStateChanged) -> None:
        plain.info("test.observer_line")

    sink = RecordingSink()
    async with bot.engine(sink).running() as engine:
        engine.calls.hold("call-c", None)  # a call the bot holds, of no known tenant
        engine.submit(
            [incoming("call-a", tenant_id="tenant-a"), incoming("call-b", tenant_id="tenant-b")]
        )
        engine.submit([CallStateChanged("call-c", "established", 1)])
        a = await json_logs.wait_for("test.handler_line", call_id="call-a")
        b = await json_logs.wait_for("test.handler_line", call_id="call-b")
        c = await json_logs.wait_for("test.observer_line", call_id="call-c")
    assert (a["tenant_id"], b["tenant_id"]) == ("tenant-a", "tenant-b")
    assert "tenant_id" not in c
