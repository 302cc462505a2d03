"""The decision store: exactly one decision per call across a fleet of workers.

One worker needs nothing but its in-process :class:`~callflow.engine.deadline.DecisionSlot`. Several
workers behind a load balancer share a :class:`RedisStore` (``CALLFLOW_STORE=redis://...``, or a
Redis Cluster or Sentinel: :mod:`callflow.fleet.connect`);
``memory`` (the default) keeps a single worker's behaviour and never imports Redis. A store
client lives on the event loop that enters it: the worker's I/O loop, which runs no user code.

What the fleet shares, per namespace ``ns`` (``APP_ID:FLEET_NAME``, or ``APP_ID:`` and a
digest of ``FLEET_SECRET``, see :func:`fleet_namespace`: two deployments of one app on one
Redis never touch each other's keys; the braces make it a Redis Cluster hash tag, so all
keys of a fleet live in one slot and every script (:mod:`callflow.fleet.scripts`) stays
atomic):

``callflow:{ns}:own:{call_id}``
    Intake ownership. The engine's ``admit`` hook claims it (``SET NX`` with a TTL past the
    platform timeout): the first worker to see an incoming call owns it and runs its
    handlers; a redelivery that lands on any other worker is dropped as a duplicate. The same
    script adds the call to the owner's pending set (one round trip; a duplicate leaves
    nothing behind).
``callflow:{ns}:pending:{instance}``
    A sorted set of the calls a worker owns and has not decided, scored by the epoch time at
    which the platform gives up on them; members are ``call_id|tenant_id``.
``callflow:{ns}:final:{call_id}``
    The send-time claim. :class:`~callflow.fleet.claims.FleetSink` wraps the worker's
    decision sink (the Graph client its outbox sends through): it claims ``final`` before any
    decision POST, skips the POST when another worker holds it
    (``decision.dropped_elsewhere``), and takes the call out of its pending set afterwards.
``callflow:{ns}:seen:{hash}``
    Shared dedupe of state updates and terminations.
``callflow:{ns}:instance:{id}``, ``callflow:{ns}:instances``
    The heartbeat: every ``HEARTBEAT_INTERVAL`` each worker refreshes its key (its forwarding
    URL and boot id as JSON, expiring after three intervals) and its membership of the set.
``callflow:{ns}:adopted:{instance}``
    Calls a worker took over from dead ones and has still to decide
    (:mod:`callflow.fleet.watch`).

Claims hold ``instance#boot`` (``boot`` is random per process) and are idempotent for their
holder, so the store may retry a command once after a lost connection (a restarted Redis)
without ever mistaking its own claim for another worker's. Every value a worker acts on is
signed with the fleet secret and checked when read (:mod:`callflow.fleet.signed`).

Redis trouble never costs a decision. Housekeeping operations (dedupe of state updates,
releasing a call) wait at most ``STORE_TIMEOUT``; the claims on the decision path (intake and
final) may wait a quarter of the time left before the platform timeout, at most 2 s, since
giving up on a Redis that is slow rather than gone (or on a reply stuck behind a busy event
loop) risks a double decision, while the rest of the time is still ample for the POST. When
Redis fails the worker decides with its local slot (``admit`` and the final claim count as
won, nothing counts as seen before), logs ``store.unavailable`` (at most every few seconds)
and counts ``callflow_store_failures_total``. A connection error, or three timeouts in a
row, opens a circuit breaker shared by every store client of the worker
(:mod:`callflow.fleet.breaker`): Redis is skipped for a short, growing back-off, the
heartbeat probes it, and once it answers ``store.recovered`` is logged and shared dedupe
resumes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Final, Protocol, Self, TypeVar
from urllib.parse import urlsplit

import anyio
import structlog

from callflow._store_url import mask_query, parse_store_url
from callflow.errors import ConfigError
from callflow.fleet.breaker import Breaker
from callflow.fleet.census import Census, PendingCall
from callflow.fleet.connect import StoreClient, connect
from callflow.fleet.scripts import SCRIPTS
from callflow.fleet.signed import SignedValues
from callflow.fleet.stats import FleetStats
from callflow.fleet.trust import FleetSigner

__all__ = [
    "CLAIM_CAP",
    "CLAIM_SHARE",
    "HEARTBEATS_TO_LIVE",
    "KEY_GRACE",
    "SEEN_TTL",
    "DecisionStore",
    "MemoryStore",
    "RedisStore",
    "fleet_namespace",
    "open_store",
    "without_credentials",
]

log = structlog.get_logger(__name__)

KEY_GRACE: Final = 120.0
"""Seconds the ``own``/``final`` keys outlive the platform timeout (late redeliveries)."""
SEEN_TTL: Final = 600.0
"""Seconds a state update or termination is remembered for shared dedupe."""
TRIM_AFTER: Final = 60.0
"""Pending and adopted entries this long past their platform timeout are dropped."""
HEARTBEATS_TO_LIVE: Final = 3
"""A heartbeat lives this many intervals; an instance without one is dead."""
CLAIM_SHARE: Final = 0.25
"""A claim on the decision path may wait this share of the time left before the platform
timeout for the store (at least ``STORE_TIMEOUT``, at most :data:`CLAIM_CAP`)."""
CLAIM_CAP: Final = 2.0
"""The longest a claim waits for the store, in seconds."""
LONG_WAIT: Final = 0.5
"""An operation that timed out after waiting this long counts towards tripping the circuit."""

_T = TypeVar("_T")


# -- the protocol --------------------------------------------------------------------------


class DecisionStore(Protocol):
    """What fleet mode needs of a shared store; no method fails because the store does.

    When the store is unreachable the answers that let the worker decide on its own come
    back instead (``admit`` and the claims True, nothing seen before, no census, nothing to
    take over), and the store counts and logs the failure.
    """

    instance_id: str

    async def admit(self, call_id: str, tenant_id: str | None, expires_at: float) -> bool:
        """Claim intake ownership of a call and register it as pending; True if this worker
        owns it. ``expires_at`` (epoch seconds) is when the platform gives up on the call."""
        ...

    async def claim(self, call_id: str, *, left: float | None = None) -> bool:
        """Claim the right to send the call's decision; True for this worker's claim only.

        ``left`` is how many seconds remain before the platform gives up on the call: the
        store may wait for a share of it (see :data:`CLAIM_SHARE`).
        """
        ...

    async def claim_orphan(self, call_id: str, *, left: float | None = None) -> bool:
        """Claim a taken-over call: True unless a live worker holds its final claim."""
        ...

    async def release(self, call_id: str, tenant_id: str | None) -> None:
        """Take the call out of this worker's pending and adopted sets (it was sent)."""
        ...

    async def first_seen(self, keys: Sequence[str]) -> tuple[bool, ...]:
        """For each key, True if no other worker has taken it within :data:`SEEN_TTL`."""
        ...

    async def beat(self, address: str | None, ttl: float) -> Census | None:
        """Publish this worker's heartbeat (``address``: its forwarding URL; it lives ``ttl``
        seconds), trim long-expired entries, and return the census; None if the store is down."""
        ...

    async def take_over(self, instance_id: str, *, force: bool = False) -> tuple[PendingCall, ...]:
        """Move a dead instance's calls into this worker's adopted set, atomically; the calls
        moved (none if it is alive or already taken over). ``force`` skips the liveness check
        (this worker's own previous life)."""
        ...

    async def retire(self) -> None:
        """Leave the fleet: drop this worker's heartbeat (what it left is taken over)."""
        ...


# -- the single-process store --------------------------------------------------------------


class MemoryStore:
    """The :class:`DecisionStore` of a lone worker: every claim is won, nothing is shared.

    The deadline slot already gives one decision per call inside one process; this store
    exists so that code written against the protocol runs unchanged without Redis.
    """

    def __init__(self, instance_id: str = "local") -> None:
        self.instance_id = instance_id

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

    async def admit(self, call_id: str, tenant_id: str | None, expires_at: float) -> bool:
        """Always True: this process owns every call it sees."""
        return True

    async def claim(self, call_id: str, *, left: float | None = None) -> bool:
        """Always True (the slot already decides once per process)."""
        return True

    async def claim_orphan(self, call_id: str, *, left: float | None = None) -> bool:
        """Always True."""
        return True

    async def release(self, call_id: str, tenant_id: str | None) -> None:
        """Nothing to release."""

    async def first_seen(self, keys: Sequence[str]) -> tuple[bool, ...]:
        """Everything is new (the engine dedupes within the process)."""
        return tuple(True for _ in keys)

    async def beat(self, address: str | None, ttl: float) -> Census | None:
        """A fleet of one: this instance, alive."""
        return Census({self.instance_id: address})

    async def take_over(self, instance_id: str, *, force: bool = False) -> tuple[PendingCall, ...]:
        """Nothing to take over."""
        return ()

    async def retire(self) -> None:
        """Nothing to leave."""


# -- Redis -------------------------------------------------------------------------------------


class RedisStore:
    """A :class:`DecisionStore` on Redis (``redis.asyncio``), for a fleet of workers.

    Use it as an async context manager in the event loop that uses it (a worker's I/O loop;
    several clients of one worker share ``breaker``, ``stats`` and ``boot``). ``timeout``
    bounds every operation, a lost connection is retried once at once (every command here
    is safe to repeat). ``label`` names the store in logs. ``secret``
    (``CALLFLOW_FLEET_SECRET``) signs and checks every value the store reads and
    writes; ``ca_bundle`` is the CA file trusted for a ``rediss://`` URL that names none.
    """

    def __init__(
        self,
        url: str,
        *,
        instance_id: str,
        secret: str | bytes,
        namespace: str = "callflow",
        timeout: float = 0.15,
        breaker: Breaker | None = None,
        stats: FleetStats | None = None,
        boot: str | None = None,
        label: str = "loop",
        ca_bundle: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        problems: list[str] = []
        try:
            parse_store_url(url)
        except ValueError as exc:
            problems.append(f"url={without_credentials(url)!r}: {exc}")
        if not instance_id or "#" in instance_id or "|" in instance_id:
            problems.append(
                f"instance_id={instance_id!r}: expected a non-empty name without '#' or '|'"
            )
        if not namespace or any(c in namespace for c in "{}"):
            problems.append(f"namespace={namespace!r}: expected a non-empty name without braces")
        if not timeout > 0:
            problems.append(f"timeout={timeout!r}: expected seconds > 0")
        signer: FleetSigner | None = None
        try:
            signer = FleetSigner(secret)
        except ConfigError as exc:
            problems.append(str(exc))
        if problems:
            raise ConfigError("invalid RedisStore settings: " + "; ".join(problems))
        assert signer is not None
        self.url = url
        self.instance_id = instance_id
        self.namespace = namespace
        self.label = label
        self.boot = boot if boot is not None else os.urandom(8).hex()
        self.breaker = breaker if breaker is not None else Breaker()
        self.stats = stats if stats is not None else FleetStats()
        self._signer = signer
        self._holder = f"{instance_id}#{self.boot}"
        self._signed = SignedValues(signer, self._holder, self.stats, label)
        self._timeout = float(timeout)
        self._clock = clock
        self._ca_bundle = ca_bundle
        self._prefix = f"callflow:{{{namespace}}}:"
        self._client: Any = None
        self._connection: StoreClient | None = None
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        self._scripts: dict[str, tuple[str, str]] = {}
        self._no_script: type[BaseException] = OSError
        self._beats = 0
        self._beat_ttl = 3.0
        self._suspects: dict[str, str] = {}
        """Instances whose heartbeat did not verify at the last beat, and the value found."""

    def __repr__(self) -> str:
        return f"<RedisStore {self.label} instance={self.instance_id!r} ns={self.namespace!r}>"

    def key(self, kind: str, name: str = "") -> str:
        """The Redis key of ``kind`` (own, final, seen, pending, adopted, instance, instances)."""
        return f"{self._prefix}{kind}:{name}" if name else f"{self._prefix}{kind}"

    async def __aenter__(self) -> Self:
        """Create the client and register the scripts; connections open on first use (a
        cluster client learns the cluster's slots here, waiting at most :data:`CLAIM_CAP`)."""
        connection = connect(
            self.url,
            # Operations are bounded by their own budget (see run), which may exceed timeout.
            timeout=max(self._timeout, CLAIM_CAP),
            client_name=f"callflow-{self.instance_id}-{self.label}",
            ca_bundle=self._ca_bundle,
        )
        self._errors = connection.errors
        self._no_script = connection.no_script
        self._connection = connection
        self._client = connection.client
        for name, source in SCRIPTS.items():
            self._scripts[name] = (hashlib.sha1(source.encode()).hexdigest(), source)
        await connection.open(max(self._timeout, CLAIM_CAP))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the client and its connections."""
        connection, self._connection, self._client = self._connection, None, None
        if connection is not None:
            with anyio.CancelScope(shield=True):
                await connection.aclose()

    def redis(self) -> Any:
        """The open client (RuntimeError when the store is not open)."""
        if self._client is None:
            raise RuntimeError(
                f"{self!r} is not open; expected `async with RedisStore(...)` around its use"
            )
        return self._client

    async def eval_script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script by its hash, or by its source when Redis does not know it (yet): a new
        or restarted server, a promoted replica, the node now owning the fleet's slot. EVAL
        caches the script there, so the next EVALSHA finds it."""
        client = self.redis()
        sha, source = self._scripts[name]
        try:
            return await client.evalsha(sha, len(keys), *keys, *args)
        except self._no_script:
            return await client.eval(source, len(keys), *keys, *args)

    def wait_for(self, left: float | None) -> float:
        """How long a claim may wait for Redis when ``left`` seconds remain before the platform
        timeout: :data:`CLAIM_SHARE` of it, between ``timeout`` and :data:`CLAIM_CAP`."""
        if left is None:
            return self._timeout
        return max(self._timeout, min(left * CLAIM_SHARE, CLAIM_CAP))

    async def run(
        self,
        op: str,
        action: Callable[[], Awaitable[_T]],
        fallback: _T,
        within: float | None = None,
    ) -> _T:
        """Run one Redis operation within ``within`` seconds (default ``timeout``);
        ``fallback`` when Redis is in trouble."""
        self.redis()  # raises when the store is not open
        if not self.breaker.allow():
            self.stats.add("store_failures")
            return fallback
        wait = self._timeout if within is None else within
        try:
            async with asyncio.timeout(wait):
                result = await action()
        except self._errors as exc:
            self.stats.add("store_failures")
            self.breaker.failed(self.label, op, exc, long_wait=wait >= LONG_WAIT)
            return fallback
        except (ValueError, TypeError) as exc:  # a reply of an unexpected shape
            self.stats.add("store_failures")
            log.error("store.bad_reply", store=self.label, op=op, error=type(exc).__name__)
            return fallback
        self.breaker.succeeded(self.label, op)
        return result

    async def ping(self) -> bool:
        """True when Redis answers within the timeout (a failure counts like any other)."""

        async def run() -> bool:
            return bool(await self.redis().ping())

        return await self.run("ping", run, False)

    # -- operations ----------------------------------------------------------------------

    async def admit(self, call_id: str, tenant_id: str | None, expires_at: float) -> bool:
        """See :meth:`DecisionStore.admit` (one script: claim ``own`` + ``ZADD`` pending)."""
        left = expires_at - self._clock()
        ttl_ms = _ms(max(left, 0.0) + KEY_GRACE)
        keys = (self.key("own", call_id), self.key("pending", self.instance_id))
        mine = self._signed.own("own", call_id)
        score, member = repr(expires_at), self._signer.member(call_id, tenant_id)

        async def replace(forged: str) -> Any:
            return await self.eval_script("replace", keys, (forged, mine, ttl_ms, score, member))

        async def run() -> bool:
            result = await self.eval_script("admit", keys, (mine, ttl_ms, score, member))
            return await self._signed.settle("own", call_id, result, replace)

        return await self.run("admit", run, True, self.wait_for(left))

    async def claim(self, call_id: str, *, left: float | None = None) -> bool:
        """See :meth:`DecisionStore.claim`."""
        keys = (self.key("final", call_id),)
        mine, ttl_ms = self._signed.own("final", call_id), _ms(KEY_GRACE * 2)

        async def replace(forged: str) -> Any:
            return await self.eval_script("replace", keys, (forged, mine, ttl_ms))

        async def run() -> bool:
            result = await self.eval_script("claim", keys, (mine, ttl_ms))
            return await self._signed.settle("final", call_id, result, replace)

        return await self.run("claim", run, True, self.wait_for(left))

    async def claim_orphan(self, call_id: str, *, left: float | None = None) -> bool:
        """See :meth:`DecisionStore.claim_orphan` (the holder lives if its signed heartbeat
        carries the holder's boot id)."""
        keys = (self.key("final", call_id),)
        mine, ttl_ms = self._signed.own("final", call_id), _ms(KEY_GRACE * 2)

        async def replace(forged: str) -> Any:
            return await self.eval_script("replace", keys, (forged, mine, ttl_ms))

        async def run() -> bool:
            result = await self.eval_script(
                "claim_orphan", keys, (mine, ttl_ms, self._prefix + "instance:")
            )
            if not isinstance(result, list):
                return bool(result)
            holder, beat = str(result[0]), result[1]
            if self._signed.held_alive(call_id, holder, beat, self._beat_ttl):
                return False  # a live worker holds it
            return await self._signed.settle("final", call_id, await replace(holder), replace)

        return await self.run("claim_orphan", run, True, self.wait_for(left))

    async def release(self, call_id: str, tenant_id: str | None) -> None:
        """See :meth:`DecisionStore.release`."""
        member = self._signer.member(call_id, tenant_id)

        async def run() -> None:
            pipe = self.redis().pipeline(transaction=False)
            pipe.zrem(self.key("pending", self.instance_id), member)
            pipe.zrem(self.key("adopted", self.instance_id), member)
            await pipe.execute()

        await self.run("release", run, None)

    async def first_seen(self, keys: Sequence[str]) -> tuple[bool, ...]:
        """See :meth:`DecisionStore.first_seen`."""
        if not keys:
            return ()
        redis_keys = tuple(self.key("seen", key) for key in keys)
        tag = f"{self._holder}#{os.urandom(6).hex()}"
        mine = [self._signer.seal("seen", key, tag) for key in keys]
        ttl_ms = _ms(SEEN_TTL)

        async def run() -> tuple[bool, ...]:
            results = await self.eval_script("seen", redis_keys, (ttl_ms, *mine))
            firsts = [True] * len(keys)
            forged: list[int] = []
            for i, result in enumerate(results):
                if not isinstance(result, str):
                    firsts[i] = bool(result)
                elif self._signer.opened("seen", keys[i], result) is not None:
                    firsts[i] = False  # another worker of the fleet took it
                else:
                    self._signed.forged("seen", keys[i], result)
                    forged.append(i)
            if forged:
                args = [item for i in forged for item in (results[i], mine[i])]
                again = await self.eval_script(
                    "replace_seen", [redis_keys[i] for i in forged], (ttl_ms, *args)
                )
                for i, result in zip(forged, again, strict=True):
                    if isinstance(result, str):
                        firsts[i] = self._signer.opened("seen", keys[i], result) is None
            return tuple(firsts)

        return await self.run("first_seen", run, tuple(True for _ in keys))

    async def beat(self, address: str | None, ttl: float) -> Census | None:
        """See :meth:`DecisionStore.beat` (a pipeline, then ``MGET`` of the members' keys).

        Only heartbeats signed by the fleet count: an instance whose key holds anything else
        is dead (its calls are taken over) and has no forwarding URL. Through Sentinel, the
        sentinels are asked first whether the master moved: a beat that finds it moved
        counts as failed (the heartbeats the new master has may be stale; see the watch).
        """
        if await _master_moved(self._connection, self.label, max(self._timeout, LONG_WAIT)):
            return None
        now = self._clock()
        payload = self._signer.seal_beat(self.instance_id, address, self.boot, os.getpid(), now)
        trim_before = now - TRIM_AFTER
        me = self.key("instance", self.instance_id)
        adopted = self.key("adopted", self.instance_id)
        self._beat_ttl = ttl

        async def run() -> Census:
            redis = self.redis()
            pipe = redis.pipeline(transaction=False)
            pipe.get(me)
            pipe.set(me, payload, px=_ms(ttl))
            pipe.sadd(self.key("instances"), self.instance_id)
            pipe.zremrangebyscore(self.key("pending", self.instance_id), "-inf", trim_before)
            pipe.zremrangebyscore(adopted, "-inf", trim_before)
            pipe.smembers(self.key("instances"))
            pipe.zrange(adopted, 0, -1, withscores=True)
            previous, _, _, _, _, members, mine = await pipe.execute()
            ids = sorted(members)
            values = await redis.mget([self.key("instance", i) for i in ids]) if ids else []
            self._check_clash(previous, ttl)
            live: dict[str, str | None] = {}
            dead: list[str] = []
            suspects: dict[str, str] = {}
            for instance, value in zip(ids, values, strict=True):
                if value is None:
                    dead.append(instance)
                    continue
                found = self._signer.open_beat(instance, value, max_age=ttl, now=now)
                if found is None:
                    self._signed.forged("beat", instance, value)
                    dead.append(instance)
                    suspects[instance] = value
                else:
                    live[instance] = found.url
            self._suspects = suspects
            calls, forged = self._signed.verified([item for pair in mine for item in pair])
            if forged:
                await redis.zrem(adopted, *forged)
            return Census(live, tuple(dead), calls)

        return await self.run("beat", run, None, max(self._timeout, ttl / HEARTBEATS_TO_LIVE))

    def _check_clash(self, previous: str | None, ttl: float) -> None:
        self._beats += 1
        if self._beats == 1 or previous is None:
            return
        found = self._signer.open_beat(self.instance_id, previous, max_age=ttl)
        if found is not None and found.boot != self.boot:
            log.error(
                "fleet.instance_id_clash",
                instance=self.instance_id,
                message="another live worker uses the same CALLFLOW_INSTANCE_ID; expected a "
                "unique id per worker",
            )

    async def take_over(self, instance_id: str, *, force: bool = False) -> tuple[PendingCall, ...]:
        """See :meth:`DecisionStore.take_over` (one script). Only calls whose set members are
        signed by the fleet come back; forged ones are dropped from the adopted set."""
        keys = (
            self.key("instance", instance_id),
            self.key("pending", instance_id),
            self.key("adopted", instance_id),
            self.key("adopted", self.instance_id),
            self.key("instances"),
            self.key("holds", instance_id),
        )
        args = (instance_id, "1" if force else "0", self.suspect(instance_id))

        async def run() -> tuple[PendingCall, ...]:
            calls, forged = self._signed.verified(await self.eval_script("take_over", keys, args))
            if forged:
                await self.redis().zrem(keys[3], *forged)
            return calls

        return await self.run("take_over", run, (), max(self._timeout, CLAIM_CAP))

    async def retire(self) -> None:
        """See :meth:`DecisionStore.retire`."""

        async def run() -> None:
            await self.redis().delete(self.key("instance", self.instance_id))

        await self.run("retire", run, None)

    # -- for the other parts of the fleet's store (held calls) -------------------------------

    @property
    def signed(self) -> SignedValues:
        """The signer and checker of this client's values."""
        return self._signed

    @property
    def holder(self) -> str:
        """This worker's claim value: ``instance#boot``."""
        return self._holder

    def suspect(self, instance_id: str) -> str:
        """The forged heartbeat the last beat found for ``instance_id`` ('' for none)."""
        return self._suspects.get(instance_id, "")


async def _master_moved(connection: StoreClient | None, label: str, within: float) -> bool:
    """Through Sentinel: True (logged) when the sentinels name another master than the one
    the store's connections reach, which are then dropped; see :meth:`StoreClient.master_moved`."""
    if connection is None:
        return False
    try:
        async with asyncio.timeout(within):
            moved = await connection.master_moved()
    except TimeoutError:
        return False
    if moved:
        log.warning(
            "store.master_moved",
            store=label,
            message="the sentinels name another master: this worker's connections to the old "
            "one are dropped, and this beat counts as failed",
        )
    return moved


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def fleet_namespace(app_id: str | None, secret: str | bytes, name: str | None = None) -> str:
    """The namespace of a fleet's keys: ``APP_ID:FLEET_NAME``, or without a fleet name
    ``APP_ID:`` and a digest of the fleet ``secret`` (keyed: it tells nothing of the secret).

    Two deployments of one app on one Redis (staging and production, say) have different
    secrets, so they never read, take over or delete each other's keys.
    """
    return f"{app_id or 'callflow'}:{name or FleetSigner(secret).fleet_tag()}"


def open_store(
    url: str,
    *,
    instance_id: str,
    secret: str | bytes | None = None,
    namespace: str = "callflow",
    timeout: float = 0.15,
    breaker: Breaker | None = None,
    stats: FleetStats | None = None,
    boot: str | None = None,
    label: str = "loop",
) -> RedisStore | MemoryStore:
    """The store ``CALLFLOW_STORE`` names: ``memory``, or a Redis URL (imported lazily; it
    needs the fleet ``secret``)."""
    if url == "memory":
        return MemoryStore(instance_id)
    if not secret:
        raise ConfigError(
            "a Redis store needs the fleet secret (CALLFLOW_FLEET_SECRET); expected every "
            "worker of the fleet to share one"
        )
    return RedisStore(
        url,
        instance_id=instance_id,
        secret=secret,
        namespace=namespace,
        timeout=timeout,
        breaker=breaker,
        stats=stats,
        boot=boot,
        label=label,
    )


def without_credentials(url: str) -> str:
    """``url`` without its user name and password, and with ``***`` for the value of any
    ``*password=`` query option such as ``sentinel_password=`` (for logs)."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return mask_query(url)
    return mask_query(parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl())
