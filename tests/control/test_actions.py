"""Call-control request values: validation and the exact Graph bodies they render."""

from __future__ import annotations

from typing import Any

import pytest

from callflow import MediaPrompt, Target
from callflow.actions import (
    Invite,
    JoinMeeting,
    OutgoingCall,
    PlayPrompt,
    RecordResponse,
    SendTones,
    Transfer,
    UpdateRecordingStatus,
    context_body,
    parse_join_url,
)
from callflow.errors import ActionError
from callflow.graph.client import _last_segment

HELLO = MediaPrompt("https://cdn.example.com/hello.wav")
USER = Target.user("u-1", tenant_id="t-1")
CALLBACK = "https://bot.example.com/api/calls"
JOIN = (
    "https://teams.microsoft.com/l/meetup-join/19%3ameeting_abc%40thread.v2/0?context="
    "%7b%22Tid%22%3a%22tid-1%22%2c%22Oid%22%3a%22oid-1%22%2c%22MessageId%22%3a%22m-7%22%7d"
)


def test_play_prompt_body() -> None:
    """PlayPrompt renders typed mediaPrompts and the client context."""
    assert PlayPrompt(HELLO).to_graph("ctx") == {
        "clientContext": "ctx",
        "prompts": [
            {"@odata.type": "#microsoft.graph.mediaPrompt", "mediaInfo": {"uri": HELLO.uri}}
        ],
    }


def test_record_response_body() -> None:
    """RecordResponse renders every recording option in Graph's names."""
    body = RecordResponse(HELLO, True, 3, 4, 30, False, "#1").to_graph("ctx")
    assert body == {
        "clientContext": "ctx",
        "prompts": [
            {"@odata.type": "#microsoft.graph.mediaPrompt", "mediaInfo": {"uri": HELLO.uri}}
        ],
        "bargeInAllowed": True,
        "initialSilenceTimeoutInSeconds": 3,
        "maxSilenceTimeoutInSeconds": 4,
        "maxRecordDurationInSeconds": 30,
        "playBeep": False,
        "stopTones": ["#", "1"],
    }
    assert RecordResponse().to_graph("c")["prompts"] == []


def test_send_tones_and_other_bodies() -> None:
    """Tones use Graph's names; the other actions render their few fields."""
    assert SendTones("1*#a", 50).to_graph("c") == {
        "clientContext": "c",
        "tones": ["tone1", "star", "pound", "a"],
        "delayBetweenTonesMs": 50,
    }
    assert SendTones(["tone9", "flash"]).to_graph("c")["tones"] == ["tone9", "flash"]
    assert UpdateRecordingStatus("recording").to_graph("c") == {
        "clientContext": "c",
        "status": "recording",
    }
    assert Invite(USER).to_graph("c") == {"clientContext": "c", "participants": [USER.to_graph()]}
    assert context_body("c") == {"clientContext": "c"}


def test_transfer_body() -> None:
    """Transfer names the target, and optionally the transferee and the call it replaces."""
    body = Transfer(USER, Target.phone("+14255550100"), "call-9").to_graph("c")
    assert body["transferTarget"] == {**USER.to_graph(), "replacesCallId": "call-9"}
    assert body["transferee"] == {
        "@odata.type": "#microsoft.graph.participantInfo",
        "identity": Target.phone("+14255550100").to_graph()["identity"],
    }
    assert Transfer(USER).to_graph("c") == {"clientContext": "c", "transferTarget": USER.to_graph()}


def test_outgoing_call_body() -> None:
    """OutgoingCall renders a call resource with service-hosted media and a source."""
    source = Target.application_instance("app-1")
    body = OutgoingCall(USER, source, ["Audio"], HELLO, tenant_id="t-1").to_graph(CALLBACK)
    assert body == {
        "@odata.type": "#microsoft.graph.call",
        "callbackUri": CALLBACK,
        "targets": [USER.to_graph()],
        "requestedModalities": ["audio"],
        "mediaConfig": {
            "@odata.type": "#microsoft.graph.serviceHostedMediaConfig",
            "preFetchMedia": [{"uri": HELLO.uri}],
        },
        "source": {
            "@odata.type": "#microsoft.graph.participantInfo",
            "identity": source.to_graph()["identity"],
        },
        "tenantId": "t-1",
    }


def test_join_meeting_body_from_a_link() -> None:
    """A join link gives chatInfo (with the reply chain) and the organizer's meetingInfo."""
    info = parse_join_url(JOIN)
    assert (info.thread_id, info.message_id, info.tenant_id, info.organizer_id) == (
        "19:meeting_abc@thread.v2",
        "0",
        "tid-1",
        "oid-1",
    )
    body = JoinMeeting(JOIN).to_graph(CALLBACK)
    assert body["chatInfo"] == {
        "@odata.type": "#microsoft.graph.chatInfo",
        "threadId": "19:meeting_abc@thread.v2",
        "messageId": "0",
        "replyChainMessageId": "m-7",
    }
    assert body["meetingInfo"]["organizer"]["user"] == {
        "@odata.type": "#microsoft.graph.identity",
        "id": "oid-1",
        "tenantId": "tid-1",
    }
    assert body["tenantId"] == "tid-1"


@pytest.mark.parametrize(
    "url",
    [
        "https://teams.microsoft.com/l/meetup-join/",
        "http://teams.microsoft.com/l/meetup-join/19%3ax/0?context=%7b%22Tid%22%3a%22t%22%7d",
        "https://teams.microsoft.com/l/meetup-join/19%3ax/0",
        "https://teams.microsoft.com/l/meetup-join/19%3ax/0?context=nope",
        "https://teams.microsoft.com/l/meetup-join/19%3ax/0?context=%7b%22Tid%22%3a%22t%22%7d",
        "https://example.com/",
    ],
)
def test_bad_join_links_say_what_is_expected(url: str) -> None:
    """A link that is not a Teams join link raises ActionError showing the expected form."""
    with pytest.raises(ActionError, match="expected a Teams join link"):
        parse_join_url(url)


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: PlayPrompt([]), "1 to 20"),
        (lambda: PlayPrompt(["x"]), "MediaPrompt"),  # type: ignore[list-item]
        (lambda: RecordResponse(max_duration=0), "max_duration"),
        (lambda: RecordResponse(play_beep=1), "play_beep"),  # type: ignore[arg-type]
        (lambda: RecordResponse(stop_tones="x"), "DTMF tones"),
        (lambda: RecordResponse(stop_tones="flash"), "flash"),
        (lambda: SendTones(""), "at least one"),
        (lambda: SendTones("1", -1), "delay_between_tones_ms"),
        (lambda: UpdateRecordingStatus("on"), "notRecording"),
        (lambda: Invite([USER] * 6), "1 to 5"),
        (lambda: Transfer("u"), "Target"),  # type: ignore[arg-type]
        (lambda: Transfer(USER, replaces_call_id=""), "non-empty"),
        (lambda: OutgoingCall([]), "1 to 25"),
        (lambda: OutgoingCall(USER, modalities=["audio", "audio"]), "distinct"),
        (lambda: OutgoingCall(USER, modalities=[]), "at least one"),
        (lambda: OutgoingCall(USER).to_graph(None), "callbackUri"),
        (lambda: OutgoingCall(USER, callback_uri="http://x").to_graph(None), "https"),
        (lambda: context_body("x" * 257), "256"),
    ],
)
def test_bad_requests_name_the_field(build: Any, fragment: str) -> None:
    """Invalid request fields raise ActionError naming the problem."""
    with pytest.raises(ActionError, match=fragment):
        build()


def test_location_last_segment() -> None:
    """An operation id is read from the last segment of a Location header."""
    assert _last_segment("https://g/v1.0/communications/calls/c/operations/op-1/") == "op-1"
    assert _last_segment("https://g/calls/c?x=1") == "c"
    assert _last_segment(None) is None
