"""Typed, frozen events built from Graph notifications.

Every event carries the ``call_id`` it belongs to and the notification item it came from as
``raw`` (excluded from ``repr`` and equality). Sequences are tuples.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, Literal, TypeAlias

import attrs

__all__ = [
    "CallAdopted",
    "CallEvent",
    "mask_phone",
    "canonical_call_id",
    "normalize_id",
    "OperationFinished",
    "ToneReceived",
    "TONES",
    "CallStateChanged",
    "CallTerminated",
    "ChatInfo",
    "Identity",
    "IdentityKind",
    "IncomingCall",
    "IncomingContext",
    "JoinMeetingIdMeetingInfo",
    "MeetingInfo",
    "OrganizerMeetingInfo",
    "Participant",
    "ParticipantsUpdated",
    "ResultInfo",
    "TokenMeetingInfo",
    "UnknownNotification",
]


def mask_phone(number: str) -> str:
    """``+14255550123`` -> ``+1425*****23``: enough to tell numbers apart in logs, no more."""
    if len(number) <= 6:
        return "*" * len(number)
    return number[:5] + "*" * (len(number) - 7) + number[-2:]


def normalize_id(value: str) -> str:
    """The form of a Graph id used to match ids: lowercase, without dashes or braces.

    Graph names the same call ``57dab8b1-894c-409a-b240-bd8beae78896`` in API responses and
    ``57DAB8B1894C409AB240BD8BEAE78896`` in some ``resourceUrl`` values; both normalise to
    ``57dab8b1894c409ab240bd8beae78896``. Every correlation of calls and operations goes
    through this function.
    """
    return value.translate(_ID_NOISE).lower()


_ID_NOISE = str.maketrans("", "", "-{}")
_BRACES = str.maketrans("", "", "{}")
_CANONICAL_GUID: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
).fullmatch
_HEX32: Final = re.compile(r"[0-9a-f]{32}").fullmatch


def canonical_call_id(value: str) -> str:
    """The one spelling of a call id that every per-call structure is keyed on.

    Graph writes the same call ``57dab8b1-894c-409a-b240-bd8beae78896`` in API replies and
    ``57DAB8B1894C409AB240BD8BEAE78896`` (or in braces) in some ``resourceUrl`` values. The
    canonical form is lower case, without braces, and a GUID (32 hex digits, with dashes
    anywhere or none) is dashed 8-4-4-4-12. The parser gives every event its call id in this
    form; ids that come from elsewhere (a bot's own code, Graph's replies) are brought to it
    where they enter.
    """
    if _CANONICAL_GUID(value):
        return value
    bare = value.translate(_BRACES).lower()
    compact = bare.replace("-", "")
    if len(compact) == 32 and _HEX32(compact):
        return f"{compact[:8]}-{compact[8:12]}-{compact[12:16]}-{compact[16:20]}-{compact[20:]}"
    return bare


TONES = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "#", "A", "B", "C", "D", "flash")
"""The DTMF tones callflow names: digits, ``*``, ``#``, ``A``-``D`` and ``flash``."""


IdentityKind: TypeAlias = Literal[
    "user",
    "phone",
    "guest",
    "application",
    "applicationInstance",
    "azureCommunicationServicesUser",
    "onPremises",
    "encrypted",
    "unknown",
]
"""The identitySet members callflow names (``unknown``: a caller Graph named no one for)."""


@attrs.frozen(repr=False)
class Identity:
    """One identity of an identitySet: who a participant is.

    ``kind`` is the identitySet member it came from: one of :data:`IdentityKind` (``user``,
    ``phone``, ``guest``, ``application``, ``applicationInstance``, ...). A member Graph
    adds later comes through under its own name (compare it as a ``str``). For a phone
    caller ``id`` is the number. ``display_name`` is personal data: it is left out of
    ``repr``.
    """

    kind: IdentityKind
    id: str | None = attrs.field(default=None, repr=False)
    display_name: str | None = attrs.field(default=None, repr=False)
    tenant_id: str | None = None

    def __repr__(self) -> str:
        # A phone caller's id is their number: personal data, masked like display names.
        shown = mask_phone(self.id) if self.kind == "phone" and self.id else self.id
        return f"Identity(kind={self.kind!r}, id={shown!r}, tenant_id={self.tenant_id!r})"

    @property
    def user_id(self) -> str | None:
        """The Entra user id when this identity is a Teams user, else None."""
        return self.id if self.kind == "user" else None

    @property
    def phone_number(self) -> str | None:
        """The E.164 number when this identity is a phone caller, else None."""
        return self.id if self.kind == "phone" else None


@attrs.frozen
class Participant:
    """A participant of a call: the caller (``source``), an invited target, or a roster entry.

    ``identity`` is the primary identity of the participant's identitySet; ``identities``
    holds all of them (an identitySet may carry, say, both a user and an application).
    """

    identity: Identity | None = None
    identities: tuple[Identity, ...] = ()
    id: str | None = None
    endpoint_type: str | None = None
    region: str | None = None
    language_id: str | None = None
    is_muted: bool | None = None
    is_in_lobby: bool | None = None


@attrs.frozen
class ChatInfo:
    """The Teams chat (meeting or channel thread) a group call belongs to."""

    thread_id: str | None = None
    message_id: str | None = None
    reply_chain_message_id: str | None = None


@attrs.frozen
class OrganizerMeetingInfo:
    """A meeting identified by its organizer."""

    organizer: Identity | None = None
    allow_conversation_without_host: bool | None = None


@attrs.frozen
class TokenMeetingInfo:
    """A meeting identified by an opaque token (channel meetings)."""

    token: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class JoinMeetingIdMeetingInfo:
    """A meeting identified by its numeric join id and passcode."""

    join_meeting_id: str | None = None
    passcode: str | None = attrs.field(default=None, repr=False)


MeetingInfo: TypeAlias = OrganizerMeetingInfo | TokenMeetingInfo | JoinMeetingIdMeetingInfo


@attrs.frozen
class IncomingContext:
    """Why the bot is being called: on whose behalf, transferred by whom."""

    source_participant_id: str | None = None
    observed_participant_id: str | None = None
    on_behalf_of: Identity | None = None
    transferor: Identity | None = None


@attrs.frozen
class ResultInfo:
    """Why a call ended: Graph's ``resultInfo`` with numeric ``code`` and ``subcode``."""

    code: int | None = None
    subcode: int | None = None
    message: str | None = None


@attrs.frozen
class IncomingCall:
    """Someone is calling the bot, or inviting it to a group call or meeting.

    It must be answered, rejected or redirected before the platform's timeout: 15 s, or 5 s
    when ``is_policy_recording`` (a compliance-recording invite).
    """

    call_id: str
    tenant_id: str | None
    caller: Identity
    source: Participant | None = None
    targets: tuple[Participant, ...] = ()
    chat_info: ChatInfo | None = None
    meeting_info: MeetingInfo | None = None
    modalities: tuple[str, ...] = ()
    callback_uri: str | None = None
    call_chain_id: str | None = None
    my_participant_id: str | None = None
    incoming_context: IncomingContext | None = None
    is_policy_recording: bool = False
    etag: int | None = None
    resource_url: str | None = None
    raw: Mapping[str, Any] = attrs.field(repr=False, eq=False, factory=dict)
    """The notification item (read-only; decoded from the body again on first access)."""

    @property
    def is_group_call(self) -> bool:
        """True for a group call or meeting invitation (the call carries chat or meeting info)."""
        return self.chat_info is not None or self.meeting_info is not None


@attrs.frozen
class CallStateChanged:
    """A call moved to a new state (``establishing``, ``established``, ``hold``, ...).

    ``result`` is the ``resultInfo`` Graph sent with the state, if any (a failed transfer
    brings the call back to ``established`` with one).
    """

    call_id: str
    state: str
    etag: int | None = None
    raw: dict[str, Any] = attrs.field(repr=False, eq=False, factory=dict)
    result: ResultInfo | None = None


@attrs.frozen
class CallTerminated:
    """A call ended; ``result`` says why when Graph tells (it may send nothing after a reject)."""

    call_id: str
    result: ResultInfo | None = None
    raw: dict[str, Any] = attrs.field(repr=False, eq=False, factory=dict)


@attrs.frozen
class ParticipantsUpdated:
    """The roster of a call changed; ``participants`` is the roster Graph sent."""

    call_id: str
    participants: tuple[Participant, ...] = ()
    raw: dict[str, Any] = attrs.field(repr=False, eq=False, factory=dict)


@attrs.frozen
class ToneReceived:
    """The caller pressed a key: one DTMF tone (``toneInfo``) of a call.

    Graph sends one notification per key press once the bot subscribed to tones.
    ``tone`` is one of :data:`TONES` (Graph's ``tone5`` is ``"5"``, ``star`` is ``"*"``,
    ``pound`` is ``"#"``); ``sequence_id`` orders the tones of a call (notifications may
    arrive out of order, and twice).
    """

    call_id: str
    sequence_id: int
    tone: str
    etag: int | None = None
    raw: dict[str, Any] = attrs.field(repr=False, eq=False, factory=dict)


@attrs.frozen
class OperationFinished:
    """A call-control operation (play prompt, record, send tones, invite, ...) has ended.

    Graph reports it as a ``deleted`` notification on
    ``/communications/calls/{call_id}/operations/{operation_id}``. ``kind`` is the operation
    type without its namespace and suffix (``playPrompt``, ``record``, ``subscribeToTone``,
    ``sendDtmfTones``, ``cancelMediaProcessing``, ``inviteParticipants``,
    ``muteParticipant``, ...; None when Graph did not say). ``status`` is ``completed`` or
    ``failed`` (other values are kept as sent); ``client_context`` echoes what the bot sent.
    A recording comes with ``recording_location`` and ``recording_access_token`` (a secret:
    left out of ``repr``, never logged).
    """

    call_id: str
    operation_id: str
    kind: str | None = None
    status: str | None = None
    result: ResultInfo | None = None
    client_context: str | None = None
    completion_reason: str | None = None
    recording_location: str | None = None
    recording_access_token: str | None = attrs.field(default=None, repr=False)
    raw: dict[str, Any] = attrs.field(repr=False, eq=False, factory=dict)


@attrs.frozen
class UnknownNotification:
    """A notification of a shape callflow does not model (operations, unknown resources)."""

    change_type: str
    resource_url: str | None
    call_id: str | None = None
    raw: dict[str, Any] = attrs.field(repr=False, eq=False, factory=dict)


@attrs.frozen
class CallAdopted:
    """This worker took over a call another worker of the fleet answered and lost.

    Delivered once per adoption, fleet-wide, to ``@bot.on(CallAdopted)`` observers, which
    run like flows (see ``Answer(then=...)``): they may await operations on ``ctx.call``
    for the rest of the call. ``memo`` is the last mapping the call's flow remembered
    (``await call.remember({...})``; empty when it remembered nothing), ``previous_owner``
    the instance id of the worker that held the call, ``reason`` ``"owner_lost"`` (its
    heartbeat lapsed) or ``"handed_off"`` (it stopped gracefully and handed its calls to the
    fleet), and ``lost_for`` how many seconds passed since the owner was lost (None when
    this worker cannot tell). Operations that were in flight on the lost worker are not
    resumed; their late results reach ``OperationFinished`` observers here.
    """

    call_id: str
    tenant_id: str | None
    memo: Mapping[str, Any] = attrs.field(factory=dict)
    previous_owner: str = ""
    reason: str = "owner_lost"
    lost_for: float | None = None
    raw: dict[str, Any] = attrs.field(repr=False, eq=False, factory=dict)
    """Empty: no notification carries an adoption (there for uniformity with the others)."""


CallEvent: TypeAlias = (
    IncomingCall
    | CallStateChanged
    | CallTerminated
    | ParticipantsUpdated
    | ToneReceived
    | OperationFinished
    | UnknownNotification
    | CallAdopted
)
