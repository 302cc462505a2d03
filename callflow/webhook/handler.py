"""The aiohttp side of the webhook: notifications in, 202 out, events handed to the engine.

Order of work for ``POST {webhook_path}``: size limit (413), content type and encoding (415:
a compressed body is refused, never decoded), bearer JWT (401 when missing or malformed, 403
when invalid) or, for a notification another worker of the fleet forwarded, the fleet's
signature of the request's head (403), so that no body is read before its sender is
authenticated; the body within ``BODY_TIMEOUT`` (408, and the connection is closed; a
forwarded body must then match the digest its signature names, 403), JSON and
shape (400; 413 past :data:`~callflow._parse.MAX_NOTIFICATIONS` notifications), the tenant
(403 when a notification names another tenant than the token's: the body's ``tenantId``
picks the app token a call is decided with, so it must be the verified one; and 403 when a
notification is about a call this worker holds for another tenant), then the events go to
the engine and the reply is 202 at once; the reply never waits for handlers. A body is
checked whole before any of its events is handed over: nothing of a refused body is
applied. Every
4xx carries ``{"error": {"code": ..., "message": ...}}``; ``webhook.rejected`` is logged at
most once a second per code, with the count of the lines left out (``suppressed``).

While more decisions wait to be sent than the engine's ``max_send_backlog``, a notification
with a new incoming call waits for room, up to ``overload_wait`` seconds (its deadline still
counts from its arrival), and then gets 503 with ``Retry-After`` (code ``overloaded``):
taken, it would only be decided after its deadline. State updates and terminations are
always taken at once.

In fleet mode a :class:`FleetHook` (the fleet's forwarder, which satisfies it: the webhook
imports nothing of the fleet) sees each authenticated body first: a notification whose URL
names another live instance (``?instance=ID``, from the per-instance ``callbackUri`` of that
worker's decision) is forwarded there and that worker's reply is returned; after parsing,
state updates and terminations another worker already took are dropped. A forwarded
notification does not carry Graph's bearer token: the forwarding worker signs it with the
fleet secret (the time, a nonce, the tenant it verified, the method, path and query, both
workers' ids, the ``Content-Length`` and the body's digest), and the receiving worker checks
that signature instead of a JWT, before reading the body (the hook says whether a request is
a forward, and verifies it): it must name this worker, be fresh and carry a nonce this worker
has not taken yet. A forwarded request without ``Content-Length`` is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, Protocol

import attrs
import structlog
from aiohttp import web
from structlog.contextvars import bind_contextvars, reset_contextvars

from callflow._log import Throttle
from callflow._parse import parse_notifications
from callflow.errors import InboundAuthError, NotificationFormatError, NotificationLimitError
from callflow.events import IncomingCall
from callflow.webhook.auth import Caller
from callflow.webhook.server import (
    BodyTimeoutError,
    BodyTooLargeError,
    ServerLimits,
    close_after,
    read_body,
)

if TYPE_CHECKING:
    from callflow.engine.intake import Intake
    from callflow.events import CallEvent
    from callflow.webhook.tracing import Submit, WebhookTracing

__all__ = ["MAX_BODY", "FleetHook", "Forwarded", "WebhookHandler", "error_response"]

log = structlog.get_logger(__name__)

MAX_BODY: Final = 1024 * 1024
"""Largest notification body accepted (1 MiB); larger ones get 413."""

_ECHO: Final = ("client-request-id", "scenario-id")

RETRY_AFTER: Final = "1"
"""Seconds a refused (503) notification is asked to wait before it is sent again."""


class Authenticator(Protocol):
    """What the webhook needs of inbound authentication."""

    async def authenticate(self, authorization: str | None) -> Caller:
        """Return the verified caller or raise InboundAuthError."""


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON error reply: ``{"error": {"code": code, "message": message}}``."""
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


class Forwarded(Protocol):
    """The checked fleet signature of a notification another worker forwarded here."""

    @property
    def sender(self) -> str:
        """The id of the worker that forwarded it."""
        ...

    @property
    def tenant_id(self) -> str:
        """The tenant the forwarding worker verified."""
        ...

    @property
    def expires_at(self) -> float:
        """Epoch seconds after which the signature is no longer valid."""
        ...

    def covers(self, body: bytes) -> bool:
        """True when ``body`` is the body that was signed."""
        ...


class FleetHook(Protocol):
    """What the webhook asks of fleet mode, for each notification (the fleet's forwarder
    satisfies it; the webhook knows nothing else of the fleet)."""

    def is_forward(self, request: web.Request) -> bool:
        """True when ``request`` claims to be a notification another worker of the fleet
        forwarded: it is then authenticated with :meth:`verify_forwarded`, not a JWT."""
        ...

    def verify_forwarded(self, request: web.Request) -> Forwarded | None:
        """The signature of a notification a worker of the fleet forwarded to this one,
        checked on the request's head alone, before any body is read, and taken (its nonce
        is not accepted again); None when it is missing, invalid, made for another worker,
        expired or already used. The body is checked next, with :meth:`Forwarded.covers`."""
        ...

    async def forward(
        self, request: web.Request, body: bytes, tenant_id: str | None
    ) -> web.StreamResponse | None:
        """The reply of the worker that owns the notification's call; None to handle it here.
        ``tenant_id`` is the tenant this worker verified (None without inbound auth)."""
        ...

    async def fresh(self, events: Sequence[CallEvent]) -> Sequence[CallEvent]:
        """The events no worker of the fleet has taken yet."""
        ...

    def trace_parent(self, request: web.Request) -> str | None:
        """The ``traceparent`` of a forwarded notification whose fleet signature covers it
        (tracing on); None when there is none or it does not verify."""
        ...

    async def reroute(
        self,
        request: web.Request,
        body: bytes,
        events: Sequence[CallEvent],
        tenant_id: str | None,
        holds: Callable[[str], bool],
    ) -> web.StreamResponse | None:
        """The reply of the worker that owns the call of a parsed notification this worker
        does not hold (``holds``); None to handle it here."""
        ...


class WebhookHandler:
    """Handles ``POST`` notifications; ``auth=None`` turns inbound authentication off.

    ``fleet`` (fleet mode) may forward a notification to another worker, and drops events
    another worker already took. ``limits`` gives the body-read timeout (``BODY_TIMEOUT``).
    ``on_suppressed_log(n)`` is told of ``webhook.rejected`` lines left out by the rate limit.
    ``tracing`` (tracing on) wraps authentication, parsing and the hand-over in spans, once,
    here: without it nothing on the way of a notification checks for tracing.
    """

    def __init__(
        self,
        engine: Intake,
        auth: Authenticator | None,
        *,
        max_body: int = MAX_BODY,
        limits: ServerLimits | None = None,
        on_auth_failure: Callable[[str], None] | None = None,
        on_rejected_input: Callable[[str], None] | None = None,
        on_suppressed_log: Callable[[int], None] | None = None,
        fleet: FleetHook | None = None,
        overload_wait: float = 1.0,
        tenant_of: Callable[[str], str | None] | None = None,
        holds: Callable[[str], bool] | None = None,
        tracing: WebhookTracing | None = None,
    ) -> None:
        self._engine = engine
        self._parse: Callable[[bytes], Sequence[CallEvent]] = parse_notifications
        self._submit: Submit = engine.submit
        if tracing is not None:
            self._parse = tracing.parse(parse_notifications)
            self._submit = tracing.submit(engine.submit)
            if auth is not None:
                auth = tracing.auth(auth)
        self._tenant_of = tenant_of
        self._holds = holds
        self._overload_wait = overload_wait
        self._auth = auth
        self._max_body = max_body
        self._body_timeout = (limits or ServerLimits()).body_timeout
        self._on_auth_failure = on_auth_failure
        self._on_rejected_input = on_rejected_input
        self._fleet = fleet
        self._throttle = Throttle(1.0, on_suppressed=on_suppressed_log)
        self._refused_logged = 0  # the engine's refusal count at the last log line
        self._refusal_logged = -1e9

    def _reject(
        self, request: web.Request, status: int, code: str, message: str, echo: dict[str, str]
    ) -> web.Response:
        if self._on_rejected_input is not None:
            self._on_rejected_input(code)
        suppressed = self._throttle.admit(code)
        if suppressed is not None:
            log.warning(
                "webhook.rejected",
                status=status,
                code=code,
                reason=message[:500],
                remote=request.remote,
                path=request.path_qs[:300],
                suppressed=suppressed,
            )
        return error_response(status, code, message, echo)

    def _refuse(self, echo: dict[str, str]) -> web.Response:
        """503 + Retry-After for a new call that found no room to be decided in time.
        Logged once a second at most, with the count since."""
        engine = self._engine
        stats = engine.stats
        stats.refused += 1
        if self._on_rejected_input is not None:
            self._on_rejected_input("overloaded")
        now = time.monotonic()
        if now >= self._refusal_logged + 1.0:
            self._refusal_logged = now
            log.warning(
                "webhook.overloaded",
                refused=stats.refused - self._refused_logged,
                pending=engine.pending,
                max_send_backlog=engine.max_send_backlog,
            )
            self._refused_logged = stats.refused
        return error_response(
            503,
            "overloaded",
            "decisions are waiting to be sent; this call would be decided late: retry",
            {**echo, "Retry-After": RETRY_AFTER},
        )

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        """Check, parse and hand over one notification POST."""
        received = time.monotonic()
        headers = request.headers
        echo = {name: headers[name] for name in _ECHO if name in headers}

        length = request.content_length
        if length is not None and length > self._max_body:
            return self._reject(
                request,
                413,
                "payload_too_large",
                f"the body is {length} bytes; at most {self._max_body} are accepted",
                echo,
            )
        ctype = request.content_type
        if ctype != "application/json" and not ctype.endswith("+json"):
            return self._reject(
                request,
                415,
                "unsupported_media_type",
                f"Content-Type is {ctype[:100] or 'missing'!r}; expected application/json",
                echo,
            )
        encoding = headers.get("Content-Encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            return self._reject(
                request,
                415,
                "unsupported_content_encoding",
                f"Content-Encoding is {encoding[:100]!r}; expected an uncompressed body "
                "(no Content-Encoding, or identity)",
                echo,
            )

        fleet = self._fleet
        # A notification another worker of the fleet forwarded carries the fleet's signature
        # instead of Graph's token; like a token, it is checked before any body is read (its
        # head is signed, with the body's digest, which is checked once the body is in).
        forward: Forwarded | None = None
        caller: Caller | None = None
        if fleet is not None and self._auth is not None and fleet.is_forward(request):
            forward = fleet.verify_forwarded(request)
            if forward is None:
                return self._fleet_auth_failed(
                    request,
                    "The notification claims to be forwarded by a worker of the fleet but its "
                    "signature is missing, invalid, made for another worker, expired or "
                    "already used, or it has no Content-Length; expected one made with the "
                    "fleet secret for this worker.",
                    echo,
                )
            caller = Caller(
                tenant_id=forward.tenant_id,
                app_id=None,
                issuer=f"fleet:{forward.sender}",
                expires_at=forward.expires_at,
            )
        elif self._auth is not None:
            try:
                caller = await self._auth.authenticate(headers.get("Authorization"))
            except InboundAuthError as exc:
                return self._auth_failed(request, exc, echo)

        try:
            body = await read_body(request, max_body=self._max_body, within=self._body_timeout)
        except BodyTooLargeError:
            return self._reject(
                request,
                413,
                "payload_too_large",
                f"the body is larger than {self._max_body} bytes",
                echo,
            )
        except BodyTimeoutError as exc:
            response = self._reject(
                request,
                408,
                "body_timeout",
                f"{exc}; expected the whole body at once (CALLFLOW_BODY_TIMEOUT)",
                echo,
            )
            return await close_after(request, response)
        if forward is not None and not forward.covers(body):
            return self._fleet_auth_failed(
                request,
                "The forwarded notification's body is not the one its fleet signature covers; "
                "expected the body as the forwarding worker signed it.",
                echo,
            )
        if fleet is not None:
            reply = await fleet.forward(
                request, body, caller.tenant_id if caller is not None else None
            )
            if reply is not None:
                return reply
        try:
            events: Sequence[CallEvent] = self._parse(body)
        except NotificationLimitError as exc:
            return self._reject(request, 413, "too_many_notifications", str(exc), echo)
        except NotificationFormatError as exc:
            return self._reject(request, 400, "invalid_notification", str(exc), echo)
        token_tenant = caller.tenant_id if caller is not None else None
        if token_tenant is not None:
            foreign = _foreign_tenant(events, token_tenant)
            if foreign is not None:
                index, tenant = foreign
                return self._reject(
                    request,
                    403,
                    "tenant_mismatch",
                    f"value[{index}] names tenant {tenant[:64]!r} but the token was issued for "
                    f"tenant {token_tenant!r}; expected every notification of the body to "
                    "belong to the token's tenant (nothing of this body was taken)",
                    echo,
                )
            held = _held_elsewhere(events, token_tenant, self._tenant_of)
            if held is not None:
                return self._reject(
                    request,
                    403,
                    "tenant_mismatch",
                    f"value[{held}] is about a call this bot holds for another tenant than "
                    f"the token's ({token_tenant!r}); expected notifications of a call from "
                    "the tenant it belongs to (nothing of this body was taken)",
                    echo,
                )
            events = _with_tenant(events, token_tenant)
        if fleet is not None:
            if self._holds is not None:
                # A call adopted by another worker: its notifications still name the lost one.
                reply = await fleet.reroute(request, body, events, token_tenant, self._holds)
                if reply is not None:
                    return reply
            events = await fleet.fresh(events)

        if (
            self._engine.overloaded
            and any(type(e) is IncomingCall for e in events)
            and not await self._engine.wait_for_room(self._overload_wait)
        ):
            return self._refuse(echo)

        scenario_id = headers.get("scenario-id")
        submit = self._submit
        try:
            for event in events:
                # Bound here, the ids ride along into the call's lane task (it copies the
                # context when created) and every log line the notification causes.
                tokens = bind_contextvars(
                    call_id=event.call_id,
                    tenant_id=getattr(event, "tenant_id", None) or token_tenant,
                    scenario_id=scenario_id[:100] if scenario_id else None,
                )
                try:
                    submit((event,), received, scenario_id)
                finally:
                    reset_contextvars(**tokens)
        except RuntimeError as exc:  # the engine stopped taking calls (shutting down)
            return self._reject(request, 503, "unavailable", str(exc), echo)
        return web.Response(status=202, headers=echo)

    def _fleet_auth_failed(
        self, request: web.Request, message: str, echo: dict[str, str]
    ) -> web.Response:
        exc = InboundAuthError("bad_fleet_signature", message, status=403)
        return self._auth_failed(request, exc, echo)

    def _auth_failed(
        self, request: web.Request, exc: InboundAuthError, echo: dict[str, str]
    ) -> web.Response:
        if self._on_auth_failure is not None:
            self._on_auth_failure(exc.reason)
        code = "unauthorized" if exc.status == 401 else "forbidden"
        if exc.status >= 500:
            code = "unavailable"
        return self._reject(request, exc.status, code, exc.message, echo)


def _foreign_tenant(events: Sequence[CallEvent], tenant_id: str) -> tuple[int, str] | None:
    """The first notification (index, tenant) that names another tenant than ``tenant_id``.

    An incoming call names its tenant (``resourceData.tenantId``, which picks the app token it
    is decided with); other call notifications may carry one in their resource data too.
    """
    want = tenant_id.lower()
    for index, event in enumerate(events):
        if type(event) is IncomingCall:
            named: object = event.tenant_id
        else:
            data = event.raw.get("resourceData") if isinstance(event.raw, dict) else None
            named = data.get("tenantId") if isinstance(data, dict) else None
        if isinstance(named, str) and named.lower() != want:
            return index, named
    return None


def _held_elsewhere(
    events: Sequence[CallEvent], tenant_id: str, tenant_of: Callable[[str], str | None] | None
) -> int | None:
    """The index of the first notification about a call this bot holds (pending or
    answered) for another tenant than ``tenant_id``, if any.

    A call's later notifications (state updates, hang-ups, tones, operation results) need
    not name a tenant; the call they are about does. Without this, a token of one tenant
    could end or steer another tenant's call.
    """
    if tenant_of is None:
        return None
    want = tenant_id.lower()
    for index, event in enumerate(events):
        call_id = event.call_id
        if not call_id:
            continue
        tenant = tenant_of(call_id)
        if tenant is not None and tenant.lower() != want:
            return index
    return None


def _with_tenant(events: Sequence[CallEvent], tenant_id: str) -> Sequence[CallEvent]:
    """``events`` with the verified tenant filled into incoming calls that name none, so that
    such a call is decided with its caller's tenant, not the default ``TENANT_ID``."""
    if all(type(e) is not IncomingCall or e.tenant_id is not None for e in events):
        return events
    return [
        attrs.evolve(e, tenant_id=tenant_id)
        if type(e) is IncomingCall and e.tenant_id is None
        else e
        for e in events
    ]
