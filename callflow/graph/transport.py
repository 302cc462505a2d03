"""The HTTP transport to Microsoft Graph: every request the client sends, with one retry policy.

Runs on the event loop that opened it (the I/O loop; a second client may live in another
thread's loop) and runs no user code. It touches the network through one keep-alive
:class:`aiohttp.ClientSession` (its TLS context and DNS resolver) and the
:class:`~callflow.graph.tokens.TokenProvider`. :class:`~callflow.graph.client.GraphClient`
builds each request (URL, body) and reads each reply; this module sends it and hands back
the status, body and ``Location``.

Every request carries a bearer token from the token provider (or the caller's own, for a
recording), a fresh ``Client-Request-Id`` per attempt and one ``Scenario-Id`` for all attempts
of a request.

Retries (429, 503, 504, connection errors and timeouts) honour ``Retry-After`` or back off
exponentially with jitter, and never run past the caller's ``deadline`` (an absolute
``time.monotonic()`` value): each attempt is bounded by what is left of it, and a retry that
could not be sent before it is not made; the last error is raised at once instead.

Every response body is read through one bounded reader, counted after decompression: error
bodies to 64 KiB, replies to 1 MiB (the rest is cut off, logged as ``graph.body_cut_off``),
recordings to the caller's ``max_bytes``. An error reply becomes a
:class:`~callflow.errors.GraphResponseError` (:class:`~callflow.errors.CallGoneError` when the
call no longer exists), no reply a :class:`~callflow.errors.GraphError`. Every host but
Graph's own (that is, a recording host) is connected to only if its name resolves to public
addresses; see :mod:`callflow._hosts`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import random
import socket
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult

import callflow._tracing as _tracing
from callflow._hosts import is_public_address
from callflow.errors import (
    CallGoneError,
    ConfigError,
    GraphError,
    GraphResponseError,
    RecordingTooLargeError,
)
from callflow.graph.results import GraphResult

if TYPE_CHECKING:
    from types import TracebackType

    from yarl import URL

    from callflow.graph.tokens import TokenProvider

__all__ = [
    "ERROR_BODY_LIMIT",
    "REPLY_BODY_LIMIT",
    "RETRY_STATUSES",
    "SEND_ALLOWANCE",
    "OnRequest",
    "Transport",
    "host_of",
    "transport_problems",
]

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
_NO_CLIENT_TIMEOUT: Final = aiohttp.ClientTimeout()  # attempts are bounded by _AttemptTimeout
# Sent with every request as session defaults, so each request builds only its own three.
_JSON_HEADERS: Final = {"Content-Type": "application/json", "Accept": "application/json"}


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


class Transport:
    """Sends requests to Graph over one keep-alive HTTP session, with retries.

    :meth:`open` creates the session in the running event loop (it belongs to that loop);
    :meth:`close` closes it. :meth:`exchange` sends one request with the retry policy of this
    module. The settings are those of :class:`~callflow.graph.client.GraphClient`, checked by
    :func:`transport_problems`; ``graph_host`` is the one host connected to whatever it
    resolves to (see :func:`host_of`).
    """

    def __init__(
        self,
        *,
        tokens: TokenProvider,
        graph_host: str,
        ca_bundle: str | None,
        request_timeout: float,
        max_connections: int,
        max_attempts: int,
        backoff: tuple[float, float],
        on_request: OnRequest | None,
    ) -> None:
        low, high = backoff
        self._tokens = tokens
        self._graph_host = graph_host
        self._ssl: ssl.SSLContext | bool = _ssl_context(ca_bundle) if ca_bundle else True
        self._request_timeout = float(request_timeout)
        self._max_connections = max_connections
        self._max_attempts = max_attempts
        self._backoff = (float(low), float(high))
        self._on_request = on_request
        self._session: aiohttp.ClientSession | None = None
        self._resolver: AbstractResolver | None = None

    async def open(self) -> None:
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
            connector=connector,
            timeout=_NO_CLIENT_TIMEOUT,
            headers=_JSON_HEADERS,
            # While tracing is on, a client span per request (none otherwise: no cost).
            trace_configs=_tracing.http_trace_configs() or None,
        )

    async def close(self) -> None:
        """Close the HTTP session and its connections."""
        session, self._session = self._session, None
        resolver, self._resolver = self._resolver, None
        try:
            if session is not None:
                await session.close()
        finally:
            if resolver is not None:
                await resolver.close()

    async def exchange(
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
        """Send one request with retries; return the result, the body and ``Location``.

        ``op`` and ``call_id`` name the request in errors, logs and ``on_request``. The token
        is the provider's for ``tenant_id`` unless ``bearer`` is given. With ``gone_ok`` a
        call that no longer exists is a result (its status), not :class:`CallGoneError`;
        ``max_bytes`` reads the reply as a download of at most that many bytes (any type).
        """
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
            # A retry is routine (Graph asked to come back later): info. One given up is
            # the warning (graph.retry_abandoned).
            log.info(
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


def transport_problems(
    request_timeout: float,
    max_connections: int,
    max_attempts: int,
    backoff: tuple[float, float],
) -> list[str]:
    """What is wrong with these :class:`Transport` settings, one line each; empty when none."""
    problems: list[str] = []
    if not request_timeout > 0:
        problems.append(f"request_timeout={request_timeout!r}: expected seconds > 0")
    if max_connections < 1:
        problems.append(f"max_connections={max_connections!r}: expected an integer >= 1")
    if max_attempts < 1:
        problems.append(f"max_attempts={max_attempts!r}: expected an integer >= 1")
    low, high = backoff
    if not 0 <= low <= high:
        problems.append(f"backoff={backoff!r}: expected (min, max) seconds, 0 <= min <= max")
    return problems


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


def host_of(url: URL) -> str:
    """The host of ``url`` as it is resolved: IDNA-encoded, lower case, no trailing dot."""
    return (url.raw_host or "").lower().rstrip(".")


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
