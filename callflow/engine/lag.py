"""How late the I/O loop runs: a timer that measures its own delay.

Runs on the loop it probes (the I/O loop). The intake counts a new call's deadline from its
arrival less this lag (the platform's clock started when it sent the notification), sheds
new calls while it is high, and refuses them while it is far too high.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["LagProbe"]


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
