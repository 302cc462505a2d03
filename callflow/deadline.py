"""The deadline guarantee: one decision slot per call and a scheduler that never misses.

Design
------
Every incoming call gets a :class:`DecisionSlot`. Whoever claims the slot first — a handler
in the bot's event loop, the deadline, admission control, a shutdown — decides the call;
every later claim is refused. The slot's state lives behind one process-wide
``threading.Lock``, so claims from two threads are safe and cost one uncontended lock.

The :class:`DeadlineScheduler` owns a **dedicated thread running its own event loop** and a
heap of ``(deadline, seq, slot)`` entries. The bot's own loop only pushes onto the heap (no
task, no timer handle per call: about 100 bytes a call). The thread sleeps until the earliest
deadline, re-reads the monotonic clock on waking (loops may wake early or late), and for each
due slot that is still open claims it with the default decision and sends that decision
through its *own* sink (its own Graph client and HTTP session, created inside the thread's
loop). Because nothing in that path runs on the bot's loop, the guarantee holds when a
handler raises, hangs, or blocks the bot's loop (``time.sleep`` in an ``async def``, a CPU
spin: the interpreter still switches threads every few milliseconds).

After the scheduler has claimed a slot it asks the bot's loop, thread-safely, to cancel the
handlers still running for that call; if that loop is blocked the cancellation simply lands
later, and whatever the handlers return then is dropped and counted as late.

Heap entries of calls decided early stay until their deadline and are then discarded; a
decided slot drops its reference to the call, so only the small slot stays alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Final, Protocol

import anyio
import structlog

if TYPE_CHECKING:
    from .decisions import Decision
    from .events import IncomingCall

__all__ = [
    "DecisionSink",
    "DecisionSlot",
    "DeadlineScheduler",
    "RecordingSink",
    "SlotState",
]

log = structlog.get_logger(__name__)

_LOCK: Final = threading.Lock()


class DecisionSink(Protocol):
    """Where decisions leave the process: the Graph client in production, a recorder in tests."""

    async def deliver(self, call: IncomingCall, decision: Decision, deadline: float) -> object:
        """Send ``decision`` for ``call``; give up (raise) rather than run past ``deadline``.

        The result may carry ``attempts`` (how many requests it took), shown in the logs.
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
        """The lane task while it runs the call's handlers (the bot's loop only)."""

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


SinkFactory = Callable[[], AbstractAsyncContextManager[DecisionSink]]
"""Builds the scheduler's own sink inside the scheduler thread's event loop."""


class DeadlineScheduler:
    """Sends the default decision for every slot still open at its deadline, from its own thread.

    ``on_default(slot)`` is called (in the scheduler thread) after the scheduler has claimed a
    slot, before the decision is sent; ``on_sent(slot, error)`` after the send finished or
    failed. Both must be quick and thread-safe.
    """

    def __init__(
        self,
        sink_factory: SinkFactory,
        default_decision: Decision,
        *,
        on_default: Callable[[DecisionSlot], None] | None = None,
        on_sent: Callable[[DecisionSlot, BaseException | None], None] | None = None,
        max_concurrent_sends: int = 256,
    ) -> None:
        self._sink_factory = sink_factory
        self.default_decision = default_decision
        self._on_default = on_default
        self._on_sent = on_sent
        self._heap: list[tuple[float, int, DecisionSlot]] = []
        self._seq = itertools.count()
        self._armed = float("inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._done = threading.Event()
        self._stopping = False
        self._flush_all = False
        self._error: BaseException | None = None
        self._send_limit = max_concurrent_sends
        self.fired = 0
        """Slots the scheduler decided with the default decision (written by its thread only)."""
        self.unsent = 0
        """Default decisions claimed and not yet sent (written by its thread only)."""

    # -- the bot's loop side -------------------------------------------------------------

    def schedule(self, slot: DecisionSlot) -> None:
        """Watch ``slot``: if still open at ``slot.deadline`` the default decision goes out."""
        with _LOCK:
            heapq.heappush(self._heap, (slot.deadline, next(self._seq), slot))
            wake = slot.deadline < self._armed
            if wake:
                self._armed = slot.deadline
        if wake:
            self._wakeup()

    def __len__(self) -> int:
        return len(self._heap)

    def _wakeup(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing left to wake
                loop.call_soon_threadsafe(wake.set)

    def start(self) -> None:
        """Start the scheduler thread and wait until its loop and sink are ready."""
        if self._thread is not None:
            raise RuntimeError("the deadline scheduler is already running")
        self._thread = threading.Thread(
            target=self._thread_main, name="callflow-deadline", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self, *, flush: bool = True) -> None:
        """Stop the thread; with ``flush`` every slot still open gets the default decision first.

        Blocks until the thread has sent what it owes; call it from a worker thread when an
        event loop must stay responsive meanwhile.
        """
        if self._thread is None:
            return
        self._stopping = True
        self._flush_all = flush
        self._wakeup()
        self._done.wait()
        self._thread.join()
        self._thread = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[DeadlineScheduler]:
        """Run the scheduler thread for the duration of the block (flushing at the end)."""
        await anyio.to_thread.run_sync(self.start)
        try:
            yield self
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.stop)

    # -- the scheduler thread --------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # pragma: no cover - reported through start()
            self._error = exc
            self._ready.set()
        finally:
            self._done.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            sink_cm = self._sink_factory()
            sink = await sink_cm.__aenter__()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        try:
            # Plain asyncio here: under a deadline wave this thread starts thousands of sends,
            # and anyio's per-task cancel scopes cost a tenth of its time.
            async with asyncio.TaskGroup() as tg:
                self._ready.set()
                await self._tick_forever(tg, sink)
        finally:
            await sink_cm.__aexit__(None, None, None)

    async def _tick_forever(self, tg: asyncio.TaskGroup, sink: DecisionSink) -> None:
        assert self._wake is not None
        sem = asyncio.Semaphore(self._send_limit)
        while True:
            now = time.monotonic()
            flush = self._stopping and self._flush_all
            due: list[DecisionSlot] = []
            with _LOCK:
                heap = self._heap
                while heap and (flush or heap[0][0] <= now):
                    due.append(heapq.heappop(heap)[2])
                self._armed = heap[0][0] if heap else float("inf")
                armed = self._armed
            for slot in due:
                if slot.is_open and slot.claim(self.default_decision, "default"):
                    self.fired += 1
                    self.unsent += 1
                    if self._on_default is not None:
                        self._on_default(slot)
                    tg.create_task(self._send(sink, slot, sem))
            if self._stopping:
                return
            self._wake.clear()
            delay = armed - time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if delay == math.inf else max(delay, 0.0)):
                    await self._wake.wait()

    async def _send(self, sink: DecisionSink, slot: DecisionSlot, sem: asyncio.Semaphore) -> None:
        call, decision = slot.call, slot.decision
        assert call is not None
        assert decision is not None
        error: BaseException | None = None
        async with sem:
            try:
                result = await sink.deliver(call, decision, slot.expires)
                slot.attempts = getattr(result, "attempts", 1)
            except Exception as exc:
                error = exc
        self.unsent -= 1
        if self._on_sent is not None:
            self._on_sent(slot, error)


class RecordingSink:
    """A sink that records every decision it is given; for tests and dry runs.

    Thread-safe: the scheduler thread and the bot's loop may deliver at the same time.
    ``await wait_for(n)`` returns once ``n`` decisions have been recorded (wrap it in
    ``anyio.fail_after``).
    """

    def __init__(self) -> None:
        self.decisions: list[tuple[IncomingCall, Decision, float]] = []
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def deliver(self, call: IncomingCall, decision: Decision, deadline: float) -> None:
        """Record the decision with the monotonic time it arrived."""
        with self._lock:
            self.decisions.append((call, decision, time.monotonic()))
            waiters, self._waiters = self._waiters, []
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
