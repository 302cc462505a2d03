"""What a FakeGraph knows: its calls, the requests it received, the operations it started,
and what a test told it to do next.

:class:`GraphState` holds the calls placed on the fake and created by the bot
(:class:`~callflow.testing.CallHandle`), every recorded
:class:`~callflow.testing.GraphRequest` (in arrival order and per call), the operations
started, the recordings made (with their access tokens), the webhooks routed per
``callbackUri``, the calls marked gone, and the pending instructions: :class:`Fault`
(:meth:`FakeGraph.fail_next <callflow.testing.FakeGraph.fail_next>`) and :class:`Plan`
(:meth:`FakeGraph.plan_operation <callflow.testing.FakeGraph.plan_operation>`).

Runs on the test's event loop (where the fake runs): the fake's HTTP API, operations engine
and notifier change it, the test reads it through the fake; waiters wait on an event set at
each recorded request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import anyio
import attrs

from callflow.testing._call_handle import CallHandle
from callflow.testing._graph_http import CALL_NOT_FOUND
from callflow.testing._records import (
    ACTION_OPS,
    DECISION_OPS,
    OPS,
    FakeOperation,
    GraphRequest,
    op_matches,
)

__all__ = ["Fault", "GraphState", "Plan"]

_FAULT_CODES: Final = {
    400: "BadRequest",
    401: "InvalidAuthenticationToken",
    403: "7504",
    404: CALL_NOT_FOUND,
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


@attrs.define
class Plan:
    """One pending ``plan_operation`` instruction (``remaining`` operations still to match)."""

    op: str | None
    call_id: str | None
    duration: float | None
    code: int | None
    subcode: int | None
    message: str | None
    completion_reason: str | None
    complete: bool
    immediate: bool
    before_reply: bool
    duplicate: int
    out_of_order: bool
    remaining: int

    @property
    def fails(self) -> bool:
        """True when the planned code is not a 2xx: the operation fails."""
        return self.code is not None and not 200 <= self.code < 300


@attrs.define
class Fault:
    """One pending ``fail_next`` instruction (``remaining`` requests still to fail)."""

    op: str | None
    call_id: str | None
    status: int
    retry_after: float | None
    code: str
    remaining: int

    def matches(self, op: str, call_id: str) -> bool:
        """True when a request of ``op`` for ``call_id`` is one this fault fails."""
        if self.call_id is not None and self.call_id != call_id:
            return False
        return self.op is None or self.op == op or (self.op == "decision" and op in DECISION_OPS)


class GraphState:
    """The calls, requests, operations, recordings, routes and instructions of one fake."""

    def __init__(self) -> None:
        self.calls: dict[str, CallHandle] = {}
        self.requests: list[GraphRequest] = []
        self.operations: list[FakeOperation] = []
        self._by_call: dict[str, list[GraphRequest]] = {}
        self._faults: list[Fault] = []
        self._plans: list[Plan] = []
        self._gone: set[str] = set()
        self._routes: dict[str, str] = {}
        self._recordings: dict[str, tuple[str, str, bytes | None]] = {}
        self._changed: anyio.Event | None = None

    # -- calls and requests -----------------------------------------------------------------

    def call(self, call_id: str) -> CallHandle:
        """The handle of a placed call; KeyError naming the id if there is none."""
        try:
            return self.calls[call_id]
        except KeyError:
            raise KeyError(f"no call {call_id!r} was placed on this FakeGraph") from None

    def add_call(self, call: CallHandle) -> None:
        """Know ``call`` from now on (placed on the fake or created by the bot)."""
        self.calls[call.call_id] = call

    def requests_for(self, call_id: str) -> tuple[GraphRequest, ...]:
        """The requests recorded for ``call_id``."""
        return tuple(self._by_call.get(call_id, ()))

    def record(self, request: GraphRequest) -> None:
        """Record a request, on its call too, and wake the waiters."""
        self.requests.append(request)
        self._by_call.setdefault(request.call_id, []).append(request)
        call = self.calls.get(request.call_id)
        if call is not None:
            call._recorded(request)
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    async def wait_requests(
        self,
        count: int,
        op: str | None,
        call_id: str | None,
        timeout: float,  # noqa: ASYNC109
        where: Callable[[GraphRequest], bool] | None = None,
    ) -> tuple[GraphRequest, ...]:
        """The requests (of ``op``, for ``call_id``, for which ``where`` is true) once there
        are ``count``; TimeoutError."""

        def found() -> tuple[GraphRequest, ...]:
            pool = self.requests if call_id is None else self._by_call.get(call_id, [])
            return tuple(r for r in pool if op_matches(op, r.op) and (where is None or where(r)))

        try:
            with anyio.fail_after(timeout):
                while len(result := found()) < count:
                    if self._changed is None:
                        self._changed = anyio.Event()
                    await self._changed.wait()
                return result
        except TimeoutError:
            raise TimeoutError(
                f"FakeGraph: expected {count} {op or 'any'} request(s)"
                f"{'' if where is None else ' matching ' + getattr(where, '__name__', 'where')}"
                f"{'' if call_id is None else ' for call ' + call_id} within {timeout:g} s, "
                f"got {len(found())}"
            ) from None

    def add_operation(self, call: CallHandle, operation: FakeOperation) -> None:
        """Record an operation started on ``call``."""
        self.operations.append(operation)
        call._started(operation)

    # -- gone calls, routes, recordings -----------------------------------------------------

    def forget(self, call_id: str) -> None:
        """Graph forgets ``call_id``: every later request for it gets 404."""
        self._gone.add(call_id)
        call = self.calls.get(call_id)
        if call is not None:
            call.gone = True
            call._touch()

    def is_gone(self, call_id: str) -> bool:
        """True once :meth:`forget` forgot ``call_id``."""
        return call_id in self._gone

    def route(self, callback_uri: str, webhook_url: str) -> None:
        """Deliver the notifications of calls naming ``callback_uri`` to ``webhook_url``."""
        self._routes[callback_uri] = webhook_url

    def routed(self, callback_uri: str) -> str | None:
        """The webhook routed for ``callback_uri`` (or for it without its query), if any."""
        return self._routes.get(callback_uri) or self._routes.get(callback_uri.split("?", 1)[0])

    def add_recording(
        self, recording_id: str, access_token: str, call_id: str, audio: bytes | None = None
    ) -> None:
        """Serve a recording of ``call_id`` under ``recording_id`` to ``access_token``:
        ``audio``, or the fake's ``recording_audio`` when None."""
        self._recordings[recording_id] = (access_token, call_id, audio)

    def recording(self, recording_id: str) -> tuple[str, str, bytes | None] | None:
        """The (access token, call id, audio) of a recording, or None."""
        return self._recordings.get(recording_id)

    # -- instructions -----------------------------------------------------------------------

    def add_fault(
        self,
        op: str | None,
        status: int,
        *,
        retry_after: float | None,
        count: int,
        code: str | None,
        call_id: str | None,
    ) -> None:
        """Check and keep a ``fail_next`` instruction; ValueError saying what is wrong."""
        if op is not None and op != "decision" and op not in OPS:
            raise ValueError(
                f"unknown op {op!r}; expected None, 'decision' or one of {', '.join(OPS)}"
            )
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status}")
        if count < 1:
            raise ValueError(f"count must be 1 or more requests to fail, got {count}")
        if retry_after is not None and not retry_after >= 0:
            raise ValueError(f"retry_after must be zero or more seconds, got {retry_after}")
        code = code or _FAULT_CODES.get(status, "Error")
        self._faults.append(Fault(op, call_id, status, retry_after, code, count))

    def take_fault(self, op: str, call_id: str) -> Fault | None:
        """The fault a request of ``op`` for ``call_id`` meets, if any (counted down)."""
        for fault in self._faults:
            if fault.matches(op, call_id):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def add_plan(self, plan: Plan) -> None:
        """Check and keep a ``plan_operation`` instruction; ValueError saying what is wrong."""
        if plan.op is not None and plan.op not in (*ACTION_OPS, "create"):
            raise ValueError(
                f"unknown op {plan.op!r}; expected None, 'create' or one of {', '.join(ACTION_OPS)}"
            )
        if plan.remaining < 1 or plan.duplicate < 0:
            raise ValueError(
                f"count must be >= 1 and duplicate >= 0, got {plan.remaining}, {plan.duplicate}"
            )
        if plan.duration is not None and not plan.duration >= 0:
            raise ValueError(f"duration must be zero or more seconds, got {plan.duration}")
        self._plans.append(plan)

    def take_plan(self, op: str, call_id: str) -> Plan | None:
        """The plan an operation of ``op`` on ``call_id`` follows, if any (counted down)."""
        for plan in self._plans:
            if (plan.op is None or plan.op == op) and plan.call_id in (None, call_id):
                plan.remaining -= 1
                if plan.remaining <= 0:
                    self._plans.remove(plan)
                return plan
        return None
