"""Call-control requests after the answer, and the Graph request bodies they render.

Each request is a frozen, validated value; bad fields fail at construction with an
:class:`~callflow.errors.ActionError` naming the field and what was expected. ``to_graph()``
renders the exact JSON body Graph expects (camelCase keys, ``@odata.type`` on polymorphic
objects, lists rather than tuples, optional keys left out). Together with
:mod:`callflow.decisions` this is the only place that knows Graph's field names on the way out.

Actions on a call (``POST /communications/calls/{id}/{action}``): :class:`PlayPrompt`,
:class:`RecordResponse`, :class:`SendTones`, :class:`Transfer`, :class:`Invite`,
:class:`UpdateRecordingStatus`; ``subscribeToTone``, ``cancelMediaProcessing``, ``mute`` and
``unmute`` have no fields but the client context (:func:`context_body`). New calls
(``POST /communications/calls``): :class:`OutgoingCall` and :class:`JoinMeeting`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Final
from urllib.parse import parse_qs, unquote, urlsplit

import attrs

from callflow.decisions import MediaPrompt, Prompt, Target
from callflow.errors import ActionError
from callflow.events import TONES

__all__ = [
    "MAX_CLIENT_CONTEXT",
    "RECORDING_STATUSES",
    "Invite",
    "JoinMeeting",
    "MeetingJoinInfo",
    "OutgoingCall",
    "PlayPrompt",
    "RecordResponse",
    "SendTones",
    "Transfer",
    "UpdateRecordingStatus",
    "context_body",
    "parse_join_url",
    "prompt_names",
]

MAX_CLIENT_CONTEXT: Final = 256
"""Graph's limit on ``clientContext``, in characters."""
RECORDING_STATUSES: Final = ("notRecording", "recording", "failed")
"""The values of ``updateRecordingStatus``'s ``status``."""

_MEDIA_PROMPT: Final = "#microsoft.graph.mediaPrompt"
_SERVICE_MEDIA: Final = "#microsoft.graph.serviceHostedMediaConfig"
_PARTICIPANT_INFO: Final = "#microsoft.graph.participantInfo"
_CALL: Final = "#microsoft.graph.call"
_CHAT_INFO: Final = "#microsoft.graph.chatInfo"
_ORGANIZER_MEETING: Final = "#microsoft.graph.organizerMeetingInfo"
_IDENTITY_SET: Final = "#microsoft.graph.identitySet"
_IDENTITY: Final = "#microsoft.graph.identity"
_MAX_PROMPTS: Final = 20
_MAX_INVITEES: Final = 5
_MAX_TARGETS: Final = 25
_SECONDS: Final = (1, 120)
_MAX_TONE_DELAY_MS: Final = 10_000
#: callflow's tone names -> Graph's tone enum (sendDtmfTones).
_GRAPH_TONES: Final = {
    **{str(d): f"tone{d}" for d in range(10)},
    "*": "star",
    "#": "pound",
    **{letter: letter.lower() for letter in "ABCD"},
    "flash": "flash",
}
_TONE_ALIASES: Final = {
    **{tone.lower(): tone for tone in TONES},
    **{graph: tone for tone, graph in _GRAPH_TONES.items()},
}
_MODALITIES: Final = {m.lower(): m for m in ("audio", "video", "videoBasedScreenSharing")}


def context_body(client_context: str) -> dict[str, Any]:
    """The body of the actions that take only a client context (subscribeToTone, mute, ...)."""
    return {"clientContext": _context(client_context)}


def _context(value: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CLIENT_CONTEXT:
        raise ActionError(
            f"clientContext must be a string of 1 to {MAX_CLIENT_CONTEXT} characters, got "
            f"{value!r:.80}"
        )
    return value


def _tuple(value: object, single: type, field: str, what: str) -> tuple[Any, ...]:
    if isinstance(value, single):
        return (value,)
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise ActionError(f"{field} must be a {what} or a sequence of them, got {value!r}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, single):
            raise ActionError(f"{field} must contain only {what} values, got {item!r}")
    return items


def _tone(value: object, field: str) -> str:
    tone = _TONE_ALIASES.get(value.lower()) if isinstance(value, str) else None
    if tone is None:
        raise ActionError(f"{field} must hold DTMF tones ({', '.join(TONES)}), got {value!r}")
    return tone


def _tones(value: str | Iterable[str], field: str) -> tuple[str, ...]:
    """``"12#"`` or ``["1", "2", "#"]`` (or Graph's names) as a tuple of callflow tone names."""
    if isinstance(value, str):
        if value.lower() in _TONE_ALIASES:
            return (_TONE_ALIASES[value.lower()],)
        return tuple(_tone(char, field) for char in value)
    if not isinstance(value, Iterable):
        raise ActionError(f"{field} must be a string of tones or a sequence of tones")
    return tuple(_tone(item, field) for item in value)


def _seconds(field: str, value: object) -> None:
    low, high = _SECONDS
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ActionError(f"{field} must be whole seconds from {low} to {high}, got {value!r}")


def _flag(field: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ActionError(f"{field} must be True or False, got {value!r}")


def _prompt_json(prompt: Prompt) -> dict[str, Any]:
    if not isinstance(prompt, MediaPrompt):
        raise ActionError(
            "a Say or Ssml prompt must be rendered before the request is sent (it is, through "
            "call.play; set CALLFLOW_SPEECH_REGION or CALLFLOW_SPEECH_ENDPOINT)"
        )
    return {"@odata.type": _MEDIA_PROMPT, "mediaInfo": prompt.to_graph()}


def _participant_info(target: Target) -> dict[str, Any]:
    """A Graph ``participantInfo`` naming ``target`` (the transferee, a call's source)."""
    return {"@odata.type": _PARTICIPANT_INFO, "identity": target.to_graph()["identity"]}


def _media_config(prefetch: tuple[MediaPrompt, ...]) -> dict[str, Any]:
    media: dict[str, Any] = {"@odata.type": _SERVICE_MEDIA}
    if prefetch:
        media["preFetchMedia"] = [prompt.to_graph() for prompt in prefetch]
    return media


def _modalities(value: str | Iterable[str], field: str) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    if not items:
        raise ActionError(f"{field} must name at least one of {', '.join(_MODALITIES.values())}")
    found = []
    for item in items:
        name = _MODALITIES.get(item.lower()) if isinstance(item, str) else None
        if name is None or name in found:
            raise ActionError(
                f"{field} must hold distinct values from {', '.join(_MODALITIES.values())}, "
                f"got {item!r}"
            )
        found.append(name)
    return tuple(found)


def _callback(own: str | None, default: str | None, what: str) -> str:
    callback = own if own is not None else default
    if callback is None:
        raise ActionError(
            f"{what} needs a callbackUri (Graph requires one): set callback_uri or configure "
            "the client's callback URL, an https URL"
        )
    if urlsplit(callback).scheme != "https":
        raise ActionError(f"{what}.callback_uri must be an https URL, got {callback!r}")
    return callback


# --- actions on a call ---------------------------------------------------------------------


def _to_prompts(value: Prompt | Iterable[Prompt]) -> tuple[Prompt, ...]:
    return _tuple(value, Prompt, "PlayPrompt.prompts", "MediaPrompt, Say or Ssml")  # type: ignore[arg-type]


def _check_prompts(instance: PlayPrompt, attribute: Any, value: tuple[Prompt, ...]) -> None:
    if not 1 <= len(value) <= _MAX_PROMPTS:
        raise ActionError(
            f"PlayPrompt.prompts must hold 1 to {_MAX_PROMPTS} prompts, got {len(value)}"
        )


def prompt_names(prompts: Iterable[Prompt]) -> tuple[str, ...]:
    """How log lines name prompts: each one's ``resource_id``, else its URI's file name; a
    spoken prompt is ``say`` or ``ssml`` (its text can be personal: never logged)."""
    return tuple(_prompt_name(p) for p in prompts)


def _prompt_name(p: Prompt) -> str:
    if not isinstance(p, MediaPrompt):
        return type(p).__name__.lower()
    return p.resource_id or p.uri.rsplit("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


@attrs.frozen
class PlayPrompt:
    """Play one or more prompts to the call (``POST .../playPrompt``), one after the other.

    A lone :class:`~callflow.MediaPrompt` is accepted; at most 20. Graph plays only WAV
    files (mono, 16-bit, 16 kHz) from https URLs.
    """

    action: ClassVar[str] = "playPrompt"

    prompts: tuple[Prompt, ...] = attrs.field(converter=_to_prompts, validator=_check_prompts)

    def to_graph(self, client_context: str) -> dict[str, Any]:
        """Render the body of ``POST /communications/calls/{id}/playPrompt``."""
        return {
            "clientContext": _context(client_context),
            "prompts": [_prompt_json(prompt) for prompt in self.prompts],
        }


def _to_stop_tones(value: str | Iterable[str]) -> tuple[str, ...]:
    tones = _tones(value, "RecordResponse.stop_tones")
    if "flash" in tones:
        raise ActionError("RecordResponse.stop_tones must not hold 'flash'")
    return tones


def _check_optional_prompt(instance: object, attribute: Any, value: object) -> None:
    if value is not None and not isinstance(value, Prompt):
        raise ActionError(
            f"RecordResponse.prompt must be a MediaPrompt, Say, Ssml or None, got {value!r}"
        )


@attrs.frozen
class RecordResponse:
    """Record what the caller says (``POST .../recordResponse``), up to two minutes.

    ``prompt`` plays first (``barge_in_allowed`` lets the caller speak over it). Recording
    stops at a ``stop_tones`` key, after ``max_silence_timeout`` seconds of silence, after
    ``max_duration`` seconds, or when nothing was said for ``initial_silence_timeout``
    seconds; each is 1 to 120 whole seconds. ``play_beep`` beeps before recording.
    """

    action: ClassVar[str] = "recordResponse"

    prompt: Prompt | None = attrs.field(default=None, validator=_check_optional_prompt)
    barge_in_allowed: bool = False
    initial_silence_timeout: int = 5
    max_silence_timeout: int = 5
    max_duration: int = 60
    play_beep: bool = True
    stop_tones: tuple[str, ...] = attrs.field(default=("#",), converter=_to_stop_tones)

    def __attrs_post_init__(self) -> None:
        _flag("RecordResponse.barge_in_allowed", self.barge_in_allowed)
        _flag("RecordResponse.play_beep", self.play_beep)
        for name in ("initial_silence_timeout", "max_silence_timeout", "max_duration"):
            _seconds(f"RecordResponse.{name}", getattr(self, name))

    def to_graph(self, client_context: str) -> dict[str, Any]:
        """Render the body of ``POST /communications/calls/{id}/recordResponse``."""
        return {
            "clientContext": _context(client_context),
            "prompts": [] if self.prompt is None else [_prompt_json(self.prompt)],
            "bargeInAllowed": self.barge_in_allowed,
            "initialSilenceTimeoutInSeconds": self.initial_silence_timeout,
            "maxSilenceTimeoutInSeconds": self.max_silence_timeout,
            "maxRecordDurationInSeconds": self.max_duration,
            "playBeep": self.play_beep,
            "stopTones": list(self.stop_tones),
        }


def _to_send_tones(value: str | Iterable[str]) -> tuple[str, ...]:
    tones = _tones(value, "SendTones.tones")
    if not tones:
        raise ActionError("SendTones.tones must hold at least one tone")
    return tones


def _check_delay(instance: object, attribute: Any, value: object) -> None:
    if value is not None and (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not 0 <= value <= _MAX_TONE_DELAY_MS
    ):
        raise ActionError(
            f"SendTones.delay_between_tones_ms must be 0 to {_MAX_TONE_DELAY_MS} or None, "
            f"got {value!r}"
        )


@attrs.frozen
class SendTones:
    """Send DTMF tones into the call (``POST .../sendDtmfTones``): ``"123#"`` or a sequence."""

    action: ClassVar[str] = "sendDtmfTones"

    tones: tuple[str, ...] = attrs.field(converter=_to_send_tones)
    delay_between_tones_ms: int | None = attrs.field(default=None, validator=_check_delay)

    def to_graph(self, client_context: str) -> dict[str, Any]:
        """Render the body of ``POST /communications/calls/{id}/sendDtmfTones``."""
        body: dict[str, Any] = {
            "clientContext": _context(client_context),
            "tones": [_GRAPH_TONES[tone] for tone in self.tones],
        }
        if self.delay_between_tones_ms is not None:
            body["delayBetweenTonesMs"] = self.delay_between_tones_ms
        return body


def _check_status(instance: object, attribute: Any, value: Any) -> None:
    if value not in RECORDING_STATUSES:
        raise ActionError(
            f"UpdateRecordingStatus.status must be one of {', '.join(RECORDING_STATUSES)}, "
            f"got {value!r}"
        )


@attrs.frozen
class UpdateRecordingStatus:
    """Tell Graph whether the bot records the call (``POST .../updateRecordingStatus``)."""

    action: ClassVar[str] = "updateRecordingStatus"

    status: str = attrs.field(validator=_check_status)

    def to_graph(self, client_context: str) -> dict[str, Any]:
        """Render the body of ``POST /communications/calls/{id}/updateRecordingStatus``."""
        return {"clientContext": _context(client_context), "status": self.status}


def _to_invitees(value: Target | Iterable[Target]) -> tuple[Target, ...]:
    return _tuple(value, Target, "Invite.participants", "Target")


def _check_invitees(instance: object, attribute: Any, value: tuple[Target, ...]) -> None:
    if not 1 <= len(value) <= _MAX_INVITEES:
        raise ActionError(
            f"Invite.participants must hold 1 to {_MAX_INVITEES} targets, got {len(value)}"
        )


@attrs.frozen
class Invite:
    """Invite participants into a group call (``POST .../participants/invite``), 1 to 5."""

    action: ClassVar[str] = "participants/invite"

    participants: tuple[Target, ...] = attrs.field(
        converter=_to_invitees, validator=_check_invitees
    )

    def to_graph(self, client_context: str) -> dict[str, Any]:
        """Render the body of ``POST /communications/calls/{id}/participants/invite``."""
        return {
            "clientContext": _context(client_context),
            "participants": [target.to_graph() for target in self.participants],
        }


def _check_target(instance: object, attribute: Any, value: Any) -> None:
    if not isinstance(value, Target):
        raise ActionError(f"Transfer.{attribute.name} must be a Target, got {value!r}")


def _check_optional_target(instance: object, attribute: Any, value: object) -> None:
    if value is not None:
        _check_target(instance, attribute, value)


def _check_optional_id(instance: object, attribute: Any, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ActionError(f"Transfer.{attribute.name} must be a non-empty string, got {value!r}")


@attrs.frozen
class Transfer:
    """Transfer the call to ``target`` (``POST .../transfer``).

    ``transferee`` (group calls only) is the participant to transfer; ``replaces_call_id``
    makes it a consultative transfer onto an existing call of the target.
    """

    action: ClassVar[str] = "transfer"

    target: Target = attrs.field(validator=_check_target)
    transferee: Target | None = attrs.field(default=None, validator=_check_optional_target)
    replaces_call_id: str | None = attrs.field(default=None, validator=_check_optional_id)

    def to_graph(self, client_context: str) -> dict[str, Any]:
        """Render the body of ``POST /communications/calls/{id}/transfer``."""
        target = self.target.to_graph()
        if self.replaces_call_id is not None:
            target["replacesCallId"] = self.replaces_call_id
        body: dict[str, Any] = {"clientContext": _context(client_context), "transferTarget": target}
        if self.transferee is not None:
            body["transferee"] = _participant_info(self.transferee)
        return body


# --- new calls -----------------------------------------------------------------------------


def _to_targets(value: Target | Iterable[Target]) -> tuple[Target, ...]:
    return _tuple(value, Target, "OutgoingCall.targets", "Target")


def _check_targets(instance: object, attribute: Any, value: tuple[Target, ...]) -> None:
    if not 1 <= len(value) <= _MAX_TARGETS:
        raise ActionError(
            f"OutgoingCall.targets must hold 1 to {_MAX_TARGETS} targets, got {len(value)}"
        )


def _to_prefetch(value: MediaPrompt | Iterable[MediaPrompt]) -> tuple[MediaPrompt, ...]:
    return _tuple(value, MediaPrompt, "prefetch", "MediaPrompt")


def _to_call_modalities(value: str | Iterable[str]) -> tuple[str, ...]:
    return _modalities(value, "modalities")


def _check_optional_text(instance: object, attribute: Any, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ActionError(
            f"{type(instance).__name__}.{attribute.name} must be a non-empty string, got {value!r}"
        )


@attrs.frozen
class OutgoingCall:
    """Call someone (``POST /communications/calls``): a Teams user, a bot or a phone number.

    ``targets`` are invited (a lone :class:`~callflow.Target` is accepted). Calling a phone
    number needs ``source``: the bot's application instance (resource account) with a
    number. Media is service-hosted; ``prefetch`` prompts are fetched ahead of time.
    """

    targets: tuple[Target, ...] = attrs.field(converter=_to_targets, validator=_check_targets)
    source: Target | None = attrs.field(default=None, validator=_check_optional_target)
    modalities: tuple[str, ...] = attrs.field(default=("audio",), converter=_to_call_modalities)
    prefetch: tuple[MediaPrompt, ...] = attrs.field(default=(), converter=_to_prefetch)
    callback_uri: str | None = attrs.field(default=None, validator=_check_optional_text)
    tenant_id: str | None = attrs.field(default=None, validator=_check_optional_text)

    def to_graph(self, default_callback_uri: str | None = None) -> dict[str, Any]:
        """Render the body of ``POST /communications/calls`` for this call."""
        body: dict[str, Any] = {
            "@odata.type": _CALL,
            "callbackUri": _callback(self.callback_uri, default_callback_uri, "OutgoingCall"),
            "targets": [target.to_graph() for target in self.targets],
            "requestedModalities": list(self.modalities),
            "mediaConfig": _media_config(self.prefetch),
        }
        if self.source is not None:
            body["source"] = _participant_info(self.source)
        if self.tenant_id is not None:
            body["tenantId"] = self.tenant_id
        return body


@attrs.frozen
class MeetingJoinInfo:
    """What a Teams meeting join link says: the chat thread, the organizer and the tenant."""

    thread_id: str
    message_id: str
    tenant_id: str
    organizer_id: str
    reply_chain_message_id: str | None = None


def parse_join_url(join_web_url: str) -> MeetingJoinInfo:
    """Read a Teams join link (``https://teams.microsoft.com/l/meetup-join/19%3a...``).

    The thread id and message id are the two path segments after ``meetup-join``; the
    ``context`` query parameter is JSON with the tenant (``Tid``), the organizer (``Oid``)
    and, for channel meetings, ``MessageId``. Raises ActionError saying what is missing.
    """
    expected = (
        "expected a Teams join link like https://teams.microsoft.com/l/meetup-join/"
        "19%3ameeting_...%40thread.v2/0?context=%7b%22Tid%22%3a...%2c%22Oid%22%3a...%7d"
    )
    if not isinstance(join_web_url, str):
        raise ActionError(f"join_web_url must be a string; {expected}")
    parts = urlsplit(join_web_url)
    segments = parts.path.split("/")
    try:
        index = [s.lower() for s in segments].index("meetup-join")
        thread_id = unquote(segments[index + 1])
        message_id = unquote(segments[index + 2])
    except (ValueError, IndexError):
        raise ActionError(
            f"join_web_url has no meetup-join/<thread>/<message> path; {expected}"
        ) from None
    if parts.scheme != "https" or not thread_id or not message_id:
        raise ActionError(f"join_web_url is not an https link with a thread id; {expected}")
    contexts = parse_qs(parts.query).get("context")
    try:
        context = json.loads(contexts[0]) if contexts else None
    except ValueError:
        context = None
    if not isinstance(context, dict):
        raise ActionError(f"join_web_url has no JSON context parameter; {expected}")
    tenant = context.get("Tid")
    organizer = context.get("Oid")
    if not isinstance(tenant, str) or not tenant or not isinstance(organizer, str) or not organizer:
        raise ActionError(f"join_web_url's context must name Tid and Oid; {expected}")
    reply_chain = context.get("MessageId")
    return MeetingJoinInfo(
        thread_id,
        message_id,
        tenant,
        organizer,
        reply_chain if isinstance(reply_chain, str) and reply_chain else None,
    )


def _to_join_info(value: str | MeetingJoinInfo) -> MeetingJoinInfo:
    return value if isinstance(value, MeetingJoinInfo) else parse_join_url(value)


@attrs.frozen
class JoinMeeting:
    """Join a Teams meeting (``POST /communications/calls`` with chat and meeting info).

    ``meeting`` is the meeting's join link (or a :class:`MeetingJoinInfo` read from one).
    """

    meeting: MeetingJoinInfo = attrs.field(converter=_to_join_info)
    modalities: tuple[str, ...] = attrs.field(default=("audio",), converter=_to_call_modalities)
    prefetch: tuple[MediaPrompt, ...] = attrs.field(default=(), converter=_to_prefetch)
    callback_uri: str | None = attrs.field(default=None, validator=_check_optional_text)
    allow_conversation_without_host: bool = True

    def to_graph(self, default_callback_uri: str | None = None) -> dict[str, Any]:
        """Render the body of ``POST /communications/calls`` that joins the meeting."""
        meeting = self.meeting
        chat: dict[str, Any] = {
            "@odata.type": _CHAT_INFO,
            "threadId": meeting.thread_id,
            "messageId": meeting.message_id,
        }
        if meeting.reply_chain_message_id is not None:
            chat["replyChainMessageId"] = meeting.reply_chain_message_id
        organizer = {
            "@odata.type": _IDENTITY_SET,
            "user": {
                "@odata.type": _IDENTITY,
                "id": meeting.organizer_id,
                "tenantId": meeting.tenant_id,
            },
        }
        return {
            "@odata.type": _CALL,
            "callbackUri": _callback(self.callback_uri, default_callback_uri, "JoinMeeting"),
            "requestedModalities": list(self.modalities),
            "mediaConfig": _media_config(self.prefetch),
            "chatInfo": chat,
            "meetingInfo": {
                "@odata.type": _ORGANIZER_MEETING,
                "organizer": organizer,
                "allowConversationWithoutHost": self.allow_conversation_without_host,
            },
            "tenantId": meeting.tenant_id,
        }
