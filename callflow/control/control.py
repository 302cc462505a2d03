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

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Final

import anyio
import structlog

import callflow._tracing as _tracing
from callflow.actions import Invite, JoinMeeting, PlayPrompt, RecordResponse, prompt_names
from callflow.clock import MONOTONIC
from callflow.control.digits import DigitRequest, Entry, WhyStopped, collect
from callflow.control.memory import LocalMemory, Memory
from callflow.control.registry import (
    CallRecord,
    OperationRegistry,
    TransferWatch,
    Waiter,
    describe_result,
)
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
from callflow.speech.media import SpokenMedia, rendered

if TYPE_CHECKING:
    from callflow.actions import OutgoingCall, SendTones, Transfer, UpdateRecordingStatus
    from callflow.graph.client import CreatedCall, GraphClient, Operation
    from callflow.speech.recognition import Recognizer

    _Action = PlayPrompt | RecordResponse | SendTones | Invite | UpdateRecordingStatus

__all__ = ["CREATE_KINDS", "MEDIA_KINDS", "CallControl", "OnOperation", "graph_deadline"]

log = structlog.get_logger(__name__)

OnOperation = Callable[[str, str, float], None]
"""``on_operation(kind, outcome, seconds)``: told about every finished operation (metrics).

``outcome`` is ``completed``, ``failed``, ``timeout``, ``cancelled``, ``call_ended`` or
``error`` (Graph refused the request or could not be reached)."""

MEDIA_KINDS: Final = frozenset({"playPrompt", "recordResponse"})
"""Operations that ``cancelMediaProcessing`` stops (and that are cancelled with it)."""
CREATE_KINDS: Final = frozenset({"create", "join"})
"""Operations that create a call (hung up when given up before it is established)."""
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
    ends in the registry's :class:`~callflow.control.book.CallBook` (``self.book``): its waiters
    fail at once, and nothing more is sent for it. Time is read on the registry's clock
    (:attr:`OperationRegistry.clock <callflow.control.registry.OperationRegistry.clock>`),
    the one that stamped the calls' key presses.

    Every operation that is reported (:meth:`run`, :meth:`transfer`, :meth:`create`) ends
    through :meth:`_finishing`, the one place that maps its end to an outcome and an error,
    undoes what a given-up operation left in Graph and reports it once.
    """

    def __init__(
        self,
        graph: GraphClient,
        registry: OperationRegistry | None = None,
        *,
        cancel_timeout: float = 5.0,
        on_operation: OnOperation | None = None,
        on_created: Callable[[str, str | None], None] | None = None,
        memory: Memory | None = None,
    ) -> None:
        self.graph = graph
        self.memory: Memory = memory if memory is not None else LocalMemory()
        """Where ``call.remember()`` keeps memos (the fleet's store in fleet mode)."""
        self.registry = registry if registry is not None else OperationRegistry()
        self.book = self.registry.book
        self.cancel_timeout = cancel_timeout
        self._on_operation = on_operation
        self._on_created = on_created
        """``on_created(call_id, tenant_id)``: a call the bot created is established (the
        bot then holds it: keep-alive)."""
        self._clock = self.registry.clock
        # Set by the worker with a Speech resource: rendering Say/Ssml, recognising answers.
        self.spoken: SpokenMedia | None = None
        self.recognizer: Recognizer | None = None

    async def wait_established(self, call_id: str, timeout: float | None) -> None:
        """Return once Graph reported ``call_id`` established (at once if it did already).

        Raises CallEndedError when the call ended first, OperationTimeoutError after
        ``timeout`` seconds.
        """
        try:
            with anyio.fail_after(timeout):
                await _established(self.registry.record(call_id))
        except TimeoutError as exc:
            raise OperationTimeoutError(
                f"call {call_id} was not established within {timeout} s",
                kind="establish",
                call_id=call_id,
            ) from exc

    async def remember(self, call_id: str, tenant_id: str | None, memo: str) -> None:
        """Keep ``memo`` (JSON, checked) as the call's memo; CallEndedError once it ended."""
        _check_open(self.registry, call_id)
        await self.memory.remember(call_id, tenant_id, memo)

    # -- one operation -----------------------------------------------------------------------

    async def run(
        self,
        call_id: str,
        kind: str,
        start: Start,
        *,
        timeout: float | None,
        tenant_id: str | None = None,
        prompts: tuple[str, ...] | None = None,
        why_stopped: WhyStopped | None = None,
    ) -> OperationFinished:
        """Start an operation and return its result once Graph reports it.

        Raises OperationError (MediaCancelledError for 400/8508) when it failed,
        OperationTimeoutError after ``timeout`` seconds, CallEndedError when the call ended
        first, GraphError when Graph refused the request. A prompt or recording given up
        (timeout or cancellation) is cancelled in Graph. ``prompts`` names the operation's
        prompts and ``why_stopped()`` says why it was cancelled, when a digit collection
        stopped it (both for the ``call.operation`` line).
        """
        registry = self.registry
        async with self._finishing(call_id, kind, timeout, tenant_id) as step:
            step.prompts, step.why_stopped = prompts, why_stopped
            # Registered before the POST: a result that comes before the reply finds it.
            waiter = step.waiter = registry.expect(call_id, kind, _new_context())
            finished: OperationFinished | None = None
            if not waiter.done.is_set():  # not failed already (the call ended)
                step.started = True
                with self._gone(call_id):
                    operation = await start(waiter.context, step.deadline)
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
            step.finished = finished
            if not _succeeded(kind, finished):
                raise _failure(kind, call_id, finished)
        return finished

    @contextlib.asynccontextmanager
    async def _finishing(
        self, call_id: str, kind: str, timeout: float | None, tenant_id: str | None = None
    ) -> AsyncIterator[_Step]:
        """Run the body of one operation within ``timeout`` seconds, and finish it.

        The body gets the operation's :class:`_Step` (where it notes what the finish needs)
        and only does the protocol: post, bind, wait, judge. Its end maps to the outcome
        reported and the error raised: ``completed``; ``timeout`` (OperationTimeoutError);
        ``cancelled`` (re-raised); ``call_ended`` (CallEndedError); ``failed``
        (OperationError, Graph's codes); ``error`` (GraphError: Graph refused the request or
        could not be reached, with its HTTP status and code). An operation given up (timeout
        or cancellation) is undone in Graph (:meth:`_give_up`); its waiter is forgotten; the
        ``call.operation`` line and ``on_operation`` are told once.
        """
        began = self._clock.now()
        step = _Step(call_id, kind, tenant_id, graph_deadline(timeout))
        outcome = "error"
        error: BaseException | None = None
        span = _tracing.operation(call_id, kind, tenant_id)  # a no-op while tracing is off
        try:
            with anyio.fail_after(timeout):
                yield step
            outcome = "completed"
        except TimeoutError as exc:
            outcome = "timeout"
            await self._give_up(step)
            raise step.too_late(timeout) from exc
        except anyio.get_cancelled_exc_class():
            outcome = "cancelled"
            await self._give_up(step)
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
            if step.waiter is not None:
                self.registry.forget(step.waiter)
            span.end(outcome, error)
            self._report(step, outcome, self._clock.now() - began, error)

    @contextlib.contextmanager
    def _gone(self, call_id: str) -> Iterator[None]:
        """Around a request on ``call_id``: when Graph answers that the call is gone (404,
        8522), the call ends here for everyone, and the request raises CallEndedError."""
        try:
            yield
        except CallGoneError as exc:
            self.registry.end(call_id, by="gone")
            raise self.registry.record(call_id).ended_error() from exc

    async def _give_up(self, step: _Step) -> None:
        """Undo what an operation given up (timed out, cancelled) may have left running in
        Graph: stop its prompt or recording, hang up the call it created."""
        if not step.started:
            return
        if step.kind in MEDIA_KINDS:
            await self._cancel_media(step.call_id, step.tenant_id)
        elif step.kind in CREATE_KINDS:
            await self._hang_up_quietly(step.call_id)

    def _report(
        self, step: _Step, outcome: str, seconds: float, error: BaseException | None
    ) -> None:
        """Log the ``call.operation`` line of an operation that ended, and tell the hook."""
        _log_operation(step, outcome, seconds, error)
        kind = step.kind
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
                _undo_failed("call.cancel_media_failed", call_id, exc)

    async def _hang_up_quietly(self, call_id: str) -> None:
        """Hang up a call the bot gave up on (shielded, within cancel_timeout); it ends here
        first, whether or not Graph can be told."""
        if self.registry.is_ended(call_id):
            return
        tenant = self.book.tenant_of(call_id)
        self.registry.end(call_id, by="bot")
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.cancel_timeout):
            try:
                await self.graph.hang_up(
                    call_id, tenant_id=tenant, deadline=graph_deadline(self.cancel_timeout)
                )
            except GraphError as exc:
                _undo_failed("call.hang_up_failed", call_id, exc)

    # -- the actions -------------------------------------------------------------------------

    async def act(
        self,
        call_id: str,
        tenant_id: str | None,
        request: _Action,
        timeout: float | None,
        why_stopped: WhyStopped | None = None,
    ) -> OperationFinished:
        """Run one action (play, record, send tones, invite, update the recording status);
        return when Graph finished it (see :meth:`run`). Spoken prompts are rendered first,
        within ``timeout`` (SpeechError, and nothing sent, when they cannot be)."""
        _check_open(self.registry, call_id)
        request, timeout = await rendered(self.spoken, request, timeout)

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
        prompts = _prompts_of(request)
        return await self.run(
            call_id,
            kind,
            start,
            timeout=timeout,
            tenant_id=tenant_id,
            prompts=prompts,
            why_stopped=why_stopped,
        )

    async def simple(
        self, call_id: str, tenant_id: str | None, kind: str, timeout: float | None
    ) -> OperationFinished:
        """Run ``subscribeToTone``, ``cancelMediaProcessing``, ``mute`` or ``unmute``."""
        _check_open(self.registry, call_id)
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
        self.registry.end(call_id, by="bot")  # the bot is leaving: nothing more waits on this call
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
        _check_open(self.registry, call_id)
        record = self.registry.record(call_id)
        if record.transfer is not None:
            raise CallControlError(f"call {call_id} is already being transferred")
        watch = record.transfer = TransferWatch(record.etag)
        try:
            async with self._finishing(call_id, "transfer", timeout, tenant_id) as step:
                with self._gone(call_id):
                    await self.graph.transfer(
                        call_id, request, tenant_id=tenant_id, deadline=step.deadline
                    )
                await watch.done.wait()  # the call's states say how it went
                if watch.error is not None:
                    raise watch.error
        finally:
            record.transfer = None

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
    ) -> Entry:
        """Collect the caller's key presses (see
        :meth:`callflow.control.call.Call.collect_digits`): the digits and how the entry
        ended."""
        _check_open(self.registry, call_id)
        record = self.registry.record(call_id)
        if record.collecting:
            raise CallControlError(f"call {call_id} is already collecting digits")
        record.collecting = True
        try:
            await self.subscribe_tones(call_id, tenant_id, timeout)
            request = DigitRequest(max_digits, timeout, inter_digit_timeout, stop_tones)
            if prompt is None:
                return await collect(record, request, clock=self._clock)

            def play(why: WhyStopped) -> Awaitable[OperationFinished]:
                return self.act(call_id, tenant_id, prompt, prompt_timeout, why)

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
        kind = "join" if hasattr(request, "meeting") else "create"
        async with self._finishing("", kind, timeout) as step:
            # Until Graph's reply names the call, notifications about it may come first:
            # the intake keeps those briefly instead of dropping them as unknown.
            with self.book.creating_call():
                created = await self.graph.create_call(request, deadline=step.deadline)
                # Bound to the tenant whose app token created it, from now to its end.
                self.book.hold(created.call_id, created.tenant_id)
            step.call_id, step.started = created.call_id, True  # given up now: hung up
            await _established(self.registry.record(created.call_id))
        if self._on_created is not None:
            self._on_created(created.call_id, created.tenant_id)
        return created


def _undo_failed(event: str, call_id: str, exc: GraphError) -> None:
    """Log a cancel or hang-up that Graph refused: at info when the call is gone already
    (the caller hung up meanwhile: nothing to undo, nothing for an operator to look at),
    else at warning."""
    gone = isinstance(exc, CallGoneError)
    (log.info if gone else log.warning)(event, call_id=call_id, error=str(exc), gone=gone)


def _prompts_of(request: _Action) -> tuple[str, ...] | None:
    """The names of an action's prompts, for its log line (None: not a media action)."""
    if type(request) is PlayPrompt:
        return prompt_names(request.prompts)
    if type(request) is RecordResponse:
        return prompt_names(() if request.prompt is None else (request.prompt,))
    return None


def _log_operation(step: _Step, outcome: str, seconds: float, error: BaseException | None) -> None:
    """Log the ``call.operation`` line of an operation that ended.

    ``code``/``subcode`` are Graph's: the ``resultInfo`` of the result, else of the error
    raised (or its cause), else the HTTP status and error code of the request Graph
    refused. A media operation names its prompts; a cancelled one says why (``cause``).
    """
    finished = step.finished
    code, subcode = _codes(finished, error)
    extra: dict[str, object] = {}
    if step.prompts is not None:
        extra["prompts"] = step.prompts
    if outcome == "cancelled":
        why = step.why_stopped() if step.why_stopped is not None else None
        extra["cause"] = why or "awaiter_cancelled"
    log.info(
        "call.operation",
        call_id=step.call_id,
        kind=step.kind,
        operation_id=step.operation_id,
        outcome=outcome,
        latency_ms=round(seconds * 1000, 1),
        code=code,
        subcode=subcode,
        completion_reason=finished.completion_reason if finished is not None else None,
        **extra,
    )


class _Step:
    """One operation under way, as :meth:`CallControl._finishing` needs to know it."""

    __slots__ = (
        "call_id",
        "deadline",
        "finished",
        "kind",
        "prompts",
        "started",
        "tenant_id",
        "waiter",
        "why_stopped",
    )

    def __init__(
        self, call_id: str, kind: str, tenant_id: str | None, deadline: float | None
    ) -> None:
        self.call_id = call_id
        """The call ("" for a call being created, until Graph names it)."""
        self.kind = kind
        self.tenant_id = tenant_id
        self.deadline = deadline
        """The deadline of the operation's Graph requests (see :func:`graph_deadline`)."""
        self.waiter: Waiter | None = None
        """The registry's waiter of the operation's result, when it has one."""
        self.finished: OperationFinished | None = None
        """Graph's result, once it came."""
        self.started = False
        """True once the operation may be under way in Graph: giving it up then undoes it
        (a prompt or recording is cancelled, a created call hung up)."""
        self.prompts: tuple[str, ...] | None = None
        """The names of its prompts (a prompt or recording), for its log line."""
        self.why_stopped: WhyStopped | None = None
        """Why a digit collection stopped it (barge-in), when one did."""

    @property
    def operation_id(self) -> str | None:
        """Graph's id of the operation, once known."""
        return self.waiter.operation if self.waiter is not None else None

    def too_late(self, timeout: float | None) -> OperationTimeoutError:
        """The error of the operation when ``timeout`` ran out."""
        kind, call_id = self.kind, self.call_id
        if kind in CREATE_KINDS:
            message = f"{kind}: the call was not established within {timeout} s"
        elif kind == "transfer":
            message = f"transfer of call {call_id} did not finish within {timeout} s"
        else:
            message = f"{kind} on call {call_id} did not finish within {timeout} s"
        return OperationTimeoutError(
            message,
            kind=kind,
            call_id=call_id,
            operation_id=self.operation_id,
            client_context=self.waiter.context if self.waiter is not None else None,
        )


async def _established(record: CallRecord) -> None:
    """Return once the call of ``record`` is established; its CallEndedError when it ended
    first. The record is kept meanwhile."""
    record.pins += 1
    try:
        while not record.established:
            if record.ended:
                raise record.ended_error()
            await record.changed.wait()
    finally:
        record.pins -= 1


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


def _check_open(registry: OperationRegistry, call_id: str) -> None:
    if registry.is_ended(call_id):
        raise registry.record(call_id).ended_error()
