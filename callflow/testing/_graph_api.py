"""The fake's Graph call-control API: the aiohttp routes answering the bot.

Under ``/v1.0``: ``POST /communications/calls/{id}/answer``, ``/reject``, ``/redirect``,
``/keepAlive``, ``DELETE`` and ``GET /communications/calls/{id}``, the actions after the
answer (``playPrompt``, ``recordResponse``, ``cancelMediaProcessing``, ``subscribeToTone``,
``sendDtmfTones``, ``mute``, ``unmute``, ``updateRecordingStatus``,
``participants/invite``, ``transfer``) and ``POST /communications/calls`` (outgoing calls and
meeting joins); recordings are served under ``/recordings/{id}`` to their access token.

Every call-control request is checked the way Graph checks it (the bearer token must be one
the token endpoint issued, else 401; the JSON body must have Graph's shape, else 400),
recorded as a :class:`~callflow.testing.GraphRequest`, and answered like Graph (202 without a
body for a decision, 200 for keepAlive, 204 for DELETE, 200 and the call resource for GET). A
call is decided once: the first accepted answer, reject or redirect consumes the incoming-call
offer, and any later decision for that call gets 404 with error code ``"8522"`` (call not
found), as do requests for calls that were never placed, that ended, or that
:meth:`FakeGraph.gone <callflow.testing.FakeGraph.gone>` marked gone. An answered call can
still be kept alive, read (GET) and hung up (DELETE). A fault planned with
:meth:`FakeGraph.fail_next <callflow.testing.FakeGraph.fail_next>` answers instead (the
request is still authenticated and recorded); ``latency`` delays every reply.

``GET /communications/calls/{id}`` answers with the call as Graph describes it (see
:func:`~callflow.testing._payloads.call_resource`): what Graph announced it with, its current
``state`` (``incoming``, ``establishing``, ``established``, ``transferring``, ...), the
``callbackUri`` of its answer. The fake forgets a call as soon as it ends: a GET of a
terminated, timed-out or gone call gets the same 404/8522 as every other request for it, never
a ``terminated`` state. Like every endpoint, it takes the call id in the spelling the call was
placed or created with.

Runs on the test's event loop, in the fake's aiohttp server: it reads and changes the fake's
state, starts operations through the operations engine, and hands follow-up notifications
to the notifier, to go out once the reply is sent.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from callflow.testing._call_handle import CallHandle
from callflow.testing._config import FakeConfig, Knobs
from callflow.testing._graph_http import (
    CALL_NOT_FOUND,
    GRAPH_PATH,
    KEYS_PATH,
    Outcome,
    graph_error,
    recorded_headers,
    reply_ids,
)
from callflow.testing._keys import KeyServer
from callflow.testing._notifier import Notifier
from callflow.testing._operations import OperationsEngine
from callflow.testing._payloads import call_resource
from callflow.testing._records import ACTION_OPS, DECISION_OPS, GraphRequest, decode_body
from callflow.testing._runtime import Runtime
from callflow.testing._state import GraphState
from callflow.testing._token_server import TokenServer
from callflow.testing._validators import VALIDATORS, check_content

__all__ = ["GraphApi"]

_SUCCESS: Final = {"answer": 202, "reject": 202, "redirect": 202, "keepAlive": 200, "delete": 204}
_ACTIONS: Final = {
    "answer": "answer",
    "reject": "reject",
    "redirect": "redirect",
    **{op: op for op in ACTION_OPS if op != "invite"},
}
_CREATED_KINDS: Final = ("outgoing", "join")
"""The kinds of the calls the bot created (``POST /communications/calls``); the rest were placed."""
_ACTION_NAMES: Final = ", ".join(op for op in ACTION_OPS if op != "invite")
_ACTIONS_LOWER: Final = {
    "keepalive": "keepAlive",
    **{op.lower(): op for op in ACTION_OPS if op != "invite"},
}


class GraphApi:
    """Answers the bot's call-control requests the way Graph does, and records them."""

    def __init__(
        self,
        config: FakeConfig,
        knobs: Knobs,
        runtime: Runtime,
        state: GraphState,
        notifier: Notifier,
        operations: OperationsEngine,
        tokens: TokenServer,
        keys: KeyServer,
    ) -> None:
        self._config = config
        self._knobs = knobs
        self._runtime = runtime
        self._state = state
        self._notifier = notifier
        self._operations = operations
        self._tokens = tokens
        self._keys = keys
        self._extra_tokens: set[str] = set()
        self._known_tokens: set[str] = set()
        self._known_count = 0

    def app(self) -> web.Application:
        """The fake's application: the key endpoint, the Graph routes and the recordings."""
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.add_subapp(KEYS_PATH, self._keys.app)
        calls = GRAPH_PATH + "/communications/calls/{call_id}"
        router = app.router
        router.add_post(GRAPH_PATH + "/communications/calls", self._handle_create)
        router.add_post(calls + "/participants/invite", self._handle_invite)
        router.add_post(calls + "/{action}", self._handle_action)
        router.add_get("/recordings/{recording_id}", self._handle_recording)
        router.add_delete(calls, self._handle_delete)
        router.add_get(calls, self._handle_get)
        router.add_route("*", GRAPH_PATH + "/{tail:.*}", self._handle_unknown)
        return app

    def app_token(self) -> str:
        """A new bearer token the API accepts, without going through the token endpoint."""
        token = f"fake-app-token-{uuid.uuid4().hex}"
        self._extra_tokens.add(token)
        return token

    # -- routes -----------------------------------------------------------------------------

    async def _handle_action(self, request: web.Request) -> web.StreamResponse:
        action = request.match_info["action"]
        op = _ACTIONS.get(action) or _ACTIONS_LOWER.get(action.lower())
        call_id = request.match_info["call_id"]
        if op is None:
            raw = await request.read()
            self._state.record(
                GraphRequest(
                    f"unknown:{action}",
                    call_id,
                    decode_body(raw),
                    recorded_headers(request),
                    time.monotonic(),
                    400,
                )
            )
            return graph_error(
                request,
                400,
                "BadRequest",
                f"Resource not found for the segment '{action}'; expected one of answer, "
                f"reject, redirect, keepAlive, {_ACTION_NAMES}",
            )
        return await self._serve(request, op, call_id)

    async def _handle_delete(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "delete", request.match_info["call_id"])

    async def _handle_get(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "get", request.match_info["call_id"])

    async def _handle_invite(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "invite", request.match_info["call_id"])

    async def _handle_create(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "create", "")

    async def _handle_unknown(self, request: web.Request) -> web.StreamResponse:
        return graph_error(
            request,
            404,
            "ResourceNotFound",
            f"{request.method} {request.path} is not something this FakeGraph serves; expected "
            f"{GRAPH_PATH}/communications/calls/{{id}}[/answer|/reject|/redirect|/keepAlive]",
        )

    async def _handle_recording(self, request: web.Request) -> web.StreamResponse:
        recording_id = request.match_info["recording_id"]
        known = self._state.recording(recording_id)
        call_id = known[1] if known is not None else ""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if known is None:
            response = graph_error(request, 404, "NotFound", f"no recording {recording_id}")
        elif scheme.lower() != "bearer" or token.strip() != known[0]:
            response = graph_error(
                request,
                401,
                "InvalidAuthenticationToken",
                "a recording is served only with 'Authorization: Bearer <recordingAccessToken>'",
            )
        else:
            response = web.Response(
                body=known[2] if known[2] is not None else self._knobs.recording_audio,
                content_type="audio/wav",
                headers=reply_ids(request),
            )
        self._state.record(
            GraphRequest(
                "recording",
                call_id,
                None,
                recorded_headers(request),
                time.monotonic(),
                response.status,
            )
        )
        return response

    # -- one call-control request -----------------------------------------------------------

    async def _serve(self, request: web.Request, op: str, call_id: str) -> web.StreamResponse:
        at = time.monotonic()
        raw = await request.read()
        body = decode_body(raw)
        injected = False
        auth_problem = self._auth_problem(request)
        if auth_problem is not None:
            outcome = Outcome(graph_error(request, 401, "InvalidAuthenticationToken", auth_problem))
        elif (fault := self._state.take_fault(op, call_id)) is not None:
            injected = True
            headers = None
            if fault.retry_after is not None:
                headers = {"Retry-After": f"{fault.retry_after:g}"}
            outcome = Outcome(
                graph_error(
                    request,
                    fault.status,
                    fault.code,
                    f"FakeGraph was told to fail this {op} request (fail_next).",
                    headers,
                )
            )
        else:
            outcome = self._call_control(request, op, call_id, body, raw)
        response = outcome.response
        self._state.record(
            GraphRequest(
                op, call_id, body, recorded_headers(request), at, response.status, injected
            )
        )
        if outcome.before is not None:
            await outcome.before()
        await self._runtime.pause(self._knobs.latency)
        if outcome.after is not None:
            outcome.after()
        return response

    def _auth_problem(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "").strip()
        if not header:
            return "Access token is empty."
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "Access token validation failure: expected 'Bearer <token>'."
        if not self._token_known(token):
            return (
                "Access token validation failure: the token was not issued by this "
                "FakeGraph's token endpoint."
            )
        return None

    def _token_known(self, token: str) -> bool:
        if token in self._known_tokens or token in self._extra_tokens:
            return True
        issued = self._tokens.issued
        if len(issued) != self._known_count:
            self._known_tokens = set(issued)
            self._known_count = len(issued)
        return token in self._known_tokens

    def _call_control(
        self, request: web.Request, op: str, call_id: str, body: Any, raw: bytes
    ) -> Outcome:
        if op in VALIDATORS:
            problem = check_content(request, op, body, raw)
            if problem is not None:
                status, message = problem
                code = "BadRequest" if status == 400 else "UnsupportedMediaType"
                return Outcome(graph_error(request, status, code, message))
            invalid = VALIDATORS[op](body)
            if invalid is not None:
                return Outcome(graph_error(request, 400, "BadRequest", invalid))
        if op == "create":
            return self._operations.create(request, body)
        call = self._state.calls.get(call_id)
        why = self._missing(call_id, call, op)
        if why is not None:
            message = f"Call not found: {why}."
            return Outcome(graph_error(request, 404, CALL_NOT_FOUND, message))
        assert call is not None
        if op in ACTION_OPS:
            if call.state != "established":
                message = f"{op}: call {call_id} is {call.state}; expected an established call"
                return Outcome(graph_error(request, 400, "BadRequest", message))
            return self._operations.action(request, op, call, body)
        follow: Callable[[], None] | None = None
        if op in DECISION_OPS and isinstance(body, dict):
            self._notifier.pin(call, body.get("callbackUri"))
        if op == "answer":
            call.state = "established"
            self._operations.prefetch(call, body)
            follow = self._notifier.follow_established(call)
        elif op in ("reject", "redirect", "delete"):
            call.state = "terminated"
            self._operations.drop(call)
            follow = self._notifier.follow_terminated(call, op)
        elif op == "get":
            return Outcome(web.json_response(self._resource(call), headers=reply_ids(request)))
        return Outcome(web.Response(status=_SUCCESS[op], headers=reply_ids(request)), after=follow)

    def _resource(self, call: CallHandle) -> dict[str, Any]:
        """The call resource a GET answers: as announced, in its current state, with the
        ``callbackUri`` its answer named (else the announced one, else the default)."""
        announced = call.resource or {}
        callback = announced.get("callbackUri")
        for done in call.requests:
            if done.op == "answer" and done.status < 300 and isinstance(done.body, dict):
                callback = done.body.get("callbackUri", callback)
        if not isinstance(callback, str):
            callback = self._config.callback_url
        created = call.kind in _CREATED_KINDS
        return call_resource(
            announced,
            call_id=call.call_id,
            state=call.state,
            direction="outgoing" if created else "incoming",
            callback_uri=callback,
            tenant_id=call.tenant_id,
            call_chain_id=call.chain_id,
        )

    def _missing(self, call_id: str, call: CallHandle | None, op: str) -> str | None:
        if call is None:
            return f"no call {call_id} was placed on this FakeGraph"
        if self._state.is_gone(call_id):
            return f"call {call_id} is gone"
        if call.timed_out:
            return f"call {call_id} ended: it was not decided within {call.timeout:g} s"
        if call.state == "terminated":
            return f"call {call_id} has ended"
        if op in DECISION_OPS and call.state != "incoming":
            return f"call {call_id} was already answered; a call is decided once"
        return None
