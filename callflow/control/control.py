"""Call control on the I/O side: running Graph's call-control operations to their end.

Everything here is confined to the event loop that owns the :class:`~callflow.graph.
client.GraphClient` (the I/O loop): :class:`CallControl` runs each operation there (POST,
then wait for its result in the :class:`~callflow.control.registry.OperationRegistry`),
transfers, creates and joins calls, hangs up and downloads recordings; digit collection
waits in :mod:`callflow.control.digits`. Bot code reaches it only through an
:class:`~callflow.control.call.IoPort`.

Every operation has a timeout and ends one way or another: completed, failed (Graph's
``resultInfo``), timed out, cancelled, ended with its call, or refused by Graph. A prompt or
recording given up is cancelled in Graph, a call being created that is given up is hung up,
and each operation's end is logged (``call.operation``) and counted (``on_operation``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import anyio
import structlog

from callflow.actions import Invite, JoinMeeting, PlayPrompt
from callflow.control.digits import DigitRequest, collect
from callflow.control.registry import OperationRegistry, TransferWatch, describe_result
from callflow.engine.clock import MONOTONIC
from callflow.errors import (
    CallControlError,
    CallEndedError,
    CallGoneError,
    GraphError,
    GraphResponseError,
    MediaCancelledError,
    OperationError,
    OperationTimeoutError,
)
from callflow.events import OperationFinished
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

__all__ = ["MEDIA_KINDS", "CallControl", "OnOperation", "graph_deadline"]

log = structlog.get_logger(__name__)

OnOperation = Callable[[str, str, float], None]
"""``on_operation(kind, outcome, seconds)``: told about every finished operation (metrics).

``outcome`` is ``completed``, ``failed``, ``timeout``, ``cancelled``, ``call_ended`` or
``error`` (Graph refused the request or could not be reached)."""

MEDIA_KINDS: Final = frozenset({"playPrompt", "recordResponse"})
"""Operations that ``cancelMediaProcessing`` stops (and that are cancelled with it)."""
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
        f"{kind} on call {call_id} ended {finished.status} ({describe_result(result)}; "
        f"completionReason {finished.completion_reason})",
        kind=kind,
        call_id=call_id,
        result=result,
        status=finished.status,
        completion_reason=finished.completion_reason,
        operation_id=finished.operation_id,
        client_context=finished.client_context,
    )


def graph_deadline(timeout: float | None) -> float | None:
    """The deadline of a Graph request that may take ``timeout`` seconds from now.

    On the Graph client's time base (an absolute ``time.monotonic()`` value, see
    :mod:`callflow.graph.client`), not on the clock call control reads: Graph's requests
    run in real time whatever clock the decisions are taken on.
    """
    return None if timeout is None else MONOTONIC.now() + timeout


# --- the operations --------------------------------------------------------------------------

Start = Callable[[str, float | None], Awaitable["Operation"]]
"""``start(client_context, deadline)``: POST the action, return Graph's operation."""


class CallControl:
    """Runs call-control operations on the I/O loop: POST, then await Graph's result.

    ``graph`` must be entered on this loop. ``cancel_timeout`` bounds the shielded
    ``cancelMediaProcessing`` (or hang-up) sent when a wait is given up. ``on_operation``
    is told about every operation that ends (metrics). A call that ends, whoever ends it,
    ends in the registry's :class:`~callflow.engine.book.CallBook` (``self.book``): its waiters
    fail at once, and nothing more is sent for it. Time is read on the registry's clock
    (:attr:`OperationRegistry.clock <callflow.control.registry.OperationRegistry.clock>`),
    the one that stamped the calls' key presses.
    """

    def __init__(
        self,
        graph: GraphClient,
        registry: OperationRegistry | None = None,
        *,
        cancel_timeout: float = 5.0,
        on_operation: OnOperation | None = None,
        on_created: Callable[[str, str | None], None] | None = None,
    ) -> None:
        self.graph = graph
        self.registry = registry if registry is not None else OperationRegistry()
        self.book = self.registry.book
        self.cancel_timeout = cancel_timeout
        self._on_operation = on_operation
        self._on_created = on_created
        """``on_created(call_id, tenant_id)``: a call the bot created is established (the
        bot then holds it: keep-alive)."""
        self._clock = self.registry.clock

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
                        raise record.ended_error()
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
        began = self._clock.now()
        deadline = graph_deadline(timeout)
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
                        raise registry.record(call_id).ended_error() from exc
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
        seconds = self._clock.now() - began
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
                    call_id, tenant_id=tenant_id, deadline=graph_deadline(self.cancel_timeout)
                )
            except GraphError as exc:
                log.warning("call.cancel_media_failed", call_id=call_id, error=str(exc))

    def _check_open(self, call_id: str) -> None:
        if self.registry.is_ended(call_id):
            raise self.registry.record(call_id).ended_error()

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
        deadline = graph_deadline(timeout)
        self.registry.end(call_id)  # the bot is leaving: nothing more waits on this call
        await self.graph.hang_up(call_id, tenant_id=tenant_id, deadline=deadline)
        log.info("call.hung_up", call_id=call_id)

    async def download(
        self, location: str, token: str, call_id: str, max_bytes: int, timeout: float | None
    ) -> bytes:
        """Download a recording within ``timeout`` seconds."""
        deadline = graph_deadline(timeout)
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
        watch = TransferWatch(record.etag)
        record.transfer = watch
        began = self._clock.now()
        outcome = "error"
        error: BaseException | None = None
        deadline = graph_deadline(timeout)
        try:
            with anyio.fail_after(timeout):
                try:
                    await self.graph.transfer(
                        call_id, request, tenant_id=tenant_id, deadline=deadline
                    )
                except CallGoneError as exc:
                    registry.end(call_id)
                    raise record.ended_error() from exc
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
            request = DigitRequest(max_digits, timeout, inter_digit_timeout, stop_tones)
            if prompt is None:
                return await collect(record, request, clock=self._clock)

            def play() -> Awaitable[OperationFinished]:
                return self.act(call_id, tenant_id, prompt, prompt_timeout)

            return await collect(record, request, clock=self._clock, prompt=play)
        finally:
            record.collecting = False

    # -- new calls ---------------------------------------------------------------------------

    async def create(
        self, request: OutgoingCall | JoinMeeting, timeout: float | None
    ) -> CreatedCall:
        """Create a call and return it once established.

        Raises CallEndedError when it ended first (Graph's resultInfo says why) and
        OperationTimeoutError after ``timeout`` seconds; a call given up is hung up.
        """
        registry = self.registry
        began = self._clock.now()
        deadline = graph_deadline(timeout)
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
                            raise record.ended_error()
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
                    call_id, tenant_id=tenant, deadline=graph_deadline(self.cancel_timeout)
                )
            except GraphError as exc:
                log.warning("call.hang_up_failed", call_id=call_id, error=str(exc))


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
