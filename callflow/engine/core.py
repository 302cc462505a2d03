"""The engine: a bot's handlers run with the deadline guarantee, across two event loops.

:class:`Engine` puts together the single-purpose parts of a running bot:

- on the **I/O loop** (a thread of its own that runs no user code): the
  :class:`~callflow.engine.intake.Intake` (dedupe, staleness, admission, deadlines through
  the :class:`~callflow.engine.deadline.DeadlineScheduler`) and the
  :class:`~callflow.engine.outbox.Outbox` (every decision leaves through it);
- on the **app loop** (the loop that enters :meth:`Engine.running`): the
  :class:`~callflow.engine.lanes.Lanes`, where handlers, observers, middleware and error
  hooks run.

They meet only through the crossing (:mod:`callflow.engine.crossing`): events go to the lanes,
claimed decisions come back to be sent, and the deadline's "stop these handlers" goes to the
lanes. A bot wires the webhook and Graph around it (:mod:`callflow.worker`); tests drive it
directly with :meth:`Engine.submit` and a recording sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import anyio

from callflow.clock import MONOTONIC, Clock
from callflow.control.book import CallBook
from callflow.decisions import Decision, Reject
from callflow.engine.crossing import Inbox, IoThread
from callflow.engine.deadline import DeadlineScheduler, DecisionSink, DecisionSlot
from callflow.engine.intake import Intake, LaneLink
from callflow.engine.lanes import Failure, Lanes
from callflow.engine.limits import Limits
from callflow.engine.outbox import OnDecided
from callflow.engine.stats import EngineStats
from callflow.events import CallEvent, IncomingCall
from callflow.routing import Router

__all__ = ["Engine"]

T = TypeVar("T")


class Engine:
    """Runs a router's handlers for a stream of events with the deadline guarantee.

    ``sink`` delivers every decision, from the I/O loop (a Graph client in a bot, a
    :class:`~callflow.engine.deadline.RecordingSink` in tests); it may be given late, through
    :meth:`io_side`. ``limits`` bound it (:class:`~callflow.engine.limits.Limits`); ``clock``
    is where deadlines are read (tests pass a :class:`~callflow.clock.ManualClock`).
    ``on_failure(failure)`` is told, on the app loop, of every failure of the bot's own code
    (:class:`~callflow.engine.lanes.Failure`).
    ``on_decided``, ``calls``, ``admit`` and ``on_events`` go to the
    :class:`~callflow.engine.intake.Intake`. Use ``async with engine.running():`` on the app
    loop, then :meth:`submit`.
    """

    def __init__(
        self,
        router: Router,
        *,
        sink: DecisionSink | None = None,
        limits: Limits | None = None,
        clock: Clock = MONOTONIC,
        default_decision: Decision | None = None,
        services: Any = None,
        on_decided: OnDecided | None = None,
        calls: CallBook | None = None,
        admit: Callable[[IncomingCall, DecisionSlot], Awaitable[bool]] | None = None,
        on_events: Callable[[Sequence[CallEvent]], None] | None = None,
        on_failure: Callable[[Failure], None] | None = None,
    ) -> None:
        limits = self.limits = limits if limits is not None else Limits()
        self.default_decision: Decision = default_decision or Reject()
        self.drain_timeout = limits.drain_timeout
        self.clock = clock
        self.stats = EngineStats()
        self._sink = sink
        self.intake = Intake(
            limits=limits,
            stats=self.stats,
            clock=clock,
            default_decision=self.default_decision,
            calls=calls,
            on_decided=on_decided,
            admit=admit,
            on_events=on_events,
        )
        self.outbox = self.intake.outbox
        self.lanes = Lanes(
            router,
            stats=self.stats,
            default_decision=self.default_decision,
            services=services,
            clock=clock,
            max_queued=limits.max_queued_per_call,
            on_failure=on_failure,
        )
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
        return self.limits.max_send_backlog

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
            max_droppable=self.limits.max_queued_events,
            on_drop=lambda: stats.dropped_one("inbox_full"),  # on the I/O loop
        )
        to_io = self._to_io = io.inbox("io")
        lanes = self.lanes
        take, stop_handlers, decided = lanes.take, lanes.stop_handlers, self.intake.decided
        post_app, post_observed, post_io = to_app.post, to_app.post_droppable, to_io.post

        def to_lanes(event: CallEvent, slot: DecisionSlot | None) -> None:
            if slot is None:
                post_observed(take, event, None)
            else:
                post_app(take, event, slot)

        link = LaneLink(
            to_lanes=to_lanes,
            stop_handlers=lambda slot: post_app(stop_handlers, slot),
            observed=frozenset(lanes.routes.observers),
        )

        async def bind() -> None:
            self.intake.bind_lanes(link)

        async with lanes.running(decided=lambda slot: post_io(decided, slot)):
            await self._on_io(bind)  # before any event can be submitted
            yield lanes

    @contextlib.asynccontextmanager
    async def io_side(self, sink: DecisionSink | None = None) -> AsyncIterator[Engine]:
        """Run the outbox (delivering through ``sink``, else the engine's) and the intake on
        this (the I/O) loop; enter it after :meth:`app_side`.

        On exit, whatever is still undecided gets the default and every decision is sent.
        """
        sink = sink if sink is not None else self._sink
        if sink is None:
            raise RuntimeError("the engine has no decision sink: give one to Engine or io_side")
        async with self.outbox.running(sink):
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
