"""The callflow bot under test, run the way ``callflow run`` runs a worker.

Settings come from ``CALLFLOW_*`` variables (the harness points ``GRAPH_URL`` at the stub and
``OPENID_CONFIG_URL`` at the stub's key server; inbound JWT validation stays on). Logging is
configured as the CLI configures it (JSON lines at ``LOG_LEVEL``), imports are frozen out of
the collector as the CLI does, and the app token is a :class:`StaticTokenProvider` so that no
identity provider is involved. The first SIGTERM stops at once (pending calls still get the
default decision).

``BENCH_MODE`` picks the handler: ``instant`` rejects every call as busy; ``hang`` never
returns (every decision is the deadline scheduler's); ``block`` hangs too, except for a call
whose id ends with :data:`~benchmarks._common.BLOCKER_SUFFIX`, whose handler blocks the event
loop with ``time.sleep(BENCH_BLOCK_SECONDS)``.

Run: ``python -m benchmarks.callflow_bot [--loop uvloop]`` with the environment set.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
import time

import anyio

from benchmarks._common import BLOCKER_SUFFIX, announce
from callflow import Bot, IncomingCall, Reject, RejectReason
from callflow._log import configure_logging
from callflow._runtime import tune_gc_for_worker
from callflow.graph._tokens import StaticTokenProvider
from callflow.settings import Settings

MODES = ("instant", "hang", "block")


class GcStats:
    """Counts the cyclic collector's passes and their duration per generation.

    SIGUSR1 prints the totals so far as one JSON line on stderr (``"event": "bench.gc"``);
    the harness reads it before and after a scenario.
    """

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = 0.0
        self._started = 0.0

    def callback(self, phase: str, info: dict[str, int]) -> None:
        """``gc.callbacks`` hook."""
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = info["generation"]
        self.collections[generation] += 1
        self.seconds[generation] += took
        self.longest = max(self.longest, took)

    def dump(self, signum: int = 0, frame: object = None) -> None:
        """Print the totals (a signal handler)."""
        line = {
            "event": "bench.gc",
            "collections": self.collections,
            "seconds": self.seconds,
            "longest": self.longest,
            "cpu": time.process_time(),
        }
        sys.stderr.write(json.dumps(line) + "\n")
        sys.stderr.flush()


def make_bot(mode: str, block_seconds: float = 20.0) -> Bot:
    """A bot with the one handler of ``mode`` (see the module docstring)."""
    bot = Bot()
    if mode == "instant":

        @bot.incoming_call
        async def busy(call: IncomingCall) -> Reject:
            return Reject(RejectReason.BUSY)

    elif mode in ("hang", "block"):

        @bot.incoming_call
        async def stuck(call: IncomingCall) -> Reject:
            if mode == "block" and call.call_id.endswith(BLOCKER_SUFFIX):
                time.sleep(block_seconds)  # noqa: ASYNC251 - blocking the loop is the point
                return Reject(RejectReason.BUSY)
            await asyncio.Event().wait()
            raise AssertionError("unreachable: the event is never set")

    else:
        raise ValueError(f"unknown BENCH_MODE {mode!r}; expected one of {', '.join(MODES)}")
    return bot


async def serve(bot: Bot) -> None:
    """Serve until SIGTERM/SIGINT, then stop without waiting for pending handlers."""
    tokens = StaticTokenProvider("bench-app-token")
    async with bot.serve(tokens=tokens) as running:
        announce(http=running.port, pid=os.getpid())
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                running.stop(urgent=True)
                running.engine.cut_drain()
                break


def main() -> None:
    """Configure like the CLI does and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    settings = Settings.from_env()
    configure_logging(fmt=settings.log_format, level=settings.log_level, pii=settings.log_pii)
    bot = make_bot(
        os.environ.get("BENCH_MODE", "instant"),
        float(os.environ.get("BENCH_BLOCK_SECONDS", "20")),
    )
    bot.configure(settings)
    tune_gc_for_worker()  # what `callflow run` does
    stats = GcStats()
    gc.callbacks.append(stats.callback)
    signal.signal(signal.SIGUSR1, stats.dump)
    options = {"use_uvloop": True} if args.loop == "uvloop" else {}
    anyio.run(serve, bot, backend="asyncio", backend_options=options)


if __name__ == "__main__":
    main()
