"""The engine's counters: what it dropped, shed, refused and decided by default.

One :class:`EngineStats` per engine. Each counter has a single writer (the I/O loop, except
the three the app loop writes); metrics read them at scrape time.
"""

from __future__ import annotations

import structlog

from callflow._log import Throttle

__all__ = ["EngineStats"]

log = structlog.get_logger(__name__)


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
