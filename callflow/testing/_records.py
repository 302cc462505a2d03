"""What a FakeGraph records, as tests read it: requests, webhook replies, operations.

:class:`GraphRequest` is one call-control request the fake received and the status it
answered; :class:`WebhookReply` how a webhook answered one notification the fake POSTed;
:class:`FakeOperation` one operation an action started. :data:`OPS` names every request the
fake records, :data:`DECISION_OPS` and :data:`ACTION_OPS` the decisions and the actions after
the answer. The defaults a fake identifies a bot with (:data:`DEFAULT_APP_ID`,
:data:`DEFAULT_TENANT_ID`, :data:`CALLBACK_URL`) live here too.

Plain values: built on the test's event loop (where a :class:`~callflow.testing.FakeGraph`
runs) and read anywhere; they touch nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, Literal, TypeAlias

import attrs

from callflow.decisions import Target

__all__ = [
    "ACTION_OPS",
    "CALLBACK_URL",
    "DECISION_OPS",
    "DEFAULT_APP_ID",
    "DEFAULT_TENANT_ID",
    "OPS",
    "FakeOperation",
    "GraphRequest",
    "OpName",
    "RecordSettings",
    "WebhookReply",
    "decode_body",
    "op_matches",
]

DEFAULT_APP_ID: Final = "8e2d4c10-55aa-4f3b-b1c2-0d9e7f6a5b41"
DEFAULT_TENANT_ID: Final = "3f1c9e2a-7b44-4c1d-9a0e-5d2f8b6c1a90"
CALLBACK_URL: Final = "https://bot.invalid/api/calls"
"""The ``callbackUri`` a bot wired by :meth:`FakeGraph.settings` puts in its decisions."""

DECISION_OPS: Final = ("answer", "reject", "redirect")
ACTION_OPS: Final = (
    "playPrompt",
    "recordResponse",
    "cancelMediaProcessing",
    "subscribeToTone",
    "sendDtmfTones",
    "mute",
    "unmute",
    "updateRecordingStatus",
    "invite",
    "transfer",
)
"""The actions on an established call (``invite`` is ``POST .../participants/invite``)."""
OPS: Final = (*DECISION_OPS, "keepAlive", "delete", "get", *ACTION_OPS, "create", "recording")
"""The requests the fake records; ``op`` of every :class:`GraphRequest` (``create`` is
``POST /communications/calls``, ``recording`` a recording download)."""
OpName: TypeAlias = Literal[
    "answer", "reject", "redirect", "keepAlive", "delete", "get", "playPrompt",
    "recordResponse", "cancelMediaProcessing", "subscribeToTone", "sendDtmfTones", "mute",
    "unmute", "updateRecordingStatus", "invite", "transfer", "create", "recording", "decision",
]  # fmt: skip
"""What a test may wait for or inject a fault into: one of :data:`OPS`, or ``"decision"``
(an answer, reject or redirect)."""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _target(info: Any) -> Target | None:
    """The :class:`~callflow.Target` of an invitationParticipantInfo (None if it names none)."""
    for kind, member in _dict(_dict(info).get("identity")).items():
        if kind[:1] != "@" and isinstance(member, dict) and isinstance(member.get("id"), str):
            return Target(kind, member["id"], member.get("displayName"), member.get("tenantId"))
    return None


@attrs.frozen
class RecordSettings:
    """What a ``recordResponse`` asked for (Graph's names in brackets): ``stop_tones``
    (``stopTones``), ``max_duration`` (``maxRecordDurationInSeconds``),
    ``initial_silence_timeout`` and ``max_silence_timeout`` (``...InSeconds``),
    ``play_beep``, ``barge_in_allowed``."""

    stop_tones: tuple[str, ...]
    max_duration: float | None
    initial_silence_timeout: float | None
    max_silence_timeout: float | None
    play_beep: bool | None
    barge_in_allowed: bool | None


@attrs.frozen
class GraphRequest:
    """One call-control request the fake received, and the status it answered.

    ``op`` is one of :data:`OPS`; ``body`` the parsed JSON body (None when empty, the text
    when it was not JSON); ``at`` the ``time.monotonic()`` of its arrival; ``injected`` is
    true when :meth:`FakeGraph.fail_next` made the reply.
    """

    op: str
    call_id: str
    body: Any
    headers: Mapping[str, str] = attrs.field(repr=False, eq=False)
    at: float = 0.0
    status: int = 0
    injected: bool = False

    @property
    def is_decision(self) -> bool:
        """True for an answer, reject or redirect."""
        return self.op in DECISION_OPS

    @property
    def accepted(self) -> bool:
        """True when the fake answered with a 2xx status."""
        return 200 <= self.status < 300

    # -- typed reads of the body (None or empty when the request has no such part) ----------

    @property
    def _json(self) -> dict[str, Any]:
        return _dict(self.body)

    @property
    def reason(self) -> str | None:
        """A reject's ``reason`` (``"busy"``, ``"forbidden"``, ``"none"``)."""
        reason = self._json.get("reason")
        return reason if isinstance(reason, str) else None

    @property
    def targets(self) -> tuple[Target, ...]:
        """Whom a redirect or a new call (``create``) goes to, or an ``invite`` invites, as
        :class:`~callflow.Target` values: ``assert r.targets == (Target.user(ID),)``."""
        infos = _list(self._json.get("targets")) or _list(self._json.get("participants"))
        return tuple(t for t in map(_target, infos) if t is not None)

    @property
    def transfer_target(self) -> Target | None:
        """Where a ``transfer`` sends the call."""
        return _target(self._json.get("transferTarget"))

    @property
    def callback_uri(self) -> str | None:
        """The ``callbackUri`` of an answer, a reject or a new call."""
        uri = self._json.get("callbackUri")
        return uri if isinstance(uri, str) else None

    @property
    def modalities(self) -> tuple[str, ...]:
        """An answer's ``acceptedModalities`` (a new call's ``requestedModalities``)."""
        body = self._json
        return tuple(_list(body.get("acceptedModalities") or body.get("requestedModalities")))

    @property
    def prompt_uris(self) -> tuple[str, ...]:
        """The ``mediaInfo.uri`` of each prompt of a ``playPrompt`` or ``recordResponse``."""
        return tuple(str(_dict(p.get("mediaInfo")).get("uri")) for p in self._prompts)

    @property
    def prompt_ids(self) -> tuple[str | None, ...]:
        """The ``mediaInfo.resourceId`` of each prompt (None for one without)."""
        return tuple(_dict(p.get("mediaInfo")).get("resourceId") for p in self._prompts)

    @property
    def _prompts(self) -> list[dict[str, Any]]:
        return [_dict(p) for p in _list(self._json.get("prompts"))]

    @property
    def tones(self) -> tuple[str, ...]:
        """The tones a ``sendDtmfTones`` sends, as Graph names them (``digit1``, ``pound``)."""
        return tuple(_list(self._json.get("tones")))

    @property
    def client_context(self) -> str | None:
        """The ``clientContext`` of an action (how callflow finds the operation again)."""
        context = self._json.get("clientContext")
        return context if isinstance(context, str) else None

    @property
    def record_settings(self) -> RecordSettings | None:
        """What a ``recordResponse`` asked for; None for any other request."""
        if self.op != "recordResponse":
            return None
        body = self._json
        return RecordSettings(
            tuple(_list(body.get("stopTones"))),
            body.get("maxRecordDurationInSeconds"),
            body.get("initialSilenceTimeoutInSeconds"),
            body.get("maxSilenceTimeoutInSeconds"),
            body.get("playBeep"),
            body.get("bargeInAllowed"),
        )

    @property
    def recording_status(self) -> str | None:
        """An ``updateRecordingStatus``'s ``status`` (``"recording"``, ``"notRecording"``)."""
        status = self._json.get("status")
        return status if isinstance(status, str) else None


@attrs.frozen
class WebhookReply:
    """How a webhook answered one notification POST from the fake.

    ``kind`` says why it was sent: ``incoming``, ``duplicate``, ``established`` (after an
    answer), ``terminated`` (after a reject, redirect or hang-up, or :meth:`FakeGraph.end_call`),
    ``timeout`` (the platform timeout), ``state`` (:meth:`FakeGraph.send_states`) or
    ``custom`` (:meth:`FakeGraph.notify`). ``status`` is 0 and ``error`` says why when no
    HTTP reply came back. ``body`` is the parsed JSON reply (the text when not JSON, None when
    empty); ``sent`` is the body that was POSTed.
    """

    kind: str
    status: int
    body: Any
    headers: Mapping[str, str] = attrs.field(repr=False, eq=False)
    at: float = 0.0
    sent: Any = attrs.field(default=None, repr=False, eq=False)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True for a 2xx reply."""
        return 200 <= self.status < 300


@attrs.define
class FakeOperation:
    """One operation the fake started for an action (``op`` is one of :data:`ACTION_OPS`).

    ``status`` is ``running`` until it ends ``completed`` or ``failed``; ``result`` is the
    (code, subcode, message) it ended with; ``notifications`` counts the completion
    notifications sent for it.
    """

    id: str
    op: str
    call_id: str
    client_context: str | None
    status: str = "running"
    result: tuple[int | None, int | None, str | None] | None = None
    completion_reason: str | None = None
    notifications: int = 0
    started_at: float = 0.0
    recording_location: str | None = None
    recording_access_token: str | None = attrs.field(default=None, repr=False)


def op_matches(wanted: str | None, op: str) -> bool:
    """True when ``op`` is what a waiter asked for: None (any), the op, or ``"decision"``."""
    return wanted is None or wanted == op or (wanted == "decision" and op in DECISION_OPS)


def decode_body(raw: bytes) -> Any:
    """A body as the fake records it: parsed JSON, the text when not JSON, None when empty."""
    if not raw:
        return None
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text
