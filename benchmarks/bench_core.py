"""Micro-benchmark of the in-process hot path: parse + dispatch + decision, no network.

Measures, in one process on one core (the bot's loop):
  * throughput: incoming-call notifications parsed, routed to a handler that decides at once,
    and delivered to a null sink, per second;
  * latency: body bytes in -> sink.deliver called, one call at a time (p50/p99);
  * memory: bytes per pending undecided call (handlers waiting) at N pending calls, in all
    and beyond the notification body the call keeps;
and a baseline in the same run: json.loads + one asyncio task per call that calls the handler
and the sink (what a hand-written bot does at least), so figures can be read as ratios.

Run: .venv/bin/python benchmarks/bench_core.py [--calls 20000] [--pending 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import json
import logging
import statistics
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import anyio
import structlog

from callflow import Answer, Bot, IncomingCall
from callflow._parse import parse_notifications
from callflow.settings import Settings

BODY_TEMPLATE = json.loads(
    (Path(__file__).parent.parent / "tests/fixtures/graph/incoming_p2p.json").read_text()
)


def body_for(i: int) -> bytes:
    data = copy.deepcopy(BODY_TEMPLATE)
    call_id = f"1a2b3c4d-0000-4000-8000-{i:012d}"
    item = data["value"][0]
    item["resourceUrl"] = f"/communications/calls/{call_id}"
    item["resourceData"]["id"] = call_id
    item["resourceData"]["@odata.id"] = f"/communications/calls/{call_id}"
    return json.dumps(data).encode()


class NullSink:
    """Counts decisions. It runs on the engine's I/O loop; ``done`` belongs to the loop that
    submits, so it is set through that loop."""

    def __init__(self) -> None:
        self.count = 0
        self.done: asyncio.Event | None = None
        self.loop = asyncio.get_running_loop()
        self.target = 0
        self.last = 0.0

    async def deliver(self, call: IncomingCall, decision: Any, deadline: float) -> None:
        self.count += 1
        self.last = time.perf_counter()
        if self.done is not None and self.count >= self.target:
            self.loop.call_soon_threadsafe(self.done.set)


def quiet_logs() -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )


def make_bot(hang: bool = False) -> Bot:
    # A long platform timeout for the memory run: tracemalloc slows intake a lot.
    timeout = 600.0 if hang else 15.0
    bot = Bot(
        Settings(
            platform_timeout=timeout,
            safety_margin=3.0,
            max_pending=10_000_000,
            deadline_send_rate=1_000_000,  # hold every call: no deadline-wave pacing here
            # A burst submitted in one go must not be shed as ingress lag.
            shed_lag=min(timeout, 30.0),
        )
    )

    if hang:

        @bot.incoming_call
        async def wait(call: IncomingCall) -> Answer:
            await asyncio.Event().wait()
            return Answer()  # pragma: no cover

    else:

        @bot.incoming_call
        async def decide(call: IncomingCall) -> Answer:
            return Answer()

    return bot


async def callflow_throughput(bodies: list[bytes]) -> float:
    sink = NullSink()
    sink.done, sink.target = asyncio.Event(), len(bodies)
    async with make_bot().engine(sink).running() as engine:
        start = time.perf_counter()
        for i, body in enumerate(bodies):
            engine.submit(parse_notifications(body), time.monotonic())
            if i % 256 == 255:
                await asyncio.sleep(0)  # let lanes run, as requests interleave in a server
        await sink.done.wait()
        return len(bodies) / (time.perf_counter() - start)


async def baseline_throughput(bodies: list[bytes]) -> float:
    done = asyncio.Event()
    count = 0

    async def handler(data: dict[str, Any]) -> Answer:
        return Answer()

    async def one(data: dict[str, Any]) -> None:
        nonlocal count
        decision = await handler(data)
        decision.to_graph("https://bot.example.org/cb")
        count += 1
        if count >= len(bodies):
            done.set()

    async with asyncio.TaskGroup() as tg:
        start = time.perf_counter()
        for i, body in enumerate(bodies):
            tg.create_task(one(json.loads(body)))
            if i % 256 == 255:
                await asyncio.sleep(0)
        await done.wait()
        return len(bodies) / (time.perf_counter() - start)


async def callflow_latency(bodies: list[bytes]) -> list[float]:
    sink = NullSink()
    out: list[float] = []
    async with make_bot().engine(sink).running() as engine:
        for body in bodies:
            sink.done, sink.target = asyncio.Event(), sink.count + 1
            t0 = time.perf_counter()
            engine.submit(parse_notifications(body), time.monotonic())
            await sink.done.wait()
            out.append(sink.last - t0)
    return out


async def baseline_latency(bodies: list[bytes]) -> list[float]:
    out: list[float] = []

    async def handler(data: dict[str, Any]) -> Answer:
        return Answer()

    async def one(data: dict[str, Any], done: asyncio.Event, t0: float) -> None:
        decision = await handler(data)
        decision.to_graph("https://bot.example.org/cb")
        out.append(time.perf_counter() - t0)
        done.set()

    async with asyncio.TaskGroup() as tg:
        for body in bodies:
            done = asyncio.Event()
            t0 = time.perf_counter()
            tg.create_task(one(json.loads(body), done, t0))
            await done.wait()
    return out


async def pending_memory(bodies: list[bytes]) -> tuple[float, float]:
    """Bytes per pending undecided call: in all, and beyond the body text it keeps.

    A pending call keeps its body's text (its ``raw`` is decoded from it on demand; past
    1 000 pending calls the text is kept compressed), its typed event, its slot and deadline
    entry, its lane task and the waiting handler.
    """
    gc.collect()
    tracemalloc.start()
    sink = NullSink()
    body_bytes = sum(len(zlib.compress(b, 1)) for b in bodies) / len(bodies)
    async with make_bot(hang=True).engine(sink, drain_timeout=0).running() as engine:
        gc.collect()
        start = tracemalloc.get_traced_memory()[0]
        for i, body in enumerate(bodies):
            engine.submit(parse_notifications(body), time.monotonic())
            if i % 1024 == 1023:
                await asyncio.sleep(0)
        await engine.settle()  # the I/O loop took every call ...
        for _ in range(3):
            await engine.settle()  # ... and the lanes started every handler
            await asyncio.sleep(0)
        gc.collect()
        total = tracemalloc.get_traced_memory()[0] - start
        assert engine.pending == len(bodies), engine.pending
        tracemalloc.stop()
        engine.cut_drain()
        n = len(bodies)
    return total / n, total / n - body_bytes


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--latency-calls", type=int, default=5_000)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--worker-gc",
        action="store_true",
        help="apply the collector settings `callflow run` uses (callflow._runtime)",
    )
    args = parser.parse_args()
    quiet_logs()
    if args.worker_gc:
        from callflow._runtime import tune_gc_for_worker

        tune_gc_for_worker()
        print("collector: worker settings (frozen start-up objects, thresholds raised)")
    else:
        print("collector: Python defaults")
    bodies = [body_for(i) for i in range(max(args.calls, args.latency_calls))]
    print(f"body size: {len(bodies[0])} bytes")

    cf_tput, base_tput, cf_lat, base_lat = [], [], [], []
    for r in range(args.rounds):
        # Fresh call ids per round: the engine dedupes redeliveries.
        rb = [body_for(r * 1_000_000 + i) for i in range(args.calls)]
        cf_tput.append(anyio.run(callflow_throughput, rb))
        base_tput.append(anyio.run(baseline_throughput, rb))
        lb = [body_for(r * 1_000_000 + 500_000 + i) for i in range(args.latency_calls)]
        cf_lat.extend(anyio.run(callflow_latency, lb))
        base_lat.extend(anyio.run(baseline_latency, lb))
    t_cf, t_base = statistics.median(cf_tput), statistics.median(base_tput)
    print(
        f"throughput   callflow {t_cf:>9.0f} calls/s   baseline {t_base:>9.0f} calls/s   "
        f"ratio {t_cf / t_base:.2f}"
    )
    for q in (0.5, 0.99):
        a, b = pct(cf_lat, q) * 1e6, pct(base_lat, q) * 1e6
        print(
            f"latency p{int(q * 100):<3}  callflow {a:>8.1f} us   baseline {b:>8.1f} us   "
            f"ratio {a / b:.2f}"
        )
    pbodies = [body_for(9_000_000 + i) for i in range(args.pending)]
    total, beyond = anyio.run(pending_memory, pbodies)
    print(
        f"memory       {args.pending} pending calls: {total:.0f} B/call in all, "
        f"{beyond:.0f} B/call beyond the (compressed) body text it keeps"
    )


if __name__ == "__main__":
    main()
