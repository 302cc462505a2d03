"""The engine: a bot's handlers run with the deadline guarantee, across two event loops.

:class:`Engine` puts together the single-purpose parts of a running bot:

- on the **I/O loop** (a thread of its own that runs no user code): the
  :class:`~callflow.engine.intake.Intake` (dedupe, staleness, admission, deadlines through
  the :class:`~callflow.engine.deadline.DeadlineScheduler`) and the
  :class:`~callflow.engine.outbox.Outbox` (every decision leaves through it);
- on the **app loop** (the loop that enters :meth:`Engine.running`): the
  :class:`~callflow.engine.lanes.Lanes`, where handlers, observers, middleware and error hooks run.

They meet only through the crossing (:mod:`callflow.engine.crossing`): events go to the lanes,
claimed decisions come back to be sent, and the deadline's "stop these handlers" goes to the
lanes. A bot wires the webhook and Graph around it (:mod:`callflow.worker`); tests drive it
directly with :meth:`Engine.submit` and a recording sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import anyio

from callflow.decisions import Decision, Reject
from callflow.engine.book import CallBook
from callflow.engine.clock import MONOTONIC, Clock
from callflow.engine.crossing import Inbox, IoThread
from callflow.engine.deadline import DeadlineScheduler, DecisionSink, DecisionSlot
from callflow.engine.intake import STATE_RANK, EngineStats, Intake
from callflow.engine.lanes import Lanes
from callflow.engine.outbox import Outbox
from callflow.events import CallEvent, IncomingCall
from callflow.routing import Router

__all__ = ["STATE_RANK", "Engine", "EngineStats"]

T = TypeVar("T")


class Engine:
    """Runs a router's handlers for a stream of events with the deadline guarantee.

    ``sink`` delivers every decision, from the I/O loop (a Graph client in a bot, a
    :class:`~callflow.engine.deadline.RecordingSink` in tests); it may be given late, through
    :meth:`io_side`. ``clock`` is where deadlines are read (tests pass a
    :class:`~callflow.engine.clock.ManualClock`). Use ``async with engine.running():`` on the app
    loop, then :meth:`submit`.
    """

    def __init__(
        self,
        router: Router,
        *,
        sink: DecisionSink | None = None,
        clock: Clock = MONOTONIC,
        platform_timeout: float = 15.0,
        recording_timeout: float = 5.0,
        safety_margin: float = 3.0,
        max_pending: int = 10_000,
        deadline_send_rate: float = 500.0,
        max_send_backlog: int = 1_000,
        max_concurrent_sends: int = 256,
        shed_lag: float = 0.5,
        compact_above: int = 1_000,
        default_decision: Decision | None = None,
        drain_timeout: float = 15.0,
        recent_size: int = 100_000,
        recent_ttl: float = 600.0,
        max_queued_per_call: int = 256,
        max_queued_events: int = 10_000,
        services: Any = None,
        on_decided: Callable[[DecisionSlot, BaseException | None], None] | None = None,
        calls: CallBook | None = None,
        admit: Callable[[IncomingCall, DecisionSlot], Awaitable[bool]] | None = None,
    ) -> None:
        for name, bound in (
            ("max_queued_per_call", max_queued_per_call),
            ("max_queued_events", max_queued_events),
        ):
            if bound < 1:
                raise ValueError(f"{name} must be 1 or more events, got {bound}")
        self.default_decision: Decision = default_decision or Reject()
        self.drain_timeout = drain_timeout
        self.clock = clock
        self.stats = EngineStats()
        self.outbox = Outbox(sink, concurrency=max_concurrent_sends, on_decided=on_decided)
        self.intake = Intake(
            outbox=self.outbox,
            stats=self.stats,
            clock=clock,
            platform_timeout=platform_timeout,
            recording_timeout=recording_timeout,
            safety_margin=safety_margin,
            max_pending=max_pending,
            deadline_send_rate=deadline_send_rate,
            max_send_backlog=max_send_backlog,
            shed_lag=shed_lag,
            compact_above=compact_above,
            default_decision=self.default_decision,
            recent_size=recent_size,
            recent_ttl=recent_ttl,
            calls=calls,
            admit=admit,
        )
        self.outbox._on_sent = self.intake.sent
        self.lanes = Lanes(
            router,
            stats=self.stats,
            default_decision=self.default_decision,
            services=services,
            clock=clock,
        )
        self.lanes.max_queued = max_queued_per_call
        self.max_queued_events = max_queued_events
        """Observer events the app loop's inbox holds at most (the oldest go past it)."""
        self._io: IoThread | None = None
        self._to_io: Inbox | None = None
        self._to_app: Inbox | None = None

    # -- what the I/O side knows (read them from anywhere: they are snapshots) ---------------

    @property
    def calls(self) -> CallBook:
        """Every call this engine knows, bound to its tenant (on the I/O loop)."""
        return self.intake.calls

    @property
    def scheduler(self) -> DeadlineScheduler:
        """The deadline scheduler (on the I/O loop)."""
        return self.intake.scheduler

    @property
    def pending(self) -> int:
        """Incoming calls received and not yet decided."""
        return self.intake.pending

    @property
    def send_backlog(self) -> int:
        """Decisions made and not yet sent (or failed)."""
        return self.outbox.backlog

    @property
    def overloaded(self) -> bool:
        """See :attr:`Intake.overloaded <callflow.engine.intake.Intake.overloaded>`."""
        return self.intake.overloaded

    @property
    def max_send_backlog(self) -> int:
        """Decisions waiting to be sent at which a new call waits for room or gets 503."""
        return self.intake.max_send_backlog

    @property
    def ingress_lag(self) -> float:
        """How late the I/O loop runs (largest delay over the last second), in seconds."""
        return self.intake.lag.lag

    # -- lifecycle ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self, io: IoThread | None = None) -> AsyncIterator[Engine]:
        """Run the engine: the I/O side on ``io`` (a new :class:`IoThread` by default), the
        lanes on this loop. On exit: drain (``drain_timeout``), send the default for every
        call still undecided, wait for the sends, stop."""
        async with contextlib.AsyncExitStack() as stack:
            if io is None:
                io = await stack.enter_async_context(IoThread())
            await stack.enter_async_context(self.app_side(io))
            await stack.enter_async_context(io.enter(self.io_side))
            try:
                yield self
            finally:
                with anyio.CancelScope(shield=True):
                    await self.stop()

    @contextlib.asynccontextmanager
    async def app_side(self, io: IoThread) -> AsyncIterator[Lanes]:
        """Run the lanes on this (the app) loop and connect them with the I/O side on ``io``."""
        self._io = io
        stats = self.stats
        # Observer events may be dropped (the oldest first) while the app loop is held up;
        # an incoming call's hand-over, a deadline's stop and a flow's start never are.
        to_app = self._to_app = Inbox(
            asyncio.get_running_loop(),
            "app",
            max_droppable=self.max_queued_events,
            on_drop=lambda: stats.dropped_one("inbox_full"),  # on the I/O loop
        )
        to_io = self._to_io = io.inbox("io")
        intake, lanes = self.intake, self.lanes
        intake.observed = frozenset(lanes.routes.observers)
        take, stop_handlers, decided = lanes.take, lanes.stop_handlers, intake.decided
        post_app, post_observed, post_io = to_app.post, to_app.post_droppable, to_io.post

        def to_lanes(event: CallEvent, slot: DecisionSlot | None) -> None:
            if slot is None:
                post_observed(take, event, None)
            else:
                post_app(take, event, slot)

        intake.to_lanes = to_lanes
        intake.stop_handlers = lambda slot: post_app(stop_handlers, slot)
        lanes.decided = lambda slot: post_io(decided, slot)
        async with lanes.running():
            yield lanes

    @contextlib.asynccontextmanager
    async def io_side(self, sink: DecisionSink | None = None) -> AsyncIterator[Engine]:
        """Run the outbox and intake on this (the I/O) loop; enter it after :meth:`app_side`.

        On exit, whatever is still undecided gets the default and every decision is sent.
        """
        if sink is not None:
            self.outbox.sink = sink
        async with self.outbox.running():
            self.intake.start()
            try:
                yield self
            finally:
                await self.intake.stop(self.drain_timeout)

    async def stop(self, *, urgent: bool = False) -> None:
        """Drain (up to ``drain_timeout``; not at all when ``urgent``), then send the
        defaults of what is left and wait for every decision to leave. Idempotent."""
        grace = 0.0 if urgent else self.drain_timeout
        await self._on_io(lambda: self.intake.stop(grace))

    def begin_drain(self) -> None:
        """Stop taking new calls: from now on a new incoming call gets the default at once."""
        self._post_io(self.intake.begin_drain)

    def cut_drain(self) -> None:
        """End a running :meth:`drain` now (a second stop signal)."""
        self._post_io(self.intake.cut_drain)

    async def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for pending calls to be decided; True if none is left."""
        return await self._on_io(lambda: self.intake.drain(grace))

    # -- intake ------------------------------------------------------------------------------

    def submit(self, events: Iterable[CallEvent], received: float | None = None) -> None:
        """Take the events of one notification; never blocks, never waits for handlers.

        On the I/O loop (the webhook) they are taken at once; from any other thread they are
        handed to the I/O loop (:meth:`settle` waits until they were taken). ``received`` is
        the clock reading at which the notification arrived (now, by default).
        """
        if not self.intake.accepting:
            raise RuntimeError(
                "the engine is not running: start it with `async with engine.running()`"
            )
        io = self._io
        assert io is not None
        if threading.get_ident() == io.ident:
            self.intake.submit(events, received)
            return
        if received is None:
            received = self.clock.now()
        self._post_io(self.intake.submit, list(events), received)

    async def settle(self) -> None:
        """Return once the I/O loop has taken everything submitted before this call."""
        await self._on_io(_checkpoint)

    async def wait_for_room(self, within: float) -> bool:
        """See :meth:`Intake.wait_for_room <callflow.engine.intake.Intake.wait_for_room>`."""
        return await self._on_io(lambda: self.intake.wait_for_room(within))

    def post_app(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the app loop (from the I/O loop), behind what was posted."""
        inbox = self._to_app
        if inbox is None:
            raise RuntimeError("the engine is not running")
        inbox.post(fn, *args)

    def _post_io(self, fn: Callable[..., Any], *args: Any) -> None:
        io, inbox = self._io, self._to_io
        if io is None or inbox is None:
            raise RuntimeError("the engine is not running")
        if threading.get_ident() == io.ident:
            fn(*args)
        else:
            inbox.post(fn, *args)

    async def _on_io(self, fn: Callable[[], Awaitable[T]]) -> T:
        io = self._io
        if io is None:
            raise RuntimeError("the engine is not running")
        if threading.get_ident() == io.ident:
            return await fn()
        # Behind what was posted before: the crossing keeps order only within one inbox.
        inbox = self._to_io
        assert inbox is not None
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        app_loop = asyncio.get_running_loop()
        inbox.post(lambda: app_loop.call_soon_threadsafe(_resolve, ready))
        await ready
        return await io.run(fn)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _checkpoint() -> None:
    await asyncio.sleep(0)
