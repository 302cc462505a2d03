"""The fleet's claims on the way in and out: the final claim before a decision is sent, and
shared dedupe of state updates and terminations.

:class:`FleetSink` runs where the worker's outbox sends (its I/O loop), :class:`SharedDedupe`
where the webhook takes notifications (the I/O loop too); both ask the loop's store client
(:mod:`callflow.fleet.store`). Intake ownership, the third claim, is fleet mode's ``admit``
hook (:mod:`callflow.fleet.mode`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import anyio
import attrs
import structlog

from callflow.events import CallStateChanged, CallTerminated
from callflow.fleet.stats import FleetStats
from callflow.fleet.store import DecisionStore

if TYPE_CHECKING:
    from callflow.decisions import Decision
    from callflow.engine.deadline import DecisionSink, Delivery
    from callflow.events import CallEvent, IncomingCall

__all__ = ["DROPPED", "Dropped", "FleetSink", "SharedDedupe", "dedupe_key"]

log = structlog.get_logger(__name__)


@attrs.frozen
class Dropped:
    """What :class:`FleetSink` returns when another worker already sent the decision."""

    attempts: int = 0


DROPPED: Final = Dropped()


class FleetSink:
    """A decision sink that sends only when this worker wins the call's final claim.

    Wraps the real sink (the Graph client the worker's outbox sends through). A
    lost claim skips the POST, logs ``decision.dropped_elsewhere`` and returns
    :data:`DROPPED` (``attempts`` 0). After the send, successful or not, the call leaves this
    worker's pending set.
    """

    def __init__(self, inner: DecisionSink, store: DecisionStore, stats: FleetStats) -> None:
        self.inner = inner
        self._store = store
        self._stats = stats

    async def deliver(
        self, call: IncomingCall, decision: Decision, deadline: float
    ) -> Delivery | None:
        """Claim, then send through the inner sink; see the class docstring."""
        if not await self._store.claim(call.call_id, left=deadline - time.monotonic()):
            self._stats.add("dropped_elsewhere")
            log.info(
                "decision.dropped_elsewhere",
                call_id=call.call_id,
                decision=decision.kind,
                message="another worker of the fleet already sent this call's decision",
            )
            return DROPPED
        try:
            return await self.inner.deliver(call, decision, deadline)
        finally:
            with anyio.CancelScope(shield=True):
                await self._store.release(call.call_id, call.tenant_id)


def dedupe_key(event: CallEvent) -> str | None:
    """The shared-dedupe key of a state update or termination; None for other events."""
    if isinstance(event, CallStateChanged):
        raw = f"{event.call_id}\x00state\x00{event.state}\x00{event.etag}"
    elif isinstance(event, CallTerminated):
        raw = f"{event.call_id}\x00terminated"
    else:
        return None
    return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


class SharedDedupe:
    """Drops state updates and terminations another worker of the fleet already took.

    Incoming calls are left alone: intake ownership dedupes them in the ``admit`` hook.
    """

    def __init__(self, store: DecisionStore, stats: FleetStats) -> None:
        self._store = store
        self._stats = stats

    async def fresh(self, events: Sequence[CallEvent]) -> Sequence[CallEvent]:
        """The events of one notification that no other worker has taken."""
        keyed = [(index, key) for index, e in enumerate(events) if (key := dedupe_key(e))]
        if not keyed:
            return events
        firsts = await self._store.first_seen([key for _, key in keyed])
        seen = {index for (index, _), first in zip(keyed, firsts, strict=True) if not first}
        if not seen:
            return events
        self._stats.add("shared_duplicates", len(seen))
        for index in sorted(seen):
            log.info(
                "event.duplicate",
                call_id=events[index].call_id,
                kind=type(events[index]).__name__,
                shared=True,
            )
        return [e for index, e in enumerate(events) if index not in seen]
