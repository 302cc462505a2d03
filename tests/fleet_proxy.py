"""A round-robin HTTP proxy on loopback: the load balancer in front of a fleet of workers.

``async with FleetProxy(upstreams) as proxy:`` listens on 127.0.0.1 (a free port) and passes
each request to the next upstream base URL in turn, with its method, path, query, headers and
body. An upstream that refuses the connection (a killed worker) is skipped for that request.
The reply carries ``X-Fleet-Upstream: <index>``; a request with ``X-Fleet-Avoid: <index>``
goes to any other upstream (a redelivery that must land on a different worker).
``proxy.down = True`` drops every request's connection without a reply (the service behind
it is down; ``dropped`` counts them); ``counts`` says how many requests each upstream got, and
``await proxy.wait_until(predicate)`` waits (without polling) until ``predicate(proxy)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final, Self

import aiohttp
import anyio
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

__all__ = ["AVOID", "UPSTREAM", "FleetProxy"]

UPSTREAM: Final = "X-Fleet-Upstream"
AVOID: Final = "X-Fleet-Avoid"

_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "content-length",
        "content-encoding",
        "host",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class FleetProxy:
    """A round-robin reverse proxy over ``upstreams`` (base URLs); see the module docstring."""

    def __init__(self, upstreams: Sequence[str]) -> None:
        if not upstreams:
            raise ValueError("FleetProxy needs at least one upstream base URL, got none")
        self.upstreams = [u.rstrip("/") for u in upstreams]
        self.counts = [0] * len(self.upstreams)
        self.down = False
        self.dropped = 0
        self._changed = anyio.Event()
        self._turn = itertools.count()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        """Start listening and open the upstream session."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=512),
            timeout=aiohttp.ClientTimeout(total=30.0),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop listening and close the session."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()  # requests in flight finish with the session still open
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def wait_until(self, predicate: Callable[[FleetProxy], bool]) -> None:
        """Return once ``predicate(self)`` holds; checked after every request."""
        while not predicate(self):
            await self._changed.wait()

    def _touch(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def _order(self, avoid: str | None) -> list[int]:
        count = len(self.upstreams)
        start = next(self._turn)
        order = [(start + step) % count for step in range(count)]
        return [index for index in order if str(index) != avoid] or order

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            self.dropped += 1
            self._touch()
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=503)
        session = self._session
        assert session is not None
        body = await request.read()
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP
        )
        failures: list[str] = []
        for index in self._order(request.headers.get(AVOID)):
            url = URL(self.upstreams[index] + str(request.rel_url), encoded=True)
            try:
                async with session.request(
                    request.method, url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    raw = await response.read()
                    reply = CIMultiDict(
                        (k, v) for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP
                    )
                    status = response.status
            except aiohttp.ClientConnectionError as exc:
                failures.append(f"{self.upstreams[index]}: {type(exc).__name__}")
                continue
            self.counts[index] += 1
            self._touch()
            reply[UPSTREAM] = str(index)
            return web.Response(status=status, body=raw, headers=reply)
        return web.json_response(
            {"error": {"code": "bad_gateway", "message": "; ".join(failures)}}, status=502
        )
