"""What the benchmark processes share: identities, call ids, the ready line, /proc readers.

Every process of the harness prints one line ``READY {json}`` on stdout once it listens
(its ports in the JSON); the harness reads that line and nothing else from stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Final

from aiohttp import web

__all__ = [
    "APP_ID",
    "BLOCKER_SUFFIX",
    "CALLBACK_URL",
    "GRAPH_PATH",
    "ISSUER",
    "KEYS_PATH",
    "TENANT_ID",
    "WEBHOOK_PATH",
    "announce",
    "call_id",
    "cpu_seconds",
    "have_uvloop",
    "machine_busy_seconds",
    "percentile",
    "rss_bytes",
    "run_loop",
    "serve_app",
    "serve_baseline",
    "baseline_main",
]

APP_ID: Final = "8e2d4c10-55aa-4f3b-b1c2-0d9e7f6a5b41"
TENANT_ID: Final = "3f1c9e2a-7b44-4c1d-9a0e-5d2f8b6c1a90"
CALLBACK_URL: Final = "https://bot.invalid/api/calls"
ISSUER: Final = "https://api.botframework.com"
WEBHOOK_PATH: Final = "/api/calls"
GRAPH_PATH: Final = "/v1.0"
KEYS_PATH: Final = "/keys"
BLOCKER_SUFFIX: Final = "b10cb10cb10c"
"""A call id ending with this makes the blocking handler of the blocked-loop scenario run."""

_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
_PAGE: Final = os.sysconf("SC_PAGE_SIZE")


def call_id(run: int, index: int) -> str:
    """A GUID-shaped call id, unique per (run, index); always 36 characters."""
    return f"{run & 0xFFFFFFFF:08x}-0000-4000-8000-{index & 0xFFFFFFFFFFFF:012x}"


def announce(**ports: Any) -> None:
    """Print the ready line the harness waits for."""
    sys.stdout.write("READY " + json.dumps(ports) + "\n")
    sys.stdout.flush()


def have_uvloop() -> bool:
    """True when uvloop is installed."""
    return importlib.util.find_spec("uvloop") is not None


def run_loop(main: Callable[[], Coroutine[Any, Any, Any]], loop: str) -> Any:
    """Run ``main()`` on ``loop`` (``asyncio`` or ``uvloop``) and return its result."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main())
    if loop != "asyncio":
        raise ValueError(f"unknown loop {loop!r}; expected asyncio or uvloop")
    return asyncio.run(main())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine have spent busy since boot (from /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes."""
    with open(f"/proc/{pid}/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * _PAGE


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted values, interpolated linearly; nan if empty."""
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


async def serve_app(
    app: web.Application,
    port: int,
    *,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve ``app`` on 127.0.0.1:``port``, announce the port, and stop on SIGTERM/SIGINT."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024, reuse_address=True).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        announce(http=int(runner.addresses[0][1]), pid=os.getpid())
        await stop.wait()
    finally:
        try:
            if on_stop is not None:
                await on_stop()
        finally:
            await runner.cleanup()


async def serve_baseline(
    port: int,
    decide: Callable[[str], Coroutine[Any, Any, None]],
    on_stop: Callable[[], Awaitable[None]],
) -> None:
    """The baselines' webhook: ``json.loads`` the notification, spawn ``decide(call_id)``,
    reply 202 (and ``/readyz``); served until SIGTERM, then ``on_stop``."""
    tasks: set[asyncio.Task[None]] = set()

    async def webhook(request: web.Request) -> web.Response:
        data = json.loads(await request.read())
        call_id = data["value"][0]["resourceData"]["id"]
        task = asyncio.create_task(decide(call_id))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return web.Response(status=202)

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_post(WEBHOOK_PATH, webhook)
    app.router.add_get("/readyz", readyz)
    await serve_app(app, port, on_stop=on_stop)


def baseline_main(doc: str, serve: Callable[[int, str], Coroutine[Any, Any, None]]) -> None:
    """A baseline bot's command line: ``--port P --graph-url URL [--loop uvloop]``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--graph-url", required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    run_loop(lambda: serve(args.port, args.graph_url), args.loop)
