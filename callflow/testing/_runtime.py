"""What exists only while a FakeGraph runs: its server, its HTTP client, its task group.

One :class:`Runtime` is built with each :class:`~callflow.testing.FakeGraph` and handed to
the parts that need the running fake (its HTTP API, operations engine, notifier, timeout
enforcer). :meth:`Runtime.start`, once, when the fake is entered, starts the token endpoint,
serves the fake's aiohttp application on 127.0.0.1 on a free port, opens the client session
notifications are POSTed with, and enters the task group every background task (timeouts,
follow-ups, operations) belongs to; :meth:`Runtime.close` cancels those tasks and stops the
rest. A fake runs once.

Runs on the test's event loop: the loop that enters the fake owns all of it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any, Final

import aiohttp
import anyio
from aiohttp import web
from anyio.abc import TaskGroup

from callflow.testing._config import HOST

__all__ = ["Runtime"]

_WEBHOOK_TIMEOUT: Final = 15.0
_MAX_DELIVERIES: Final = 64
_NOT_RUNNING: Final = "FakeGraph is not running; use 'async with FakeGraph() as fake:'"


class Runtime:
    """The running fake's server, client session, delivery limit and task group."""

    def __init__(self) -> None:
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._session: aiohttp.ClientSession | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._closing: anyio.Event | None = None
        self._port: int | None = None
        self._started = False

    async def start(
        self,
        build_app: Callable[[], web.Application],
        *,
        servers: Sequence[AbstractAsyncContextManager[Any]],
        tasks: Sequence[Callable[[], Coroutine[Any, Any, None]]],
    ) -> None:
        """Enter ``servers``, serve the app ``build_app`` builds, open the client session and
        start ``tasks``; what started is stopped again when a step fails."""
        if self._stack is not None or self._started:
            raise RuntimeError(
                "FakeGraph runs once: it is running or has run; create a new FakeGraph"
            )
        self._started = True
        stack = AsyncExitStack()
        self._stack = stack
        try:
            for server in servers:
                await stack.enter_async_context(server)
            runner = web.AppRunner(build_app(), access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, HOST, 0).start()
            self._port = int(runner.addresses[0][1])
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256),
                timeout=aiohttp.ClientTimeout(total=_WEBHOOK_TIMEOUT),
            )
            stack.push_async_callback(session.close)
            self._session = session
            self._limiter = anyio.CapacityLimiter(_MAX_DELIVERIES)
            self._closing = anyio.Event()
            tg = anyio.create_task_group()
            await tg.__aenter__()
            self._tg = tg
            for task in tasks:
                tg.start_soon(task)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Cancel the background tasks, close the session, stop serving."""
        stack, self._stack = self._stack, None
        tg, self._tg = self._tg, None
        try:
            if self._closing is not None:
                self._closing.set()
            if tg is not None:
                # The enforcer and the deliveries never end by themselves: cancel them. The
                # body's own exception is not handed to the task group, so it propagates as is.
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
        finally:
            self._session = None
            self._port = None
            if stack is not None:
                with anyio.CancelScope(shield=True):
                    await stack.aclose()

    @property
    def serving(self) -> bool:
        """True while the fake listens."""
        return self._port is not None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``; RuntimeError when the fake is not running."""
        if self._port is None:
            raise RuntimeError(_NOT_RUNNING)
        return f"http://{HOST}:{self._port}"

    def check(self) -> None:
        """Raise RuntimeError unless the fake is running."""
        if self._tg is None:
            raise RuntimeError(_NOT_RUNNING)

    @property
    def session(self) -> aiohttp.ClientSession:
        """The client session notifications are POSTed with."""
        assert self._session is not None, "callers check that the fake runs"
        return self._session

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        """How many background deliveries may be in flight at once."""
        assert self._limiter is not None, "deliveries start only while the fake runs"
        return self._limiter

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        """Start ``fn(*args)`` in the task group; dropped once the fake is closing."""
        tg = self._tg
        if tg is None or (self._closing is not None and self._closing.is_set()):
            return
        tg.start_soon(fn, *args)

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds`` (a reply's latency), or less if the fake closes meanwhile."""
        if seconds > 0 and self._closing is not None:
            with anyio.move_on_after(seconds):
                await self._closing.wait()
