"""Per-call traces with OpenTelemetry: the ``callflow-graph[otel]`` extra, off unless turned on.

Runs on both loops: the I/O loop starts and ends a call's span, the Graph requests' spans and
the operations' spans; the app loop the handlers' spans (see :mod:`callflow.engine.tracing`
and :mod:`callflow.webhook.tracing` for where they are made). Nothing here imports
``opentelemetry`` until :func:`enable` runs (``CALLFLOW_TRACING=otel``): while tracing is off
:data:`active` is None, and every place that could make a span was either wired without
tracing (the webhook, the decision sink, the handlers, the Graph client's session) or checks
:data:`active` once (an operation, a fleet forward, a call into the I/O loop).

A call's trace: the webhook's ``POST`` span (kind server) is its root, with children for
authentication, parsing and ``callflow.call``, the call's span, which lasts from the
notification's receipt until its decision has been sent; under it, one span per handler
(the app loop) and the decision's ``POST`` (kind client, HTTP semantic conventions). The
call's later operations are spans of the same trace, children of the span current where
they were asked for (the flow's: the context crosses into the I/O loop with the request) or
else of the call's: the call's context is kept here by call id (:class:`Tracing`), which is
how a span on one loop finds its parent made on the other. Attributes carry the call id and
the tenant, never a caller's number or name unless ``LOG_PII=on``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Final

from callflow.errors import ConfigError

if TYPE_CHECKING:
    import aiohttp
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider
    from yarl import URL

__all__ = [
    "CALL_TTL",
    "EXPORTERS",
    "Current",
    "Operation",
    "Tracing",
    "active",
    "add_trace_ids",
    "disable",
    "enable",
    "from_settings",
    "tracing_for",
    "http_trace_configs",
    "operation",
    "safe_url",
]

active: Tracing | None = None
"""The tracing of this process; None while tracing is off (the one check every traced place
makes)."""

EXPORTERS: Final = ("otlp", "console", "none")
"""``CALLFLOW_TRACING_EXPORTER``: where spans go when the application set no tracer
provider of its own."""

CALL_TTL: Final = 120.0
"""Seconds a call's span may stay open (a call that was never decided: it was dropped as
another worker's, or its caller hung up) before it is ended as ``abandoned``."""

MAX_KEPT: Final = 100_000
"""Answered calls whose trace context is kept for their later operations (the oldest goes
first); a call's context goes when the call ends."""

_INSTALL: Final = (
    "tracing needs the OpenTelemetry API and SDK: install the extra "
    "(pip install 'callflow-graph[otel]')"
)


class Tracing:
    """The spans of this process's calls, made with ``provider``'s tracer.

    ``pii`` (``LOG_PII=on``) lets the caller's identity into the call's span attributes.
    """

    def __init__(self, provider: TracerProvider, *, pii: bool = False) -> None:
        from opentelemetry import context, trace

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("callflow")
        self.pii = pii
        self.scrub: Callable[[str], str] = _as_is
        """What an error's message and stack trace go through before a span records them
        (the worker sets the log lines' scrubbing: secrets, tokens, and phone numbers unless
        ``pii``)."""
        self.owned = False
        """True when callflow made the provider (it is shut down, spans flushed, at stop)."""
        self.users = 0
        """Bots serving with this tracing that :func:`tracing_for` turned on."""
        self._trace = trace
        self._context = context
        self._lock = threading.Lock()
        # call id -> (span, its context, monotonic start): calls not decided yet
        self._open: OrderedDict[str, tuple[Span, Context, float]] = OrderedDict()
        # call id -> context: answered calls, for their operations
        self._kept: OrderedDict[str, Context] = OrderedDict()

    # -- a call's span ---------------------------------------------------------------------

    def start_call(
        self, call_id: str, tenant_id: str | None, received: float, **attrs: Any
    ) -> None:
        """Open ``call_id``'s span, a child of the current span, started at ``received``
        (``time.monotonic()``, when the notification reached the worker). A call with a
        span already (Graph posted its notification again) keeps that one."""
        with self._lock:
            if call_id in self._open or call_id in self._kept:
                return
        started = time.time_ns() - int((time.monotonic() - received) * 1e9)
        attributes: dict[str, Any] = {"callflow.call.id": call_id}
        if tenant_id is not None:
            attributes["callflow.tenant.id"] = tenant_id
        attributes.update({k: v for k, v in attrs.items() if v is not None})
        span = self.tracer.start_span("callflow.call", attributes=attributes, start_time=started)
        ctx = self._trace.set_span_in_context(span)
        now = time.monotonic()
        abandoned: list[Span] = []
        with self._lock:
            opened = self._open
            opened[call_id] = (span, ctx, now)
            while opened:
                first = next(iter(opened.values()))
                if now - first[2] < CALL_TTL:
                    break
                abandoned.append(opened.popitem(last=False)[1][0])
        for old in abandoned:
            old.set_attribute("callflow.outcome", "abandoned")
            old.end()

    def open_call(self, call_id: str) -> Span | None:
        """The span of ``call_id`` while it is not decided."""
        with self._lock:
            found = self._open.get(call_id)
        return None if found is None else found[0]

    def end_call(
        self,
        call_id: str,
        *,
        decision: str | None,
        decided_by: str | None,
        error: BaseException | None = None,
        keep: bool = False,
    ) -> None:
        """End ``call_id``'s span (its decision was sent, or could not be); ``keep`` its
        context for the call's later operations (an answered call)."""
        with self._lock:
            found = self._open.pop(call_id, None)
            if found is not None and keep:
                kept = self._kept
                kept[call_id] = found[1]
                while len(kept) > MAX_KEPT:
                    kept.popitem(last=False)
        if found is None:
            return
        span = found[0]
        if decision is not None:
            span.set_attribute("callflow.decision", decision)
        if decided_by is not None:
            span.set_attribute("callflow.decided_by", decided_by)
        if error is not None:
            self.failed(span, error)
        span.end()

    def forget(self, call_id: str, result: object = None) -> None:
        """``call_id`` ended: its operations are over (a ``CallBook.on_end`` hook). A call
        that ends before its decision was sent (the caller hung up) ends its span as
        ``gone``."""
        with self._lock:
            self._kept.pop(call_id, None)
            found = self._open.pop(call_id, None)
        if found is not None:
            found[0].set_attribute("callflow.outcome", "gone")
            found[0].end()

    def call_context(self, call_id: str | None) -> Context | None:
        """The context of ``call_id``'s span (open or ended), None when unknown."""
        if not call_id:
            return None
        with self._lock:
            found = self._open.get(call_id)
            if found is not None:
                return found[1]
            return self._kept.get(call_id)

    def parent_for(self, call_id: str | None) -> Context | None:
        """The context a span about ``call_id`` starts in: the current one when a span is
        current (a handler's, a flow's own), else the call's."""
        if self._trace.get_current_span().get_span_context().is_valid:
            return None
        return self.call_context(call_id)

    # -- operations --------------------------------------------------------------------------

    def start_operation(self, call_id: str, kind: str, tenant_id: str | None) -> Operation:
        """Open the span of one operation on ``call_id`` (``callflow.<kind>``: play,
        record, transfer...), current until :meth:`Operation.end`: a child of the current
        span (a flow's, a handler's) or else of the call's."""
        attributes: dict[str, Any] = {"callflow.operation": kind}
        if call_id:
            attributes["callflow.call.id"] = call_id
        if tenant_id is not None:
            attributes["callflow.tenant.id"] = tenant_id
        span = self.tracer.start_span(
            f"callflow.{kind}", context=self.parent_for(call_id), attributes=attributes
        )
        return Operation(self, span, self.attach(self.in_span(span)))

    # -- helpers ---------------------------------------------------------------------------

    def current(
        self,
        name: str,
        attributes: dict[str, Any] | None = None,
        *,
        context: Context | None = None,
        kind: Any = None,
    ) -> Current:
        """A new span, current inside a ``with`` block and ended at its end (an exception
        leaving the block marks it failed): what ``start_as_current_span`` does, for a
        third of its cost."""
        if kind is None:
            span = self.tracer.start_span(name, context=context, attributes=attributes)
        else:
            span = self.tracer.start_span(name, context=context, kind=kind, attributes=attributes)
        return Current(self, span)

    # -- more helpers -----------------------------------------------------------------------------

    def failed(self, span: Span, error: BaseException) -> None:
        """Mark ``span`` as failed by ``error`` (its type, and the error recorded)."""
        import traceback

        from opentelemetry.trace import Status, StatusCode

        scrub = self.scrub
        message = scrub(str(error))
        stack = scrub("".join(traceback.format_exception(error)))
        span.set_attribute("error.type", type(error).__qualname__)
        span.record_exception(error, {"exception.message": message, "exception.stacktrace": stack})
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {message}"[:300]))

    def attach(self, ctx: Context) -> object:
        """Make ``ctx`` current; returns the token for :meth:`detach`."""
        return self._context.attach(ctx)

    def detach(self, token: object) -> None:
        """Undo an :meth:`attach`."""
        self._context.detach(token)  # type: ignore[arg-type]

    def in_span(self, span: Span) -> Context:
        """A context with ``span`` current."""
        return self._trace.set_span_in_context(span)

    def ids(self) -> tuple[str, str] | None:
        """The current span's (trace id, span id), hex; None when no span is current."""
        ctx = self._trace.get_current_span().get_span_context()
        if not ctx.is_valid:
            return None
        return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")

    def ids_of(self, call_id: str) -> tuple[str, str] | None:
        """The (trace id, span id) of ``call_id``'s span; None when unknown."""
        ctx = self.call_context(call_id)
        if ctx is None:
            return None
        span_ctx = self._trace.get_current_span(ctx).get_span_context()
        return format(span_ctx.trace_id, "032x"), format(span_ctx.span_id, "016x")

    def inject(self, span: Span) -> str:
        """The W3C ``traceparent`` header value naming ``span``."""
        ctx = span.get_span_context()
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    def extract(self, traceparent: str) -> Context | None:
        """The context a ``traceparent`` header value names; None when it is malformed."""
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        ctx = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        if not self._trace.get_current_span(ctx).get_span_context().is_valid:
            return None
        return ctx


class Current:
    """A span made current by ``with`` and ended when the block ends (see
    :meth:`Tracing.current`)."""

    __slots__ = ("_token", "_tracing", "span")

    def __init__(self, tracing: Tracing, span: Span) -> None:
        self._tracing = tracing
        self.span = span
        self._token: object = None

    def __enter__(self) -> Span:
        self._token = self._tracing.attach(self._tracing.in_span(self.span))
        return self.span

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: Any
    ) -> None:
        tracing, span = self._tracing, self.span
        tracing.detach(self._token)
        if error is not None:
            if isinstance(error, Exception):
                tracing.failed(span, error)
            else:  # cancelled (the deadline, a hang-up, a stop): not a failure of its own
                span.set_attribute("callflow.outcome", "cancelled")
        span.end()


class Operation:
    """The span of one operation, current from its start to :meth:`end`."""

    __slots__ = ("_span", "_token", "_tracing")

    def __init__(self, tracing: Tracing, span: Span, token: object) -> None:
        self._tracing = tracing
        self._span = span
        self._token = token

    def end(self, outcome: str, error: BaseException | None) -> None:
        """End it with its ``outcome`` (``completed``, ``timeout``, ``failed``...)."""
        tracing, span = self._tracing, self._span
        tracing.detach(self._token)
        span.set_attribute("callflow.outcome", outcome)
        if error is not None:
            tracing.failed(span, error)
        elif outcome not in ("completed", "cancelled"):
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, outcome))
        span.end()


class _NoOperation:
    """What :func:`operation` gives while tracing is off: ending it does nothing."""

    __slots__ = ()

    def end(self, outcome: str, error: BaseException | None) -> None:
        """Nothing to end."""


_NO_OPERATION: Final = _NoOperation()


def operation(call_id: str, kind: str, tenant_id: str | None) -> Operation | _NoOperation:
    """The span of one operation on ``call_id`` (see :meth:`Tracing.start_operation`), or
    while tracing is off a stand-in whose ``end`` does nothing."""
    tracing = active
    if tracing is None:
        return _NO_OPERATION
    return tracing.start_operation(call_id, kind, tenant_id)


def safe_url(url: URL) -> str:
    """``url`` for ``url.full``: no user, password, query or fragment (a recording's
    download URL may carry a token in its query)."""
    return str(url.with_user(None).with_query(None).with_fragment(None))


def http_attributes(method: str, url: URL) -> dict[str, Any]:
    """The HTTP client span attributes of a request (semantic conventions)."""
    attributes: dict[str, Any] = {"http.request.method": method, "url.full": safe_url(url)}
    if url.host is not None:
        attributes["server.address"] = url.host
    if url.port is not None:
        attributes["server.port"] = url.port
    return attributes


def http_trace_configs() -> list[aiohttp.TraceConfig]:
    """The aiohttp trace configs of a client session: one making a client span per request
    while tracing is on, none otherwise (nothing to pay)."""
    tracing = active
    if tracing is None:
        return []
    import aiohttp
    from opentelemetry.trace import SpanKind, Status, StatusCode

    tracer = tracing.tracer

    async def start(_: Any, ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
        ctx.span = tracer.start_span(
            params.method,
            kind=SpanKind.CLIENT,
            attributes=http_attributes(params.method, params.url),
        )

    async def end(_: Any, ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
        span = ctx.span
        status = params.response.status
        span.set_attribute("http.response.status_code", status)
        if status >= 400:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    async def failed(_: Any, ctx: Any, params: aiohttp.TraceRequestExceptionParams) -> None:
        span = ctx.span
        tracing.failed(span, params.exception)
        span.end()

    config = aiohttp.TraceConfig()
    config.on_request_start.append(start)
    config.on_request_end.append(end)
    config.on_request_exception.append(failed)
    return [config]


def add_trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: ``trace_id`` and ``span_id`` of the current span, or of the
    call the line is about (``call_id``); put before the renderer while tracing is on."""
    tracing = active
    if tracing is None or "trace_id" in event:
        return event
    ids = tracing.ids()
    if ids is None:
        call_id = event.get("call_id")
        if call_id is None:
            import structlog

            call_id = structlog.contextvars.get_contextvars().get("call_id")
        if isinstance(call_id, str):
            ids = tracing.ids_of(call_id)
    if ids is not None:
        event["trace_id"], event["span_id"] = ids
    return event


def _as_is(text: str) -> str:
    return text


def enable(provider: TracerProvider | None = None, *, pii: bool = False) -> Tracing:
    """Turn tracing on for this process with ``provider`` (default: the application's global
    tracer provider); returns it. ConfigError when the extra is not installed."""
    global active
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise ConfigError(f"CALLFLOW_TRACING=otel: {_INSTALL}") from exc
    tracing = Tracing(provider if provider is not None else trace.get_tracer_provider(), pii=pii)
    active = tracing
    return tracing


def disable(tracing: Tracing | None = None) -> None:
    """Turn tracing off (only if ``tracing`` is the active one, when given)."""
    global active
    if tracing is None or active is tracing:
        active = None


def from_settings(mode: str, exporter: str, *, pii: bool = False) -> Tracing | None:
    """Tracing as ``CALLFLOW_TRACING`` (``off`` or ``otel``) and
    ``CALLFLOW_TRACING_EXPORTER`` ask for it: the application's tracer provider when it set
    one, else an SDK provider exporting to ``exporter``. None (and nothing imported) when
    off; ConfigError when the extra or the exporter's package is missing."""
    if mode == "off":
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider as SdkProvider
    except ImportError as exc:
        raise ConfigError(f"CALLFLOW_TRACING=otel: {_INSTALL}") from exc
    if active is not None:
        return active
    provider: Any = trace.get_tracer_provider()
    owned = not isinstance(provider, SdkProvider)
    if owned:
        provider = _provider(exporter)
    tracing = enable(provider, pii=pii)
    tracing.owned = owned
    return tracing


@contextlib.asynccontextmanager
async def tracing_for(mode: str, exporter: str, *, pii: bool = False) -> AsyncIterator[None]:
    """Tracing on for the duration of the block when ``mode`` asks for it (see
    :func:`from_settings`). Tracing that callflow turned on goes off again when the last
    bot serving with it stops (callflow's own provider flushed and shut down); tracing the
    application or a test turned on (:func:`enable`) stays on."""
    before = active
    tracing = from_settings(mode, exporter, pii=pii)
    ours = tracing is not None and (before is None or tracing.users > 0)
    if ours:
        assert tracing is not None
        tracing.users += 1
    try:
        yield
    finally:
        if ours:
            assert tracing is not None
            tracing.users -= 1
            if tracing.users == 0:
                disable(tracing)
                if tracing.owned:
                    shutdown = getattr(tracing.provider, "shutdown", None)
                    if shutdown is not None:
                        shutdown()


def _provider(exporter: str) -> TracerProvider:
    """An SDK tracer provider (service name ``callflow`` unless ``OTEL_SERVICE_NAME`` says
    otherwise) with a batch processor to ``exporter``."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "callflow"}))
    provider = SdkProvider(resource=resource)
    if exporter == "none":
        return provider  # spans are made (and cost what they cost), then dropped
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        return provider
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
            OTLPSpanExporter,
        )
    except ImportError as exc:
        raise ConfigError(
            "CALLFLOW_TRACING_EXPORTER=otlp needs the OTLP exporter: "
            "pip install opentelemetry-exporter-otlp-proto-http (it reads OTEL_EXPORTER_OTLP_*); "
            "or set CALLFLOW_TRACING_EXPORTER=console or none, or give the application a "
            "tracer provider of its own"
        ) from exc
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
