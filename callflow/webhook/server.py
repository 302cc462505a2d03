"""The webhook's listening sockets, with limits that slow or idle clients cannot get around.

:func:`start_server` runs an aiohttp application on ``HOST:PORT`` with:

- ``HTTP_KEEPALIVE_TIMEOUT``: a connection that is idle, or has not sent a whole request
  (headers sent a byte at a time: slowloris), is closed after that many seconds;
- ``MAX_CONNECTIONS``: at the cap, a new connection closes the connection idle the longest
  with nothing waiting to be read (``callflow_connections_evicted_total``); when every
  connection is busy with a request, or the longest-idle ones all have a request waiting,
  the new one gets ``503`` with a JSON body and is closed
  (``callflow_connections_refused_total``);
- ``BODY_TIMEOUT``: :func:`read_body` gives a notification's body that long to arrive once its
  headers are in; the webhook then answers ``408`` and closes the connection.

A request aiohttp cannot even parse (a header over 8 KiB, a broken request line) gets its
``400`` from aiohttp; it is logged as one ``webhook.bad_request`` line (the exception's type
only, at most once a second per type, never the request's bytes).

Stopping (:func:`stop_runner`) stops accepting, lets the connections already accepted reach
their handlers, closes the listeners, then closes every connection: idle ones at once, those
inside a request once it is answered or after ``SHUTDOWN_TIMEOUT``.

``/metrics`` is never served on the webhook's listener: it has one of its own, on
``METRICS_HOST:METRICS_PORT`` (loopback by default; none with ``METRICS_PORT=off``).
:class:`WebhookServer` is what the bot keeps: the bound addresses and ``cleanup()``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import select
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import attrs
import structlog
from aiohttp import web

from callflow._log import Throttle
from callflow.errors import ConfigError

if TYPE_CHECKING:
    from aiohttp.web_protocol import RequestHandler

    from callflow.settings import Settings

__all__ = [
    "BACKLOG",
    "LINGERING_TIME",
    "SHUTDOWN_TIMEOUT",
    "BodyTimeoutError",
    "BodyTooLargeError",
    "ConnectionGuard",
    "ServerLimits",
    "ServerStats",
    "WebhookServer",
    "close_after",
    "read_body",
    "start_server",
    "stop_runner",
]

log = structlog.get_logger(__name__)

BACKLOG: Final = 1024
"""Connections the kernel queues before they are accepted."""
SHUTDOWN_TIMEOUT: Final = 2.0
"""Seconds stopping waits for the requests still being handled (a notification's reply takes
milliseconds). aiohttp's own 60 s would also be spent on a connection accepted just as the
listener stopped, which waits for a request that never comes."""
LINGERING_TIME: Final = 2.0
"""Seconds an unread request body is still drained after an early reply (413, 401, ...), so
that the client reads the reply rather than a reset; then the connection is closed."""


@attrs.frozen
class ServerLimits:
    """The limits of the webhook's server; see the module docstring."""

    keepalive_timeout: float = 75.0
    max_connections: int = 1_000
    body_timeout: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        """The limits ``HTTP_KEEPALIVE_TIMEOUT``, ``MAX_CONNECTIONS``, ``BODY_TIMEOUT`` name."""
        return cls(
            keepalive_timeout=settings.http_keepalive_timeout,
            max_connections=settings.max_connections,
            body_timeout=settings.body_timeout,
        )


class ServerStats:
    """Connection counters of one server (read by the metrics at scrape time)."""

    __slots__ = ("evicted", "open", "refused")

    def __init__(self) -> None:
        self.open = 0
        """Connections open now."""
        self.evicted = 0
        """Idle connections closed to make room for a new one."""
        self.refused = 0
        """Connections refused with 503 because every connection was busy."""


_REFUSAL: Final = json.dumps(
    {
        "error": {
            "code": "too_many_connections",
            "message": "every connection this worker allows (CALLFLOW_MAX_CONNECTIONS) is busy "
            "with a request; retry",
        }
    }
).encode()
_REFUSED: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_REFUSAL)).encode() + b"\r\n\r\n" + _REFUSAL
)


_EVICTION_CANDIDATES: Final = 16
"""Idle connections looked at for one that can be closed for a new one."""


def _readable(fd: int) -> bool:
    """True when ``fd`` has bytes (or an end of stream) waiting to be read."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class ConnectionGuard:
    """Caps a server's open connections: evicts the longest-idle one for a new one, refuses
    (503) when every connection is busy with a request.

    :meth:`install` hooks the server's connection bookkeeping; :attr:`middleware` marks a
    connection busy while a request on it is being handled.
    """

    def __init__(self, limit: int, stats: ServerStats | None = None) -> None:
        if limit < 1:
            raise ValueError(f"limit={limit!r}: expected at least one connection")
        self.limit = limit
        self.stats = stats if stats is not None else ServerStats()
        self._idle: OrderedDict[RequestHandler, None] = OrderedDict()
        self._busy: set[RequestHandler] = set()

    def install(self, server: web.Server) -> None:
        """Hook ``server``'s ``connection_made``/``connection_lost`` (called for each
        connection by its request handler)."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self._opened(handler, transport)

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            self._closed(handler)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

        # A connection is busy from the moment its request is taken off the wire, not only
        # once the middleware runs: aiohttp hands the request to a task of its own first,
        # and a connection closed in between would lose the request without a reply.
        make_request = server.request_factory

        def request_factory(*args: Any, **kwargs: Any) -> Any:
            self._took(args[2])  # (message, payload, protocol, writer, task, ...)
            return make_request(*args, **kwargs)

        server.request_factory = request_factory

    def _opened(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        stats = self.stats
        if len(self._idle) + len(self._busy) >= self.limit:
            victim = self._quiet_idle()
            if victim is None:
                stats.refused += 1
                transport.write(_REFUSED)
                # Closed once the handler's own start-up has run (it is being set up now).
                asyncio.get_running_loop().call_soon(handler.force_close)
                return
            del self._idle[victim]
            stats.evicted += 1
            victim.force_close()
        self._idle[handler] = None
        stats.open = len(self._idle) + len(self._busy)

    def _quiet_idle(self) -> RequestHandler | None:
        """The longest-idle connection that has nothing waiting to be read, if any.

        An idle connection may carry a request this loop has not read yet (the loop is
        busy, the bytes sit in the socket or the parser): closing it would lose that
        request without a reply. Such connections are passed over; when the first few idle
        ones all have something waiting, the new connection is refused instead.
        """
        for handler in itertools.islice(self._idle, _EVICTION_CANDIDATES):
            if getattr(handler, "_messages", None):  # parsed, not yet handled
                continue
            transport = handler.transport
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is not None and _readable(sock.fileno()):
                continue
            return handler
        return None

    def _took(self, handler: RequestHandler) -> None:
        """``handler``'s connection has a request to handle: not idle any more."""
        if handler in self._idle:
            del self._idle[handler]
            self._busy.add(handler)

    def _closed(self, handler: RequestHandler) -> None:
        self._idle.pop(handler, None)
        self._busy.discard(handler)
        self.stats.open = len(self._idle) + len(self._busy)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Mark the request's connection busy while the request is handled."""
        connection = request.protocol
        tracked = connection in self._idle or connection in self._busy
        if connection in self._idle:
            del self._idle[connection]
            self._busy.add(connection)
        try:
            return await handler(request)
        finally:
            if tracked and connection in self._busy:  # still open: idle again, the newest
                self._busy.discard(connection)
                self._idle[connection] = None


class _ProtocolErrors(logging.Handler):
    """Turns aiohttp's protocol-level error records into rate-limited structlog lines that
    name the error's type, never its message (it may quote the request's bytes)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._throttle = Throttle(1.0)

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        kind = type(exc).__name__ if exc is not None else "message"
        suppressed = self._throttle.admit(kind)
        if suppressed is not None:
            log.warning(
                "webhook.bad_request",
                error=kind,
                status=getattr(exc, "code", None),
                suppressed=suppressed,
            )


def _protocol_logger() -> logging.Logger:
    """A logger of its own (not in the logging tree) for the webhook's request handlers."""
    logger = logging.Logger("callflow.webhook.protocol", logging.WARNING)
    logger.addHandler(_ProtocolErrors())
    logger.propagate = False
    return logger


class WebhookServer:
    """The running webhook (and metrics) listeners; ``addresses`` and ``cleanup()`` as an
    :class:`aiohttp.web.AppRunner` has them."""

    def __init__(
        self,
        runner: web.AppRunner,
        stats: ServerStats,
        metrics_runner: web.AppRunner | None = None,
    ) -> None:
        self.runner = runner
        self.stats = stats
        self.metrics_runner = metrics_runner

    @property
    def addresses(self) -> list[Any]:
        """The webhook's bound addresses."""
        return self.runner.addresses

    @property
    def metrics_url(self) -> str | None:
        """``http://HOST:PORT/metrics`` of the separate metrics listener; None without one."""
        if self.metrics_runner is None:
            return None
        host, port = self.metrics_runner.addresses[0][:2]
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/metrics"

    async def cleanup(self) -> None:
        """Stop listening and close every connection."""
        try:
            await stop_runner(self.runner)
        finally:
            if self.metrics_runner is not None:
                await stop_runner(self.metrics_runner)


_ACCEPT_TURNS: Final = 3
"""Loop iterations waited for the connections the loop has just accepted to reach their
handlers: two (the task that sets one up starts in the next iteration, the handler hears of
it in the one after), and one to spare."""


async def stop_runner(runner: web.BaseRunner) -> None:
    """``runner.cleanup()``, without leaving open a connection accepted as it stops.

    asyncio's selector loop accepts a connection in one iteration and sets up its transport
    in a task of its own: a listener closed in between makes that set-up fail, and the
    accepted socket stays open, unanswered, until it is garbage collected (CPython issue
    109564). So the listeners stop accepting first; once every accepted connection has its
    handler, closing them refuses only what the kernel still queues, and the cleanup closes
    the connections (idle at once, busy after ``SHUTDOWN_TIMEOUT``).
    """
    loop = asyncio.get_running_loop()
    if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        for site in runner.sites:
            listener = getattr(site, "_server", None)  # the site's asyncio.Server
            for sock in getattr(listener, "sockets", None) or ():
                loop.remove_reader(sock.fileno())
        for _ in range(_ACCEPT_TURNS):
            await asyncio.sleep(0)
    await runner.cleanup()


async def _listen(app: web.Application, host: str, port: int, **options: Any) -> web.AppRunner:
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT, **options
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=BACKLOG)
        await site.start()
    except BaseException:
        await stop_runner(runner)
        raise
    return runner


async def start_server(
    app: web.Application,
    *,
    host: str,
    port: int,
    settings: Settings,
    metrics: Callable[[], bytes] | None = None,
) -> WebhookServer:
    """Serve ``app`` on ``host:port`` with the limits ``settings`` name (see the module
    docstring), and the page ``metrics()`` renders (Prometheus text) as ``/metrics`` on
    ``METRICS_HOST:METRICS_PORT`` unless that is off. The connection counters are
    :attr:`WebhookServer.stats`.

    A metrics port that cannot be bound raises :class:`ConfigError` naming the setting."""
    limits = ServerLimits.from_settings(settings)
    stats = ServerStats()
    guard = ConnectionGuard(limits.max_connections, stats)
    app.middlewares.insert(0, guard.middleware)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=limits.keepalive_timeout,
        lingering_time=LINGERING_TIME,
        # Bodies reach the webhook as sent: it refuses compressed ones with a JSON 415, where
        # the parser would answer an encoding it cannot decode (br, zstd) in plain text.
        auto_decompress=False,
        logger=_protocol_logger(),
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    metrics_runner: web.AppRunner | None = None
    try:
        assert runner.server is not None
        guard.install(runner.server)
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=BACKLOG)
        await site.start()
        if settings.metrics_port is not None and metrics is not None:
            metrics_runner = await _listen_for_metrics(
                metrics, settings.metrics_host, settings.metrics_port, limits
            )
    except BaseException:
        await stop_runner(runner)
        raise
    server = WebhookServer(runner, stats, metrics_runner)
    if metrics_runner is not None:
        log.info("metrics.listening", url=server.metrics_url)
    return server


async def _listen_for_metrics(
    render: Callable[[], bytes], host: str, port: int, limits: ServerLimits
) -> web.AppRunner:
    try:
        return await _listen(
            _metrics_app(render),
            host,
            port,
            keepalive_timeout=limits.keepalive_timeout,
        )
    except OSError as exc:
        raise ConfigError(
            f"invalid settings:\n  CALLFLOW_METRICS_PORT: cannot serve /metrics on "
            f"{host}:{port} ({exc.strerror or exc}); expected a free port (each worker on "
            "a host needs its own), 0 for any free one, or off (see also "
            "CALLFLOW_METRICS_HOST)"
        ) from exc


METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""Prometheus' text exposition format."""


def _metrics_app(render: Callable[[], bytes]) -> web.Application:
    async def metrics_route(request: web.Request) -> web.Response:
        return web.Response(body=render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    app = web.Application(client_max_size=1024)
    app.router.add_get("/metrics", metrics_route)
    return app


# -- reading a body ------------------------------------------------------------------------------


class BodyTooLargeError(Exception):
    """Raised by :func:`read_body` when the body is larger than allowed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is larger than {limit} bytes")
        self.limit = limit


class BodyTimeoutError(Exception):
    """Raised by :func:`read_body` when the body did not arrive in time."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"the body did not arrive within {timeout:g} s")
        self.timeout = timeout


async def read_body(request: web.Request, *, max_body: int, within: float) -> bytes:
    """The whole body of ``request``: at most ``max_body`` bytes (chunked bodies included),
    within ``within`` seconds. Raises :class:`BodyTooLargeError` or
    :class:`BodyTimeoutError`."""
    length = request.content_length
    if length is not None and length > max_body:
        raise BodyTooLargeError(max_body)
    if length is not None:
        # A notification usually arrives with its headers, whole: take it without setting
        # up a timeout (a few microseconds a request on the hot path).
        head = request.content.read_nowait(length)
        if len(head) == length:
            return head
        length -= len(head)
    else:
        head = b""
    try:
        async with asyncio.timeout(within):
            if length is not None:  # checked against max_body already: one read
                try:
                    rest = await request.content.readexactly(length)
                    return head + rest if head else rest
                except asyncio.IncompleteReadError as exc:  # pragma: no cover - aiohttp
                    return head + exc.partial  # reports a short body as a lost connection
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > max_body:
                    raise BodyTooLargeError(max_body)
                chunks.append(chunk)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except TimeoutError:
        raise BodyTimeoutError(within) from None


async def close_after(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Send ``response`` now and close the connection (its request was not read to the end)."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response
