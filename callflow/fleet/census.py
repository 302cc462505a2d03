"""What a heartbeat sees of the fleet: the census of one beat, the calls pending, the directory.

Values only, and :class:`Directory`: written on the worker's I/O loop (by the watch, and by
fleet mode when a forwarding lookup misses), read there by the forwarder; tests read it from
other threads, so it is replaced whole, never changed in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping

import attrs
import structlog

__all__ = ["Census", "Directory", "PendingCall"]

log = structlog.get_logger(__name__)


@attrs.frozen
class PendingCall:
    """A call a worker owned and had not decided; ``expires_at`` is epoch seconds."""

    call_id: str
    tenant_id: str | None
    expires_at: float


@attrs.frozen
class Census:
    """What one heartbeat saw: live instances (id -> forwarding URL), dead instances, and the
    calls this worker adopted and has still to decide."""

    live: Mapping[str, str | None]
    dead: tuple[str, ...] = ()
    adopted: tuple[PendingCall, ...] = ()


class Directory:
    """The live instances of the fleet and their forwarding URLs, as the last heartbeat saw.

    Written by the heartbeat (:class:`~callflow.fleet.watch.FleetWatch`, and fleet mode when a
    forwarding lookup misses), read by the forwarder (all on the I/O loop; tests read it from
    other threads): the mapping is replaced whole, never changed in place.
    """

    def __init__(self) -> None:
        self._live: Mapping[str, str | None] = {}
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def update(self, live: Mapping[str, str | None]) -> None:
        """Replace the directory with a new census (any thread)."""
        with self._lock:
            self._live = dict(live)
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)

    def take(self, census: Census) -> None:
        """Take a heartbeat's live instances as the directory; log who joined or left."""
        before = set(self._live)
        self.update(census.live)
        if set(census.live) != before:
            log.info(
                "fleet.members",
                live=sorted(census.live),
                joined=sorted(set(census.live) - before),
                left=sorted(before - set(census.live)),
            )

    def url(self, instance_id: str) -> str | None:
        """The forwarding URL of a live instance; None when it is gone or unknown."""
        return self._live.get(instance_id)

    def live(self) -> Mapping[str, str | None]:
        """The instances alive at the last heartbeat and their forwarding URLs."""
        return self._live

    async def wait_until(self, predicate: Callable[[Mapping[str, str | None]], bool]) -> None:
        """Return once ``predicate(live)`` holds (checked at every update; no polling)."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if predicate(self._live):
                    return
                event = asyncio.Event()
                self._waiters.append((loop, event))
            await event.wait()
