"""Call control against Microsoft Graph: answer, reject, redirect, hang up, keep alive, a
call's current state, and the actions after the answer (prompts, recording, tones, mute,
invite, transfer, new calls).

Actions that Graph runs as an operation (``playPrompt``, ``recordResponse``, ...) answer 200
with the operation; each method returns it as an :class:`Operation` (its ``status`` says
whether it already finished; otherwise the result comes later as a notification). Every such
request carries a ``clientContext`` (from the OS's cryptographic generator unless given) to
correlate that notification.

A :class:`GraphClient` builds each request (its URL, body and token's tenant) and reads each
reply; :class:`~callflow.graph.transport.Transport` sends it, with the one retry policy and
the bounded reader all requests share. The client runs on the event loop that enters it
(``async with GraphClient(...) as graph``: the I/O loop; a second client may live in another
thread's loop) and runs no user code; it touches Graph through its transport and the
:class:`~callflow.graph.tokens.TokenProvider`.

A recording is fetched only from an https location on ``recording_hosts``
(``CALLFLOW_RECORDING_HOSTS``), never from an IP address, and only if its name resolves to
public addresses (checked by the transport); see :mod:`callflow._hosts`.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Self

import jwt
from yarl import URL

from callflow._hosts import DEFAULT_RECORDING_HOSTS, RecordingHosts, is_loopback
from callflow._parse import read_call, read_operation
from callflow.actions import JoinMeeting, OutgoingCall, Transfer, context_body
from callflow.errors import ConfigError, GraphError
from callflow.events import canonical_call_id
from callflow.graph.results import CallStatus, CreatedCall, GraphResult, Operation
from callflow.graph.transport import OnRequest, Transport, host_of, transport_problems

if TYPE_CHECKING:
    from types import TracebackType

    from callflow.decisions import Decision
    from callflow.events import IncomingCall
    from callflow.graph.tokens import TokenProvider

__all__ = ["CallStatus", "CreatedCall", "GraphClient", "GraphResult", "Operation"]

_encode_json: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_SEGMENT: Final = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,127}").fullmatch
"""An id that may be one segment of a Graph URL path: at most 128 unreserved characters, not
starting with a dot (so never ``.``, ``..``, ``/`` or ``%2F``); Graph's ids are GUIDs. The
same rule as the parser's ``CALL_ID_PATTERN``, checked again here, where ids meet URLs."""
_BODY_CACHE_SIZE: Final = 256
"""Encoded decision bodies kept per client: a bot sends the same few decisions again and again."""


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
        url, hosts = _checked(
            base_url, recording_hosts, request_timeout, max_connections, max_attempts, backoff
        )
        graph_host = host_of(url)
        self.callback_url = callback_url
        self._tokens = tokens
        self._transport = Transport(
            tokens=tokens,
            graph_host=graph_host,
            ca_bundle=ca_bundle,
            request_timeout=request_timeout,
            max_connections=max_connections,
            max_attempts=max_attempts,
            backoff=backoff,
            on_request=on_request,
        )
        self._calls_url = URL(str(url).rstrip("/") + "/communications/calls/", encoded=True)
        self._recordings = _RecordingLocations(hosts, url, graph_host)
        self._bodies = _DecisionBodies()

    @property
    def recording_hosts(self) -> tuple[str, ...]:
        """The hosts recordings are downloaded from (``*.`` for subdomains), normalized."""
        return self._recordings.hosts.hosts

    async def __aenter__(self) -> Self:
        """Open the HTTP session in the running event loop."""
        await self._transport.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the HTTP session and its connections."""
        await self._transport.close()

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
            self._bodies.encoded(decision, self.callback_url),
            tenant_id,
            deadline,
            scenario_id,
        )

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

    async def get_call(
        self,
        call_id: str,
        *,
        tenant_id: str | None = None,
        deadline: float | None = None,
        scenario_id: str | None = None,
    ) -> CallStatus:
        """Graph's current state of ``call_id`` (``GET``), to tell whether it is still alive.

        Raises :class:`CallGoneError` once Graph no longer knows the call, :class:`GraphError`
        when the reply names no state, and like :meth:`run_action` otherwise.
        """
        url = _call_url(self._calls_url, call_id, "", "get_call")
        result, raw, _ = await self._transport.exchange(
            "get_call", "GET", url, call_id, None, tenant_id, deadline, scenario_id
        )
        return _call_status(call_id, _json_or_none(raw), result)

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
        result, raw, location = await self._transport.exchange(
            action,
            "POST",
            _call_url(self._calls_url, call_id, "/" + action, action),
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
        result, raw, location = await self._transport.exchange(
            "create_call",
            "POST",
            self._calls_url.with_path(self._calls_url.raw_path.rstrip("/"), encoded=True),
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
        owner = _named_tenant(data)
        if owner is None:
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
        url = self._recordings.url(location)
        _, raw, _ = await self._transport.exchange(
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
        url = _call_url(self._calls_url, call_id, suffix, op)
        reply = await self._transport.exchange(
            op, method, url, call_id, body, tenant_id, deadline, scenario_id, gone_ok=gone_ok
        )
        return reply[0]


def _call_url(calls: URL, call_id: str, suffix: str, op: str) -> URL:
    """The URL of ``suffix`` on ``call_id`` under ``calls`` (``.../communications/calls/``);
    GraphError (nothing sent) for an id that is not a Graph call id (a path segment like
    ``..`` or ``a/b`` never reaches a URL)."""
    if not isinstance(call_id, str) or not _SEGMENT(call_id):
        raise GraphError(
            f"{op}: call id {str(call_id)[:40]!r} ({len(str(call_id))} characters) is not "
            "a Graph call id; expected at most 128 characters of A-Z a-z 0-9 - _ ~ . "
            "(not starting with a dot). Nothing was sent."
        )
    return calls.with_path(calls.raw_path + call_id + suffix, encoded=True)


class _DecisionBodies:
    """The JSON bodies of decisions, each encoded once per distinct decision and default
    ``callbackUri``: a bot sends the same few decisions again and again."""

    __slots__ = ("_bodies", "_callback")

    def __init__(self) -> None:
        self._bodies: dict[Decision, bytes] = {}
        self._callback: str | None = None

    def encoded(self, decision: Decision, callback: str | None) -> bytes:
        """The body of ``decision`` with ``callback`` as its default ``callbackUri``."""
        bodies = self._bodies
        if callback != self._callback:  # the default callbackUri was changed
            bodies.clear()
            self._callback = callback
        body = bodies.get(decision)  # decisions are frozen and validated: always hashable
        if body is not None:
            return body
        body = _encode_json(decision.to_graph(callback)).encode()
        if len(bodies) >= _BODY_CACHE_SIZE:
            bodies.clear()
        bodies[decision] = body
        return body


def _call_status(call_id: str, data: Any, request: GraphResult) -> CallStatus:
    """The status of ``call_id`` from Graph's reply to its GET; GraphError without a state."""
    _, state, _, _ = read_call(data)
    if state is None:
        raise GraphError(
            f"Graph answered {request.status} to get_call for call {call_id} but named no "
            "state; expected a call resource with a state"
        )
    return CallStatus(canonical_call_id(call_id), state, _named_tenant(data), request)


def _named_tenant(data: Any) -> str | None:
    """The ``tenantId`` a call resource names, if it names one."""
    named = data.get("tenantId") if isinstance(data, dict) else None
    return named if isinstance(named, str) and named else None


def _checked(
    base_url: str,
    recording_hosts: Sequence[str],
    request_timeout: float,
    max_connections: int,
    max_attempts: int,
    backoff: tuple[float, float],
) -> tuple[URL, RecordingHosts]:
    """Graph's URL and the recording hosts, once every setting is checked: ConfigError naming
    every bad one otherwise (nothing is built from settings that are partly wrong)."""
    problems: list[str] = []
    url = URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        problems.append(f"base_url={base_url!r}: expected an absolute http(s) URL")
    problems += transport_problems(request_timeout, max_connections, max_attempts, backoff)
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
    return url, hosts


class _RecordingLocations:
    """Where a recording may be downloaded from: an https location on an allowed host, never an
    IP address; with a loopback Graph (tests, FakeGraph), also Graph's own origin. Whether the
    host resolves to public addresses is the transport's check, made when it connects."""

    __slots__ = ("_loopback_origin", "hosts")

    def __init__(self, hosts: RecordingHosts, graph_url: URL, graph_host: str) -> None:
        self.hosts = hosts
        self._loopback_origin: tuple[str, str, int | None] | None = None
        if is_loopback(graph_host):  # tests, FakeGraph: recordings come from Graph's origin
            self._loopback_origin = (graph_url.scheme, graph_host, graph_url.port)

    def url(self, location: str) -> URL:
        """``location`` as a URL the recording may be fetched from; GraphError otherwise."""
        try:
            url = URL(location)
            host = host_of(url)
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
        elif not self.hosts.allows(host):
            reason = f"its host {host!r} is not in CALLFLOW_RECORDING_HOSTS"
        if reason is None:
            assert url is not None
            return url
        raise GraphError(
            f"recording location {shown} refused: {reason}; expected an https URL on a host "
            f"of CALLFLOW_RECORDING_HOSTS ({', '.join(self.hosts.hosts)}). "
            "Nothing was sent."
        )


def _token_tenant(token: str) -> str | None:
    """The tenant (``tid``) an app token was issued for, read without verifying it (it is
    this bot's own token, from its identity provider); None when it is not a readable JWT."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    tid = claims.get("tid")
    return tid if isinstance(tid, str) and tid else None


def _new_client_context() -> str:
    """A ``clientContext``: a version 4 UUID from the OS's cryptographic generator.

    Unlike request ids, a client context is what an operation's result is matched by, so it
    must not be predictable from the ids seen before it (as the generator behind the request
    ids, :func:`~callflow.graph.transport._new_uuid`, would make it); operations are rare
    enough for a system call each.
    """
    return str(uuid.UUID(bytes=secrets.token_bytes(16), version=4))


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _last_segment(location: str | None) -> str | None:
    """The last path segment of a ``Location`` URL (an operation or call id), if any."""
    if not location:
        return None
    return location.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or None
