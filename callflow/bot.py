"""The bot: the root router, wired to the engine, the webhook and Graph when it serves."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from aiohttp import web

from .calls import CallKeeper, HeldCall
from .deadline import DecisionSink, DecisionSlot, SinkFactory
from .decisions import Reject, RejectReason
from .dispatch import Engine
from .errors import CallflowError, ConfigError
from .metrics import CONTENT_TYPE, Metrics
from .routing import Router
from .settings import Settings

if TYPE_CHECKING:
    from .graph._client import GraphClient
    from .graph._tokens import TokenProvider
    from .store import Fleet
    from .webhook._app import FleetHook
    from .webhook._server import WebhookServer

__all__ = ["Bot", "RunningBot"]

log = structlog.get_logger(__name__)


class RunningBot:
    """A bot that is serving: its bound address, readiness, engine and Graph client."""

    def __init__(
        self, bot: Bot, engine: Engine, graph: GraphClient, metrics: Metrics, keeper: CallKeeper
    ) -> None:
        self.bot = bot
        self.engine = engine
        self.graph = graph
        self.metrics = metrics
        self.keeper = keeper
        self.host = ""
        self.port = 0
        self.ready = False
        self.shutting_down = anyio.Event()
        self.urgent = False

    def calls(self) -> list[HeldCall]:
        """The calls this bot answered and still holds (kept alive until they end)."""
        return self.keeper.calls()

    async def hang_up(self, call_id: str) -> None:
        """Hang up the bot's leg of a call it holds."""
        await self.keeper.hang_up(call_id)

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
        """Begin a graceful stop; ``urgent`` skips waiting for pending handlers."""
        self.ready = False
        self.urgent = self.urgent or urgent
        self.shutting_down.set()


class Bot(Router):
    """A calling bot: register handlers on it, then run it.

    ``Bot()`` reads its settings from ``CALLFLOW_*`` environment variables when it starts
    (not when it is created, so a module that defines a bot imports without any settings).
    """

    def __init__(self, settings: Settings | None = None, *, name: str = "bot") -> None:
        super().__init__(name)
        self._settings = settings

    @property
    def settings(self) -> Settings:
        """The bot's settings, read from the environment on first use."""
        if self._settings is None:
            self._settings = Settings.from_env()
        return self._settings

    def configure(self, settings: Settings) -> None:
        """Replace the bot's settings (before it starts)."""
        self._check_open("settings")
        self._settings = settings

    def engine(
        self,
        sink: DecisionSink,
        *,
        scheduler_sink: SinkFactory | None = None,
        services: Any = None,
        **overrides: Any,
    ) -> Engine:
        """Build the engine that runs this bot's handlers with the deadline guarantee."""
        s = self.settings
        options: dict[str, Any] = {
            "platform_timeout": s.platform_timeout,
            "recording_timeout": s.recording_timeout,
            "safety_margin": s.safety_margin,
            "max_pending": s.max_pending,
            "deadline_send_rate": s.deadline_send_rate,
            "max_send_backlog": s.max_send_backlog,
            "drain_timeout": s.drain_timeout,
            "default_decision": Reject(RejectReason(s.default_reject_reason)),
        }
        options.update(overrides)
        return Engine(self, sink=sink, scheduler_sink=scheduler_sink, services=services, **options)

    # -- serving ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serve(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        tokens: TokenProvider | None = None,
        on_decided: Callable[[DecisionSlot, BaseException | None], None] | None = None,
    ) -> AsyncIterator[RunningBot]:
        """Start the bot: token, inbound keys, engine, then the webhook; stop it on exit.

        ``tokens`` replaces the msal token provider built from the settings (tests, or a
        custom credential); ``on_decided(slot, error)`` is told of every decision sent (from
        either thread). Readiness turns true once everything is started. Leaving the
        block drains: pending calls keep deciding until their deadlines (bounded by
        ``DRAIN_TIMEOUT``), the rest get the default decision, then sessions close.
        """
        from .graph._client import GraphClient
        from .graph._tokens import MsalTokenProvider
        from .webhook._jwt import InboundAuthenticator

        s = self.settings
        if tokens is None:
            s.require_for_run()
        elif s.inbound_auth and not s.app_id:
            raise ConfigError(
                "missing settings:\n  CALLFLOW_APP_ID: required to check inbound tokens "
                "(or set CALLFLOW_INBOUND_AUTH=off for local development)"
            )
        host = s.host if host is None else host
        port = s.port if port is None else port
        s.check_serving(host)  # auth off or plain-http forwarding off loopback: refused

        async with contextlib.AsyncExitStack() as stack:
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
            token_provider = tokens

            metrics = Metrics()
            default = Reject(RejectReason(s.default_reject_reason))
            fleet: Fleet | None = None
            if s.store != "memory":
                from .store import Fleet

                fleet = await stack.enter_async_context(Fleet(s))
                metrics.attach_fleet(fleet.stats)
            callback_url = fleet.callback_url if fleet is not None else s.callback_url

            def graph_client() -> GraphClient:
                return GraphClient(
                    tokens=token_provider,
                    base_url=s.graph_url,
                    callback_url=callback_url,
                    ca_bundle=s.ca_bundle,
                    request_timeout=s.request_timeout,
                    on_request=metrics.on_graph_request,
                )

            auth: InboundAuthenticator | None = None
            if s.inbound_auth:
                assert s.app_id is not None
                auth = await stack.enter_async_context(
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

            graph = await stack.enter_async_context(graph_client())

            keeper = CallKeeper(graph, s.keepalive_interval)
            metrics.attach_background(keeper, auth)

            def decided(slot: DecisionSlot, error: BaseException | None) -> None:
                metrics.on_decided(slot, error)
                if error is None and slot.decision is not None and slot.decision.kind == "answer":
                    call = slot.call
                    keeper.answered(slot.call_id, call.tenant_id if call is not None else None)
                if on_decided is not None:
                    on_decided(slot, error)

            engine = self.engine(
                graph if fleet is None else fleet.sink(graph),
                scheduler_sink=graph_client
                if fleet is None
                else fleet.scheduler_sink(graph_client, default),
                services=keeper,
                on_decided=decided,
                on_terminated=keeper.ended,
                default_decision=default,
                admit=None if fleet is None else fleet.admit,
            )
            metrics.attach(engine)
            if isinstance(token_provider, MsalTokenProvider):
                provider = token_provider
                metrics.attach(engine, lambda: provider.failures)
            running = RunningBot(self, engine, graph, metrics, keeper)
            async with engine.running(), anyio.create_task_group() as background:
                await background.start(keeper.run)
                app = self._make_app(
                    engine, auth, running, metrics, None if fleet is None else fleet.webhook
                )
                from .webhook._server import start_server

                runner = await start_server(
                    app, host=host, port=port, settings=s, metrics=metrics
                )  # connection limits, and /metrics on METRICS_PORT when set
                try:
                    running.host, running.port = _bound_address(runner, host)
                    if fleet is not None:
                        from .store import internal_url

                        fleet.address = s.internal_url or internal_url(running.host, running.port)
                    running.ready = True
                    log.info("bot.ready", url=running.webhook_url)
                    try:
                        yield running
                    finally:
                        running.ready = False
                        with anyio.CancelScope(shield=True):
                            engine.begin_drain()
                            if not running.urgent:
                                await engine.drain(s.drain_timeout)
                finally:
                    with anyio.CancelScope(shield=True):
                        await runner.cleanup()
                    background.cancel_scope.cancel()
        log.info("bot.stopped")

    def _make_app(
        self,
        engine: Engine,
        auth: Any,
        running: RunningBot,
        metrics: Metrics,
        fleet: FleetHook | None = None,
    ) -> web.Application:
        from .webhook._app import WebhookHandler
        from .webhook._server import ServerLimits

        handler = WebhookHandler(
            engine,
            auth,
            on_auth_failure=metrics.on_auth_failure,
            on_rejected_input=metrics.on_rejected_input,
            fleet=fleet,
            overload_wait=self.settings.overload_wait,
            limits=ServerLimits.from_settings(self.settings),
            on_suppressed_log=metrics.on_suppressed_log,
        )
        app = web.Application(client_max_size=2 * 1024 * 1024)
        path = self.settings.webhook_path

        async def webhook(request: web.Request) -> web.StreamResponse:
            return await handler(request)

        app.router.add_post(path, webhook)

        async def healthz(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def readyz(request: web.Request) -> web.Response:
            if running.ready:
                return web.json_response({"status": "ready", "pending": engine.pending})
            return web.json_response({"status": "not ready"}, status=503)

        async def metrics_route(request: web.Request) -> web.Response:
            return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        if self.settings.metrics_port is None:  # else served on its own port
            app.router.add_get("/metrics", metrics_route)
        return app

    def run(self, *, host: str | None = None, port: int | None = None) -> None:
        """Serve until SIGTERM or SIGINT, then drain and exit.

        The first signal makes ``/readyz`` answer 503 and lets pending calls decide until their
        deadlines (at most ``DRAIN_TIMEOUT``); a second signal stops at once. Either way every
        call still undecided gets the default decision before the process exits.
        """
        from ._runtime import tune_gc_for_worker

        tune_gc_for_worker()
        anyio.run(self.serve_until_signalled, host, port)

    async def serve_until_signalled(self, host: str | None = None, port: int | None = None) -> None:
        """Serve until SIGTERM/SIGINT (the async form of :meth:`run`).

        Signals are watched from before start-up: one that arrives while the bot is still
        fetching its token or keys stops the start-up instead of killing the process.
        """
        watcher = _SignalWatcher()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watcher.watch)
                with watcher.startup:
                    async with self.serve(host=host, port=port) as running:
                        watcher.attach(running)
                        await running.shutting_down.wait()
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # A start-up failure (no token, no keys) is raised as the CallflowError it is, not
            # inside a group, so that the command line prints its message.
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], CallflowError):
                raise group.exceptions[0] from None
            raise


class _SignalWatcher:
    """First SIGTERM/SIGINT: graceful stop; second: urgent stop (defaults still sent)."""

    def __init__(self) -> None:
        self.startup = anyio.CancelScope()
        self.running: RunningBot | None = None
        self.signals = 0
        self.last = ""

    def attach(self, running: RunningBot) -> None:
        self.running = running
        if self.signals:
            self._stop()

    def _stop(self) -> None:
        running, name = self.running, self.last
        if running is None:
            log.info("bot.stopping_during_startup", signal=name)
            self.startup.cancel()
            return
        if self.signals > 1:
            log.warning("bot.stopping_now", signal=name, pending=running.engine.pending)
            running.stop(urgent=True)
            running.engine.cut_drain()
        else:
            log.info("bot.stopping", signal=name, pending=running.engine.pending)
            running.stop()

    async def watch(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.signals += 1
                self.last = signal.Signals(signum).name
                self._stop()


def _bound_address(runner: web.AppRunner | WebhookServer, host: str) -> tuple[str, int]:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return str(addr[0]), int(addr[1])
    return host, 0  # pragma: no cover - a TCP site always has an address
