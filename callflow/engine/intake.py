"""Intake: what the I/O loop does with the events of a notification before any handler runs.

For each event the :class:`Intake` drops notifications about calls the worker does not know
(:class:`~callflow.control.book.CallBook`: every call is bound to its tenant there from
admission to its end), redeliveries and stale state updates (:mod:`~callflow.engine.dedupe`),
gives a new incoming call its :class:`~callflow.engine.deadline.DecisionSlot` (deadline
counted from when the notification reached the worker, less how late the I/O loop is
running: :mod:`~callflow.engine.lag`), decides it with the default at once when the worker
could not decide it in time otherwise (:mod:`~callflow.engine.admission`), watches its
deadline, and hands the event to the app loop's lanes through the crossing. Decisions come
back here (:meth:`Intake.decided`) and leave through the intake's
:class:`~callflow.engine.outbox.Outbox`.

Everything here runs on the I/O loop and touches no user code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final

import attrs
import structlog

from callflow._log import Throttle
from callflow._parse import LazyItem
from callflow.clock import MONOTONIC, Clock
from callflow.control.book import CallBook
from callflow.decisions import Answer, Decision, Reject
from callflow.engine.admission import DEADLINE_WAVE, INGRESS_LAG, SHUTDOWN, Admission
from callflow.engine.deadline import DeadlineScheduler, DecisionSlot
from callflow.engine.dedupe import STATE_RANK, Recent, Track, event_key, is_stale
from callflow.engine.lag import LagProbe
from callflow.engine.limits import Limits
from callflow.engine.outbox import OnDecided, Outbox
from callflow.engine.stats import EngineStats
from callflow.events import CallEvent, CallStateChanged, CallTerminated, IncomingCall

__all__ = ["Intake", "LaneLink"]

log = structlog.get_logger(__name__)


class _AllTypes(frozenset[type]):
    """Every event type (until the engine knows which ones are observed)."""

    def __contains__(self, item: object) -> bool:
        return True


_ALL_TYPES: Final = _AllTypes()


@attrs.frozen
class LaneLink:
    """How the intake reaches the app loop's lanes, bound once the loops run: hand an event
    over (``to_lanes(event, slot)``), stop a call's handlers (``stop_handlers(slot)``), and
    which event types have observers at all (others are not handed over)."""

    to_lanes: Callable[[CallEvent, DecisionSlot | None], None]
    stop_handlers: Callable[[DecisionSlot], None]
    observed: frozenset[type] = _ALL_TYPES


class Intake:
    """Takes events in on the I/O loop; see the module docstring.

    ``limits`` bound it; ``calls`` is the worker's book of calls (a new one by default);
    ``on_decided(slot, error)`` is told of every decision sent; ``admit(call, slot)`` (fleet
    mode) says whether this worker owns a new call; ``on_events(events)`` is told of every
    event of a known call first (call control's registry). :meth:`bind_lanes` binds the
    app loop's lanes once they run.
    """

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        stats: EngineStats | None = None,
        clock: Clock = MONOTONIC,
        default_decision: Decision | None = None,
        calls: CallBook | None = None,
        on_decided: OnDecided | None = None,
        admit: Callable[[IncomingCall, DecisionSlot], Awaitable[bool]] | None = None,
        on_events: Callable[[Sequence[CallEvent]], None] | None = None,
    ) -> None:
        limits = self.limits = limits if limits is not None else Limits()
        self.stats = stats if stats is not None else EngineStats()
        self.clock = clock
        self.default_decision: Decision = default_decision or Reject()
        self.outbox = Outbox(
            concurrency=limits.max_concurrent_sends,
            max_backlog=limits.max_send_backlog,
            on_decided=on_decided,
            on_sent=self.sent,
        )
        self._admission = Admission(limits)
        self._compact_above = limits.compact_above
        """With this many calls pending, a new call keeps its body text compressed: about
        1 KB less per call for ~10 us more at intake."""
        self.calls = calls if calls is not None else CallBook(clock=clock)
        """Every call this worker knows, bound to its tenant (shared with call control)."""
        self.calls.on_hold(self._created)
        self._unknown_log = Throttle(1.0)
        self._admit_hook = admit
        self._on_events = on_events
        self._recent = Recent(limits.recent_size, limits.recent_ttl)
        self._tracks: OrderedDict[str, Track] = OrderedDict()
        self._open: dict[str, DecisionSlot] = {}
        self._admitting: dict[str, list[tuple[CallEvent, DecisionSlot | None]]] = {}
        self._changed: asyncio.Event | None = None
        """Set when the last pending call was decided, or the drain was cut short."""
        self._cut = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.scheduler = DeadlineScheduler(self.default_decision, on_due=self._due, clock=clock)
        self.lag = LagProbe()
        self._lanes: LaneLink | None = None
        self._observed: frozenset[type] = _ALL_TYPES
        self.accepting = False
        self.draining = False
        self._drain_until: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle (the I/O loop) -----------------------------------------------------------

    @property
    def pending(self) -> int:
        """Incoming calls received and not yet decided."""
        return len(self._open)

    def bind_lanes(self, lanes: LaneLink) -> None:
        """Hand events to ``lanes`` (the app loop's, reached through the crossing) from now
        on; bound once, before the first event is submitted."""
        self._lanes = lanes
        self._observed = lanes.observed

    def start(self) -> None:
        """Start taking events on the running loop: deadlines and the lag probe run."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._cut = False
        self.scheduler.start(self._loop)
        if self.clock is MONOTONIC:
            self.lag.start(self._loop)
        self.accepting = True
        self.draining = False
        self._drain_until = None

    def begin_drain(self) -> None:
        """Stop taking new calls: from now on a new incoming call gets the default at once."""
        self.draining = True

    def cut_drain(self) -> None:
        """End a running :meth:`drain` now (a second stop signal)."""
        self._cut = True
        if self._changed is not None:
            self._changed.set()

    async def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for pending calls to be decided; True if none is left.

        Returns early when :meth:`cut_drain` is called. One drain per stop: a second call
        waits only for what is left of the first one's grace.
        """
        changed = self._changed
        assert changed is not None
        self.draining = True
        now = time.monotonic()
        if self._drain_until is None:
            self._drain_until = now + grace
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, self._drain_until - now)):
                while self._open and not self._cut:
                    changed.clear()
                    await changed.wait()
        return not self._open

    async def stop(self, grace: float) -> None:
        """Drain (at most ``grace`` seconds), then send the default for every call still
        undecided and wait (at most one platform timeout) until every decision has left."""
        self.begin_drain()
        await self.drain(grace)
        self.accepting = False
        self.lag.stop()
        for slot in self.scheduler.stop():
            self._due(slot)
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.limits.platform_timeout):
                await self.outbox.idle()

    # -- intake ------------------------------------------------------------------------------

    def submit(
        self,
        events: Iterable[CallEvent],
        received: float | None = None,
        scenario_id: str | None = None,
    ) -> None:
        """Take the events of one notification; never blocks, never waits for handlers.

        ``received`` is the clock reading at which the notification arrived; deadlines count
        from it, less how late the I/O loop is running. ``scenario_id`` (the notification's
        header) goes into the summary line of a new call.
        """
        if not self.accepting:
            raise RuntimeError(
                "the engine is not running: start it with `async with engine.running()`"
            )
        now = self.clock.now() if received is None else received
        calls = self.calls
        on_events = self._on_events
        for event in events:
            slot: DecisionSlot | None = None
            if type(event) is IncomingCall:
                if not self._recent.first(event.call_id, now):
                    self.stats.duplicates += 1
                    log.info("event.duplicate", call_id=event.call_id, kind="IncomingCall")
                    continue
                slot = self._admit(event, now)
                slot.scenario_id = scenario_id
                if not slot.is_open:  # decided at intake: no handler sees it
                    self.outbox.send(slot)
                    continue
            else:
                call_id = event.call_id
                if call_id is not None and not calls.knows(call_id):
                    self._unknown(event, now)
                    continue
                if on_events is not None:
                    on_events((event,))
                if type(event) is CallTerminated:
                    calls.end(event.call_id, event.result)
                key = event_key(event)
                if key is not None and not self._recent.first(key, now):
                    self.stats.duplicates += 1
                    log.info("event.duplicate", call_id=call_id, kind=type(event).__name__)
                    continue
                if isinstance(event, CallStateChanged | CallTerminated) and self._stale(event):
                    continue
                if type(event) not in self._observed:
                    continue  # nobody observes it: no reason to wake the app loop for it
            call_id = event.call_id or ""
            held = self._admitting.get(call_id)
            if held is not None:  # the fleet is still deciding who owns this call
                held.append((event, slot))
            elif slot is not None and self._admit_hook is not None:
                self._admitting[call_id] = []
                self._spawn(self._admit_then_hand_over(event, slot))  # type: ignore[arg-type]
            else:
                assert self._lanes is not None
                self._lanes.to_lanes(event, slot)

    def _unknown(self, event: CallEvent, now: float) -> None:
        """A notification about a call this worker does not know: drop it, count it; keep it
        briefly while the bot creates a call (it may be about that call)."""
        if self.calls.park(event, now):
            return
        self.stats.unknown += 1
        suppressed = self._unknown_log.admit("unknown")
        if suppressed is not None:
            log.info(
                "event.unknown_call",
                call_id=event.call_id,
                kind=type(event).__name__,
                suppressed=suppressed,
            )

    def _created(self, call_id: str) -> None:
        """The bot created (or joined) ``call_id``: take what arrived for it meanwhile."""
        for event, received in self.calls.unpark(call_id):
            self.submit((event,), received)

    def _admit(self, call: IncomingCall, now: float) -> DecisionSlot:
        self.calls.admit(call.call_id, call.tenant_id)
        # The platform's clock started when it sent the notification: count the time the
        # notification probably waited before this loop could read it.
        lag = self.lag.lag
        sent = now - lag
        limits = self.limits
        if call.is_policy_recording:
            slot = DecisionSlot(
                call,
                sent,
                sent + limits.decide_recording_within,
                sent + limits.recording_timeout,
            )
        else:
            slot = DecisionSlot(
                call, sent, sent + limits.decide_within, sent + limits.platform_timeout
            )
        cause = self._admission.judge(
            draining=self.draining,
            pending=len(self._open),
            lag=lag,
            deadline=slot.deadline,
            now=now,
        )
        if cause is not None:
            return self._default_at_intake(slot, cause)
        if len(self._open) >= self._compact_above:
            raw = call.raw
            if type(raw) is LazyItem:
                raw.compact()
        self._open[call.call_id] = slot
        self.scheduler.schedule(slot)
        return slot

    def _default_at_intake(self, slot: DecisionSlot, cause: str) -> DecisionSlot:
        """Admission control: decide ``slot`` with the default now (see
        :mod:`~callflow.engine.admission` for the causes)."""
        if cause == SHUTDOWN:
            slot.claim(self.default_decision, "shutdown")
            log.warning("call.shutdown_default", call_id=slot.call_id)
            return slot
        stats = self.stats
        stats.admission_defaults += 1
        if cause == INGRESS_LAG:
            stats.shed += 1
        elif cause == DEADLINE_WAVE:
            stats.wave_defaults += 1
        slot.claim(self.default_decision, "admission")
        log.warning(
            "call.admission_default", call_id=slot.call_id, pending=len(self._open), cause=cause
        )
        return slot

    def _spawn(self, coro: Awaitable[None]) -> None:
        assert self._loop is not None
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        # Owned here: kept in _tasks until done, cancelled by stop().
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _admit_then_hand_over(self, call: IncomingCall, slot: DecisionSlot) -> None:
        """Fleet mode: ask the store whether this worker owns the call, then hand it (and
        whatever arrived for it meanwhile) to the lanes, or drop it as another's."""
        owned = True
        try:
            assert self._admit_hook is not None
            owned = await self._admit_hook(call, slot)
        except Exception:  # the store decides with the local slot when Redis fails
            log.exception("call.admit_failed", call_id=call.call_id)
        finally:
            held = self._admitting.pop(call.call_id, [])
        if not owned:
            # Another worker of the fleet owns this call (a redelivery that landed here).
            self.calls.forget(call.call_id)
            if slot.close_gone():
                self._forget(slot)
                self.stats.duplicates += 1
                log.info("event.duplicate", call_id=call.call_id, kind="IncomingCall", shared=True)
            slot.call = None
            self._released()
            for event, other in held:
                if other is None:
                    self._hand_over(event, None)
            return
        self._hand_over(call, slot)
        for event, other in held:
            self._hand_over(event, other)

    def _hand_over(self, event: CallEvent, slot: DecisionSlot | None) -> None:
        if slot is not None and not slot.is_open:
            return  # decided meanwhile (deadline, hang-up): nothing for the handlers to do
        assert self._lanes is not None
        self._lanes.to_lanes(event, slot)

    # -- decisions (the I/O loop) -----------------------------------------------------------

    def decided(self, slot: DecisionSlot) -> None:
        """A handler (or nobody: the default) decided ``slot`` on the app loop: send it."""
        self._forget(slot)
        self.outbox.send(slot)

    def _due(self, slot: DecisionSlot) -> None:
        """The deadline claimed ``slot`` for the default: send it, stop its handlers."""
        self._forget(slot)
        self.outbox.send(slot)
        if self._lanes is not None:
            self._lanes.stop_handlers(slot)

    def _forget(self, slot: DecisionSlot) -> None:
        if self._open.pop(slot.call_id, None) is not None:
            self._admission.leave(slot.deadline)

    def sent(self, slot: DecisionSlot, error: BaseException | None = None) -> None:
        """The outbox is done with ``slot``: let a waiting notification in, note idleness.

        A call that was not answered (or whose answer failed) ends when Graph says so or
        after the book's ``closing_ttl``; one another worker of the fleet decided is not
        this worker's to know.
        """
        if slot.attempts == 0 and error is None:
            self.calls.forget(slot.call_id)
        elif error is not None or type(slot.decision) is not Answer:
            self.calls.closing(slot.call_id)
        self._released()

    def _released(self) -> None:
        if not self._open and self._changed is not None:
            self._changed.set()

    # -- overload ---------------------------------------------------------------------------

    @property
    def max_send_backlog(self) -> int:
        """Decisions waiting to be sent at which a new call waits for room or gets 503."""
        return self.limits.max_send_backlog

    @property
    def overloaded(self) -> bool:
        """True while a new incoming call could not be decided in time if taken: more
        decisions wait to be sent than ``max_send_backlog``, or the I/O loop runs far
        behind. Such a call should wait for room (:meth:`wait_for_room`) or get 503."""
        return self._admission.refuses(self.outbox.backlog, self.lag.lag)

    async def wait_for_room(self, within: float) -> bool:
        """Wait up to ``within`` seconds until :attr:`overloaded` clears.

        True when there is room (at once when not overloaded); waiters get room in arrival
        order, as decisions are sent. A loop running far behind is not waited out.
        """
        if not self.overloaded:
            return True
        if within <= 0 or self._admission.hopeless(self.lag.lag):
            return False
        return await self.outbox.wait_for_room(within)

    # -- state updates ----------------------------------------------------------------------

    def _stale(self, event: CallStateChanged | CallTerminated) -> bool:
        if isinstance(event, CallTerminated):
            current: Track = (None, STATE_RANK["terminated"])
            slot = self._open.get(event.call_id)
            if slot is not None and slot.close_gone():
                # The caller hung up before anyone decided: stop the handlers, send nothing.
                self._forget(slot)
                self.stats.gone += 1
                if self._lanes is not None:
                    self._lanes.stop_handlers(slot)
                log.info("call.gone_before_decision", call_id=event.call_id)
                slot.call = None
                self._released()
        else:
            current = (event.etag, STATE_RANK.get(event.state, 2))
        tracks = self._tracks
        call_id = event.call_id
        if is_stale(tracks.get(call_id), current):
            self.stats.stale += 1
            log.info("event.stale", call_id=call_id, state=getattr(event, "state", None))
            return True
        tracks[call_id] = current
        tracks.move_to_end(call_id)
        # The calls whose states still matter: those the book holds or remembers as ended
        # (a notification about any other call is dropped before it gets here).
        while len(tracks) > self.calls.remembered:
            tracks.popitem(last=False)
        return False
