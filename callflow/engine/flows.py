"""Flows: user code that holds a call for the rest of its life, on the app loop.

Two kinds of user code run as flows rather than in a call's lane: an ``Answer(then=...)``
flow, started once its call is established, and the ``CallAdopted`` observers of a call this
worker took over from another worker of the fleet. Each is a task of its own (spawned by the
:class:`~callflow.engine.lanes.Lanes`, which own and cancel it when they stop), so the call's
later events (key presses, state updates) still reach their observers while it runs. A flow
is not cancelled when its call ends (every operation it awaits then raises
:class:`~callflow.errors.CallEndedError`, and the flow ends quietly); one that raises
otherwise is reported (log, error hooks) and its call is hung up, unless by then the call has
ended or is being transferred. Each flow logs ``call.flow_started`` (once its call is
established) and ``call.flow_ended`` (how it ended, and how long it ran) or
``call.flow_failed``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

import structlog

import callflow._tracing as _tracing
from callflow.errors import CallEndedError
from callflow.events import CallAdopted, CallEvent, IncomingCall, canonical_call_id
from callflow.routing import CallContext

if TYPE_CHECKING:
    from callflow.control.call import Call
    from callflow.routing import CompiledRoutes

__all__ = ["Flows"]

log = structlog.get_logger(__name__)

_HANDED_OVER: Final = frozenset({"transferring", "transferAccepted"})
"""Call states in which a failed flow's call is left alone: a transfer is under way."""

Spawn = Callable[[Coroutine[Any, Any, None], str, dict[str, Any]], None]
"""``spawn(coro, name, bound)``: run ``coro`` as an owned task with ``bound`` log context."""
Failed = Callable[[BaseException, CallEvent, str], Awaitable[None]]
"""``failed(exc, event, name)``: report a failure (log, error hooks)."""


def _same_call(a: str, b: str) -> bool:
    return canonical_call_id(a) == canonical_call_id(b)


class Flows:
    """Starts and runs flows; see the module docstring.

    ``spawn`` runs a coroutine as a task the lanes own, ``failed`` reports an exception (log
    and error hooks), ``services`` hands out call handles, ``routes()`` is the frozen routing
    table (its ``CallAdopted`` observers); a flow waits ``establish_timeout`` seconds for its
    call to be established.
    """

    def __init__(
        self,
        spawn: Spawn,
        failed: Failed,
        services: Any,
        routes: Callable[[], CompiledRoutes],
        *,
        establish_timeout: float = 30.0,
    ) -> None:
        self._spawn = spawn
        self._failed = failed
        self._services = services
        self._routes = routes
        self.establish_timeout = establish_timeout
        self.running = 0
        """Flows running (``Answer(then=...)`` flows and ``CallAdopted`` observers)."""

    def start(self, call: IncomingCall, flow: Callable[[Call], Awaitable[None]]) -> None:
        """Run ``flow(call handle)`` (an ``Answer(then=...)``) once the call is established."""
        self.running += 1
        bound = {"call_id": call.call_id, "tenant_id": call.tenant_id}
        self._spawn(self._run(call, flow), call.call_id, bound)

    def adopted(self, event: CallAdopted) -> None:
        """Run each ``CallAdopted`` observer of ``event`` as a flow of the adopted call."""
        bound = {"call_id": event.call_id, "tenant_id": event.tenant_id}
        for inv in self._routes().observers_for(event):
            if inv.where is not None and not inv.where(event):
                continue
            self.running += 1
            self._spawn(self._run_observer(event, inv.call, inv.name), event.call_id, bound)

    async def _run(self, call: IncomingCall, flow: Callable[[Call], Awaitable[None]]) -> None:
        """Run one ``Answer(then=...)`` flow, once its call is established."""
        name = getattr(flow, "__name__", repr(flow))

        async def body(handle: Call) -> None:
            await handle.established(timeout=self.establish_timeout)
            log.info("call.flow_started", call_id=call.call_id, tenant_id=call.tenant_id, flow=name)
            await flow(handle)

        await self._guarded(call, call.call_id, call.tenant_id, name, body)

    async def _run_observer(
        self,
        event: CallAdopted,
        observer: Callable[[CallEvent, CallContext], Awaitable[Any]],
        name: str,
    ) -> None:
        """Run one ``CallAdopted`` observer as a flow (its call is established already)."""

        async def body(handle: Call) -> None:
            ctx = CallContext(event.call_id, source=self._services, tenant_id=event.tenant_id)
            log.info(
                "call.flow_started",
                call_id=event.call_id,
                tenant_id=event.tenant_id,
                flow=name,
                adopted=True,
            )
            await observer(event, ctx)

        await self._guarded(event, event.call_id, event.tenant_id, name, body)

    async def _guarded(
        self,
        event: CallEvent,
        call_id: str,
        tenant_id: str | None,
        name: str,
        body: Callable[[Call], Awaitable[None]],
    ) -> None:
        """Run ``body(call handle)``; when it raises, do not leave the caller in silence.

        A flow ended by its own call ending (:class:`~callflow.errors.CallEndedError` for
        this call) ends quietly. Any other exception is reported (log, error hooks); once
        the hooks returned the call is hung up, unless by then it has ended or is being
        transferred (:attr:`Call.state` ``transferring`` or ``transferAccepted``): that is
        how a hook takes the call over, e.g. by awaiting ``call.transfer(...)``.
        """
        handle: Call | None = None
        began = time.monotonic()
        ended = {"call_id": call_id, "tenant_id": tenant_id, "flow": name}
        try:
            services = self._services
            if services is None:
                raise RuntimeError("a flow needs a serving bot (no Graph client here)")
            opened: Call = services.call(call_id, tenant_id)
            handle = opened
            tracing = _tracing.active
            if tracing is None:
                await body(opened)
            else:  # the flow's operations and the bot's own spans nest under this one
                attributes = {"callflow.call.id": call_id, "callflow.flow.name": name}
                context = tracing.call_context(call_id)
                with tracing.current("callflow.flow", attributes, context=context):
                    await body(opened)
        except Exception as exc:
            if isinstance(exc, CallEndedError) and (
                handle is None or handle.ended or _same_call(exc.call_id, call_id)
            ):
                log.info(
                    "call.flow_ended",
                    **ended,
                    outcome="call_ended",
                    duration_ms=_since(began),
                    result=str(exc),
                )
            else:
                await self._failed(exc, event, name)
                if handle is not None:
                    await self._hang_up_failed(handle, exc, name, _since(began))
        except BaseException:  # cancelled: the bot is stopping
            log.info("call.flow_ended", **ended, outcome="cancelled", duration_ms=_since(began))
            raise
        else:
            log.info("call.flow_ended", **ended, outcome="completed", duration_ms=_since(began))
        finally:
            self.running -= 1

    async def _hang_up_failed(
        self, handle: Call, exc: Exception, name: str, duration_ms: float
    ) -> None:
        """After the error hooks of a failed flow: hang its call up unless it has ended or
        is being transferred; log what was done (``call.flow_failed``)."""
        state = handle.state
        action = "none"
        if not handle.ended and state not in _HANDED_OVER:
            action = "hung_up"
            try:
                await handle.hang_up()
            except Exception as hang_up_exc:
                action = "hang_up_failed"
                log.error(
                    "call.flow_hang_up_failed",
                    call_id=handle.call_id,
                    flow=name,
                    error=f"{type(hang_up_exc).__name__}: {hang_up_exc}",
                )
        log.warning(
            "call.flow_failed",
            call_id=handle.call_id,
            tenant_id=handle.tenant_id,
            flow=name,
            duration_ms=duration_ms,
            error=f"{type(exc).__name__}: {exc}",
            state=state,
            action=action,
        )


def _since(began: float) -> float:
    """Milliseconds since ``began`` (a ``time.monotonic()`` reading), to a tenth."""
    return round((time.monotonic() - began) * 1000.0, 1)
