"""The one place where work crosses between a bot's two event loops.

A running bot has two loops in two threads:

- the **I/O loop** (:class:`IoThread`) owns the webhook server, inbound authentication,
  parsing, intake, the deadlines and every request to Graph; it runs no user code, so a
  handler that blocks or spins cannot delay the reading of the next call or the default
  decision of a call that is due;
- the **app loop** (the one that called ``Bot.serve``) runs handlers, observers, middleware
  and error hooks.

They meet only here. :class:`Inbox` hands plain function calls to a loop, in order, waking it
once per batch rather than once per call; :meth:`IoThread.run` runs a coroutine on the I/O
loop for a caller on another loop and gives back its result (cancelling the caller cancels
it). Nothing else reaches across: every object lives on one loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import importlib
import importlib.util
import itertools
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import anyio
import structlog

import callflow._tracing as _tracing

__all__ = ["Inbox", "IoThread", "SameLoop"]

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Inbox:
    """Calls handed to one event loop from any thread, run there in the order posted.

    ``post(fn, *args)`` never blocks and never waits for the loop: it queues the call and,
    unless a batch is already due, wakes the loop once (``call_soon_threadsafe``). The loop
    then runs everything queued in one go. Posted from another event loop, the wake-up waits
    for the end of that loop's current iteration, so that everything it posts meanwhile (the
    calls of every notification it read at once) crosses in one batch: each wake-up costs
    both threads a context switch and a hand-over of the interpreter lock. Calls posted from
    the loop's own thread are queued the same way, behind those already waiting, without
    writing to the loop's wake-up pipe.

    ``post_droppable(fn, *args)`` queues a call that may be given up: at most
    ``max_droppable`` of them wait at once, and past that the oldest waiting one is dropped
    (counted in :attr:`dropped`, reported to ``on_drop()``) so that a loop that is held up
    cannot make the inbox grow without end. They wait in a queue of their own (dropping the
    oldest is O(1), nothing is scanned) and every call carries its place in the posting
    order, so the loop still runs them all in the order posted. Calls posted with
    :meth:`post` are never dropped.
    """

    __slots__ = (
        "_context",
        "_droppable",
        "_items",
        "_loop",
        "_max_droppable",
        "_on_drop",
        "_scheduled",
        "_seq",
        "_thread",
        "dropped",
        "name",
        "wakeups",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        name: str,
        thread: int | None = None,
        *,
        max_droppable: int = 10_000,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        if max_droppable < 1:
            raise ValueError(f"max_droppable must be 1 or more, got {max_droppable}")
        self._loop = loop
        # (place in the posting order, fn, args): the place is what merges the two queues
        self._items: deque[tuple[int, Callable[..., Any], tuple[Any, ...]]] = deque()
        self._droppable: deque[tuple[int, Callable[..., Any], tuple[Any, ...]]] = deque()
        self._seq = itertools.count()  # next() on it is atomic: posters may be two threads
        self._max_droppable = max_droppable
        self._on_drop = on_drop
        self._scheduled = False
        self._thread = threading.get_ident() if thread is None else thread
        self.name = name
        self.wakeups = 0
        """Batches run so far (each one wake-up of the loop)."""
        self.dropped = 0
        """Calls posted with :meth:`post_droppable` that were dropped, never run."""
        # Batches run in a context of their own (entered by the owner's thread only), not in
        # the one of whoever posted first: a call's bound log fields must not leak into the
        # calls posted behind it.
        self._context = contextvars.Context()

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the inbox's loop, after everything posted before it."""
        self._items.append((next(self._seq), fn, args))
        # Read after the append: a drain that already cleared the flag will see this item,
        # or a new drain is scheduled for it (at worst one drain too many, never one lost).
        if not self._scheduled:
            self._schedule()

    def post_droppable(self, fn: Callable[..., Any], *args: Any) -> None:
        """Like :meth:`post`, but dropped (the oldest first) while ``max_droppable`` such
        calls are waiting already. Post these from one thread at a time."""
        waiting = self._droppable
        if len(waiting) >= self._max_droppable:
            try:
                waiting.popleft()  # the loop may take it first: then nothing is dropped
            except IndexError:
                pass
            else:
                self.dropped += 1
                if self._on_drop is not None:
                    self._on_drop()
        waiting.append((next(self._seq), fn, args))
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        self._scheduled = True
        try:
            if threading.get_ident() == self._thread:
                self._loop.call_soon(self._drain, context=self._context)
            elif (here := _running_loop()) is not None:
                # Not self._context: the owner's thread may be running a batch in it.
                here.call_soon(self._wake, context=contextvars.Context())
            else:
                self._loop.call_soon_threadsafe(self._drain, context=self._context)
        except RuntimeError:  # the loop is closed: nobody is left to run it
            self._clear()

    def _wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._drain, context=self._context)
        except RuntimeError:  # the loop is closed: nobody is left to run it
            self._clear()

    def _clear(self) -> None:
        self._items.clear()
        self._droppable.clear()

    def __len__(self) -> int:
        return len(self._items) + len(self._droppable)

    def _drain(self) -> None:
        self._scheduled = False
        self.wakeups += 1
        items, droppable = self._items, self._droppable
        # The oldest droppable call, taken out of its queue (so that a poster dropping the
        # oldest cannot take it meanwhile) until everything posted before it has run.
        held: tuple[int, Callable[..., Any], tuple[Any, ...]] | None = None
        while True:
            if held is None and droppable:
                try:
                    held = droppable.popleft()
                except IndexError:  # a poster dropping the oldest took the last one
                    held = None
            if items and (held is None or items[0][0] < held[0]):
                _, fn, args = items.popleft()
            elif held is not None:
                _, fn, args = held
                held = None
            else:
                return
            try:
                fn(*args)
            except Exception:
                log.exception("crossing.failed", inbox=self.name, fn=getattr(fn, "__name__", fn))


_running_loop: Final = asyncio.events._get_running_loop
"""The loop running in this thread, or None (no exception, unlike get_running_loop)."""


class SameLoop:
    """The I/O port of code that runs on the I/O loop already: ``run(fn)`` is ``await fn()``."""

    async def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()`` here."""
        return await fn()


def _new_loop() -> asyncio.AbstractEventLoop:
    if importlib.util.find_spec("uvloop") is not None:
        uvloop: Any = importlib.import_module("uvloop")
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


class IoThread:
    """A thread running the I/O event loop, for the duration of an ``async with`` block.

    Enter it from the app loop. Inside, :attr:`loop` is the I/O loop and :meth:`run` runs a
    coroutine function there; every such coroutine runs as a task of one task group that the
    thread's main coroutine owns, and leaving the block cancels what is still running, stops
    the loop and joins the thread. The loop is uvloop's when uvloop is installed
    (``callflow-graph[speed]``), else asyncio's, whatever the app loop is.
    """

    def __init__(self, name: str = "callflow-io", *, uvloop: bool | None = None) -> None:
        self.name = name
        self._uvloop = uvloop
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.ident = 0
        """The thread's id (``threading.get_ident()`` inside it), once started."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The I/O loop (only while the thread runs)."""
        if self._loop is None:
            raise RuntimeError("the I/O thread is not running: enter `async with IoThread()`")
        return self._loop

    def inbox(self, name: str) -> Inbox:
        """A new inbox into the I/O loop."""
        return Inbox(self.loop, name, self.ident)

    async def __aenter__(self) -> Self:
        """Start the thread and wait until its loop runs."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} is already running")
        self._ready.clear()
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()
        await anyio.to_thread.run_sync(self._ready.wait)
        if self._error is not None:  # pragma: no cover - a loop that cannot start
            raise self._error
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Cancel what still runs on the loop, stop it and join the thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(thread.join)
        self._thread = None

    def _main(self) -> None:
        self.ident = threading.get_ident()
        use_uvloop = self._uvloop
        factory = (
            _new_loop
            if use_uvloop is None
            else (_new_loop if use_uvloop else asyncio.new_event_loop)
        )
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(self._serve())
        except BaseException as exc:  # pragma: no cover - reported through __aenter__
            self._error = exc
        finally:
            self._loop = None
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._ready.set()
                await self._stop.wait()
                for task in asyncio.all_tasks():
                    if task is not asyncio.current_task():
                        task.cancel()
        finally:
            self._tg = None

    async def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` on the I/O loop and return its result here.

        Cancelling the caller cancels the coroutine on the I/O loop; its exception is raised
        here. Call it from another loop (the app loop).
        """
        cfut: concurrent.futures.Future[T] = concurrent.futures.Future()
        # While tracing is on, the caller's context crosses with the call: an operation's
        # span is a child of the flow's or handler's span that asked for it.
        context = contextvars.copy_context() if _tracing.active is not None else None
        self.loop.call_soon_threadsafe(self._start, fn, cfut, context)
        return await asyncio.wrap_future(cfut)

    @contextlib.asynccontextmanager
    async def enter(
        self, factory: Callable[[], contextlib.AbstractAsyncContextManager[T]]
    ) -> AsyncIterator[T]:
        """Enter ``factory()`` on the I/O loop for the duration of this block.

        The context manager is entered and left by one task on the I/O loop (so its cancel
        scopes and task groups stay in one task); its value is handed back here. Leaving the
        block lets that task exit it and waits for the exit to finish, even when this block
        is being cancelled.
        """
        value: concurrent.futures.Future[T] = concurrent.futures.Future()
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        release = asyncio.Event()  # set on the I/O loop only

        async def host() -> None:
            try:
                async with factory() as entered:
                    value.set_result(entered)
                    await release.wait()
            except BaseException as exc:
                if not value.done():
                    value.set_exception(exc)
                raise

        self.loop.call_soon_threadsafe(self._start, host, done)

        async def leave() -> None:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(release.set)
            with anyio.CancelScope(shield=True):
                await asyncio.wrap_future(done)

        try:
            entered = await asyncio.wrap_future(value)
        except BaseException:
            if not done.done():
                await leave()
            raise
        try:
            yield entered
        finally:
            await leave()

    def _start(
        self,
        fn: Callable[[], Awaitable[T]],
        cfut: concurrent.futures.Future[T],
        context: contextvars.Context | None = None,
    ) -> None:
        tg = self._tg
        if cfut.cancelled():
            return
        if tg is None:  # pragma: no cover - stopping
            cfut.cancel()
            return
        task = tg.create_task(_relay(fn, cfut), context=context)
        loop = self.loop

        def cancelled(done: concurrent.futures.Future[T]) -> None:
            if done.cancelled():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(task.cancel)

        cfut.add_done_callback(cancelled)


async def _relay(fn: Callable[[], Awaitable[T]], cfut: concurrent.futures.Future[T]) -> None:
    """Run ``fn()`` and copy its outcome into ``cfut``; never fails the task group."""
    try:
        result = await fn()
    except asyncio.CancelledError:
        cfut.cancel()
        raise
    except BaseException as exc:
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            cfut.set_exception(exc)
        if not isinstance(exc, Exception):
            raise
    else:
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            cfut.set_result(result)
