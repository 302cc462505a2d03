"""The Call handle end to end: GraphClient -> FakeGraph over HTTP -> webhook -> registry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import attrs
import pytest
from structlog.testing import capture_logs

from callflow import MediaPrompt, ResultInfo, Target
from callflow.errors import (
    ActionError,
    CallControlError,
    CallEndedError,
    GraphError,
    GraphResponseError,
    MediaCancelledError,
    OperationError,
    OperationTimeoutError,
    RecordingTooLargeError,
    TransferError,
)
from callflow.testing import ManualClock, SigningKey
from tests.control_rig import Rig, running_rig

pytestmark = pytest.mark.anyio

GUARD = 10.0
MENU = MediaPrompt("https://cdn.example.com/menu.wav", "menu")
AGENT = Target.user("0c3f4a2e-1111-4222-8333-944455556666")
JOIN_URL = (
    "https://teams.microsoft.com/l/meetup-join/19%3ameeting_NjY5ZTFm%40thread.v2/0"
    "?context=%7b%22Tid%22%3a%2272f988bf-86f1-41af-91ab-2d7cd011db47%22%2c%22Oid%22%3a"
    "%22550fae72-d251-43ec-868c-373732c2704f%22%7d"
)


@pytest.fixture
async def rig(callflow_signing_key: SigningKey) -> AsyncIterator[Rig]:
    """A running call-control rig."""
    async with running_rig(callflow_signing_key) as running:
        yield running


def ops(rig: Rig, call_id: str) -> list[str]:
    return [r.op for r in rig.fake.requests_for(call_id)]


def operation_lines(logs: Sequence[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    """The ``call.operation`` log lines of ``kind``."""
    return [e for e in logs if e["event"] == "call.operation" and e["kind"] == kind]


# --- play -------------------------------------------------------------------------------


async def test_play_returns_when_the_prompt_was_played(rig: Rig) -> None:
    """play() POSTs playPrompt with a generated clientContext and returns on completion."""
    handle, call = await rig.answered_call()
    with anyio.fail_after(GUARD):
        await call.play(MENU)
    (request,) = await handle.wait_requests(op="playPrompt")
    context = request.body["clientContext"]
    assert 0 < len(context) <= 256
    assert request.body["prompts"] == [
        {
            "@odata.type": "#microsoft.graph.mediaPrompt",
            "mediaInfo": {"uri": MENU.uri, "resourceId": "menu"},
        }
    ]
    (operation,) = handle.operations
    assert (operation.status, operation.client_context, operation.notifications) == (
        "completed",
        context,
        1,
    )
    assert rig.outcomes[-1][:2] == ("playPrompt", "completed")
    assert rig.registry.waiting == 0


async def test_failed_prompt_raises_with_graph_result(rig: Rig) -> None:
    """A prompt Graph reports failed raises OperationError carrying its resultInfo."""
    _, call = await rig.answered_call()
    rig.fake.plan_operation("playPrompt", code=500, subcode=9999, message="Unknown error")
    with anyio.fail_after(GUARD), pytest.raises(OperationError) as caught:
        await call.play(MENU)
    assert caught.value.result == ResultInfo(500, 9999, "Unknown error")
    assert (caught.value.kind, caught.value.status) == ("playPrompt", "failed")
    assert rig.outcomes[-1][:2] == ("playPrompt", "failed")


async def test_completed_without_success_reason_is_a_failure(rig: Rig) -> None:
    """A prompt 'completed' with completionReason 'unknown' (nothing heard) raises."""
    _, call = await rig.answered_call()
    rig.fake.plan_operation("playPrompt", completion_reason="unknown")
    with anyio.fail_after(GUARD), pytest.raises(OperationError) as caught:
        await call.play(MENU)
    assert (caught.value.status, caught.value.completion_reason) == ("completed", "unknown")
    assert not isinstance(caught.value, MediaCancelledError)


async def test_play_timeout_cancels_the_prompt_and_frees_the_waiter(rig: Rig) -> None:
    """A prompt that never completes times out, is cancelled in Graph, and leaves no waiter."""
    handle, call = await rig.answered_call()
    rig.fake.plan_operation("playPrompt", complete=False)
    with anyio.fail_after(GUARD), pytest.raises(OperationTimeoutError):
        await call.play(MENU, timeout=0.2)
    await handle.wait_requests(op="cancelMediaProcessing")
    assert rig.registry.waiting == 0
    assert rig.outcomes[-1][:2] == ("playPrompt", "timeout")


async def test_cancelling_the_awaiting_task_cancels_the_prompt(rig: Rig) -> None:
    """Cancelling the task awaiting play() sends cancelMediaProcessing and drops the waiter."""
    handle, call = await rig.answered_call()
    rig.fake.plan_operation("playPrompt", complete=False)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call.play, MENU)
            await handle.wait_requests(op="playPrompt")
            tg.cancel_scope.cancel()
        await handle.wait_requests(op="cancelMediaProcessing")
    assert handle.operations[0].status == "failed"
    assert rig.registry.waiting == 0
    assert rig.outcomes[-1][:2] == ("playPrompt", "cancelled")


async def test_caller_hanging_up_fails_pending_operations(rig: Rig) -> None:
    """When the call ends mid-prompt the awaiter gets CallEndedError with the call's result."""
    handle, call = await rig.answered_call()
    rig.fake.plan_operation("playPrompt", complete=False)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(rig.fake.end_call, handle.call_id)
            with pytest.raises(CallEndedError) as caught:
                await call.play(MENU)
    assert caught.value.result == ResultInfo(200, 5001, "The conversation has ended.")
    assert rig.registry.waiting == 0
    with anyio.fail_after(GUARD), pytest.raises(CallEndedError):
        await call.play(MENU)  # a call known to be over fails at once
    assert ops(rig, handle.call_id).count("playPrompt") == 1


async def test_bot_hanging_up_fails_pending_operations(rig: Rig) -> None:
    """hang_up() while a prompt plays fails its awaiter with CallEndedError."""
    handle, call = await rig.answered_call()
    rig.fake.plan_operation("playPrompt", complete=False)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:

            async def hang_up() -> None:
                await handle.wait_requests(op="playPrompt")
                await call.hang_up()

            tg.start_soon(hang_up)
            with pytest.raises(CallEndedError):
                await call.play(MENU)
    assert "delete" in ops(rig, handle.call_id)


async def test_completion_before_the_reply_is_read(rig: Rig) -> None:
    """A completion delivered before Graph's 200 reaches the client still resolves play()."""
    handle, call = await rig.answered_call()
    rig.fake.plan_operation("playPrompt", before_reply=True)
    with anyio.fail_after(GUARD):
        await call.play(MENU)
    assert handle.operations[0].notifications == 1


async def test_duplicate_completions_are_dropped(rig: Rig) -> None:
    """A completion delivered three times resolves one play and is counted as duplicate."""
    handle, call = await rig.answered_call()
    rig.fake.plan_operation("playPrompt", duplicate=2)
    with anyio.fail_after(GUARD):
        await call.play(MENU)
        await handle.wait_deliveries("operation", 3)
    assert rig.registry.duplicates == 2
    with anyio.fail_after(GUARD):
        await call.play(MENU)


async def test_result_in_the_reply_needs_no_notification(rig: Rig) -> None:
    """An operation whose 200 says completed (or failed) resolves without a notification."""
    handle, call = await rig.answered_call()
    rig.fake.plan_operation("playPrompt", immediate=True)
    with anyio.fail_after(GUARD):
        await call.play(MENU)
    rig.fake.plan_operation("playPrompt", immediate=True, code=400, subcode=8536)
    with anyio.fail_after(GUARD), pytest.raises(OperationError) as caught:
        await call.play(MENU)
    assert caught.value.result is not None and caught.value.result.subcode == 8536
    assert [op.notifications for op in handle.operations] == [0, 0]


async def test_upper_case_ids_in_urls_still_correlate(rig: Rig) -> None:
    """Operation and tone URLs naming the call upper-case without dashes still match."""
    rig.fake.upper_case_ids = True
    handle, call = await rig.answered_call()
    with anyio.fail_after(GUARD):
        await call.play(MENU)
        async with anyio.create_task_group() as tg:

            async def press() -> None:
                await handle.wait_requests(op="subscribeToTone")
                await handle.press("4", "2")

            tg.start_soon(press)
            assert await call.collect_digits(2) == "42"
    assert handle.operations[0].notifications == 1


async def test_cancel_media_stops_a_running_prompt(rig: Rig) -> None:
    """cancel_media() makes a running play() raise MediaCancelledError (400/8508)."""
    handle, call = await rig.answered_call()
    rig.fake.plan_operation("playPrompt", complete=False)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:

            async def cancel() -> None:
                await handle.wait_requests(op="playPrompt")
                await call.cancel_media()

            tg.start_soon(cancel)
            with pytest.raises(MediaCancelledError) as caught:
                await call.play(MENU)
    cancelled = ResultInfo(400, 8508, "Action failed, the operation was cancelled.")
    assert caught.value.result == cancelled


async def test_play_validates_its_arguments(rig: Rig) -> None:
    """Bad prompts or timeouts fail before anything is sent."""
    handle, call = await rig.answered_call()
    with pytest.raises(ActionError, match="1 to 20"):
        await call.play([])
    with pytest.raises(ActionError, match="timeout"):
        await call.play(MENU, timeout=0)
    assert "playPrompt" not in ops(rig, handle.call_id)


# --- record -------------------------------------------------------------------------------


async def test_record_and_download(rig: Rig) -> None:
    """record() returns a Recording whose download() fetches the bytes with its token."""
    handle, call = await rig.answered_call()
    with anyio.fail_after(GUARD):
        recording = await call.record(prompt=MENU, max_duration=10, stop_tones="#*")
        audio = await recording.download()
    assert audio == rig.fake.recording_audio
    assert recording.completion_reason == "maxRecordDurationReached"
    assert recording.access_token is not None and recording.access_token not in repr(recording)
    (request,) = await handle.wait_requests(op="recordResponse")
    assert request.record_settings is not None
    assert (request.record_settings.stop_tones, request.record_settings.max_duration) == (
        ("#", "*"),
        10,
    )
    download = (await handle.wait_requests(op="recording"))[0]
    assert download.headers["Authorization"] == f"Bearer {recording.access_token}"


async def test_recording_needs_its_token_and_respects_the_size_limit(rig: Rig) -> None:
    """A wrong token gets 401; a recording over max_bytes raises RecordingTooLargeError."""
    _, call = await rig.answered_call()
    with anyio.fail_after(GUARD):
        recording = await call.record()
        assert recording.location is not None
        with pytest.raises(GraphResponseError) as caught:
            await rig.graph.download_recording(recording.location, "not-the-token")
        assert caught.value.status == 401
        with pytest.raises(RecordingTooLargeError):
            await recording.download(max_bytes=100)


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://recordings.example.com/r/1",
        "https://10.1.2.3/r/1",
    ],
)
async def test_a_recording_elsewhere_than_graph_is_not_downloaded(rig: Rig, location: str) -> None:
    """A recording whose location is not Graph's (a metadata endpoint, another host, an
    address) raises GraphError naming CALLFLOW_RECORDING_HOSTS; nothing is fetched."""
    handle, call = await rig.answered_call()
    with anyio.fail_after(GUARD):
        recording = await call.record()
        elsewhere = attrs.evolve(recording, location=location)
        with pytest.raises(GraphError, match="CALLFLOW_RECORDING_HOSTS") as caught:
            await elsewhere.download()
    assert "Nothing was sent" in str(caught.value)
    assert "recording" not in ops(rig, handle.call_id)


async def test_failed_recording_raises(rig: Rig) -> None:
    """A recording that ends with a failure reason raises OperationError."""
    _, call = await rig.answered_call()
    rig.fake.plan_operation(
        "recordResponse", code=200, subcode=0, completion_reason="playBeepFailed"
    )
    with anyio.fail_after(GUARD), pytest.raises(OperationError) as caught:
        await call.record()
    assert caught.value.completion_reason == "playBeepFailed"


# --- digits -------------------------------------------------------------------------------


async def collect_while_pressing(
    rig: Rig, handle: object, call: object, keys: tuple[str, ...], **options: object
) -> str:
    """Run collect_digits while the caller presses ``keys`` once subscribed."""
    from callflow.control.call import Call
    from callflow.testing import CallHandle

    assert isinstance(handle, CallHandle) and isinstance(call, Call)
    order = options.pop("order", None)
    duplicates = options.pop("duplicates", 0)
    result = ""
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:

            async def press() -> None:
                if not handle.subscribed_to_tones:
                    await handle.wait_requests(op="subscribeToTone")
                await handle.press(*keys, order=order, duplicates=duplicates)  # type: ignore[arg-type]

            tg.start_soon(press)
            result = await call.collect_digits(**options)  # type: ignore[arg-type]
    return result


async def test_collect_stops_at_max_digits_and_keeps_the_rest(rig: Rig) -> None:
    """Collection ends at max_digits; later keys wait for the next collection."""
    handle, call = await rig.answered_call()
    keys = ("1", "2", "3", "4", "5")
    digits = await collect_while_pressing(rig, handle, call, keys, max_digits=3)
    assert digits == "123"
    with anyio.fail_after(GUARD):
        assert await call.collect_digits(2, inter_digit_timeout=0.1) == "45"
    assert ops(rig, handle.call_id).count("subscribeToTone") == 1


async def test_collect_stops_at_a_stop_tone(rig: Rig) -> None:
    """A stop tone ends the collection and is not returned."""
    handle, call = await rig.answered_call()
    digits = await collect_while_pressing(rig, handle, call, ("9", "8", "#"), max_digits=6)
    assert digits == "98"


async def test_collect_orders_by_sequence_and_drops_duplicates(rig: Rig) -> None:
    """Keys delivered out of order and twice are collected once each, in sequence order."""
    handle, call = await rig.answered_call()
    digits = await collect_while_pressing(
        rig, handle, call, ("1", "2", "3", "#"), order=(3, 1, 0, 2), duplicates=1, max_digits=6
    )
    assert digits == "123"
    assert rig.registry.duplicates >= 4


async def test_inter_digit_timeout_returns_what_was_pressed(rig: Rig) -> None:
    """With no next key within inter_digit_timeout the keys so far are returned."""
    handle, call = await rig.answered_call()
    digits = await collect_while_pressing(
        rig, handle, call, ("7",), max_digits=4, inter_digit_timeout=0.15, timeout=GUARD
    )
    assert digits == "7"


async def test_overall_timeout_with_no_keys_returns_empty(rig: Rig) -> None:
    """No key before the overall timeout gives an empty string."""
    _, call = await rig.answered_call()
    with anyio.fail_after(GUARD):
        assert await call.collect_digits(4, timeout=0.15) == ""


async def test_one_collection_at_a_time(rig: Rig) -> None:
    """A second concurrent collection on the same call raises CallControlError."""
    handle, call = await rig.answered_call()
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call.collect_digits, 1)
            await handle.wait_requests(op="subscribeToTone")
            with pytest.raises(CallControlError, match="already collecting"):
                await call.collect_digits(1)
            await handle.press("5")


async def test_prompt_is_stopped_by_the_first_key(rig: Rig) -> None:
    """With a prompt, the first key cancels it (barge-in) and collection goes on."""
    handle, call = await rig.answered_call()
    rig.fake.plan_operation("playPrompt", complete=False)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:

            async def press() -> None:
                await handle.wait_requests(op="playPrompt")
                await handle.press("3", "#")

            tg.start_soon(press)
            assert await call.collect_digits(4, prompt=MENU) == "3"
        await handle.wait_requests(op="cancelMediaProcessing")
    assert rig.registry.waiting == 0


async def test_prompt_plays_before_the_clock_starts(rig: Rig) -> None:
    """A prompt that completes is followed by the collection's own timeout."""
    handle, call = await rig.answered_call()
    with anyio.fail_after(GUARD):
        assert await call.collect_digits(2, prompt=MENU, timeout=0.1) == ""
    assert "cancelMediaProcessing" not in ops(rig, handle.call_id)
    assert handle.operations[-1].status == "completed"


async def test_collection_fails_when_the_call_ends(rig: Rig) -> None:
    """A call that ends while digits are collected raises CallEndedError."""
    handle, call = await rig.answered_call()
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:

            async def end() -> None:
                await handle.wait_requests(op="subscribeToTone")
                await rig.fake.end_call(handle.call_id)

            tg.start_soon(end)
            with pytest.raises(CallEndedError):
                await call.collect_digits(4, timeout=GUARD)


async def test_digit_timeouts_run_on_the_control_clock(callflow_signing_key: SigningKey) -> None:
    """A collection's inter-digit timeout runs on the clock call control is given: with a
    manual clock, five minutes without a next key pass when the clock is moved, and the key
    pressed so far is returned at once."""
    clock = ManualClock()
    async with running_rig(callflow_signing_key, clock=clock) as rig:
        handle, call = await rig.answered_call()
        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:

                async def press() -> None:
                    await handle.wait_requests(op="subscribeToTone")
                    await handle.press("7")
                    clock.advance(300.0)

                tg.start_soon(press)
                digits = await call.collect_digits(4, timeout=600.0, inter_digit_timeout=300.0)
    assert digits == "7"


# --- other actions ------------------------------------------------------------------------


async def test_send_tones_mute_unmute_recording_status_and_invite(rig: Rig) -> None:
    """Each simple action sends its Graph body and returns when Graph completes it."""
    handle, call = await rig.answered_call()
    with anyio.fail_after(GUARD):
        await call.send_tones("12#", delay_between_tones_ms=100)
        await call.mute()
        muted = handle.muted
        await call.unmute()
        assert (muted, handle.muted) == (True, False)
        await call.update_recording_status("recording")
        assert handle.recording_status == "recording"
        await call.invite(AGENT)
    bodies = {r.op: r.body for r in rig.fake.requests_for(handle.call_id)}
    assert bodies["sendDtmfTones"]["tones"] == ["tone1", "tone2", "pound"]
    assert bodies["sendDtmfTones"]["delayBetweenTonesMs"] == 100
    assert set(bodies["mute"]) == {"clientContext"}
    assert bodies["invite"]["participants"] == [AGENT.to_graph()]
    kinds = [outcome[0] for outcome in rig.outcomes]
    assert kinds[-5:] == ["sendDtmfTones", "mute", "unmute", "updateRecordingStatus", "invite"]


async def test_actions_on_a_gone_call_raise_call_ended(rig: Rig) -> None:
    """An action Graph answers 404 for raises CallEndedError."""
    handle, call = await rig.answered_call()
    rig.fake.gone(handle.call_id)
    with anyio.fail_after(GUARD), pytest.raises(CallEndedError):
        await call.mute()


# --- the call's state ---------------------------------------------------------------------


async def test_the_call_shows_the_last_state_graph_reported(rig: Rig) -> None:
    """call.state is the last state Graph reported and call.ended whether the call is over,
    read at once (no await); a call nothing is known of has neither."""
    _, call = await rig.answered_call()
    assert (call.state, call.ended) == ("established", False)
    with anyio.fail_after(GUARD):
        await call.hang_up()
    assert (call.state, call.ended) == ("terminated", True)

    other, hung_up_on = await rig.answered_call()
    with anyio.fail_after(GUARD):
        await rig.fake.end_call(other.call_id)  # the caller hangs up
    assert (hung_up_on.state, hung_up_on.ended) == ("terminated", True)
    unknown = rig.calls.get("0f0f0f0f-0000-4000-8000-000000000000")
    assert (unknown.state, unknown.ended) == (None, False)


# --- transfer -----------------------------------------------------------------------------


async def test_transfer_succeeds_when_the_call_is_handed_over(rig: Rig) -> None:
    """transfer() returns after transferring, transferAccepted and terminated 7015."""
    handle, call = await rig.answered_call()
    with anyio.fail_after(GUARD):
        await call.transfer(AGENT)
    (request,) = await handle.wait_requests(op="transfer")
    assert request.transfer_target == AGENT
    assert handle.state == "terminated"
    assert rig.outcomes[-1][:2] == ("transfer", "completed")


async def test_transfer_states_out_of_order_still_succeed(rig: Rig) -> None:
    """transferAccepted before transferring still ends in a successful transfer."""
    _, call = await rig.answered_call()
    rig.fake.plan_operation("transfer", out_of_order=True)
    with anyio.fail_after(GUARD):
        await call.transfer(AGENT)


async def test_failed_transfer_raises_and_the_call_stays_usable(rig: Rig) -> None:
    """A transfer that returns the call to established raises TransferError with resultInfo."""
    handle, call = await rig.answered_call()
    rig.fake.plan_operation("transfer", code=500, subcode=7700, message="No answer")
    with anyio.fail_after(GUARD), pytest.raises(TransferError) as caught:
        await call.transfer(AGENT)
    assert caught.value.result == ResultInfo(500, 7700, "No answer")
    assert handle.state == "established"
    with anyio.fail_after(GUARD):
        await call.play(MENU)


async def test_transfer_timeout(rig: Rig) -> None:
    """A transfer Graph never reports on raises OperationTimeoutError."""
    _, call = await rig.answered_call()
    rig.fake.plan_operation("transfer", complete=False)
    with anyio.fail_after(GUARD), pytest.raises(OperationTimeoutError):
        await call.transfer(AGENT, timeout=0.15)


# --- new calls ----------------------------------------------------------------------------


async def test_create_returns_an_established_call(rig: Rig) -> None:
    """calls.create() returns a Call once Graph says established; the call is usable."""
    with anyio.fail_after(GUARD):
        call = await rig.calls.create(AGENT, tenant_id=rig.fake.tenant_id)
        await call.play(MENU)
    handle = rig.fake.call(call.call_id)
    assert (handle.kind, handle.state) == ("outgoing", "established")
    body = handle.payload
    assert body["targets"] == [AGENT.to_graph()]
    assert body["mediaConfig"] == {"@odata.type": "#microsoft.graph.serviceHostedMediaConfig"}


@pytest.mark.parametrize("plan", [{"out_of_order": True}, {"before_reply": True},
                                  {"duplicate": 1}])  # fmt: skip
async def test_create_tolerates_order_early_and_repeated_states(
    rig: Rig, plan: dict[str, bool]
) -> None:
    """Established before establishing, before the 201, or twice: create() still returns."""
    rig.fake.plan_operation("create", **plan)  # type: ignore[arg-type]
    with anyio.fail_after(GUARD):
        call = await rig.calls.create(AGENT)
    assert rig.fake.call(call.call_id).state == "established"


async def test_create_that_fails_raises_call_ended(rig: Rig) -> None:
    """A call that ends before it is established raises CallEndedError with Graph's result."""
    rig.fake.plan_operation("create", code=480, subcode=10076, message="Callee unreachable")
    with anyio.fail_after(GUARD), pytest.raises(CallEndedError) as caught:
        await rig.calls.create(Target.phone("+14255550100"), source=Target.application_instance(
            "c0ffee11-6666-4777-8888-e9990000bbbb"))  # fmt: skip
    assert caught.value.result == ResultInfo(480, 10076, "Callee unreachable")


async def test_create_timeout_hangs_the_call_up(rig: Rig) -> None:
    """A call not established in time raises OperationTimeoutError and is hung up."""
    rig.fake.plan_operation("create", complete=False)
    with anyio.fail_after(GUARD), pytest.raises(OperationTimeoutError) as caught:
        await rig.calls.create(AGENT, timeout=0.15)
    assert "delete" in ops(rig, caught.value.call_id)


async def test_join_a_meeting_from_its_link(rig: Rig) -> None:
    """calls.join() sends chat and meeting info read from the join link."""
    with anyio.fail_after(GUARD):
        call = await rig.calls.join(JOIN_URL)
    handle = rig.fake.call(call.call_id)
    assert handle.kind == "join"
    body = handle.payload
    assert body["chatInfo"]["threadId"] == "19:meeting_NjY5ZTFm@thread.v2"
    organizer = body["meetingInfo"]["organizer"]["user"]
    assert organizer["id"] == "550fae72-d251-43ec-868c-373732c2704f"
    assert body["tenantId"] == call.tenant_id == "72f988bf-86f1-41af-91ab-2d7cd011db47"


# --- the call.operation line of a failure ----------------------------------------------


async def _failed_transfer(rig: Rig) -> None:
    _, call = await rig.answered_call()
    rig.fake.plan_operation("transfer", code=500, subcode=7700, message="No answer")
    with pytest.raises(TransferError):
        await call.transfer(AGENT)


async def _failed_prompt(rig: Rig) -> None:
    _, call = await rig.answered_call()
    rig.fake.plan_operation("playPrompt", code=500, subcode=9999, message="Unknown error")
    with pytest.raises(OperationError):
        await call.play(MENU)


async def _failed_create(rig: Rig) -> None:
    rig.fake.plan_operation("create", code=480, subcode=10076, message="Callee unreachable")
    with pytest.raises(CallEndedError):
        await rig.calls.create(AGENT)


async def _refused_recording(rig: Rig) -> None:
    _, call = await rig.answered_call()
    rig.fake.fail_next("recordResponse", status=400, code="7503")
    with pytest.raises(GraphResponseError):
        await call.record()


async def _refused_transfer(rig: Rig) -> None:
    _, call = await rig.answered_call()
    rig.fake.fail_next("transfer", status=403, code="Forbidden")
    with pytest.raises(GraphResponseError):
        await call.transfer(AGENT)


async def _gone_call(rig: Rig) -> None:
    handle, call = await rig.answered_call()
    rig.fake.gone(handle.call_id)
    with pytest.raises(CallEndedError):
        await call.mute()


@pytest.mark.parametrize(
    ("fail", "kind", "expected"),
    [
        (_failed_transfer, "transfer", ("failed", 500, 7700)),
        (_failed_prompt, "playPrompt", ("failed", 500, 9999)),
        (_failed_create, "create", ("call_ended", 480, 10076)),
        (_refused_recording, "recordResponse", ("error", 400, 7503)),
        (_refused_transfer, "transfer", ("error", 403, "Forbidden")),
        (_gone_call, "mute", ("call_ended", 404, 8522)),
    ],
)
async def test_a_failed_operation_logs_graph_codes(
    rig: Rig,
    fail: Callable[[Rig], Awaitable[None]],
    kind: str,
    expected: tuple[str, int, int | str],
) -> None:
    """Whatever way an operation fails, its call.operation line carries Graph's codes: the
    resultInfo's code and subcode, or the HTTP status and Graph's error code of a refused
    request (a numeric one as a number)."""
    with capture_logs() as logs, anyio.fail_after(GUARD):
        await fail(rig)
    (line,) = operation_lines(logs, kind)
    assert (line["outcome"], line["code"], line["subcode"]) == expected


# --- the call.operation line of an operation given up -------------------------------------


async def _timed_out_transfer(rig: Rig) -> str:
    handle, call = await rig.answered_call()
    rig.fake.plan_operation("transfer", complete=False)
    with pytest.raises(OperationTimeoutError) as caught:
        await call.transfer(AGENT, timeout=0.15)
    assert caught.value.call_id == handle.call_id
    return handle.call_id


async def _cancelled_transfer(rig: Rig) -> str:
    handle, call = await rig.answered_call()
    rig.fake.plan_operation("transfer", complete=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(call.transfer, AGENT)
        await handle.wait_requests(op="transfer")
        tg.cancel_scope.cancel()
    return handle.call_id


async def _timed_out_recording(rig: Rig) -> str:
    handle, call = await rig.answered_call()
    rig.fake.plan_operation("recordResponse", complete=False)
    with pytest.raises(OperationTimeoutError) as caught:
        await call.record(timeout=0.15)
    assert caught.value.client_context is not None
    return handle.call_id


async def _timed_out_create(rig: Rig) -> str:
    rig.fake.plan_operation("create", complete=False)
    with pytest.raises(OperationTimeoutError) as caught:
        await rig.calls.create(AGENT, timeout=0.15)
    return caught.value.call_id


async def _cancelled_create(rig: Rig) -> str:
    rig.fake.plan_operation("create", complete=False)
    named: list[str] = []
    held = anyio.Event()

    def hold(call_id: str) -> None:
        named.append(call_id)
        held.set()

    rig.control.book.on_hold(hold)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.calls.create, AGENT)
        await held.wait()  # Graph named the call: the bot holds it from now
        tg.cancel_scope.cancel()
    return named[0]


@pytest.mark.parametrize(
    ("give_up", "kind", "outcome", "undone"),
    [
        (_timed_out_transfer, "transfer", "timeout", set()),
        (_cancelled_transfer, "transfer", "cancelled", set()),
        (_timed_out_recording, "recordResponse", "timeout", {"cancelMediaProcessing"}),
        (_timed_out_create, "create", "timeout", {"delete"}),
        (_cancelled_create, "create", "cancelled", {"delete"}),
    ],
)
async def test_an_operation_given_up_is_undone_and_reported_once(
    rig: Rig,
    give_up: Callable[[Rig], Awaitable[str]],
    kind: str,
    outcome: str,
    undone: set[str],
) -> None:
    """An operation that timed out or was cancelled is undone in Graph where it left
    something running (a recording is cancelled, a call being created is hung up, a transfer
    is left to Graph), and reported once: one call.operation line, one on_operation call."""
    with capture_logs() as logs, anyio.fail_after(GUARD):
        call_id = await give_up(rig)
    (line,) = operation_lines(logs, kind)
    assert (line["call_id"], line["outcome"]) == (call_id, outcome)
    assert [o[:2] for o in rig.outcomes if o[0] == kind] == [(kind, outcome)]
    assert {"cancelMediaProcessing", "delete"} & set(ops(rig, call_id)) == undone
    assert rig.registry.waiting == 0
