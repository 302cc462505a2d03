"""The bot: the root router, wired to the engine, the webhook and Graph when it serves."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Generic

import anyio
import structlog

from callflow.decisions import Reject, RejectReason
from callflow.engine.core import Engine
from callflow.engine.limits import Limits
from callflow.errors import CallflowError, RegistrationError
from callflow.routing import Router, S
from callflow.settings import Settings
from callflow.worker import RunningBot, serve

if TYPE_CHECKING:
    from callflow.control.call import Calls
    from callflow.engine.deadline import DecisionSink, DecisionSlot
    from callflow.engine.lanes import Failure
    from callflow.graph.tokens import TokenProvider

__all__ = ["Bot", "RunningBot"]

log = structlog.get_logger(__name__)


class Bot(Router, Generic[S]):
    """A calling bot: register handlers on it, then run it.

    ``Bot()`` reads its settings from ``CALLFLOW_*`` environment variables when it starts
    (not when it is created, so a module that defines a bot imports without any settings).

    ``services`` is the bot's own things its handlers and flows need (a clock, a database, a
    directory client): any object, handed to them as ``ctx.services`` and ``call.services``.
    ``Bot(services=Clinic(...))`` is a ``Bot[Clinic]``; annotate ``ctx: CallContext[Clinic]``
    to have ``ctx.services`` typed. Tests hand in fakes: ``fake.serve(bot, services=...)``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        name: str = "bot",
        services: S = None,  # type: ignore[assignment]  # no services: a Bot[Any] with None
    ) -> None:
        super().__init__(name)
        self._settings = settings
        self._services: S = services
        self._calls: Calls | None = None
        self._served = False

    @property
    def services(self) -> S:
        """The bot's own services (``Bot(services=...)``), as handlers see them."""
        return self._services

    @services.setter
    def services(self, services: S) -> None:
        self._check_open("services")
        self._services = services

    @property
    def calls(self) -> Calls:
        """Outgoing calls and meeting joins while the bot serves:
        ``call = await bot.calls.create(Target.user(...))``, ``await bot.calls.join(url)``."""
        if self._calls is None:
            raise RuntimeError(
                "bot.calls needs a serving bot: use it inside `async with bot.serve()` "
                "(or from a handler or observer of a running bot)"
            )
        return self._calls

    @property
    def settings(self) -> Settings:
        """The bot's settings, read from the environment on first use."""
        if self._settings is None:
            self._settings = Settings.from_env()
        return self._settings

    @property
    def served(self) -> bool:
        """True once the bot has started serving: a Bot serves once."""
        return self._served

    def check_not_served(self) -> None:
        """Raise :class:`~callflow.errors.RegistrationError` if the bot has served already."""
        if self._served:
            raise RegistrationError(
                f"Bot {self.name!r} is being served twice: a Bot serves once. Build a new Bot "
                "for each serve() (one per test; for a worker, a factory function run with "
                "`callflow run module:factory --factory`)"
            )

    def configure(self, settings: Settings) -> None:
        """Replace the bot's settings (before it starts)."""
        self.check_not_served()
        self._check_open("settings")
        self._settings = settings

    def attach_calls(self, calls: Calls | None) -> None:
        """While serving, what :attr:`calls` gives (set by the worker; None once stopped)."""
        self._calls = calls

    def engine(self, sink: DecisionSink | None = None, **overrides: Any) -> Engine:
        """Build the engine that runs this bot's handlers with the deadline guarantee.

        ``sink`` delivers the decisions (it may be given later, to ``Engine.io_side``). The
        engine's :class:`~callflow.engine.limits.Limits` come from the settings;
        ``overrides`` win over them (any limit by name, e.g. ``drain_timeout=0``) and give
        the engine's other options (``clock``, ``services``, ``on_decided``, ...).
        """
        s = self.settings
        limits, options = Limits.split(overrides)
        options.setdefault("default_decision", Reject(RejectReason(s.default_reject_reason)))
        return Engine(self, sink=sink, limits=Limits.from_settings(s, **limits), **options)

    # -- serving ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serve(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        tokens: TokenProvider | None = None,
        on_decided: Callable[[DecisionSlot, BaseException | None], None] | None = None,
        on_failure: Callable[[Failure], None] | None = None,
    ) -> AsyncIterator[RunningBot]:
        """Start the bot: token, inbound keys, engine, then the webhook; stop it on exit.

        The webhook, inbound authentication, deadlines and every request to Graph run on an
        I/O event loop in a thread of their own; handlers, observers, middleware and error
        hooks run on the loop that enters this block. ``tokens`` replaces the msal token
        provider built from the settings (tests, or a custom credential);
        ``on_decided(slot, error)`` is told of every decision sent (on the I/O loop);
        ``on_failure(failure)`` of every failure of the bot's own code (a handler that
        raised or returned something that is not a decision, an observer, a flow or an
        error hook that raised; on the app loop).
        Readiness turns true once everything is started. Leaving the block drains: pending
        calls keep deciding until their deadlines (bounded by ``DRAIN_TIMEOUT``), the rest
        get the default decision, then sessions close. A Bot serves once: serving it again
        raises :class:`~callflow.errors.RegistrationError`.
        """
        self.check_not_served()
        self._served = True
        async with serve(
            self, host=host, port=port, tokens=tokens, on_decided=on_decided, on_failure=on_failure
        ) as r:
            yield r

    def run(self, *, host: str | None = None, port: int | None = None) -> None:
        """Serve until SIGTERM or SIGINT, then drain and exit.

        The first signal makes ``/readyz`` answer 503 and lets pending calls decide until their
        deadlines (at most ``DRAIN_TIMEOUT``); a second signal stops at once. Either way every
        call still undecided gets the default decision before the process exits.
        """
        from callflow._runtime import tune_worker, use_uvloop

        options = {"use_uvloop": True} if use_uvloop(self.settings.loop) else {}
        tune_worker(self.settings)
        anyio.run(self.serve_until_signalled, host, port, backend_options=options)

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
        pending = running.engine.pending
        if self.signals > 1:
            running.stop(urgent=True)
            log.warning("bot.stopping_now", signal=name, pending=pending)
        else:
            running.stop()
            log.info("bot.stopping", signal=name, pending=pending)

    async def watch(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.signals += 1
                self.last = signal.Signals(signum).name
                self._stop()
