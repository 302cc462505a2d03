"""The aiohttp side of the webhook: notifications in, 202 out, events handed to the engine.

Order of work for ``POST {webhook_path}``: size limit (413), content type (415), bearer JWT
(401 when missing or malformed, 403 when invalid), JSON and shape (400), then the events go
to the engine and the reply is 202 at once; the reply never waits for handlers. Every 4xx
carries ``{"error": {"code": ..., "message": ...}}``.

While more decisions wait to be sent than the engine's ``max_send_backlog``, a notification
with a new incoming call waits for room, up to ``overload_wait`` seconds (its deadline still
counts from its arrival), and then gets 503 with ``Retry-After`` (code ``overloaded``):
taken, it would only be decided after its deadline. State updates and terminations are
always taken at once.

In fleet mode a :class:`FleetHook` (:class:`Forwarder`) sees each authenticated body first: a
notification whose URL names another live instance (``?instance=ID``, from the per-instance
``callbackUri`` of that worker's decision) is forwarded there and that worker's reply is
returned; after parsing, state updates and terminations another worker already took are
dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Final, Protocol, Self

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict
from structlog.contextvars import bind_contextvars, reset_contextvars
from yarl import URL

from .._parse import parse_notifications
from ..errors import InboundAuthError, NotificationFormatError
from ..events import IncomingCall

if TYPE_CHECKING:
    from .._intake import Intake
    from ..events import CallEvent
    from ._jwt import Caller

__all__ = ["FORWARDED_BY", "MAX_BODY", "FleetHook", "Forwarder", "WebhookHandler", "error_response"]

log = structlog.get_logger(__name__)

MAX_BODY: Final = 1024 * 1024
"""Largest notification body accepted (1 MiB); larger ones get 413."""

_ECHO: Final = ("client-request-id", "scenario-id")

RETRY_AFTER: Final = "1"
"""Seconds a refused (503) notification is asked to wait before it is sent again."""

FORWARDED_BY: Final = "X-Callflow-Forwarded-By"
"""Header naming the worker that forwarded a notification; such a notification is never
forwarded again."""

_NOT_FORWARDED: Final = frozenset(
    {
        "connection",
        "content-length",
        "host",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        FORWARDED_BY.lower(),
    }
)


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


class FleetHook(Protocol):
    """What the webhook asks of fleet mode, for each authenticated notification."""

    async def forward(self, request: web.Request, body: bytes) -> web.StreamResponse | None:
        """The reply of the worker that owns the notification's call; None to handle it here."""
        ...

    async def fresh(self, events: Sequence[CallEvent]) -> Sequence[CallEvent]:
        """The events no worker of the fleet has taken yet."""
        ...


class Forwarder:
    """The fleet hook: forwards notifications to the instance their URL names.

    ``lookup(instance_id)`` is the forwarding URL of a live instance (None when it is gone);
    ``dedupe`` filters the parsed events (shared dedupe). A notification is handled here when
    its URL names no instance or this one, when that instance is gone, when it was forwarded
    once already, or when forwarding fails (logged). Use it as an async context manager: it
    owns an HTTP session of the loop that enters it.
    """

    def __init__(
        self,
        instance_id: str,
        lookup: Callable[[str], str | None],
        *,
        dedupe: Callable[[Sequence[CallEvent]], Awaitable[Sequence[CallEvent]]] | None = None,
        timeout: float = 3.0,
        on_forwarded: Callable[[], None] | None = None,
    ) -> None:
        self.instance_id = instance_id
        self._lookup = lookup
        self._dedupe = dedupe
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 0.5))
        self._on_forwarded = on_forwarded
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        """Open the forwarding session in the running loop."""
        self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the forwarding session."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def fresh(self, events: Sequence[CallEvent]) -> Sequence[CallEvent]:
        """See :meth:`FleetHook.fresh`."""
        return events if self._dedupe is None else await self._dedupe(events)

    async def forward(self, request: web.Request, body: bytes) -> web.StreamResponse | None:
        """See :meth:`FleetHook.forward`."""
        target = request.query.get("instance")
        if not target or target == self.instance_id:
            return None
        if FORWARDED_BY in request.headers:
            log.info("notification.not_forwarded_again", instance=target)
            return None
        base = self._lookup(target)
        if base is None:
            log.info("notification.owner_gone", instance=target)
            return None
        session = self._session
        if session is None:
            raise RuntimeError("Forwarder is not open; expected `async with Forwarder(...)`")
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in _NOT_FORWARDED
        )
        headers[FORWARDED_BY] = self.instance_id
        url = URL(base.rstrip("/") + str(request.rel_url), encoded=True)
        try:
            async with session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                raw = await response.read()
                reply_headers = {
                    name: response.headers[name]
                    for name in ("Content-Type", *_ECHO)
                    if name in response.headers
                }
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning(
                "notification.forward_failed",
                instance=target,
                error=f"{type(exc).__name__}: {exc}"[:300],
                message="handled by this worker instead",
            )
            return None
        if self._on_forwarded is not None:
            self._on_forwarded()
        log.debug("notification.forwarded", instance=target, status=status)
        return web.Response(status=status, body=raw, headers=reply_headers)


class WebhookHandler:
    """Handles ``POST`` notifications; ``auth=None`` turns inbound authentication off.

    ``fleet`` (fleet mode) may forward a notification to another worker, and drops events
    another worker already took.
    """

    def __init__(
        self,
        engine: Intake,
        auth: Authenticator | None,
        *,
        max_body: int = MAX_BODY,
        on_auth_failure: Callable[[str], None] | None = None,
        on_rejected_input: Callable[[str], None] | None = None,
        fleet: FleetHook | None = None,
        overload_wait: float = 1.0,
    ) -> None:
        self._engine = engine
        self._overload_wait = overload_wait
        self._auth = auth
        self._max_body = max_body
        self._on_auth_failure = on_auth_failure
        self._on_rejected_input = on_rejected_input
        self._fleet = fleet
        self._refused_logged = 0  # the engine's refusal count at the last log line
        self._refusal_logged = -1e9

    def _reject(
        self, request: web.Request, status: int, code: str, message: str, echo: dict[str, str]
    ) -> web.Response:
        if self._on_rejected_input is not None:
            self._on_rejected_input(code)
        log.warning(
            "webhook.rejected",
            status=status,
            code=code,
            reason=message,
            remote=request.remote,
            path=request.path_qs,
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

    async def _read(self, request: web.Request) -> bytes:
        """The whole body, at most ``max_body`` bytes (chunked bodies included)."""
        length = request.content_length
        if length is not None:  # already checked against max_body: one read
            try:
                return await request.content.readexactly(length)
            except asyncio.IncompleteReadError as exc:  # pragma: no cover - aiohttp reports
                return exc.partial  # a short body as a lost connection; kept for other servers
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > self._max_body:
                raise web.HTTPRequestEntityTooLarge(max_size=self._max_body, actual_size=size)
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

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
                f"Content-Type is {ctype or 'missing'!r}; expected application/json",
                echo,
            )

        caller: Caller | None = None
        if self._auth is not None:
            try:
                caller = await self._auth.authenticate(headers.get("Authorization"))
            except InboundAuthError as exc:
                if self._on_auth_failure is not None:
                    self._on_auth_failure(exc.reason)
                code = "unauthorized" if exc.status == 401 else "forbidden"
                if exc.status >= 500:
                    code = "unavailable"
                return self._reject(request, exc.status, code, exc.message, echo)

        try:
            body = await self._read(request)
        except web.HTTPRequestEntityTooLarge:
            return self._reject(
                request,
                413,
                "payload_too_large",
                f"the body is larger than {self._max_body} bytes",
                echo,
            )
        fleet = self._fleet
        if fleet is not None:
            forwarded = await fleet.forward(request, body)
            if forwarded is not None:
                return forwarded
        try:
            events: Sequence[CallEvent] = parse_notifications(body)
        except NotificationFormatError as exc:
            return self._reject(request, 400, "invalid_notification", str(exc), echo)
        if fleet is not None:
            events = await fleet.fresh(events)

        if (
            self._engine.overloaded
            and any(type(e) is IncomingCall for e in events)
            and not await self._engine.wait_for_room(self._overload_wait)
        ):
            return self._refuse(echo)

        scenario_id = headers.get("scenario-id")
        token_tenant = caller.tenant_id if caller is not None else None
        try:
            for event in events:
                # Bound here, the ids ride along into the call's lane task (it copies the
                # context when created) and every log line the notification causes.
                tokens = bind_contextvars(
                    call_id=event.call_id,
                    tenant_id=getattr(event, "tenant_id", None) or token_tenant,
                    scenario_id=scenario_id,
                )
                try:
                    self._engine.submit((event,), received, scenario_id)
                finally:
                    reset_contextvars(**tokens)
        except RuntimeError as exc:  # the engine stopped taking calls (shutting down)
            return self._reject(request, 503, "unavailable", str(exc), echo)
        return web.Response(status=202, headers=echo)
