"""The load generator: POSTs signed incoming-call notifications and matches the decisions.

For every call it records, on ``time.monotonic()`` (system-wide on Linux, so comparable with
the stub's stamps): when the notification POST was sent, when the webhook's reply came back
and its status, and when the stub received the decision for that call (read from the stub's
feed, matched by call id). Modes:

- ``closed``: ``concurrency`` workers, each placing a call and waiting for its *decision*
  before the next one (so ``concurrency`` calls are undecided at any time), for ``warmup``
  then ``duration`` seconds; figures count the calls sent after the warm-up;
- ``open``: calls sent on a fixed schedule of ``rate`` per second for ``duration`` seconds,
  whatever happens to them (at most ``max_inflight`` POSTs awaiting their reply), then up to
  ``tail`` seconds for the last decisions; ``blocker_at`` adds one call, at that second,
  whose id makes the blocked-loop handler run;
- ``burst``: ``count`` calls as fast as ``concurrency`` connections allow, waiting only for
  the 202s (the memory scenario).

Run: ``python -m benchmarks.loadgen CONFIG.json RESULT.json`` (the harness writes the config).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks._common import (
    BLOCKER_SUFFIX,
    call_id,
    cpu_seconds,
    have_uvloop,
    machine_busy_seconds,
    run_loop,
)

NAN = math.nan


class LoadGen:
    """One run of the load generator; see the module docstring."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.url: str = config["webhook_url"]
        self.run: int = config["run"]
        self.prefix = call_id(self.run, 0)[:8]
        self.template: bytes = config["body"].encode()
        self.sentinel: bytes = config["sentinel"].encode()
        self.tokens: list[str] = config["tokens"]
        self.sent: list[float] = []
        self.acked: list[float] = []
        self.status: list[int] = []
        self.decided: list[float] = []
        self.duplicates = 0
        self.foreign = 0
        self.waiters: dict[int, asyncio.Future[None]] = {}
        self.blocker: dict[str, float] = {}
        self.undecided = 0
        self.all_decided: asyncio.Event | None = None
        self.session: aiohttp.ClientSession | None = None
        self.cpu: dict[str, list[float]] = {}

    # -- the feed ----------------------------------------------------------------------------

    async def read_feed(self, reader: asyncio.StreamReader) -> None:
        """Match each decision the stub reports to the call it belongs to."""
        prefix = self.prefix
        decided = self.decided
        while line := await reader.readline():
            cid, at, _action = line.decode().split(" ", 2)
            if not cid.startswith(prefix):
                self.foreign += 1
                continue
            if cid.endswith(BLOCKER_SUFFIX):
                self.blocker.setdefault("decided", float(at))
                continue
            index = int(cid[-12:], 16)
            if index >= len(decided):
                self.foreign += 1
                continue
            if decided[index] == decided[index]:  # not NaN: decided before
                self.duplicates += 1
                continue
            decided[index] = float(at)
            waiter = self.waiters.get(index)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if self.all_decided is not None:
                self.undecided -= 1
                if self.undecided <= 0:
                    self.all_decided.set()

    # -- sending -----------------------------------------------------------------------------

    def new_call(self) -> int:
        """Reserve the next call index."""
        index = len(self.sent)
        self.sent.append(NAN)
        self.acked.append(NAN)
        self.status.append(0)
        self.decided.append(NAN)
        return index

    async def post(self, index: int, cid: str | None = None) -> None:
        """POST the notification of call ``index`` and record the reply."""
        session = self.session
        assert session is not None
        cid = cid or call_id(self.run, index)
        body = self.template.replace(self.sentinel, cid.encode())
        token = self.tokens[index % len(self.tokens)]
        headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
        sent = time.monotonic()
        status = 0
        try:
            async with session.post(self.url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            print(f"loadgen: call {cid}: {type(exc).__name__}: {exc}", file=sys.stderr)
        acked = time.monotonic()
        if cid.endswith(BLOCKER_SUFFIX):
            self.blocker.update(sent=sent, acked=acked, status=status)
            return
        self.sent[index] = sent
        self.acked[index] = acked
        self.status[index] = status

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

    # -- modes -------------------------------------------------------------------------------

    async def closed(self) -> tuple[float, float]:
        """Closed loop on decisions; returns the measurement window."""
        c = self.config
        start = time.monotonic()
        window_start = start + c["warmup"]
        window_end = window_start + c["duration"]
        limit = c.get("count") or 0
        timeout = c.get("decision_timeout", 10.0)
        loop = asyncio.get_running_loop()
        sampled = False

        async def worker() -> None:
            nonlocal sampled
            while True:
                now = time.monotonic()
                if now >= window_end or (limit and len(self.sent) >= limit):
                    return
                if not sampled and now >= window_start:
                    sampled = True
                    self.sample_cpu("window_start")
                index = self.new_call()
                waiter: asyncio.Future[None] = loop.create_future()
                self.waiters[index] = waiter
                await self.post(index)
                if self.decided[index] != self.decided[index]:  # NaN: not decided yet
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await waiter
                del self.waiters[index]

        await asyncio.gather(*(worker() for _ in range(c["concurrency"])))
        if not sampled:
            self.sample_cpu("window_start")
        self.sample_cpu("window_end")
        return window_start, min(time.monotonic(), window_end)

    async def open(self) -> tuple[float, float]:
        """Open loop at a fixed rate; returns the sending window."""
        c = self.config
        rate = float(c["rate"])
        total = max(1, int(rate * c["duration"]))
        blocker_at = c.get("blocker_at")
        inflight = asyncio.Semaphore(c.get("max_inflight", 512))
        tasks: set[asyncio.Task[None]] = set()
        self.all_decided = asyncio.Event()

        async def send(index: int, cid: str | None = None) -> None:
            try:
                await self.post(index, cid)
            finally:
                inflight.release()

        def spawn(index: int, cid: str | None = None) -> None:
            task = asyncio.create_task(send(index, cid))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        self.sample_cpu("window_start")
        start = time.monotonic()
        blocker_due = start + blocker_at if blocker_at is not None else math.inf
        stop = start + c["duration"]
        sent = 0
        while sent < total:
            now = time.monotonic()
            if now >= stop:
                break
            if now >= blocker_due:
                blocker_due = math.inf
                await inflight.acquire()
                spawn(0, call_id(self.run, 0)[:-12] + BLOCKER_SUFFIX)
            due = min(total, int((now - start) * rate) + 1)
            while sent < due and time.monotonic() < stop:
                await inflight.acquire()
                index = self.new_call()
                self.undecided += 1
                spawn(index)
                sent += 1
            next_due = start + sent / rate
            delay = min(next_due, blocker_due) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        end = time.monotonic()
        self.sample_cpu("window_end")
        if self.undecided > 0:
            self.all_decided.clear()
        if c.get("wait_decisions", True) and self.undecided > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(c.get("tail", 15.0)):
                    await self.all_decided.wait()
        if tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(1.0, c.get("tail", 15.0))):
                    await asyncio.gather(*tasks)
        return start, end

    async def burst(self) -> tuple[float, float]:
        """As fast as possible, waiting only for the replies."""
        c = self.config
        count = c["count"]
        self.sample_cpu("window_start")
        start = time.monotonic()

        async def worker() -> None:
            while len(self.sent) < count:
                await self.post(self.new_call())

        await asyncio.gather(*(worker() for _ in range(c["concurrency"])))
        end = time.monotonic()
        self.sample_cpu("window_end")
        return start, end

    # -- the run -----------------------------------------------------------------------------

    async def main(self) -> dict[str, Any]:
        """Connect to the feed, run the mode, return the records."""
        c = self.config
        reader, writer = await asyncio.open_connection("127.0.0.1", c["feed_port"])
        feed = asyncio.create_task(self.read_feed(reader))
        limit = max(c.get("concurrency", 0), c.get("max_inflight", 0), 1)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
            timeout=aiohttp.ClientTimeout(total=c.get("request_timeout", 60.0)),
        )
        try:
            window = await getattr(self, c["mode"])()
        finally:
            await self.session.close()
            # Decisions still travelling from the stub arrive within a few milliseconds.
            await asyncio.sleep(0.05)
            writer.close()
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await feed
        return {
            "mode": c["mode"],
            "window": window,
            "sent": self.sent,
            "acked": self.acked,
            "status": self.status,
            "decided": self.decided,
            "duplicates": self.duplicates,
            "foreign": self.foreign,
            "blocker": self.blocker,
            "cpu": self.cpu,
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
