"""The incoming call: identity sets, participants, targets, meeting and chat info.

Part of :mod:`callflow._parse`; no loop, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from callflow._parse.fields import (
    _EMPTY,
    _STATES,
    _TENANT_OK,
    MAX_ID,
    MAX_TEXT,
    MAX_URL,
    _Bad,
    _bounded,
    _canonical,
    _etag,
    _intern,
    _label,
    _loose_str,
    _opt_str,
    _text,
    _wrong,
)
from callflow.events import (
    ChatInfo,
    Identity,
    IncomingCall,
    IncomingContext,
    JoinMeetingIdMeetingInfo,
    MeetingInfo,
    OrganizerMeetingInfo,
    Participant,
    TokenMeetingInfo,
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


_UNKNOWN_CALLER: Final = Identity(kind="unknown")


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
        # A member Graph adds later keeps its own name (IdentityKind lists the known ones).
        kind_name = _KIND_NAMES.get(kind, kind)
        identity = Identity(kind_name, ident_id, name, tenant)  # type: ignore[arg-type]
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
