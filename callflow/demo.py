"""``callflow demo``: the front-desk example bot against the built-in fake Graph.

Starts :class:`~callflow.testing.FakeGraph` in-process (TLS token endpoint, signed
notifications, call control on loopback), serves ``examples/front_desk.py`` (the copy an
installed wheel carries, else a checkout's) against it with inbound authentication on, plays
scripted calls of every shape, and prints what the bot decided, who decided, and how long it
took. Needs no credentials and no network beyond loopback. Runs on the caller's loop (the
bot's I/O loop is a thread of its own).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import attrs

from callflow.bot import Bot
from callflow.engine.deadline import DecisionSlot
from callflow.errors import CallflowError
from callflow.events import IncomingCall
from callflow.routing import Router

if TYPE_CHECKING:
    from callflow.testing._payloads import CallKind

__all__ = ["SCRIPT", "Scene", "run_demo"]

_HERE = Path(__file__).resolve().parent
EXAMPLES = (_HERE / "_examples" / "front_desk.py", _HERE.parent / "examples" / "front_desk.py")
"""Where the demo's bot is: the copy an installed wheel carries, else a checkout's example."""
DANA = "6d5c4b3a-1111-4222-8333-944455556666"
RAVI = "7e6d5c4b-2222-4333-8444-a55566667777"
STRANGER = "0a0a0a0a-3333-4333-8333-000000000333"
STUCK = "0b0b0b0b-4444-4444-8444-000000000444"
OTHER_TENANT = "99999999-0000-4000-8000-000000000999"


@attrs.frozen
class Scene:
    """One scripted call of the demo."""

    label: str
    kind: CallKind
    caller: dict[str, Any] | None = None
    duplicate: int = 0


SCRIPT: tuple[Scene, ...] = (
    Scene("Dana (allow-listed)", "p2p", {"kind": "user", "id": DANA, "display_name": "Dana"}),
    Scene("a stranger", "p2p", {"kind": "user", "id": STRANGER, "display_name": "Sam"}),
    Scene(
        "another tenant",
        "p2p",
        {"kind": "user", "id": STRANGER, "display_name": "Lee", "tenant_id": OTHER_TENANT},
    ),
    Scene("phone caller", "phone"),
    Scene("Ravi's meeting", "group_meeting", {"kind": "user", "id": RAVI, "display_name": "Ravi"}),
    Scene("channel meeting", "channel_meeting"),
    Scene("meeting by join id", "joinid_meeting"),
    Scene("compliance recording", "policy_recording"),
    Scene("encrypted caller", "encrypted"),
    Scene("slow directory", "p2p", {"kind": "user", "id": STUCK, "display_name": "Kim"}),
    Scene(
        "Dana, delivered 3 times", "p2p", {"kind": "user", "id": DANA, "display_name": "Dana"}, 2
    ),
)


def load_front_desk() -> Bot:
    """Import a fresh copy of examples/front_desk.py and return its bot."""
    example = next((path for path in EXAMPLES if path.is_file()), None)
    if example is None:
        raise CallflowError(f"the demo needs {EXAMPLES[-1]} (run it from a callflow checkout)")
    spec = importlib.util.spec_from_file_location("callflow_demo_front_desk", example)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bot = module.bot
    assert isinstance(bot, Bot)
    return bot


def stuck_router() -> Router:
    """A handler that never finishes for one caller, so the deadline decides that call."""
    router = Router("slow-directory")

    @router.incoming_call(priority=100, where=lambda call: call.caller.id == STUCK)
    async def slow_directory(call: IncomingCall) -> None:
        await anyio.sleep_forever()

    return router


async def run_demo(calls_per_kind: int = 1, out: TextIO | None = None) -> int:
    """Play the script; print progress and a table; 0 when every call got one decision."""
    from callflow._log import configure_logging
    from callflow.testing import FakeGraph

    stream = sys.stdout if out is None else out
    # No logger caching: the demo may run inside a program that configures logging again.
    configure_logging(fmt="console", level="error", stream=sys.stderr, cache=False)
    bot = load_front_desk()
    bot.include_router(stuck_router())
    decided: dict[str, tuple[str, float]] = {}
    reported: dict[str, anyio.Event] = {}
    loop = asyncio.get_running_loop()

    def on_decided(slot: DecisionSlot, error: BaseException | None) -> None:
        # Runs on the bot's I/O loop, in its own thread: hand over to this loop.
        decided[slot.call_id] = (slot.decided_by or "?", time.monotonic() - slot.received)
        loop.call_soon_threadsafe(lambda: reported.setdefault(slot.call_id, anyio.Event()).set())

    scenes = [scene for scene in SCRIPT for _ in range(calls_per_kind)]
    print(f"callflow demo: {len(scenes)} calls against the built-in fake Graph", file=stream)
    started = time.monotonic()
    async with FakeGraph(platform_timeout=4.0, recording_timeout=4.0) as fake:
        settings = fake.settings(safety_margin=1.5)
        bot.configure(settings)
        async with bot.serve(on_decided=on_decided) as running:
            print(
                f"  bot ready on {running.webhook_url} (token and keys fetched, auth on)",
                file=stream,
            )
            rows: list[tuple[str, str, str, str, str]] = []
            failures = 0

            async def play(index: int, scene: Scene) -> None:
                nonlocal failures
                handle = await fake.place_call(
                    running.webhook_url,
                    kind=scene.kind,
                    caller=scene.caller,
                    duplicate=scene.duplicate,
                )
                request = await handle.decision(timeout=10.0)
                with anyio.fail_after(10):
                    await reported.setdefault(handle.call_id, anyio.Event()).wait()
                decisions = handle.decisions
                if len(decisions) != 1:
                    failures += 1
                by, latency = decided.get(handle.call_id, ("?", float("nan")))
                body = request.body if isinstance(request.body, dict) else {}
                what = request.op + (f" ({body['reason']})" if "reason" in body else "")
                rows.append(
                    (f"{index:>2}", scene.label, scene.kind, what, f"{by}|{latency * 1e3:.1f}")
                )
                print(
                    f"  [{len(rows):>2}/{len(scenes)}] {scene.label:<24} -> {what:<18} by {by}",
                    file=stream,
                )

            async with anyio.create_task_group() as tg:
                for index, scene in enumerate(scenes, 1):
                    tg.start_soon(play, index, scene)
            duplicates = running.engine.stats.duplicates
    elapsed = time.monotonic() - started
    _print_table(sorted(rows), stream)
    print(
        f"{len(rows)} calls, {len(rows) - failures} decided exactly once, "
        f"{duplicates} duplicate deliveries dropped, {elapsed:.1f} s in all",
        file=stream,
    )
    return 0 if failures == 0 and len(rows) == len(scenes) else 1


def _print_table(rows: list[tuple[str, str, str, str, str]], stream: TextIO) -> None:
    header = ("#", "caller", "kind", "decision", "decided by", "latency")
    table = [header]
    for index, caller, kind, decision, by_latency in rows:
        by, latency = by_latency.split("|")
        table.append((index, caller, kind, decision, by, f"{latency} ms"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print(file=stream)
    for n, row in enumerate(table):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip(), file=stream)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=stream)
    print(file=stream)
