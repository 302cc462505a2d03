"""The deadline guarantee: one decision slot per call and a scheduler that never misses.

Design
------
Every incoming call gets a :class:`DecisionSlot`. Whoever claims the slot first — a handler
on the app loop, the deadline, admission control, a shutdown — decides the call; every later
claim is refused. The slot's state lives behind one process-wide ``threading.Lock``, so
claims from the two loops' threads are safe and cost one uncontended lock.

The :class:`DeadlineScheduler` lives on the bot's **I/O loop**, in its own thread, which runs
no user code: a heap of ``(deadline, seq, slot)`` entries and one timer for the earliest (no
task, no timer handle per call: about 100 bytes a call). When a deadline passes it claims the
slot with the default decision and hands it to the outbox, which sends it from the same loop.
Because nothing in that path runs on the app loop, the guarantee holds when a handler raises,
hangs, or blocks the app loop (``time.sleep`` in an ``async def``, a CPU spin: the
interpreter still switches threads every few milliseconds).

After the scheduler has claimed a slot the app loop is asked (through the crossing) to cancel
the handlers still running for that call; if that loop is blocked the cancellation simply
lands later, and whatever the handlers return then is dropped and counted as late.

Time comes from an injectable :class:`~callflow.clock.Clock`, so tests move it by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

import structlog

from callflow.clock import MONOTONIC, Clock, Timer

if TYPE_CHECKING:
    from callflow.decisions import Decision
    from callflow.events import IncomingCall

__all__ = [
    "DecisionSink",
    "DecisionSlot",
    "Delivery",
    "DeadlineScheduler",
    "RecordingSink",
    "SlotState",
]

log = structlog.get_logger(__name__)

_LOCK: Final = threading.Lock()


class Delivery(Protocol):
    """What a sink says of a decision it delivered."""

    @property
    def attempts(self) -> int:
        """How many requests it took; 0 when nothing was sent because another worker of the
        fleet had sent this call's decision already."""
        ...


class DecisionSink(Protocol):
    """Where decisions leave the process: the Graph client in production, a recorder in tests."""

    async def deliver(
        self, call: IncomingCall, decision: Decision, deadline: float
    ) -> Delivery | None:
        """Send ``decision`` for ``call``; give up (raise) rather than run past ``deadline``.

        Returns what happened (None: sent, in one request), shown in the call's log line.
        """


class SlotState:
    """The life of a decision slot: open, then decided (by someone), or gone with the call."""

    OPEN: Final = 0
    DECIDED: Final = 1
    GONE: Final = 2


class DecisionSlot:
    """The one place a call's decision is claimed; the first claim wins, exactly once."""

    __slots__ = (
        "attempts",
        "call",
        "call_id",
        "cancel_handlers",
        "deadline",
        "decided_at",
        "decided_by",
        "decision",
        "expires",
        "received",
        "scenario_id",
        "state",
    )

    def __init__(
        self, call: IncomingCall, received: float, deadline: float, expires: float | None = None
    ) -> None:
        self.call: IncomingCall | None = call
        self.call_id = call.call_id
        self.received = received
        self.deadline = deadline
        """When the default decision goes out: receipt + platform timeout - safety margin."""
        self.expires = deadline if expires is None else expires
        """When the platform gives up on the call: receipt + platform timeout. Sending and
        retrying a decision stops there."""
        self.state: int = SlotState.OPEN
        self.decision: Decision | None = None
        self.decided_by: str | None = None
        self.decided_at: float | None = None
        self.attempts = 0
        self.cancel_handlers: asyncio.Task[None] | None = None
        """The lane task while it runs the call's handlers (the app loop only)."""
        self.scenario_id: str | None = None
        """The notification's ``Scenario-Id`` header, for the call's summary line."""

    def claim(self, decision: Decision, decided_by: str) -> bool:
        """Claim the slot for ``decision``; True for the first claim only."""
        with _LOCK:
            if self.state != SlotState.OPEN:
                return False
            self.state = SlotState.DECIDED
        self.decision = decision
        self.decided_by = decided_by
        self.decided_at = time.monotonic()
        return True

    def close_gone(self) -> bool:
        """Mark the call gone (the caller hung up): no decision is sent. True if it was open."""
        with _LOCK:
            if self.state != SlotState.OPEN:
                return False
            self.state = SlotState.GONE
        return True

    @property
    def is_open(self) -> bool:
        """True while nobody has decided the call."""
        return self.state == SlotState.OPEN

    def __repr__(self) -> str:
        return f"<DecisionSlot {self.call_id} state={self.state} by={self.decided_by}>"


class DeadlineScheduler:
    """Claims every slot still open at its deadline for the default decision.

    Lives on the I/O loop (:meth:`start` binds it there; :meth:`schedule` is called there):
    a heap of ``(deadline, seq, slot)`` entries and one timer, armed for the earliest
    deadline, on ``clock``. When the timer fires the scheduler re-reads the clock (timers
    may fire a little early or late), claims each due slot that is still open with the
    default decision and hands it to ``on_due(slot)``, which sends it. Nothing here waits
    for the app loop, so a handler that blocks or spins cannot delay a default.

    Heap entries of calls decided early stay until their deadline and are then discarded; a
    decided slot drops its reference to the call, so only the small slot stays alive.
    """

    def __init__(
        self,
        default_decision: Decision,
        *,
        on_due: Callable[[DecisionSlot], None],
        clock: Clock = MONOTONIC,
    ) -> None:
        self.default_decision = default_decision
        self._on_due = on_due
        self.clock = clock
        self._heap: list[tuple[float, int, DecisionSlot]] = []
        self._seq = itertools.count()
        self._armed = math.inf
        self._timer: Timer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.fired = 0
        """Slots the scheduler decided with the default decision."""

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Bind the scheduler to ``loop`` (the running one by default) and arm its timer."""
        self._loop = loop or asyncio.get_running_loop()
        if self._heap:
            self._arm(self._heap[0][0])

    def stop(self) -> list[DecisionSlot]:
        """Disarm the timer; claim every slot still open with the default and return them."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed = math.inf
        heap, self._heap = self._heap, []
        heap.sort()
        return [slot for _, _, slot in heap if self._claim(slot)]

    def schedule(self, slot: DecisionSlot) -> None:
        """Watch ``slot``: if still open at ``slot.deadline`` the default decision goes out."""
        deadline = slot.deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), slot))
        if deadline < self._armed:
            self._arm(deadline)

    def __len__(self) -> int:
        return len(self._heap)

    def _arm(self, when: float) -> None:
        if self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._armed = when
        self._timer = self.clock.call_at(self._loop, when, self._fire)

    def _claim(self, slot: DecisionSlot) -> bool:
        if slot.is_open and slot.claim(self.default_decision, "default"):
            self.fired += 1
            return True
        return False

    def _fire(self) -> None:
        self._timer = None
        self._armed = math.inf
        now = self.clock.now()
        heap = self._heap
        while heap and heap[0][0] <= now:
            slot = heapq.heappop(heap)[2]
            if self._claim(slot):
                try:
                    self._on_due(slot)
                except Exception:  # pragma: no cover - on_due hands over; it must not stop us
                    log.exception("deadline.on_due_failed", call_id=slot.call_id)
        if heap:
            self._arm(heap[0][0])


class RecordingSink:
    """A sink that records every decision it is given; for tests and dry runs.

    Thread-safe: it is delivered to on the I/O loop and read from another. Each decision is
    recorded with the time on ``clock`` (``time.monotonic()`` by default) when it arrived;
    :attr:`arrived` is set (a ``threading.Event``) at the first one. ``await wait_for(n)``
    returns once ``n`` decisions have been recorded (wrap it in ``anyio.fail_after``).
    """

    def __init__(self, clock: Clock = MONOTONIC) -> None:
        self.decisions: list[tuple[IncomingCall, Decision, float]] = []
        self.arrived = threading.Event()
        self._clock = clock
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def deliver(self, call: IncomingCall, decision: Decision, deadline: float) -> None:
        """Record the decision with the clock reading at which it arrived."""
        with self._lock:
            self.decisions.append((call, decision, self._clock.now()))
            waiters, self._waiters = self._waiters, []
        self.arrived.set()
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    def by_call(self) -> dict[str, list[Decision]]:
        """The decisions recorded so far, grouped by call id."""
        with self._lock:
            out: dict[str, list[Decision]] = {}
            for call, decision, _ in self.decisions:
                out.setdefault(call.call_id, []).append(decision)
            return out

    async def wait_for(self, count: int) -> None:
        """Return once at least ``count`` decisions were recorded."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if len(self.decisions) >= count:
                    return
                event = asyncio.Event()
                self._waiters.append((loop, event))
            await event.wait()
