"""The operation registry: what the I/O loop knows of each call, and who waits on what.

Everything here is confined to the event loop that owns the :class:`~callflow.graph.
client.GraphClient` (the I/O loop): :class:`OperationRegistry` is fed every parsed
notification through its one synchronous entry point :meth:`OperationRegistry.on_events`
and keeps, per call, a :class:`CallRecord` (its state, its unconsumed key presses, the
operations awaiting their result, a pending transfer). :class:`~callflow.control.control.
CallControl` registers its waiters here.

Correlation: an operation's waiter is registered under its ``clientContext`` before the POST
leaves, and under the operation id once Graph's reply names it, so a result that arrives
before the reply is read still finds it; a result nobody waits for is kept briefly (bounded)
in case its waiter's reply is still on the way. Ids are compared in :func:`~callflow.events.
normalize_id` form. A call's end (in the :class:`~callflow.control.book.CallBook`, whoever
ends it) fails every waiter of that call with :class:`~callflow.errors.CallEndedError`;
every wait has a timeout; a waiter is removed whatever way its wait ends.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

import anyio
import structlog

from callflow.clock import MONOTONIC, Clock
from callflow.control.book import CallBook, Ended
from callflow.control.digits import ToneBuffer
from callflow.errors import CallEndedError, TransferError
from callflow.events import (
    CallStateChanged,
    CallTerminated,
    OperationFinished,
    ResultInfo,
    ToneReceived,
    canonical_call_id,
    normalize_id,
)

__all__ = [
    "TRANSFERRED_SUBCODE",
    "CallRecord",
    "OperationRegistry",
    "TransferWatch",
    "Waiter",
    "describe_result",
]

log = structlog.get_logger(__name__)

TRANSFERRED_SUBCODE: Final = 7015
"""The subcode of a call's end that says it was transferred (the transfer succeeded)."""


class Waiter:
    """One operation awaiting its result: ``done`` is set once it is ``finished`` (Graph's
    result) or failed with ``error``; ``operation`` is its id once known."""

    __slots__ = ("call", "call_id", "context", "done", "error", "finished", "kind", "operation")

    def __init__(self, call_id: str, kind: str, context: str) -> None:
        self.call_id = call_id
        self.call = canonical_call_id(call_id)
        self.kind = kind
        self.context = context
        self.operation: str | None = None
        self.done = anyio.Event()
        self.finished: OperationFinished | None = None
        self.error: BaseException | None = None

    def resolve(self, finished: OperationFinished) -> None:
        """Graph reported the operation's result (the first one counts)."""
        if not self.done.is_set():
            self.finished = finished
            self.done.set()

    def fail(self, error: BaseException) -> None:
        """The wait ends with ``error`` (the call ended), unless a result came first."""
        if not self.done.is_set():
            self.error = error
            self.done.set()


class TransferWatch:
    """What a pending transfer has seen of the call's states: ``done`` is set once it is
    over, with ``error`` when it failed."""

    __slots__ = ("accepted", "baseline", "done", "error", "progressed")

    def __init__(self, baseline: int | None) -> None:
        self.baseline = baseline
        self.progressed = False
        self.accepted = False
        self.done = anyio.Event()
        self.error: BaseException | None = None


class CallRecord:
    """What the registry knows of one call: its state, its unconsumed key presses, the
    operations awaiting their result, a pending transfer, and who keeps the record."""

    __slots__ = (
        "_changed",
        "call_id",
        "collecting",
        "ended",
        "established",
        "etag",
        "last_tone_at",
        "pins",
        "result",
        "state",
        "subscribed",
        "subscribing",
        "tones",
        "transfer",
        "waiters",
    )

    def __init__(self, call_id: str, tone_limit: int) -> None:
        self.call_id = call_id
        self.state: str | None = None
        self.etag: int | None = None
        self.established = False
        self.ended = False
        self.result: ResultInfo | None = None
        self.waiters: set[Waiter] = set()
        self.tones = ToneBuffer(tone_limit)
        self.last_tone_at = 0.0
        self.subscribed = False
        self.subscribing: anyio.Event | None = None
        self.collecting = False
        self.pins = 0
        self.transfer: TransferWatch | None = None
        self._changed: anyio.Event | None = None

    @property
    def changed(self) -> anyio.Event:
        """Set at the next change of the call (made when someone first waits for one)."""
        changed = self._changed
        if changed is None:
            changed = self._changed = anyio.Event()
        return changed

    def touch(self) -> None:
        """The call changed: wake whoever waits on :attr:`changed`."""
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    @property
    def busy(self) -> bool:
        """True while someone relies on the record (it is not forgotten then)."""
        return bool(self.waiters or self.collecting or self.pins or self.transfer)

    def ended_error(self) -> CallEndedError:
        """The error of an operation on this call once it ended (with why it ended)."""
        return CallEndedError(
            f"call {self.call_id} ended ({describe_result(self.result)})",
            call_id=self.call_id,
            result=self.result,
        )


class OperationRegistry:
    """Correlates operation results, key presses and call states with the tasks awaiting them.

    Loop-confined: create it, call :meth:`on_events` and run
    :class:`~callflow.control.control.CallControl` on one event loop (the one that owns the
    Graph client). ``book`` is the worker's :class:`~callflow.control.book.CallBook`: a
    call's record is dropped when the book says the call ended (its waiters fail at once),
    and an ended call gets no new record. It keeps, bounded: what it saw of the calls it was
    told about (beyond ``max_calls``, records of idle calls the book does not hold are
    forgotten, oldest first), ``max_tones`` unconsumed key presses per call, and up to
    ``max_early`` results nobody awaited yet, for ``early_ttl`` seconds on ``clock`` (the
    engine's :class:`~callflow.clock.Clock`; tests pass a ``ManualClock``).
    """

    def __init__(
        self,
        *,
        book: CallBook | None = None,
        max_calls: int = 10_000,
        max_tones: int = 64,
        max_early: int = 1_024,
        early_ttl: float = 10.0,
        clock: Clock = MONOTONIC,
    ) -> None:
        self.book = book if book is not None else CallBook(clock=clock)
        self.book.on_end(self._ended)
        self.max_calls = max_calls
        self.max_tones = max_tones
        self.max_early = max_early
        self.early_ttl = early_ttl
        self.clock = clock
        """Where the registry, and the call control that uses it, read the time."""
        self._calls: OrderedDict[str, CallRecord] = OrderedDict()
        self._by_context: dict[str, Waiter] = {}
        self._by_operation: dict[tuple[str, str], Waiter] = {}
        self._early: OrderedDict[tuple[str, str], tuple[float, OperationFinished]] = OrderedDict()
        self._recent: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.duplicates = 0
        """Results and key presses dropped as repeats."""

    # -- the one entry point for notifications ---------------------------------------------

    def on_events(self, events: Iterable[object]) -> None:
        """Take the events of one notification POST (any events; others are ignored).

        Synchronous and quick: call it on the I/O loop for every parsed notification.
        """
        for event in events:
            if isinstance(event, OperationFinished):
                self._finished(event)
            elif isinstance(event, ToneReceived):
                self._tone(event)
            elif isinstance(event, CallStateChanged):
                self._state(event)
            elif isinstance(event, CallTerminated):
                self.end(event.call_id, event.result)

    def _finished(self, event: OperationFinished) -> None:
        call = canonical_call_id(event.call_id)
        operation = normalize_id(event.operation_id)
        key = (call, operation)
        waiter = self._by_operation.get(key)
        if waiter is None and event.client_context is not None:
            waiter = self._by_context.get(event.client_context)
            if waiter is not None and waiter.call != call:
                waiter = None
        if waiter is not None:
            waiter.operation = waiter.operation or operation
            waiter.resolve(event)
            self._remember(key)
            return
        if key in self._recent:
            self.duplicates += 1
            log.info("call.operation_duplicate", call_id=event.call_id, operation_id=operation)
            return
        now = self.clock.now()
        early = self._early
        while early and next(iter(early.values()))[0] + self.early_ttl < now:
            early.popitem(last=False)
        if key in early:
            self.duplicates += 1
            return
        early[key] = (now, event)
        if len(early) > self.max_early:
            early.popitem(last=False)

    def _remember(self, key: tuple[str, str]) -> None:
        self._recent[key] = None
        if len(self._recent) > self.max_early:
            self._recent.popitem(last=False)

    def _tone(self, event: ToneReceived) -> None:
        record = self.record(event.call_id)
        if not record.tones.add(event.sequence_id, event.tone):
            self.duplicates += 1
            return
        record.last_tone_at = self.clock.now()
        record.touch()

    def _state(self, event: CallStateChanged) -> None:
        record = self.record(event.call_id)
        key = record.call_id
        if record.ended:
            return
        etag = event.etag
        stale = etag is not None and record.etag is not None and etag <= record.etag
        if not stale:
            if etag is not None:
                record.etag = etag
            record.state = event.state
        if event.state == "established" and not record.established:
            record.established = True
            # Once per call (a call's story: answered, established, ..., ended).
            log.info("call.established", call_id=record.call_id, tenant_id=self.book.tenant_of(key))
        transfer = record.transfer
        if transfer is not None and not (
            etag is not None and transfer.baseline is not None and etag <= transfer.baseline
        ):
            if event.state in ("transferring", "transferAccepted"):
                transfer.progressed = True
                transfer.accepted = transfer.accepted or event.state == "transferAccepted"
            elif event.state == "established" and (
                transfer.progressed
                or (event.result is not None and (event.result.code or 0) >= 400)
            ):
                transfer.error = TransferError(
                    f"transfer of call {record.call_id} failed: {describe_result(event.result)}",
                    kind="transfer",
                    call_id=record.call_id,
                    result=event.result,
                    status="failed",
                )
                transfer.done.set()
        record.touch()

    def end(self, call_id: str, result: ResultInfo | None = None, *, by: str | None = None) -> None:
        """The call ended (``by`` whom, when known: see :class:`~callflow.control.book.
        Ended`): the book forgets it, its waiters fail with CallEndedError (a transfer may
        succeed), its record is dropped."""
        self.book.end(call_id, result, by=by)

    def _ended(self, call_id: str, ended: Ended) -> None:
        """The book's listener: ``call_id`` ended."""
        record = self._calls.pop(call_id, None)
        if record is None or record.ended:
            return
        result = ended.result
        record.ended = True
        record.result = result
        record.state = "terminated"
        transfer = record.transfer
        if transfer is not None:
            if not (transfer.accepted or (result and result.subcode == TRANSFERRED_SUBCODE)):
                transfer.error = record.ended_error()
            transfer.done.set()
        for waiter in list(record.waiters):
            waiter.fail(record.ended_error())
        record.touch()

    # -- records -----------------------------------------------------------------------------

    def record(self, call_id: str) -> CallRecord:
        """What the registry knows of ``call_id`` (created on first use).

        The record of a call that ended is a new one marked ended, and not kept. Past
        ``max_calls`` records, the oldest idle ones of calls the book does not hold are
        forgotten: a few looked at per new record, so adding one stays O(1).
        """
        key = canonical_call_id(call_id)
        calls = self._calls
        record = calls.get(key)
        if record is not None:
            return record
        record = CallRecord(key, self.max_tones)
        ended = self.book.ended(key)
        if ended is not None:
            record.ended = True
            record.result = ended.result
            record.state = "terminated"
            return record
        calls[key] = record
        if len(calls) > self.max_calls:
            self._evict()
        return record

    def _evict(self, looks: int = 8) -> None:
        """Forget up to one idle record of a call the book does not hold, looking at no
        more than ``looks`` of the oldest (those kept move to the back)."""
        calls, book = self._calls, self.book
        for _ in range(min(looks, len(calls))):
            key, old = next(iter(calls.items()))
            if old.busy or key in book:
                calls.move_to_end(key)
                continue
            del calls[key]
            return

    def is_ended(self, call_id: str) -> bool:
        """True when ``call_id`` ended (the book saw it end recently)."""
        return self.book.ended(canonical_call_id(call_id)) is not None

    def state_of(self, call_id: str) -> tuple[str | None, bool]:
        """The last state Graph reported for ``call_id`` and whether it ended; ``(None,
        False)`` when nothing is known of it (not seen yet, or ended so long ago that the
        book forgot it).

        Changes nothing: code on another thread may call it for a snapshot (two attribute
        reads; a later notification may change them).
        """
        key = canonical_call_id(call_id)
        if self.book.ended(key) is not None:
            return "terminated", True
        record = self._calls.get(key)
        if record is None:
            return None, False
        return record.state, record.ended

    @property
    def waiting(self) -> int:
        """How many operations are awaiting their result right now."""
        return sum(len(record.waiters) for record in self._calls.values())

    # -- waiters -----------------------------------------------------------------------------

    def expect(self, call_id: str, kind: str, context: str) -> Waiter:
        """Register a waiter for the operation about to be started with ``context``."""
        record = self.record(call_id)
        waiter = Waiter(call_id, kind, context)
        if record.ended:
            waiter.fail(record.ended_error())
        record.waiters.add(waiter)
        self._by_context[context] = waiter
        return waiter

    def bind(self, waiter: Waiter, operation_id: str | None) -> None:
        """Graph named the waiter's operation: also look for it by id (and in the early ones)."""
        if operation_id is None:
            return
        operation = normalize_id(operation_id)
        waiter.operation = operation
        key = (waiter.call, operation)
        self._by_operation[key] = waiter
        early = self._early.pop(key, None)
        if early is not None:
            waiter.resolve(early[1])
            self._remember(key)
            return
        for early_key, (_, event) in list(self._early.items()):
            if event.client_context == waiter.context and early_key[0] == waiter.call:
                del self._early[early_key]
                waiter.resolve(event)
                self._remember(early_key)
                return

    def forget(self, waiter: Waiter) -> None:
        """Remove ``waiter`` from every index (always called when its wait ends)."""
        if self._by_context.get(waiter.context) is waiter:
            del self._by_context[waiter.context]
        if waiter.operation is not None:
            key = (waiter.call, waiter.operation)
            if self._by_operation.get(key) is waiter:
                del self._by_operation[key]
        record = self._calls.get(waiter.call)
        if record is not None:
            record.waiters.discard(waiter)


def describe_result(result: ResultInfo | None) -> str:
    """Graph's ``resultInfo`` in a message: ``code/subcode message``."""
    if result is None:
        return "Graph sent no resultInfo"
    return f"{result.code}/{result.subcode} {result.message or ''}".rstrip()
