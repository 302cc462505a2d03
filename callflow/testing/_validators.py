"""Graph's request shapes: the checks the fake runs on a call-control request's body.

:func:`check_content` checks the body is a JSON object sent as ``application/json`` (else 415
or 400); :data:`VALIDATORS` maps each op with a body (answer, reject, redirect, the actions
after the answer, ``create``) to a function returning what is wrong with its body, in
Graph's words, or None. A body with a property Graph does not know is refused, as Graph does.

Pure functions: they run on whatever loop serves the request (the test's loop, where a
:class:`~callflow.testing.FakeGraph` runs) and touch nothing but the body they are given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import web

from callflow.testing._payloads import CALL, GRAPH_TONES

__all__ = ["VALIDATORS", "check_content"]

_MODALITIES: Final = ("audio", "video", "videoBasedScreenSharing", "data")
_REASONS: Final = ("none", "busy", "forbidden")
_SERVICE_MEDIA: Final = "#microsoft.graph.serviceHostedMediaConfig"
_APP_MEDIA: Final = "#microsoft.graph.appHostedMediaConfig"
_CALL_OPTIONS: Final = "#microsoft.graph.incomingCallOptions"
_ANSWER_KEYS: Final = (
    "callbackUri",
    "mediaConfig",
    "acceptedModalities",
    "callOptions",
    "participantCapacity",
)
_REJECT_KEYS: Final = ("reason", "callbackUri")
_REDIRECT_KEYS: Final = (
    "targets",
    "timeout",
    "callbackUri",
    "targetDisposition",
    "maskCallee",
    "maskCaller",
)


def check_content(request: web.Request, op: str, body: Any, raw: bytes) -> tuple[int, str] | None:
    ctype = request.content_type
    if ctype != "application/json":
        return 415, f"{op}: Content-Type is {ctype!r}; expected application/json"
    if not raw:
        return 400, f"{op}: the request body is empty; expected a JSON object"
    if isinstance(body, str):
        return 400, (
            f"{op}: unable to read JSON request payload; expected a JSON object with "
            "Content-Type application/json"
        )
    if not isinstance(body, dict):
        return 400, f"{op}: the body is a JSON {type(body).__name__}; expected a JSON object"
    return None


def _unknown_keys(op: str, body: dict[str, Any], allowed: tuple[str, ...]) -> str | None:
    extra = sorted(set(body) - set(allowed))
    if extra:
        return (
            f"{op}: the property '{extra[0]}' does not exist on this request; expected only "
            f"{', '.join(allowed)}"
        )
    return None


def _https_problem(op: str, name: str, value: Any, *, required: bool) -> str | None:
    if value is None:
        return f"{op}: {name} is required; expected an https URL" if required else None
    if (
        not isinstance(value, str)
        or urlsplit(value).scheme != "https"
        or not urlsplit(value).hostname
    ):
        return f"{op}: {name} is {value!r}; expected an https URL"
    return None


def _validate_answer(body: dict[str, Any]) -> str | None:
    problem = _unknown_keys("answer", body, _ANSWER_KEYS) or _https_problem(
        "answer", "callbackUri", body.get("callbackUri"), required=True
    )
    if problem:
        return problem
    media = body.get("mediaConfig")
    if not isinstance(media, dict):
        return (
            f"answer: mediaConfig is {media!r}; expected an object with @odata.type "
            f"{_SERVICE_MEDIA} or {_APP_MEDIA}"
        )
    kind = media.get("@odata.type")
    if kind == _SERVICE_MEDIA:
        prompts = media.get("preFetchMedia")
        if prompts is not None:
            if not isinstance(prompts, list):
                return f"answer: mediaConfig.preFetchMedia is {prompts!r}; expected an array"
            for index, prompt in enumerate(prompts):
                where = f"answer: mediaConfig.preFetchMedia[{index}]"
                if not isinstance(prompt, dict):
                    return f"{where} is {prompt!r}; expected a mediaInfo object"
                problem = _https_problem(where, "uri", prompt.get("uri"), required=True)
                if problem:
                    return problem
                resource_id = prompt.get("resourceId")
                if resource_id is not None and not isinstance(resource_id, str):
                    return f"{where}.resourceId is {resource_id!r}; expected a string"
    elif kind == _APP_MEDIA:
        blob = media.get("blob")
        if not isinstance(blob, str) or not blob:
            return "answer: mediaConfig.blob is required for app-hosted media; expected a string"
    else:
        return (
            f"answer: mediaConfig.@odata.type is {kind!r}; expected {_SERVICE_MEDIA} or "
            f"{_APP_MEDIA}"
        )
    modalities = body.get("acceptedModalities")
    if (
        not isinstance(modalities, list)
        or not modalities
        or any(m not in _MODALITIES for m in modalities)
        or len(set(modalities)) != len(modalities)
    ):
        return (
            f"answer: acceptedModalities is {modalities!r}; expected a non-empty array of "
            f"distinct values from {', '.join(_MODALITIES)}"
        )
    options = body.get("callOptions")
    if options is not None:
        if not isinstance(options, dict) or options.get("@odata.type") != _CALL_OPTIONS:
            return f"answer: callOptions is {options!r}; expected an object of {_CALL_OPTIONS}"
        for name in ("hideBotAfterEscalation", "isContentSharingNotificationEnabled"):
            if name in options and not isinstance(options[name], bool):
                return f"answer: callOptions.{name} is {options[name]!r}; expected true or false"
    capacity = body.get("participantCapacity")
    if capacity is not None and (
        not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1
    ):
        return f"answer: participantCapacity is {capacity!r}; expected an integer >= 1"
    return None


def _validate_reject(body: dict[str, Any]) -> str | None:
    problem = _unknown_keys("reject", body, _REJECT_KEYS) or _https_problem(
        "reject", "callbackUri", body.get("callbackUri"), required=False
    )
    if problem:
        return problem
    reason = body.get("reason")
    if reason is not None and reason not in _REASONS:
        return f"reject: reason is {reason!r}; expected one of {', '.join(_REASONS)}"
    return None


def _validate_redirect(body: dict[str, Any]) -> str | None:
    problem = _unknown_keys("redirect", body, _REDIRECT_KEYS) or _https_problem(
        "redirect", "callbackUri", body.get("callbackUri"), required=False
    )
    if problem:
        return problem
    targets = body.get("targets")
    if not isinstance(targets, list) or not 1 <= len(targets) <= 25:
        count = len(targets) if isinstance(targets, list) else targets
        return f"redirect: targets has {count!r} entries; expected an array of 1 to 25 targets"
    for index, target in enumerate(targets):
        identity = target.get("identity") if isinstance(target, dict) else None
        members = (
            [v for k, v in identity.items() if k != "@odata.type"]
            if isinstance(identity, dict)
            else []
        )
        if not any(
            isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"] for m in members
        ):
            return (
                f"redirect: targets[{index}] is {target!r}; expected an "
                "invitationParticipantInfo whose identity set has an identity with an id"
            )
    timeout = body.get("timeout")
    if timeout is not None and (
        not isinstance(timeout, int) or isinstance(timeout, bool) or not 15 <= timeout <= 90
    ):
        return f"redirect: timeout is {timeout!r}; expected an integer from 15 to 90 seconds"
    return None


_MEDIA_PROMPT: Final = "#microsoft.graph.mediaPrompt"
_PARTICIPANT_INFO: Final = "#microsoft.graph.participantInfo"
_INVITATION: Final = "#microsoft.graph.invitationParticipantInfo"
_GRAPH_TONE_NAMES: Final = frozenset(GRAPH_TONES.values())
_STOP_TONES: Final = frozenset("0123456789*#ABCD")
_RECORDING_STATUSES: Final = ("notRecording", "recording", "failed")
_MEETING_TYPES: Final = (
    "#microsoft.graph.organizerMeetingInfo",
    "#microsoft.graph.tokenMeetingInfo",
    "#microsoft.graph.joinMeetingIdMeetingInfo",
)


def _context_problem(op: str, body: dict[str, Any]) -> str | None:
    context = body.get("clientContext")
    if context is not None and (not isinstance(context, str) or not 0 < len(context) <= 256):
        return f"{op}: clientContext is {context!r:.60}; expected a string of 1 to 256 characters"
    return None


def _identity_problem(where: str, target: Any, odata_type: str | None) -> str | None:
    identity = target.get("identity") if isinstance(target, dict) else None
    members = (
        [v for k, v in identity.items() if k != "@odata.type"] if isinstance(identity, dict) else []
    )
    if not any(isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"] for m in members):
        return (
            f"{where} is {target!r}; expected a participant whose identity set has an identity "
            "with an id"
        )
    kind = target.get("@odata.type")
    if odata_type is not None and kind is not None and kind != odata_type:
        return f"{where}.@odata.type is {kind!r}; expected {odata_type}"
    return None


def _prompts_problem(op: str, prompts: Any, most: int) -> str | None:
    if not isinstance(prompts, list) or len(prompts) > most:
        return f"{op}: prompts is {prompts!r:.80}; expected an array of at most {most} prompts"
    for index, prompt in enumerate(prompts):
        where = f"{op}: prompts[{index}]"
        if not isinstance(prompt, dict) or prompt.get("@odata.type") != _MEDIA_PROMPT:
            return f"{where} is {prompt!r:.80}; expected an object of {_MEDIA_PROMPT}"
        info = prompt.get("mediaInfo")
        if not isinstance(info, dict):
            return f"{where}.mediaInfo is {info!r}; expected a mediaInfo object"
        problem = _unknown_keys(f"{where}.mediaInfo", info, ("uri", "resourceId"))
        if problem:
            return problem
        problem = _https_problem(f"{where}.mediaInfo", "uri", info.get("uri"), required=True)
        if problem:
            return problem
        resource_id = info.get("resourceId")
        if resource_id is not None and not isinstance(resource_id, str):
            return f"{where}.mediaInfo.resourceId is {resource_id!r}; expected a string"
    return None


def _validate_play_prompt(body: dict[str, Any]) -> str | None:
    problem = _unknown_keys("playPrompt", body, ("clientContext", "prompts"))
    if problem or (problem := _context_problem("playPrompt", body)):
        return problem
    prompts = body.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        return f"playPrompt: prompts is {prompts!r:.80}; expected a non-empty array of prompts"
    return _prompts_problem("playPrompt", prompts, 20)


_RECORD_KEYS: Final = (
    "clientContext",
    "prompts",
    "bargeInAllowed",
    "initialSilenceTimeoutInSeconds",
    "maxSilenceTimeoutInSeconds",
    "maxRecordDurationInSeconds",
    "playBeep",
    "stopTones",
)


def _validate_record(body: dict[str, Any]) -> str | None:
    op = "recordResponse"
    problem = _unknown_keys(op, body, _RECORD_KEYS)
    if problem or (problem := _context_problem(op, body)):
        return problem
    prompts = body.get("prompts")
    if prompts is not None and (problem := _prompts_problem(op, prompts, 1)):
        return problem
    for name in ("bargeInAllowed", "playBeep"):
        if name in body and not isinstance(body[name], bool):
            return f"{op}: {name} is {body[name]!r}; expected true or false"
    for name in _RECORD_KEYS[3:6]:
        value = body.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 120
        ):
            return f"{op}: {name} is {value!r}; expected whole seconds from 1 to 120"
    tones = body.get("stopTones")
    if tones is not None and (
        not isinstance(tones, list) or any(t not in _STOP_TONES for t in tones)
    ):
        return f"{op}: stopTones is {tones!r}; expected an array of '0'-'9', '*', '#', 'A'-'D'"
    return None


def _validate_context_only(op: str) -> Callable[[dict[str, Any]], str | None]:
    def validate(body: dict[str, Any]) -> str | None:
        return _unknown_keys(op, body, ("clientContext",)) or _context_problem(op, body)

    return validate


def _validate_send_tones(body: dict[str, Any]) -> str | None:
    op = "sendDtmfTones"
    problem = _unknown_keys(op, body, ("clientContext", "tones", "delayBetweenTonesMs"))
    if problem or (problem := _context_problem(op, body)):
        return problem
    tones = body.get("tones")
    if not isinstance(tones, list) or not tones or any(t not in _GRAPH_TONE_NAMES for t in tones):
        return (
            f"{op}: tones is {tones!r}; expected a non-empty array of tone0-tone9, star, pound, "
            "a-d, flash"
        )
    delay = body.get("delayBetweenTonesMs")
    if delay is not None and (not isinstance(delay, int) or isinstance(delay, bool) or delay < 0):
        return f"{op}: delayBetweenTonesMs is {delay!r}; expected an integer >= 0"
    return None


def _validate_recording_status(body: dict[str, Any]) -> str | None:
    op = "updateRecordingStatus"
    problem = _unknown_keys(op, body, ("clientContext", "status"))
    if problem or (problem := _context_problem(op, body)):
        return problem
    if body.get("status") not in _RECORDING_STATUSES:
        return (
            f"{op}: status is {body.get('status')!r}; expected one of "
            f"{', '.join(_RECORDING_STATUSES)}"
        )
    return None


def _validate_invite(body: dict[str, Any]) -> str | None:
    op = "invite"
    problem = _unknown_keys(op, body, ("clientContext", "participants"))
    if problem or (problem := _context_problem(op, body)):
        return problem
    participants = body.get("participants")
    if not isinstance(participants, list) or not 1 <= len(participants) <= 5:
        return f"{op}: participants is {participants!r:.80}; expected an array of 1 to 5"
    for index, target in enumerate(participants):
        problem = _identity_problem(f"{op}: participants[{index}]", target, _INVITATION)
        if problem:
            return problem
    return None


def _validate_transfer(body: dict[str, Any]) -> str | None:
    op = "transfer"
    problem = _unknown_keys(op, body, ("clientContext", "transferTarget", "transferee"))
    if problem or (problem := _context_problem(op, body)):
        return problem
    target = body.get("transferTarget")
    if target is None:
        return f"{op}: transferTarget is required; expected an invitationParticipantInfo"
    problem = _identity_problem(f"{op}: transferTarget", target, _INVITATION)
    if problem:
        return problem
    replaces = target.get("replacesCallId")
    if replaces is not None and not isinstance(replaces, str):
        return f"{op}: transferTarget.replacesCallId is {replaces!r}; expected a string"
    transferee = body.get("transferee")
    if transferee is not None:
        return _identity_problem(f"{op}: transferee", transferee, _PARTICIPANT_INFO)
    return None


_CREATE_KEYS: Final = (
    "@odata.type",
    "callbackUri",
    "targets",
    "requestedModalities",
    "mediaConfig",
    "source",
    "tenantId",
    "chatInfo",
    "meetingInfo",
    "subject",
)


def _validate_create(body: dict[str, Any]) -> str | None:
    op = "create"
    problem = _unknown_keys(op, body, _CREATE_KEYS) or _https_problem(
        op, "callbackUri", body.get("callbackUri"), required=True
    )
    if problem:
        return problem
    kind = body.get("@odata.type")
    if kind is not None and kind != CALL:
        return f"{op}: @odata.type is {kind!r}; expected {CALL}"
    media = body.get("mediaConfig")
    if not isinstance(media, dict) or media.get("@odata.type") not in (_SERVICE_MEDIA, _APP_MEDIA):
        return f"{op}: mediaConfig is {media!r:.80}; expected {_SERVICE_MEDIA} or {_APP_MEDIA}"
    modalities = body.get("requestedModalities")
    if (
        not isinstance(modalities, list)
        or not modalities
        or any(m not in _MODALITIES for m in modalities)
    ):
        return (
            f"{op}: requestedModalities is {modalities!r}; expected a non-empty array of "
            f"{', '.join(_MODALITIES)}"
        )
    targets = body.get("targets")
    chat = body.get("chatInfo")
    meeting = body.get("meetingInfo")
    if targets is None and chat is None:
        return f"{op}: expected targets (an outgoing call) or chatInfo + meetingInfo (a join)"
    if targets is not None:
        if not isinstance(targets, list) or not 1 <= len(targets) <= 25:
            return f"{op}: targets is {targets!r:.80}; expected an array of 1 to 25 targets"
        for index, target in enumerate(targets):
            problem = _identity_problem(f"{op}: targets[{index}]", target, _INVITATION)
            if problem:
                return problem
    if chat is not None or meeting is not None:
        if not isinstance(chat, dict) or not isinstance(chat.get("threadId"), str):
            return f"{op}: chatInfo is {chat!r:.80}; expected an object with a threadId"
        if not isinstance(meeting, dict) or meeting.get("@odata.type") not in _MEETING_TYPES:
            kinds = ", ".join(_MEETING_TYPES)
            return f"{op}: meetingInfo is {meeting!r:.80}; expected one of {kinds}"
    source = body.get("source")
    if source is not None:
        return _identity_problem(f"{op}: source", source, _PARTICIPANT_INFO)
    return None


VALIDATORS: Final[dict[str, Callable[[dict[str, Any]], str | None]]] = {
    "answer": _validate_answer,
    "reject": _validate_reject,
    "redirect": _validate_redirect,
    "playPrompt": _validate_play_prompt,
    "recordResponse": _validate_record,
    "cancelMediaProcessing": _validate_context_only("cancelMediaProcessing"),
    "subscribeToTone": _validate_context_only("subscribeToTone"),
    "mute": _validate_context_only("mute"),
    "unmute": _validate_context_only("unmute"),
    "sendDtmfTones": _validate_send_tones,
    "updateRecordingStatus": _validate_recording_status,
    "invite": _validate_invite,
    "transfer": _validate_transfer,
    "create": _validate_create,
}
