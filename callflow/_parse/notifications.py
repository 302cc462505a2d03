"""Notifications in: the body, its items, and which event each item becomes.

Part of :mod:`callflow._parse`; no loop, no I/O.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, Final

from callflow._parse.calls import _incoming, _roster
from callflow._parse.fields import (
    _CHANGE_TYPES,
    _NO_CALL_ID,
    _STATES,
    MAX_NOTIFICATIONS,
    MAX_URL,
    _Bad,
    _bounded,
    _checked_call_id,
    _etag,
    _loose_result,
    _result,
    _text,
    _tone,
    _type_name,
    _wrong,
)
from callflow._parse.operations import _finished
from callflow.errors import NotificationFormatError, NotificationLimitError
from callflow.events import (
    CallEvent,
    CallStateChanged,
    CallTerminated,
    ParticipantsUpdated,
    ToneReceived,
    UnknownNotification,
)

_KIND_OTHER: Final = 0


_KIND_CALL: Final = 1


_KIND_PARTICIPANTS: Final = 2


_KIND_OPERATION: Final = 3


# Errors that only non-JSON input (a Mapping with odd keys or values) can provoke.
_UNEXPECTED: Final = (TypeError, AttributeError, KeyError, IndexError, ValueError, RecursionError)


_EXPECTED_BODY: Final = "expected a Graph commsNotifications JSON document"


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
