"""A fast Graph stub: stamps every call-control POST on arrival and tells the load generator.

Serves on 127.0.0.1:

- ``POST /v1.0/communications/calls/{id}/{action}``: reads the body, answers 202 at once, and
  writes ``"{id} {monotonic arrival} {action}\\n"`` to every client of the *feed* port (a
  plain TCP stream the load generator reads to match decisions to the calls it placed);
- ``/keys/.well-known/openid-configuration`` and ``/keys/keys``: the key set that the
  notification tokens are signed with (a :class:`callflow.testing.KeyServer` app);
- ``GET /v1.0/_stats``: counters;

and, on its own port over TLS, an Entra-like token endpoint (a
:class:`callflow.testing.TokenServer`) so that the callflow bot gets its app token the way
``callflow run`` gets one in production (msal, client secret).

Run: ``python -m benchmarks.graph_stub --jwks FILE [--loop uvloop]``; it prints
``READY {"http": port, "feed": port, "authority": url, "ca_bundle": path}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from benchmarks._common import GRAPH_PATH, KEYS_PATH, announce, have_uvloop, run_loop
from callflow.testing import KeyServer, TokenServer


class Stub:
    """The stub's state: feed subscribers and counters."""

    def __init__(self) -> None:
        self.feeds: set[asyncio.StreamWriter] = set()
        self.decisions = 0
        self.by_action: dict[str, int] = {}

    async def action(self, request: web.Request) -> web.Response:
        """Stamp a call-control request, tell the feed, answer 202."""
        at = time.monotonic()
        await request.read()
        call_id = request.match_info["call_id"]
        action = request.match_info["action"]
        self.decisions += 1
        self.by_action[action] = self.by_action.get(action, 0) + 1
        line = f"{call_id} {at:.6f} {action}\n".encode()
        for writer in self.feeds:
            writer.write(line)
        return web.Response(status=202)

    async def stats(self, request: web.Request) -> web.Response:
        """The counters, as JSON."""
        return web.json_response(
            {"decisions": self.decisions, "by_action": self.by_action, "feeds": len(self.feeds)}
        )

    async def subscribe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A feed client: send it every decision until it disconnects."""
        self.feeds.add(writer)
        try:
            await reader.read()  # returns at EOF: the client went away
        finally:
            self.feeds.discard(writer)
            writer.close()


async def serve(jwks: dict[str, Any]) -> None:
    """Serve until SIGTERM or SIGINT."""
    stub = Stub()
    app = web.Application()
    app.router.add_post(GRAPH_PATH + "/communications/calls/{call_id}/{action}", stub.action)
    app.router.add_get(GRAPH_PATH + "/_stats", stub.stats)
    app.add_subapp(KEYS_PATH, KeyServer(lambda: jwks).app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    http_port = int(runner.addresses[0][1])
    feed = await asyncio.start_server(stub.subscribe, "127.0.0.1", 0)
    feed_port = int(feed.sockets[0].getsockname()[1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with TokenServer() as tokens:
            announce(
                http=http_port,
                feed=feed_port,
                authority=tokens.authority_url,
                ca_bundle=tokens.ca_bundle_path,
            )
            await stop.wait()
    finally:
        feed.close()
        for writer in tuple(stub.feeds):
            writer.close()
        await runner.cleanup()


def main() -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jwks", required=True, help="a JSON file with the JWK set to serve")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default=None)
    args = parser.parse_args()
    jwks = json.loads(Path(args.jwks).read_text())
    loop = args.loop or ("uvloop" if have_uvloop() else "asyncio")
    run_loop(lambda: serve(jwks), loop)


if __name__ == "__main__":
    main()
