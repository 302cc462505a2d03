"""The heartbeat, the directory of live workers, and the take-over of dead workers' calls.

:class:`FleetWatch` runs on the worker's I/O loop, which runs no user code and stays
responsive when a handler blocks the app loop, so a busy worker keeps its heartbeat. When an
instance's heartbeat is gone, one script moves its pending (and adopted) calls into this
worker's adopted set and drops it from the instances set: only one survivor gets each call,
and if it dies too the next survivor finds the calls in *its* sets. For each call still
inside its platform timeout the watch claims ``final`` (taking the claim over when its holder
is no longer alive: the holder's POST may never have left) and sends the default decision at
once, since no handler can decide a dead worker's call any more. At start a worker also
adopts the calls its previous life (same ``INSTANCE_ID``) left pending.

Answered calls (:mod:`callflow.fleet.held`) are adopted from a dead instance the same way, by
one script, and confirmed and taken by :class:`~callflow.fleet.adoption.Adoptions`. A worker
judges a peer lost only once its own view has settled: after it starts, and after every beat
the store did not take, it waits three intervals and the breaker's longest back-off (the time a
live peer needs to beat again) before adopting the answered calls of instances whose
heartbeat is gone; so when Redis comes back from an outage longer than a heartbeat lives,
live workers do not adopt each other's calls. After such an outage (not at start: a peer
whose heartbeat is missing then is gone) the same wait holds back the take-over of undecided
calls too, since a call its owner decided while Redis was away is still in its pending set. A
worker that handed its calls off (a graceful stop) is adopted from at once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import anyio.abc
import structlog

from callflow.errors import ConfigError
from callflow.fleet.census import Directory, PendingCall
from callflow.fleet.stats import FleetStats
from callflow.fleet.store import HEARTBEATS_TO_LIVE, DecisionStore

if TYPE_CHECKING:
    from callflow.decisions import Decision
    from callflow.fleet.adoption import Adoptions
    from callflow.fleet.held import Adoption, HeldCalls, HeldRecord

__all__ = ["SEND_ALLOWANCE", "Decider", "FleetWatch"]

log = structlog.get_logger(__name__)

SEND_ALLOWANCE: Final = 0.05
"""A taken-over call with less time than this before its platform timeout is not sent."""


class Decider(Protocol):
    """What take-over needs to send a decision (a :class:`~callflow.graph.GraphClient`)."""

    async def decide(
        self,
        call_id: str,
        decision: Decision,
        *,
        tenant_id: str | None = None,
        deadline: float | None = None,
        scenario_id: str | None = None,
    ) -> Any:
        """Send ``decision`` for ``call_id`` before ``deadline`` (monotonic)."""
        ...


class FleetWatch:
    """Heartbeat, directory, and the take-over of dead workers' calls; one per worker.

    :meth:`run` beats every ``interval`` seconds (a heartbeat lives three intervals),
    refreshes ``directory``, takes over the calls of every dead instance (and, once at start,
    those its own previous life left), and sends the ``default`` decision through ``graph``
    for each adopted call still inside its platform timeout. ``address()`` is this worker's
    forwarding URL (None until its webhook listens). :meth:`stop` ends the beating and lets
    the sends in flight finish. The first beat must come before the worker admits calls (its
    pending set then holds only what a previous life left). ``on_taken(call_id, tenant_id)``
    is told of every call this worker sent the default for (its later notifications are
    then this worker's to take). With ``held`` and ``adoptions`` it also adopts the answered
    calls of lost instances (judged lost only ``settle`` seconds, plus three intervals,
    after this worker's last beat that failed, or its first) and checks its own held calls
    against the store at every beat.
    """

    def __init__(
        self,
        store: DecisionStore,
        graph: Decider,
        *,
        default: Decision,
        interval: float = 1.0,
        address: Callable[[], str | None] = lambda: None,
        directory: Directory | None = None,
        stats: FleetStats | None = None,
        max_sends: int = 64,
        on_taken: Callable[[str, str | None], None] | None = None,
        held: HeldCalls | None = None,
        adoptions: Adoptions | None = None,
        settle: float = 2.0,
    ) -> None:
        if not interval > 0:
            raise ConfigError(f"FleetWatch interval={interval!r}: expected seconds > 0")
        self._store = store
        self._graph = graph
        self._default = default
        self.interval = float(interval)
        self._address = address
        self.directory = directory if directory is not None else Directory()
        self.stats = stats if stats is not None else FleetStats()
        self._limit = anyio.Semaphore(max_sends)
        self._on_taken = on_taken
        self._busy: set[str] = set()
        self._done: OrderedDict[str, None] = OrderedDict()
        self._beating: anyio.CancelScope | None = None
        self._stopped = False
        self._adopted_own = False
        self._held = held
        self._adoptions = adoptions
        self._settle = float(settle)
        self._settled_at: float | None = None
        self._settled = False
        self._failed = False
        self._quiet_until = 0.0
        self._seen: dict[str, float] = {}
        self.beats = 0
        """Heartbeats the store accepted."""

    def stop(self) -> None:
        """End the beating; :meth:`run` returns once the take-over sends in flight are done."""
        self._stopped = True
        if self._beating is not None:
            self._beating.cancel()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Beat and watch until :meth:`stop` (or cancelled); started after the first beat."""
        if self._stopped:
            task_status.started()
            return
        async with anyio.create_task_group() as sends:
            with anyio.CancelScope() as beating:
                self._beating = beating
                await self._tick_safely(sends)
                task_status.started()
                while True:
                    await anyio.sleep(self.interval)
                    await self._tick_safely(sends)

    async def _tick_safely(self, sends: anyio.abc.TaskGroup) -> None:
        try:
            await self.tick(sends)
        except Exception:  # the watch keeps the worker in the fleet: never let it stop
            log.exception("fleet.watch_failed", instance=self._store.instance_id)

    async def tick(self, sends: anyio.abc.TaskGroup) -> None:
        """One heartbeat; start a send in ``sends`` for every adopted call not yet sent."""
        store = self._store
        ttl = self.interval * HEARTBEATS_TO_LIVE
        census = await store.beat(self._address(), ttl)
        now = time.monotonic()
        if census is None:
            self._settled_at = None  # the store is down: keep the last directory
            self._settled = False
            self._failed = True
            return
        if self._settled_at is None:
            self._settled_at = now + ttl + self._settle
            if self._failed:  # back from an outage: the heartbeats may all have expired
                self._quiet_until = self._settled_at
                self._failed = False
        settled = now >= self._settled_at
        quiet = now < self._quiet_until
        if settled and not self._settled:
            log.info("fleet.settled", instance=store.instance_id, live=len(census.live))
        self._settled = settled
        self.beats += 1
        self.directory.take(census)
        wall = time.time()
        for instance in census.live:
            self._seen[instance] = wall
        adopted = list(census.adopted)
        if not self._adopted_own:
            self._adopted_own = True
            left = await store.take_over(store.instance_id, force=True)
            if left:
                log.warning("instance.previous_life_adopted", calls=len(left))
                adopted += left
            await self._adopt(sends, store.instance_id, force=True)
        for dead in census.dead:
            if dead == store.instance_id:  # pragma: no cover - its key was set in this beat
                continue
            await self._adopt(sends, dead, handed_off_only=not settled)
            if quiet:
                continue  # a live peer may not have beaten again yet: take nothing over
            calls = await store.take_over(dead)
            if calls:
                log.warning("instance.taken_over", instance=dead, calls=len(calls))
                adopted += calls
        for call in adopted:
            if call.call_id in self._busy or call.call_id in self._done:
                continue
            self._busy.add(call.call_id)
            sends.start_soon(self._decide, call)
        if self._held is not None:
            await self._held.reconcile()

    async def _adopt(
        self,
        sends: anyio.abc.TaskGroup,
        instance: str,
        *,
        force: bool = False,
        handed_off_only: bool = False,
    ) -> None:
        """Adopt the answered calls ``instance`` held; start their confirmations."""
        held, adoptions = self._held, self._adoptions
        if held is None or adoptions is None:
            return
        adoption = await held.store.adopt(instance, force=force, handed_off_only=handed_off_only)
        if adoption is None:
            return
        seen = self._seen.pop(instance, None)
        lost_since = adoption.handed_at or seen
        log.warning(
            "instance.calls_adopted",
            instance=instance,
            reason=adoption.reason,
            calls=len(adoption.records),
        )
        for record in adoption.records:
            sends.start_soon(self._confirm, adoptions, adoption, record, lost_since)

    async def _confirm(
        self,
        adoptions: Adoptions,
        adoption: Adoption,
        record: HeldRecord,
        lost_since: float | None,
    ) -> None:
        try:
            async with self._limit:
                await adoptions.adopt(adoption, record, lost_since)
        except Exception:  # one call's trouble never stops the watch
            log.exception("call.adoption_failed", call_id=record.call_id)

    async def _decide(self, call: PendingCall) -> None:
        store = self._store
        try:
            async with self._limit:
                left = call.expires_at - time.time()
                if left <= SEND_ALLOWANCE:
                    log.warning(
                        "call.takeover_expired", call_id=call.call_id, late_by=round(-left, 3)
                    )
                    return
                if not await store.claim_orphan(call.call_id, left=left):
                    self.stats.add("dropped_elsewhere")
                    log.info(
                        "decision.dropped_elsewhere",
                        call_id=call.call_id,
                        decided_by="takeover",
                        message="another worker of the fleet already sent this call's decision",
                    )
                    return
                started = time.monotonic()
                try:
                    result = await self._graph.decide(
                        call.call_id,
                        self._default,
                        tenant_id=call.tenant_id,
                        deadline=started + left,
                    )
                except Exception as exc:  # GraphError, TokenError: logged like the engine's
                    log.error(
                        "call.decision_failed",
                        call_id=call.call_id,
                        decision=self._default.kind,
                        decided_by="takeover",
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    return
                self.stats.add("taken_over")
                if self._on_taken is not None:
                    self._on_taken(call.call_id, call.tenant_id)
                log.info(
                    "call.decided",
                    call_id=call.call_id,
                    decision=self._default.kind,
                    reason=getattr(self._default, "reason", None),
                    decided_by="takeover",
                    latency_ms=round((time.monotonic() - started) * 1000.0, 3),
                    attempts=getattr(result, "attempts", 1),
                )
        finally:
            with anyio.CancelScope(shield=True):
                await store.release(call.call_id, call.tenant_id)
            self._busy.discard(call.call_id)
            self._done[call.call_id] = None
            if len(self._done) > 10_000:
                self._done.popitem(last=False)
