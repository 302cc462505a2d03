"""How what the bot starts plays out over time: operations, transfers, new calls, recordings.

An action on an established call (playPrompt, recordResponse, sendDtmfTones, invite, ...)
starts a :class:`~callflow.testing.FakeOperation`: the 200 carries it ``running`` with a
``Location``, and it ends after ``operation_duration`` seconds with a ``deleted``
notification on ``.../operations/{id}`` (subscribeToTone, mute, unmute,
updateRecordingStatus and cancelMediaProcessing complete in the 200 itself). A completed
recordResponse leaves a recording, served under ``/recordings/{id}`` to its access token.
What the caller says (:meth:`CallHandle.say_back
<callflow.testing.CallHandle.say_back>`) is the audio of the next recording, and ends a
running one at once. ``cancelMediaProcessing`` fails the running prompts and recordings
with 400/8508; a call that ends drops its running operations without a notification. A
transfer goes through ``transferring`` and ``transferAccepted`` and ends the call (7015); a new call
(``POST /communications/calls``) goes through ``establishing`` and ``established``, its
notifications sent to the webhook routed for its ``callbackUri``.
:meth:`FakeGraph.plan_operation <callflow.testing.FakeGraph.plan_operation>` changes what the
next matching one does: fail with a code, complete in the 200, never complete, complete
before the 200 is sent, complete twice, go through its states out of order.

Runs on the test's event loop: the fake's HTTP API calls in while it answers a request; what
plays out later runs as tasks of the fake's task group, each operation under its own cancel
scope; notifications go out through the notifier.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Final

import anyio
from aiohttp import web

from callflow.testing._call_handle import CallHandle
from callflow.testing._config import FakeConfig, Knobs
from callflow.testing._graph_http import GRAPH_PATH, Outcome, graph_error, reply_ids
from callflow.testing._media import FakeMedia
from callflow.testing._notifier import Notifier
from callflow.testing._payloads import (
    CALL,
    call_state,
    call_terminated,
    envelope,
    operation_resource,
    operation_result,
)
from callflow.testing._records import FakeOperation
from callflow.testing._runtime import Runtime
from callflow.testing._state import GraphState, Plan

__all__ = ["CANCELLED", "MEDIA_OPS", "TRANSFERRED", "OperationsEngine"]

MEDIA_OPS: Final = ("playPrompt", "recordResponse")
"""The operations ``cancelMediaProcessing`` cancels."""
_ASYNC_OPS: Final = ("playPrompt", "recordResponse", "sendDtmfTones", "invite")
"""Operations that answer ``running`` and end with a notification (the others end in the 200)."""
CANCELLED: Final = (400, 8508, "Action failed, the operation was cancelled.")
TRANSFERRED: Final = (200, 7015, "GracefulTransferCompleted")
_SUCCESS_RESULTS: Final = {
    "recordResponse": (200, 8515, "Action completed, max record duration reached."),
}
_SUCCESS_REASONS: Final = {
    "playPrompt": "completedSuccessfully",
    "sendDtmfTones": "completedSuccessfully",
    "recordResponse": "maxRecordDurationReached",
}
_OK_RESULT: Final = (200, 0, "Action completed successfully.")


class OperationsEngine:
    """Starts operations, transfers and new calls, and plays them out over time."""

    def __init__(
        self,
        config: FakeConfig,
        knobs: Knobs,
        runtime: Runtime,
        state: GraphState,
        notifier: Notifier,
    ) -> None:
        self._config = config
        self._knobs = knobs
        self._runtime = runtime
        self._state = state
        self._notifier = notifier
        self._scopes: dict[str, anyio.CancelScope] = {}
        self.media = FakeMedia(runtime)
        """Judges every prompt a bot plays, as Graph would (see :mod:`._media`)."""
        self._prompts: dict[str, list[str]] = {}

    # -- actions on an established call -----------------------------------------------------

    def action(
        self, request: web.Request, op: str, call: CallHandle, body: dict[str, Any]
    ) -> Outcome:
        """Start the operation of an accepted action; the reply and what follows it."""
        plan = self._state.take_plan(op, call.call_id)
        context = body.get("clientContext")
        if op == "transfer":
            response = web.Response(status=202, headers=reply_ids(request))
            return Outcome(response, after=self._transfer_flow(call, plan))
        if op == "subscribeToTone":
            call.subscribed_to_tones = True
        elif op in ("mute", "unmute"):
            call.muted = op == "mute"
        elif op == "updateRecordingStatus":
            call.recording_status = body["status"]
        operation = FakeOperation(
            str(uuid.uuid4()), op, call.call_id, context, started_at=time.monotonic()
        )
        self._state.add_operation(call, operation)
        if op in MEDIA_OPS:
            self._prompts[operation.id] = _prompt_uris(body)
        if op == "cancelMediaProcessing":
            for running in call.operations:
                if running.op in MEDIA_OPS and running.status == "running":
                    self._cancel(call, running)
        immediate = op not in _ASYNC_OPS or (plan is not None and plan.immediate)
        location = f"{self._calls_url}/{call.call_id}/operations/{operation.id}"
        headers = {**reply_ids(request), "Location": location}
        if immediate:
            self._finish(operation, plan)
            payload = operation_resource(
                op,
                operation.id,
                status=operation.status,
                client_context=context,
                result=operation.result,
                completion_reason=operation.completion_reason,
            )
            return Outcome(web.json_response(payload, headers=headers))
        payload = operation_resource(op, operation.id, status="running", client_context=context)
        response = web.json_response(payload, headers=headers)
        if plan is not None and not plan.complete:
            return Outcome(response)
        if plan is not None and plan.before_reply:
            self._finish(operation, plan)
            return Outcome(response, before=lambda: self._notify(call, operation, plan))
        delay = self._delay(plan)
        self._scopes[operation.id] = anyio.CancelScope()
        return Outcome(
            response,
            after=lambda: self._runtime.spawn(self._complete_later, call, operation, plan, delay),
        )

    def drop(self, call: CallHandle) -> None:
        """The call ended: its running operations stop, and no notification reports them."""
        for operation in call.operations:
            if operation.status == "running":
                scope = self._scopes.pop(operation.id, None)
                if scope is not None:
                    scope.cancel()
                operation.status = "dropped"
                self._prompts.pop(operation.id, None)

    @property
    def _calls_url(self) -> str:
        return f"{self._runtime.url}{GRAPH_PATH}/communications/calls"

    def _delay(self, plan: Plan | None) -> float:
        if plan is not None and plan.duration is not None:
            return plan.duration
        return self._knobs.operation_duration

    def _finish(self, operation: FakeOperation, plan: Plan | None) -> None:
        """Decide how ``operation`` ends (status, result, reason), per ``plan``."""
        self._prompts.pop(operation.id, None)
        op = operation.op
        if plan is not None and plan.fails:
            operation.status = "failed"
            operation.result = (plan.code, plan.subcode, plan.message or "Action failed.")
            operation.completion_reason = plan.completion_reason or "unknown"
        else:
            operation.status = "completed"
            operation.result = _SUCCESS_RESULTS.get(op, _OK_RESULT)
            operation.completion_reason = _SUCCESS_REASONS.get(op)
            if plan is not None:
                if plan.code is not None:
                    operation.result = (plan.code, plan.subcode, plan.message)
                if plan.completion_reason is not None:
                    operation.completion_reason = plan.completion_reason
            if op == "recordResponse":
                recording_id = uuid.uuid4().hex
                token = f"fake-recording-token-{uuid.uuid4().hex}"
                call = self._state.calls.get(operation.call_id)
                audio = call._take_speech() if call is not None else None
                self._state.add_recording(recording_id, token, operation.call_id, audio)
                operation.recording_location = f"{self._runtime.url}/recordings/{recording_id}"
                operation.recording_access_token = token

    async def _complete_later(
        self, call: CallHandle, operation: FakeOperation, plan: Plan | None, delay: float
    ) -> None:
        scope = self._scopes.get(operation.id)
        if scope is None:  # cancelled before it started
            return
        with scope:
            played = await self._fetch_prompts(call, operation)
            if operation.op == "recordResponse":
                with anyio.move_on_after(delay):
                    await call._speech_arrives()  # the caller spoke: the recording ends
            else:
                await anyio.sleep(delay)
            self._finish(operation, plan)
            if not played and operation.status == "completed":
                # Graph completes it anyway, having played nothing.
                operation.completion_reason = (
                    "playPromptFailed" if operation.op == "recordResponse" else "unknown"
                )
            self._scopes.pop(operation.id, None)
            await self._notify(call, operation, plan)

    async def _fetch_prompts(self, call: CallHandle, operation: FakeOperation) -> bool:
        """Fetch the operation's prompts; True when Graph would play them all."""
        fetches = [
            await self.media.judge(uri, call.call_id) for uri in self._prompts.pop(operation.id, [])
        ]
        if not all(f.plays for f in fetches):
            return False
        call.said.extend(f.words for f in fetches if f.words)
        return True

    def prefetch(self, call: CallHandle, body: object) -> None:
        """Fetch an answer's ``preFetchMedia`` in the background, as Graph does."""
        media = body.get("mediaConfig", {}) if isinstance(body, dict) else {}
        for item in media.get("preFetchMedia") or () if isinstance(media, dict) else ():
            if isinstance(item, dict) and isinstance(item.get("uri"), str):
                self._runtime.spawn(self._prefetch_one, item["uri"], call.call_id)

    async def _prefetch_one(self, uri: str, call_id: str) -> None:
        await self.media.judge(uri, call_id)

    async def _notify(self, call: CallHandle, operation: FakeOperation, plan: Plan | None) -> None:
        item = operation_result(
            self._knobs.url_id(call.call_id),
            operation.op,
            operation.id,
            status=operation.status,
            client_context=operation.client_context,
            result=operation.result,
            completion_reason=operation.completion_reason,
            recording_location=operation.recording_location,
            recording_access_token=operation.recording_access_token,
        )
        for _ in range(1 + (plan.duplicate if plan is not None else 0)):
            operation.notifications += 1
            await self._notifier.deliver_quietly(call, "operation", envelope(item))

    def _cancel(self, call: CallHandle, operation: FakeOperation) -> None:
        """Fail a running media operation with 400/8508 and notify it (cancelMediaProcessing)."""
        scope = self._scopes.pop(operation.id, None)
        if scope is not None:
            scope.cancel()
        self._prompts.pop(operation.id, None)
        operation.status = "failed"
        operation.result = CANCELLED
        operation.completion_reason = "operationCanceled"
        self._runtime.spawn(self._notify, call, operation, None)

    # -- transfers --------------------------------------------------------------------------

    def _transfer_flow(self, call: CallHandle, plan: Plan | None) -> Callable[[], None] | None:
        if plan is not None and not plan.complete:
            return None
        delay = self._delay(plan)
        states = ["transferring", "transferAccepted"]
        if plan is not None and plan.fails:
            states = ["transferring"]
        elif plan is not None and plan.out_of_order:
            states.reverse()
        return lambda: self._runtime.spawn(self._run_transfer, call, plan, states, delay)

    async def _run_transfer(
        self, call: CallHandle, plan: Plan | None, states: list[str], delay: float
    ) -> None:
        deliver = self._notifier.deliver_quietly
        for state in states:
            call.state = state
            call.etag += 1
            await deliver(call, "state", envelope(call_state(call.call_id, state, etag=call.etag)))
            await anyio.sleep(delay / 2)
        if plan is not None and plan.fails:
            call.state = "established"
            call.etag += 1
            result = (plan.code, plan.subcode, plan.message or "Transfer failed.")
            item = call_state(call.call_id, "established", etag=call.etag, result=result)
            await deliver(call, "state", envelope(item))
            return
        call.state = "terminated"
        call.etag += 1
        self.drop(call)
        code, subcode, message = TRANSFERRED
        item = call_terminated(
            call.call_id, code=code, subcode=subcode, message=message, etag=call.etag
        )
        await deliver(call, "terminated", envelope(item))

    # -- new calls --------------------------------------------------------------------------

    def create(self, request: web.Request, body: dict[str, Any]) -> Outcome:
        """Create an outgoing call or a meeting join; the 201 and its states to come."""
        callback = body["callbackUri"]
        webhook = self._state.routed(callback)
        if webhook is None:
            return Outcome(
                graph_error(
                    request,
                    400,
                    "BadRequest",
                    f"create: no webhook is routed for callbackUri {callback!r}; expected "
                    "fake.route(callback_uri, webhook_url) before creating calls",
                )
            )
        call_id = str(uuid.uuid4())
        joins = "chatInfo" in body
        tenant = body.get("tenantId") or self._config.tenant_id
        call = CallHandle(
            call_id=call_id,
            kind="join" if joins else "outgoing",
            webhook_url=webhook,
            tenant_id=tenant,
            policy_recording=False,
            timeout=self._config.platform_timeout,
            payload=body,
            press=self._notifier.press,
        )
        call.state = "establishing"
        self._state.add_call(call)
        plan = self._state.take_plan("create", call_id)
        resource = {
            "@odata.type": CALL,
            "id": call_id,
            "state": "establishing",
            "direction": "outgoing",
            "callbackUri": callback,
            "tenantId": tenant,
            "myParticipantId": str(uuid.uuid4()),
            "callChainId": call.chain_id,
            "requestedModalities": body["requestedModalities"],
        }
        call.resource = {**body, **resource}  # what was asked for, and what Graph assigned
        headers = {**reply_ids(request), "Location": f"{self._calls_url}/{call_id}"}
        response = web.json_response(resource, status=201, headers=headers)
        if plan is not None and not plan.complete:
            return Outcome(response)
        if plan is not None and plan.before_reply:
            return Outcome(response, before=lambda: self._establish(call, plan, 0.0))
        delay = self._delay(plan)
        return Outcome(
            response, after=lambda: self._runtime.spawn(self._establish, call, plan, delay)
        )

    async def _establish(self, call: CallHandle, plan: Plan | None, delay: float) -> None:
        deliver = self._notifier.deliver_quietly
        if plan is not None and plan.fails:
            await anyio.sleep(delay)
            call.state = "terminated"
            call.etag += 1
            item = call_terminated(
                call.call_id,
                code=plan.code,
                subcode=plan.subcode,
                message=plan.message or "The call could not be established.",
                etag=call.etag,
            )
            await deliver(call, "terminated", envelope(item))
            return
        first, second = call.etag + 1, call.etag + 2
        call.etag += 2
        sends = [("establishing", first), ("established", second)]
        if plan is not None and plan.out_of_order:
            sends.reverse()
        for index, (state, etag) in enumerate(sends):
            if index:
                await anyio.sleep(delay / 2)
            else:
                await anyio.sleep(delay)
            if state == "established":
                call.state = "established"
            item = call_state(call.call_id, state, etag=etag)
            for _ in range(1 + (plan.duplicate if plan is not None else 0)):
                await deliver(call, state, envelope(item))


def _prompt_uris(body: object) -> list[str]:
    prompts = body.get("prompts") if isinstance(body, dict) else None
    uris: list[str] = []
    for prompt in prompts if isinstance(prompts, list) else ():
        info = prompt.get("mediaInfo") if isinstance(prompt, dict) else None
        if isinstance(info, dict) and isinstance(info.get("uri"), str):
            uris.append(info["uri"])
    return uris
