"""The benchmark harness: three processes on 127.0.0.1, three ways to decide a call.

Processes: the load generator (:mod:`benchmarks.loadgen`), the bot under test, and the Graph
stub (:mod:`benchmarks.graph_stub`). Latency is *notification sent -> decision POST received
by the stub*, both stamped with ``time.monotonic()`` (one system-wide clock on Linux) and
matched by call id; a call is *late* when that exceeds the platform timeout (see
:mod:`benchmarks.outcomes`). Variants, measured in the same run with the same load and stub:

- ``callflow``: :mod:`benchmarks.callflow_bot`, started as ``callflow run`` starts a worker
  (inbound JWT validation on, keys from the stub's key server, app token from its token
  endpoint);
- ``floor``: :mod:`benchmarks.floor_bot`, a bare aiohttp webhook;
- ``sdk``: :mod:`benchmarks.sdk_bot`, an aiohttp webhook that rejects through msgraph-sdk
  (skipped when msgraph-sdk is not installed).

Scenarios (``--only`` names them): ``closed`` (cold start; closed-loop decision latency and
throughput at several concurrencies, the key one repeated in interleaved rounds; a new JWT
per call; the same on uvloop), ``open`` (fixed open-loop rates), ``capacity`` (the highest
open-loop rate each of callflow and the floor handles, by bisection), ``overload`` (hanging
handlers at a fixed rate, then at 10x callflow's capacity), ``blocked`` (a handler holds the
loop: ``time.sleep``, then a busy loop), ``memory`` (bytes per pending call) and, when a
target is missed, ``profile`` (py-spy on the callflow bot).

Run: ``python -m benchmarks.harness`` (``make bench``; writes ``benchmarks/RESULTS.md``,
``benchmarks/cdf.png`` and ``benchmarks/out/results.json``) or ``--quick`` (``make
bench-quick``; a short run written to ``benchmarks/out/quick/``); ``--only overload,blocked``
runs some scenarios (written to ``benchmarks/out/partial/``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from benchmarks._common import (
    APP_ID,
    CALLBACK_URL,
    GRAPH_PATH,
    ISSUER,
    KEYS_PATH,
    TENANT_ID,
    WEBHOOK_PATH,
    have_uvloop,
    rss_bytes,
)
from benchmarks.analysis import (
    PLATFORM_TIMEOUT,
    Plan,
    evaluate_targets,
    key_runs,
    median_of,
)
from benchmarks.outcomes import (
    block_groups,
    capacity_verdict,
    deadline_outcome,
    generator_figures,
    other_load,
    summarize_closed,
    summarize_open,
    timeline,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
VARIANTS = ("callflow", "floor", "sdk")
QUIET = "callflow_quiet"
"""callflow with ``LOG_LEVEL=warning`` (no ``call.decided`` line): what the logging costs."""
TRACED = "callflow_traced"
"""callflow with ``TRACING=otel`` and an exporter that drops the spans (``--traced``): what
making a call's spans costs."""
BASE = "callflow_base"
"""callflow from another checkout (``--baseline DIR``, e.g. ``git archive main``): the same
bot, before a change."""
CALLFLOWS = ("callflow", QUIET, TRACED, BASE)
"""The variants that are a callflow worker (``/readyz``, no READY line, SIGUSR1 totals)."""
EXTRA = (QUIET, TRACED, BASE)
"""The variants measured at one call at a time and at the key concurrency only."""
SCENARIOS = ("closed", "open", "capacity", "overload", "blocked", "memory", "profile")
APP_SECRET = "bench-app-secret"
OTHER_LOAD_RETRY = 0.25
"""Cores of other load above which a failed capacity step is run once more."""
PACKAGES = (
    "callflow",
    "aiohttp",
    "anyio",
    "structlog",
    "PyJWT",
    "cryptography",
    "msal",
    "msgraph-sdk",
    "microsoft-kiota-http",
    "httpx",
    "uvloop",
    "matplotlib",
    "py-spy",
)


class Proc:
    """A child process whose stdout/stderr go to files; it announces itself with ``READY``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        workdir: Path,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        self.started = time.monotonic()
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(
                list(argv), cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL
            )
        self.pid = self.popen.pid
        self.info: dict[str, Any] = {}
        self.metrics_port: int | None = None
        """A callflow bot's metrics listener (on 127.0.0.1)."""

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the ``READY {json}`` line; raise with the stderr tail if it never comes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.out_path.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("READY "):
                    self.info = json.loads(line[6:])
                    return self.info
            if self.popen.poll() is not None:
                break
            time.sleep(0.005)
        raise RuntimeError(
            f"{self.name} did not start (exit code {self.popen.poll()}); expected a READY line. "
            f"stderr tail:\n{self.stderr_tail()}"
        )

    def stderr_tail(self, lines: int = 20) -> str:
        """The last lines of the process's stderr."""
        with contextlib.suppress(OSError):
            return "\n".join(self.err_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stderr_events(self, event: str, since: int = 0) -> list[dict[str, Any]]:
        """The JSON lines of stderr (from byte ``since``) whose ``event`` is ``event``."""
        mark = f'"event": "{event}"'
        found = []
        with open(self.err_path, "rb") as f:
            f.seek(since)
            for raw in f:
                line = raw.decode(errors="replace")
                if mark in line:
                    with contextlib.suppress(ValueError):
                        found.append(json.loads(line))
        return found

    def gc_stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """Ask a callflow bot for its collector totals (SIGUSR1); {} if it does not answer."""
        since = self.err_path.stat().st_size
        self.popen.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.stderr_events("bench.gc", since)
            if lines:
                return lines[-1]
            time.sleep(0.01)
        return {}

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM; a second SIGTERM after a second (a worker's "stop now"); then SIGKILL."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(min(1.0, timeout))
                return
            except subprocess.TimeoutExpired:
                pass
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """GET ``url``: (status, body); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


# --- statistics ------------------------------------------------------------------------------


def gc_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Collector passes and seconds between two ``bench.gc`` snapshots."""
    if not before or not after:
        return {}
    return {
        "collections": [
            b - a for a, b in zip(before["collections"], after["collections"], strict=True)
        ],
        "seconds": [b - a for a, b in zip(before["seconds"], after["seconds"], strict=True)],
        "total_seconds": sum(after["seconds"]) - sum(before["seconds"]),
        "cpu_seconds": after["cpu"] - before["cpu"],
        "longest": after["longest"],
    }


def parsed_body_bytes(body: str, n: int = 200) -> float:
    """Bytes a parsed notification body (the dict tree of ``json.loads``) takes."""
    import tracemalloc

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    kept = [json.loads(body) for _ in range(n)]
    size = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del kept
    return size / n


def _cpu_seconds(result: dict[str, Any]) -> dict[str, float]:
    from benchmarks.outcomes import cpu_delta

    return {name: cpu_delta(result, name) for name in ("bot", "stub", "loadgen")}


# --- the harness -----------------------------------------------------------------------------


class Harness:
    """Runs the scenarios of a :class:`Plan` and writes the report."""

    def __init__(
        self,
        plan: Plan,
        out: Path,
        workdir: Path,
        log: Callable[[str], None],
        *,
        traced: bool = False,
        baseline: Path | None = None,
    ) -> None:
        self.plan = plan
        self.out = out
        self.workdir = workdir
        self.log = log
        self.runs = 0
        self.run_prefix = int(time.time()) & 0xFFFF
        self.procs: list[Proc] = []
        self.results: dict[str, Any] = {}
        self.variants = tuple(v for v in VARIANTS if v != "sdk" or _has("msgraph"))
        if plan.quiet_variant:
            self.variants += (QUIET,)
        if traced:
            self.variants += (TRACED,)
        self.baseline = baseline
        if baseline is not None:
            self.variants += (BASE,)
        self.stub: Proc | None = None
        self.stub_port = 0
        self.feed_port = 0
        self.authority_url = ""
        self.ca_bundle = ""
        self._make_keys()

    # -- setup ------------------------------------------------------------------------------

    def _make_keys(self) -> None:
        from callflow.testing import SigningKey, graph_claims, incoming_call

        key = SigningKey.generate(kid="bench-key")
        self.key = key
        (self.workdir / "jwks.json").write_text(json.dumps({"keys": [key.jwk()]}))
        self.tokens = [
            key.sign(graph_claims(app_id=APP_ID, tenant_id=TENANT_ID, issuer=ISSUER, jti=str(i)))
            for i in range(8)
        ]
        self.sentinel = "5e6f7a8b-0000-4000-8000-5e471e1f1a60"
        body = incoming_call(
            kind="p2p",
            call_id=self.sentinel,
            tenant_id=TENANT_ID,
            bot_app_id=APP_ID,
            callback_uri=CALLBACK_URL,
        )
        self.body = json.dumps(body)

    def python(self, module: str, *args: str) -> list[str]:
        """argv running ``benchmarks.<module>`` with this interpreter."""
        return [sys.executable, "-m", f"benchmarks.{module}", *args]

    def start_stub(self) -> None:
        """Start the Graph stub (uvloop when installed)."""
        stub = Proc(
            "stub",
            self.python("graph_stub", "--jwks", str(self.workdir / "jwks.json")),
            self.workdir,
        )
        self.procs.append(stub)
        info = stub.wait_ready()
        self.stub, self.stub_port, self.feed_port = stub, int(info["http"]), int(info["feed"])
        self.authority_url, self.ca_bundle = str(info["authority"]), str(info["ca_bundle"])

    @property
    def graph_url(self) -> str:
        """The stub's Graph base URL."""
        return f"http://127.0.0.1:{self.stub_port}{GRAPH_PATH}"

    def callflow_env(self, port: int, **settings: Any) -> dict[str, str]:
        """The environment of a callflow bot process: CALLFLOW_* wired to the stub."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLFLOW_", "BENCH_"))}
        values: dict[str, Any] = {
            "app_id": APP_ID,
            "app_secret": APP_SECRET,
            "tenant_id": TENANT_ID,
            "authority_url": self.authority_url,
            "ca_bundle": self.ca_bundle,
            "callback_url": CALLBACK_URL,
            "graph_url": self.graph_url,
            "openid_config_url": (
                f"http://127.0.0.1:{self.stub_port}{KEYS_PATH}/.well-known/openid-configuration"
            ),
            "issuers": ISSUER,
            "host": "127.0.0.1",
            "port": port,
            "log_format": "json",
            "log_level": "info",
            "instance_id": "bench",
        }
        mode = settings.pop("mode", "instant")
        block = settings.pop("block_seconds", None)
        values.update(settings)
        env.update({f"CALLFLOW_{k.upper()}": str(v) for k, v in values.items()})
        env["BENCH_MODE"] = mode
        if block is not None:
            env["BENCH_BLOCK_SECONDS"] = str(block)
        return env

    def start_bot(
        self, variant: str, *, loop: str = "asyncio", label: str | None = None, **settings: Any
    ) -> tuple[Proc, int]:
        """Start a bot process (not waiting for it); returns it and its port."""
        port = free_port()
        name = f"{label or variant}-{loop}-{self.runs}"
        self.runs += 1
        cwd = ROOT
        if variant == QUIET:
            variant, settings = "callflow", {"log_level": "warning", **settings}
        elif variant == TRACED:
            settings = {"tracing": "otel", "tracing_exporter": "none", **settings}
            variant = "callflow"
        elif variant == BASE:
            assert self.baseline is not None
            variant, cwd = "callflow", self.baseline  # `-m` imports callflow from there
        if variant == "callflow":
            metrics_port = free_port()  # each bot its own: several may run at once
            proc = Proc(
                name,
                self.python("callflow_bot", "--loop", loop),
                self.workdir,
                self.callflow_env(port, metrics_port=metrics_port, **settings),
                cwd,
            )
            proc.metrics_port = metrics_port
        else:
            module = {"floor": "floor_bot", "sdk": "sdk_bot"}[variant]
            proc = Proc(
                name,
                self.python(
                    module, "--port", str(port), "--graph-url", self.graph_url, "--loop", loop
                ),
                self.workdir,
            )
        self.procs.append(proc)
        return proc, port

    def wait_readyz(self, proc: Proc, port: int, timeout: float = 60.0) -> float:
        """Poll ``/readyz`` until 200; returns the monotonic time it first answered 200."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{port}/readyz"
        while time.monotonic() < deadline:
            status, _ = http_get(url, timeout=0.5)
            if status == 200:
                return time.monotonic()
            if proc.popen.poll() is not None:
                break
            time.sleep(0.002)
        raise RuntimeError(
            f"{proc.name} never answered 200 on /readyz; expected readiness within {timeout:g} s. "
            f"stderr tail:\n{proc.stderr_tail()}"
        )

    def loadgen(self, port: int, bot: Proc, **config: Any) -> dict[str, Any]:
        """Run one load-generator process against the bot on ``port``; return its records."""
        proc, res = self.start_loadgen(port, bot, **config)
        proc.popen.wait()
        return self.finish_loadgen(proc, res)

    def start_loadgen(self, port: int, bot: Proc, **config: Any) -> tuple[Proc, Path]:
        """Start a load-generator process; returns it and where its result will be."""
        self.runs += 1
        run = (self.run_prefix << 16) | self.runs
        full = {
            "webhook_url": f"http://127.0.0.1:{port}{WEBHOOK_PATH}",
            "feed_port": self.feed_port,
            "run": run,
            "body": self.body,
            "sentinel": self.sentinel,
            "tokens": self.tokens,
            "bot_pid": bot.pid,
            "stub_pid": self.stub.pid if self.stub else None,
        }
        full.update(config)
        cfg = self.workdir / f"loadgen-{self.runs}.json"
        res = self.workdir / f"loadgen-{self.runs}.result.json"
        cfg.write_text(json.dumps(full))
        proc = Proc(
            f"loadgen-{self.runs}", self.python("loadgen", str(cfg), str(res)), self.workdir
        )
        return proc, res

    def finish_loadgen(self, proc: Proc, res: Path) -> dict[str, Any]:
        """The records of a load-generator process that has exited."""
        code = proc.popen.wait()
        if code != 0 or not res.exists():
            raise RuntimeError(
                f"the load generator failed (exit code {code}); expected a result file. "
                f"stderr tail:\n{proc.stderr_tail()}"
            )
        result: dict[str, Any] = json.loads(res.read_text())
        res.unlink()
        return result

    def start_ready(self, variant: str, **options: Any) -> tuple[Proc, int]:
        """Start a bot and wait until it is ready (``/readyz``, and the READY line if any)."""
        proc, port = self.start_bot(variant, **options)
        try:
            self.wait_readyz(proc, port)
            if variant not in CALLFLOWS:
                proc.wait_ready()
        except BaseException:
            proc.kill()
            raise
        return proc, port

    @contextlib.contextmanager
    def bots(
        self, loop: str = "asyncio", variants: Sequence[str] | None = None
    ) -> Iterator[dict[str, tuple[Proc, int]]]:
        """Start every variant's bot (measuring cold start), yield them, stop them."""
        running: dict[str, tuple[Proc, int]] = {}
        try:
            for variant in variants or self.variants:
                proc, port = self.start_bot(variant, loop=loop)
                running[variant] = (proc, port)
                ready_at = self.wait_readyz(proc, port)
                if variant not in CALLFLOWS:
                    proc.wait_ready()
                first = self.loadgen(
                    port, proc, mode="closed", concurrency=1, warmup=0.0, duration=30.0, count=1
                )
                lat = (first["decided"][0] - first["sent"][0]) * 1000
                self.results.setdefault("cold_start", {}).setdefault(loop, {})[variant] = {
                    "ready_s": ready_at - proc.started,
                    "first_call_ms": lat,
                }
                self.log(
                    f"  {variant:9} ready in {ready_at - proc.started:.3f} s, "
                    f"first decision {lat:.2f} ms"
                )
            yield running
        finally:
            for proc, _ in running.values():
                proc.stop()

    def settle(self, quiet: float = 0.5, timeout: float = 30.0) -> bool:
        """Wait until the stub has had no decision for ``quiet`` s (a bot's backlog drained)."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            status, body = http_get(f"{self.graph_url}/_stats")
            count = int(json.loads(body)["decisions"]) if status == 200 else -1
            now = time.monotonic()
            if count != last:
                last, since = count, now
            elif now - since >= quiet:
                return True
            time.sleep(0.05)
        self.log(f"  (the bots were still deciding after {timeout:g} s)")
        return False

    # -- closed loop, open loop, capacity ------------------------------------------------------

    def closed_runs(
        self,
        bots: dict[str, tuple[Proc, int]],
        loop: str,
        concurrencies: Sequence[int],
        rounds: int,
    ) -> None:
        """Closed-loop runs, variants interleaved; the key concurrency repeated ``rounds``."""
        p = self.plan
        self.log(f"closed loop ({loop}): concurrency {', '.join(map(str, concurrencies))}")
        store = self.results.setdefault("closed", {}).setdefault(loop, {})
        for rnd in range(rounds):
            for c in concurrencies:
                if rnd > 0 and c != p.key_concurrency:
                    continue
                for variant, (proc, port) in bots.items():
                    if variant in EXTRA and c not in (1, p.key_concurrency):
                        continue
                    gc_before = proc.gc_stats() if variant in CALLFLOWS else {}
                    result = self.loadgen(
                        port,
                        proc,
                        mode="closed",
                        concurrency=c,
                        warmup=p.warmup,
                        duration=p.duration,
                    )
                    summary = summarize_closed(result)
                    if gc_before:
                        summary["gc"] = gc_delta(gc_before, proc.gc_stats())
                    store.setdefault(variant, {}).setdefault(str(c), []).append(summary)
                    lat = summary["latency"]
                    self.log(
                        f"  round {rnd + 1} c={c:<3} {variant:9} "
                        f"{summary['throughput']:7.0f}/s  p50 {lat['p50']:6.2f}  "
                        f"p99 {lat['p99']:7.2f}  max {lat['max']:7.2f} ms"
                        f"  cpu {summary['cpu_per_1000']['bot']:.3f} s/1000"
                        f"  undecided {summary['undecided']}"
                    )

    def open_run(
        self, port: int, proc: Proc, rate: float, seconds: float, tail: float
    ) -> dict[str, Any]:
        """One open-loop run at ``rate`` against a running bot; its summary."""
        result = self.loadgen(
            port,
            proc,
            mode="open",
            rate=rate,
            duration=seconds,
            max_connections=4096,
            preopen=int(min(1024, 64 + rate * 0.1)),
            tail=tail,
        )
        return summarize_open(result, rate, PLATFORM_TIMEOUT)

    def open_runs(self, bots: dict[str, tuple[Proc, int]]) -> None:
        """Open-loop runs at fixed rates, variants interleaved."""
        p = self.plan
        self.log("open loop: fixed rates")
        store = self.results.setdefault("open", {})
        for rate in p.open_rates:
            for variant, (proc, port) in bots.items():
                if variant in EXTRA:
                    continue
                runs = key_runs(self.results, variant, p.key_concurrency)
                capacity = median_of(runs, "throughput") if runs else math.inf
                if rate > 0.9 * capacity:
                    store.setdefault(variant, {})[str(rate)] = {"skipped": capacity}
                    self.log(
                        f"  open {rate:>5}/s {variant:9} skipped: above 90 % of its "
                        f"{capacity:.0f}/s capacity"
                    )
                    continue
                summary = self.open_run(port, proc, rate, p.open_duration, 15.0)
                store.setdefault(variant, {})[str(rate)] = summary
                self.settle()
                lat = summary["latency"]
                self.log(
                    f"  open {rate:>5}/s {variant:9} decided {summary['decided_rate']:7.0f}/s"
                    f"  p50 {lat['p50']:6.2f}  p99 {lat['p99']:7.2f}  max {lat['max']:7.2f} ms"
                    f"  undecided {summary['undecided']}"
                    f"  send lag p99 {summary['generator']['send_lag_ms']['p99']:.1f} ms"
                )

    def capacity(self, bots: dict[str, tuple[Proc, int]]) -> None:
        """The highest open-loop rate each of callflow and the floor handles, by bisection.

        A step offers ``rate`` calls/s for ``capacity_seconds`` and passes when every call got
        a 2xx, the 2xx p99 is under 50 ms and none was late or still undecided
        ``capacity_tail`` seconds after the last send (stricter than the platform timeout:
        capacity is never overstated), with the load generator on schedule. The search runs
        between 0 and 1.3x the variant's closed-loop throughput at the key concurrency; the
        variants alternate step by step so that both see the same conditions. A step that
        fails while other processes used more than ``OTHER_LOAD_RETRY`` cores is run once
        more (the machine is shared).
        """
        p = self.plan
        variants = [v for v in ("callflow", "floor") if v in bots]
        state: dict[str, dict[str, Any]] = {}
        for variant in variants:
            runs = key_runs(self.results, variant, p.key_concurrency)
            ceiling = 1.3 * median_of(runs, "throughput") if runs else p.capacity_ceiling
            state[variant] = {"lo": 0.0, "hi": ceiling, "ceiling": ceiling, "steps": []}
        self.log(
            f"open-loop capacity: {p.capacity_steps} bisection steps of "
            f"{p.capacity_seconds:g} s, 202 p99 < 50 ms and 0 late"
        )
        for step in range(p.capacity_steps):
            for variant in variants:
                s = state[variant]
                proc, port = bots[variant]
                rate = round((s["lo"] + s["hi"]) / 2)
                summary = self.open_run(port, proc, rate, p.capacity_seconds, p.capacity_tail)
                self.settle()
                passed, reason = capacity_verdict(summary)
                retried = False
                if not passed and summary["other_cores"] > OTHER_LOAD_RETRY:
                    # Other processes took CPU during the step: run it once more.
                    self.log(
                        f"  step {step + 1} {variant:9} {rate:6.0f}/s: fail ({reason}) with "
                        f"{summary['other_cores']:.2f} cores of other load; once more"
                    )
                    summary = self.open_run(port, proc, rate, p.capacity_seconds, p.capacity_tail)
                    self.settle()
                    passed, reason = capacity_verdict(summary)
                    retried = True
                if passed:
                    s["lo"] = rate
                else:
                    s["hi"] = rate
                out, gen = summary["outcome"], summary["generator"]
                s["steps"].append(
                    {
                        "rate": rate,
                        "offered": gen["offered"],
                        "passed": passed,
                        "reason": reason,
                        "retried": retried,
                        "ack_p99_ms": out["ack_ms"]["p99"],
                        "missed": out["missed"],
                        "non_2xx": out["calls"] - out["accepted"],
                        "send_lag_p99_ms": gen["send_lag_ms"]["p99"],
                        "loop_lag_p99_ms": gen["loop_lag_ms"]["p99"],
                        "other_cores": summary["other_cores"],
                    }
                )
                self.log(
                    f"  step {step + 1} {variant:9} {rate:6.0f}/s: "
                    f"{'pass' if passed else 'fail (' + reason + ')'}; 202 p99 "
                    f"{out['ack_ms']['p99']:.1f} ms, offered {gen['offered']:.0f}/s"
                )
        store = self.results.setdefault("capacity", {})
        for name, found in state.items():
            store[name] = {
                "capacity": found["lo"],
                "ceiling": found["ceiling"],
                "resolution": found["ceiling"] / 2**p.capacity_steps,
                "steps": found["steps"],
            }
        if "callflow" in store and "floor" in store:
            floor = store["floor"]["capacity"]
            store["ratio"] = store["callflow"]["capacity"] / floor if floor else math.nan
            self.log(
                f"  capacity callflow {store['callflow']['capacity']:.0f}/s, floor "
                f"{floor:.0f}/s: {store['ratio']:.2f}x"
            )

    def fresh_jwt_run(self, bots: dict[str, tuple[Proc, int]]) -> None:
        """callflow at the key concurrency with a new (never cached) JWT on every call."""
        p = self.plan
        proc, port = bots["callflow"]
        runs = self.results["closed"]["asyncio"]["callflow"][str(p.key_concurrency)]
        rate = statistics.median(r["throughput"] for r in runs)
        count = int(min(30_000, max(2_000, rate * (p.warmup + p.duration) * 1.2)))
        pem = self.key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        result = self.loadgen(
            port,
            proc,
            mode="closed",
            concurrency=p.key_concurrency,
            warmup=p.warmup,
            duration=p.duration,
            count=count,
            fresh_tokens={
                "pem": pem,
                "kid": self.key.kid,
                "count": count,
                "app_id": APP_ID,
                "tenant_id": TENANT_ID,
                "issuer": ISSUER,
            },
        )
        summary = summarize_closed(result)
        self.results["fresh_jwt"] = summary
        lat = summary["latency"]
        self.log(
            f"  new JWT per call, c={p.key_concurrency}: {summary['throughput']:.0f}/s"
            f"  p50 {lat['p50']:.2f}  p99 {lat['p99']:.2f} ms"
            f"  cpu {summary['cpu_per_1000']['bot']:.3f} s/1000"
        )

    # -- guarantees: overload, blocked loop ----------------------------------------------------

    def overload(self) -> None:
        """Hanging handlers at ``overload_rate``, then at 10x callflow's capacity."""
        p = self.plan
        store = self.results.setdefault("overload", {})
        self.log(
            f"overload: {p.overload_rate:.0f} calls/s for {p.overload_seconds:g} s, handlers hang"
        )
        store["fixed"] = self.overload_run(p.overload_rate)
        capacity, basis = self.capacity_basis()
        rate = capacity * p.overload_factor
        self.log(
            f"overload: {p.overload_factor:g} x {capacity:.0f}/s ({basis}) = {rate:.0f} calls/s "
            f"for {p.overload_seconds:g} s, handlers hang"
        )
        store["tenfold"] = self.overload_run(rate)
        store["tenfold"].update(capacity=capacity, basis=basis)

    def capacity_basis(self) -> tuple[float, str]:
        """callflow's capacity for the overload: its open-loop capacity, else its closed-loop
        throughput at the key concurrency (measured now if need be)."""
        cap = self.results.get("capacity", {}).get("callflow", {}).get("capacity", 0.0)
        if cap > 0:
            return float(cap), "callflow's open-loop capacity measured above"
        return (
            self.sustainable(),
            f"callflow's closed-loop throughput at {self.plan.key_concurrency} in flight",
        )

    def overload_run(self, rate: float) -> dict[str, Any]:
        """One open-loop run of ``rate`` calls/s against a fresh bot whose handlers hang.

        The load generator opens ``overload_connections`` connections before it starts, so
        that up to that many notifications can await their reply without a call waiting for
        a connection. Opened during the run instead, they come too slowly to offer the
        load: a burst of connects overflows the webhook's listen backlog and the kernel
        retries each handshake a second later.
        """
        p = self.plan
        proc, port = self.start_ready(
            "callflow",
            label="overload",
            mode="hang",
            platform_timeout=p.overload_platform,
            safety_margin=p.overload_margin,
        )
        try:
            gc_before = proc.gc_stats()
            result = self.loadgen(
                port,
                proc,
                mode="open",
                rate=rate,
                duration=p.overload_seconds,
                max_connections=p.overload_connections,
                preopen=p.overload_connections,
                tail=p.overload_platform + 2.0,
            )
            gc_after = proc.gc_stats()
            _, metrics = http_get(f"http://127.0.0.1:{proc.metrics_port}/metrics")
        finally:
            proc.stop()
        start, end = result["window"]
        summary: dict[str, Any] = {
            "requested": rate,
            "seconds": p.overload_seconds,
            "platform_timeout": p.overload_platform,
            "safety_margin": p.overload_margin,
            "outcome": deadline_outcome(result, p.overload_platform),
            "generator": generator_figures(result),
            "timeline": timeline(result, p.overload_platform),
            "duplicates": result["duplicates"],
            "cpu_s": _cpu_seconds(result),
            "other_cores": other_load(result, max(end - start, 1e-9)),
            "gc": gc_delta(gc_before, gc_after),
            "metrics": _pick_metrics(metrics),
        }
        out, gen = summary["outcome"], summary["generator"]
        self.log(
            f"  offered {gen['offered']:.0f}/s ({out['calls']} calls, {gen['not_sent']} not "
            f"sent, send lag p99 {gen['send_lag_ms']['p99']:.1f} ms): late {out['late']}, "
            f"lost {out['lost']}, twice {out['twice']}, refused {out['refused']}, "
            f"202 p99 {out['ack_ms']['p99']:.1f} ms, reply p99 {out['reply_ms']['p99']:.1f} ms"
        )
        return summary

    def blocked(self) -> None:
        """A handler holds the app loop (sleeping, then spinning) while calls keep arriving."""
        p = self.plan
        store = self.results.setdefault("blocked", {})
        for how in ("block", "spin"):
            verb = "sleeps" if how == "block" else "spins"
            self.log(
                f"blocked loop: one handler {verb} {p.block_seconds:g} s after "
                f"{p.block_pre:g} s; {p.block_calls} calls during the block; handlers hang"
            )
            store["sleep" if how == "block" else "spin"] = self.blocked_run(how)

    def blocked_run(self, how: str) -> dict[str, Any]:
        """One blocked-loop run (``how``: ``block`` or ``spin``); the calls by group."""
        p = self.plan
        schedule, blocker_at = p.block_schedule()
        proc, port = self.start_ready(
            "callflow",
            label=f"blocked-{how}",
            mode=how,
            block_seconds=p.block_seconds,
            platform_timeout=p.block_platform,
            safety_margin=p.block_margin,
        )
        try:
            result = self.loadgen(
                port,
                proc,
                mode="open",
                schedule=schedule,
                blocker_at=blocker_at,
                max_connections=1024,
                preopen=256,
                tail=p.block_platform + 2.0,
            )
        finally:
            proc.stop()
        blocker = result["blocker"]
        if "sent" not in blocker:
            raise RuntimeError("the marked call was not sent; expected one per blocked-loop run")
        lines = proc.stderr_events("bench.block")
        ends = [line for line in lines if "end" in line]
        if ends:
            block_start, block_end = float(ends[-1]["start"]), float(ends[-1]["end"])
            measured = True
        elif lines:  # started, never ended: the bot was stopped while the handler held it
            block_start, block_end = float(lines[-1]["start"]), math.inf
            measured = True
        else:  # the handler never ran: say where the block would have been
            block_start = float(blocker["sent"])
            block_end = block_start + p.block_seconds
            measured = False
        groups = block_groups(result, block_start, block_end, p.block_platform)
        summary: dict[str, Any] = {
            "how": how,
            "block_seconds": p.block_seconds,
            "held_for": block_end - block_start,
            "handler_ran": measured,
            "handler_started_after_ms": (block_start - float(blocker["sent"])) * 1000,
            "platform_timeout": p.block_platform,
            "safety_margin": p.block_margin,
            "scheduled_during": p.block_calls,
            "generator": generator_figures(result),
            "marked_call": blocker,
            **groups,
            "duplicates": result["duplicates"],
        }
        d, b = groups["during"], groups["before"]
        self.log(
            f"  held {summary['held_for']:.1f} s; before: {b['calls']} calls, missed "
            f"{b['missed']}; during: {d['calls']} calls, 2xx {d['accepted']}, ack p50/p99/max "
            f"{d['ack_ms']['p50']:.1f}/{d['ack_ms']['p99']:.1f}/{d['ack_ms']['max']:.1f} ms, "
            f"missed {d['missed']}, exactly once {d['exactly_once']}"
        )
        return summary

    # -- memory ------------------------------------------------------------------------------

    def memory(self) -> None:
        """RSS of a callflow bot holding ``memory_calls`` pending calls; bytes per call.

        RSS and the pending count are sampled while the calls arrive; the figure uses the
        sample with the most pending calls. The pending count is the bot's own (``/readyz``
        ``pending``) when it reports one, else the calls it accepted (2xx) and did not decide.
        """
        p = self.plan
        self.log(f"memory: {p.memory_calls} pending calls")
        proc, port = self.start_ready(
            "callflow",
            label="memory",
            mode="hang",
            platform_timeout=60,
            safety_margin=3,
            max_pending=10 * p.memory_calls,
            # Holding every call is the point here, not pacing a deadline wave.
            deadline_send_rate=1_000_000,
        )
        samples: list[tuple[int, int, float]] = []
        try:
            warm = max(1000, p.memory_calls // 50)
            first = self.loadgen(port, proc, mode="burst", count=warm, concurrency=64)
            base_pending = self._pending(port, _held(first))
            base_rss = rss_bytes(proc.pid)
            gc_before = proc.gc_stats()
            started = time.monotonic()
            gen, res = self.start_loadgen(
                port, proc, mode="burst", count=p.memory_calls, concurrency=64
            )
            target = base_pending + p.memory_calls
            settle_until = math.inf
            while time.monotonic() < min(settle_until, started + 120):
                reported = self._reported_pending(port)
                if reported is not None:
                    samples.append((reported, rss_bytes(proc.pid), time.monotonic() - started))
                    if reported >= target:
                        break
                if gen.popen.poll() is not None and settle_until == math.inf:
                    settle_until = time.monotonic() + 3.0
                time.sleep(0.25)
            gen.popen.wait()
            result = self.finish_loadgen(gen, res)
            if not samples:  # no count from the bot: the calls it holds, by the replies
                samples.append(
                    (base_pending + _held(result), rss_bytes(proc.pid), time.monotonic() - started)
                )
            gc_after = proc.gc_stats()
        finally:
            proc.kill()
        pending, rss, at = max(samples)
        ok = sum(1 for s in result["status"] if 200 <= s < 300)
        added = pending - base_pending
        summary = {
            "calls": p.memory_calls,
            "accepted": ok,
            "pending": pending,
            "added": added,
            "rss_base_mb": base_rss / 2**20,
            "rss_mb": rss / 2**20,
            "bytes_per_pending": (rss - base_rss) / max(added, 1),
            "intake_per_s": added / max(at, 1e-9),
            "gc": gc_delta(gc_before, gc_after),
            "parsed_body_bytes": parsed_body_bytes(self.body),
        }
        self.results["memory"] = summary
        self.log(
            f"  RSS {summary['rss_base_mb']:.1f} -> {summary['rss_mb']:.1f} MB with {pending} "
            f"pending: {summary['bytes_per_pending']:.0f} B per pending call"
        )

    def _reported_pending(self, port: int) -> int | None:
        """The bot's own pending count (``/readyz``), None when it does not report one."""
        status, body = http_get(f"http://127.0.0.1:{port}/readyz", timeout=5.0)
        if status != 200:
            return None
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return int(json.loads(body)["pending"])
        return None

    def _pending(self, port: int, expected: int, timeout: float = 30.0) -> int:
        """The bot's pending count once it reaches ``expected`` (or after ``timeout``)."""
        deadline = time.monotonic() + timeout
        pending: int | None = None
        while time.monotonic() < deadline:
            pending = self._reported_pending(port)
            if pending is None or pending >= expected:
                break
            time.sleep(0.05)
        return expected if pending is None else pending

    # -- profile -----------------------------------------------------------------------------

    def profile(self) -> None:
        """py-spy the callflow bot and the floor at the key concurrency; sort the samples."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            self.log("profile: py-spy is not installed; skipped")
            return
        profiles = {}
        for variant in ("callflow", "floor"):
            profile = self.profile_one(spy, variant)
            if profile is None:
                return
            profiles[variant] = profile
        self.results["profile"] = profiles
        floor = {row["layer"]: row["us_per_call"] for row in profiles["floor"]["layers"]}
        for row in profiles["callflow"]["layers"]:
            self.log(
                f"  {row['layer']:44} callflow {row['us_per_call']:6.1f} us/call "
                f"({row['pct']:4.1f} %), floor {floor.get(row['layer'], 0.0):6.1f} us/call"
            )

    def profile_one(self, spy: str, variant: str) -> dict[str, Any] | None:
        """Profile one variant during a closed-loop run; None if py-spy recorded nothing."""
        p = self.plan
        seconds = p.profile_seconds or 4.0
        self.log(f"profile: py-spy on the {variant} bot, c={p.key_concurrency}, {seconds:g} s")
        proc, port = self.start_ready(variant, label=f"profile-{variant}")
        raw = self.workdir / f"profile-{variant}.txt"
        err = b""
        try:
            self.loadgen(
                port, proc, mode="closed", concurrency=p.key_concurrency, warmup=0.5, duration=1.0
            )
            argv = [spy, "record", "--pid", str(proc.pid), "--rate", "250", "--format", "raw"]
            argv += ["--output", str(raw), "--duration", str(int(seconds))]
            spy_proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.3)  # py-spy attaches before the measured run starts
            result = self.loadgen(
                port,
                proc,
                mode="closed",
                concurrency=p.key_concurrency,
                warmup=0.2,
                duration=seconds - 1.5,
            )
            _, err = spy_proc.communicate(timeout=seconds + 30)
        finally:
            proc.stop()
        if not raw.exists():
            self.log(f"profile: py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
            return None
        summary = summarize_closed(result)
        cpu_us = summary["cpu_per_1000"]["bot"] * 1000.0  # s per 1000 calls -> us per call
        text = raw.read_text()
        profile = summarize_profile(text)
        profile["layers"] = [
            {"layer": layer, "pct": pct, "us_per_call": pct / 100.0 * cpu_us}
            for layer, pct in layer_shares(text)
        ]
        profile["throughput_while_profiled"] = summary["throughput"]
        profile["cpu_us_per_call"] = cpu_us
        shutil.copy(raw, self.out / f"profile_{variant}.txt")
        return profile

    # -- the whole run -----------------------------------------------------------------------

    def sustainable(self) -> float:
        """callflow's decisions/s at the key concurrency (measured now if not measured yet)."""
        c = str(self.plan.key_concurrency)
        runs = self.results.get("closed", {}).get("asyncio", {}).get("callflow", {}).get(c)
        if runs:
            return float(statistics.median(r["throughput"] for r in runs))
        proc, port = self.start_ready("callflow", label="sustainable")
        try:
            result = self.loadgen(
                port,
                proc,
                mode="closed",
                concurrency=self.plan.key_concurrency,
                warmup=self.plan.warmup,
                duration=self.plan.duration,
            )
        finally:
            proc.stop()
        return float(summarize_closed(result)["throughput"])

    def run(self, only: Sequence[str] = ()) -> dict[str, Any]:
        """Every scenario in turn (or those in ``only``); returns the results."""
        p = self.plan
        started = time.monotonic()
        self.results["meta"] = machine_info(p, self.variants, only)
        self.start_stub()
        self.log(f"stub on :{self.stub_port}; variants: {', '.join(self.variants)}")

        def wanted(name: str) -> bool:
            return not only or name in only

        if wanted("closed") or wanted("open") or wanted("capacity"):
            variants = (
                self.variants if wanted("closed") or wanted("open") else ("callflow", "floor")
            )
            self.log("cold start (asyncio)")
            with self.bots("asyncio", variants) as bots:
                if wanted("closed"):
                    self.closed_runs(bots, "asyncio", p.concurrencies, p.rounds)
                if wanted("open"):
                    self.open_runs(bots)
                if wanted("capacity"):
                    self.capacity(bots)
                if wanted("closed") and p.fresh_jwt:
                    self.fresh_jwt_run(bots)
            if wanted("closed") and p.uvloop_pass and have_uvloop():
                self.log("cold start (uvloop)")
                with self.bots("uvloop") as bots:
                    self.closed_runs(bots, "uvloop", (1, p.key_concurrency), 1)
        if wanted("overload"):
            self.overload()
        if wanted("blocked"):
            self.blocked()
        if wanted("memory"):
            self.memory()
        self.results["targets"] = evaluate_targets(self.results, p)
        missed = [t for t in self.results["targets"] if not t["ok"]]
        if "profile" in only or (not only and missed and p.profile_seconds > 0):
            self.profile()
        self.results["meta"]["seconds"] = time.monotonic() - started
        return self.results

    def close(self) -> None:
        """Stop every process still running."""
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop(timeout=5.0)


def _held(result: dict[str, Any]) -> int:
    """Calls of a run the bot accepted (2xx) and has not decided."""
    return sum(
        1
        for status, n in zip(result["status"], result["decisions"], strict=True)
        if 200 <= status < 300 and not n
    )


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _pick_metrics(text: bytes) -> dict[str, float]:
    """The engine counters worth reporting, from the bot's /metrics."""
    wanted = ("callflow_", "")
    picked: dict[str, float] = {}
    for line in text.decode(errors="replace").splitlines():
        if line.startswith("#") or not line.startswith(wanted[0]):
            continue
        name, _, value = line.rpartition(" ")
        if any(word in name for word in ("decision", "pending", "admission", "late", "default")):
            with contextlib.suppress(ValueError):
                picked[name] = float(value)
    return picked


def summarize_profile(raw: str) -> dict[str, Any]:
    """Self and inclusive shares of busy samples per function from py-spy's stacks."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for stack, count in busy_stacks(raw):
        total += count
        frames = [_frame_name(f) for f in stack]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + count

    def rows(table: dict[str, int]) -> list[dict[str, Any]]:
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:40]
        return [{"frame": k, "pct": 100.0 * v / max(total, 1)} for k, v in ranked]

    return {"samples": total, "self": rows(own), "inclusive": rows(incl)}


# Rules for sorting a sample into a layer: the frame nearest the leaf that matches one wins
# (standard-library frames -- asyncio, selectors, json, uuid -- are skipped, so their cost
# goes to whoever called them; a sample with nothing but such frames is the event loop's).
LAYER_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging (structlog call.decided and others)", ("structlog/", "callflow/_log.py")),
    ("metrics (prometheus_client)", ("prometheus_client/", "callflow/metrics.py")),
    (
        "inbound JWT check",
        ("callflow/webhook/auth.py", "callflow/webhook/keys.py", "jwt/", "cryptography/"),
    ),
    ("parse notification", ("callflow/_parse/", "callflow/events.py")),
    (
        "aiohttp client: decision POST",
        ("aiohttp/client", "aiohttp/connector.py", "aiohttp/tracing.py", "yarl/"),
    ),
    ("callflow Graph client", ("callflow/graph/",)),
    (
        "callflow engine (dispatch, deadline, routing)",
        ("callflow/engine/core.py", "callflow/engine/deadline.py", "callflow/routing.py"),
    ),
    ("callflow decisions", ("callflow/decisions.py",)),
    ("callflow webhook handler", ("callflow/webhook/handler.py", "callflow/bot.py")),
    (
        "aiohttp server: notification in, 202 out",
        ("aiohttp/web", "aiohttp/http_parser.py", "aiohttp/_http_parser"),
    ),
    ("bot's own code (floor / sdk)", ("benchmarks/",)),
    ("anyio", ("anyio/",)),
    ("callflow, other modules", ("callflow/",)),
)


IDLE_LEAVES = frozenset(
    {"EpollSelector.select", "Condition.wait", "Queue.get", "Event.wait", "Thread.join"}
)
"""Leaf frames of threads that wait (py-spy does not always tell them from running ones)."""


_LOOP_FRAMES = ("Handle._run ", "BaseEventLoop._run_once ")


def busy_stacks(raw: str) -> Iterator[tuple[list[str], int]]:
    """(frames, samples) of every py-spy stack that is not a thread waiting."""
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].partition(" (")[0] in IDLE_LEAVES:
            continue
        yield frames, int(count_text)


def layer_shares(raw: str) -> list[tuple[str, float]]:
    """Percent of busy py-spy samples per layer (see :data:`LAYER_RULES`), largest first.

    Only the frames under the event loop's current callback (after the last ``Handle._run``,
    or ``_run_once`` for the loop's own work) are looked at, so the program's ``main`` and
    the loop's frames do not swallow what runs under them.
    """
    counts: dict[str, int] = {}
    total = 0
    for frames, count in busy_stacks(raw):
        total += count
        cuts = [i for i, f in enumerate(frames) if f.startswith(_LOOP_FRAMES)]
        candidates = frames[cuts[-1] + 1 :] if cuts else frames
        layer = "event loop, sockets, other"
        for frame in reversed(candidates):
            where = frame.partition(" (")[2]
            found = next(
                (name for name, marks in LAYER_RULES if any(m in where for m in marks)), None
            )
            if found is not None:
                layer = found
                break
        counts[layer] = counts.get(layer, 0) + count
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    return [(layer, 100.0 * n / max(total, 1)) for layer, n in ranked]


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)`` with a short package path."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", f"{ROOT}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


def _git(*args: str) -> str:
    """What ``git ARGS`` prints in the project (empty when git is missing or fails)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    return ""


def machine() -> dict[str, Any]:
    """nproc, CPU model, Python, kernel, package versions, date, commit."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "dirty": bool(dirty),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": versions,
        "commit": commit,
        "support_loop": "uvloop" if have_uvloop() else "asyncio",
    }


def machine_info(plan: Plan, variants: Sequence[str], only: Sequence[str] = ()) -> dict[str, Any]:
    """:func:`machine`, and what was run: the plan's size, the variants, the command."""
    return {
        **machine(),
        "quick": plan.quick,
        "variants": list(variants),
        "command": "python -m benchmarks.harness"
        + (" --quick" if plan.quick else "")
        + (f" --only {','.join(only)}" if only else ""),
    }


# --- targets and report ----------------------------------------------------------------------


def _strip_latencies(value: Any) -> Any:
    """A copy of the results without the per-call latency lists (kept out of the JSON)."""
    if isinstance(value, dict):
        return {k: _strip_latencies(v) for k, v in value.items() if k != "latencies"}
    if isinstance(value, list):
        return [_strip_latencies(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks and write the report; returns the exit code."""
    from benchmarks.report import write_report

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.harness", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    parser.add_argument("--out", default=None, help="where to write the report and raw figures")
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios to run: " + ", ".join(SCENARIOS),
    )
    parser.add_argument(
        "--traced",
        action="store_true",
        help=f"add the variant {TRACED}: TRACING=otel, spans made and dropped",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help=f"add the variant {BASE}: the callflow bot of this checkout (a directory)",
    )
    args = parser.parse_args(argv)
    only = tuple(filter(None, args.only.split(",")))
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; expected {', '.join(SCENARIOS)}")
    plan = Plan.short() if args.quick else Plan.full()
    if args.out:
        out = Path(args.out)
        md, png = out / "RESULTS.md", out / "cdf.png"
    elif plan.quick or args.only:
        out = BENCH / "out" / ("quick" if plan.quick else "partial")
        md, png = out / "RESULTS.md", out / "cdf.png"
    else:
        out = BENCH / "out"
        md, png = BENCH / "RESULTS.md", BENCH / "cdf.png"
    out.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(line, flush=True)

    work = Path(tempfile.mkdtemp(prefix="callflow-bench-"))
    baseline = Path(args.baseline).resolve() if args.baseline else None
    harness = Harness(plan, out, work, log, traced=args.traced, baseline=baseline)
    try:
        results = harness.run(only)
    finally:
        harness.close()
        if args.keep:
            log(f"process logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    write_report(results, plan, md, png)
    (out / "results.json").write_text(json.dumps(_strip_latencies(results), indent=1))
    log(f"report: {md}")
    for target in results.get("targets", []):
        log(
            f"  {'met ' if target['ok'] else 'MISS'}  {target['name']}: {target['shown']} "
            f"(goal {target['goal']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
