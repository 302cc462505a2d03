"""Intake: what the I/O loop does with the events of a notification before any handler runs.

For each event the :class:`Intake` drops notifications about calls the worker does not know
(:class:`~callflow.engine.book.CallBook`: every call is bound to its tenant there from admission
to its end), redeliveries and stale state updates, gives a new
incoming call its :class:`~callflow.engine.deadline.DecisionSlot` (deadline counted from when the
notification reached the worker, less how late the I/O loop is running), decides it with the
default at once when the worker could not decide it in time otherwise (admission control),
watches its deadline, and hands the event to the app loop's lanes through the crossing.
Decisions come back here (:meth:`Intake.decided`) and leave through the outbox.

Everything here runs on the I/O loop and touches no user code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import structlog

from callflow._log import Throttle
from callflow._parse import LazyItem
from callflow.decisions import Answer, Decision, Reject
from callflow.engine.book import CallBook
from callflow.engine.clock import MONOTONIC, Clock
from callflow.engine.deadline import DeadlineScheduler, DecisionSlot
from callflow.events import (
    CallEvent,
    CallStateChanged,
    CallTerminated,
    IncomingCall,
    OperationFinished,
    ToneReceived,
    normalize_id,
)

if TYPE_CHECKING:
    from callflow.engine.crossing import Inbox
    from callflow.engine.outbox import Outbox

__all__ = ["STATE_RANK", "EngineStats", "Intake", "LagProbe", "Recent", "event_key", "is_stale"]

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

Track = tuple[int | None, int]
"""What staleness remembers of a call: the last etag and state rank seen."""


def is_stale(last: Track | None, current: Track) -> bool:
    """True when an update with ``current`` (etag, rank) is older than the ``last`` one seen.

    Etags decide when both updates carry one; otherwise the state's rank does.
    """
    if last is None:
        return False
    etag, rank = current
    last_etag, last_rank = last
    if etag is not None and last_etag is not None:
        return etag < last_etag
    return rank < last_rank


def event_key(event: CallEvent) -> Any:
    """What identifies a redelivery of ``event`` (None: never deduped).

    A key press is known by its ``sequenceId`` and an operation's result by the operation's
    id (in :func:`~callflow.events.normalize_id` form: a redelivery gives the same key).
    """
    if isinstance(event, IncomingCall):
        return event.call_id  # the id alone: no key tuple kept per pending call
    if isinstance(event, CallStateChanged):
        return (event.call_id, "state", event.state, event.etag)
    if isinstance(event, CallTerminated):
        return (event.call_id, "terminated")
    if isinstance(event, ToneReceived):
        return (normalize_id(event.call_id), "tone", event.sequence_id)
    if isinstance(event, OperationFinished):
        return (normalize_id(event.call_id), "op", normalize_id(event.operation_id))
    return None


class _AllTypes(frozenset[type]):
    """Every event type (until the engine knows which ones are observed)."""

    def __contains__(self, item: object) -> bool:
        return True


_ALL_TYPES: Final = _AllTypes()


class EngineStats:
    """Counters of one engine; read them for metrics. Each has a single writer: the I/O
    loop, except ``late_decisions``, ``handler_errors`` and ``lane_full`` (the app loop)."""

    __slots__ = (
        "_drop_log",
        "admission_defaults",
        "duplicates",
        "gone",
        "handler_errors",
        "inbox_full",
        "lane_full",
        "late_decisions",
        "refused",
        "shed",
        "stale",
        "unknown",
        "wave_defaults",
    )

    def __init__(self) -> None:
        self.duplicates = 0
        self.stale = 0
        self.late_decisions = 0
        self.handler_errors = 0
        self.admission_defaults = 0
        """Calls decided with the default at intake (MAX_PENDING reached, a full deadline
        wave, or the I/O loop running late)."""
        self.wave_defaults = 0
        """Of ``admission_defaults``: those whose deadline fell in an already full wave."""
        self.shed = 0
        """Of ``admission_defaults``: those taken while the I/O loop ran later than
        SHED_LAG."""
        self.refused = 0
        """Incoming-call notifications refused with 503 (sending behind, or the loop far
        too late to decide them in time)."""
        self.gone = 0
        self.unknown = 0
        """Notifications dropped because they named a call the worker does not know."""
        self.lane_full = 0
        """Observer events dropped because their call's lane already held
        MAX_QUEUED_PER_CALL events (the oldest of them went)."""
        self.inbox_full = 0
        """Observer events dropped because the app loop's inbox already held
        MAX_QUEUED_EVENTS of them (the oldest of them went)."""
        self._drop_log = Throttle(1.0)

    @property
    def dropped(self) -> dict[str, int]:
        """Observer events dropped so far, by reason (``lane_full``, ``inbox_full``)."""
        return {"lane_full": self.lane_full, "inbox_full": self.inbox_full}

    def dropped_one(self, reason: str) -> None:
        """Count one observer event dropped for ``reason`` (on the loop that writes that
        counter) and log it: one ``events.dropped`` line a second at most, with how many
        were dropped since the last one."""
        if reason == "lane_full":
            self.lane_full += 1
        else:
            self.inbox_full += 1
        left_out = self._drop_log.admit(reason)
        if left_out is not None:
            log.warning(
                "events.dropped",
                reason=reason,
                dropped=left_out + 1,
                total=self.lane_full if reason == "lane_full" else self.inbox_full,
            )


class Recent:
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


class LagProbe:
    """How late the I/O loop runs: a timer every ``interval`` seconds measures its own delay.

    :attr:`lag` is the largest delay seen over the last ``window`` seconds, or how overdue
    the probe's own timer is right now if that is more (a loop that was just stalled knows it
    before the probe has run again). A notification that arrives while the loop runs that
    late may have waited about as long in the socket before the worker could read it: the
    platform's clock was already running.
    """

    def __init__(self, interval: float = 0.025, window: float = 1.0) -> None:
        self.interval = interval
        self._slots = max(2, round(window / interval))
        self._samples: deque[float] = deque(maxlen=self._slots)
        self._expected = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lag = 0.0
        self.worst = 0.0
        """The largest delay ever seen."""

    @property
    def lag(self) -> float:
        """Seconds the loop runs late (see the class docstring); 0 when not probing."""
        loop = self._loop
        if loop is None or self._handle is None:
            return self._lag
        overdue = loop.time() - self._expected
        return overdue if overdue > self._lag else self._lag

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start probing ``loop`` (the running one by default)."""
        self._loop = loop or asyncio.get_running_loop()
        self._arm()

    def stop(self) -> None:
        """Stop probing."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._lag = 0.0

    def _arm(self) -> None:
        loop = self._loop
        assert loop is not None
        self._expected = loop.time() + self.interval
        self._handle = loop.call_at(self._expected, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        late = max(0.0, self._loop.time() - self._expected)
        samples = self._samples
        dropped = samples[0] if len(samples) == samples.maxlen else 0.0
        samples.append(late)
        if late >= self._lag:
            self._lag = late
        elif dropped >= self._lag:  # the largest sample left the window: find the next one
            self._lag = max(samples)
        if late > self.worst:
            self.worst = late
        self._arm()


class Intake:
    """Takes events in on the I/O loop; see the module docstring.

    ``to_lanes(event, slot)`` hands an event to the app loop (set by the engine: an
    :class:`~callflow.engine.crossing.Inbox` post); ``stop_handlers(slot)`` asks the app loop to
    cancel a call's handlers; ``outbox`` sends decisions.
    """

    def __init__(
        self,
        *,
        outbox: Outbox,
        stats: EngineStats,
        clock: Clock = MONOTONIC,
        platform_timeout: float = 15.0,
        recording_timeout: float = 5.0,
        safety_margin: float = 3.0,
        max_pending: int = 10_000,
        deadline_send_rate: float = 500.0,
        max_send_backlog: int = 1_000,
        shed_lag: float = 0.5,
        compact_above: int = 1_000,
        default_decision: Decision | None = None,
        recent_size: int = 100_000,
        recent_ttl: float = 600.0,
        calls: CallBook | None = None,
        admit: Callable[[IncomingCall, DecisionSlot], Awaitable[bool]] | None = None,
        early_size: int = 256,
        early_ttl: float = 10.0,
    ) -> None:
        if safety_margin >= min(platform_timeout, recording_timeout):
            raise ValueError(
                f"safety_margin ({safety_margin} s) must be shorter than the platform timeouts "
                f"({platform_timeout} s, {recording_timeout} s for policy recording)"
            )
        self.outbox = outbox
        self.stats = stats
        self.clock = clock
        self.default_decision: Decision = default_decision or Reject()
        self._timeout = platform_timeout - safety_margin
        self._recording_timeout = recording_timeout - safety_margin
        self._expiry = platform_timeout
        self._recording_expiry = recording_timeout
        self.max_pending = max_pending
        self.max_send_backlog = max_send_backlog
        self.shed_lag = shed_lag
        # Past this lag a new call would lose half its time before anyone saw it: refuse it.
        shortest = min(platform_timeout, recording_timeout) - safety_margin
        self._refuse_lag = max(shed_lag, shortest / 2)
        self.compact_above = compact_above
        """With this many calls pending, a new call keeps its body text compressed: about
        1 KB less per call for ~10 us more at intake."""
        # Undecided calls by deadline bucket (width: an eighth of the safety margin). The
        # outbox can send about ``deadline_send_rate`` defaults a second, and it has one
        # safety margin to send a call's default before the platform gives up; so at most
        # rate x margin undecided calls may fall due within any one margin.
        slack = max(safety_margin, 0.1)
        self._wave_width = slack / 8
        self._wave_limit = max(1, int(deadline_send_rate * slack))
        self._wave: dict[int, int] = {}
        # The last window summed: buckets [first, last) hold ``base`` calls.
        self._span_first = self._span_last = self._span_base = 0
        self.calls = calls if calls is not None else CallBook(clock=clock)
        """Every call this worker knows, bound to its tenant (shared with call control)."""
        self.calls.on_hold(self._created)
        # Notifications about unknown calls that arrive while the bot creates a call: Graph
        # may report the new call's first states before its reply naming it is read.
        self._early: deque[tuple[float, CallEvent, float]] = deque()
        self._early_size = early_size
        self._early_ttl = early_ttl
        self._unknown_log = Throttle(1.0)
        self._admit_hook = admit
        self._recent = Recent(recent_size, recent_ttl)
        self._tracks: OrderedDict[str, Track] = OrderedDict()
        self._tracks_max = recent_size
        self._open: dict[str, DecisionSlot] = {}
        self._admitting: dict[str, list[tuple[CallEvent, DecisionSlot | None]]] = {}
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self._changed: asyncio.Event | None = None
        """Set when the last pending call was decided, or the drain was cut short."""
        self._cut = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.scheduler = DeadlineScheduler(self.default_decision, on_due=self._due, clock=clock)
        self.lag = LagProbe()
        self.observed: frozenset[type] | set[type] = _ALL_TYPES
        """The event types the app loop has observers for (others are not handed over)."""
        self.on_events: Callable[[Sequence[CallEvent]], None] | None = None
        """Told of every notification's events first (call control's registry)."""
        self.to_lanes: Callable[[CallEvent, DecisionSlot | None], None] | None = None
        self.stop_handlers: Callable[[DecisionSlot], None] | None = None
        self.accepting = False
        self.draining = False
        self._drain_until: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle (the I/O loop) -----------------------------------------------------------

    @property
    def pending(self) -> int:
        """Incoming calls received and not yet decided."""
        return len(self._open)

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
            async with asyncio.timeout(self._expiry):
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
        on_events = self.on_events
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
                if type(event) not in self.observed:
                    continue  # nobody observes it: no reason to wake the app loop for it
            call_id = event.call_id or ""
            held = self._admitting.get(call_id)
            if held is not None:  # the fleet is still deciding who owns this call
                held.append((event, slot))
            elif slot is not None and self._admit_hook is not None:
                self._admitting[call_id] = []
                self._spawn(self._admit_then_hand_over(event, slot))  # type: ignore[arg-type]
            else:
                assert self.to_lanes is not None
                self.to_lanes(event, slot)

    def _unknown(self, event: CallEvent, now: float) -> None:
        """A notification about a call this worker does not know: drop it, count it; keep it
        briefly while the bot creates a call (it may be about that call)."""
        if self.calls.creating:
            early = self._early
            while early and early[0][0] + self._early_ttl < now:
                early.popleft()
            early.append((now, event, now))
            if len(early) > self._early_size:
                early.popleft()
            return
        self.stats.unknown += 1
        self.calls.unknown += 1
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
        early = self._early
        if not early:
            return
        mine = [item for item in early if item[1].call_id == call_id]
        if not mine:
            return
        for item in mine:
            early.remove(item)
        for _, event, received in mine:
            self.submit((event,), received)

    def _admit(self, call: IncomingCall, now: float) -> DecisionSlot:
        self.calls.admit(call.call_id, call.tenant_id)
        # The platform's clock started when it sent the notification: count the time the
        # notification probably waited before this loop could read it.
        lag = self.lag.lag
        sent = now - lag
        if call.is_policy_recording:
            slot = DecisionSlot(
                call, sent, sent + self._recording_timeout, sent + self._recording_expiry
            )
        else:
            slot = DecisionSlot(call, sent, sent + self._timeout, sent + self._expiry)
        if self.draining:
            slot.claim(self.default_decision, "shutdown")
            log.warning("call.shutdown_default", call_id=call.call_id)
            return slot
        if len(self._open) >= self.max_pending:
            return self._default_at_intake(slot, "max_pending")
        if lag > self.shed_lag:
            # The loop is running late: taking the call for handlers would only make it
            # later. Decide it now, while the default still goes out in time.
            self.stats.shed += 1
            return self._default_at_intake(slot, "ingress_lag")
        if not self._join_wave(slot.deadline, now):
            # Held, this call would fall due with more undecided calls than the outbox can
            # send within the safety margin: default it now, while sending keeps up.
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
        """Admission control: decide ``slot`` with the default now."""
        self.stats.admission_defaults += 1
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
        assert self.to_lanes is not None
        self.to_lanes(event, slot)

    # -- decisions (the I/O loop) -----------------------------------------------------------

    def decided(self, slot: DecisionSlot) -> None:
        """A handler (or nobody: the default) decided ``slot`` on the app loop: send it."""
        self._forget(slot)
        self.outbox.send(slot)

    def _due(self, slot: DecisionSlot) -> None:
        """The deadline claimed ``slot`` for the default: send it, stop its handlers."""
        self._forget(slot)
        self.outbox.send(slot)
        if self.stop_handlers is not None:
            self.stop_handlers(slot)

    def _forget(self, slot: DecisionSlot) -> None:
        if self._open.pop(slot.call_id, None) is not None:
            self._leave_wave(slot)

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
        if self._room_waiters:
            self._wake_room_waiters()
        self._released()

    def _released(self) -> None:
        if not self._open and self._changed is not None:
            self._changed.set()

    # -- overload ---------------------------------------------------------------------------

    @property
    def send_backlog(self) -> int:
        """Decisions made and not yet sent (or failed)."""
        return self.outbox.backlog

    @property
    def overloaded(self) -> bool:
        """True while a new incoming call could not be decided in time if taken: more
        decisions wait to be sent than :attr:`max_send_backlog`, or the I/O loop runs far
        behind. Such a call should wait for room (:meth:`wait_for_room`) or get 503."""
        return self.outbox.backlog >= self.max_send_backlog or self.lag.lag > self._refuse_lag

    async def wait_for_room(self, within: float) -> bool:
        """Wait up to ``within`` seconds until :attr:`overloaded` clears.

        True when there is room (at once when not overloaded); waiters get room in arrival
        order, as decisions are sent. A loop running far behind is not waited out.
        """
        if not self.overloaded:
            return True
        if within <= 0 or self.lag.lag > self._refuse_lag:
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
        room = self.max_send_backlog - self.outbox.backlog
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

    # -- state updates ----------------------------------------------------------------------

    def _stale(self, event: CallStateChanged | CallTerminated) -> bool:
        if isinstance(event, CallTerminated):
            current: Track = (None, STATE_RANK["terminated"])
            slot = self._open.get(event.call_id)
            if slot is not None and slot.close_gone():
                # The caller hung up before anyone decided: stop the handlers, send nothing.
                self._forget(slot)
                self.stats.gone += 1
                if self.stop_handlers is not None:
                    self.stop_handlers(slot)
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
        if len(tracks) > self._tracks_max:
            tracks.popitem(last=False)
        return False


def post_to(inbox: Inbox, fn: Callable[..., Any]) -> Callable[..., None]:
    """``fn`` run through ``inbox`` (on the inbox's loop) instead of here."""
    post = inbox.post

    def posted(*args: Any) -> None:
        post(fn, *args)

    return posted
