"""Call control against Microsoft Graph: answer, reject, redirect, hang up, keep alive.

A :class:`GraphClient` owns one keep-alive :class:`aiohttp.ClientSession`, created in the
event loop that enters it (``async with GraphClient(...) as graph``); a second client may live
in another thread's loop. Every request carries a bearer token from the
:class:`~callflow.graph._tokens.TokenProvider`, a fresh ``Client-Request-Id`` per attempt and
one ``Scenario-Id`` for all attempts of a request.

Retries (429, 503, 504, connection errors and timeouts) honour ``Retry-After`` or back off
exponentially with jitter, and never run past the caller's ``deadline`` (an absolute
``time.monotonic()`` value): each attempt is bounded by what is left of it, and a retry that
could not be sent before it is not made; the last error is raised at once instead.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import random
import re
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Self

import aiohttp
import attrs
import structlog
from yarl import URL

from ..errors import CallGoneError, ConfigError, GraphError, GraphResponseError

if TYPE_CHECKING:
    from types import TracebackType

    from ..decisions import Answer, Decision, Redirect, Reject
    from ..events import IncomingCall
    from ._tokens import TokenProvider

__all__ = ["GraphClient", "GraphResult"]

log = structlog.get_logger(__name__)

RETRY_STATUSES: Final = frozenset({429, 503, 504})
"""Statuses that are retried (after ``Retry-After`` or a backoff); all others raise at once."""

SEND_ALLOWANCE: Final = 0.05
"""Seconds a retry needs before the deadline to be worth sending; later retries are abandoned."""

_CALL_GONE_CODE: Final = "8522"
_DNS_CACHE_TTL: Final = 300
_ERROR_TEXT_LIMIT: Final = 300
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
    ``ca_bundle`` is a PEM file of extra CAs to trust besides the system ones. ``on_request``
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
        if problems:
            raise ConfigError("invalid GraphClient settings: " + "; ".join(problems))

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
        self._session: aiohttp.ClientSession | None = None
        self._bodies: dict[Decision, bytes] = {}
        self._bodies_callback: str | None = callback_url

    async def __aenter__(self) -> Self:
        """Open the HTTP session in the running event loop."""
        if self._session is not None:
            raise GraphError("GraphClient is already open; expected one `async with` at a time")
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=self._max_connections,
            ttl_dns_cache=_DNS_CACHE_TTL,
            ssl=self._ssl,
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
        if session is not None:
            await session.close()

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

    async def answer(
        self,
        call_id: str,
        answer: Answer,
        *,
        tenant_id: str | None = None,
        deadline: float | None = None,
        scenario_id: str | None = None,
    ) -> GraphResult:
        """Answer ``call_id``; see :meth:`decide`."""
        return await self.decide(
            call_id, answer, tenant_id=tenant_id, deadline=deadline, scenario_id=scenario_id
        )

    async def reject(
        self,
        call_id: str,
        reject: Reject,
        *,
        tenant_id: str | None = None,
        deadline: float | None = None,
        scenario_id: str | None = None,
    ) -> GraphResult:
        """Reject ``call_id``; see :meth:`decide`."""
        return await self.decide(
            call_id, reject, tenant_id=tenant_id, deadline=deadline, scenario_id=scenario_id
        )

    async def redirect(
        self,
        call_id: str,
        redirect: Redirect,
        *,
        tenant_id: str | None = None,
        deadline: float | None = None,
        scenario_id: str | None = None,
    ) -> GraphResult:
        """Redirect ``call_id``; see :meth:`decide`."""
        return await self.decide(
            call_id, redirect, tenant_id=tenant_id, deadline=deadline, scenario_id=scenario_id
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
        session = self._session
        if session is None:
            raise GraphError(
                f"GraphClient is not open ({op} for call {call_id}); "
                "expected `async with GraphClient(...)` around its use"
            )
        if not isinstance(call_id, str) or not _SEGMENT(call_id):
            raise GraphError(
                f"{op}: call id {str(call_id)[:40]!r} ({len(str(call_id))} characters) is not "
                "a Graph call id; expected at most 128 characters of A-Z a-z 0-9 - _ ~ . "
                "(not starting with a dot). Nothing was sent."
            )
        url = self._calls_url.with_path(self._calls_path + call_id + suffix, encoded=True)
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
                    token = await self._tokens.get_token(tenant_id)
                    headers = {
                        "Authorization": "Bearer " + token,
                        "Client-Request-Id": client_request_id,
                        "Scenario-Id": scenario,
                    }
                    async with session.request(
                        method, url, data=body, headers=headers, allow_redirects=False
                    ) as response:
                        status = response.status
                        raw = await response.read()
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
                if status < 300:
                    return GraphResult(status, attempt, request_id, client_request_id)
                error = _response_error(status, raw, request_id, response.reason)
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
                        return GraphResult(status, attempt, error.request_id, client_request_id)
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


def _new_uuid() -> str:
    """A random (version 4) UUID string.

    The bits come from a pseudo-random generator seeded from the OS, not from the OS for each
    id: these ids tell requests apart in Graph's logs and need not be unpredictable, and a
    system call per id costs more on a busy worker than the rest of this function.
    """
    h = f"{(_random_bits(128) & _UUID_KEEP) | _UUID_V4:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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
    status: int, raw: bytes, request_id: str | None, reason: str | None
) -> GraphResponseError:
    """Build the error for a non-2xx answer from Graph's ``{"error": {...}}`` body, if any."""
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
    cls = CallGoneError if status == 404 or code == _CALL_GONE_CODE else GraphResponseError
    return cls(status, code, message, request_id)


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
