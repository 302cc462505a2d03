"""A three-worker fleet behind HAProxy on loopback, a worker stopped mid-traffic, no call lost.

``make fleet-demo`` (or ``python deploy/fleet_demo.py``) starts, on 127.0.0.1 and free ports:
one ``redis-server``, FakeGraph (``callflow.testing``: Graph, its token and key endpoints,
in this process), three workers ``callflow run deploy.demo_bot:bot`` in fleet mode
(``INSTANCE_ID`` w1, w2, w3, each reachable by the others at its ``INTERNAL_URL``) and HAProxy
with ``deploy/haproxy/haproxy.cfg`` in front of them. It places calls through the balancer,
sends SIGTERM to the worker holding the most answered calls while calls keep coming, then
presses a key on every answered call (through the balancer again, as Graph would: the URL
names the worker that answered it) and checks that:

- every call got exactly one accepted decision, before its platform timeout;
- every call the stopped worker held was adopted by a survivor (``call.adopted``);
- every answered call's key reached the worker holding it, which hung up.

It prints what happened and ``no call lost`` (exit 0), or what was lost (exit 1); ``--json``
adds one JSON line with the figures (the test reads it). Everything runs on this script's
event loop; the workers, Redis and HAProxy are child processes, stopped on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog
from anyio.streams.buffered import BufferedByteReceiveStream

from callflow.testing import CallHandle, FakeGraph

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
NAMES = ("w1", "w2", "w3")
WEBHOOK_PATH = "/api/calls"
MEDIA_PATH = "/api/media/"
FLEET_SECRET = "fleet-demo-secret-0123456789abcdef0123456789"
PLATFORM_TIMEOUT = 5.0  # FakeGraph's: a call not decided by then is lost
HEARTBEAT = 0.5  # a worker silent for 1.5 s is lost
DRAIN = 1.0  # CALLFLOW_DRAIN_TIMEOUT of the demo's workers
CHECK = "200ms"  # HAProxy's readiness check interval
START = 45.0  # workers starting on a loaded 2-core machine
GUARD = 30.0  # any other step


def free_port() -> int:
    """A port the OS has just handed out on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Child:
    """A child process and the lines it wrote (stdout and stderr), JSON ones parsed."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.text: list[str] = []
        self.lines: list[dict[str, Any]] = []
        self.process: anyio.abc.Process | None = None
        self.exited = anyio.Event()
        self._changed = anyio.Event()

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        self.process = await anyio.open_process(
            self.argv, env=self.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        tg.start_soon(self._read)

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        stream = BufferedByteReceiveStream(self.process.stdout)
        with contextlib.suppress(anyio.EndOfStream, anyio.IncompleteRead):
            while True:
                text = (await stream.receive_until(b"\n", 1 << 22)).decode(errors="replace")
                self.text.append(text)
                with contextlib.suppress(ValueError):
                    line = json.loads(text)
                    if isinstance(line, dict):
                        self.lines.append(line)
                self._touch()
        await self.process.wait()
        self.exited.set()
        self._touch()

    def _touch(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The JSON lines named ``event`` whose fields include ``fields``."""
        return [
            line
            for line in self.lines
            if line.get("event") == event and all(line.get(k) == v for k, v in fields.items())
        ]

    async def wait_for(self, predicate: Callable[[Child], bool]) -> None:
        """Wait until ``predicate(self)`` holds, checked again at every line written."""
        while not predicate(self):
            if self.exited.is_set():
                tail = "".join(self.text[-30:])
                raise RuntimeError(f"{self.name} exited; its last lines:\n{tail}")
            await self._changed.wait()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is still there after 15 s."""
        process = self.process
        if process is None:
            return
        self.signal(signal.SIGTERM)
        with anyio.move_on_after(15.0, shield=True):
            await self.exited.wait()
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.aclose()


def _members(worker: Child) -> list[str] | None:
    found = worker.find("fleet.members")
    return sorted(found[-1]["live"]) if found else None


class Demo:
    """The fleet, the balancer and the traffic; see the module docstring."""

    def __init__(self, fake: FakeGraph, tg: anyio.abc.TaskGroup, calls: int, rate: float) -> None:
        self.fake = fake
        self.tg = tg
        self.calls = calls
        self.rate = rate
        self.ports = {name: free_port() for name in NAMES}
        self.lb_port = free_port()
        self.workers: dict[str, Child] = {}
        self.handles: list[CallHandle] = []
        self.owner: dict[str, str] = {}  # answered call id -> the worker that answered it
        self.victim = ""
        self.stopped_at = 0.0
        self.figures: dict[str, Any] = {}
        self.services: list[Child] = []  # HAProxy, redis-server

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}{WEBHOOK_PATH}"

    def say(self, text: str) -> None:
        print(text, flush=True)

    def logged(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [line for w in self.workers.values() for line in w.find(event, **fields)]

    async def wait_logged(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, checked again whenever any worker writes."""
        while not predicate():
            async with anyio.create_task_group() as tg:

                async def one(worker: Child) -> None:
                    await worker._changed.wait()
                    tg.cancel_scope.cancel()

                for worker in self.workers.values():
                    tg.start_soon(one, worker)

    # -- the pieces ---------------------------------------------------------------------------

    async def start_redis(self, executable: str) -> str:
        port = free_port()
        folder = tempfile.mkdtemp(prefix="callflow-fleet-demo-")
        redis = Child(
            "redis",
            [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", folder],
        )  # fmt: skip
        await redis.start(self.tg)
        self.services.append(redis)
        with anyio.fail_after(GUARD):
            await redis.wait_for(lambda c: any("Ready to accept" in t for t in c.text))
        return f"redis://127.0.0.1:{port}/0"

    def worker_env(self, name: str, store: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("CALLFLOW_")}
        port = self.ports[name]
        settings = self.fake.environ(
            store=store,
            fleet_secret=FLEET_SECRET,
            instance_id=name,
            port=port,
            internal_url=f"http://127.0.0.1:{port}",
            webhook_path=WEBHOOK_PATH,
            metrics_port=0,
            heartbeat_interval=HEARTBEAT,
            drain_timeout=DRAIN,
            log_format="json",
            log_level="info",
        )
        return {**base, **settings}

    async def start_workers(self, store: str) -> None:
        for name in NAMES:
            argv = [sys.executable, "-m", "callflow", "run", "deploy.demo_bot:bot"]
            worker = self.workers[name] = Child(name, argv, self.worker_env(name, store))
            await worker.start(self.tg)
        with anyio.fail_after(START):
            for worker in self.workers.values():
                await worker.wait_for(lambda w: bool(w.find("bot.ready")))
            for worker in self.workers.values():
                await worker.wait_for(lambda w: _members(w) == list(NAMES))
                await worker.wait_for(lambda w: bool(w.find("fleet.settled")))

    async def start_haproxy(self, executable: str) -> None:
        env = {
            **os.environ,
            "CALLFLOW_LB_BIND": f"127.0.0.1:{self.lb_port}",
            "CALLFLOW_WEBHOOK_PATH": WEBHOOK_PATH,
            "CALLFLOW_MEDIA_PATH": MEDIA_PATH,
            "CALLFLOW_LB_CHECK": CHECK,
            **{f"CALLFLOW_{n.upper()}": f"127.0.0.1:{p}" for n, p in self.ports.items()},
        }
        haproxy = self.haproxy = Child(
            "haproxy", [executable, "-W", "-db", "-f", str(HAPROXY_CFG)], env
        )
        await haproxy.start(self.tg)
        self.services.insert(0, haproxy)
        with anyio.fail_after(GUARD):
            await haproxy.wait_for(lambda c: any("Loading success" in t for t in c.text))

    # -- the traffic ------------------------------------------------------------------------

    async def place(self, index: int) -> None:
        call = await self.fake.place_call(self.webhook_url)
        self.handles.append(call)
        try:
            decision = await call.decision(timeout=PLATFORM_TIMEOUT + 1.0)
        except TimeoutError:
            body = str(call.webhook_body)[:300]
            self.say(f"  LOST {call.call_id}: webhook answered {call.webhook_status} {body!r}")
            return
        if decision.op == "answer":
            self.owner[call.call_id] = decision.body["callbackUri"].rsplit("instance=", 1)[1]

    async def traffic(self) -> None:
        """Place the calls at ``rate`` a second; stop a worker once a third are answered."""
        stop_after = max(1, self.calls // 3)
        async with anyio.create_task_group() as tg:
            for index in range(self.calls):
                tg.start_soon(self.place, index)
                if not self.victim and len(self.owner) >= stop_after:
                    self.stop_one()
                await anyio.sleep(1.0 / self.rate)  # pacing the caller, not waiting on a result
        if not self.victim:  # pragma: no cover - too few calls were answered to pick one
            self.stop_one()

    def stop_one(self) -> None:
        counts = Counter(self.owner.values())
        self.victim = max(NAMES, key=lambda name: counts[name])
        self.stopped_at = time.monotonic()
        self.figures["victim_held_at_stop"] = counts[self.victim]
        self.say(
            f"  SIGTERM to {self.victim} ({counts[self.victim]} answered calls held, "
            f"{len(self.handles)} of {self.calls} calls placed)"
        )
        self.workers[self.victim].signal(signal.SIGTERM)

    # -- the checks -------------------------------------------------------------------------

    async def keys_reach_every_answered_call(self) -> int:
        """Press 1 on every answered call once its holder waits for it; count the hang-ups."""
        victim = self.victim

        def waiting_on_a_live_worker(call_id: str, owner: str) -> bool:
            lines = self.logged("demo.waiting", call_id=call_id)
            return any(line.get("instance") != victim for line in lines) or (
                owner != victim and bool(lines)
            )

        with anyio.fail_after(GUARD):
            for call_id, owner in self.owner.items():
                await self.wait_logged(lambda: waiting_on_a_live_worker(call_id, owner))  # noqa: B023
        async with anyio.create_task_group() as tg:
            for call_id in self.owner:
                tg.start_soon(self.fake.call(call_id).press, "1")
        hung_up = 0
        with anyio.move_on_after(GUARD):
            for call_id in self.owner:
                call = self.fake.call(call_id)
                await call.wait_requests(1, op="delete", timeout=GUARD)
                # and Graph's last word on it reached the fleet before the demo ends
                await call.wait_delivery("terminated", timeout=GUARD)
                hung_up += 1
        return hung_up

    async def run(self, redis: str, haproxy: str) -> dict[str, Any]:
        began = time.monotonic()
        store = await self.start_redis(redis)
        self.say(f"redis-server   {store}")
        await self.start_workers(store)
        for name in NAMES:
            self.say(f"worker {name}      http://127.0.0.1:{self.ports[name]} (INSTANCE_ID={name})")
        await self.start_haproxy(haproxy)
        self.say(f"HAProxy        {self.webhook_url} (readiness checks every {CHECK})")
        self.say(f"placing {self.calls} calls through the balancer, {self.rate:g} a second")
        await self.traffic()
        victim = self.workers[self.victim]
        with anyio.fail_after(GUARD):
            await victim.exited.wait()
        for text in self.haproxy.text:
            if f"workers/{self.victim} is DOWN" in text and "WARNING" in text:
                self.say("  HAProxy: " + text.split(" : ", 1)[-1].split(", reason")[0])
        exit_code = victim.process.returncode if victim.process is not None else None
        stopped_in = time.monotonic() - self.stopped_at
        held = sorted(c for c, o in self.owner.items() if o == self.victim)
        with anyio.fail_after(GUARD):
            await self.wait_logged(
                lambda: {line["call_id"] for line in self.logged("call.adopted")} >= set(held)
            )
        adopted = {
            line["call_id"]: name
            for name, worker in self.workers.items()
            for line in worker.find("call.adopted", previous_owner=self.victim)
        }
        reasons = {
            str(line["reason"]) for line in self.logged("call.adopted", previous_owner=self.victim)
        }
        hung_up = await self.keys_reach_every_answered_call()
        once = [c for c in self.handles if decided_once(c)]
        lost = (len(self.handles) - len(once)) + (len(self.owner) - hung_up)
        figures = {
            **self.figures,
            "placed": len(self.handles),
            "decided_once": len(once),
            "answered": len(self.owner),
            "rejected": sum(1 for c in once if c.decisions[0].op == "reject"),
            "victim": self.victim,
            "victim_exit": exit_code,
            "victim_stopped_in": round(stopped_in, 2),
            "victim_held": len(held),
            "adopted": len(adopted.keys() & set(held)),
            "adopted_by": dict(Counter(adopted.values())),
            "adoption_reasons": sorted(reasons),
            "keys_reached": hung_up,
            "rerouted": len(self.logged("notification.rerouted")),
            "lost": lost,
            "seconds": round(time.monotonic() - began, 1),
        }
        self.report(figures)
        return figures

    def report(self, f: dict[str, Any]) -> None:
        self.say(
            f"{f['placed']} calls placed: {f['decided_once']} decided exactly once and in time "
            f"({f['answered']} answered, {f['rejected']} given the default while the balancer "
            "had not yet seen the stopping worker unready)"
        )
        self.say(
            f"{f['victim']} stopped (exit {f['victim_exit']}) {f['victim_stopped_in']} s after "
            f"SIGTERM; of the {f['victim_held']} calls it held, {f['adopted']} were adopted "
            f"({', '.join(f['adoption_reasons']) or 'none'})"
        )
        self.say(
            f"a key pressed on each of the {f['answered']} answered calls reached the worker "
            f"holding it: {f['keys_reached']} ({f['rerouted']} of them sent on by the worker "
            "the balancer chose to the call's new owner)"
        )
        self.say("no call lost" if f["lost"] == 0 else f"{f['lost']} calls LOST")


def decided_once(call: CallHandle) -> bool:
    """One decision request, accepted, before the platform timeout."""
    accepted = [r for r in call.decisions if r.accepted]
    return (
        len(call.decisions) == 1
        and len(accepted) == 1
        and not call.timed_out
        and accepted[0].at < call.deadline
    )


def need(program: str, package: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if path is None:
        raise SystemExit(
            f"fleet-demo: {program} is not installed; apt-get install {package} "
            "(make fleet-demo installs it when it can)"
        )
    return path


async def main(calls: int, rate: float) -> dict[str, Any]:
    redis, haproxy = need("redis-server", "redis-server"), need("haproxy", "haproxy")
    async with (
        FakeGraph(platform_timeout=PLATFORM_TIMEOUT, recording_timeout=PLATFORM_TIMEOUT) as fake,
        anyio.create_task_group() as tg,
    ):
        demo = Demo(fake, tg, calls, rate)
        try:
            return await demo.run(redis, haproxy)
        finally:
            with anyio.CancelScope(shield=True):
                for child in [*demo.workers.values(), *demo.services]:
                    await child.stop()
            tg.cancel_scope.cancel()


def quiet_logs() -> None:
    """FakeGraph runs in this process: only its warnings and errors are shown."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=60, help="calls to place (default 60)")
    parser.add_argument("--rate", type=float, default=15.0, help="calls a second (default 15)")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON figures")
    args = parser.parse_args(argv)
    quiet_logs()
    figures = anyio.run(main, args.calls, args.rate)
    if args.json:
        print(json.dumps(figures), flush=True)
    return 0 if figures["lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(cli())
