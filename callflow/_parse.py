"""Turn a Graph ``commsNotifications`` POST body into callflow events.

:func:`parse_notifications` is on the hot path of every call: it reads only the fields it
needs, keeps the string objects ``json.loads`` made, copies nothing, and builds error
locations only when something is wrong.

What becomes what (``changeType`` and enum values are matched case-insensitively):

- ``created`` + a call whose ``state`` is ``incoming`` -> :class:`~callflow.events.IncomingCall`.
- ``created``/``updated`` + a call with another ``state`` ->
  :class:`~callflow.events.CallStateChanged`; the state is normalised to Graph's camelCase
  (``transferAccepted``), unknown states are kept as sent.
- ``deleted`` + a call (with or without ``resourceData``) ->
  :class:`~callflow.events.CallTerminated`; ``resultInfo.code``/``subcode`` may be integers or
  numeric strings. An empty ``resultInfo`` gives ``result=None``.
- ``created``/``updated`` + ``.../participants`` with an array ->
  :class:`~callflow.events.ParticipantsUpdated`.
- ``created``/``updated`` + a call carrying ``toneInfo`` -> :class:`~callflow.events.ToneReceived`
  (a key press, not a state change); a ``toneInfo`` without a readable ``sequenceId`` and
  tone gives an :class:`~callflow.events.UnknownNotification`.
- ``deleted`` + ``.../operations/{id}`` with an object ->
  :class:`~callflow.events.OperationFinished`. Read leniently: a field of the wrong type is
  None, an unknown ``status`` is kept as sent.
- Anything else -> :class:`~callflow.events.UnknownNotification`: other operation
  notifications, other resources, unknown change types, a call update without ``state``, a
  ``deleted`` on ``.../participants`` (those are the participants who left, not the roster).

The call id comes from ``resourceData.id``, else from ``resourceUrl`` (or the legacy
``resource`` when ``resourceUrl`` is absent), else from ``resourceData["@odata.id"]``, and
every event carries it in its canonical form (:func:`~callflow.events.canonical_call_id`:
lower case, no braces, a GUID dashed 8-4-4-4-12), however Graph spelled it. A call
resource is a URL ``.../calls/{id}``; without any URL, an object ``resourceData`` is taken to
be a call.

What is an error (:class:`~callflow.errors.NotificationFormatError`, nothing else is ever
raised; the message names the location, like ``value[1].resourceData.source.identity:
expected an object, got list``):

- more than :data:`MAX_NOTIFICATIONS` notifications in one body
  (:class:`~callflow.errors.NotificationLimitError`, the webhook answers 413);
- a call id that could not be one path segment of a Graph URL: at most
  :data:`MAX_CALL_ID` characters of ``A-Z a-z 0-9 - _ ~ .``, not starting with a dot (so
  never ``..``, ``/`` or ``%2F``); a tenant id that is not a GUID or domain name; any other
  identifier (identity, participant, chain, thread ids...) longer than :data:`MAX_ID`, and a
  ``resourceUrl`` or ``callbackUri`` longer than :data:`MAX_URL` characters;

- a body that is not UTF-8 (a BOM is allowed), not JSON, not an object with a ``value`` array
  of objects;
- a field the parser reads that has the wrong JSON type. ``null`` always counts as absent.
  This covers every object or array the parser walks into (``resourceData``, ``source``,
  ``identity``, ``targets``, ``chatInfo``, ``meetingInfo``, ``resultInfo``, ...), every
  identifier (``id``, ``tenantId``, ``callbackUri``, ``threadId``, ``joinMeetingId``, ...), the
  enums (``changeType``, ``state``, each ``requestedModalities`` entry) and the result codes:
  guessing at any of them could route, answer or account for a call wrongly;
- a notification that would become a call event but carries no call id at all.

What is tolerated:

- a wrong-typed *descriptive* leaf becomes ``None`` (``displayName``, ``endpointType``,
  ``region``, ``languageId``, ``resultInfo.message``, ``isMuted``, ``isInLobby``,
  ``allowConversationWithoutHost``): a mangled label must not cost a caller their call;
- free text longer than :data:`MAX_TEXT` characters (``resultInfo.message``, ``displayName``,
  ``endpointType``, ``region``, ``languageId``, an operation's ``clientContext``,
  ``completionReason`` and ``status``, and an unknown ``changeType``, ``state`` or modality
  kept as sent) is cut to that length and marked ``...[cut from N characters]``: it reaches
  handlers, exception messages and log lines, none of which wants megabytes of it;
- ``@odata.type`` is metadata, ignored when it is not a string (a ``meetingInfo`` kind is
  then inferred from its fields; an unknown kind gives ``meeting_info=None``);
- an ``@odata.etag`` that is not a numeric etag like ``W/"4021"`` gives ``etag=None``;
- an identitySet member that is not an object is skipped unless its name is a known
  identity kind (identitySets also carry scalars such as ``endpointType``);
- fields the parser does not need are never looked at.

Nested values are expected to be what ``json.loads`` makes; anything else that trips the
parser (a non-string key, say) is still reported as a ``NotificationFormatError``.
"""

from __future__ import annotations

import json
import re
import sys
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, Final

import attrs

from callflow.errors import NotificationFormatError, NotificationLimitError
from callflow.events import (
    CallEvent,
    CallStateChanged,
    CallTerminated,
    ChatInfo,
    Identity,
    IncomingCall,
    IncomingContext,
    JoinMeetingIdMeetingInfo,
    MeetingInfo,
    OperationFinished,
    OrganizerMeetingInfo,
    Participant,
    ParticipantsUpdated,
    ResultInfo,
    TokenMeetingInfo,
    ToneReceived,
    UnknownNotification,
    canonical_call_id,
)

__all__ = [
    "CALL_ID_PATTERN",
    "MAX_CALL_ID",
    "MAX_ID",
    "MAX_NOTIFICATIONS",
    "MAX_TEXT",
    "MAX_URL",
    "TENANT_ID_PATTERN",
    "parse_notifications",
]

MAX_NOTIFICATIONS: Final = 100
"""Notifications one body may carry; more get 413."""
MAX_CALL_ID: Final = 128
"""The longest call id accepted (Graph's are 36-character GUIDs)."""
MAX_ID: Final = 256
"""The longest identifier of any other kind (identities, participants, chains, threads)."""
MAX_URL: Final = 2048
"""The longest ``resourceUrl`` or ``callbackUri`` accepted."""
MAX_TEXT: Final = 1000
"""The longest free text kept whole (a ``resultInfo.message``, a display name, a label or an
unknown enum value kept as sent); a longer one is cut to this many characters, marked."""
CALL_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,127}")
"""A call id that is one plain URL path segment: unreserved characters, no leading dot."""
TENANT_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,255}")
"""A tenant id: a GUID or a domain name (it becomes a path segment of the token authority)."""
_CALL_ID_OK: Final = CALL_ID_PATTERN.fullmatch
_TENANT_OK: Final = TENANT_ID_PATTERN.fullmatch


def _canonical(*names: str) -> dict[str, str]:
    """Map each name, and its lowercase form, to the name itself."""
    table = {name.lower(): name for name in names}
    table.update({name: name for name in names})
    return table


_CHANGE_TYPES: Final = _canonical("created", "updated", "deleted")
_STATES: Final = _canonical(
    "incoming",
    "establishing",
    "established",
    "hold",
    "transferring",
    "transferAccepted",
    "redirecting",
    "terminating",
    "terminated",
)
_MODALITIES: Final = _canonical("audio", "video", "videoBasedScreenSharing", "data", "unknown")

# Precedence of identitySet members when choosing the primary identity; others rank last.
_RANK: Final = {
    "user": 0,
    "phone": 1,
    "guest": 2,
    "applicationInstance": 3,
    "application": 4,
    "azureCommunicationServicesUser": 5,
    "onPremises": 6,
    "encrypted": 7,
}
_OTHER_RANK: Final = 8
_KIND_NAMES: Final = {kind: kind for kind in _RANK}
_APPS: Final = frozenset({"application", "applicationInstance"})

# A worker sees the same few tenant ids, its own app identity, callback URI, endpoint types,
# regions and languages in call after call: one shared string each instead of a copy per
# pending call (about 0.8 KB a call).
_intern: Final = sys.intern


def _text(value: str) -> str:
    """``value``, or its first :data:`MAX_TEXT` characters and a mark that it was cut."""
    if len(value) <= MAX_TEXT:
        return value
    return f"{value[:MAX_TEXT]}...[cut from {len(value)} characters]"


def _label(value: Any) -> str | None:
    """A descriptive string leaf, shared (interned) when short; None when not a string."""
    if not isinstance(value, str):
        return None
    return _intern(value) if len(value) <= MAX_TEXT else _text(value)


_ORGANIZER: Final = 1
_TOKEN: Final = 2
_JOIN_ID: Final = 3
_MEETING_KINDS: Final = {
    "#microsoft.graph.organizerMeetingInfo": _ORGANIZER,
    "#microsoft.graph.tokenMeetingInfo": _TOKEN,
    "#microsoft.graph.joinMeetingIdMeetingInfo": _JOIN_ID,
    "organizermeetinginfo": _ORGANIZER,
    "tokenmeetinginfo": _TOKEN,
    "joinmeetingidmeetinginfo": _JOIN_ID,
}

_KIND_OTHER: Final = 0
_KIND_CALL: Final = 1
_KIND_PARTICIPANTS: Final = 2
_KIND_OPERATION: Final = 3

_OPERATION_STATUSES: Final = _canonical("notStarted", "running", "completed", "failed")
_TONE_NAMES: Final = {
    **{f"tone{digit}": str(digit) for digit in range(10)},
    **{str(digit): str(digit) for digit in range(10)},
    "star": "*",
    "*": "*",
    "pound": "#",
    "#": "#",
    **{letter: letter.upper() for letter in "abcd"},
    "flash": "flash",
}

_UNKNOWN_CALLER: Final = Identity(kind="unknown")
_EMPTY: Final[dict[str, Any]] = {}
_MAX_INT_DIGITS: Final = 18

# Errors that only non-JSON input (a Mapping with odd keys or values) can provoke.
_UNEXPECTED: Final = (TypeError, AttributeError, KeyError, IndexError, ValueError, RecursionError)

_EXPECTED_BODY: Final = "expected a Graph commsNotifications JSON document"
_NO_CALL_ID: Final = (
    "no call id; expected resourceData.id or a resourceUrl like /communications/calls/{id}"
)


class _Bad(Exception):
    """Internal: what is wrong, and where relative to the value being parsed."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(where, problem)
        self.where = where
        self.problem = problem

    def under(self, segment: str) -> None:
        """Prefix the location with the field or index that contains it."""
        where = self.where
        if not where:
            self.where = segment
        elif where[0] == "[":
            self.where = segment + where
        else:
            self.where = f"{segment}.{where}"


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _wrong(where: str, expected: str, value: Any) -> _Bad:
    return _Bad(where, f"expected {expected}, got {_type_name(value)}")


def _checked_call_id(call_id: str, where: str) -> str:
    """``call_id`` in its canonical form (:func:`~callflow.events.canonical_call_id`) when it
    can be one segment of a Graph URL path; else the error."""
    if len(call_id) <= MAX_CALL_ID + 2:  # room for braces
        canonical = canonical_call_id(call_id)
        # The same object back: it was a canonical GUID already (nearly always), so valid.
        if canonical is call_id or _CALL_ID_OK(canonical):
            return canonical
    if len(call_id) > MAX_CALL_ID:
        raise _Bad(where, f"a call id of {len(call_id)} characters; expected at most {MAX_CALL_ID}")
    raise _Bad(
        where,
        f"call id {call_id[:40]!r} is not a Graph call id; expected at most {MAX_CALL_ID} "
        "characters of A-Z a-z 0-9 - _ ~ . (not starting with a dot)",
    )


def _bounded(value: str, where: str, limit: int = MAX_ID) -> str:
    """``value`` when it is at most ``limit`` characters long; else the error."""
    if len(value) > limit:
        raise _Bad(where, f"{len(value)} characters; expected at most {limit}")
    return value


def parse_notifications(
    body: bytes | bytearray | str | Mapping[str, Any],
) -> list[CallEvent]:
    """Parse a commsNotifications body into events, in the order its items appear.

    ``body`` is the raw POST body (bytes or str, UTF-8 JSON) or the already parsed JSON
    object. Raises :class:`~callflow.errors.NotificationFormatError`, and nothing else, when
    the body is not a commsNotifications payload; the message says what was wrong where.
    """
    source: str | None = None
    if isinstance(body, dict):
        doc: Any = body
    elif isinstance(body, bytes | bytearray):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NotificationFormatError(
                f"body: not UTF-8 ({exc.reason} at byte {exc.start}); {_EXPECTED_BODY} in UTF-8"
            ) from None
        doc = _loads(text)
        source = text
    elif isinstance(body, str):
        doc = _loads(body)
        source = body
    elif isinstance(body, Mapping):
        doc = body
    else:
        raise NotificationFormatError(
            f"body: expected bytes, str or a parsed JSON object, got {_type_name(body)}"
        )
    try:
        return _document(doc, source)
    except _Bad as exc:
        raise NotificationFormatError(f"{exc.where}: {exc.problem}") from exc.__cause__


_ZDICT: Final = (
    b'"@odata.type":"#microsoft.graph.commsNotifications","value":[{"@odata.type":'
    b'"#microsoft.graph.commsNotification","changeType":"created","resource":"/app/calls/",'
    b'"resourceUrl":"/communications/calls/","resourceData":{"@odata.type":'
    b'"#microsoft.graph.call","@odata.id":"/communications/calls/","@odata.etag":"W/\\"",'
    b'"state":"incoming","direction":"incoming","callbackUri":"https://","callChainId":"",'
    b'"myParticipantId":"","tenantId":"","requestedModalities":["audio","video",'
    b'"videoBasedScreenSharing"],"mediaState":{"@odata.type":"#microsoft.graph.callMediaState",'
    b'"audio":"active"},"meetingCapability":null,"chatInfo":{"@odata.type":'
    b'"#microsoft.graph.chatInfo","threadId":"19:meeting_","messageId":"0"},"meetingInfo":'
    b'{"@odata.type":"#microsoft.graph.organizerMeetingInfo","organizer":{"@odata.type":'
    b'"#microsoft.graph.identitySet"}},"source":{"@odata.type":'
    b'"#microsoft.graph.participantInfo","id":"","identity":{"@odata.type":'
    b'"#microsoft.graph.identitySet","user":{"@odata.type":"#microsoft.graph.identity","id":'
    b'"","displayName":"","tenantId":""},"phone":{"@odata.type":"#microsoft.graph.identity",'
    b'"id":"+"}},"endpointType":"default","region":"amer","languageId":"en-US"},"targets":'
    b'[{"@odata.type":"#microsoft.graph.invitationParticipantInfo","identity":{"@odata.type":'
    b'"#microsoft.graph.identitySet","application":{"@odata.type":"#microsoft.graph.identity",'
    b'"id":"","displayName":""}},"endpointType":"default"}],"incomingContext":{"@odata.type":'
    b'"#microsoft.graph.incomingContext","sourceParticipantId":"","observedParticipantId":""},'
    b'"applicationMetadata":{"botData":""}}}]}'
)
"""A preset dictionary for compressing notification bodies: the field names, types and
enumeration values of Graph's incoming-call notifications (the protocol, not any one
call's values). It takes a compressed body from about 600 to about 420 bytes."""


class LazyItem(Mapping[str, Any]):
    """An incoming call's notification item, decoded again from the body text on first use.

    A pending call would otherwise keep the whole parsed JSON tree alive until it is decided:
    about 6 KB and dozens of objects the garbage collector walks, against the body's text.
    """

    __slots__ = ("_index", "_item", "_source")

    def __init__(self, source: str, index: int) -> None:
        self._source: str | bytes = source
        self._index = index
        self._item: dict[str, Any] | None = None

    def compact(self) -> None:
        """Keep the body text compressed (about a quarter of its size) until it is read.

        For calls that may wait long among many others; reading the item afterwards costs
        a few microseconds more. The compressor is primed with Graph's field names and
        types (:data:`_ZDICT`), which every notification repeats.
        """
        source = self._source
        if self._item is None and isinstance(source, str):
            packer = zlib.compressobj(6, zdict=_ZDICT)
            self._source = packer.compress(source.encode()) + packer.flush()

    def _load(self) -> dict[str, Any]:
        item = self._item
        if item is None:
            source = self._source
            if isinstance(source, str):
                text = source
            else:
                unpacker = zlib.decompressobj(zdict=_ZDICT)
                text = (unpacker.decompress(source) + unpacker.flush()).decode()
            item = self._item = _loads(text)["value"][self._index]
        return item

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __repr__(self) -> str:
        return repr(self._load())


def _loads(text: str) -> Any:
    if text[:1] == "\ufeff":
        text = text[1:]
    try:
        return json.loads(text)
    except RecursionError:
        raise NotificationFormatError(
            f"body: not valid JSON (nested too deeply); {_EXPECTED_BODY}"
        ) from None
    except ValueError as exc:
        raise NotificationFormatError(f"body: not valid JSON ({exc}); {_EXPECTED_BODY}") from None


def _document(doc: Any, source: str | None = None) -> list[CallEvent]:
    if not isinstance(doc, dict) and not isinstance(doc, Mapping):
        raise _wrong("body", "a JSON object with a 'value' array", doc)
    try:
        items = doc.get("value")
    except _UNEXPECTED as exc:
        raise _Bad("body", f"unreadable mapping ({type(exc).__name__})") from exc
    if not isinstance(items, list):
        if items is None:
            raise _Bad("value", "missing; expected an array of notification objects")
        raise _wrong("value", "an array of notification objects", items)
    if len(items) > MAX_NOTIFICATIONS:
        raise NotificationLimitError(
            f"value: {len(items)} notifications in one body; expected at most {MAX_NOTIFICATIONS}",
            MAX_NOTIFICATIONS,
        )
    events: list[CallEvent] = []
    append = events.append
    for index, item in enumerate(items):
        try:
            append(_item(item, None if source is None else LazyItem(source, index)))
        except _Bad as exc:
            exc.under(f"value[{index}]")
            raise
        except _UNEXPECTED as exc:
            raise _Bad(
                f"value[{index}]",
                f"malformed notification ({type(exc).__name__}); expected the JSON types of "
                "a Graph commsNotification",
            ) from exc
    return events


def _split_url(url: str) -> tuple[str | None, str] | None:
    """Return (call id or None, the rest of the path) for a ``.../calls/{id}...`` URL."""
    start = url.find("/calls/")
    if start < 0:
        if not url.isascii():
            return None
        start = url.lower().find("/calls/")
        if start < 0:
            return None
    start += 7
    end = url.find("/", start)
    if end < 0:
        return url[start:] or None, ""
    return url[start:end] or None, url[end:]


def _item(item: Any, lazy: LazyItem | None = None) -> CallEvent:
    if not isinstance(item, dict):
        raise _wrong("", "a notification object", item)
    sent_change = item.get("changeType")
    if not isinstance(sent_change, str):
        if sent_change is None:
            raise _Bad("changeType", "missing; expected created, updated or deleted")
        raise _wrong("changeType", "a string (created, updated or deleted)", sent_change)
    change = _CHANGE_TYPES.get(sent_change)
    if change is None:
        change = _CHANGE_TYPES.get(sent_change.lower())
        if change is None:
            sent_change = _text(sent_change)  # kept as sent, in an UnknownNotification

    url = item.get("resourceUrl")
    if url is None:
        url = item.get("resource")
        if url is not None:
            if not isinstance(url, str):
                raise _wrong("resource", "a string", url)
            _bounded(url, "resource", MAX_URL)
    elif not isinstance(url, str):
        raise _wrong("resourceUrl", "a string", url)
    else:
        _bounded(url, "resourceUrl", MAX_URL)

    data = item.get("resourceData")
    if data is not None and not isinstance(data, dict | list):
        raise _wrong("resourceData", "an object, an array or null", data)

    url_call_id: str | None = None
    kind = _KIND_OTHER
    if url is not None:
        split = _split_url(url)
        if split is not None:
            url_call_id, rest = split
            if url_call_id is not None:
                url_call_id = _checked_call_id(
                    url_call_id, "resourceUrl" if "resourceUrl" in item else "resource"
                )
            if not rest or rest == "/":
                kind = _KIND_CALL
            elif rest.lower().rstrip("/") == "/participants":
                kind = _KIND_PARTICIPANTS
            elif rest[:12].lower() == "/operations/":
                kind = _KIND_OPERATION
    elif isinstance(data, dict):
        kind = _KIND_CALL

    if kind == _KIND_OPERATION:
        if change == "deleted" and url_call_id and isinstance(data, dict):
            finished = _finished(url_call_id, rest, data, item)
            if finished is not None:
                return finished
        return UnknownNotification(change or sent_change, url, url_call_id, raw=item)

    if change is None or kind == _KIND_OTHER:
        loose_id = url_call_id
        if loose_id is None and kind == _KIND_CALL and isinstance(data, dict):
            data_id = data.get("id")
            if isinstance(data_id, str) and data_id:
                loose_id = _checked_call_id(data_id, "resourceData.id")
        return UnknownNotification(change or sent_change, url, loose_id, raw=item)

    if kind == _KIND_PARTICIPANTS:
        if change == "deleted" or not isinstance(data, list):
            return UnknownNotification(change, url, url_call_id, raw=item)
        if not url_call_id:
            raise _Bad("", _NO_CALL_ID)
        try:
            roster = _roster(data)
        except _Bad as exc:
            exc.under("resourceData")
            raise
        return ParticipantsUpdated(url_call_id, roster, raw=item)

    # A call resource.
    if not isinstance(data, dict):
        if change == "deleted":
            if not url_call_id:
                raise _Bad("", _NO_CALL_ID)
            return CallTerminated(url_call_id, None, raw=item)
        return UnknownNotification(change, url, url_call_id, raw=item)

    call_id = data.get("id")
    if not call_id:
        if call_id is not None and not isinstance(call_id, str):
            raise _wrong("resourceData.id", "a string", call_id)
        call_id = url_call_id
        if call_id is None:
            odata_id = data.get("@odata.id")
            if isinstance(odata_id, str):
                split = _split_url(odata_id)
                if split is not None and split[0] is not None:
                    call_id = _checked_call_id(split[0], "resourceData.@odata.id")
    elif not isinstance(call_id, str):
        raise _wrong("resourceData.id", "a string", call_id)
    else:
        call_id = _checked_call_id(call_id, "resourceData.id")

    state = data.get("state")
    if state is not None and not isinstance(state, str):
        raise _wrong("resourceData.state", "a string", state)

    if change == "deleted":
        if not call_id:
            raise _Bad("", _NO_CALL_ID)
        try:
            result = _result(data.get("resultInfo"))
        except _Bad as exc:
            exc.under("resourceData")
            raise
        return CallTerminated(call_id, result, raw=item)
    if state is None:
        return UnknownNotification(change, url, call_id, raw=item)
    if not call_id:
        raise _Bad("", _NO_CALL_ID)
    canonical = _STATES.get(state)
    if canonical is None:
        canonical = _STATES.get(state.lower()) or _text(state)
    if canonical == "incoming" and change == "created":
        try:
            return _incoming(data, call_id, url, item if lazy is None else lazy)
        except _Bad as exc:
            exc.under("resourceData")
            raise
    etag = _etag(data.get("@odata.etag"))
    tone_info = data.get("toneInfo")
    if tone_info is not None:
        tone = _tone(tone_info)
        if tone is None:
            return UnknownNotification(change, url, call_id, raw=item)
        return ToneReceived(call_id, tone[0], tone[1], etag, raw=item)
    info = data.get("resultInfo")
    return CallStateChanged(
        call_id, canonical, etag, raw=item, result=None if info is None else _loose_result(info)
    )


def _tone(info: Any) -> tuple[int, str] | None:
    """(sequenceId, tone) of a ``toneInfo``; None when either is missing or unreadable."""
    if not isinstance(info, dict):
        return None
    sequence = _loose_code(info.get("sequenceId"))
    name = info.get("tone")
    if sequence is None or not isinstance(name, str):
        return None
    tone = _TONE_NAMES.get(name)
    if tone is None:
        tone = _TONE_NAMES.get(name.lower())
        if tone is None:
            return None
    return sequence, tone


def _loose_code(value: Any) -> int | None:
    """An integer sent as a number or a numeric string; None for anything else."""
    try:
        return _code(value, "")
    except _Bad:
        return None


def _loose_result(info: Any) -> ResultInfo | None:
    """A ``resultInfo`` read leniently: unreadable codes are None, a non-object is None."""
    if not isinstance(info, dict):
        return None
    code = _loose_code(info.get("code"))
    subcode = _loose_code(info.get("subcode"))
    message = info.get("message")
    message = _text(message) if isinstance(message, str) else None
    if code is None and subcode is None and message is None:
        return None
    return ResultInfo(code, subcode, message)


def _loose_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def _loose_text(data: Mapping[str, Any], key: str) -> str | None:
    """:func:`_loose_str` of a free-text field, cut at :data:`MAX_TEXT`."""
    value = data.get(key)
    return _text(value) if isinstance(value, str) and value else None


def operation_kind(odata_type: Any) -> str | None:
    """``#microsoft.graph.playPromptOperation`` -> ``playPrompt``; None when not a string."""
    if not isinstance(odata_type, str) or not odata_type:
        return None
    name = odata_type.removeprefix("#")
    if name[:16].lower() == "microsoft.graph.":
        name = name[16:]
    if name[-9:].lower() == "operation" and len(name) > 9:
        name = name[:-9]
    return name or None


@attrs.frozen
class OperationFields:
    """What a Graph ``commsOperation`` resource says, read leniently (wrong types are None).

    Read from an operation notification and from the reply to an action's POST alike.
    """

    operation_id: str | None
    kind: str | None
    status: str | None
    result: ResultInfo | None
    client_context: str | None
    completion_reason: str | None
    recording_location: str | None
    recording_access_token: str | None = attrs.field(repr=False)


def read_operation(data: Any) -> OperationFields | None:
    """Read a ``commsOperation`` object; None when ``data`` is not a JSON object."""
    if not isinstance(data, Mapping):
        return None
    status = data.get("status")
    if isinstance(status, str):
        status = (
            _OPERATION_STATUSES.get(status)
            or _OPERATION_STATUSES.get(status.lower())
            or _text(status)
        )
    else:
        status = None
    return OperationFields(
        _loose_str(data, "id"),
        operation_kind(data.get("@odata.type")),
        status,
        _loose_result(data.get("resultInfo")),
        _loose_text(data, "clientContext"),
        _loose_text(data, "completionReason"),
        _loose_str(data, "recordingLocation"),
        _loose_str(data, "recordingAccessToken"),
    )


def _finished(
    call_id: str, rest: str, data: dict[str, Any], item: dict[str, Any]
) -> OperationFinished | None:
    fields = read_operation(data)
    assert fields is not None
    operation_id = rest[12:].split("/", 1)[0] or fields.operation_id
    if not operation_id:
        return None
    return OperationFinished(
        call_id,
        operation_id,
        fields.kind,
        fields.status,
        fields.result,
        fields.client_context,
        fields.completion_reason,
        fields.recording_location,
        fields.recording_access_token,
        raw=item,
    )


def _etag(value: Any) -> int | None:
    """Read ``W/"4021"`` (or ``"4021"``) as 4021; anything else is None."""
    if not isinstance(value, str):
        return None
    if value[:2] in ("W/", "w/"):
        value = value[2:]
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1]
    if 0 < len(value) <= _MAX_INT_DIGITS and value.isascii() and value.isdigit():
        return int(value)
    return None


def _code(value: Any, where: str) -> int | None:
    """Read a result code sent as an integer or a numeric string."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        digits = value[1:] if value[:1] == "-" else value
        if 0 < len(digits) <= _MAX_INT_DIGITS and digits.isascii() and digits.isdigit():
            return int(value)
    raise _wrong(where, "an integer or a numeric string", value)


def _result(info: Any) -> ResultInfo | None:
    if info is None:
        return None
    if not isinstance(info, dict):
        raise _wrong("resultInfo", "an object", info)
    code = _code(info.get("code"), "resultInfo.code")
    subcode = _code(info.get("subcode"), "resultInfo.subcode")
    message = info.get("message")
    message = _text(message) if isinstance(message, str) else None
    if code is None and subcode is None and message is None:
        return None
    return ResultInfo(code, subcode, message)


def _identity_set(members: dict[str, Any]) -> tuple[Identity | None, tuple[Identity, ...]]:
    """Return the primary identity of an identitySet (None when it has none) and all of them."""
    primary: Identity | None = None
    best = _OTHER_RANK + 1
    found: list[Identity] = []
    for kind, value in members.items():
        if not isinstance(value, dict):
            if value is None or kind not in _RANK:
                continue  # @odata.type, endpointType and other scalar properties
            raise _wrong(kind, "an object", value)
        if kind[:1] == "@":
            continue
        ident_id = value.get("id")
        if ident_id is not None:
            if not isinstance(ident_id, str):
                raise _wrong(f"{kind}.id", "a string", ident_id)
            if len(ident_id) > MAX_ID:
                _bounded(ident_id, f"{kind}.id")
        tenant = value.get("tenantId")
        if tenant is not None:
            if not isinstance(tenant, str):
                raise _wrong(f"{kind}.tenantId", "a string", tenant)
            if len(tenant) > MAX_ID:
                _bounded(tenant, f"{kind}.tenantId")
            tenant = _intern(tenant)
        name = value.get("displayName")
        if not isinstance(name, str):
            name = None
        elif len(name) > MAX_TEXT:
            name = _text(name)
        elif kind in _APPS:
            name = _intern(name)
            if ident_id is not None:
                ident_id = _intern(ident_id)
        identity = Identity(_KIND_NAMES.get(kind, kind), ident_id, name, tenant)
        found.append(identity)
        rank = _RANK.get(kind, _OTHER_RANK)
        if rank < best:
            primary = identity
            best = rank
    return primary, tuple(found)


def _primary(container: dict[str, Any], key: str) -> Identity | None:
    """The primary identity of the optional identitySet ``container[key]``."""
    members = container.get(key)
    if members is None:
        return None
    if not isinstance(members, dict):
        raise _wrong(key, "an object", members)
    try:
        return _identity_set(members)[0]
    except _Bad as exc:
        exc.under(key)
        raise


def _participant(
    info: dict[str, Any],
    participant_id: str | None = None,
    is_muted: bool | None = None,
    is_in_lobby: bool | None = None,
) -> Participant:
    """Build a Participant from a participantInfo (or invitationParticipantInfo) object."""
    members = info.get("identity")
    if members is None:
        primary: Identity | None = None
        identities: tuple[Identity, ...] = ()
    elif isinstance(members, dict):
        try:
            primary, identities = _identity_set(members)
        except _Bad as exc:
            exc.under("identity")
            raise
    else:
        raise _wrong("identity", "an object", members)
    if participant_id is None:
        participant_id = info.get("id")
        if participant_id is None:
            participant_id = info.get("participantId")
            if participant_id is not None:
                if not isinstance(participant_id, str):
                    raise _wrong("participantId", "a string", participant_id)
                _bounded(participant_id, "participantId")
        elif not isinstance(participant_id, str):
            raise _wrong("id", "a string", participant_id)
        else:
            _bounded(participant_id, "id")
    endpoint = info.get("endpointType")
    region = info.get("region")
    language = info.get("languageId")
    return Participant(
        primary,
        identities,
        participant_id,
        _label(endpoint),
        _label(region),
        _label(language),
        is_muted,
        is_in_lobby,
    )


def _targets(targets: list[Any]) -> tuple[Participant, ...]:
    found: list[Participant] = []
    for index, target in enumerate(targets):
        if not isinstance(target, dict):
            raise _wrong(f"[{index}]", "an object", target)
        try:
            found.append(_participant(target))
        except _Bad as exc:
            exc.under(f"[{index}]")
            raise
    return tuple(found)


def _roster(entries: list[Any]) -> tuple[Participant, ...]:
    found: list[Participant] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _wrong(f"[{index}]", "an object", entry)
        try:
            participant_id = entry.get("id")
            if participant_id is not None:
                if not isinstance(participant_id, str):
                    raise _wrong("id", "a string", participant_id)
                _bounded(participant_id, "id")
            info = entry.get("info")
            if info is None:
                info = _EMPTY
            elif not isinstance(info, dict):
                raise _wrong("info", "an object", info)
            muted = entry.get("isMuted")
            lobby = entry.get("isInLobby")
            try:
                participant = _participant(
                    info,
                    participant_id,
                    muted if isinstance(muted, bool) else None,
                    lobby if isinstance(lobby, bool) else None,
                )
            except _Bad as exc:
                exc.under("info")
                raise
        except _Bad as exc:
            exc.under(f"[{index}]")
            raise
        found.append(participant)
    return tuple(found)


def _opt_str(container: dict[str, Any], key: str, limit: int = MAX_ID) -> str | None:
    value = container.get(key)
    if value is None:
        return value
    if isinstance(value, str):
        return _bounded(value, key, limit) if len(value) > limit else value
    raise _wrong(key, "a string", value)


def _meeting(info: dict[str, Any]) -> MeetingInfo | None:
    odata_type = info.get("@odata.type")
    if isinstance(odata_type, str):
        kind = _MEETING_KINDS.get(odata_type)
        if kind is None:
            short = odata_type.lower().removeprefix("#").removeprefix("microsoft.graph.")
            kind = _MEETING_KINDS.get(short)
            if kind is None:
                return None
    elif "joinMeetingId" in info:
        kind = _JOIN_ID
    elif "token" in info:
        kind = _TOKEN
    elif "organizer" in info:
        kind = _ORGANIZER
    else:
        return None
    if kind == _ORGANIZER:
        allow = info.get("allowConversationWithoutHost")
        return OrganizerMeetingInfo(
            _primary(info, "organizer"), allow if isinstance(allow, bool) else None
        )
    if kind == _TOKEN:
        return TokenMeetingInfo(_opt_str(info, "token", MAX_URL))
    return JoinMeetingIdMeetingInfo(_opt_str(info, "joinMeetingId"), _opt_str(info, "passcode"))


def _incoming(data: dict[str, Any], call_id: str, url: str | None, item: Any) -> IncomingCall:
    """Build an IncomingCall; errors are located relative to ``resourceData``."""
    tenant = data.get("tenantId")
    if tenant is not None:
        if not isinstance(tenant, str):
            raise _wrong("tenantId", "a string", tenant)
        if not _TENANT_OK(tenant):
            raise _Bad(
                "tenantId",
                f"{tenant[:40]!r} is not a tenant id; expected a GUID or a domain name of at "
                "most 256 characters",
            )
        tenant = _intern(tenant)
    callback = data.get("callbackUri")
    if callback is not None:
        if not isinstance(callback, str):
            raise _wrong("callbackUri", "a string", callback)
        callback = _intern(_bounded(callback, "callbackUri", MAX_URL))
    chain = _opt_str(data, "callChainId")
    mine = _opt_str(data, "myParticipantId")

    source_info = data.get("source")
    if source_info is None:
        source = None
        caller = _UNKNOWN_CALLER
    elif isinstance(source_info, dict):
        try:
            source = _participant(source_info)
        except _Bad as exc:
            exc.under("source")
            raise
        caller = source.identity or _UNKNOWN_CALLER
    else:
        raise _wrong("source", "an object", source_info)

    target_list = data.get("targets")
    if target_list is None:
        targets: tuple[Participant, ...] = ()
    elif isinstance(target_list, list):
        try:
            targets = _targets(target_list)
        except _Bad as exc:
            exc.under("targets")
            raise
    else:
        raise _wrong("targets", "an array of objects", target_list)

    if mine is not None and targets and targets[0].id == mine:
        mine = targets[0].id  # one string for the bot's own participant id

    requested = data.get("requestedModalities")
    if requested is None:
        modalities: tuple[str, ...] = ()
    elif isinstance(requested, list):
        names: list[str] = []
        for modality in requested:
            if not isinstance(modality, str):
                raise _wrong(f"requestedModalities[{len(names)}]", "a string", modality)
            canonical = _MODALITIES.get(modality)
            names.append(
                canonical
                if canonical is not None
                else _MODALITIES.get(modality.lower()) or _text(modality)
            )
        modalities = tuple(names)
    else:
        raise _wrong("requestedModalities", "an array of strings", requested)

    chat = data.get("chatInfo")
    chat_info: ChatInfo | None = None
    if chat is not None:
        if not isinstance(chat, dict):
            raise _wrong("chatInfo", "an object", chat)
        try:
            chat_info = ChatInfo(
                _opt_str(chat, "threadId"),
                _opt_str(chat, "messageId"),
                _opt_str(chat, "replyChainMessageId"),
            )
        except _Bad as exc:
            exc.under("chatInfo")
            raise

    meeting = data.get("meetingInfo")
    meeting_info: MeetingInfo | None = None
    if meeting is not None:
        if not isinstance(meeting, dict):
            raise _wrong("meetingInfo", "an object", meeting)
        try:
            meeting_info = _meeting(meeting)
        except _Bad as exc:
            exc.under("meetingInfo")
            raise

    context = data.get("incomingContext")
    incoming_context: IncomingContext | None = None
    if context is not None:
        if not isinstance(context, dict):
            raise _wrong("incomingContext", "an object", context)
        try:
            source_id = _opt_str(context, "sourceParticipantId")
            if source is not None and source_id is not None and source.id == source_id:
                source_id = source.id
            incoming_context = IncomingContext(
                source_id,
                _opt_str(context, "observedParticipantId"),
                _primary(context, "onBehalfOf"),
                _primary(context, "transferor"),
            )
        except _Bad as exc:
            exc.under("incomingContext")
            raise

    metadata = data.get("applicationMetadata")
    if metadata is None:
        policy = False
    elif isinstance(metadata, dict):
        policy = metadata.get("botData") is not None
    else:
        raise _wrong("applicationMetadata", "an object", metadata)

    # Positional arguments: measurably cheaper than keywords; the tests pin every field.
    return IncomingCall(
        call_id,
        tenant,
        caller,
        source,
        targets,
        chat_info,
        meeting_info,
        modalities,
        callback,
        chain,
        mine,
        incoming_context,
        policy,
        _etag(data.get("@odata.etag")),
        url,
        item,
    )


def read_call(data: Any) -> tuple[str | None, str | None, str | None, str | None]:
    """(id, state, myParticipantId, callChainId) of a ``call`` resource, read leniently."""
    if not isinstance(data, Mapping):
        return None, None, None, None
    state = _loose_str(data, "state")
    if state is not None:
        state = _STATES.get(state) or _STATES.get(state.lower()) or _text(state)
    return (
        _loose_str(data, "id"),
        state,
        _loose_str(data, "myParticipantId"),
        _loose_str(data, "callChainId"),
    )
