"""The callflow bot under test, started exactly as ``callflow run`` starts a worker.

``python -m benchmarks.callflow_bot [--loop asyncio|uvloop]`` calls the ``callflow`` command
(``callflow run benchmarks.callflow_bot:bot``) in this process, so settings come from
``CALLFLOW_*`` variables, logging, collector tuning, the app token (msal against the stub's
token endpoint) and the serving itself are the command's own, and nothing here reaches into
callflow's internals: whatever shape the worker takes inside, this measures it. The harness
points ``GRAPH_URL`` at the stub, ``OPENID_CONFIG_URL`` at its key server and
``AUTHORITY_URL`` at its token endpoint; inbound JWT validation stays on. Two things are
added around the command: ``--loop asyncio`` hides uvloop from it (the command uses uvloop
whenever it is installed), and SIGUSR1 prints the cyclic collector's totals. Stop it as the
command is stopped: SIGTERM, and a second SIGTERM to stop at once (pending calls still get
the default decision).

``BENCH_MODE`` picks the handler of :data:`bot`: ``instant`` rejects every call as busy;
``hang`` never returns (every decision is the default); ``block`` and ``spin`` hang too,
except for a call whose id ends with :data:`~benchmarks._common.BLOCKER_SUFFIX`, whose
handler holds its event loop for ``BENCH_BLOCK_SECONDS``: ``block`` with ``time.sleep``
(the thread sleeps, the GIL is free), ``spin`` with a pure-Python busy loop (the thread
holds the GIL except at the interpreter's switch interval). The marked handler prints
``{"event": "bench.block", ...}`` lines on stderr with the block's start and end on
``time.monotonic()``.
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

from benchmarks._common import BLOCKER_SUFFIX
from callflow import Bot, IncomingCall, Reject, RejectReason

MODES = ("instant", "hang", "block", "spin")
TARGET = "benchmarks.callflow_bot:bot"
"""What the harness's bot process runs: ``callflow run TARGET``."""


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


def _block_line(**fields: object) -> None:
    sys.stderr.write(json.dumps({"event": "bench.block", **fields}) + "\n")
    sys.stderr.flush()


def make_bot(mode: str, block_seconds: float = 12.0) -> Bot:
    """A bot with the one handler of ``mode`` (see the module docstring)."""
    bot = Bot()
    if mode == "instant":

        @bot.incoming_call
        async def busy(call: IncomingCall) -> Reject:
            return Reject(RejectReason.BUSY)

    elif mode in ("hang", "block", "spin"):

        @bot.incoming_call
        async def stuck(call: IncomingCall) -> Reject:
            if mode != "hang" and call.call_id.endswith(BLOCKER_SUFFIX):
                # Hold this thread, and so its event loop: asleep (the GIL is free) or
                # spinning in pure Python (the GIL is held but for the switch interval).
                start = time.monotonic()
                _block_line(how=mode, start=start)
                if mode == "block":
                    time.sleep(block_seconds)  # noqa: ASYNC251 - blocking the loop is the point
                else:
                    spins = 0
                    while time.monotonic() < start + block_seconds:
                        spins += 1
                _block_line(how=mode, start=start, end=time.monotonic())
                return Reject(RejectReason.BUSY)
            await asyncio.Event().wait()
            raise AssertionError("unreachable: the event is never set")

    else:
        raise ValueError(f"unknown BENCH_MODE {mode!r}; expected one of {', '.join(MODES)}")
    return bot


bot = make_bot(
    os.environ.get("BENCH_MODE", "instant"), float(os.environ.get("BENCH_BLOCK_SECONDS", "12"))
)
"""The bot ``callflow run benchmarks.callflow_bot:bot`` serves."""


def main() -> int:
    """Run ``callflow run benchmarks.callflow_bot:bot`` here, on the chosen loop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    if args.loop == "asyncio":
        sys.modules["uvloop"] = None  # type: ignore[assignment]  # the command finds no uvloop
    stats = GcStats()
    gc.callbacks.append(stats.callback)
    signal.signal(signal.SIGUSR1, stats.dump)
    from callflow.cli import main as callflow_command

    return callflow_command(["run", TARGET])


if __name__ == "__main__":
    raise SystemExit(main())
