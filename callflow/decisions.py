"""Decisions a bot returns for an incoming call, and the Graph request bodies they render.

A decision is a frozen, validated value: :class:`Answer`, :class:`Reject` or
:class:`Redirect`. Bad fields fail at construction (also through ``attrs.evolve``) with a
:class:`~callflow.errors.DecisionError` naming the field and the allowed values, so a decision
that exists can always be sent. ``to_graph()`` renders the exact JSON body of
``POST /communications/calls/{id}/answer`` (``reject``, ``redirect``): camelCase keys,
``@odata.type`` on polymorphic objects, lists rather than tuples, optional keys left out.
This module is the only one that knows Graph's field names on the way out.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar, Final, Literal, TypeAlias, TypeGuard, TypeVar
from urllib.parse import urlsplit

import attrs
import structlog

from callflow._signatures import cannot_take, is_async
from callflow.errors import DecisionError
from callflow.prompts import Say, Ssml

_log = structlog.get_logger("callflow.decisions")

Flow: TypeAlias = Callable[[Any], Awaitable[None]]
"""What ``Answer(then=...)`` runs: ``async def flow(call: callflow.Call) -> None``. Typed with
``Any`` for the handle so that a decision (a value) does not depend on the call-control
package; the flow's one parameter is checked when the answer is built."""

__all__ = [
    "Answer",
    "Decision",
    "MediaPrompt",
    "Prompt",
    "Redirect",
    "Reject",
    "RejectReason",
    "Target",
    "is_decision",
]

_T = TypeVar("_T")

_INVITATION: Final = "#microsoft.graph.invitationParticipantInfo"
_IDENTITY_SET: Final = "#microsoft.graph.identitySet"
_IDENTITY: Final = "#microsoft.graph.identity"
_SERVICE_MEDIA: Final = "#microsoft.graph.serviceHostedMediaConfig"
_APP_MEDIA: Final = "#microsoft.graph.appHostedMediaConfig"
_CALL_OPTIONS: Final = "#microsoft.graph.incomingCallOptions"

#: Lowercased spelling -> the camelCase spelling Graph expects.
_MODALITIES: Final = {m.lower(): m for m in ("audio", "video", "videoBasedScreenSharing", "data")}
_TARGET_KINDS: Final = {
    k.lower(): k for k in ("user", "phone", "application", "applicationInstance", "guest")
}
_MEDIA_KINDS: Final = ("service", "app")
#: Graph types ``participantCapacity`` as Int32 and documents no other bound.
_MAX_INT32: Final = 2**31 - 1
_MIN_TIMEOUT: Final = 15
_MAX_TIMEOUT: Final = 90
_MAX_TARGETS: Final = 25
#: E.164: "+", then up to 15 digits; country codes never start with 0.
_E164: Final = re.compile(r"\+[1-9][0-9]{6,14}")


# --- shared checks -------------------------------------------------------------------------


def _field(instance: object, attribute: attrs.Attribute[Any]) -> str:
    return f"{type(instance).__name__}.{attribute.name}"


def _canonical(value: object, table: Mapping[str, _T], field: str) -> _T:
    """Look a string up case-insensitively in ``table``; fail naming ``field`` and the choices."""
    if isinstance(value, str):
        found = table.get(value.lower())
        if found is not None:
            return found
    allowed = ", ".join(str(v) for v in table.values())
    raise DecisionError(f"{field} must be one of {allowed}, got {value!r}")


def _to_tuple(value: object, single: type, field: str, what: str) -> tuple[Any, ...]:
    """Wrap a lone ``single`` in a tuple, turn any other iterable into one."""
    if isinstance(value, single):
        return (value,)
    if isinstance(value, tuple):
        return value
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise DecisionError(f"{field} must be a {what} or a sequence of them, got {value!r}")
    return tuple(value)


def _is_https_url(value: object) -> bool:
    if not isinstance(value, str) or any(c.isspace() for c in value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unbalanced "[" in the host
        return False
    return parts.scheme == "https" and bool(parts.hostname)


def _check_https(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not _is_https_url(value):
        raise DecisionError(f"{_field(instance, attribute)} must be an https URL, got {value!r}")


def _check_optional_https(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _check_https(instance, attribute, value)


def _check_text(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise DecisionError(
            f"{_field(instance, attribute)} must be a non-empty string, got {value!r}"
        )


def _check_optional_text(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _check_text(instance, attribute, value)


def _check_flow(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not callable(value) or not is_async(value):
        raise DecisionError(
            f"Answer.then must be an async function taking the call (async def flow(call)), "
            f"got {value!r}"
        )
    takes = cannot_take(value, 1)
    if takes is not None:
        name = getattr(value, "__name__", None) or repr(value)
        raise DecisionError(
            f"Answer.then must be an async function taking the call (async def flow(call)); "
            f"{name!r} takes {takes}"
        )


def _check_optional_bool(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, bool):
        raise DecisionError(
            f"{_field(instance, attribute)} must be True, False or None, got {value!r}"
        )


def _check_items(kind: type) -> Any:
    """A validator: every item of the tuple is a ``kind``."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
        for item in value:
            if not isinstance(item, kind):
                raise DecisionError(
                    f"{_field(instance, attribute)} must contain only "
                    f"{getattr(kind, '__name__', 'MediaPrompt, Say or Ssml')} values, "
                    f"got {item!r}"
                )

    return check


def _mask_digits(value: str) -> str:
    """Hide the digits of a would-be phone number but keep its shape (personal data)."""
    return re.sub(r"\d", "N", value)


def _callback(own: str | None, default: str | None) -> str | None:
    """The body's ``callbackUri``: the decision's own, else the caller's default."""
    if own is not None:
        return own
    # The default comes from settings (validated there); this is only a cheap guard, since
    # to_graph() sits on the decision path.
    if default is not None and default[:8].lower() != "https://":
        raise DecisionError(f"default_callback_uri must be an https URL, got {default!r}")
    return default


# --- RejectReason --------------------------------------------------------------------------


class RejectReason(enum.StrEnum):
    """Why the bot rejects a call: Graph's reject ``reason``, always sent lowercase."""

    NONE = "none"
    BUSY = "busy"
    FORBIDDEN = "forbidden"

    @classmethod
    def parse(cls, value: RejectReason | str) -> RejectReason:
        """Return the reason named by ``value`` in any casing (``"Busy"`` -> ``BUSY``).

        Raises DecisionError naming the allowed values when ``value`` is not one of them.
        """
        return _canonical(value, _REASONS, "RejectReason")

    @classmethod
    def _missing_(cls, value: object) -> RejectReason | None:
        # Lets RejectReason("Busy") work too: Graph's own docs spell these capitalised.
        return _REASONS.get(value.lower()) if isinstance(value, str) else None


_REASONS: Final[Mapping[str, RejectReason]] = {r.value: r for r in RejectReason}


# --- Target and MediaPrompt ----------------------------------------------------------------


def _to_target_kind(value: str) -> str:
    return _canonical(value, _TARGET_KINDS, "Target.kind")


def _check_target_id(instance: Target, attribute: attrs.Attribute[Any], value: object) -> None:
    _check_text(instance, attribute, value)
    if instance.kind == "phone" and not _E164.fullmatch(instance.id):
        raise DecisionError(
            "Target.id of a phone target must be an E.164 number ('+' then 7 to 15 digits, "
            f"the first not 0), got {_mask_digits(instance.id)!r} (digits shown as N)"
        )


@attrs.frozen
class Target:
    """Someone a call is redirected to: Graph's ``invitationParticipantInfo``.

    ``kind`` is the identitySet member (``user``, ``phone``, ``application``,
    ``applicationInstance``, ``guest``; any casing in, camelCase out). For ``phone``, ``id``
    is the E.164 number. ``display_name`` is personal data: it is left out of ``repr``.
    """

    kind: str = attrs.field(converter=_to_target_kind)
    id: str = attrs.field(validator=_check_target_id)
    display_name: str | None = attrs.field(default=None, repr=False, validator=_check_optional_text)
    tenant_id: str | None = attrs.field(default=None, validator=_check_optional_text)

    @classmethod
    def user(
        cls, id: str, *, display_name: str | None = None, tenant_id: str | None = None
    ) -> Target:
        """A Teams user, by Entra object id."""
        return cls("user", id, display_name, tenant_id)

    @classmethod
    def phone(cls, number: str) -> Target:
        """A phone number in E.164 form (``+`` then 7 to 15 digits), e.g. ``+14255550100``."""
        return cls("phone", number)

    @classmethod
    def application(
        cls, id: str, *, display_name: str | None = None, tenant_id: str | None = None
    ) -> Target:
        """Another bot, by its application (client) id."""
        return cls("application", id, display_name, tenant_id)

    @classmethod
    def application_instance(
        cls, id: str, *, display_name: str | None = None, tenant_id: str | None = None
    ) -> Target:
        """A bot's application instance (resource account), e.g. one with a phone number."""
        return cls("applicationInstance", id, display_name, tenant_id)

    def to_graph(self) -> dict[str, Any]:
        """Render this target as a Graph ``invitationParticipantInfo``."""
        identity: dict[str, Any] = {"@odata.type": _IDENTITY, "id": self.id}
        if self.display_name is not None:
            identity["displayName"] = self.display_name
        if self.tenant_id is not None:
            identity["tenantId"] = self.tenant_id
        return {
            "@odata.type": _INVITATION,
            "identity": {"@odata.type": _IDENTITY_SET, self.kind: identity},
        }


@attrs.frozen
class MediaPrompt:
    """An audio prompt Graph fetches ahead of time for service-hosted media (a ``mediaInfo``).

    ``uri`` is an https URL of a WAV file (16 kHz, mono, 16-bit, per Graph); ``resource_id``
    optionally keys the cached prompt so later play-prompt requests can reuse it.
    """

    uri: str = attrs.field(validator=_check_https)
    resource_id: str | None = attrs.field(default=None, validator=_check_optional_text)

    def to_graph(self) -> dict[str, Any]:
        """Render this prompt as a Graph ``mediaInfo`` (``uri``, optional ``resourceId``)."""
        if self.resource_id is None:
            return {"uri": self.uri}
        return {"uri": self.uri, "resourceId": self.resource_id}


# --- Answer --------------------------------------------------------------------------------


def _to_modalities(value: str | Iterable[str]) -> tuple[str, ...]:
    items = _to_tuple(
        value, str, "Answer.modalities", f"modality ({', '.join(_MODALITIES.values())})"
    )
    return tuple(_canonical(item, _MODALITIES, "Answer.modalities") for item in items)


def _check_modalities(
    instance: Answer, attribute: attrs.Attribute[Any], value: tuple[str, ...]
) -> None:
    allowed = ", ".join(_MODALITIES.values())
    if not value:
        raise DecisionError(f"Answer.modalities must not be empty: give one or more of {allowed}")
    if len(set(value)) != len(value):
        repeated = next(m for m in value if value.count(m) > 1)
        raise DecisionError(
            f"Answer.modalities must not repeat a modality, got {repeated!r} twice in {value!r}"
        )


Prompt = MediaPrompt | Say | Ssml
"""Anything that can be played: a :class:`MediaPrompt` (a WAV Graph fetches) or a spoken
:class:`~callflow.Say` / :class:`~callflow.Ssml` (rendered and served by the worker)."""


def _to_prompts(value: Prompt | Iterable[Prompt]) -> tuple[Prompt, ...]:
    return _to_tuple(value, Prompt, "Answer.prefetch", "MediaPrompt, Say or Ssml")  # type: ignore[arg-type]


def _check_media(instance: Answer, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in _MEDIA_KINDS:
        raise DecisionError(f"Answer.media must be one of {', '.join(_MEDIA_KINDS)}, got {value!r}")


def _check_capacity(instance: Answer, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _MAX_INT32
    ):
        raise DecisionError(
            f"Answer.participant_capacity must be an integer from 1 to {_MAX_INT32} or None, "
            f"got {value!r}"
        )


@attrs.frozen
class Answer:
    """Answer the call (``POST .../answer``).

    ``modalities`` are the accepted ones (``audio``, ``video``, ``videoBasedScreenSharing``,
    ``data``; any casing in, camelCase out). ``media="service"`` lets Graph host the media and
    optionally ``prefetch`` prompts (a :class:`~callflow.Say` is rendered after the answer is
    sent: never on the decision's path); ``media="app"`` is application-hosted media and needs the
    media session ``blob`` (and no ``prefetch``). ``callback_uri`` pins later notifications of
    this call to a URL (https); Graph requires one, so ``to_graph`` falls back to the bot's
    default. ``participant_capacity`` is for policy-based recording bots. The two call options
    are sent only when set.
    """

    kind: ClassVar[Literal["answer"]] = "answer"

    modalities: tuple[str, ...] = attrs.field(
        default=("audio",), converter=_to_modalities, validator=_check_modalities
    )
    prefetch: tuple[Prompt, ...] = attrs.field(
        default=(),
        converter=_to_prompts,
        validator=_check_items(Prompt),  # type: ignore[arg-type]
    )
    callback_uri: str | None = attrs.field(default=None, validator=_check_optional_https)
    media: Literal["service", "app"] = attrs.field(default="service", validator=_check_media)
    blob: str | None = attrs.field(default=None, repr=False, validator=_check_optional_text)
    participant_capacity: int | None = attrs.field(default=None, validator=_check_capacity)
    hide_bot_after_escalation: bool | None = attrs.field(
        default=None, validator=_check_optional_bool
    )
    is_content_sharing_notification_enabled: bool | None = attrs.field(
        default=None, validator=_check_optional_bool
    )
    then: Flow | None = attrs.field(
        default=None, eq=False, hash=False, repr=False, kw_only=True, validator=_check_flow
    )
    """``async def flow(call)``: run on the app loop once Graph accepted this answer and
    reported the call established, with the call's :class:`~callflow.Call` handle (play,
    collect digits, record, transfer, hang up). Not part of the request body. A flow that
    raises (other than its call's :class:`~callflow.errors.CallEndedError`) goes to the
    error hooks; once they returned the call is hung up unless it has ended or is being
    transferred (a hook takes the call over by, e.g., awaiting its transfer)."""

    def __attrs_post_init__(self) -> None:
        if self.media == "app":
            if self.blob is None:
                raise DecisionError(
                    "Answer.blob is required when media='app': give the media session "
                    "configuration blob, or use media='service'"
                )
            if self.prefetch:
                raise DecisionError(
                    "Answer.prefetch must be empty when media='app' (prompts are prefetched "
                    f"only for service-hosted media), got {len(self.prefetch)} prompt(s)"
                )
        elif self.blob is not None:
            raise DecisionError(
                "Answer.blob is only for media='app'; with media='service' it must be None"
            )

    def to_graph(self, default_callback_uri: str | None = None) -> dict[str, Any]:
        """Render the body of ``POST /communications/calls/{id}/answer``.

        ``callbackUri`` is this answer's ``callback_uri``, else ``default_callback_uri``;
        Graph requires one, so DecisionError is raised when neither is set.
        """
        callback = _callback(self.callback_uri, default_callback_uri)
        if callback is None:
            raise DecisionError(
                "Answer needs a callbackUri (Graph requires one): set Answer.callback_uri or "
                "pass default_callback_uri, an https URL"
            )
        media: dict[str, Any]
        if self.media == "app":
            media = {"@odata.type": _APP_MEDIA, "blob": self.blob}
        else:
            media = {"@odata.type": _SERVICE_MEDIA}
            # A spoken prompt is replaced by the URL it is served at before the answer is
            # sent; one left (no Speech resource configured) is not prefetched.
            fetched = [p.to_graph() for p in self.prefetch if isinstance(p, MediaPrompt)]
            if fetched:
                media["preFetchMedia"] = fetched
            if len(fetched) != len(self.prefetch):
                _log.warning(
                    "speech.prefetch_skipped",
                    reason="no Speech resource (CALLFLOW_SPEECH_REGION or SPEECH_ENDPOINT)",
                    prompts=len(self.prefetch) - len(fetched),
                )
        body: dict[str, Any] = {
            "callbackUri": callback,
            "mediaConfig": media,
            "acceptedModalities": list(self.modalities),
        }
        hide = self.hide_bot_after_escalation
        sharing = self.is_content_sharing_notification_enabled
        if hide is not None or sharing is not None:
            options: dict[str, Any] = {"@odata.type": _CALL_OPTIONS}
            if hide is not None:
                options["hideBotAfterEscalation"] = hide
            if sharing is not None:
                options["isContentSharingNotificationEnabled"] = sharing
            body["callOptions"] = options
        if self.participant_capacity is not None:
            body["participantCapacity"] = self.participant_capacity
        return body


# --- Reject --------------------------------------------------------------------------------


def _to_reason(value: RejectReason | str) -> RejectReason:
    if isinstance(value, RejectReason):
        return value
    return _canonical(value, _REASONS, "Reject.reason")


@attrs.frozen
class Reject:
    """Reject the call (``POST .../reject``); ``Reject()`` is busy.

    ``reason`` is a :class:`RejectReason` or its name in any casing. ``callback_uri``, when
    set (https), receives the call's later notifications.
    """

    kind: ClassVar[Literal["reject"]] = "reject"

    reason: RejectReason = attrs.field(default=RejectReason.BUSY, converter=_to_reason)
    callback_uri: str | None = attrs.field(default=None, validator=_check_optional_https)

    def to_graph(self, default_callback_uri: str | None = None) -> dict[str, Any]:
        """Render the body of ``POST /communications/calls/{id}/reject``.

        ``callbackUri`` is this decision's ``callback_uri``, else ``default_callback_uri``,
        and is left out when neither is set.
        """
        callback = _callback(self.callback_uri, default_callback_uri)
        if callback is None:
            return {"reason": self.reason.value}
        return {"reason": self.reason.value, "callbackUri": callback}


# --- Redirect ------------------------------------------------------------------------------


def _to_targets(value: Target | Iterable[Target]) -> tuple[Target, ...]:
    return _to_tuple(value, Target, "Redirect.targets", "Target")


_check_target_items = _check_items(Target)


def _check_targets(
    instance: Redirect, attribute: attrs.Attribute[Any], value: tuple[Target, ...]
) -> None:
    if not 1 <= len(value) <= _MAX_TARGETS:
        raise DecisionError(
            f"Redirect.targets must hold 1 to {_MAX_TARGETS} targets, got {len(value)}"
        )
    _check_target_items(instance, attribute, value)
    first_at: dict[tuple[str, str], int] = {}
    for index, target in enumerate(value):
        earlier = first_at.setdefault((target.kind, target.id), index)
        if earlier != index:
            raise DecisionError(
                f"Redirect.targets must not repeat a target, got the same {target.kind} target "
                f"at positions {earlier} and {index}"
            )


def _check_timeout(instance: Redirect, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not _MIN_TIMEOUT <= value <= _MAX_TIMEOUT
    ):
        raise DecisionError(
            f"Redirect.timeout must be between {_MIN_TIMEOUT} and {_MAX_TIMEOUT} seconds, "
            f"got {value!r}"
        )


@attrs.frozen
class Redirect:
    """Redirect (forward) the call (``POST .../redirect``).

    ``targets`` are rung at once and the first to pick up gets the call (1 to 25; a lone
    :class:`Target` is accepted). ``timeout`` is in seconds, 15 to 90; Graph's default applies
    when it is None. ``callback_uri``, when set (https), receives later notifications.
    """

    kind: ClassVar[Literal["redirect"]] = "redirect"

    targets: tuple[Target, ...] = attrs.field(converter=_to_targets, validator=_check_targets)
    timeout: int | None = attrs.field(default=None, validator=_check_timeout)
    callback_uri: str | None = attrs.field(default=None, validator=_check_optional_https)

    def to_graph(self, default_callback_uri: str | None = None) -> dict[str, Any]:
        """Render the body of ``POST /communications/calls/{id}/redirect``.

        ``callbackUri`` is this decision's ``callback_uri``, else ``default_callback_uri``,
        and is left out when neither is set; ``timeout`` is left out when None.
        """
        body: dict[str, Any] = {"targets": [target.to_graph() for target in self.targets]}
        if self.timeout is not None:
            body["timeout"] = self.timeout
        callback = _callback(self.callback_uri, default_callback_uri)
        if callback is not None:
            body["callbackUri"] = callback
        return body


Decision: TypeAlias = Answer | Reject | Redirect
"""What a handler returns for an incoming call."""


def is_decision(value: object) -> TypeGuard[Decision]:
    """True when ``value`` is an :class:`Answer`, :class:`Reject` or :class:`Redirect`."""
    return isinstance(value, Answer | Reject | Redirect)
