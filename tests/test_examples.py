"""Every example bot, served against FakeGraph in-process, decides the calls it is about.

An example defines a module-level ``bot``, and a bot serves once: each test loads a fresh copy
of the example's module (under a name of its own) after setting the environment it reads.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import anyio
import pytest
import structlog.testing

from callflow import Bot, Call, Target
from callflow.bot import RunningBot
from callflow.testing import (
    CALLBACK_URL,
    CallHandle,
    FakeGraph,
    FakeSpeech,
    GraphRequest,
    SigningKey,
    identity_set,
    incoming_call,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
GUARD = 10.0
_copies = itertools.count()

DANA = "6d5c4b3a-1111-4222-8333-944455556666"
RAVI = "7e6d5c4b-2222-4333-8444-a55566667777"
STRANGER = "0a0a0a0a-3333-4333-8333-000000000333"
OTHER_TENANT = "99999999-0000-4000-8000-000000000999"
ON_CALL = "0e0e0e0e-5555-4555-8555-000000000555"


def load_example(name: str) -> ModuleType:
    """Import a fresh copy of ``examples/NAME.py`` (its own module object, its own bot)."""
    spec = importlib.util.spec_from_file_location(
        f"example_{name}_{next(_copies)}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert isinstance(module.bot, Bot)
    return module


def user(user_id: str, *, tenant_id: str | None = None, name: str = "Someone") -> dict[str, Any]:
    """A Teams user as the caller of a placed call."""
    caller = {"kind": "user", "id": user_id, "display_name": name}
    if tenant_id is not None:
        caller["tenant_id"] = tenant_id
    return caller


def busy() -> dict[str, str]:
    """The body of the default decision, Reject(busy)."""
    return {"reason": "busy", "callbackUri": CALLBACK_URL}


def forbidden() -> dict[str, str]:
    """The body of Reject(forbidden)."""
    return {"reason": "forbidden", "callbackUri": CALLBACK_URL}


def meeting_organised_by(fake: FakeGraph, organizer: dict[str, Any]) -> dict[str, Any]:
    """An invitation to a meeting whose organizer (``organizerMeetingInfo``) is ``organizer``."""
    call_id = str(uuid.uuid4())
    payload = incoming_call(
        kind="group_meeting",
        call_id=call_id,
        tenant_id=fake.tenant_id,
        bot_app_id=fake.app_id,
        callback_uri=CALLBACK_URL,
    )
    info = payload["value"][0]["resourceData"]["meetingInfo"]
    info["organizer"] = identity_set(organizer)
    return payload


@pytest.fixture
async def short_fake(callflow_signing_key: SigningKey) -> AsyncIterator[FakeGraph]:
    """A FakeGraph whose calls time out after 3 s (the bot's deadline is at 2 s)."""
    async with FakeGraph(
        signing_key=callflow_signing_key, platform_timeout=3.0, recording_timeout=3.0
    ) as fake:
        yield fake


# --- busy_bot --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_busy_bot_rejects_every_call_as_busy(fake_graph: FakeGraph) -> None:
    """busy_bot rejects a Teams call, a phone call and a meeting invitation as busy."""
    example = load_example("busy_bot")
    async with fake_graph.serve(example.bot) as running:
        for kind in ("p2p", "phone", "group_meeting"):
            call = await fake_graph.place_call(running.webhook_url, kind=kind)
            request = await call.decision(timeout=GUARD)
            assert (request.op, request.body) == ("reject", busy()), kind
        assert running.engine.scheduler.fired == 0  # its handler decided, not the deadline


# --- front_desk ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_front_desk_answers_forbids_redirects_and_defaults(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Allow-listed users are answered, other tenants forbidden, phones sent to the on-call."""
    monkeypatch.delenv("CALLFLOW_FRONT_DESK_DIRECTORY_DELAY", raising=False)
    monkeypatch.setenv("CALLFLOW_FRONT_DESK_ALLOW", f"{DANA},{RAVI}")
    monkeypatch.setenv("CALLFLOW_FRONT_DESK_ON_CALL", ON_CALL)
    monkeypatch.delenv("CALLFLOW_FRONT_DESK_HOURS", raising=False)
    example = load_example("front_desk")
    async with fake_graph.serve(example.bot) as running:
        url = running.webhook_url
        dana = await fake_graph.place_call(url, caller=user(DANA, name="Dana"))
        foreign = await fake_graph.place_call(url, caller=user(DANA, tenant_id=OTHER_TENANT))
        phone = await fake_graph.place_call(url, kind="phone")
        stranger = await fake_graph.place_call(url, caller=user(STRANGER))
        guest = await fake_graph.place_call(url, kind="guest")
        requests = {
            name: await call.decision(timeout=GUARD)
            for name, call in {
                "dana": dana,
                "foreign": foreign,
                "phone": phone,
                "stranger": stranger,
                "guest": guest,
            }.items()
        }
    assert requests["dana"].op == "answer"
    assert requests["dana"].modalities == ("audio",)
    assert (requests["foreign"].op, requests["foreign"].body) == ("reject", forbidden())
    assert requests["phone"].op == "redirect"
    assert requests["phone"].targets == (Target.user(ON_CALL),)
    assert requests["phone"].body["timeout"] == 30
    for name in ("stranger", "guest"):  # no directory configured: the default
        assert (requests[name].op, requests[name].body) == ("reject", busy()), name


@pytest.mark.anyio
async def test_front_desk_sends_phone_callers_away_out_of_office_hours(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside CALLFLOW_FRONT_DESK_HOURS a phone caller gets the default, not the on-call."""
    monkeypatch.setenv("CALLFLOW_FRONT_DESK_HOURS", "0-0")  # no office hours at all
    example = load_example("front_desk")
    async with fake_graph.serve(example.bot) as running:
        phone = await fake_graph.place_call(running.webhook_url, kind="phone")
        request = await phone.decision(timeout=GUARD)
    assert (request.op, request.body) == ("reject", busy())


@pytest.mark.anyio
async def test_front_desk_joins_only_meetings_organised_by_the_allow_list(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Meetings organised by someone allow-listed are joined; others, and channels, refused."""
    monkeypatch.delenv("CALLFLOW_FRONT_DESK_ALLOW", raising=False)
    example = load_example("front_desk")
    assert RAVI in example.ALLOW  # the default allow-list
    stranger = user(STRANGER, tenant_id=fake_graph.tenant_id)
    async with fake_graph.serve(example.bot) as running:
        url = running.webhook_url
        ravis = await fake_graph.place_call(url, kind="group_meeting")  # Ravi organises
        strangers = await fake_graph.place_call(
            url, kind="group_meeting", payload=meeting_organised_by(fake_graph, stranger)
        )
        channel = await fake_graph.place_call(url, kind="channel_meeting")
        by_join_id = await fake_graph.place_call(url, kind="joinid_meeting")
        joined = await ravis.decision(timeout=GUARD)
        refused = [await call.decision(timeout=GUARD) for call in (strangers, channel, by_join_id)]
    assert joined.op == "answer"
    assert joined.body["acceptedModalities"] == ["audio"]
    for request in refused:
        assert (request.op, request.body) == ("reject", forbidden()), request.call_id


@pytest.mark.anyio
async def test_front_desk_answers_colleagues_its_directory_finds_in_time(
    short_fake: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a fast directory an unknown colleague is answered; foreign callers never reach it."""
    monkeypatch.setenv("CALLFLOW_FRONT_DESK_DIRECTORY_DELAY", "0.05")
    example = load_example("front_desk")
    async with short_fake.serve(example.bot, safety_margin=1.0) as running:
        url = running.webhook_url
        colleague = await short_fake.place_call(url, caller=user(STRANGER))
        foreign = await short_fake.place_call(url, caller=user(STRANGER, tenant_id=OTHER_TENANT))
        answered = await colleague.decision(timeout=GUARD)
        refused = await foreign.decision(timeout=GUARD)
    assert answered.op == "answer"
    assert answered.at - colleague.placed_at < 1.0
    assert (refused.op, refused.body) == ("reject", forbidden())


@pytest.mark.anyio
async def test_front_desk_gives_up_a_slow_directory_before_the_deadline(
    short_fake: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory slower than the call's budget is given up and the default goes out early."""
    monkeypatch.setenv("CALLFLOW_FRONT_DESK_DIRECTORY_DELAY", "30")
    example = load_example("front_desk")
    with structlog.testing.capture_logs() as logs:
        async with short_fake.serve(example.bot, safety_margin=1.0) as running:
            call = await short_fake.place_call(running.webhook_url, caller=user(STRANGER))
            request = await call.decision(timeout=GUARD)
            fired = running.engine.scheduler.fired
    elapsed = request.at - call.placed_at
    assert (request.op, request.body) == ("reject", busy())
    # Before the 2 s deadline, and not long before the handler's own budget ran out (the
    # budget counts from when the notification was sent: a loaded machine's ingress lag
    # takes a little of it).
    assert 2.0 - example.SEND_ALLOWANCE - 0.3 <= elapsed < 2.0
    assert fired == 0  # the handler gave up by itself; the deadline did not have to decide
    assert [e["call_id"] for e in logs if e["event"] == "front_desk.directory_too_slow"] == [
        call.call_id
    ]


# --- meeting_policy --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_meeting_policy_joins_own_tenant_meetings_and_declines_the_rest(
    fake_graph: FakeGraph,
) -> None:
    """Own-tenant organisers are joined; foreign or unknown organisers are declined; p2p default."""
    example = load_example("meeting_policy")
    foreign = user(RAVI, tenant_id=OTHER_TENANT)
    no_tenant = user(RAVI)
    async with fake_graph.serve(example.bot) as running:
        url = running.webhook_url
        own = await fake_graph.place_call(url, kind="group_meeting")
        other = await fake_graph.place_call(
            url, kind="group_meeting", payload=meeting_organised_by(fake_graph, foreign)
        )
        unknown = await fake_graph.place_call(
            url, kind="group_meeting", payload=meeting_organised_by(fake_graph, no_tenant)
        )
        channel = await fake_graph.place_call(url, kind="channel_meeting")
        p2p = await fake_graph.place_call(url, kind="p2p")
        joined = await own.decision(timeout=GUARD)
        declined = [await c.decision(timeout=GUARD) for c in (other, unknown, channel)]
        default = await p2p.decision(timeout=GUARD)
    assert joined.op == "answer"
    assert joined.body["acceptedModalities"] == ["audio"]
    for request in declined:
        assert (request.op, request.body) == ("reject", forbidden()), request.call_id
    assert (default.op, default.body) == ("reject", busy())


# --- slow_lookup -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_slow_lookup_answers_callers_a_fast_directory_knows(short_fake: FakeGraph) -> None:
    """A caller a fast directory knows is answered; one it does not know gets the default."""
    example = load_example("slow_lookup")
    example.DIRECTORY[DANA] = 0.05
    async with short_fake.serve(example.bot, safety_margin=1.0) as running:
        known = await short_fake.place_call(running.webhook_url, caller=user(DANA))
        unknown = await short_fake.place_call(running.webhook_url, caller=user(STRANGER))
        answered = await known.decision(timeout=GUARD)
        default = await unknown.decision(timeout=GUARD)
    assert answered.op == "answer"
    assert answered.at - known.placed_at < 1.0
    assert (default.op, default.body) == ("reject", busy())
    assert default.at - unknown.placed_at < 1.0


@pytest.mark.anyio
async def test_slow_lookup_gives_the_default_well_before_the_deadline(
    short_fake: FakeGraph,
) -> None:
    """A directory slower than the budget is abandoned: the default leaves before the deadline."""
    example = load_example("slow_lookup")
    example.DIRECTORY[STRANGER] = 30.0
    with structlog.testing.capture_logs() as logs:
        async with short_fake.serve(example.bot, safety_margin=1.0) as running:
            call = await short_fake.place_call(running.webhook_url, caller=user(STRANGER))
            request = await call.decision(timeout=GUARD)
            fired = running.engine.scheduler.fired
    elapsed = request.at - call.placed_at
    assert (request.op, request.body) == ("reject", busy())
    assert 2.0 - example.SEND_ALLOWANCE - 0.05 <= elapsed < 2.0  # deadline: 3 s - 1 s margin
    assert fired == 0
    (gave_up,) = [e for e in logs if e["event"] == "slow_lookup.gave_up"]
    assert gave_up["call_id"] == call.call_id
    assert 1.0 < gave_up["budget_s"] <= 1.5
    assert not call.timed_out


# --- ivr -------------------------------------------------------------------------------------

SALES = "5a1e5a1e-1111-4222-8333-000000000777"
PIN = "2468"


def load_ivr(monkeypatch: pytest.MonkeyPatch, key_timeout: float = GUARD) -> IvrExample:
    """Load the IVR example with a known sales agent, PIN and key timeout."""
    monkeypatch.setenv("CALLFLOW_IVR_SALES", SALES)
    monkeypatch.setenv("CALLFLOW_IVR_PIN", PIN)
    monkeypatch.setenv("CALLFLOW_IVR_KEY_TIMEOUT", str(key_timeout))
    monkeypatch.delenv("CALLFLOW_IVR_PROMPTS", raising=False)
    return IvrExample(load_example("ivr"))


class IvrExample:
    """The IVR example's module, its flow wrapped to tell the test when it has ended."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.bot: Bot = module.bot
        self.ended = anyio.Event()
        flow = module.ivr

        async def watched(call: Call) -> None:
            try:
                await flow(call)
            finally:
                self.ended.set()

        vars(module)["ivr"] = watched  # the answer handler looks the flow up at each call

    @property
    def voicemails(self) -> list[tuple[str, bytes]]:
        """What the example's save_voicemail kept."""
        return list(self.module.VOICEMAILS)

    async def call(self, fake: FakeGraph, running: RunningBot) -> CallHandle:
        """Place a Teams call on the IVR and wait until the menu is listening for keys."""
        handle = await fake.place_call(running.webhook_url, caller=user(DANA, name="Dana"))
        await handle.wait_requests(op="subscribeToTone", timeout=GUARD)
        return handle

    async def finished(self, running: RunningBot) -> None:
        """Wait for the flow to end, and check it left nothing running or failing behind."""
        with anyio.fail_after(GUARD):
            await self.ended.wait()
        assert running.engine.lanes.flows == 0
        assert running.engine.stats.handler_errors == 0


def prompts(requests: Iterable[GraphRequest]) -> list[str]:
    """The prompts (resource ids) that playPrompt and recordResponse requests asked for."""
    return [
        prompt["mediaInfo"]["resourceId"]
        for request in requests
        if request.op in ("playPrompt", "recordResponse")
        for prompt in request.body.get("prompts", ())
    ]


async def prompt_played(handle: CallHandle, name: str, times: int = 1) -> None:
    """Wait until the bot has asked Graph ``times`` times to play prompt ``name``."""
    count = 1
    while prompts(await handle.wait_requests(count, op="playPrompt")).count(name) < times:
        count += 1


def ops(handle: CallHandle) -> list[str]:
    """The requests the bot sent for a call, in order."""
    return [request.op for request in handle.requests]


@pytest.mark.anyio
async def test_ivr_transfers_to_sales_on_1(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pressing 1 transfers the call to the configured sales agent; the bot does not hang up."""
    ivr = load_ivr(monkeypatch)
    async with fake_graph.serve(ivr.bot) as running:
        handle = await ivr.call(fake_graph, running)
        await handle.press("1")
        await ivr.finished(running)
        assert running.calls() == []  # the call went to the agent: nothing held
    answer = handle.decisions[0].body
    assert answer["mediaConfig"]["preFetchMedia"][0]["resourceId"] == "menu"
    (transfer,) = await handle.wait_requests(op="transfer")
    assert transfer.transfer_target == Target.user(SALES)
    assert handle.state == "terminated"
    assert "delete" not in ops(handle)
    assert prompts(handle.requests) == ["menu"]


@pytest.mark.anyio
async def test_ivr_records_and_keeps_a_voicemail_on_2(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pressing 2 records a message, downloads it, keeps it, then says goodbye and hangs up."""
    ivr = load_ivr(monkeypatch)
    fake_graph.recording_audio = b"RIFF" + bytes(range(256)) * 8  # tell it from any other
    # Recordings on a loopback Graph's own origin are fetched whatever the allowed hosts.
    hosts = ("*.media.example.com",)
    async with fake_graph.serve(ivr.bot, recording_hosts=hosts) as running:
        assert running.graph.recording_hosts == hosts
        handle = await ivr.call(fake_graph, running)
        await handle.press("2")
        await ivr.finished(running)
        assert running.calls() == []
    assert ivr.voicemails == [(handle.call_id, fake_graph.recording_audio)]
    assert prompts(handle.requests) == ["menu", "leave-a-message", "message-saved", "goodbye"]
    (record,) = await handle.wait_requests(op="recordResponse")
    assert record.record_settings is not None
    assert record.record_settings.stop_tones == ("#",)
    assert record.record_settings.max_duration == 60
    (download,) = [r for r in handle.requests if r.op == "recording"]
    assert download.status == 200
    assert ops(handle)[-1] == "delete"


@pytest.mark.anyio
async def test_ivr_accepts_the_right_pin_after_a_wrong_one(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pressing 3, a wrong PIN is refused and the caller is asked again; the right one is
    accepted."""
    ivr = load_ivr(monkeypatch)
    with structlog.testing.capture_logs() as logs:
        async with fake_graph.serve(ivr.bot) as running:
            handle = await ivr.call(fake_graph, running)
            with anyio.fail_after(GUARD):
                await handle.press("3")
                await prompt_played(handle, "enter-pin")
                await handle.press("1", "3", "5", "7", "#")
                await prompt_played(handle, "wrong-pin")
                await handle.press(*PIN, "#")
            await ivr.finished(running)
    assert prompts(handle.requests) == [
        "menu",
        "enter-pin",
        "wrong-pin",
        "enter-pin",
        "pin-accepted",
        "goodbye",
    ]
    assert ops(handle)[-1] == "delete"
    assert "ivr.pin_refused" not in [entry["event"] for entry in logs]
    assert not any(PIN in str(entry) or "1357" in str(entry) for entry in logs)  # never logged


@pytest.mark.anyio
async def test_ivr_hangs_up_after_two_wrong_pins(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two wrong PINs (typed ahead, each ending with #) and the bot says goodbye and hangs up."""
    ivr = load_ivr(monkeypatch)
    with structlog.testing.capture_logs() as logs:
        async with fake_graph.serve(ivr.bot) as running:
            handle = await ivr.call(fake_graph, running)
            await handle.press("3", "1", "1", "1", "1", "#", "9", "9", "9", "9", "#")
            await ivr.finished(running)
    assert prompts(handle.requests) == [
        "menu",
        "enter-pin",
        "wrong-pin",
        "enter-pin",
        "wrong-pin",
        "goodbye",
    ]
    assert ops(handle)[-1] == "delete"
    assert [entry["call_id"] for entry in logs if entry["event"] == "ivr.pin_refused"] == [
        handle.call_id
    ]


@pytest.mark.anyio
async def test_ivr_repeats_the_menu_once_then_says_goodbye(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no key pressed the menu plays twice, then the bot says goodbye and hangs up."""
    ivr = load_ivr(monkeypatch, key_timeout=0.2)
    async with fake_graph.serve(ivr.bot) as running:
        handle = await ivr.call(fake_graph, running)
        await ivr.finished(running)
        assert running.calls() == []
    assert prompts(handle.requests) == ["menu", "menu", "goodbye"]
    assert ops(handle)[-1] == "delete"
    assert "cancelMediaProcessing" not in ops(handle)  # each menu played to its end


@pytest.mark.anyio
async def test_ivr_asks_again_after_a_key_not_on_the_menu(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key that is not on the menu plays the menu again; the next choice is followed."""
    ivr = load_ivr(monkeypatch)
    async with fake_graph.serve(ivr.bot) as running:
        handle = await ivr.call(fake_graph, running)
        with anyio.fail_after(GUARD):
            await handle.press("9")
            await prompt_played(handle, "menu", times=2)
            await handle.press("2")
        await ivr.finished(running)
    assert prompts(handle.requests)[:3] == ["menu", "menu", "leave-a-message"]
    assert len(ivr.voicemails) == 1


@pytest.mark.anyio
async def test_ivr_ends_quietly_when_the_caller_hangs_up_during_the_menu(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller who hangs up during the menu ends the flow: no error, no hang-up request."""
    ivr = load_ivr(monkeypatch)
    with structlog.testing.capture_logs() as logs:
        async with fake_graph.serve(ivr.bot) as running:
            handle = await ivr.call(fake_graph, running)
            await fake_graph.end_call(handle.call_id)
            await ivr.finished(running)
            assert running.calls() == []
    assert "delete" not in ops(handle)
    assert prompts(handle.requests) == ["menu"]
    assert [entry["call_id"] for entry in logs if entry["event"] == "ivr.caller_hung_up"] == [
        handle.call_id
    ]


@pytest.mark.anyio
async def test_ivr_takes_a_voicemail_when_the_transfer_fails(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transfer that fails brings the caller back: the bot apologises, takes a voicemail
    and hangs up; the failed transfer is counted in the metrics."""
    ivr = load_ivr(monkeypatch)
    fake_graph.plan_operation("transfer", code=500, subcode=7700, message="No answer")
    with structlog.testing.capture_logs() as logs:
        async with fake_graph.serve(ivr.bot) as running:
            handle = await ivr.call(fake_graph, running)
            await handle.press("1")
            await ivr.finished(running)
            async with aiohttp.ClientSession() as http, http.get(running.metrics_url) as got:
                metrics = await got.text()
    # An agent who does not answer is ordinary telephony: nothing for an operator to see.
    (failed,) = [entry for entry in logs if entry["event"] == "ivr.transfer_failed"]
    assert failed["log_level"] == "info"
    (transferred,) = [entry for entry in logs if entry["event"] == "call.transferred"]
    assert (transferred["outcome"], transferred["target"]) == ("failed", f"user:{SALES}")
    assert prompts(handle.requests) == [
        "menu",
        "sales-unavailable",
        "leave-a-message",
        "message-saved",
        "goodbye",
    ]
    assert ivr.voicemails == [(handle.call_id, fake_graph.recording_audio)]
    assert ops(handle)[-1] == "delete"
    assert 'callflow_call_operations_total{kind="transfer",outcome="failed"} 1.0' in metrics
    assert 'callflow_call_operations_total{kind="recordResponse",outcome="completed"} 1.0' in (
        metrics
    )


@pytest.mark.anyio
async def test_ivr_hangs_up_when_graph_cannot_play_the_menu(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A menu Graph fails to play ends the call: the bot hangs up instead of waiting in
    silence."""
    ivr = load_ivr(monkeypatch)
    fake_graph.plan_operation("playPrompt", code=500, subcode=9999, message="Unknown error")
    with structlog.testing.capture_logs() as logs:
        async with fake_graph.serve(ivr.bot) as running:
            handle = await ivr.call(fake_graph, running)
            await ivr.finished(running)
    assert ops(handle)[-1] == "delete"
    assert prompts(handle.requests) == ["menu"]
    (failed,) = [entry for entry in logs if entry["event"] == "ivr.failed"]
    assert failed["call_id"] == handle.call_id
    assert "playPrompt" in failed["error"]
    assert "500/9999" in failed["error"]


@pytest.mark.anyio
async def test_ivr_hangs_up_when_graph_refuses_to_record(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recording Graph refuses (400) ends the call: the bot hangs up, nothing is kept."""
    ivr = load_ivr(monkeypatch)
    fake_graph.fail_next("recordResponse", status=400)
    with structlog.testing.capture_logs() as logs:
        async with fake_graph.serve(ivr.bot) as running:
            handle = await ivr.call(fake_graph, running)
            await handle.press("2")
            await ivr.finished(running)
    assert ivr.voicemails == []
    assert [(r.op, r.status) for r in handle.requests][-2:] == [
        ("recordResponse", 400),
        ("delete", 204),
    ]
    (failed,) = [entry for entry in logs if entry["event"] == "ivr.failed"]
    assert "400" in failed["error"]


def test_every_example_is_tested() -> None:
    """Each examples/*.py bot has a test in this module, or in the module the docs show."""
    source = Path(__file__).read_text()
    elsewhere = {"first_bot": "test_docs.py", "menu_ivr": "test_menu_ivr.py"}  # the tutorial's
    names = sorted(p.stem for p in EXAMPLES.glob("*.py") if p.stem != "__init__")
    assert names == [
        "appointments", "busy_bot", "first_bot", "front_desk", "ivr", "meeting_policy",
        "menu_ivr", "slow_lookup",
    ]  # fmt: skip
    for name in names:
        if name in elsewhere:
            assert f"examples/{name}.py" in (Path(__file__).parent / elsewhere[name]).read_text()
        else:
            assert f'load_example("{name}")' in source


@pytest.mark.anyio
async def test_ivr_carries_on_with_the_pin_on_another_worker_when_its_own_stops(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two IVR workers in a fleet: the caller presses 3 and types a wrong PIN on one; that
    worker stops (a rolling deploy) and the other adopts the call, apologises, and asks for
    the PIN a last time (one attempt was used); the right PIN is accepted there."""
    from tests.fleet_proxy import FleetProxy
    from tests.redis_server import redis_server

    copies = [load_ivr(monkeypatch), load_ivr(monkeypatch)]
    servers = redis_server()
    redis = next(servers)
    stacks = [contextlib.AsyncExitStack() for _ in copies]
    try:
        served = [
            await stack.enter_async_context(
                fake_graph.serve(
                    copy.bot,
                    store=redis.url,
                    instance_id=f"ivr{i}",
                    heartbeat_interval=0.1,
                    drain_timeout=0.5,
                    fleet_secret="ivr-fleet-secret-0123456789abcdef01",
                )
            )
            for i, (copy, stack) in enumerate(zip(copies, stacks, strict=True))
        ]
        async with FleetProxy([running.url for running in served]) as proxy:
            handle = await fake_graph.place_call(
                proxy.url + "/api/calls", caller=user(DANA, name="Dana")
            )
            answer = await handle.decision()
            owner = int(answer.body["callbackUri"].rsplit("instance=ivr", 1)[1])
            with anyio.fail_after(GUARD):
                await handle.wait_requests(op="subscribeToTone", timeout=GUARD)
                await handle.press("3")
                await prompt_played(handle, "enter-pin")
                await handle.press("1", "3", "5", "7", "#")
                await prompt_played(handle, "wrong-pin")
                await prompt_played(handle, "enter-pin", times=2)
                await stacks[owner].aclose()  # the owner stops gracefully: it hands off
                await prompt_played(handle, "sorry-where-were-we")
                await prompt_played(handle, "enter-pin", times=3)
                await handle.press(*PIN, "#")
                await prompt_played(handle, "goodbye")
                await handle.wait_requests(op="delete", timeout=GUARD)
    finally:
        for stack in stacks:
            await stack.aclose()
        with contextlib.suppress(StopIteration):
            next(servers)
    played = prompts(handle.requests)
    assert played[played.index("sorry-where-were-we") :] == [
        "sorry-where-were-we",
        "enter-pin",
        "pin-accepted",
        "goodbye",
    ]


# --- appointments ----------------------------------------------------------------------------

DESK = "de5cde5c-1111-4222-8333-000000000888"
TUESDAY = datetime(2027, 3, 16, 10, 0)


class AppointmentsExample:
    """The appointments example's module, its flow wrapped to tell the test when it ended."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CALLFLOW_APPT_DESK", DESK)
        monkeypatch.delenv("CALLFLOW_APPT_LANGUAGE", raising=False)
        module = self.module = load_example("appointments")
        self.bot: Bot = module.bot
        self.ended = anyio.Event()
        module.APPOINTMENTS[DANA] = module.Appointment(TUESDAY, "Doctor Lee")
        flow = module.appointment_line

        async def watched(call: Call, user_id: str, name: str) -> None:
            try:
                await flow(call, user_id, name)
            finally:
                self.ended.set()

        vars(module)["appointment_line"] = watched

    async def call(self, fake: FakeGraph, running: RunningBot, who: str = DANA) -> CallHandle:
        """Place a Teams call from ``who`` (Dana) and wait until the question is asked."""
        handle = await fake.place_call(running.webhook_url, caller=user(who, name="Dana"))
        await handle.wait_requests(op="recordResponse", timeout=GUARD)
        return handle

    async def finished(self, running: RunningBot) -> None:
        with anyio.fail_after(GUARD):
            await self.ended.wait()
        assert running.engine.lanes.flows == 0
        assert running.engine.stats.handler_errors == 0


def spoken(speech: FakeSpeech) -> list[str]:
    """What the bot said (the texts Speech rendered, each once), in order."""
    return [r.text or "" for r in speech.requests_of("tts") if r.status == 200]


READ_BACK = "Hello Dana. Your appointment is on Tuesday 16 March at 10:00 with Doctor Lee."
QUESTION = (
    "To keep it, say keep or press 1. To cancel it, say cancel or press 2. "
    "To change it, say change or press 3."
)


@pytest.mark.anyio
async def test_appointments_greets_by_name_and_understands_a_spoken_answer(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dana hears her appointment read back, says "cancel it, please", and it is cancelled."""
    example = AppointmentsExample(monkeypatch)
    fake_graph.plan_operation("recordResponse", duration=5.0)  # until the caller speaks
    async with FakeSpeech() as speech, fake_graph.serve(example.bot, **speech.overrides()) as run:
        handle = await example.call(fake_graph, run)
        await handle.say_back("Cancel it, please.")
        await example.finished(run)
        assert example.module.CANCELLED == [DANA]
        assert ops(handle)[-2:] == ["playPrompt", "delete"]
        assert spoken(speech) == [
            READ_BACK, QUESTION, "Your appointment is cancelled. Goodbye."
        ]  # fmt: skip
        (stt,) = speech.requests_of("stt")
        assert stt.query["language"] == "en-US"


@pytest.mark.anyio
async def test_appointments_takes_a_key_instead(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pressing 3 during the question transfers Dana to the front desk; Speech is not asked."""
    example = AppointmentsExample(monkeypatch)
    fake_graph.plan_operation("recordResponse", duration=5.0)
    async with FakeSpeech() as speech, fake_graph.serve(example.bot, **speech.overrides()) as run:
        handle = await example.call(fake_graph, run)
        await handle.wait_requests(op="subscribeToTone", timeout=GUARD)
        await handle.press("3")
        await example.finished(run)
        (transfer,) = await handle.wait_requests(op="transfer", timeout=GUARD)
        assert transfer.body["transferTarget"]["identity"]["user"]["id"] == DESK
        assert "cancelMediaProcessing" in ops(handle)
        assert speech.requests_of("stt") == ()
        assert example.module.CANCELLED == []


@pytest.mark.anyio
async def test_appointments_asks_twice_then_gives_up(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Words that match nothing, then silence: asked twice, then goodbye; nothing changes."""
    example = AppointmentsExample(monkeypatch)
    async with FakeSpeech() as speech, fake_graph.serve(example.bot, **speech.overrides()) as run:
        handle = await example.call(fake_graph, run)
        await handle.say_back("what is the weather like")
        await example.finished(run)
        assert len([r for r in handle.requests if r.op == "recordResponse"]) == 2
        assert spoken(speech) == [READ_BACK, QUESTION, "Sorry, I did not understand. Goodbye."]
        assert ops(handle)[-1] == "delete"
        heard = [r.text for r in speech.requests_of("stt")]
        assert heard == ["what is the weather like", None]  # the second answer: silence
        assert example.module.CANCELLED == []


@pytest.mark.anyio
async def test_appointments_tells_a_caller_without_one(
    fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ravi has no appointment: he is told so, and nothing is asked."""
    example = AppointmentsExample(monkeypatch)
    async with FakeSpeech() as speech, fake_graph.serve(example.bot, **speech.overrides()) as run:
        handle = await fake_graph.place_call(run.webhook_url, caller=user(RAVI, name="Ravi"))
        await example.finished(run)
        assert spoken(speech) == ["Hello Ravi. I have no appointment for you. Goodbye."]
        assert ops(handle)[-1] == "delete"
        assert "recordResponse" not in ops(handle)
