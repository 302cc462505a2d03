"""The webhook's spans while tracing is on: the notification, its authentication, its parsing
and the span of each incoming call it brings.

Runs on the I/O loop, inside the webhook's request handling. Used only when tracing is on
(:mod:`callflow._tracing`): the worker then wraps the route's handler with
:meth:`WebhookTracing.route` and gives the :class:`~callflow.webhook.handler.WebhookHandler`
this object, which wraps its authenticator, its parser and its hand-over to the engine once,
when it is made. Without tracing none of this runs: the webhook pays nothing for it.

A notification another worker of the fleet forwarded carries that worker's ``traceparent``;
it is taken as the parent only when ``trusted_parent`` vouches for it (the fleet's signature
of it, checked with the fleet secret), else ignored: a sender cannot put its spans into
someone else's trace.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from callflow.events import IncomingCall

if TYPE_CHECKING:
    from callflow._tracing import Tracing
    from callflow.events import CallEvent
    from callflow.webhook.auth import Caller

__all__ = ["WebhookTracing"]

Route = Callable[[web.Request], Awaitable[web.StreamResponse]]
Submit = Callable[[Iterable["CallEvent"], "float | None", "str | None"], None]


class WebhookTracing:
    """The webhook's spans (see the module docstring); ``path`` is the webhook's route.

    ``trusted_parent(request)`` is the ``traceparent`` of a forwarded notification whose
    fleet signature covers it, else None.
    """

    def __init__(
        self,
        tracing: Tracing,
        path: str,
        trusted_parent: Callable[[web.Request], str | None] | None = None,
    ) -> None:
        self.tracing = tracing
        self.path = path
        self._trusted_parent = trusted_parent

    def route(self, handler: Route) -> Route:
        """``handler`` inside the notification's span (kind server), the root of its trace
        (or the child of the forwarding worker's span)."""
        from opentelemetry.trace import SpanKind, Status, StatusCode

        tracing = self.tracing
        name = f"POST {self.path}"
        trusted = self._trusted_parent

        async def traced(request: web.Request) -> web.StreamResponse:
            parent = None
            if trusted is not None:
                traceparent = trusted(request)
                if traceparent is not None:
                    parent = tracing.extract(traceparent)
            attributes = {
                "http.request.method": request.method,
                "http.route": self.path,
                "url.path": request.path,
                "url.scheme": request.scheme,
            }
            with tracing.current(name, attributes, context=parent, kind=SpanKind.SERVER) as span:
                response = await handler(request)
                status = response.status
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_attribute("error.type", str(status))
                    span.set_status(Status(StatusCode.ERROR))
                return response

        return traced

    def auth(self, auth: Any) -> Any:
        """``auth`` (an authenticator) with a span around each check."""
        return _TracedAuth(auth, self.tracing)

    def parse(self, parse: Callable[[bytes], Sequence[CallEvent]]) -> Callable[..., Any]:
        """``parse`` inside a ``callflow.parse`` span (the count of notifications parsed)."""
        tracing = self.tracing

        def traced(body: bytes) -> Sequence[CallEvent]:
            with tracing.current("callflow.parse", {"http.request.body.size": len(body)}) as span:
                events = parse(body)
                span.set_attribute("callflow.notifications", len(events))
                if len(events) == 1 and events[0].call_id:
                    span.set_attribute("callflow.call.id", events[0].call_id)
                return events

        return traced

    def submit(self, submit: Submit) -> Submit:
        """``submit`` (the engine's intake) that first opens the span of each incoming call
        (child of the notification's), so that its handlers and its decision find it."""
        tracing = self.tracing

        def traced(
            events: Iterable[CallEvent],
            received: float | None = None,
            scenario_id: str | None = None,
        ) -> None:
            events = tuple(events)
            for event in events:
                if type(event) is IncomingCall and received is not None:
                    extra: dict[str, Any] = {
                        "callflow.call.group": event.is_group_call,
                        "callflow.call.policy_recording": event.is_policy_recording,
                    }
                    if scenario_id is not None:
                        extra["callflow.scenario.id"] = scenario_id[:100]
                    if tracing.pii:  # a caller's number and name are personal data
                        extra["callflow.caller.kind"] = event.caller.kind
                        extra["callflow.caller.id"] = _caller_id(event)
                        extra["callflow.caller.name"] = _caller_name(event)
                    tracing.start_call(event.call_id, event.tenant_id, received, **extra)
            submit(events, received, scenario_id)

        return traced


class _TracedAuth:
    """An authenticator with a ``callflow.authenticate`` span around each check."""

    def __init__(self, inner: Any, tracing: Tracing) -> None:
        self._inner = inner
        self._tracing = tracing

    async def authenticate(self, authorization: str | None) -> Caller:
        with self._tracing.current("callflow.authenticate") as span:
            caller: Caller = await self._inner.authenticate(authorization)
            if caller.tenant_id is not None:
                span.set_attribute("callflow.tenant.id", caller.tenant_id)
            return caller

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _caller_id(call: IncomingCall) -> str | None:
    return call.caller.id or None


def _caller_name(call: IncomingCall) -> str | None:
    return call.caller.display_name or None
