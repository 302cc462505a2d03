"""Forwarding: a notification about a call another worker of the fleet owns goes to that worker.

Runs on the worker's I/O loop, inside the webhook's request handling, which asks it through
the webhook's fleet hook (:class:`Forwarder` satisfies it; the webhook knows nothing of the
fleet). A notification whose URL names another live instance (``?instance=ID``, from the
per-instance ``callbackUri`` of that worker's decision) is forwarded there and that worker's
reply is returned; after parsing, state updates and terminations another worker already took
are dropped (shared dedupe, :mod:`callflow.fleet.claims`).

A forwarded notification does not carry Graph's bearer token: the forwarding worker signs it
with the fleet secret (:data:`~callflow.fleet.trust.FLEET_AUTH`: the time, a nonce, the tenant
it verified, the method, path and query, both workers' ids, the ``Content-Length`` and the
body's digest; see :mod:`callflow.fleet.trust`), and the receiving worker checks that
signature instead of a JWT, before reading the body (:meth:`Forwarder.verify_forwarded`): it
must name this worker, be fresh and carry a nonce this worker has not taken yet. A forwarded
request without ``Content-Length`` is refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

import callflow._tracing as _tracing
from callflow._log import Throttle
from callflow.events import IncomingCall
from callflow.fleet.trust import FLEET_AUTH, FleetSigner, Forward, ForwardTargets, ReplayGuard

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from callflow.events import CallEvent

__all__ = ["FORWARDED_BY", "REROUTE_EVERY", "TRACE_AUTH", "TRACEPARENT", "Forwarder"]

log = structlog.get_logger(__name__)

FORWARDED_BY: Final = "X-Callflow-Forwarded-By"
"""Header naming the worker that forwarded a notification; such a notification is never
forwarded again."""

TRACEPARENT: Final = "traceparent"
"""W3C trace context: the forwarding worker's span, parent of the receiving worker's."""

TRACE_AUTH: Final = "X-Callflow-Trace-Auth"
"""The fleet's signature of a forwarded notification's ``traceparent``, bound to its
:data:`~callflow.fleet.trust.FLEET_AUTH` value: the receiving worker takes the parent only
when it verifies (a worker without tracing ignores both headers)."""

REROUTE_EVERY: Final = 0.1
"""Seconds between two reads of a call's owner while its adoption is awaited."""

_REPLY_HEADERS: Final = ("Content-Type", "client-request-id", "scenario-id")
"""The headers of the owner's reply that go back to the sender."""

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
        "authorization",  # Graph's bearer token stays with the worker it was sent to
        FORWARDED_BY.lower(),
        FLEET_AUTH.lower(),
        TRACEPARENT,  # only this worker's own span is named to the next one
        "tracestate",
        TRACE_AUTH.lower(),
    }
)


class Forwarder:
    """The webhook's fleet hook: forwards notifications to the instance their URL names.

    ``lookup(instance_id)`` is the forwarding URL of a live instance (None when it is gone):
    the address from its signed heartbeat; on a miss, ``refresh()`` (if given) reads the
    fleet's directory again first. ``targets`` may restrict those further
    (``FORWARD_ALLOW``). ``signer`` signs what is forwarded (Graph's bearer token is not
    forwarded) and checks what was forwarded here, each forward once (``replays``: the
    nonces taken, :class:`~callflow.fleet.trust.ReplayGuard`). ``dedupe`` filters the parsed events
    (shared dedupe). A notification is handled here when its URL names no instance or this
    one, when that instance is gone, when it was forwarded once already, when its target is
    not allowed, or when forwarding fails (logged). Use it as an async context manager: it
    owns an HTTP session of the loop that enters it.
    """

    def __init__(
        self,
        instance_id: str,
        lookup: Callable[[str], str | None],
        *,
        signer: FleetSigner,
        targets: ForwardTargets | None = None,
        dedupe: Callable[[Sequence[CallEvent]], Awaitable[Sequence[CallEvent]]] | None = None,
        timeout: float = 3.0,
        on_forwarded: Callable[[], None] | None = None,
        refresh: Callable[[], Awaitable[None]] | None = None,
        replays: ReplayGuard | None = None,
        owner_of: Callable[[str], Awaitable[str | None]] | None = None,
        adoption_wait: float = 3.0,
    ) -> None:
        self.instance_id = instance_id
        self._lookup = lookup
        self._refresh = refresh
        self._signer = signer
        self._replays = replays if replays is not None else ReplayGuard()
        self._targets = targets if targets is not None else ForwardTargets()
        self._dedupe = dedupe
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 0.5))
        self._on_forwarded = on_forwarded
        self._owner_of = owner_of
        self._adoption_wait = adoption_wait
        self._session: aiohttp.ClientSession | None = None
        self._throttle = Throttle(5.0)

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
        """The events no worker of the fleet has taken yet (all of them without ``dedupe``)."""
        return events if self._dedupe is None else await self._dedupe(events)

    def is_forward(self, request: web.Request) -> bool:
        """True when ``request`` claims to be a notification a worker of the fleet forwarded
        (it carries a fleet signature): the webhook then asks :meth:`verify_forwarded`
        instead of checking a bearer token."""
        return FLEET_AUTH in request.headers

    def verify_forwarded(self, request: web.Request) -> Forward | None:
        """The signature of a notification a worker of the fleet forwarded to this one,
        checked on the request's head alone, before any body is read, and taken (its nonce
        is not accepted again); None when it is missing, invalid, made for another worker,
        expired or already used. The body is checked next, with :meth:`Forward.covers`."""
        header = request.headers.get(FLEET_AUTH)
        sender = request.headers.get(FORWARDED_BY)
        if header is None or sender is None:
            return None
        forward = self._signer.open_forward(
            header,
            sender,
            self.instance_id,
            request.method,
            str(request.rel_url),
            request.content_length,
        )
        if forward is None or not forward.tenant_id:
            return None
        return forward if self._replays.first_use(forward) else None

    def trace_parent(self, request: web.Request) -> str | None:
        """The ``traceparent`` of a forwarded notification when the fleet's signature of it
        (:data:`TRACE_AUTH`, bound to the forward's own signature) verifies; None otherwise
        (absent, or not made with the fleet secret: ignored, never trusted)."""
        headers = request.headers
        traceparent = headers.get(TRACEPARENT)
        mac = headers.get(TRACE_AUTH)
        signed = headers.get(FLEET_AUTH)
        if traceparent is None or mac is None or signed is None or len(traceparent) > 128:
            return None
        return traceparent if self._signer.check(mac, "trace", signed, traceparent) else None

    @staticmethod
    def _forward_span(tracing: _tracing.Tracing, url: URL, target: str) -> Span:
        from opentelemetry.trace import SpanKind

        attributes = _tracing.http_attributes("POST", url)
        attributes["callflow.fleet.target"] = target[:200]
        return tracing.tracer.start_span(
            "callflow.forward", kind=SpanKind.CLIENT, attributes=attributes
        )

    async def forward(
        self, request: web.Request, body: bytes, tenant_id: str | None = None
    ) -> web.StreamResponse | None:
        """The reply of the worker that owns the notification's call; None to handle it here.
        ``tenant_id`` is the tenant this worker verified (None without inbound auth)."""
        target = request.query.get("instance")
        if not target or target == self.instance_id:
            return None
        if FORWARDED_BY in request.headers:
            log.info("notification.not_forwarded_again", instance=target[:200])
            return None
        return await self._send(request, body, tenant_id, target)

    async def reroute(
        self,
        request: web.Request,
        body: bytes,
        events: Sequence[CallEvent],
        tenant_id: str | None,
        holds: Callable[[str], bool],
    ) -> web.StreamResponse | None:
        """Forward a parsed notification about a call this worker does not hold (``holds``
        says which it does) to the worker that owns it by the fleet's held calls: one that
        adopted it from the instance the URL names. None to handle it here.

        A call whose owner is gone and not adopted yet (a worker handing off, or lost a
        moment ago) is waited for, at most ``adoption_wait`` seconds, rereading its owner
        every :data:`REROUTE_EVERY` seconds: the caller's key pressed during a hand-off
        reaches the adopter instead of being dropped.
        """
        owner_of = self._owner_of
        if owner_of is None or not events:
            return None
        if any(type(event) is IncomingCall for event in events):
            return None
        call_ids = {event.call_id for event in events if event.call_id}
        if len(call_ids) != 1:
            return None
        (call_id,) = call_ids
        if holds(call_id):
            return None
        sender = request.headers.get(FORWARDED_BY)
        give_up = time.monotonic() + self._adoption_wait
        while True:
            owner = await owner_of(call_id)
            if owner is None or owner == sender:
                return None
            if owner == self.instance_id:
                if holds(call_id):
                    return None  # adopted here meanwhile
            elif await self._base(owner) is not None:
                log.info("notification.rerouted", call_id=call_id, owner=owner[:200])
                reply = await self._send(request, body, tenant_id, owner)
                if reply is not None:
                    return reply  # else the owner is unreachable: lost, to be adopted
            if time.monotonic() >= give_up:
                return None
            await asyncio.sleep(REROUTE_EVERY)

    async def _base(self, instance: str) -> str | None:
        """The forwarding URL of a live ``instance``; None when it is gone. A worker that has
        just started is unknown here until the next heartbeat this worker reads: on a miss
        the fleet's directory is read again first."""
        base = self._lookup(instance)
        if base is None and self._refresh is not None:
            await self._refresh()
            base = self._lookup(instance)
        return base

    async def _send(
        self, request: web.Request, body: bytes, tenant_id: str | None, target: str
    ) -> web.StreamResponse | None:
        """Forward ``request`` to the live instance ``target``; its reply, or None when it
        is gone, not allowed or unreachable (handled here then)."""
        base = await self._base(target)
        if base is None:
            log.info("notification.owner_gone", instance=target[:200])
            return None
        refusal = self._targets.refusal(base)
        if refusal is not None:
            suppressed = self._throttle.admit(("refused", target))
            if suppressed is not None:
                log.warning(
                    "notification.forward_refused",
                    instance=target[:200],
                    reason=refusal,
                    suppressed=suppressed,
                    message="handled by this worker instead",
                )
            return None
        session = self._session
        if session is None:
            raise RuntimeError("Forwarder is not open; expected `async with Forwarder(...)`")
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in _NOT_FORWARDED
        )
        rel_url = str(request.rel_url)
        headers[FORWARDED_BY] = self.instance_id
        signed = headers[FLEET_AUTH] = self._signer.sign_forward(
            self.instance_id, target, tenant_id, request.method, rel_url, body
        )
        span = None
        tracing = _tracing.active
        try:
            url = URL(base.rstrip("/") + rel_url, encoded=True)
            if tracing is not None:
                span = self._forward_span(tracing, url, target)
                traceparent = headers[TRACEPARENT] = tracing.inject(span)
                headers[TRACE_AUTH] = self._signer.mac("trace", signed, traceparent)
            async with session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                raw = await response.read()
                reply_headers = {
                    name: response.headers[name]
                    for name in _REPLY_HEADERS
                    if name in response.headers
                }
                status = response.status
            if span is not None:
                span.set_attribute("http.response.status_code", status)
                span.end()
        except Exception as exc:  # ClientError, timeouts, a bad URL: never lose the call
            if span is not None and tracing is not None:
                tracing.failed(span, exc)
                span.end()
            log.warning(
                "notification.forward_failed",
                instance=target[:200],
                error=f"{type(exc).__name__}: {exc}"[:300],
                message="handled by this worker instead",
            )
            return None
        if self._on_forwarded is not None:
            self._on_forwarded()
        log.debug("notification.forwarded", instance=target, status=status)
        return web.Response(status=status, body=raw, headers=reply_headers)
