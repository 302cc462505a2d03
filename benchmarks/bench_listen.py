"""What ``call.listen()`` costs over ``call.record()`` + ``recording.download()``.

Runs in one process on one loop: FakeGraph (call control and recordings over HTTP on
127.0.0.1), a loopback webhook feeding the operation registry, FakeSpeech (recognition over
HTTP on 127.0.0.1), and the Call handle on a ``SameLoopPort``. In alternating rounds, on the
same established call, each iteration first queues the caller's words (``say_back``, so the
fake's recording ends at once and holds a 1 s WAV of them), then awaits either

- **record + download**: ``call.record()`` then ``recording.download()``, or
- **listen**: ``call.listen()`` (the same recording and download, then one recognition),

and reports p50/p99 latency in ms per side; the difference is what listening adds: the
recognition request (a 32 KB WAV POSTed to FakeSpeech, its JSON answer parsed) and the
checks around it. FakeSpeech answers at once: a real Speech resource adds its own time.

    .venv/bin/python -m benchmarks.bench_listen            # 4 rounds x 100 per side
    .venv/bin/python -m benchmarks.bench_listen --quick
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Mapping
from typing import Any

import anyio
import structlog
from aiohttp import web

from callflow import Answer
from callflow._parse import parse_notifications
from callflow.control.call import Call, Calls, SameLoopPort
from callflow.control.control import CallControl
from callflow.control.registry import OperationRegistry
from callflow.graph.client import GraphClient
from callflow.graph.tokens import StaticTokenProvider
from callflow.speech.config import STT_PATH, SpeechConfig
from callflow.speech.recognition import Recognizer
from callflow.testing import CALLBACK_URL, CallHandle, FakeGraph, FakeSpeech

__all__ = ["main", "measure"]


async def _record_download(call: Call) -> None:
    recording = await call.record(max_duration=10, max_silence_timeout=2, play_beep=False)
    await recording.download()


async def _listen(call: Call) -> None:
    heard = await call.listen()
    assert heard.understood, heard


async def measure(per_round: int, rounds: int) -> dict[str, list[float]]:
    """Latencies (seconds) of each side, ``rounds`` alternating rounds of ``per_round``."""
    registry = OperationRegistry()

    async def receive(request: web.Request) -> web.Response:
        registry.on_events(parse_notifications(await request.read()))
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hook = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    times: dict[str, list[float]] = {"record + download": [], "listen": []}
    try:
        async with FakeGraph() as fake, FakeSpeech() as speech:
            fake.route(CALLBACK_URL, hook)
            graph = GraphClient(
                tokens=StaticTokenProvider(fake.app_token()),
                base_url=fake.graph_url,
                callback_url=CALLBACK_URL,
            )

            async def headers() -> Mapping[str, str]:
                return {"Ocp-Apim-Subscription-Key": speech.key}

            config = SpeechConfig(
                tts_url=speech.url + "/tts", stt_url=speech.url + STT_PATH,
                voices_url=speech.url + "/voices", headers=headers,
            )  # fmt: skip
            async with graph, Recognizer(config) as recognizer:
                control = CallControl(graph, registry)
                control.recognizer = recognizer
                handle: CallHandle = await fake.place_call(hook)
                await graph.decide(handle.call_id, Answer(), tenant_id=handle.tenant_id)
                await handle.wait_delivery("established")
                call = Calls(control, SameLoopPort()).get(handle.call_id)
                sides = (("record + download", _record_download), ("listen", _listen))
                for round_ in range(rounds + 1):  # the first round warms up
                    for name, run in sides:
                        for _ in range(per_round):
                            await handle.say_back("book an appointment")
                            began = time.perf_counter()
                            await run(call)
                            if round_:
                                times[name].append(time.perf_counter() - began)
    finally:
        await runner.cleanup()
    return times


def render(times: dict[str, list[float]]) -> str:
    rows = ["| side | n | p50 ms | p99 ms |", "|---|---:|---:|---:|"]
    p50: dict[str, float] = {}
    for name, values in times.items():
        ordered = sorted(values)
        p50[name] = statistics.median(ordered)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        rows.append(f"| {name} | {len(ordered)} | {p50[name] * 1000:.2f} | {p99 * 1000:.2f} |")
    extra = p50["listen"] - p50["record + download"]
    rows.append(f"\nlisten() adds {extra * 1000:.2f} ms at p50 over record() + download()")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 20 per side")
    args = parser.parse_args(argv)
    per_round, rounds = (20, 1) if args.quick else (100, 4)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    report: Any = anyio.run(measure, per_round, rounds)
    print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
