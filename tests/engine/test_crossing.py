"""The crossing between a bot's two loops, and the clocks deadlines read."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import pytest

from callflow.clock import MONOTONIC
from callflow.engine.crossing import Inbox, IoThread, SameLoop
from callflow.testing import ManualClock

pytestmark = pytest.mark.anyio


async def test_an_inbox_runs_posts_from_another_thread_in_order_on_its_loop() -> None:
    """Calls posted from another thread run on the inbox's loop, in the order posted, with
    one wake-up of the loop per batch rather than one per call."""
    loop = asyncio.get_running_loop()
    inbox = Inbox(loop, "test")
    seen: list[tuple[int, int]] = []
    done = anyio.Event()

    def record(n: int) -> None:
        seen.append((n, threading.get_ident()))
        if n == 999:
            done.set()

    def post_all() -> None:
        for n in range(1000):
            inbox.post(record, n)

    await anyio.to_thread.run_sync(post_all)
    with anyio.fail_after(5):
        await done.wait()
    assert [n for n, _ in seen] == list(range(1000))
    assert {thread for _, thread in seen} == {threading.get_ident()}
    assert inbox.wakeups < 1000  # batched: the loop was woken far fewer times than posts were made


async def test_an_inbox_keeps_running_after_a_failing_call() -> None:
    """A call that raises is logged; the calls queued behind it still run."""
    inbox = Inbox(asyncio.get_running_loop(), "test")
    seen: list[str] = []
    done = anyio.Event()

    def boom() -> None:
        raise RuntimeError("broken")

    inbox.post(boom)
    inbox.post(seen.append, "after")
    inbox.post(done.set)
    with anyio.fail_after(5):
        await done.wait()
    assert seen == ["after"]


async def test_an_inbox_drops_the_oldest_droppable_calls_and_keeps_the_order_of_the_rest() -> None:
    """Past ``max_droppable`` waiting droppable calls, the oldest of them is dropped (counted,
    reported); calls posted with ``post`` are never dropped, and what runs, runs in the order
    it was posted."""
    reported: list[int] = []
    inbox = Inbox(
        asyncio.get_running_loop(), "test", max_droppable=3, on_drop=lambda: reported.append(1)
    )
    seen: list[object] = []
    done = anyio.Event()
    inbox.post(seen.append, "a")
    for n in range(5):
        inbox.post_droppable(seen.append, n)  # 0 and 1 go
    inbox.post(seen.append, "b")
    inbox.post_droppable(seen.append, 5)  # 2 goes
    inbox.post(seen.append, "c")
    inbox.post(done.set)
    assert len(inbox) == 3 + 4
    with anyio.fail_after(5):
        await done.wait()
    assert seen == ["a", 3, 4, "b", 5, "c"]
    assert (inbox.dropped, len(reported), len(inbox)) == (3, 3, 0)
    with pytest.raises(ValueError, match="max_droppable must be 1 or more"):
        Inbox(asyncio.get_running_loop(), "test", max_droppable=0)


async def test_io_thread_runs_coroutines_on_its_own_loop_and_relays_results() -> None:
    """IoThread.run runs a coroutine in the I/O thread and hands back its value or error."""
    here = threading.get_ident()

    async def where() -> int:
        await asyncio.sleep(0)
        return threading.get_ident()

    async def fails() -> None:
        raise LookupError("nope")

    async with IoThread("test-io") as io:
        there = await io.run(where)
        assert there == io.ident != here
        with pytest.raises(LookupError, match="nope"):
            await io.run(fails)
        assert await io.run(where) == there  # a failure does not stop the loop


async def test_cancelling_the_caller_cancels_the_coroutine_on_the_io_loop() -> None:
    """A caller that gives up (a timeout) cancels its coroutine on the I/O loop: no task is
    left behind."""
    started, cancelled = threading.Event(), threading.Event()

    async def waits() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async with IoThread("test-io") as io:
        with anyio.move_on_after(0.05):
            await io.run(waits)
        assert started.is_set()
        assert await anyio.to_thread.run_sync(cancelled.wait, 5.0)


async def test_a_context_entered_on_the_io_loop_is_left_by_the_same_task() -> None:
    """IoThread.enter enters and leaves an async context manager in one I/O-loop task, even
    when the block around it is cancelled."""
    tasks: list[Any] = []

    class Tracked:
        async def __aenter__(self) -> str:
            tasks.append(asyncio.current_task())
            return "value"

        async def __aexit__(self, *exc: object) -> None:
            await asyncio.sleep(0)
            tasks.append(asyncio.current_task())

    async with IoThread("test-io") as io:
        with anyio.CancelScope() as scope:
            async with io.enter(Tracked) as value:
                assert value == "value"
                scope.cancel()
                await anyio.sleep_forever()
    assert len(tasks) == 2
    assert tasks[0] is tasks[1]


async def test_a_context_that_fails_to_enter_raises_in_the_caller() -> None:
    """An error while entering on the I/O loop surfaces where the block is entered."""

    class Broken:
        async def __aenter__(self) -> None:
            raise ConnectionError("no keys")

        async def __aexit__(self, *exc: object) -> None:  # pragma: no cover - never entered
            pass

    async with IoThread("test-io") as io:
        with pytest.raises(ConnectionError, match="no keys"):
            async with io.enter(Broken):
                pass  # pragma: no cover


async def test_same_loop_port_awaits_in_place() -> None:
    """The same-loop port just awaits the coroutine."""

    async def seven() -> int:
        return 7

    assert await SameLoop().run(seven) == 7


async def test_manual_clock_runs_timers_in_time_order_only_when_advanced() -> None:
    """A ManualClock fires nothing until advanced, then every due timer in time order, on
    the timer's loop; a cancelled timer does not fire."""
    clock = ManualClock(start=100.0)
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    done = anyio.Event()
    clock.call_at(loop, 102.0, lambda: fired.append("b"))
    clock.call_at(loop, 101.0, lambda: fired.append("a"))
    clock.call_at(loop, 103.0, lambda: fired.append("late")).cancel()
    clock.call_at(loop, 103.0, done.set)
    await anyio.lowlevel.checkpoint()
    assert fired == []
    clock.advance(2.0)
    assert clock.now() == 102.0
    clock.advance(1.0)
    with anyio.fail_after(5):
        await done.wait()
    assert fired == ["a", "b"]
    clock.call_at(loop, 50.0, lambda: fired.append("past"))  # already due: fires soon
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)
    await anyio.lowlevel.checkpoint()
    assert fired[-1] == "past"


async def test_the_real_clock_fires_a_timer_when_its_time_has_come() -> None:
    """The monotonic clock's timers run on the loop once the time has passed."""
    fired = anyio.Event()
    when = MONOTONIC.now() + 0.01
    MONOTONIC.call_at(asyncio.get_running_loop(), when, fired.set)
    with anyio.fail_after(5):
        await fired.wait()
    assert MONOTONIC.now() >= when - 0.002  # asyncio may round a timer up, never far down
