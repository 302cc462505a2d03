"""The circuit breaker the Redis store clients of one worker share, and its warnings.

Used from both of the worker's loops (its store clients live on the I/O loop; tests use one
from any thread): its state changes under a lock, and it never awaits. When Redis fails the
worker decides with its local slot; a connection error, or three timeouts in a row of
operations that waited long, opens the circuit: Redis is skipped for a short, growing
back-off, the heartbeat probes it, and once it answers ``store.recovered`` is logged.
``store.unavailable`` is logged at most every :data:`LOG_EVERY` seconds, with the count of the
lines left out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

import structlog

from callflow.errors import ConfigError

__all__ = ["LOG_EVERY", "TIMEOUTS_TO_TRIP", "Breaker"]

log = structlog.get_logger(__name__)

LOG_EVERY: Final = 5.0
"""Seconds between two ``store.unavailable`` warnings of one worker."""
TIMEOUTS_TO_TRIP: Final = 3
"""Timeouts in a row that open the circuit (a connection error opens it at once)."""


class Breaker:
    """A circuit breaker (shared by the stores of one worker) with rate-limited warnings.

    A connection error trips it at once. A timeout trips it only when it is the
    :data:`TIMEOUTS_TO_TRIP`-th in a row of operations that waited long (the claims): a short
    wait that runs out is more often a busy event loop than a hung Redis, and tripping the
    circuit makes the claims that follow fail open. Once tripped the store is skipped for
    ``backoff[0]`` seconds, doubling up to ``backoff[1]`` while it keeps failing; the first
    success closes it.
    """

    def __init__(
        self,
        backoff: tuple[float, float] = (0.2, 2.0),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        low, high = backoff
        if not 0 < low <= high:
            raise ConfigError(f"backoff={backoff!r}: expected (min, max) with 0 < min <= max")
        self._backoff = (float(low), float(high))
        self._clock = clock
        self._lock = threading.Lock()
        self._open_until = 0.0
        self.failures_in_row = 0
        """Failed operations since the last success."""
        self.trips = 0
        """Times the circuit opened since the last success."""
        self._timeouts_in_row = 0
        self._down_since: float | None = None
        self._last_warning: float | None = None
        self._suppressed = 0

    @property
    def longest_backoff(self) -> float:
        """The longest the store is skipped after a failure (the back-off's cap), seconds."""
        return self._backoff[1]

    @property
    def closed(self) -> bool:
        """True while the circuit is closed (operations try the store)."""
        return self.trips == 0

    def allow(self) -> bool:
        """True when an operation may try the store (closed, or the back-off has passed)."""
        return self._clock() >= self._open_until

    def failed(self, label: str, op: str, exc: BaseException, *, long_wait: bool = True) -> None:
        """Record a failed operation; trip the circuit when due; warn (at most every few s).

        ``long_wait`` says whether a timeout came after a long wait (a claim's), which counts
        towards tripping the circuit.
        """
        now = self._clock()
        with self._lock:
            self.failures_in_row += 1
            if isinstance(exc, TimeoutError):
                if long_wait:
                    self._timeouts_in_row += 1
                trip = self._timeouts_in_row >= TIMEOUTS_TO_TRIP
            else:
                trip = True
            wait = 0.0
            if trip:
                self.trips += 1
                self._timeouts_in_row = 0
                if self._down_since is None:
                    self._down_since = now
                low, high = self._backoff
                wait = min(high, low * 2.0 ** min(self.trips - 1, 30))
                self._open_until = now + wait
            warn = self._last_warning is None or now - self._last_warning >= LOG_EVERY
            suppressed = self._suppressed
            if warn:
                self._last_warning = now
                self._suppressed = 0
            else:
                self._suppressed += 1
        if warn:
            reason = "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
            log.warning(
                "store.unavailable",
                store=label,
                op=op,
                error=f"{type(exc).__name__}: {reason}"[:300],
                retry_in=round(wait, 3),
                suppressed=suppressed,
                message="the shared store did not answer: this worker decided on its own (a "
                "call that also reached another worker may be decided twice)",
            )

    def succeeded(self, label: str, op: str) -> None:
        """Record a successful operation; logs ``store.recovered`` when the circuit was open."""
        if not self.failures_in_row:
            return
        now = self._clock()
        with self._lock:
            self.failures_in_row = 0
            self._timeouts_in_row = 0
            trips, self.trips = self.trips, 0
            since, self._down_since = self._down_since, None
            self._open_until = 0.0
            if trips:
                self._last_warning = None
        if trips:
            log.warning(
                "store.recovered",
                store=label,
                op=op,
                down_for=round(now - since, 3) if since is not None else 0.0,
                trips=trips,
            )
