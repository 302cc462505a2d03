"""One call's JSON log lines read as its story: the IVR example, end to end through FakeGraph.

``grep <call_id>`` over the JSON log shows: the decision, the call established, the flow
starting, each digit entry (how many keys, how it ended, never the keys unless LOG_PII),
each prompt by name, the recording and its download, the flow's end, and who ended the call.
Normal telephony (a caller hanging up while the bot stops a prompt) logs nothing at warning.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import structlog

from callflow import Answer, Bot, Call, IncomingCall, MediaPrompt
from callflow._log import configure_logging
from callflow.testing import FakeGraph
from tests.test_examples import load_example, prompt_played, user
from tests.test_observability import LogStream

GUARD = 10.0
DANA = "6d5c4b3a-1111-4222-8333-944455556666"
STORY = {
    "call.decided",
    "call.established",
    "call.flow_started",
    "call.digits_collected",
    "call.prompt_played",
    "call.recorded",
    "call.recording_downloaded",
    "call.transferred",
    "call.hung_up",
    "call.ended",
    "call.flow_ended",
}


class Lines:
    """The rendered JSON lines in the order they were logged (whatever thread logged them:
    the stream's order may differ, lines being written once per loop iteration)."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, _: Any, __: str, line: str) -> str:
        with self._lock:
            self._lines.append(line)
        return line

    def of(self, call_id: str) -> list[dict[str, Any]]:
        """``grep call_id``: the lines that mention the call, parsed."""
        with self._lock:
            lines = list(self._lines)
        return [json.loads(line) for line in lines if call_id in line]


@pytest.fixture
def logs() -> Iterator[tuple[LogStream, Lines]]:
    """JSON logs at info level (personal data masked): the stream, and the lines in order."""
    saved = structlog.get_config()
    stream, lines = LogStream(), Lines()
    configure_logging(fmt="json", level="info", stream=stream, cache=False)
    structlog.configure(processors=[*structlog.get_config()["processors"], lines])
    try:
        yield stream, lines
    finally:
        structlog.reset_defaults()
        structlog.configure(**saved)


def story(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The story lines of a call, each as (event, what matters about it)."""
    told: list[tuple[Any, ...]] = []
    for e in events:
        name = e["event"]
        if name not in STORY:
            continue
        if name == "call.decided":
            told.append((name, e["decision"]))
        elif name == "call.digits_collected":
            told.append((name, e["prompts"], e["keys"], e["ended"], e["barged_in"]))
        elif name in ("call.prompt_played", "call.recorded"):
            told.append((name, e["prompts"], e["outcome"]))
        elif name in ("call.flow_started", "call.flow_ended"):
            told.append((name, e["flow"], e.get("outcome")))
        elif name == "call.ended":
            told.append((name, e["ended_by"]))
        else:
            told.append((name,))
    return told


@pytest.mark.anyio
async def test_an_ivr_calls_json_lines_tell_its_story(
    fake_graph: FakeGraph, logs: tuple[LogStream, Lines], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller presses 2 during the menu, leaves a voicemail; the bot says goodbye and hangs
    up. The call's lines, in order, say so; each carries the call id and the tenant."""
    stream, lines = logs
    monkeypatch.setenv("CALLFLOW_IVR_KEY_TIMEOUT", str(GUARD))
    monkeypatch.delenv("CALLFLOW_IVR_PROMPTS", raising=False)
    ivr = load_example("ivr")
    # The menu plays until a key stops it.
    fake_graph.plan_operation("playPrompt", complete=False)
    async with fake_graph.serve(ivr.bot) as running:
        handle = await fake_graph.place_call(running.webhook_url, caller=user(DANA, name="Dana"))
        with anyio.fail_after(GUARD):
            await prompt_played(handle, "menu")
            await handle.press("2")
        await stream.wait_for("call.flow_ended", call_id=handle.call_id)
    mine = lines.of(handle.call_id)
    assert story(mine) == [
        ("call.decided", "answer"),
        ("call.established",),
        ("call.flow_started", "ivr", None),
        ("call.digits_collected", ["menu"], 1, "max_digits", True),
        ("call.recorded", ["leave-a-message"], "completed"),
        ("call.recording_downloaded",),
        ("call.prompt_played", ["message-saved"], "completed"),
        ("call.prompt_played", ["goodbye"], "completed"),
        ("call.ended", "bot"),
        ("call.hung_up",),
        ("call.flow_ended", "ivr", "completed"),
    ]
    for line in mine:  # every line of the call names it and its tenant
        assert (line["call_id"], line["tenant_id"]) == (handle.call_id, fake_graph.tenant_id)
        assert line["level"] in ("debug", "info"), line
    (menu,) = [e for e in mine if e["event"] == "call.operation" and e.get("prompts") == ["menu"]]
    assert (menu["outcome"], menu["cause"]) == ("cancelled", "barge_in")
    (digits,) = [e for e in mine if e["event"] == "call.digits_collected"]
    assert "digits" not in digits  # what the caller typed stays out (LOG_PII is off)
    assert digits["outcome"] == "completed"
    (recorded,) = [e for e in mine if e["event"] == "call.recorded"]
    assert recorded["has_recording"] is True
    (download,) = [e for e in mine if e["event"] == "call.recording_downloaded"]
    assert download["bytes"] == len(fake_graph.recording_audio)
    (ended,) = [e for e in mine if e["event"] == "call.ended"]
    assert ended["held_s"] > 0
    (flow,) = [e for e in mine if e["event"] == "call.flow_ended"]
    assert flow["duration_ms"] > 0


@pytest.mark.anyio
async def test_the_caller_hanging_up_is_told_and_the_digits_show_with_log_pii(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With LOG_PII on, a digit entry shows its keys; a caller who hangs up is named as the
    one who ended the call, and the flow ends ``call_ended``."""
    stream = LogStream()
    saved = structlog.get_config()
    configure_logging(fmt="json", level="info", stream=stream, pii=True, cache=False)
    try:
        bot = Bot()
        menu = MediaPrompt("https://cdn.example.com/prompts/menu.wav")

        async def flow(call: Call) -> None:
            await call.collect_digits(3, prompt=menu, timeout=GUARD)
            await call.collect_digits(1, timeout=GUARD)  # the caller hangs up meanwhile

        @bot.incoming_call
        async def answer(call: IncomingCall) -> Answer:
            return Answer(then=flow)

        async with fake_graph.serve(bot) as running:
            handle = await fake_graph.place_call(running.webhook_url)
            with anyio.fail_after(GUARD):
                await handle.wait_requests(op="subscribeToTone")
                await handle.press("4", "2", "#")
                await stream.wait_for("call.digits_collected", call_id=handle.call_id)
                await fake_graph.end_call(handle.call_id)
            flow_ended = await stream.wait_for("call.flow_ended", call_id=handle.call_id)
            ended = await stream.wait_for("call.ended", call_id=handle.call_id)
    finally:
        structlog.reset_defaults()
        structlog.configure(**saved)
    (first, second) = stream.find("call.digits_collected", call_id=handle.call_id)
    assert (first["digits"], first["keys"], first["ended"]) == ("42", 2, "stop_tone")
    assert first["prompts"] == ["menu.wav"]  # no resource id: the file name of its URI
    assert (second["outcome"], second["prompts"]) == ("call_ended", [])
    assert flow_ended["outcome"] == "call_ended"
    assert (ended["ended_by"], ended["code"], ended["subcode"]) == ("caller", 200, 5001)


@pytest.mark.anyio
async def test_a_cancel_that_meets_a_gone_call_is_not_a_warning(
    fake_graph: FakeGraph, logs: tuple[LogStream, Lines]
) -> None:
    """The caller presses a key during a prompt and hangs up at once: the bot's
    cancelMediaProcessing meets a call Graph no longer knows (404). That is normal
    telephony: logged at info, and no line of the call is a warning."""
    stream, lines = logs
    bot = Bot()
    menu = MediaPrompt("https://cdn.example.com/menu.wav", "menu")

    async def flow(call: Call) -> None:
        await call.collect_digits(1, prompt=menu, timeout=GUARD)

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer(then=flow)

    fake_graph.plan_operation("playPrompt", complete=False)
    async with fake_graph.serve(bot) as running:
        handle = await fake_graph.place_call(running.webhook_url)
        fake_graph.fail_next("cancelMediaProcessing", 404, call_id=handle.call_id)
        with anyio.fail_after(GUARD):
            await handle.wait_requests(op="playPrompt")
            await handle.press("1")
            await handle.wait_requests(op="cancelMediaProcessing")
        failed = await stream.wait_for("call.cancel_media_failed", call_id=handle.call_id)
        await fake_graph.end_call(handle.call_id)
        await stream.wait_for("call.ended", call_id=handle.call_id)
    assert failed["level"] == "info"
    assert failed["gone"] is True
    assert [
        e["event"] for e in lines.of(handle.call_id) if e["level"] not in ("debug", "info")
    ] == []
