"""The floor: a bare aiohttp webhook that rejects every call as busy.

``json.loads`` the notification, reply 202, and POST ``{"reason":"busy"}`` to Graph through
one shared keep-alive :class:`aiohttp.ClientSession` from a spawned task. No JWT check, no
routing, no deadline: what any framework on this stack is measured against.

Run: ``python -m benchmarks.floor_bot --port P --graph-url URL [--loop uvloop]``.
"""

from __future__ import annotations

import aiohttp

from benchmarks._common import baseline_main, serve_baseline

_BODY = b'{"reason":"busy"}'
_HEADERS = {"Authorization": "Bearer bench-app-token", "Content-Type": "application/json"}


async def serve(port: int, graph_url: str) -> None:
    """Serve the webhook until SIGTERM."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
    prefix = graph_url.rstrip("/") + "/communications/calls/"

    async def decide(call_id: str) -> None:
        try:
            async with session.post(
                prefix + call_id + "/reject", data=_BODY, headers=_HEADERS
            ) as response:
                await response.read()
        except aiohttp.ClientError:
            pass

    async def close() -> None:
        await session.close()

    await serve_baseline(port, decide, close)


def main() -> None:
    """Parse the arguments and serve."""
    baseline_main(__doc__ or "", serve)


if __name__ == "__main__":
    main()
