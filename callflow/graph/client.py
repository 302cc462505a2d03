"""Call control against Microsoft Graph: answer, reject, redirect, hang up, keep alive, and
the actions after the answer (prompts, recording, tones, mute, invite, transfer, new calls).

Actions that Graph runs as an operation (``playPrompt``, ``recordResponse``, ...) answer 200
with the operation; each method returns it as an :class:`Operation` (its ``status`` says
whether it already finished; otherwise the result comes later as a notification). Every such
request carries a ``clientContext`` (from the OS's cryptographic generator unless given) to
correlate that notification.

A :class:`GraphClient` owns one keep-alive :class:`aiohttp.ClientSession`, created in the
event loop that enters it (``async with GraphClient(...) as graph``); a second client may live
in another thread's loop. Every request carries a bearer token from the
:class:`~callflow.graph.tokens.TokenProvider`, a fresh ``Client-Request-Id`` per attempt and
one ``Scenario-Id`` for all attempts of a request.

Retries (429, 503, 504, connection errors and timeouts) honour ``Retry-After`` or back off
exponentially with jitter, and never run past the caller's ``deadline`` (an absolute
``time.monotonic()`` value): each attempt is bounded by what is left of it, and a retry that
could not be sent before it is not made; the last error is raised at once instead.

Every response body is read through one bounded reader, counted after decompression: error
bodies to 64 KiB, replies to 1 MiB (the rest is cut off, logged as ``graph.body_cut_off``),
recordings to the caller's ``max_bytes``. A recording is fetched only from an https location
on ``recording_hosts`` (``CALLFLOW_RECORDING_HOSTS``), never from an IP address, and only if
its name resolves to public addresses; see :mod:`callflow._hosts`.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import math
import os
import random
import re
import secrets
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Self

import aiohttp
import attrs
import jwt
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from callflow._hosts import DEFAULT_RECORDING_HOSTS, RecordingHosts, is_loopback, is_public_address
from callflow._parse import read_call, read_operation
from callflow.actions import (
    JoinMeeting,
    OutgoingCall,
    Transfer,
    context_body,
)
from callflow.errors import (
    CallGoneError,
    ConfigError,
    GraphError,
    GraphResponseError,
    RecordingTooLargeError,
)
from callflow.events import canonical_call_id

if TYPE_CHECKING:
    from types import TracebackType

    from callflow.decisions import Decision
    from callflow.events import IncomingCall, ResultInfo
    from callflow.graph.tokens import TokenProvider

__all__ = ["CreatedCall", "GraphClient", "GraphResult", "Operation"]

log = structlog.get_logger(__name__)

RETRY_STATUSES: Final = frozenset({429, 503, 504})
"""Statuses that are retried (after ``Retry-After`` or a backoff); all others raise at once."""

SEND_ALLOWANCE: Final = 0.05
"""Seconds a retry needs before the deadline to be worth sending; later retries are abandoned."""

_CALL_GONE_CODE: Final = "8522"
_DNS_CACHE_TTL: Final = 300
_ERROR_TEXT_LIMIT: Final = 300
ERROR_BODY_LIMIT: Final = 64 * 1024
"""Bytes of an error body read (after decompression); the rest is not read."""
REPLY_BODY_LIMIT: Final = 1024 * 1024
"""Bytes of a successful reply read (after decompression); a longer reply counts as none."""
_READ_CHUNK: Final = 64 * 1024
# The resolver the client's own one (_PublicResolver) asks first; tests replace it.
_system_resolver: Callable[[], AbstractResolver] = aiohttp.DefaultResolver
_encode_json: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_NO_CLIENT_TIMEOUT: Final = aiohttp.ClientTimeout()  # attempts are bounded by _AttemptTimeout
# Sent with every request as session defaults, so each request builds only its own three.
_JSON_HEADERS: Final = {"Content-Type": "application/json", "Accept": "application/json"}
_SEGMENT: Final = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,127}").fullmatch
"""An id that may be one segment of a Graph URL path: at most 128 unreserved characters, not
starting with a dot (so never ``.``, ``..``, ``/`` or ``%2F``); Graph's ids are GUIDs. The
same rule as the parser's ``CALL_ID_PATTERN``, checked again here, where ids meet URLs."""
_BODY_CACHE_SIZE: Final = 256
"""Encoded decision bodies kept per client: a bot sends the same few decisions again and again."""


@attrs.frozen
class GraphResult:
    """The outcome of a successful request to Graph.

    ``status`` is the HTTP status (404 for a hang-up of a call already gone), ``attempts`` how
    many requests it took, ``request_id`` Graph's ``request-id`` response header, and
    ``client_request_id`` the ``Client-Request-Id`` of the attempt that succeeded.
    """

    status: int
    attempts: int
    request_id: str | None
    client_request_id: str


@attrs.frozen
class Operation:
    """A call-control operation as Graph's reply to the action's POST described it.

    ``status`` is ``notStarted``/``running`` (the result follows as a notification),
    ``completed`` or ``failed`` (no notification follows), or None when Graph did not say.
    ``operation_id`` comes from the body or the ``Location`` header. ``client_context`` is
    the one sent with the request.
    """

    call_id: str
    kind: str
    client_context: str
    operation_id: str | None
    status: str | None
    result: ResultInfo | None
    completion_reason: str | None
    location: str | None
    request: GraphResult
    recording_location: str | None = None
    recording_access_token: str | None = attrs.field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        """True when the reply already says completed or failed: no notification follows."""
        return self.status in ("completed", "failed")


@attrs.frozen
class CreatedCall:
    """A call Graph created for ``POST /communications/calls`` (201), usually establishing.

    ``call_id`` is in canonical form; ``tenant_id`` is the tenant the call belongs to: the
    one Graph's reply names, else the one the app token that created it was issued for.
    """

    call_id: str
    state: str | None
    my_participant_id: str | None
    call_chain_id: str | None
    location: str | None
    request: GraphResult
    tenant_id: str | None = None


class _AttemptTimeout:
    """``async with asyncio.timeout(delay)`` for one attempt, with less bookkeeping.

    The same rules: the task is cancelled when ``delay`` seconds have passed, and that
    cancellation (and only that one) leaves the block as :class:`TimeoutError`; a cancellation
    from elsewhere stays a cancellation. There is no rescheduling, no state machine and no
    ``call_soon`` special case (a timer already due runs on the next loop iteration anyway),
    which is most of what ``asyncio.Timeout`` costs on the decision path.
    """

    __slots__ = ("_cancelling", "_delay", "_expired", "_handle", "_task")

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._expired = False
        self._handle: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - the client is only used from tasks
            raise RuntimeError("a Graph request must run inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        loop = task.get_loop()
        self._handle = loop.call_at(loop.time() + self._delay, self._expire)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        handle = self._handle
        if handle is not None:
            handle.cancel()
            self._handle = None
        if (
            self._expired
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    def _expire(self) -> None:
        self._task.cancel()
        self._expired = True
        self._handle = None


OnRequest = Callable[[str, int | None, int], None]
"""``on_request(op, status, attempt)``: status is None for a connection error or timeout."""


class GraphClient:
    """Sends call-control requests to Graph over one keep-alive HTTP session.

    Use it as an async context manager; the session belongs to the event loop that entered
    it. ``callback_url`` is the default ``callbackUri`` of answer/reject/redirect bodies.
    ``ca_bundle`` is a PEM file of extra CAs to trust besides the system ones.
    ``recording_hosts`` are the hosts recordings may be downloaded from. ``on_request``
    is called after every attempt with ``(op, status or None, attempt)`` (for metrics; it
    must be quick). ``deliver`` makes the client a decision sink for the deadline scheduler.
    """

    def __init__(
        self,
        *,
        tokens: TokenProvider,
        base_url: str = "https://graph.microsoft.com/v1.0",
        callback_url: str | None = None,
        ca_bundle: str | None = None,
        request_timeout: float = 5.0,
        max_connections: int = 256,
        max_attempts: int = 5,
        backoff: tuple[float, float] = (0.2, 5.0),
        recording_hosts: Sequence[str] = DEFAULT_RECORDING_HOSTS,
        on_request: OnRequest | None = None,
    ) -> None:
        problems: list[str] = []
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            problems.append(f"base_url={base_url!r}: expected an absolute http(s) URL")
        if not request_timeout > 0:
            problems.append(f"request_timeout={request_timeout!r}: expected seconds > 0")
        if max_connections < 1:
            problems.append(f"max_connections={max_connections!r}: expected an integer >= 1")
        if max_attempts < 1:
            problems.append(f"max_attempts={max_attempts!r}: expected an integer >= 1")
        low, high = backoff
        if not 0 <= low <= high:
            problems.append(f"backoff={backoff!r}: expected (min, max) seconds, 0 <= min <= max")
        if isinstance(recording_hosts, str):
            recording_hosts = recording_hosts.split(",")
        hosts: RecordingHosts | None = None
        try:
            hosts = RecordingHosts(recording_hosts)
        except ValueError as exc:
            problems.append(f"recording_hosts={list(recording_hosts)!r}: {exc}")
        if problems:
            raise ConfigError("invalid GraphClient settings: " + "; ".join(problems))
        assert hosts is not None

        self.callback_url = callback_url
        self._tokens = tokens
        self._calls_url = URL(str(url).rstrip("/") + "/communications/calls/", encoded=True)
        self._calls_path = self._calls_url.raw_path
        self._ssl: ssl.SSLContext | bool = _ssl_context(ca_bundle) if ca_bundle else True
        self._request_timeout = float(request_timeout)
        self._max_connections = max_connections
        self._max_attempts = max_attempts
        self._backoff = (float(low), float(high))
        self._on_request = on_request
        self._recording_hosts = hosts
        self._graph_host = graph_host = _host_of(url)
        self._loopback_origin: tuple[str, str, int | None] | None = None
        if is_loopback(graph_host):  # tests, FakeGraph: recordings come from Graph's origin
            self._loopback_origin = (url.scheme, graph_host, url.port)
        self._session: aiohttp.ClientSession | None = None
        self._resolver: AbstractResolver | None = None
        self._bodies: dict[Decision, bytes] = {}
        self._bodies_callback: str | None = callback_url

    @property
    def recording_hosts(self) -> tuple[str, ...]:
        """The hosts recordings are downloaded from (``*.`` for subdomains), normalized."""
        return self._recording_hosts.hosts

    async def __aenter__(self) -> Self:
        """Open the HTTP session in the running event loop."""
        if self._session is not None:
            raise GraphError("GraphClient is already open; expected one `async with` at a time")
        self._resolver = _PublicResolver(_system_resolver(), self._graph_host)
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=self._max_connections,
            ttl_dns_cache=_DNS_CACHE_TTL,
            ssl=self._ssl,
            resolver=self._resolver,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=_NO_CLIENT_TIMEOUT, headers=_JSON_HEADERS
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the HTTP session and its connections."""
        session, self._session = self._session, None
        resolver, self._resolver = self._resolver, None
        try:
            if session is not None:
                await session.close()
        finally:
            if resolver is not None:
                await resolver.close()

    async def decide(
        self,
        call_id: str,
        decision: Decision,
        *,
        tenant_id: str | None = None,
        deadline: float | None = None,
        scenario_id: str | None = None,
    ) -> GraphResult:
        """Send an answer, reject or redirect for ``call_id`` (``POST .../{decision.kind}``).

        Raises :class:`CallGoneError` when the call no longer exists, another
        :class:`GraphResponseError` for any other error response, and :class:`GraphError`
        when Graph could not be reached before the attempts or the deadline ran out.
        """
        kind = decision.kind
        return await self._request(
            kind,
            "POST",
            call_id,
            "/" + kind,
            self._body(decision),
            tenant_id,
            deadline,
            scenario_id,
        )

    def _body(self, decision: Decision) -> bytes:
        """The JSON body of ``decision``, encoded once per distinct decision and callback URL."""
        callback = self.callback_url
        bodies = self._bodies
        if callback != self._bodies_callback:  # the default callbackUri was changed
            bodies.clear()
            self._bodies_callback = callback
        body = bodies.get(decision)  # decisions are frozen and validated: always hashable
        if body is not None:
            return body
        body = _encode_json(decision.to_graph(callback)).encode()
        if len(bodies) >= _BODY_CACHE_SIZE:
            bodies.clear()
        bodies[decision] = body
        return body

    async def hang_up(
        self,
        call_id: str,
        *,
        tenant_id: str | None = None,
        deadline: float | None = None,
        scenario_id: str | None = None,
    ) -> GraphResult:
        """Hang up the bot's leg of ``call_id`` (``DELETE``); a call already gone is success."""
        return await self._request(
            "hang_up", "DELETE", call_id, "", None, tenant_id, deadline, scenario_id, gone_ok=True
        )

    async def keep_alive(
        self,
        call_id: str,
        *,
        tenant_id: str | None = None,
        deadline: float | None = None,
        scenario_id: str | None = None,
    ) -> GraphResult:
        """Tell Graph the bot still holds ``call_id``; :class:`CallGoneError` once it is gone."""
        return await self._request(
            "keep_alive", "POST", call_id, "/keepAlive", None, tenant_id, deadline, scenario_id
        )

    # -- actions after the answer ---------------------------------------------------------

    async def subscribe_to_tone(
        self,
        call_id: str,
        *,
        client_context: str | None = None,
        tenant_id: str | None = None,
        deadline: float | None = None,
        scenario_id: str | None = None,
    ) -> Operation:
        """Ask Graph to report the caller's key presses (``POST .../subscribeToTone``)."""
        return await self.run_action(
            call_id,
            "subscribeToTone",
            context_body,
            client_context=client_context,
            tenant_id=tenant_id,
            deadline=deadline,
            scenario_id=scenario_id,
        )

    async def cancel_media_processing(
        self,
        call_id: str,
        *,
        client_context: str | None = None,
        tenant_id: str | None = None,
        deadline: float | None = None,
        scenario_id: str | None = None,
    ) -> Operation:
        """Cancel every queued or running prompt and recording of ``call_id``.

        Each cancelled operation then ends ``failed`` with 400/8508."""
        return await self.run_action(
            call_id,
            "cancelMediaProcessing",
            context_body,
            client_context=client_context,
            tenant_id=tenant_id,
            deadline=deadline,
            scenario_id=scenario_id,
        )

    async def mute(
        self,
        call_id: str,
        *,
        client_context: str | None = None,
        tenant_id: str | None = None,
        deadline: float | None = None,
        scenario_id: str | None = None,
    ) -> Operation:
        """Mute the bot in ``call_id`` (``POST .../mute``)."""
        return await self.run_action(
            call_id,
            "mute",
            context_body,
            client_context=client_context,
            tenant_id=tenant_id,
            deadline=deadline,
            scenario_id=scenario_id,
        )

    async def unmute(
        self,
        call_id: str,
        *,
        client_context: str | None = None,
        tenant_id: str | None = None,
        deadline: float | None = None,
        scenario_id: str | None = None,
    ) -> Operation:
        """Unmute the bot in ``call_id`` (``POST .../unmute``)."""
        return await self.run_action(
            call_id,
            "unmute",
            context_body,
            client_context=client_context,
            tenant_id=tenant_id,
            deadline=deadline,
            scenario_id=scenario_id,
        )

    async def run_action(
        self,
        call_id: str,
        action: str,
        render: Callable[[str], Mapping[str, Any]],
        *,
        client_context: str | None = None,
        tenant_id: str | None = None,
        deadline: float | None = None,
        scenario_id: str | None = None,
    ) -> Operation:
        """POST ``render(client_context)`` to ``.../{action}`` and return the operation.

        ``client_context`` is generated when not given. Raises :class:`CallGoneError` when
        the call no longer exists, another :class:`GraphResponseError` for any other error
        response, and :class:`GraphError` when Graph could not be reached in time.
        """
        context = client_context if client_context is not None else _new_client_context()
        body = _encode_json(render(context)).encode()
        result, raw, location = await self._exchange(
            action,
            "POST",
            self._call_url(call_id, "/" + action, action),
            call_id,
            body,
            tenant_id,
            deadline,
            scenario_id,
        )
        fields = read_operation(_json_or_none(raw))
        if fields is None:
            return Operation(
                call_id, action, context, _last_segment(location), None, None, None, location,
                result,
            )  # fmt: skip
        return Operation(
            call_id,
            action,
            context,
            fields.operation_id or _last_segment(location),
            fields.status,
            fields.result,
            fields.completion_reason,
            location,
            result,
            fields.recording_location,
            fields.recording_access_token,
        )

    async def transfer(
        self,
        call_id: str,
        request: Transfer,
        *,
        client_context: str | None = None,
        tenant_id: str | None = None,
        deadline: float | None = None,
        scenario_id: str | None = None,
    ) -> GraphResult:
        """Transfer ``call_id`` (``POST .../transfer``, 202); the outcome comes as states."""
        context = client_context if client_context is not None else _new_client_context()
        body = _encode_json(request.to_graph(context)).encode()
        return await self._request(
            "transfer", "POST", call_id, "/transfer", body, tenant_id, deadline, scenario_id
        )

    async def create_call(
        self,
        request: OutgoingCall | JoinMeeting,
        *,
        tenant_id: str | None = None,
        deadline: float | None = None,
        scenario_id: str | None = None,
    ) -> CreatedCall:
        """Place an outgoing call or join a meeting (``POST /communications/calls``, 201).

        The call's ``callbackUri`` is the request's own, else the client's ``callback_url``;
        the token is for ``tenant_id``, else the request's tenant. Raises :class:`GraphError`
        when the reply names no call id, and like :meth:`run_action` otherwise.
        """
        body = _encode_json(request.to_graph(self.callback_url)).encode()
        if tenant_id is None:
            if isinstance(request, OutgoingCall):
                tenant_id = request.tenant_id
            else:
                tenant_id = request.meeting.tenant_id
        result, raw, location = await self._exchange(
            "create_call",
            "POST",
            self._calls_url.with_path(self._calls_path.rstrip("/"), encoded=True),
            "(new)",
            body,
            tenant_id,
            deadline,
            scenario_id,
        )
        data = _json_or_none(raw)
        call_id, state, participant_id, chain_id = read_call(data)
        call_id = call_id or _last_segment(location)
        if call_id is None:
            raise GraphError(
                f"Graph answered {result.status} to create a call but named no call id; "
                "expected a call resource with an id or a Location header"
            )
        named = data.get("tenantId") if isinstance(data, dict) else None
        if isinstance(named, str) and named:
            owner: str | None = named
        else:
            owner = _token_tenant(await self._tokens.get_token(tenant_id)) or tenant_id
        return CreatedCall(
            canonical_call_id(call_id), state, participant_id, chain_id, location, result, owner
        )

    async def download_recording(
        self,
        location: str,
        access_token: str,
        *,
        max_bytes: int = 16 * 1024 * 1024,
        deadline: float | None = None,
        call_id: str = "(recording)",
    ) -> bytes:
        """GET a recording from ``location`` with ``Authorization: Bearer <access_token>``.

        Only an https ``location`` on a host of ``recording_hosts`` is fetched (or one on the
        origin of a loopback Graph); anything else raises :class:`GraphError` before a
        connection is tried, and so does a host that resolves to an address that is not
        public. Raises :class:`~callflow.errors.RecordingTooLargeError` past ``max_bytes``
        (counted after decompression), and like :meth:`run_action` otherwise (with retries
        within ``deadline``). The token is never logged.
        """
        url = self._recording_url(location)
        _, raw, _ = await self._exchange(
            "download_recording",
            "GET",
            url,
            call_id,
            None,
            None,
            deadline,
            None,
            bearer=access_token,
            max_bytes=max_bytes,
        )
        return raw

    def _recording_url(self, location: str) -> URL:
        """``location`` as a URL the recording may be fetched from; GraphError otherwise."""
        try:
            url = URL(location)
            host = _host_of(url)
            shown = str(url.with_user(None).with_query(None).with_fragment(None))
        except (TypeError, ValueError):
            url, host, shown = None, "", "(not a URL)"
        reason: str | None = None
        if url is None or url.scheme not in ("http", "https") or not host:
            reason = "it is not an absolute http(s) URL"
        elif url.raw_user is not None or url.raw_password is not None:
            reason = "it carries credentials"
        elif (url.scheme, host, url.port) == self._loopback_origin:
            return url  # a loopback Graph's own origin (tests, FakeGraph)
        elif url.scheme != "https":
            reason = "it is not https"
        elif _is_ip_address(host):
            reason = f"its host {host} is an IP address"
        elif not self._recording_hosts.allows(host):
            reason = f"its host {host!r} is not in CALLFLOW_RECORDING_HOSTS"
        if reason is None:
            assert url is not None
            return url
        raise GraphError(
            f"recording location {shown} refused: {reason}; expected an https URL on a host "
            f"of CALLFLOW_RECORDING_HOSTS ({', '.join(self._recording_hosts.hosts)}). "
            "Nothing was sent."
        )

    def _call_url(self, call_id: str, suffix: str, op: str = "request") -> URL:
        """The URL of ``suffix`` on ``call_id``; GraphError (nothing sent) for an id that is
        not a Graph call id (a path segment like ``..`` or ``a/b`` never reaches a URL)."""
        if not isinstance(call_id, str) or not _SEGMENT(call_id):
            raise GraphError(
                f"{op}: call id {str(call_id)[:40]!r} ({len(str(call_id))} characters) is not "
                "a Graph call id; expected at most 128 characters of A-Z a-z 0-9 - _ ~ . "
                "(not starting with a dot). Nothing was sent."
            )
        return self._calls_url.with_path(self._calls_path + call_id + suffix, encoded=True)

    async def deliver(self, call: IncomingCall, decision: Decision, deadline: float) -> GraphResult:
        """Send ``decision`` for ``call`` before ``deadline`` (the decision-sink interface)."""
        return await self.decide(
            call.call_id, decision, tenant_id=call.tenant_id, deadline=deadline
        )

    async def _request(
        self,
        op: str,
        method: str,
        call_id: str,
        suffix: str,
        body: bytes | None,
        tenant_id: str | None,
        deadline: float | None,
        scenario_id: str | None,
        *,
        gone_ok: bool = False,
    ) -> GraphResult:
        url = self._call_url(call_id, suffix, op)
        reply = await self._exchange(
            op, method, url, call_id, body, tenant_id, deadline, scenario_id, gone_ok=gone_ok
        )
        return reply[0]

    async def _exchange(
        self,
        op: str,
        method: str,
        url: URL,
        call_id: str,
        body: bytes | None,
        tenant_id: str | None,
        deadline: float | None,
        scenario_id: str | None,
        *,
        gone_ok: bool = False,
        bearer: str | None = None,
        max_bytes: int | None = None,
    ) -> tuple[GraphResult, bytes, str | None]:
        """Send one request with retries; return the result, the body and ``Location``."""
        session = self._session
        if session is None:
            raise GraphError(
                f"GraphClient is not open ({op} for call {call_id}); "
                "expected `async with GraphClient(...)` around its use"
            )
        scenario = scenario_id or _new_uuid()
        error: GraphError | None = None
        cause: BaseException | None = None
        status: int | None = None
        attempt = 0
        while True:
            attempt += 1
            budget = self._request_timeout
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    if error is None:
                        error = GraphError(
                            f"{op} for call {call_id} not sent: its deadline passed "
                            f"{-left * 1000:.0f} ms ago; expected a deadline in the future"
                        )
                    self._abandon(op, call_id, status, attempt - 1, "deadline", 0.0)
                    raise error from cause
                budget = min(budget, left)
            client_request_id = _new_uuid()
            retry_after: float | None = None
            try:
                async with _AttemptTimeout(budget):
                    token = bearer
                    if token is None:
                        token = await self._tokens.get_token(tenant_id)
                    headers = {
                        "Authorization": "Bearer " + token,
                        "Client-Request-Id": client_request_id,
                        "Scenario-Id": scenario,
                    }
                    if max_bytes is not None:
                        headers["Accept"] = "*/*"
                    async with session.request(
                        method, url, data=body, headers=headers, allow_redirects=False
                    ) as response:
                        status = response.status
                        if status >= 300:
                            limit = ERROR_BODY_LIMIT
                        elif max_bytes is not None:
                            limit = max_bytes
                            _refuse_declared_length(response, max_bytes, op, call_id)
                        else:
                            limit = REPLY_BODY_LIMIT
                        raw, cut = await _read_body(response, limit)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = None
                self._report(op, None, attempt)
                if isinstance(exc, TimeoutError):
                    reason = f"no answer within {budget:.3f} s"
                else:
                    reason = f"{type(exc).__name__}: {exc}"
                error = GraphError(
                    f"{method} {op} for call {call_id} failed on attempt {attempt} ({reason}); "
                    "expected an HTTP response from Graph"
                )
                cause = exc
            else:
                self._report(op, status, attempt)
                request_id = response.headers.get("request-id") or None
                if cut:
                    if max_bytes is not None and status < 300:
                        raise _too_large(op, call_id, max_bytes)
                    log.warning(
                        "graph.body_cut_off", op=op, call_id=call_id, status=status, limit=limit
                    )
                if status < 300:
                    if cut:
                        raw = b""  # unparsable once cut: treated as a reply without a body
                    return (
                        GraphResult(status, attempt, request_id, client_request_id),
                        raw,
                        response.headers.get("Location"),
                    )
                error = _response_error(
                    status, raw, request_id, response.reason, limit if cut else None
                )
                cause = None
                if isinstance(error, CallGoneError):
                    log.info(
                        "graph.call_gone",
                        op=op,
                        call_id=call_id,
                        status=status,
                        code=error.code,
                        request_id=error.request_id,
                    )
                    if gone_ok:
                        return (
                            GraphResult(status, attempt, error.request_id, client_request_id),
                            raw,
                            None,
                        )
                    raise error
                if status not in RETRY_STATUSES:
                    raise error
                header = response.headers.get("Retry-After")
                if header is not None:
                    retry_after = _parse_retry_after(header)

            wait = retry_after if retry_after is not None else self._backoff_wait(attempt)
            if attempt >= self._max_attempts:
                self._abandon(op, call_id, status, attempt, "max_attempts", wait)
                raise error from cause
            if deadline is not None and time.monotonic() + wait > deadline - SEND_ALLOWANCE:
                self._abandon(op, call_id, status, attempt, "deadline", wait)
                raise error from cause
            log.warning(
                "graph.retry", op=op, call_id=call_id, status=status, attempt=attempt, wait=wait
            )
            await asyncio.sleep(wait)

    def _backoff_wait(self, attempt: int) -> float:
        """Jittered exponential backoff: in [max(low, cap/2), cap], cap = min(high, low*2^n)."""
        low, high = self._backoff
        cap = min(high, low * 2.0**attempt)
        return random.uniform(max(low, cap / 2), cap)

    def _report(self, op: str, status: int | None, attempt: int) -> None:
        hook = self._on_request
        if hook is not None:
            try:
                hook(op, status, attempt)
            except Exception:
                log.exception("graph.on_request_failed", op=op, status=status, attempt=attempt)

    def _abandon(
        self, op: str, call_id: str, status: int | None, attempt: int, reason: str, wait: float
    ) -> None:
        log.warning(
            "graph.retry_abandoned",
            op=op,
            call_id=call_id,
            status=status,
            attempt=attempt,
            reason=reason,
            wait=wait,
        )


_UUID_KEEP: Final = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID_V4: Final = (0x4 << 76) | (0x2 << 62)  # version 4, RFC 4122 variant
# A generator of our own, seeded from the OS: a bot that seeds the `random` module (for its
# tests, say) must not make request ids repeat. Reseeded in a forked child, like `random`'s.
_ids: Final = random.Random()
os.register_at_fork(after_in_child=_ids.seed)
_random_bits: Final = _ids.getrandbits


def _token_tenant(token: str) -> str | None:
    """The tenant (``tid``) an app token was issued for, read without verifying it (it is
    this bot's own token, from its identity provider); None when it is not a readable JWT."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    tid = claims.get("tid")
    return tid if isinstance(tid, str) and tid else None


def _new_uuid() -> str:
    """A random (version 4) UUID string.

    The bits come from a pseudo-random generator seeded from the OS, not from the OS for each
    id: these ids tell requests apart in Graph's logs and need not be unpredictable, and a
    system call per id costs more on a busy worker than the rest of this function.
    """
    h = f"{(_random_bits(128) & _UUID_KEEP) | _UUID_V4:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _new_client_context() -> str:
    """A ``clientContext``: a version 4 UUID from the OS's cryptographic generator.

    Unlike request ids, a client context is what an operation's result is matched by, so it
    must not be predictable from the ids seen before it (as the generator behind
    :func:`_new_uuid` would make it); operations are rare enough for a system call each.
    """
    return str(uuid.UUID(bytes=secrets.token_bytes(16), version=4))


def _ssl_context(ca_bundle: str) -> ssl.SSLContext:
    """A verifying TLS context trusting the system CAs plus those in ``ca_bundle``."""
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"ca_bundle={ca_bundle!r} could not be loaded ({exc}); expected a PEM file of CAs"
        ) from exc
    return context


def _response_error(
    status: int,
    raw: bytes,
    request_id: str | None,
    reason: str | None,
    cut_at: int | None = None,
) -> GraphResponseError:
    """Build the error for a non-2xx answer from Graph's ``{"error": {...}}`` body, if any;
    ``cut_at`` says the body was cut off after that many bytes (and is said in the message)."""
    code: str | None = None
    message: str | None = None
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        if error.get("code") is not None:
            code = str(error["code"])
        if isinstance(error.get("message"), str):
            message = error["message"]
        inner = error.get("innerError")
        if request_id is None and isinstance(inner, dict):
            inner_id = inner.get("request-id")
            request_id = inner_id if isinstance(inner_id, str) else None
    if message is None:
        text = raw[:_ERROR_TEXT_LIMIT].decode("utf-8", "replace").strip()
        message = text or f"HTTP {status} {reason or ''}".rstrip()
    if cut_at is not None:
        message += f" (the error body was cut off after {cut_at} bytes)"
    cls = CallGoneError if status == 404 or code == _CALL_GONE_CODE else GraphResponseError
    return cls(status, code, message, request_id)


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _too_large(op: str, call_id: str, max_bytes: int) -> RecordingTooLargeError:
    return RecordingTooLargeError(
        f"{op} for call {call_id}: the body is larger than max_bytes={max_bytes}"
    )


def _refuse_declared_length(
    response: aiohttp.ClientResponse, max_bytes: int, op: str, call_id: str
) -> None:
    """Refuse, before reading, an uncompressed body whose Content-Length is past the limit."""
    length = response.content_length
    if length is not None and length > max_bytes and "Content-Encoding" not in response.headers:
        raise _too_large(op, call_id, max_bytes)


async def _read_body(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The body of ``response`` and whether it was cut off: at most ``limit`` bytes, counted
    after decompression. The rest of a longer body is not read (its connection is closed).

    A body whose Content-Length is within the limit, not compressed, is read in one go (the
    parser stops at its length): a decision's empty 202 costs what ``read()`` costs.
    """
    length = response.content_length
    if length is not None and length <= limit and "Content-Encoding" not in response.headers:
        return await response.read(), False
    content = response.content
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await content.read(min(_READ_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)
        size += len(chunk)
    response.close()
    return b"".join(chunks)[:limit], True


def _host_of(url: URL) -> str:
    """The host of ``url`` as it is resolved: IDNA-encoded, lower case, no trailing dot."""
    return (url.raw_host or "").lower().rstrip(".")


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _PublicResolver(AbstractResolver):
    """aiohttp's resolver, refusing for every host but Graph's own a name that resolves to an
    address that is not public (loopback, private, link-local...).

    Only Graph's host and recording hosts are ever connected to, so this is what stops a
    recording host (or a name made to look like one) from leading to the bot's own network,
    DNS rebinding included: the addresses checked are the ones the connection is made to.
    """

    def __init__(self, inner: AbstractResolver, graph_host: str) -> None:
        self._inner = inner
        self._graph_host = graph_host

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if host.lower().rstrip(".") != self._graph_host:
            for result in results:
                if not is_public_address(result["host"]):
                    raise GraphError(
                        f"recording host {host!r} refused: it resolves to {result['host']}, "
                        "which is not a public address (loopback, private or link-local); "
                        "expected a host of CALLFLOW_RECORDING_HOSTS on the internet. "
                        "Nothing was sent."
                    )
        return results

    async def close(self) -> None:
        await self._inner.close()


def _parse_retry_after(value: str) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or HTTP-date); None if invalid."""
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _last_segment(location: str | None) -> str | None:
    """The last path segment of a ``Location`` URL (an operation or call id), if any."""
    if not location:
        return None
    return location.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or None
