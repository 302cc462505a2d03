"""The platform timeout: a placed call the bot does not decide in time ends.

A call not decided within the platform timeout (the recording timeout for policy-based
recording) ends the way Graph ends it: :class:`PlatformTimeouts` marks it terminated and
``timed_out``, and POSTs a ``deleted``/``terminated`` notification with ``resultInfo``
408/8544 to its webhook. Deadlines wait in a heap; one task sleeps until the earliest.

Runs on the test's event loop, as a task of the fake's task group (:meth:`run`, started
with the fake); it touches the calls it ends and the notifier that reports them.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from typing import Final

import anyio
import structlog

from callflow.testing._call_handle import CallHandle
from callflow.testing._notifier import Notifier
from callflow.testing._payloads import call_terminated, envelope

__all__ = ["TIMEOUT_CODE", "TIMEOUT_MESSAGE", "TIMEOUT_SUBCODE", "PlatformTimeouts"]

log = structlog.get_logger(__name__)

TIMEOUT_CODE: Final = 408
TIMEOUT_SUBCODE: Final = 8544
TIMEOUT_MESSAGE: Final = "Callee could not be reached"


class PlatformTimeouts:
    """Ends the placed calls still undecided at their deadline."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self._heap: list[tuple[float, int, CallHandle]] = []
        self._seq = itertools.count()
        self._wake: anyio.Event | None = None

    def schedule(self, call: CallHandle) -> None:
        """Watch ``call``'s deadline."""
        heap = self._heap
        earliest = heap[0][0] if heap else math.inf
        heapq.heappush(heap, (call.deadline, next(self._seq), call))
        if call.deadline < earliest and self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """End each call still ``incoming`` at its deadline; runs until cancelled."""
        heap = self._heap
        while True:
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                call = heapq.heappop(heap)[2]
                if call.state == "incoming" and not call.gone:
                    self._time_out(call)
            self._wake = anyio.Event()
            wait = heap[0][0] - now if heap else math.inf
            with anyio.move_on_after(wait):
                await self._wake.wait()

    def _time_out(self, call: CallHandle) -> None:
        call.state = "terminated"
        call.timed_out = True
        call.etag += 1
        call._touch()
        log.info("fake_graph.call_timed_out", call_id=call.call_id, timeout=call.timeout)
        body = envelope(
            call_terminated(
                call.call_id,
                code=TIMEOUT_CODE,
                subcode=TIMEOUT_SUBCODE,
                message=TIMEOUT_MESSAGE,
                etag=call.etag,
            )
        )
        self._notifier.spawn_delivery(call, "timeout", body)
