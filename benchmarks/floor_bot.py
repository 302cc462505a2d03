"""The floor: a bare aiohttp webhook that rejects every call as busy.

``json.loads`` the notification, reply 202, and POST ``{"reason":"busy"}`` to Graph through
one shared keep-alive :class:`aiohttp.ClientSession` from a spawned task. No JWT check, no
routing, no deadline: what any framework on this stack is measured against.

Run: ``python -m benchmarks.floor_bot --port P --graph-url URL [--loop uvloop]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import aiohttp
from aiohttp import web

from benchmarks._common import WEBHOOK_PATH, run_loop, serve_app

_BODY = b'{"reason":"busy"}'
_HEADERS = {"Authorization": "Bearer bench-app-token", "Content-Type": "application/json"}


async def serve(port: int, graph_url: str) -> None:
    """Serve the webhook until SIGTERM."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
    prefix = graph_url.rstrip("/") + "/communications/calls/"
    tasks: set[asyncio.Task[None]] = set()

    async def decide(call_id: str) -> None:
        try:
            async with session.post(
                prefix + call_id + "/reject", data=_BODY, headers=_HEADERS
            ) as response:
                await response.read()
        except aiohttp.ClientError:
            pass

    async def webhook(request: web.Request) -> web.Response:
        data = json.loads(await request.read())
        call_id = data["value"][0]["resourceData"]["id"]
        task = asyncio.create_task(decide(call_id))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return web.Response(status=202)

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    async def close() -> None:
        await session.close()

    app = web.Application()
    app.router.add_post(WEBHOOK_PATH, webhook)
    app.router.add_get("/readyz", readyz)
    await serve_app(app, port, on_stop=close)


def main() -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--graph-url", required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    run_loop(lambda: serve(args.port, args.graph_url), args.loop)


if __name__ == "__main__":
    main()
