"""FakeGraph: the parts of Microsoft Graph a calling bot touches, served on loopback.

One :class:`FakeGraph` runs, while entered (``async with FakeGraph() as fake:``):

- an Entra-like token endpoint over TLS (:class:`~callflow.testing.TokenServer`) for msal;
- the OpenID configuration and key set of the key it signs notifications with
  (``/botframework/.well-known/openid-configuration``, plain http);
- Graph call control under ``/v1.0``: ``POST /communications/calls/{id}/answer``,
  ``/reject``, ``/redirect``, ``/keepAlive``, ``DELETE`` and ``GET /communications/calls/{id}``;
- the actions after the answer: ``playPrompt``, ``recordResponse``, ``cancelMediaProcessing``,
  ``subscribeToTone``, ``sendDtmfTones``, ``mute``, ``unmute``, ``updateRecordingStatus``,
  ``participants/invite``, ``transfer``, and ``POST /communications/calls`` (outgoing calls
  and meeting joins); recordings are served under ``/recordings/{id}`` to their access token.

Every call-control request is checked the way Graph checks it (the bearer token must be one
the token endpoint issued, else 401; the JSON body must have Graph's shape, else 400), recorded
as a :class:`GraphRequest`, and answered like Graph (202 without a body for a decision, 200
for keepAlive, 204 for DELETE). A call is decided once: the first accepted answer, reject or
redirect consumes the incoming-call offer, and any later decision for that call gets 404 with
error code ``"8522"`` (call not found), as do requests for calls that were never placed, that
ended, or that :meth:`FakeGraph.gone` marked gone. An answered call can still be kept alive
and hung up (DELETE).

:meth:`FakeGraph.place_call` POSTs a signed incoming-call notification to a webhook and
returns a :class:`CallHandle`. A call not decided within the platform timeout (the recording
timeout for policy-based recording) ends: the fake POSTs a ``deleted``/``terminated``
notification with ``resultInfo`` 408/8544 to the webhook and the handle's ``timed_out``
turns true. With ``follow_up=True`` (the default) an accepted answer is followed by an
``updated``/``established`` notification and a reject, redirect or hang-up by a
``deleted``/``terminated`` one, each POSTed to the webhook the call was placed on.

Operations answer 200 with the operation (``running``) and a ``Location``, then end after
``operation_duration`` seconds with a ``deleted`` notification on ``.../operations/{id}``
(subscribeToTone, mute, unmute, updateRecordingStatus and cancelMediaProcessing complete in
the 200 itself). :meth:`FakeGraph.plan_operation` changes what the next matching operation
does: fail with a code, complete in the 200, never complete, complete before the 200 is
sent, complete twice; a transfer or a new call goes through its states (or fails), in order
or not. ``cancelMediaProcessing`` fails the running prompts and recordings with 400/8508.
:meth:`CallHandle.press` sends key presses (``toneInfo``) once the bot subscribed to tones.
Calls the bot creates send their notifications to the webhook :meth:`FakeGraph.route` names
for their ``callbackUri``.

Faults: :meth:`FakeGraph.fail_next` (status, ``Retry-After``, error code), ``latency``
(seconds added to every call-control reply) and :meth:`FakeGraph.gone`; out-of-order,
duplicate and arbitrary notifications with :meth:`FakeGraph.send_states` and
:meth:`FakeGraph.notify`.

Everything listens on 127.0.0.1 on free ports. Every background task (timeouts, follow-ups)
belongs to a task group inside the ``async with`` block; waiting is done on events.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import itertools
import json
import math
import time
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import aiohttp
import anyio
import attrs
import structlog
from aiohttp import web
from anyio.abc import TaskGroup
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

import callflow.testing._payloads as _payloads
from callflow.settings import PREFIX, Settings
from callflow.testing._call_handle import CallHandle
from callflow.testing._keys import (
    DEFAULT_ISSUER,
    OPENID_CONFIG_PATH,
    KeyServer,
    SigningKey,
    graph_claims,
)
from callflow.testing._records import (
    ACTION_OPS,
    CALLBACK_URL,
    DECISION_OPS,
    DEFAULT_APP_ID,
    DEFAULT_TENANT_ID,
    OPS,
    FakeOperation,
    GraphRequest,
    WebhookReply,
    decode_body,
    op_matches,
)
from callflow.testing._token_server import TokenServer
from callflow.testing._validators import VALIDATORS, check_content

if TYPE_CHECKING:
    from callflow.bot import Bot, RunningBot

__all__ = ["FakeGraph"]

log = structlog.get_logger(__name__)

GRAPH_PATH: Final = "/v1.0"
KEYS_PATH: Final = "/botframework"
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

CALL_NOT_FOUND: Final = "8522"
TIMEOUT_CODE: Final = 408
TIMEOUT_SUBCODE: Final = 8544
TIMEOUT_MESSAGE: Final = "Callee could not be reached"

_HOST: Final = "127.0.0.1"
_WEBHOOK_TIMEOUT: Final = 15.0
_MAX_DELIVERIES: Final = 64
_LARGE_BODY: Final = 512 * 1024
_TOKEN_REUSE_MARGIN: Final = 300.0
_DEFAULT_SAFETY_MARGIN: Final = 3.0
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
_SUCCESS: Final = {"answer": 202, "reject": 202, "redirect": 202, "keepAlive": 200, "delete": 204}
_ACTIONS: Final = {
    "answer": "answer",
    "reject": "reject",
    "redirect": "redirect",
    **{op: op for op in ACTION_OPS if op != "invite"},
}
_ACTION_NAMES: Final = ", ".join(op for op in ACTION_OPS if op != "invite")
_ACTIONS_LOWER: Final = {
    "keepalive": "keepAlive",
    **{op.lower(): op for op in ACTION_OPS if op != "invite"},
}

# --- instructions ----------------------------------------------------------------------------


@attrs.define
class _Plan:
    """One pending ``plan_operation`` instruction."""

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
        return self.code is not None and not 200 <= self.code < 300


class _Fault:
    """One pending ``fail_next`` instruction."""

    __slots__ = ("call_id", "code", "op", "remaining", "retry_after", "status")

    def __init__(
        self,
        op: str | None,
        call_id: str | None,
        status: int,
        retry_after: float | None,
        code: str,
        remaining: int,
    ) -> None:
        self.op = op
        self.call_id = call_id
        self.status = status
        self.retry_after = retry_after
        self.code = code
        self.remaining = remaining

    def matches(self, op: str, call_id: str) -> bool:
        if self.call_id is not None and self.call_id != call_id:
            return False
        return self.op is None or self.op == op or (self.op == "decision" and op in DECISION_OPS)


# --- the fake --------------------------------------------------------------------------------


class FakeGraph:
    """A loopback stand-in for Microsoft Graph's calling APIs; see the module docstring.

    ``app_id``/``tenant_id``/``app_secret`` are the bot's identity (the token endpoint checks
    the secret). ``platform_timeout``/``recording_timeout`` are how long a placed call waits
    for a decision. ``token_lifetime`` is the lifetime of app tokens and notification tokens.
    ``signing_key`` shares a key between fakes (generating one takes tens of milliseconds).
    """

    def __init__(
        self,
        *,
        app_id: str = DEFAULT_APP_ID,
        tenant_id: str = DEFAULT_TENANT_ID,
        app_secret: str = "fake-secret",
        platform_timeout: float = 15.0,
        recording_timeout: float = 5.0,
        token_lifetime: int = 3600,
        issuer: str = DEFAULT_ISSUER,
        follow_up: bool = True,
        signing_key: SigningKey | None = None,
        callback_url: str = CALLBACK_URL,
    ) -> None:
        problems = []
        for name, value in (
            ("platform_timeout", platform_timeout),
            ("recording_timeout", recording_timeout),
        ):
            if not value > 0:
                problems.append(f"{name}={value!r}: expected seconds > 0")
        if token_lifetime <= 0:
            problems.append(f"token_lifetime={token_lifetime!r}: expected seconds > 0")
        if not app_id or not tenant_id or not app_secret:
            problems.append("app_id, tenant_id and app_secret must be non-empty strings")
        if problems:
            raise ValueError("invalid FakeGraph settings: " + "; ".join(problems))
        self.app_id = app_id
        self.tenant_id = tenant_id
        self.app_secret = app_secret
        self.platform_timeout = float(platform_timeout)
        self.recording_timeout = float(recording_timeout)
        self.token_lifetime = token_lifetime
        self.issuer = issuer
        self.follow_up = follow_up
        self.callback_url = callback_url
        self.key = signing_key if signing_key is not None else SigningKey.generate()
        self.tokens = TokenServer(expires_in=token_lifetime, client_secret=app_secret)
        """The TLS token endpoint; its ``fail_next``/``set_delay`` inject token faults."""
        self.keys = KeyServer.for_keys(self.key, issuer=issuer)
        """The key endpoint; ``keys.failing = True`` makes it answer 500."""
        self.latency = 0.0
        """Seconds added to every call-control reply (settable at any time)."""
        self.operation_duration = 0.05
        """Seconds an operation runs before its completion notification (settable)."""
        self.upper_case_ids = False
        """Name calls upper-case without dashes in operation and tone notification URLs, as
        Graph sometimes does (settable)."""
        self.recording_audio = _silent_wav(0.1)
        """The bytes every recording download serves (a short silent WAV by default)."""
        self._plans: list[_Plan] = []
        self._before_reply: dict[int, Callable[[], Awaitable[None]]] = {}
        self._routes: dict[str, str] = {}
        self._recordings: dict[str, tuple[str, str]] = {}
        self._operations: list[FakeOperation] = []
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._calls: dict[str, CallHandle] = {}
        self._requests: list[GraphRequest] = []
        self._by_call: dict[str, list[GraphRequest]] = {}
        self._faults: list[_Fault] = []
        self._gone: set[str] = set()
        self._extra_tokens: set[str] = set()
        self._known_tokens: set[str] = set()
        self._known_count = 0
        self._notify_tokens: dict[str, tuple[str, float]] = {}
        self._heap: list[tuple[float, int, CallHandle]] = []
        self._seq = itertools.count()
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._session: aiohttp.ClientSession | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._changed: anyio.Event | None = None
        self._wake: anyio.Event | None = None
        self._closing: anyio.Event | None = None
        self._port: int | None = None
        self._started = False

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not running"
        return f"<FakeGraph {where} calls={len(self._calls)} requests={len(self._requests)}>"

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start the token endpoint, the key endpoint, Graph and the timeout enforcer."""
        if self._stack is not None or self._started:
            raise RuntimeError(
                "FakeGraph runs once: it is running or has run; create a new FakeGraph"
            )
        self._started = True
        stack = AsyncExitStack()
        self._stack = stack
        try:
            await stack.enter_async_context(self.tokens)
            app = web.Application(client_max_size=4 * 1024 * 1024)
            app.add_subapp(KEYS_PATH, self.keys.app)
            calls = GRAPH_PATH + "/communications/calls/{call_id}"
            app.router.add_post(GRAPH_PATH + "/communications/calls", self._handle_create)
            app.router.add_post(calls + "/participants/invite", self._handle_invite)
            app.router.add_post(calls + "/{action}", self._handle_action)
            app.router.add_get("/recordings/{recording_id}", self._handle_recording)
            app.router.add_delete(calls, self._handle_delete)
            app.router.add_get(calls, self._handle_get)
            app.router.add_route("*", GRAPH_PATH + "/{tail:.*}", self._handle_unknown)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, _HOST, 0).start()
            self._port = int(runner.addresses[0][1])
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256),
                timeout=aiohttp.ClientTimeout(total=_WEBHOOK_TIMEOUT),
            )
            stack.push_async_callback(session.close)
            self._session = session
            self._limiter = anyio.CapacityLimiter(_MAX_DELIVERIES)
            self._changed = anyio.Event()
            self._wake = anyio.Event()
            self._closing = anyio.Event()
            tg = anyio.create_task_group()
            await tg.__aenter__()
            self._tg = tg
            tg.start_soon(self._enforce_timeouts)
        except BaseException:
            await self._close()
            raise
        log.info("fake_graph.started", url=self.url, authority_url=self.tokens.authority_url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop everything: pending follow-ups and timeouts are dropped."""
        await self._close()

    async def _close(self) -> None:
        stack, self._stack = self._stack, None
        tg, self._tg = self._tg, None
        try:
            if self._closing is not None:
                self._closing.set()
            if tg is not None:
                # The enforcer and the deliveries never end by themselves: cancel them. The
                # body's own exception is not handed to the task group, so it propagates as is.
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
        finally:
            self._session = None
            self._port = None
            if stack is not None:
                with anyio.CancelScope(shield=True):
                    await stack.aclose()

    def _running(self) -> TaskGroup:
        if self._tg is None:
            raise RuntimeError("FakeGraph is not running; use 'async with FakeGraph() as fake:'")
        return self._tg

    # -- addresses and wiring ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, where Graph and the key endpoint listen."""
        if self._port is None:
            raise RuntimeError("FakeGraph is not running; use 'async with FakeGraph() as fake:'")
        return f"http://{_HOST}:{self._port}"

    @property
    def graph_url(self) -> str:
        """The Graph base URL, ``http://127.0.0.1:PORT/v1.0``."""
        return self.url + GRAPH_PATH

    @property
    def openid_config_url(self) -> str:
        """The OpenID configuration naming the key set notifications are signed with."""
        return self.url + KEYS_PATH + OPENID_CONFIG_PATH

    @property
    def authority_url(self) -> str:
        """The token endpoint's base, ``https://127.0.0.1:PORT`` (msal adds the tenant)."""
        return self.tokens.authority_url

    @property
    def ca_bundle(self) -> str:
        """The PEM file of the test CA that signed the token endpoint's certificate."""
        return self.tokens.ca_bundle_path

    @property
    def token_requests(self) -> int:
        """How many token requests the token endpoint has received."""
        return self.tokens.requests

    def settings(self, **overrides: Any) -> Settings:
        """Return :class:`~callflow.Settings` wiring a bot to this fake; ``overrides`` win.

        The bot listens on 127.0.0.1 on a free port (its metrics on another free port of
        127.0.0.1: ``running.metrics_url``), trusts the fake's CA, fetches tokens
        from its token endpoint and keys from its key endpoint, accepts only the fake's
        issuer, and uses the fake's platform and recording timeouts. The safety margin stays
        at its default (3 s) unless that is not shorter than both timeouts; then it is a
        third of the shorter one.
        """
        values: dict[str, Any] = {
            "app_id": self.app_id,
            "app_secret": self.app_secret,
            "tenant_id": self.tenant_id,
            "authority_url": self.authority_url,
            "ca_bundle": self.ca_bundle,
            "graph_url": self.graph_url,
            "openid_config_url": self.openid_config_url,
            "issuers": (self.issuer.rstrip("/"),),
            "callback_url": self.callback_url,
            "host": _HOST,
            "port": 0,
            "metrics_port": 0,
            "platform_timeout": self.platform_timeout,
            "recording_timeout": self.recording_timeout,
        }
        values.update(overrides)
        if "safety_margin" not in overrides:
            shortest = min(values["platform_timeout"], values["recording_timeout"])
            margin = _DEFAULT_SAFETY_MARGIN
            values["safety_margin"] = margin if margin < shortest else round(shortest / 3, 3)
        settings = Settings(**values)
        settings.check_consistency()
        return settings

    def environ(self, **overrides: Any) -> dict[str, str]:
        """Return :meth:`settings` as ``CALLFLOW_*`` environment variables (for a subprocess)."""
        settings = self.settings(**overrides)
        names = {
            "app_id",
            "app_secret",
            "tenant_id",
            "authority_url",
            "ca_bundle",
            "graph_url",
            "openid_config_url",
            "issuers",
            "callback_url",
            "host",
            "port",
            "metrics_port",
            "platform_timeout",
            "recording_timeout",
            "safety_margin",
            *overrides,
        }
        env: dict[str, str] = {}
        for name in sorted(names):
            value = getattr(settings, name)
            if value is not None:
                env[PREFIX + name.upper()] = _env_value(value)
            elif name == "metrics_port":
                env[PREFIX + "METRICS_PORT"] = "off"
        return env

    @contextlib.asynccontextmanager
    async def serve(self, bot: Bot, **overrides: Any) -> AsyncIterator[RunningBot]:
        """Configure ``bot`` with :meth:`settings` and serve it; yield the running bot.

        The bot fetches real tokens with msal from the TLS token endpoint and checks the
        notification tokens against the key endpoint. A bot serves only once: create a new
        one per test.
        """
        self._running()
        bot.configure(self.settings(**overrides))
        async with bot.serve() as running:
            yield running

    # -- tokens -----------------------------------------------------------------------------

    def sign(
        self,
        *,
        signing_key: SigningKey | None = None,
        algorithm: str = "RS256",
        header: Mapping[str, Any] | None = None,
        lifetime: float | None = None,
        now: float | None = None,
        **claims: Any,
    ) -> str:
        """Return a notification token: a JWT like Graph's, signed with the fake's key.

        ``aud`` is the app id, ``iss`` the fake's issuer, ``tid`` its tenant; ``claims``
        override or add claims (None removes one: ``sign(tid=None)``). ``signing_key``,
        ``algorithm`` (also ``"none"`` and ``"HS256"`` forgeries) and ``header`` make bad
        tokens for attack tests.
        """
        values = graph_claims(
            app_id=self.app_id,
            tenant_id=self.tenant_id,
            issuer=self.issuer,
            lifetime=self.token_lifetime if lifetime is None else lifetime,
            now=now,
            **claims,
        )
        key = self.key if signing_key is None else signing_key
        return key.sign(values, headers=header, algorithm=algorithm)

    def app_token(self) -> str:
        """Return a new bearer token that Graph accepts, without going through msal."""
        token = f"fake-app-token-{uuid.uuid4().hex}"
        self._extra_tokens.add(token)
        return token

    def _notification_token(self, tenant_id: str) -> str:
        now = time.time()
        cached = self._notify_tokens.get(tenant_id)
        if cached is not None and cached[1] - now > _TOKEN_REUSE_MARGIN:
            return cached[0]
        token = self.sign(tid=tenant_id, now=now)
        self._notify_tokens[tenant_id] = (token, now + self.token_lifetime)
        return token

    def _token_known(self, token: str) -> bool:
        if token in self._known_tokens or token in self._extra_tokens:
            return True
        issued = self.tokens.issued
        if len(issued) != self._known_count:
            self._known_tokens = set(issued)
            self._known_count = len(issued)
        return token in self._known_tokens

    # -- records ----------------------------------------------------------------------------

    @property
    def requests(self) -> tuple[GraphRequest, ...]:
        """Every call-control request received so far, in arrival order."""
        return tuple(self._requests)

    def requests_for(self, call_id: str) -> tuple[GraphRequest, ...]:
        """The call-control requests received for ``call_id``."""
        return tuple(self._by_call.get(call_id, ()))

    @property
    def calls(self) -> tuple[CallHandle, ...]:
        """Every call placed so far."""
        return tuple(self._calls.values())

    def call(self, call_id: str) -> CallHandle:
        """The handle of a placed call; KeyError naming the id if there is none."""
        try:
            return self._calls[call_id]
        except KeyError:
            raise KeyError(f"no call {call_id!r} was placed on this FakeGraph") from None

    async def wait_requests(
        self,
        count: int = 1,
        *,
        op: str | None = None,
        call_id: str | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> tuple[GraphRequest, ...]:
        """Return the requests (of ``op`` or ``"decision"``, for ``call_id``) once there are
        ``count`` of them; TimeoutError after ``timeout`` seconds."""
        self._running()

        def found() -> tuple[GraphRequest, ...]:
            pool = self._requests if call_id is None else self._by_call.get(call_id, [])
            return tuple(r for r in pool if op_matches(op, r.op))

        try:
            with anyio.fail_after(timeout):
                while len(result := found()) < count:
                    assert self._changed is not None
                    await self._changed.wait()
                return result
        except TimeoutError:
            raise TimeoutError(
                f"FakeGraph: expected {count} {op or 'any'} request(s)"
                f"{'' if call_id is None else ' for call ' + call_id} within {timeout:g} s, "
                f"got {len(found())}"
            ) from None

    def _record(self, request: GraphRequest) -> None:
        self._requests.append(request)
        self._by_call.setdefault(request.call_id, []).append(request)
        call = self._calls.get(request.call_id)
        if call is not None:
            call._recorded(request)
        assert self._changed is not None, "requests arrive only while the fake runs"
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    # -- faults -----------------------------------------------------------------------------

    def fail_next(
        self,
        op: str | None = None,
        status: int = 503,
        *,
        retry_after: float | None = None,
        count: int = 1,
        code: str | None = None,
        call_id: str | None = None,
    ) -> None:
        """Answer the next ``count`` matching call-control requests with ``status``.

        ``op`` is one of :data:`OPS`, ``"decision"`` (answer, reject or redirect) or None
        (any); ``call_id`` narrows it to one call. ``retry_after`` adds a ``Retry-After``
        header (seconds); ``code`` is the Graph error code (a default per status, e.g.
        ``TooManyRequests`` for 429, ``8522`` for 404). The request is still authenticated
        and recorded (``injected=True``), but the call's state does not change.
        """
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
        self._faults.append(
            _Fault(
                op, call_id, status, retry_after, code or _FAULT_CODES.get(status, "Error"), count
            )
        )

    def gone(self, call_id: str) -> None:
        """Make Graph forget ``call_id``: every later request for it gets 404/8522."""
        self._gone.add(call_id)
        call = self._calls.get(call_id)
        if call is not None:
            call.gone = True
            call._touch()

    def _take_fault(self, op: str, call_id: str) -> _Fault | None:
        for fault in self._faults:
            if fault.matches(op, call_id):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    # -- Graph call control -----------------------------------------------------------------

    async def _handle_action(self, request: web.Request) -> web.StreamResponse:
        action = request.match_info["action"]
        op = _ACTIONS.get(action) or _ACTIONS_LOWER.get(action.lower())
        call_id = request.match_info["call_id"]
        if op is None:
            raw = await request.read()
            self._record(
                GraphRequest(
                    f"unknown:{action}",
                    call_id,
                    decode_body(raw),
                    _headers(request),
                    time.monotonic(),
                    400,
                )
            )
            return _graph_error(
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

    async def _handle_unknown(self, request: web.Request) -> web.StreamResponse:
        return _graph_error(
            request,
            404,
            "ResourceNotFound",
            f"{request.method} {request.path} is not something this FakeGraph serves; expected "
            f"{GRAPH_PATH}/communications/calls/{{id}}[/answer|/reject|/redirect|/keepAlive]",
        )

    async def _serve(self, request: web.Request, op: str, call_id: str) -> web.StreamResponse:
        at = time.monotonic()
        raw = await request.read()
        body = decode_body(raw)
        injected = False
        follow: Callable[[], None] | None = None
        auth_problem = self._auth_problem(request)
        if auth_problem is not None:
            response = _graph_error(request, 401, "InvalidAuthenticationToken", auth_problem)
        elif (fault := self._take_fault(op, call_id)) is not None:
            injected = True
            headers = None
            if fault.retry_after is not None:
                headers = {"Retry-After": f"{fault.retry_after:g}"}
            response = _graph_error(
                request,
                fault.status,
                fault.code,
                f"FakeGraph was told to fail this {op} request (fail_next).",
                headers,
            )
        else:
            response, follow = self._call_control(request, op, call_id, body, raw)
        self._record(
            GraphRequest(op, call_id, body, _headers(request), at, response.status, injected)
        )
        before = self._before_reply.pop(id(response), None)
        if before is not None:
            await before()
        if self.latency > 0 and self._closing is not None:
            with anyio.move_on_after(self.latency):
                await self._closing.wait()
        if follow is not None:
            follow()
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

    def _call_control(
        self, request: web.Request, op: str, call_id: str, body: Any, raw: bytes
    ) -> tuple[web.Response, Callable[[], None] | None]:
        if op in VALIDATORS:
            problem = check_content(request, op, body, raw)
            if problem is not None:
                status, message = problem
                code = "BadRequest" if status == 400 else "UnsupportedMediaType"
                return _graph_error(request, status, code, message), None
            invalid = VALIDATORS[op](body)
            if invalid is not None:
                return _graph_error(request, 400, "BadRequest", invalid), None
        if op == "create":
            return self._create(request, body)
        call = self._calls.get(call_id)
        why = self._missing(call_id, call, op)
        if why is not None:
            return _graph_error(request, 404, CALL_NOT_FOUND, f"Call not found: {why}."), None
        assert call is not None
        if op in ACTION_OPS:
            if call.state != "established":
                return _graph_error(
                    request,
                    400,
                    "BadRequest",
                    f"{op}: call {call_id} is {call.state}; expected an established call",
                ), None
            return self._action(request, op, call, body)
        follow: Callable[[], None] | None = None
        if op in DECISION_OPS and isinstance(body, dict):
            self._pin(call, body.get("callbackUri"))
        if op == "answer":
            call.state = "established"
            follow = self._follow_established(call)
        elif op in ("reject", "redirect", "delete"):
            call.state = "terminated"
            self._drop_operations(call)
            follow = self._follow_terminated(call, op)
        elif op == "get":
            resource = {
                "@odata.type": _payloads.CALL,
                "id": call.call_id,
                "state": call.state,
                "direction": "incoming",
                "callbackUri": self.callback_url,
                "tenantId": call.tenant_id,
            }
            return web.json_response(resource, headers=_ids(request)), None
        return web.Response(status=_SUCCESS[op], headers=_ids(request)), follow

    def _missing(self, call_id: str, call: CallHandle | None, op: str) -> str | None:
        if call is None:
            return f"no call {call_id} was placed on this FakeGraph"
        if call_id in self._gone:
            return f"call {call_id} is gone"
        if call.timed_out:
            return f"call {call_id} ended: it was not decided within {call.timeout:g} s"
        if call.state == "terminated":
            return f"call {call_id} has ended"
        if op in DECISION_OPS and call.state != "incoming":
            return f"call {call_id} was already answered; a call is decided once"
        return None

    # -- call control after the answer -------------------------------------------------------

    @property
    def operations(self) -> tuple[FakeOperation, ...]:
        """Every operation started so far, in the order the actions arrived."""
        return tuple(self._operations)

    def _pin(self, call: CallHandle, callback_uri: object) -> None:
        """Graph sends the rest of a call to the callbackUri of its decision: a routed one
        to its webhook, one with a query (``?instance=ID`` of a fleet worker) to the same
        webhook with that query, the way a load balancer in front of the fleet receives it."""
        if not isinstance(callback_uri, str):
            return
        routed = self._routes.get(callback_uri) or self._routes.get(callback_uri.split("?", 1)[0])
        query = URL(callback_uri).query_string
        base = routed or call.webhook_url
        if routed is None and not query:
            return
        call.webhook_url = str(URL(base).with_query(query)) if query else base

    def route(self, callback_uri: str, webhook_url: str) -> None:
        """Send the notifications of calls created with ``callback_uri`` to ``webhook_url``.

        Graph calls the ``callbackUri`` a new call names (https); the fake calls the webhook
        routed here instead. A ``callbackUri`` with a query string (``?instance=...``) uses
        the route of the URI without it unless it has its own.
        """
        self._routes[callback_uri] = webhook_url

    def plan_operation(
        self,
        op: str | None = None,
        *,
        call_id: str | None = None,
        duration: float | None = None,
        code: int | None = None,
        subcode: int | None = None,
        message: str | None = None,
        completion_reason: str | None = None,
        complete: bool = True,
        immediate: bool = False,
        before_reply: bool = False,
        duplicate: int = 0,
        out_of_order: bool = False,
        count: int = 1,
    ) -> None:
        """Change what the next ``count`` matching operations do.

        ``op`` is one of :data:`ACTION_OPS` or ``create`` (None: any); ``call_id`` narrows it
        to one call. ``duration`` replaces ``operation_duration``. A ``code`` outside 2xx
        makes the operation fail with (``code``, ``subcode``, ``message``); a transfer then
        goes back to ``established`` with that resultInfo and a new call ends ``terminated``
        with it. ``completion_reason`` replaces the reason sent. ``complete=False``: it never
        ends. ``immediate=True``: the 200 itself says completed (or failed), no notification
        follows. ``before_reply=True``: the completion (a new call's states) is delivered
        before the reply to the POST is sent. ``duplicate=N``: the completion is sent N more
        times. ``out_of_order=True``: a transfer sends transferAccepted before transferring,
        a new call established before establishing.
        """
        if op is not None and op not in (*ACTION_OPS, "create"):
            raise ValueError(
                f"unknown op {op!r}; expected None, 'create' or one of {', '.join(ACTION_OPS)}"
            )
        if count < 1 or duplicate < 0:
            raise ValueError(f"count must be >= 1 and duplicate >= 0, got {count}, {duplicate}")
        if duration is not None and not duration >= 0:
            raise ValueError(f"duration must be zero or more seconds, got {duration}")
        self._plans.append(
            _Plan(
                op=op,
                call_id=call_id,
                duration=duration,
                code=code,
                subcode=subcode,
                message=message,
                completion_reason=completion_reason,
                complete=complete,
                immediate=immediate,
                before_reply=before_reply,
                duplicate=duplicate,
                out_of_order=out_of_order,
                remaining=count,
            )
        )

    def _take_plan(self, op: str, call_id: str) -> _Plan | None:
        for plan in self._plans:
            if (plan.op is None or plan.op == op) and plan.call_id in (None, call_id):
                plan.remaining -= 1
                if plan.remaining <= 0:
                    self._plans.remove(plan)
                return plan
        return None

    def _url_id(self, call_id: str) -> str:
        return call_id.replace("-", "").upper() if self.upper_case_ids else call_id

    async def _handle_invite(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "invite", request.match_info["call_id"])

    async def _handle_create(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "create", "")

    async def _handle_recording(self, request: web.Request) -> web.StreamResponse:
        recording_id = request.match_info["recording_id"]
        known = self._recordings.get(recording_id)
        call_id = known[1] if known is not None else ""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if known is None:
            response = _graph_error(request, 404, "NotFound", f"no recording {recording_id}")
        elif scheme.lower() != "bearer" or token.strip() != known[0]:
            response = _graph_error(
                request,
                401,
                "InvalidAuthenticationToken",
                "a recording is served only with 'Authorization: Bearer <recordingAccessToken>'",
            )
        else:
            response = web.Response(
                body=self.recording_audio, content_type="audio/wav", headers=_ids(request)
            )
        self._record(
            GraphRequest(
                "recording", call_id, None, _headers(request), time.monotonic(), response.status
            )
        )
        return response

    def _action(
        self, request: web.Request, op: str, call: CallHandle, body: dict[str, Any]
    ) -> tuple[web.Response, Callable[[], None] | None]:
        plan = self._take_plan(op, call.call_id)
        context = body.get("clientContext")
        if op == "transfer":
            return web.Response(status=202, headers=_ids(request)), self._transfer_flow(call, plan)
        if op == "subscribeToTone":
            call.subscribed_to_tones = True
        elif op in ("mute", "unmute"):
            call.muted = op == "mute"
        elif op == "updateRecordingStatus":
            call.recording_status = body["status"]
        operation = FakeOperation(
            str(uuid.uuid4()), op, call.call_id, context, started_at=time.monotonic()
        )
        self._operations.append(operation)
        call._started(operation)
        if op == "cancelMediaProcessing":
            for running in call.operations:
                if running.op in MEDIA_OPS and running.status == "running":
                    self._cancel(call, running)
        immediate = op not in _ASYNC_OPS or (plan is not None and plan.immediate)
        location = f"{self.graph_url}/communications/calls/{call.call_id}/operations/{operation.id}"
        headers = {**_ids(request), "Location": location}
        if immediate:
            self._finish(operation, plan)
            payload = _payloads.operation_resource(
                op,
                operation.id,
                status=operation.status,
                client_context=context,
                result=operation.result,
                completion_reason=operation.completion_reason,
            )
            return web.json_response(payload, headers=headers), None
        payload = _payloads.operation_resource(
            op, operation.id, status="running", client_context=context
        )
        response = web.json_response(payload, headers=headers)
        if plan is not None and not plan.complete:
            return response, None
        if plan is not None and plan.before_reply:
            self._finish(operation, plan)
            self._before_reply[id(response)] = lambda: self._notify_operation(call, operation, plan)
            return response, None
        delay = self.operation_duration
        if plan is not None and plan.duration is not None:
            delay = plan.duration
        self._scopes[operation.id] = anyio.CancelScope()
        return response, lambda: self._spawn(self._complete_later, call, operation, plan, delay)

    def _finish(self, operation: FakeOperation, plan: _Plan | None) -> None:
        """Decide how ``operation`` ends (status, result, reason), per ``plan``."""
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
                self._recordings[recording_id] = (token, operation.call_id)
                operation.recording_location = f"{self.url}/recordings/{recording_id}"
                operation.recording_access_token = token

    def _spawn(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        tg = self._tg
        if tg is None or (self._closing is not None and self._closing.is_set()):
            return
        tg.start_soon(fn, *args)

    async def _complete_later(
        self, call: CallHandle, operation: FakeOperation, plan: _Plan | None, delay: float
    ) -> None:
        scope = self._scopes.get(operation.id)
        if scope is None:  # cancelled before it started
            return
        with scope:
            await anyio.sleep(delay)
            self._finish(operation, plan)
            self._scopes.pop(operation.id, None)
            await self._notify_operation(call, operation, plan)

    async def _notify_operation(
        self, call: CallHandle, operation: FakeOperation, plan: _Plan | None
    ) -> None:
        item = _payloads.operation_result(
            self._url_id(call.call_id),
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
            await self._deliver_quietly(call, "operation", _payloads.envelope(item))

    def _cancel(self, call: CallHandle, operation: FakeOperation) -> None:
        """Fail a running media operation with 400/8508 and notify it (cancelMediaProcessing)."""
        scope = self._scopes.pop(operation.id, None)
        if scope is not None:
            scope.cancel()
        operation.status = "failed"
        operation.result = CANCELLED
        operation.completion_reason = "operationCanceled"
        self._spawn(self._notify_operation, call, operation, None)

    def _drop_operations(self, call: CallHandle) -> None:
        """The call ended: its running operations stop, and no notification reports them."""
        for operation in call.operations:
            if operation.status == "running":
                scope = self._scopes.pop(operation.id, None)
                if scope is not None:
                    scope.cancel()
                operation.status = "dropped"

    def _transfer_flow(self, call: CallHandle, plan: _Plan | None) -> Callable[[], None] | None:
        if plan is not None and not plan.complete:
            return None
        delay = self.operation_duration if plan is None or plan.duration is None else plan.duration
        states = ["transferring", "transferAccepted"]
        if plan is not None and plan.fails:
            states = ["transferring"]
        elif plan is not None and plan.out_of_order:
            states.reverse()
        return lambda: self._spawn(self._run_transfer, call, plan, states, delay)

    async def _run_transfer(
        self, call: CallHandle, plan: _Plan | None, states: list[str], delay: float
    ) -> None:
        for state in states:
            call.state = state
            call.etag += 1
            item = _payloads.call_state(call.call_id, state, etag=call.etag)
            await self._deliver_quietly(call, "state", _payloads.envelope(item))
            await anyio.sleep(delay / 2)
        if plan is not None and plan.fails:
            call.state = "established"
            call.etag += 1
            result = (plan.code, plan.subcode, plan.message or "Transfer failed.")
            item = _payloads.call_state(call.call_id, "established", etag=call.etag, result=result)
            await self._deliver_quietly(call, "state", _payloads.envelope(item))
            return
        call.state = "terminated"
        call.etag += 1
        self._drop_operations(call)
        code, subcode, message = TRANSFERRED
        item = _payloads.call_terminated(
            call.call_id, code=code, subcode=subcode, message=message, etag=call.etag
        )
        await self._deliver_quietly(call, "terminated", _payloads.envelope(item))

    def _create(
        self, request: web.Request, body: dict[str, Any]
    ) -> tuple[web.Response, Callable[[], None] | None]:
        callback = body["callbackUri"]
        webhook = self._routes.get(callback) or self._routes.get(callback.split("?", 1)[0])
        if webhook is None:
            return _graph_error(
                request,
                400,
                "BadRequest",
                f"create: no webhook is routed for callbackUri {callback!r}; expected "
                "fake.route(callback_uri, webhook_url) before creating calls",
            ), None
        call_id = str(uuid.uuid4())
        joins = "chatInfo" in body
        tenant = body.get("tenantId") or self.tenant_id
        call = CallHandle(
            call_id=call_id,
            kind="join" if joins else "outgoing",
            webhook_url=webhook,
            tenant_id=tenant,
            policy_recording=False,
            timeout=self.platform_timeout,
            payload=body,
            press=self._press,
        )
        call.state = "establishing"
        self._calls[call_id] = call
        plan = self._take_plan("create", call_id)
        resource = {
            "@odata.type": _payloads.CALL,
            "id": call_id,
            "state": "establishing",
            "direction": "outgoing",
            "callbackUri": callback,
            "tenantId": tenant,
            "myParticipantId": str(uuid.uuid4()),
            "callChainId": call.chain_id,
            "requestedModalities": body["requestedModalities"],
        }
        headers = {
            **_ids(request),
            "Location": f"{self.graph_url}/communications/calls/{call_id}",
        }
        response = web.json_response(resource, status=201, headers=headers)
        if plan is not None and not plan.complete:
            return response, None
        delay = self.operation_duration if plan is None or plan.duration is None else plan.duration
        if plan is not None and plan.before_reply:
            self._before_reply[id(response)] = lambda: self._establish(call, plan, 0.0)
            return response, None
        return response, lambda: self._spawn(self._establish, call, plan, delay)

    async def _establish(self, call: CallHandle, plan: _Plan | None, delay: float) -> None:
        if plan is not None and plan.fails:
            await anyio.sleep(delay)
            call.state = "terminated"
            call.etag += 1
            item = _payloads.call_terminated(
                call.call_id,
                code=plan.code,
                subcode=plan.subcode,
                message=plan.message or "The call could not be established.",
                etag=call.etag,
            )
            await self._deliver_quietly(call, "terminated", _payloads.envelope(item))
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
            item = _payloads.call_state(call.call_id, state, etag=etag)
            for _ in range(1 + (plan.duplicate if plan is not None else 0)):
                await self._deliver_quietly(call, state, _payloads.envelope(item))

    async def _press(
        self,
        call: CallHandle,
        keys: Sequence[str],
        order: Sequence[int] | None,
        duplicates: int,
    ) -> tuple[WebhookReply, ...]:
        self._running()
        for key in keys:
            if key not in _payloads.GRAPH_TONES:
                raise ValueError(
                    f"unknown key {key!r}; expected one of {', '.join(_payloads.GRAPH_TONES)}"
                )
        if not call.subscribed_to_tones:
            raise RuntimeError(
                f"call {call.call_id} did not subscribe to tones (subscribeToTone): Graph "
                "would not report these key presses"
            )
        if call.state != "established":
            raise RuntimeError(
                f"call {call.call_id} is {call.state}; keys need an established call"
            )
        indexes = list(range(len(keys))) if order is None else list(order)
        if sorted(indexes) != list(range(len(keys))):
            raise ValueError(f"order must be a permutation of 0..{len(keys) - 1}, got {order!r}")
        if duplicates < 0:
            raise ValueError(f"duplicates must be zero or more, got {duplicates}")
        items = []
        for key in keys:
            call.tone_sequence += 1
            call.etag += 1
            items.append(
                _payloads.tone(self._url_id(call.call_id), call.tone_sequence, key, etag=call.etag)
            )
        replies = []
        for index in indexes:
            for _ in range(1 + duplicates):
                replies.append(
                    await self._post(
                        call.webhook_url, _payloads.envelope(items[index]), kind="tone", call=call
                    )
                )
        return tuple(replies)

    # -- follow-up notifications ------------------------------------------------------------

    def _follow_established(self, call: CallHandle) -> Callable[[], None] | None:
        if not self.follow_up:
            return None
        call.etag += 1
        body = _payloads.envelope(_payloads.call_state(call.call_id, "established", etag=call.etag))
        return lambda: self._spawn_delivery(call, "established", body)

    def _follow_terminated(self, call: CallHandle, op: str) -> Callable[[], None] | None:
        if not self.follow_up:
            return None
        call.etag += 1
        messages = {
            "reject": "The call was rejected by the application.",
            "redirect": "The call was redirected by the application.",
            "delete": "The call was ended by the application.",
        }
        body = _payloads.envelope(
            _payloads.call_terminated(
                call.call_id, code=200, subcode=0, message=messages[op], etag=call.etag
            )
        )
        return lambda: self._spawn_delivery(call, "terminated", body)

    def _spawn_delivery(self, call: CallHandle, kind: str, body: dict[str, Any]) -> None:
        tg = self._tg
        if tg is None or (self._closing is not None and self._closing.is_set()):
            return
        tg.start_soon(self._deliver_quietly, call, kind, body)

    async def _deliver_quietly(self, call: CallHandle, kind: str, body: dict[str, Any]) -> None:
        assert self._limiter is not None
        async with self._limiter:
            await self._post(call.webhook_url, body, kind=kind, call=call, quiet=True)

    # -- the platform timeout ---------------------------------------------------------------

    async def _enforce_timeouts(self) -> None:
        heap = self._heap
        while True:
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                call = heapq.heappop(heap)[2]
                if call.state == "incoming" and not call.gone:
                    self._time_out(call)
            self._wake = anyio.Event()
            wait = heap[0][0] - now if heap else math.inf
            with anyio.move_on_after(wait):
                await self._wake.wait()

    def _time_out(self, call: CallHandle) -> None:
        call.state = "terminated"
        call.timed_out = True
        call.etag += 1
        call._touch()
        log.info("fake_graph.call_timed_out", call_id=call.call_id, timeout=call.timeout)
        body = _payloads.envelope(
            _payloads.call_terminated(
                call.call_id,
                code=TIMEOUT_CODE,
                subcode=TIMEOUT_SUBCODE,
                message=TIMEOUT_MESSAGE,
                etag=call.etag,
            )
        )
        self._spawn_delivery(call, "timeout", body)

    def _schedule(self, call: CallHandle) -> None:
        heap = self._heap
        earliest = heap[0][0] if heap else math.inf
        heapq.heappush(heap, (call.deadline, next(self._seq), call))
        if call.deadline < earliest and self._wake is not None:
            self._wake.set()

    # -- notifications ----------------------------------------------------------------------

    async def place_call(
        self,
        webhook_url: str,
        *,
        kind: str = "p2p",
        caller: _payloads.CallerSpec = None,
        call_id: str | None = None,
        tenant_id: str | None = None,
        policy_recording: bool = False,
        duplicate: int = 0,
        token: str | None = None,
        payload: Mapping[str, Any] | None = None,
        headers: Mapping[str, str | None] | None = None,
    ) -> CallHandle:
        """Ring the bot: POST a signed incoming-call notification to ``webhook_url``.

        ``kind`` is one of :data:`~callflow.testing.KINDS`; ``caller`` an
        :class:`~callflow.Identity`, a small dict (``{"kind": "user", "id": ...}``) or a raw
        identitySet. ``payload`` replaces the whole body (its call id is read from it unless
        ``call_id`` is given). ``token`` replaces the bearer token, ``headers`` add or (with
        None) remove headers. ``duplicate=N`` posts the same notification N more times. The
        platform timeout starts when the first POST goes out. Connection errors propagate
        (the call then counts as ended).
        """
        self._running()
        if kind not in _payloads.KINDS:
            kinds = ", ".join(_payloads.KINDS)
            raise ValueError(f"unknown call kind {kind!r}; expected one of {kinds}")
        if duplicate < 0:
            raise ValueError(f"duplicate must be zero or more extra deliveries, got {duplicate}")
        if call_id is None:
            call_id = _call_id_of(payload) if payload is not None else str(uuid.uuid4())
        if call_id in self._calls:
            raise ValueError(f"call {call_id!r} was already placed; expected a new call id")
        tenant = tenant_id or self.tenant_id
        recording = policy_recording or kind == "policy_recording"
        if payload is not None:
            body: Any = payload
            recording = recording or _has_bot_data(payload)
        else:
            body = _payloads.incoming_call(
                kind=kind,
                call_id=call_id,
                tenant_id=tenant,
                bot_app_id=self.app_id,
                callback_uri=self.callback_url,
                caller=caller,
                policy_recording=recording,
                call_chain_id=f"c4a1f0e2-{call_id}",
            )
        call = CallHandle(
            call_id=call_id,
            kind=kind,
            webhook_url=webhook_url,
            tenant_id=tenant,
            policy_recording=recording,
            timeout=self.recording_timeout if recording else self.platform_timeout,
            payload=body,
            press=self._press,
        )
        self._calls[call_id] = call
        self._schedule(call)
        try:
            for attempt in range(duplicate + 1):
                await self._post(
                    webhook_url,
                    body,
                    kind="duplicate" if attempt else "incoming",
                    call=call,
                    token=token,
                    headers=headers,
                )
        except BaseException:
            call.state = "terminated"
            call._touch()
            raise
        return call

    async def notify(
        self,
        webhook_url: str,
        body: Mapping[str, Any] | Sequence[Mapping[str, Any]] | bytes | str,
        *,
        token: str | None = None,
        headers: Mapping[str, str | None] | None = None,
        call_id: str | None = None,
        tenant_id: str | None = None,
    ) -> WebhookReply:
        """POST any notification to ``webhook_url``, signed, and return the webhook's reply.

        A dict is sent as the whole JSON body; a list of notification items is wrapped in a
        ``commsNotifications`` body; bytes or str are sent as they are (garbage tests).
        ``call_id`` files the reply under that placed call's deliveries. Connection errors
        propagate.
        """
        self._running()
        call = self._calls.get(call_id) if call_id is not None else None
        return await self._post(
            webhook_url,
            body,
            kind="custom",
            call=call,
            token=token,
            headers=headers,
            tenant_id=tenant_id,
        )

    async def send_states(
        self,
        webhook_url: str,
        call_id: str,
        states: Iterable[str],
        *,
        etags: Iterable[int] | None = None,
        batch: bool = False,
        token: str | None = None,
        headers: Mapping[str, str | None] | None = None,
    ) -> tuple[WebhookReply, ...]:
        """Send state notifications for ``call_id`` in the order given (one POST each).

        ``etags`` gives each one's ``@odata.etag`` (send them out of order to test stale
        updates); by default they continue the call's own counter. ``terminated`` becomes a
        ``deleted`` notification. ``batch=True`` sends all of them in one POST. The fake's
        own record of the call is not changed.
        """
        self._running()
        states = tuple(states)
        call = self._calls.get(call_id)
        if etags is None:
            start = call.etag if call is not None else 0
            tags = tuple(range(start + 1, start + 1 + len(states)))
            if call is not None:
                call.etag += len(states)
        else:
            tags = tuple(etags)
            if len(tags) != len(states):
                raise ValueError(
                    f"got {len(states)} states and {len(tags)} etags; expected one etag per state"
                )
        items = [
            _payloads.call_terminated(call_id, etag=tag)
            if state == "terminated"
            else _payloads.call_state(call_id, state, etag=tag)
            for state, tag in zip(states, tags, strict=True)
        ]
        tenant = call.tenant_id if call is not None else None
        bodies = [_payloads.envelope(*items)] if batch else [_payloads.envelope(i) for i in items]
        replies = []
        for body in bodies:
            replies.append(
                await self._post(
                    webhook_url,
                    body,
                    kind="state",
                    call=call,
                    token=token,
                    headers=headers,
                    tenant_id=tenant,
                )
            )
        return tuple(replies)

    async def end_call(
        self,
        call_id: str,
        *,
        code: int | None = 200,
        subcode: int | None = 5001,
        message: str | None = "The conversation has ended.",
    ) -> WebhookReply:
        """The caller hangs up: end the placed call and POST ``deleted``/``terminated`` for it.

        Later requests for the call get 404/8522.
        """
        self._running()
        call = self.call(call_id)
        call.state = "terminated"
        call.etag += 1
        self._drop_operations(call)
        call._touch()
        body = _payloads.envelope(
            _payloads.call_terminated(
                call_id, code=code, subcode=subcode, message=message, etag=call.etag
            )
        )
        return await self._post(call.webhook_url, body, kind="terminated", call=call)

    async def _post(
        self,
        url: str,
        body: Any,
        *,
        kind: str,
        call: CallHandle | None,
        token: str | None = None,
        headers: Mapping[str, str | None] | None = None,
        tenant_id: str | None = None,
        quiet: bool = False,
    ) -> WebhookReply:
        session = self._session
        assert session is not None, "callers check that the fake runs"
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        elif isinstance(body, Mapping):
            data = json.dumps(body).encode()
        else:
            data = json.dumps(_payloads.envelope(*body)).encode()
        tenant = tenant_id or (call.tenant_id if call is not None else self.tenant_id)
        bearer = token if token is not None else self._notification_token(tenant)
        sent: dict[str, str | None] = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {bearer}",
            "Client-Request-Id": str(uuid.uuid4()),
            "Scenario-Id": call.scenario_id if call is not None else str(uuid.uuid4()),
            "X-Microsoft-Skype-Message-ID": str(uuid.uuid4()),
        }
        if call is not None:
            sent["X-Microsoft-Skype-Chain-ID"] = call.chain_id
        lowered = {name.lower(): name for name in sent}
        for name, value in (headers or {}).items():
            sent.pop(lowered.get(name.lower(), name), None)
            sent[name] = value
        final = {name: value for name, value in sent.items() if value is not None}
        skip = () if any(n.lower() == "content-type" for n in final) else ("Content-Type",)
        try:
            # aiohttp warns about large raw bytes bodies (they are written in one go).
            payload = io.BytesIO(data) if len(data) > _LARGE_BODY else data
            async with session.post(
                url, data=payload, headers=final, skip_auto_headers=skip
            ) as response:
                raw = await response.read()
                reply = WebhookReply(
                    kind,
                    response.status,
                    decode_body(raw),
                    CIMultiDictProxy(CIMultiDict(response.headers)),
                    time.monotonic(),
                    body,
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if not quiet:
                raise
            log.warning(
                "fake_graph.delivery_failed",
                kind=kind,
                call_id=call.call_id if call is not None else None,
                error=f"{type(exc).__name__}: {exc}",
            )
            reply = WebhookReply(
                kind,
                0,
                None,
                CIMultiDictProxy(CIMultiDict()),
                time.monotonic(),
                body,
                f"{type(exc).__name__}: {exc}",
            )
        if call is not None:
            call._delivered(reply)
        return reply


# --- helpers ---------------------------------------------------------------------------------


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _headers(request: web.Request) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(request.headers))


def _ids(request: web.Request) -> dict[str, str]:
    headers = {"request-id": str(uuid.uuid4())}
    client_request_id = request.headers.get("client-request-id")
    if client_request_id:
        headers["client-request-id"] = client_request_id
    return headers


def _graph_error(
    request: web.Request,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Graph's error reply: ``{"error": {"code", "message", "innerError": {...}}}``."""
    ids = _ids(request)
    inner: dict[str, str] = {
        "request-id": ids["request-id"],
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if "client-request-id" in ids:
        inner["client-request-id"] = ids["client-request-id"]
    ids.update(headers or {})
    return web.json_response(
        {"error": {"code": code, "message": message, "innerError": inner}},
        status=status,
        headers=ids,
    )


def _call_id_of(payload: Mapping[str, Any]) -> str:
    """The call id of a custom incoming-call body: ``resourceData.id`` or the resource URL."""
    items = payload.get("value")
    item = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}
    data = item.get("resourceData")
    if isinstance(data, dict) and isinstance(data.get("id"), str) and data["id"]:
        return str(data["id"])
    url = item.get("resourceUrl")
    if isinstance(url, str) and "/calls/" in url:
        tail = url.split("/calls/", 1)[1].split("/", 1)[0]
        if tail:
            return tail
    raise ValueError(
        "cannot tell the call id of this payload; expected value[0].resourceData.id or a "
        "resourceUrl '/communications/calls/{id}', or pass call_id="
    )


def _has_bot_data(payload: Mapping[str, Any]) -> bool:
    items = payload.get("value")
    if not isinstance(items, list):
        return False
    for item in items:
        data = item.get("resourceData") if isinstance(item, dict) else None
        meta = data.get("applicationMetadata") if isinstance(data, dict) else None
        if isinstance(meta, dict) and meta.get("botData") is not None:
            return True
    return False


def _silent_wav(seconds: float) -> bytes:
    """A WAV file of ``seconds`` of silence: mono, 16-bit, 16 kHz (what Graph records)."""
    rate = 16_000
    data = b"\x00\x00" * int(rate * seconds)
    header = (
        b"RIFF"
        + (36 + len(data)).to_bytes(4, "little")
        + b"WAVEfmt "
        + (16).to_bytes(4, "little")
        + (1).to_bytes(2, "little")
        + (1).to_bytes(2, "little")
        + rate.to_bytes(4, "little")
        + (rate * 2).to_bytes(4, "little")
        + (2).to_bytes(2, "little")
        + (16).to_bytes(2, "little")
        + b"data"
        + len(data).to_bytes(4, "little")
    )
    return header + data
