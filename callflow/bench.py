"""``callflow bench module:attr``: the decision latency of your own bot, against FakeGraph.

Serves the bot against the embedded :class:`~callflow.testing.FakeGraph` (real msal over
TLS, signed notifications, inbound JWT validation on), places ``calls`` calls of one kind,
``concurrency`` at a time (each worker places its next call once the previous one is
decided), and reports the latency from *notification sent* to *decision received by Graph*
(p50, p90, p99, max), and which handler decided the measured calls (``default`` when none
did and the default decision went). A few warm-up calls come first and are not counted.
Everything runs in one process on loopback, so the figures include the fake's own work:
compare bots and versions with it, and use ``benchmarks/`` for figures against a bare
webhook. Runs on the caller's loop; the bot's I/O loop is a thread of its own.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, cast

import anyio
import attrs

from callflow.errors import CallflowError

if TYPE_CHECKING:
    from callflow.bot import Bot
    from callflow.engine.deadline import DecisionSlot
    from callflow.testing import FakeGraph
    from callflow.testing._payloads import CallKind

__all__ = ["BenchReport", "bench_bot", "percentile"]

DEFAULT_CALLS: Final = 200
DEFAULT_CONCURRENCY: Final = 4
DEFAULT_WARMUP: Final = 5


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted values, interpolated linearly; nan if empty."""
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@attrs.frozen
class BenchReport:
    """What one ``callflow bench`` run measured.

    ``latencies_ms`` are sorted; ``decisions`` counts the accepted decisions by operation
    (``answer``, ``reject``, ``redirect``); ``undecided`` is how many calls got no accepted
    decision before the platform timeout; ``seconds`` is the length of the measured part;
    ``decided_by`` counts the accepted decisions by who decided and what:
    ``(handler, operation, count)``, the handler ``default`` when no handler decided.
    """

    target: str
    kind: str
    calls: int
    concurrency: int
    latencies_ms: tuple[float, ...]
    decisions: tuple[tuple[str, int], ...]
    undecided: int
    seconds: float
    decided_by: tuple[tuple[str, str, int], ...] = ()

    @property
    def p50(self) -> float:
        """Median decision latency, ms."""
        return percentile(self.latencies_ms, 50)

    @property
    def p90(self) -> float:
        """90th percentile decision latency, ms."""
        return percentile(self.latencies_ms, 90)

    @property
    def p99(self) -> float:
        """99th percentile decision latency, ms."""
        return percentile(self.latencies_ms, 99)

    @property
    def max(self) -> float:
        """Slowest decision, ms (nan when nothing was decided)."""
        return self.latencies_ms[-1] if self.latencies_ms else math.nan

    def render(self) -> str:
        """The lines ``callflow bench`` prints."""
        decided = ", ".join(f"{op} {count}" for op, count in self.decisions) or "none"
        rate = len(self.latencies_ms) / self.seconds if self.seconds > 0 else math.nan
        lines = [
            f"callflow bench {self.target}: {self.calls} {self.kind} calls, "
            f"{self.concurrency} at a time, against the embedded FakeGraph",
            f"decision latency (notification sent -> decision at Graph): "
            f"p50 {self.p50:.2f} ms  p90 {self.p90:.2f} ms  p99 {self.p99:.2f} ms  "
            f"max {self.max:.2f} ms",
            f"decisions: {decided}; undecided: {self.undecided}; "
            f"{rate:.0f} decisions/s over {self.seconds:.2f} s",
        ]
        if self.decided_by:
            who = ", ".join(
                f"{'the default decision' if by == 'default' else by} ({op}) {count}"
                for by, op, count in self.decided_by
            )
            lines.append(f"decided by: {who}")
        return "\n".join(lines)


async def bench_bot(
    bot: Bot,
    *,
    target: str = "bot",
    calls: int = DEFAULT_CALLS,
    concurrency: int = DEFAULT_CONCURRENCY,
    kind: str = "p2p",
    warmup: int = DEFAULT_WARMUP,
    fake: FakeGraph | None = None,
) -> BenchReport:
    """Serve ``bot`` against a FakeGraph, place the calls, and measure their decisions.

    ``fake`` is a running FakeGraph to use (to inject faults or change its timeouts); by
    default a new one without follow-up notifications is started and stopped. Raises
    :class:`~callflow.errors.CallflowError` for arguments out of range. A bot serves once:
    pass a bot that has not served yet.
    """
    from callflow.testing import KINDS, FakeGraph

    problems = []
    if calls < 1:
        problems.append(f"calls={calls}: expected at least 1")
    if concurrency < 1:
        problems.append(f"concurrency={concurrency}: expected at least 1")
    if warmup < 0:
        problems.append(f"warmup={warmup}: expected 0 or more")
    if kind not in KINDS:
        problems.append(f"kind={kind!r}: expected one of {', '.join(KINDS)}")
    if problems:
        raise CallflowError("callflow bench: " + "; ".join(problems))

    latencies: list[float] = []
    ops: dict[str, int] = {}
    measured: dict[str, str] = {}  # call id -> operation accepted by the fake
    deciders: dict[str, str] = {}  # call id -> who decided (filled on the bot's I/O loop)
    undecided = 0

    def on_decided(slot: DecisionSlot, error: BaseException | None) -> None:
        if error is None:
            deciders[slot.call_id] = slot.decided_by or "?"

    async with contextlib.AsyncExitStack() as stack:
        if fake is None:
            fake = await stack.enter_async_context(FakeGraph(follow_up=False))
        graph = fake
        bot.configure(graph.settings())  # a Bot that has served already says so here
        running = await stack.enter_async_context(bot.serve(on_decided=on_decided))
        wait = graph.platform_timeout + 1.0

        async def one(record: bool) -> None:
            nonlocal undecided
            call = await graph.place_call(running.webhook_url, kind=cast("CallKind", kind))
            try:
                decision = await call.decision(timeout=wait)
            except TimeoutError:
                if record:
                    undecided += 1
                return
            if record:
                latencies.append((decision.at - call.placed_at) * 1000.0)
                ops[decision.op] = ops.get(decision.op, 0) + 1
                measured[call.call_id] = decision.op

        for _ in range(warmup):
            await one(False)
        remaining = calls

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await one(True)

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(min(concurrency, calls)):
                tg.start_soon(worker)
        seconds = time.monotonic() - started
    # The bot has stopped: every decision it sent has been reported to on_decided.
    by: dict[tuple[str, str], int] = {}
    for call_id, op in measured.items():
        key = (deciders.get(call_id, "?"), op)
        by[key] = by.get(key, 0) + 1
    return BenchReport(
        target=target,
        kind=kind,
        calls=calls,
        concurrency=concurrency,
        latencies_ms=tuple(sorted(latencies)),
        decisions=tuple(sorted(ops.items())),
        undecided=undecided,
        seconds=seconds,
        decided_by=tuple((who, op, count) for (who, op), count in sorted(by.items())),
    )
