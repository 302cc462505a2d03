"""The I/O side of call control: correlating Graph's operation results with their waiters.

Everything here is confined to the event loop that owns the :class:`~callflow.graph.
_client.GraphClient` (the I/O loop): :class:`OperationRegistry` is fed every parsed
notification through its one synchronous entry point :meth:`OperationRegistry.on_events`,
and :class:`CallControl` runs each operation (POST, then wait for its result) there. Bot
code reaches it only through an :class:`~callflow.control.call.IoPort`.

Correlation: an operation's waiter is registered under its ``clientContext`` before the POST
leaves, and under the operation id once Graph's reply names it, so a result that arrives
before the reply is read still finds it; a result nobody waits for is kept briefly (bounded)
in case its waiter's reply is still on the way. Ids are compared in :func:`~callflow.events.
normalize_id` form. A call's end fails every waiter of that call with
:class:`~callflow.errors.CallEndedError`; every wait has a timeout; a waiter is removed
whatever way its wait ends.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Final

import anyio
import structlog

from callflow.actions import Invite, JoinMeeting, PlayPrompt
from callflow.control.book import CallBook
from callflow.errors import (
    CallControlError,
    CallEndedError,
    CallGoneError,
    GraphError,
    GraphResponseError,
    MediaCancelledError,
    OperationError,
    OperationTimeoutError,
    TransferError,
)
from callflow.events import (
    CallStateChanged,
    CallTerminated,
    OperationFinished,
    ResultInfo,
    ToneReceived,
    canonical_call_id,
    normalize_id,
)
from callflow.graph.client import _new_client_context

if TYPE_CHECKING:
    from callflow.actions import (
        OutgoingCall,
        RecordResponse,
        SendTones,
        Transfer,
        UpdateRecordingStatus,
    )
    from callflow.graph.client import CreatedCall, GraphClient, Operation

    _Action = PlayPrompt | RecordResponse | SendTones | Invite | UpdateRecordingStatus

__all__ = ["CallControl", "OnOperation", "OperationRegistry", "ToneBuffer"]

log = structlog.get_logger(__name__)

OnOperation = Callable[[str, str, float], None]
"""``on_operation(kind, outcome, seconds)``: told about every finished operation (metrics).

``outcome`` is ``completed``, ``failed``, ``timeout``, ``cancelled``, ``call_ended`` or
``error`` (Graph refused the request or could not be reached)."""

MEDIA_KINDS: Final = frozenset({"playPrompt", "recordResponse"})
"""Operations that ``cancelMediaProcessing`` stops (and that are cancelled with it)."""
TRANSFERRED_SUBCODE: Final = 7015
CANCELLED_SUBCODE: Final = 8508
_CANCEL_REASONS: Final = frozenset({"operationCanceled", "mediaOperationCanceled"})
_RECORD_FAILURES: Final = frozenset(
    {
        "operationCanceled",
        "playPromptFailed",
        "playBeepFailed",
        "mediaReceiveTimeout",
        "unspecifiedError",
    }
)


# --- the tone buffer -------------------------------------------------------------------------


class ToneBuffer:
    """The key presses of one call not yet consumed, ordered by ``sequenceId``.

    Graph reports each key as its own notification; they may arrive out of order and twice.
    :meth:`add` keeps each ``sequence_id`` once (and refuses those at or below what was
    consumed); :meth:`take` reads them in sequence order. Sequence ids are taken to count up
    by one from ``first_sequence`` (Graph's start at 1): a gap makes :meth:`take` wait for the
    missing key unless ``force`` is set (so keys numbered otherwise are still collected,
    only once the collection's time is up). At most ``limit`` keys are kept (the oldest go).
    """

    __slots__ = ("_tones", "consumed_upto", "first_sequence", "limit", "overflowed")

    def __init__(self, limit: int = 64, first_sequence: int = 1) -> None:
        self._tones: dict[int, str] = {}
        self.consumed_upto: int | None = None
        self.first_sequence = first_sequence
        self.limit = limit
        self.overflowed = 0

    def __len__(self) -> int:
        return len(self._tones)

    def add(self, sequence_id: int, tone: str) -> bool:
        """Keep a key press; False when it is a duplicate or older than what was consumed."""
        if sequence_id in self._tones or (
            self.consumed_upto is not None and sequence_id <= self.consumed_upto
        ):
            return False
        self._tones[sequence_id] = tone
        if len(self._tones) > self.limit:
            del self._tones[min(self._tones)]
            self.overflowed += 1
        return True

    def take(
        self, max_digits: int, stop_tones: Iterable[str], *, force: bool = False
    ) -> str | None:
        """Consume and return the digits of one collection, or None when it is not over yet.

        A collection is over at the ``max_digits``-th key or at a stop tone (not returned),
        whichever comes first in sequence order. With ``force`` (its time is up) it is over
        anyway, with the keys there are, gaps or not. Keys after the end stay buffered.
        """
        stops = frozenset(stop_tones)
        previous = self.consumed_upto
        if previous is None:
            lowest = min(self._tones, default=self.first_sequence)
            previous = min(lowest, self.first_sequence) - 1
        digits: list[str] = []
        last: int | None = None
        for sequence_id in sorted(self._tones):
            if not force and sequence_id != previous + 1:
                return None  # a key in between has not arrived (yet)
            previous = last = sequence_id
            tone = self._tones[sequence_id]
            if tone in stops:
                self._consume(last)
                return "".join(digits)
            digits.append(tone)
            if len(digits) >= max_digits:
                self._consume(last)
                return "".join(digits)
        if not force:
            return None
        if last is not None:
            self._consume(last)
        return "".join(digits)

    def _consume(self, upto: int) -> None:
        for sequence_id in [s for s in self._tones if s <= upto]:
            del self._tones[sequence_id]
        self.consumed_upto = upto


# --- the registry ----------------------------------------------------------------------------


class _Waiter:
    """One operation awaiting its result."""

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
        if not self.done.is_set():
            self.finished = finished
            self.done.set()

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class _Transfer:
    """What a pending transfer has seen of the call's states."""

    __slots__ = ("accepted", "baseline", "done", "error", "progressed")

    def __init__(self, baseline: int | None) -> None:
        self.baseline = baseline
        self.progressed = False
        self.accepted = False
        self.done = anyio.Event()
        self.error: BaseException | None = None


class _Record:
    """What the registry knows of one call."""

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
        self.waiters: set[_Waiter] = set()
        self.tones = ToneBuffer(tone_limit)
        self.last_tone_at = 0.0
        self.subscribed = False
        self.subscribing: anyio.Event | None = None
        self.collecting = False
        self.pins = 0
        self.transfer: _Transfer | None = None
        self._changed: anyio.Event | None = None

    @property
    def changed(self) -> anyio.Event:
        """Set at the next change of the call (made when someone first waits for one)."""
        changed = self._changed
        if changed is None:
            changed = self._changed = anyio.Event()
        return changed

    def touch(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    @property
    def busy(self) -> bool:
        return bool(self.waiters or self.collecting or self.pins or self.transfer)


class OperationRegistry:
    """Correlates operation results, key presses and call states with the tasks awaiting them.

    Loop-confined: create it, call :meth:`on_events` and run :class:`CallControl` on one
    event loop (the one that owns the Graph client). ``book`` is the worker's
    :class:`~callflow.control.book.CallBook`: a call's record is dropped when the book says the
    call ended (its waiters fail at once), and an ended call gets no new record. It keeps,
    bounded: what it saw of the calls it was told about (beyond ``max_calls``, records of
    idle calls the book does not hold are forgotten, oldest first), ``max_tones`` unconsumed
    key presses per call, and up to ``max_early`` results nobody awaited yet, for
    ``early_ttl`` seconds.
    """

    def __init__(
        self,
        *,
        book: CallBook | None = None,
        max_calls: int = 10_000,
        max_tones: int = 64,
        max_early: int = 1_024,
        early_ttl: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.book = book if book is not None else CallBook()
        self.book.on_end(self._ended)
        self.max_calls = max_calls
        self.max_tones = max_tones
        self.max_early = max_early
        self.early_ttl = early_ttl
        self._clock = clock
        self._calls: OrderedDict[str, _Record] = OrderedDict()
        self._by_context: dict[str, _Waiter] = {}
        self._by_operation: dict[tuple[str, str], _Waiter] = {}
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
        now = self._clock()
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
        record.last_tone_at = self._clock()
        record.touch()

    def _state(self, event: CallStateChanged) -> None:
        record = self.record(event.call_id)
        if record.ended:
            return
        etag = event.etag
        stale = etag is not None and record.etag is not None and etag <= record.etag
        if not stale:
            if etag is not None:
                record.etag = etag
            record.state = event.state
        if event.state == "established":
            record.established = True
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
                    f"transfer of call {record.call_id} failed: {_describe(event.result)}",
                    kind="transfer",
                    call_id=record.call_id,
                    result=event.result,
                    status="failed",
                )
                transfer.done.set()
        record.touch()

    def end(self, call_id: str, result: ResultInfo | None = None) -> None:
        """The call ended: the book forgets it, its waiters fail with CallEndedError (a
        transfer may succeed), its record is dropped."""
        self.book.end(call_id, result)

    def _ended(self, call_id: str, result: ResultInfo | None) -> None:
        """The book's listener: ``call_id`` ended."""
        record = self._calls.pop(call_id, None)
        if record is None or record.ended:
            return
        record.ended = True
        record.result = result
        record.state = "terminated"
        transfer = record.transfer
        if transfer is not None:
            if not (transfer.accepted or (result and result.subcode == TRANSFERRED_SUBCODE)):
                transfer.error = _ended(record)
            transfer.done.set()
        for waiter in list(record.waiters):
            waiter.fail(_ended(record))
        record.touch()

    # -- records -----------------------------------------------------------------------------

    def record(self, call_id: str) -> _Record:
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
        record = _Record(key, self.max_tones)
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

    def expect(self, call_id: str, kind: str, context: str) -> _Waiter:
        """Register a waiter for the operation about to be started with ``context``."""
        record = self.record(call_id)
        waiter = _Waiter(call_id, kind, context)
        if record.ended:
            waiter.fail(_ended(record))
        record.waiters.add(waiter)
        self._by_context[context] = waiter
        return waiter

    def bind(self, waiter: _Waiter, operation_id: str | None) -> None:
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

    def forget(self, waiter: _Waiter) -> None:
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


def _describe(result: ResultInfo | None) -> str:
    if result is None:
        return "Graph sent no resultInfo"
    return f"{result.code}/{result.subcode} {result.message or ''}".rstrip()


def _ended(record: _Record) -> CallEndedError:
    return CallEndedError(
        f"call {record.call_id} ended ({_describe(record.result)})",
        call_id=record.call_id,
        result=record.result,
    )


def _codes(
    finished: OperationFinished | None, error: BaseException | None
) -> tuple[int | str | None, int | str | None]:
    """Graph's code and subcode for the ``call.operation`` line (see ``_report``).

    A refused request gives its HTTP status and Graph's error code (a number when it is
    one: ``404``/``8522``, ``403``/``Forbidden``).
    """
    if finished is not None and finished.result is not None:
        return finished.result.code, finished.result.subcode
    seen = error
    while seen is not None:
        if isinstance(seen, OperationError | CallEndedError) and seen.result is not None:
            return seen.result.code, seen.result.subcode
        if isinstance(seen, GraphResponseError):
            code = seen.code
            if code is not None and code.isascii() and code.isdigit():
                return seen.status, int(code)
            return seen.status, code
        seen = seen.__cause__
    return None, None


def _succeeded(kind: str, finished: OperationFinished) -> bool:
    """Whether a finished operation did what was asked (see call-control rules)."""
    if finished.status != "completed":
        return False
    reason = finished.completion_reason
    result = finished.result
    code_ok = result is None or result.code is None or 200 <= result.code < 300
    if kind in ("playPrompt", "sendDtmfTones"):
        # "completed" with completionReason "unknown" is Graph's silent failure.
        return reason == "completedSuccessfully" or (reason is None and code_ok)
    if kind == "recordResponse":
        return reason not in _RECORD_FAILURES and code_ok
    return code_ok


def _failure(kind: str, call_id: str, finished: OperationFinished) -> OperationError:
    result = finished.result
    cancelled = finished.completion_reason in _CANCEL_REASONS or (
        result is not None and result.subcode == CANCELLED_SUBCODE
    )
    cls = MediaCancelledError if cancelled else OperationError
    return cls(
        f"{kind} on call {call_id} ended {finished.status} ({_describe(result)}; "
        f"completionReason {finished.completion_reason})",
        kind=kind,
        call_id=call_id,
        result=result,
        status=finished.status,
        completion_reason=finished.completion_reason,
        operation_id=finished.operation_id,
        client_context=finished.client_context,
    )


# --- the operations --------------------------------------------------------------------------

Start = Callable[[str, float | None], Awaitable["Operation"]]
"""``start(client_context, deadline)``: POST the action, return Graph's operation."""


class CallControl:
    """Runs call-control operations on the I/O loop: POST, then await Graph's result.

    ``graph`` must be entered on this loop. ``cancel_timeout`` bounds the shielded
    ``cancelMediaProcessing`` (or hang-up) sent when a wait is given up. ``on_operation``
    is told about every operation that ends (metrics). A call that ends, whoever ends it,
    ends in the registry's :class:`~callflow.control.book.CallBook` (``self.book``): its waiters
    fail at once, and nothing more is sent for it.
    """

    def __init__(
        self,
        graph: GraphClient,
        registry: OperationRegistry | None = None,
        *,
        cancel_timeout: float = 5.0,
        on_operation: OnOperation | None = None,
        on_created: Callable[[str, str | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.graph = graph
        self.registry = registry if registry is not None else OperationRegistry(clock=clock)
        self.book = self.registry.book
        self.cancel_timeout = cancel_timeout
        self._on_operation = on_operation
        self._on_created = on_created
        """``on_created(call_id, tenant_id)``: a call the bot created is established (the
        bot then holds it: keep-alive)."""
        self._clock = clock

    async def wait_established(self, call_id: str, timeout: float | None) -> None:
        """Return once Graph reported ``call_id`` established (at once if it did already).

        Raises CallEndedError when the call ended first, OperationTimeoutError after
        ``timeout`` seconds.
        """
        record = self.registry.record(call_id)
        record.pins += 1  # keep the record while waiting
        try:
            with anyio.fail_after(timeout):
                while not record.established:
                    if record.ended:
                        raise _ended(record)
                    await record.changed.wait()
        except TimeoutError as exc:
            raise OperationTimeoutError(
                f"call {call_id} was not established within {timeout} s",
                kind="establish",
                call_id=call_id,
            ) from exc
        finally:
            record.pins -= 1

    # -- one operation -----------------------------------------------------------------------

    async def run(
        self,
        call_id: str,
        kind: str,
        start: Start,
        *,
        timeout: float | None,
        tenant_id: str | None = None,
    ) -> OperationFinished:
        """Start an operation and return its result once Graph reports it.

        Raises OperationError (MediaCancelledError for 400/8508) when it failed,
        OperationTimeoutError after ``timeout`` seconds, CallEndedError when the call ended
        first, GraphError when Graph refused the request. A prompt or recording given up
        (timeout or cancellation) is cancelled in Graph.
        """
        registry = self.registry
        began = self._clock()
        deadline = None if timeout is None else began + timeout
        context = _new_context()
        waiter = registry.expect(call_id, kind, context)
        outcome = "error"
        error: BaseException | None = None
        finished: OperationFinished | None = None
        posted = False
        try:
            with anyio.fail_after(timeout):
                if not waiter.done.is_set():
                    try:
                        posted = True
                        operation = await start(context, deadline)
                    except CallGoneError as exc:
                        registry.end(call_id)
                        raise _ended(registry.record(call_id)) from exc
                    if operation.finished:
                        finished = _from_reply(operation)
                    else:
                        registry.bind(waiter, operation.operation_id)
                if finished is None:
                    await waiter.done.wait()
                    if waiter.error is not None:
                        raise waiter.error
                    finished = waiter.finished
                    assert finished is not None
            if not _succeeded(kind, finished):
                raise _failure(kind, call_id, finished)
            outcome = "completed"
            return finished
        except TimeoutError as exc:
            outcome = "timeout"
            if posted and kind in MEDIA_KINDS:
                await self._cancel_media(call_id, tenant_id)
            raise OperationTimeoutError(
                f"{kind} on call {call_id} did not finish within {timeout} s",
                kind=kind,
                call_id=call_id,
                operation_id=waiter.operation,
                client_context=context,
            ) from exc
        except anyio.get_cancelled_exc_class():
            outcome = "cancelled"
            if posted and kind in MEDIA_KINDS:
                await self._cancel_media(call_id, tenant_id)
            raise
        except CallEndedError as exc:
            outcome, error = "call_ended", exc
            raise
        except OperationError as exc:
            outcome, error = "failed", exc
            raise
        except GraphError as exc:
            error = exc
            raise
        finally:
            registry.forget(waiter)
            self._report(call_id, kind, outcome, began, waiter.operation, finished, error)

    def _report(
        self,
        call_id: str,
        kind: str,
        outcome: str,
        began: float,
        operation_id: str | None,
        finished: OperationFinished | None,
        error: BaseException | None = None,
    ) -> None:
        """Log the ``call.operation`` line of an operation that ended, and tell the hook.

        ``code``/``subcode`` are Graph's: the ``resultInfo`` of the result, else of the
        error raised (or its cause), else the HTTP status and error code of the request
        Graph refused.
        """
        seconds = self._clock() - began
        code, subcode = _codes(finished, error)
        log.info(
            "call.operation",
            call_id=call_id,
            kind=kind,
            operation_id=operation_id,
            outcome=outcome,
            latency_ms=round(seconds * 1000, 1),
            code=code,
            subcode=subcode,
            completion_reason=finished.completion_reason if finished is not None else None,
        )
        hook = self._on_operation
        if hook is not None:
            try:
                hook(kind, outcome, seconds)
            except Exception:
                log.exception("call.on_operation_failed", kind=kind, outcome=outcome)

    async def _cancel_media(self, call_id: str, tenant_id: str | None) -> None:
        """Send cancelMediaProcessing, shielded from cancellation, within cancel_timeout
        (not to a call that has ended: its media stopped with it)."""
        if self.registry.is_ended(call_id):
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.cancel_timeout):
            try:
                await self.graph.cancel_media_processing(
                    call_id, tenant_id=tenant_id, deadline=self._clock() + self.cancel_timeout
                )
            except GraphError as exc:
                log.warning("call.cancel_media_failed", call_id=call_id, error=str(exc))

    def _check_open(self, call_id: str) -> None:
        if self.registry.is_ended(call_id):
            raise _ended(self.registry.record(call_id))

    # -- the actions -------------------------------------------------------------------------

    async def act(
        self, call_id: str, tenant_id: str | None, request: _Action, timeout: float | None
    ) -> OperationFinished:
        """Run one action (play prompts, record, send tones, invite, update the recording
        status); return when Graph finished it (see :meth:`run`)."""
        self._check_open(call_id)

        def start(context: str, deadline: float | None) -> Awaitable[Operation]:
            return self.graph.run_action(
                call_id,
                request.action,
                request.to_graph,
                client_context=context,
                tenant_id=tenant_id,
                deadline=deadline,
            )

        kind = "invite" if type(request) is Invite else request.action
        return await self.run(call_id, kind, start, timeout=timeout, tenant_id=tenant_id)

    async def simple(
        self, call_id: str, tenant_id: str | None, kind: str, timeout: float | None
    ) -> OperationFinished:
        """Run ``subscribeToTone``, ``cancelMediaProcessing``, ``mute`` or ``unmute``."""
        self._check_open(call_id)
        methods = {
            "subscribeToTone": self.graph.subscribe_to_tone,
            "cancelMediaProcessing": self.graph.cancel_media_processing,
            "mute": self.graph.mute,
            "unmute": self.graph.unmute,
        }
        method = methods[kind]

        def start(context: str, deadline: float | None) -> Awaitable[Operation]:
            return method(call_id, client_context=context, tenant_id=tenant_id, deadline=deadline)

        return await self.run(call_id, kind, start, timeout=timeout, tenant_id=tenant_id)

    async def hang_up(self, call_id: str, tenant_id: str | None, timeout: float | None) -> None:
        """Hang up (DELETE); the call's waiters fail with CallEndedError at once.

        A call known to have ended already is not hung up again: nothing is sent.
        """
        if self.registry.is_ended(call_id):
            log.debug("call.hang_up_skipped", call_id=call_id, reason="the call has ended")
            return
        deadline = None if timeout is None else self._clock() + timeout
        self.registry.end(call_id)  # the bot is leaving: nothing more waits on this call
        await self.graph.hang_up(call_id, tenant_id=tenant_id, deadline=deadline)
        log.info("call.hung_up", call_id=call_id)

    async def download(
        self, location: str, token: str, call_id: str, max_bytes: int, timeout: float | None
    ) -> bytes:
        """Download a recording within ``timeout`` seconds."""
        deadline = None if timeout is None else self._clock() + timeout
        with anyio.fail_after(timeout):
            return await self.graph.download_recording(
                location, token, max_bytes=max_bytes, deadline=deadline, call_id=call_id
            )

    # -- transfer ----------------------------------------------------------------------------

    async def transfer(
        self, call_id: str, tenant_id: str | None, request: Transfer, timeout: float | None
    ) -> None:
        """Transfer the call; return once Graph says it was transferred (the call ends).

        Raises TransferError when the call came back to ``established`` (Graph's resultInfo
        says why), OperationTimeoutError after ``timeout`` seconds.
        """
        self._check_open(call_id)
        registry = self.registry
        record = registry.record(call_id)
        if record.transfer is not None:
            raise CallControlError(f"call {call_id} is already being transferred")
        watch = _Transfer(record.etag)
        record.transfer = watch
        began = self._clock()
        outcome = "error"
        error: BaseException | None = None
        deadline = None if timeout is None else began + timeout
        try:
            with anyio.fail_after(timeout):
                try:
                    await self.graph.transfer(
                        call_id, request, tenant_id=tenant_id, deadline=deadline
                    )
                except CallGoneError as exc:
                    registry.end(call_id)
                    raise _ended(record) from exc
                await watch.done.wait()
            if watch.error is not None:
                raise watch.error
            outcome = "completed"
        except TimeoutError as exc:
            outcome = "timeout"
            raise OperationTimeoutError(
                f"transfer of call {call_id} did not finish within {timeout} s",
                kind="transfer",
                call_id=call_id,
            ) from exc
        except anyio.get_cancelled_exc_class():
            outcome = "cancelled"
            raise
        except CallEndedError as exc:
            outcome, error = "call_ended", exc
            raise
        except OperationError as exc:
            outcome, error = "failed", exc
            raise
        except GraphError as exc:
            error = exc
            raise
        finally:
            record.transfer = None
            self._report(call_id, "transfer", outcome, began, None, None, error)

    # -- tones -------------------------------------------------------------------------------

    async def subscribe_tones(
        self, call_id: str, tenant_id: str | None, timeout: float | None
    ) -> None:
        """subscribeToTone once per call; concurrent callers share the one request."""
        record = self.registry.record(call_id)
        while not record.subscribed:
            pending = record.subscribing
            if pending is not None:
                await pending.wait()
                continue
            record.subscribing = anyio.Event()
            try:
                await self.simple(call_id, tenant_id, "subscribeToTone", timeout)
                record.subscribed = True
            finally:
                done, record.subscribing = record.subscribing, None
                done.set()

    async def collect_digits(
        self,
        call_id: str,
        tenant_id: str | None,
        *,
        max_digits: int,
        timeout: float,
        inter_digit_timeout: float,
        stop_tones: tuple[str, ...],
        prompt: PlayPrompt | None,
        prompt_timeout: float | None,
    ) -> str:
        """Collect the caller's key presses (see
        :meth:`callflow.control.call.Call.collect_digits`)."""
        self._check_open(call_id)
        record = self.registry.record(call_id)
        if record.collecting:
            raise CallControlError(f"call {call_id} is already collecting digits")
        record.collecting = True
        try:
            await self.subscribe_tones(call_id, tenant_id, timeout)
            if prompt is None:
                return await self._gather(
                    record, max_digits, timeout, inter_digit_timeout, stop_tones, None
                )
            return await self._with_prompt(
                record,
                tenant_id,
                prompt,
                prompt_timeout,
                max_digits,
                timeout,
                inter_digit_timeout,
                stop_tones,
            )
        finally:
            record.collecting = False

    async def _with_prompt(
        self,
        record: _Record,
        tenant_id: str | None,
        prompt: PlayPrompt,
        prompt_timeout: float | None,
        max_digits: int,
        timeout: float,
        inter_digit_timeout: float,
        stop_tones: tuple[str, ...],
    ) -> str:
        """Play ``prompt`` while collecting; the first key press stops it (barge-in)."""
        playing = _Playing()
        call_id = record.call_id

        async def play() -> None:
            try:
                with playing.scope:
                    await self.act(call_id, tenant_id, prompt, prompt_timeout)
            except MediaCancelledError:
                pass  # cancelled by someone else: the menu is over, keep collecting
            except Exception as exc:
                playing.error = exc
            finally:
                playing.done = True
                record.touch()

        digits: str | None = None
        failure: Exception | None = None
        # Errors leave the task group as they are, not wrapped in an ExceptionGroup: the
        # body keeps its own, the prompt task keeps its own in `playing`.
        async with anyio.create_task_group() as tg:
            tg.start_soon(play)
            try:
                digits = await self._gather(
                    record, max_digits, timeout, inter_digit_timeout, stop_tones, playing
                )
            except Exception as exc:
                failure = exc
            finally:
                playing.scope.cancel()
        if failure is not None:
            raise failure
        if playing.error is not None and digits is None:
            raise playing.error
        assert digits is not None
        return digits

    async def _gather(
        self,
        record: _Record,
        max_digits: int,
        timeout: float,
        inter_digit_timeout: float,
        stop_tones: tuple[str, ...],
        playing: _Playing | None,
    ) -> str:
        tones = record.tones
        clock = self._clock
        began = end = None
        while True:
            digits = tones.take(max_digits, stop_tones)
            if digits is not None:
                return digits
            if record.ended:
                raise _ended(record)
            if playing is not None and not playing.done:
                if len(tones):
                    playing.scope.cancel()  # barge-in: a key stops the prompt
                elif playing.error is None:
                    await record.changed.wait()
                    continue
            if playing is not None and playing.error is not None:
                raise playing.error
            now = clock()
            if began is None:
                began = now
                end = began + timeout
            assert end is not None
            wake = end
            if len(tones):
                wake = min(end, max(record.last_tone_at, began) + inter_digit_timeout)
            if now >= wake:
                digits = tones.take(max_digits, stop_tones, force=True)
                assert digits is not None
                return digits
            with anyio.move_on_after(wake - now):
                await record.changed.wait()

    # -- new calls ---------------------------------------------------------------------------

    async def create(
        self, request: OutgoingCall | JoinMeeting, timeout: float | None
    ) -> CreatedCall:
        """Create a call and return it once established.

        Raises CallEndedError when it ended first (Graph's resultInfo says why) and
        OperationTimeoutError after ``timeout`` seconds; a call given up is hung up.
        """
        registry = self.registry
        began = self._clock()
        deadline = None if timeout is None else began + timeout
        kind = "join" if hasattr(request, "meeting") else "create"
        outcome = "error"
        error: BaseException | None = None
        created: CreatedCall | None = None
        try:
            with anyio.fail_after(timeout):
                # Until Graph's reply names the call, notifications about it may come first:
                # the intake keeps those briefly instead of dropping them as unknown.
                with self.book.creating_call():
                    created = await self.graph.create_call(request, deadline=deadline)
                    # Bound to the tenant whose app token created it, from now to its end.
                    self.book.hold(created.call_id, created.tenant_id)
                record = registry.record(created.call_id)
                record.pins += 1  # keep the record while waiting
                try:
                    while not record.established:
                        if record.ended:
                            raise _ended(record)
                        await record.changed.wait()
                finally:
                    record.pins -= 1
            outcome = "completed"
            if self._on_created is not None:
                self._on_created(created.call_id, created.tenant_id)
            return created
        except TimeoutError as exc:
            outcome = "timeout"
            if created is not None:
                await self._hang_up_quietly(created.call_id)
            raise OperationTimeoutError(
                f"{kind}: the call was not established within {timeout} s",
                kind=kind,
                call_id=created.call_id if created is not None else "",
            ) from exc
        except anyio.get_cancelled_exc_class():
            outcome = "cancelled"
            if created is not None:
                await self._hang_up_quietly(created.call_id)
            raise
        except CallEndedError as exc:
            outcome, error = "call_ended", exc
            raise
        except GraphError as exc:
            error = exc
            raise
        finally:
            call_id = created.call_id if created is not None else ""
            self._report(call_id, kind, outcome, began, None, None, error)

    async def _hang_up_quietly(self, call_id: str) -> None:
        """Hang up a call the bot gave up on (shielded, within cancel_timeout); it ends here
        first, whether or not Graph can be told."""
        if self.registry.is_ended(call_id):
            return
        tenant = self.book.tenant_of(call_id)
        self.registry.end(call_id)
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.cancel_timeout):
            try:
                await self.graph.hang_up(
                    call_id, tenant_id=tenant, deadline=self._clock() + self.cancel_timeout
                )
            except GraphError as exc:
                log.warning("call.hang_up_failed", call_id=call_id, error=str(exc))


class _Playing:
    """The prompt of a digit collection: its cancel scope, and how it ended."""

    __slots__ = ("done", "error", "scope")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.done = False
        self.error: BaseException | None = None


def _from_reply(operation: Operation) -> OperationFinished:
    """An operation Graph's reply already reports as finished, as the event would say it."""
    return OperationFinished(
        operation.call_id,
        operation.operation_id or "",
        operation.kind,
        operation.status,
        operation.result,
        operation.client_context,
        operation.completion_reason,
        operation.recording_location,
        operation.recording_access_token,
    )


def _new_context() -> str:
    return _new_client_context()
