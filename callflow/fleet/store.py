"""The decision store: exactly one decision per call across a fleet of workers.

One worker needs nothing but its in-process :class:`~callflow.engine.deadline.DecisionSlot`. Several
workers behind a load balancer share a :class:`RedisStore` (``CALLFLOW_STORE=redis://...``);
``memory`` (the default) keeps a single worker's behaviour and never imports Redis.

What the fleet shares, per namespace ``ns`` (``APP_ID:FLEET_NAME``, or ``APP_ID:`` and a
digest of ``FLEET_SECRET``, see :func:`fleet_namespace`: two deployments of one app on one
Redis never touch each other's keys; the braces make it a Redis Cluster hash tag, so all
keys of a fleet live in one slot and every script stays atomic):

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
    The send-time claim. :class:`FleetSink` wraps the worker's decision sink (the Graph
    client its outbox sends through): it claims ``final`` before any
    decision POST, skips the POST when another worker holds it
    (``decision.dropped_elsewhere``), and takes the call out of its pending set afterwards.
``callflow:{ns}:seen:{hash}``
    Shared dedupe of state updates and terminations.
``callflow:{ns}:instance:{id}``, ``callflow:{ns}:instances``
    The heartbeat: every ``HEARTBEAT_INTERVAL`` each worker refreshes its key (its forwarding
    URL and boot id as JSON, expiring after three intervals) and its membership of the set.
``callflow:{ns}:adopted:{instance}``
    Calls a worker took over from dead ones and has still to decide.

Claims hold ``instance#boot`` (``boot`` is random per process) and are idempotent for their
holder, so the store may retry a command once after a lost connection (a restarted Redis)
without ever mistaking its own claim for another worker's.

Every value a worker acts on is signed with the fleet secret (``CALLFLOW_FLEET_SECRET``, see
:mod:`callflow.fleet.trust`): claims (``instance#boot#mac``, bound to their key), pending and
adopted members (``call_id|tenant_id|mac``) and heartbeats (a ``mac`` and a time ``t`` in the
JSON). A claim script that loses returns the holder, and the worker checks its signature: a
forged holder is replaced (compare-and-set) and the claim won. A heartbeat that does not verify
counts as absent (the instance is dead, its calls are taken over), a member that does not
verify is dropped and never decided. Each forged value is counted
(``callflow_fleet_forged_values_total``) and logged (``fleet.forged_value``, rate-limited).

Take-over: :class:`FleetWatch` runs on the worker's I/O loop, which runs no user code and
stays responsive when a handler blocks the app loop, so a busy worker keeps its heartbeat. When
an instance's heartbeat is gone, one script moves its pending (and adopted) calls into this
worker's adopted set and drops it from the instances set: only one survivor gets each call,
and if it dies too the next survivor finds the calls in *its* sets. For each call still
inside its platform timeout the watch claims ``final`` (taking the claim over when its holder
is no longer alive: the holder's POST may never have left) and sends the default decision at
once, since no handler can decide a dead worker's call any more. At start a worker also
adopts the calls its previous life (same ``INSTANCE_ID``) left pending.

Redis trouble never costs a decision. Housekeeping operations (dedupe of state updates,
releasing a call) wait at most ``STORE_TIMEOUT``; the claims on the decision path (intake and
final) may wait a quarter of the time left before the platform timeout, at most 2 s, since
giving up on a Redis that is slow rather than gone (or on a reply stuck behind a busy event
loop) risks a double decision, while the rest of the time is still ample for the POST. When
Redis fails the worker decides with its local slot (``admit`` and the final claim count as
won, nothing counts as seen before), logs ``store.unavailable`` (at most every few seconds)
and counts ``callflow_store_failures_total``. A connection error, or three timeouts in a
row, opens a circuit breaker shared by every store client of the worker: Redis is skipped for a
short, growing back-off, the heartbeat probes it, and once it answers ``store.recovered`` is
logged and shared dedupe resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol, Self, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import attrs
import structlog

from callflow._log import Throttle
from callflow.errors import ConfigError
from callflow.fleet.trust import FleetSigner, ForwardTargets
from callflow.settings import plain_redis_problem

if TYPE_CHECKING:
    from callflow.control.book import CallBook
    from callflow.decisions import Decision
    from callflow.engine.deadline import DecisionSink, DecisionSlot
    from callflow.events import CallEvent, IncomingCall
    from callflow.settings import Settings
    from callflow.webhook.handler import FleetHook

__all__ = [
    "DROPPED",
    "Breaker",
    "Census",
    "Decider",
    "DecisionStore",
    "Directory",
    "Dropped",
    "Fleet",
    "FleetSink",
    "FleetStats",
    "FleetWatch",
    "MemoryStore",
    "PendingCall",
    "RedisStore",
    "SharedDedupe",
    "dedupe_key",
    "epoch_of",
    "fleet_namespace",
    "instance_callback_url",
    "internal_url",
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
SEND_ALLOWANCE: Final = 0.05
"""A taken-over call with less time than this before its platform timeout is not sent."""
LOG_EVERY: Final = 5.0
"""Seconds between two ``store.unavailable`` warnings of one worker."""
HEARTBEATS_TO_LIVE: Final = 3
"""A heartbeat lives this many intervals; an instance without one is dead."""
TIMEOUTS_TO_TRIP: Final = 3
"""Timeouts in a row that open the circuit (a connection error opens it at once)."""
CLAIM_SHARE: Final = 0.25
"""A claim on the decision path may wait this share of the time left before the platform
timeout for the store (at least ``STORE_TIMEOUT``, at most :data:`CLAIM_CAP`)."""
CLAIM_CAP: Final = 2.0
"""The longest a claim waits for the store, in seconds."""
REFRESH_EVERY: Final = 0.1
"""Seconds between two reads of the fleet's directory on forwarding misses."""
LONG_WAIT: Final = 0.5
"""An operation that timed out after waiting this long counts towards tripping the circuit."""

_T = TypeVar("_T")

# -- Lua: each script is atomic on the server and costs one round trip -----------------------

_CLAIM: Final = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then return 1 end
return holder
"""

_ADMIT: Final = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return holder end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 1
"""

# Replaces a holder the client found forged, only while the key still holds it (or nothing):
# ARGV = forged, ours, ttl[, score, member for KEYS[2] (admit)].
_REPLACE: Final = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and holder ~= ARGV[2] then return holder end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if KEYS[2] then redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5]) end
return 1
"""

# ARGV[1] is the TTL, ARGV[i + 1] this worker's value for KEYS[i].
_SEEN: Final = """
local out = {}
for i, key in ipairs(KEYS) do
  local mine = ARGV[i + 1]
  local holder = redis.call('GET', key)
  if not holder then
    redis.call('SET', key, mine, 'PX', ARGV[1])
    out[i] = 1
  elseif holder == mine then
    out[i] = 1
  else
    out[i] = holder
  end
end
return out
"""

# ARGV[1] is the TTL, ARGV[2i] the forged value found under KEYS[i], ARGV[2i + 1] ours.
_REPLACE_SEEN: Final = """
local out = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder and holder ~= ARGV[2 * i] and holder ~= ARGV[2 * i + 1] then
    out[i] = holder
  else
    redis.call('SET', key, ARGV[2 * i + 1], 'PX', ARGV[1])
    out[i] = 1
  end
end
return out
"""

# The heartbeat key is built from ARGV: it shares the fleet's hash tag, so it lives in the
# same cluster slot as KEYS[1]. A holder that looks alive is returned with the heartbeat, for
# the client to check both signatures.
_CLAIM_ORPHAN: Final = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  local owner, boot = string.match(holder, '^(.*)#([^#]*)#[^#]*$')
  if not owner then return {holder, ''} end
  local beat = redis.call('GET', ARGV[3] .. owner)
  if beat and string.find(beat, '"' .. boot .. '"', 1, true) then return {holder, beat} end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# ARGV[3] is the heartbeat value the client found forged ('' for none): a take-over goes on
# while the instance key holds nothing or that value (which it deletes).
_TAKE_OVER: Final = """
if ARGV[2] ~= '1' then
  local beat = redis.call('GET', KEYS[1])
  if beat and beat ~= ARGV[3] then return {} end
  if beat then redis.call('DEL', KEYS[1]) end
end
local moved = {}
for _, key in ipairs({KEYS[2], KEYS[3]}) do
  if key ~= KEYS[4] then
    local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      redis.call('ZADD', KEYS[4], entries[i + 1], entries[i])
      moved[#moved + 1] = entries[i]
      moved[#moved + 1] = entries[i + 1]
    end
    redis.call('DEL', key)
  end
end
if ARGV[2] ~= '1' then redis.call('SREM', KEYS[5], ARGV[1]) end
return moved
"""


# -- values ------------------------------------------------------------------------------


@attrs.frozen
class PendingCall:
    """A call a worker owned and had not decided; ``expires_at`` is epoch seconds."""

    call_id: str
    tenant_id: str | None
    expires_at: float


@attrs.frozen
class Census:
    """What one heartbeat saw: live instances (id -> forwarding URL), dead instances, and the
    calls this worker adopted and has still to decide."""

    live: Mapping[str, str | None]
    dead: tuple[str, ...] = ()
    adopted: tuple[PendingCall, ...] = ()


@attrs.frozen
class Dropped:
    """What :class:`FleetSink` returns when another worker already sent the decision."""

    attempts: int = 0


DROPPED: Final = Dropped()


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


class FleetStats:
    """Fleet counters shared by the worker's two threads; read them for metrics."""

    __slots__ = (
        "_lock",
        "dropped_elsewhere",
        "forged",
        "forwarded",
        "shared_duplicates",
        "store_failures",
        "taken_over",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.store_failures = 0
        """Store operations that failed, or were skipped while the circuit was open."""
        self.taken_over = 0
        """Calls of dead workers this worker sent the default decision for."""
        self.forwarded = 0
        """Notifications forwarded to the worker that owns their call."""
        self.dropped_elsewhere = 0
        """Decisions not sent because another worker had sent the call's decision."""
        self.shared_duplicates = 0
        """State updates and terminations another worker had already taken."""
        self.forged = 0
        """Values found in Redis without a valid fleet signature (ignored or replaced)."""

    def add(self, name: str, count: int = 1) -> None:
        """Add ``count`` to the counter ``name`` (thread-safe)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + count)


class Directory:
    """The live instances of the fleet and their forwarding URLs, as the last heartbeat saw.

    Written by :class:`FleetWatch`, read by the webhook (both on the I/O loop; tests read it
    from other threads): the mapping is replaced whole, never changed in place.
    """

    def __init__(self) -> None:
        self._live: Mapping[str, str | None] = {}
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def update(self, live: Mapping[str, str | None]) -> None:
        """Replace the directory with a new census (any thread)."""
        with self._lock:
            self._live = dict(live)
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)

    def url(self, instance_id: str) -> str | None:
        """The forwarding URL of a live instance; None when it is gone or unknown."""
        return self._live.get(instance_id)

    def live(self) -> Mapping[str, str | None]:
        """The instances alive at the last heartbeat and their forwarding URLs."""
        return self._live

    async def wait_until(self, predicate: Callable[[Mapping[str, str | None]], bool]) -> None:
        """Return once ``predicate(live)`` holds (checked at every update; no polling)."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if predicate(self._live):
                    return
                event = asyncio.Event()
                self._waiters.append((loop, event))
            await event.wait()


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


class Breaker:
    """A circuit breaker (shared by the stores of one worker) with rate-limited warnings.

    A connection error trips it at once. A timeout trips it only when it is the
    :data:`TIMEOUTS_TO_TRIP`-th in a row of operations that waited long (the claims): a short
    wait that runs out is more often a busy event loop than a hung Redis, and tripping the
    circuit makes the claims that follow fail open. Once tripped the store is skipped for
    ``backoff[0]`` seconds, doubling up to ``backoff[1]`` while it keeps failing; the first
    success closes it.
    """

    def __init__(
        self,
        backoff: tuple[float, float] = (0.2, 2.0),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        low, high = backoff
        if not 0 < low <= high:
            raise ConfigError(f"backoff={backoff!r}: expected (min, max) with 0 < min <= max")
        self._backoff = (float(low), float(high))
        self._clock = clock
        self._lock = threading.Lock()
        self._open_until = 0.0
        self.failures_in_row = 0
        """Failed operations since the last success."""
        self.trips = 0
        """Times the circuit opened since the last success."""
        self._timeouts_in_row = 0
        self._down_since: float | None = None
        self._last_warning: float | None = None
        self._suppressed = 0

    @property
    def closed(self) -> bool:
        """True while the circuit is closed (operations try the store)."""
        return self.trips == 0

    def allow(self) -> bool:
        """True when an operation may try the store (closed, or the back-off has passed)."""
        return self._clock() >= self._open_until

    def failed(self, label: str, op: str, exc: BaseException, *, long_wait: bool = True) -> None:
        """Record a failed operation; trip the circuit when due; warn (at most every few s).

        ``long_wait`` says whether a timeout came after a long wait (a claim's), which counts
        towards tripping the circuit.
        """
        now = self._clock()
        with self._lock:
            self.failures_in_row += 1
            if isinstance(exc, TimeoutError):
                if long_wait:
                    self._timeouts_in_row += 1
                trip = self._timeouts_in_row >= TIMEOUTS_TO_TRIP
            else:
                trip = True
            wait = 0.0
            if trip:
                self.trips += 1
                self._timeouts_in_row = 0
                if self._down_since is None:
                    self._down_since = now
                low, high = self._backoff
                wait = min(high, low * 2.0 ** min(self.trips - 1, 30))
                self._open_until = now + wait
            warn = self._last_warning is None or now - self._last_warning >= LOG_EVERY
            suppressed = self._suppressed
            if warn:
                self._last_warning = now
                self._suppressed = 0
            else:
                self._suppressed += 1
        if warn:
            reason = "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
            log.warning(
                "store.unavailable",
                store=label,
                op=op,
                error=f"{type(exc).__name__}: {reason}"[:300],
                retry_in=round(wait, 3),
                suppressed=suppressed,
                message="the shared store did not answer: this worker decided on its own (a "
                "call that also reached another worker may be decided twice)",
            )

    def succeeded(self, label: str, op: str) -> None:
        """Record a successful operation; logs ``store.recovered`` when the circuit was open."""
        if not self.failures_in_row:
            return
        now = self._clock()
        with self._lock:
            self.failures_in_row = 0
            self._timeouts_in_row = 0
            trips, self.trips = self.trips, 0
            since, self._down_since = self._down_since, None
            self._open_until = 0.0
            if trips:
                self._last_warning = None
        if trips:
            log.warning(
                "store.recovered",
                store=label,
                op=op,
                down_for=round(now - since, 3) if since is not None else 0.0,
                trips=trips,
            )


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
        if not url.startswith(("redis://", "rediss://", "unix://")):
            problems.append(f"url={without_credentials(url)!r}: expected a redis://, rediss:// "
                            "or unix:// URL")  # fmt: skip
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
        self._timeout = float(timeout)
        self._clock = clock
        self._ca_bundle = ca_bundle
        self._prefix = f"callflow:{{{namespace}}}:"
        self._client: Any = None
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        self._scripts: dict[str, tuple[str, str]] = {}
        self._no_script: type[BaseException] = OSError
        self._beats = 0
        self._beat_ttl = 3.0
        self._suspects: dict[str, str] = {}
        """Instances whose heartbeat did not verify at the last beat, and the value found."""
        self._forged_log = Throttle(LOG_EVERY)

    def __repr__(self) -> str:
        return f"<RedisStore {self.label} instance={self.instance_id!r} ns={self.namespace!r}>"

    def key(self, kind: str, name: str = "") -> str:
        """The Redis key of ``kind`` (own, final, seen, pending, adopted, instance, instances)."""
        return f"{self._prefix}{kind}:{name}" if name else f"{self._prefix}{kind}"

    async def __aenter__(self) -> Self:
        """Create the client (connections open on first use) and register the scripts."""
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import NoScriptError, RedisError
        except ImportError as exc:  # pragma: no cover - redis is a dev dependency
            raise ConfigError(
                "CALLFLOW_STORE names Redis, which needs the redis package "
                "(pip install 'callflow[redis]'); expected it to be importable"
            ) from exc
        self._errors = (RedisError, OSError, TimeoutError)
        self._no_script = NoScriptError
        options: dict[str, Any] = {}
        if self.url.startswith("rediss://") and self._ca_bundle and "ssl_ca_certs=" not in self.url:
            options["ssl_ca_certs"] = self._ca_bundle
        self._client = aioredis.Redis.from_url(
            self.url,
            decode_responses=True,
            # Operations are bounded by their own budget (see _run), which may exceed timeout.
            socket_timeout=max(self._timeout, CLAIM_CAP),
            socket_connect_timeout=max(self._timeout, CLAIM_CAP),
            retry=Retry(NoBackoff(), 1),
            health_check_interval=0,
            client_name=f"callflow-{self.instance_id}-{self.label}",
            **options,
        )
        for name, source in (
            ("admit", _ADMIT),
            ("claim", _CLAIM),
            ("claim_orphan", _CLAIM_ORPHAN),
            ("replace", _REPLACE),
            ("seen", _SEEN),
            ("replace_seen", _REPLACE_SEEN),
            ("take_over", _TAKE_OVER),
        ):
            self._scripts[name] = (hashlib.sha1(source.encode()).hexdigest(), source)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the client and its connections."""
        client, self._client = self._client, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    def _redis(self) -> Any:
        if self._client is None:
            raise RuntimeError(
                f"{self!r} is not open; expected `async with RedisStore(...)` around its use"
            )
        return self._client

    async def _eval(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script by its hash, loading it first when Redis does not know it (yet)."""
        client = self._redis()
        sha, source = self._scripts[name]
        try:
            return await client.evalsha(sha, len(keys), *keys, *args)
        except self._no_script:  # a new or restarted Redis
            await client.script_load(source)
            return await client.evalsha(sha, len(keys), *keys, *args)

    def wait_for(self, left: float | None) -> float:
        """How long a claim may wait for Redis when ``left`` seconds remain before the platform
        timeout: :data:`CLAIM_SHARE` of it, between ``timeout`` and :data:`CLAIM_CAP`."""
        if left is None:
            return self._timeout
        return max(self._timeout, min(left * CLAIM_SHARE, CLAIM_CAP))

    async def _run(
        self,
        op: str,
        action: Callable[[], Awaitable[_T]],
        fallback: _T,
        within: float | None = None,
    ) -> _T:
        """Run one Redis operation within ``within`` seconds (default ``timeout``);
        ``fallback`` when Redis is in trouble."""
        self._redis()  # raises when the store is not open
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
            return bool(await self._redis().ping())

        return await self._run("ping", run, False)

    # -- signatures ------------------------------------------------------------------------

    def _forged(self, kind: str, name: str, value: object) -> None:
        """Count (and log, rate-limited) a value found without a valid fleet signature."""
        self.stats.add("forged")
        suppressed = self._forged_log.admit(kind)
        if suppressed is not None:
            log.error(
                "fleet.forged_value",
                store=self.label,
                kind=kind,
                key=name[:100],
                length=len(str(value)),
                suppressed=suppressed,
                message="a value in the fleet's Redis is not signed with this worker's "
                "CALLFLOW_FLEET_SECRET: it was ignored. Expected every worker to share the "
                "secret; otherwise someone else writes to the fleet's keys",
            )

    def _own(self, kind: str, name: str) -> str:
        """This worker's signed holder value for the key ``kind``/``name``."""
        return self._signer.seal(kind, name, self._holder)

    async def _settle(
        self,
        kind: str,
        name: str,
        result: Any,
        replace: Callable[[str], Awaitable[Any]],
    ) -> bool:
        """Whether a claim script's ``result`` (1, or the holder that beat this worker to
        it) is won; a holder without a valid signature is replaced and the claim won."""
        for _ in range(3):
            if not isinstance(result, str):
                return bool(result)
            if self._signer.opened(kind, name, result) is not None:
                return False  # held by a worker of the fleet
            self._forged(kind, name, result)
            result = await replace(result)
        return True  # forged again and again: decide here, as when Redis is in trouble

    def _verified(self, flat: Sequence[Any]) -> tuple[tuple[PendingCall, ...], list[str]]:
        """The signed calls of ``[member, score, ...]`` and the members that are forged."""
        calls: list[PendingCall] = []
        forged: list[str] = []
        for member, score in zip(flat[::2], flat[1::2], strict=True):
            opened = self._signer.open_member(member)
            try:
                expires_at = float(score)
            except (TypeError, ValueError):
                opened = None
            if opened is None:
                self._forged("member", "", member)
                forged.append(str(member))
                continue
            calls.append(PendingCall(opened[0], opened[1], expires_at))
        return tuple(calls), forged

    # -- operations ----------------------------------------------------------------------

    async def admit(self, call_id: str, tenant_id: str | None, expires_at: float) -> bool:
        """See :meth:`DecisionStore.admit` (one script: claim ``own`` + ``ZADD`` pending)."""
        left = expires_at - self._clock()
        ttl_ms = _ms(max(left, 0.0) + KEY_GRACE)
        keys = (self.key("own", call_id), self.key("pending", self.instance_id))
        mine = self._own("own", call_id)
        score, member = repr(expires_at), self._signer.member(call_id, tenant_id)

        async def replace(forged: str) -> Any:
            return await self._eval("replace", keys, (forged, mine, ttl_ms, score, member))

        async def run() -> bool:
            result = await self._eval("admit", keys, (mine, ttl_ms, score, member))
            return await self._settle("own", call_id, result, replace)

        return await self._run("admit", run, True, self.wait_for(left))

    async def claim(self, call_id: str, *, left: float | None = None) -> bool:
        """See :meth:`DecisionStore.claim`."""
        keys = (self.key("final", call_id),)
        mine, ttl_ms = self._own("final", call_id), _ms(KEY_GRACE * 2)

        async def replace(forged: str) -> Any:
            return await self._eval("replace", keys, (forged, mine, ttl_ms))

        async def run() -> bool:
            result = await self._eval("claim", keys, (mine, ttl_ms))
            return await self._settle("final", call_id, result, replace)

        return await self._run("claim", run, True, self.wait_for(left))

    async def claim_orphan(self, call_id: str, *, left: float | None = None) -> bool:
        """See :meth:`DecisionStore.claim_orphan` (the holder lives if its signed heartbeat
        carries the holder's boot id)."""
        keys = (self.key("final", call_id),)
        mine, ttl_ms = self._own("final", call_id), _ms(KEY_GRACE * 2)

        async def replace(forged: str) -> Any:
            return await self._eval("replace", keys, (forged, mine, ttl_ms))

        async def run() -> bool:
            result = await self._eval(
                "claim_orphan", keys, (mine, ttl_ms, self._prefix + "instance:")
            )
            if not isinstance(result, list):
                return bool(result)
            holder, beat = str(result[0]), result[1]
            value = self._signer.opened("final", call_id, holder)
            if value is None:
                self._forged("final", call_id, holder)
            else:
                owner, _, boot = value.rpartition("#")
                alive = self._signer.open_beat(owner, beat, max_age=self._beat_ttl)
                if alive is not None and alive.boot == boot:
                    return False  # a live worker holds it
                self._forged("beat", owner, beat)  # it names the holder's boot, unsigned
            return await self._settle("final", call_id, await replace(holder), replace)

        return await self._run("claim_orphan", run, True, self.wait_for(left))

    async def release(self, call_id: str, tenant_id: str | None) -> None:
        """See :meth:`DecisionStore.release`."""
        member = self._signer.member(call_id, tenant_id)

        async def run() -> None:
            pipe = self._redis().pipeline(transaction=False)
            pipe.zrem(self.key("pending", self.instance_id), member)
            pipe.zrem(self.key("adopted", self.instance_id), member)
            await pipe.execute()

        await self._run("release", run, None)

    async def first_seen(self, keys: Sequence[str]) -> tuple[bool, ...]:
        """See :meth:`DecisionStore.first_seen`."""
        if not keys:
            return ()
        redis_keys = tuple(self.key("seen", key) for key in keys)
        tag = f"{self._holder}#{os.urandom(6).hex()}"
        mine = [self._signer.seal("seen", key, tag) for key in keys]
        ttl_ms = _ms(SEEN_TTL)

        async def run() -> tuple[bool, ...]:
            results = await self._eval("seen", redis_keys, (ttl_ms, *mine))
            firsts = [True] * len(keys)
            forged: list[int] = []
            for i, result in enumerate(results):
                if not isinstance(result, str):
                    firsts[i] = bool(result)
                elif self._signer.opened("seen", keys[i], result) is not None:
                    firsts[i] = False  # another worker of the fleet took it
                else:
                    self._forged("seen", keys[i], result)
                    forged.append(i)
            if forged:
                args = [item for i in forged for item in (results[i], mine[i])]
                again = await self._eval(
                    "replace_seen", [redis_keys[i] for i in forged], (ttl_ms, *args)
                )
                for i, result in zip(forged, again, strict=True):
                    if isinstance(result, str):
                        firsts[i] = self._signer.opened("seen", keys[i], result) is None
            return tuple(firsts)

        return await self._run("first_seen", run, tuple(True for _ in keys))

    async def beat(self, address: str | None, ttl: float) -> Census | None:
        """See :meth:`DecisionStore.beat` (a pipeline, then ``MGET`` of the members' keys).

        Only heartbeats signed by the fleet count: an instance whose key holds anything else
        is dead (its calls are taken over) and has no forwarding URL.
        """
        now = self._clock()
        payload = self._signer.seal_beat(self.instance_id, address, self.boot, os.getpid(), now)
        trim_before = now - TRIM_AFTER
        me = self.key("instance", self.instance_id)
        adopted = self.key("adopted", self.instance_id)
        self._beat_ttl = ttl

        async def run() -> Census:
            redis = self._redis()
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
                    self._forged("beat", instance, value)
                    dead.append(instance)
                    suspects[instance] = value
                else:
                    live[instance] = found.url
            self._suspects = suspects
            calls, forged = self._verified([item for pair in mine for item in pair])
            if forged:
                await redis.zrem(adopted, *forged)
            return Census(live, tuple(dead), calls)

        return await self._run("beat", run, None, max(self._timeout, ttl / HEARTBEATS_TO_LIVE))

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
        )
        args = (instance_id, "1" if force else "0", self._suspects.get(instance_id, ""))

        async def run() -> tuple[PendingCall, ...]:
            calls, forged = self._verified(await self._eval("take_over", keys, args))
            if forged:
                await self._redis().zrem(keys[3], *forged)
            return calls

        return await self._run("take_over", run, (), max(self._timeout, CLAIM_CAP))

    async def retire(self) -> None:
        """See :meth:`DecisionStore.retire`."""

        async def run() -> None:
            await self._redis().delete(self.key("instance", self.instance_id))

        await self._run("retire", run, None)


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


# -- the decision path ---------------------------------------------------------------------


class FleetSink:
    """A decision sink that sends only when this worker wins the call's final claim.

    Wraps the real sink (the Graph client the worker's outbox sends through). A
    lost claim skips the POST, logs ``decision.dropped_elsewhere`` and returns
    :data:`DROPPED` (``attempts`` 0). After the send, successful or not, the call leaves this
    worker's pending set.
    """

    def __init__(self, inner: DecisionSink, store: DecisionStore, stats: FleetStats) -> None:
        self.inner = inner
        self._store = store
        self._stats = stats

    async def deliver(self, call: IncomingCall, decision: Decision, deadline: float) -> object:
        """Claim, then send through the inner sink; see the class docstring."""
        if not await self._store.claim(call.call_id, left=deadline - time.monotonic()):
            self._stats.add("dropped_elsewhere")
            log.info(
                "decision.dropped_elsewhere",
                call_id=call.call_id,
                decision=decision.kind,
                message="another worker of the fleet already sent this call's decision",
            )
            return DROPPED
        try:
            return await self.inner.deliver(call, decision, deadline)
        finally:
            with anyio.CancelScope(shield=True):
                await self._store.release(call.call_id, call.tenant_id)


def dedupe_key(event: CallEvent) -> str | None:
    """The shared-dedupe key of a state update or termination; None for other events."""
    from callflow.events import CallStateChanged, CallTerminated

    if isinstance(event, CallStateChanged):
        raw = f"{event.call_id}\x00state\x00{event.state}\x00{event.etag}"
    elif isinstance(event, CallTerminated):
        raw = f"{event.call_id}\x00terminated"
    else:
        return None
    return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


class SharedDedupe:
    """Drops state updates and terminations another worker of the fleet already took.

    Incoming calls are left alone: intake ownership dedupes them in the ``admit`` hook.
    """

    def __init__(self, store: DecisionStore, stats: FleetStats) -> None:
        self._store = store
        self._stats = stats

    async def fresh(self, events: Sequence[CallEvent]) -> Sequence[CallEvent]:
        """The events of one notification that no other worker has taken."""
        keyed = [(index, key) for index, e in enumerate(events) if (key := dedupe_key(e))]
        if not keyed:
            return events
        firsts = await self._store.first_seen([key for _, key in keyed])
        seen = {index for (index, _), first in zip(keyed, firsts, strict=True) if not first}
        if not seen:
            return events
        self._stats.add("shared_duplicates", len(seen))
        for index in sorted(seen):
            log.info(
                "event.duplicate",
                call_id=events[index].call_id,
                kind=type(events[index]).__name__,
                shared=True,
            )
        return [e for index, e in enumerate(events) if index not in seen]


# -- take-over -------------------------------------------------------------------------------


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
    then this worker's to take).
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

    async def beat_now(self) -> None:
        """One heartbeat (with the current address) and a fresh directory, now; take-over
        stays with the periodic beat."""
        store = self._store
        census = await store.beat(self._address(), self.interval * HEARTBEATS_TO_LIVE)
        if census is not None:
            self._update_directory(census)

    def _update_directory(self, census: Census) -> None:
        """Take the census's live instances as the directory; log who joined or left."""
        before = set(self.directory.live())
        self.directory.update(census.live)
        if set(census.live) != before:
            log.info(
                "fleet.members",
                live=sorted(census.live),
                joined=sorted(set(census.live) - before),
                left=sorted(before - set(census.live)),
            )

    async def tick(self, sends: anyio.abc.TaskGroup) -> None:
        """One heartbeat; start a send in ``sends`` for every adopted call not yet sent."""
        store = self._store
        census = await store.beat(self._address(), self.interval * HEARTBEATS_TO_LIVE)
        if census is None:
            return  # the store is down: keep the last directory
        self.beats += 1
        self._update_directory(census)
        adopted = list(census.adopted)
        if not self._adopted_own:
            self._adopted_own = True
            left = await store.take_over(store.instance_id, force=True)
            if left:
                log.warning("instance.previous_life_adopted", calls=len(left))
                adopted += left
        for dead in census.dead:
            if dead == store.instance_id:  # pragma: no cover - its key was set in this beat
                continue
            calls = await store.take_over(dead)
            if calls:
                log.warning("instance.taken_over", instance=dead, calls=len(calls))
                adopted += calls
        for call in adopted:
            if call.call_id in self._busy or call.call_id in self._done:
                continue
            self._busy.add(call.call_id)
            sends.start_soon(self._decide, call)

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


# -- one worker's fleet mode -----------------------------------------------------------------


def without_credentials(url: str) -> str:
    """``url`` without its user name and password (for logs)."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


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
    :class:`FleetWatch` (:meth:`watch`). The I/O loop runs no user code, so a handler that
    blocks the app loop cannot stop the heartbeat. The bot sets ``address`` once its webhook
    listens.
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
        """The fleet's key namespace (see :func:`fleet_namespace`)."""
        self.callback_url = (
            instance_callback_url(settings.callback_url, settings.instance_id)
            if settings.callback_url
            else None
        )
        """``CALLBACK_URL`` with ``instance=INSTANCE_ID``: the callbackUri of decisions."""
        self.webhook: FleetHook | None = None
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
        from callflow.webhook.handler import Forwarder

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
        """Run the :class:`FleetWatch` (heartbeat, directory, take-over) until cancelled;
        started after the first beat. On the way out the worker retires from the fleet.
        ``calls`` (the worker's book) learns of the calls taken over here."""
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
