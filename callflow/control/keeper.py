"""The calls a bot holds after answering them, kept alive until they end.

Graph drops an answered call that the bot does not keep alive (at least every 45 minutes;
15 is the recommendation). :class:`CallKeeper` remembers each answered call, sends
``keepAlive`` every ``interval`` seconds from one heap-driven task, forgets the call when it
terminates, and treats a 404 from Graph as "the call is gone": ``on_gone(call_id)`` ends it
for the whole worker (what waits on it fails at once with
:class:`~callflow.errors.CallEndedError`, and nothing more is sent for it). The end of each
held call is logged here, once (``call.ended``: who ended it, how long it was held).

A keepAlive that fails for any other reason (Graph unreachable or erring, no app token
because the identity provider is down or the tenant revoked consent, anything else) never
ends the task or the worker: it is logged, counted in ``failures`` and retried after a
jittered backoff (at most ``interval``) until it succeeds or the call ends.

Loops: the keep-alive task (:meth:`CallKeeper.run`) runs on the I/O loop, which owns the
Graph client, and keeps its schedule on the keeper's :class:`~callflow.clock.Clock`;
:meth:`CallKeeper.answered` called from another thread hands the call over to that loop, and
the held calls can be read (or waited on) from any loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import anyio
import attrs
import structlog

from callflow.clock import MONOTONIC, Clock
from callflow.control.book import Ended
from callflow.errors import CallGoneError

if TYPE_CHECKING:
    from callflow.graph.client import GraphClient

__all__ = ["RETRY_BACKOFF", "CallKeeper", "HeldCall"]

log = structlog.get_logger(__name__)

RETRY_BACKOFF: Final = (1.0, 60.0)
"""Seconds before retrying a failed keepAlive: doubling from the first to the second (and
never later than the keep-alive interval), jittered."""


@attrs.define
class HeldCall:
    """A call the bot answered and still holds."""

    call_id: str
    tenant_id: str | None
    answered_at: float
    """The keeper's clock reading (``time.monotonic()`` by default) when the answer was
    accepted by Graph."""
    keepalives: int = 0
    """keepAlive requests Graph accepted for this call."""
    failed: int = 0
    """keepAlive attempts in a row that failed (0 after a success)."""


class CallKeeper:
    """Holds answered calls and keeps them alive.

    ``on_gone(call_id)`` is told of a call Graph says is gone (keepAlive answered 404); it
    should end the call for the worker, which then tells the keeper (:meth:`ended`). Times
    are read, and keepAlive falls due, on ``clock`` (tests pass a ``ManualClock``).
    """

    def __init__(
        self,
        graph: GraphClient,
        interval: float = 900.0,
        *,
        retry_backoff: tuple[float, float] = RETRY_BACKOFF,
        on_gone: Callable[[str], object] | None = None,
        max_in_flight: int = 32,
        attempt_timeout: float | None = None,
        clock: Clock = MONOTONIC,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be 1 or more requests, got {max_in_flight}")
        self._graph = graph
        self._on_gone = on_gone
        self._clock = clock
        self.interval = interval
        self.retry_backoff = retry_backoff
        self.max_in_flight = max_in_flight
        """keepAlive requests in flight at most (the rest of a round waits for a slot)."""
        self.attempt_timeout = (
            min(30.0, interval * 0.75) if attempt_timeout is None else attempt_timeout
        )
        """Seconds one keepAlive may take, retries included, before it counts as failed:
        well under the interval, so that a slow Graph cannot push the next one back."""
        self.failures = 0
        """keepAlive attempts that failed (any error but "the call is gone")."""
        self._calls: dict[str, HeldCall] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._wake: anyio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._lock = threading.Lock()

    def _touch(self) -> None:
        with self._lock:
            watchers, self._watchers = self._watchers, []
        for loop, event in watchers:
            with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits
                loop.call_soon_threadsafe(event.set)

    async def wait_until(self, predicate: Callable[[list[HeldCall]], bool]) -> None:
        """Wait (without polling) until ``predicate(calls())`` holds; from any loop."""
        loop = asyncio.get_running_loop()
        while True:
            changed = asyncio.Event()
            with self._lock:
                self._watchers.append((loop, changed))
            if predicate(self.calls()):
                return
            await changed.wait()

    def calls(self) -> list[HeldCall]:
        """The calls held right now, oldest first (from any thread: a snapshot)."""
        return sorted(self._calls.values(), key=lambda c: c.answered_at)

    def tenant_of(self, call_id: str) -> str | None:
        """The tenant of a held call (None when not held or unknown); from any thread."""
        held = self._calls.get(call_id)
        return held.tenant_id if held is not None else None

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    # -- events (any thread) -------------------------------------------------------------

    def answered(self, call_id: str, tenant_id: str | None, *, due: float | None = None) -> None:
        """Start holding ``call_id`` (its answer was accepted); its first keepAlive is due
        ``due`` seconds from now (an interval by default; 0 for a call adopted from another
        worker, whose last keepAlive is unknown)."""
        if self._loop is not None and threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(lambda: self.answered(call_id, tenant_id, due=due))
            return
        now = self._clock.now()
        self._calls[call_id] = HeldCall(call_id, tenant_id, now)
        self._touch()
        first = self.interval if due is None else due
        heapq.heappush(self._heap, (now + first, next(self._seq), call_id))
        if self._wake is not None and self._heap[0][2] == call_id:
            self._wake.set()

    def ended(self, call_id: str, ended: Ended | None = None) -> None:
        """Forget ``call_id`` (it ended: ``ended`` says how) and log its ``call.ended`` line.
        Its keepAlive entry is dropped when due, or sooner: once ended calls' entries
        outnumber the held calls', the schedule is rebuilt without them (so it holds about
        the calls held, not every call of the last interval)."""
        held = self._calls.pop(call_id, None)
        if held is None:
            return
        result = ended.result if ended is not None else None
        log.info(
            "call.ended",
            call_id=call_id,
            tenant_id=held.tenant_id,
            ended_by=ended.ended_by if ended is not None else "platform",
            code=result.code if result is not None else None,
            subcode=result.subcode if result is not None else None,
            held_s=round(self._clock.now() - held.answered_at, 3),
        )
        self._touch()
        if len(self._heap) > 2 * len(self._calls) + 64:
            if self._loop is not None and threading.get_ident() != self._thread:
                self._loop.call_soon_threadsafe(self._compact)
            else:
                self._compact()

    def _compact(self) -> None:
        """Rebuild the keepAlive schedule with the entries of held calls only (O(n), once
        per n calls ended)."""
        calls = self._calls
        self._heap = [entry for entry in self._heap if entry[2] in calls]
        heapq.heapify(self._heap)

    # -- the keep-alive task ---------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Send keepAlive for every held call when due; runs until cancelled.

        The calls due together go out concurrently, at most :attr:`max_in_flight` at once
        (in the order they fell due), each given :attr:`attempt_timeout`: with Graph slow to
        answer, a round over many held calls takes about one reply's time per
        ``max_in_flight`` calls, not one per call. The next keepAlive of a call is due an
        interval after this one was sent, however long the reply took.
        """
        loop = self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        clock = self._clock
        slots = anyio.Semaphore(self.max_in_flight)

        async def send(held: HeldCall) -> None:
            try:
                await self._keep_alive(held)
            finally:
                slots.release()

        async with anyio.create_task_group() as tg:  # cancelled with run(): requests too
            task_status.started()
            while True:
                wake = self._wake = anyio.Event()
                now = clock.now()
                while self._heap and self._heap[0][0] <= now:
                    _, _, call_id = heapq.heappop(self._heap)
                    if call_id not in self._calls:
                        continue
                    await slots.acquire()  # the calls due behind it wait their turn
                    held = self._calls.get(call_id)  # it may have ended meanwhile
                    if held is None:
                        slots.release()
                        continue
                    tg.start_soon(send, held)
                if not self._heap:
                    await wake.wait()
                    continue
                timer = clock.call_at(loop, self._heap[0][0], wake.set)
                try:
                    await wake.wait()  # the next one falls due, or an earlier one was added
                finally:
                    timer.cancel()

    async def _keep_alive(self, held: HeldCall) -> None:
        sent = self._clock.now()
        try:
            # The deadline is on the Graph client's time base (time.monotonic()), whatever
            # clock the keeper schedules on.
            deadline = MONOTONIC.now() + self.attempt_timeout
            await self._graph.keep_alive(held.call_id, tenant_id=held.tenant_id, deadline=deadline)
        except CallGoneError:
            log.info("call.gone", call_id=held.call_id, reason="keepAlive answered 404")
            self.ended(held.call_id, Ended(held.tenant_id, None, "gone"))
            if self._on_gone is not None:
                self._on_gone(held.call_id)
            return
        except Exception as exc:  # GraphError, TokenError, anything: never end the task
            held.failed += 1
            self.failures += 1
            wait = self._retry_in(held.failed)
            log.warning(
                "call.keepalive_failed",
                call_id=held.call_id,
                error=f"{type(exc).__name__}: {exc}"[:300],
                attempt=held.failed,
                retry_in=round(wait, 3),
            )
            self._touch()
        else:
            held.keepalives += 1
            held.failed = 0
            wait = self.interval
            self._touch()
        if held.call_id not in self._calls:
            return
        # After a success, an interval from when it was sent: a slow reply does not push the
        # next one back.
        at = (self._clock.now() if held.failed else sent) + wait
        heapq.heappush(self._heap, (at, next(self._seq), held.call_id))
        if self._wake is not None and self._heap[0][2] == held.call_id:
            self._wake.set()  # run() may be sleeping until a later one

    def _retry_in(self, failed: int) -> float:
        """Seconds before the next attempt after ``failed`` failures in a row."""
        low, high = self.retry_backoff
        cap = min(high, low * 2.0 ** min(failed - 1, 30), self.interval)
        return random.uniform(cap / 2, cap)
