"""What the intake remembers to drop repeats: redeliveries and stale state updates.

Pure values and functions plus :class:`Recent`, a bounded, expiring set; no loop, no I/O.
Graph may deliver a notification twice and state updates out of order: :func:`event_key`
says what identifies a redelivery, :func:`is_stale` whether a state update is older than
the last one seen.
"""

from __future__ import annotations

from typing import Any, Final

from callflow.events import (
    CallEvent,
    CallStateChanged,
    CallTerminated,
    IncomingCall,
    OperationFinished,
    ToneReceived,
    normalize_id,
)

__all__ = ["STATE_RANK", "Recent", "Track", "event_key", "is_stale"]

STATE_RANK: Final[dict[str, int]] = {
    "incoming": 0,
    "establishing": 1,
    "established": 2,
    "hold": 2,
    "transferring": 2,
    "transferAccepted": 2,
    "redirecting": 2,
    "terminating": 3,
    "terminated": 4,
}
"""How far along a call is; a state update ranked below the last one seen is stale."""

Track = tuple[int | None, int]
"""What staleness remembers of a call: the last etag and state rank seen."""


def is_stale(last: Track | None, current: Track) -> bool:
    """True when an update with ``current`` (etag, rank) is older than the ``last`` one seen.

    Etags decide when both updates carry one; otherwise the state's rank does.
    """
    if last is None:
        return False
    etag, rank = current
    last_etag, last_rank = last
    if etag is not None and last_etag is not None:
        return etag < last_etag
    return rank < last_rank


def event_key(event: CallEvent) -> Any:
    """What identifies a redelivery of ``event`` (None: never deduped).

    A key press is known by its ``sequenceId`` and an operation's result by the operation's
    id (in :func:`~callflow.events.normalize_id` form: a redelivery gives the same key).
    """
    if isinstance(event, IncomingCall):
        return event.call_id  # the id alone: no key tuple kept per pending call
    if isinstance(event, CallStateChanged):
        return (event.call_id, "state", event.state, event.etag)
    if isinstance(event, CallTerminated):
        return (event.call_id, "terminated")
    if isinstance(event, ToneReceived):
        return (normalize_id(event.call_id), "tone", event.sequence_id)
    if isinstance(event, OperationFinished):
        return (normalize_id(event.call_id), "op", normalize_id(event.operation_id))
    return None


class Recent:
    """A bounded set of recently seen keys that forgets after ``ttl`` seconds.

    Two generations of plain dictionaries, each holding up to half of ``maxlen``: a key is
    remembered in the current one; when it is full it becomes the previous one and the one
    before is dropped whole. So it never holds more than ``maxlen`` keys, remembers at least
    the last ``maxlen / 2``, and costs a dictionary lookup or two per key: no reordering, and
    no table left half empty by deletions (a long-running worker's memory stays flat).
    """

    __slots__ = ("_current", "_half", "_previous", "_ttl")

    def __init__(self, maxlen: int, ttl: float) -> None:
        self._current: dict[Any, float] = {}
        self._previous: dict[Any, float] = {}
        self._half = max(1, maxlen // 2)
        self._ttl = ttl

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def first(self, key: Any, now: float) -> bool:
        """Remember ``key``; True unless it was seen within the last ``ttl`` seconds."""
        current = self._current
        seen = current.get(key)
        if seen is None:
            seen = self._previous.get(key)
        if seen is not None and now - seen < self._ttl:
            return False
        current[key] = now
        if len(current) >= self._half:
            self._previous, self._current = current, {}
        return True
