"""Soak: 100,000 calls with operations through one worker; its costs must stay flat.

Three processes on 127.0.0.1:

* **the worker**: a real serving :class:`~callflow.Bot` (settings, collector tuning and a
  JSON log at ``info`` as ``callflow run`` sets them up; the log goes to /dev/null). Its
  handler answers every call with ``Answer(then=flow)``; the flow plays a prompt
  (``await call.play(...)``), collects one key (``await call.collect_digits(1)``, which
  subscribes the call to tones first) and hangs up. Inbound JWT validation is off (it costs
  the same per notification whatever the run's length).
* **Graph and the callers** (:class:`SoakGraph`, the per-operation benchmark's Graph stub
  with tones added): it answers the worker's requests (answer 202, playPrompt 200 running,
  subscribeToTone 200 completed, keepAlive 200, hang-up 204; reject 202, for a call the
  worker sheds) and POSTs back what Graph would (established; the prompt's result; the
  caller's key press, ``1``; terminated).
  Its load driver places the calls (incoming-call notifications), at most ``--concurrency``
  of them in flight (placed and not yet hung up): by default a new call as soon as one ends,
  so that the worker runs saturated throughout (see :data:`RATE`); ``--rate`` paces them.
* **this process**, which starts the other two, prints each tenth as it comes and judges.

Five notifications reach the worker per call. Every tenth of the run (every 10,000 calls of
100,000) the worker prints one JSON line on its stdout: the I/O loop's own CPU time (the
``callflow-io`` thread's clock) divided by the notifications received in that tenth, the
same for the app loop's thread, its RSS, the calls completed, and how many per-call
records it holds (call control's registry, the book of calls live and recently ended, the
keeper's held calls and keepAlive schedule, intake's staleness and dedupe tables).
The stub adds each tenth's call duration (incoming call sent -> hang-up received, p50/p99).

A shared machine's cores do not run at one speed all day: throughout the run a thread of the
worker times a fixed piece of reference work every 20 ms (parsing one incoming-call
notification, under the same load as the loops), and each tenth gives the I/O loop's time per
notification against that tenth's reference time too (``I/O / ref``): a figure a slower or
faster machine leaves alone.

The verdict is **flat** when the last tenth's I/O-loop time per notification and RSS are
each within 10 % of the second tenth's (the first is the warm-up).

Run: ``.venv/bin/python -m benchmarks.bench_soak [--calls N] [--quick] [--json PATH]``
(``make bench-soak``; 100,000 calls by default, ``--quick`` 20,000; ``--rate`` and
``--concurrency`` set the load). Figures: ``benchmarks/SOAK.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp
import anyio
from aiohttp import web

from benchmarks._common import (
    APP_ID,
    CALLBACK_URL,
    GRAPH_PATH,
    TENANT_ID,
    announce,
    call_id,
    cpu_seconds,
    have_uvloop,
    machine_busy_seconds,
    percentile,
    rss_bytes,
    run_loop,
    serve_app,
)
from benchmarks.bench_operations import HOST, PROMPT, TOKEN, GraphStub, incoming
from callflow import Answer, Bot, Call, IncomingCall
from callflow._log import configure_logging
from callflow._runtime import tune_worker, use_uvloop
from callflow.engine.deadline import DecisionSlot
from callflow.graph.tokens import StaticTokenProvider
from callflow.settings import Settings
from callflow.testing import call_terminated, tone
from callflow.testing._payloads import operation_resource

CALLS: Final = 100_000
QUICK_CALLS: Final = 20_000
RATE: Final = 0.0
"""Calls placed per second at most; 0: as fast as calls end, ``CONCURRENCY`` in flight.

Unpaced by default, so that the worker runs saturated from the first call to the last: a
paced run slips between paced (the worker idles between calls) and saturated (it cannot
keep up) as the machine's other load varies, and the I/O loop's CPU time per notification
differs by about a quarter between the two (a saturated loop handles several events per
wake-up), which would be read as a change over the run."""
CONCURRENCY: Final = 100
"""Calls in flight at most (placed and not yet ended): enough to keep the worker saturated,
few enough that its I/O loop does not fall so far behind that it sheds new calls (it
decides them with the default when it runs more than ``SHED_LAG`` late)."""
TOLERANCE: Final = 0.10
"""How far the last tenth may be from the second and still be flat."""
OP_TIMEOUT: Final = 30.0
"""Seconds one operation of a flow may take before the call counts as failed."""
STALL: Final = 60.0
"""Seconds without a call ending before the run is given up."""
RESENDS: Final = 5
"""Times the stub sends again, a second later, a notification the worker did not accept (as
Graph does after a 503 with ``Retry-After: 1``: a worker whose I/O loop ran far behind, the
machine being busy, refuses new calls so)."""
STATUS_TIMEOUT: Final = 10.0
"""Seconds the stub may take to say how far it got (it is busy)."""
NOTIFICATIONS_PER_CALL: Final = 5
"""Incoming call, established, the prompt's result, the key press, terminated."""
ROW_PREFIX: Final = "TENTH "
"""The worker's stdout lines that carry a tenth's figures."""
RECORDS: Final = (
    "registry",
    "book_live",
    "book_ended",
    "keeper_held",
    "keeper_schedule",
    "intake_tracks",
    "intake_recent",
)
"""The per-call tables the worker reports the size of (see :meth:`Probe.records`)."""


# --- Graph and the callers (a process of their own) ------------------------------------------


class SoakGraph(GraphStub):
    """The Graph stub plus ``subscribeToTone`` (completed at once; the caller then presses
    ``1``), ``reject`` (a call the worker shed: it ends) and a load driver: ``POST
    /soak/start`` places the calls, ``GET /soak/status`` says how far it got, ``GET
    /soak/tenths?size=N`` gives each tenth's call durations (of the calls answered)."""

    def __init__(self, tg: anyio.abc.TaskGroup, session: aiohttp.ClientSession) -> None:
        super().__init__(tg, session)
        calls = GRAPH_PATH + "/communications/calls/{call_id}"
        self.app.router.add_post(calls + "/subscribeToTone", self._subscribe)
        self.app.router.add_post(calls + "/reject", self._reject)
        self.app.router.add_post("/soak/start", self._start)
        self.app.router.add_get("/soak/status", self._status)
        self.app.router.add_get("/soak/tenths", self._tenths)
        self.placed = 0
        self.ended = 0
        self.rejected = 0
        self.lost = 0
        self.done = False
        self.seconds: list[float] = []
        """Each call's duration (incoming call sent -> hang-up received), by call index."""
        self._flying: dict[str, tuple[int, float]] = {}
        self._slots = anyio.Semaphore(1)

    async def _subscribe(self, request: web.Request) -> web.Response:
        body = await request.json()
        call = request.match_info["call_id"]
        reply = operation_resource(
            "subscribeToTone",
            str(uuid.uuid4()),
            status="completed",
            client_context=body["clientContext"],
            result=(200, 0, "Action completed successfully."),
        )
        self._notify(call, tone(call, 1, "1"))  # the caller presses 1
        return web.json_response(reply)

    async def _hang_up(self, request: web.Request) -> web.Response:
        reply = await super()._hang_up(request)
        self._ended(request.match_info["call_id"], answered=True)
        return reply

    async def _reject(self, request: web.Request) -> web.Response:
        await request.read()
        call = request.match_info["call_id"]
        self._notify(call, call_terminated(call, etag=3))
        if self._ended(call, answered=False):
            self.rejected += 1
        return web.Response(status=202)

    def _ended(self, call: str, *, answered: bool) -> bool:
        """``call`` is over: free its slot, time it when it was answered; False when it was
        over already."""
        flying = self._flying.pop(call, None)
        if flying is None:
            return False
        index, placed = flying
        if answered:
            self.seconds[index] = time.monotonic() - placed
        self.ended += 1
        self._slots.release()
        return True

    async def _start(self, request: web.Request) -> web.Response:
        spec = await request.json()
        self.webhook = spec["webhook"]
        self.seconds = [math.nan] * int(spec["calls"])
        self._slots = anyio.Semaphore(int(spec["concurrency"]))
        self._tg.start_soon(self._drive, int(spec["calls"]), float(spec["rate"]), int(spec["run"]))
        return web.Response(status=202)

    async def _drive(self, calls: int, rate: float, run: int) -> None:
        """Place ``calls`` calls, one every ``1 / rate`` s at most (``rate`` 0: no pacing),
        each once a slot is free."""
        interval = 1.0 / rate if rate > 0 else 0.0
        due = time.monotonic()
        for index in range(calls):
            await self._slots.acquire()  # released when the call is hung up
            now = time.monotonic()
            if due > now:
                await anyio.sleep(due - now)
            due = max(due, now) + interval  # behind (no slot): resume the pace, no burst
            cid = call_id(run, index)
            self._flying[cid] = (index, time.monotonic())
            self.placed += 1
            self._tg.start_soon(self._place, cid)
        self.done = True

    async def _place(self, call: str) -> None:
        """Send the incoming-call notification of ``call`` (one never accepted: the call is
        lost, and the run will stall for want of its end in the worker)."""
        if not await self._post(self.webhook, incoming(call)) and self._ended(call, answered=False):
            self.lost += 1

    async def _post(self, url: str, body: dict[str, Any]) -> bool:
        """POST one notification, again a second later while it is not accepted (at most
        :data:`RESENDS` more times); True once accepted."""
        for _ in range(RESENDS):
            if await super()._post(url, body):
                return True
            await anyio.sleep(1.0)
        return await super()._post(url, body)

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "placed": self.placed,
                "ended": self.ended,
                "rejected": self.rejected,
                "lost": self.lost,
                "refused": self.undelivered,
                "in_flight": len(self._flying),
                "done": self.done and not self._flying,
            }
        )

    async def _tenths(self, request: web.Request) -> web.Response:
        size = int(request.query["size"])
        rows = []
        for start in range(0, len(self.seconds), size):
            ordered = sorted(s for s in self.seconds[start : start + size] if s == s)
            rows.append(
                {
                    "ended": len(ordered),
                    "p50_ms": percentile(ordered, 50) * 1e3,
                    "p99_ms": percentile(ordered, 99) * 1e3,
                }
            )
        return web.json_response(rows)


async def serve_graph() -> None:
    """Serve :class:`SoakGraph` on a free port; print ``READY``; stop on SIGTERM."""
    connector = aiohttp.TCPConnector(limit=64)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        anyio.create_task_group() as tg,
    ):
        graph = SoakGraph(tg, session)
        try:
            await serve_app(graph.app, 0)
        finally:
            tg.cancel_scope.cancel()


# --- the worker (a process of its own) -------------------------------------------------------


class Probe:
    """What the worker measures of itself; one row every ``tenth`` calls ended.

    Notifications are counted where the webhook hands each one to intake; CPU is read from
    each loop's thread clock (``pthread_getcpuclockid``), so measuring adds no work to the
    I/O loop. Rows go to stdout as ``TENTH {json}`` lines. Each row also says how many cores
    other processes than the worker and process ``graph_pid`` (the Graph stub) kept busy:
    the machine is shared, and what runs beside the worker shows in its CPU times.
    """

    def __init__(
        self,
        tenth: int,
        out: Callable[[str], None],
        graph_pid: int = 0,
        reference: Reference | None = None,
    ) -> None:
        self.tenth = tenth
        self.reference = reference
        self.out = out
        self.graph_pid = graph_pid
        self.completed = 0
        self.failed = 0
        self.defaulted = 0
        self.notifications = 0
        self._lock = threading.Lock()
        self.running: Any = None
        self._io_clock = 0
        self._app_clock = time.pthread_getcpuclockid(threading.get_ident())
        self._last: dict[str, float] = {}

    def count_notifications(self) -> None:
        """Count every notification the intake takes in, from now on: wrapped in the class,
        before serving, since the webhook binds the intake's ``submit`` when it is built."""
        from callflow.engine.intake import Intake

        take = Intake.submit

        def counted(intake: Intake, *args: Any, **kwargs: Any) -> None:
            self.notifications += 1
            take(intake, *args, **kwargs)

        Intake.submit = counted  # type: ignore[method-assign]

    def attach(self, running: Any) -> None:
        """Start the first tenth with ``running`` serving."""
        self.running = running
        self._io_clock = time.pthread_getcpuclockid(running.io.ident)
        self._last = self._sample()
        if self.reference is not None:
            self.reference.take()  # start the first tenth's reference with it

    def _sample(self) -> dict[str, float]:
        return {
            "at": time.monotonic(),
            "io": time.clock_gettime(self._io_clock),
            "app": time.clock_gettime(self._app_clock),
            "notifications": self.notifications,
            "busy": machine_busy_seconds(),
            "ours": cpu_seconds(os.getpid())
            + (cpu_seconds(self.graph_pid) if self.graph_pid else 0),
        }

    @property
    def calls(self) -> int:
        """Calls over so far: flows ended, and calls that never got one."""
        return self.completed + self.failed + self.defaulted

    def ended(self, ok: bool) -> None:
        """A flow ended (``ok``: it played, collected ``1`` and hung up); on the app loop."""
        self._count("completed" if ok else "failed")

    def decided(self, slot: DecisionSlot, error: BaseException | None) -> None:
        """A decision was sent (on the I/O loop): a call that gets no flow is over now."""
        if error is not None:
            self._count("failed")
        elif not isinstance(slot.decision, Answer):
            self._count("defaulted")  # shed: decided with the default at intake

    def _count(self, outcome: str) -> None:
        with self._lock:  # from either loop: each count, and so each tenth, exactly once
            setattr(self, outcome, getattr(self, outcome) + 1)
            if self.calls % self.tenth == 0:
                self.report()

    def records(self) -> dict[str, int]:
        """How many entries the worker's per-call tables hold right now (snapshot reads)."""
        running = self.running
        registry = running.services._control.registry
        book = registry.book
        keeper = running.keeper
        intake = running.engine.intake
        return {
            "registry": len(registry._calls),
            "book_live": len(book),
            "book_ended": len(book._ended),
            "keeper_held": len(keeper._calls),
            "keeper_schedule": len(keeper._heap),
            "intake_tracks": len(intake._tracks),
            "intake_recent": len(intake._recent),
        }

    def report(self) -> None:
        """Print the row of the tenth that just ended."""
        now, last = self._sample(), self._last
        self._last = now
        notes = now["notifications"] - last["notifications"]
        seconds = now["at"] - last["at"]
        others = (now["busy"] - last["busy"]) - (now["ours"] - last["ours"])
        row = {
            "tenth": self.calls // self.tenth,
            "calls": self.calls,
            "completed": self.completed,
            "failed": self.failed,
            "defaulted": self.defaulted,
            "seconds": seconds,
            "notifications": notes,
            "io_us_per_notification": (now["io"] - last["io"]) / max(notes, 1) * 1e6,
            "app_us_per_notification": (now["app"] - last["app"]) / max(notes, 1) * 1e6,
            "rss_mb": rss_bytes(os.getpid()) / 2**20,
            "records": self.records(),
            "other_load_cores": others / max(seconds, 1e-9),
        }
        reference = self.reference.take() if self.reference is not None else math.nan
        row["reference_us"] = reference
        row["io_per_reference"] = row["io_us_per_notification"] / reference
        self.out(ROW_PREFIX + json.dumps(row))


REFERENCE_BODY: Final = json.dumps(incoming("reference-call")).encode()


class Reference:
    """Times the reference work every ``every`` seconds on a thread of its own, for as long
    as it runs (``with Reference():``); :meth:`take` gives the mean µs since the last take."""

    def __init__(self, every: float = 0.02) -> None:
        self.every = every
        self._spent = 0.0
        self._count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-reference", daemon=True)

    def __enter__(self) -> Reference:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        from callflow._parse import parse_notifications

        while not self._stop.wait(self.every):
            began = time.thread_time()
            parse_notifications(REFERENCE_BODY)
            spent = time.thread_time() - began
            with self._lock:
                self._spent += spent
                self._count += 1

    def take(self) -> float:
        """Mean µs of the reference work since the last take (NaN if it never ran)."""
        with self._lock:
            spent, count, self._spent, self._count = self._spent, self._count, 0.0, 0
        return spent / count * 1e6 if count else math.nan


def make_bot(probe: Probe) -> Bot:
    """The worker's bot: answer, play, collect one key, hang up; tell ``probe`` each end."""
    bot = Bot()

    async def flow(call: Call) -> None:
        ok = False
        try:
            await call.play(PROMPT, timeout=OP_TIMEOUT)
            digits = await call.collect_digits(1, timeout=OP_TIMEOUT)
            await call.hang_up(timeout=OP_TIMEOUT)
            ok = digits == "1"
        finally:
            probe.ended(ok)

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer(then=flow)

    return bot


def print_line(line: str) -> None:
    """One line on stdout, at once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def serve_worker(settings: Settings, tenth: int, graph_pid: int) -> None:
    """Serve the bot until SIGTERM; print ``READY`` once serving, then a row every tenth."""
    reference = Reference()
    probe = Probe(tenth, print_line, graph_pid, reference)
    bot = make_bot(probe)
    bot.configure(settings)
    probe.count_notifications()
    with reference:
        await _serve(bot, probe)


async def _serve(bot: Bot, probe: Probe) -> None:
    async with bot.serve(tokens=StaticTokenProvider(TOKEN), on_decided=probe.decided) as running:
        probe.attach(running)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            announce(http=running.port, pid=os.getpid(), webhook=running.webhook_url)
            async for _ in signals:
                break


def worker_main(graph_url: str, tenth: int, graph_pid: int) -> None:
    """Set the process up as ``callflow run`` does (its JSON log to /dev/null), then serve."""
    settings = Settings(
        app_id=APP_ID,
        tenant_id=TENANT_ID,
        callback_url=CALLBACK_URL,
        graph_url=graph_url + GRAPH_PATH,
        host=HOST,
        port=0,
        inbound_auth=False,  # allowed on loopback; it costs the same per notification anyway
    )
    with open(os.devnull, "w") as devnull:
        configure_logging(fmt="json", level="info", stream=devnull)
        tune_worker(settings)
        options = {"use_uvloop": True} if use_uvloop(settings.loop) else {}
        anyio.run(serve_worker, settings, tenth, graph_pid, backend_options=options)


# --- the run (this process) ------------------------------------------------------------------


def post_json(url: str, body: dict[str, Any], timeout: float = 10.0) -> int:
    """POST ``body`` as JSON to ``url``; the status."""
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return int(response.status)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The tenth rows the worker printed so far."""
    text = path.read_text(errors="replace")
    return [
        json.loads(line[len(ROW_PREFIX) :])
        for line in text.splitlines()
        if line.startswith(ROW_PREFIX)
    ]


def soak(calls: int, rate: float, concurrency: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Run ``calls`` calls through one worker; the report (see the module docstring)."""
    from benchmarks.harness import Proc, http_get, machine

    tenth = calls // 10
    work = Path(tempfile.mkdtemp(prefix="callflow-soak-"))
    procs: list[Proc] = []
    me = [sys.executable, "-m", "benchmarks.bench_soak"]
    try:
        graph = Proc("graph", [*me, "--graph"], work)
        procs.append(graph)
        graph_url = f"http://{HOST}:{graph.wait_ready()['http']}"
        worker = Proc(
            "worker",
            [*me, "--worker", graph_url, "--tenth", str(tenth), "--graph-pid", str(graph.pid)],
            work,
        )
        procs.append(worker)
        webhook = worker.wait_ready()["webhook"]
        pids = {"worker": worker.pid, "graph": graph.pid}
        cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        busy = machine_busy_seconds()
        started = time.monotonic()
        spec = {
            "webhook": webhook,
            "calls": calls,
            "rate": rate,
            "concurrency": concurrency,
            "run": int(time.time()),
        }
        post_json(graph_url + "/soak/start", spec)
        rows: list[dict[str, Any]] = []
        status: dict[str, Any] = {}
        ended, moved = -1, started
        while True:
            fresh = read_rows(worker.out_path)
            for row in fresh[len(rows) :]:
                log(
                    f"tenth {row['tenth']:>2}: {row['calls']:>7,} calls in {row['seconds']:5.1f} s,"
                    f" I/O loop {row['io_us_per_notification']:6.1f} µs/notification,"
                    f" RSS {row['rss_mb']:6.1f} MB; other load {row['other_load_cores']:.2f} cores"
                )
            rows = fresh
            # A busy stub may be slow to answer: no answer is no news (the stall check holds).
            code, body = http_get(graph_url + "/soak/status", timeout=STATUS_TIMEOUT)
            if code == 200:
                status = json.loads(body)
                if status["ended"] != ended:
                    ended, moved = status["ended"], time.monotonic()
                if status["done"] and len(rows) == 10:
                    break
                if status["done"] and status["lost"]:
                    raise RuntimeError(
                        f"{status['lost']} calls never reached the worker: it refused their "
                        f"notification {RESENDS + 1} times (refusals: {status['refused']})"
                    )
            for proc in procs:
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"the {proc.name} process exited:\n{proc.stderr_tail()}")
            if time.monotonic() - moved > STALL:
                raise RuntimeError(
                    f"no call ended for {STALL:.0f} s ({status}); worker stderr:\n"
                    f"{worker.stderr_tail()}\nstub stderr:\n{graph.stderr_tail()}"
                )
            time.sleep(0.25)
        seconds = time.monotonic() - started
        spent = {name: cpu_seconds(pid) - cpu[name] for name, pid in pids.items()}
        other = (machine_busy_seconds() - busy - sum(spent.values())) / seconds
        code, body = http_get(f"{graph_url}/soak/tenths?size={tenth}", timeout=STATUS_TIMEOUT)
        if code != 200:
            raise RuntimeError(f"the Graph stub did not report the durations:\n{body!r}")
        durations = json.loads(body)
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)
    for row, taken in zip(rows, durations, strict=True):
        row["call_p50_ms"], row["call_p99_ms"] = taken["p50_ms"], taken["p99_ms"]
    return {
        **machine(),
        "command": "python -m benchmarks.bench_soak --calls "
        f"{calls} --rate {rate:g} --concurrency {concurrency}",
        "calls": calls,
        "tenth": tenth,
        "rate": rate,
        "concurrency": concurrency,
        "seconds": seconds,
        "calls_per_second": calls / seconds,
        "cpu_per_call_ms": {name: value / calls * 1e3 for name, value in spent.items()},
        "other_load_cores": other,
        "refused": status["refused"],
        "rejected": status["rejected"],
        "completed": rows[-1]["completed"],
        "failed": rows[-1]["failed"],
        "defaulted": rows[-1]["defaulted"],
        "rows": rows,
        "verdict": verdict(rows),
    }


def verdict(rows: Sequence[dict[str, Any]], tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Flat when the last tenth's I/O time per notification (against the reference work of
    the same tenth: the machine's speed moves) and RSS are each within ``tolerance`` of the
    second tenth's (the first is the warm-up)."""
    second, last = rows[1], rows[-1]
    changes = {name: last[name] / second[name] - 1 for name in ("io_per_reference", "rss_mb")}
    changes["io_us_per_notification"] = (
        last["io_us_per_notification"] / second["io_us_per_notification"] - 1
    )
    return {
        "flat": all(abs(changes[name]) <= tolerance for name in ("io_per_reference", "rss_mb")),
        "changes": changes,
        "tolerance": tolerance,
    }


def render(report: dict[str, Any]) -> str:
    """The table of tenths and the verdict, in Markdown."""
    load = report["cpu_per_call_ms"]
    pace = f"at most {report['rate']:g}/s and " if report["rate"] > 0 else "unpaced, "
    lines = [
        f"{report['calls']:,} calls through one worker, {pace}at most "
        f"{report['concurrency']} in flight: {report['seconds']:.0f} s "
        f"({report['calls_per_second']:.0f} calls/s); {report['completed']:,} completed, "
        f"{report['failed']} failed, {report['defaulted']} shed (decided with the default), "
        f"notifications refused (each sent again): {report['refused'] or 'none'}. "
        f"CPU per call: worker {load['worker']:.2f} ms, Graph stub {load['graph']:.2f} ms; "
        f"other load on the machine {report['other_load_cores']:.2f} cores.",
        "",
        "| tenth | calls | s | other load | I/O µs/notif. | ref µs | I/O / ref "
        "| app µs/notif. | RSS MB "
        "| call p50 ms | p99 ms | registry | book live | book ended | keeper held "
        "| keepAlive schedule | intake tracks | intake dedupe |",
        "|" + "---:|" * 18,
    ]
    for row in report["rows"]:
        held = row["records"]
        lines.append(
            f"| {row['tenth']} | {row['calls']:,} | {row['seconds']:.1f} "
            f"| {row['other_load_cores']:.2f} | {row['io_us_per_notification']:.1f} "
            f"| {row['reference_us']:,.0f} | {row['io_per_reference']:.4f} "
            f"| {row['app_us_per_notification']:.1f} "
            f"| {row['rss_mb']:.1f} | {row['call_p50_ms']:.1f} | {row['call_p99_ms']:.1f} | "
            + " | ".join(f"{held[name]:,}" for name in RECORDS)
            + " |"
        )
    v = report["verdict"]
    changes = v["changes"]
    lines += [
        "",
        f"Verdict: **{'flat' if v['flat'] else 'not flat'}** (last tenth against the second: "
        f"I/O-loop time per notification against the reference work "
        f"{changes['io_per_reference']:+.1%} ({changes['io_us_per_notification']:+.1%} in µs), "
        f"RSS {changes['rss_mb']:+.1%}; flat within ±{v['tolerance']:.0%}).",
    ]
    if report["failed"] or report["defaulted"]:
        lines.append(
            f"Not every call ran its flow ({report['failed']} failed, {report['defaulted']} "
            "shed): the work per notification was not the same throughout."
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak (or, with the hidden flags, one of its processes). Exit status 0 when
    flat, 3 when not flat; the report is printed (and written) either way."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_soak", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--calls", type=int, help=f"calls to place (default {CALLS:,})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CALLS:,} calls")
    parser.add_argument(
        "--rate", type=float, default=RATE, help="calls placed per second at most (0: unpaced)"
    )
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="calls in flight")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--graph", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", metavar="GRAPH_URL", help=argparse.SUPPRESS)
    parser.add_argument("--tenth", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--graph-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.graph:
        run_loop(serve_graph, "uvloop" if have_uvloop() else "asyncio")
        return 0
    if args.worker:
        worker_main(args.worker, args.tenth, args.graph_pid)
        return 0
    calls = args.calls or (QUICK_CALLS if args.quick else CALLS)
    if calls < 20 or calls % 10:
        parser.error(f"--calls {calls}: expected a multiple of 10, at least 20 (ten tenths)")
    if args.rate < 0 or args.concurrency < 1:
        parser.error("--rate must be 0 (unpaced) or more, and --concurrency at least 1")
    report = soak(calls, args.rate, args.concurrency, lambda line: print(line, flush=True))
    print()
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["verdict"]["flat"] else 3


if __name__ == "__main__":
    sys.exit(main())
