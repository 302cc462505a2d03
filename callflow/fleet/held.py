"""Held calls as fleet state: every answered call a worker holds, in the store, with its memo.

Runs on the worker's I/O loop. :class:`HeldStore` is the Redis side (one script per step, all
keys under the fleet's hash tag, every record signed with the fleet secret):

``callflow:{ns}:held:{call_id}``
    A hash: ``owner`` (``instance#boot``, plain, for the scripts to compare) and ``v``, the
    signed record (JSON: call id, tenant, owner, when it was answered, the memo).
``callflow:{ns}:holds:{instance}``
    The ids of the calls an instance holds.
``callflow:{ns}:handed:{instance}``
    Set by a worker that stops gracefully: its calls are adopted at once, as ``handed_off``.

:class:`HeldCalls` is the worker's side: the calls it holds, written behind to the store (a
write is queued, the writer sends it; ``remember`` waits for its own), dropped when they end,
and checked against the store at every heartbeat (:meth:`HeldCalls.reconcile`): a call the
store has lost is written again, and a call that another worker owns now (it adopted it while
this one was frozen or cut off) is let go: this worker stops keeping it alive and ends it
locally, without touching it in Graph.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Final

import attrs
import structlog

from callflow.errors import ActionError
from callflow.fleet.stats import FleetStats
from callflow.fleet.store import RedisStore

__all__ = ["HANDED_TTL", "Adoption", "HeldCalls", "HeldRecord", "HeldStore"]

log = structlog.get_logger(__name__)

HANDED_TTL: Final = 600.0
"""Seconds a hand-off mark lives when nobody adopts the calls (a fleet of one stopping)."""
WRITE_WAIT: Final = 2.0
"""Seconds a held-call operation may wait for the store: none is on a decision's path, and
giving up early only means doing it again."""
WRITE_RETRY: Final = 0.5
"""Seconds before writes the store failed are tried again."""
RECORD_LIMIT: Final = 32_768
"""Characters a signed record may have (a 4 KiB memo, escaped, and the rest)."""
MAX_WRITES: Final = 32
RECONCILE_BATCH: Final = 1000
"""Held calls checked against the store per heartbeat (the next ones at the next beat)."""
"""Record writes in flight at once."""


@attrs.frozen
class HeldRecord:
    """A held call as the store keeps it: ``answered_at`` is epoch seconds, ``memo`` JSON."""

    call_id: str
    tenant_id: str | None
    owner: str
    answered_at: float
    memo: str = "{}"

    def encode(self) -> str:
        """The record's JSON (to be signed)."""
        return json.dumps(
            {
                "call": self.call_id,
                "tenant": self.tenant_id,
                "owner": self.owner,
                "answered": self.answered_at,
                "memo": self.memo,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str) -> HeldRecord | None:
        """The record in ``text`` (a verified signature's value); None when malformed."""
        try:
            value = json.loads(text)
            return cls(
                str(value["call"]),
                value["tenant"] if isinstance(value["tenant"], str) else None,
                str(value["owner"]),
                float(value["answered"]),
                str(value["memo"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    @property
    def instance(self) -> str:
        """The instance id of the owner."""
        return self.owner.rpartition("#")[0] or self.owner


@attrs.frozen
class Adoption:
    """The calls this worker took from ``instance`` (``reason``: ``owner_lost`` or
    ``handed_off``; ``handed_at``: epoch seconds of the hand-off, None when lost)."""

    instance: str
    reason: str
    records: tuple[HeldRecord, ...]
    handed_at: float | None = None


class HeldStore:
    """The held calls' records in the fleet's Redis, through one store client (``store``)."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.owner = store.holder
        self.instance_id = store.instance_id
        self._prefix = store.key("held") + ":"

    def _seal(self, record: HeldRecord) -> str:
        return self.store.signed.signer.seal("held", record.call_id, record.encode())

    def _open(self, call_id: str, sealed: object) -> HeldRecord | None:
        text = self.store.signed.signer.opened("held", call_id, sealed, limit=RECORD_LIMIT)
        if text is None:
            if sealed:
                self.store.signed.forged("held", call_id, sealed)
            return None
        record = HeldRecord.decode(text)
        return record if record is not None and record.call_id == call_id else None

    async def put(self, record: HeldRecord) -> bool | str | None:
        """Write ``record`` (owned by this worker): True once written, the owner value when
        another worker owns the call now, None when the store is in trouble."""
        store = self.store
        keys = (store.key("held", record.call_id), store.key("holds", self.instance_id))

        async def run() -> bool | str:
            result = await store.eval_script(
                "hold", keys, (self.owner, self._seal(record), record.call_id)
            )
            return result if isinstance(result, str) else True

        return await store.run("hold", run, None, WRITE_WAIT)

    async def drop(self, call_id: str) -> bool:
        """Forget a call this worker held (it ended); False when the store is in trouble."""
        store = self.store
        keys = (store.key("held", call_id), store.key("holds", self.instance_id))

        async def run() -> bool:
            await store.eval_script("drop_held", keys, (self.owner, call_id))
            return True

        return await store.run("drop_held", run, False, WRITE_WAIT)

    async def adopt(
        self, instance: str, *, force: bool = False, handed_off_only: bool = False
    ) -> Adoption | None:
        """Take the calls ``instance`` held (when its heartbeat is gone, or ``force``: this
        worker's previous life); None when it is alive, has nothing, or the store is in
        trouble. ``handed_off_only``: only if it handed its calls off."""
        store = self.store
        keys = (
            store.key("instance", instance),
            store.key("holds", instance),
            store.key("holds", self.instance_id),
            store.key("handed", instance),
        )
        args = (
            self.owner,
            "1" if force else "0",
            self._prefix,
            instance,
            store.suspect(instance),
            "1" if handed_off_only else "0",
        )

        async def run() -> Adoption | None:
            result = await store.eval_script("adopt_held", keys, args)
            if not isinstance(result, list) or len(result) < 2:
                return None
            reason, mark = str(result[0]), str(result[1])
            records = []
            for call_id, sealed in zip(result[2::2], result[3::2], strict=True):
                record = self._open(str(call_id), sealed)
                if record is not None:
                    records.append(record)
            if not records:
                return None
            handed_at = _float(mark)
            return Adoption(instance, reason, tuple(records), handed_at)

        return await store.run("adopt_held", run, None, WRITE_WAIT)

    async def owners(self, call_ids: Sequence[str]) -> list[str] | None:
        """The owner value of each call's record ('' when the store has none); None when
        the store is in trouble."""
        store = self.store

        async def run() -> list[str]:
            routing = (store.key("holds", self.instance_id),)  # the fleet's slot, for a cluster
            result = await store.eval_script("owners", routing, (self._prefix, *call_ids))
            return [str(owner) for owner in result]

        if not call_ids:
            return []
        return await store.run("owners", run, None, WRITE_WAIT)

    async def owner_of(self, call_id: str) -> str | None:
        """The instance that holds ``call_id`` by its signed record; None when none does
        (or the store is in trouble)."""
        store = self.store

        async def run() -> str | None:
            owner, sealed = await store.redis().hmget(store.key("held", call_id), "owner", "v")
            if owner is None or self._open(call_id, sealed) is None:
                return None
            return str(owner).rpartition("#")[0] or None

        return await store.run("owner_of", run, None, 0.5)

    async def hand_off(self) -> bool:
        """Mark this worker's calls handed off and drop its heartbeat: the fleet adopts them
        at its next beat. False when the store is in trouble."""
        store = self.store

        async def run() -> bool:
            pipe = store.redis().pipeline(transaction=False)
            pipe.set(
                store.key("handed", self.instance_id),
                repr(time.time()),
                px=round(HANDED_TTL * 1000),
            )
            pipe.delete(store.key("instance", self.instance_id))
            await pipe.execute()
            return True

        return await store.run("hand_off", run, False, 2.0)

    async def handed(self) -> bool:
        """True while this worker's hand-off mark is there (nobody adopted its calls yet)."""
        store = self.store

        async def run() -> bool:
            return bool(await store.redis().exists(store.key("handed", self.instance_id)))

        return await store.run("handed", run, False)


@attrs.define
class _Held:
    tenant_id: str | None
    answered_at: float
    memo: str = "{}"
    version: int = 1
    written: int = 0
    waiters: list[tuple[int, asyncio.Future[None]]] = attrs.field(factory=list)


class HeldCalls:
    """The calls this worker holds, written behind to the fleet's store; see the module
    docstring. ``on_lost(call_id, owner)`` is told of a call another worker owns now."""

    def __init__(
        self,
        store: HeldStore,
        *,
        on_lost: Callable[[str, str], object] | None = None,
        stats: FleetStats | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.stats = stats if stats is not None else FleetStats()
        self.on_lost = on_lost
        self._clock = clock
        self._calls: dict[str, _Held] = {}
        self._dirty: set[str] = set()
        self._dropped: set[str] = set()
        self._wake = asyncio.Event()
        self._limit = asyncio.Semaphore(MAX_WRITES)
        self._cursor = 0

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    # -- the worker's side (I/O loop) --------------------------------------------------------

    def hold(self, call_id: str, tenant_id: str | None, memo: str = "{}") -> None:
        """The worker holds ``call_id`` now (answered, created, joined or adopted)."""
        held = self._calls.get(call_id)
        if held is None:
            self._calls[call_id] = _Held(tenant_id, self._clock(), memo)
            self.stats.held_calls = len(self._calls)
        else:
            held.memo = memo
            held.version += 1
        self._dropped.discard(call_id)
        self._changed(call_id)

    async def remember(self, call_id: str, tenant_id: str | None, memo: str) -> None:
        """Keep ``memo`` for ``call_id`` and wait (at most 2 s) until the store has it."""
        if call_id not in self._calls:
            raise ActionError(
                f"call {call_id} is not held by this worker (answered, created, joined or "
                "adopted here): its memo is kept by the worker that holds it"
            )
        self.hold(call_id, tenant_id, memo)
        if not await self.stored(call_id, within=2.0):
            log.warning(
                "call.memo_not_stored",
                call_id=call_id,
                message="the fleet's store did not take the memo in time; it is written once "
                "the store answers",
            )

    def memo(self, call_id: str) -> str | None:
        """The memo last kept for ``call_id``."""
        held = self._calls.get(call_id)
        return held.memo if held is not None else None

    def ended(self, call_id: str, result: object = None) -> None:
        """``call_id`` ended: forget it here and in the store."""
        held = self._calls.pop(call_id, None)
        self._dirty.discard(call_id)
        if held is not None:
            self.stats.held_calls = len(self._calls)
            for _, waiter in held.waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._dropped.add(call_id)
            self._wake.set()

    def let_go(self, call_id: str) -> None:
        """Forget ``call_id`` here only: another worker owns it now, so its record stays."""
        self.ended(call_id)
        self._dropped.discard(call_id)  # queued by ended(): not this worker's to drop

    async def stored(self, call_id: str, within: float) -> bool:
        """True once the store has the current version of ``call_id``'s record (or the call
        is no longer held); False after ``within`` seconds."""
        held = self._calls.get(call_id)
        if held is None or held.written >= held.version:
            return True
        waiter = asyncio.get_running_loop().create_future()
        held.waiters.append((held.version, waiter))
        try:
            async with asyncio.timeout(within):
                await waiter
        except TimeoutError:
            return False
        return True

    def _changed(self, call_id: str) -> None:
        self._dirty.add(call_id)
        self._wake.set()

    # -- the writer (a task of the fleet's) ----------------------------------------------------

    async def run(self) -> None:
        """Write what changed, drop what ended; runs until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not await self.flush():
                await asyncio.sleep(WRITE_RETRY)  # the store is in trouble: try again soon
                self._wake.set()

    async def flush(self) -> bool:
        """Send the writes and drops queued now; False when some failed (they stay queued)."""
        dirty, self._dirty = self._dirty, set()
        dropped, self._dropped = self._dropped, set()
        results = await asyncio.gather(
            *(self._write(call_id) for call_id in dirty),
            *(self._drop(call_id) for call_id in dropped),
        )
        return all(results)

    async def _write(self, call_id: str) -> bool:
        held = self._calls.get(call_id)
        if held is None:
            return True
        version = held.version
        record = HeldRecord(call_id, held.tenant_id, self.store.owner, held.answered_at, held.memo)
        async with self._limit:
            result = await self.store.put(record)
        if result is None:
            if call_id in self._calls:
                self._dirty.add(call_id)
            return False
        if isinstance(result, str):
            self._lost(call_id, result)
            return True
        held.written = max(held.written, version)
        still = []
        for wanted, waiter in held.waiters:
            if wanted <= held.written:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((wanted, waiter))
        held.waiters = still
        return True

    async def _drop(self, call_id: str) -> bool:
        async with self._limit:
            done = await self.store.drop(call_id)
        if not done and call_id not in self._calls:
            self._dropped.add(call_id)
        return done

    def _lost(self, call_id: str, owner: str) -> None:
        if call_id not in self._calls:
            return
        self.let_go(call_id)
        log.warning(
            "call.let_go",
            call_id=call_id,
            owner=owner.rpartition("#")[0] or owner,
            message="another worker of the fleet adopted this call while this one was "
            "unreachable: it is theirs now",
        )
        if self.on_lost is not None:
            self.on_lost(call_id, owner)

    async def reconcile(self) -> None:
        """Check the calls held here against the store (at every heartbeat, at most
        :data:`RECONCILE_BATCH` of them, the next ones at the next beat): write again what
        it lost, let go of what another worker owns now."""
        every = [call_id for call_id in self._calls if call_id not in self._dirty]
        if not every:
            return
        start = self._cursor % len(every)
        ids = every[start : start + RECONCILE_BATCH]
        self._cursor = start + len(ids)
        owners = await self.store.owners(ids)
        if owners is None:
            return
        mine = self.store.owner
        for call_id, owner in zip(ids, owners, strict=True):
            if owner == mine or call_id not in self._calls:
                continue
            if owner:
                self._lost(call_id, owner)
            else:  # the store lost it (a Redis restarted empty, a failover): write it again
                self._changed(call_id)

    async def drain(self, within: float) -> bool:
        """Write everything queued (at most ``within`` seconds); True when all was written."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self._dirty or self._dropped:
                    if not await self.flush():
                        await asyncio.sleep(WRITE_RETRY)
                return True
        return False


def _float(text: str) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
