"""The engine's spans while tracing is on: each handler's and observer's, and the decision's.

Two sides, each used only when tracing is on (:mod:`callflow._tracing`), wired once:

- the **app loop**: :func:`traced_routes` gives the lanes a routing table whose handlers and
  observers run inside a span each, a child of their call's span (found by call id: the span
  was opened on the I/O loop) and current while they run, so that a bot's own spans and log
  lines nest under it;
- the **I/O loop**: :class:`TracedSink` makes the call's span current while its decision is
  sent (the ``POST`` span of the Graph client's session is its child), and
  :func:`traced_decided` ends the call's span once the outbox is done with the decision.

Without tracing the lanes and the outbox run as they are: nothing here is imported.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from callflow.decisions import Answer, is_decision
from callflow.routing import _WRAPPED, CompiledRoutes

if TYPE_CHECKING:
    from callflow._tracing import Tracing
    from callflow.decisions import Decision
    from callflow.engine.deadline import DecisionSink, DecisionSlot, Delivery
    from callflow.events import CallEvent, IncomingCall
    from callflow.routing import CallContext, _Invoker

__all__ = ["TracedSink", "traced_decided", "traced_routes"]

Invoke = Callable[["CallEvent", "CallContext"], Awaitable[Any]]


def traced_routes(routes: CompiledRoutes, tracing: Tracing) -> CompiledRoutes:
    """``routes`` with every handler and observer inside a span of its own."""
    return CompiledRoutes(
        handlers=tuple(_traced(inv, "callflow.handler", tracing) for inv in routes.handlers),
        observers={
            kind: tuple(_traced(inv, "callflow.observer", tracing) for inv in invokers)
            for kind, invokers in routes.observers.items()
        },
        error_hooks=routes.error_hooks,
    )


def _traced(inv: _Invoker, span_name: str, tracing: Tracing) -> _Invoker:
    traced = copy.copy(inv)
    inner: Invoke = inv.call
    name = inv.name

    async def call(event: CallEvent, ctx: CallContext) -> Any:
        parent = tracing.parent_for(event.call_id)
        attributes = {"callflow.handler.name": name, "callflow.event": type(event).__name__}
        if event.call_id:
            attributes["callflow.call.id"] = event.call_id
        with tracing.current(span_name, attributes, context=parent) as s:
            result = await inner(event, ctx)
            if result is not None and is_decision(result):
                s.set_attribute("callflow.decision", result.kind)
            return result

    traced.call = call
    traced.mode = _WRAPPED  # awaited as call(event, ctx), never as fn(event)
    return traced


class TracedSink:
    """The decision sink ``inner`` with the call's span current while its decision is sent."""

    def __init__(self, inner: DecisionSink, tracing: Tracing) -> None:
        self._inner = inner
        self._tracing = tracing

    async def deliver(
        self, call: IncomingCall, decision: Decision, deadline: float
    ) -> Delivery | None:
        """Send ``decision`` through the inner sink, inside the call's span."""
        tracing = self._tracing
        span = tracing.open_call(call.call_id)
        if span is None:
            return await self._inner.deliver(call, decision, deadline)
        token = tracing.attach(tracing.in_span(span))
        try:
            result = await self._inner.deliver(call, decision, deadline)
        finally:
            tracing.detach(token)
        if result is not None and result.attempts == 0:  # another worker of the fleet sent it
            tracing.end_call(call.call_id, decision=decision.kind, decided_by="another worker")
        return result


def traced_decided(
    tracing: Tracing, decided: Callable[[DecisionSlot, BaseException | None], None]
) -> Callable[[DecisionSlot, BaseException | None], None]:
    """``decided`` (the outbox's ``on_decided``) that first ends the call's span: with its
    decision, who decided, and the error when it could not be sent. An answered call's
    context is kept for its operations."""

    def traced(slot: DecisionSlot, error: BaseException | None) -> None:
        decision = slot.decision
        tracing.end_call(
            slot.call_id,
            decision=decision.kind if decision is not None else None,
            decided_by=slot.decided_by,
            error=error,
            keep=error is None and type(decision) is Answer,
        )
        decided(slot, error)

    return traced
