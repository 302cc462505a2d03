"""Clocks: where the deadline machinery reads the time and sets its timers.

Production uses :data:`MONOTONIC` (``time.monotonic()``, the event loop's own timers). Tests
inject a :class:`ManualClock` and move time forward by hand, so that a 12-second deadline is
checked without waiting 12 seconds and without wall-clock bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

__all__ = ["MONOTONIC", "Clock", "ManualClock", "MonotonicClock", "Timer"]


class Timer(Protocol):
    """A callback set to run at some time; ``cancel()`` takes it back."""

    def cancel(self) -> None:
        """Do not run the callback (a no-op once it ran)."""


class Clock(Protocol):
    """The time, and timers on an event loop that follow it."""

    def now(self) -> float:
        """Seconds on this clock (``time.monotonic()`` for the real one)."""

    def call_at(
        self, loop: asyncio.AbstractEventLoop, when: float, fn: Callable[[], None]
    ) -> Timer:
        """Run ``fn()`` in ``loop`` once the clock reads ``when`` or later.

        Call it from ``loop``'s own thread. The callback may run a little early or late on a
        real clock: read :meth:`now` again in it.
        """


class MonotonicClock:
    """``time.monotonic()`` and the event loop's timers."""

    __slots__ = ()

    now: Final = staticmethod(time.monotonic)

    def call_at(
        self, loop: asyncio.AbstractEventLoop, when: float, fn: Callable[[], None]
    ) -> Timer:
        """See :meth:`Clock.call_at`."""
        # Relative to each clock: the loop's own time base need not be time.monotonic().
        return loop.call_at(loop.time() + (when - time.monotonic()), fn)

    def __repr__(self) -> str:
        return "MonotonicClock()"


MONOTONIC: Final = MonotonicClock()
"""The clock every bot runs on."""


class _ManualTimer:
    __slots__ = ("cancelled", "fn", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
        self.loop = loop
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told to: :meth:`advance` runs the timers that fall due.

    Thread-safe: timers may be set from one loop's thread and time advanced from another's;
    due callbacks are handed to their loop with ``call_soon_threadsafe``.
    """

    def __init__(self, start: float = 1_000.0) -> None:
        self._now = float(start)
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def now(self) -> float:
        """The current reading."""
        return self._now

    def call_at(
        self, loop: asyncio.AbstractEventLoop, when: float, fn: Callable[[], None]
    ) -> Timer:
        """See :meth:`Clock.call_at`; a time already reached runs ``fn`` soon."""
        timer = _ManualTimer(loop, fn)
        with self._lock:
            if when > self._now:
                heapq.heappush(self._timers, (when, next(self._seq), timer))
                return timer
        loop.call_soon_threadsafe(self._fire, timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move the clock forward and hand every timer now due to its loop, in time order."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back: advance({seconds})")
        due: list[_ManualTimer] = []
        with self._lock:
            self._now += seconds
            while self._timers and self._timers[0][0] <= self._now:
                due.append(heapq.heappop(self._timers)[2])
        for timer in due:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                timer.loop.call_soon_threadsafe(self._fire, timer)

    @staticmethod
    def _fire(timer: _ManualTimer) -> None:
        if not timer.cancelled:
            timer.fn()

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now})"
