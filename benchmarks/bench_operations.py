"""What one awaited call-control operation costs: callflow against hand-written aiohttp.

One operation is the whole exchange a bot awaits: the action POSTed to Graph
(``playPrompt``), Graph's 200 (operation running), Graph's result notification POSTed to the
bot's webhook, and the awaiting task resumed. Each side does exactly that, in the same run,
against the same Graph stub (a process of its own on 127.0.0.1), in alternating rounds:

* **callflow**: a real serving :class:`~callflow.Bot` answers one call with
  ``Answer(then=flow)``; the flow awaits ``call.play(prompt)`` N times in a row. Each
  operation includes the hop from the app loop to the I/O loop and back, the Graph client,
  the webhook and intake, the operation registry, the metrics and the ``call.operation``
  log line (JSON, written to /dev/null, as a worker logs at ``info``).
* **callflow, no hop**: the same operations on the same call, awaited on the I/O loop
  through a :class:`~callflow.control.call.SameLoopPort`: what the hop between the loops
  costs is the difference between these two rows.
* **baseline**: what a bot author writes by hand on one loop: a ``ClientSession`` POST, and
  an aiohttp webhook that resolves the future registered under the ``clientContext`` in a
  dict of futures.

Inbound JWT validation is off on both sides (it costs the same per notification whatever
receives it). Reported: latency per operation (p50, p99, in µs, measured by the awaiting
task), CPU per operation of the bot's process (all its threads; the stub's own process is
not counted) and the callflow / baseline ratios.

Run: ``.venv/bin/python -m benchmarks.bench_operations [--quick] [--json PATH]``
(``--ops``, ``--rounds`` and ``--warmup`` size it; ``--loop uvloop`` runs the app loop on
uvloop when it is installed, as the I/O loop then is).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from aiohttp import web
from anyio.abc import Process
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from callflow import Answer, Bot, Call, IncomingCall, MediaPrompt
from callflow._log import configure_logging
from callflow._runtime import tune_gc_for_worker
from callflow.bench import percentile
from callflow.control.call import SameLoopPort
from callflow.engine.crossing import IoThread
from callflow.graph.tokens import StaticTokenProvider
from callflow.settings import Settings
from callflow.testing import (
    call_state,
    call_terminated,
    envelope,
    incoming_call,
    operation_result,
)

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
APP_ID = "8e2d4c10-55aa-4f3b-b1c2-0d9e7f6a5b41"
TENANT_ID = "3f1c9e2a-7b44-4c1d-9a0e-5d2f8b6c1a90"
CALLBACK_URL = "https://bot.invalid/api/calls"
TOKEN = "bench-app-token"
PROMPT = MediaPrompt("https://cdn.example.com/ivr/menu.wav", "menu")
OP_TIMEOUT = 10.0
"""Seconds one operation may take on either side before the run fails."""
BUDGET = 120.0
"""Seconds the whole run may take (the full run takes well under a minute)."""

SIDES = {
    "callflow": "callflow (flow on the app loop)",
    "callflow_io": "callflow, awaited on the I/O loop (no hop)",
    "baseline": "baseline (hand-written aiohttp)",
}
FULL = {"ops": 2000, "rounds": 4, "warmup": 300}
QUICK = {"ops": 150, "rounds": 2, "warmup": 50}


# --- the Graph stub (its own process) --------------------------------------------------------


def incoming(call_id: str) -> dict[str, Any]:
    """The notification of a new p2p call ``call_id`` to the benchmark's bot."""
    return incoming_call(
        kind="p2p",
        call_id=call_id,
        tenant_id=TENANT_ID,
        bot_app_id=APP_ID,
        callback_uri=CALLBACK_URL,
    )


class GraphStub:
    """Just enough of Graph: answer, playPrompt (200 running, then the result notification),
    keepAlive and hang-up. ``POST /route`` tells it where a call's notifications go (those of
    a call with no route go to :attr:`webhook`)."""

    def __init__(self, tg: anyio.abc.TaskGroup, session: aiohttp.ClientSession) -> None:
        self._tg = tg
        self._session = session
        self._routes: dict[str, str] = {}
        self.webhook = ""
        """Where the notifications of a call with no route go."""
        self.undelivered: dict[str, int] = {}
        """Notifications the webhook did not accept, by its answer: the status, or the error
        (the type of the exception) when it did not answer."""
        self.app = web.Application()
        calls = "/v1.0/communications/calls/{call_id}"
        self.app.router.add_post("/route", self._route)
        self.app.router.add_post(calls + "/answer", self._answer)
        self.app.router.add_post(calls + "/playPrompt", self._play)
        self.app.router.add_post(calls + "/keepAlive", self._keep_alive)
        self.app.router.add_delete(calls, self._hang_up)

    def _notify(self, call_id: str, item: dict[str, Any]) -> None:
        self._tg.start_soon(self._post, self._routes.get(call_id, self.webhook), envelope(item))

    async def _post(self, url: str, body: dict[str, Any]) -> bool:
        """POST one notification; True when the webhook accepted it (2xx)."""
        try:
            async with self._session.post(url, json=body) as reply:
                await reply.read()
                if 200 <= reply.status < 300:
                    return True
                answer = str(reply.status)
        except aiohttp.ClientError as exc:  # the bot has stopped: Graph would retry, not we
            answer = type(exc).__name__
        self.undelivered[answer] = self.undelivered.get(answer, 0) + 1
        return False

    async def _route(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._routes[body["call_id"]] = body["webhook"]
        return web.Response(status=204)

    async def _answer(self, request: web.Request) -> web.Response:
        await request.read()
        call_id = request.match_info["call_id"]
        self._notify(call_id, call_state(call_id, "established", etag=2))
        return web.Response(status=202)

    async def _play(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        call_id = request.match_info["call_id"]
        context = body["clientContext"]
        op_id = str(uuid.uuid4())
        url = f"/communications/calls/{call_id}/operations/{op_id}"
        reply = web.json_response(
            {
                "@odata.type": "#microsoft.graph.playPromptOperation",
                "id": op_id,
                "status": "running",
                "clientContext": context,
            },
            headers={"Location": "https://graph.invalid/v1.0" + url},
        )
        await reply.prepare(request)
        await reply.write_eof()  # the 200 is out before the result is sent, as with Graph
        done = (200, 0, "Action completed successfully.")
        item = operation_result(
            call_id,
            "playPrompt",
            op_id,
            status="completed",
            client_context=context,
            result=done,
            completion_reason="completedSuccessfully",
        )
        self._notify(call_id, item)
        return reply

    async def _keep_alive(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _hang_up(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        self._notify(call_id, call_terminated(call_id, etag=3))
        return web.Response(status=204)


async def run_stub() -> None:
    """Serve the stub on a free port, print ``PORT <n>``, stop when stdin closes."""
    async with aiohttp.ClientSession() as session, anyio.create_task_group() as tg:
        stub = GraphStub(tg, session)
        runner = web.AppRunner(stub.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, HOST, 0).start()
            print(f"PORT {runner.addresses[0][1]}", flush=True)
            await anyio.to_thread.run_sync(sys.stdin.read)  # the parent closes it to stop us
        finally:
            await runner.cleanup()
            tg.cancel_scope.cancel()


@asynccontextmanager
async def stub_process() -> AsyncIterator[str]:
    """Start the stub in a process of its own; yield its base URL."""
    process: Process = await anyio.open_process(
        [sys.executable, "-m", "benchmarks.bench_operations", "--stub"],
        cwd=ROOT,
        stderr=None,
    )
    try:
        assert process.stdout is not None
        line = b""
        with anyio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive(1)
        yield f"http://{HOST}:{int(line.split()[1])}"
    finally:
        assert process.stdin is not None
        await process.stdin.aclose()
        with anyio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


# --- the two sides ---------------------------------------------------------------------------

Play = Callable[[], Awaitable[None]]


async def timed(play: Play, ops: int) -> tuple[list[float], float]:
    """Run ``play`` ``ops`` times in a row: each one's seconds, and the process CPU spent."""
    times: list[float] = []
    cpu = time.process_time()
    for _ in range(ops):
        began = time.perf_counter()
        await play()
        times.append(time.perf_counter() - began)
    return times, time.process_time() - cpu


class CallflowSide:
    """A serving Bot whose ``Answer(then=...)`` flow runs the rounds it is asked for."""

    def __init__(self) -> None:
        self.asks: MemoryObjectSendStream[int]
        self._asked: MemoryObjectReceiveStream[int]
        self.asks, self._asked = anyio.create_memory_object_stream[int](1)
        self._send: MemoryObjectSendStream[tuple[list[float], float]]
        self.results: MemoryObjectReceiveStream[tuple[list[float], float]]
        self._send, self.results = anyio.create_memory_object_stream[tuple[list[float], float]](1)
        self.ended = anyio.Event()
        self.error: BaseException | None = None
        self.call: Call | None = None
        self.bot = Bot()

        @self.bot.incoming_call
        async def answer(call: IncomingCall) -> Answer:
            return Answer(then=self.flow)

    async def flow(self, call: Call) -> None:
        """For each round asked: ``await call.play(PROMPT)`` that many times; then hang up."""

        async def play() -> None:
            await call.play(PROMPT, timeout=OP_TIMEOUT)

        self.call = call
        try:
            async with self._asked, self._send:
                async for ops in self._asked:
                    await self._send.send(await timed(play, ops))
            await call.hang_up()
        except Exception as exc:
            self.error = exc  # the round waiting for results sees the stream end
            raise
        finally:
            self.ended.set()

    async def round(self, ops: int) -> tuple[list[float], float]:
        """Have the flow run ``ops`` operations; their times and the process CPU spent."""
        await self.asks.send(ops)
        try:
            return await self.results.receive()
        except anyio.EndOfStream:
            raise RuntimeError(f"the flow ended early: {self.error!r}") from self.error

    async def io_round(self, io: IoThread, ops: int) -> tuple[list[float], float]:
        """The same operations on the same call, awaited on the I/O loop itself: all of
        callflow but the hop between the loops."""
        call = self.call
        assert call is not None, "run a flow round first"
        direct = Call._open(call.call_id, call._control, SameLoopPort(), call.tenant_id)

        async def play() -> None:
            await direct.play(PROMPT, timeout=OP_TIMEOUT)

        return await io.run(lambda: timed(play, ops))


class Baseline:
    """The exchange by hand: a ClientSession POST, an aiohttp webhook, a dict of futures."""

    def __init__(self, graph_url: str, session: aiohttp.ClientSession, call_id: str) -> None:
        self._url = f"{graph_url}/v1.0/communications/calls/{call_id}/playPrompt"
        self._session = session
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        self.app = web.Application()
        self.app.router.add_post("/hook", self._webhook)

    async def _webhook(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        for item in body.get("value", ()):
            data = item.get("resourceData")
            context = data.get("clientContext") if isinstance(data, dict) else None
            future = self._pending.pop(context, None) if isinstance(context, str) else None
            if future is not None and not future.done():
                future.set_result(data)
        return web.Response(status=202)

    async def play(self) -> None:
        context = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self._pending[context] = future  # before the POST: the result may beat the reply
        body = {
            "clientContext": context,
            "prompts": [
                {"@odata.type": "#microsoft.graph.mediaPrompt", "mediaInfo": PROMPT.to_graph()}
            ],
        }
        try:
            async with asyncio.timeout(OP_TIMEOUT):
                async with self._session.post(
                    self._url, data=json.dumps(body), headers=self._headers
                ) as reply:
                    reply.raise_for_status()
                    operation = await reply.json()
                result = operation if operation["status"] != "running" else await future
        finally:
            self._pending.pop(context, None)
        if result.get("completionReason") != "completedSuccessfully":
            raise RuntimeError(f"the prompt was not played: {result}")


# --- the run ---------------------------------------------------------------------------------


def summary(times: list[float], cpu: float) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "ops": len(ordered),
        "p50_us": percentile(ordered, 50) * 1e6,
        "p99_us": percentile(ordered, 99) * 1e6,
        "mean_us": sum(ordered) / len(ordered) * 1e6,
        "cpu_per_op_us": cpu / len(ordered) * 1e6,
    }


async def measure(ops: int, rounds: int, warmup: int) -> dict[str, Any]:
    """Run both sides against one stub, ``rounds`` alternating rounds of ``ops`` each."""
    started = time.monotonic()
    figures: dict[str, tuple[list[float], float]] = {name: ([], 0.0) for name in SIDES}
    async with (
        stub_process() as graph_url,
        aiohttp.ClientSession() as http,
    ):

        async def route(call_id: str, webhook: str) -> None:
            async with http.post(
                graph_url + "/route", json={"call_id": call_id, "webhook": webhook}
            ):
                pass

        side = CallflowSide()
        side.bot.configure(
            Settings(
                app_id=APP_ID,
                tenant_id=TENANT_ID,
                callback_url=CALLBACK_URL,
                graph_url=graph_url + "/v1.0",
                host=HOST,
                port=0,
                metrics_port=None,  # not read here; a fixed port could be taken
                inbound_auth=False,
            )
        )
        bot_call, base_call = str(uuid.uuid4()), str(uuid.uuid4())
        runner = None
        async with side.bot.serve(tokens=StaticTokenProvider(TOKEN)) as running:
            try:
                baseline = Baseline(graph_url, http, base_call)
                runner = web.AppRunner(baseline.app, access_log=None)
                await runner.setup()
                await web.TCPSite(runner, HOST, 0).start()
                await route(base_call, f"http://{HOST}:{runner.addresses[0][1]}/hook")
                await route(bot_call, running.webhook_url)
                async with http.post(running.webhook_url, json=incoming(bot_call)) as reply:
                    assert reply.status == 202, reply.status
                plays: dict[str, Callable[[int], Awaitable[tuple[list[float], float]]]] = {
                    "callflow": side.round,
                    "callflow_io": lambda n: side.io_round(running.io, n),
                    "baseline": lambda n: timed(baseline.play, n),
                }
                for run in plays.values():
                    await run(warmup)
                for index in range(rounds):
                    order = list(plays) if index % 2 == 0 else list(reversed(plays))
                    for name in order:
                        times, cpu = await plays[name](ops)
                        kept, spent = figures[name]
                        figures[name] = (kept + times, spent + cpu)
                await side.asks.aclose()  # the flow hangs up and ends
                with anyio.fail_after(OP_TIMEOUT):
                    await side.ended.wait()
            finally:
                if runner is not None:
                    await runner.cleanup()
    results = {name: summary(*value) for name, value in figures.items()}
    base = results["baseline"]
    return {
        "ops_per_round": ops,
        "rounds": rounds,
        "warmup": warmup,
        "seconds": round(time.monotonic() - started, 2),
        "python": platform.python_version(),
        "io_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "app_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "cpus": os.cpu_count(),
        "results": results,
        "ratios": {
            name: {
                "p50": row["p50_us"] / base["p50_us"],
                "p99": row["p99_us"] / base["p99_us"],
                "cpu_per_op": row["cpu_per_op_us"] / base["cpu_per_op_us"],
            }
            for name, row in results.items()
            if name != "baseline"
        },
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        f"{report['rounds']} rounds x {report['ops_per_round']} operations per side "
        f"(after {report['warmup']} warm-up), {report['seconds']} s; Python "
        f"{report['python']}, app loop {report['app_loop']}, I/O loop {report['io_loop']}",
        "",
        "| side | p50 µs | p99 µs | mean µs | CPU µs/op | p50 | p99 | CPU/op |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in report["results"].items():
        ratio = report["ratios"].get(name)
        versus = "| | | |"
        if ratio is not None:
            versus = f"| {ratio['p50']:.2f}x | {ratio['p99']:.2f}x | {ratio['cpu_per_op']:.2f}x |"
        lines.append(
            f"| {SIDES[name]} | {row['p50_us']:.0f} | {row['p99_us']:.0f} "
            f"| {row['mean_us']:.0f} | {row['cpu_per_op_us']:.0f} {versus}"
        )
    lines += ["", "The last three columns are ratios to the baseline."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for smoke tests")
    parser.add_argument("--ops", type=int, help="operations per round and side")
    parser.add_argument("--rounds", type=int, help="alternating rounds per side")
    parser.add_argument("--warmup", type=int, help="operations per side before measuring")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--stub", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stub:
        anyio.run(run_stub)
        return 0
    size = QUICK if args.quick else FULL
    ops = args.ops or size["ops"]
    rounds = args.rounds or size["rounds"]
    warmup = size["warmup"] if args.warmup is None else args.warmup
    with open(os.devnull, "w") as devnull:
        configure_logging(fmt="json", level="info", stream=devnull)
        tune_gc_for_worker()

        async def bounded() -> dict[str, Any]:
            with anyio.fail_after(BUDGET):
                return await measure(ops, rounds, warmup)

        report = anyio.run(bounded, backend_options={"use_uvloop": args.loop == "uvloop"})
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
