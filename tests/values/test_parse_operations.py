"""The parser on call-control notifications: operation results and key presses."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callflow._parse import operation_kind, parse_notifications, read_operation
from callflow.events import (
    TONES,
    CallStateChanged,
    OperationFinished,
    ResultInfo,
    ToneReceived,
    UnknownNotification,
    normalize_id,
)
from tests.conftest import load_fixture

CALL = "1a2b3c4d-0000-4000-8000-000000000101"
CALL_URL = f"/communications/calls/{CALL}"
OP = "0fe0623f-d628-42ed-b4bd-8ac290072cc5"


def wrap(*items: dict[str, Any]) -> dict[str, Any]:
    return {"value": list(items)}


def item(change: str, url: str | None, data: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"changeType": change}
    if url is not None:
        body["resourceUrl"] = url
    if data is not None:
        body["resourceData"] = data
    return body


def test_play_prompt_result_fixture() -> None:
    """A deleted playPromptOperation becomes OperationFinished with every field read; the
    call id, upper case without dashes in the URL, in its canonical form."""
    (event,) = parse_notifications(load_fixture("operation_play_prompt.json"))
    assert isinstance(event, OperationFinished)
    assert event == OperationFinished(
        call_id="1a2b3c4d-0000-4000-8000-000000000101",
        operation_id=OP,
        kind="playPrompt",
        status="completed",
        result=ResultInfo(200, 0, "Action completed successfully."),
        client_context="d45324c1-fcb5-430a-902c-f20af696537c",
        completion_reason="completedSuccessfully",
    )
    assert normalize_id(event.call_id) == normalize_id(CALL)


def test_record_result_keeps_the_token_out_of_repr() -> None:
    """A recordOperation carries location and access token; the token is not in repr."""
    doc = load_fixture("operation_record.json")
    (event,) = parse_notifications(doc)
    assert isinstance(event, OperationFinished)
    assert event.kind == "record"
    assert event.result == ResultInfo(200, 8515, "Action completed, max record duration reached.")
    assert event.recording_location == "https://resource.location/recordings/4f3e.wav"
    assert event.recording_access_token is not None
    assert event.recording_access_token.endswith("rec-secret.sig")
    assert "rec-secret" not in repr(event)
    assert event.raw is doc["value"][0]


def test_cancelled_operation_is_a_failure_with_8508() -> None:
    """A cancelled prompt ends failed with resultInfo 400/8508."""
    (event,) = parse_notifications(load_fixture("operation_cancelled.json"))
    assert isinstance(event, OperationFinished)
    assert (event.status, event.result, event.completion_reason) == (
        "failed",
        ResultInfo(400, 8508, "Action failed, the operation was cancelled."),
        "operationCanceled",
    )


def test_operation_fields_are_read_leniently() -> None:
    """Wrong-typed operation fields become None; status casing is normalised; the id may come
    from resourceData when the URL has none."""
    data = {
        "@odata.type": 5,
        "id": OP,
        "status": "Running",
        "clientContext": ["x"],
        "resultInfo": {"code": "abc", "subcode": True, "message": 3},
        "completionReason": None,
        "recordingLocation": 1,
    }
    (event,) = parse_notifications(wrap(item("deleted", f"{CALL_URL}/operations/", data)))
    assert event == OperationFinished(CALL, OP, None, "running")
    odd = {"status": "paused", "resultInfo": "no"}
    (event,) = parse_notifications(wrap(item("Deleted", f"{CALL_URL}/Operations/op-9", odd)))
    assert event == OperationFinished(CALL, "op-9", None, "paused")


def test_other_operation_notifications_stay_unknown() -> None:
    """Operation updates, deletes without a body or id, and arrays are unknown notifications."""
    url = f"{CALL_URL}/operations/{OP}"
    doc = wrap(
        item("updated", url, {"status": "running"}),
        item("deleted", url),
        item("deleted", url, [1]),
        item("deleted", f"{CALL_URL}/operations/", {"status": "completed"}),
        item("deleted", "/communications/calls//operations/x", {"status": "completed"}),
    )
    events = parse_notifications(doc)
    assert all(isinstance(event, UnknownNotification) for event in events)
    assert events[0] == UnknownNotification("updated", url, CALL)


@pytest.mark.parametrize(
    ("odata_type", "kind"),
    [
        ("#microsoft.graph.playPromptOperation", "playPrompt"),
        ("#microsoft.graph.recordOperation", "record"),
        ("#microsoft.graph.subscribeToToneOperation", "subscribeToTone"),
        ("#microsoft.graph.sendDtmfTonesOperation", "sendDtmfTones"),
        ("#microsoft.graph.cancelMediaProcessingOperation", "cancelMediaProcessing"),
        ("#microsoft.graph.inviteParticipantsOperation", "inviteParticipants"),
        ("#microsoft.graph.muteParticipantOperation", "muteParticipant"),
        ("#microsoft.graph.unmuteParticipantOperation", "unmuteParticipant"),
        ("#microsoft.graph.updateRecordingStatusOperation", "updateRecordingStatus"),
        ("microsoft.graph.commsOperation", "comms"),
        ("Operation", "Operation"),
        ("", None),
    ],
)
def test_operation_kinds(odata_type: str, kind: str | None) -> None:
    """The operation kind is the @odata.type without namespace and Operation suffix."""
    assert operation_kind(odata_type) == kind


def test_read_operation_of_a_non_object_is_none() -> None:
    """Reading an operation from something that is not an object gives None."""
    assert read_operation([1]) is None
    assert read_operation(None) is None


def test_tone_fixture_is_a_key_press_not_a_state_change() -> None:
    """An established update with toneInfo is a ToneReceived, not a CallStateChanged."""
    (event,) = parse_notifications(load_fixture("tone.json"))
    assert event == ToneReceived(CALL, 1, "1", 4025)


@pytest.mark.parametrize(
    ("sent", "tone"),
    [
        *[(f"tone{d}", str(d)) for d in range(10)],
        ("star", "*"),
        ("pound", "#"),
        ("Pound", "#"),
        ("TONE7", "7"),
        ("a", "A"),
        ("D", "D"),
        ("flash", "flash"),
        ("#", "#"),
        ("*", "*"),
        ("5", "5"),
    ],
)
def test_tone_names_are_normalised(sent: str, tone: str) -> None:
    """Graph's tone names (any casing) become digits, '*', '#', 'A'-'D' or 'flash'."""
    data = {"state": "established", "toneInfo": {"sequenceId": "7", "tone": sent}}
    (event,) = parse_notifications(wrap(item("updated", CALL_URL, data)))
    assert event == ToneReceived(CALL, 7, tone)
    assert tone in TONES


@pytest.mark.parametrize(
    "info",
    [
        {"sequenceId": 1, "tone": "tone11"},
        {"sequenceId": 1},
        {"tone": "tone1"},
        {"sequenceId": "x", "tone": "tone1"},
        {"sequenceId": 1, "tone": 1},
        "tone1",
        [],
    ],
)
def test_unreadable_tone_info_is_unknown(info: Any) -> None:
    """A toneInfo without a readable sequenceId and tone becomes UnknownNotification."""
    data = {"state": "established", "toneInfo": info}
    (event,) = parse_notifications(wrap(item("updated", CALL_URL, data)))
    assert event == UnknownNotification("updated", CALL_URL, CALL)


def test_failed_transfer_state_carries_its_result() -> None:
    """A call back to established after a failed transfer keeps the resultInfo."""
    (event,) = parse_notifications(load_fixture("transfer_failed.json"))
    assert event == CallStateChanged(
        CALL, "established", 4031, result=ResultInfo(500, 7700, "Transfer failed: the target "
                                                     "did not answer.")
    )  # fmt: skip
    data = {"state": "established", "resultInfo": {"code": [], "subcode": "9"}}
    (event,) = parse_notifications(wrap(item("updated", CALL_URL, data)))
    assert event == CallStateChanged(CALL, "established", result=ResultInfo(None, 9))
    data = {"state": "established", "resultInfo": "bad"}
    (event,) = parse_notifications(wrap(item("updated", CALL_URL, data)))
    assert event == CallStateChanged(CALL, "established")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("57dab8b1-894c-409a-b240-bd8beae78896", "57DAB8B1894C409AB240BD8BEAE78896"),
        ("{57DAB8B1-894C-409A-B240-BD8BEAE78896}", "57dab8b1894c409ab240bd8beae78896"),
    ],
)
def test_ids_normalise_to_one_form(a: str, b: str) -> None:
    """Ids that differ only in case, dashes or braces normalise to the same string."""
    assert normalize_id(a) == normalize_id(b) == "57dab8b1894c409ab240bd8beae78896"


@given(st.dictionaries(st.sampled_from(["sequenceId", "tone", "@odata.type"]), st.none()
                       | st.integers() | st.text(max_size=8) | st.booleans()))  # fmt: skip
def test_any_tone_info_parses_without_error(info: dict[str, Any]) -> None:
    """Whatever a toneInfo holds, the notification parses to a tone or an unknown one."""
    data = {"state": "established", "toneInfo": info}
    (event,) = parse_notifications(wrap(item("updated", CALL_URL, data)))
    assert isinstance(event, ToneReceived | UnknownNotification)
