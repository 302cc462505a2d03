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

from callflow._parse.calls import read_call
from callflow._parse.fields import (
    CALL_ID_PATTERN,
    MAX_CALL_ID,
    MAX_ID,
    MAX_NOTIFICATIONS,
    MAX_TEXT,
    MAX_URL,
    TENANT_ID_PATTERN,
)
from callflow._parse.notifications import LazyItem, parse_notifications
from callflow._parse.operations import OperationFields, operation_kind, read_operation

__all__ = [
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
]
