"""The aiohttp side of the webhook: notifications in, 202 out, events handed to the engine.

Order of work for ``POST {webhook_path}``: size limit (413), content type (415), bearer JWT
(401 when missing or malformed, 403 when invalid), JSON and shape (400), then the events go
to the engine and the reply is 202 at once; the reply never waits for handlers. Every 4xx
carries ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

import structlog
from aiohttp import web
from structlog.contextvars import bound_contextvars

from .._parse import parse_notifications
from ..errors import InboundAuthError, NotificationFormatError

if TYPE_CHECKING:
    from ..dispatch import Engine
    from ._jwt import Caller

__all__ = ["MAX_BODY", "WebhookHandler", "error_response"]

log = structlog.get_logger(__name__)

MAX_BODY: Final = 1024 * 1024
"""Largest notification body accepted (1 MiB); larger ones get 413."""

_ECHO: Final = ("client-request-id", "scenario-id")


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


class WebhookHandler:
    """Handles ``POST`` notifications; ``auth=None`` turns inbound authentication off."""

    def __init__(
        self,
        engine: Engine,
        auth: Authenticator | None,
        *,
        max_body: int = MAX_BODY,
        on_auth_failure: Callable[[str], None] | None = None,
        on_rejected_input: Callable[[str], None] | None = None,
    ) -> None:
        self._engine = engine
        self._auth = auth
        self._max_body = max_body
        self._on_auth_failure = on_auth_failure
        self._on_rejected_input = on_rejected_input

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

    async def _read(self, request: web.Request) -> bytes:
        """The whole body, at most ``max_body`` bytes (chunked bodies included)."""
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
        try:
            events = parse_notifications(body)
        except NotificationFormatError as exc:
            return self._reject(request, 400, "invalid_notification", str(exc), echo)

        scenario_id = headers.get("scenario-id")
        token_tenant = caller.tenant_id if caller is not None else None
        try:
            for event in events:
                tenant_id = getattr(event, "tenant_id", None) or token_tenant
                with bound_contextvars(
                    call_id=event.call_id, tenant_id=tenant_id, scenario_id=scenario_id
                ):
                    self._engine.submit((event,), received)
        except RuntimeError as exc:  # the engine stopped taking calls (shutting down)
            return self._reject(request, 503, "unavailable", str(exc), echo)
        return web.Response(status=202, headers=echo)
