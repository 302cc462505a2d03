"""Graph ``commsNotifications`` bodies built in code, shaped like the ones Graph sends, and
the call resource Graph answers ``GET /communications/calls/{id}`` with.

Every builder returns plain JSON-ready dicts (lists, not tuples) in Graph's camelCase, with
``@odata.type`` on polymorphic objects. :func:`incoming_call` builds the whole POST body of an
incoming call of one of :data:`KINDS`; :func:`call_resource` a call as a GET reads it; the
other builders return one notification *item*, to be wrapped with :func:`envelope` (several
items make one batched POST).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, TypeAlias, get_args

from callflow.events import Identity

__all__ = [
    "BOT_DISPLAY_NAME",
    "BOT_INSTANCE_ID",
    "KINDS",
    "CallKind",
    "CallerSpec",
    "check_kind",
    "call_resource",
    "call_state",
    "call_terminated",
    "default_caller",
    "envelope",
    "identity_set",
    "incoming_call",
    "operation_resource",
    "operation_result",
    "participants",
    "tone",
]

NOTIFICATIONS: Final = "#microsoft.graph.commsNotifications"
NOTIFICATION: Final = "#microsoft.graph.commsNotification"
CALL: Final = "#microsoft.graph.call"
IDENTITY_SET: Final = "#microsoft.graph.identitySet"
IDENTITY: Final = "#microsoft.graph.identity"
RESULT_INFO: Final = "#microsoft.graph.resultInfo"

CallKind: TypeAlias = Literal[
    "p2p",
    "phone",
    "group_meeting",
    "channel_meeting",
    "joinid_meeting",
    "policy_recording",
    "encrypted",
    "guest",
]
KINDS: Final[tuple[CallKind, ...]] = get_args(CallKind)
"""The kinds of incoming call :func:`incoming_call` builds.

``p2p``: a Teams user calls the bot. ``phone``: a phone number calls the bot's application
instance (resource account); the caller's :class:`~callflow.Identity` has ``kind="phone"``
(the older spelling ``"pstn"`` still works, with a DeprecationWarning). ``group_meeting``:
an invitation to a meeting named by its organizer (``organizerMeetingInfo``).
``channel_meeting``: a channel meeting (``tokenMeetingInfo``, ``@thread.tacv2``, audio and
video). ``joinid_meeting``: a meeting named by its join id and passcode.
``policy_recording``: a compliance-recording invite (``applicationMetadata.botData``,
answered within the recording timeout). ``encrypted`` and ``guest``: a peer-to-peer call
whose caller is an encrypted identity or a guest.
"""

BOT_DISPLAY_NAME: Final = "Callflow Test Bot"
BOT_INSTANCE_ID: Final = "c0ffee11-6666-4777-8888-e9990000bbbb"
"""The id of the application instance (resource account) that phone callers dial."""

CallerSpec: TypeAlias = Identity | Mapping[str, Any] | None
"""A caller: a callflow :class:`~callflow.events.Identity`, a small dict
(``{"kind": "user", "id": ..., "display_name": ..., "tenant_id": ...}``), a raw Graph
identitySet dict, or None for the kind's default caller."""

_USER_IDS: Final = {
    "p2p": ("6d5c4b3a-1111-4222-8333-944455556666", "Dana Whitfield"),
    "group_meeting": ("7e6d5c4b-2222-4333-8444-a55566667777", "Ravi Menon"),
    "channel_meeting": ("8f7e6d5c-3333-4444-8555-b66677778888", "Mei Tanaka"),
    "joinid_meeting": ("9a8b7c6d-4444-4555-8666-c77788889999", "Omar Haddad"),
    "policy_recording": ("ab9c8d7e-5555-4666-8777-d8889999aaaa", "Lena Kovacs"),
}
_PHONE: Final = "+14255550123"
_ENCRYPTED_ID: Final = "7sh8Z0hUk0yZ2F0Y2hlZC1jYWxsZXItaWRlbnRpdHktZm9yLXRlc3Rz"
_GUEST_ID: Final = "guest-5b1d7a52-0000-4000-8000-0000000000g1"


def check_kind(kind: str, *, stacklevel: int = 2) -> CallKind:
    """Return ``kind`` as one of :data:`KINDS`: ``"pstn"`` becomes ``"phone"`` (with a
    DeprecationWarning, ``stacklevel`` frames up); ValueError for any other unknown name."""
    if kind == "pstn":
        warnings.warn(
            'call kind "pstn" is now spelled "phone" (as Identity.kind names a phone caller)',
            DeprecationWarning,
            stacklevel=stacklevel + 1,
        )
        return "phone"
    for known in KINDS:
        if kind == known:
            return known
    raise ValueError(f"unknown call kind {kind!r}; expected one of {', '.join(KINDS)}")


def envelope(*items: Mapping[str, Any]) -> dict[str, Any]:
    """Wrap notification items in a ``commsNotifications`` POST body."""
    return {"@odata.type": NOTIFICATIONS, "value": [dict(item) for item in items]}


def _identity(kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    ident: dict[str, Any] = {"@odata.type": IDENTITY}
    for graph_name, names in (
        ("id", ("id",)),
        ("displayName", ("display_name", "displayName")),
        ("tenantId", ("tenant_id", "tenantId")),
    ):
        for name in names:
            if fields.get(name) is not None:
                ident[graph_name] = fields[name]
                break
    return {"@odata.type": IDENTITY_SET, kind: ident}


def identity_set(caller: Identity | Mapping[str, Any]) -> dict[str, Any]:
    """Render a caller as a Graph ``identitySet``.

    An :class:`~callflow.events.Identity` or a dict with a ``kind`` key becomes the member
    ``kind`` (``user``, ``phone``, ``guest``, ...) with ``id``, ``displayName`` and
    ``tenantId``; any other dict is taken to be an identitySet already (``@odata.type`` is
    added when missing).
    """
    if isinstance(caller, Identity):
        return _identity(
            caller.kind,
            {"id": caller.id, "display_name": caller.display_name, "tenant_id": caller.tenant_id},
        )
    if not isinstance(caller, Mapping):
        raise TypeError(f"caller must be an Identity, a dict or None, got {type(caller).__name__}")
    kind = caller.get("kind")
    if kind is not None:
        if not isinstance(kind, str) or not kind:
            raise ValueError(
                f"caller['kind'] must be an identity kind such as 'user', got {kind!r}"
            )
        return _identity(kind, caller)
    members = dict(caller)
    members.setdefault("@odata.type", IDENTITY_SET)
    return members


def default_caller(kind: str, tenant_id: str) -> dict[str, Any]:
    """The identitySet of the caller a call of ``kind`` has unless one is given."""
    kind = check_kind(kind, stacklevel=3)
    if kind == "phone":
        return _identity("phone", {"id": _PHONE})
    if kind == "encrypted":
        return _identity("encrypted", {"id": _ENCRYPTED_ID, "tenant_id": tenant_id})
    if kind == "guest":
        return _identity("guest", {"id": _GUEST_ID, "display_name": "Guest Caller"})
    user_id, name = _USER_IDS.get(kind, _USER_IDS["p2p"])
    return _identity("user", {"id": user_id, "display_name": name, "tenant_id": tenant_id})


def _etag(etag: int) -> str:
    return f'W/"{etag}"'


def incoming_call(
    *,
    kind: str,
    call_id: str,
    tenant_id: str,
    bot_app_id: str,
    callback_uri: str,
    caller: CallerSpec = None,
    policy_recording: bool = False,
    etag: int = 1,
    call_chain_id: str | None = None,
) -> dict[str, Any]:
    """Return the POST body announcing an incoming call of ``kind`` (see :data:`KINDS`).

    ``policy_recording`` adds ``applicationMetadata.botData`` to any kind (the kind
    ``policy_recording`` always has it). ``call_chain_id`` defaults to a value derived from
    ``call_id``.
    """
    kind = check_kind(kind, stacklevel=3)
    source_identity = default_caller(kind, tenant_id) if caller is None else identity_set(caller)
    source_id = f"5e6f7a8b-{call_id[:8]}"
    participant_id = "b7a1e2c3-0001-4000-8000-00000000b071"
    bot: dict[str, Any]
    if kind == "phone":
        bot = _identity(
            "applicationInstance",
            {"id": BOT_INSTANCE_ID, "display_name": "Main Line", "tenant_id": tenant_id},
        )
    else:
        bot = _identity("application", {"id": bot_app_id, "display_name": BOT_DISPLAY_NAME})
    resource_url = f"/communications/calls/{call_id}"
    data: dict[str, Any] = {
        "@odata.type": CALL,
        "@odata.id": resource_url,
        "@odata.etag": _etag(etag),
        "id": call_id,
        "state": "incoming",
        "direction": "incoming",
        "callbackUri": callback_uri,
        "tenantId": tenant_id,
        "requestedModalities": ["audio", "video"] if kind == "channel_meeting" else ["audio"],
        "targets": [
            {
                "@odata.type": "#microsoft.graph.invitationParticipantInfo",
                "id": participant_id,
                "identity": bot,
                "endpointType": "default",
            }
        ],
        "myParticipantId": participant_id,
        "source": {
            "@odata.type": "#microsoft.graph.participantInfo",
            "id": source_id,
            "identity": source_identity,
            "endpointType": "default",
            "region": "emea",
            "languageId": "en-GB",
        },
        "callChainId": call_chain_id or f"c4a1f0e2-{call_id}",
        "incomingContext": {
            "@odata.type": "#microsoft.graph.incomingContext",
            "sourceParticipantId": source_id,
        },
    }
    organizer = default_caller("group_meeting", tenant_id)
    if kind == "group_meeting":
        data["chatInfo"] = _chat_info("19:meeting_OWY0ZmQ2ZGItNjVmYy00@thread.v2", "0")
        data["meetingInfo"] = {
            "@odata.type": "#microsoft.graph.organizerMeetingInfo",
            "allowConversationWithoutHost": True,
            "organizer": organizer,
        }
        data["incomingContext"]["observedParticipantId"] = source_id
    elif kind == "channel_meeting":
        data["chatInfo"] = _chat_info("19:a1b2c3d4e5f6@thread.tacv2", "1732870000123")
        data["meetingInfo"] = {
            "@odata.type": "#microsoft.graph.tokenMeetingInfo",
            "token": "eyJhbGciOiJub25lIn0.eyJtZWV0aW5nIjoiY2hhbm5lbCJ9.",
        }
    elif kind == "joinid_meeting":
        data["chatInfo"] = _chat_info("19:meeting_ZTk0YjE2@thread.v2", "0")
        data["meetingInfo"] = {
            "@odata.type": "#microsoft.graph.joinMeetingIdMeetingInfo",
            "joinMeetingId": "3141592653",
            "passcode": "kX9p2q",
        }
    if kind == "policy_recording" or policy_recording:
        data["incomingContext"]["observedParticipantId"] = source_id
        data["incomingContext"]["onBehalfOf"] = source_identity
        data["applicationMetadata"] = {
            "botData": {
                "inviteReasons": ["policy"],
                "policyIdentifier": "tag:ComplianceRecording",
                "otherSideUser": None,
            }
        }
    return envelope(
        {
            "@odata.type": NOTIFICATION,
            "changeType": "created",
            "resourceUrl": resource_url,
            "resourceData": data,
            "resource": f"/app/calls/{call_id}",
        }
    )


_NOTIFICATION_ONLY: Final = frozenset({"@odata.id", "@odata.etag"})
_NOT_YET_ACTIVE: Final = frozenset({"incoming", "establishing"})


def call_resource(
    announced: Mapping[str, Any] | None,
    *,
    call_id: str,
    state: str,
    direction: str,
    callback_uri: str,
    tenant_id: str,
    call_chain_id: str,
) -> dict[str, Any]:
    """Return the call resource a GET of ``call_id`` answers with, in its current ``state``.

    ``announced`` is the resource Graph first described the call with (the incoming call's
    ``resourceData``, or its reply to the POST that created the call): its parties, modalities,
    meeting and ids are kept, the notification-only ``@odata.id`` and ``@odata.etag`` are not.
    ``state``, ``direction``, ``callbackUri`` and ``tenantId`` are the given ones, and
    ``callChainId`` unless the announced resource names one. ``activeModalities`` are the
    requested ones once the call is past establishing, none before.
    """
    resource: dict[str, Any] = {
        "@odata.type": CALL,
        "id": call_id,
        "state": state,
        "direction": direction,
        "callbackUri": callback_uri,
        "tenantId": tenant_id,
    }
    for key, value in (announced or {}).items():
        if key not in resource and key not in _NOTIFICATION_ONLY:
            resource[key] = value
    resource.setdefault("callChainId", call_chain_id)
    requested = resource.get("requestedModalities")
    active = requested if isinstance(requested, list) and state not in _NOT_YET_ACTIVE else []
    resource["activeModalities"] = list(active)
    return resource


def _chat_info(thread_id: str, message_id: str) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.chatInfo",
        "threadId": thread_id,
        "messageId": message_id,
        "replyChainMessageId": message_id,
    }


def _result_info(code: int | None, subcode: int | None, message: str | None) -> dict[str, Any]:
    info: dict[str, Any] = {"@odata.type": RESULT_INFO}
    if code is not None:
        info["code"] = code
    if subcode is not None:
        info["subcode"] = subcode
    if message is not None:
        info["message"] = message
    return info


def call_state(
    call_id: str,
    state: str,
    *,
    etag: int | None = None,
    change_type: str = "updated",
    result: tuple[int | None, int | None, str | None] | None = None,
) -> dict[str, Any]:
    """Return a notification item saying the call moved to ``state`` (``established``, ...).

    ``result`` adds a ``resultInfo`` (code, subcode, message), as after a failed transfer.
    """
    resource_url = f"/communications/calls/{call_id}"
    data: dict[str, Any] = {"@odata.type": CALL, "@odata.id": resource_url, "state": state}
    if etag is not None:
        data["@odata.etag"] = _etag(etag)
    if result is not None:
        data["resultInfo"] = _result_info(*result)
    return {
        "@odata.type": NOTIFICATION,
        "changeType": change_type,
        "resourceUrl": resource_url,
        "resourceData": data,
    }


def call_terminated(
    call_id: str,
    *,
    code: int | None = 200,
    subcode: int | None = 5001,
    message: str | None = "The conversation has ended.",
    etag: int | None = None,
) -> dict[str, Any]:
    """Return a ``deleted`` notification item: the call is ``terminated`` with ``resultInfo``.

    With ``code``, ``subcode`` and ``message`` all None, ``resultInfo`` is left out.
    """
    item = call_state(call_id, "terminated", etag=etag, change_type="deleted")
    if code is not None or subcode is not None or message is not None:
        item["resourceData"]["resultInfo"] = _result_info(code, subcode, message)
    return item


GRAPH_TONES: Final = {
    **{str(d): f"tone{d}" for d in range(10)},
    "*": "star",
    "#": "pound",
    **{letter: letter.lower() for letter in "ABCD"},
    "flash": "flash",
}
"""Key names (``"1"``, ``"#"``, ``"A"``, ``"flash"``) -> Graph's tone names (``tone1``, ...)."""


def tone(call_id: str, sequence_id: int, key: str, *, etag: int | None = None) -> dict[str, Any]:
    """Return an ``updated`` item for one key press: the call, ``established``, with toneInfo.

    ``key`` is ``"0"``-``"9"``, ``"*"``, ``"#"``, ``"A"``-``"D"``, ``"flash"``, or a Graph tone
    name (``tone5``, ``pound``), which is sent as it is.
    """
    item = call_state(call_id, "established", etag=etag)
    item["resourceData"]["toneInfo"] = {
        "@odata.type": "#microsoft.graph.toneInfo",
        "sequenceId": sequence_id,
        "tone": GRAPH_TONES.get(key, key),
    }
    return item


OPERATION_TYPES: Final = {
    "playPrompt": "#microsoft.graph.playPromptOperation",
    "recordResponse": "#microsoft.graph.recordOperation",
    "sendDtmfTones": "#microsoft.graph.sendDtmfTonesOperation",
    "subscribeToTone": "#microsoft.graph.subscribeToToneOperation",
    "cancelMediaProcessing": "#microsoft.graph.cancelMediaProcessingOperation",
    "mute": "#microsoft.graph.muteParticipantOperation",
    "unmute": "#microsoft.graph.unmuteParticipantOperation",
    "updateRecordingStatus": "#microsoft.graph.updateRecordingStatusOperation",
    "invite": "#microsoft.graph.inviteParticipantsOperation",
}
"""The ``@odata.type`` of the operation each action starts."""


def operation_resource(
    op: str,
    operation_id: str,
    *,
    status: str,
    client_context: str | None = None,
    result: tuple[int | None, int | None, str | None] | None = None,
    completion_reason: str | None = None,
    recording_location: str | None = None,
    recording_access_token: str | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    """Return a ``commsOperation`` object of the kind ``op`` starts (an action's 200 body)."""
    data: dict[str, Any] = {
        "@odata.type": OPERATION_TYPES.get(op, "#microsoft.graph.commsOperation"),
        "id": operation_id,
        "status": status,
        "clientContext": client_context,
        "resultInfo": None if result is None else _result_info(*result),
    }
    if url is not None:
        data["@odata.id"] = url
    if completion_reason is not None:
        data["completionReason"] = completion_reason
    if op == "recordResponse":
        data["recordingLocation"] = recording_location
        data["recordingAccessToken"] = recording_access_token
    return data


def operation_result(
    call_id: str,
    op: str,
    operation_id: str,
    *,
    status: str,
    client_context: str | None = None,
    result: tuple[int | None, int | None, str | None] | None = None,
    completion_reason: str | None = None,
    recording_location: str | None = None,
    recording_access_token: str | None = None,
) -> dict[str, Any]:
    """Return the ``deleted`` item on ``.../operations/{id}`` that reports an operation's end.

    ``call_id`` is put in the URL as given (Graph sometimes sends it upper-case without
    dashes).
    """
    url = f"/communications/calls/{call_id}/operations/{operation_id}"
    return {
        "@odata.type": NOTIFICATION,
        "changeType": "deleted",
        "resourceUrl": url,
        "resourceData": operation_resource(
            op,
            operation_id,
            status=status,
            client_context=client_context,
            result=result,
            completion_reason=completion_reason,
            recording_location=recording_location,
            recording_access_token=recording_access_token,
            url=url,
        ),
    }


def participants(
    call_id: str, roster: Iterable[Identity | Mapping[str, Any]], *, muted: bool = False
) -> dict[str, Any]:
    """Return an ``updated`` notification item carrying the call's roster (an array)."""
    entries = []
    for index, member in enumerate(roster):
        entries.append(
            {
                "@odata.type": "#microsoft.graph.participant",
                "id": f"participant-{index}",
                "info": {
                    "@odata.type": "#microsoft.graph.participantInfo",
                    "identity": identity_set(member),
                },
                "mediaStreams": [
                    {
                        "@odata.type": "#microsoft.graph.mediaStream",
                        "mediaType": "audio",
                        "sourceId": str(index + 1),
                        "direction": "sendReceive",
                        "serverMuted": False,
                    }
                ],
                "isMuted": muted,
                "isInLobby": False,
            }
        )
    return {
        "@odata.type": NOTIFICATION,
        "changeType": "updated",
        "resourceUrl": f"/communications/calls/{call_id}/participants",
        "resourceData": entries,
    }
