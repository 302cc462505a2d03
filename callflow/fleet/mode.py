"""Fleet mode of one worker: what the worker wires in when ``CALLFLOW_STORE`` names Redis.

:class:`Fleet` brings together the store (:mod:`callflow.fleet.store`), the claims
(:mod:`callflow.fleet.claims`), forwarding (:mod:`callflow.fleet.forwarding`) and the watch
(:mod:`callflow.fleet.watch`). It lives on the worker's I/O loop (enter it there), which runs
no user code, so a handler that blocks the app loop cannot stop the heartbeat.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import anyio.abc
import structlog

from callflow.errors import ConfigError
from callflow.fleet.breaker import Breaker
from callflow.fleet.census import Directory
from callflow.fleet.claims import FleetSink, SharedDedupe
from callflow.fleet.forwarding import Forwarder
from callflow.fleet.stats import FleetStats
from callflow.fleet.store import RedisStore, fleet_namespace, without_credentials
from callflow.fleet.trust import FleetSigner, ForwardTargets
from callflow.fleet.watch import Decider, FleetWatch
from callflow.settings import plain_redis_problem

if TYPE_CHECKING:
    from callflow.decisions import Decision
    from callflow.engine.book import CallBook
    from callflow.engine.deadline import DecisionSink, DecisionSlot
    from callflow.events import IncomingCall
    from callflow.settings import Settings

__all__ = ["REFRESH_EVERY", "Fleet", "epoch_of", "instance_callback_url", "internal_url"]

log = structlog.get_logger(__name__)

REFRESH_EVERY: Final = 0.1
"""Seconds between two reads of the fleet's directory on forwarding misses."""


def instance_callback_url(callback_url: str, instance_id: str) -> str:
    """``callback_url`` with ``instance=INSTANCE_ID`` in its query (replacing one already there).

    Graph posts every later notification of a call to the ``callbackUri`` its decision named,
    so the query pins the rest of the call to the worker that decided it.
    """
    parts = urlsplit(callback_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "instance"]
    query.append(("instance", instance_id))
    return urlunsplit(parts._replace(query=urlencode(query)))


def epoch_of(monotonic: float) -> float:
    """The epoch time of a ``time.monotonic()`` instant of this process."""
    return time.time() + (monotonic - time.monotonic())


def internal_url(host: str, port: int) -> str:
    """Where other workers reach this one: the bound address, the host name for a wildcard."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class Fleet:
    """Fleet mode of one worker (``CALLFLOW_STORE=redis://...``): what the bot wires in.

    Everything lives on the worker's I/O loop (enter it there): one Redis store for intake
    ownership (:meth:`admit`, the intake's hook), the final claims of every decision sent
    (:meth:`sink`), the webhook's forwarding and shared-dedupe hook (``webhook``), and the
    :class:`~callflow.fleet.watch.FleetWatch` (:meth:`watch`). The I/O loop runs no user
    code, so a handler that blocks the app loop cannot stop the heartbeat. The bot sets
    ``address`` once its webhook listens.
    """

    def __init__(self, settings: Settings) -> None:
        if settings.store == "memory":
            raise ConfigError("Fleet needs CALLFLOW_STORE=redis://...; got 'memory'")
        problem = plain_redis_problem(settings.store, settings.allow_insecure_redis)
        if problem is not None:  # settings made in code skip Settings.from_env's checks
            raise ConfigError(problem)
        self.settings = settings
        self.stats = FleetStats()
        self.breaker = Breaker()
        self.boot = os.urandom(8).hex()
        self.directory = Directory()
        self.address: str | None = None
        """This worker's forwarding URL, once its webhook listens."""
        self.namespace = fleet_namespace(
            settings.app_id, settings.fleet_secret or "", settings.fleet_name
        )
        """The fleet's key namespace (see :func:`~callflow.fleet.store.fleet_namespace`)."""
        self.callback_url = (
            instance_callback_url(settings.callback_url, settings.instance_id)
            if settings.callback_url
            else None
        )
        """``CALLBACK_URL`` with ``instance=INSTANCE_ID``: the callbackUri of decisions."""
        self.webhook: Forwarder | None = None
        self._store: RedisStore | None = None
        self._watch: FleetWatch | None = None
        self._watch_done: anyio.Event | None = None
        self._refreshed = -1e9
        self._refreshing: asyncio.Future[None] | None = None
        self._stack = AsyncExitStack()

    def open_store(self, label: str) -> RedisStore:
        """A new Redis store client, for the loop that will enter it."""
        s = self.settings
        return RedisStore(
            s.store,
            instance_id=s.instance_id,
            secret=s.fleet_secret or "",
            ca_bundle=s.ca_bundle,
            namespace=self.namespace,
            timeout=s.store_timeout,
            breaker=self.breaker,
            stats=self.stats,
            boot=self.boot,
            label=label,
        )

    async def __aenter__(self) -> Self:
        """Open the loop's store and the forwarding hook; log whether Redis answers."""
        s = self.settings
        async with AsyncExitStack() as stack:
            store = await stack.enter_async_context(self.open_store("loop"))
            stats = self.stats
            self.webhook = await stack.enter_async_context(
                Forwarder(
                    s.instance_id,
                    self.directory.url,
                    signer=FleetSigner(s.fleet_secret or ""),
                    targets=ForwardTargets(s.forward_allow),
                    dedupe=SharedDedupe(store, stats).fresh,
                    on_forwarded=lambda: stats.add("forwarded"),
                    refresh=self.refresh_directory,
                )
            )
            reachable = await store.ping()
            log.info(
                "fleet.joining",
                instance=s.instance_id,
                store=without_credentials(s.store),
                namespace=self.namespace,
                reachable=reachable,
            )
            self._store = store
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the forwarding session and the loop's store."""
        await self._stack.aclose()

    def _loop_store(self) -> RedisStore:
        if self._store is None:
            raise RuntimeError("Fleet is not open; expected `async with Fleet(settings)`")
        return self._store

    async def admit(self, call: IncomingCall, slot: DecisionSlot) -> bool:
        """The engine's intake hook: True when this worker owns the call."""
        return await self._loop_store().admit(call.call_id, call.tenant_id, epoch_of(slot.expires))

    def sink(self, inner: DecisionSink) -> DecisionSink:
        """The bot loop's sink: claim the call's final decision, then send through ``inner``."""
        return FleetSink(inner, self._loop_store(), self.stats)

    async def watch(
        self,
        graph: Decider,
        default: Decision,
        calls: CallBook | None = None,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the :class:`~callflow.fleet.watch.FleetWatch` (heartbeat, directory,
        take-over) until cancelled; started after the first beat. On the way out the worker
        retires from the fleet. ``calls`` (the worker's book) learns of the calls taken over
        here."""
        watch = self._watch = FleetWatch(
            self._loop_store(),
            graph,
            default=default,
            interval=self.settings.heartbeat_interval,
            address=lambda: self.address,
            directory=self.directory,
            stats=self.stats,
            on_taken=None if calls is None else calls.took,
        )
        self._watch_done = anyio.Event()
        try:
            await watch.run(task_status=task_status)
        finally:
            with anyio.CancelScope(shield=True):
                await self._loop_store().retire()
            self._watch_done.set()

    async def announce(self) -> None:
        """Publish this worker's heartbeat with its forwarding ``address`` now, rather than at
        the next beat: a worker is ready only once the fleet can reach it."""
        if self._watch is not None:
            await self._watch.beat_now()

    async def refresh_directory(self) -> None:
        """Read the fleet's directory from the store again (a forwarding lookup missed).

        Concurrent calls share one read, and the store is read at most every
        ``REFRESH_EVERY`` seconds however many misses there are.
        """
        watch = self._watch
        if watch is None:
            return
        now = time.monotonic()
        if now - self._refreshed < REFRESH_EVERY and self._refreshing is None:
            return
        if self._refreshing is None:
            self._refreshed = now
            self._refreshing = asyncio.get_running_loop().create_future()
            try:
                await watch.beat_now()
            finally:
                done, self._refreshing = self._refreshing, None
                done.set_result(None)
        else:
            await asyncio.shield(self._refreshing)

    async def stop_watch(self) -> None:
        """End the heartbeat; wait (at most one platform timeout) for the take-over sends in
        flight and the retirement."""
        watch, done = self._watch, self._watch_done
        if watch is None or done is None:
            return
        watch.stop()
        with anyio.move_on_after(self.settings.platform_timeout):
            await done.wait()
