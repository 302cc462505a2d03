"""The fleet-mode counters of one worker, shared by its two threads.

Written on the worker's I/O loop (the store, the forwarder, the take-over) and, for the
decision sink, on whichever loop sends; read by the metrics at scrape time (any thread). Each
update takes a lock; a read of one counter needs none.
"""

from __future__ import annotations

import threading

__all__ = ["FleetStats"]


class FleetStats:
    """Fleet counters shared by the worker's two threads; read them for metrics."""

    __slots__ = (
        "_lock",
        "adopted_handed_off",
        "adopted_lost",
        "dropped_elsewhere",
        "forged",
        "forwarded",
        "held_calls",
        "shared_duplicates",
        "store_failures",
        "taken_over",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.store_failures = 0
        """Store operations that failed, or were skipped while the circuit was open."""
        self.taken_over = 0
        """Calls of dead workers this worker sent the default decision for."""
        self.forwarded = 0
        """Notifications forwarded to the worker that owns their call."""
        self.dropped_elsewhere = 0
        """Decisions not sent because another worker had sent the call's decision."""
        self.shared_duplicates = 0
        """State updates and terminations another worker had already taken."""
        self.forged = 0
        """Values found in Redis without a valid fleet signature (ignored or replaced)."""
        self.held_calls = 0
        """Answered calls this worker holds right now (a gauge)."""
        self.adopted_lost = 0
        """Answered calls this worker adopted from a worker the fleet lost."""
        self.adopted_handed_off = 0
        """Answered calls this worker adopted from a worker that stopped and handed them off."""

    def add(self, name: str, count: int = 1) -> None:
        """Add ``count`` to the counter ``name`` (thread-safe)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + count)
