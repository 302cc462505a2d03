"""A worker's mode: fleet mode (:class:`Fleet`), or a lone worker (:class:`Solo`).

The worker asks its mode, and only its mode, for what differs between the two: the
``callbackUri`` of its decisions, the engine's intake hook, the decision sink around the Graph
client, the background heartbeat, the webhook's fleet hook, what to do once the webhook
listens, and the counters for the metrics. :class:`Solo` adds nothing (the worker behaves as
if there were no fleet); :class:`Fleet` wires in the store (:mod:`callflow.fleet.store`), the
claims (:mod:`callflow.fleet.claims`), forwarding (:mod:`callflow.fleet.forwarding`) and the
watch (:mod:`callflow.fleet.watch`).

Both live on the worker's I/O loop (enter them there). The I/O loop runs no user code, so a
handler that blocks the app loop cannot stop the heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Final, Protocol, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import anyio.abc
import structlog

from callflow.control.book import CallBook
from callflow.control.memory import LocalMemory, Memory
from callflow.errors import ConfigError
from callflow.fleet.adoption import Adoptions, CallReader, Taker
from callflow.fleet.breaker import Breaker
from callflow.fleet.census import Directory
from callflow.fleet.claims import FleetSink, SharedDedupe
from callflow.fleet.forwarding import Forwarder
from callflow.fleet.held import HeldCalls, HeldStore
from callflow.fleet.prompts import SharedPrompts
from callflow.fleet.stats import FleetStats
from callflow.fleet.store import (
    HEARTBEATS_TO_LIVE,
    RedisStore,
    fleet_namespace,
    without_credentials,
)
from callflow.fleet.trust import FleetSigner, ForwardTargets
from callflow.fleet.watch import Decider, FleetWatch
from callflow.settings import plain_redis_problem

if TYPE_CHECKING:
    from callflow.decisions import Decision
    from callflow.engine.deadline import DecisionSink, DecisionSlot
    from callflow.events import IncomingCall
    from callflow.settings import Settings

__all__ = [
    "REFRESH_EVERY",
    "Fleet",
    "FleetMetrics",
    "Solo",
    "epoch_of",
    "instance_callback_url",
    "internal_url",
    "worker_mode",
]

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


class FleetGraph(Decider, CallReader, Protocol):
    """What fleet mode asks of Graph (a :class:`~callflow.graph.GraphClient`): send a taken
    over call's default decision, confirm an adopted call."""


class FleetMetrics(Protocol):
    """What a mode needs of the worker's metrics (a :class:`~callflow.metrics.Metrics`)."""

    def attach_fleet(self, stats: FleetStats) -> None:
        """Read the fleet-mode counters at scrape time."""


def worker_mode(settings: Settings, calls: CallBook | None = None) -> Fleet | Solo:
    """The mode ``CALLFLOW_STORE`` names: a lone worker for ``memory``, else fleet mode.
    ``calls`` is the worker's book of calls."""
    return Solo(settings) if settings.store == "memory" else Fleet(settings, calls)


class Solo:
    """A lone worker (``CALLFLOW_STORE=memory``): the mode that adds nothing.

    Decisions name ``CALLBACK_URL`` as it is, the engine admits every call without asking
    anyone, decisions go straight to the Graph client, nothing runs in the background, and the
    webhook has no fleet hook.
    """

    def __init__(self, settings: Settings) -> None:
        self.callback_url = settings.callback_url
        """``CALLBACK_URL``: the callbackUri of decisions."""
        self.memory = LocalMemory()
        """Memos of held calls (``call.remember``), kept in the process."""
        self.prompts: SharedPrompts | None = None
        """No store to share spoken prompts through: this worker serves what it named."""

    @property
    def admission(self) -> None:
        """No intake hook: the deadline slot alone decides once per call."""
        return None

    @property
    def webhook(self) -> None:
        """No fleet hook for the webhook."""
        return None

    async def __aenter__(self) -> Self:
        """Nothing to open."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Nothing to close."""

    def sink(self, inner: DecisionSink) -> DecisionSink:
        """``inner`` itself: every decision is this worker's to send."""
        return inner

    def holding(self, call_id: str, tenant_id: str | None) -> None:
        """The worker holds a call now: nothing to share."""

    def ended(self, call_id: str, result: object = None) -> None:
        """A call ended: forget its memo."""
        self.memory.ended(call_id)

    @contextlib.asynccontextmanager
    async def watching(
        self,
        tasks: anyio.abc.TaskGroup,
        graph: FleetGraph,
        default: Decision,
        calls: CallBook,
        take: Taker,
    ) -> AsyncIterator[None]:
        """Nothing to watch."""
        yield

    async def listening(self, host: str, port: int) -> None:
        """Nobody to tell."""

    def report_to(self, metrics: FleetMetrics) -> None:
        """No fleet counters."""


class Fleet:
    """Fleet mode of one worker (``CALLFLOW_STORE=redis://...``): what the worker wires in.

    Everything lives on the worker's I/O loop (enter it there): one Redis store for intake
    ownership (:meth:`admit`, the intake's hook), the final claims of every decision sent
    (:meth:`sink`), the webhook's forwarding and shared-dedupe hook (``webhook``), and the
    :class:`~callflow.fleet.watch.FleetWatch` (:meth:`watching`). Once its webhook listens the
    worker says where (:meth:`listening`), and the fleet learns its forwarding URL.
    """

    def __init__(self, settings: Settings, calls: CallBook | None = None) -> None:
        if settings.store == "memory":
            raise ConfigError("Fleet needs CALLFLOW_STORE=redis://...; got 'memory'")
        problem = plain_redis_problem(settings.store, settings.allow_insecure_redis)
        if problem is not None:  # settings made in code skip Settings.from_env's checks
            raise ConfigError(problem)
        s = self.settings = settings
        stats = self.stats = FleetStats()
        self.breaker = Breaker()
        self.boot = os.urandom(8).hex()
        self.directory = Directory()
        self.namespace = fleet_namespace(s.app_id, s.fleet_secret or "", s.fleet_name)
        """The fleet's key namespace (see :func:`~callflow.fleet.store.fleet_namespace`)."""
        self.callback_url = (
            instance_callback_url(s.callback_url, s.instance_id) if s.callback_url else None
        )
        """``CALLBACK_URL`` with ``instance=INSTANCE_ID``: the callbackUri of decisions."""
        self._store = self.open_store("loop")
        self.held_store = HeldStore(self._store)
        book = calls if calls is not None else CallBook()
        self.held = HeldCalls(
            self.held_store,
            on_lost=lambda call_id, owner: book.end(call_id, by="fleet"),
            stats=stats,
        )
        """The calls this worker holds, written behind to the store (adopted when it is lost)."""
        self.memory: Memory = self.held
        """Memos of held calls (``call.remember``): written to the store with their call."""
        self.prompts: SharedPrompts | None = SharedPrompts(self._store)
        """What spoken prompts say, in the store: any worker serves any of them."""
        self.webhook = Forwarder(
            s.instance_id,
            self.directory.url,
            signer=FleetSigner(s.fleet_secret or ""),
            targets=ForwardTargets(s.forward_allow),
            dedupe=SharedDedupe(self._store, stats).fresh,
            on_forwarded=lambda: stats.add("forwarded"),
            refresh=self.refresh_directory,
            owner_of=self.held_store.owner_of,
            # a hand-off is adopted within a beat; a lost owner within its heartbeat's life
            adoption_wait=s.heartbeat_interval * (HEARTBEATS_TO_LIVE + 1) + 1.0,
        )
        """The webhook's fleet hook: forwarding, and shared dedupe of state updates."""
        self._ttl = s.heartbeat_interval * HEARTBEATS_TO_LIVE
        self._address: str | None = None
        self._open = False
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
            store = await stack.enter_async_context(self._store)
            await stack.enter_async_context(self.webhook)
            reachable = await store.ping()
            log.info(
                "fleet.joining",
                instance=s.instance_id,
                store=without_credentials(s.store),
                namespace=self.namespace,
                reachable=reachable,
            )
            self._open = True
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the forwarding session and the loop's store."""
        self._open = False
        await self._stack.aclose()

    def _loop_store(self) -> RedisStore:
        if not self._open:
            raise RuntimeError("Fleet is not open; expected `async with Fleet(settings)`")
        return self._store

    @property
    def admission(self) -> Callable[[IncomingCall, DecisionSlot], Awaitable[bool]]:
        """The engine's intake hook: :meth:`admit`."""
        return self.admit

    async def admit(self, call: IncomingCall, slot: DecisionSlot) -> bool:
        """The engine's intake hook: True when this worker owns the call."""
        return await self._loop_store().admit(call.call_id, call.tenant_id, epoch_of(slot.expires))

    def sink(self, inner: DecisionSink) -> DecisionSink:
        """The worker's sink: claim the call's final decision, then send through ``inner``."""
        return FleetSink(inner, self._loop_store(), self.stats)

    def holding(self, call_id: str, tenant_id: str | None) -> None:
        """The worker holds ``call_id`` now (answered, created or joined): record it in the
        store (written behind), so the fleet adopts it if this worker is lost."""
        self.held.hold(call_id, tenant_id)

    def ended(self, call_id: str, result: object = None) -> None:
        """A call ended: drop it from the store."""
        self.held.ended(call_id)

    @contextlib.asynccontextmanager
    async def watching(
        self,
        tasks: anyio.abc.TaskGroup,
        graph: FleetGraph,
        default: Decision,
        calls: CallBook,
        take: Taker,
    ) -> AsyncIterator[None]:
        """Run the :class:`~callflow.fleet.watch.FleetWatch` (heartbeat, directory, take-over,
        adoption) and the writer of held calls in ``tasks`` for the duration of the block,
        which starts after the first beat.

        ``graph`` sends the ``default`` decision of each call taken over (``calls``, the
        worker's book, learns of them) and confirms each answered call adopted, which
        ``take`` then hands to the worker. Leaving the block ends the heartbeat, waits (at
        most one platform timeout) for the take-over sends in flight, and leaves the fleet:
        a worker that holds calls hands them off (:meth:`hand_off`), others just retire.
        """
        store = self._loop_store()
        held = self.held
        watch = FleetWatch(
            store,
            graph,
            default=default,
            interval=self.settings.heartbeat_interval,
            address=self._forwarding_url,
            directory=self.directory,
            stats=self.stats,
            on_taken=calls.took,
            held=held,
            adoptions=Adoptions(graph, held, take, self.stats),
            settle=self.breaker.longest_backoff,
        )
        done = anyio.Event()

        async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            try:
                await watch.run(task_status=task_status)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.hand_off()
                done.set()

        writer = anyio.CancelScope()

        async def write() -> None:
            with writer:
                await held.run()

        tasks.start_soon(write)
        await tasks.start(run)
        try:
            yield
        finally:
            watch.stop()
            with anyio.move_on_after(self.settings.platform_timeout):
                await done.wait()
            writer.cancel()

    async def hand_off(self) -> None:
        """Leave the fleet. With calls held: write what is queued, mark them handed off and
        drop the heartbeat, so that a survivor adopts them at its next beat (reason
        ``handed_off``), and wait (at most three heartbeat intervals) until one did."""
        store, held = self._loop_store(), self.held
        if not len(held):
            await store.retire()
            return
        count = len(held)
        await held.drain(2.0)
        if not await self.held_store.hand_off():
            log.warning("fleet.hand_off_failed", calls=count)
            return
        started = time.monotonic()
        adopted = False
        with anyio.move_on_after(self.settings.heartbeat_interval * HEARTBEATS_TO_LIVE):
            while not adopted:
                await anyio.sleep(0.05)
                adopted = not await self.held_store.handed()
        log.info(
            "fleet.handed_off",
            calls=count,
            adopted=adopted,
            waited=round(time.monotonic() - started, 3),
        )

    def _forwarding_url(self) -> str | None:
        return self._address

    async def listening(self, host: str, port: int) -> None:
        """The webhook listens on ``host:port``: publish this worker's forwarding URL
        (``INTERNAL_URL``, or ``http://HOST:PORT``) in a heartbeat now, rather than at the
        next beat: a worker is ready only once the fleet can reach it."""
        if self._address is not None:
            raise RuntimeError("Fleet.listening: this worker's address is known already")
        self._address = self.settings.internal_url or internal_url(host, port)
        await self._beat_now()

    async def _beat_now(self) -> None:
        """One heartbeat (with the current address) and a fresh directory, now; take-over
        stays with the watch's periodic beat."""
        census = await self._loop_store().beat(self._address, self._ttl)
        if census is not None:
            self.directory.take(census)

    async def refresh_directory(self) -> None:
        """Read the fleet's directory from the store again (a forwarding lookup missed).

        Concurrent calls share one read, and the store is read at most every
        ``REFRESH_EVERY`` seconds however many misses there are.
        """
        now = time.monotonic()
        if now - self._refreshed < REFRESH_EVERY and self._refreshing is None:
            return
        if self._refreshing is None:
            self._refreshed = now
            self._refreshing = asyncio.get_running_loop().create_future()
            try:
                await self._beat_now()
            finally:
                done, self._refreshing = self._refreshing, None
                done.set_result(None)
        else:
            await asyncio.shield(self._refreshing)

    def report_to(self, metrics: FleetMetrics) -> None:
        """Have ``metrics`` read the fleet counters (store failures, take-overs, ...)."""
        metrics.attach_fleet(self.stats)
