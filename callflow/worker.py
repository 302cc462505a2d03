"""Builds a serving bot out of its parts, on its two event loops.

On the **I/O loop** (:class:`~callflow.engine.crossing.IoThread`): the app-token provider, the
worker's mode (:class:`WorkerMode`: fleet mode on Redis, or a lone worker), the Graph client,
inbound authentication, the keep-alive of answered calls, the engine's intake, deadlines and
outbox, and the aiohttp servers (webhook, ``/healthz``, ``/readyz``, forwarding; ``/metrics``
on a listener of its own). On the **app loop** (the caller's): the lanes that run handlers,
observers, middleware and error hooks. :func:`serve` is what ``Bot.serve`` runs. Whatever
differs between fleet mode and a lone worker the worker asks of its mode, never of the
settings.

Start: the I/O side comes up first (token and keys fetched), then the lanes, then the server
listens and the bot is ready. Stop: not ready; new calls get the default at once; pending
calls keep deciding until their deadlines (at most ``DRAIN_TIMEOUT``; not at all on an
urgent stop); the rest get the default; every decision is sent; the server closes; the lanes
are cancelled; sessions close; the I/O thread ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

import anyio
import anyio.abc
import structlog
from aiohttp import web

import callflow._tracing as _tracing
from callflow._log import mask_numbers, redact_values, scrub_tokens
from callflow._runtime import use_uvloop
from callflow.control.book import CallBook
from callflow.control.call import Call, Calls
from callflow.control.control import CallControl
from callflow.control.keeper import CallKeeper
from callflow.control.registry import OperationRegistry
from callflow.decisions import Answer, Reject, RejectReason
from callflow.engine.crossing import IoThread
from callflow.errors import ConfigError
from callflow.events import CallAdopted, CallStateChanged, canonical_call_id
from callflow.fleet.mode import worker_mode
from callflow.metrics import Metrics
from callflow.speech.config import SPEECH_SCOPE
from callflow.speech.media import SpokenMedia, SpokenSink
from callflow.speech.service import open_spoken
from callflow.webhook.media import media_handler
from callflow.webhook.server import ServerLimits, WebhookServer, start_server

if TYPE_CHECKING:
    from callflow.control.call import Call, Calls
    from callflow.control.keeper import HeldCall
    from callflow.control.memory import Memory
    from callflow.decisions import Decision
    from callflow.engine.core import Engine
    from callflow.engine.deadline import DecisionSink, DecisionSlot
    from callflow.engine.lanes import Failure
    from callflow.events import IncomingCall
    from callflow.graph.client import GraphClient
    from callflow.graph.tokens import TokenProvider
    from callflow.settings import Settings
    from callflow.speech.media import SpecStore
    from callflow.speech.recognition import Recognizer
    from callflow.webhook.auth import InboundAuthenticator
    from callflow.webhook.handler import FleetHook

TokenSource = Callable[[], Awaitable[str]]

__all__ = ["AppServices", "RunningBot", "ServedBot", "WorkerMode", "serve"]

log = structlog.get_logger(__name__)


class ServedBot(Protocol):
    """What the worker needs of the bot it serves (a :class:`~callflow.Bot`)."""

    @property
    def settings(self) -> Settings:
        """The bot's settings."""
        ...

    def engine(self, sink: DecisionSink | None = None, **overrides: Any) -> Engine:
        """The engine that runs the bot's handlers."""
        ...

    def attach_calls(self, calls: Calls | None) -> None:
        """Give the bot its ``bot.calls`` while it serves (None once stopped)."""
        ...

    @property
    def services(self) -> Any:
        """The bot's own services, handed to its handlers and flows."""
        ...


class WorkerMode(Protocol):
    """What differs between fleet mode and a lone worker, asked of one object: a
    :class:`~callflow.fleet.mode.Fleet` (``CALLFLOW_STORE=redis://...``) or a
    :class:`~callflow.fleet.mode.Solo` (``memory``). Entered on the I/O loop."""

    @property
    def callback_url(self) -> str | None:
        """The callbackUri of decisions."""
        ...

    @property
    def admission(self) -> Callable[[IncomingCall, DecisionSlot], Awaitable[bool]] | None:
        """The engine's intake hook (True: this worker owns the call); None for none."""
        ...

    @property
    def webhook(self) -> FleetHook | None:
        """The webhook's fleet hook; None for none."""
        ...

    @property
    def memory(self) -> Memory:
        """Where ``call.remember()`` keeps memos."""
        ...

    @property
    def prompts(self) -> SpecStore | None:
        """Where spoken prompts are shared with the fleet; None for nowhere."""
        ...

    def holding(self, call_id: str, tenant_id: str | None) -> None:
        """The worker holds ``call_id`` now (answered, created or joined)."""

    def ended(self, call_id: str, result: object = None) -> None:
        """A call the worker knew ended."""

    async def __aenter__(self) -> Self:
        """Open what the mode needs on the I/O loop."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close it."""

    def sink(self, inner: DecisionSink) -> DecisionSink:
        """The decision sink of the engine's outbox, around the Graph client ``inner``."""
        ...

    def watching(
        self,
        tasks: anyio.abc.TaskGroup,
        graph: GraphClient,
        default: Decision,
        calls: CallBook,
        take: Callable[[str, str | None, str, CallAdopted], None],
    ) -> AbstractAsyncContextManager[None]:
        """Run the mode's background work in ``tasks`` while the block runs; ``take`` hands
        the worker a call it adopted (fleet mode)."""
        ...

    async def listening(self, host: str, port: int) -> None:
        """The webhook listens on ``host:port`` (the bot becomes ready after this)."""

    def report_to(self, metrics: Metrics) -> None:
        """Have ``metrics`` read the mode's counters."""


class RunningBot:
    """A bot that is serving: its bound address, readiness, engine and Graph client.

    ``graph`` and ``keeper`` live on the bot's I/O loop: call :meth:`hang_up` rather than
    using them from the app loop.
    """

    def __init__(
        self,
        bot: ServedBot,
        engine: Engine,
        graph: GraphClient,
        metrics: Metrics,
        keeper: CallKeeper,
        io: IoThread,
        services: AppServices,
    ) -> None:
        self.bot = bot
        self.engine = engine
        self.graph = graph
        self.metrics = metrics
        self.keeper = keeper
        self.io = io
        self.services = services
        self.host = ""
        self.port = 0
        self.metrics_url: str | None = None
        """``http://METRICS_HOST:PORT/metrics``, where the metrics are served; None when
        ``METRICS_PORT=off``."""
        self.ready = False
        self.shutting_down = anyio.Event()
        self.urgent = False

    def calls(self) -> list[HeldCall]:
        """The calls this bot answered and still holds (kept alive until they end)."""
        return self.keeper.calls()

    async def hang_up(self, call_id: str) -> None:
        """Hang up the bot's leg of a call it holds (its pending operations fail at once)."""
        await self.services.hang_up(call_id)

    def call(self, call_id: str, tenant_id: str | None = None) -> Call:
        """The :class:`~callflow.Call` handle of a call the bot holds."""
        return self.services.call(call_id, tenant_id)

    @property
    def url(self) -> str:
        """The webhook's base URL, e.g. ``http://127.0.0.1:8000``."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def webhook_url(self) -> str:
        """The full URL notifications are POSTed to."""
        return self.url + self.bot.settings.webhook_path

    def stop(self, *, urgent: bool = False) -> None:
        """Begin a graceful stop; ``urgent`` skips waiting for pending handlers.

        At once ``/readyz`` answers 503 and a new incoming call gets the default decision;
        leaving ``Bot.serve`` then drains.
        """
        self.ready = False
        self.urgent = self.urgent or urgent
        with contextlib.suppress(RuntimeError):  # the engine already stopped
            self.engine.begin_drain()
        if urgent:
            with contextlib.suppress(RuntimeError):
                self.engine.cut_drain()
        self.shutting_down.set()


class AppServices:
    """What code on the app loop may ask of the I/O side (``ctx.hang_up()``, ``ctx.call``).

    Each request runs on the I/O loop, where the Graph client lives; the caller awaits it.
    """

    def __init__(self, io: IoThread, control: CallControl, services: Any = None) -> None:
        self._io = io
        self._control = control
        self.services = services
        """The bot's own services (``Bot(services=...)``): ``ctx.services``."""
        self.calls = Calls._open(control, io, services)
        """Places new calls and hands out call handles (``bot.calls``)."""

    def call(self, call_id: str, tenant_id: str | None = None) -> Call:
        """The handle of ``call_id`` (its tenant, when not given, the one it is bound to)."""
        return self.calls.get(call_id, tenant_id=tenant_id)

    async def hang_up(self, call_id: str) -> None:
        """Hang up the bot's leg of ``call_id``; its pending operations fail at once (a call
        that has ended already is not hung up again)."""
        control = self._control
        call_id = canonical_call_id(call_id)

        async def hang_up() -> None:
            await control.hang_up(call_id, control.book.tenant_of(call_id), 30.0)

        await self._io.run(hang_up)


class _IoSide:
    """Everything a serving bot runs on the I/O loop; entered there by :func:`serve`."""

    def __init__(
        self,
        bot: ServedBot,
        io: IoThread,
        tokens: TokenProvider | None,
        on_decided: Callable[[DecisionSlot, BaseException | None], None] | None,
        on_failure: Callable[[Failure], None] | None = None,
    ) -> None:
        self.bot = bot
        self.on_failure = on_failure
        self.io = io
        self.tokens = tokens
        self.user_on_decided = on_decided
        self.metrics = Metrics()
        self.engine: Engine | None = None
        self.graph: GraphClient | None = None
        self.keeper: CallKeeper | None = None
        self.services: AppServices | None = None
        self.control: CallControl | None = None
        self.spoken: SpokenMedia | None = None
        self.mode: WorkerMode | None = None
        self.auth: InboundAuthenticator | None = None
        self.running: RunningBot | None = None
        self._runner: WebhookServer | None = None

    @contextlib.asynccontextmanager
    async def entered(self) -> AsyncIterator[_IoSide]:
        """Open everything but the server, in order; close it in reverse order."""
        from callflow.graph.client import GraphClient
        from callflow.graph.tokens import MsalTokenProvider
        from callflow.webhook.auth import InboundAuthenticator

        s = self.bot.settings
        metrics = self.metrics
        # The secrets' exact values never reach a log line, whatever key or text holds them.
        redact_values(s.app_secret, s.fleet_secret, s.speech_key, s.media_secret)
        async with contextlib.AsyncExitStack() as stack:
            tokens = self.tokens
            if tokens is None:
                assert s.app_id is not None
                tokens = await stack.enter_async_context(
                    MsalTokenProvider(
                        client_id=s.app_id,
                        client_secret=s.app_secret,
                        certificate_path=s.certificate_path,
                        certificate_thumbprint=s.certificate_thumbprint,
                        tenant_id=s.tenant_id,
                        authority_url=s.authority_url,
                        ca_bundle=s.ca_bundle,
                    )
                )
            default = Reject(RejectReason(s.default_reject_reason))
            # Every call the worker knows, bound to its tenant from admission (or creation)
            # to its end; whoever learns that a call ended ends it here, for everyone.
            book = CallBook()
            mode: WorkerMode = await stack.enter_async_context(worker_mode(s, book))
            mode.report_to(metrics)
            self.mode = mode
            graph = await stack.enter_async_context(
                GraphClient(
                    tokens=tokens,
                    base_url=s.graph_url,
                    callback_url=mode.callback_url,
                    ca_bundle=s.ca_bundle,
                    request_timeout=s.request_timeout,
                    recording_hosts=s.recording_hosts,
                    on_request=metrics.on_graph_request,
                )
            )
            self.graph = graph
            if s.inbound_auth:
                assert s.app_id is not None
                self.auth = await stack.enter_async_context(
                    InboundAuthenticator(
                        app_id=s.app_id,
                        openid_config_url=s.openid_config_url,
                        issuers=s.issuers,
                        allowed_tenants=s.allowed_tenants or None,
                        ssl=s.client_ssl_context(),
                    )
                )
            else:
                log.warning(
                    "inbound_auth.disabled",
                    message="CALLFLOW_INBOUND_AUTH=off: notifications are NOT authenticated; "
                    "use this for local development only",
                )
            keeper = self.keeper = CallKeeper(
                graph, s.keepalive_interval, on_gone=lambda call_id: book.end(call_id, by="gone")
            )
            book.on_end(keeper.ended)
            book.on_end(mode.ended)
            metrics.attach_background(keeper, self.auth)

            def holding(call_id: str, tenant_id: str | None) -> None:
                keeper.answered(call_id, tenant_id)
                mode.holding(call_id, tenant_id)

            control = self.control = CallControl(
                graph,
                OperationRegistry(book=book),
                on_operation=metrics.on_operation,
                on_created=holding,
                memory=mode.memory,
            )
            speech_token = await self._speech_token(stack)
            control.spoken = self.spoken = await stack.enter_async_context(
                open_spoken(s, shared=mode.prompts, token=speech_token)
            )
            control.recognizer = await _recognizer(stack, self.spoken)
            self.services = AppServices(self.io, control, self.bot.services)
            user_on_decided = self.user_on_decided

            def decided(slot: DecisionSlot, error: BaseException | None) -> None:
                metrics.on_decided(slot, error)
                decision, call = slot.decision, slot.call
                if error is None and isinstance(decision, Answer) and call is not None:
                    holding(slot.call_id, call.tenant_id)
                    if decision.then is not None:
                        engine.post_app(engine.lanes.start_flow, call, decision.then)
                if user_on_decided is not None:
                    user_on_decided(slot, error)

            tracing = _tracing.active
            if tracing is not None:  # the call's span ends with its decision sent
                from callflow.engine.tracing import traced_decided

                # Errors reach spans as log lines reach their readers: scrubbed.
                tracing.scrub = scrub_tokens if s.log_pii else _scrub_with_numbers
                book.on_end(tracing.forget)
            engine = self.engine = self.bot.engine(
                None,
                services=self.services,
                on_decided=decided if tracing is None else traced_decided(tracing, decided),
                on_failure=self.on_failure,
                calls=book,
                default_decision=default,
                admit=mode.admission,
                on_events=control.registry.on_events,
            )
            metrics.attach(engine)
            if isinstance(tokens, MsalTokenProvider):
                provider = tokens
                metrics.attach(engine, lambda: provider.failures)
            background = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(background.cancel_scope.cancel)
            await background.start(keeper.run)

            def take(call_id: str, tenant_id: str | None, state: str, event: CallAdopted) -> None:
                """A call adopted from a lost worker of the fleet is this worker's now."""
                book.hold(call_id, tenant_id)
                control.registry.on_events((CallStateChanged(call_id, state),))
                keeper.answered(call_id, tenant_id, due=0.0)
                engine.post_app(engine.lanes.adopted, event)

            # Left before the cancel: the take-over sends in flight finish, and the calls
            # held are handed off to the fleet.
            await stack.enter_async_context(mode.watching(background, graph, default, book, take))
            # Wired in only when used, as tracing is: an answer's spoken prefetch is rendered
            # after sending (with a Speech resource); the traced sink around it all.
            sink: DecisionSink = mode.sink(graph)
            if self.spoken is not None:
                sink = SpokenSink(sink, self.spoken)
            if tracing is not None:
                from callflow.engine.tracing import TracedSink

                sink = TracedSink(sink, tracing)
            await stack.enter_async_context(engine.io_side(sink))
            yield self

    async def _speech_token(self, stack: contextlib.AsyncExitStack) -> TokenSource | None:
        """With ``SPEECH_AUTH=entra``: the app's own token for Speech (msal, kept fresh)."""
        from callflow.graph.tokens import MsalTokenProvider

        s = self.bot.settings
        if not s.speech_configured or s.speech_auth != "entra" or not s.app_id:
            return None
        provider = await stack.enter_async_context(
            MsalTokenProvider(
                client_id=s.app_id,
                client_secret=s.app_secret,
                certificate_path=s.certificate_path,
                certificate_thumbprint=s.certificate_thumbprint,
                tenant_id=s.tenant_id,
                authority_url=s.authority_url,
                scopes=(SPEECH_SCOPE,),
                ca_bundle=s.ca_bundle,
            )
        )
        return provider.get_token

    async def start_server(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port``; return the bound address."""
        assert self.engine is not None and self.running is not None and self.mode is not None
        s = self.bot.settings
        app = make_app(
            self.bot,
            self.engine,
            self.auth,
            self.running,
            self.metrics,
            self.mode.webhook,
            self.spoken,
        )
        # Connection limits, the body timeout, and /metrics on METRICS_HOST:METRICS_PORT.
        runner = self._runner = await start_server(
            app, host=host, port=port, settings=s, metrics=self.metrics.render
        )
        self.metrics.attach_server(runner.stats)
        self.running.metrics_url = runner.metrics_url
        bound = _bound_address(runner, host)
        await self.mode.listening(*bound)  # ready means addressable: the fleet knows the URL
        return bound

    async def stop_server(self) -> None:
        """Close the listening socket and the open connections."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def make_app(
    bot: ServedBot,
    engine: Engine,
    auth: Any,
    running: RunningBot,
    metrics: Metrics,
    fleet: FleetHook | None = None,
    spoken: SpokenMedia | None = None,
) -> web.Application:
    """The aiohttp application: the webhook, ``/healthz``, ``/readyz`` and, with a Speech
    resource, the spoken prompts at ``MEDIA_PATH`` (``/metrics`` is served on a listener
    of its own: see :func:`~callflow.webhook.server.start_server`)."""
    from callflow.webhook.handler import WebhookHandler

    settings = bot.settings
    tracing = None
    if _tracing.active is not None:
        from callflow.webhook.tracing import WebhookTracing

        trusted = fleet.trace_parent if fleet is not None else None
        tracing = WebhookTracing(_tracing.active, settings.webhook_path, trusted)
    handler = WebhookHandler(
        engine.intake,
        auth,
        on_auth_failure=metrics.on_auth_failure,
        on_rejected_input=metrics.on_rejected_input,
        fleet=fleet,
        overload_wait=settings.overload_wait,
        limits=ServerLimits.from_settings(settings),
        on_suppressed_log=metrics.on_suppressed_log,
        tenant_of=engine.calls.tenant_of,
        holds=engine.calls.__contains__,
        tracing=tracing,
    )
    app = web.Application(client_max_size=2 * 1024 * 1024)

    async def webhook(request: web.Request) -> web.StreamResponse:
        return await handler(request)

    if tracing is not None:
        webhook = tracing.route(webhook)  # type: ignore[assignment]

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if running.ready:
            return web.json_response({"status": "ready", "pending": engine.pending})
        return web.json_response({"status": "not ready"}, status=503)

    app.router.add_post(settings.webhook_path, webhook)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if spoken is not None:
        app.router.add_get(settings.media_path + "/{name}", media_handler(spoken))
    return app


def check_settings(bot: ServedBot, tokens: TokenProvider | None) -> None:
    """Raise ConfigError for what a serving bot needs and lacks."""
    s = bot.settings
    if tokens is None:
        s.require_for_run()
    elif s.inbound_auth and not s.app_id:
        raise ConfigError(
            "missing settings:\n  CALLFLOW_APP_ID: required to check inbound tokens "
            "(or set CALLFLOW_INBOUND_AUTH=off for local development)"
        )


@contextlib.asynccontextmanager
async def serve(
    bot: ServedBot,
    *,
    host: str | None = None,
    port: int | None = None,
    tokens: TokenProvider | None = None,
    on_decided: Callable[[DecisionSlot, BaseException | None], None] | None = None,
    on_failure: Callable[[Failure], None] | None = None,
) -> AsyncIterator[RunningBot]:
    """Serve ``bot`` (see ``Bot.serve``)."""
    check_settings(bot, tokens)
    s = bot.settings
    host = s.host if host is None else host
    port = s.port if port is None else port
    s.check_serving(host)  # auth off or plain-http forwarding off loopback: refused
    async with (
        _tracing.tracing_for(s.tracing, s.tracing_exporter, pii=s.log_pii),
        IoThread(uvloop=use_uvloop(s.loop)) as io,
    ):
        side = _IoSide(bot, io, tokens, on_decided, on_failure)
        async with io.enter(side.entered):
            engine, graph, keeper = side.engine, side.graph, side.keeper
            assert engine is not None and graph is not None and keeper is not None
            services = side.services
            assert services is not None
            running = side.running = RunningBot(
                bot, engine, graph, side.metrics, keeper, io, services
            )
            async with engine.app_side(io):
                running.host, running.port = await io.run(lambda: side.start_server(host, port))
                try:
                    bot.attach_calls(services.calls)
                    running.ready = True
                    log.info("bot.ready", url=running.webhook_url)
                    yield running
                finally:
                    running.ready = False
                    with anyio.CancelScope(shield=True):
                        # The listener closes while the engine still takes calls (each new
                        # one gets the default at once): a request that reaches the webhook
                        # before the socket closes is decided, never met by a stopped engine.
                        engine.begin_drain()
                        if not running.urgent:
                            await engine.drain(engine.drain_timeout)
                        await io.run(side.stop_server)
                        await engine.stop(urgent=running.urgent)
                    bot.attach_calls(None)
    log.info("bot.stopped")


async def _recognizer(
    stack: contextlib.AsyncExitStack, spoken: SpokenMedia | None
) -> Recognizer | None:
    """What ``call.listen()``/``call.ask()`` recognise speech with, entered on ``stack``:
    the spoken prompts' Speech resource, config and connections; None without one."""
    from callflow.speech.recognition import Recognizer

    if spoken is None:
        return None
    client = spoken.client
    return await stack.enter_async_context(Recognizer(client.config, session=client.session))


def _bound_address(runner: WebhookServer, host: str) -> tuple[str, int]:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return str(addr[0]), int(addr[1])
    return host, 0  # pragma: no cover - a TCP site always has an address


def _scrub_with_numbers(text: str) -> str:
    return mask_numbers(scrub_tokens(text))
