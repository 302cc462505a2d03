"""The event bus: events in, handlers run per call in arrival order, one decision out per call.

:class:`Engine` takes parsed events from the webhook (``submit`` is synchronous and never
waits), keeps one *lane* (a queue and a task) per call so a call's events are processed in
arrival order, drops redelivered and stale notifications, runs the incoming-call handlers
against the call's :class:`~callflow.deadline.DecisionSlot`, and hands each decision to the
sink. The :class:`~callflow.deadline.DeadlineScheduler` watches every slot from its own
thread.

Lane tasks are plain asyncio tasks owned by one ``asyncio.TaskGroup`` held by the engine: an
anyio task costs about three times the memory of an asyncio task, and a pending call should
cost a few kilobytes at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final

import anyio
import structlog

from ._parse import LazyItem
from .deadline import (
    DeadlineScheduler,
    DecisionSink,
    DecisionSlot,
    SinkFactory,
    SlotState,
)
from .decisions import Decision, Reject, is_decision
from .events import (
    CallEvent,
    CallStateChanged,
    CallTerminated,
    IncomingCall,
)
from .routing import _DIRECT, CallContext, CompiledRoutes, Router

__all__ = ["Engine", "EngineStats", "STATE_RANK"]

_SENT_BY_LANE: Final = frozenset({"admission", "shutdown"})
"""Slots claimed at intake whose decision the call's lane sends."""

log = structlog.get_logger(__name__)

STATE_RANK: Final[dict[str, int]] = {
    "incoming": 0,
    "establishing": 1,
    "established": 2,
    "hold": 2,
    "transferring": 2,
    "transferAccepted": 2,
    "redirecting": 2,
    "terminating": 3,
    "terminated": 4,
}
"""How far along a call is; a state update ranked below the last one seen is stale."""


class EngineStats:
    """Counters the engine keeps; read them for metrics. Single writer per counter."""

    __slots__ = (
        "admission_defaults",
        "decision_failures",
        "duplicates",
        "gone",
        "handler_errors",
        "late_decisions",
        "refused",
        "stale",
        "wave_defaults",
    )

    def __init__(self) -> None:
        self.duplicates = 0
        self.stale = 0
        self.late_decisions = 0
        self.handler_errors = 0
        self.admission_defaults = 0
        """Calls decided with the default at intake (MAX_PENDING reached, or a deadline wave
        the scheduler could not send in time)."""
        self.wave_defaults = 0
        """Of ``admission_defaults``: those whose deadline fell in an already full wave."""
        self.refused = 0
        """Incoming-call notifications refused with 503 because sending is behind."""
        self.decision_failures = 0
        self.gone = 0


class _Recent:
    """A bounded set of recently seen keys that forgets after ``ttl`` seconds."""

    __slots__ = ("_items", "_maxlen", "_ttl")

    def __init__(self, maxlen: int, ttl: float) -> None:
        self._items: OrderedDict[Any, float] = OrderedDict()
        self._maxlen = maxlen
        self._ttl = ttl

    def first(self, key: Any, now: float) -> bool:
        """Remember ``key``; True unless it was seen within the last ``ttl`` seconds."""
        items = self._items
        seen = items.get(key)
        if seen is not None and now - seen < self._ttl:
            return False
        items[key] = now
        items.move_to_end(key)
        if len(items) > self._maxlen:
            items.popitem(last=False)
        return True


def _stop_handlers(slot: DecisionSlot) -> None:
    """Cancel the handlers still running for ``slot`` (call in the bot's loop).

    Clearing ``cancel_handlers`` first tells the lane the cancellation is this one. A lane
    that stops its own call (a handler submitting the call's hang-up) is not cancelled: its
    handlers end as soon as the running one returns.
    """
    task = slot.cancel_handlers
    if task is not None and task is not asyncio.current_task():
        slot.cancel_handlers = None
        task.cancel()


def _event_key(event: CallEvent) -> Any:
    if isinstance(event, IncomingCall):
        return event.call_id  # the id alone: no key tuple kept per pending call
    if isinstance(event, CallStateChanged):
        return (event.call_id, "state", event.state, event.etag)
    if isinstance(event, CallTerminated):
        return (event.call_id, "terminated")
    return None


class Engine:
    """Runs a router's handlers for a stream of events with the deadline guarantee.

    ``sink`` delivers the decisions made in the bot's loop; ``scheduler_sink`` builds the sink
    the deadline thread uses for default decisions (defaults to the same object, which must
    then be usable from any event loop). Use ``async with engine.running():`` and call
    :meth:`submit` from the loop.
    """

    def __init__(
        self,
        router: Router,
        *,
        sink: DecisionSink,
        scheduler_sink: SinkFactory | None = None,
        platform_timeout: float = 15.0,
        recording_timeout: float = 5.0,
        safety_margin: float = 3.0,
        max_pending: int = 10_000,
        deadline_send_rate: float = 500.0,
        max_send_backlog: int = 1_000,
        compact_above: int = 1_000,
        default_decision: Decision | None = None,
        drain_timeout: float = 15.0,
        recent_size: int = 100_000,
        recent_ttl: float = 600.0,
        services: Any = None,
        on_decided: Callable[[DecisionSlot, BaseException | None], None] | None = None,
        on_terminated: Callable[[str], None] | None = None,
        admit: Callable[[IncomingCall, DecisionSlot], Awaitable[bool]] | None = None,
    ) -> None:
        if safety_margin >= min(platform_timeout, recording_timeout):
            raise ValueError(
                f"safety_margin ({safety_margin} s) must be shorter than the platform timeouts "
                f"({platform_timeout} s, {recording_timeout} s for policy recording)"
            )
        self._router = router
        self._sink = sink
        self.default_decision: Decision = default_decision or Reject()
        self._timeout = platform_timeout - safety_margin
        self._recording_timeout = recording_timeout - safety_margin
        self._expiry = platform_timeout
        self._recording_expiry = recording_timeout
        self.max_pending = max_pending
        self.max_send_backlog = max_send_backlog
        self.compact_above = compact_above
        """With this many calls pending, a new call keeps its body text compressed: about
        1 KB less per call for ~10 us more at intake."""
        # Undecided calls by deadline bucket (width: an eighth of the safety margin). The
        # scheduler thread can send about ``deadline_send_rate`` defaults a second, and it has
        # one safety margin to send a call's default before the platform gives up; so at most
        # rate x margin undecided calls may fall due within any one margin.
        slack = max(safety_margin, 0.1)
        self._wave_width = slack / 8
        self._wave_limit = max(1, int(deadline_send_rate * slack))
        self._wave: dict[int, int] = {}
        # The last window summed: buckets [first, last) hold ``base`` calls.
        self._span_first = self._span_last = self._span_base = 0
        self.drain_timeout = drain_timeout
        self._services = services
        self._on_decided = on_decided
        self._on_terminated = on_terminated
        self._admit_hook = admit
        self.stats = EngineStats()
        self._recent = _Recent(recent_size, recent_ttl)
        self._tracks: OrderedDict[str, tuple[int | None, int]] = OrderedDict()
        self._tracks_max = recent_size
        # call id -> events queued behind the running lane (None: nothing queued yet)
        self._lanes: dict[str, list[tuple[CallEvent, DecisionSlot | None]] | None] = {}
        self._open: dict[str, DecisionSlot] = {}
        self._routes: CompiledRoutes | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Event | None = None
        self._accepting = False
        self._draining = False
        self._drain_until: float | None = None
        self._cut: asyncio.Event | None = None
        self._sending = 0
        self._queued = 0  # decided at intake, not yet handed to the sink
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self._sends_done: asyncio.Event | None = None

        def factory() -> contextlib.AbstractAsyncContextManager[DecisionSink]:
            return contextlib.nullcontext(sink)

        self.scheduler = DeadlineScheduler(
            scheduler_sink or factory,
            self.default_decision,
            on_default=self._on_scheduler_claim,
            on_sent=self._on_scheduler_sent,
        )

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Incoming calls received and not yet decided."""
        return len(self._open)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Engine]:
        """Start the scheduler thread and the lanes; on exit drain, flush defaults, stop."""
        self._routes = self._router.freeze()
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._cut = asyncio.Event()
        self._draining = False
        self._drain_until = None
        async with self.scheduler.running():
            with anyio.CancelScope() as lanes:
                async with asyncio.TaskGroup() as tg:
                    self._tg = tg
                    self._accepting = True
                    try:
                        yield self
                    finally:
                        self._accepting = False
                        with anyio.CancelScope(shield=True):
                            await self.drain(self.drain_timeout)
                            await anyio.to_thread.run_sync(self.scheduler.stop)
                            with anyio.move_on_after(self._expiry):
                                while self._sending:
                                    self._sends_done = asyncio.Event()
                                    await self._sends_done.wait()
                        lanes.cancel()
        self._tg = None

    def begin_drain(self) -> None:
        """Stop taking new calls: from now on a new incoming call gets the default at once."""
        self._draining = True

    def cut_drain(self) -> None:
        """End a running :meth:`drain` now (a second stop signal)."""
        if self._cut is not None:
            self._cut.set()

    async def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for pending calls to be decided; True if none is left.

        Returns early when :meth:`cut_drain` is called.
        """
        assert self._idle is not None
        assert self._cut is not None
        self._draining = True
        # One drain per stop: a second call (the engine's own exit after the bot's) waits
        # only for what is left of the first one's grace.
        if self._drain_until is None:
            self._drain_until = time.monotonic() + grace
        with anyio.move_on_after(max(0.0, self._drain_until - time.monotonic())):
            while self._open and not self._cut.is_set():
                self._idle.clear()
                async with anyio.create_task_group() as tg:

                    async def wait(event: asyncio.Event) -> None:
                        await event.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(wait, self._idle)
                    tg.start_soon(wait, self._cut)
        return not self._open

    # -- intake ----------------------------------------------------------------------------

    def submit(self, events: Iterable[CallEvent], received: float | None = None) -> None:
        """Take events from one notification; never blocks, never waits for handlers.

        ``received`` is the ``time.monotonic()`` at which the notification arrived; deadlines
        count from it.
        """
        if not self._accepting:
            raise RuntimeError(
                "the engine is not running: start it with `async with engine.running()`"
            )
        now = time.monotonic() if received is None else received
        for event in events:
            key = _event_key(event)
            if key is not None and not self._recent.first(key, now):
                self.stats.duplicates += 1
                log.info("event.duplicate", call_id=event.call_id, kind=type(event).__name__)
                continue
            slot: DecisionSlot | None = None
            if isinstance(event, IncomingCall):
                slot = self._admit(event, now)
            elif isinstance(event, CallStateChanged | CallTerminated) and self._is_stale(event):
                continue
            call_id = event.call_id or ""
            lanes = self._lanes
            if call_id in lanes:  # a lane is running for this call: queue behind it
                queued = lanes[call_id]
                if queued is None:
                    lanes[call_id] = [(event, slot)]
                else:
                    queued.append((event, slot))
                continue
            lanes[call_id] = None
            assert self._tg is not None
            if slot is not None:
                self._tg.create_task(self._decide(event, slot, call_id))  # type: ignore[arg-type]
            else:
                self._tg.create_task(self._run_lane(call_id, event))

    def _admit(self, call: IncomingCall, now: float) -> DecisionSlot:
        if call.is_policy_recording:
            slot = DecisionSlot(
                call, now, now + self._recording_timeout, now + self._recording_expiry
            )
        else:
            slot = DecisionSlot(call, now, now + self._timeout, now + self._expiry)
        if self._draining:
            slot.claim(self.default_decision, "shutdown")
            self._queued += 1
            log.warning("call.shutdown_default", call_id=call.call_id)
            return slot
        if len(self._open) >= self.max_pending:
            return self._default_at_intake(slot, "max_pending")
        if not self._join_wave(slot.deadline, now):
            # Held, this call would fall due with more undecided calls than the scheduler
            # can send within the safety margin: default it now, while sending keeps up.
            self.stats.wave_defaults += 1
            return self._default_at_intake(slot, "deadline_wave")
        if len(self._open) >= self.compact_above:
            raw = call.raw
            if type(raw) is LazyItem:
                raw.compact()
        self._open[call.call_id] = slot
        self.scheduler.schedule(slot)
        return slot

    def _default_at_intake(self, slot: DecisionSlot, cause: str) -> DecisionSlot:
        """Admission control: decide ``slot`` with the default now; its lane sends it."""
        self.stats.admission_defaults += 1
        slot.claim(self.default_decision, "admission")
        self._queued += 1
        log.warning(
            "call.admission_default", call_id=slot.call_id, pending=len(self._open), cause=cause
        )
        return slot

    @property
    def send_backlog(self) -> int:
        """Decisions made and not yet sent (or failed): queued, in flight, or the deadline
        thread's."""
        return self._queued + self._sending + self.scheduler.unsent

    @property
    def overloaded(self) -> bool:
        """True while more decisions wait to be sent than :attr:`max_send_backlog`: a new
        incoming call should then wait for room (:meth:`wait_for_room`) or be refused (503)
        rather than be taken and decided late."""
        return self.send_backlog >= self.max_send_backlog

    async def wait_for_room(self, within: float) -> bool:
        """Wait up to ``within`` seconds until the send backlog is below its limit.

        True when there is room (at once when not :attr:`overloaded`); waiters get room in
        arrival order, as decisions are sent.
        """
        if not self.overloaded:
            return True
        if within <= 0:
            return False
        assert self._loop is not None
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._room_waiters.append(waiter)
        try:
            async with asyncio.timeout(within):
                await waiter
        except TimeoutError:
            return False
        finally:
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._room_waiters.remove(waiter)
        return True

    def _wake_room_waiters(self) -> None:
        """Let as many waiting notifications in as the send backlog has room for."""
        waiters = self._room_waiters
        room = self.max_send_backlog - self.send_backlog
        while room > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                room -= 1

    def _join_wave(self, deadline: float, now: float) -> bool:
        """Count a held call due at ``deadline``; False when its wave is full."""
        width = self._wave_width
        wave = self._wave
        last = int(deadline / width)
        first = max(last - 7, int(now / width))
        if last != self._span_last or first != self._span_first:
            # The window moved (every eighth of a margin): sum its older buckets once.
            base = 0
            for bucket in range(first, last):
                base += wave.get(bucket, 0)
            self._span_first, self._span_last, self._span_base = first, last, base
        if self._span_base + wave.get(last, 0) >= self._wave_limit:
            return False
        held = wave.get(last)
        if held is None:
            if len(wave) > 64:  # forget the buckets that are already due
                current = int(now / width)
                for bucket in [b for b in wave if b < current]:
                    del wave[bucket]
            wave[last] = 1
        else:
            wave[last] = held + 1
        return True

    def _leave_wave(self, slot: DecisionSlot) -> None:
        """The call was decided (or gone) before its deadline: it no longer falls due."""
        bucket = int(slot.deadline / self._wave_width)
        held = self._wave.get(bucket)
        if held:
            self._wave[bucket] = held - 1
            if self._span_first <= bucket < self._span_last:
                self._span_base -= 1

    def _is_stale(self, event: CallStateChanged | CallTerminated) -> bool:
        if isinstance(event, CallTerminated):
            etag, rank = None, STATE_RANK["terminated"]
            if self._on_terminated is not None:
                self._on_terminated(event.call_id)
            slot = self._open.get(event.call_id)
            if slot is not None and slot.close_gone():
                # The caller hung up before anyone decided: stop the handlers, send nothing.
                self._open.pop(event.call_id, None)
                self._leave_wave(slot)
                self.stats.gone += 1
                _stop_handlers(slot)
                log.info("call.gone_before_decision", call_id=event.call_id)
                self._released(slot)
        else:
            etag, rank = event.etag, STATE_RANK.get(event.state, 2)
        tracks = self._tracks
        last = tracks.get(event.call_id)
        if last is not None:
            last_etag, last_rank = last
            stale = (
                etag < last_etag if etag is not None and last_etag is not None else rank < last_rank
            )
            if stale:
                self.stats.stale += 1
                log.info("event.stale", call_id=event.call_id, state=getattr(event, "state", None))
                return True
            tracks.move_to_end(event.call_id)
        tracks[event.call_id] = (etag, rank)
        if len(tracks) > self._tracks_max:
            tracks.popitem(last=False)
        return False

    # -- lanes -----------------------------------------------------------------------------

    async def _run_lane(self, call_id: str, event: CallEvent) -> None:
        """The lane of a call whose first event is not an incoming call."""
        try:
            try:
                await self._observe(event)
            except Exception:  # pragma: no cover - _observe handles its own
                log.exception("lane.failed", call_id=call_id)
            if self._lanes[call_id]:
                await self._run_queued(call_id)
        finally:
            del self._lanes[call_id]

    async def _run_queued(self, call_id: str) -> None:
        """Process the events queued behind a lane's first event, in arrival order."""
        lanes = self._lanes
        while queued := lanes[call_id]:
            event, slot = queued.pop(0)
            try:
                if slot is not None:
                    await self._decide(event, slot)  # type: ignore[arg-type]
                else:
                    await self._observe(event)
            except Exception:  # pragma: no cover - _decide and _observe handle their own
                log.exception("lane.failed", call_id=call_id)

    async def _decide(
        self, call: IncomingCall, slot: DecisionSlot, lane: str | None = None
    ) -> None:
        """Run the handlers until one decides (the default when none does), then send.

        As the lane of a new call (``lane`` is its id) it then processes the events queued
        behind it: one coroutine frame per pending call instead of two.
        """
        try:
            send = False
            if (
                self._admit_hook is not None
                and slot.is_open
                and not await self._admit_hook(call, slot)
            ):
                # Another worker of the fleet owns this call (a redelivery that landed here).
                if slot.close_gone():
                    self._open.pop(call.call_id, None)
                    self._leave_wave(slot)
                    self.stats.duplicates += 1
                    log.info(
                        "event.duplicate", call_id=call.call_id, kind="IncomingCall", shared=True
                    )
                    self._released(slot)
            elif slot.is_open:
                decided_by = "default"
                decision: Decision | None = None
                assert self._routes is not None
                ctx: CallContext | None = None
                # The deadline or the caller hanging up cancels this task while it runs the
                # handlers (_stop_handlers); a cancellation from anywhere else goes on.
                task = asyncio.current_task()
                assert task is not None
                cancelling = task.cancelling()
                slot.cancel_handlers = task
                stopped = False
                try:
                    try:
                        for inv in self._routes.handlers:
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
                                            call.call_id, slot.deadline, self._services
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
                send = self._settle(call, slot, decision, decided_by)
            elif slot.decided_by in _SENT_BY_LANE:
                self._queued -= 1
                send = True
            # else: the caller hung up, or the scheduler decided and sends it itself
            if send:
                chosen = slot.decision
                assert chosen is not None
                # Not cancelled at shutdown: the engine waits for sends in flight before it
                # cancels the lanes (a cancel scope per call would cost more than the rest).
                self._sending += 1
                error: BaseException | None = None
                try:
                    result = await self._sink.deliver(call, chosen, slot.expires)
                    slot.attempts = getattr(result, "attempts", 1)
                except Exception as exc:
                    error = exc
                finally:
                    self._sending -= 1
                    if not self._sending and self._sends_done is not None:
                        self._sends_done.set()
                self._finish(slot, error)
                if self._room_waiters:
                    self._wake_room_waiters()
            if lane is not None and self._lanes[lane]:
                await self._run_queued(lane)
        finally:
            if lane is not None:
                del self._lanes[lane]

    def _settle(
        self, call: IncomingCall, slot: DecisionSlot, decision: Decision | None, decided_by: str
    ) -> bool:
        """Claim the slot for what the handlers chose; True if this lane must send it."""
        if not slot.claim(decision or self.default_decision, decided_by):
            if decided_by != "default" and slot.state == SlotState.DECIDED:
                self.stats.late_decisions += 1
                log.warning(
                    "call.late_decision",
                    call_id=call.call_id,
                    handler=decided_by,
                    decided_by=slot.decided_by,
                )
            return False
        self._open.pop(call.call_id, None)
        self._leave_wave(slot)
        return True

    async def _observe(self, event: CallEvent) -> None:
        assert self._routes is not None
        invokers = self._routes.observers_for(event)
        if not invokers:
            return
        ctx = CallContext(event.call_id, None, self._services)
        for inv in invokers:
            try:
                if inv.where is not None and not inv.where(event):
                    continue
                await inv.call(event, ctx)
            except Exception as exc:
                await self._handler_failed(exc, event, inv.name)

    async def _handler_failed(self, exc: BaseException, event: CallEvent, name: str) -> None:
        self.stats.handler_errors += 1
        log.error(
            "handler.failed",
            call_id=event.call_id,
            handler=name,
            error=f"{type(exc).__name__}: {exc}",
            exc_info=exc,
        )
        assert self._routes is not None
        for hook in self._routes.error_hooks:
            try:
                result = hook(exc, event)
                if result is not None:
                    await result
            except Exception as hook_exc:
                log.error("error_hook.failed", call_id=event.call_id, error=repr(hook_exc))

    # -- the scheduler's side (runs in the scheduler thread) ------------------------------

    def _on_scheduler_claim(self, slot: DecisionSlot) -> None:
        self._open.pop(slot.call_id, None)
        loop, cancel = self._loop, slot.cancel_handlers
        if loop is not None and cancel is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._cancel_if_running, slot)

    @staticmethod
    def _cancel_if_running(slot: DecisionSlot) -> None:
        _stop_handlers(slot)

    def _on_scheduler_sent(self, slot: DecisionSlot, error: BaseException | None) -> None:
        self._finish(slot, error)
        loop = self._loop
        if self._room_waiters and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(self._wake_room_waiters)

    # -- both threads ----------------------------------------------------------------------

    def _finish(self, slot: DecisionSlot, error: BaseException | None) -> None:
        """Log the call's summary line, report it, and let go of the call.

        A delivery that sent nothing (``attempts == 0``: another worker of the fleet sent
        this call's decision) is neither logged as decided nor reported to ``on_decided``.
        """
        if error is None and slot.attempts == 0:
            self._released(slot)
            return
        decision = slot.decision
        assert decision is not None
        fields = {
            "call_id": slot.call_id,
            "decision": decision.kind,
            "reason": getattr(decision, "reason", None),
            "decided_by": slot.decided_by,
            "latency_ms": round((time.monotonic() - slot.received) * 1000.0, 3),
        }
        if error is None:
            log.info("call.decided", attempts=slot.attempts, **fields)
        else:
            self.stats.decision_failures += 1
            log.error("call.decision_failed", error=f"{type(error).__name__}: {error}", **fields)
        if self._on_decided is not None:
            try:
                self._on_decided(slot, error)
            except Exception:  # pragma: no cover - a metrics hook must not break delivery
                log.exception("on_decided.failed", call_id=slot.call_id)
        self._released(slot)

    def _released(self, slot: DecisionSlot) -> None:
        slot.call = None
        if not self._open and self._idle is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._idle.set)
