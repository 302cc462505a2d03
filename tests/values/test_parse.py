"""Tests for callflow._parse: Graph commsNotifications bodies become typed events."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callflow import _parse
from callflow._parse import parse_notifications
from callflow.errors import NotificationFormatError, NotificationLimitError
from callflow.events import (
    CallStateChanged,
    CallTerminated,
    Identity,
    IncomingCall,
    JoinMeetingIdMeetingInfo,
    OrganizerMeetingInfo,
    ParticipantsUpdated,
    ResultInfo,
    TokenMeetingInfo,
    UnknownNotification,
    canonical_call_id,
)
from callflow.testing import call_state, envelope, operation_result
from tests.conftest import FIXTURES, load_fixture

TENANT = "3f1c9e2a-7b44-4c1d-9a0e-5d2f8b6c1a90"
BOT_APP = "8e2d4c10-55aa-4f3b-b1c2-0d9e7f6a5b41"
MY_PARTICIPANT = "b7a1e2c3-0001-4000-8000-00000000b071"
CALLBACK = "https://bot.example.org/api/calls"
CALL = "1a2b3c4d-0000-4000-8000-000000000101"
CALL_URL = f"/communications/calls/{CALL}"
FIXTURE_NAMES = sorted(path.name for path in FIXTURES.glob("*.json"))
DISPLAY_NAMES = (
    "Dana Whitfield",
    "Ravi Menon",
    "Mei Tanaka",
    "Omar Haddad",
    "Lena Kovacs",
    "Front Desk Bot",
    "Main Line",
)
SAFETY_NET = "malformed notification"


def parse_one(doc: Any) -> Any:
    """Parse a body that must hold exactly one notification and return its event."""
    events = parse_notifications(doc)
    assert len(events) == 1
    return events[0]


def wrap(*items: Any) -> dict[str, Any]:
    """A commsNotifications body around the given notification items."""
    return {"@odata.type": "#microsoft.graph.commsNotifications", "value": list(items)}


def item(change: str, url: str | None, data: Any = None, **extra: Any) -> dict[str, Any]:
    """A notification item; ``data`` None leaves resourceData out."""
    result: dict[str, Any] = {"@odata.type": "#microsoft.graph.commsNotification"}
    result["changeType"] = change
    if url is not None:
        result["resourceUrl"] = url
    if data is not None:
        result["resourceData"] = data
    result.update(extra)
    return result


def p2p() -> dict[str, Any]:
    """The peer-to-peer incoming call fixture."""
    return load_fixture("incoming_p2p.json")


def call_data(doc: dict[str, Any], index: int = 0) -> dict[str, Any]:
    """The resourceData of item ``index`` of a body."""
    data: dict[str, Any] = doc["value"][index]["resourceData"]
    return data


def error_of(doc: Any) -> str:
    """Parse a body that must be rejected and return the error message."""
    with pytest.raises(NotificationFormatError) as info:
        parse_notifications(doc)
    assert type(info.value) is NotificationFormatError
    return str(info.value)


# --- the fixtures -----------------------------------------------------------------------


def test_p2p_incoming_call_carries_every_field() -> None:
    """A peer-to-peer incoming call exposes caller, target, modalities, context and etag."""
    doc = p2p()
    call = parse_one(doc)
    assert isinstance(call, IncomingCall)
    assert call.call_id == CALL
    assert call.tenant_id == TENANT
    assert call.caller == Identity(
        "user", "6d5c4b3a-1111-4222-8333-944455556666", "Dana Whitfield", TENANT
    )
    assert call.caller.display_name == "Dana Whitfield"
    assert call.caller.user_id == "6d5c4b3a-1111-4222-8333-944455556666"
    assert call.caller.phone_number is None
    assert call.source is not None
    assert call.source.identity is call.caller
    assert call.source.identities == (call.caller,)
    assert call.source.id == "5e6f7a8b-0001-4000-8000-0000000005c1"
    assert call.source.endpoint_type == "default"
    assert call.source.region == "emea"
    assert call.source.language_id == "en-GB"
    assert len(call.targets) == 1
    target = call.targets[0]
    assert target.identity == Identity("application", BOT_APP, "Front Desk Bot", None)
    assert target.id == MY_PARTICIPANT
    assert target.endpoint_type == "default"
    assert not call.is_group_call
    assert call.chat_info is None
    assert call.meeting_info is None
    assert call.modalities == ("audio",)
    assert call.callback_uri == CALLBACK
    assert call.call_chain_id == "c4a1f0e2-0000-4000-8000-000000000101"
    assert call.my_participant_id == MY_PARTICIPANT
    assert call.incoming_context is not None
    assert call.incoming_context.source_participant_id == "5e6f7a8b-0001-4000-8000-0000000005c1"
    assert call.incoming_context.observed_participant_id is None
    assert call.incoming_context.on_behalf_of is None
    assert call.incoming_context.transferor is None
    assert call.is_policy_recording is False
    assert call.etag == 4021
    assert call.resource_url == CALL_URL
    assert call.raw is doc["value"][0]


def test_group_meeting_invite_has_chat_and_organizer_meeting_info() -> None:
    """A meeting invitation is a group call with its thread and organizer."""
    call = parse_one(load_fixture("incoming_group_meeting.json"))
    assert isinstance(call, IncomingCall)
    assert call.call_id == "2b3c4d5e-0000-4000-8000-000000000202"
    assert call.is_group_call
    assert call.caller.kind == "user"
    assert call.caller.id == "7e6d5c4b-2222-4333-8444-a55566667777"
    assert call.caller.display_name == "Ravi Menon"
    assert call.caller.tenant_id == TENANT
    assert call.source is not None
    assert call.source.region == "amer"
    assert call.source.endpoint_type is None
    assert call.chat_info is not None
    assert call.chat_info.thread_id == "19:meeting_OWY0ZmQ2ZGItNjVmYy00@thread.v2"
    assert call.chat_info.message_id == "0"
    assert call.chat_info.reply_chain_message_id == "0"
    meeting = call.meeting_info
    assert isinstance(meeting, OrganizerMeetingInfo)
    assert meeting.organizer == call.caller
    assert meeting.allow_conversation_without_host is True
    assert call.call_chain_id == "c4a1f0e2-0000-4000-8000-000000000202"
    assert call.incoming_context is not None
    assert call.incoming_context.observed_participant_id == "5e6f7a8b-0002-4000-8000-0000000005c2"
    assert call.etag is None


def test_channel_meeting_invite_has_token_meeting_info() -> None:
    """A channel meeting invitation carries a token meeting info and audio plus video."""
    call = parse_one(load_fixture("incoming_channel_token_meeting.json"))
    assert isinstance(call, IncomingCall)
    assert call.is_group_call
    assert call.caller.display_name == "Mei Tanaka"
    assert call.chat_info is not None
    assert call.chat_info.thread_id == "19:a1b2c3d4e5f6@thread.tacv2"
    assert call.chat_info.message_id == "1732870000123"
    assert call.meeting_info == TokenMeetingInfo(
        "eyJhbGciOiJub25lIn0.eyJtZWV0aW5nIjoiY2hhbm5lbCJ9."
    )
    assert call.modalities == ("audio", "video")
    assert call.incoming_context is None


def test_join_id_meeting_invite_has_join_id_and_passcode() -> None:
    """A meeting joined by id carries the join id and passcode."""
    call = parse_one(load_fixture("incoming_joinid_meeting.json"))
    assert isinstance(call, IncomingCall)
    assert call.is_group_call
    assert call.meeting_info == JoinMeetingIdMeetingInfo("3141592653", "kX9p2q")
    assert call.chat_info is not None
    assert call.chat_info.reply_chain_message_id is None
    assert call.caller.id == "9a8b7c6d-4444-4555-8666-c77788889999"


def test_policy_recording_invite_is_flagged_with_on_behalf_of() -> None:
    """A compliance-recording invite is flagged and names whom it records."""
    call = parse_one(load_fixture("incoming_policy_recording.json"))
    assert isinstance(call, IncomingCall)
    assert call.is_policy_recording is True
    assert not call.is_group_call
    assert call.caller.display_name == "Lena Kovacs"
    assert call.incoming_context is not None
    assert call.incoming_context.on_behalf_of == Identity(
        "user", "ab9c8d7e-5555-4666-8777-d8889999aaaa", "Lena Kovacs", TENANT
    )
    assert call.incoming_context.source_participant_id == "5e6f7a8b-0005-4000-8000-0000000005c5"


def test_pstn_call_has_a_phone_caller() -> None:
    """A phone call's caller is a phone identity whose id is the number."""
    call = parse_one(load_fixture("incoming_pstn.json"))
    assert isinstance(call, IncomingCall)
    assert call.caller == Identity("phone", "+14255550123")
    assert call.caller.phone_number == "+14255550123"
    assert call.caller.user_id is None
    assert call.caller.display_name is None
    assert call.caller.tenant_id is None
    assert call.targets[0].identity == Identity(
        "applicationInstance", "c0ffee11-6666-4777-8888-e9990000bbbb", "Main Line", TENANT
    )
    assert call.targets[0].id is None
    assert call.call_chain_id is None
    assert call.etag is None


def test_established_is_a_state_change_with_etag() -> None:
    """An update to established becomes CallStateChanged with the etag's number."""
    doc = load_fixture("established.json")
    assert parse_notifications(doc) == [CallStateChanged(CALL, "established", 4023)]
    assert parse_one(doc).raw is doc["value"][0]


def test_terminated_carries_result_codes() -> None:
    """A deleted call becomes CallTerminated with integer code and subcode."""
    event = parse_one(load_fixture("terminated.json"))
    assert event == CallTerminated(CALL, ResultInfo(200, 5001, "The conversation has ended."))


def test_participants_update_carries_the_roster() -> None:
    """A participants update becomes ParticipantsUpdated with each participant's state."""
    event = parse_one(load_fixture("participants_update.json"))
    assert isinstance(event, ParticipantsUpdated)
    assert event.call_id == "2b3c4d5e-0000-4000-8000-000000000202"
    assert len(event.participants) == 1
    member = event.participants[0]
    assert member.id == "5e6f7a8b-0002-4000-8000-0000000005c2"
    assert member.identity == Identity(
        "user", "7e6d5c4b-2222-4333-8444-a55566667777", "Ravi Menon", TENANT
    )
    assert member.is_muted is False
    assert member.is_in_lobby is False


def test_batch_keeps_the_order_of_items() -> None:
    """Several notifications in one POST come back in their order."""
    doc = load_fixture("batch.json")
    events = parse_notifications(doc)
    assert [type(event) for event in events] == [CallStateChanged, IncomingCall]
    assert events[0].call_id == CALL
    assert events[1].call_id == "6f708192-0000-4000-8000-000000000606"
    assert [event.raw for event in events] == doc["value"]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_bytes_str_bytearray_and_parsed_bodies_agree(name: str) -> None:
    """The raw body, its text and its parsed JSON give the same events."""
    raw = (FIXTURES / name).read_bytes()
    expected = parse_notifications(json.loads(raw))
    assert parse_notifications(raw) == expected
    assert parse_notifications(bytearray(raw)) == expected
    assert parse_notifications(raw.decode()) == expected
    assert parse_notifications(b"\xef\xbb\xbf" + raw) == expected
    assert parse_notifications("\ufeff" + raw.decode()) == expected
    assert parse_notifications(MappingProxyType(json.loads(raw))) == expected
    assert expected


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_repr_hides_personal_data_and_raw(name: str) -> None:
    """An event's repr shows neither display names, meeting secrets nor the raw payload."""
    for event in parse_notifications(load_fixture(name)):
        text = repr(event)
        for secret in (*DISPLAY_NAMES, "kX9p2q", "eyJhbGciOiJub25lIn0", "raw=", "@odata"):
            assert secret not in text


def test_module_exports_the_parser_and_its_limits() -> None:
    """The private package exports the parser, the limits it enforces, and the readers of
    Graph's replies the client uses."""
    assert set(_parse.__all__) == {
        "CALL_ID_PATTERN",
        "MAX_CALL_ID",
        "MAX_ID",
        "MAX_NOTIFICATIONS",
        "MAX_TEXT",
        "MAX_URL",
        "TENANT_ID_PATTERN",
        "LazyItem",
        "OperationFields",
        "operation_kind",
        "parse_notifications",
        "read_call",
        "read_operation",
    }


# --- shapes of resourceData -------------------------------------------------------------


def test_deleted_without_resource_data_terminates_without_result() -> None:
    """A deleted call with no resourceData ends the call with result None."""
    assert parse_one(wrap(item("deleted", CALL_URL))) == CallTerminated(CALL, None)


def test_deleted_with_only_odata_fields_terminates_without_result() -> None:
    """A deleted call carrying only @odata fields ends the call with result None."""
    data = {"@odata.type": "#microsoft.graph.call", "@odata.id": CALL_URL}
    assert parse_one(wrap(item("deleted", CALL_URL, data))) == CallTerminated(CALL, None)


def test_deleted_without_url_takes_call_id_from_odata_id() -> None:
    """Without resourceUrl or id the call id comes from resourceData's @odata.id."""
    data = {"@odata.type": "#microsoft.graph.call", "@odata.id": CALL_URL, "resultInfo": {}}
    assert parse_one(wrap(item("deleted", None, data))) == CallTerminated(CALL, None)


def test_updated_without_resource_data_is_unknown() -> None:
    """An update with no resourceData is passed on as an unknown notification."""
    event = parse_one(wrap(item("updated", CALL_URL)))
    assert event == UnknownNotification("updated", CALL_URL, CALL)


def test_update_without_state_is_unknown() -> None:
    """A call update that does not say the state is passed on as unknown."""
    data = {"id": CALL, "mediaState": {"audio": "active"}}
    assert parse_one(wrap(item("updated", CALL_URL, data))) == UnknownNotification(
        "updated", CALL_URL, CALL
    )


def test_array_resource_data_on_a_call_is_unknown() -> None:
    """An array resourceData on a call resource is passed on as unknown."""
    event = parse_one(wrap(item("updated", CALL_URL, [{"id": "p"}])))
    assert event == UnknownNotification("updated", CALL_URL, CALL)


def test_participants_object_or_absent_data_is_unknown() -> None:
    """A participants notification without an array roster is passed on as unknown."""
    url = f"{CALL_URL}/participants"
    assert parse_notifications(wrap(item("updated", url, {"id": "p"}), item("updated", url))) == [
        UnknownNotification("updated", url, CALL),
        UnknownNotification("updated", url, CALL),
    ]


def test_deleted_participants_are_not_a_roster() -> None:
    """Participants who left (changeType deleted) are passed on as unknown, not as a roster."""
    url = f"{CALL_URL}/participants"
    event = parse_one(wrap(item("deleted", url, [{"id": "p1"}])))
    assert event == UnknownNotification("deleted", url, CALL)


def test_roster_entries_tolerate_missing_info() -> None:
    """Roster entries without info, and an empty roster, still parse."""
    url = f"{CALL_URL}/participants/"
    doc = wrap(
        item("created", url, [{"id": "p1", "info": None, "isMuted": True, "isInLobby": "x"}]),
        item("updated", url, []),
    )
    first, second = parse_notifications(doc)
    assert isinstance(first, ParticipantsUpdated)
    member = first.participants[0]
    assert (member.id, member.identity, member.is_muted, member.is_in_lobby) == (
        "p1",
        None,
        True,
        None,
    )
    assert second == ParticipantsUpdated(CALL, ())


def test_roster_entry_falls_back_to_info_id() -> None:
    """A roster entry without its own id takes the participantInfo's id."""
    url = f"{CALL_URL}/participants"
    event = parse_one(wrap(item("updated", url, [{"info": {"id": "p9"}}])))
    assert isinstance(event, ParticipantsUpdated)
    assert event.participants[0].id == "p9"


def test_operations_and_other_resources_are_unknown() -> None:
    """Operations, other resources and unknown change types become UnknownNotification."""
    op_url = f"{CALL_URL}/operations/op-1"
    doc = wrap(
        item("updated", op_url, {"status": "completed"}),
        item("created", "/communications/onlineMeetings/m-1", {"id": "m-1"}),
        item("Patched", CALL_URL, {"id": CALL, "state": "established"}),
        item("patched", None, {"id": CALL}),
        item("patched", None, {"id": 5}),
        item("created", None, [1]),
    )
    assert parse_notifications(doc) == [
        UnknownNotification("updated", op_url, CALL),
        UnknownNotification("created", "/communications/onlineMeetings/m-1", None),
        UnknownNotification("Patched", CALL_URL, CALL),
        UnknownNotification("patched", None, CALL),
        UnknownNotification("patched", None, None),
        UnknownNotification("created", None, None),
    ]


def test_empty_value_gives_no_events() -> None:
    """A body with an empty value array gives an empty list."""
    assert parse_notifications(b'{"value": []}') == []


# --- leniency ---------------------------------------------------------------------------


def test_enum_casing_is_normalised() -> None:
    """changeType, state and modalities are matched in any casing and sent back in camelCase."""
    doc = p2p()
    doc["value"][0]["changeType"] = "Created"
    call_data(doc)["state"] = "Incoming"
    call_data(doc)["requestedModalities"] = ["Audio", "VIDEOBASEDSCREENSHARING", "hologram"]
    call = parse_one(doc)
    assert isinstance(call, IncomingCall)
    assert call.modalities == ("audio", "videoBasedScreenSharing", "hologram")
    states = wrap(
        item("UPDATED", CALL_URL, {"state": "ESTABLISHED"}),
        item("updated", CALL_URL, {"state": "transferaccepted"}),
        item("updated", CALL_URL, {"state": "Ringing"}),
        item("Deleted", CALL_URL, {"state": "TERMINATED"}),
    )
    assert parse_notifications(states) == [
        CallStateChanged(CALL, "established"),
        CallStateChanged(CALL, "transferAccepted"),
        CallStateChanged(CALL, "Ringing"),
        CallTerminated(CALL, None),
    ]


def test_non_created_incoming_and_updated_terminated_are_state_changes() -> None:
    """Only created+incoming is an incoming call; updated+terminated is a state change
    that keeps the resultInfo sent with it."""
    doc = wrap(
        item("updated", CALL_URL, {"state": "incoming"}),
        item("updated", CALL_URL, {"state": "terminated", "resultInfo": {"code": 200}}),
    )
    assert parse_notifications(doc) == [
        CallStateChanged(CALL, "incoming"),
        CallStateChanged(CALL, "terminated", result=ResultInfo(200)),
    ]


@pytest.mark.parametrize(
    ("code", "subcode", "expected"),
    [
        ("408", "8544", ResultInfo(408, 8544)),
        (408, "1106", ResultInfo(408, 1106)),
        ("-1", None, ResultInfo(-1, None)),
        (None, None, None),
    ],
)
def test_result_codes_accept_numbers_and_numeric_strings(
    code: Any, subcode: Any, expected: ResultInfo | None
) -> None:
    """Result code and subcode sent as numbers or numeric strings become ints."""
    data = {"state": "terminated", "resultInfo": {"code": code, "subcode": subcode}}
    assert parse_one(wrap(item("deleted", CALL_URL, data))) == CallTerminated(CALL, expected)


def test_unknown_fields_are_ignored() -> None:
    """Fields callflow does not know, at any level, change nothing."""
    plain = parse_notifications(load_fixture("incoming_group_meeting.json"))
    doc = load_fixture("incoming_group_meeting.json")
    doc["futureWrapperField"] = {"x": [1]}
    entry = doc["value"][0]
    entry["sequenceNumber"] = 7
    data = entry["resourceData"]
    data["mediaState"] = {"audio": "inactive"}
    data["source"]["identity"]["endpointType"] = "default"
    data["source"]["identity"]["user"]["userPrincipalName"] = "ravi@example.org"
    data["chatInfo"]["extra"] = None
    data["meetingInfo"]["extra"] = [1, 2]
    data["targets"][0]["hidden"] = False
    assert parse_notifications(doc) == plain


def test_wrapper_odata_type_is_optional_and_case_insensitive() -> None:
    """The wrapper's @odata.type may be absent or in any casing."""
    doc = p2p()
    del doc["@odata.type"]
    assert parse_notifications(doc) == parse_notifications(p2p())
    doc["@odata.type"] = "#MICROSOFT.GRAPH.COMMSNOTIFICATIONS"
    assert parse_notifications(doc) == parse_notifications(p2p())


def test_legacy_resource_is_used_when_resource_url_is_absent() -> None:
    """The legacy resource /app/calls/{id} gives the call id and resource URL."""
    legacy = f"/app/calls/{CALL}"
    doc = p2p()
    entry = doc["value"][0]
    del entry["resourceUrl"]
    del entry["resourceData"]["id"]
    call = parse_one(doc)
    assert isinstance(call, IncomingCall)
    assert call.call_id == CALL
    assert call.resource_url == legacy
    event = parse_one(wrap(item("updated", None, {"state": "hold"}, resource=legacy)))
    assert event == CallStateChanged(CALL, "hold")


def test_resource_url_wins_over_resource_and_data_id_wins_over_url() -> None:
    """resourceData.id beats resourceUrl, which beats the legacy resource."""
    data = {"id": "from-data", "state": "hold"}
    event = parse_one(wrap(item("updated", CALL_URL, data, resource=5)))
    assert event == CallStateChanged("from-data", "hold")
    event = parse_one(wrap(item("updated", CALL_URL, {"state": "hold"}, resource="/app/calls/x")))
    assert event == CallStateChanged(CALL, "hold")


def test_full_and_differently_cased_urls_are_understood() -> None:
    """Absolute URLs and odd casing of the path still yield the call id."""
    doc = wrap(
        item("updated", f"https://graph.microsoft.com/v1.0{CALL_URL}", {"state": "hold"}),
        item("updated", f"/Communications/Calls/{CALL}/Participants", []),
        item("updated", "/communications/cälls/x", {"state": "hold"}),
    )
    assert parse_notifications(doc) == [
        CallStateChanged(CALL, "hold"),
        ParticipantsUpdated(CALL, ()),
        UnknownNotification("updated", "/communications/cälls/x", None),
    ]


def test_identity_precedence_picks_the_person() -> None:
    """The primary identity prefers user, phone and guest over applications and others."""
    cases = [
        ({"application": {"id": "a"}, "user": {"id": "u"}}, "user", ("application", "user")),
        ({"encrypted": {"id": "e"}, "phone": {"id": "+1"}}, "phone", ("encrypted", "phone")),
        ({"application": {"id": "a"}, "guest": {"id": "g"}}, "guest", ("application", "guest")),
        ({"encrypted": {"id": "e"}}, "encrypted", ("encrypted",)),
        ({"user": {"id": "u"}, "encrypted": {"id": "e"}}, "user", ("user", "encrypted")),
        ({"assertedIdentity": {"id": "x"}, "onPremises": {"id": "o"}}, "onPremises", None),
        ({"spaceship": {"id": "s"}}, "spaceship", ("spaceship",)),
        ({"@odata.type": "x", "@odata.x": {}, "user": None, "phone": {}}, "phone", ("phone",)),
    ]
    for members, primary, kinds in cases:
        doc = p2p()
        call_data(doc)["source"]["identity"] = members
        call = parse_one(doc)
        assert isinstance(call, IncomingCall)
        assert call.caller.kind == primary
        assert call.source is not None
        if kinds is not None:
            assert tuple(identity.kind for identity in call.source.identities) == kinds


@pytest.mark.parametrize("source", [None, {}, {"identity": {}}, {"identity": None}])
def test_missing_caller_identity_is_unknown(source: Any) -> None:
    """An absent or empty caller identity gives Identity(kind='unknown')."""
    doc = p2p()
    if source is None:
        del call_data(doc)["source"]
    else:
        call_data(doc)["source"] = source
    call = parse_one(doc)
    assert isinstance(call, IncomingCall)
    assert call.caller == Identity(kind="unknown")
    assert (call.source is None) == (source is None)


def test_minimal_incoming_call_parses_with_defaults() -> None:
    """An incoming call with nothing but id and state parses with empty defaults."""
    call = parse_one(wrap(item("created", None, {"id": CALL, "state": "incoming"})))
    assert call == IncomingCall(CALL, None, Identity("unknown"))
    assert call.resource_url is None


def test_wrong_typed_descriptive_fields_become_none() -> None:
    """Wrong-typed display names, regions, flags and messages are dropped, not fatal."""
    doc = p2p()
    data = call_data(doc)
    data["source"]["identity"]["user"]["displayName"] = 5
    data["source"]["region"] = ["emea"]
    data["source"]["languageId"] = 7
    data["source"]["endpointType"] = {}
    data["@odata.etag"] = 4021
    call = parse_one(doc)
    assert isinstance(call, IncomingCall)
    assert call.caller.display_name is None
    assert call.caller.id == "6d5c4b3a-1111-4222-8333-944455556666"
    assert call.source is not None
    assert (call.source.region, call.source.language_id, call.source.endpoint_type) == (
        None,
        None,
        None,
    )
    assert call.etag is None
    ended = parse_one(wrap(item("deleted", CALL_URL, {"resultInfo": {"code": 1, "message": 2}})))
    assert ended == CallTerminated(CALL, ResultInfo(1, None, None))


@pytest.mark.parametrize(
    ("etag", "expected"),
    [('W/"4021"', 4021), ('"17"', 17), ("12", 12), ('W/"x"', None), ("", None), ('W/""', None)],
)
def test_etag_forms(etag: str, expected: int | None) -> None:
    """Weak, strong and bare numeric etags give the number; anything else gives None."""
    event = parse_one(wrap(item("updated", CALL_URL, {"state": "hold", "@odata.etag": etag})))
    assert event == CallStateChanged(CALL, "hold", expected)


@pytest.mark.parametrize(
    ("meeting", "expected"),
    [
        (
            {"@odata.type": "#Microsoft.Graph.JoinMeetingIdMeetingInfo", "joinMeetingId": "1"},
            JoinMeetingIdMeetingInfo("1"),
        ),
        ({"@odata.type": "tokenMeetingInfo", "token": "t"}, TokenMeetingInfo("t")),
        ({"@odata.type": 5, "token": "t"}, TokenMeetingInfo("t")),
        ({"joinMeetingId": "2", "passcode": None}, JoinMeetingIdMeetingInfo("2")),
        (
            {"organizer": {"user": {"id": "o"}}, "allowConversationWithoutHost": "yes"},
            OrganizerMeetingInfo(Identity("user", "o")),
        ),
        ({"@odata.type": "#microsoft.graph.organizerMeetingInfo"}, OrganizerMeetingInfo()),
        ({"@odata.type": "#microsoft.graph.futureMeetingInfo", "token": "t"}, None),
        ({"something": 1}, None),
    ],
)
def test_meeting_info_kinds(meeting: dict[str, Any], expected: Any) -> None:
    """meetingInfo is chosen by @odata.type in any casing, else inferred; unknown gives None."""
    doc = p2p()
    call_data(doc)["meetingInfo"] = meeting
    call = parse_one(doc)
    assert isinstance(call, IncomingCall)
    assert call.meeting_info == expected
    assert call.is_group_call == (expected is not None)
    assert call.raw["resourceData"]["meetingInfo"] is meeting


def test_targets_and_context_optional_shapes() -> None:
    """Targets fall back to participantId; context identities and transferor are read."""
    doc = p2p()
    data = call_data(doc)
    data["targets"] = [{"participantId": "p-7", "identity": {"user": {"id": "u"}}}, {}]
    data["incomingContext"] = {
        "transferor": {"user": {"id": "t", "displayName": "Tess"}},
        "onBehalfOf": {"@odata.type": "#microsoft.graph.identitySet"},
    }
    data["applicationMetadata"] = {"botData": None}
    call = parse_one(doc)
    assert isinstance(call, IncomingCall)
    assert [target.id for target in call.targets] == ["p-7", None]
    assert call.incoming_context is not None
    assert call.incoming_context.transferor == Identity("user", "t", "Tess")
    assert call.incoming_context.on_behalf_of is None
    assert call.is_policy_recording is False
    assert "Tess" not in repr(call)


# --- garbage ----------------------------------------------------------------------------


class _ExplodingMapping(Mapping[str, Any]):
    """A mapping whose every lookup fails with TypeError."""

    def __getitem__(self, key: str) -> Any:
        raise TypeError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"\xff\xfe{}", "body: not UTF-8 (invalid start byte at byte 0); expected a Graph "),
        (b"{", "body: not valid JSON (Expecting property name enclosed in double quotes"),
        ("", "body: not valid JSON (Expecting value: line 1 column 1 (char 0))"),
        (b"[" * 100_000, "body: not valid JSON (nested too deeply)"),
        ("1" * 5000, "body: not valid JSON (Exceeds the limit"),
        (
            b'{"value": [' + b"[" * 50_000 + b"]" * 50_000 + b"]}",
            "body: not valid JSON (nested too deeply)",
        ),
        (b"[]", "body: expected a JSON object with a 'value' array, got list"),
        (5, "body: expected bytes, str or a parsed JSON object, got int"),
        (None, "body: expected bytes, str or a parsed JSON object, got None"),
        (_ExplodingMapping(), "body: unreadable mapping (TypeError)"),
        (b"{}", "value: missing; expected an array of notification objects"),
        (b'{"value": {}}', "value: expected an array of notification objects, got dict"),
        (b'{"value": [{"changeType": "created"}, 1]}', "value[1]: expected a notification"),
        (b'{"value": [{}]}', "value[0].changeType: missing; expected created, updated or deleted"),
        (b'{"value": [{"changeType": 1}]}', "value[0].changeType: expected a string (created, "),
        (
            b'{"value": [{"changeType": "created", "resourceUrl": 5}]}',
            "value[0].resourceUrl: expected a string, got int",
        ),
        (
            b'{"value": [{"changeType": "created", "resource": []}]}',
            "value[0].resource: expected a string, got list",
        ),
        (
            b'{"value": [{"changeType": "created", "resourceData": "x"}]}',
            "value[0].resourceData: expected an object, an array or null, got str",
        ),
    ],
)
def test_garbage_bodies_are_rejected_with_location(body: Any, expected: str) -> None:
    """A body that is not a commsNotifications payload is rejected saying what and where."""
    assert error_of(body).startswith(expected)


def _broken(path: tuple[Any, ...], value: Any, name: str = "incoming_p2p.json") -> dict[str, Any]:
    """A fixture with the value at ``path`` replaced."""
    doc = load_fixture(name)
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


RD = ("value", 0, "resourceData")


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (_broken((*RD, "state"), 5), "value[0].resourceData.state: expected a string, got int"),
        (_broken((*RD, "id"), 5), "value[0].resourceData.id: expected a string, got int"),
        (_broken((*RD, "id"), 0), "value[0].resourceData.id: expected a string, got int"),
        (
            _broken((*RD, "requestedModalities"), "audio"),
            "value[0].resourceData.requestedModalities: expected an array of strings, got str",
        ),
        (
            _broken((*RD, "requestedModalities"), ["audio", 3]),
            "value[0].resourceData.requestedModalities[1]: expected a string, got int",
        ),
        (
            _broken((*RD, "source"), []),
            "value[0].resourceData.source: expected an object, got list",
        ),
        (
            _broken(("value", 1, "resourceData", "source", "identity"), [], "batch.json"),
            "value[1].resourceData.source.identity: expected an object, got list",
        ),
        (
            _broken((*RD, "source", "identity", "user", "id"), 42),
            "value[0].resourceData.source.identity.user.id: expected a string, got int",
        ),
        (
            _broken((*RD, "source", "identity", "user", "tenantId"), True),
            "value[0].resourceData.source.identity.user.tenantId: expected a string, got bool",
        ),
        (
            _broken((*RD, "source", "id"), 1.5),
            "value[0].resourceData.source.id: expected a string, got float",
        ),
        (
            _broken((*RD, "targets", 0, "identity", "application"), "bot"),
            "value[0].resourceData.targets[0].identity.application: expected an object, got str",
        ),
        (
            _broken((*RD, "targets", 0), None),
            "value[0].resourceData.targets[0]: expected an object, got None",
        ),
        (
            _broken((*RD, "targets", 0, "identity"), "x"),
            "value[0].resourceData.targets[0].identity: expected an object, got str",
        ),
        (
            _broken((*RD, "targets", 0), {"participantId": 3}),
            "value[0].resourceData.targets[0].participantId: expected a string, got int",
        ),
        (
            _broken((*RD, "targets"), {}),
            "value[0].resourceData.targets: expected an array of objects, got dict",
        ),
        (
            _broken((*RD, "tenantId"), 1),
            "value[0].resourceData.tenantId: expected a string, got int",
        ),
        (
            _broken((*RD, "callbackUri"), 1),
            "value[0].resourceData.callbackUri: expected a string, got int",
        ),
        (
            _broken((*RD, "callChainId"), 1),
            "value[0].resourceData.callChainId: expected a string, got int",
        ),
        (
            _broken((*RD, "myParticipantId"), 1),
            "value[0].resourceData.myParticipantId: expected a string, got int",
        ),
        (
            _broken((*RD, "chatInfo"), "19:x"),
            "value[0].resourceData.chatInfo: expected an object, got str",
        ),
        (
            _broken((*RD, "chatInfo", "threadId"), 5, "incoming_group_meeting.json"),
            "value[0].resourceData.chatInfo.threadId: expected a string, got int",
        ),
        (
            _broken((*RD, "meetingInfo"), []),
            "value[0].resourceData.meetingInfo: expected an object, got list",
        ),
        (
            _broken((*RD, "meetingInfo", "organizer"), [], "incoming_group_meeting.json"),
            "value[0].resourceData.meetingInfo.organizer: expected an object, got list",
        ),
        (
            _broken(
                (*RD, "meetingInfo", "organizer", "user", "id"), 7, "incoming_group_meeting.json"
            ),
            "value[0].resourceData.meetingInfo.organizer.user.id: expected a string, got int",
        ),
        (
            _broken((*RD, "meetingInfo", "passcode"), 1234, "incoming_joinid_meeting.json"),
            "value[0].resourceData.meetingInfo.passcode: expected a string, got int",
        ),
        (
            _broken((*RD, "incomingContext"), 1),
            "value[0].resourceData.incomingContext: expected an object, got int",
        ),
        (
            _broken((*RD, "incomingContext", "sourceParticipantId"), {}),
            "value[0].resourceData.incomingContext.sourceParticipantId: expected a string, "
            "got dict",
        ),
        (
            _broken(
                (*RD, "incomingContext", "onBehalfOf", "user"),
                "x",
                "incoming_policy_recording.json",
            ),
            "value[0].resourceData.incomingContext.onBehalfOf.user: expected an object, got str",
        ),
        (
            _broken((*RD, "applicationMetadata"), ["policy"]),
            "value[0].resourceData.applicationMetadata: expected an object, got list",
        ),
        (
            _broken((*RD, "resultInfo", "code"), "abc", "terminated.json"),
            "value[0].resourceData.resultInfo.code: expected an integer or a numeric string, "
            "got str",
        ),
        (
            _broken((*RD, "resultInfo", "subcode"), 8544.0, "terminated.json"),
            "value[0].resourceData.resultInfo.subcode: expected an integer or a numeric string, "
            "got float",
        ),
        (
            _broken((*RD, "resultInfo", "code"), True, "terminated.json"),
            "value[0].resourceData.resultInfo.code: expected an integer or a numeric string, "
            "got bool",
        ),
        (
            _broken((*RD, "resultInfo", "code"), "9" * 30, "terminated.json"),
            "value[0].resourceData.resultInfo.code: expected an integer or a numeric string, "
            "got str",
        ),
        (
            _broken((*RD, "resultInfo"), "ended", "terminated.json"),
            "value[0].resourceData.resultInfo: expected an object, got str",
        ),
        (
            _broken((*RD, 0), 1, "participants_update.json"),
            "value[0].resourceData[0]: expected an object, got int",
        ),
        (
            _broken((*RD, 0, "id"), 1, "participants_update.json"),
            "value[0].resourceData[0].id: expected a string, got int",
        ),
        (
            _broken((*RD, 0, "info"), [], "participants_update.json"),
            "value[0].resourceData[0].info: expected an object, got list",
        ),
        (
            _broken((*RD, 0, "info", "identity", "user", "id"), 1, "participants_update.json"),
            "value[0].resourceData[0].info.identity.user.id: expected a string, got int",
        ),
        (
            wrap(item("updated", "/communications/calls//participants", [])),
            "value[0]: no call id; expected resourceData.id or a resourceUrl like "
            "/communications/calls/{id}",
        ),
    ],
)
def test_wrong_types_are_rejected_with_location(doc: dict[str, Any], expected: str) -> None:
    """A wrong-typed field is reported with its full location and the expected type."""
    assert error_of(doc) == expected


def test_incoming_call_without_any_call_id_is_rejected() -> None:
    """A created incoming call with neither id nor resource URL is rejected."""
    doc = p2p()
    entry = doc["value"][0]
    del entry["resourceUrl"], entry["resource"], entry["resourceData"]["id"]
    del entry["resourceData"]["@odata.id"]
    assert error_of(doc).startswith("value[0]: no call id; expected resourceData.id")


@pytest.mark.parametrize(
    "entry",
    [
        item("deleted", "/communications/calls/"),
        item("deleted", None, {"@odata.id": "/somewhere/else"}),
        item("updated", "/communications/calls/", {"state": "hold"}),
    ],
)
def test_call_events_without_call_id_are_rejected(entry: dict[str, Any]) -> None:
    """A call event that has no call id anywhere is rejected."""
    assert error_of(wrap(entry)).startswith("value[0]: no call id")


# --- limits -------------------------------------------------------------------------------


def test_more_than_the_notification_cap_is_refused_naming_the_limit() -> None:
    """A body of 101 notifications is refused as a whole (a limit error naming 100); 100 pass."""
    state = item("updated", CALL_URL, {"id": CALL, "state": "established"})
    assert len(parse_notifications(wrap(*[state] * _parse.MAX_NOTIFICATIONS))) == 100
    with pytest.raises(NotificationLimitError) as info:
        parse_notifications(wrap(*[state] * (_parse.MAX_NOTIFICATIONS + 1)))
    assert info.value.limit == 100
    assert str(info.value) == "value: 101 notifications in one body; expected at most 100"


@pytest.mark.parametrize(
    ("call_id", "problem"),
    [
        ("..", "is not a Graph call id"),
        (".", "is not a Graph call id"),
        (".hidden", "is not a Graph call id"),
        ("a%2Fb", "is not a Graph call id"),
        ("a%2F..", "is not a Graph call id"),
        ("a b", "is not a Graph call id"),
        ("caf\u00e9", "is not a Graph call id"),
        ("c" * 129, "a call id of 129 characters; expected at most 128"),
        ("c" * 500_000, "characters; expected at most"),  # the URL's own cap may come first
    ],
)
def test_call_ids_that_cannot_be_one_url_path_segment_are_refused(
    call_id: str, problem: str
) -> None:
    """A call id with path syntax, odd characters or over 128 characters is refused wherever
    it comes from (resourceData.id, resourceUrl, @odata.id), saying what was expected; a
    refused body yields no event at all."""
    by_data = p2p()
    call_data(by_data)["id"] = call_id
    assert problem in error_of(by_data)
    assert error_of(by_data).startswith("value[0].resourceData.id: ")
    by_url = wrap(item("updated", f"/communications/calls/{call_id}", {"state": "hold"}))
    assert problem in error_of(by_url)
    by_odata = wrap(item("deleted", None, {"@odata.id": f"/communications/calls/{call_id}"}))
    assert problem in error_of(by_odata)
    mixed = wrap(item("updated", CALL_URL, {"id": CALL, "state": "hold"}), by_url["value"][0])
    assert error_of(mixed).startswith("value[1].resourceUrl: ")
    assert len(parse_one(wrap(item("updated", CALL_URL, {"id": "c" * 128, "state": "hold"})))
               .call_id) == 128  # fmt: skip


def test_a_slash_in_a_url_call_id_leaves_the_id_before_it() -> None:
    """``/calls/a/../b`` names call ``a`` with a sub-resource; it is not a call event."""
    event = parse_one(wrap(item("updated", "/communications/calls/a/../b", {"state": "hold"})))
    assert isinstance(event, UnknownNotification)
    assert event.call_id == "a"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("tenantId", "a/b", "value[0].resourceData.tenantId: 'a/b' is not a tenant id"),
        ("tenantId", "t" * 257, "is not a tenant id; expected a GUID or a domain name"),
        ("callChainId", "x" * 257, "value[0].resourceData.callChainId: 257 characters; "
         "expected at most 256"),
        ("myParticipantId", "x" * 300, "myParticipantId: 300 characters; expected at most 256"),
        ("callbackUri", "https://x/" + "y" * 2048, "callbackUri: 2058 characters; expected "
         "at most 2048"),
    ],
)  # fmt: skip
def test_overlong_or_malformed_identifiers_are_refused(
    field: str, value: str, expected: str
) -> None:
    """Tenant ids must be GUIDs or domain names; other identifiers and URLs have a length
    cap; the error names the field and the limit."""
    doc = p2p()
    call_data(doc)[field] = value
    assert expected in error_of(doc)


def test_identity_and_participant_ids_have_a_length_cap() -> None:
    """Identity ids and tenant ids, participant ids and a resourceUrl are capped too."""
    doc = p2p()
    call_data(doc)["source"]["identity"]["user"]["id"] = "u" * 257
    assert "source.identity.user.id: 257 characters; expected at most 256" in error_of(doc)
    doc = p2p()
    call_data(doc)["source"]["id"] = "p" * 257
    assert "source.id: 257 characters" in error_of(doc)
    roster = wrap(item("updated", CALL_URL + "/participants", [{"id": "r" * 257}]))
    assert "resourceData[0].id: 257 characters" in error_of(roster)
    long_url = wrap(item("updated", "/x/" + "y" * 2048, {}))
    assert error_of(long_url) == "value[0].resourceUrl: 2051 characters; expected at most 2048"


def test_non_json_mapping_is_still_a_format_error() -> None:
    """A parsed body with a non-string key is reported as a format error, not a TypeError."""
    doc = p2p()
    call_data(doc)["source"]["identity"] = {1: {"id": "x"}}
    message = error_of(doc)
    assert message.startswith(f"value[0]: {SAFETY_NET} (TypeError)")


# --- properties -------------------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["incoming", "Created", "deleted", "/communications/calls/x", 'W/"1"'])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["value", "changeType", "resourceData", "id", "state", "user", "x"])
            | st.text(max_size=6),
            children,
            max_size=4,
        )
    ),
    max_leaves=16,
)
BOUNDED = settings(max_examples=250, deadline=None)


def check_outcome(body: Any) -> list[Any] | None:
    """Parse ``body``: it must give a list of events or a located NotificationFormatError."""
    try:
        events = parse_notifications(body)
    except NotificationFormatError as exc:
        error = exc
    else:
        assert isinstance(events, list)
        return events
    assert type(error) is NotificationFormatError
    message = str(error)
    assert message.startswith(("body", "value")), message
    assert SAFETY_NET not in message, message
    return None


@BOUNDED
@given(st.binary(max_size=300))
def test_random_bytes_give_events_or_format_error(body: bytes) -> None:
    """Arbitrary bytes never raise anything but NotificationFormatError."""
    check_outcome(body)


@pytest.mark.slow
@BOUNDED
@given(JSON_VALUES)
def test_arbitrary_json_gives_events_or_format_error(value: Any) -> None:
    """Arbitrary JSON, as a body, as the value array or as a notification, never crashes."""
    text = json.dumps(value)
    check_outcome(value)
    check_outcome(text)
    check_outcome(text.encode())
    check_outcome({"value": value})
    check_outcome({"value": [value]})
    for change in ("created", "updated", "deleted"):
        check_outcome(wrap(item(change, CALL_URL, value)))
        check_outcome(wrap(item(change, f"{CALL_URL}/participants", value)))
        check_outcome(wrap(item(change, None, {"id": CALL, "state": "incoming", "source": value})))


def _paths(node: Any, max_depth: int = 40) -> list[tuple[Any, ...]]:
    """Every path to a value below ``node``, down to ``max_depth`` levels (no recursion)."""
    found: list[tuple[Any, ...]] = []
    stack: list[tuple[tuple[Any, ...], Any]] = [((), node)]
    while stack:
        prefix, value = stack.pop()
        if len(prefix) >= max_depth:
            continue
        if isinstance(value, dict):
            children: Any = value.items()
        elif isinstance(value, list):
            children = enumerate(value)
        else:
            continue
        for key, child in children:
            found.append((*prefix, key))
            stack.append(((*prefix, key), child))
    return found


def _deep(depth: int, leaf: Any) -> Any:
    """A value nested ``depth`` levels deep in alternating arrays and objects."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"identity": value}
    return value


@pytest.mark.slow
@BOUNDED
@given(st.sampled_from(FIXTURE_NAMES), st.data())
def test_mutated_fixtures_give_events_or_format_error(name: str, data: st.DataObject) -> None:
    """Fixtures with keys deleted, values retyped or deeply nested never crash the parser."""
    doc: Any = load_fixture(name)
    nested = False
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="mutations")):
        paths = _paths(doc)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["delete", "replace", "nest"]), label="action")
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = data.draw(JSON_VALUES, label="value")
        else:
            depth = data.draw(st.sampled_from([3, 60, 2_000, 20_000]), label="depth")
            parent[path[-1]] = _deep(depth, parent[path[-1]])
            nested = True
    snapshot = None if nested else copy.deepcopy(doc)
    events = check_outcome(doc)
    if events is not None:
        assert len(events) == len(doc["value"])
        for event, entry in zip(events, doc["value"], strict=True):
            assert event.raw is entry
    if snapshot is not None:
        assert doc == snapshot, "the parser must not modify its input"
        check_outcome(json.dumps(doc).encode())


def test_incoming_call_raw_from_bytes_is_the_item_decoded_on_demand() -> None:
    """From a raw body, an incoming call's raw reads as its notification item, decoded lazily."""
    body = load_fixture("batch.json")
    events = parse_notifications(json.dumps(body).encode())
    call = events[1]
    assert isinstance(call, IncomingCall)
    assert dict(call.raw) == body["value"][1]
    assert call.raw["resourceData"]["id"] == call.call_id
    assert len(call.raw) == len(body["value"][1])
    assert "resourceData" in repr(call.raw)


def test_pending_calls_share_the_strings_every_call_repeats() -> None:
    """Two calls parsed from separate bodies share one copy of the strings a worker sees in
    every call (tenant, its own app identity, callback URI, endpoint types, identity kinds),
    and one call's repeated ids are one string: pending calls stay small."""
    first = parse_one(json.dumps(p2p()).encode())
    second = parse_one(json.dumps(p2p()).encode())
    assert first == second
    (bot_a,), (bot_b,) = first.targets, second.targets
    assert bot_a.identity is not None and bot_b.identity is not None
    for a, b in [
        (first.tenant_id, second.tenant_id),
        (first.callback_uri, second.callback_uri),
        (first.caller.kind, second.caller.kind),
        (bot_a.identity.id, bot_b.identity.id),
        (bot_a.identity.display_name, bot_b.identity.display_name),
        (bot_a.endpoint_type, bot_b.endpoint_type),
    ]:
        assert a is not None and a is b
    assert first.caller.id is not second.caller.id  # callers' own ids are not pooled
    assert first.my_participant_id is bot_a.id
    assert first.incoming_context is not None and first.source is not None
    assert first.incoming_context.source_participant_id is first.source.id


def test_overlong_free_text_is_cut_with_a_marker() -> None:
    """A 900 KB resultInfo.message, display name or other label does not reach handlers and
    logs whole: each is cut to MAX_TEXT characters and says that it was cut; labels of an
    ordinary length are kept as sent."""
    cap = _parse.MAX_TEXT
    huge = "x" * 900_000

    def cut(text: str) -> bool:
        return text.startswith("x" * cap) and len(text) < cap + 64 and "cut" in text[cap:]

    ended = parse_one(
        wrap(item("deleted", CALL_URL, {"resultInfo": {"code": 500, "message": huge}}))
    )
    assert isinstance(ended, CallTerminated) and ended.result is not None
    assert cut(ended.result.message or "")
    assert ended.result.code == 500

    doc = p2p()
    data = call_data(doc)
    data["source"]["identity"]["user"]["displayName"] = huge
    for key in ("region", "languageId", "endpointType"):
        data["source"][key] = huge
    data["requestedModalities"] = ["audio", huge]
    call = parse_one(doc)
    assert isinstance(call, IncomingCall) and call.source is not None
    assert cut(call.caller.display_name or "")
    assert cut(call.source.region or "")
    assert cut(call.source.language_id or "")
    assert cut(call.source.endpoint_type or "")
    assert call.modalities[0] == "audio"
    assert cut(call.modalities[1])

    changed = parse_one(wrap(item("updated", CALL_URL, {"state": huge})))
    assert isinstance(changed, CallStateChanged) and cut(changed.state)
    unknown = parse_one(wrap(item(huge, CALL_URL, {"state": "established"})))
    assert isinstance(unknown, UnknownNotification) and cut(unknown.change_type)

    operation = _parse.read_operation(
        {"status": huge, "completionReason": huge, "clientContext": huge,
         "resultInfo": {"code": 400, "message": huge}}
    )  # fmt: skip
    assert operation is not None and operation.result is not None
    for text in (operation.status, operation.completion_reason, operation.client_context):
        assert cut(text or "")
    assert cut(operation.result.message or "")

    exact = "y" * cap  # at the cap: kept as sent
    kept = parse_one(wrap(item("deleted", CALL_URL, {"resultInfo": {"message": exact}})))
    assert kept.result.message == exact


# --- one spelling of a call id ---------------------------------------------------------------

GUID = "57dab8b1-894c-409a-b240-bd8beae78896"


@pytest.mark.parametrize(
    "spelled",
    [GUID, GUID.upper(), GUID.replace("-", "").upper(), "{" + GUID.upper() + "}", "{" + GUID + "}"],
)
@pytest.mark.parametrize("where", ["resourceUrl", "resourceData.id", "operation"])
def test_every_spelling_of_a_call_id_parses_to_one(spelled: str, where: str) -> None:
    """However Graph spells a call id (case, dashes, braces) and wherever it sits, the event
    carries the canonical form: lower case, no braces, dashed 8-4-4-4-12."""
    if where == "operation":
        body = envelope(operation_result(spelled, "playPrompt", "op-1", status="completed"))
    else:
        item = call_state(spelled, "established", etag=3)
        if where == "resourceData.id":  # no URL at all: the object is taken to be a call
            del item["resourceUrl"], item["resourceData"]["@odata.id"]
            item["resourceData"]["id"] = spelled
        body = envelope(item)
    (event,) = parse_notifications(json.dumps(body).encode())
    assert event.call_id == GUID


def test_call_ids_that_are_not_guids_are_lower_cased_and_still_checked() -> None:
    """An id that is no GUID keeps its dashes and is lower-cased; braces are dropped, but what
    could not be one segment of a Graph URL is still refused."""
    (event,) = parse_notifications(json.dumps(envelope(call_state("Call-ABC", "hold"))))
    assert event.call_id == "call-abc"
    with pytest.raises(NotificationFormatError, match="not a Graph call id"):
        parse_notifications(json.dumps(envelope(call_state("{a%2Fb}", "hold"))))


@given(st.uuids(), st.sampled_from([str.upper, str.lower]), st.booleans(), st.booleans())
def test_canonical_call_id_is_one_form_per_guid(
    value: Any, case: Any, dashes: bool, braces: bool
) -> None:
    """canonical_call_id gives every spelling of a GUID the same form, and that form is its
    own canonical form."""
    text = case(str(value) if dashes else value.hex)
    if braces:
        text = "{" + text + "}"
    assert canonical_call_id(text) == str(value)
    assert canonical_call_id(str(value)) == str(value)
