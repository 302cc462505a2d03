"""The load generator: POSTs signed incoming-call notifications and matches the decisions.

It speaks HTTP/1.1 itself over keep-alive connections (one request in flight per
connection, as Graph's notification service does), so that a notification costs it a few
tens of microseconds and its stamps are taken where the bytes move. For every call it
records, on ``time.monotonic()`` (system-wide on Linux, so comparable with the stub's
stamps):

- ``intended``: when the schedule wanted the call sent (open loop only);
- ``sent``: immediately before the request bytes were handed to an open connection's socket
  (one ``send``; the connection was opened beforehand, so no connect time is in it). This is
  the platform's clock: a call is *late* when its decision reaches the stub more than the
  platform timeout after ``sent``;
- ``acked`` and ``status``: when the webhook's reply (202, 503, anything) was read, and its
  status (0: the connection closed without a reply; -1: never sent);
- ``decided`` and ``decisions``: when the stub received the first decision for the call
  (read from the stub's feed, matched by call id) and how many it received.

Modes:

- ``closed``: ``concurrency`` workers, each on its own connection, placing a call and
  waiting for its *decision* before the next one, for ``warmup`` then ``duration`` seconds;
  figures count the calls sent after the warm-up;
- ``open``: calls sent on a fixed schedule (``schedule``: ``[[rate, seconds], ...]``
  segments one after the other, calls evenly spaced in each; or ``rate`` for ``duration``),
  whatever happens to them. A call is written on an idle connection of the pool; with none
  idle a new one is opened, up to ``max_connections`` (the bound on outstanding requests);
  beyond that calls wait for a connection, and a call still waiting ``grace`` seconds after
  the schedule ended is never sent. How late each call was sent against its schedule, how
  late the generator's own loop ran, and what it actually offered are reported, so that a
  saturated generator is visible. ``blocker_at`` adds one call at that second whose id makes
  the blocked-loop handler run. Then up to ``tail`` seconds for the last replies and
  decisions;
- ``burst``: ``count`` calls as fast as ``concurrency`` connections allow, waiting only for
  the replies (the memory scenario).

Run: ``python -m benchmarks.loadgen CONFIG.json RESULT.json`` (the harness writes the config).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from benchmarks._common import (
    BLOCKER_SUFFIX,
    call_id,
    cpu_seconds,
    have_uvloop,
    machine_busy_seconds,
    percentile,
    run_loop,
)

NAN: Final = math.nan
BLOCKER: Final = -2
"""The call index of the blocked-loop scenario's marked call (kept apart from the others)."""
NOT_SENT: Final = -1
"""``status`` of a call the generator never sent (no connection within the grace period)."""
MIN_SLEEP: Final = 0.001
"""Shortest wait of the sender: calls due within it are sent together."""
TICK: Final = 0.005
"""Period of the generator's own loop-lag probe, seconds."""


def schedule_offsets(segments: list[list[float]]) -> tuple[list[float], float]:
    """Send offsets (seconds from the start) of every call of ``segments``, and the length.

    Each segment ``[rate, seconds]`` places ``rate * seconds`` calls evenly from its start;
    a rate of 0 is a pause.
    """
    offsets: list[float] = []
    at = 0.0
    for rate, seconds in segments:
        n = int(rate * seconds + 1e-9)
        offsets.extend(at + i / rate for i in range(n))
        at += seconds
    return offsets, at


def lag_stats(values_ms: list[float]) -> dict[str, float]:
    """p50/p99/max of a list of lags in ms (0 when empty)."""
    ordered = sorted(values_ms)
    return {
        "n": len(ordered),
        "p50": percentile(ordered, 50) if ordered else 0.0,
        "p99": percentile(ordered, 99) if ordered else 0.0,
        "max": ordered[-1] if ordered else 0.0,
    }


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to the webhook, one request at a time."""

    def __init__(self, gen: LoadGen) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.index: int | None = None
        self.alive = False
        self.on_reply: Callable[[Conn, bool], None] = gen.pool_reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # called twice on uvloop (see LoadGen.connect)
            self.transport = transport  # type: ignore[assignment]
            self.alive = True

    @property
    def usable(self) -> bool:
        """Open and not being closed (a webhook may close an idle connection at any time)."""
        transport = self.transport
        return self.alive and transport is not None and not transport.is_closing()

    def send(self, index: int, request: bytes) -> float:
        """Write one request; returns the stamp taken just before the bytes were handed over."""
        assert self.transport is not None
        self.index = index
        now = time.monotonic()
        self.transport.write(request)
        return now

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buf = self.buf + data if self.buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            pos = head.find(b"\r\ncontent-length:")
            if pos >= 0:
                stop = head.find(b"\r\n", pos + 2)
                length = int(head[pos + 17 : stop if stop >= 0 else len(head)])
                total = end + 4 + length
            elif b"\r\ntransfer-encoding: chunked" in head:
                term = buf.find(b"\r\n0\r\n\r\n", end)
                if term < 0:
                    break
                total = term + 7
            else:
                total = end + 4
            if len(buf) < total:
                break
            status = int(buf[9:12])
            close = b"\r\nconnection: close" in head
            buf = buf[total:]
            index, self.index = self.index, None
            if index is not None:
                self.gen.record_reply(index, status, now)
            if close:
                self.alive = False
                if self.transport is not None:
                    self.transport.close()
            self.on_reply(self, close)
        self.buf = buf

    def connection_lost(self, exc: Exception | None) -> None:
        was_alive, self.alive = self.alive, False
        index, self.index = self.index, None
        if index is not None:
            self.gen.record_reply(index, 0, NAN)
            self.on_reply(self, True)
        elif was_alive and self.gen.pool is not None:
            self.gen.pool.idle_lost(self)


class Pool:
    """Idle connections, calls waiting for one, and connections being opened."""

    def __init__(self, gen: LoadGen, max_connections: int, max_connecting: int = 8) -> None:
        self.gen = gen
        self.max_connections = max_connections
        self.max_connecting = max_connecting
        self.idle: list[Conn] = []
        self.waiting: collections.deque[int] = collections.deque()
        self.open = 0
        self.connecting = 0
        self.opened_in_window = 0
        self.connect_errors = 0
        self.waited = 0
        self.peak_outstanding = 0
        self.outstanding = 0
        self.quiet = asyncio.Event()
        """Set while no request awaits its reply."""
        self.quiet.set()
        self.unqueued = asyncio.Event()
        """Set while no call waits for a connection."""
        self.unqueued.set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.in_window = False

    async def preopen(self, n: int) -> None:
        """Open ``n`` connections before the measured window (see :meth:`LoadGen.open_warm`)."""
        conns = await self.gen.open_warm(min(n, self.max_connections))
        self.open += len(conns)
        self.idle.extend(conns)

    def submit(self, index: int) -> None:
        """Send call ``index`` on an idle connection, or queue it for the next one."""
        self.outstanding += 1
        self.quiet.clear()
        if self.outstanding > self.peak_outstanding:
            self.peak_outstanding = self.outstanding
        if not self.waiting:
            while self.idle:
                conn = self.idle.pop()
                if conn.usable:
                    self.gen.write(conn, index)
                    return
                self.open -= 1  # the webhook closed it while idle (its connection limit)
        self.waited += 1
        self.waiting.append(index)
        self.unqueued.clear()
        self._grow()

    def reply(self, conn: Conn, closed: bool) -> None:
        """A reply arrived on ``conn`` (or it closed with a request in flight)."""
        self.outstanding -= 1
        if self.outstanding <= 0:
            self.outstanding = 0
            self.quiet.set()
        if closed or not conn.alive:
            self.open -= 1
            self._grow()
        else:
            self._use(conn)

    def idle_lost(self, conn: Conn) -> None:
        """An idle connection was closed by the webhook."""
        if conn in self.idle:
            self.idle.remove(conn)
            self.open -= 1
            self._grow()

    def _use(self, conn: Conn) -> None:
        if not conn.usable:
            self.open -= 1
            self._grow()
            return
        if self.waiting:
            self.gen.write(conn, self.waiting.popleft())
            if not self.waiting:
                self.unqueued.set()
        else:
            self.idle.append(conn)

    def _grow(self) -> None:
        while (
            len(self.waiting) > self.connecting
            and self.connecting < self.max_connecting
            and self.open + self.connecting < self.max_connections
        ):
            self.connecting += 1
            task = asyncio.create_task(self._connect())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _connect(self) -> None:
        try:
            conn = await self.gen.connect()
        except OSError:
            self.connect_errors += 1
            self.connecting -= 1
            return
        self.connecting -= 1
        self.open += 1
        if self.in_window:
            self.opened_in_window += 1
        self._use(conn)

    def drop_waiting(self) -> list[int]:
        """Give up on the calls still waiting for a connection; returns them."""
        dropped = list(self.waiting)
        self.waiting.clear()
        self.unqueued.set()
        self.outstanding -= len(dropped)
        if self.outstanding <= 0:
            self.outstanding = 0
            self.quiet.set()
        return dropped

    def close(self) -> None:
        """Close every connection."""
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


class Feed(asyncio.Protocol):
    """The stub's decision feed: one ``"{call id} {monotonic} {action}"`` line per decision."""

    def __init__(self, gen: LoadGen) -> None:
        self.gen = gen
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        on_decision = self.gen.on_decision
        for line in lines:
            on_decision(line)


class LoadGen:
    """One run of the load generator; see the module docstring."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        url: str = config["webhook_url"]
        rest = url.split("://", 1)[1]
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.partition(":")
        self.host, self.port, self.path = host, int(port or 80), "/" + path
        self.run: int = config["run"]
        self.prefix = call_id(self.run, 0)[:8].encode()
        self.template: bytes = config["body"].encode()
        self.sentinel: bytes = config["sentinel"].encode()
        self.tokens = [t.encode() for t in config["tokens"]]
        self.head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {hostport}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(self.template)}\r\n"
            "Authorization: Bearer "
        ).encode()
        self.intended: list[float] = []
        self.sent: list[float] = []
        self.acked: list[float] = []
        self.status: list[int] = []
        self.decided: list[float] = []
        self.decisions: list[int] = []
        self.foreign = 0
        self.waiters: dict[int, asyncio.Future[None]] = {}
        self.blocker: dict[str, float] = {}
        self.undecided = 0
        self.all_decided = asyncio.Event()
        self.pool: Pool | None = None
        self.cpu: dict[str, list[float]] = {}
        self.loop_lags: list[float] = []
        self.probing = False
        self.generator: dict[str, Any] = {}

    # -- connections and requests ------------------------------------------------------------

    async def connect(self) -> Conn:
        """Open one connection to the webhook."""
        loop = asyncio.get_running_loop()
        transport, conn = await loop.create_connection(lambda: Conn(self), self.host, self.port)
        # uvloop calls connection_made only on the next loop iteration: usable right away.
        conn.connection_made(transport)
        return conn

    async def open_warm(self, n: int, parallel: int = 8) -> list[Conn]:
        """Open ``n`` connections, each proven by a ``GET /readyz`` answered on it.

        A few at a time, and each one only counted once the webhook has answered on it: a
        burst of connects overflows a listen backlog of 128 (aiohttp's default) and the
        kernel then retries the handshake a second later.
        """
        loop = asyncio.get_running_loop()
        probe = f"GET /readyz HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode()
        conns: list[Conn] = []

        async def opener(count: int) -> None:
            for _ in range(count):
                conn = await self.connect()
                answered: asyncio.Future[bool] = loop.create_future()

                def on_reply(
                    _conn: Conn, closed: bool, fut: asyncio.Future[bool] = answered
                ) -> None:
                    if not fut.done():
                        fut.set_result(closed)

                conn.on_reply = on_reply
                conn.index = None
                assert conn.transport is not None
                conn.transport.write(probe)
                async with asyncio.timeout(30.0):
                    closed = await answered
                conn.on_reply = self.pool_reply
                if closed:
                    raise RuntimeError("the webhook closed a new connection; expected keep-alive")
                conns.append(conn)

        shares = [n // parallel + (1 if i < n % parallel else 0) for i in range(parallel)]
        await asyncio.gather(*(opener(k) for k in shares if k))
        return conns

    def request(self, index: int) -> bytes:
        """The bytes of call ``index``'s notification POST."""
        if index == BLOCKER:
            cid = call_id(self.run, 0)[:-12] + BLOCKER_SUFFIX
            token = self.tokens[0]
        else:
            cid = call_id(self.run, index)
            token = self.tokens[index % len(self.tokens)]
        body = self.template.replace(self.sentinel, cid.encode())
        return b"".join((self.head, token, b"\r\n\r\n", body))

    def write(self, conn: Conn, index: int) -> None:
        """Send call ``index`` on ``conn`` and stamp it."""
        at = conn.send(index, self.request(index))
        if index == BLOCKER:
            self.blocker["sent"] = at
        else:
            self.sent[index] = at
            self.status[index] = 0

    def record_reply(self, index: int, status: int, at: float) -> None:
        """A reply (or a closed connection, status 0) for call ``index``."""
        if index == BLOCKER:
            self.blocker.update(acked=at, status=status)
            return
        self.acked[index] = at
        self.status[index] = status

    def pool_reply(self, conn: Conn, closed: bool) -> None:
        """Hand a connection back to the pool (the default reply callback)."""
        if self.pool is not None:
            self.pool.reply(conn, closed)

    def new_call(self, intended: float = NAN) -> int:
        """Reserve the next call index."""
        index = len(self.sent)
        self.intended.append(intended)
        self.sent.append(NAN)
        self.acked.append(NAN)
        self.status.append(NOT_SENT)
        self.decided.append(NAN)
        self.decisions.append(0)
        return index

    # -- the feed ----------------------------------------------------------------------------

    def on_decision(self, line: bytes) -> None:
        """Match one decision the stub reports to the call it belongs to."""
        cid, at_text, _action = line.split(b" ", 2)
        if not cid.startswith(self.prefix):
            self.foreign += 1
            return
        if cid.endswith(BLOCKER_SUFFIX.encode()):
            self.blocker["decisions"] = self.blocker.get("decisions", 0) + 1
            self.blocker.setdefault("decided", float(at_text))
            return
        index = int(cid[-12:], 16)
        if index >= len(self.decided):
            self.foreign += 1
            return
        self.decisions[index] += 1
        if self.decisions[index] > 1:
            return
        self.decided[index] = float(at_text)
        waiter = self.waiters.get(index)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.sent[index] == self.sent[index]:  # sent (not NaN): counted as undecided
            self.undecided -= 1
            if self.undecided <= 0:
                self.all_decided.set()

    # -- measuring the generator itself ------------------------------------------------------

    def sample_cpu(self, label: str) -> None:
        """Record the CPU seconds of the bot, the stub and this process."""
        pids = {"bot": self.config.get("bot_pid"), "stub": self.config.get("stub_pid")}
        pids["loadgen"] = os.getpid()
        for name, pid in pids.items():
            if pid:
                with contextlib.suppress(OSError):
                    self.cpu.setdefault(name, []).append(cpu_seconds(int(pid)))
        self.cpu.setdefault("machine", []).append(machine_busy_seconds())
        self.cpu.setdefault("at", []).append(time.monotonic())
        self.cpu.setdefault("labels", []).append(label)  # type: ignore[arg-type]

    async def probe_loop(self) -> None:
        """Record how late this process's own loop wakes up (every 5 ms while probing)."""
        lags = self.loop_lags
        while self.probing:
            due = time.monotonic() + TICK
            await asyncio.sleep(TICK)
            lags.append((time.monotonic() - due) * 1000)

    # -- modes -------------------------------------------------------------------------------

    async def closed(self) -> tuple[float, float]:
        """Closed loop on decisions; returns the measurement window."""
        c = self.config
        conns = await self.open_warm(c["concurrency"])
        start = time.monotonic()
        window_start = start + c["warmup"]
        window_end = window_start + c["duration"]
        # A window in which no call was sent measures nothing (one call stalled past a short
        # window at c=1): it is held open until each connection sent one, at most 10 s more.
        needed = c.get("min_calls", c["concurrency"])
        hard_end = window_end + 10.0
        inside = 0
        limit = c.get("count") or 0
        timeout = c.get("decision_timeout", 10.0)
        request_timeout = c.get("request_timeout", 60.0)
        loop = asyncio.get_running_loop()
        sampled = False

        async def worker(conn: Conn) -> None:
            nonlocal sampled, inside, window_end
            while True:
                now = time.monotonic()
                if now >= window_end and (inside >= needed or now >= hard_end):
                    break
                if limit and len(self.sent) >= limit:
                    break
                if now >= window_end:
                    window_end = now + 0.001  # held open: still measuring
                if not sampled and now >= window_start:
                    sampled = True
                    self.sample_cpu("window_start")
                if now >= window_start:
                    inside += 1
                if not conn.alive:
                    conn = await self.connect()
                index = self.new_call()
                decided: asyncio.Future[None] = loop.create_future()
                replied: asyncio.Future[bool] = loop.create_future()
                self.waiters[index] = decided

                def on_reply(
                    _conn: Conn, closed: bool, fut: asyncio.Future[bool] = replied
                ) -> None:
                    if not fut.done():
                        fut.set_result(closed)

                conn.on_reply = on_reply
                self.write(conn, index)
                try:
                    async with asyncio.timeout(request_timeout):
                        await replied
                    if self.decisions[index] == 0:
                        async with asyncio.timeout(timeout):
                            await decided
                except TimeoutError:
                    print(f"loadgen: call {index}: no reply or decision", file=sys.stderr)
                    if conn.transport is not None:
                        conn.transport.close()
                    conn.alive = False
                del self.waiters[index]
            if conn.transport is not None:
                conn.transport.close()

        await asyncio.gather(*(worker(conn) for conn in conns))
        if not sampled:
            self.sample_cpu("window_start")
        self.sample_cpu("window_end")
        return window_start, min(time.monotonic(), window_end)

    async def open(self) -> tuple[float, float]:
        """Open loop on a fixed schedule; returns the sending window."""
        c = self.config
        segments = c.get("schedule") or [[float(c["rate"]), float(c["duration"])]]
        offsets, length = schedule_offsets(segments)
        blocker_at = c.get("blocker_at")
        pool = self.pool = Pool(self, int(c.get("max_connections", 4096)))
        await pool.preopen(int(c.get("preopen", 64)))
        self.probing = True
        probe = asyncio.create_task(self.probe_loop())
        self.sample_cpu("window_start")
        pool.in_window = True
        start = time.monotonic() + 0.002
        blocker_due = start + blocker_at if blocker_at is not None else math.inf
        end = start + length
        total = len(offsets)
        k = 0
        try:
            while k < total or blocker_due < math.inf:
                now = time.monotonic()
                if now >= blocker_due:
                    blocker_due = math.inf
                    pool.submit(BLOCKER)
                while k < total and start + offsets[k] <= now:
                    index = self.new_call(start + offsets[k])
                    self.undecided += 1
                    pool.submit(index)
                    k += 1
                next_due = min(start + offsets[k] if k < total else math.inf, blocker_due)
                if next_due == math.inf:
                    break
                # Sleep at least a millisecond (the loop's timer resolution: shorter waits spin)
                # and always yield: a generator behind its schedule must still read replies.
                delay = next_due - time.monotonic()
                await asyncio.sleep(max(delay, MIN_SLEEP) if delay > 0 else 0)
            await asyncio.sleep(max(0.0, end - time.monotonic()))
            # Calls still waiting for a connection get ``grace`` seconds, then are not sent.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(c.get("grace", 1.0)):
                    await pool.unqueued.wait()
            dropped = pool.drop_waiting()
            self.undecided -= sum(1 for i in dropped if i != BLOCKER)
            pool.in_window = False
            self.sample_cpu("window_end")
            self.probing = False
            if self.undecided <= 0:
                self.all_decided.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(c.get("tail", 15.0)):
                    await self.all_decided.wait()
                    await pool.quiet.wait()
        finally:
            self.probing = False
            await probe
            pool.close()
            for task in tuple(pool.tasks):
                task.cancel()
        self.generator = {
            "scheduled": total,
            "sent": sum(1 for s in self.sent if s == s),
            "not_sent": sum(1 for s in self.status if s == NOT_SENT),
            "seconds": length,
            "send_lag_ms": lag_stats(
                [(s - i) * 1000 for s, i in zip(self.sent, self.intended, strict=True) if s == s]
            ),
            "sent_late_10ms": sum(
                1 for s, i in zip(self.sent, self.intended, strict=True) if s - i > 0.010
            ),
            "loop_lag_ms": lag_stats(self.loop_lags),
            "preopened": int(c.get("preopen", 64)),
            "opened_in_window": pool.opened_in_window,
            "waited_for_connection": pool.waited,
            "connect_errors": pool.connect_errors,
            "peak_outstanding": pool.peak_outstanding,
            "max_connections": pool.max_connections,
        }
        return start, end

    async def burst(self) -> tuple[float, float]:
        """As fast as possible, waiting only for the replies."""
        c = self.config
        count = c["count"]
        conns = await self.open_warm(c["concurrency"])
        loop = asyncio.get_running_loop()
        self.sample_cpu("window_start")
        start = time.monotonic()

        async def worker(conn: Conn) -> None:
            while len(self.sent) < count:
                if not conn.alive:
                    conn = await self.connect()
                replied: asyncio.Future[bool] = loop.create_future()

                def on_reply(
                    _conn: Conn, closed: bool, fut: asyncio.Future[bool] = replied
                ) -> None:
                    if not fut.done():
                        fut.set_result(closed)

                conn.on_reply = on_reply
                self.write(conn, self.new_call())
                await replied
            if conn.transport is not None:
                conn.transport.close()

        await asyncio.gather(*(worker(conn) for conn in conns))
        end = time.monotonic()
        self.sample_cpu("window_end")
        return start, end

    # -- the run -----------------------------------------------------------------------------

    async def main(self) -> dict[str, Any]:
        """Connect to the feed, run the mode, return the records."""
        c = self.config
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: Feed(self), "127.0.0.1", c["feed_port"])
        try:
            window = await getattr(self, c["mode"])()
            # Decisions still travelling from the stub arrive within a few milliseconds.
            await asyncio.sleep(0.05)
        finally:
            transport.close()
        return {
            "mode": c["mode"],
            "window": window,
            "intended": self.intended,
            "sent": self.sent,
            "acked": self.acked,
            "status": self.status,
            "decided": self.decided,
            "decisions": self.decisions,
            "duplicates": sum(n - 1 for n in self.decisions if n > 1),
            "foreign": self.foreign,
            "blocker": self.blocker,
            "cpu": self.cpu,
            "generator": self.generator,
        }


def sign_fresh_tokens(spec: dict[str, Any]) -> list[str]:
    """Sign ``spec["count"]`` distinct notification tokens (each with its own ``jti``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from callflow.testing import SigningKey, graph_claims

    private = serialization.load_pem_private_key(spec["pem"].encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    key = SigningKey(private, spec["kid"])
    return [
        key.sign(
            graph_claims(
                app_id=spec["app_id"],
                tenant_id=spec["tenant_id"],
                issuer=spec["issuer"],
                jti=str(i),
            )
        )
        for i in range(spec["count"])
    ]


def main() -> None:
    """Read the config, run, write the result."""
    config_path, result_path = sys.argv[1:3]
    config = json.loads(Path(config_path).read_text())
    if config.get("fresh_tokens"):
        config["tokens"] = sign_fresh_tokens(config["fresh_tokens"])
    loop = "uvloop" if have_uvloop() else "asyncio"
    result = run_loop(LoadGen(config).main, loop)
    result["loop"] = loop
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
