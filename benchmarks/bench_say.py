"""What a spoken prompt costs: ``call.say()`` of a cached phrase and a first render, against
a plain ``call.play()`` of a WAV, all against FakeGraph and FakeSpeech on loopback.

A real serving :class:`~callflow.Bot` answers one call; its flow awaits, in alternating
rounds, ``call.play(MediaPrompt(".../menu.wav"))`` (FakeGraph judges the CDN URL by its
name, fetching nothing), ``call.say(PHRASE)`` (rendered once, then from the worker's cache;
FakeGraph fetches the WAV from the worker's media path on every play, as Graph does without
a cache) and ``call.say(f"... {n}")`` (a new phrase each time: a request to Speech first).
FakeGraph's operation duration is 0 and FakeSpeech answers at once: what is measured is the
framework's work, the loopback HTTP and the fakes' own work, not Graph's or Speech's.
Reported: latency per operation (p50, p99, in µs) as the flow sees it.

Run: ``.venv/bin/python -m benchmarks.bench_say [--ops N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

import anyio

from callflow import Answer, Bot, Call, IncomingCall, MediaPrompt
from callflow.bench import percentile
from callflow.testing import FakeGraph, FakeSpeech

PHRASE = "Your appointment is on Tuesday at 10"
MENU = MediaPrompt("https://cdn.example.com/menu.wav")


async def run(ops: int, rounds: int) -> dict[str, list[float]]:
    """Time ``ops`` operations of each kind in ``rounds`` alternating rounds."""
    samples: dict[str, list[float]] = {"play": [], "say (cached)": [], "say (first render)": []}
    done = anyio.Event()
    counter = iter(range(10**9))

    async def timed(name: str, op: Callable[[], Awaitable[None]]) -> None:
        start = time.perf_counter()
        await op()
        samples[name].append((time.perf_counter() - start) * 1e6)

    async def flow(call: Call) -> None:
        await call.say(PHRASE)  # warm: rendered and cached
        for _ in range(20):
            await call.play(MENU)
        for name in samples:
            samples[name].clear()
        for _ in range(rounds):
            for _ in range(ops):
                await timed("play", lambda: call.play(MENU))
            for _ in range(ops):
                await timed("say (cached)", lambda: call.say(PHRASE))
            for _ in range(ops):
                n = next(counter)
                await timed("say (first render)", lambda n=n: call.say(f"Your number is {n}"))
        done.set()

    bot = Bot()

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer(then=flow)

    async with FakeGraph() as fake, FakeSpeech() as speech:
        fake.operation_duration = 0.0
        async with fake.serve(bot, log_level="warning", **speech.overrides()) as running:
            await fake.place_call(running.webhook_url)
            with anyio.fail_after(600):
                await done.wait()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    samples = anyio.run(run, args.ops, args.rounds)
    base = percentile(sorted(samples["play"]), 50)
    print("| operation | n | p50 µs | p99 µs | p50 vs play |")
    print("|---|---:|---:|---:|---:|")
    for name, values in samples.items():
        ordered = sorted(values)
        p50, p99 = percentile(ordered, 50), percentile(ordered, 99)
        print(f"| {name} | {len(values)} | {p50:,.0f} | {p99:,.0f} | {p50 / base:.2f}x |")


if __name__ == "__main__":
    main()
