"""The outbox: every decision leaves the process here, from the I/O loop.

Handlers' decisions (handed over from the app loop), defaults at the deadline, and defaults
decided at intake all go through one :class:`Outbox`. A fixed pool of sender tasks takes the
claimed slots earliest platform expiry first, sends each through the decision sink (the Graph
client, or a fleet sink around it), and logs the call's one summary line. No task is created
per decision: an idle sender is handed the slot directly.

Its backlog (decisions waiting or in flight) is what overload is judged by, so the wait for
room in it lives here too: a notification with a new call may wait (:meth:`Outbox.
wait_for_room`) until a decision has been sent, in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, TypeAlias

import structlog

if TYPE_CHECKING:
    from callflow.engine.deadline import DecisionSink, DecisionSlot

__all__ = ["OnDecided", "Outbox"]

OnDecided: TypeAlias = "Callable[[DecisionSlot, BaseException | None], None]"
"""``on_decided(slot, error)``: a decision was sent (``error`` None) or could not be."""

log = structlog.get_logger(__name__)


class Outbox:
    """Sends claimed decisions with at most ``concurrency`` requests in flight.

    Lives on the I/O loop: :meth:`send` and every property are for that loop only. The sink
    is given to :meth:`running`. ``on_decided(slot, error)`` is told of every decision sent or
    failed (not of one another worker of the fleet sent); ``on_sent(slot, error)`` after every
    send, for the intake's bookkeeping. ``max_backlog`` is where :meth:`wait_for_room` waits.
    """

    def __init__(
        self,
        *,
        concurrency: int = 256,
        max_backlog: int = 1_000,
        on_decided: OnDecided | None = None,
        on_sent: OnDecided | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency={concurrency!r}: expected an integer >= 1")
        self.sink: DecisionSink | None = None
        self.concurrency = concurrency
        self.max_backlog = max_backlog
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self._on_decided = on_decided
        self._on_sent = on_sent
        self._heap: list[tuple[float, int, DecisionSlot]] = []
        self._seq = itertools.count()
        self._idle: deque[asyncio.Future[DecisionSlot]] = deque()
        self._empty: asyncio.Event | None = None
        self.in_flight = 0
        self.failures = 0
        """Decisions that could not be sent (after the sink's retries)."""

    @property
    def backlog(self) -> int:
        """Decisions waiting to be sent or being sent."""
        return len(self._heap) + self.in_flight

    def send(self, slot: DecisionSlot) -> None:
        """Queue ``slot``'s decision (claimed, its call still attached) for sending."""
        idle = self._idle
        while idle:
            waiter = idle.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(slot)
                return
        heapq.heappush(self._heap, (slot.expires, next(self._seq), slot))

    async def idle(self) -> None:
        """Return once nothing waits to be sent and nothing is in flight."""
        while self.backlog:
            if self._empty is None:
                self._empty = asyncio.Event()
            await self._empty.wait()

    async def wait_for_room(self, within: float) -> bool:
        """Wait up to ``within`` seconds until fewer than ``max_backlog`` decisions wait;
        True when there is room (at once if there is). Waiters get room in arrival order,
        as decisions are sent."""
        if self.backlog < self.max_backlog:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
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
        """Let as many waiting notifications in as the backlog has room for."""
        waiters = self._room_waiters
        room = self.max_backlog - self.backlog
        while room > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                room -= 1

    @contextlib.asynccontextmanager
    async def running(self, sink: DecisionSink) -> AsyncIterator[Outbox]:
        """Run the senders, delivering through ``sink``, for the duration of the block; on
        exit wait for what is queued (the caller bounds that wait), then stop them."""
        self.sink = sink
        async with asyncio.TaskGroup() as tg:
            senders = [tg.create_task(self._sender()) for _ in range(self.concurrency)]
            try:
                yield self
                await self.idle()
            finally:
                for task in senders:
                    task.cancel()

    async def _sender(self) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        sink = self.sink
        assert sink is not None
        while True:
            if heap:
                slot = heapq.heappop(heap)[2]
                self.in_flight += 1
            else:
                waiter: asyncio.Future[DecisionSlot] = loop.create_future()
                self._idle.append(waiter)
                slot = await waiter
            call, decision = slot.call, slot.decision
            assert call is not None
            assert decision is not None
            error: BaseException | None = None
            try:
                result = await sink.deliver(call, decision, slot.expires)
                slot.attempts = 1 if result is None else result.attempts
            except Exception as exc:
                error = exc
            finally:
                self.in_flight -= 1
            self._finish(slot, error)

    def _finish(self, slot: DecisionSlot, error: BaseException | None) -> None:
        """Log the call's summary line, report it, and let go of the call.

        A delivery that sent nothing (``attempts == 0``: another worker of the fleet sent
        this call's decision) is neither logged as decided nor reported to ``on_decided``.
        """
        if error is not None or slot.attempts != 0:
            decision = slot.decision
            assert decision is not None
            call = slot.call
            fields = {
                "call_id": slot.call_id,
                "tenant_id": call.tenant_id if call is not None else None,
                "scenario_id": slot.scenario_id,
                "decision": decision.kind,
                "reason": getattr(decision, "reason", None),
                "decided_by": slot.decided_by,
                "latency_ms": round((time.monotonic() - slot.received) * 1000.0, 3),
            }
            if error is None:
                log.info("call.decided", attempts=slot.attempts, **fields)
            else:
                self.failures += 1
                log.error(
                    "call.decision_failed", error=f"{type(error).__name__}: {error}", **fields
                )
            if self._on_decided is not None:
                try:
                    self._on_decided(slot, error)
                except Exception:  # a metrics hook must not break delivery
                    log.exception("on_decided.failed", call_id=slot.call_id)
        slot.call = None
        if self._room_waiters:
            self._wake_room_waiters()
        if self._on_sent is not None:
            self._on_sent(slot, error)
        if self._empty is not None and not self.backlog:
            self._empty.set()
            self._empty = None
