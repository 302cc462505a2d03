"""The Python calls callflow's own code makes per decided call: a count, not a timing.

``python -m benchmarks.path_calls [--traced] [--calls N] [--top K]`` serves a bot that rejects
every call against an in-process FakeGraph, places warm-up calls, then ``N`` calls one at a
time while a profile hook (both threads: the I/O loop's and the app loop's) counts the
function calls whose code is callflow's (FakeGraph's own are left out) and those of
OpenTelemetry. Unlike CPU time on a shared machine this barely moves between runs (only the
timer-driven lag probe does), so it tells whether a change added work to the decision path:
run it from two checkouts (``cd OTHER && PYTHONPATH=$PWD python -m benchmarks.path_calls``)
and compare. ``--traced`` turns tracing on (spans made and dropped). ``--top`` lists the
functions called most.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

import anyio

import callflow
from callflow import Bot, IncomingCall, Reject, RejectReason
from callflow.testing import FakeGraph

ROOT = os.path.dirname(callflow.__file__)
TESTING = os.path.join(ROOT, "testing")


class Counter:
    """A profile hook counting callflow's and OpenTelemetry's Python calls while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.counts: collections.Counter[str] = collections.Counter()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if not self.on or event != "call":
            return
        path = frame.f_code.co_filename
        if path.startswith(ROOT) and not path.startswith(TESTING):
            self.counts["callflow"] += 1
            self.counts[f"{os.path.relpath(path, ROOT)}:{frame.f_code.co_name}"] += 1
        elif f"{os.sep}opentelemetry{os.sep}" in path:
            self.counts["opentelemetry"] += 1


async def measure(calls: int, traced: bool, counter: Counter) -> None:
    """Serve the bot, warm up, count ``calls`` decisions."""
    bot = Bot()

    @bot.incoming_call
    async def busy(call: IncomingCall) -> Reject:
        return Reject(RejectReason.BUSY)

    settings = {"tracing": "otel", "tracing_exporter": "none"} if traced else {}
    async with FakeGraph() as fake, fake.serve(bot, log_level="warning", **settings) as running:
        for _ in range(20):
            await (await fake.place_call(running.webhook_url)).decision()
        counter.on = True
        for _ in range(calls):
            await (await fake.place_call(running.webhook_url)).decision()
        counter.on = False


def main(argv: Sequence[str] | None = None) -> int:
    """Count, print the figures per decision."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--traced", action="store_true")
    parser.add_argument("--top", type=int, default=0)
    args = parser.parse_args(argv)
    counter = Counter()
    threading.setprofile(counter)  # the I/O thread starts after this
    sys.setprofile(counter)
    try:
        anyio.run(measure, args.calls, args.traced, counter)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    n = args.calls
    counts = counter.counts
    print(
        f"per decision: callflow {counts['callflow'] / n:.2f} Python calls, "
        f"opentelemetry {counts['opentelemetry'] / n:.2f}"
    )
    functions = [(k, v) for k, v in counts.most_common() if ":" in k]
    for name, count in functions[: args.top]:
        print(f"  {count / n:8.2f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
