"""Lanes: where user code runs, on the app loop, one call's events at a time.

:class:`Lanes` keeps one *lane* per call with events in flight: a task that processes the
call's events in arrival order (the incoming call's handlers, then observers of the updates
queued behind it). :meth:`Lanes.run_handlers` is the handler loop of an incoming call:
filters, priority, middleware, error hooks, first decision wins. A decision is claimed on
the call's slot here and handed back to the I/O loop to be sent (``decided(slot)``); the
deadline or a hang-up claimed on the I/O loop stops the handlers through
:meth:`Lanes.stop_handlers`.

A pending call should cost a few kilobytes at most, and most of them are the lane: so the
lane of a new call is one plain asyncio task running :meth:`Lanes.run_handlers` itself (one
coroutine frame, no wrapper), owned by the :class:`Lanes` (a set and one shared done
callback, not a task group's bookkeeping per task), and cancelled when the lanes stop. An
anyio task would cost about three times the memory of an asyncio task.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import structlog
from structlog.contextvars import bind_contextvars

import callflow._tracing as _tracing
from callflow.clock import MONOTONIC, Clock
from callflow.decisions import Decision, is_decision
from callflow.engine.deadline import DecisionSlot, SlotState
from callflow.engine.flows import Flows
from callflow.events import CallAdopted, CallEvent, IncomingCall
from callflow.routing import _DIRECT, CallContext, CompiledRoutes, Router

if TYPE_CHECKING:
    from callflow.control.call import Call
    from callflow.engine.stats import EngineStats

__all__ = ["Failure", "Lanes"]

log = structlog.get_logger(__name__)


@attrs.frozen
class Failure:
    """One failure of the bot's own code, as ``on_failure`` is told of it (on the app loop).

    ``what`` is ``"handler"`` (it raised, or returned something that is not a decision),
    ``"observer"``, ``"flow"`` (an ``Answer(then=...)`` flow or a ``CallAdopted`` observer)
    or ``"error hook"``; ``name`` the function's name (a failing middleware or filter is
    reported under the handler or observer it wraps); ``call_id`` the call; ``error`` the
    exception.
    """

    what: str
    name: str
    call_id: str | None
    error: BaseException

    def __str__(self) -> str:
        return (
            f"{self.what} {self.name!r} (call {self.call_id}): "
            f"{type(self.error).__name__}: {self.error}"
        )


class Lanes:
    """Runs a router's handlers and observers on the app loop, per call in arrival order.

    ``max_queued`` events wait behind a busy lane (the oldest observer event goes past it);
    a flow waits ``establish_timeout`` seconds for its call to be established. Use ``async
    with lanes.running(decided=...):`` on the app loop, where ``decided(slot)`` hands a
    claimed slot back to the I/O loop (a crossing post), and feed it with :meth:`take`.
    """

    def __init__(
        self,
        router: Router,
        *,
        stats: EngineStats,
        default_decision: Decision,
        services: Any = None,
        clock: Clock = MONOTONIC,
        max_queued: int = 256,
        establish_timeout: float = 30.0,
        on_failure: Callable[[Failure], None] | None = None,
    ) -> None:
        self._router = router
        self._on_failure = on_failure
        self.stats = stats
        self.default_decision = default_decision
        self._services = services
        self._clock = clock
        self._decided: Callable[[DecisionSlot], None] | None = None
        # call id -> events queued behind the running lane (None: nothing queued yet)
        self._lanes: dict[str, deque[tuple[CallEvent, DecisionSlot | None]] | None] = {}
        self._routes: CompiledRoutes | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._forget = self._tasks.discard  # one bound method for every task's done callback
        self._flows = Flows(
            self._spawn,
            self._flow_failed,
            services,
            lambda: self.routes,
            establish_timeout=establish_timeout,
        )
        self.max_queued = max_queued
        """Events a call's lane holds behind the running one; past it the oldest observer
        event goes (``lane_full``)."""

    @property
    def routes(self) -> CompiledRoutes:
        """The frozen routing table (once running)."""
        if self._routes is None:
            routes = self._router.freeze()
            tracing = _tracing.active
            if tracing is not None:  # each handler and observer in a span of its own
                from callflow.engine.tracing import traced_routes

                routes = traced_routes(routes, tracing)
            self._routes = routes
        return self._routes

    def __len__(self) -> int:
        return len(self._lanes)

    @contextlib.asynccontextmanager
    async def running(self, *, decided: Callable[[DecisionSlot], None]) -> AsyncIterator[Lanes]:
        """Run lanes on the current loop, handing claimed slots to ``decided``; on exit cancel
        the handlers still running and wait for them to end."""
        _ = self.routes
        self._decided = decided
        self._loop = asyncio.get_running_loop()
        try:
            yield self
        finally:
            self._loop = None
            with anyio.CancelScope(shield=True):
                while self._tasks:
                    tasks = list(self._tasks)
                    for task in tasks:
                        task.cancel()
                    await asyncio.wait(tasks)

    def _spawn(
        self,
        coro: Coroutine[Any, Any, None],
        name: str | None = None,
        bound: dict[str, Any] | None = None,
    ) -> None:
        loop = self._loop
        assert loop is not None
        context = None
        if bound:
            # The call's ids, as the webhook bound them on the I/O loop: every line the
            # task's handlers log carries them (structlog's contextvars).
            context = contextvars.copy_context()
            context.run(bind_contextvars, **bound)
        task = loop.create_task(coro, name=name, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._forget)

    # -- intake (the app loop, through the crossing) ----------------------------------------

    def take(self, event: CallEvent, slot: DecisionSlot | None) -> None:
        """Process ``event`` in its call's lane (``slot``: an incoming call's, still open).

        Behind a lane that is still busy (a slow observer) at most :attr:`max_queued` events
        wait: past that the oldest observer event is dropped and counted (``lane_full``);
        an incoming call's handlers are never dropped.
        """
        if self._loop is None:  # stopped: the I/O loop sends the defaults of what is left
            return
        call_id = event.call_id or ""
        lanes = self._lanes
        if call_id in lanes:  # a lane is running for this call: queue behind it
            queued = lanes[call_id]
            if queued is None:
                lanes[call_id] = deque(((event, slot),))
            else:
                if len(queued) >= self.max_queued:
                    self._drop_oldest(queued)
                queued.append((event, slot))
            return
        lanes[call_id] = None
        # Named after the call: the id exists already, a generated name would be one more
        # string per pending call.
        bound = {"call_id": call_id}
        tenant = getattr(event, "tenant_id", None)
        if tenant is not None:
            bound["tenant_id"] = tenant
        if slot is not None:
            if slot.scenario_id is not None:
                bound["scenario_id"] = slot.scenario_id
            coro = self.run_handlers(event, slot, call_id)  # type: ignore[arg-type]
            self._spawn(coro, call_id, bound)
        else:
            self._spawn(self._run_lane(call_id, event), call_id, bound)

    def _drop_oldest(self, queued: deque[tuple[CallEvent, DecisionSlot | None]]) -> None:
        """Drop the oldest observer event of a full lane. Only an incoming call's handlers
        (one per call) can be ahead of it: this looks at one or two events, never the lane."""
        for index, (_, slot) in enumerate(queued):
            if slot is None:
                del queued[index]
                self.stats.dropped_one("lane_full")
                return

    def queued(self, call_id: str) -> int:
        """Events waiting in ``call_id``'s lane behind the one being processed."""
        return len(self._lanes.get(call_id) or ())

    def start_flow(self, call: IncomingCall, flow: Callable[[Call], Awaitable[None]]) -> None:
        """Run ``flow(call handle)`` (an ``Answer(then=...)``) once the call is established,
        as a task of its own (see :mod:`callflow.engine.flows`); cancelled when the bot
        stops."""
        if self._loop is not None:
            self._flows.start(call, flow)

    def adopted(self, event: CallAdopted) -> None:
        """Run the ``CallAdopted`` observers of a call this worker took over, each as a flow
        (see :mod:`callflow.engine.flows`)."""
        if self._loop is not None:
            self._flows.adopted(event)

    @property
    def flows(self) -> int:
        """Flows running (``Answer(then=...)`` flows and ``CallAdopted`` observers)."""
        return self._flows.running

    def stop_handlers(self, slot: DecisionSlot) -> None:
        """Cancel the handlers still running for ``slot`` (its call was decided elsewhere).

        Clearing ``cancel_handlers`` first tells the lane the cancellation is this one. A
        lane that stops its own call is not cancelled: its handlers end as soon as the
        running one returns.
        """
        task = slot.cancel_handlers
        if task is not None and task is not asyncio.current_task():
            slot.cancel_handlers = None
            task.cancel()

    # -- lanes -------------------------------------------------------------------------------

    async def _run_lane(self, call_id: str, event: CallEvent) -> None:
        """The lane of a call whose first event is not an incoming call."""
        try:
            await self._observe(event)
            if self._lanes[call_id]:
                await self._run_queued(call_id)
        finally:
            del self._lanes[call_id]

    async def _run_queued(self, call_id: str) -> None:
        """Process the events queued behind a lane's first event, in arrival order."""
        lanes = self._lanes
        while queued := lanes[call_id]:
            event, slot = queued.popleft()
            if slot is not None:
                await self.run_handlers(event, slot)  # type: ignore[arg-type]
            else:
                await self._observe(event)

    async def run_handlers(
        self, call: IncomingCall, slot: DecisionSlot, lane: str | None = None
    ) -> None:
        """Run the incoming-call handlers in priority order until one decides; hand it over.

        Filters are checked first; a handler that raises, or returns something that is not
        a decision, is reported (log, error hooks) and the next one runs; ``None`` passes
        on; with no decision the default is claimed. The deadline or the caller hanging up
        cancels this task while it runs the handlers (:meth:`stop_handlers`): that
        cancellation is taken back and nothing more is run; one from anywhere else goes on.
        As the lane of a new call (``lane`` is its id) it then processes the events queued
        behind it.
        """
        try:
            if slot.is_open:
                task = asyncio.current_task()
                assert task is not None
                cancelling = task.cancelling()
                slot.cancel_handlers = task
                stopped = False
                decision: Decision | None = None
                decided_by = "default"
                try:
                    try:
                        ctx: CallContext | None = None
                        for inv in self.routes.handlers:
                            if slot.state != SlotState.OPEN:
                                break
                            try:
                                if inv.group is not None and call.is_group_call != inv.group:
                                    continue
                                if inv.where is not None and not inv.where(call):
                                    continue
                                if inv.mode == _DIRECT:
                                    result = await inv.fn(call)
                                else:
                                    if ctx is None:
                                        ctx = CallContext(
                                            call.call_id,
                                            slot.deadline,
                                            source=self._services,
                                            clock=self._clock,
                                            tenant_id=call.tenant_id,
                                        )
                                    result = await inv.call(call, ctx)
                            except Exception as exc:
                                await self._handler_failed(exc, call, inv.name)
                                continue
                            if result is None:
                                continue
                            if is_decision(result):
                                decision, decided_by = result, inv.name
                                break
                            await self._handler_failed(
                                TypeError(
                                    f"handler {inv.name!r} returned {result!r}; "
                                    "expected Answer, Reject, Redirect or None"
                                ),
                                call,
                                inv.name,
                            )
                    finally:
                        stopped = slot.cancel_handlers is None
                        slot.cancel_handlers = None
                        if stopped:
                            task.uncancel()
                except asyncio.CancelledError:
                    if not stopped or task.cancelling() > cancelling:
                        raise
                self._settle(call, slot, decision, decided_by)
            if lane is not None and self._lanes[lane]:
                await self._run_queued(lane)
        finally:
            if lane is not None:
                del self._lanes[lane]

    def _settle(
        self, call: IncomingCall, slot: DecisionSlot, decision: Decision | None, decided_by: str
    ) -> None:
        """Claim the slot for what the handlers chose and hand it to the I/O loop to send."""
        if slot.claim(decision or self.default_decision, decided_by):
            assert self._decided is not None
            self._decided(slot)
        elif decided_by != "default" and slot.state == SlotState.DECIDED:
            self.stats.late_decisions += 1
            log.warning(
                "call.late_decision",
                call_id=call.call_id,
                handler=decided_by,
                decided_by=slot.decided_by,
            )

    async def _observe(self, event: CallEvent) -> None:
        invokers = self.routes.observers_for(event)
        if not invokers:
            return
        ctx = CallContext(event.call_id, source=self._services, clock=self._clock)
        for inv in invokers:
            try:
                if inv.where is not None and not inv.where(event):
                    continue
                await inv.call(event, ctx)
            except Exception as exc:
                await self._handler_failed(exc, event, inv.name, "observer")

    async def _flow_failed(self, exc: BaseException, event: CallEvent, name: str) -> None:
        await self._handler_failed(exc, event, name, "flow")

    def _report(self, what: str, name: str, call_id: str | None, exc: BaseException) -> None:
        if self._on_failure is not None:
            try:
                self._on_failure(Failure(what, name, call_id, exc))
            except Exception as report_exc:
                log.error("on_failure.failed", call_id=call_id, error=repr(report_exc))

    async def _handler_failed(
        self, exc: BaseException, event: CallEvent, name: str, what: str = "handler"
    ) -> None:
        self.stats.handler_errors += 1
        self._report(what, name, event.call_id, exc)
        log.error(
            "handler.failed",
            call_id=event.call_id,
            handler=name,
            error=f"{type(exc).__name__}: {exc}",
            exc_info=exc,
        )
        for hook in self.routes.error_hooks:
            try:
                result = hook(exc, event)
                if result is not None:
                    await result
            except Exception as hook_exc:
                log.error("error_hook.failed", call_id=event.call_id, error=repr(hook_exc))
                hook_name = getattr(hook, "__name__", repr(hook))
                self._report("error hook", hook_name, event.call_id, hook_exc)
